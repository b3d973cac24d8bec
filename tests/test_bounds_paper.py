"""The paper's form (docs/theory.md §8): calculator, constants implied by our theorem, (K2, α) fit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probprune.bounds.paper import GapFit, PaperConstants, fit_gap_exponent, implied_constants, paper_min_width
from probprune.bounds.probabilistic import probabilistic_bound, with_hidden_width
from probprune.config import LawSpec, NetSpec, ProbPruneError, PruneSpec


def test_calculator_takes_the_largest_condition() -> None:
    c = PaperConstants(k1=4.0, k2=2.0, k3=0.5, k4=100.0, k5=10.0, alpha=0.5)
    assert paper_min_width(c, eps=0.5, delta=0.1) == pytest.approx(max(16.0, 16.0, 25.0, 100 + 10 * math.log(10)))
    assert paper_min_width(c, eps=0.01, delta=0.1) == pytest.approx((2.0 / 0.01) ** 2)
    assert paper_min_width(c, eps=10.0, delta=1e-4) == pytest.approx((0.5 / 1e-4) ** 2)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(alpha=1.0), "alpha"), (dict(alpha=0.0), "alpha"), (dict(k2=0.0), "K2"), (dict(k4=-1.0), "K4"),
])
def test_constants_validated(kwargs: dict, match: str) -> None:
    args = dict(k1=1.0, k2=1.0, k3=1.0, k4=1.0, k5=1.0, alpha=0.5)
    args.update(kwargs)
    with pytest.raises(ProbPruneError, match=match):
        PaperConstants(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("eps", "delta"), [(0.0, 0.1), (0.1, 0.0), (0.1, 1.0), (-1.0, 0.5)])
def test_calculator_bad_input(eps: float, delta: float) -> None:
    with pytest.raises(ProbPruneError):
        paper_min_width(PaperConstants(1, 1, 1, 1, 1, 0.5), eps, delta)


@settings(max_examples=30, deadline=None)
@given(k2=st.floats(1e-3, 1e3), alpha=st.floats(0.05, 0.95), noise=st.lists(st.floats(-1e-9, 1e-9), min_size=5,
                                                                             max_size=5))
def test_fit_recovers_power_law(k2: float, alpha: float, noise: list[float]) -> None:
    hs = [64.0 * 2 ** i for i in range(5)]
    gaps = [k2 * h ** (-alpha) * math.exp(n) for h, n in zip(hs, noise)]
    f = fit_gap_exponent(hs, gaps)
    assert isinstance(f, GapFit) and "fit" in f.label and "not a proof" in f.label
    assert f.exponent == pytest.approx(alpha, abs=1e-6) and f.k2 == pytest.approx(k2, rel=1e-5) and f.r2 > 0.999


def test_fit_bad_input() -> None:
    with pytest.raises(ProbPruneError, match="gaps"):
        fit_gap_exponent([1, 2], [1.0])
    with pytest.raises(ProbPruneError, match="gaps"):
        fit_gap_exponent([1, 2], [1.0, 0.0])
    with pytest.raises(ProbPruneError, match="distinct"):
        fit_gap_exponent([4, 4], [1.0, 2.0])


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_implied_constants_make_the_paper_statement_true(method: str) -> None:
    """For grid widths h ≥ h*(ε, δ) our bound at (h, δ) is ≤ ε — the paper's statement with our constants."""
    spec, law, c, alpha = NetSpec(widths=(8, 64, 64, 4)), LawSpec(), 0.5, 0.5
    k = implied_constants(spec, law, method, c, alpha, h_max=2 ** 16)  # type: ignore[arg-type]
    assert k.source == "theorem" and k.k1 == c and k.k4 == 9.0 and k.k5 == 0.0 and k.k2 > 0
    field = "relative_threshold" if method == "magnitude" else "p"
    for eps, delta in ((k.k2 * 2 ** (-6 * alpha), 0.05), (k.k2 * 2 ** (-7 * alpha), 0.01)):
        h_star = paper_min_width(k, eps, delta)
        h = 2 ** math.ceil(math.log2(h_star))  # ≥ h*; off the K2 grid, so this also checks §8.2's monotonicity reliance
        b = probabilistic_bound(with_hidden_width(spec, h), law,
                                PruneSpec(method=method, **{field: c * h ** (-alpha)}), delta)  # type: ignore[arg-type]
        assert b.value <= eps


def test_implied_constants_bad_input() -> None:
    with pytest.raises(ProbPruneError, match="alpha"):
        implied_constants(NetSpec(widths=(8, 64, 4)), LawSpec(), "random", 1.0, 1.5)
    with pytest.raises(ProbPruneError, match="c"):
        implied_constants(NetSpec(widths=(8, 64, 4)), LawSpec(), "random", 0.0, 0.5)
