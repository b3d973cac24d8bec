"""``probprune certify`` on ONNX graph models (conv nets, residual nets): the same rows and summary as for chains.

For a target that the chain reader refuses and the graph reader reads exactly
(:class:`~probprune.runner.graph.GraphModelFound`), or an ONNX conv chain, each input ``c`` and ball
``{x : ‖x − c‖ ≤ r} ∩ box`` — or, with ``--halfwidth``, the box ``c ± h`` ∩ box — gets:

* ``lower``: :func:`~probprune.bounds.differential_graph.graph_gap_search` — ``‖f(x) − F(x)‖₂`` (float64) at a
  witness checked to lie in the ball ∩ box;
* ``upper``: the **minimum** of two certified upper bounds, both valid: the differential graph bound
  (:func:`~probprune.bounds.differential_graph.graph_certified_agreement`'s ``bound``, one propagation with the
  margins) and the layerwise graph bound (:func:`~probprune.bounds.graph.certified_graph_gap`) over the ℓ2 ball
  around 0 of radius ``R`` = :func:`~probprune.runner.certify.layerwise_radius` of that input (that ball holds the
  input's ball ∩ box). The layerwise bound's operator norms are computed once per (target, pruned) pair
  (:func:`~probprune.bounds.graph.graph_pair_norms`; seconds to minutes on a conv net) and every input's bound
  reuses them;
* the certified agreement verdict and the empirical agreement, as for chains.

The rows are :class:`~probprune.records.CertifyRow`\\ s, computed per unit of inputs by
:func:`probprune.runner.certify.compute_unit` exactly as for chains, so run folders (resume), ``--executor ray``
and the "certified agreement vs radius" curve work the same way for graphs.

Both bounds cover the graphs **evaluated in float64** (ONNX parameters are read as float64) and their
exact-arithmetic gap; a float32 forward pass (e.g. onnxruntime's) is not covered.

Inputs: ``mnist`` / ``fashion-mnist`` — the first N test images, pixels / 255 in [0, 1], shaped to the graph's
input; or an ``.npy`` file ``[N, *input_shape]`` or ``[N, d]`` (``allow_pickle=False``), labels from ``--labels``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from probprune.bounds.differential import DifferentialBound
from probprune.bounds.differential_graph import graph_certified_agreement, graph_gap_search
from probprune.bounds.graph import GraphPairNorms, certified_graph_gap, check_graph_pair, graph_pair_norms
from probprune.config import BallSpec, CertifyJob, ProbPruneError
from probprune.nets.graph import Graph
from probprune.records import CertifyRadiusRow, CertifyRow
from probprune.rng import derive_seed
from probprune.runner.certify import (
    CertifyOutcome,
    Progress,
    _check_halfwidth,
    certify_rows,
    curve_rows,
    layerwise_radius,
    summarize_rows,
)
from probprune.runner.graph import GraphModel, load_pruned_graph

__all__ = ["certify_graphs", "graph_chunk_rows", "graph_curve_rows", "load_graph_pair"]


def load_graph_pair(job: CertifyJob, model: GraphModel) -> tuple[Graph, Graph]:
    """F (the target graph) and f (``job.pruned`` read as a graph of F's structure), F a classifier.

    Raises:
        ProbPruneError: naming ``pruned`` (not an ONNX graph of F's structure) or ``weights`` (not [m] logits).
    """
    pruned = load_pruned_graph(model, job.pruned)
    target = model.graph
    if len(target.output_shape) != 1 or target.output_shape[0] < 2:
        raise ProbPruneError(f"weights={job.weights!r}: the graph's output shape is {target.output_shape}; "
                             "certified agreement needs a classifier ([m] logits, m >= 2)")
    return target, pruned


def graph_chunk_rows(target: Graph, pruned: Graph, x: Tensor, y: Tensor | None, start: int, ball: BallSpec,
                     budget: tuple[int, int], gen: torch.Generator, hw: Tensor | None = None,
                     norms: GraphPairNorms | None = None, optimise: int = 0) -> list[CertifyRow]:
    """The rows of inputs ``start ..`` (``x`` ``[b, *input_shape]`` or ``[b, d]``; ``hw`` ``[b, d]`` boxes);
    ``optimise``: Adam steps of the per-row slope optimisation of the gap bound and the open margins."""
    n_restarts, n_steps = budget
    flat = x.reshape(x.shape[0], -1)
    radii = layerwise_radius(flat, ball.radius, ball.norm, ball.box, hw)
    gn = graph_pair_norms(target, pruned) if norms is None else norms
    lay = [float(certified_graph_gap(target, pruned, radius=float(r), norms=gn).value) for r in radii.tolist()]
    low = graph_gap_search(target, pruned, ball, gen, centres=flat, n_restarts=n_restarts, n_steps=n_steps,
                           halfwidth=hw)
    agr = graph_certified_agreement(target, pruned, ball, centres=flat, generator=gen, halfwidth=hw,
                                    n_restarts=max(1, n_restarts // 2), n_steps=max(1, n_steps // 2),
                                    optimise=optimise)
    diff = cast(DifferentialBound, agr.bound)  # graph_certified_agreement always returns its bound
    t64, p64 = target.to(torch.float64), pruned.to(torch.float64)
    shaped = flat.reshape(flat.shape[0], *target.input_shape)
    with torch.no_grad():
        ct, cp = cast(Tensor, t64(shaped)).argmax(-1), cast(Tensor, p64(shaped)).argmax(-1)
        xw = low.x.reshape(shaped.shape)
        wt, wp = cast(Tensor, t64(xw)).argmax(-1), cast(Tensor, p64(xw)).argmax(-1)
    return certify_rows(start, y, (ct, cp, wt, wp), lay, radii, diff, low, agr)


def graph_curve_rows(target: Graph, pruned: Graph, x: Tensor, start: int, ball: BallSpec, hw: Tensor | None,
                     curve: Sequence[tuple[float, float | None]]) -> list[CertifyRadiusRow]:
    """Certified agreement (no attack) of each input at each (scale, radius) of the curve."""
    return curve_rows(target, pruned, x.reshape(x.shape[0], -1), start, ball, hw, curve, graph_certified_agreement)


def _check_centres(target: Graph, centres: Tensor, labels: Tensor | None, clip: tuple[float, float] | None
                   ) -> Tensor:
    """The float64 centres ``[N, *input_shape]`` (checked: shape, finite, labels, inside the clip box)."""
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
    return x


def certify_graphs(target: Graph, pruned: Graph, centres: Tensor, *, radius: float | None = None,
                   norm: str = "l2", clip: tuple[float, float] | None = None, labels: Tensor | None = None,
                   seed: int = 0, n_restarts: int = 8, n_steps: int = 100, batch_size: int = 25,
                   progress: Progress | None = None, inputs: str = "centres as given",
                   halfwidth: Tensor | None = None, optimise: int = 0) -> CertifyOutcome:
    """:func:`probprune.runner.certify.certify` for two graphs of one structure (module docstring).

    Args:
        target, pruned: F and f (:class:`~probprune.nets.graph.Graph`, one structure, classifiers with [m] logits).
        centres: ``[N, *input_shape]`` or ``[N, d]`` inputs (used in float64), inside ``clip`` when given.
        radius: the ball's radius (exactly one of ``radius`` and ``halfwidth``).
        halfwidth: ``[N, d]``, ``[N, *input_shape]``, ``[d]`` or ``input_shape`` ℓ∞ half-widths (``norm="linf"``):
            ball i is the box ``c_i ± h_i`` (∩ ``clip``).
        norm, clip, labels, seed, n_restarts, n_steps, batch_size, progress, inputs: as for chains.
        optimise: Adam steps of per-row slope optimisation (:func:`~probprune.bounds.differential_graph.
            graph_certified_agreement`): on graphs it tightens the gap bound's output and chord rows as well as the
            margins of the inputs the plain relaxation leaves uncertified; never looser; 0: none.

    >>> from probprune.nets.graph import Graph, Node, activation
    >>> w = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    >>> F = Graph([Node("fc", "linear", ("input",), params={"weight": w}),
    ...            Node("r", "act", ("fc",), {"act": activation("relu")}),
    ...            Node("out", "linear", ("r",), params={"weight": w})], (2,))
    >>> out = certify_graphs(F, F, torch.tensor([[1.0, 0.0]]), radius=0.1, n_restarts=1, n_steps=5)
    >>> out.summary["model"], out.summary["certified_agreement"], out.summary["max_upper"]
    ('graph', 1.0, 0.0)
    """
    if (radius is None) == (halfwidth is None):
        raise ProbPruneError(f"radius={radius!r}: give exactly one of radius and halfwidth")
    if radius is not None:
        BallSpec(radius=radius, norm=norm)  # type: ignore[arg-type]  # validates radius and norm
    check_graph_pair(target, pruned)
    for name, v in (("n_restarts", n_restarts), ("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProbPruneError(f"{name}={v!r}: must be an integer >= 1")
    x = _check_centres(target, centres, labels, clip)
    flat = x.reshape(x.shape[0], -1)
    hw = None
    if halfwidth is not None:
        h = halfwidth
        if isinstance(h, Tensor) and tuple(h.shape) == target.input_shape:
            h = h.reshape(-1)
        elif isinstance(h, Tensor) and h.dim() == len(target.input_shape) + 1 and h.shape[0] == x.shape[0]:
            h = h.reshape(h.shape[0], -1)
        hw = _check_halfwidth(h, flat, norm)
    r = float(cast(float, radius)) if hw is None else float(hw.max())
    ball = BallSpec(radius=r, norm=norm, box=clip,  # type: ignore[arg-type]
                    centre=None if clip is None else tuple(float(v) for v in flat[0].tolist()))
    t0 = time.perf_counter()
    norms = graph_pair_norms(target, pruned)  # once: every input's layerwise bound reuses them
    rows: list[CertifyRow] = []
    n = x.shape[0]
    if progress is not None:
        progress(0, n)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        gen = torch.Generator().manual_seed(derive_seed(f"seed {seed}", start, "certify"))
        rows += graph_chunk_rows(target, pruned, x[sl], None if labels is None else labels[sl], start, ball,
                                 (n_restarts, n_steps), gen, None if hw is None else hw[sl], norms=norms,
                                 optimise=optimise)
        if progress is not None:
            progress(len(rows), n)
    dicts: list[dict[str, Any]] = [row.to_dict() for row in rows]
    summary = summarize_rows(dicts)
    summary["seconds"] = time.perf_counter() - t0
    summary["model"] = "graph"
    return CertifyOutcome(dicts, summary, inputs, None)
