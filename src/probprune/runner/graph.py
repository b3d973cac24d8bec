"""The ``prune`` and ``gap`` workflows on ONNX graphs that the chain reader refuses (residual adds, pools, pads).

:func:`~probprune.runner.prune.load_model` reads an ``.onnx`` file with the chain reader
(:func:`~probprune.nets.onnx.read_onnx`) first; when that refuses and the graph reader
(:func:`~probprune.nets.onnx_graph.load_onnx_graph`) reads the file exactly, it raises :class:`GraphModelFound`
carrying the :class:`GraphModel`. Commands without a graph path report that as one line; ``prune`` and ``gap``
catch it and run :func:`run_graph_prune` / :func:`run_graph_gap` instead:

* pruning: :func:`~probprune.graphmasks.prune_graph` on every Linear/Conv weight (``--method``, ``--scope``,
  ``--prune-fraction``, ``--seed`` as for chains; other levels are refused), written with
  :func:`~probprune.nets.onnx_graph.save_onnx_graph` under the model's own input/output names, float32;
* the sandwich: :func:`~probprune.bounds.graph.search_graph_gap` (lower) and
  :func:`~probprune.bounds.graph.certified_graph_gap` (upper: covers both graphs evaluated in **float64**,
  not a float32 forward pass). The pruned graph of ``prune --gap`` is the one written (its parameters rounded to
  float32 as in the file), so the sandwich is about the file.

Certificates of graph models: :mod:`probprune.runner.certificate_graph` (``prune --certificate`` with ``--out``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from probprune.bounds.graph import GraphBound, certified_graph_gap, check_graph_pair, search_graph_gap
from probprune.config import GapSpec, ProbPruneError, PruneSpec
from probprune.graphmasks import prune_graph
from probprune.masks import LayerStats, MaskStats
from probprune.nets.graph import Graph
from probprune.nets.onnx_graph import OnnxGraphInfo, load_onnx_graph, save_onnx_graph
from probprune.rng import derive_seed, make_generator

__all__ = ["GRAPH_NOTE", "GraphModel", "GraphModelFound", "GraphPruneOutcome", "GraphSandwich", "graph_fallback",
           "graph_sandwich", "load_pruned_graph", "run_graph_gap", "run_graph_prune", "write_graph"]

#: What the graph sandwich states about floating point, printed with it.
GRAPH_NOTE = ("ONNX graph (not a chain): lower from search_graph_gap, upper from certified_graph_gap, which covers "
              "both graphs evaluated in float64 (not a float32 forward pass, e.g. onnxruntime's)")


@dataclass(frozen=True, eq=False)
class GraphModel:
    """An ONNX model read as a graph: the graph (float64 parameters), the reader's info and the file."""

    graph: Graph
    info: OnnxGraphInfo
    path: str


class GraphModelFound(ProbPruneError):
    """Raised by ``load_model`` for an ONNX model that is a graph, not a chain; carries the graph read.

    Its message is the one line a command without a graph path prints.
    """

    def __init__(self, name: str, model: GraphModel) -> None:
        super().__init__(f"{name}={model.path!r}: this ONNX model is a graph (residual adds, branches, pools or pads),"
                         " not a chain; only `probprune prune` and `probprune gap` take graphs for now")
        self.name = name
        self.model = model


def graph_fallback(name: str, path: str, chain_error: ProbPruneError) -> ProbPruneError:
    """The error to raise when the chain reader refused ``path``: :class:`GraphModelFound` or a refusal.

    The graph reader is tried; when it reads the model exactly the result is :class:`GraphModelFound`. When it
    refuses too, its message is used where it names a node (an unsupported op, named with its op type), else the
    chain reader's (a broken file, an old opset: the same check in both readers).
    """
    read = getattr(chain_error, "graph_read", None)
    if read is not None:  # one reader: the graph was read, only its lowering to a chain refused
        return GraphModelFound(name, GraphModel(read[0], read[1], path))
    try:
        graph, info = load_onnx_graph(path)
    except ProbPruneError as e:
        msg = str(e)
        if msg.startswith("load_onnx_graph: node "):
            return ProbPruneError(f"{name}={path!r}: {msg}")
        return ProbPruneError(f"{name}={path!r}: {chain_error}")
    return GraphModelFound(name, GraphModel(graph, info, path))


_LEVEL_FLAGS = {"threshold": "--threshold", "relative_threshold": "--relative-threshold", "p": "--p"}


def check_graph_prune(spec: PruneSpec) -> None:
    """Refuse pruning rules :func:`~probprune.graphmasks.prune_graph` does not have (one line naming the flag)."""
    for field, flag in _LEVEL_FLAGS.items():
        if getattr(spec, field) is not None:
            raise ProbPruneError(f"{field}={getattr(spec, field)!r}: {flag} is not supported for ONNX graph models; "
                                 "use --prune-fraction")
    if spec.rescale:
        raise ProbPruneError("rescale=True: --rescale is not supported for ONNX graph models")
    if spec.prune_fraction is None:
        raise ProbPruneError("prune_fraction: give --prune-fraction (the level ONNX graph models take)")


@dataclass(frozen=True, eq=False)
class GraphPruneOutcome:
    """Target graph, the pruned graph as written (float32-rounded parameters), keep-masks and stats."""

    target: Graph
    pruned: Graph
    masks: dict[str, Tensor]
    stats: dict[str, Any]
    seed: int
    info: OnnxGraphInfo


def _stats(masks: dict[str, Tensor]) -> dict[str, Any]:
    """The :class:`~probprune.masks.MaskStats` form of graph masks (share removed per tensor and in total)."""
    return MaskStats(tuple(LayerStats(name, m.numel(), m.numel() - int(m.sum()), None)
                           for name, m in masks.items())).to_dict()


def run_graph_prune(model: GraphModel, spec: PruneSpec, seed: int = 0) -> GraphPruneOutcome:
    """Prune a graph model (nothing written; see :func:`write_graph`).

    Args:
        model: the target, from :class:`GraphModelFound`.
        spec: method, scope and ``prune_fraction`` (other levels refused by :func:`check_graph_prune`).
        seed: random masks draw from ``derive_seed("prune", seed, "mask")``, as on chains.

    Returns:
        The outcome; its ``pruned`` graph has the float32 parameters :func:`write_graph` stores (read back as
        float64, exactly), so that a sandwich computed on it is about the file.
    """
    check_graph_prune(spec)
    gen = make_generator(derive_seed("prune", seed, "mask"), "cpu") if spec.method == "random" else None
    pruned, masks = prune_graph(model.graph, float(spec.prune_fraction or 0.0), spec.method, spec.scope,
                                generator=gen)
    as_written = pruned.to(torch.float32).to(torch.float64)
    return GraphPruneOutcome(model.graph, as_written, masks, _stats(masks), seed, model.info)


def write_graph(outcome: GraphPruneOutcome, path: str) -> None:
    """Write the pruned graph as ONNX (float32) under the target model's input and output names."""
    save_onnx_graph(outcome.pruned, path, outcome.info.input_name, outcome.info.output_name)


def load_pruned_graph(target: GraphModel, path: str) -> Graph:
    """Read the pruned model of a graph target: an ``.onnx`` graph of the target's structure, or refused.

    Raises:
        ProbPruneError: naming ``pruned``: not ``.onnx``, unreadable or unsupported, or of another structure.
    """
    if not str(path).lower().endswith(".onnx"):
        raise ProbPruneError(f"pruned={path!r}: the target {target.path!r} is an ONNX graph; give the pruned model "
                             "as .onnx (e.g. written by probprune prune --out pruned.onnx), not a weights file")
    try:
        graph, _ = load_onnx_graph(path)
    except ProbPruneError as e:
        raise ProbPruneError(f"pruned={path!r}: {e}") from None
    try:
        check_graph_pair(target.graph, graph)
    except ProbPruneError as e:
        raise ProbPruneError(f"pruned={path!r}: {e}") from None
    return graph


@dataclass(frozen=True, eq=False)
class GraphSandwich:
    """The gap of two graphs pinned from both sides: ``lower ≤ sup_{‖x‖ ≤ r} ‖f(x) − F(x)‖ ≤ upper``.

    Attributes:
        lower: ``‖f(x*) − F(x*)‖`` in float64 at the search's best point ``x*`` (inside the ball).
        upper: the certified bound's value (float64 forward passes covered).
        ratio: upper / lower (1 where upper = 0; inf where lower = 0 < upper).
        x: the maximiser ``[*input_shape]``.
        bound: the full :class:`~probprune.bounds.graph.GraphBound`.
        n_evals: gap evaluations the search spent.
    """

    lower: float
    upper: float
    ratio: float
    x: Tensor
    bound: GraphBound
    n_evals: int

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (without the maximiser), keys as the chain sandwich's where they mean the same."""
        b = self.bound
        terms = [{"name": t.name, "op": t.op, "reach_target": t.reach_target, "reach_pruned": t.reach_pruned,
                  "error": t.error, "fwd_target": t.fwd_target, "fwd_pruned": t.fwd_pruned} for t in b.terms]
        return {"lower": self.lower, "upper": self.upper, "ratio": self.ratio, "n_evals": self.n_evals,
                "model": "graph", "notes": [GRAPH_NOTE],
                "bound": {"value": b.value, "rounding_margin": b.rounding_margin, "radius": b.radius,
                          "terms": terms, "assumptions": list(b.assumptions)}}


def graph_sandwich(target: Graph, pruned: Graph, gap: GapSpec, seed: int = 0) -> GraphSandwich:
    """Lower (:func:`search_graph_gap` with ``gap.n_restarts``/``gap.n_steps``, seeded) and certified upper value.

    Raises:
        ProbPruneError: graphs of different structure, a bad radius, a bound that overflows, or outputs that
            overflow in the ball.
    """
    if not isinstance(gap, GapSpec):
        raise ProbPruneError(f"gap_spec: expected a GapSpec, got {type(gap).__name__}")
    if gap.n_restarts < 1:
        raise ProbPruneError(f"gap.n_restarts={gap.n_restarts!r}: the graph search needs at least 1 restart")
    bound = certified_graph_gap(target, pruned, radius=gap.radius)
    lower, x = search_graph_gap(target, pruned, radius=gap.radius, n_restarts=gap.n_restarts,
                                n_steps=gap.n_steps, seed=derive_seed("gap", seed, "estimator"))
    if not math.isfinite(lower):
        raise ProbPruneError(f"gap.radius={gap.radius!r}: the graphs' outputs overflow float64 in the ball; use a "
                             "smaller radius")
    upper = bound.value
    ratio = 1.0 if upper == 0 else (math.inf if lower == 0 else upper / lower)
    return GraphSandwich(lower, upper, ratio, x, bound, gap.n_restarts * (4 * gap.n_steps + 1))


def run_graph_gap(target: GraphModel, pruned_path: str, gap: GapSpec, seed: int = 0) -> GraphSandwich:
    """Read the pruned model of a graph target (:func:`load_pruned_graph`), then their :func:`graph_sandwich`."""
    return graph_sandwich(target.graph, load_pruned_graph(target, pruned_path), gap, seed)
