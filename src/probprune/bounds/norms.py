"""Operator norms ‖W‖₂ of linear and conv layers: exact where affordable, else certified upper values.

Every value returned here is an **upper** bound on the true operator norm (never an
under-estimate): exact values carry a tiny relative margin for float64 rounding, and
the cheaper methods are rigorous inequalities (derivations in ``docs/certified.md``).

Methods (``NormValue.method``):

* ``svd`` — exact: the largest singular value of the float64 matrix (``torch.linalg.svdvals``).
* ``gram-cholesky`` — certified within ~1e-6 relative: a float64 Gram matrix ``G`` of the
  smaller side, a Krylov (Rayleigh–Ritz) estimate ``λ`` of ``λ_max(G)``, then a Cholesky
  factorisation of ``λ'·I − G`` (with ``λ' = λ(1 + τ)`` plus rounding margins) whose success
  proves ``σ_max² ≤ λ'``.
* ``frobenius-holder`` — O(mn) certified: ``min(‖W‖_F, √(‖W‖₁‖W‖_∞))``. Loose for dense
  random matrices (by about √n/2), used only when the others are too expensive.
* ``fft`` — conv layers: the exact norm of a multi-channel circular convolution is the
  largest singular value over the per-frequency ``c_out × c_in`` matrices of the 2-D DFT of
  the kernel (Sedghi, Gupta & Long 2019). Exact for stride 1 with ``2p = k − 1`` circular
  padding; zero padding embeds in a circular convolution on an ``(n + 2p)`` grid and strides
  select output rows, so those get a certified upper value (``exact=False``).

Floating point (issue 13): a difference ``W − W̃`` (``minus=``) is formed from both operands cast
to float64 (a float32 difference would lose a rounding unit of the removed part). Every
method first scales its matrix by a power of two ``2^−e`` (exact) so that its largest entry
lies in [1/2, 1): squares can then neither underflow (entries ~1e-23 in float32, ~1e-160 in
float64) nor overflow (~1e30, ~1e160), and the result is scaled back by ``2^e`` (homogeneity,
``‖A‖ = 2^e·‖2^−e A‖``). Entries that the scaling (or a cast to float32) pushes below the
smallest normal number are rounded with an absolute error ≤ η (``2^−148`` in float32,
``2^−1073`` in float64); that error is added back as ``√(mn)·η`` (Frobenius norm of the
error matrix, which bounds its operator norm). A result that overflows float64 is ``inf``
(callers refuse it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from probprune.config import ConvSpec, NormMethod, ProbPruneError

__all__ = [
    "NormMethod",
    "NormValue",
    "abs_operator_norm_bound",
    "conv_norm",
    "matrix_norm_bound",
    "operator_norm",
    "power_lower",
    "vector_norm_bound",
]


# Relative margin applied to values computed in float64 (backward-stable SVD / sums have
# relative errors of order n·u ≈ 1e-12 for n ≤ 1e4; 1e-9 covers that with room).
_F64_MARGIN = 1e-9
_U64 = 2.0 ** -53
_U32 = 2.0 ** -24
# absolute rounding error of one entry pushed below the smallest normal number by a power-of-two
# scaling in float64 (two steps, ≤ 2·2^−1075) or by a cast to float32 (≤ 2^−150 more)
_ETA64 = 2.0 ** -1073
_ETA32 = 2.0 ** -148

# Cost limits of "auto" (multiply-adds per member): SVD is used up to this cost ...
SVD_BUDGET = 2.0e8
# ... and the Gram–Cholesky certificate up to this one (≈ 1 s in float64 on 2 CPU cores).
GRAM_BUDGET = 1.5e10


@dataclass(frozen=True, eq=False)
class NormValue:
    """An operator norm, or a certified upper value of it.

    Attributes:
        value: ``[K]`` (with a trial dim) or a 0-d tensor, float64, always ≥ the true norm.
        exact: whether ``value`` is the norm itself (up to float64 rounding).
        method: ``svd``, ``gram-cholesky``, ``frobenius-holder`` or ``fft``.
        lower: a value ≤ the true norm when one was computed (power iteration), else ``None``.
    """

    value: Tensor
    exact: bool
    method: str
    lower: Tensor | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (values as floats or lists)."""
        return {"value": self.value.tolist(), "exact": self.exact, "method": self.method,
                "lower": None if self.lower is None else self.lower.tolist()}


def _as_batch(weight: Tensor, base_dims: int) -> tuple[Tensor, bool]:
    if not isinstance(weight, Tensor):
        raise ProbPruneError(f"weight: expected a tensor, got {type(weight).__name__}")
    if weight.dim() == base_dims:
        return weight.unsqueeze(0), False
    if weight.dim() == base_dims + 1:
        return weight, True
    raise ProbPruneError(f"weight shape {tuple(weight.shape)}: expected {base_dims} dims "
                         f"(or {base_dims + 1} with a leading trial dim)")


def _finish(v: Tensor, batched: bool) -> Tensor:
    return v if batched else v[0]


def _gamma(n: int, u: float) -> float:
    """γ_n = n·u/(1 − n·u): relative error bound of a sum of n terms in unit roundoff u."""
    if n * u >= 0.5:
        raise ProbPruneError(f"n={n}: too many terms for a rounding-error bound in unit roundoff {u:g}")
    return n * u / (1.0 - n * u)


_ABS_TINY = 2.0 ** -960  # an absolute slack per rounded float64 step of the local bounds (covers underflow)


def _g2(n: int) -> float:
    """``2γ_{n+2}`` in float64: a rounding factor that also covers the rounding of the error bound itself."""
    return 2.0 * _gamma(n + 2, _U64)


def _down(v: Tensor, err: Tensor | float) -> Tensor:
    """A value ≤ ``v − err`` in exact arithmetic, float64 (covers the subtraction's rounding and underflow)."""
    out = v - err
    return out - (out.abs() * (2.0 * _U64) + _ABS_TINY)


def _pow2(exps: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """``2^e`` for each exponent, as two float64 factors ``2^a·2^b`` (each within float64's range)."""
    a = [e // 2 for e in exps]
    return (torch.tensor([math.ldexp(1.0, x) for x in a], dtype=torch.float64, device=device),
            torch.tensor([math.ldexp(1.0, e - x) for e, x in zip(exps, a)], dtype=torch.float64, device=device))


def _mul_pow2(x: Tensor, exps: list[int]) -> Tensor:
    """``x[k] · 2^exps[k]`` for a float64 ``x`` ``[K, …]``: exact up to underflow (in two steps)."""
    f1, f2 = _pow2(exps, x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return x * f1.reshape(shape) * f2.reshape(shape)


def _exponents(absmax: Tensor) -> list[int]:
    """``e`` with ``absmax·2^−e`` in [1/2, 1) per member (0 for a zero member)."""
    _, ex = torch.frexp(absmax.double())
    return [int(e) for e in ex.tolist()]


def _scaled64(w: Tensor, minus: Tensor | None = None) -> tuple[Tensor, list[int], Tensor]:
    """``(w − minus)`` in float64 (operands cast first), scaled per member so its largest entry is in [1/2, 1).

    Returns:
        The scaled float64 tensor ``[K, …]``, the exponents ``e`` (value = scaled·2^e) and a
        ``[K]`` bool mask of the nonzero members.
    """
    a = w.double() if minus is None else w.double() - minus.double()
    dims = tuple(range(1, a.dim()))
    absmax = a.abs().amax(dim=dims)
    exps = _exponents(absmax)
    return _mul_pow2(a, [-e for e in exps]), exps, absmax > 0


def vector_norm_bound(v: Tensor) -> Tensor:
    """A rigorous upper value of the ℓ2 norm of ``v`` over its last dim, in float64.

    Scaled by a power of two before squaring (no underflow or overflow of the squares) and
    rounded up by ``(1 + γ_{n+4})(1 + 1e-9)`` (float64 sum of n squares and the square root).

    Args:
        v: ``[…, n]`` float tensor.

    Returns:
        ``[…]`` float64, ≥ ‖v‖₂ (0 exactly for a zero vector).

    >>> float(vector_norm_bound(torch.tensor([3e-30, 4e-30]))) >= 5e-30
    True
    """
    if not isinstance(v, Tensor) or v.dim() < 1:
        raise ProbPruneError("v: expected a tensor with at least one dim")
    lead = v.shape[:-1]
    n = int(v.shape[-1])
    flat = v.reshape(-1, n) if n > 0 else v.reshape(-1, 0)
    if flat.shape[0] == 0 or n == 0:
        return torch.zeros(lead, dtype=torch.float64, device=v.device)
    a, exps, nz = _scaled64(flat)
    val = a.norm(dim=-1) * (1.0 + _gamma(n + 4, _U64)) * (1.0 + _F64_MARGIN) + math.sqrt(n) * _ETA64
    val = torch.where(nz, _mul_pow2(val, exps), torch.zeros_like(val))
    return val.reshape(lead)


def power_lower(weight: Tensor, n_iter: int = 30, generator: torch.Generator | None = None) -> Tensor:
    """A lower value of ‖W‖₂ by power iteration on WᵀW (never above the true norm).

    Args:
        weight: ``[K, m, n]`` or ``[m, n]``.
        n_iter: iterations.
        generator: start vector source (a fixed seed is used when ``None``, so the result is
            deterministic and the global RNG untouched).

    Returns:
        ``[K]`` or 0-d float64: ‖W v‖ for the final unit vector v.
    """
    w, batched = _as_batch(weight, 2)
    g = generator
    if g is None:
        g = torch.Generator(device=w.device)
        g.manual_seed(0)
    # iterate on W scaled by a power of two (largest entry in [1/2, 1)): tiny or huge entries
    # would otherwise underflow or overflow in WᵀW v
    s64, exps, _ = _scaled64(w)
    dt = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float64
    ws = s64.to(dt)
    v = torch.randn(w.shape[0], w.shape[2], 1, generator=g, device=w.device, dtype=dt)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    for _ in range(n_iter):
        u = torch.bmm(ws, v)
        v = torch.bmm(ws.transpose(1, 2), u)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    # ‖W v‖ in float64 for a unit v: a true lower value (up to rounding of v's normalisation);
    # the scaled float64 copy differs from 2^−e W by ≤ η per entry, so ‖·‖ by ≤ √(mn)·η
    v64 = v.double()
    v64 = v64 / v64.norm(dim=1, keepdim=True).clamp_min(1e-300)
    low = torch.bmm(s64, v64).norm(dim=(1, 2)) * (1.0 - _F64_MARGIN)
    low = (low - math.sqrt(w.shape[1] * w.shape[2]) * _ETA64).clamp_min(0.0)
    return _finish(_mul_pow2(low, exps), batched)


def _svd_norm(w: Tensor, minus: Tensor | None = None) -> Tensor:
    """Largest singular value of ``w − minus`` (float64, scaled), rounded up; ``w``: [K, m, n]."""
    a, exps, nz = _scaled64(w, minus)
    val = torch.linalg.svdvals(a)[..., 0] * (1.0 + _F64_MARGIN) + math.sqrt(a.shape[1] * a.shape[2]) * _ETA64
    return torch.where(nz, _mul_pow2(val, exps), torch.zeros_like(val))


def _frob_holder(w: Tensor, minus: Tensor | None = None) -> Tensor:
    """min(‖W‖_F, √(‖W‖₁‖W‖_∞)) for ``w``: [K, m, n], rigorously rounded up.

    Row and column sums of |w| and w² are float32/64 matrix–vector products over row chunks
    (fast, little memory); for non-negative terms any summation order errs by at most
    γ_n = n·u/(1 − n·u) relative, so dividing by (1 − γ) gives upper values. With ``minus``
    the norm of ``w − minus`` is taken chunk by chunk (no full-size difference is allocated):
    each chunk's difference is formed in float64 (both operands cast first) and, for float32
    weights, rounded once to float32 for the sums (one rounding, covered by the extra ``u``).
    Where the largest entry lies outside [2^−40, 2^40] (float32; [2^−400, 2^400] in float64) the
    matrix is scaled by a power of two first, so that squares neither underflow nor overflow;
    the absolute errors of entries and squares rounded below the smallest normal number (≤ η
    each) are added back explicitly, and a zero matrix gets exactly 0.
    """
    k, m, n = w.shape
    both32 = w.dtype == torch.float32 and (minus is None or minus.dtype == torch.float32)
    dt = torch.float32 if both32 else torch.float64
    u = _U32 if dt == torch.float32 else _U64
    eta = _ETA32 if dt == torch.float32 else _ETA64
    absmax = w.abs().amax(dim=(1, 2)).double()
    if minus is not None:  # ‖w − minus‖_max ≤ 2·max(‖w‖_max, ‖minus‖_max)
        absmax = 2.0 * torch.maximum(absmax, minus.abs().amax(dim=(1, 2)).double())
    exps = _exponents(absmax)
    safe = 40 if dt == torch.float32 else 400
    scale = None if all(abs(e) <= safe for e in exps) else [-e for e in exps]
    if scale is None:
        exps = [0] * k
    fro2 = torch.zeros(k, dtype=torch.float64, device=w.device)
    col = torch.zeros(k, n, dtype=torch.float64, device=w.device)
    rowmax = torch.zeros(k, dtype=torch.float64, device=w.device)
    ones = torch.ones(k, n, 1, dtype=dt, device=w.device)
    step = max(1, (1 << 21) // max(1, n))
    nonzero = absmax > 0 if minus is None else torch.zeros(k, dtype=torch.bool, device=w.device)
    for s in range(0, m, step):
        if minus is not None:
            a64 = w[:, s:s + step].double() - minus[:, s:s + step].double()
            nonzero |= (a64 != 0).flatten(1).any(dim=1)  # distinct floats never differ by an exact 0
            a = (a64 if scale is None else _mul_pow2(a64, scale)).to(dt)
        elif scale is not None:
            a = _mul_pow2(w[:, s:s + step].double(), scale).to(dt)
        else:
            a = w[:, s:s + step].to(dt)
        a = a.abs()  # [K, c, n]
        rows = torch.bmm(a, ones).squeeze(-1)  # row sums, n terms each
        rowmax = torch.maximum(rowmax, rows.double().amax(dim=1))
        ones_c = torch.ones(k, a.shape[1], 1, dtype=dt, device=w.device)
        col += torch.bmm(a.transpose(1, 2), ones_c).squeeze(-1).double()  # chunk column sums
        fro2 += torch.bmm(a.square(), ones).squeeze(-1).double().sum(dim=1)
    chunks = -(-m // step)
    # products/squares add one rounding each; column sums add ≤ `chunks` float64 additions
    extra = 0 if minus is None else 2  # a rounded difference: |fl(a − b)| ≤ |a − b|(1 + u)
    gam = (n + 2 + extra) * u / (1.0 - (n + 2 + extra) * u)
    gam_col = (min(step, m) + 2 + extra) * u / (1.0 - (min(step, m) + 2 + extra) * u) + (chunks + 2) * _U64
    # absolute terms: entries rounded below the smallest normal (≤ η each, by scaling or a cast)
    # and squares / products that underflow (≤ η each): |true entry| ≤ |computed| + η
    fro_up = ((fro2 + m * n * eta) * (1.0 + 2.0 * (n + m) * _U64) / (1.0 - gam)).sqrt() + math.sqrt(m * n) * eta
    hold_up = torch.sqrt((col.amax(dim=1) / (1.0 - gam_col) + m * eta) * (rowmax / (1.0 - gam) + n * eta))
    val = torch.minimum(fro_up, hold_up) * (1.0 + _F64_MARGIN)
    return torch.where(nonzero, _mul_pow2(val, exps), torch.zeros_like(val))


def _ritz_top(g: Tensor, n_iter: int) -> Tensor:
    """Largest Ritz value of a symmetric ``g`` from a Krylov space (a lower value of λ_max)."""
    s = g.shape[0]
    m = min(n_iter, s)
    gen = torch.Generator(device=g.device)
    gen.manual_seed(0)
    q = torch.zeros(s, m, dtype=g.dtype, device=g.device)
    v = torch.randn(s, generator=gen, dtype=g.dtype, device=g.device)
    used = 0
    # an exhausted Krylov space leaves only rounding noise (float32 Krylov iterations: ~1e-7)
    tol = (1e-12 if g.dtype == torch.float64 else 1e-5) * max(1.0, float(g.diagonal().abs().max()))
    for j in range(m):
        nv = v.norm()
        if float(nv) <= (0.0 if j == 0 else tol):  # v = G q_{j−1} minus its projections (j ≥ 1)
            break
        q[:, j] = v / nv
        used = j + 1
        v = g @ q[:, j]
        qj = q[:, :used]
        v = v - qj @ (qj.T @ v)  # full re-orthogonalisation, twice for stability
        v = v - qj @ (qj.T @ v)
    qj = q[:, :used]
    h = qj.T @ g @ qj
    return torch.linalg.eigvalsh((h + h.T) / 2)[-1]


def _gram_cholesky(w: Tensor, tau: float = 1e-6, n_iter: int = 80) -> Tensor:
    """Certified σ_max via a float64 Gram matrix and a Cholesky test; ``w``: [K, m, n] (already scaled)."""
    w64 = w.double()
    if w64.shape[1] < w64.shape[2]:
        w64 = w64.transpose(1, 2)
    # G = WᵀW on the smaller side: [K, s, s]
    g = torch.bmm(w64.transpose(1, 2), w64)
    k, s, _ = g.shape
    big = w64.shape[1]
    fro2 = w64.square().sum(dim=(1, 2))
    # |fl(G) − G| ≤ γ_big |W|ᵀ|W| elementwise ⇒ ‖ΔG‖₂ ≤ γ_big ‖W‖_F² (see docs/certified.md)
    gamma = big * _U64 / (1.0 - big * _U64)
    dg = gamma * fro2
    gmax = torch.diagonal(g, dim1=1, dim2=2).abs().amax(dim=1).tolist()
    # the Ritz value is only the candidate that the Cholesky test certifies (or rejects), so its
    # Krylov iterations may run in float32 (half the memory traffic; ~1e-7 relative, below τ)
    # wherever float32 neither overflows nor underflows
    lam = torch.stack([
        _ritz_top(g[i].float() if 1e-30 < gmax[i] < 1e30 else g[i], n_iter).double()
        for i in range(k)]).clamp_min(0.0)
    out = torch.empty(k, dtype=torch.float64, device=w.device)
    gs = s + 1
    gam_c = gs * _U64 / (1.0 - gs * _U64)
    for i in range(k):
        t = tau
        scale = float(fro2[i])
        if scale == 0.0:
            out[i] = 0.0
            continue
        lam_i = float(lam[i])
        while True:
            up = lam_i * (1.0 + t) + float(dg[i])
            # A = up·I − G; off the diagonal −G is exact, on it up − G_jj is rounded once
            diag = up - torch.diagonal(g[i])
            # Rump's sufficient condition: fl-Cholesky of A − c·I succeeding proves A ≻ 0 when
            # c ≥ γ_{s+1}/(1 − γ_{s+1})·tr(A) (plus underflow terms, negligible here); doubled.
            # + the roundings of forming up·I − G and subtracting c·I on the diagonal
            c = 2.0 * gam_c / (1.0 - gam_c) * float(diag.abs().sum()) \
                + 8.0 * _U64 * (up + gmax[i]) + 1e-290
            a = torch.neg(g[i])
            a.diagonal().copy_(diag - c)
            _, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                out[i] = math.sqrt(up) * (1.0 + _F64_MARGIN)
                break
            t *= 10.0
            if t > 1e3:  # pragma: no cover - the Frobenius bound is reached long before
                out[i] = math.sqrt(scale)
                break
    return out


def matrix_norm_bound(weight: Tensor, method: NormMethod = "auto", minus: Tensor | None = None) -> NormValue:
    """‖W‖₂ of a matrix (or a ``[K, m, n]`` stack): exact when affordable, else certified upper.

    Args:
        weight: ``[m, n]`` or ``[K, m, n]``.
        method: ``auto`` (``svd`` if m·n·min(m, n) ≤ ``SVD_BUDGET``, ``gram-cholesky`` if
            that cost ≤ ``GRAM_BUDGET``, else ``frobenius-holder``) or one of them forced.
        minus: optional tensor of ``weight``'s shape: the norm of ``weight − minus`` is returned
            (``frobenius-holder`` never materialises the difference, which matters at width 8192).

    >>> round(float(matrix_norm_bound(torch.diag(torch.tensor([3., 1.]))).value), 6)
    3.0
    """
    w, batched = _as_batch(weight, 2)
    if minus is not None and (not isinstance(minus, Tensor) or minus.shape != weight.shape):
        raise ProbPruneError(f"minus: shape {tuple(getattr(minus, 'shape', ()))} differs from the weight's "
                             f"{tuple(weight.shape)}")
    m, n = w.shape[1], w.shape[2]
    cost = float(m) * n * min(m, n)
    if method == "auto":
        method = "svd" if cost <= SVD_BUDGET else "gram-cholesky" if cost <= GRAM_BUDGET else "frobenius-holder"
    sub = None if minus is None else _as_batch(minus, 2)[0]
    if method == "frobenius-holder":
        return NormValue(_finish(_frob_holder(w, sub), batched), False, "frobenius-holder")
    if method == "svd":
        return NormValue(_finish(_svd_norm(w, sub), batched), True, "svd")
    if method == "gram-cholesky":
        # on the float64 difference, scaled by a power of two (no under/overflow of G = WᵀW)
        a, exps, nz = _scaled64(w, sub)
        val = _gram_cholesky(a) + math.sqrt(m * n) * _ETA64
        val = torch.where(nz, _mul_pow2(val, exps), torch.zeros_like(val))
        return NormValue(_finish(val, batched), False, "gram-cholesky")
    raise ProbPruneError(f"method={method!r}: must be auto, svd, gram-cholesky or frobenius-holder")


def _fold_kernel(w: Tensor, grid: tuple[int, int], pad: int) -> Tensor:
    """Place a ``[K, co, ci, k, k]`` kernel on a periodic ``grid`` (taps folded mod the grid)."""
    kk, co, ci, kh, kw = w.shape
    gh, gw = grid
    out = torch.zeros(kk, co, ci, gh * gw, dtype=w.dtype, device=w.device)
    ih = (torch.arange(kh, device=w.device) - pad) % gh
    iw = (torch.arange(kw, device=w.device) - pad) % gw
    idx = (ih[:, None] * gw + iw[None, :]).reshape(-1)
    out.index_add_(3, idx, w.reshape(kk, co, ci, kh * kw))
    return out.reshape(kk, co, ci, gh, gw)


def _circular_norm(w: Tensor, grid: tuple[int, int], pad: int) -> Tensor:
    """Exact norm of the circular convolution of a ``[K, co, ci, k, k]`` kernel on ``grid``.

    The kernel is scaled by a power of two first (largest tap in [1/2, 1)); a tap error ≤ η
    changes the operator by at most ``numel·η`` (one shifted copy of the error per tap).
    """
    a, exps, nz = _scaled64(w)
    ker = _fold_kernel(a, grid, pad)
    spec = torch.fft.rfft2(ker)  # [K, co, ci, gh, gw//2+1]; the rest are conjugates
    mats = spec.permute(0, 3, 4, 1, 2)  # [K, gh, gw', co, ci]
    sv = torch.linalg.matrix_norm(mats, ord=2)  # [K, gh, gw']
    val = sv.flatten(1).amax(dim=1) * (1.0 + _F64_MARGIN) + w[0].numel() * _ETA64
    return torch.where(nz, _mul_pow2(val, exps), torch.zeros_like(val))


def _max_multiplicity(n: int, n_out: int, stride: int) -> int:
    """How often one residue mod n occurs among {o·stride : o < n_out} (rows repeated by wrapping)."""
    period = n // math.gcd(stride, n)
    return -(-n_out // period)


def conv_norm(weight: Tensor, conv: ConvSpec, input_shape: tuple[int, ...]) -> NormValue:
    """Operator norm of a conv layer acting on ``input_shape`` (flattened ℓ2 norms in and out).

    Args:
        weight: ``[c_out, c_in, k, k]`` or ``[K, c_out, c_in, k, k]``.
        conv: the geometry (stride s, padding p, ``zeros``/``circular``).
        input_shape: ``(C, H, W)`` or ``(H, W)`` of the layer input.

    Circular padding with stride 1 and ``2p = k − 1`` is a circulant operator: exact via FFT.
    Other circular paddings repeat or drop rows of the circulant (rows repeated ``m`` times
    scale the norm by at most √m), zero padding embeds in a circular convolution on the
    ``(H + 2p) × (W + 2p)`` grid, and striding keeps a subset of rows: certified upper values.

    >>> w = torch.zeros(1, 1, 3, 3); w[0, 0, 1, 1] = 2.0
    >>> round(float(conv_norm(w, ConvSpec(1, 3, padding_mode="circular"), (1, 5, 5)).value), 6)
    2.0
    """
    w, batched = _as_batch(weight, 4)
    if len(input_shape) not in (2, 3):
        raise ProbPruneError(f"input_shape={tuple(input_shape)}: expected (C, H, W) or (H, W)")
    h, wd = int(input_shape[-2]), int(input_shape[-1])
    if len(input_shape) == 3 and int(input_shape[0]) != w.shape[2]:
        raise ProbPruneError(f"input_shape={tuple(input_shape)}: {input_shape[0]} channels, the kernel "
                             f"expects {w.shape[2]}")
    k, p, s = conv.kernel, conv.pad, conv.stride
    if w.shape[-1] != k or w.shape[-2] != k:
        raise ProbPruneError(f"weight shape {tuple(weight.shape)}: kernel size differs from conv.kernel={k}")
    oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    if oh < 1 or ow < 1:
        raise ProbPruneError(f"input_shape={tuple(input_shape)}: the conv output is empty")
    if conv.padding_mode == "circular":
        val = _circular_norm(w, (h, wd), p)
        mult = _max_multiplicity(h, oh, s) * _max_multiplicity(wd, ow, s)
        exact = s == 1 and 2 * p == k - 1
        if mult > 1:
            val = val * math.sqrt(mult)
        return NormValue(_finish(val, batched), exact, "fft")
    # zero padding: the padded input lives on an (h+2p)×(w+2p) grid; no output tap wraps around
    val = _circular_norm(w, (h + 2 * p, wd + 2 * p), 0)
    return NormValue(_finish(val, batched), False, "fft")


def operator_norm(
    weight: Tensor,
    conv: ConvSpec | None = None,
    input_shape: tuple[int, ...] | None = None,
    method: NormMethod = "auto",
    minus: Tensor | None = None,
) -> NormValue:
    """‖W‖₂ of a linear (``conv=None``) or conv layer; ``[K]`` values with a trial dim.

    Never an under-estimate: exact (``svd``, FFT for circular convs) where possible, else a
    certified upper value; ``NormValue.method`` says which.

    Args:
        weight: ``[(K,) out, in]`` or ``[(K,) c_out, c_in, k, k]``.
        conv: conv geometry, ``None`` for a linear layer.
        input_shape: per-sample input shape of a conv layer ``(C, H, W)``.
        method: linear layers only, see :func:`matrix_norm_bound`.
        minus: if given, the norm of ``weight − minus`` (e.g. the pruned part D = W − W̃).

    >>> float(operator_norm(torch.tensor([[3., 4.]])).value) > 4.999999
    True
    """
    if conv is None:
        return matrix_norm_bound(weight, method, minus)
    if input_shape is None:
        raise ProbPruneError("input_shape=None: a conv layer's norm depends on the input size (C, H, W)")
    if minus is not None:
        if not isinstance(minus, Tensor) or minus.shape != weight.shape:
            raise ProbPruneError(f"minus: shape {tuple(getattr(minus, 'shape', ()))} differs from the weight's "
                                 f"{tuple(weight.shape)}")
        weight = weight.double() - minus.double()  # in float64: no rounding of the difference
    return conv_norm(weight, conv, input_shape)


def abs_operator_norm_bound(weight: Tensor, conv: ConvSpec | None = None,
                            input_shape: tuple[int, ...] | None = None) -> Tensor:
    """An upper value of ‖|W|‖₂, the operator norm of the entrywise absolute value of a layer.

    Used for forward rounding errors (``|fl(Wx) − Wx| ≤ γ_n |W||x|``). By Hölder,
    ``‖|W|‖₂ ≤ √(‖W‖₁‖W‖_∞)`` (largest column and row sums of |W|). For a conv layer the
    operator of |kernel| dominates |C| entrywise: a row (output pixel of channel o) sums
    ``|w[o]|`` over at most every tap once, a column (input pixel of channel c) sums
    ``|w[:, c]|`` over taps at most ``m`` times, ``m`` the circular wrap multiplicity (1 with
    zero padding).

    Args:
        weight: ``[(K,) out, in]`` or ``[(K,) c_out, c_in, k, k]``.
        conv: conv geometry, ``None`` for a linear layer.
        input_shape: ``(C, H, W)`` of a conv layer's input.

    Returns:
        ``[K]`` or 0-d float64 upper value.

    >>> float(abs_operator_norm_bound(torch.tensor([[1., -1.], [1., 1.]]))) >= 2.0
    True
    """
    if conv is None:
        w, batched = _as_batch(weight, 2)
        m, n = int(w.shape[1]), int(w.shape[2])
        w = w.detach()  # a value for the margin only: no autograd graph
        amax = max(float(w.amax()), -float(w.amin())) if w.numel() else 0.0  # no |w| copy
        dt = torch.float32 if w.dtype == torch.float32 and amax * max(m, n) < 1e30 else torch.float64
        u = _U32 if dt == torch.float32 else _U64
        rows = torch.linalg.vector_norm(w.to(dt), 1, dim=2).amax(dim=1).double() / (1.0 - _gamma(n + 1, u))
        cols = torch.linalg.vector_norm(w.to(dt), 1, dim=1).amax(dim=1).double() / (1.0 - _gamma(m + 1, u))
        # √rows·√cols, not √(rows·cols): the product of two sums could under- or overflow
        return _finish(rows.sqrt() * cols.sqrt() * (1.0 + _F64_MARGIN), batched)
    if input_shape is None:
        raise ProbPruneError("input_shape=None: a conv layer's norm depends on the input size (C, H, W)")
    w, batched = _as_batch(weight, 4)
    a = w.double().abs()
    rows = a.sum(dim=(2, 3, 4)).amax(dim=1)
    cols = a.sum(dim=(1, 3, 4)).amax(dim=1)
    mult = 1
    if conv.padding_mode == "circular":
        h, wd = int(input_shape[-2]), int(input_shape[-1])
        k, p, st = conv.kernel, conv.pad, conv.stride
        oh, ow = (h + 2 * p - k) // st + 1, (wd + 2 * p - k) // st + 1
        # for one tap, at most `mult` outputs read a given input pixel (strided rows wrapping around);
        # taps folded onto one matrix entry are each counted, which only over-counts
        mult = _max_multiplicity(h, oh, st) * _max_multiplicity(wd, ow, st)
    return _finish(rows.sqrt() * cols.sqrt() * (math.sqrt(mult) * (1.0 + _F64_MARGIN)), batched)
