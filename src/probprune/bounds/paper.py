"""The paper's form of the main theorem, made computable (``docs/theory.md`` §8).

Qian & Klabjan state: for ε, δ > 0 and α ∈ (0, 1) there are constants K1..K5 such that if

    h ≥ max{K1^{1/α}, (K2/ε)^{1/α}, (K3/δ)^{1/α}, K4 + K5·log(1/δ)}

then with probability ≥ 1 − δ the pruned network's gap is ≤ ε. Their constants are not known.
This module gives (1) the width calculator for any constants, (2) the constants that *our*
explicit theorems imply for a pruning schedule c·h^{−α} (§8.2), and (3) a least-squares fit of
(K2, λ) to Monte Carlo gap-vs-width data, gap ≈ K2·h^{−λ} — a **fit**, not a proof. The fitted
gap exponent is called ``exponent`` (λ, as in :func:`~probprune.bounds.probabilistic.theory_exponent`);
``alpha`` is only ever the schedule exponent α of level = c·h^{−α}. :func:`log_log_fit` is the one
least-squares line on log-log axes (the Monte Carlo slopes of :mod:`probprune.montecarlo` use it too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from probprune.bounds.probabilistic import probabilistic_bound, with_hidden_width
from probprune.config import LawSpec, NetSpec, PruneSpec, _fail

__all__ = ["GapFit", "PaperConstants", "fit_gap_exponent", "implied_constants", "log_log_fit", "paper_min_width"]


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 < alpha < 1.0):
        raise _fail("alpha", alpha, "must be in (0, 1)")


@dataclass(frozen=True)
class PaperConstants:
    """K1..K5 and α of the paper's width condition, with where they come from.

    Attributes:
        k1, k2, k3, k4, k5: the constants (k1, k2, k3 > 0; k4, k5 ≥ 0).
        alpha: α ∈ (0, 1).
        source: ``input`` (given by the user), ``theorem`` (implied by our theorems, §8.2) or ``fit``.
        notes: how they were obtained and what is and is not proven.
    """

    k1: float
    k2: float
    k3: float
    k4: float
    k5: float
    alpha: float
    source: Literal["input", "theorem", "fit"] = "input"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        for name in ("k1", "k2", "k3"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise _fail(name.upper(), v, "must be a finite number > 0")
        for name in ("k4", "k5"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise _fail(name.upper(), v, "must be a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return {"K1": self.k1, "K2": self.k2, "K3": self.k3, "K4": self.k4, "K5": self.k5, "alpha": self.alpha,
                "source": self.source, "notes": list(self.notes)}


def paper_min_width(constants: PaperConstants, eps: float, delta: float) -> float:
    """h* = max{K1^{1/α}, (K2/ε)^{1/α}, (K3/δ)^{1/α}, K4 + K5·log(1/δ)} (§8.1).

    >>> paper_min_width(PaperConstants(1.0, 2.0, 1.0, 10.0, 1.0, 0.5), eps=0.1, delta=0.05)
    400.0
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise _fail("eps", eps, "must be a finite number > 0")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < delta < 1.0):
        raise _fail("delta", delta, "must be in (0, 1)")
    c = constants
    inv = 1.0 / c.alpha
    return max(c.k1 ** inv, (c.k2 / eps) ** inv, (c.k3 / delta) ** inv, c.k4 + c.k5 * math.log(1.0 / delta))


def implied_constants(
    spec: NetSpec,
    law: LawSpec,
    method: Literal["magnitude", "random"],
    c: float,
    alpha: float,
    *,
    rescale: bool = False,
    radius: float = 1.0,
    h_max: int = 2 ** 30,
    steps_per_octave: int = 4,
) -> PaperConstants:
    """K1..K5 implied by our theorems for the schedule level = c·h^{−α} (§8.2).

    K1 = c (so h ≥ K1^{1/α} keeps the level ≤ 1), K3 = 1 (so δ ≥ h^{−α}), K4 = max(d0, h_l) + 1
    (hidden widths exceed input and output widths), K5 = 0, and

        K2 = max over the grid h ∈ [h0, h_max] of ε(h, δ = h^{−α})·h^α,

    with ε our :func:`probabilistic_bound`. Then for grid widths h meeting the four conditions,
    ε(h, δ) ≤ ε(h, h^{−α}) ≤ K2·h^{−α} ≤ ε (ε is nonincreasing in δ). K2 is finite when our
    bound decays faster than h^{−α} (theory: h^{−1/2−3α/2} magnitude, h^{−1/2−α/2} random).

    Args:
        spec: FCN template; its hidden widths are replaced by h.
        law, method, c, alpha, rescale, radius: the setting and schedule.
        h_max: largest width checked (powers of 2^{1/steps_per_octave} from h0).
        steps_per_octave: grid density.
    """
    _check_alpha(alpha)
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise _fail("c", c, "must be a finite number > 0")
    if spec.kind != "fcn":
        raise _fail("arch", spec.to_arch(), "implied constants are computed for FCN hidden widths")
    k4 = float(max(spec.widths[0], spec.widths[-1]) + 1)
    h0 = max(k4, c ** (1.0 / alpha), 2.0)
    field = "relative_threshold" if method == "magnitude" else "p"
    k2 = 0.0
    arg_h = 0
    h = h0
    while h <= h_max:
        hi = int(math.ceil(h))
        level = min(c * hi ** (-alpha), 1.0 - 1e-12 if (method == "random" and rescale) else 1.0)
        pr = PruneSpec(method=method, rescale=rescale, **{field: level})
        b = probabilistic_bound(with_hidden_width(spec, hi), law, pr, min(hi ** (-alpha), 0.999), radius=radius)
        val = b.value * hi ** alpha
        if val > k2:
            k2, arg_h = val, hi
        h *= 2.0 ** (1.0 / steps_per_octave)
    notes = (f"K2 = max of ε(h, δ=h^-α)·h^α over {steps_per_octave} widths per octave in [{int(math.ceil(h0))}, "
             f"{h_max}], attained at h = {arg_h}; widths off this grid rely on the numerically checked "
             "monotonicity of ε in h",
             "K1 = c keeps the level ≤ 1; K3 = 1 reads the δ-condition as δ ≥ h^-α; K4 = max(d0, h_l) + 1, K5 = 0")
    return PaperConstants(float(c), k2, 1.0, k4, 0.0, float(alpha), "theorem", notes)


@dataclass(frozen=True)
class GapFit:
    """Least-squares fit gap ≈ K2·h^{−λ} on log-log axes — a **fit**, not a proof.

    Attributes:
        k2: the fitted constant K2.
        exponent: the fitted gap exponent λ (compare :func:`~probprune.bounds.probabilistic.theory_exponent`).
        r2: coefficient of determination of the log-log fit.
        n: number of (h, gap) points.
    """

    k2: float
    exponent: float
    r2: float
    n: int
    label: str = "fit (least squares on log gap vs log h), not a proof"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return {"K2": self.k2, "exponent": self.exponent, "r2": self.r2, "n": self.n, "label": self.label}


def log_log_fit(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line ``log v = slope·log h + intercept``: ``(slope, intercept, r²)``.

    The values are taken as given (callers drop or refuse non-positive ones first).

    Raises:
        ProbPruneError: fewer than two distinct widths.

    >>> s, b, r2 = log_log_fit([100, 400, 1600], [1.0, 0.5, 0.25])
    >>> round(s, 6), round(r2, 6)
    (-0.5, 1.0)
    """
    xs = [math.log(h) for h in widths]
    ys = [math.log(v) for v in values]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0.0:
        raise _fail("widths", list(widths), "need at least two distinct widths")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    icpt = my - slope * mx
    ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, icpt, 1.0 if ss_tot == 0.0 else 1.0 - ss_res / ss_tot


def fit_gap_exponent(widths: Sequence[float], gaps: Sequence[float]) -> GapFit:
    """Fit log gap = log K2 − λ·log h by least squares (Monte Carlo gap-vs-width curves, §8.3).

    >>> f = fit_gap_exponent([100, 400, 1600], [0.3, 0.15, 0.075])
    >>> round(f.exponent, 6), round(f.k2, 6)
    (0.5, 3.0)
    """
    if len(widths) != len(gaps):
        raise _fail("gaps", list(gaps), f"need one gap per width ({len(widths)} widths)")
    if len(widths) < 2:
        raise _fail("widths", list(widths), "need at least two widths")
    for h, g in zip(widths, gaps):
        if not (math.isfinite(h) and h > 0):
            raise _fail("widths", h, "must be finite and > 0")
        if not (math.isfinite(g) and g > 0):
            raise _fail("gaps", g, "must be finite and > 0 (log-log fit)")
    slope, icpt, r2 = log_log_fit(widths, gaps)
    return GapFit(k2=math.exp(icpt), exponent=-slope, r2=r2, n=len(widths))
