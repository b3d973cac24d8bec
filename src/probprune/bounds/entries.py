"""Entry statistics of the random matrices of the probabilistic bounds (``docs/theory.md`` §2).

For one layer of a target drawn from a :class:`~probprune.config.LawSpec` and its pruned copy, the
proofs use four numbers per matrix — the target's weights ``W``, the pruned weights ``W̃`` and the
removed part ``D = W − W̃``: an almost-sure bound, the second and fourth moments and a sub-Gaussian
variance proxy (:class:`EntryStats`), plus the Gaussian truncation level of the event T (§2.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from probprune.config import LawSpec, ProbPruneError, _fail

__all__ = ["EntryStats", "entry_stats", "gauss_trunc_z", "mixture_uniform_proxy"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# grid of mixture_uniform_proxy: first point, ratio of consecutive points, last point
_PROXY_GRID = (1e-2, 1.001, 4000.0)


@dataclass(frozen=True)
class EntryStats:
    """What the proofs use of one random matrix with i.i.d. symmetric, mean-zero entries (§2).

    Args:
        b: almost-sure bound |entry| ≤ b (for the Gaussian law: on the truncation event T).
        var: upper bound on E entry².
        m4: upper bound on E entry⁴.
        proxy: sub-Gaussian variance proxy ν²: E exp(θ·entry) ≤ exp(θ²ν²/2) for all θ.
        gauss_sd: s if the matrix is an unpruned Gaussian matrix (Gordon's bound applies), else None.
        lip_sd: κ, the Lipschitz constant of the entry as a function of one standard Gaussian
            (uniform: a·√(2/π); Gaussian: s); only for unpruned matrices, else None.
    """

    b: float
    var: float
    m4: float
    proxy: float
    gauss_sd: float | None = None
    lip_sd: float | None = None


def _std_normal_trunc(t: float) -> tuple[float, float, float]:
    """(P(|g| ≤ t), E g²1{|g|≤t}, E g⁴1{|g|≤t}) for a standard normal g."""
    if t <= 0.0:
        return 0.0, 0.0, 0.0
    if math.isinf(t):
        return 1.0, 1.0, 3.0
    m0 = math.erf(t / math.sqrt(2.0))
    phi = math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    m2 = m0 - 2.0 * t * phi
    m4 = 3.0 * m0 - 2.0 * phi * (t ** 3 + 3.0 * t)
    return m0, max(m2, 0.0), max(m4, 0.0)


def _log_sinhc(x: np.ndarray) -> np.ndarray:
    """log(sinh(x)/x) for x ≥ 0 (0 at x = 0), stable for large x."""
    out = np.zeros_like(x)
    mid = (x > 0) & (x <= 20.0)
    out[mid] = np.log(np.sinh(x[mid]) / x[mid])
    big = x > 20.0
    xb = x[big]
    out[big] = xb - math.log(2.0) - np.log(xb) + np.log1p(-np.exp(-2.0 * xb))
    return out


def mixture_uniform_proxy(weights: Sequence[float], halfwidths: Sequence[float]) -> float:
    """Certified upper value of the optimal sub-Gaussian proxy of a mixture of uniform laws (§2.1).

    The entry equals ``U[-c_j, c_j]`` with probability ``π_j`` (``c_j = 0``: the point 0), so
    ``E e^{θX} = Σ_j π_j sinh(θc_j)/(θc_j)`` and the optimal proxy is
    ``ν² = sup_θ 2 log E e^{θX} / θ²``. With ``u = θ·max c`` the MGF is increasing in u, so on a
    geometric grid ``u_k`` the sup over ``[u_k, u_{k+1}]`` is at most ``2 log M(u_{k+1}) / u_k²``;
    below the grid ``M − 1 ≤ Σπ_j (u t_j)²/6 · e^{u²/20}``; above it ``log M ≤ u``. The maximum of
    the three is returned (× (1 + 1e-9) for rounding). For sparse entries this is far below the
    bounded-support proxy ``c²/3``: e.g. ``π = (0.95, 0.05)`` gives ``0.0815·c²``.

    >>> round(mixture_uniform_proxy([1.0], [1.0]), 3)     # the uniform law: 1/3 (strictly sub-Gaussian)
    0.334
    >>> round(mixture_uniform_proxy([0.95, 0.05], [0.0, 1.0]), 4)
    0.0815
    """
    w = np.asarray(weights, dtype=np.float64)
    c = np.abs(np.asarray(halfwidths, dtype=np.float64))
    if w.shape != c.shape or w.ndim != 1 or w.size == 0 or bool((w < 0).any()):
        raise ProbPruneError(f"mixture_uniform_proxy: weights {list(weights)!r} / halfwidths {list(halfwidths)!r}")
    cmax = float(c.max())
    if cmax == 0.0 or float(w[c > 0].sum()) == 0.0:
        return 0.0
    w = w / w.sum()
    t = c / cmax
    u0, ratio, u_top = _PROXY_GRID
    n = int(math.ceil(math.log(u_top / u0) / math.log(ratio))) + 1
    u = u0 * ratio ** np.arange(n + 1)
    keep = w > 0
    log_m = np.logaddexp.reduce(np.log(w[keep])[:, None] + _log_sinhc(np.outer(t[keep], u)), axis=0)
    grid = float(np.max(2.0 * log_m[1:] / u[:-1] ** 2))
    small = float(np.sum(w * t * t)) / 3.0 * math.exp(u0 * u0 / 20.0)
    return cmax * cmax * max(grid * (1.0 + 1e-9), small, 2.0 / u_top)


def entry_stats(
    law: LawSpec,
    a: float,
    role: Literal["target", "pruned", "diff"],
    method: Literal["magnitude", "random"],
    level: float,
    rescale: bool = False,
    trunc_z: float = math.inf,
) -> EntryStats:
    """Entry statistics of ``W`` (role ``target``), ``W̃`` (``pruned``) or ``D = W − W̃`` (``diff``).

    Every returned field is **nondecreasing in the level** (ρ or p): for ``pruned`` under
    magnitude pruning and random pruning without rescale we use the unpruned W's values
    (a valid upper bound, §2.3), which makes every bound monotone in the level (§7).

    Args:
        law: uniform or gaussian (paper symbol K = ``law.scale``).
        a: the layer's scale a_i.
        role: which matrix.
        method: ``magnitude`` (level = ρ, threshold τ = ρ·a) or ``random`` (level = p).
        level: ρ ≥ 0 or p ∈ [0, 1].
        rescale: random only, survivors × 1/(1 − p).
        trunc_z: Gaussian law only, the truncation level b = z·s of the event T (§2.2).

    >>> s = entry_stats(LawSpec(scale=1.0), 1.0, "diff", "magnitude", 0.5)
    >>> round(s.var, 6), s.b    # ρ³a²/3, ρa
    (0.041667, 0.5)
    """
    if law.kind == "uniform":
        var_w, m4_w, b_w, proxy_w = a * a / 3.0, a ** 4 / 5.0, a, a * a / 3.0
        gauss_sd: float | None = None
        lip_sd = a * _SQRT_2_OVER_PI
    else:
        s = a / math.sqrt(3.0)
        m0, m2, m4 = _std_normal_trunc(trunc_z)
        if m0 <= 0.0:
            raise _fail("trunc_z", trunc_z, "must be positive")
        var_w, m4_w, b_w, proxy_w = s * s * m2 / m0, s ** 4 * m4 / m0, s * trunc_z, s * s
        gauss_sd, lip_sd = s, s
    if role == "target":
        return EntryStats(b_w, var_w, m4_w, proxy_w, gauss_sd, lip_sd)
    if method == "magnitude":
        rho = level
        if role == "pruned":
            return EntryStats(b_w, var_w, m4_w, proxy_w)
        tau = rho * a
        if law.kind == "uniform":
            r = min(rho, 1.0)
            # D: 0 w.p. 1 − ρ, else U[−ρa, ρa]: its optimal proxy (§2.1), far below (ρa)²/3
            return EntryStats(r * a, r ** 3 * a * a / 3.0, r ** 5 * a ** 4 / 5.0,
                              min(mixture_uniform_proxy([1.0 - r, r], [0.0, r * a]), proxy_w))
        s = a / math.sqrt(3.0)
        t = min(tau / s, trunc_z)
        m0z, _, _ = _std_normal_trunc(trunc_z)
        _, m2t, m4t = _std_normal_trunc(t)
        return EntryStats(min(tau, b_w), s * s * m2t / m0z, s ** 4 * m4t / m0z, min(tau * tau / 3.0, proxy_w))
    p = level
    if not rescale:
        if role == "pruned":
            return EntryStats(b_w, var_w, m4_w, proxy_w)
        if p == 0.0:
            return EntryStats(0.0, 0.0, 0.0, 0.0)
        # D = w·(1 − M): 0 w.p. 1 − p, else the weight: uniform → optimal mixture proxy (§2.1)
        proxy_d = min(mixture_uniform_proxy([1.0 - p, p], [0.0, a]), proxy_w) if law.kind == "uniform" else proxy_w
        return EntryStats(b_w, p * var_w, p * m4_w, proxy_d)
    if p >= 1.0:
        raise _fail("p", p, "rescaling by 1/(1-p) needs p < 1")
    c = 1.0 / (1.0 - p)
    if role == "pruned":
        return EntryStats(c * b_w, c * var_w, c ** 4 * (1.0 - p) * m4_w, c * c * proxy_w)
    q = p / (1.0 - p)
    if p == 0.0:
        return EntryStats(0.0, 0.0, 0.0, 0.0)
    proxy_d = proxy_w * max(1.0, q) ** 2
    if law.kind == "uniform" and p <= 0.5:  # D = −q·w (kept) or w (removed): a two-uniform mixture, monotone for q ≤ 1
        proxy_d = min(proxy_d, mixture_uniform_proxy([p, 1.0 - p], [a, q * a]))
    return EntryStats(b_w * max(1.0, q), var_w * q, m4_w * (p + p ** 4 / (1.0 - p) ** 3), proxy_d)


def gauss_trunc_z(n_entries: int, delta_t: float) -> float:
    """z with n·P(|g| > z) ≤ δ_T (bisection on erfc)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if n_entries * math.erfc(mid / math.sqrt(2.0)) > delta_t:
            lo = mid
        else:
            hi = mid
    return hi
