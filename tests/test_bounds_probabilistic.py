"""Probabilistic bounds (docs/theory.md): validity over sampled nets, monotonicity, inverse consistency, errors
naming the failed assumption (the lemmas: test_bounds_entries.py, test_bounds_concentration.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta

from probprune.bounds.probabilistic import (
    bound_exponent,
    probabilistic_bound,
    resolve_levels,
    solve_max_prune,
    solve_min_width,
    theory_exponent,
)
from probprune.bounds.theorems import ETA_GRID
from probprune.config import GapSpec, LawSpec, NetSpec, ProbPruneError, PruneSpec, parse_arch
from probprune.gap import sup_gap
from probprune.masks import prune
from probprune.rng import make_generator
from probprune.sampling import sample_net

N_NETS = 300
CONF = 0.95  # one-sided confidence of the Clopper–Pearson upper end


def cp_upper(k: int, n: int, conf: float = CONF) -> float:
    """One-sided Clopper–Pearson upper confidence limit for a binomial proportion k/n."""
    return 1.0 if k >= n else float(beta.ppf(conf, k + 1, n - k))


def _sample_pair(spec: NetSpec, law: LawSpec, pr: PruneSpec, n: int, seed: int) -> tuple:
    gens = [make_generator(seed * 10_000 + k) for k in range(n)]
    target = sample_net(spec, law, gens)
    if pr.method == "magnitude":
        pruned = prune(target, PruneSpec(relative_threshold=pr.relative_threshold), law=law).model
    else:
        mg = [make_generator(seed * 10_000 + 5_000 + k) for k in range(n)]
        pruned = prune(target, PruneSpec(method="random", p=pr.p, rescale=pr.rescale), generator=mg).model
    return target, pruned


CASES = [
    ("fcn:4,24,24,2", "uniform", PruneSpec(relative_threshold=0.3)),
    ("fcn:4,24,24,2", "uniform", PruneSpec(method="random", p=0.2)),
    ("fcn:4,24,24,2", "uniform", PruneSpec(method="random", p=0.2, rescale=True)),
    ("fcn:4,24,24,2", "gaussian", PruneSpec(relative_threshold=0.3)),
    ("fcn:4,24,24,2", "gaussian", PruneSpec(method="random", p=0.2, rescale=True)),
    ("cnn:1x6x6,c3k3,4", "uniform", PruneSpec(method="random", p=0.2)),
    ("cnn:1x6x6,c3k3,4", "uniform", PruneSpec(relative_threshold=0.3)),
]


@pytest.mark.parametrize(("arch", "kind", "pr"), CASES)
def test_bound_holds_on_sampled_nets(arch: str, kind: str, pr: PruneSpec) -> None:
    """P(empirical sup-gap > ε(δ)) ≤ δ, asserted with the Clopper–Pearson upper end, at two δ."""
    torch.manual_seed(0)
    spec, law = parse_arch(arch), LawSpec(kind=kind)  # type: ignore[arg-type]
    target, pruned = _sample_pair(spec, law, pr, N_NETS, seed=1)
    gaps = sup_gap(target, pruned, GapSpec(n_points=256, n_restarts=2, n_steps=15), make_generator(3)).value
    assert gaps.shape == (N_NETS,) and bool((gaps > 0).all())
    theorems = ("auto", "operator", "net") if spec.kind == "fcn" else ("auto",)
    for delta in (0.05, 0.5):
        for thm in theorems:  # each theorem must hold on its own, not only the one `auto` returns
            eps = probabilistic_bound(spec, law, pr, delta, theorem=thm).value  # type: ignore[arg-type]
            k = int((gaps > eps).sum())
            assert cp_upper(k, N_NETS) <= delta, (arch, kind, pr, delta, thm, eps, float(gaps.max()))


def test_bound_structure() -> None:
    spec = NetSpec(widths=(16, 256, 256, 4))
    b = probabilistic_bound(spec, LawSpec(), PruneSpec(relative_threshold=0.1), 0.05)
    assert sum(p for _, p in b.budget) == pytest.approx(0.05)
    assert sum(t.contribution for t in b.layers) + b.lipschitz_term == pytest.approx(b.value, rel=1e-9)
    assert b.theorem.startswith("§5") and b.value == min(b.value_operator, b.value_net)  # type: ignore[type-var]
    assert b.eta in ETA_GRID and b.log_net_size == pytest.approx(16 * math.log1p(2 / b.eta))
    assert any("σ(0) = 0" in a for a in b.assumptions)
    op = probabilistic_bound(spec, LawSpec(), PruneSpec(relative_threshold=0.1), 0.05, theorem="operator")
    assert op.value == pytest.approx(b.value_operator) and op.theorem.startswith("§4")
    assert op.value > b.value  # the η-net theorem is tighter here
    doc = b.to_dict()
    assert doc["layers"][0]["name"] == "0.weight" and len(doc["budget"]) == len(b.budget)
    zero = probabilistic_bound(spec, LawSpec(), PruneSpec(relative_threshold=0.0), 0.05)
    assert zero.value == 0.0  # nothing pruned: Theorem O gives exactly 0
    cnn = probabilistic_bound(parse_arch("cnn:1x8x8,c4k3,c4k3m2,10"), LawSpec(),
                              PruneSpec(method="random", p=0.1), 0.05)
    assert cnn.theorem.startswith("§4") and cnn.value_net is None and len(cnn.layers) == 3


def test_tightness_improves_on_operator_route_at_width() -> None:
    """Theorem N beats the operator route by more at larger h (the √(h/h_out) looseness of §4)."""
    ratios = []
    for h in (256, 4096):
        b = probabilistic_bound(NetSpec(widths=(16, h, h, 4)), LawSpec(), PruneSpec(relative_threshold=0.05), 0.05)
        ratios.append(b.value_operator / b.value)  # type: ignore[operator]
    assert ratios[1] > ratios[0] > 1.0


@pytest.mark.parametrize(("spec", "why"), [
    (NetSpec(widths=(16, 64, 4), activation="sigmoid"), "σ(0)"),
    (NetSpec(widths=(16, 64, 4), bias=True), "bias-free"),
    (NetSpec(widths=(16, 16, 4)), "input width"),
    (NetSpec(widths=(4, 8, 8)), "output width"),
])
def test_violated_assumptions_are_named(spec: NetSpec, why: str) -> None:
    with pytest.raises(ProbPruneError, match=why.replace("(", r"\(").replace(")", r"\)")):
        probabilistic_bound(spec, LawSpec(), PruneSpec(relative_threshold=0.1), 0.05)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"), (dict(radius=0.0), "radius"),
    (dict(prune=PruneSpec(method="random", prune_fraction=0.1)), "exact-count"),
    (dict(prune=PruneSpec(relative_threshold=1.5)), "relative_threshold"),
    (dict(prune=PruneSpec(method="random", p=1.0, rescale=True)), "p < 1"),
    (dict(prune=PruneSpec()), "give one level"),
    (dict(theorem="nope"), "theorem"),
])
def test_bad_input(kwargs: dict, match: str) -> None:
    args = dict(spec=NetSpec(widths=(16, 64, 4)), law=LawSpec(), prune=PruneSpec(relative_threshold=0.1), delta=0.05)
    extra = {k: kwargs.pop(k) for k in ("radius", "theorem") if k in kwargs}
    args.update(kwargs)
    with pytest.raises(ProbPruneError, match=match):
        probabilistic_bound(args["spec"], args["law"], args["prune"], args["delta"], **extra)


def test_level_resolution() -> None:
    spec = NetSpec(widths=(16, 64, 4))
    lv, notes = resolve_levels(spec, LawSpec(), PruneSpec(prune_fraction=0.2))
    assert lv == [0.2, 0.2] and "not covered" in notes[0]
    lv, _ = resolve_levels(spec, LawSpec(kind="gaussian"), PruneSpec(prune_fraction=0.2))
    # Gaussian: P(|w| ≤ ρ·a) with s = a/√3 must equal 0.2
    assert math.erf(lv[0] * math.sqrt(3) / math.sqrt(2)) == pytest.approx(0.2)
    lv, _ = resolve_levels(spec, LawSpec(scale=2.0), PruneSpec(threshold=0.1))
    assert lv == pytest.approx([0.1 / (2 / 8), 0.1 / (2 / 8)])
    lv, notes = resolve_levels(spec, LawSpec(), PruneSpec(schedule_c=2.0, schedule_alpha=0.5))
    assert lv == pytest.approx([0.25, 0.25]) and "h = 64" in notes[0]


SPEC_SMALL = NetSpec(widths=(8, 128, 128, 4))
methods = st.sampled_from([("magnitude", False, "uniform"), ("random", False, "uniform"), ("random", True, "uniform"),
                           ("magnitude", False, "gaussian"), ("random", True, "gaussian")])


def _pr(method: str, rescale: bool, level: float) -> PruneSpec:
    return PruneSpec(relative_threshold=level) if method == "magnitude" else \
        PruneSpec(method="random", p=level, rescale=rescale)


@settings(max_examples=25, deadline=None)
@given(m=methods, l1=st.floats(0.0, 0.9), l2=st.floats(0.0, 0.9), d1=st.floats(1e-4, 0.99),
       d2=st.floats(1e-4, 0.99))
def test_monotone_in_level_and_delta(m: tuple, l1: float, l2: float, d1: float, d2: float) -> None:
    method, rescale, kind = m
    law = LawSpec(kind=kind)
    lo, hi = sorted((l1, l2))
    dlo, dhi = sorted((d1, d2))
    e = lambda lv, d: probabilistic_bound(SPEC_SMALL, law, _pr(method, rescale, lv), d).value  # noqa: E731
    assert e(lo, dhi) <= e(hi, dhi) * (1 + 1e-12)
    assert e(lo, dhi) <= e(lo, dlo) * (1 + 1e-12)


@settings(max_examples=10, deadline=None)
@given(m=methods, level=st.floats(0.01, 0.5), h=st.integers(64, 4096))
def test_monotone_in_width_numerically(m: tuple, level: float, h: int) -> None:
    """ε decreases with the hidden width (relied on by solve_min_width; checked, not proven, §7)."""
    method, rescale, kind = m
    law = LawSpec(kind=kind)
    e = [probabilistic_bound(NetSpec(widths=(8, w, w, 4)), law, _pr(method, rescale, level), 0.05).value
         for w in (h, 2 * h)]
    assert e[1] <= e[0]


@settings(max_examples=10, deadline=None)
@given(m=methods, eps=st.floats(1e-3, 2.0), delta=st.floats(0.01, 0.5))
def test_solve_max_prune_consistent(m: tuple, eps: float, delta: float) -> None:
    method, rescale, kind = m
    law = LawSpec(kind=kind)
    base = _pr(method, rescale, 0.1)
    base = dataclasses.replace(base, relative_threshold=None, p=None)
    level, b = solve_max_prune(SPEC_SMALL, law, base, delta, eps, tol=1e-5)
    assert b.value <= eps
    top = 1.0 if (method == "magnitude" and kind == "uniform") or (method == "random" and not rescale) else None
    if top is None or level < top:
        above = probabilistic_bound(SPEC_SMALL, law, _pr(method, rescale, min(level + 2e-5, 1 - 1e-9)), delta)
        assert above.value > eps


@settings(max_examples=5, deadline=None)
@given(eps=st.floats(0.02, 0.5), alpha=st.floats(0.3, 0.8))
def test_solve_min_width_consistent(eps: float, alpha: float) -> None:
    spec = NetSpec(widths=(8, 64, 64, 4))
    pr = PruneSpec(method="random", schedule_c=0.5, schedule_alpha=alpha)
    h, b = solve_min_width(spec, LawSpec(), pr, 0.05, eps)
    assert b.value <= eps
    from probprune.bounds.probabilistic import with_hidden_width
    if h > 9:
        before = probabilistic_bound(with_hidden_width(spec, h - 1), LawSpec(), pr.at_width(h - 1), 0.05)
        assert before.value > eps


def test_solvers_bad_input() -> None:
    with pytest.raises(ProbPruneError, match="eps"):
        solve_max_prune(SPEC_SMALL, LawSpec(), PruneSpec(), 0.05, 0.0)
    with pytest.raises(ProbPruneError, match="eps"):
        solve_min_width(SPEC_SMALL, LawSpec(), PruneSpec(relative_threshold=0.1), 0.05, -1.0)
    with pytest.raises(ProbPruneError, match="FCN"):
        solve_min_width(parse_arch("cnn:1x8x8,c4k3,10"), LawSpec(), PruneSpec(relative_threshold=0.1), 0.05, 1.0)


def test_exponents() -> None:
    assert theory_exponent("magnitude", 0.4) == pytest.approx(0.5 + 0.6)
    assert theory_exponent("random", 0.4) == pytest.approx(0.7)
    with pytest.raises(ProbPruneError, match="alpha"):
        theory_exponent("random", 1.0)
    spec = NetSpec(widths=(16, 64, 64, 4))
    for method in ("magnitude", "random"):
        got = bound_exponent(spec, LawSpec(), method, 1.0, 0.5)  # type: ignore[arg-type]
        assert abs(got - theory_exponent(method, 0.5)) < 0.12  # log factors only  # type: ignore[arg-type]


def test_one_hidden_width_helper_for_fcn_and_cnn() -> None:
    """``with_hidden_width`` serves the solvers and the Monte Carlo grid: FCN hidden widths, CNN head widths."""
    from probprune.bounds.probabilistic import hidden_width, with_hidden_width
    from probprune.montecarlo import hidden_width as mc_hidden_width

    assert mc_hidden_width is hidden_width
    assert with_hidden_width(NetSpec(widths=(8, 64, 32, 4)), 16).widths == (8, 16, 16, 4)
    cnn = parse_arch("cnn:1x8x8,c4k3,c4k3m2,32,10")
    assert with_hidden_width(cnn, 64).widths == (64, 10) and hidden_width(with_hidden_width(cnn, 64)) == 64
    with pytest.raises(ProbPruneError, match="mc.hidden_widths: the architecture fcn:8,4 has no hidden layer"):
        with_hidden_width(NetSpec(widths=(8, 4)), 16, "mc.hidden_widths")
    with pytest.raises(ProbPruneError, match="arch=.*not defined for CNNs"):
        bound_exponent(cnn, LawSpec(), "magnitude", 1.0, 0.5)
