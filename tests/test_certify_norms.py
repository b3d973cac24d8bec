"""Operator norms once per (target, pruned) pair: the cached layerwise bounds equal the uncached ones bit for bit,
and norms of another pair are refused (a certificate computed from the wrong norms would not be a proof)."""

from __future__ import annotations

import pytest
import torch

from probprune.bounds.certified import certified_gap_bound, pair_norms
from probprune.bounds.graph import certified_graph_gap, graph_pair_norms
from probprune.config import ConvSpec, LawSpec, NetSpec, ProbPruneError, PruneSpec
from probprune.masks import prune
from probprune.nets import Net
from probprune.nets.graph import Graph, Node, activation
from probprune.sampling import sample_net

pytestmark = pytest.mark.usefixtures("one_thread")

RADII = (0.01, 0.7, 3.0, 41.5)


@pytest.mark.parametrize("spec,dtype,trials", [
    (NetSpec(widths=(6, 12, 12, 3), bias=True), torch.float32, None),
    (NetSpec(widths=(5, 9, 4), activation="tanh", bias=True), torch.float64, None),
    (NetSpec(kind="cnn", input_shape=(1, 6, 6), convs=(ConvSpec(2, 3, pool=2),), widths=(3,), bias=True),
     torch.float32, None),
    (NetSpec(widths=(4, 7, 2)), torch.float32, 3),
])
def test_cached_chain_norms_give_the_uncached_bound_bit_for_bit(spec: NetSpec, dtype: torch.dtype,
                                                                 trials: int | None) -> None:
    gens = torch.Generator().manual_seed(0) if trials is None else \
        [torch.Generator().manual_seed(k) for k in range(trials)]
    target = sample_net(spec, LawSpec(), gens, dtype=dtype)
    pruned = prune(target, PruneSpec(method="magnitude", scope="global", prune_fraction=0.4)).model
    norms = pair_norms(target, pruned)
    for r in RADII:
        a = certified_gap_bound(target, pruned, radius=r)
        b = certified_gap_bound(target, pruned, radius=r, norms=norms)
        assert torch.equal(a.value, b.value) and torch.equal(a.rounding_margin, b.rounding_margin)
        assert [t.to_dict() for t in a.terms] == [t.to_dict() for t in b.terms]
        assert a.assumptions == b.assumptions
    # float32 nets run in float64: the forward margin changes, the norms do not
    a64 = certified_gap_bound(target, pruned, radius=1.0, forward_dtype=torch.float64)
    assert torch.equal(a64.value, certified_gap_bound(target, pruned, radius=1.0, forward_dtype=torch.float64,
                                                      norms=norms).value)


def test_chain_norms_of_another_pair_are_refused() -> None:
    spec = NetSpec(widths=(6, 10, 3), bias=True)
    target = sample_net(spec, LawSpec(), torch.Generator().manual_seed(0))
    pruned = prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model
    more = prune(target, PruneSpec(prune_fraction=0.6, scope="global")).model
    norms = pair_norms(target, pruned)
    with pytest.raises(ProbPruneError, match="norms: layer"):
        certified_gap_bound(target, more, radius=1.0, norms=norms)
    with pytest.raises(ProbPruneError, match="norm_method"):
        certified_gap_bound(target, pruned, radius=1.0, norms=norms, norm_method="gram")
    # a copy with the same bits is accepted (the check is by value, not identity)
    twin = prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model
    assert torch.equal(certified_gap_bound(target, twin, radius=1.0, norms=norms).value,
                       certified_gap_bound(target, pruned, radius=1.0).value)


def test_conv_norms_of_another_padding_are_refused() -> None:
    # the same weight shapes, another padding: other operator norms, so the cached ones must not be used
    def net(pad: int) -> Net:
        spec = NetSpec(kind="cnn", input_shape=(1, 6, 6), convs=(ConvSpec(2, 3, padding=pad),), widths=(3,))
        return sample_net(spec, LawSpec(), torch.Generator().manual_seed(0))

    a, b = net(1), net(0)
    with pytest.raises(ProbPruneError, match="architecture"):
        certified_gap_bound(b, b, radius=1.0, norms=pair_norms(a, a))


def _graph(seed: int) -> Graph:
    g = torch.Generator().manual_seed(seed)
    pad = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.4

    return Graph([Node("norm", "affine", ("input",), params={"scale": t(1, 1, 1).abs() + 0.5, "shift": t(1, 1, 1)}),
                  Node("c", "conv", ("norm",), pad, {"weight": t(2, 1, 3, 3), "bias": t(2)}),
                  Node("r", "act", ("c",), {"act": activation("gelu")}),
                  Node("c2", "conv", ("r",), pad, {"weight": t(2, 2, 3, 3)}),
                  Node("s", "add", ("c2", "r")),
                  Node("p", "avgpool", ("s",), {"dims": 2, "kernel": (2, 2), "stride": (2, 2), "padding": (0, 0),
                                               "count_include_pad": True}),
                  Node("f", "reshape", ("p",), {"shape": (8,)}),
                  Node("fc", "linear", ("f",), params={"weight": t(3, 8), "bias": t(3)})], (1, 4, 4))


def test_cached_graph_norms_give_the_uncached_bound_bit_for_bit() -> None:
    target = _graph(0)
    params = target.parameters()
    pruned = target.with_parameters({k: params[k] * (params[k].abs() > 0.2) for k in target.prunable()})
    norms = graph_pair_norms(target, pruned)
    for r in RADII:
        a = certified_graph_gap(target, pruned, radius=r)
        b = certified_graph_gap(target, pruned, radius=r, norms=norms)
        assert a == b  # a frozen dataclass of floats: every term, margin and assumption equal
    other = target.with_parameters({k: params[k] * (params[k].abs() > 0.3) for k in target.prunable()})
    with pytest.raises(ProbPruneError, match="pruned graph's parameters differ"):
        certified_graph_gap(target, other, radius=1.0, norms=norms)
    with pytest.raises(ProbPruneError, match="target graph's parameters differ"):
        certified_graph_gap(target, pruned, radius=1.0, norms=graph_pair_norms(_graph(1), pruned))
