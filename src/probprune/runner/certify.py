"""``probprune certify``: local certificates and certified agreement of a pruned network on real inputs.

For each input ``c`` (a test image, or a row of an ``.npy`` file) and the ball ``{x : ‖x − c‖ ≤ r} ∩ box``
(``‖·‖`` ℓ∞ or ℓ2, the box the optional ``--clip``) this computes:

* ``lower``: :func:`~probprune.bounds.differential.gap_search` — ``‖f(x) − F(x)‖₂`` (float64) at a witness
  checked to lie in the ball ∩ box;
* ``upper``: the **minimum** of two certified upper bounds on ``sup_x ‖f(x) − F(x)‖₂`` over the ball, both
  valid (so is their minimum): the differential bound
  (:func:`~probprune.bounds.differential.differential_bound`) and the layerwise bound
  (:func:`~probprune.bounds.certified.certified_gap_bound`) over the ℓ2 ball around 0 of radius ``R`` that
  contains the local ball ∩ box. ``R`` is the smaller of ``‖c‖₂ + r`` (ℓ2) or ``‖c‖₂ + r·√d`` (ℓ∞) and
  ``‖m‖₂`` with ``m_i = max(|lo_i|, |hi_i|)``, ``[lo_i, hi_i]`` the per-coordinate range of the ball ∩ box
  (every point x of the set has ``|x_i| ≤ m_i``, so ``‖x‖₂ ≤ ‖m‖₂``); both are rounded up;
* the certified agreement verdict (:func:`~probprune.bounds.differential.certified_agreement`): "certified"
  means F and f both have F's top-1 class at ``c`` as their unique top-1 class everywhere in the ball;
* empirical agreement: the top-1 classes (float64) of F and f agree at ``c``, at the gap search's witness,
  and the agreement attack found no input of the ball where they differ;
* the label (when known), for the accuracy of both nets at the centres (float64 forward passes).

``--solve max-prune`` (:func:`run_max_prune`): prunes ``--weights`` itself (``--method``, ``--scope``) at the
levels ``GRID`` and then by bisection, measures the certified agreement rate (and empirical agreement, accuracy)
at each, and answers the largest *measured* level whose rate is ≥ ``--agreement``; see :func:`_search_levels`
for what monotonicity holds (nested masks) and what does not (the rate).

Inputs: ``mnist`` / ``fashion-mnist`` — the first N test images, pixels / 255 in [0, 1] (as
:func:`probprune.data.inputs_for`, no further normalisation), flattened to the net's input; or an ``.npy`` file
``[N, d]`` (read with ``allow_pickle=False``), optionally with labels ``[N]`` from another ``.npy``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from probprune.bounds.certified import PairNorms, certified_gap_bound, pair_norms
from probprune.bounds.differential import (
    DifferentialBound,
    certified_agreement,
    differential_bound,
    gap_search,
)
from probprune.bounds.differential_split import split_certified_agreement
from probprune.bounds.graph import GraphPairNorms, graph_pair_norms
from probprune.config import (
    DATASETS,
    BallSpec,
    CertifyJob,
    CertifyNorm,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    canonical_json,
    config_hash,
    from_dict,
    json_safe,
    package_version,
    parse_arch,
)
from probprune.data import dataset_status, load_dataset
from probprune.nets import Net, check_pair
from probprune.nets.graph import Graph
from probprune.nets.onnx import load_onnx
from probprune.records import CertifyLevelRow, CertifyRadiusRow, CertifyRow
from probprune.rng import derive_seed
from probprune.runner.prune import check_output_paths, load_net
from probprune.store import atomic_write_text, file_sha256
from probprune.store.certify import CertifyStore, read_certify

__all__ = ["RADIUS_FRACTIONS", "CertifyOutcome", "CertifyUnit", "LoadedJob", "MaxPruneOutcome", "MaxPruneSolve",
           "certify", "certify_rows", "check_job", "check_solve", "compute_unit", "curve_points", "curve_rows",
           "curve_summary", "job_files", "layerwise_radius", "load_halfwidth", "load_inputs", "load_job", "load_pair",
           "run_certify", "run_max_prune", "summarize_rows"]

Progress = Callable[[int, int], None]

#: Scales of the job's ball (radius, or half-widths) at which the report's "certified agreement vs radius"
#: curve is measured when ``--radii`` is not given (scale 1 is the job's own ball).
RADIUS_FRACTIONS = (0.25, 0.5, 2.0)


@dataclass(frozen=True, eq=False)
class CertifyOutcome:
    """Per-input rows, the summary, and the note on the inputs' scale (``spec``: None for a graph model)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    inputs: str
    spec: NetSpec | None
    run_dir: Path | None = None


def _model_kind(name: str, path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".onnx", ".safetensors"):
        raise ProbPruneError(f"{name}={path!r}: must end in .onnx or .safetensors")
    if not Path(path).is_file():
        raise ProbPruneError(f"{name}={path!r}: no such file")
    return suffix[1:]


def check_job(job: CertifyJob) -> None:
    """The files a :class:`~probprune.config.CertifyJob` names exist (the spec checked everything else), and
    the output path can be written.

    Raises:
        ProbPruneError: naming the field and the bad value.
    """
    _model_kind("weights", job.weights)
    _model_kind("pruned", job.pruned)
    for name in ("data", "labels"):
        path = getattr(job, name)
        if path is not None and path not in DATASETS and not Path(path).is_file():
            raise ProbPruneError(f"{name}={path!r}: no such file")
    if job.out is not None:
        check_output_paths({"out": job.out})


def load_pair(job: CertifyJob) -> tuple[Net, Net]:
    """F and f from their files (by suffix); an ONNX model's architecture is used for a safetensors partner.

    Raises:
        ProbPruneError: unknown suffix, unreadable model, ``--arch`` that differs from an ONNX model's,
            no architecture for a safetensors file, or two different architectures.
    """
    kinds = {name: _model_kind(name, path) for name, path in (("weights", job.weights), ("pruned", job.pruned))}
    nets: dict[str, Net] = {}
    for name, path in (("weights", job.weights), ("pruned", job.pruned)):
        if kinds[name] == "onnx":
            try:
                nets[name] = load_onnx(path)
            except ProbPruneError as e:
                raise ProbPruneError(f"{name}={path!r}: {e}") from None
            found = nets[name].spec.to_arch()
            if job.arch is not None and parse_arch(job.arch).to_arch() != found:
                raise ProbPruneError(f"arch={job.arch!r}: the ONNX model {name}={path!r} has architecture {found}")
    spec: NetSpec | None = next((n.spec for n in nets.values()), None)
    if spec is None:
        if job.arch is None:
            raise ProbPruneError("arch: give --arch (e.g. fcn:784,256,256,10) for .safetensors models")
        spec = parse_arch(job.arch, activation=job.activation, bias=job.bias)
    for name, path in (("weights", job.weights), ("pruned", job.pruned)):
        if name not in nets:
            try:
                nets[name] = load_net(spec, path)
            except ProbPruneError as e:
                msg = str(e)
                raise ProbPruneError(msg if msg.startswith(("weights=", "pruned=")) else
                                     f"{name}={path!r}: {msg}") from None
    target, pruned = nets["weights"], nets["pruned"]
    check_pair(target, pruned)
    if target.n_trials is not None:
        raise ProbPruneError("weights: an ensemble; certify takes single networks")
    if target.spec.widths[-1] < 2:
        raise ProbPruneError(f"weights={job.weights!r}: the network has {target.spec.widths[-1]} output; "
                             "certified agreement needs a classifier (>= 2 outputs)")
    return target, pruned


def _load_npy(name: str, path: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ProbPruneError(f"{name}={path!r}: not a plain .npy array ({' '.join(str(e).split())})") from None
    if not isinstance(arr, np.ndarray):
        raise ProbPruneError(f"{name}={path!r}: not a single .npy array")
    return arr


def load_inputs(job: CertifyJob, spec: NetSpec) -> tuple[Tensor, Tensor | None, str]:
    """The first N inputs ``[N, d]`` (float64 copies of the values the net sees), their labels, and a note.

    Raises:
        ProbPruneError: a conv net (its certify path reads ONNX graphs), and as :func:`read_inputs`.
    """
    if spec.kind != "fcn":
        raise ProbPruneError("differential bound: a conv net from .safetensors is certified through the graph "
                             "bound, which reads ONNX: write both models as .onnx (probprune prune --out "
                             "pruned.onnx, probprune prune --prune-fraction 0 --out target.onnx) and certify those")
    return read_inputs(job, (spec.widths[0],))


def read_inputs(job: CertifyJob, shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None, str]:
    """The first N inputs ``[N, *shape]`` (float64 copies of the float32 values the model sees), their labels,
    and a note: test images of a data set (pixels / 255) or rows of an ``.npy`` (``[N, d]``, or for a
    multi-dimensional ``shape`` also ``[N, *shape]``; ``allow_pickle=False``) with ``--labels``.

    Raises:
        ProbPruneError: a dataset that is not prepared, N beyond the data, inputs of the wrong size, non-numeric
            or non-finite values, labels of the wrong shape.
    """
    d, n = math.prod(shape), job.n_points
    if job.data in DATASETS:
        if not dataset_status(job.data)["ready"]:
            raise ProbPruneError(f"data={job.data!r}: not prepared; run: probprune data prepare {job.data}")
        ds = load_dataset(job.data)
        total = int(ds.test_images.shape[0])
        if n > total:
            raise ProbPruneError(f"n_points={n}: the {job.data} test set has {total} images")
        imgs = ds.test_images[:n]
        if imgs[0].numel() != d:
            raise ProbPruneError(f"data={job.data!r}: images have {imgs[0].numel()} pixels, the model's input "
                                 f"{shape} has {d}")
        x = (imgs.to(torch.float32) / 255.0).double().reshape(n, *shape)
        return x, ds.test_labels[:n].clone(), f"{job.data} test images 0..{n - 1}, pixels / 255 in [0, 1]"
    arr = _load_npy("data", job.data)
    flat_only = len(shape) == 1
    if arr.dtype.kind not in "fiu" or arr.ndim < 2 or math.prod(arr.shape[1:]) != d or (flat_only and arr.ndim != 2):
        want = f"[N, {d}]" if flat_only else f"[N, {', '.join(map(str, shape))}] or [N, {d}]"
        raise ProbPruneError(f"data={job.data!r}: shape {arr.shape} dtype {arr.dtype}, expected numbers {want}")
    if n > arr.shape[0]:
        raise ProbPruneError(f"n_points={n}: data={job.data!r} has {arr.shape[0]} rows")
    arr = arr[:n]
    if not np.isfinite(arr).all():
        raise ProbPruneError(f"data={job.data!r}: non-finite values")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).reshape(n, *shape)
    y: Tensor | None = None
    if job.labels is not None:
        lab = _load_npy("labels", job.labels)
        if lab.dtype.kind not in "iu" or lab.ndim != 1 or lab.shape[0] < n:
            raise ProbPruneError(f"labels={job.labels!r}: shape {lab.shape} dtype {lab.dtype}, expected integers "
                                 f"[>= {n}]")
        y = torch.from_numpy(lab[:n].astype(np.int64))
    return x, y, f"rows 0..{n - 1} of {job.data} as given"


def layerwise_radius(centres: Tensor, radius: float, norm: str, clip: tuple[float, float] | None,
                     halfwidth: Tensor | None = None) -> Tensor:
    """``[B]`` radii R (rounded up) of ℓ2 balls around 0 that contain each ball ∩ box (module docstring).

    With ``halfwidth`` ``[B, d]`` (ℓ∞ boxes ``c ± h``; ``radius`` is then ignored) the ball's growth is
    ``‖h‖₂`` instead of ``r·√d`` and the per-coordinate range is ``[c − h, c + h]`` ∩ box.

    >>> float(layerwise_radius(torch.tensor([[3.0, 4.0]], dtype=torch.float64), 1.0, "l2", None)[0]) >= 6.0
    True
    """
    c = centres.double()
    d = c.shape[1]
    # covers the float64 rounding of the norms and sums for any d (relative ≤ 2(d + 4)·2⁻⁵³), with room to spare
    up = (1.0 + 1e-12) * (1.0 + 2.0 * (d + 4) * 2.0 ** -53)
    half: float | Tensor = radius
    if halfwidth is not None:
        half = halfwidth.double()
        grow: float | Tensor = half.norm(dim=1)
    else:
        grow = radius if norm == "l2" else radius * math.sqrt(d)
    r1 = (c.norm(dim=1) + grow) * up
    lo, hi = c - half, c + half
    if clip is not None:
        lo, hi = lo.clamp_min(clip[0]), hi.clamp_max(clip[1])
    r2 = torch.maximum(lo.abs(), hi.abs()).norm(dim=1) * up
    return torch.minimum(r1, r2)


def _median(v: list[float]) -> float:
    return float(np.median(np.asarray(v, dtype=np.float64))) if v else math.nan


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of the rows: agreement shares, accuracies, median/max of upper, lower, ratio."""
    n = len(rows)
    ups = [float(r["upper"]) for r in rows]
    los = [float(r["lower"]) for r in rows]
    ratios = [float(r["ratio"]) for r in rows]
    labelled = [r for r in rows if r["label"] is not None]
    acc_t = sum(r["class_target"] == r["label"] for r in labelled) / len(labelled) if labelled else None
    acc_p = sum(r["class_pruned"] == r["label"] for r in labelled) / len(labelled) if labelled else None
    return {
        "n": n,
        "certified_agreement": sum(bool(r["certified_agree"]) for r in rows) / max(1, n),
        "empirical_agreement": sum(bool(r["empirical_agree"]) for r in rows) / max(1, n),
        "refuted": sum(r["verdict"] == "refuted" for r in rows),
        "accuracy_target": acc_t,
        "accuracy_pruned": acc_p,
        "median_upper": _median(ups), "max_upper": max(ups) if ups else math.nan,
        "median_lower": _median(los), "max_lower": max(los) if los else math.nan,
        "median_ratio": _median(ratios), "max_ratio": max(ratios) if ratios else math.nan,
        "differential_wins": sum(r["upper_from"] == "differential" for r in rows),
    }


def _chunk_rows(target: Net, pruned: Net, x: Tensor, y: Tensor | None, start: int, ball: BallSpec,
                budget: tuple[int, int], gen: torch.Generator, hw: Tensor | None = None,
                norms: PairNorms | None = None, split: int = 0, optimise: int = 0) -> list[CertifyRow]:
    n_restarts, n_steps = budget
    radii = layerwise_radius(x, ball.radius, ball.norm, ball.box, hw)
    # the pair's norms once (given, or here for the chunk): each input's layerwise bound only rescales
    pn = pair_norms(target, pruned) if norms is None else norms
    lay = [float(certified_gap_bound(target, pruned, radius=float(r), norms=pn).value) for r in radii.tolist()]
    low = gap_search(target, pruned, ball, gen, centres=x, n_restarts=n_restarts, n_steps=n_steps, halfwidth=hw)
    # one propagation gives both the agreement margins and the differential gap bound
    agr = split_certified_agreement(target, pruned, ball, centres=x, generator=gen, halfwidth=hw, leaves=split,
                                    n_restarts=max(1, n_restarts // 2), n_steps=max(1, n_steps // 2),
                                    optimise=optimise)
    diff = cast(DifferentialBound, agr.bound)
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    with torch.no_grad():
        ct, cp = cast(Tensor, t64(x)).argmax(-1), cast(Tensor, p64(x)).argmax(-1)
        wt, wp = cast(Tensor, t64(low.x)).argmax(-1), cast(Tensor, p64(low.x)).argmax(-1)
    return certify_rows(start, y, (ct, cp, wt, wp), lay, radii, diff, low, agr)


def certify_rows(start: int, y: Tensor | None, classes: tuple[Tensor, Tensor, Tensor, Tensor], lay: Sequence[float],
                 radii: Tensor, diff: DifferentialBound, low: Any, agr: Any) -> list[CertifyRow]:
    """One row per input of a chunk (chains and graphs alike): ``classes`` = top-1 classes of F and f at the
    inputs and at the found witnesses; upper = min(differential, layerwise); empirical agreement = same class at
    the input and at the witness, and the attack found no disagreement."""
    ct, cp, wt, wp = classes
    rows = []
    for i in range(len(lay)):
        ud, ul = float(diff.value[i]), lay[i]
        upper, lower = min(ud, ul), float(low.value[i])
        verdict = agr.verdicts[i]
        emp = bool(ct[i] == cp[i]) and bool(wt[i] == wp[i]) and verdict != "refuted"
        rows.append(CertifyRow(
            index=start + i, label=None if y is None else int(y[i]),
            class_target=int(ct[i]), class_pruned=int(cp[i]),
            lower=lower, upper=upper, upper_differential=ud, upper_layerwise=ul,
            layerwise_radius=float(radii[i]), upper_from="differential" if ud <= ul else "layerwise",
            ratio=upper / lower if lower > 0 else (1.0 if upper == 0 else math.inf),
            verdict=verdict, certified_agree=verdict == "certified", empirical_agree=emp,
            margin_target=float(agr.margin_target[i]), margin_pruned=float(agr.margin_pruned[i])))
    return rows


def curve_rows(target: Any, pruned: Any, x: Tensor, start: int, ball: BallSpec, hw: Tensor | None,
               curve: Sequence[tuple[float, float | None]], agreement: Callable[..., Any] = certified_agreement
               ) -> list[CertifyRadiusRow]:
    """Certified agreement (no attack) of each input at each (scale, radius) of the curve; ``agreement`` is
    :func:`~probprune.bounds.differential.certified_agreement` (chains) or its graph form (flat ``x``)."""
    out = []
    for scale, r in curve:
        b = dataclasses.replace(ball, radius=float(r) if r is not None else ball.radius * scale)
        agr = agreement(target, pruned, b, centres=x, attack=False, halfwidth=None if hw is None else hw * scale)
        up = cast(DifferentialBound, agr.bound).value
        out += [CertifyRadiusRow(scale=scale, index=start + i, radius=r, certified_agree=v == "certified",
                                 upper=float(up[i])) for i, v in enumerate(agr.verdicts)]
    return out


def write_rows(path: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Write the rows as CSV (one line per input) or JSON (``{"rows": …, "summary": …}``), atomically."""
    import csv
    import io
    import json

    if Path(path).suffix.lower() == ".json":
        text = json.dumps(json_safe({"rows": rows, "summary": summary}), indent=2, sort_keys=True, allow_nan=False)
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["index"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        text = buf.getvalue()
    atomic_write_text(Path(path).expanduser(), text)


# ---------------------------------------------------------------------------------------- a job as units


@dataclass(frozen=True, eq=False)
class LoadedJob:
    """Everything a certify job reads, loaded and checked: both models (chain nets or ONNX graphs), the inputs
    (``[N, d]`` for a chain, ``[N, *input_shape]`` for a graph), labels, half-widths ``[N, d]``."""

    job: CertifyJob
    target: Net | Graph
    pruned: Net | Graph
    x: Tensor
    y: Tensor | None
    halfwidth: Tensor | None
    inputs: str

    @property
    def is_graph(self) -> bool:
        """Whether the models are graphs (the graph bounds certify them)."""
        return isinstance(self.target, Graph)

    @property
    def ball(self) -> BallSpec:
        """The job's ball (radius: the job's, or the largest half-width; centres are passed per chunk)."""
        r = float(cast(float, self.job.radius)) if self.halfwidth is None else float(self.halfwidth.max())
        c0 = self.x[0].reshape(-1)
        return BallSpec(radius=r, norm=self.job.norm, box=self.job.clip,
                        centre=None if self.job.clip is None else tuple(float(v) for v in c0.tolist()))

    @functools.cached_property
    def norms(self) -> PairNorms | GraphPairNorms:
        """The pair's operator norms for the layerwise bound, computed once (on first use) for every unit."""
        if isinstance(self.target, Graph):
            return graph_pair_norms(self.target, cast(Graph, self.pruned))
        return pair_norms(self.target, cast(Net, self.pruned))


def load_halfwidth(job: CertifyJob, n: int, d: int, shape: tuple[int, ...] | None = None) -> Tensor | None:
    """The ``[n, d]`` float64 half-widths of ``job.halfwidth`` (rows 0..n−1 of ``[N', d]``, or ``[d]`` for all;
    for a graph model's input ``shape`` also ``[N', *shape]`` or ``shape``).

    Raises:
        ProbPruneError: not a plain ``.npy``, wrong shape, non-numeric, non-finite, negative, or 0 everywhere.
    """
    if job.halfwidth is None:
        return None
    arr = _load_npy("halfwidth", job.halfwidth)
    name = f"halfwidth={job.halfwidth!r}"
    if shape is not None and len(shape) > 1 and arr.dtype.kind in "fiu":
        if arr.shape == shape:
            arr = arr.reshape(d)
        elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
            arr = arr.reshape(arr.shape[0], d)
    if arr.dtype.kind not in "fiu" or not (arr.shape == (d,) or (arr.ndim == 2 and arr.shape[1] == d)):
        extra = "" if shape is None or len(shape) < 2 else f", [N, {', '.join(map(str, shape))}] or {list(shape)}"
        raise ProbPruneError(f"{name}: shape {arr.shape} dtype {arr.dtype}, expected numbers [N, {d}] or [{d}]{extra}")
    if arr.ndim == 2 and arr.shape[0] < n:
        raise ProbPruneError(f"{name}: {arr.shape[0]} rows, n_points={n} inputs need {n}")
    h = np.broadcast_to(arr, (n, d)) if arr.ndim == 1 else arr[:n]
    h = np.ascontiguousarray(h, dtype=np.float64)
    if not np.isfinite(h).all() or (h < 0).any():
        raise ProbPruneError(f"{name}: half-widths must be finite and >= 0")
    if not (h > 0).any():
        raise ProbPruneError(f"{name}: every half-width is 0 (a box of single points); give some > 0")
    return torch.from_numpy(h)


def load_job(job: CertifyJob, pruned_from_target: bool = False) -> LoadedJob:
    """Check and load a job (``pruned_from_target``: ``--solve max-prune``, f is made from F later).

    Raises:
        ProbPruneError: any bad file, shape or value (nothing is written).
    """
    job2 = dataclasses.replace(job, pruned=job.weights) if pruned_from_target else job
    check_job(job2)
    model = _graph_target(job2)
    target: Net | Graph
    pruned: Net | Graph
    if model is not None:  # an ONNX graph (conv, residual): the graph bounds
        if pruned_from_target:
            raise ProbPruneError(f"weights={job.weights!r}: --solve max-prune prunes chain models only, and this "
                                 "ONNX model is certified as a graph; prune it at each level with probprune prune "
                                 "--out pruned.onnx and certify each")
        from probprune.runner.certify_graph import load_graph_pair

        target, pruned = load_graph_pair(job2, model)
        x, y, note = read_inputs(job2, target.input_shape)
        shape: tuple[int, ...] | None = target.input_shape
    else:
        target, pruned = load_pair(job2)
        if target.spec.kind != "fcn":  # the differential bound's own refusal, passed on
            differential_bound(target, pruned, BallSpec(radius=1.0))
        x, y, note = load_inputs(job2, target.spec)
        shape = None
    flat = x.reshape(x.shape[0], -1)
    hw = load_halfwidth(job2, flat.shape[0], flat.shape[1], shape)
    if job.clip is not None and not bool(((flat >= job.clip[0]) & (flat <= job.clip[1])).all()):
        bad = int(((flat < job.clip[0]) | (flat > job.clip[1])).any(1).nonzero()[0, 0])
        raise ProbPruneError(f"clip={job.clip!r}: input {bad} lies outside the box")
    return LoadedJob(job, target, pruned, x, y, hw, note)


def job_files(job: CertifyJob, pruned_from_target: bool = False) -> dict[str, str]:
    """SHA-256 of every file the job reads, by field (stored in the run folder, checked on resume)."""
    names = ["weights", "data", "labels", "halfwidth"] + ([] if pruned_from_target else ["pruned"])
    out = {}
    for name in sorted(names):
        path = getattr(job, name)
        if path is not None and path not in DATASETS:
            out[name] = file_sha256(path)
    return out


def curve_points(job: CertifyJob) -> tuple[tuple[float, float | None], ...]:
    """The (scale, radius) points of the "certified agreement vs radius" curve besides the job's own ball.

    ``job.radii`` when given (scale = r / radius), else :data:`RADIUS_FRACTIONS` of the radius (or of the
    half-widths: radius ``None``).
    """
    if job.halfwidth is not None:
        return tuple((s, None) for s in RADIUS_FRACTIONS)
    r0 = float(cast(float, job.radius))
    if job.radii:
        return tuple((r / r0, r) for r in job.radii if r != r0)
    return tuple((s, s * r0) for s in RADIUS_FRACTIONS)


@dataclass(frozen=True)
class CertifyUnit:
    """Inputs ``start .. stop − 1`` of a certify job: plain data (a Ray worker rebuilds everything from it).

    The chunk's randomness is ``derive_seed(config_hash, start, "certify")``, so a unit gives the same rows
    in any process, in any order, resumed or not.
    """

    config: dict[str, Any]
    config_hash: str
    files: tuple[tuple[str, str], ...]
    start: int
    stop: int

    def describe(self) -> str:
        """For error messages."""
        return f"inputs {self.start}..{self.stop - 1} (seed {derive_seed(self.config_hash, self.start, 'certify')})"


@functools.lru_cache(maxsize=1)
def _load_cached(config_json: str, files: tuple[tuple[str, str], ...]) -> LoadedJob:
    job = cast(CertifyJob, from_dict(json.loads(config_json), CertifyJob))
    if tuple(sorted(job_files(job).items())) != files:
        raise ProbPruneError("certify unit: the files on this machine differ from the driver's (sha256)")
    return load_job(job)


def compute_unit(unit: CertifyUnit, loaded: LoadedJob | None = None) -> list[CertifyRow | CertifyRadiusRow]:
    """The records of one unit: its inputs' rows and their curve rows (pure in the unit and the files).

    Args:
        unit: the unit.
        loaded: the driver's loaded job (local executor); ``None`` loads it from the unit's config (a worker).
    """
    if loaded is None:
        loaded = _load_cached(json.dumps(unit.config, sort_keys=True), unit.files)
    job = loaded.job
    if config_hash(job) != unit.config_hash:
        raise ProbPruneError(f"unit: config hash {config_hash(job)} differs from {unit.config_hash}")
    sl = slice(unit.start, unit.stop)
    x, hw = loaded.x[sl], None if loaded.halfwidth is None else loaded.halfwidth[sl]
    y = None if loaded.y is None else loaded.y[sl]
    gen = torch.Generator().manual_seed(derive_seed(unit.config_hash, unit.start, "certify"))
    rows: list[CertifyRow | CertifyRadiusRow] = []
    budget = (job.n_restarts, job.n_steps)
    if isinstance(loaded.target, Graph):
        from probprune.runner import certify_graph as cg

        t, p = loaded.target, cast(Graph, loaded.pruned)
        gn = cast(GraphPairNorms, loaded.norms)
        rows += cg.graph_chunk_rows(t, p, x, y, unit.start, loaded.ball, budget, gen, hw, norms=gn,
                                    optimise=job.optimise)
        rows += cg.graph_curve_rows(t, p, x, unit.start, loaded.ball, hw, curve_points(job))
        return rows
    tn, pn = loaded.target, cast(Net, loaded.pruned)
    rows += _chunk_rows(tn, pn, x, y, unit.start, loaded.ball, budget, gen, hw,
                       norms=cast(PairNorms, loaded.norms), split=job.split, optimise=job.optimise)
    rows += curve_rows(tn, pn, x, unit.start, loaded.ball, hw, curve_points(job))
    return rows


def curve_summary(rows: Sequence[CertifyRow], curve: Sequence[CertifyRadiusRow], job: CertifyJob
                  ) -> list[dict[str, Any]]:
    """Certified agreement rate per scale of the ball (the job's own scale 1 from the rows), by scale."""
    by: dict[float, list[bool]] = {1.0: [r.certified_agree for r in rows]}
    radius: dict[float, float | None] = {1.0: job.radius}
    for q in curve:
        by.setdefault(q.scale, []).append(q.certified_agree)
        radius[q.scale] = q.radius
    return [{"scale": s, "radius": radius[s], "n": len(v), "certified_agreement": sum(v) / max(1, len(v))}
            for s, v in sorted(by.items())]


def _stored_doc(job: CertifyJob, h: str, files: dict[str, str], solve: dict[str, Any] | None) -> dict[str, Any]:
    return {"config": json.loads(canonical_json(job)), "hash": h, "files": files, "solve": solve,
            "version": package_version("probprune")}


def _graph_target(job: CertifyJob) -> Any:
    """The target as a :class:`~probprune.runner.graph.GraphModel` when it is an ONNX graph the chain reader
    refuses and the graph reader reads exactly, or an ONNX conv chain (the chain differential bound is FCN only;
    the graph one covers convolutions, for forward passes in float64); ``None`` for an FCN chain or a
    ``.safetensors`` file."""
    if _model_kind("weights", job.weights) != "onnx":
        return None
    from probprune.runner.graph import GraphModel, GraphModelFound, graph_fallback

    try:
        net = load_onnx(job.weights)
    except ProbPruneError as e:
        err = graph_fallback("weights", job.weights, e)
        if isinstance(err, GraphModelFound):
            return err.model
        raise err from None
    if net.spec.kind == "fcn":
        return None
    from probprune.nets.onnx_graph import load_onnx_graph

    graph, info = load_onnx_graph(job.weights)
    return GraphModel(graph, info, job.weights)


def run_certify(job: CertifyJob, progress: Progress | None = None, write: bool = True, *,
                run_dir: str | Path | None = None, executor: Any = None) -> CertifyOutcome:
    """Load, certify every input (as units, on ``executor``), summarise; store and resume in ``run_dir``.

    Args:
        job: the settings (checked first: nothing is computed or written for bad input).
        progress: called with (inputs done, total) after planning and after each unit.
        write: write ``job.out`` when set.
        run_dir: the run folder (created; a folder of this config resumes: stored inputs are not recomputed;
            one of another config, or made from other files, is refused); ``None``: nothing is stored.
        executor: ``map(fn, units)`` yielding ``(unit, records)`` (e.g. a
            :class:`~probprune.runner.ray_executor.RayExecutor`); ``None`` runs the units here.
    """
    check_job(job)
    loaded = load_job(job)
    if isinstance(loaded.target, Graph):
        refuse_graph_split(job.split)
    h, files = config_hash(job), job_files(job)
    n = int(loaded.x.shape[0])
    store = None if run_dir is None else CertifyStore(run_dir, _stored_doc(job, h, files, None), n)
    t0 = time.perf_counter()
    try:
        done = store.done() if store is not None else set()
        data = json.loads(canonical_json(job))
        units = [CertifyUnit(data, h, tuple(sorted(files.items())), s, min(n, s + job.batch_size))
                 for s in range(0, n, job.batch_size) if not set(range(s, min(n, s + job.batch_size))) <= done]
        records: list[Any] = []
        n_done = len(done)
        if progress is not None:
            progress(n_done, n)
        if executor is None:
            pairs: Iterable[tuple[CertifyUnit, list[Any]]] = ((u, compute_unit(u, loaded)) for u in units)
        else:
            pairs = executor.map(compute_unit, units)
        for unit, recs in pairs:
            if store is not None:
                store.add(recs)
            records += recs
            n_done += unit.stop - unit.start
            if progress is not None:
                progress(n_done, n)
        if store is not None:
            stored = read_certify(store.path)
            rows, curve = stored.rows, stored.radii
        else:
            rows = sorted((r for r in records if isinstance(r, CertifyRow)), key=lambda r: r.index)
            curve = [r for r in records if isinstance(r, CertifyRadiusRow)]
        summary = summarize_rows([r.to_dict() for r in rows])
        summary["curve"] = curve_summary(rows, curve, job)
        summary["seconds"] = time.perf_counter() - t0
        summary["n_new"] = sum(isinstance(r, CertifyRow) for r in records)
        if loaded.is_graph:
            summary["model"] = "graph"
        if store is not None:
            store.set_meta("summary", json.dumps(json_safe(summary), sort_keys=True, allow_nan=False))
            store.set_meta("finished", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    finally:
        if store is not None:
            store.close()
    out = CertifyOutcome([r.to_dict() for r in rows], summary, loaded.inputs,
                         None if isinstance(loaded.target, Graph) else loaded.target.spec,
                         None if store is None else store.path)
    if write and job.out is not None:
        write_rows(job.out, out.rows, out.summary)
    return out


def refuse_graph_split(split: int) -> None:
    """Branch and bound exists for the chain bound only: one refusal for ``certify --split`` and ``split=``."""
    if split:
        raise ProbPruneError(f"split={split!r}: not supported for graph models yet (the chain FCN bound only)")


def certify(target: Net | Graph, pruned: Net | Graph, centres: Tensor, *, radius: float | None = None,
            norm: CertifyNorm = "l2", clip: tuple[float, float] | None = None, labels: Tensor | None = None,
            seed: int = 0, n_restarts: int = 8, n_steps: int = 100, batch_size: int = 25,
            progress: Progress | None = None, inputs: str = "centres as given", halfwidth: Tensor | None = None,
            split: int = 0, optimise: int = 0) -> CertifyOutcome:
    """The local sandwich and certified agreement of ``pruned`` (f) against ``target`` (F) around each centre.

    The Python form of ``probprune certify`` (the module docstring says what each row holds): for every row
    ``c`` of ``centres`` and the ball ``{x : ‖x − c‖ ≤ radius} ∩ box`` (``norm`` ``"l2"`` or ``"linf"``, the box
    ``clip``) — or, with ``halfwidth``, the box ``c ± h`` ∩ box — a certified upper bound on
    ``sup ‖f(x) − F(x)‖₂`` (the minimum of the differential and the layerwise bound, both valid), a witnessed
    lower bound, and the agreement verdict. A centre of 0 is the paper's ball around the origin.

    Args:
        target: F, one network (no trial dim), fully connected; or a :class:`~probprune.nets.graph.Graph` (any
            graph the graph bounds take: :func:`probprune.runner.certify_graph.certify_graphs`).
        pruned: f, the same architecture (a graph of the same structure for a graph F).
        centres: ``[N, d]`` inputs (any float dtype; used in float64), inside ``clip`` when given (a graph also
            takes ``[N, *input_shape]``).
        radius: the ball's radius r > 0 (exactly one of ``radius`` and ``halfwidth``).
        norm: ``"l2"`` or ``"linf"`` (``"linf"`` with ``halfwidth``).
        clip: ``(lo, hi)``: the box the inputs live in, intersected with every ball; or ``None``.
        labels: ``[N]`` integer labels (for the two nets' accuracies), or ``None``.
        seed: randomness of the gap search and the agreement attack (chunk k: its own seed from ``seed``).
        n_restarts, n_steps: gap search budget; the agreement attack gets half of each (at least 1).
        batch_size: centres per chunk (one progress step each).
        progress: called with (centres done, total) after each chunk.
        inputs: a note on what the centres are (kept in the outcome).
        halfwidth: ``[N, d]`` or ``[d]`` ℓ∞ half-widths: ball i is the box ``c_i ± h_i`` (∩ ``clip``).
        split: leaves per ball of the branch and bound that tightens the differential bound and the agreement
            margins (:func:`probprune.bounds.differential_split.split_certified_agreement`; ``certify --split N``);
            0 or 1: the plain bound. Never looser than the plain bound. Chains only: refused for graphs.
        optimise: Adam steps of per-row slope optimisation of the agreement margins of the centres the plain
            relaxation leaves uncertified (``certify --optimise N``; never looser; 0: none); on graphs also the
            gap bound's output and chord rows (:func:`probprune.runner.certify_graph.certify_graphs`).

    Returns:
        :class:`CertifyOutcome`: rows (one per centre, keys as ``--json`` writes them) and their summary.

    >>> from probprune.config import NetSpec, LawSpec
    >>> from probprune.sampling import sample_net
    >>> from probprune.rng import make_generator
    >>> F = sample_net(NetSpec(widths=(4, 8, 3), bias=True), LawSpec(), make_generator(0))
    >>> out = certify(F, F, torch.zeros(2, 4), radius=0.1, n_steps=5, n_restarts=1)
    >>> out.summary["certified_agreement"], out.summary["max_upper"]
    (1.0, 0.0)
    """
    if isinstance(split, bool) or not isinstance(split, int) or split < 0:
        raise ProbPruneError(f"split={split!r}: must be an integer >= 0 (leaves per ball; 0 = no splitting)")
    if isinstance(optimise, bool) or not isinstance(optimise, int) or optimise < 0:
        raise ProbPruneError(f"optimise={optimise!r}: must be an integer >= 0 (Adam steps; 0 = none)")
    if isinstance(target, Graph) or isinstance(pruned, Graph):
        refuse_graph_split(split)
        from probprune.runner.certify_graph import certify_graphs

        return certify_graphs(cast(Graph, target), cast(Graph, pruned), centres, radius=radius, norm=norm, clip=clip,
                              labels=labels, seed=seed, n_restarts=n_restarts, n_steps=n_steps,
                              batch_size=batch_size, progress=progress, inputs=inputs, halfwidth=halfwidth,
                              optimise=optimise)
    x, hw, ball = _check_api(target, pruned, centres, radius, norm, clip, labels, halfwidth,
                             (("n_restarts", n_restarts), ("n_steps", n_steps), ("batch_size", batch_size)))
    t0 = time.perf_counter()
    norms = pair_norms(target, pruned)  # once: every input's layerwise bound reuses them
    rows: list[CertifyRow] = []
    n = x.shape[0]
    if progress is not None:
        progress(0, n)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        gen = torch.Generator().manual_seed(derive_seed(f"seed {seed}", start, "certify"))
        rows += _chunk_rows(target, pruned, x[sl], None if labels is None else labels[sl], start, ball,
                            (n_restarts, n_steps), gen, None if hw is None else hw[sl], norms=norms, split=split,
                            optimise=optimise)
        if progress is not None:
            progress(len(rows), n)
    summary = summarize_rows([r.to_dict() for r in rows])
    summary["seconds"] = time.perf_counter() - t0
    return CertifyOutcome([r.to_dict() for r in rows], summary, inputs, target.spec)


def _check_api(target: Net, pruned: Net, centres: Tensor, radius: float | None, norm: str,
               clip: tuple[float, float] | None, labels: Tensor | None, halfwidth: Tensor | None,
               ints: Sequence[tuple[str, object]]) -> tuple[Tensor, Tensor | None, BallSpec]:
    """The checks of :func:`certify`; the float64 centres, half-widths ``[N, d]`` and the ball."""
    if (radius is None) == (halfwidth is None):
        raise ProbPruneError(f"radius={radius!r}: give exactly one of radius and halfwidth")
    if radius is not None:
        BallSpec(radius=radius, norm=norm)  # type: ignore[arg-type]  # validates radius and norm
    check_pair(target, pruned)
    if target.n_trials is not None:
        raise ProbPruneError(f"target: one network expected, got an ensemble of {target.n_trials}")
    for name, v in ints:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProbPruneError(f"{name}={v!r}: must be an integer >= 1")
    d = target.spec.widths[0]
    if not isinstance(centres, Tensor) or centres.dim() != 2 or centres.shape[1] != d:
        shape = tuple(centres.shape) if isinstance(centres, Tensor) else type(centres).__name__
        raise ProbPruneError(f"centres: expected a tensor [N, {d}], got {shape}")
    x = centres.detach().to(device="cpu", dtype=torch.float64)
    if x.shape[0] == 0:
        raise ProbPruneError("centres: no rows (give at least one centre)")
    if not bool(torch.isfinite(x).all()):
        raise ProbPruneError("centres: contain NaN or inf")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (x.shape[0],)):
        raise ProbPruneError(f"labels: expected a tensor [{x.shape[0]}], got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    if clip is not None and not bool(((x >= clip[0]) & (x <= clip[1])).all()):
        bad = int(((x < clip[0]) | (x > clip[1])).any(1).nonzero()[0, 0])
        raise ProbPruneError(f"clip={clip!r}: input {bad} lies outside the box")
    hw = None if halfwidth is None else _check_halfwidth(halfwidth, x, norm)
    # the centres are passed per chunk (they override the spec's centre); the spec's own centre is the first one,
    # so that a box that holds every centre but not 0 is accepted
    r = float(cast(float, radius)) if hw is None else float(hw.max())
    ball = BallSpec(radius=r, norm=norm, box=clip,  # type: ignore[arg-type]
                    centre=None if clip is None else tuple(float(v) for v in x[0].tolist()))
    return x, hw, ball


def _check_halfwidth(halfwidth: Tensor, x: Tensor, norm: str) -> Tensor:
    if norm != "linf":
        raise ProbPruneError(f"norm={norm!r}: halfwidth boxes are l-infinity balls; use norm linf")
    n, d = x.shape
    if not isinstance(halfwidth, Tensor) or tuple(halfwidth.shape) not in ((n, d), (d,)):
        shape = tuple(halfwidth.shape) if isinstance(halfwidth, Tensor) else type(halfwidth).__name__
        raise ProbPruneError(f"halfwidth: shape {shape}, expected [{n}, {d}] or [{d}]")
    h = halfwidth.detach().to(device="cpu", dtype=torch.float64).expand(n, d).contiguous()
    if not bool((torch.isfinite(h) & (h >= 0)).all()):
        raise ProbPruneError("halfwidth: must be finite and >= 0")
    if not bool((h > 0).any()):
        raise ProbPruneError("halfwidth: every half-width is 0; give some > 0")
    return h


# ---------------------------------------------------------------------------------------- max-prune

SOLVES = ("max-prune",)
GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class MaxPruneSolve:
    """``--solve max-prune``: the largest prune fraction whose certified agreement rate is ≥ ``agreement``.

    Args:
        method: ``magnitude`` or ``random`` (random: uniform scores from ``seed``, the same at every level).
        scope: ``global`` or ``layerwise``.
        agreement: the target certified agreement rate, in (0, 1].
        tol: the bisection stops when the bracket is at most this wide (0 < tol < 0.5).
    """

    method: str = "magnitude"
    scope: str = "global"
    agreement: float = 0.95
    tol: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"solve": "max-prune", "method": self.method, "scope": self.scope, "agreement": self.agreement,
                "tol": self.tol}


def check_solve(job: CertifyJob, solve: MaxPruneSolve) -> None:
    """The checks of a max-prune job that need no model: the solve's fields and the job's files
    (``job.pruned`` is not used: the pruned models are made from ``job.weights``).

    Raises:
        ProbPruneError: naming the field and the bad value.
    """
    a = solve.agreement
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0.0 < a <= 1.0:
        raise ProbPruneError(f"agreement={a!r}: must be a number in (0, 1]")
    if solve.method not in ("magnitude", "random"):
        raise ProbPruneError(f"method={solve.method!r}: must be one of magnitude, random")
    if solve.scope not in ("global", "layerwise"):
        raise ProbPruneError(f"scope={solve.scope!r}: must be one of global, layerwise")
    t = solve.tol
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 < t < 0.5:
        raise ProbPruneError(f"tol={t!r}: must be a number in (0, 0.5)")
    check_job(dataclasses.replace(job, pruned=job.weights))


def _level_row(lj: LoadedJob, frac: float, solve: MaxPruneSolve) -> CertifyLevelRow:
    """Prune F at ``frac`` and measure certified/empirical agreement and the pruned net's accuracy."""
    from probprune.masks import prune

    t0 = time.perf_counter()
    job, target, x, y = lj.job, cast(Net, lj.target), lj.x, lj.y  # a chain: load_job refuses graphs here
    gen = torch.Generator().manual_seed(job.seed)
    rule = PruneSpec(method=cast(Any, solve.method), prune_fraction=frac, scope=cast(Any, solve.scope))
    pruned = cast(Net, prune(target, rule, generator=gen if solve.method == "random" else None).model)
    agr = certified_agreement(target, pruned, lj.ball, centres=x, generator=torch.Generator().manual_seed(job.seed),
                              n_restarts=max(1, job.n_restarts // 2), n_steps=max(1, job.n_steps // 2),
                              batch_size=job.batch_size, halfwidth=lj.halfwidth)
    with torch.no_grad():
        cp = cast(Tensor, pruned.to(dtype=torch.float64)(x)).argmax(-1)
    same = cp == agr.target_class
    n = x.shape[0]
    emp = sum(bool(same[i]) and agr.verdicts[i] != "refuted" for i in range(n)) / n
    return CertifyLevelRow(prune_fraction=frac, certified_agreement=agr.certified_rate, empirical_agreement=emp,
                           refuted=sum(v == "refuted" for v in agr.verdicts),
                           accuracy_pruned=None if y is None else float((cp == y).double().mean()),
                           meets_target=agr.certified_rate >= solve.agreement, seconds=time.perf_counter() - t0)


def _search_levels(evaluate: Callable[[float], dict[str, Any]], solve: MaxPruneSolve) -> float | None:
    """The grid ``GRID``, then bisection above its largest passing level; the largest passing level seen.

    Magnitude (and fixed-seed random) masks are nested — every weight removed at level p is removed at
    every level above — but the certified agreement rate need not fall monotonically with p (the gap of
    nested masks can shrink, and the relaxation's looseness varies). So the search takes the largest
    *measured* passing grid level (not the first failure), bisects between it and the next grid level,
    and answers a level only where its own rate was measured ≥ the target: every answer is certified,
    but a larger passing level between other grid points may exist.
    """
    rows = {f: evaluate(f) for f in GRID}
    passing = [f for f in GRID if rows[f]["meets_target"]]
    if not passing:
        return None
    lo = max(passing)
    above = [f for f in GRID if f > lo]
    if not above:
        return lo
    hi = above[0]
    while hi - lo > solve.tol:
        mid = round((lo + hi) / 2, 6)
        if evaluate(mid)["meets_target"]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True, eq=False)
class MaxPruneOutcome:
    """The measured curve (one row per level, by prune fraction), the answer and the summary."""

    curve: list[dict[str, Any]]
    summary: dict[str, Any]
    inputs: str
    spec: NetSpec
    run_dir: Path | None = None


def max_prune_hash(job: CertifyJob, solve: MaxPruneSolve) -> str:
    """The config hash of a max-prune run (the job without ``out`` and ``pruned``, and the solve)."""
    cfg = json.loads(canonical_json(job))
    for k in ("out", "pruned"):
        cfg.pop(k, None)
    return config_hash({"job": cfg, "solve": solve.to_dict()}, kind="certify-max-prune")


def run_max_prune(job: CertifyJob, solve: MaxPruneSolve, progress: Progress | None = None,
                  write: bool = True, *, run_dir: str | Path | None = None) -> MaxPruneOutcome:
    """``--solve max-prune``: the largest prune fraction of ``job.weights`` with certified agreement ≥ target.

    Args:
        job: inputs, ball, budgets (``job.pruned`` is not used: the models are made here).
        solve: method, scope, target rate, bisection tolerance.
        progress: called with (levels done, levels planned) after each level.
        write: write ``job.out`` (the curve and the summary) when set.
        run_dir: the run folder (each measured level stored as it is measured; a resumed run re-measures
            none of its stored levels); ``None``: nothing stored.
    """
    check_solve(job, solve)
    lj = load_job(job, pruned_from_target=True)
    h, files = max_prune_hash(job, solve), job_files(job, pruned_from_target=True)
    store = None if run_dir is None else CertifyStore(run_dir, _stored_doc(job, h, files, solve.to_dict()),
                                                      int(lj.x.shape[0]))
    t0 = time.perf_counter()
    seen: dict[float, CertifyLevelRow] = {} if store is None else store.levels()
    planned = len(GRID) + math.ceil(math.log2(max(2.0, 0.1 / solve.tol)))

    def evaluate(frac: float) -> dict[str, Any]:
        if frac not in seen:
            seen[frac] = _level_row(lj, frac, solve)
            if store is not None:
                store.add([seen[frac]])
            if progress is not None:
                progress(len(seen), max(planned, len(seen)))
        return seen[frac].to_dict()

    try:
        best = _search_levels(evaluate, solve)
        with torch.no_grad():
            ct = cast(Tensor, lj.target.to(dtype=torch.float64)(lj.x)).argmax(-1)
        summary = {"max_prune_fraction": best, "agreement_target": solve.agreement, "method": solve.method,
                   "scope": solve.scope, "n": int(lj.x.shape[0]), "levels": len(seen),
                   "accuracy_target": None if lj.y is None else float((ct == lj.y).double().mean()),
                   "seconds": time.perf_counter() - t0}
        if store is not None:
            store.set_meta("summary", json.dumps(json_safe(summary), sort_keys=True, allow_nan=False))
            store.set_meta("finished", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    finally:
        if store is not None:
            store.close()
    curve = [seen[f].to_dict() for f in sorted(seen)]
    if write and job.out is not None:
        write_rows(job.out, curve, summary)
    return MaxPruneOutcome(curve, summary, lj.inputs, cast(Net, lj.target).spec, None if store is None else store.path)
