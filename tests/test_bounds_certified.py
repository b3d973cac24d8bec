"""Certified gap bound: upper ≥ lower always; tight where theory says; biases, sigmoid, pools, ensembles."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probprune.bounds.certified import certified_gap_bound, lower_at
from probprune.config import GapSpec, LawSpec, NetSpec, ProbPruneError, PruneSpec, parse_arch
from probprune.masks import prune
from probprune.nets import Net
from probprune.runner.gap import gap_sandwich
from probprune.sampling import sample_net
from reference import certified_bound_one, check_batched_equals_reference

pytestmark = pytest.mark.usefixtures("one_thread")

K = 8  # every Hypothesis example is an ensemble of K members: K cases per example
TINY = GapSpec(n_points=48, n_restarts=2, n_steps=4)

FCNS = ["fcn:3,5,2", "fcn:4,8,8,3", "fcn:2,6,6,6,2", "fcn:5,3,4"]
CNNS = ["cnn:1x5x5,c2k3,3", "cnn:2x6x6,c3k3m2,c2k2s2p0,2", "cnn:1x4x4,c2k3r,c2k3s2r,2", "cnn:1x6x5,c2k3p0m2,3,2",
        "cnn:1x5x5,c2k1,c1k3p2r,2"]


def build(arch: str, act: str, bias: bool, method: str, frac: float, seed: int, bias_scale: float) -> tuple[Net, Net]:
    spec = parse_arch(arch, activation=act, bias=bias)
    gens = [torch.Generator().manual_seed(seed * 31 + j) for j in range(K)]
    t = sample_net(spec, LawSpec(), gens)
    if bias:
        bg = torch.Generator().manual_seed(seed)
        t = t.with_weights(t.weights, [bias_scale * torch.randn(b.shape, generator=bg)  # type: ignore[union-attr]
                                       for b in t.biases])
    mg = [torch.Generator().manual_seed(seed * 17 + j) for j in range(K)] if method == "random" else None
    return t, prune(t, PruneSpec(method=method, prune_fraction=frac), generator=mg).model  # type: ignore[arg-type]


def check_sandwich(t: Net, p: Net, radius: float, seed: int) -> None:
    sw = gap_sandwich(t, p, GapSpec(radius=radius, n_points=TINY.n_points, n_restarts=TINY.n_restarts,
                                    n_steps=TINY.n_steps), seed)
    assert sw.lower.shape == (K,) and sw.upper.shape == (K,)
    bad = sw.lower > sw.upper
    assert not bool(bad.any()), (sw.lower[bad], sw.upper[bad])
    assert bool((sw.ratio >= 1).all())


common = {
    "act": st.sampled_from(["relu", "tanh", "sigmoid", "leaky_relu", "identity"]),
    "bias": st.booleans(),
    "method": st.sampled_from(["magnitude", "random"]),
    "frac": st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    "radius": st.sampled_from([0.3, 1.0, 4.0]),
    "seed": st.integers(0, 10**6),
    "bias_scale": st.sampled_from([0.1, 1.0, 5.0]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(FCNS), **common)
def test_fcn_upper_at_least_lower(arch: str, act: str, bias: bool, method: str, frac: float, radius: float,
                                  seed: int, bias_scale: float) -> None:
    t, p = build(arch, act, bias, method, frac, seed, bias_scale)
    check_sandwich(t, p, radius, seed)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(CNNS), **common)
def test_cnn_upper_at_least_lower(arch: str, act: str, bias: bool, method: str, frac: float, radius: float,
                                  seed: int, bias_scale: float) -> None:
    t, p = build(arch, act, bias, method, frac, seed, bias_scale)
    check_sandwich(t, p, radius, seed)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), act=st.sampled_from(["relu", "tanh", "sigmoid"]),
       radius=st.sampled_from([0.5, 2.0]))
def test_changed_biases_and_unrelated_weights_stay_covered(seed: int, act: str, radius: float) -> None:
    """The bound holds for any pair of nets (biases differ, weights unrelated), not only pruned ones."""
    spec = parse_arch("fcn:3,6,6,2", activation=act, bias=True)
    t = sample_net(spec, LawSpec(), [torch.Generator().manual_seed(seed + j) for j in range(K)])
    q = sample_net(spec, LawSpec(), [torch.Generator().manual_seed(seed + 100 + j) for j in range(K)])
    g = torch.Generator().manual_seed(seed)
    t = t.with_weights(t.weights, [torch.randn(b.shape, generator=g) for b in t.biases])  # type: ignore[union-attr]
    q = q.with_weights(q.weights, [torch.randn(b.shape, generator=g) for b in q.biases])  # type: ignore[union-attr]
    check_sandwich(t, q, radius, seed)


def test_linear_layer_sandwich_closes() -> None:
    spec = NetSpec(widths=(12, 20))
    t = sample_net(spec, LawSpec(), torch.Generator().manual_seed(0))
    p = prune(t, PruneSpec(prune_fraction=0.7)).model
    sw = gap_sandwich(t, p, GapSpec(radius=2.0), 1)
    d = float(torch.linalg.svdvals((t.weights[0] - p.weights[0]).double())[0])
    # the exact-arithmetic part is ‖D‖·r; the float32 forward-rounding margin comes on top (and is small)
    margin = float(sw.bound.rounding_margin)  # type: ignore[arg-type]
    assert float(sw.upper) - margin == pytest.approx(2.0 * d, rel=1e-8)
    assert 0.0 < margin <= 1e-5 * float(sw.upper)
    assert float(sw.ratio) <= 1.001 and float(sw.ratio) >= 1.0
    assert sw.exact_norms and sw.n_exact == sw.n_norms == 3


def test_matches_hand_formula_bias_free() -> None:
    """No biases, σ(0) = 0: e_i = L_i(‖W̃_i‖ e_{i−1} + ‖D_i‖ ∏_{j<i} L_j‖W_j‖ r) (or the other, smaller form)."""
    spec = NetSpec(widths=(4, 7, 6, 3), activation="leaky_relu")
    t = sample_net(spec, LawSpec(), torch.Generator().manual_seed(3))
    p = prune(t, PruneSpec(prune_fraction=0.4)).model
    r = 1.7
    b = certified_gap_bound(t, p, radius=r)

    def nrm(w: torch.Tensor) -> float:
        return float(torch.linalg.svdvals(w.double())[0])

    e, reach, reach_p = 0.0, r, r
    for wt, wp in zip(t.weights, p.weights):
        nt, np_, nd = nrm(wt), nrm(wp), nrm(wt - wp)
        e = min(np_ * e + nd * reach, nt * e + nd * reach_p)
        reach, reach_p = nt * reach, np_ * reach_p
    assert float(b.value) - float(b.rounding_margin) == pytest.approx(e, rel=1e-7)  # type: ignore[arg-type]
    assert float(b.terms[-1].error) == pytest.approx(e, rel=1e-7)
    assert e <= float(b.value) <= e * (1 + 1e-4)
    assert b.exact and len(b.terms) == 3
    assert any("sigma(0) = 0.0" in a for a in b.assumptions)


def test_sigmoid_reach_includes_sigma0() -> None:
    spec = NetSpec(widths=(2, 5, 1), activation="sigmoid")
    w1 = torch.zeros(5, 2)
    t = Net.from_weights(spec, [w1, torch.ones(1, 5)])
    p = Net.from_weights(spec, [w1, torch.zeros(1, 5)])
    # h_1 = σ(0)·1 = 0.5·1 (norm 0.5·√5), so the gap is exactly ‖D_2 h_1‖ = 2.5 everywhere
    b = certified_gap_bound(t, p, radius=1.0)
    assert float(b.terms[0].reach_target) >= 0.5 * math.sqrt(5)
    assert float(b.value) >= 2.5 - 1e-9
    # the cap √n = √5 makes the exact-arithmetic part tight here; the float32 rounding margin comes on top
    assert float(b.value) - float(b.rounding_margin) == pytest.approx(2.5, rel=1e-6)  # type: ignore[arg-type]
    assert 0.0 < float(b.rounding_margin) <= 1e-5 * float(b.value)  # type: ignore[arg-type]
    lo = lower_at(t, p, torch.zeros(2), 1.0)
    assert float(lo) == pytest.approx(2.5, rel=1e-12)


def test_maxpool_cnn_term_and_assumption() -> None:
    spec = parse_arch("cnn:1x6x6,c2k3m2,3", activation="relu", bias=True)
    t = sample_net(spec, LawSpec(), torch.Generator().manual_seed(0))
    p = prune(t, PruneSpec(prune_fraction=0.5)).model
    b = certified_gap_bound(t, p, radius=1.0)
    assert any("max-pool" in a for a in b.assumptions)
    assert b.terms[0].norm_target.method == "fft" and not b.terms[0].norm_target.exact  # zero padding
    assert float(b.terms[0].bias_diff) == 0.0 and float(b.terms[0].bias_norm) > 0


def test_identical_nets_bound_zero_ratio_one() -> None:
    t, _ = build("fcn:3,5,2", "sigmoid", True, "magnitude", 0.5, 1, 1.0)
    sw = gap_sandwich(t, t, TINY, 0)
    assert bool((sw.upper == 0).all()) and bool((sw.ratio == 1).all())


def test_ensemble_bound_equals_members() -> None:
    t, p = build("cnn:2x6x6,c3k3m2,c2k2s2p0,2", "tanh", True, "random", 0.5, 4, 1.0)
    # members 0 and 5 of the batched bound vs the bound of that pair alone (old tolerance: rel 1e-9)
    check_batched_equals_reference(lambda r: [float(v) for v in certified_gap_bound(t, p, radius=r).value],
                                   lambda r, k: float(certified_bound_one(t.member(k), p.member(k), r).value),
                                   [1.3], rtol=1e-9, members=(0, 5))


def test_bad_input() -> None:
    t, p = build("fcn:3,5,2", "relu", False, "magnitude", 0.5, 1, 1.0)
    for r in (0.0, -2.0, math.nan, math.inf):
        with pytest.raises(ProbPruneError, match="radius"):
            certified_gap_bound(t, p, radius=r)
    other, _ = build("fcn:3,6,2", "relu", False, "magnitude", 0.5, 1, 1.0)
    with pytest.raises(ProbPruneError, match="architecture"):
        certified_gap_bound(t, other, radius=1.0)
    nan = p.with_weights([p.weights[0] * math.nan, p.weights[1]])
    with pytest.raises(ProbPruneError, match="non-finite"):
        certified_gap_bound(t, nan, radius=1.0)
    with pytest.raises(ProbPruneError, match="n_trials"):
        certified_gap_bound(t, p.member(0), radius=1.0)
    for bad in (math.nan, math.inf, -math.inf):  # one bad entry among finite ones
        w = p.weights[1].clone()
        w[0, 0, 1] = bad
        with pytest.raises(ProbPruneError, match="pruned 2.weight: contains non-finite"):
            certified_gap_bound(t, p.with_weights([p.weights[0], w]), radius=1.0)


def test_gap_sandwich_uses_a_given_bound_and_refuses_another_ball() -> None:
    t, p = build("fcn:3,5,2", "relu", False, "magnitude", 0.5, 2, 1.0)
    own = gap_sandwich(t, p, TINY, 0)
    b = certified_gap_bound(t.to(dtype=torch.float64), p.to(dtype=torch.float64), radius=TINY.radius,
                            forward_dtype=torch.float32)
    given_sw = gap_sandwich(t, p, TINY, 0, bound=b)
    assert given_sw.bound is b and torch.equal(given_sw.upper, b.value)
    assert torch.equal(given_sw.lower, own.lower) and torch.equal(given_sw.x, own.x)  # same estimator, same seed
    assert bool((given_sw.lower <= given_sw.upper).all())
    other = certified_gap_bound(t, p, radius=2.0 * TINY.radius)
    with pytest.raises(ProbPruneError, match="bound: computed for radius"):
        gap_sandwich(t, p, TINY, 0, bound=other)
    single = certified_gap_bound(t.member(0), p.member(0), radius=TINY.radius)
    with pytest.raises(ProbPruneError, match="shape"):
        gap_sandwich(t, p, TINY, 0, bound=single)
