"""Concentration lemmas of the probabilistic bounds (``docs/theory.md`` §3).

High-probability upper bounds for random matrices with i.i.d. entries described by
:class:`~probprune.bounds.entries.EntryStats`: operator norms (matrix Bernstein, its Gram form,
Gordon's bound; per-frequency Bernstein for circular convolutions), the image of one fixed vector
(sub-Gaussian rows, Lipschitz activations) and Chernoff bounds for sums of squares (χ², half-χ²).
Each returns a number that the event it names stays below with the stated probability.
"""

from __future__ import annotations

import math

import numpy as np

from probprune.bounds.entries import EntryStats
from probprune.nets import Activation

__all__ = ["activation_gain", "chernoff_sq", "conv_op_bound", "forward_fixed", "op_norm_bound", "subgauss_fixed"]


def _bernstein_t(v: float, r: float, ell: float) -> float:
    """Smallest t with exp(−(t²/2)/(v + r t/3)) ≤ exp(−ell): t = r·ell/3 + √((r·ell/3)² + 2·v·ell)."""
    u = r * ell / 3.0
    return u + math.sqrt(u * u + 2.0 * v * ell)


def op_norm_bound(m: int, n: int, st: EntryStats, delta: float) -> tuple[float, str]:
    """Upper bound on ‖A‖₂ for an m×n matrix with i.i.d. entries ``st``, failing w.p. ≤ δ (§3).

    The smallest of: matrix Bernstein (Tropp 2012, Thm 1.6), its Gram form on the
    min(m,n)×min(m,n) matrix AᵀA or AAᵀ (Tropp 2012, Thm 1.4), and Gordon's bound for an
    unpruned Gaussian matrix. The choice depends only on (m, n, st, δ), never on the sample.

    >>> st = EntryStats(b=0.0, var=0.0, m4=0.0, proxy=0.0)
    >>> op_norm_bound(4, 3, st, 0.1)[0]
    0.0
    """
    if st.var <= 0.0 and st.b <= 0.0:
        return 0.0, "zero"
    cands: list[tuple[float, str]] = []
    ell = math.log((m + n) / delta)
    cands.append((_bernstein_t(max(m, n) * st.var, st.b, ell), "bernstein"))
    k, big = min(m, n), max(m, n)
    ell_g = math.log(k / delta)
    sigma2 = big * (st.m4 + max(k - 2, 0) * st.var ** 2)
    cands.append((math.sqrt(big * st.var + _bernstein_t(sigma2, k * st.b * st.b, ell_g)), "gram"))
    if st.gauss_sd is not None:
        s = st.gauss_sd
        cands.append((s * (math.sqrt(m) + math.sqrt(n) + math.sqrt(2.0 * math.log(1.0 / delta))), "gordon"))
    return min(cands)


def conv_op_bound(c_out: int, c_in: int, k: int, n_freq: int, st: EntryStats, delta: float) -> tuple[float, str]:
    """Upper bound on the operator norm of a circular convolution with i.i.d. kernel entries (§4.3).

    Per frequency the c_out×c_in block is a sum of c_out·c_in·k² independent mean-zero terms,
    each of norm ≤ b, with variance parameter max(c_in, c_out)·k²·var: matrix Bernstein per
    frequency, union bound over the ``n_freq`` frequencies.
    """
    if st.var <= 0.0 and st.b <= 0.0:
        return 0.0, "zero"
    ell = math.log(n_freq * (c_out + c_in) / delta)
    return _bernstein_t(max(c_in, c_out) * k * k * st.var, st.b, ell), "fft-bernstein"


def subgauss_fixed(m: int, proxy: float, xi: float) -> float:
    """‖A v‖ ≤ ν(√m + √(2ξ))‖v‖ w.p. ≥ 1 − e^{−ξ} for a fixed v (Lemma 2, §3.3)."""
    return math.sqrt(proxy) * (math.sqrt(m) + math.sqrt(2.0 * xi))


def forward_fixed(m: int, st: EntryStats, gamma: float, lip: float, xi: float) -> float:
    """‖σ(W v)‖ ≤ (γ·s·√m + L·κ·√(2ξ))‖v‖ w.p. ≥ 1 − e^{−ξ} for a fixed v (Lemma 3, §3.4)."""
    s_true = math.sqrt(st.var) if st.gauss_sd is None else st.gauss_sd
    kappa = st.lip_sd if st.lip_sd is not None else math.inf
    return gamma * s_true * math.sqrt(m) + lip * kappa * math.sqrt(2.0 * xi)


def activation_gain(act: Activation) -> float:
    """γ_σ = sup_z √((σ(z)² + σ(−z)²)/2)/|z| (§3.4): relu 1/√2, leaky_relu √((1+c²)/2), tanh/identity 1."""
    if act.name == "relu":
        return math.sqrt(0.5)
    if act.name == "leaky_relu":
        return math.sqrt((1.0 + act.negative_slope ** 2) / 2.0)
    return 1.0


_LAMBDAS = np.concatenate([np.linspace(1e-4, 0.45, 600), 0.5 - np.geomspace(0.05, 1e-7, 400)])


def chernoff_sq(m: int, xi: float, half: bool) -> float:
    """t with ``P(Σ_{j≤m} Y_j² ≥ t·κ²) ≤ e^{−ξ}`` for independent rows with proxy κ² (§3.3, §3.6).

    ``E e^{λY²} ≤ (1 − 2λκ²)^{−1/2}`` (Lemma 2); with ``half`` (ReLU, §3.6) the squares are of
    ``σ(z + u) − σ(z)`` or ``σ(y)`` with a symmetric pair, whose MGF is at most
    ``(1 + (1 − 2λκ²)^{−1/2})/2``. Chernoff at any λ ∈ (0, 1/2) is valid; the smallest over a
    fixed grid of λ is returned (never above Laurent–Massart's ``(√m + √(2ξ))²`` for the χ² case
    up to the grid).

    >>> round(chernoff_sq(4, 10.0, False), 2) <= (2 + (20) ** 0.5) ** 2
    True
    """
    lam = _LAMBDAS
    g = (1.0 - 2.0 * lam) ** -0.5
    log_g = np.log((1.0 + g) / 2.0) if half else np.log(g)
    return float(np.min((xi + m * log_g) / lam))
