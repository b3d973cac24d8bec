"""The sign relaxation of the first hidden layer over an ℓ2 ball (``docs/certified.md`` §6.2).

Linear relaxation (:mod:`probprune.bounds.differential`) charges every unstable first-layer neuron its own worst
case: ``relu(z) ≤ u(z − l)/(u − l)`` is loosest at ``z = 0``, and around a ball where most neurons are unstable
(the ℓ2 ball around 0 of a trained net) the sum of those gaps is most of the bound. Over an ℓ2 ball the neurons
are coupled: ``x`` has one norm to spend. This module bounds a linear function of the second layer's
pre-activations by keeping that coupling.

With ``z = W₀x + b₀``, ``z̃ = W̃₀x + b̃₀``, ``δ = z̃ − z`` and σ ReLU or LeakyReLU (slope α ∈ [0, 1]):

* ``λσ(z) = ½(1 + α)λz + ½(1 − α)λ|z|`` exactly; for ``λ < 0`` the lower line ``σ(z) ≥ αz`` is used instead
  (``λσ(z) ≤ αλz``); stable neurons are linear (``z`` or ``αz``).
* ``σ(z + δ) − σ(z) = sδ`` with ``s ∈ [α, 1]`` (σ monotone, slopes in [α, 1]), so
  ``μ(σ(z̃) − σ(z)) ≤ max(μδ, αμδ) = ½(1 + α)μδ + ½(1 − α)|μδ|``; where both neurons are stable it is linear.

So a row is at most ``C + θᵀ(z, δ) + πᵀ(|z|, |δ|)`` with ``π ≥ 0``. Over ``x = c + r y``, ``‖y‖ ≤ 1``, with
``z_j = β_j + r w_jᵀy`` and ``δ_j = ε_j + r a_jᵀy`` (``β``, ``ε`` the values at the centre, ``a_j = −D₀ⱼ``):
``|β_j + r w_jᵀy| ≤ |β_j| + r|w_jᵀy|``, and

    max_{‖y‖≤1} gᵀy + Σ_j π_j |m_jᵀy| = max_{s ∈ {±1}ⁿ} ‖g + Σ_j s_j π_j m_j‖₂ ≤ sqrt(Σ_{ab} |Ḡ_ab|),

``g = Mᵀθ`` (``M = [W₀; −D₀]``, rows ``m_j``), ``Ḡ`` the Gram matrix of ``(g, π_1 m_1, …)``: for any ±1 vector
``t``, ``tᵀḠt ≤ Σ_ab |Ḡ_ab|``. With ``K = MMᵀ`` (computed once per pair of nets), ``Σ|Ḡ| = θᵀKθ +
2Σ_b π_b|(Kθ)_b| + πᵀ|K|π``: a few products per row, no per-ball Gram matrix.

The split ``|β_j + r w_jᵀy| ≤ |β_j| + r|w_jᵀy|`` is also improved on by keeping the centre values inside the signs
(AM-GM in a parameter t, :func:`_coupled`); the smaller value is kept.

A linear relaxation charges ``Σ_j π_j r‖m_j‖`` for the same terms; this charges the square root of
``Σ_ab π_a π_b |m_aᵀm_b|`` — the same when the rows are parallel, ``√n`` times less when they are orthogonal (as
the removed weights of a pruned layer nearly are). The caller keeps the larger of this lower value and the
back-substituted one, so it never loosens a bound.

Floating point: every product is done in float64 with its rounding bounded as in
:mod:`probprune.bounds.differential` (``γ_n`` per inner length, a relative ``4u`` per coefficient product); the
forward passes' rounding ρ (and the leaky product's τ) enter as ``|fl(h₀) − h₀| ≤ ρ₀ + τ``.
"""
from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor

from probprune.bounds.norms import _down, _g2

# ``pair``, ``reg``, ``relax0`` below are probprune.bounds.differential's _Pair, _Region and _Relax (that module
# imports this one, so they are typed Any here)

_U = 2.0 ** -53
_TINY = 2.0 ** -960


def _gram(pair: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``K̂ = fl(MMᵀ)``, ``|K̂|`` and ``N = fl(|M||M|ᵀ)`` for ``M = [W₀; −D₀]``, cached on the pair."""
    key = ("signs_gram", 0)
    if key not in pair.cache:
        m = torch.cat([pair.w[0], -pair.d[0]], 0)
        k = m @ m.T
        ma = m.abs()
        pair.cache[key] = (k, k.abs(), ma @ ma.T)
    return cast("tuple[Tensor, Tensor, Tensor]", pair.cache[key])


MAX_WIDTH = 1024
"""The widest first hidden layer the relaxation is used for: its Gram matrices take ``3·(2n₀)²`` floats and each
row three products with them (on a sampled 784-1024-1024-10 pair the bound took 2.8× the time without it)."""

ROW_BLOCK = 1 << 22
"""At most this many (ball × row × neuron) entries per block of rows (callers split larger sets)."""


def usable(reg: Any, alpha: float | None, width: int) -> bool:
    """An ℓ2 ball (no sub-domain cuts) and a ReLU-family first layer (slope ``alpha``) of at most
    :data:`MAX_WIDTH` neurons."""
    return reg.norm == "l2" and reg.cut is None and alpha is not None and isinstance(reg.radius, float) \
        and width <= MAX_WIDTH


def applies(pair: Any, reg: Any) -> bool:
    """Whether :func:`first_layer_low` can be used on a chain pair (:func:`usable`, and a second layer)."""
    return len(pair.w) > 1 and usable(reg, pair.alpha[0], pair.w[0].shape[0])


def act_rows_low(lam: Tensor, mu: Tensor, pair: Any, relax0: Any, bounds0: tuple[Tensor, ...], reg: Any,
                 rho0: tuple[Tensor, Tensor]) -> Tensor:
    """Certified lower values ``[B, R]`` over the ℓ2 ball of ``λᵀ fl(h₀) + μᵀ (fl(h̃₀) − fl(h₀))`` for rows on the
    first layer's outputs (``[B, R, n₀]`` each; the graph path). ``pair`` needs ``w[0]`` (W₀), ``d[0]``, ``d_err[0]``
    (``fl(W₀ − W̃₀)`` and its exact remainder's magnitude), ``b[0]``, ``db[0]``, ``db_err[0]``, ``alpha[0]`` and a
    ``cache`` dict; ``rho0`` the first layer's forward rounding bounds."""
    kept = _kept(relax0)
    if kept is not None:
        ix = kept[0].unsqueeze(1).expand(-1, lam.shape[1], -1)
        lam, mu = lam.gather(2, ix) * kept[1].unsqueeze(1), mu.gather(2, ix) * kept[1].unsqueeze(1)
    return -_upper(-lam, -mu, pair, relax0, bounds0, reg, rho0, kept)


def _kept(relax0: Any) -> tuple[Tensor, Tensor] | None:
    """Per ball, the first-layer neurons that may be non-zero in either net (``[B, L]`` indices, live ones
    first, and a 0/1 mask); ``None`` when every neuron is (no gather needed). A neuron with ``|fl(h)| ≤ 0`` and
    ``|fl(h̃)| ≤ 0`` has ``h = h̃ = 0`` computed and exact, and contributes nothing to any row."""
    live = ~((relax0.hmax_c == 0) & (relax0.hpmax_c == 0))
    width = max(1, int(live.sum(1).max()))
    if width == live.shape[1]:
        return None
    order = torch.sort((~live).to(torch.int8), dim=1, stable=True).indices[:, :width]
    return order, live.gather(1, order).to(torch.float64)


def first_layer_low(lz: Tensor, ld: Tensor, pair: Any, relax0: Any, bounds0: tuple[Tensor, ...],
                    reg: Any, rho: list[tuple[Tensor, Tensor]],
                    onehot: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Certified lower values ``[B, R]`` over the ℓ2 ball of the rows ``lzᵀ z₁ + ldᵀ δ₁`` (``[B, R, n₁]`` each).

    ``z₁``, ``δ₁`` are the second layer's pre-activations and their difference *as computed* (as in
    :func:`probprune.bounds.differential._backsub`); ``bounds0`` the first layer's intervals
    ``(l, u, δ_l, δ_u, l̃, ũ)`` (valid for the computed and the exact values), ``relax0`` its relaxation (for the
    bounds on ``|fl(h₀)|``, ``|fl(h̃₀) − fl(h₀)|`` and the leaky rounding τ), ``rho`` the forward rounding bounds.
    ``onehot``: ``(coefficient of z, of δ, neuron)`` ``[B, R]`` when every row is ``±z_i``, ``±δ_i`` or ``±z̃_i``
    (``lz``, ``ld`` are then not read): the rows are gathered instead of multiplied.
    """
    w1, wt1, d1, de1 = pair.w[1], pair.wt[1], pair.d[1], pair.d_err[1]
    n1, n0 = w1.shape
    rt1, rp1 = rho[1]
    hm = relax0.hmax_c.unsqueeze(1)
    dhm = relax0.dhmax_c.unsqueeze(1)
    if onehot is None:
        g1 = _g2(2 * n1 + 2)
        # the rows in the first layer's outputs: λᵀ fl(h₀) + μᵀ (fl(h̃₀) − fl(h₀)) + const
        lam = lz @ w1 - ld @ d1
        mu = ld @ wt1
        lza, lda = lz.abs(), ld.abs()
        s_coef = ((g1 * (lza @ w1.abs() + lda @ d1.abs()) + lda @ de1) * hm).sum(-1) \
            + (g1 * (lda @ wt1.abs()) * dhm).sum(-1)
        const = lz @ pair.b[1] + ld @ pair.db[1]
        const_err = g1 * (lza @ pair.b[1].abs() + lda @ pair.db[1].abs()) + lda @ pair.db_err[1]
        s_rho1 = ((lz - ld).abs() * rt1.unsqueeze(1)).sum(-1) * (1.0 + 2.0 * _U) \
            + (lda * rp1.unsqueeze(1)).sum(-1)
        low = act_rows_low(lam, mu, pair, relax0, bounds0, reg, rho[0])
    else:
        kept = _kept(relax0)
        cz, cd, neuron = onehot
        # row kinds: z (cd = 0): λ = W₁ᵢ, μ = 0; δ (cz = 0): λ = −(D₁ᵢ + D₁ᵢ,err), μ = W̃₁ᵢ;
        # z̃ (cz = cd): λ = W₁ᵢ − D₁ᵢ − D₁ᵢ,err = W̃₁ᵢ and μ = W̃₁ᵢ exactly, constant b₁ᵢ + (b̃₁ᵢ − b₁ᵢ) = b̃₁ᵢ
        is_z, is_d = (cd == 0).unsqueeze(-1), (cz == 0).unsqueeze(-1)
        sign = torch.where(cz == 0, cd, cz).unsqueeze(-1)

        def rows(m: Tensor) -> Tensor:  # [B, R, L]: row ``neuron`` of m on the kept columns
            return m[neuron] if kept is None else m[neuron.unsqueeze(-1), kept[0].unsqueeze(1)]

        wt_rows = rows(wt1)
        lam = torch.where(is_z, rows(w1), torch.where(is_d, -rows(d1), wt_rows)) * sign
        mu = torch.where(is_z, torch.zeros_like(wt_rows), wt_rows) * sign
        if kept is not None:  # padding entries (beyond a ball's live neurons) are zero rows
            lam, mu = lam * kept[1].unsqueeze(1), mu * kept[1].unsqueeze(1)
            hm = hm.gather(2, kept[0].unsqueeze(1))
        s_coef = (torch.where(is_d, rows(de1), torch.zeros_like(wt_rows)) * hm).sum(-1)  # μ is exact
        b_rows = torch.where(cd == 0, pair.b[1][neuron], torch.where(cz == 0, pair.db[1][neuron], pair.bt[1][neuron]))
        const = b_rows * sign.squeeze(-1)
        const_err = torch.where((cz == 0) & (cd != 0), pair.db_err[1][neuron], torch.zeros_like(b_rows))
        balls = torch.arange(cz.shape[0], device=cz.device).unsqueeze(1)
        s_rho1 = (cz - cd).abs() * rt1[balls, neuron] * (1.0 + 2.0 * _U) + cd.abs() * rp1[balls, neuron]
        low = -_upper(-lam, -mu, pair, relax0, bounds0, reg, rho[0], kept)
    slack = (s_rho1 + s_coef + const_err) * (1.0 + _g2(n0 + n1 + 2)) + _TINY
    v = const + low
    err = slack + 4.0 * _U * (const.abs() + low.abs()) + _TINY
    return _down(v, err)


def _upper(lam: Tensor, mu: Tensor, pair: Any, relax0: Any, bounds0: tuple[Tensor, ...], reg: Any,
           rho0: tuple[Tensor, Tensor], kept: tuple[Tensor, Tensor] | None) -> Tensor:
    """Upper bound ``[B, R]`` over the ball of ``λᵀ fl(h₀) + μᵀ (fl(h̃₀) − fl(h₀))`` (``λ``, ``μ`` ``[B, R, L]`` on
    the neurons ``kept`` (``None``: all of them, L = n₀))."""
    alpha = cast(float, pair.alpha[0])
    n0, d = pair.w[0].shape
    c = reg.centres
    w0, d0, de0 = pair.w[0], pair.d[0], pair.d_err[0]
    gd = _g2(d + 1)
    # values at the centre: β = W₀c + b₀, ε = −D₀c + (b̃₀ − b₀), with their rounding and D₀'s TwoSum error
    beta = c @ w0.T + pair.b[0]
    e_beta = gd * (c.abs() @ w0.abs().T + pair.b[0].abs())
    eps = -(c @ d0.T) + pair.db[0]
    xmax = torch.maximum(reg.lo.abs(), reg.hi.abs())
    e_eps = gd * (c.abs() @ d0.abs().T + pair.db[0].abs()) + (xmax @ de0.T) * (1.0 + gd) + pair.db_err[0]
    rt0, rp0 = rho0
    tt = rt0 if relax0.tau_t is None else rt0 + relax0.tau_t
    tp = rp0 if relax0.tau_p is None else rp0 + relax0.tau_p
    per = [*bounds0, beta, e_beta, eps, e_eps, tt, tp]  # [B, n₀] each
    k, k_abs, n_abs = _gram(pair)
    if kept is not None:
        per = [t.gather(1, kept[0]) for t in per]
        ix2 = torch.cat([kept[0], kept[0] + n0], 1)  # the rows of M: W₀'s, then −D₀'s
        k, k_abs, n_abs = (t[ix2.unsqueeze(-1), ix2.unsqueeze(1)] for t in (k, k_abs, n_abs))
    l, u, dl, du, tl, tu, beta, e_beta, eps, e_eps, tt, tp = (t.unsqueeze(1) for t in per)
    act, ina = l >= 0, u <= 0
    tact, tina = tl >= 0, tu <= 0
    unst = ~(act | ina)
    both = ~unst & (tact | tina)
    one, slope = lam.new_ones(()), lam.new_full((), alpha)  # float64 (a python float in where() is float32)
    a_z = torch.where(act, one, slope)   # σ(z) = a_z z where z is stable
    a_t = torch.where(tact, one, slope)
    hi_a, lo_a = 0.5 * (1.0 + alpha), 0.5 * (1.0 - alpha)
    zero = torch.zeros_like(lam)
    # λσ(z): stable a_z λ z; unstable λ ≥ 0: ½(1+α)λz + ½(1−α)λ|z|; unstable λ < 0: αλz
    th_z = torch.where(unst, torch.where(lam >= 0, hi_a * lam, alpha * lam), a_z * lam)
    p_z = torch.where(unst & (lam > 0), lo_a * lam, zero)
    # μ(σ(z̃) − σ(z)): both stable (a_t − a_z)μ z + a_t μ δ; else ½(1+α)μδ + ½(1−α)|μ||δ|
    th_z = th_z + torch.where(both, (a_t - a_z) * mu, zero)
    th_d = torch.where(both, a_t * mu, hi_a * mu)
    p_d = torch.where(both, zero, lo_a * mu.abs())
    zmax = torch.maximum(l.abs(), u.abs())
    dmax = torch.maximum(dl.abs(), du.abs())
    # each coefficient is a product of at most three rounded factors: off by ≤ 4u of its magnitude
    s_coef = 4.0 * _U * (((th_z.abs() + p_z) * zmax).sum(-1) + ((th_d.abs() + p_d) * dmax).sum(-1))
    at_c = (th_z * beta).sum(-1) + (th_d * eps).sum(-1)  # the |·| terms' centre values go with the ball's part
    at_c_abs = ((th_z.abs() + p_z) * beta.abs()).sum(-1) + ((th_d.abs() + p_d) * eps.abs()).sum(-1)
    e_c = ((th_z.abs() + p_z) * e_beta).sum(-1) + ((th_d.abs() + p_d) * e_eps).sum(-1)
    # the ball's part: r sqrt(θᵀKθ + 2Σ π|Kθ| + πᵀ|K|π), θ = (θ_z, θ_δ), π = (p_z, p_δ) against M = [W₀; −D₀]
    theta = torch.cat([th_z, th_d], -1)
    pi = torch.cat([p_z, p_d], -1)
    kt = theta @ k
    s_hat = (theta * kt).sum(-1) + 2.0 * (pi * kt.abs()).sum(-1) + (pi * (pi @ k_abs)).sum(-1)
    mag = theta.abs() + pi
    s_abs = (mag * (mag @ n_abs)).sum(-1)
    g = 2.0 * _g2(d + 4 * n0 + 4)
    s_up = (s_hat + g * s_abs).clamp_min(0.0) * (1.0 + 4.0 * _U) + _TINY
    r = float(reg.radius)
    pb = torch.cat([p_z * beta, p_d * eps], -1)  # π_b times the value of its |·| term at the centre
    n_pb = pb.abs().sum(-1)
    ball = (n_pb + r * s_up.sqrt() * (1.0 + 6.0 * _U)) * (1.0 + _g2(4 * n0))
    ball = torch.minimum(ball, _coupled(pb, pi * kt, s_hat - 2.0 * (pi * kt.abs()).sum(-1), g * s_abs, r,
                                        r * s_hat.clamp_min(0.0).sqrt(), n0))
    # the forward rounding of the first layer: |fl(h₀) − h₀| ≤ ρ₀ + τ, |Δfl(h₀) − Δh₀| ≤ ρ₀ + ρ̃₀ + τ + τ̃
    s_fwd = (lam.abs() * tt).sum(-1) + (mu.abs() * (tt + tp)).sum(-1)
    err = (s_coef + e_c + s_fwd + _g2(2 * n0 + 2) * at_c_abs) * (1.0 + _g2(4 * n0 + 4)) + _TINY
    total = at_c + ball
    return total + err + 4.0 * _U * (at_c.abs() + ball) + _TINY


_T_STEPS = 8  # bisection steps on log t over [t₀/100, 100 t₀]


def _coupled(pb: Tensor, c: Tensor, a: Tensor, a_err: Tensor, r: float, scale: Tensor, n0: int) -> Tensor:
    """The ball's part with the centre values kept in the signs: an upper bound ``[B, R]`` of
    ``max_s Σ_b s_b pb_b + r‖g + Σ_b s_b π_b m_b‖``.

    For any ``t > 0``, ``r‖v‖ ≤ 1/(2t) + (r²t/2)‖v‖²`` (AM-GM), and the quadratic form in ``(1, s)`` with the linear
    terms on its first row is at most the sum of its entries' absolute values:
    ``φ(t) = 1/(2t) + (r²t/2)(Ḡ₀₀ + Σ_bc|Ḡ_bc|) + Σ_b |r²t Ḡ_0b + pb_b|`` with ``Ḡ_0b = π_b(Kθ)_b`` (``c``), ``a``
    the computed ``Ḡ₀₀ + Σ_bc|Ḡ_bc|`` and ``a_err`` ≥ the error of every computed Ḡ entry summed. Every ``t`` gives a
    valid bound; φ is convex, so ``t`` is found by bisection on the sign of φ' (in log t, around ``1/scale``, the
    optimum without the coupling), and φ is evaluated there with its rounding. At the same t it is never above
    ``Σ|pb_b| + r sqrt(Σ|Ḡ|)`` (``|x + y| ≤ |x| + |y|``); the caller keeps the smaller anyway. The choice of t uses
    the computed values alone (``scale``, ``a``; not the rounding bounds, which depend on the layer widths), so that
    exact rewritings of a net (dropping dead neurons) choose the same t."""
    t0 = 1.0 / scale.clamp_min(1e-150)
    r2 = r * r
    quad = 0.5 * r2 * (a.clamp_min(0.0) + a_err)
    quad_c = 0.5 * r2 * a.clamp_min(0.0)
    lo, hi = torch.full_like(a, math.log(0.01)), torch.full_like(a, math.log(100.0))
    with torch.no_grad():
        for _ in range(_T_STEPS):
            mid = 0.5 * (lo + hi)
            t = (t0 * mid.exp()).clamp(1e-150, 1e150)
            slope = -0.5 / (t * t) + quad_c + (r2 * c * torch.sign(r2 * t.unsqueeze(-1) * c + pb)).sum(-1)
            up = slope > 0  # φ increasing: the minimum is to the left
            hi = torch.where(up, mid, hi)
            lo = torch.where(up, lo, mid)
    t = (t0 * (0.5 * (lo + hi)).exp()).clamp(1e-150, 1e150)
    tc = r2 * t.unsqueeze(-1) * c
    val = 0.5 / t + quad * t + (tc + pb).abs().sum(-1)
    mag = 0.5 / t + quad * t + tc.abs().sum(-1) + pb.abs().sum(-1)
    val = val + _g2(4 * n0 + 8) * mag
    return torch.nan_to_num(val, nan=math.inf)
