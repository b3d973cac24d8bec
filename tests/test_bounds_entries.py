"""Entry statistics (docs/theory.md §2): moments against Monte Carlo, the optimal proxies of sparse entries."""

from __future__ import annotations

import pytest
import torch

from probprune.bounds.entries import entry_stats
from probprune.config import LawSpec
from probprune.rng import make_generator


def test_entry_stats_match_monte_carlo() -> None:
    """The variances and fourth moments used by the proofs match sample moments (uniform law)."""
    a, rho, p = 0.7, 0.4, 0.3
    g = make_generator(5)
    w = (torch.rand(400_000, generator=g, dtype=torch.float64) * 2 - 1) * a
    keep = torch.rand(400_000, generator=g, dtype=torch.float64) >= p
    law = LawSpec()
    cases = {
        "magnitude-diff": (w * (w.abs() <= rho * a), entry_stats(law, a, "diff", "magnitude", rho)),
        "random-diff": (w * ~keep, entry_stats(law, a, "diff", "random", p)),
        "rescale-diff": (w - w * keep / (1 - p), entry_stats(law, a, "diff", "random", p, True)),
        "rescale-pruned": (w * keep / (1 - p), entry_stats(law, a, "pruned", "random", p, True)),
    }
    for name, (x, s) in cases.items():
        assert float((x ** 2).mean()) == pytest.approx(s.var, rel=0.02), name
        assert float((x ** 4).mean()) == pytest.approx(s.m4, rel=0.04), name
        assert float(x.abs().max()) <= s.b + 1e-12, name


@pytest.mark.parametrize(("weights", "halfwidths"), [([1.0], [1.0]), ([0.95, 0.05], [0.0, 1.0]),
                                                     ([0.7, 0.3], [0.0, 2.0]), ([0.2, 0.8], [1.0, 0.25])])
def test_mixture_proxy_bounds_the_mgf_and_is_nearly_optimal(weights: list, halfwidths: list) -> None:
    from probprune.bounds.entries import mixture_uniform_proxy
    nu2 = mixture_uniform_proxy(weights, halfwidths)
    theta = torch.logspace(-3, 3, 20001, dtype=torch.float64)
    mgf = sum(w * (torch.sinh(theta * c) / (theta * c) if c > 0 else torch.ones_like(theta))
              for w, c in zip(weights, halfwidths))
    ratio = 2 * torch.log(mgf) / theta ** 2
    ratio = ratio[torch.isfinite(ratio)]
    assert float(ratio.max()) <= nu2  # a valid proxy: E e^{θX} ≤ e^{θ²ν²/2} on the whole range
    assert nu2 <= float(ratio.max()) * 1.005  # and (almost) the optimal one
    var = sum(w * c * c / 3 for w, c in zip(weights, halfwidths))
    assert nu2 >= var * (1 - 1e-12)


def test_mixture_proxy_monotone_in_level() -> None:
    from probprune.bounds.entries import mixture_uniform_proxy
    vals = [mixture_uniform_proxy([1 - q, q], [0.0, 1.0]) for q in (0.001, 0.01, 0.05, 0.2, 0.5, 1.0)]
    assert vals == sorted(vals) and vals[-1] == pytest.approx(1 / 3, rel=3e-3)
