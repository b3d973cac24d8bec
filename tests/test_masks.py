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

from probprune import LawSpec, NetSpec, ProbPruneError, prune, sample_net, to_module
from probprune.config import PruneSpec, layer_scale
from probprune.masks import apply_mask, magnitude_mask, mask_from_scores, n_to_prune, random_mask
from probprune.nets import Net
from probprune.rng import make_generator

FRACTIONS = [0.0, 0.01, 0.1, 0.25, 0.333, 0.5, 0.7, 0.9, 0.99, 1.0]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("shape", [(7,), (13, 9), (4, 3, 3, 3)])
def test_layerwise_equals_torch_l1_unstructured(fraction: float, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(hash((fraction, shape)) % 2**31)
    w = torch.randn(shape, generator=g)
    lin = nn.Linear(1, 1)
    lin.weight = nn.Parameter(w.clone())
    tprune.l1_unstructured(lin, "weight", amount=fraction)
    ours = magnitude_mask(w, prune_fraction=fraction)
    assert torch.equal(ours, lin.weight_mask.bool())


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_global_equals_torch_global_unstructured(fraction: float) -> None:
    torch.manual_seed(int(fraction * 1000))
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ref = copy.deepcopy(model)
    params = [(m, "weight") for m in ref if isinstance(m, nn.Linear)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=fraction)
    res = prune(model, PruneSpec(prune_fraction=fraction, scope="global"))
    for name, (mod, _) in zip(["0.weight", "2.weight", "4.weight"], params):
        assert torch.equal(res.masks[name], mod.weight_mask.bool()), name
    assert res.stats.pruned == round(fraction * res.stats.size)


def test_masks_work_with_custom_from_mask() -> None:
    net = sample_net(NetSpec(widths=(6, 12, 3)), LawSpec(), make_generator(0))
    res = prune(net, PruneSpec(prune_fraction=0.4, scope="global"))
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
        pruned = int((~random_mask(w, g, p=p)).sum())
        outside += not (lo <= pruned <= hi)
    # each draw falls outside the 99.9% interval with prob <= 0.001: expect 0.2 of 200;
    # P(>= 4 outside) < 1e-4 under the binomial law
    assert outside <= 3


@pytest.mark.parametrize("p", [0.0, 0.05, 0.37, 0.5, 1.0])
def test_random_exact_prunes_exact_count(p: float) -> None:
    w = torch.randn(31, 17)
    keep = random_mask(w, make_generator(5), prune_fraction=p)
    assert int((~keep).sum()) == round(p * w.numel())


def test_same_seed_same_masks_and_weights() -> None:
    spec = NetSpec(widths=(5, 40, 40, 3))
    a = sample_net(spec, LawSpec(), make_generator(9))
    b = sample_net(spec, LawSpec(), make_generator(9))
    for wa, wb in zip(a.weights, b.weights):
        assert torch.equal(wa, wb)
    ra = prune(a, PruneSpec(method="random", p=0.4), generator=make_generator(1))
    rb = prune(b, PruneSpec(method="random", p=0.4), generator=make_generator(1))
    for n in ra.masks:
        assert torch.equal(ra.masks[n], rb.masks[n])
    rc = prune(a, PruneSpec(method="random", p=0.4), generator=make_generator(2))
    assert not all(torch.equal(ra.masks[n], rc.masks[n]) for n in ra.masks)


def test_layers_of_equal_shape_get_different_random_masks() -> None:
    net = sample_net(NetSpec(widths=(30, 30, 30, 30)), LawSpec(), make_generator(0))
    res = prune(net, PruneSpec(method="random", p=0.5), generator=make_generator(3))
    masks = list(res.masks.values())
    assert not torch.equal(masks[1], masks[2])


def test_prune_never_modifies_input_net_or_module() -> None:
    net = sample_net(NetSpec(widths=(5, 20, 3), bias=True), LawSpec(), make_generator(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prune(net, PruneSpec(prune_fraction=0.8))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    mod = to_module(net)
    sd = {k: v.clone() for k, v in mod.state_dict().items()}
    res = prune(mod, PruneSpec(method="random", p=0.5, rescale=True), generator=make_generator(0))
    for k, v in mod.state_dict().items():
        assert torch.equal(v, sd[k])
    assert res.model is not mod
    # biases are never pruned
    assert torch.equal(res.model.state_dict()["0.bias"], sd["0.bias"])


def test_rescale_multiplies_survivors() -> None:
    w = torch.randn(50, 40)
    net = Net.from_weights(NetSpec(widths=(40, 50)), [w])
    res = prune(net, PruneSpec(method="random", p=0.25, rescale=True), generator=make_generator(0))
    keep = res.masks["0.weight"]
    assert torch.allclose(res.model.weights[0][keep], w[keep] / 0.75)
    assert torch.all(res.model.weights[0][~keep] == 0)


def test_relative_threshold_uses_paper_scale() -> None:
    spec = NetSpec(widths=(16, 64, 4))
    law = LawSpec(scale=2.0)
    net = sample_net(spec, law, make_generator(0))
    res = prune(net, PruneSpec(relative_threshold=0.1), law=law)
    for name, w, shape in zip(net.names, net.weights, spec.weight_shapes()):
        tau = 0.1 * layer_scale(shape, 2.0)
        assert torch.equal(res.masks[name], w.abs() > tau)
        assert res.stats.layers[net.names.index(name)].threshold == pytest.approx(tau)


def test_ensemble_masks_equal_member_masks() -> None:
    spec = NetSpec(widths=(8, 24, 24, 3))
    gens = [make_generator(s) for s in range(4)]
    ens = sample_net(spec, LawSpec(), gens)
    for scope in ("layerwise", "global"):
        res = prune(ens, PruneSpec(prune_fraction=0.35, scope=scope))
        for k in range(4):
            one = prune(ens.member(k), PruneSpec(prune_fraction=0.35, scope=scope))
            for n in one.masks:
                assert torch.equal(res.masks[n][k], one.masks[n])
    res = prune(ens, PruneSpec(method="random", prune_fraction=0.5, scope="global"),
                generator=[make_generator(s) for s in range(4)])
    for k in range(4):
        one = prune(ens.member(k), PruneSpec(method="random", prune_fraction=0.5, scope="global"),
                    generator=make_generator(k))
        for n in one.masks:
            assert torch.equal(res.masks[n][k], one.masks[n])


def test_ties_are_broken_by_lowest_index() -> None:
    w = torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0])
    keep = magnitude_mask(w, prune_fraction=0.4)  # remove 2 of the three 0.5s: indices 1 and 2
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
    k_lo, k_hi = magnitude_mask(w, prune_fraction=lo), magnitude_mask(w, prune_fraction=hi)
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
    keep = magnitude_mask(w, prune_fraction=0.3, prior=prior)
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
        prune(net, PruneSpec(method="magnitude", **kwargs))


def test_bad_random_levels_and_inputs() -> None:
    net = sample_net(NetSpec(widths=(3, 4, 2)), LawSpec(), make_generator(0))
    with pytest.raises(ProbPruneError, match="p=2"):
        prune(net, PruneSpec(method="random", p=2), generator=make_generator(0))
    with pytest.raises(ProbPruneError, match="generator"):
        prune(net, PruneSpec(method="random", p=0.5))
    bad = net.with_weights([net.weights[0] * math.nan, net.weights[1]])
    with pytest.raises(ProbPruneError, match="non-finite"):
        prune(bad, PruneSpec(prune_fraction=0.5))
    with pytest.raises(ProbPruneError, match="no prunable layer"):
        prune(nn.Sequential(nn.ReLU()), PruneSpec(prune_fraction=0.5))
    with pytest.raises(ProbPruneError, match="not a prunable weight"):
        prune(net, PruneSpec(prune_fraction=0.5), layers=["9.weight"])


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
        res = prune(sample_net(spec, LawSpec(), gens), PruneSpec(prune_fraction=0.37, scope="global"))
        assert [s.pruned for s in res.stats.layers] == [int((~m).sum()) for m in res.masks.values()]


@pytest.mark.parametrize("n_in", [8, 700])  # 8·H ≤ 4096 entries: sort path; 700·H: partial-selection path
def test_layerwise_magnitude_ties_resolved_after_one_readback(n_in: int) -> None:
    # integer-valued weights: many entries tie with the k-th smallest |w| in every member and layer;
    # the prune's deferred tie check must give exactly the masks of the reference ranking
    spec = NetSpec(widths=(n_in, 12, 3))
    g = torch.Generator().manual_seed(5)
    ws = [torch.randint(-3, 4, (4, *s), generator=g).float() for s in spec.weight_shapes()]
    ens = Net.from_weights(spec, ws)
    res = prune(ens, PruneSpec(prune_fraction=0.3))
    ref = mask_from_scores([w.abs() for w in ws], 0.3, trial_dim=True)
    for (name, keep), want, w in zip(res.masks.items(), ref, ws):
        assert torch.equal(keep, want), name
        n_layer = w[0].numel()
        assert all(int((~keep[k]).sum()) == n_to_prune(0.3, n_layer) for k in range(4))
    for st_, w, keep in zip(res.stats.layers, ws, res.masks.values()):
        assert st_.pruned == int((~keep).sum())
        assert st_.threshold == float(w.abs()[~keep].max())
    for k in range(4):
        one = prune(ens.member(k), PruneSpec(prune_fraction=0.3))
        for name in one.masks:
            assert torch.equal(res.masks[name][k], one.masks[name])


# --------------------------------------------------------------------------- one path vs a slow reference


def _reference_prune(net: Net, spec: PruneSpec, seeds: list[int] | None, law: LawSpec,
                     prior: dict[str, torch.Tensor] | None) -> tuple[list[torch.Tensor], list[int], list[float | None]]:
    """The masks module's documented rules, one member and one entry at a time (slow, independent).

    Random scores: per member, layers in order, ``torch.rand(shape, generator)`` float32. By rank:
    per member and scope, entries already removed by the prior first, then by score, ties by flat
    index (lowest first: a stable sort); remove ``max(n_prior, round(prune_fraction·n))``. At a
    level: magnitude removes ``|w| <= τ``, random removes ``u < p``.
    """
    trial = net.n_trials is not None
    members = range(net.n_trials) if trial else [None]
    ws = [[w if k is None else w[k] for w in net.weights] for k in members]
    if spec.method == "magnitude":
        scores = [[w.abs() for w in m] for m in ws]
    else:
        scores = []
        for k, m in zip(members, ws):
            g = torch.Generator().manual_seed(seeds[0 if k is None else k])  # type: ignore[index]
            scores.append([torch.rand(w.shape, generator=g, dtype=torch.float32) for w in m])
    pri = [[None if prior is None else (prior[n] if k is None else prior[n][k]) for n in net.names] for k in members]
    keeps: list[list[torch.Tensor]] = []
    for m_scores, m_prior in zip(scores, pri):
        flat_s = [s.reshape(-1).tolist() for s in m_scores]
        flat_p = [[True] * len(fs) if p is None else p.reshape(-1).tolist() for fs, p in zip(flat_s, m_prior)]
        if spec.prune_fraction is None:
            level = [spec.threshold if spec.threshold is not None else spec.p] * len(flat_s)
            if spec.relative_threshold is not None:
                level = [spec.relative_threshold * layer_scale(s.shape, law.scale) for s in m_scores]
            kept = [[bool(pk and (v > t if spec.method == "magnitude" else v >= t)) for v, pk in zip(fs, fp)]
                    for fs, fp, t in zip(flat_s, flat_p, level)]
        else:
            groups = [[i] for i in range(len(flat_s))] if spec.scope == "layerwise" else [list(range(len(flat_s)))]
            kept = [[True] * len(fs) for fs in flat_s]
            for grp in groups:
                entries = [(0 if flat_p[i][j] else -1, flat_s[i][j], pos, i, j)
                           for pos, (i, j) in enumerate((i, j) for i in grp for j in range(len(flat_s[i])))]
                n_prior = sum(1 for e in entries if e[0] < 0)
                k_rm = max(n_prior, round(spec.prune_fraction * len(entries)))
                for e in sorted(entries, key=lambda e: (e[0], e[1] if e[0] == 0 else 0.0, e[2]))[:k_rm]:
                    kept[e[3]][e[4]] = False
        keeps.append([torch.tensor(kp, dtype=torch.bool).reshape(s.shape) for kp, s in zip(kept, m_scores)])
    masks = [torch.stack([m[i] for m in keeps]) if trial else keeps[0][i] for i in range(len(net.names))]
    removed = [int((~m).sum()) for m in masks]
    thresholds: list[float | None] = []
    for i, m in enumerate(masks):
        if spec.method == "random":
            thresholds.append(None)
        elif spec.prune_fraction is None:
            thresholds.append(float(spec.threshold) if spec.threshold is not None
                              else spec.relative_threshold * layer_scale(net.spec.weight_shapes()[i], law.scale))
        else:
            gone = net.weights[i].abs()[~m]
            thresholds.append(float(gone.max()) if gone.numel() else None)
    return masks, removed, thresholds


REFERENCE_SPECS = [
    PruneSpec(method="magnitude", prune_fraction=0.3),
    PruneSpec(method="magnitude", prune_fraction=0.62, scope="global"),
    PruneSpec(method="magnitude", prune_fraction=1.0),
    PruneSpec(method="magnitude", prune_fraction=0.0, scope="global"),
    PruneSpec(method="magnitude", threshold=0.05),
    PruneSpec(method="magnitude", relative_threshold=0.4),
    PruneSpec(method="random", prune_fraction=0.45),
    PruneSpec(method="random", prune_fraction=0.3, scope="global"),
    PruneSpec(method="random", p=0.35, rescale=True),
]


@pytest.mark.parametrize("spec", REFERENCE_SPECS, ids=lambda s: f"{s.method}-{s.level_name}-{s.scope}")
@pytest.mark.parametrize(("widths", "n_trials", "ties", "with_prior"), [
    ((6, 9, 4), None, False, False),
    ((6, 9, 4), 3, True, True),
    ((12, 700, 8), 2, True, False),   # 8 400 entries: the partial-selection (topk) path, ties in every row
    ((12, 700, 8), None, False, True),
])
def test_prune_equals_slow_reference(spec: PruneSpec, widths: tuple[int, ...], n_trials: int | None, ties: bool,
                                     with_prior: bool) -> None:
    """Masks, counts, thresholds and weights of the one path equal the documented rules (today's outputs)."""
    law = LawSpec(scale=2.0)
    net_spec = NetSpec(widths=widths)
    gens_w = make_generator(4) if n_trials is None else [make_generator(s) for s in range(n_trials)]
    net = sample_net(net_spec, law, gens_w)
    if ties:  # integer weights: many entries tie with the k-th smallest |w|
        g = torch.Generator().manual_seed(8)
        net = net.with_weights([torch.randint(-3, 4, w.shape, generator=g).float() * 0.1 for w in net.weights])
    g = torch.Generator().manual_seed(9)
    prior = {n: torch.rand(w.shape, generator=g) > 0.4 for n, w in zip(net.names, net.weights)} if with_prior \
        else None
    seeds = [31 + s for s in range(n_trials or 1)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    res = prune(net, spec, generator=(gens if n_trials else gens[0]) if spec.method == "random" else None,
                law=law, prior=prior)
    masks, removed, thresholds = _reference_prune(net, spec, seeds, law, prior)
    scale = 1.0 / (1.0 - spec.p) if spec.rescale and spec.p is not None else 1.0
    for name, want, w, got_w in zip(net.names, masks, net.weights, res.model.weights):
        assert torch.equal(res.masks[name], want), name
        assert torch.equal(got_w, torch.where(want, w, torch.zeros(())) * scale if scale != 1.0
                           else torch.where(want, w, torch.zeros(()))), name
    assert [s.pruned for s in res.stats.layers] == removed
    assert [s.threshold for s in res.stats.layers] == pytest.approx(thresholds)
    assert [s.size for s in res.stats.layers] == [m.numel() for m in masks]


def test_a_prune_spec_is_the_one_way_to_say_the_rule() -> None:
    net = sample_net(NetSpec(widths=(5, 30, 3)), LawSpec(), [make_generator(s) for s in range(2)])
    with pytest.raises(ProbPruneError, match=r"spec must be a PruneSpec, got str \(write PruneSpec\(method='random'"):
        prune(net, "random", generator=[make_generator(1), make_generator(2)])  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="spec must be a PruneSpec, got dict"):
        prune(net, {"prune_fraction": 0.5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fraction"):
        prune(net, PruneSpec(prune_fraction=0.5), fraction=0.5)  # type: ignore[call-arg]
    with pytest.raises(ProbPruneError, match="prune.method"):
        prune(net, PruneSpec(method="largest", prune_fraction=0.5))  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_ensemble_prune_equals_torch_l1_unstructured_per_member(fraction: float) -> None:
    """The path the Monte Carlo engine runs (an ensemble, layerwise, partial selection) is torch's."""
    spec = NetSpec(widths=(12, 700, 8))
    ens = sample_net(spec, LawSpec(), [make_generator(s) for s in range(3)])
    res = prune(ens, PruneSpec(prune_fraction=fraction))
    for name, w in zip(ens.names, ens.weights):
        for k in range(3):
            lin = nn.Linear(1, 1)
            lin.weight = nn.Parameter(w[k].clone())
            tprune.l1_unstructured(lin, "weight", amount=fraction)
            assert torch.equal(res.masks[name][k], lin.weight_mask.bool()), (name, k)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_random_prune_fraction_removes_torch_random_unstructured_count(fraction: float) -> None:
    """Comparable with ``random_unstructured``: the exact count (torch draws its own scores from the global RNG)."""
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 7))
    ref = copy.deepcopy(model)
    for mod in ref:
        if isinstance(mod, nn.Linear):
            tprune.random_unstructured(mod, "weight", amount=fraction)
    res = prune(model, PruneSpec(method="random", prune_fraction=fraction), generator=make_generator(0))
    for name, mod in zip(["0.weight", "2.weight"], [ref[0], ref[2]]):
        assert int((~res.masks[name]).sum()) == int((mod.weight_mask == 0).sum()), name


def test_random_mask_equals_prune_for_float64_weights() -> None:
    """One score function: ``random_mask`` draws what ``prune`` draws (float32), whatever the weight dtype."""
    w = torch.randn(40, 30, dtype=torch.float64)
    net = Net.from_weights(NetSpec(widths=(30, 40)), [w])
    for kw in ({"prune_fraction": 0.3}, {"p": 0.3}):
        want = prune(net, PruneSpec(method="random", **kw), generator=make_generator(6)).masks["0.weight"]
        assert torch.equal(random_mask(w, make_generator(6), **kw), want)
    with pytest.raises(ProbPruneError, match="give exactly one"):
        random_mask(w, make_generator(6))
    with pytest.raises(ProbPruneError, match="give exactly one"):
        magnitude_mask(w, threshold=0.1, prune_fraction=0.2)


# --------------------------------------------------------------------------- modules pruned with torch.nn.utils.prune


def _torch_pruned_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 5))
    tprune.l1_unstructured(model[0], "weight", amount=0.3)
    tprune.random_unstructured(model[2], "weight", amount=0.5)  # a prior unrelated to |w|
    return model


def _is_plain(model: nn.Module) -> bool:
    return not any(m._forward_pre_hooks for m in model.modules()) and \
        not any(n.endswith(("_orig", "_mask")) for n in model.state_dict())


@pytest.mark.parametrize("fraction", [0.5, 0.6, 0.9])
def test_torch_pruned_module_layerwise_equals_torch_repruning(fraction: float) -> None:
    """Re-pruning a torch-pruned module equals torch's own re-pruning (amount = the extra count)."""
    model = _torch_pruned_mlp(int(fraction * 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune(model, PruneSpec(prune_fraction=fraction))
    ref = _torch_pruned_mlp(int(fraction * 10))
    for i in (0, 2, 4):
        mod = ref[i]
        n = mod.weight.numel()
        n_prior = int((mod.weight_mask == 0).sum()) if hasattr(mod, "weight_mask") else 0
        tprune.l1_unstructured(mod, "weight", amount=max(0, round(fraction * n) - n_prior))
        assert torch.equal(res.masks[f"{i}.weight"], mod.weight_mask.bool()), i
    assert _is_plain(res.model)
    x = torch.randn(7, 10)
    assert torch.equal(res.model(x), ref(x))
    # the input keeps its re-parametrisation and values
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(model[i]._forward_pre_hooks for i in (0, 2))
    copy.deepcopy(res.model)  # a plain module copies (the re-parametrised input does not)


def test_torch_pruned_module_global_equals_torch_global_repruning() -> None:
    model = _torch_pruned_mlp(3)
    res = prune(model, PruneSpec(prune_fraction=0.7, scope="global"))
    ref = _torch_pruned_mlp(3)
    params = [(ref[i], "weight") for i in (0, 2, 4)]
    n = sum(m.weight.numel() for m, _ in params)
    n_prior = sum(int((m.weight_mask == 0).sum()) for m, _ in params if hasattr(m, "weight_mask"))
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=round(0.7 * n) - n_prior)
    for i, (mod, _) in zip((0, 2, 4), params):
        assert torch.equal(res.masks[f"{i}.weight"], mod.weight_mask.bool()), i
    assert res.stats.pruned == round(0.7 * n)


def test_torch_pruned_entries_stay_pruned() -> None:
    """The torch mask is a prior: a smaller prune_fraction keeps it; every rule keeps its removals."""
    model = _torch_pruned_mlp(5)
    torch_keep = {i: model[i].weight_mask.bool() for i in (0, 2)}
    res = prune(model, PruneSpec(prune_fraction=0.1))
    for i, keep in torch_keep.items():
        assert torch.equal(res.masks[f"{i}.weight"], keep)  # 0.1 < the prior's share: nothing more removed
    assert res.stats.layers[0].pruned == round(0.3 * 240)
    for kw in ({"threshold": 0.05}, {"p": 0.4}):
        method = "magnitude" if "threshold" in kw else "random"
        r = prune(model, PruneSpec(method=method, **kw), generator=make_generator(1),  # type: ignore[arg-type]
                  prior={"2.weight": torch.rand(16, 24) > 0.5})
        for i, keep in torch_keep.items():
            assert not (r.masks[f"{i}.weight"] & ~keep).any()
        assert _is_plain(r.model)


def test_torch_pruned_conv_and_bias_become_plain_parameters() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    tprune.l1_unstructured(model[0], "weight", amount=0.25)
    tprune.l1_unstructured(model[3], "bias", amount=1)  # biases are never ours to prune, but torch's stay
    x = torch.randn(2, 2, 6, 6)
    res = prune(model, PruneSpec(prune_fraction=0.0))
    assert _is_plain(res.model)
    assert torch.equal(res.model(x), model(x))
    assert torch.equal(res.masks["0.weight"], model[0].weight_mask.bool())
    assert sorted(res.model.state_dict()) == ["0.bias", "0.weight", "3.bias", "3.weight"]
