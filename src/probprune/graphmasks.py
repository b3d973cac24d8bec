"""Pruning on graphs: magnitude or random masks over every prunable weight tensor of a graph, by name.

Every weight of a ``linear`` or ``conv`` node (:meth:`~probprune.nets.graph.Graph.prunable`, named like
``features.0.weight``) is a pruning target; ``layerwise`` removes ``prune_fraction`` of each tensor, ``global``
ranks all of them together (as ``torch.nn.utils.prune.global_unstructured`` does). Masks come from
:func:`probprune.masks.mask_from_scores` (the one ranking rule of the library; ties removed lowest flat index first),
so magnitude masks equal ``torch.nn.utils.prune``'s ``l1_unstructured`` / ``global_unstructured`` ones.

BatchNorm folded by :func:`~probprune.nets.fx.graph_from_module` is pruned **after** folding: the magnitudes ranked
are those of the folded weights ``W·γ/√(σ² + ε)`` the graph computes with, and the certificate
(:mod:`probprune.bounds.graph`) is about the folded target and its pruned twin.

This module sits beside :mod:`probprune.masks` (config, nets, masks below it) until the two pruning paths are merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from probprune.config import ProbPruneError
from probprune.masks import Scope, apply_mask, mask_from_scores
from probprune.nets.graph import Graph

__all__ = ["GraphMethod", "graph_masks", "prune_graph"]

GraphMethod = Literal["magnitude", "random"]


def graph_masks(graph: Graph, prune_fraction: float, method: GraphMethod = "magnitude",
                scope: Scope = "layerwise", *, generator: torch.Generator | None = None,
                names: Sequence[str] | None = None, prior: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Keep-masks (True = kept) for the graph's prunable weights.

    Args:
        graph: the target (no trial dim).
        prune_fraction: share removed in [0, 1] (per tensor or over all of them, prior removals counted).
        method: ``magnitude`` (smallest ``|w|`` removed) or ``random`` (exactly ``round(fraction·n)`` removed
            uniformly at random: random scores ranked the same way).
        scope: ``layerwise`` or ``global``.
        generator: required for ``random``.
        names: the weights to prune (default: every one of :meth:`Graph.prunable`).
        prior: earlier keep-masks by name (a ``torch.nn.utils.prune`` ``weight_mask``): removed entries stay removed.

    Raises:
        ProbPruneError: an unknown method or name, a missing generator, a graph with a trial dim, a prior of
            another shape.
    """
    if graph.n_trials is not None:
        raise ProbPruneError("graph_masks: graphs with a trial dim are not supported; prune each member")
    if method not in ("magnitude", "random"):
        raise ProbPruneError(f"method={method!r}: must be magnitude or random")
    todo = list(graph.prunable() if names is None else names)
    params = graph.parameters()
    for n in todo:
        if n not in graph.prunable():
            raise ProbPruneError(f"names: {n!r} is not a prunable weight (prunable: {', '.join(graph.prunable())})")
    for n in prior or {}:
        if n not in todo:
            raise ProbPruneError(f"prior: {n!r} is not among the weights pruned")
    if method == "random" and generator is None:
        raise ProbPruneError("method=random: pass a torch.Generator (no hidden global RNG)")
    if method == "magnitude":
        scores = [params[n].abs() for n in todo]
    else:
        scores = [torch.rand(params[n].shape, generator=generator, dtype=torch.float64) for n in todo]
    pri = None if prior is None else [prior.get(n) for n in todo]
    masks = mask_from_scores(scores, prune_fraction, scope, pri)
    return dict(zip(todo, masks))


def prune_graph(graph: Graph, prune_fraction: float, method: GraphMethod = "magnitude",
                scope: Scope = "layerwise", *, generator: torch.Generator | None = None,
                names: Sequence[str] | None = None,
                prior: Mapping[str, Tensor] | None = None) -> tuple[Graph, dict[str, Tensor]]:
    """The pruned graph (removed weights set to 0, biases kept) and its keep-masks; see :func:`graph_masks`.

    >>> import torch
    >>> from probprune.nets.graph import Graph, Node
    >>> g = Graph([Node("fc", "linear", ("input",), params={"weight": torch.tensor([[3., -1.], [2., 4.]])})], (2,))
    >>> f, m = prune_graph(g, 0.5)
    >>> f.parameters()["fc.weight"].tolist(), m["fc.weight"].tolist()
    ([[3.0, 0.0], [0.0, 4.0]], [[True, False], [False, True]])
    """
    masks = graph_masks(graph, prune_fraction, method, scope, generator=generator, names=names, prior=prior)
    params = graph.parameters()
    return graph.with_parameters({n: apply_mask(params[n], m) for n, m in masks.items()}), masks
