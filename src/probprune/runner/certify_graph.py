"""``probprune certify`` on ONNX graph models (conv nets, residual nets): the same rows and summary as for chains.

For a target that the chain reader refuses and the graph reader reads exactly
(:class:`~probprune.runner.graph.GraphModelFound`), each input ``c`` and ball ``{x : ‖x − c‖ ≤ r} ∩ box`` gets:

* ``lower``: :func:`~probprune.bounds.differential_graph.graph_gap_search` — ``‖f(x) − F(x)‖₂`` (float64) at a
  witness checked to lie in the ball ∩ box;
* ``upper``: the **minimum** of two certified upper bounds, both valid: the differential graph bound
  (:func:`~probprune.bounds.differential_graph.graph_certified_agreement`'s ``bound``, one propagation with the
  margins) and the layerwise graph bound (:func:`~probprune.bounds.graph.certified_graph_gap`) over the ℓ2 ball
  around 0 of radius ``R`` = the largest :func:`~probprune.runner.certify.layerwise_radius` of the run (that
  ball holds every local ball ∩ box of the run; the layerwise bound is computed once, its operator norms cost
  seconds to minutes on a conv net);
* the certified agreement verdict and the empirical agreement, as for chains.

Both bounds cover the graphs **evaluated in float64** (ONNX parameters are read as float64) and their
exact-arithmetic gap; a float32 forward pass (e.g. onnxruntime's) is not covered.

Inputs: ``mnist`` / ``fashion-mnist`` — the first N test images, pixels / 255 in [0, 1], shaped to the graph's
input; or an ``.npy`` file ``[N, *input_shape]`` or ``[N, d]`` (``allow_pickle=False``), labels from ``--labels``.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import torch
from torch import Tensor

from probprune.bounds.differential import DifferentialBound
from probprune.bounds.differential_graph import graph_certified_agreement, graph_gap_search
from probprune.bounds.graph import certified_graph_gap
from probprune.config import BallSpec, CertifyJob, ProbPruneError
from probprune.nets.graph import Graph
from probprune.runner.certify import CertifyOutcome, Progress, layerwise_radius, read_inputs, summarize_rows
from probprune.runner.graph import GraphModel, load_pruned_graph

__all__ = ["certify_graphs", "graph_inputs", "run_graph_certify"]


def graph_inputs(job: CertifyJob, graph: Graph) -> tuple[Tensor, Tensor | None, str]:
    """The first N inputs ``[N, *input_shape]`` (float64), their labels, and a note
    (:func:`probprune.runner.certify.read_inputs` with the graph's input shape)."""
    return read_inputs(job, graph.input_shape)


def _rows(target: Graph, pruned: Graph, x: Tensor, y: Tensor | None, start: int, ball: BallSpec,
          budget: tuple[int, int], gen: torch.Generator, layerwise: tuple[float, float]) -> list[dict[str, Any]]:
    n_restarts, n_steps = budget
    low = graph_gap_search(target, pruned, ball, gen, centres=x, n_restarts=n_restarts, n_steps=n_steps)
    agr = graph_certified_agreement(target, pruned, ball, centres=x, generator=gen,
                                    n_restarts=max(1, n_restarts // 2), n_steps=max(1, n_steps // 2))
    diff = cast(DifferentialBound, agr.bound)  # graph_certified_agreement always returns its bound
    t64, p64 = target.to(torch.float64), pruned.to(torch.float64)
    with torch.no_grad():
        ct, cp = cast(Tensor, t64(x)).argmax(-1), cast(Tensor, p64(x)).argmax(-1)
        xw = low.x.reshape(x.shape)
        wt, wp = cast(Tensor, t64(xw)).argmax(-1), cast(Tensor, p64(xw)).argmax(-1)
    rows = []
    ul, big_r = layerwise
    for i in range(x.shape[0]):
        ud = float(diff.value[i])
        upper, lower = min(ud, ul), float(low.value[i])
        verdict = agr.verdicts[i]
        rows.append({
            "index": start + i,
            "label": None if y is None else int(y[i]),
            "class_target": int(ct[i]), "class_pruned": int(cp[i]),
            "lower": lower, "upper": upper, "upper_differential": ud, "upper_layerwise": ul,
            "layerwise_radius": big_r,
            "upper_from": "differential" if ud <= ul else "layerwise",
            "ratio": upper / lower if lower > 0 else (1.0 if upper == 0 else math.inf),
            "verdict": verdict, "certified_agree": verdict == "certified",
            "empirical_agree": bool(ct[i] == cp[i]) and bool(wt[i] == wp[i]) and verdict != "refuted",
            "margin_target": float(agr.margin_target[i]), "margin_pruned": float(agr.margin_pruned[i]),
        })
    return rows


def certify_graphs(target: Graph, pruned: Graph, centres: Tensor, *, radius: float, norm: str = "l2",
                   clip: tuple[float, float] | None = None, labels: Tensor | None = None, seed: int = 0,
                   n_restarts: int = 8, n_steps: int = 100, batch_size: int = 25, progress: Progress | None = None,
                   inputs: str = "centres as given") -> CertifyOutcome:
    """:func:`probprune.runner.certify.certify` for two graphs of one structure (module docstring).

    Args:
        target, pruned: F and f (:class:`~probprune.nets.graph.Graph`, one structure, classifiers with [m] logits).
        centres: ``[N, *input_shape]`` or ``[N, d]`` inputs (used in float64), inside ``clip`` when given.
        radius, norm, clip, labels, seed, n_restarts, n_steps, batch_size, progress, inputs: as for chains.
    """
    BallSpec(radius=radius, norm=norm)  # type: ignore[arg-type]  # validates radius and norm
    for name, v in (("n_restarts", n_restarts), ("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProbPruneError(f"{name}={v!r}: must be an integer >= 1")
    d = math.prod(target.input_shape)
    if not isinstance(centres, Tensor) or centres.dim() < 2 or centres[0].numel() != d or centres.shape[0] == 0:
        shape = tuple(centres.shape) if isinstance(centres, Tensor) else type(centres).__name__
        raise ProbPruneError(f"centres: expected a tensor [N, {', '.join(map(str, target.input_shape))}], got {shape}")
    x = centres.detach().to("cpu", torch.float64).reshape(centres.shape[0], *target.input_shape)
    flat = x.reshape(x.shape[0], d)
    if not bool(torch.isfinite(flat).all()):
        raise ProbPruneError("centres: contain NaN or inf")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (x.shape[0],)):
        raise ProbPruneError(f"labels: expected a tensor [{x.shape[0]}]")
    if clip is not None and not bool(((flat >= clip[0]) & (flat <= clip[1])).all()):
        bad = int(((flat < clip[0]) | (flat > clip[1])).any(1).nonzero()[0, 0])
        raise ProbPruneError(f"clip={clip!r}: input {bad} lies outside the box")
    ball = BallSpec(radius=radius, norm=norm, box=clip,  # type: ignore[arg-type]
                    centre=None if clip is None else tuple(float(v) for v in flat[0].tolist()))
    t0 = time.perf_counter()
    big_r = float(layerwise_radius(flat, radius, norm, clip).max())
    layer = float(certified_graph_gap(target, pruned, radius=big_r).value)
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    n = x.shape[0]
    if progress is not None:
        progress(0, n)
    for start in range(0, n, batch_size):
        rows += _rows(target, pruned, x[start:start + batch_size],
                      None if labels is None else labels[start:start + batch_size], start, ball,
                      (n_restarts, n_steps), gen, (layer, big_r))
        if progress is not None:
            progress(len(rows), n)
    summary = summarize_rows(rows)
    summary["seconds"] = time.perf_counter() - t0
    summary["model"] = "graph"
    return CertifyOutcome(rows, summary, inputs, None)


def run_graph_certify(job: CertifyJob, model: GraphModel, progress: Progress | None = None,
                      write: bool = True) -> CertifyOutcome:
    """``probprune certify`` for a graph target: read the pruned graph, the inputs, certify, write the rows."""
    from probprune.runner.certify import write_rows

    pruned = load_pruned_graph(model, job.pruned)
    target = model.graph
    if len(target.output_shape) != 1 or target.output_shape[0] < 2:
        raise ProbPruneError(f"weights={job.weights!r}: the graph's output shape is {target.output_shape}; "
                             "certified agreement needs a classifier ([m] logits, m >= 2)")
    if job.radius is None:
        raise ProbPruneError(f"halfwidth={job.halfwidth!r}: per-input boxes are not supported for graph models yet")
    x, y, note = graph_inputs(job, target)
    out = certify_graphs(target, pruned, x, radius=float(job.radius), norm=job.norm, clip=job.clip, labels=y,
                         seed=job.seed, n_restarts=job.n_restarts, n_steps=job.n_steps,
                         batch_size=job.batch_size, progress=progress, inputs=note)
    if write and job.out is not None:
        write_rows(job.out, out.rows, out.summary)
    return out
