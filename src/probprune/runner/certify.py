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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.differential import (
    DifferentialBound,
    certified_agreement,
    differential_bound,
    gap_search,
)
from probprune.config import (
    DATASETS,
    BallSpec,
    CertifyJob,
    CertifyNorm,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    json_safe,
    parse_arch,
)
from probprune.data import dataset_status, inputs_for, load_dataset
from probprune.nets import Net, check_pair
from probprune.nets.onnx import load_onnx
from probprune.runner.prune import check_output_paths, load_net
from probprune.store import atomic_write_text

__all__ = ["CertifyOutcome", "MaxPruneOutcome", "MaxPruneSolve", "certify", "check_job", "check_solve",
           "layerwise_radius", "load_inputs", "load_pair", "run_certify", "run_max_prune", "summarize_rows"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class CertifyOutcome:
    """Per-input rows, the summary, and the note on the inputs' scale (``spec``: None for a graph model)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    inputs: str
    spec: NetSpec | None


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
        ProbPruneError: a dataset that is not prepared, N beyond the data, an ``.npy`` of the wrong shape,
            non-numeric or non-finite values, labels of the wrong shape.
    """
    if spec.kind != "fcn":
        raise ProbPruneError("differential bound: conv nets are not supported yet (FCN only); use "
                             "probprune gap for a layerwise bound")
    d = spec.widths[0]
    n = job.n_points
    if job.data in DATASETS:
        if not dataset_status(job.data)["ready"]:
            raise ProbPruneError(f"data={job.data!r}: not prepared; run: probprune data prepare {job.data}")
        ds = load_dataset(job.data)
        total = int(ds.test_images.shape[0])
        if n > total:
            raise ProbPruneError(f"n_points={n}: the {job.data} test set has {total} images")
        imgs = ds.test_images[:n]
        if imgs[0].numel() != d:
            raise ProbPruneError(f"data={job.data!r}: images have {imgs[0].numel()} pixels, the network's input "
                                 f"dim is {d}")
        x = inputs_for(imgs, spec, torch.float32).double()
        return x, ds.test_labels[:n].clone(), f"{job.data} test images 0..{n - 1}, pixels / 255 in [0, 1]"
    arr = _load_npy("data", job.data)
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] != d:
        raise ProbPruneError(f"data={job.data!r}: shape {arr.shape} dtype {arr.dtype}, expected numbers [N, {d}]")
    if n > arr.shape[0]:
        raise ProbPruneError(f"n_points={n}: data={job.data!r} has {arr.shape[0]} rows")
    arr = arr[:n]
    if not np.isfinite(arr).all():
        raise ProbPruneError(f"data={job.data!r}: non-finite values")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    y: Tensor | None = None
    if job.labels is not None:
        lab = _load_npy("labels", job.labels)
        if lab.dtype.kind not in "iu" or lab.ndim != 1 or lab.shape[0] < n:
            raise ProbPruneError(f"labels={job.labels!r}: shape {lab.shape} dtype {lab.dtype}, expected integers "
                                 f"[>= {n}]")
        y = torch.from_numpy(lab[:n].astype(np.int64))
    return x, y, f"rows 0..{n - 1} of {job.data} as given"


def layerwise_radius(centres: Tensor, radius: float, norm: str, clip: tuple[float, float] | None) -> Tensor:
    """``[B]`` radii R (rounded up) of ℓ2 balls around 0 that contain each ball ∩ box (module docstring).

    >>> float(layerwise_radius(torch.tensor([[3.0, 4.0]], dtype=torch.float64), 1.0, "l2", None)[0]) >= 6.0
    True
    """
    c = centres.double()
    d = c.shape[1]
    # covers the float64 rounding of the norms and sums for any d (relative ≤ 2(d + 4)·2⁻⁵³), with room to spare
    up = (1.0 + 1e-12) * (1.0 + 2.0 * (d + 4) * 2.0 ** -53)
    grow = radius if norm == "l2" else radius * math.sqrt(d)
    r1 = (c.norm(dim=1) + grow) * up
    lo, hi = c - radius, c + radius
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
                budget: tuple[int, int], gen: torch.Generator) -> list[dict[str, Any]]:
    n_restarts, n_steps = budget
    radii = layerwise_radius(x, ball.radius, ball.norm, ball.box)
    lay = [float(certified_gap_bound(target, pruned, radius=float(r)).value) for r in radii.tolist()]
    low = gap_search(target, pruned, ball, gen, centres=x, n_restarts=n_restarts, n_steps=n_steps)
    # one propagation gives both the agreement margins and the differential gap bound
    agr = certified_agreement(target, pruned, ball, centres=x, generator=gen,
                              n_restarts=max(1, n_restarts // 2), n_steps=max(1, n_steps // 2))
    diff = cast(DifferentialBound, agr.bound)
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    with torch.no_grad():
        ct, cp = cast(Tensor, t64(x)).argmax(-1), cast(Tensor, p64(x)).argmax(-1)
        wt, wp = cast(Tensor, t64(low.x)).argmax(-1), cast(Tensor, p64(low.x)).argmax(-1)
    rows = []
    for i in range(x.shape[0]):
        ud, ul = float(diff.value[i]), lay[i]
        upper = min(ud, ul)
        lower = float(low.value[i])
        verdict = agr.verdicts[i]
        emp = bool(ct[i] == cp[i]) and bool(wt[i] == wp[i]) and verdict != "refuted"
        rows.append({
            "index": start + i,
            "label": None if y is None else int(y[i]),
            "class_target": int(ct[i]), "class_pruned": int(cp[i]),
            "lower": lower, "upper": upper, "upper_differential": ud, "upper_layerwise": ul,
            "layerwise_radius": float(radii[i]),
            "upper_from": "differential" if ud <= ul else "layerwise",
            "ratio": upper / lower if lower > 0 else (1.0 if upper == 0 else math.inf),
            "verdict": verdict, "certified_agree": verdict == "certified", "empirical_agree": emp,
            "margin_target": float(agr.margin_target[i]), "margin_pruned": float(agr.margin_pruned[i]),
        })
    return rows


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


def _graph_target(job: CertifyJob) -> Any:
    """The target as a :class:`~probprune.runner.graph.GraphModel` when it is an ONNX graph the chain reader
    refuses and the graph reader reads exactly; ``None`` for a chain (or a .safetensors file)."""
    if _model_kind("weights", job.weights) != "onnx":
        return None
    from probprune.runner.graph import GraphModelFound, graph_fallback

    try:
        load_onnx(job.weights)
    except ProbPruneError as e:
        err = graph_fallback("weights", job.weights, e)
        if isinstance(err, GraphModelFound):
            return err.model
        raise err from None
    return None


def run_certify(job: CertifyJob, progress: Progress | None = None, write: bool = True) -> CertifyOutcome:
    """Load, certify every input, summarise, and (with ``job.out`` and ``write``) write the rows.

    Args:
        job: the settings (checked first: nothing is computed or written for bad input).
        progress: called with (inputs done, total) after each chunk.
        write: write ``job.out`` when set.
    """
    check_job(job)
    graph = _graph_target(job)
    if graph is not None:  # an ONNX graph (conv, residual): the differential graph bound
        from probprune.runner.certify_graph import run_graph_certify

        return run_graph_certify(job, graph, progress=progress, write=write)
    target, pruned = load_pair(job)
    if target.spec.kind != "fcn":  # the differential bound's own refusal, passed on
        differential_bound(target, pruned, BallSpec(radius=float(job.radius)))
    x, y, note = load_inputs(job, target.spec)
    out = certify(target, pruned, x, radius=float(job.radius), norm=job.norm, clip=job.clip, labels=y,
                  seed=job.seed, n_restarts=job.n_restarts, n_steps=job.n_steps, batch_size=job.batch_size,
                  progress=progress, inputs=note)
    if write and job.out is not None:
        write_rows(job.out, out.rows, out.summary)
    return out


def certify(target: Net, pruned: Net, centres: Tensor, *, radius: float, norm: CertifyNorm = "l2",
            clip: tuple[float, float] | None = None, labels: Tensor | None = None, seed: int = 0,
            n_restarts: int = 8, n_steps: int = 100, batch_size: int = 25, progress: Progress | None = None,
            inputs: str = "centres as given") -> CertifyOutcome:
    """The local sandwich and certified agreement of ``pruned`` (f) against ``target`` (F) around each centre.

    The Python form of ``probprune certify`` (the module docstring says what each row holds): for every row
    ``c`` of ``centres`` and the ball ``{x : ‖x − c‖ ≤ radius} ∩ box`` (``norm`` ``"l2"`` or ``"linf"``, the box
    ``clip``), a certified upper bound on ``sup ‖f(x) − F(x)‖₂`` (the minimum of the differential and the
    layerwise bound, both valid), a witnessed lower bound, and the agreement verdict. A centre of 0 is the
    paper's ball around the origin.

    Args:
        target: F, one network (no trial dim), fully connected.
        pruned: f, the same architecture.
        centres: ``[N, d]`` inputs (any float dtype; used in float64), inside ``clip`` when given.
        radius: the ball's radius r > 0.
        norm: ``"l2"`` or ``"linf"``.
        clip: ``(lo, hi)``: the box the inputs live in, intersected with every ball; or ``None``.
        labels: ``[N]`` integer labels (for the two nets' accuracies), or ``None``.
        seed: randomness of the gap search and the agreement attack.
        n_restarts, n_steps: gap search budget; the agreement attack gets half of each (at least 1).
        batch_size: centres per chunk (one progress step each).
        progress: called with (centres done, total) after each chunk.
        inputs: a note on what the centres are (kept in the outcome).

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
    BallSpec(radius=radius, norm=norm)  # validates radius and norm
    check_pair(target, pruned)
    if target.n_trials is not None:
        raise ProbPruneError(f"target: one network expected, got an ensemble of {target.n_trials}")
    for name, v in (("n_restarts", n_restarts), ("n_steps", n_steps), ("batch_size", batch_size)):
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
    # the centres are passed per chunk (they override the spec's centre); the spec's own centre is the first one,
    # so that a box that holds every centre but not 0 is accepted
    ball = BallSpec(radius=radius, norm=norm, box=clip,
                    centre=None if clip is None else tuple(float(v) for v in x[0].tolist()))
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    n = x.shape[0]
    if progress is not None:
        progress(0, n)
    for start in range(0, n, batch_size):
        rows += _chunk_rows(target, pruned, x[start:start + batch_size],
                            None if labels is None else labels[start:start + batch_size], start, ball,
                            (n_restarts, n_steps), gen)
        if progress is not None:
            progress(len(rows), n)
    summary = summarize_rows(rows)
    summary["seconds"] = time.perf_counter() - t0
    return CertifyOutcome(rows, summary, inputs, target.spec)


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


def _level_row(target: Net, x: Tensor, y: Tensor | None, frac: float, job: CertifyJob, solve: MaxPruneSolve
               ) -> dict[str, Any]:
    """Prune ``target`` at ``frac`` and measure certified/empirical agreement and the pruned net's accuracy."""
    from probprune.masks import prune

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(job.seed)
    rule = PruneSpec(method=cast(Any, solve.method), prune_fraction=frac, scope=cast(Any, solve.scope))
    pruned = cast(Net, prune(target, rule, generator=gen if solve.method == "random" else None).model)
    ball = BallSpec(radius=float(job.radius), norm=job.norm, box=job.clip)  # type: ignore[arg-type]
    agr = certified_agreement(target, pruned, ball, centres=x, generator=torch.Generator().manual_seed(job.seed),
                              n_restarts=max(1, job.n_restarts // 2), n_steps=max(1, job.n_steps // 2),
                              batch_size=job.batch_size)
    with torch.no_grad():
        cp = cast(Tensor, pruned.to(dtype=torch.float64)(x)).argmax(-1)
    same = cp == agr.target_class
    n = x.shape[0]
    emp = sum(bool(same[i]) and agr.verdicts[i] != "refuted" for i in range(n)) / n
    return {"prune_fraction": frac, "certified_agreement": agr.certified_rate, "empirical_agreement": emp,
            "refuted": sum(v == "refuted" for v in agr.verdicts),
            "accuracy_pruned": None if y is None else float((cp == y).double().mean()),
            "meets_target": agr.certified_rate >= solve.agreement, "seconds": time.perf_counter() - t0}


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


def run_max_prune(job: CertifyJob, solve: MaxPruneSolve, progress: Progress | None = None,
                  write: bool = True) -> MaxPruneOutcome:
    """``--solve max-prune``: the largest prune fraction of ``job.weights`` with certified agreement ≥ target.

    Args:
        job: inputs, ball, budgets (``job.pruned`` is not used: the models are made here).
        solve: method, scope, target rate, bisection tolerance.
        progress: called with (levels done, levels planned) after each level.
        write: write ``job.out`` (the curve and the summary) when set.
    """
    check_solve(job, solve)
    target, _ = load_pair(dataclasses.replace(job, pruned=job.weights))
    x, y, note = load_inputs(job, target.spec)
    if job.clip is not None and not bool(((x >= job.clip[0]) & (x <= job.clip[1])).all()):
        bad = int(((x < job.clip[0]) | (x > job.clip[1])).any(1).nonzero()[0, 0])
        raise ProbPruneError(f"clip={job.clip!r}: input {bad} lies outside the box")
    t0 = time.perf_counter()
    seen: dict[float, dict[str, Any]] = {}
    planned = len(GRID) + math.ceil(math.log2(max(2.0, 0.1 / solve.tol)))

    def evaluate(frac: float) -> dict[str, Any]:
        if frac not in seen:
            seen[frac] = _level_row(target, x, y, frac, job, solve)
            if progress is not None:
                progress(len(seen), max(planned, len(seen)))
        return seen[frac]

    best = _search_levels(evaluate, solve)
    with torch.no_grad():
        ct = cast(Tensor, target.to(dtype=torch.float64)(x)).argmax(-1)
    summary = {"max_prune_fraction": best, "agreement_target": solve.agreement, "method": solve.method,
               "scope": solve.scope, "n": int(x.shape[0]), "levels": len(seen),
               "accuracy_target": None if y is None else float((ct == y).double().mean()),
               "seconds": time.perf_counter() - t0}
    curve = [seen[f] for f in sorted(seen)]
    if write and job.out is not None:
        write_rows(job.out, curve, summary)
    return MaxPruneOutcome(curve, summary, note, target.spec)
