"""Empirical sup-gap estimator, mean gap and relative gap."""

import math

import pytest
import torch

from probprune.config import GapSpec, LawSpec, NetSpec, ProbPruneError, PruneSpec, parse_arch
from probprune.gap import is_homogeneous, mean_gap, relative_gap, sup_gap, sup_output
from probprune.masks import prune
from probprune.nets import Net
from probprune.sampling import sample_net
from reference import check_batched_equals_reference, gap_over_points

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(arch: str, k: int | None = None, act: str = "relu", bias: bool = False, frac: float = 0.5,
         seed: int = 0) -> tuple[Net, Net]:
    spec = parse_arch(arch, activation=act, bias=bias)
    g = [gen(seed + j) for j in range(k)] if k else gen(seed)
    t = sample_net(spec, LawSpec(), g)
    if bias:
        bg = gen(seed + 999)
        t = t.with_weights(t.weights, [torch.randn(b.shape, generator=bg) for b in t.biases])  # type: ignore[union-attr]
    return t, prune(t, PruneSpec(prune_fraction=frac)).model


@pytest.mark.parametrize("shape", [(16, 32), (40, 12), (8, 8)])
def test_linear_layer_reaches_operator_norm(shape: tuple[int, int]) -> None:
    """One linear layer: the gap is ‖D‖₂·r exactly; PGA reaches it within 1e-3 relative (default budget)."""
    d_in, d_out = shape
    t, p = pair(f"fcn:{d_in},{d_out}", seed=d_in)
    d = (t.weights[0] - p.weights[0]).double()
    for r in (1.0, 2.5):
        est = sup_gap(t, p, GapSpec(radius=r), gen(1))
        truth = float(torch.linalg.svdvals(d)[0]) * r
        assert float(est.value) <= truth * (1 + 1e-5)
        assert float(est.value) >= truth * (1 - 1e-3)
        assert float(est.x.norm()) <= r * (1 + 1e-5)


def test_positive_homogeneity_sphere_scaling() -> None:
    """Bias-free ReLU: the search runs on the unit sphere, value(r) = r·value(1) and x lies on the sphere."""
    t, p = pair("fcn:6,20,20,3")
    assert is_homogeneous(t) and is_homogeneous(p)
    spec = GapSpec(n_points=256, n_restarts=4, n_steps=20)
    one = sup_gap(t, p, spec, gen(5))
    assert one.homogeneous
    for r in (0.5, 3.0):
        est = sup_gap(t, p, GapSpec(radius=r, n_points=256, n_restarts=4, n_steps=20), gen(5))
        assert float(est.value) == pytest.approx(r * float(one.value), rel=1e-6)
        assert float(est.x.norm()) == pytest.approx(r, rel=1e-5)
        # and the identity itself: the net's gap at x equals r times the gap at x / r
        fx = (p(est.x[None]) - t(est.x[None])).norm()  # type: ignore[operator]
        assert float(fx) == pytest.approx(float(est.value), rel=1e-4)


def test_non_homogeneous_nets_search_the_ball() -> None:
    for act, bias in (("tanh", False), ("relu", True), ("sigmoid", False)):
        t, p = pair("fcn:5,12,3", act=act, bias=bias)
        assert not is_homogeneous(t)
        est = sup_gap(t, p, GapSpec(radius=2.0, n_points=128, n_restarts=3, n_steps=10), gen(0))
        assert not est.homogeneous
        assert float(est.x.norm()) <= 2.0 * (1 + 1e-5)
        fx = (p(est.x[None]) - t(est.x[None])).norm()  # type: ignore[operator]
        assert float(fx) == pytest.approx(float(est.value), rel=1e-4)


def test_value_is_attained_and_ascent_only_improves() -> None:
    t, p = pair("fcn:8,32,32,4", k=4)
    spec = GapSpec(n_points=128, n_restarts=4, n_steps=15)
    est = sup_gap(t, p, spec, gen(2))
    assert est.value.shape == (4,) and est.x.shape == (4, 8)
    assert bool((est.value >= est.sampled).all())
    assert est.n_evals == 128 + 4 * 15 * 4
    diffs = (p(est.x[:, None]) - t(est.x[:, None])).norm(dim=-1).squeeze(-1)  # type: ignore[operator]
    torch.testing.assert_close(diffs, est.value, rtol=1e-4, atol=1e-7)
    no_ascent = sup_gap(t, p, GapSpec(n_points=128, n_restarts=0), gen(2))
    torch.testing.assert_close(no_ascent.value, est.sampled)
    assert no_ascent.n_evals == 128


def test_ensemble_equals_one_at_a_time() -> None:
    for arch, act, bias in (("fcn:6,16,16,3", "relu", False), ("cnn:1x6x6,c2k3m2,4,2", "tanh", True)):
        t, p = pair(arch, k=3, act=act, bias=bias)
        spec = GapSpec(n_points=96, n_restarts=3, n_steps=8)
        ens = sup_gap(t, p, spec, gen(7))
        for k in range(3):
            one = sup_gap(t.member(k), p.member(k), spec, gen(7))
            assert float(one.value) == pytest.approx(float(ens.value[k]), rel=1e-4)


def test_cnn_inputs_have_input_shape() -> None:
    t, p = pair("cnn:2x5x5,c3k3,4", k=2)
    est = sup_gap(t, p, GapSpec(radius=1.5, n_points=64, n_restarts=2, n_steps=5), gen(0))
    assert est.x.shape == (2, 2, 5, 5)
    assert bool((est.x.flatten(1).norm(dim=1) <= 1.5 * (1 + 1e-5)).all())


def test_pure_and_deterministic() -> None:
    t, p = pair("fcn:4,10,2")
    before = [w.clone() for w in t.weights + p.weights]
    a = sup_gap(t, p, GapSpec(n_points=64, n_steps=5), gen(3))
    b = sup_gap(t, p, GapSpec(n_points=64, n_steps=5), gen(3))
    assert float(a.value) == float(b.value) and torch.equal(a.x, b.x)
    assert all(torch.equal(x, y) for x, y in zip(before, t.weights + p.weights))
    state = torch.random.get_rng_state()
    sup_gap(t, p, GapSpec(n_points=64, n_steps=5), gen(4))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_identical_nets_have_zero_gap() -> None:
    t, _ = pair("fcn:4,10,2", act="sigmoid", bias=True)
    assert float(sup_gap(t, t, GapSpec(n_points=32, n_steps=3), gen(0)).value) == 0.0


def test_sup_output_and_relative_gap() -> None:
    spec = NetSpec(widths=(3, 2))
    w = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    f = Net.from_weights(spec, [w * torch.tensor([[0.0], [1.0]])])
    target = Net.from_weights(spec, [w])
    out = sup_output(target, GapSpec(radius=2.0), gen(0))
    assert float(out.value) == pytest.approx(6.0, rel=1e-3)
    rel = relative_gap(target, f, GapSpec(radius=2.0), gen(0))
    assert float(rel.value) == pytest.approx(1.0, rel=2e-3)  # ‖D‖ = 3 = ‖W‖
    assert float(rel.value) == pytest.approx(float(rel.gap.value / rel.output.value))


def test_mean_gap_matches_loop() -> None:
    t, p = pair("fcn:5,12,3", k=3, act="tanh", bias=True)
    x = torch.randn(50, 5, generator=gen(1))
    # member k of the batched mean gap vs the plain one-pair loop over the points (old tolerance: rel 1e-5)
    check_batched_equals_reference(lambda xin: [float(v) for v in mean_gap(t, p, xin)],
                                   lambda xin, k: float(gap_over_points(t.member(k), p.member(k), xin).mean()),
                                   [x], rtol=1e-5)
    xk = torch.randn(3, 20, 5, generator=gen(2))
    per = mean_gap(t, p, xk)
    assert float(per[1]) == pytest.approx(float((p.member(1)(xk[1]) - t.member(1)(xk[1])).norm(dim=1).mean()),  # type: ignore[operator]
                                          rel=1e-5)
    single = mean_gap(t.member(0), p.member(0), x)
    assert single.dim() == 0
    with pytest.raises(ProbPruneError, match="x: shape"):
        mean_gap(t, p, torch.zeros(4, 6))
    with pytest.raises(ProbPruneError, match="no inputs"):
        mean_gap(t, p, torch.zeros(0, 5))


def test_bad_input() -> None:
    t, p = pair("fcn:4,10,2")
    other, _ = pair("fcn:4,11,2")
    with pytest.raises(ProbPruneError, match="architecture"):
        sup_gap(t, other, GapSpec(), gen(0))
    tb, _ = pair("fcn:4,10,2", act="tanh")
    with pytest.raises(ProbPruneError, match="activation"):
        sup_gap(t, tb, GapSpec(), gen(0))
    bad = p.with_weights([p.weights[0], p.weights[1].clone().fill_(float("nan"))])
    with pytest.raises(ProbPruneError, match="non-finite"):
        sup_gap(t, bad, GapSpec(), gen(0))
    ens, _ = pair("fcn:4,10,2", k=2)
    with pytest.raises(ProbPruneError, match="n_trials"):
        sup_gap(ens, p, GapSpec(), gen(0))
    for r in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ProbPruneError, match="gap.radius"):
            GapSpec(radius=r)
    with pytest.raises(ProbPruneError, match="generator"):
        sup_gap(t, p, GapSpec(), 0)  # type: ignore[arg-type]
    for call in (lambda: sup_gap(t, p, NetSpec(widths=(4, 10, 2)), gen(0)),  # type: ignore[arg-type]
                 lambda: sup_output(t, PruneSpec(), gen(0))):  # type: ignore[arg-type]
        with pytest.raises(ProbPruneError, match="gap_spec: expected a GapSpec, got"):
            call()
