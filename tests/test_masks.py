"""Masks: torch equivalence, counts, randomness, nestedness, purity."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from torch import nn
from torch.nn.utils import prune as tprune

from probprune import LawSpec, NetSpec, ProbPruneError, make_generator, prune, sample_net, to_module
from probprune.config import layer_scale
from probprune.masks import apply_mask, magnitude_mask, mask_from_scores, n_to_prune, random_mask
from probprune.nets import Net

FRACTIONS = [0.0, 0.01, 0.1, 0.25, 0.333, 0.5, 0.7, 0.9, 0.99, 1.0]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("shape", [(7,), (13, 9), (4, 3, 3, 3)])
def test_layerwise_equals_torch_l1_unstructured(fraction: float, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(hash((fraction, shape)) % 2**31)
    w = torch.randn(shape, generator=g)
    lin = nn.Linear(1, 1)
    lin.weight = nn.Parameter(w.clone())
    tprune.l1_unstructured(lin, "weight", amount=fraction)
    ours = magnitude_mask(w, fraction=fraction)
    assert torch.equal(ours, lin.weight_mask.bool())


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_global_equals_torch_global_unstructured(fraction: float) -> None:
    torch.manual_seed(int(fraction * 1000))
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ref = copy.deepcopy(model)
    params = [(m, "weight") for m in ref if isinstance(m, nn.Linear)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=fraction)
    res = prune(model, "magnitude", prune_fraction=fraction, scope="global")
    for name, (mod, _) in zip(["0.weight", "2.weight", "4.weight"], params):
        assert torch.equal(res.masks[name], mod.weight_mask.bool()), name
    assert res.stats.pruned == round(fraction * res.stats.size)


def test_masks_work_with_custom_from_mask() -> None:
    net = sample_net(NetSpec(widths=(6, 12, 3)), LawSpec(), make_generator(0))
    res = prune(net, "magnitude", prune_fraction=0.4, scope="global")
    mod = to_module(net)
    for name, keep in res.masks.items():
        idx = name.split(".")[0]
        tprune.custom_from_mask(mod[int(idx)], "weight", keep)
    x = torch.randn(9, 6)
    assert torch.allclose(mod(x), res.model(x), atol=0, rtol=0)


def test_random_p_fraction_in_binomial_interval() -> None:
    n, p, draws = 2000, 0.3, 200
    lo, hi = binom.ppf(0.0005, n, p), binom.ppf(0.9995, n, p)
    g = make_generator(123)
    w = torch.ones(n)
    outside = 0
    for _ in range(draws):
        pruned = int((~random_mask(w, p, g)).sum())
        outside += not (lo <= pruned <= hi)
    # each draw falls outside the 99.9% interval with prob <= 0.001: expect 0.2 of 200;
    # P(>= 4 outside) < 1e-4 under the binomial law
    assert outside <= 3


@pytest.mark.parametrize("p", [0.0, 0.05, 0.37, 0.5, 1.0])
def test_random_exact_prunes_exact_count(p: float) -> None:
    w = torch.randn(31, 17)
    keep = random_mask(w, p, make_generator(5), exact=True)
    assert int((~keep).sum()) == round(p * w.numel())


def test_same_seed_same_masks_and_weights() -> None:
    spec = NetSpec(widths=(5, 40, 40, 3))
    a = sample_net(spec, LawSpec(), make_generator(9))
    b = sample_net(spec, LawSpec(), make_generator(9))
    for wa, wb in zip(a.weights, b.weights):
        assert torch.equal(wa, wb)
    ra = prune(a, "random", p=0.4, generator=make_generator(1))
    rb = prune(b, "random", p=0.4, generator=make_generator(1))
    for n in ra.masks:
        assert torch.equal(ra.masks[n], rb.masks[n])
    rc = prune(a, "random", p=0.4, generator=make_generator(2))
    assert not all(torch.equal(ra.masks[n], rc.masks[n]) for n in ra.masks)


def test_layers_of_equal_shape_get_different_random_masks() -> None:
    net = sample_net(NetSpec(widths=(30, 30, 30, 30)), LawSpec(), make_generator(0))
    res = prune(net, "random", p=0.5, generator=make_generator(3))
    masks = list(res.masks.values())
    assert not torch.equal(masks[1], masks[2])


def test_prune_never_modifies_input_net_or_module() -> None:
    net = sample_net(NetSpec(widths=(5, 20, 3), bias=True), LawSpec(), make_generator(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prune(net, "magnitude", prune_fraction=0.8)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    mod = to_module(net)
    sd = {k: v.clone() for k, v in mod.state_dict().items()}
    res = prune(mod, "random", p=0.5, generator=make_generator(0), rescale=True)
    for k, v in mod.state_dict().items():
        assert torch.equal(v, sd[k])
    assert res.model is not mod
    # biases are never pruned
    assert torch.equal(res.model.state_dict()["0.bias"], sd["0.bias"])


def test_rescale_multiplies_survivors() -> None:
    w = torch.randn(50, 40)
    net = Net.from_weights(NetSpec(widths=(40, 50)), [w])
    res = prune(net, "random", p=0.25, rescale=True, generator=make_generator(0))
    keep = res.masks["0.weight"]
    assert torch.allclose(res.model.weights[0][keep], w[keep] / 0.75)
    assert torch.all(res.model.weights[0][~keep] == 0)


def test_relative_threshold_uses_paper_scale() -> None:
    spec = NetSpec(widths=(16, 64, 4))
    law = LawSpec(scale=2.0)
    net = sample_net(spec, law, make_generator(0))
    res = prune(net, "magnitude", relative_threshold=0.1, law=law)
    for name, w, shape in zip(net.names, net.weights, spec.weight_shapes()):
        tau = 0.1 * layer_scale(shape, 2.0)
        assert torch.equal(res.masks[name], w.abs() > tau)
        assert res.stats.layers[net.names.index(name)].threshold == pytest.approx(tau)


def test_ensemble_masks_equal_member_masks() -> None:
    spec = NetSpec(widths=(8, 24, 24, 3))
    gens = [make_generator(s) for s in range(4)]
    ens = sample_net(spec, LawSpec(), gens)
    for scope in ("layerwise", "global"):
        res = prune(ens, "magnitude", prune_fraction=0.35, scope=scope)
        for k in range(4):
            one = prune(ens.member(k), "magnitude", prune_fraction=0.35, scope=scope)
            for n in one.masks:
                assert torch.equal(res.masks[n][k], one.masks[n])
    res = prune(ens, "random", prune_fraction=0.5, scope="global", generator=[make_generator(s) for s in range(4)])
    for k in range(4):
        one = prune(ens.member(k), "random", prune_fraction=0.5, scope="global", generator=make_generator(k))
        for n in one.masks:
            assert torch.equal(res.masks[n][k], one.masks[n])


def test_ties_are_broken_by_lowest_index() -> None:
    w = torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0])
    keep = magnitude_mask(w, fraction=0.4)  # remove 2 of the three 0.5s: indices 1 and 2
    assert keep.tolist() == [True, False, False, True, True]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    f1=st.floats(0, 1),
    f2=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_magnitude_counts_and_nestedness(shape: tuple[int, ...], f1: float, f2: float, seed: int) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    lo, hi = sorted((f1, f2))
    k_lo, k_hi = magnitude_mask(w, fraction=lo), magnitude_mask(w, fraction=hi)
    assert k_lo.shape == w.shape and k_lo.dtype == torch.bool
    assert int((~k_lo).sum()) == n_to_prune(lo, w.numel())
    assert int((~k_hi).sum()) == n_to_prune(hi, w.numel())
    # a larger prune_fraction removes a superset
    assert torch.all(k_hi <= k_lo)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), f=st.floats(0, 1), seed=st.integers(0, 999))
def test_global_scope_counts(sizes: list[int], f: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(s, generator=g) for s in sizes]
    keeps = mask_from_scores(scores, f, "global")
    assert sum(int((~k).sum()) for k in keeps) == n_to_prune(f, sum(sizes))
    # global: every removed score <= every kept score
    rem = torch.cat([s[~k] for s, k in zip(scores, keeps)])
    kept = torch.cat([s[k] for s, k in zip(scores, keeps)])
    if rem.numel() and kept.numel():
        assert rem.max() <= kept.min()


def test_prior_mask_is_respected() -> None:
    w = torch.arange(1.0, 11.0)
    prior = torch.ones(10, dtype=torch.bool)
    prior[9] = False  # the largest weight was already removed
    keep = magnitude_mask(w, fraction=0.3, prior=prior)
    assert not keep[9] and int((~keep).sum()) == 3
    assert keep.tolist() == [False, False, True, True, True, True, True, True, True, False]


def test_apply_mask_shape_mismatch() -> None:
    with pytest.raises(ProbPruneError, match="mask shape"):
        apply_mask(torch.ones(3), torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prune_fraction": 1.5}, "prune_fraction=1.5"),
        ({"prune_fraction": -0.1}, "prune_fraction=-0.1"),
        ({"threshold": -1.0}, "threshold=-1.0"),
        ({"prune_fraction": 0.5, "threshold": 0.1}, "threshold"),
        ({}, "give one level"),
        ({"relative_threshold": 0.1}, "needs the law"),
        ({"prune_fraction": math.nan}, "prune_fraction=nan"),
    ],
)
def test_bad_levels(kwargs: dict[str, float], match: str) -> None:
    net = sample_net(NetSpec(widths=(3, 4, 2)), LawSpec(), make_generator(0))
    with pytest.raises(ProbPruneError, match=match):
        prune(net, "magnitude", **kwargs)


def test_bad_random_levels_and_inputs() -> None:
    net = sample_net(NetSpec(widths=(3, 4, 2)), LawSpec(), make_generator(0))
    with pytest.raises(ProbPruneError, match="p=2"):
        prune(net, "random", p=2, generator=make_generator(0))
    with pytest.raises(ProbPruneError, match="generator"):
        prune(net, "random", p=0.5)
    bad = net.with_weights([net.weights[0] * math.nan, net.weights[1]])
    with pytest.raises(ProbPruneError, match="non-finite"):
        prune(bad, "magnitude", prune_fraction=0.5)
    with pytest.raises(ProbPruneError, match="no prunable layer"):
        prune(nn.Sequential(nn.ReLU()), "magnitude", prune_fraction=0.5)
    with pytest.raises(ProbPruneError, match="not a prunable weight"):
        prune(net, "magnitude", prune_fraction=0.5, layers=["9.weight"])


@pytest.mark.parametrize("shape", [(8, 8 * 2048), (3, 8 * 255 * 2 + 8), (5, 7), (2, 3, 8 * 300), (8 * 255,),
                                   (1, 8 * 255 + 1)])
@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_count_true_equals_sum(shape: tuple, share: float) -> None:
    from probprune.masks import count_true
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) < share
    assert torch.equal(count_true(mask), mask.sum(-1))
    assert torch.equal(count_true(mask.transpose(0, -1).contiguous().transpose(0, -1)), mask.sum(-1))


def test_count_true_on_views_that_start_mid_word() -> None:
    """Masks split out of one concatenated tensor (global scope) are views at any byte offset."""
    from probprune.masks import count_true
    whole = torch.rand(150 + 8 * 2048 + 8 * 4096, generator=torch.Generator().manual_seed(5)) < 0.4
    for part in torch.split(whole, [150, 8 * 2048, 8 * 4096]):
        assert torch.equal(count_true(part), part.sum(-1))
        assert torch.equal(count_true(part.reshape(-1)), part.reshape(-1).sum(-1))


def test_global_magnitude_prune_counts_layers_at_unaligned_offsets() -> None:
    spec = NetSpec(widths=(15, 13, 2048, 10))  # 195 weights, then 26 624 starting at byte 195 of the global mask
    for gens in (make_generator(0), [make_generator(i) for i in range(3)]):
        res = prune(sample_net(spec, LawSpec(), gens), "magnitude", prune_fraction=0.37, scope="global")
        assert [s.pruned for s in res.stats.layers] == [int((~m).sum()) for m in res.masks.values()]


@pytest.mark.parametrize("n_in", [8, 700])  # 8·H ≤ 4096 entries: sort path; 700·H: partial-selection path
def test_layerwise_magnitude_ties_resolved_after_one_readback(n_in: int) -> None:
    # integer-valued weights: many entries tie with the k-th smallest |w| in every member and layer;
    # the prune's deferred tie check must give exactly the masks of the reference ranking
    spec = NetSpec(widths=(n_in, 12, 3))
    g = torch.Generator().manual_seed(5)
    ws = [torch.randint(-3, 4, (4, *s), generator=g).float() for s in spec.weight_shapes()]
    ens = Net.from_weights(spec, ws)
    res = prune(ens, "magnitude", prune_fraction=0.3)
    ref = mask_from_scores([w.abs() for w in ws], 0.3, trial_dim=True)
    for (name, keep), want, w in zip(res.masks.items(), ref, ws):
        assert torch.equal(keep, want), name
        n_layer = w[0].numel()
        assert all(int((~keep[k]).sum()) == n_to_prune(0.3, n_layer) for k in range(4))
    for st_, w, keep in zip(res.stats.layers, ws, res.masks.values()):
        assert st_.pruned == int((~keep).sum())
        assert st_.threshold == float(w.abs()[~keep].max())
    for k in range(4):
        one = prune(ens.member(k), "magnitude", prune_fraction=0.3)
        for name in one.masks:
            assert torch.equal(res.masks[name][k], one.masks[name])
