"""The ``prune`` workflow: load or sample a target, prune it, write the pruned weights.

Model files are read and written by suffix (:func:`model_format`): ``.safetensors`` (names as
``to_module``; the architecture comes from ``--arch``) or ``.onnx`` (read exactly or refused by
:func:`~probprune.nets.onnx.read_onnx`; the file carries its architecture). :func:`load_model`
reads either, :func:`save_model` writes either.

Also the checks every workflow makes before it allocates or writes anything (pre-flight):

* :func:`check_device` — the device exists on this machine (``cpu``; ``cuda``/``cuda:N`` with CUDA;
  ``mps`` with Apple's backend);
* :func:`check_output_paths` / :func:`check_output_dir` — every output path of a command can be
  written (its folder exists and is writable, it is not a folder itself, no two outputs coincide);
* :func:`check_memory` / :func:`check_time` — a memory estimate (bytes) and a time estimate
  (seconds) of the work, refused when clearly out of reach. The memory limit is half the physical
  memory (``os.sysconf``) unless ``$PROBPRUNE_MEMORY_LIMIT`` gives one (bytes, or with a suffix
  ``K``/``M``/``G``/``T``: ``PROBPRUNE_MEMORY_LIMIT=64G``); the time limit is 10⁶ s (11.6 days)
  unless ``$PROBPRUNE_TIME_LIMIT`` gives one (seconds). The estimates are deliberately rough
  lower bounds of what the work needs, so a refusal is never a false alarm by more than a small
  factor.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from probprune.config import (
    GapSpec,
    LawSpec,
    NetSpec,
    ProbPruneError,
    PruneJob,
    RunConfig,
    layer_scale,
    parse_arch,
)
from probprune.masks import MaskStats, prune
from probprune.montecarlo import expand_grid
from probprune.nets import Net, from_state_dict
from probprune.nets.onnx import OnnxInfo, read_onnx, save_onnx
from probprune.rng import derive_seed, make_generator
from probprune.runner.statedict import own_names, renamed
from probprune.sampling import sample_net
from probprune.store import load_tensors, save_tensors

__all__ = [
    "MEMORY_ENV",
    "MODEL_SUFFIXES",
    "TIME_ENV",
    "LoadedModel",
    "PruneOutcome",
    "check_device",
    "check_gap_budget",
    "check_job_outputs",
    "check_law_range",
    "check_memory",
    "check_output_dir",
    "check_output_paths",
    "check_prune_job",
    "check_time",
    "check_verify_budget",
    "gap_memory",
    "gap_seconds",
    "load_model",
    "load_net",
    "memory_limit",
    "model_format",
    "model_spec",
    "n_weights",
    "run_prune",
    "save_model",
    "save_net",
    "time_limit",
    "write_outputs",
]

#: Environment variable overriding the memory limit (bytes; suffixes K, M, G, T allowed).
MEMORY_ENV = "PROBPRUNE_MEMORY_LIMIT"
#: Environment variable overriding the time limit (seconds).
TIME_ENV = "PROBPRUNE_TIME_LIMIT"
_DEFAULT_SECONDS = 1e6
#: Assumed sustained rate of dense float32 arithmetic (flop/s), for time estimates.
_FLOPS = 1e11
#: Assumed fixed cost of one batched step (kernel launches, Python), seconds.
_STEP_SECONDS = 2e-5

# --------------------------------------------------------------------------- pre-flight checks


def check_device(device: Any, name: str = "device") -> None:
    """Refuse a device this machine does not have (before anything is allocated).

    Accepted: ``cpu``; ``cuda`` and ``cuda:N`` when CUDA is available with more than N devices;
    ``mps`` when available.

    >>> check_device("cpu")
    """
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ProbPruneError(f"{name}={device!r}: must be cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProbPruneError(f"{name}={device!r}: CUDA is not available on this machine (use cpu)")
        idx = int(device.partition(":")[2] or 0)
        if idx >= torch.cuda.device_count():
            raise ProbPruneError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ProbPruneError(f"{name}={device!r}: the MPS backend is not available on this machine (use cpu)")


def _check_path_text(name: str, value: str | os.PathLike[str]) -> None:
    if "\x00" in os.fspath(value):
        raise ProbPruneError(f"{name}={os.fspath(value)!r}: a path cannot contain a NUL character")


def _probe_dir(name: str, value: str, folder: Path) -> None:
    """``folder`` exists, is a folder, and a file can be created in it (created and removed at once)."""
    if not folder.exists():
        raise ProbPruneError(f"{name}={value!r}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ProbPruneError(f"{name}={value!r}: {str(folder)!r} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probprune-probe-", dir=folder)
    except OSError as e:
        raise ProbPruneError(f"{name}={value!r}: cannot write in {str(folder)!r} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_paths(paths: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Check every output file of a command before any work: writable, not a folder, all distinct.

    Args:
        paths: option name → output file (``None`` = not asked for).

    Raises:
        ProbPruneError: an output names a folder, its folder is missing or not writable, or two
            outputs are the same file.
    """
    seen: dict[str, str] = {}
    for name, value in paths.items():
        if value is None:
            continue
        _check_path_text(name, value)
        p = Path(value).expanduser()
        if str(value).strip() == "" or p.is_dir():
            raise ProbPruneError(f"{name}={str(value)!r}: is a directory, not a file")
        if p.exists() and not os.access(p, os.W_OK):
            raise ProbPruneError(f"{name}={str(value)!r}: exists and is not writable")
        _probe_dir(name, str(value), p.parent if str(p.parent) else Path("."))
        key = os.path.realpath(p)
        if key in seen:
            raise ProbPruneError(f"{name}={str(value)!r}: the same file as {seen[key]}")
        seen[key] = name


def check_output_dir(name: str, value: str | os.PathLike[str]) -> None:
    """An output folder (created on demand): not a file, and its nearest existing ancestor is writable."""
    _check_path_text(name, value)
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise ProbPruneError(f"{name}={str(value)!r}: exists and is not a directory")
    anc = p
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    _probe_dir(name, str(value), anc)


def _parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise ProbPruneError(f"${MEMORY_ENV}={text!r}: expected bytes, e.g. 8000000000 or 8G")
    mult = 1024 ** "_KMGT".index(m.group(2).upper() or "_") if m.group(2) else 1
    return int(float(m.group(1)) * mult)


def memory_limit() -> int:
    """Bytes a single job may plan to use: ``$PROBPRUNE_MEMORY_LIMIT``, else half the physical memory."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return _parse_bytes(env)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 8 * 1024 ** 3


def time_limit() -> float:
    """Seconds a single job may plan to take: ``$PROBPRUNE_TIME_LIMIT``, else 10⁶ s."""
    env = os.environ.get(TIME_ENV)
    if not env:
        return _DEFAULT_SECONDS
    try:
        v = float(env)
    except ValueError:
        v = math.nan
    if not v > 0:
        raise ProbPruneError(f"${TIME_ENV}={env!r}: expected seconds > 0")
    return v


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def check_memory(what: str, estimate: float) -> None:
    """Refuse work whose memory estimate (bytes) exceeds :func:`memory_limit`, naming both."""
    limit = memory_limit()
    if estimate > limit:
        source = f"from ${MEMORY_ENV}" if os.environ.get(MEMORY_ENV) else \
            f"half the physical memory; set ${MEMORY_ENV} to change it"
        raise ProbPruneError(f"{what}: needs about {_fmt_bytes(estimate)} of memory, over the limit of "
                             f"{_fmt_bytes(limit)} ({source})")


def check_time(what: str, seconds: float) -> None:
    """Refuse work whose time estimate exceeds :func:`time_limit`, naming both."""
    limit = time_limit()
    if seconds > limit:
        source = f"from ${TIME_ENV}" if os.environ.get(TIME_ENV) else f"set ${TIME_ENV} to change it"
        raise ProbPruneError(f"{what}: would take about {seconds:.3g} s, over the limit of {limit:.3g} s ({source})")


def n_weights(net: NetSpec) -> int:
    """Number of weight (and bias) entries of an architecture (exact Python integer, never overflows)."""
    total = 0
    for shape in net.weight_shapes():
        total += math.prod(shape) + (shape[0] if net.bias else 0)
    return total


def _n_features(net: NetSpec) -> int:
    return sum(math.prod(s) for s in net.feature_shapes()) + net.output_dim


def gap_memory(net: NetSpec, gap: GapSpec, n_members: int = 1, bytes_per: int = 4) -> int:
    """Rough lower bound of the memory (bytes) of the gap search: the sampled points through both nets."""
    return n_members * gap.n_points * _n_features(net) * bytes_per * 2


def gap_seconds(net: NetSpec, gap: GapSpec, n_members: int = 1) -> float:
    """Rough lower bound of the time (s) of the gap search: two nets, sampling then ascent steps."""
    evals = gap.n_points + gap.n_restarts * gap.n_steps * 4
    return n_members * (4.0 * evals * n_weights(net) / _FLOPS) + gap.n_steps * _STEP_SECONDS


#: Bookkeeping per stored trial (its row read back, its unit of work), bytes.
_TRIAL_BYTES = 512


def check_verify_budget(cfg: RunConfig) -> None:
    """Refuse a verification run whose chunks or trial count are clearly out of memory or time.

    Per grid point, one chunk of ``min(chunk_size, n_trials)`` trials holds the sampled targets,
    pruned copies and masks, and the gap search's points through both nets; the run also keeps
    a row per trial. Time: every trial runs a gap search.
    """
    mc = cfg.mc
    bytes_per = 8 if mc.dtype == "float64" else 4
    chunk = min(mc.chunk_size, mc.n_trials)
    points = expand_grid(cfg)
    for pt in points:
        check_law_range(pt.net, cfg.law, torch.float64 if mc.dtype == "float64" else torch.float32)
    worst = max(points, key=lambda pt: n_weights(pt.net) + gap_memory(pt.net, cfg.gap))
    per_chunk = chunk * (4 * bytes_per * n_weights(worst.net) + gap_memory(worst.net, cfg.gap, 1, bytes_per))
    total_trials = mc.n_trials * len(points)
    what = (f"verify (n_trials={mc.n_trials}, chunk_size={mc.chunk_size}, {len(points)} grid point(s), "
            f"widest arch {worst.net.to_arch()})")
    check_memory(what, per_chunk + total_trials * _TRIAL_BYTES)
    check_time(what, mc.n_trials * sum(gap_seconds(pt.net, cfg.gap) for pt in points))


def check_law_range(net: NetSpec, law: LawSpec, dtype: torch.dtype = torch.float32) -> None:
    """The law's weights fit the sampling dtype and the bound's moments (a_i⁴) fit float64.

    >>> check_law_range(NetSpec(), LawSpec())
    """
    top = max(layer_scale(s, law.scale) for s in net.weight_shapes())
    try:
        fourth = top ** 4
    except OverflowError:
        fourth = math.inf
    if not (top <= torch.finfo(dtype).max / 4 and math.isfinite(fourth)):
        raise ProbPruneError(f"law.scale={law.scale!r}: sampled weights up to {top:.3g} do not fit "
                             f"{str(dtype).replace('torch.', '')} (or their 4th moments float64)")


def check_gap_budget(net: NetSpec, gap: GapSpec, n_members: int = 1) -> None:
    """Refuse a gap search (``--n-points``, ``--n-restarts``, ``--n-steps``) clearly out of memory or time."""
    what = (f"gap search (n_points={gap.n_points}, n_restarts={gap.n_restarts}, n_steps={gap.n_steps}, "
            f"arch {net.to_arch()})")
    check_memory(what, gap_memory(net, gap, n_members) + 8.0 * n_weights(net))
    check_time(what, gap_seconds(net, gap, n_members))


def check_prune_job(job: PruneJob) -> None:
    """What a :class:`~probprune.config.PruneJob` needs of this machine and its files (the spec validated itself).

    Model suffixes, the device being present, the law's range in float32 and the memory of about four
    float32 copies of the weights (the target, the pruned copy, scores and masks).
    """
    if job.weights is not None:
        model_format("weights", job.weights)
    for name in ("out", "save_target"):
        v = getattr(job, name)
        if v is not None:
            model_format(name, str(v))
    check_device(job.device)
    if job.law is not None:
        check_law_range(job.net, job.law)
    check_memory(f"arch={job.net.to_arch()!r} ({n_weights(job.net)} weights)", 16.0 * n_weights(job.net))


def check_job_outputs(job: PruneJob, *more: tuple[str, str | None]) -> None:
    """Pre-flight: every output path of the job (and ``more``) can be written; checks, writes nothing."""
    check_output_paths({"out": job.out, "save_target": job.save_target, **dict(more)})


@dataclass(frozen=True, eq=False)
class PruneOutcome:
    """Target, pruned network, keep-masks and stats of one prune job."""

    target: Net
    pruned: Net
    masks: dict[str, torch.Tensor]
    stats: MaskStats
    seed: int
    onnx_info: OnnxInfo | None = None
    names: Mapping[str, str] | None = None  # the target file's own tensor names (runner.statedict.own_names)


#: Model file suffix → format (lower-case suffix; see :func:`model_format`).
MODEL_SUFFIXES: dict[str, Literal["safetensors", "onnx"]] = {".safetensors": "safetensors", ".onnx": "onnx"}
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def model_format(name: str, path: str | os.PathLike[str]) -> Literal["safetensors", "onnx"]:
    """The format of a model file by its suffix: ``safetensors`` or ``onnx``; anything else is refused.

    >>> model_format("out", "pruned.onnx")
    'onnx'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ProbPruneError(f"{name}={path!r}: must be a file name ending in .safetensors or .onnx")
    text = os.fspath(path)
    suffix = Path(text).suffix.lower()
    fmt = MODEL_SUFFIXES.get(suffix)
    if fmt is None:
        hint = ""
        if suffix in _PICKLE_SUFFIXES:
            hint = ("; pickled PyTorch files are never loaded (they can run code): export the model with "
                    "torch.onnx.export, or save its state_dict with safetensors.torch.save_file")
        raise ProbPruneError(f"{name}={text!r}: must end in .safetensors or .onnx{hint}")
    return fmt


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network read from a model file, with the ONNX graph's names and shapes when it was ONNX, and the
    safetensors file's own tensor names (probprune name → file name) when it used a model's own."""

    net: Net
    onnx_info: OnnxInfo | None = None
    names: Mapping[str, str] | None = None


def _same_spec(name: str, path: str, found: NetSpec, wanted: NetSpec) -> None:
    """An ONNX model's own architecture equals the one asked for (``--arch``, ``--activation``, ``--bias``)."""
    for what, a, b in (("architecture", found.to_arch(), wanted.to_arch()),
                       ("activation", found.activation, wanted.activation),
                       ("bias", found.bias, wanted.bias)):
        if a != b:
            raise ProbPruneError(f"{name}={path!r}: the ONNX model has {what} {a}, not {b} as given; "
                                 "leave --arch/--activation/--bias out for an ONNX model, or make them match")
    if found.activation == "leaky_relu" and found.negative_slope != wanted.negative_slope:
        raise ProbPruneError(f"{name}={path!r}: the ONNX model has negative_slope {found.negative_slope}, "
                             f"not {wanted.negative_slope}")


def load_model(path: str, spec: NetSpec | None = None, name: str = "weights") -> LoadedModel:
    """Read a model file by its suffix (:func:`model_format`).

    Args:
        path: a ``.safetensors`` file (needs ``spec``) or an ``.onnx`` file (carries its architecture).
        spec: the architecture asked for; for ONNX, ``None`` takes the file's own, otherwise it must match.
        name: the option named in errors (``weights``, ``pruned``).

    Raises:
        ProbPruneError: naming ``name`` and the file: unknown suffix, unreadable or unsupported model,
            no ``spec`` for safetensors, or an architecture other than ``spec``.
        GraphModelFound: an ONNX model the chain reader refuses and the graph reader reads
            (:mod:`probprune.runner.graph`); it carries the graph.
    """
    if model_format(name, path) == "onnx":
        try:
            net, info = read_onnx(path)
        except ProbPruneError as e:
            from probprune.runner.graph import graph_fallback  # a graph the chain reader refuses

            raise graph_fallback(name, path, e) from None
        if spec is not None:
            _same_spec(name, path, net.spec, spec)
        return LoadedModel(net, info)
    if spec is None:
        raise ProbPruneError(f"arch: --arch is needed for {name}={path!r} (a .safetensors file holds weights "
                             "only; an .onnx model carries its architecture)")
    net, names = _read_checkpoint(spec, path, name)
    return LoadedModel(net, None, names)


def model_spec(arch: str | None, activation: str | None, bias: bool | None,
               *models: tuple[str, str | None]) -> tuple[NetSpec, dict[str, LoadedModel]]:
    """The architecture of a command from its options and its model files (the first ONNX one is read once).

    With an ONNX model among ``models``, its own architecture is used and every option given
    (``arch``, ``activation``, ``bias``; ``None`` = not given) must agree with it. Without one,
    ``arch`` is needed (``activation`` defaults to ``relu``, ``bias`` to false).

    Args:
        arch: the ``--arch`` string, or ``None``.
        activation: ``--activation``, or ``None``.
        bias: ``--bias/--no-bias``, or ``None``.
        models: (option name, path or ``None``) of the command's model files, in order.

    Returns:
        The spec, and the ONNX model read on the way (option name → model), to be reused.

    Raises:
        ProbPruneError: a model file with an unknown suffix, an unreadable ONNX model, an option that
            disagrees with the ONNX model, or no ``--arch`` and no ONNX model.
    """
    for name, path in models:
        if path is not None:
            model_format(name, path)
    onnx = [(name, path) for name, path in models if path is not None and model_format(name, path) == "onnx"]
    if not onnx:
        if arch is None:
            raise ProbPruneError("arch: give --arch (e.g. fcn:784,300,100,10) for a .safetensors model or a "
                                 "sampled one (an .onnx model carries its own architecture)")
        return parse_arch(arch, activation="relu" if activation is None else activation, bias=bool(bias)), {}
    name, path = onnx[0]
    model = load_model(path, None, name)
    found = model.net.spec
    asked = parse_arch(arch, activation=found.activation if activation is None else activation,
                       bias=found.bias if bias is None else bias) if arch is not None else \
        dataclasses.replace(found, activation=found.activation if activation is None else activation,  # type: ignore[arg-type]
                            bias=found.bias if bias is None else bias)
    if asked.activation == found.activation:
        asked = dataclasses.replace(asked, negative_slope=found.negative_slope)
    _same_spec(name, path, found, asked)
    return found, {name: model}


def _read_checkpoint(spec: NetSpec, path: str, name: str = "weights") -> tuple[Net, Mapping[str, str] | None]:
    """A safetensors file as a ``Net`` of ``spec``: probprune's tensor names, or the model's own
    (:func:`~probprune.runner.statedict.own_names`: mapped exactly onto the layers, or refused); and that map."""
    tensors, meta = load_tensors(path)
    stored = meta.get("arch")
    if stored is not None and stored != spec.to_arch():
        raise ProbPruneError(f"{name}={path!r}: file holds architecture {stored}, not {spec.to_arch()}")
    try:
        names = own_names(spec, tensors)
        ours = tensors if names is None else renamed(tensors, {v: k for k, v in names.items()})
        return from_state_dict(spec, ours), names
    except ProbPruneError as e:
        raise ProbPruneError(f"{name}={path!r}: {e}") from None


def load_net(spec: NetSpec | str, path: str) -> Net:
    """Load a ``Net`` of architecture ``spec`` from a safetensors file: tensors named as ``to_module`` does, or
    as the user's own ``nn.Module`` did (``features.0.weight`` …; :mod:`probprune.runner.statedict`)."""
    return _read_checkpoint(parse_arch(spec) if isinstance(spec, str) else spec, path)[0]


def save_net(net: Net, path: str, names: Mapping[str, str] | None = None) -> None:
    """Save a single ``Net`` as safetensors with its architecture in the metadata, under probprune's tensor
    names or, given ``names`` (probprune name → the model's own, from the file it was read from), those."""
    tensors = net.state_dict() if names is None else renamed(net.state_dict(), names)
    save_tensors(path, tensors, {"arch": net.spec.to_arch(), "format": "probprune"})


def save_model(net: Net, path: str, onnx_info: OnnxInfo | None = None,
               names: Mapping[str, str] | None = None) -> None:
    """Save a single ``Net`` by the file's suffix: safetensors (:func:`save_net`, under ``names`` when given)
    or ONNX.

    An ONNX file gets the input/output names and input shape of ``onnx_info`` (the model the net
    was read from) when given, else ``input``/``output`` with a symbolic batch dim.
    """
    if model_format("path", path) == "onnx":
        save_onnx(net.to(device="cpu"), path, **({} if onnx_info is None else onnx_info.save_kwargs()))
    else:
        save_net(net, path, names)


def write_outputs(job: PruneJob, res: PruneOutcome) -> None:
    """Write ``out`` (the pruned net; a safetensors target's own tensor names kept) and ``save_target`` (the
    sampled target) of a finished job, by suffix."""
    if job.out is not None:
        save_model(res.pruned, job.out, res.onnx_info, res.names)
    if job.save_target is not None:
        save_model(res.target, job.save_target, res.onnx_info)


def run_prune(job: PruneJob, write: bool = True, loaded: LoadedModel | None = None) -> PruneOutcome:
    """Load or sample the target, prune it, then write ``out`` / ``save_target`` (after all checks).

    Args:
        job: what to do.
        write: write the outputs now; ``False`` leaves that to :func:`write_outputs`, so a caller with
            more work that can fail (a gap sandwich, a certificate) writes nothing until all of it is done.
        loaded: ``job.weights`` already read (by :func:`model_spec`), so that it is not read twice.
    """
    check_prune_job(job)
    check_job_outputs(job)
    info, names = None, None
    if job.weights is not None:
        if loaded is None:
            loaded = load_model(job.weights, job.net)
        elif loaded.onnx_info is not None:
            _same_spec("weights", job.weights, loaded.net.spec, job.net)
        target, info, names = loaded.net.to(device=job.device), loaded.onnx_info, loaded.names
    else:
        g = make_generator(derive_seed("prune", job.seed, "weights"), job.device)
        target = sample_net(job.net, job.law, g, device=job.device)  # type: ignore[arg-type]
    pr = job.prune
    gen = make_generator(derive_seed("prune", job.seed, "mask"), job.device) if pr.method == "random" else None
    res = prune(target, pr, generator=gen, law=job.law)
    outcome = PruneOutcome(target, res.model, res.masks, res.stats, job.seed, info, names)
    if write:
        write_outputs(job, outcome)
    return outcome
