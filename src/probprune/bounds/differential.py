"""Differential bound propagation over any ball: certified gap, certified agreement, witnesses.

Networks (FCN, single, ReLU, LeakyReLU (slope α ∈ [0, 1]) or identity hidden activations): target ``F`` with layers
``z_k = W_k h_{k−1} + b_k``, ``h_k = σ(z_k)``, pruned ``f`` with ``W̃_k, b̃_k`` and
``z̃_k = W̃_k h̃_{k−1} + b̃_k``, ``h_0 = h̃_0 = x``; the last layer has no activation. The
*difference* variables ``δ_k = z̃_k − z_k`` and ``Δh_k = h̃_k − h_k`` obey, with ``D_k = W_k − W̃_k``::

    δ_k = W̃_k Δh_{k−1} − D_k h_{k−1} + (b̃_k − b_k),      Δh_0 = 0,

so every quantity is a function of the pairs ``(z_k, δ_k)`` (ReluDiff/NeuroDiff). The bound keeps,
per layer, intervals of ``z_k``, ``δ_k`` and ``z̃_k = z_k + δ_k`` obtained by *back-substitution*
(CROWN/DeepPoly style): to bound a linear objective ``λ_zᵀ z_k + λ_δᵀ δ_k`` from below, substitute
the affine identity above, then replace ``h_{k−1}`` and ``Δh_{k−1}`` by linear lower/upper bounds in
``(z_{k−1}, δ_{k−1})`` (the sign of each coefficient decides which), and repeat down to the input,
where the linear function of ``x`` is minimised exactly over the ball (ℓ2: ``λᵀc − r‖λ‖₂``; ℓ∞:
per coordinate over ``[c − r, c + r]``; a box ``[lo, hi]``: for ℓ∞ intersected per coordinate, for
ℓ2 the larger of the ball's and the box's minimum, both valid since the set lies in each). The
cross-tightening ``z̃ ∈ [l + δ_l, u + δ_u]``, ``δ ∈ [l̃ − u, ũ − l]`` is applied to every layer.

**Relaxations.** For ``h = relu(z)``, ``z ∈ [l, u]``: exact when stable (``u ≤ 0``: 0; ``l ≥ 0``: z),
else ``λz ≤ h ≤ s(z − l)`` with ``s = u/(u − l)`` and ``λ = 1`` if ``u > −l`` else 0 (both lines
valid on [l, u]: relu is convex, the chord lies above it, ``λz ≤ relu(z)`` for λ ∈ [0, 1]).

For ``g = Δh = relu(z + δ) − relu(z)`` three candidate pairs of lines, each valid on the box
``z ∈ [l, u], δ ∈ [δ_l, δ_u]`` (with ``z + δ ∈ [l̃, ũ]``):

* *independent*: ``λ̃(z + δ) − (s z + t) ≤ g ≤ (s̃ (z + δ) + t̃) − λz`` — the ReLU relaxations of
  ``z̃`` and ``z`` subtracted (exact where both neurons are stable: ``δ``, ``0``, ``z̃`` or ``−z``);
* *δ-chords*: ``g`` is, for fixed z, non-decreasing and 1-Lipschitz in δ with ``g(z, 0) = 0``
  (relu is monotone and 1-Lipschitz), so ``min(0, δ) ≤ g ≤ max(0, δ)``. Proof: for δ ≥ 0,
  ``0 ≤ relu(z + δ) − relu(z) ≤ δ``; for δ < 0, ``δ ≤ relu(z + δ) − relu(z) ≤ 0``. Then the chord of
  the convex ``max(0, δ)`` over ``[δ_l, δ_u]`` bounds it above and the chord of the concave
  ``min(0, δ)`` bounds it below: ``g ≤ δ_u (δ − δ_l)/(δ_u − δ_l)``, ``g ≥ −δ_l (δ − δ_u)/(δ_u − δ_l)``
  (where ``δ_l < 0 < δ_u``; otherwise the pieces are exact: ``0`` or ``δ``);
* *interval*: ``relu(l̃) − relu(u) ≤ g ≤ relu(ũ) − relu(l)`` (relu monotone).

Per neuron the upper line with the smallest value at the box centre (the smallest mean over the
box) is taken, and the lower line with the largest, ties going to the independent form (exact for
stable pairs). Identity activations are exact (``h = z``, ``Δh = δ``).

**LeakyReLU** ``σ(z) = max(z, αz)``, 0 ≤ α ≤ 1 (relu is α = 0): convex, monotone, slopes in [α, 1].
The same three candidates hold with σ in place of relu: the chord ``s(z − l) + αl`` above, ``λz`` below
(λ ∈ [α, 1]; stable neurons exact: z or αz); for fixed z, ``g`` is non-decreasing in δ with slopes in
[α, 1] and ``g(z, 0) = 0``, so ``min(δ, αδ) ≤ g ≤ max(δ, αδ)`` (for δ ≥ 0, ``αδ ≤ g ≤ δ``; for δ < 0,
``δ ≤ g ≤ αδ``), relaxed by the chords of the convex ``max(δ, αδ)`` and the concave ``min(δ, αδ)``;
the interval candidate uses σ's monotonicity. Its forward rounding (one product ``αz`` for z < 0,
``|error| ≤ u_d|αz| + η``) enters as ``fl(h) = σ(fl(z)) + τ``: ``(A − G)ᵀτ + Gᵀτ̃`` in the slack.

**Three decompositions.** Going down through a layer, a row meets ``A h + G Δh``. Since
``h̃ = h + Δh`` exactly, the same quantity is ``(A − G) h + G h̃`` and ``A h̃ + (G − A) Δh``; ``h̃ =
relu(z + δ)`` has its own ReLU relaxation in ``z̃ = z + δ``. Per entry (row × neuron) the decomposition
with the least looseness ``Σ |coefficient| · (upper − lower line at the box centre)`` is relaxed. So a
row of the pruned net alone (``A = G``) is back-substituted exactly as CROWN on f, a row of the target
alone (``G = 0``) as CROWN on F, and a difference row mixes them per neuron. Every choice is an exact
identity followed by valid relaxations, so any choice is sound; ``fl(A − G)``'s rounding enters the slack.

**Output.** The last layer's difference ``δ_l = f(x) − F(x)`` has back-substituted intervals
``[lo_j, hi_j]``; ``‖f(x) − F(x)‖₂ ≤ sqrt(Σ_j max(lo_j², hi_j²))`` since each coordinate's square is
at most the larger square of its interval's ends.

**ℓ2 balls: the first layer's signs.** A row that reaches the second layer is also bounded by
:func:`probprune.bounds.signs.first_layer_low` (``relu(z) = z/2 + |z|/2``, the ``|·|`` terms bounded jointly over
the ball through the first layer's Gram matrix, not neuron by neuron); the larger lower value is kept.

**Floating point (soundness).** All of the above is done in float64 and every rounding is
covered, so the value is ≥ the exact-arithmetic gap of the given weights *and* of the forward
passes in the user's dtype:

* Back-substitution carries with each objective a slack ``s ≥ 0`` such that, in exact arithmetic,
  ``objective ≥ λ_zᵀ z + λ_δᵀ δ + c − s`` for the *computed* (float) ``λ_z, λ_δ, c``. A computed
  product ``λ W`` (inner length n) differs from the exact one by at most ``γ_{n}·|λ||W|``
  elementwise (``γ_n = nu/(1 − nu)``, u = 2⁻⁵³, any summation order, FMA or not); its effect on the
  objective is at most ``γ |λ| (|W| v_max)`` with ``v_max`` the bound on ``|h|`` or ``|Δh|`` from the
  intervals, which is added to ``s`` (computed with a factor ``2γ_{n+2}`` that also covers the
  rounding of the slack computation). ``D = W − W̃`` and ``b̃ − b`` are formed with their exact
  rounding error (TwoSum), which enters the slack the same way. The elementwise relaxation products
  (≤ 8 roundings) and the constant sums are covered likewise, and the minimum over the ball is
  rounded down (dot products, norms by ``γ_{d+3}``).
* Relaxation lines are made valid after rounding: slopes of chords rounded up, intercepts moved
  outwards by ``4u(|p| z_max + |q| δ_max + |r|)`` (the rounding of a line's coefficients changes
  its value on the box by less than that).
* Forward rounding of the user's nets (dtype with unit roundoff u_d, η its smallest subnormal) is
  modelled *inside* the propagation: the computed pre-activations are
  ``fl(z_k) = W_k fl(h_{k−1}) + b_k + ρ_k`` with ``|ρ_k| ≤ γ_{n+1}(u_d)(|W_k| h_max + |b_k|) + (n + 1)η``
  elementwise (the standard dot-product error bound, any order, FMA or not; relu and identity are
  exact), ``h_max`` the bound on ``|fl(h_{k−1})|`` from the (computed-net) intervals, the input taken
  as given in the dtype. Every interval and relaxation is of the *computed* nets; back-substitution
  meets ``λ_zᵀρ + λ_δᵀ(ρ̃ − ρ)`` at each layer and adds ``|λ_z − λ_δ|ᵀρ_max + |λ_δ|ᵀρ̃_max`` to the slack
  — the rounding is propagated through the signed relaxation, not through ``|W|`` (far tighter than
  a layerwise ``|W| E`` recursion). ρ = 0 is allowed, so the exact-arithmetic nets are covered too.
  The norm is scaled by ``(1 + γ_{m+3}(u_d))(1 + γ_{m+3}(u))`` (the user's subtraction and norm, and
  ours) as in :mod:`probprune.bounds.certified`.
* An absolute ``2⁻⁹⁶⁰`` per rounded step covers underflow. Bitwise identical networks give 0.

**Speed (exact rewritings, docs/certified.md §6).** Neurons dead in both nets (``|fl(h)| ≤ 0`` and
``|fl(h̃)| ≤ 0`` by the intervals: ``h = h̃ = Δh = 0`` exactly) are dropped from the back-substitution per ball
(:func:`_compact`); rows ``±e_i`` are gathers; on ℓ∞ balls the input step is ``aᵀmid − |a|ᵀrad`` with one pass
over the input coefficients (:func:`_input_linf`).

Assumed as in :mod:`~probprune.bounds.certified`: IEEE round-to-nearest products (no TF32).
Not supported (refused): conv nets, ensembles, tanh/sigmoid, leaky slopes outside [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

from probprune.bounds import signs
from probprune.bounds.certified import _TINY as _ETA  # smallest subnormal per dtype
from probprune.bounds.certified import _UNIT, _check_forward_dtype, _unit
from probprune.bounds.norms import _down, _g2, _gamma
from probprune.config import BallSpec, ProbPruneError
from probprune.nets import Net, check_pair
from probprune.search import Budget, Region, maximise

__all__ = [
    "AgreementResult",
    "DifferentialBound",
    "GapWitness",
    "certified_agreement",
    "differential_bound",
    "gap_search",
]

_U = 2.0 ** -53
_TINY = 2.0 ** -960
Verdict = Literal["certified", "not certified", "refuted"]


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class DifferentialBound:
    """A certified upper bound on ``sup_{x ∈ ball} ‖f(x) − F(x)‖₂``, one per ball.

    Attributes:
        value: ``[B]`` float64; ≥ the gap in exact arithmetic and for the forward passes in
            ``forward_dtype`` (module docstring).
        lower, upper: ``[B, m]`` float64: every output difference ``f_j(x) − F_j(x)`` (as computed in
            ``forward_dtype``, and exactly) lies in ``[lower_j, upper_j]`` for every x in the ball.
        ball: the ball (its centre replaced by ``centres`` when those were given).
        centres: ``[B, d]`` float64 centres.
        forward_dtype: the dtype whose forward passes are covered.
        assumptions: what the bound relies on.
    """

    value: Tensor
    lower: Tensor
    upper: Tensor
    ball: BallSpec
    centres: Tensor
    forward_dtype: str
    assumptions: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class GapWitness:
    """A lower bound on the gap over the ball with the input attaining it.

    Attributes:
        value: ``[B]`` float64 ``‖f(x) − F(x)‖₂`` evaluated in float64 at ``x`` (x inside the ball).
        x: ``[B, d]`` float64 witnesses.
    """

    value: Tensor
    x: Tensor


@dataclass(frozen=True, eq=False)
class AgreementResult:
    """Per ball: is the top-1 class of f equal to F's everywhere in the ball?

    Attributes:
        verdicts: ``"certified"`` (proved: for every x in the ball, F(x) and f(x) — exactly and as
            computed in the forward dtype — both have ``target_class`` as their unique top-1 class),
            ``"refuted"`` (``witness`` is an input in the ball where the two top-1 classes differ,
            in float64), or ``"not certified"`` (neither).
        target_class: ``[B]`` F's top-1 class at the centre (float64).
        margin_target: ``[B]`` certified lower bound on ``min_{x, j≠c} F_c(x) − F_j(x)`` (rounding included).
        margin_pruned: ``[B]`` the same for f.
        witnesses: per ball, a ``[d]`` float64 input for a refuted verdict, else ``None``.
        bound: the certified gap of the same balls, from the same propagation (as :func:`differential_bound`).
    """

    verdicts: tuple[Verdict, ...]
    target_class: Tensor
    margin_target: Tensor
    margin_pruned: Tensor
    witnesses: tuple[Tensor | None, ...]
    bound: DifferentialBound | None = None

    @property
    def certified_rate(self) -> float:
        """Share of balls with a certified verdict."""
        return sum(v == "certified" for v in self.verdicts) / max(1, len(self.verdicts))


# ---------------------------------------------------------------------------------------- setup


@dataclass(frozen=True, eq=False)
class _Pair:
    """Float64 copies of both nets' layers, with the exact remainders of the differences."""

    w: tuple[Tensor, ...]
    wt: tuple[Tensor, ...]
    d: tuple[Tensor, ...]
    d_err: tuple[Tensor, ...]
    b: tuple[Tensor, ...]
    bt: tuple[Tensor, ...]
    db: tuple[Tensor, ...]
    db_err: tuple[Tensor, ...]
    alpha: tuple[float | None, ...]  # hidden activation after layer k: leaky slope α (relu: 0), None: identity
    cache: dict[tuple[str, int], Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)


def _two_diff(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``a − b = s + e`` exactly (Knuth's TwoSum on ``a + (−b)``), float64."""
    nb = -b
    s = a + nb
    bb = s - a
    e = (a - (s - bb)) + (nb - bb)
    return s, e


def _prepare(target: Net, pruned: Net) -> _Pair:
    check_pair(target, pruned)
    if target.n_trials is not None:
        raise ProbPruneError("differential bound: ensembles (a trial dim) are not supported yet; pass one "
                             "member (net.member(k))")
    if target.spec.kind != "fcn" or any(layer.is_conv for layer in target.layers):
        raise ProbPruneError("differential bound: conv nets are not supported yet (FCN only); use "
                             "certified_gap_bound for a layerwise bound")
    for layer in target.layers[:-1]:
        if layer.activation.name not in ("relu", "leaky_relu", "identity"):
            raise ProbPruneError(f"differential bound: activation={layer.activation.name!r} is not supported "
                                 "(relu, leaky_relu and identity only)")
        slope = layer.activation.negative_slope
        if layer.activation.name == "leaky_relu" and not (math.isfinite(slope) and 0.0 <= slope <= 1.0):
            raise ProbPruneError(f"differential bound: leaky_relu negative_slope={slope!r} is not supported "
                                 "(0 <= slope <= 1: convex and 1-Lipschitz)")
    if target.layers[-1].activation.name != "identity":
        raise ProbPruneError("differential bound: the output layer must have no activation")
    w, wt, d, de, b, bt, db, dbe = [], [], [], [], [], [], [], []
    for lt, lp in zip(target.layers, pruned.layers):
        wk, wtk = lt.weight.detach().double(), lp.weight.detach().double()
        bk = torch.zeros(wk.shape[0], dtype=torch.float64, device=wk.device) if lt.bias is None \
            else lt.bias.detach().double()
        btk = torch.zeros_like(bk) if lp.bias is None else lp.bias.detach().double()
        for name, t in (("weights", wk), ("weights", wtk), ("biases", bk), ("biases", btk)):
            if not bool(torch.isfinite(t).all()):
                raise ProbPruneError(f"differential bound: non-finite {name}")
        dk, dke = _two_diff(wk, wtk)
        dbk, dbke = _two_diff(btk, bk)
        w.append(wk)
        wt.append(wtk)
        d.append(dk)
        de.append(dke.abs())
        b.append(bk)
        bt.append(btk)
        db.append(dbk)
        dbe.append(dbke.abs())
    alpha = tuple(None if layer.activation.name == "identity" else
                  (float(layer.activation.negative_slope) if layer.activation.name == "leaky_relu" else 0.0)
                  for layer in target.layers[:-1])
    return _Pair(tuple(w), tuple(wt), tuple(d), tuple(de), tuple(b), tuple(bt), tuple(db), tuple(dbe), alpha)


@dataclass(frozen=True, eq=False)
class _Region:
    """The ball, per centre: ``[B, d]`` centres and the per-coordinate box it lies in (outward)."""

    centres: Tensor
    radius: float | Tensor  # a Tensor [B, d]: per-ball, per-coordinate ℓ∞ half-widths (a box centre ± h)
    norm: str
    box: tuple[float, float] | None
    lo: Tensor  # [B, d] a box containing the ball ∩ box (exact for linf, coordinate bounds for l2)
    hi: Tensor
    cut: Any = None  # branch and bound: linear constraints of a sub-domain, used by _min_linear (differential_split)


def _region(ball: BallSpec, centres: Tensor | None, dim: int, device: torch.device,
            halfwidth: Tensor | None = None) -> _Region:
    if not isinstance(ball, BallSpec):
        raise ProbPruneError(f"ball: expected a BallSpec, got {type(ball).__name__}")
    if centres is None:
        if ball.centre is None:
            c = torch.zeros(1, dim, dtype=torch.float64, device=device)
        else:
            if len(ball.centre) != dim:
                raise ProbPruneError(f"ball.centre: length {len(ball.centre)}, the network's input dim is {dim}")
            c = torch.tensor([ball.centre], dtype=torch.float64, device=device)
    else:
        if not isinstance(centres, Tensor) or centres.dim() != 2 or centres.shape[1] != dim \
                or centres.shape[0] < 1:
            shape = tuple(centres.shape) if isinstance(centres, Tensor) else type(centres).__name__
            raise ProbPruneError(f"centres: shape {shape}, expected [B, {dim}]")
        c = centres.detach().to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(c).all()):
            raise ProbPruneError("centres: must be finite")
        if ball.box is not None and not bool(((c >= ball.box[0]) & (c <= ball.box[1])).all()):
            raise ProbPruneError(f"centres: some centre lies outside the box {ball.box}")
    r: float | Tensor = float(ball.radius) if halfwidth is None else _halfwidths(ball, halfwidth, c)
    ninf, pinf = torch.tensor(-math.inf, dtype=torch.float64), torch.tensor(math.inf, dtype=torch.float64)
    lo = torch.nextafter(c - r, ninf.to(device))  # outward: the box [lo, hi] ⊇ {|x_i − c_i| ≤ r}
    hi = torch.nextafter(c + r, pinf.to(device))
    if ball.box is not None:
        lo = lo.clamp_min(ball.box[0])
        hi = hi.clamp_max(ball.box[1])
    return _Region(c, r, ball.norm, ball.box, lo, hi)


def _halfwidths(ball: BallSpec, halfwidth: Tensor, c: Tensor) -> Tensor:
    """Checked float64 ``[B, d]`` half-widths of the boxes ``c ± h`` (ℓ∞ only; they replace the radius)."""
    if ball.norm != "linf":
        raise ProbPruneError(f"halfwidth: per-input boxes are l-infinity balls; ball.norm={ball.norm!r}")
    if not isinstance(halfwidth, Tensor) or halfwidth.shape != c.shape:
        shape = tuple(halfwidth.shape) if isinstance(halfwidth, Tensor) else type(halfwidth).__name__
        raise ProbPruneError(f"halfwidth: shape {shape}, expected {tuple(c.shape)} (one per centre coordinate)")
    h = halfwidth.detach().to(device=c.device, dtype=torch.float64)
    if not bool((torch.isfinite(h) & (h >= 0)).all()):
        raise ProbPruneError("halfwidth: must be finite and >= 0")
    return h


def _rowdot(mat: Tensor, v: Tensor) -> Tensor:
    """``Σ_i mat[..., r, i] · v[b, (r,) i]`` → ``[B, R]``: ``mat`` ``[R, n]`` (shared by every ball) or ``[B, R, n]``;
    ``v`` ``[B, n]`` or, per row, ``[B, R, n]`` / ``[B, 1, n]``."""
    if v.dim() == 3:  # per-row relaxations ``[B, R or 1, n]`` (slopes optimised per objective row)
        return (mat * v).sum(-1)
    if mat.dim() == 2:
        return v @ mat.T
    if mat.numel() <= _SMALL:  # batched matrix-vector products of small size: faster elementwise
        return (mat * v.unsqueeze(1)).sum(-1)
    return (mat @ v.unsqueeze(-1)).squeeze(-1)


_SMALL = 1 << 18  # below this many entries, batched matrix-vector products are done as multiply-and-sum


def _min_linear(lam: Tensor, const: Tensor, reg: _Region) -> Tensor:
    """Lower value of ``min_{x ∈ ball} λ x + const`` (``λ`` ``[B, m, d]`` or shared ``[m, d]``; ``const`` ``[B, m]``).

    With ``reg.cut`` (a sub-domain's linear constraints), ``reg.cut(lam, const, reg)`` bounds it instead.
    """
    if reg.cut is not None:
        return cast(Tensor, reg.cut(lam, const, dataclasses.replace(reg, cut=None)))
    d = lam.shape[-1]
    g = _g2(d + 1)
    box_min = _rowdot(lam.clamp_min(0), reg.lo) + _rowdot(lam.clamp_max(0), reg.hi)
    xmax = torch.maximum(reg.lo.abs(), reg.hi.abs())
    box_err = g * _rowdot(lam.abs(), xmax)
    box_val = _down(box_min + const, box_err + g * const.abs())
    if reg.norm == "linf":
        return box_val  # the linf ball ∩ box is exactly a (outward-rounded) box
    lc = _rowdot(lam, reg.centres)
    lc_err = g * _rowdot(lam.abs(), reg.centres.abs())
    nrm = lam.norm(dim=-1) * (1.0 + _g2(d + 3)) + _TINY
    ball_val = _down(lc + const - reg.radius * nrm * (1.0 + 4.0 * _U), lc_err + g * const.abs())
    return ball_val if reg.box is None else torch.maximum(ball_val, box_val)


@dataclass(frozen=True, eq=False)
class _Relax:
    """Linear bounds of ``h`` (in z) and ``Δh`` (in z, δ) per neuron, ``[B, n]`` each, plus magnitudes."""

    hl: tuple[Tensor, Tensor]          # h ≥ a z + β
    hu: tuple[Tensor, Tensor]          # h ≤ a z + β
    gl: tuple[Tensor, Tensor, Tensor]  # Δh ≥ p z + q δ + r
    gu: tuple[Tensor, Tensor, Tensor]
    zmax: Tensor
    dmax: Tensor
    hmax: Tensor
    dhmax: Tensor
    tl: tuple[Tensor, Tensor]          # h̃ ≥ a (z + δ) + β
    tu: tuple[Tensor, Tensor]          # h̃ ≤ a (z + δ) + β
    width_h: Tensor                    # looseness of each relaxation at the box centre (a heuristic)
    width_g: Tensor
    width_t: Tensor
    tau_t: Tensor | None               # bound on the activation's own forward rounding (leaky: one product)
    tau_p: Tensor | None
    hmax_c: Tensor                     # bounds on |fl(h)|, |fl(h̃)|, |fl(h̃) − fl(h)| of the computed nets
    hpmax_c: Tensor
    dhmax_c: Tensor
    box_c: tuple[Tensor, ...]          # intervals of fl(h), fl(h̃), fl(h̃) − fl(h): (lo, hi) × 3
    zb: tuple[Tensor, ...]             # the intervals (l, u, δ_l, δ_u, l̃, ũ) the lines were built from


def _nudge(p: Tensor, q: Tensor, r: Tensor, zmax: Tensor, dmax: Tensor, up: bool) -> Tensor:
    """Intercept moved outwards so that the rounded line stays valid on the box."""
    m = 4.0 * _U * (p.abs() * zmax + q.abs() * dmax + r.abs()) + _TINY
    return r + m if up else r - m


def _act_lines(lo: Tensor, hi: Tensor, alpha: float, lam_opt: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Relaxation of σ(z) = max(z, αz) (0 ≤ α ≤ 1; relu: α = 0) on ``[lo, hi]``.

    Returns the lower slope λ (``λz ≤ σ(z)`` for λ ∈ [α, 1]: 1 if ``hi > −lo`` else α) and the upper
    line ``s z + t``: the chord ``s (z − lo) + α lo``, s rounded up (a steeper line through
    ``(lo, σ(lo))`` stays above σ on ``[lo, hi]`` since σ is convex), ``t = (s − α)(−lo)`` rounded up.
    Stable neurons are exact: ``z`` (``lo ≥ 0``) or ``αz`` (``hi ≤ 0``). ``lam_opt``: optimised lower
    slopes of the unstable neurons, projected into their valid range ``[α, 1]`` here, before any use.
    """
    act = lo >= 0
    dead = hi <= 0
    unst = ~(act | dead)
    one = torch.ones_like(hi)
    width = torch.where(unst, hi - lo, one)
    stable = torch.where(act, one, one * alpha)
    s = torch.where(unst, (hi - alpha * lo) / width * (1.0 + 8.0 * _U), stable)
    t = torch.where(unst, ((s - alpha) * -lo) * (1.0 + 4.0 * _U) + _TINY, torch.zeros_like(lo))
    free = torch.where(hi > -lo, one, one * alpha) if lam_opt is None else lam_opt.clamp(alpha, 1.0)
    lam = torch.where(unst, free, stable)
    return lam, s, t


def _sigma_out(v: Tensor, alpha: float, up: bool) -> Tensor:
    """σ(v) rounded outwards (up or down)."""
    inf = torch.tensor(math.inf if up else -math.inf, dtype=torch.float64, device=v.device)
    return torch.where(v >= 0, v, torch.nextafter(alpha * v, inf))


def _chords(dl: Tensor, du: Tensor, alpha: float) -> tuple[tuple[Tensor, Tensor, Tensor],
                                                          tuple[Tensor, Tensor, Tensor]]:
    """δ-chords: ``min(δ, αδ) ≤ Δh ≤ max(δ, αδ)`` relaxed linearly on ``[δ_l, δ_u]`` (module docstring)."""
    zero, one = torch.zeros_like(dl), torch.ones_like(dl)
    unst = (dl < 0) & (du > 0)
    wd = torch.where(unst, du - dl, one)
    # upper: chord of the convex max(δ, αδ) through (δ_l, αδ_l), (δ_u, δ_u): q(δ − δ_l) + αδ_l
    q_u = torch.where(unst, (du - alpha * dl) / wd * (1.0 + 8.0 * _U),
                      torch.where(dl >= 0, one, one * alpha))
    r_u = torch.where(unst, ((q_u - alpha) * -dl) * (1.0 + 4.0 * _U) + _TINY, zero)
    # lower: chord of the concave min(δ, αδ) through (δ_l, δ_l), (δ_u, αδ_u): q(δ − δ_u) + αδ_u
    q_l = torch.where(unst, (alpha * du - dl) / wd * (1.0 + 8.0 * _U),
                      torch.where(du <= 0, one, one * alpha))
    r_l = torch.where(unst, -(((q_l - alpha) * du) * (1.0 + 4.0 * _U) + _TINY), zero)
    return (zero, q_u, r_u), (zero, q_l, r_l)


def _relax(l: Tensor, u: Tensor, dl: Tensor, du: Tensor, tl: Tensor, tu: Tensor, alpha: float | None,
           dt_t: torch.dtype, dt_p: torch.dtype, lams: tuple[Tensor, Tensor] | None = None) -> _Relax:
    """Relaxations of one hidden layer from its intervals (module docstring); ``lams``: optimised lower slopes
    of ``h`` and ``h̃`` (projected into ``[α, 1]`` by :func:`_act_lines`)."""
    zmax = torch.maximum(l.abs(), u.abs())
    dmax = torch.maximum(dl.abs(), du.abs())
    zero, one = torch.zeros_like(l), torch.ones_like(l)
    if alpha is None:
        tmax = torch.maximum(tl.abs(), tu.abs())
        return _Relax((one, zero), (one, zero), (zero, one, zero), (zero, one, zero), zmax, dmax, zmax, dmax,
                      (one, zero), (one, zero), zero, zero, zero, None, None, zmax, tmax, dmax,
                      (l, u, tl, tu, dl, du), (l, u, dl, du, tl, tu))
    lam, s, t = _act_lines(l, u, alpha, None if lams is None else lams[0])
    lam_t, s_t, t_t = _act_lines(tl, tu, alpha, None if lams is None else lams[1])
    ninf = torch.tensor(-math.inf, dtype=torch.float64, device=l.device)
    pinf = torch.tensor(math.inf, dtype=torch.float64, device=l.device)
    # candidates: independent (A), δ-chords (B), interval (C)
    ua = (s_t - lam, s_t, t_t)
    la = (lam_t - s, lam_t, -t)
    ub, lb = _chords(dl, du, alpha)
    c_hi = torch.nextafter(_sigma_out(tu, alpha, True) - _sigma_out(l, alpha, False), pinf)
    c_lo = torch.nextafter(_sigma_out(tl, alpha, False) - _sigma_out(u, alpha, True), ninf)
    uc = (zero, zero, c_hi)
    lc = (zero, zero, c_lo)
    zc, dc = (l + u) / 2, (dl + du) / 2

    def at(line: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return line[0] * zc + line[1] * dc + line[2]

    def pick(cands: list[tuple[Tensor, Tensor, Tensor]], up: bool) -> tuple[Tensor, Tensor, Tensor]:
        best = cands[0]
        val = at(best)
        for cand in cands[1:]:
            v = at(cand)
            better = v < val if up else v > val
            best = tuple(torch.where(better, c, bb) for c, bb in zip(cand, best))  # type: ignore[assignment]
            val = torch.where(better, v, val)
        return best

    pu, qu, ru = pick([ua, ub, uc], True)
    pl, ql, rl = pick([la, lb, lc], False)
    ru = _nudge(pu, qu, ru, zmax, dmax, True)
    rl = _nudge(pl, ql, rl, zmax, dmax, False)
    # |σ(z)| ≤ max(σ(u)⁺, α(−l)⁺); Δh ∈ [max(c_lo, min(0, δ_l)), min(c_hi, max(0, δ_u))]
    hmax = torch.maximum(u.clamp_min(0), (alpha * (-l).clamp_min(0)) * (1.0 + 2.0 * _U))
    hpmax = torch.maximum(tu.clamp_min(0), (alpha * (-tl).clamp_min(0)) * (1.0 + 2.0 * _U))
    dh_lo = torch.maximum(c_lo, dl.clamp_max(0))
    dh_hi = torch.minimum(c_hi, du.clamp_min(0))
    dhmax = torch.maximum(dh_lo.abs(), dh_hi.abs())
    wh = ((s - lam) * zc + t).clamp_min(0)
    wg = ((pu - pl) * zc + (qu - ql) * dc + (ru - rl)).clamp_min(0)
    wt = ((s_t - lam_t) * (zc + dc) + t_t).clamp_min(0)
    tau_t = tau_p = None
    hmax_c, hpmax_c, dhmax_c = hmax, hpmax, dhmax
    if alpha != 0.0:  # fl(α z) for z < 0: one rounded product, |error| ≤ u_d |αz| + η_d
        tau_t = (_UNIT[dt_t] * alpha * (-l).clamp_min(0) + _ETA[dt_t]) * (1.0 + 4.0 * _U)
        tau_p = (_UNIT[dt_p] * alpha * (-tl).clamp_min(0) + _ETA[dt_p]) * (1.0 + 4.0 * _U)
        hmax_c = (hmax + tau_t) * (1.0 + 2.0 * _U)
        hpmax_c = (hpmax + tau_p) * (1.0 + 2.0 * _U)
        dhmax_c = (dhmax + tau_t + tau_p) * (1.0 + 4.0 * _U)
    box_c = _act_boxes(l, u, tl, tu, dh_lo, dh_hi, alpha, tau_t, tau_p)
    return _Relax((lam, zero), (s, t), (pl, ql, rl), (pu, qu, ru), zmax, dmax, hmax, dhmax,
                  (lam_t, zero), (s_t, t_t), wh, wg, wt, tau_t, tau_p, hmax_c, hpmax_c, dhmax_c, box_c,
                  (l, u, dl, du, tl, tu))


def _act_boxes(l: Tensor, u: Tensor, tl: Tensor, tu: Tensor, dh_lo: Tensor, dh_hi: Tensor, alpha: float,
               tau_t: Tensor | None, tau_p: Tensor | None) -> tuple[Tensor, ...]:
    """Intervals of ``fl(h) = σ(z) + τ``, ``fl(h̃)`` and ``fl(h̃) − fl(h)`` (σ monotone; τ: the leaky product's
    rounding)."""
    ninf = torch.tensor(-math.inf, dtype=torch.float64, device=l.device)
    pinf = torch.tensor(math.inf, dtype=torch.float64, device=l.device)
    h_lo, h_hi = _sigma_out(l, alpha, False), _sigma_out(u, alpha, True)
    ht_lo, ht_hi = _sigma_out(tl, alpha, False), _sigma_out(tu, alpha, True)
    if tau_t is not None and tau_p is not None:
        # each sum is rounded once (nextafter covers it); the taus are ≥ 0
        h_lo, h_hi = torch.nextafter(h_lo - tau_t, ninf), torch.nextafter(h_hi + tau_t, pinf)
        ht_lo, ht_hi = torch.nextafter(ht_lo - tau_p, ninf), torch.nextafter(ht_hi + tau_p, pinf)
        tau = torch.nextafter(tau_t + tau_p, pinf)
        dh_lo, dh_hi = torch.nextafter(dh_lo - tau, ninf), torch.nextafter(dh_hi + tau, pinf)
    return h_lo, h_hi, ht_lo, ht_hi, dh_lo, dh_hi


_OneHot = tuple[Tensor, Tensor, Tensor]


def _affine_step(lz: Tensor, ld: Tensor, j: int, pair: _Pair, relax: list[_Relax], reg: _Region,
                 rho: list[tuple[Tensor, Tensor]], onehot: _OneHot | None = None
                 ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Objective ``lzᵀ z_j + ldᵀ δ_j`` through layer j's affine map: ``A h + G Δh + cc`` and the step's slack.

    Returns ``(A, G, cc, slack)``; ``G`` is ``None`` at the input (``Δh_0 = 0``). The slack (≥ 0, ``[B, m]``)
    covers the forward passes' rounding ρ, the rounding of the computed ``A``, ``G``, ``cc`` and the exact
    remainders of ``D`` and ``b̃ − b`` (TwoSum). With ``onehot`` (rows ``±e_i`` in z and δ) the products are
    row gathers: the same floats as the matrix products (products by ±1 or 0 are exact; one rounded
    subtraction), so the same slack covers them.
    """
    w, wt, dd, de = pair.w[j], pair.wt[j], pair.d[j], pair.d_err[j]
    n_out = w.shape[-2]  # weights may be per ball, [B, n_out, n_in] (compacted: :func:`_compact`)
    g = _g2(2 * n_out + 2)
    hmax_in = torch.maximum(reg.lo.abs(), reg.hi.abs()) if j == 0 else relax[j - 1].hmax_c  # [B, n_in]
    if onehot is not None:
        return _affine_onehot(onehot, j, pair, relax, rho[j], hmax_in, g)
    # the forward passes' rounding: lzᵀρ + ldᵀ(ρ̃ − ρ) = (lz − ld)ᵀρ + ldᵀρ̃, at most in absolute value
    rt, rp = rho[j]
    alz, ald = lz.abs(), ld.abs()
    s_rho = (_rowdot((lz - ld).abs(), rt) * (1.0 + 2.0 * _U) + _rowdot(ald, rp)) * (1.0 + _g2(n_out + 2))
    a = lz @ w - ld @ dd
    gg = None if j == 0 else ld @ wt
    cc = _vecdot(lz, pair.b[j]) + _vecdot(ld, pair.db[j])
    # the bias difference's exact remainder enters in full, the products' rounding by g
    c_err = g * (_vecdot(alz, pair.b[j].abs()) + _vecdot(ald, pair.db[j].abs())) \
        + (1.0 + g) * _vecdot(ald, pair.db_err[j])
    # |exact(A) − A| · |h| and |exact(G) − G| · |Δh|, by associativity of non-negative products
    # (D's exact remainder de enters in full, the products' rounding by g)
    s_aff = g * (_rowdot(alz, _matvec(w.abs(), hmax_in)) + _rowdot(ald, _matvec(dd.abs(), hmax_in))) \
        + (1.0 + g) * _rowdot(ald, _matvec(de, hmax_in))
    if j > 0:
        s_aff = s_aff + g * _rowdot(ald, _matvec(wt.abs(), relax[j - 1].dhmax_c))
    return a, gg, cc, (s_rho + s_aff + c_err) * (1.0 + 4.0 * _U)


def _affine_onehot(onehot: _OneHot, j: int, pair: _Pair, relax: list[_Relax], rho: tuple[Tensor, Tensor],
                   hmax_in: Tensor, g: float) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """:func:`_affine_step` for rows ``cz·e_i`` on z and ``cd·e_i`` on δ (``cz, cd ∈ {0, ±1}``): every row product
    is a gather (one non-zero term, times ±1: exact), so the values equal the dense products' bit for bit and
    the same slack covers them — without forming the one-hot matrices."""
    cz, cd, idx = onehot
    w, wt, dd, de = pair.w[j], pair.wt[j], pair.d[j], pair.d_err[j]
    acz, acd = cz.abs(), cd.abs()

    def at(v: Tensor) -> Tensor:  # [n] or [B, n] per neuron → [B, R] at the rows' neurons (idx [R]: shared rows)
        return v[idx] if v.dim() == 1 else v[:, idx] if idx.dim() == 1 else v.gather(1, idx)

    rt, rp = rho
    s_rho = ((cz - cd).abs() * at(rt) * (1.0 + 2.0 * _U) + acd * at(rp)) * (1.0 + _g2(w.shape[-2] + 2))
    a = cz.unsqueeze(-1) * _gather_rows(w, idx) - cd.unsqueeze(-1) * _gather_rows(dd, idx)
    gg = None if j == 0 else cd.unsqueeze(-1) * _gather_rows(wt, idx)
    cc = cz * at(pair.b[j]) + cd * at(pair.db[j])
    c_err = g * (acz * at(pair.b[j].abs()) + acd * at(pair.db[j].abs())) + (1.0 + g) * (acd * at(pair.db_err[j]))
    s_aff = g * (acz * at(_matvec(w.abs(), hmax_in)) + acd * at(_matvec(dd.abs(), hmax_in))) \
        + (1.0 + g) * (acd * at(_matvec(de, hmax_in)))
    if j > 0:
        s_aff = s_aff + g * (acd * at(_matvec(wt.abs(), relax[j - 1].dhmax_c)))
    return a, gg, cc, (s_rho + s_aff + c_err) * (1.0 + 4.0 * _U)


def _gather_rows(w: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` ``[B, R]`` of ``w`` (``[n, m]`` shared, or ``[B, n, m]`` per ball) → ``[B, R, m]``."""
    if w.dim() == 2:
        return w[idx]
    return torch.gather(w, 1, idx.unsqueeze(-1).expand(-1, -1, w.shape[-1]))


def _vecdot(mat: Tensor, v: Tensor) -> Tensor:
    """``mat · v`` over the last dim: ``v`` ``[n]`` shared or ``[B, n]`` per ball (then as :func:`_rowdot`)."""
    return mat @ v if v.dim() == 1 else _rowdot(mat, v)


def _matvec(w: Tensor, v: Tensor) -> Tensor:
    """Per ball ``W v_b`` → ``[B, n_out]``: ``w`` ``[n_out, n_in]`` shared or ``[B, n_out, n_in]``, ``v`` ``[B, n_in]``
    (or ``[B, 1 or R, n_in]`` → ``[B, 1 or R, n_out]``)."""
    if w.dim() == 3 and w.stride(-1) == 0 and w.stride(-2) == 0:  # the compaction's zero (:func:`_compact`)
        return v.new_zeros(*v.shape[:-1], w.shape[-2])
    if w.dim() == 2 or v.dim() == 3:  # v [B, 1 or R, n_in]: per-row fields → [B, 1 or R, n_out]
        return v @ w.transpose(-1, -2)
    return _rowdot(w, v)


def _per_row(t: Tensor) -> Tensor:
    """A ``[B, n]`` relaxation field broadcast over the objective rows (``[B, 1, n]``); per-row fields
    (``[B, R, n]``, from slopes optimised per row) are returned as they are."""
    return t if t.dim() == 3 else t.unsqueeze(1)


def _decompose(a: Tensor, gg: Tensor, rx: _Relax) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per entry the least loose of three exact rewritings of ``A h + G Δh`` on ``(h, Δh, h̃)`` (h̃ = h + Δh).

    ``(A, G, 0)``, ``(A − G, 0, G)`` or ``(0, G − A, A)``, by ``Σ |coefficient| · width`` at the box centre.
    Returns the coefficients of h, Δh, h̃ and the slack of the rounding of ``fl(A − G)``.
    """
    e = _per_row
    amg = a - gg
    l1 = a.abs() * e(rx.width_h) + gg.abs() * e(rx.width_g)
    l2 = amg.abs() * e(rx.width_h) + gg.abs() * e(rx.width_t)
    l3 = amg.abs() * e(rx.width_g) + a.abs() * e(rx.width_t)
    o2 = (l2 < l1) & (l2 <= l3)
    o3 = (l3 < l1) & ~o2
    zero_ = torch.zeros_like(l1)
    ch = torch.where(o2, amg, torch.where(o3, zero_, a))
    cd = torch.where(o2, zero_, torch.where(o3, -amg, gg))
    ct = torch.where(o2, gg, torch.where(o3, a, zero_))
    # fl(A − G) differs from A − G by ≤ u|fl(A − G)|, multiplying h (≤ hmax) or Δh (≤ dhmax)
    s_dec = 2.0 * _U * _rowdot(amg.abs(), rx.hmax + rx.dhmax) * (1.0 + _g2(a.shape[-1]))
    return ch, cd, ct, s_dec


def _relax_step(a: Tensor, gg: Tensor, rx: _Relax) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``A fl(h) + G (fl(h̃) − fl(h))`` bounded below by linear functions of ``(z, δ)`` of the layer beneath.

    Returns the new objective ``(lz, ld)``, its constant ``[B, m]`` and the slack (the activation's own
    forward rounding τ, the decomposition's and the relaxation products' rounding). Each coefficient
    picks its lower or upper line by its sign (``c·line`` with ``line = lower if c > 0 else upper``); the
    constants ``Σ c·β`` are summed as ``Σ c (β_l + β_u)/2 + |c| (β_l − β_u)/2`` (row-vector products; the
    halves' rounding, ≤ u(|β_l| + |β_u|) each, is inside the constants' slack ``γ·Σ|c|(|β_l| + |β_u|)``).
    """
    n_in = a.shape[-1]
    e = _per_row
    s = torch.zeros(1, dtype=torch.float64, device=a.device)
    if rx.tau_t is not None and rx.tau_p is not None:
        # fl(h) = σ(z) + τ, fl(h̃) = σ(z̃) + τ̃: A fl(h) + G (fl(h̃) − fl(h)) = … + (A − G)ᵀτ + Gᵀτ̃
        s = (_rowdot((a - gg).abs(), rx.tau_t) * (1.0 + 2.0 * _U) + _rowdot(gg.abs(), rx.tau_p)) \
            * (1.0 + _g2(n_in + 2))
    ch, cd, ct, s_dec = _decompose(a, gg, rx)
    (al, bl), (au, bu) = rx.hl, rx.hu
    (pl, ql, rl), (pu, qu, ru) = rx.gl, rx.gu
    (tal, tbl), (tau, tbu) = rx.tl, rx.tu
    ph, pg, pt = ch > 0, cd > 0, ct > 0
    tz = ct * torch.where(pt, e(tal), e(tau))
    lz = ch * torch.where(ph, e(al), e(au)) + cd * torch.where(pg, e(pl), e(pu)) + tz
    ld = cd * torch.where(pg, e(ql), e(qu)) + tz
    ah, ag, at = ch.abs(), cd.abs(), ct.abs()
    cons = (_rowdot(ch, (bl + bu) * 0.5) + _rowdot(ah, (bl - bu) * 0.5) + _rowdot(cd, (rl + ru) * 0.5)
            + _rowdot(ag, (rl - ru) * 0.5) + _rowdot(ct, (tbl + tbu) * 0.5) + _rowdot(at, (tbl - tbu) * 0.5))
    # rounding of the relaxation products (≤ 8 roundings of terms ≤ |c|·|line|·max) and of the constants
    g_rel, g_c = _g2(12), _g2(n_in + 12)
    v_h = g_rel * (al.abs() + au.abs()) * rx.zmax + g_c * (bl.abs() + bu.abs())
    v_g = g_rel * ((pl.abs() + pu.abs()) * rx.zmax + (ql.abs() + qu.abs()) * rx.dmax) + g_c * (rl.abs() + ru.abs())
    v_t = g_rel * (tal.abs() + tau.abs()) * (rx.zmax + rx.dmax) + g_c * (tbl.abs() + tbu.abs())
    s_rel = (_rowdot(ah, v_h) + _rowdot(ag, v_g) + _rowdot(at, v_t)) * (1.0 + _g2(n_in + 8)) + s_dec
    return lz, ld, cons, (s + s_rel) * (1.0 + 4.0 * _U)


def _backsub(lz: Tensor, ld: Tensor, k: int, pair: _Pair, relax: list[_Relax], reg: _Region,
             rho: list[tuple[Tensor, Tensor]], onehot: _OneHot | None = None) -> Tensor:
    """Certified lower value over the ball of ``lzᵀ z_k + ldᵀ δ_k`` (``[B, m, n_k]`` each) → ``[B, m]``.

    ``lz``, ``ld`` may also be ``[m, n_k]``, shared by every ball (the first products are then done once).
    ``onehot``: ``(coefficient of z, of δ, neuron)`` ``[B, m]`` each when every row is ``±e_i`` (gathers).

    ``z``, ``z̃`` are the pre-activations *as computed* in the forward dtype: ``z_j = W_j h_{j−1} + b_j + ρ_j``
    with ``|ρ_j| ≤ rho[j][0]`` (target) and ``|ρ̃_j| ≤ rho[j][1]`` (pruned); ρ = 0 is exact arithmetic.
    In exact arithmetic the objective is ≥ ``lzᵀ z + ldᵀ δ + c − s`` for the computed coefficients at
    every step; ``c`` is the constant collected, ``s`` ≥ 0 the slack (every rounding so far, rounded up).
    """
    bsz, m = reg.centres.shape[0], lz.shape[-2]
    full = (pair, relax, rho)
    signed = k >= 2 and signs.applies(pair, reg) and _plain(relax[0])
    compacted = _compact_cached(k, pair, relax, rho) if k > 0 else None
    if compacted is not None:  # only the neurons not dead in both nets (exact: theirs contribute 0)
        pair, relax, rho = compacted
    c = torch.zeros(bsz, m, dtype=torch.float64, device=lz.device)
    s = torch.zeros_like(c)
    alt: Tensor | None = None  # the rows' lower value by the sign relaxation of the first layer (ℓ2 balls)
    for j in range(k, -1, -1):
        # (a sub-domain's cuts, ``reg.cut``, need the general input step: _min_linear hands them the rows)
        if j == 0 and j < k and reg.norm == "linf" and lz.dim() == 3 and not lz.requires_grad and reg.cut is None:
            return _input_linf(lz, ld, pair, reg, rho[0], c, s)
        if j == 1 and signed and lz.dim() == 3:
            alt = _signed_rows(lz, ld, c, s, full, reg, None if compacted is None else pair)
        a, gg, cc, s_aff = _affine_step(lz, ld, j, pair, relax, reg, rho, onehot if j == k else None)
        s = (s + s_aff) * (1.0 + 4.0 * _U) + _TINY
        c = c + cc
        s = s + 2.0 * _U * c.abs()
        if gg is None:
            low = _down(_min_linear(a, c, reg), s)
            return low if alt is None else torch.maximum(low, alt)
        lz, ld, csum, s_rel = _relax_step(a, gg, relax[j - 1])
        c = c + csum
        s = (s + s_rel + 2.0 * _U * c.abs()) * (1.0 + 4.0 * _U) + _TINY
    raise AssertionError("unreachable")  # pragma: no cover


def _plain(rx: _Relax) -> bool:
    """Whether a relaxation is one per ball (``[B, n]`` fields), not per objective row."""
    return rx.hmax_c.dim() == 2 and rx.dhmax_c.dim() == 2 and all(t.dim() == 2 for t in rx.zb) \
        and (rx.tau_t is None or rx.tau_t.dim() == 2)


def _signed_rows(lz: Tensor, ld: Tensor, c: Tensor, s: Tensor,
                 full: tuple[_Pair, list[_Relax], list[tuple[Tensor, Tensor]]], reg: _Region,
                 compacted: _Pair | None) -> Tensor:
    """Certified lower values ``[B, R]`` of rows that have reached the second layer as ``lzᵀ z₁ + ldᵀ δ₁ + c − s``
    (``[B, R, ·]``, in the compacted neurons where ``compacted`` is given), by the sign relaxation of the first
    layer (:func:`probprune.bounds.signs.first_layer_low`) on the full pair."""
    pair, relax, rho = full
    if compacted is not None:  # back to every neuron of layer 1 (the dropped ones have coefficient 0)
        kept = compacted.cache[("kept", 0)][1]
        n1 = pair.w[1].shape[0]
        ix = kept.unsqueeze(1).expand(-1, lz.shape[1], -1)
        lz = lz.new_zeros(*lz.shape[:2], n1 + 1).scatter(2, ix, lz)[..., :n1]
        ld = ld.new_zeros(*ld.shape[:2], n1 + 1).scatter(2, ix, ld)[..., :n1]
    low = signs.first_layer_low(lz, ld, pair, relax[0], relax[0].zb, reg, rho)
    v = low + c
    return _down(v, s + 4.0 * _U * (low.abs() + c.abs()) + _TINY)


def _live(rx: _Relax) -> Tensor | None:
    """``[B, n]``: the neurons of a hidden layer whose ``h`` or ``h̃`` may be non-zero (as computed or exact);
    ``None`` where the relaxation's fields are not all ``[B, n]`` (per-row slopes: no compaction)."""
    hm, hp = rx.hmax_c, rx.hpmax_c
    if hm.dim() == 3 and hm.shape[1] == 1 and hp.shape == hm.shape:  # per-row fields: [B, 1 or R, n]
        hm, hp = hm[:, 0], hp[:, 0]
    if hm.dim() != 2 or hp.shape != hm.shape or any(
            isinstance(v, Tensor) and (v.dim() not in (2, 3) or v.shape[0] != hm.shape[0] or v.shape[-1] != hm.shape[1])
            for f in dataclasses.fields(rx) for v in _flat(getattr(rx, f.name))):
        return None
    # NaN (an overflow upstream) counts as live, so that it reaches the final check
    return ~((hm == 0) & (hp == 0))


def _flat(v: Any) -> tuple[Any, ...]:
    return v if isinstance(v, tuple) else (v,)


def _compact(k: int, pair: _Pair, relax: list[_Relax], rho: list[tuple[Tensor, Tensor]]
             ) -> tuple[_Pair, list[_Relax], list[tuple[Tensor, Tensor]]] | None:
    """Per-ball weights, relaxations and rounding bounds of layers ``0 … k`` restricted to the hidden neurons
    that are not dead in both nets (``|fl(h)| ≤ 0`` and ``|fl(h̃)| ≤ 0`` by the intervals).

    Such a neuron has ``h = h̃ = Δh = 0`` exactly (computed and exact), so it contributes exactly nothing
    to ``A h + G Δh`` and dropping it is an exact identity (its relaxation, looser by at least the
    rounding nudge, is not used: never looser than the full back-substitution). Per ball the kept neurons
    come first, padded to the most any ball keeps by a phantom neuron whose weights, relaxation and
    rounding bounds are all zero. Weights become ``[B, n_out, n_in]`` (rows and columns gathered; layer k keeps
    its rows, the input layer its columns). ``None`` where :func:`_live` declines.
    """
    idx: list[Tensor] = []
    keep: list[Tensor] = []
    for j in range(k):
        live = _live(relax[j])
        if live is None:
            return None
        order = torch.sort((~live).to(torch.int8), dim=1, stable=True).indices
        width = max(1, int(live.sum(1).max()))
        order = order[:, :width]
        kept = live.gather(1, order)
        idx.append(torch.where(kept, order, torch.full_like(order, live.shape[1])))  # the phantom: index n
        keep.append(kept.to(torch.float64))

    bsz = idx[0].shape[0]

    def vec(t: Tensor, j: int) -> Tensor:  # [n_j], [B, n_j] or per row [B, R, n_j] → [B, (R,) L_j] (phantom: 0)
        ix = idx[j].clamp_max(t.shape[-1] - 1)
        if t.dim() == 3:
            return t.gather(2, ix.unsqueeze(1).expand(-1, t.shape[1], -1)) * keep[j].unsqueeze(1)
        return (t[ix] if t.dim() == 1 else t.gather(1, ix)) * keep[j]

    def mat(name: str, j: int) -> Tensor:  # [n_j, n_{j−1}] → per ball, rows (j < k) and columns (j > 0) kept
        w = getattr(pair, name)[j]
        if (name == "wt" and j == 0) or (name == "d_err" and _all_zero(pair, j)) \
                or (j == 0 and name in ("w", "d")):  # unused / zero / gathered stacked below: no copy
            rows = w.shape[0] if j == k else idx[j].shape[1]
            return w.new_zeros(1, 1, 1).expand(bsz, rows, w.shape[1] if j == 0 else idx[j - 1].shape[1])
        wp = _zero_padded(pair, name, j)  # the phantom's row and column (index n) are zero
        if j == 0:
            return wp[idx[0]]
        rows_ix = idx[j].unsqueeze(-1) if j < k else torch.arange(w.shape[0], device=w.device).view(1, -1, 1)
        return wp[rows_ix, idx[j - 1].unsqueeze(1)]

    def rx_(r: _Relax, j: int) -> _Relax:
        return _Relax(**cast("dict[str, Any]", {
            f.name: (None if v is None else tuple(vec(t, j) for t in v) if isinstance(v, tuple) else vec(v, j))
            for f in dataclasses.fields(r) for v in (getattr(r, f.name),)}))

    w, wt, d, de = (tuple(mat(name, j) for j in range(k + 1)) for name in ("w", "wt", "d", "d_err"))
    b, bt, db, dbe = (tuple(vec(v, j) if j < k else v for j, v in enumerate(vs[:k + 1]))
                      for vs in (pair.b, pair.bt, pair.db, pair.db_err))
    if k > 0:  # the input layer's W and D rows in one gather ([W; D] stacked), with their absolute values
        wd, wd_abs = _stacked_padded(pair)
        rows = torch.cat([idx[0], idx[0] + pair.w[0].shape[0] + 1], 1)
        m, m_abs = wd[rows], wd_abs[rows]
        w = (m[:, :idx[0].shape[1]], *w[1:])
        d = (m[:, idx[0].shape[1]:], *d[1:])
    out = _Pair(w, wt, d, de, b, bt, db, dbe, pair.alpha)
    out.cache[("kept", 0)] = idx  # per hidden layer: the kept neurons' indices ([B, L_j]; the phantom: n_j)
    if k > 0:
        out.cache[("stacked", 0)] = (m, m_abs)
    rho_c = [(vec(a, j), vec(b, j)) for j, (a, b) in enumerate(rho[:k])] + [rho[k]]
    return out, [rx_(relax[j], j) for j in range(k)], rho_c


def _compact_cached(k: int, pair: _Pair, relax: list[_Relax], rho: list[tuple[Tensor, Tensor]]
                    ) -> tuple[_Pair, list[_Relax], list[tuple[Tensor, Tensor]]] | None:
    """:func:`_compact`, remembered for the last (relaxations, rounding bounds) seen at layer k — the same
    objects (identity, not equality) — so the output rows, the chord row and the margins of one chunk share it."""
    key = ("compact", k)
    tag = (*relax[:k], *(t for r in rho[:k + 1] for t in r))
    hit = pair.cache.get(key)
    if hit is not None and len(hit[0]) == len(tag) and all(a is b for a, b in zip(hit[0], tag)):
        return cast("tuple[_Pair, list[_Relax], list[tuple[Tensor, Tensor]]] | None", hit[1])
    out = _compact(k, pair, relax, rho)
    pair.cache[key] = (tag, out)
    return out


def _zero_padded(pair: _Pair, name: str, j: int) -> Tensor:
    """Layer j's matrix ``name`` with a zero row appended (and a zero column, j > 0), cached on the pair."""
    key = (name, j)
    if key not in pair.cache:
        w = getattr(pair, name)[j]
        pair.cache[key] = torch.nn.functional.pad(w, (0, 1 if j > 0 else 0, 0, 1))
    return cast(Tensor, pair.cache[key])


def _all_zero(pair: _Pair, j: int) -> bool:
    """Whether layer j's exact remainder of ``D = W − W̃`` vanishes (pruning by masks: always), cached."""
    key = ("d_err_zero", j)
    if key not in pair.cache:
        pair.cache[key] = not bool(pair.d_err[j].any())
    return bool(pair.cache[key])


def _input_linf(lz: Tensor, ld: Tensor, pair: _Pair, reg: _Region, rho: tuple[Tensor, Tensor], c: Tensor,
                s: Tensor) -> Tensor:
    """The last step of :func:`_backsub` on an ℓ∞ ball (∩ box, i.e. the box ``[lo, hi]``): certified lower value of
    ``min_x lzᵀ z_0 + ldᵀ δ_0 + c − s`` over the box, with one pass over the ``[B, R, d]`` input coefficients.

    With ``mid = fl((lo + hi)/2)`` and ``rad ≥ max(hi − mid, mid − lo)`` (rounded up), every x of the box has
    ``aᵀx ≥ aᵀmid − |a|ᵀrad`` for the exact ``a = lzᵀW − ldᵀ(D + D_err)``. ``aᵀmid`` is taken by associativity
    (``lzᵀ(W mid) − ldᵀ(D mid)``), ``|a|`` from the computed ``â`` (one product of ``[lz, ld]`` by ``[W; −D]``).
    Rounding: ``|a − â| ≤ γ_{2n}(|lz||W| + |ld||D|) + |ld||D_err|`` elementwise, the nested products
    ``lzᵀ(W mid)`` are off by ``≤ γ_{n+d}|lz|(|W||mid|)`` (and likewise for D), so both are covered by
    ``g·(|lz|(|W| hm) + |ld|(|D| hm)) + (1 + g)|ld|(|D_err| hm)`` with ``hm = |mid| + rad`` and
    ``g = 2γ_{2n+d+2}``; ``|â|ᵀrad`` is rounded up by ``1 + 2γ_{d+2}``; the final sums by ``4u`` of their parts.
    The forward passes' rounding ρ and the biases enter as in :func:`_affine_step`.
    """
    w, de = pair.w[0], pair.d_err[0]
    n, d = w.shape[-2], w.shape[-1]
    g = _g2(2 * n + d + 2)
    mid = (reg.lo + reg.hi) * 0.5
    rad = torch.maximum(reg.hi - mid, mid - reg.lo) * (1.0 + 4.0 * _U) + _TINY
    hm = (mid.abs() + rad) * (1.0 + 2.0 * _U)
    rt, rp = rho
    bsz = lz.shape[0]

    def full(v: Tensor) -> Tensor:
        return v.expand(bsz, -1) if v.dim() == 1 else v

    m, m_abs = _stacked(pair)  # [W; D] and its absolute values, [(B,) 2n, d]
    m_mid, m_hm = _matvec(m, mid), _matvec(m_abs, hm)  # [B, 2n]: (W mid; D mid), (|W| hm; |D| hm)
    # one batched product per coefficient matrix: [B, R, n] @ [B, n, k]
    am_w, cb = _rowdots(lz, m_mid[:, :n], full(pair.b[0]))
    aw, ab = _rowdots(lz.abs(), m_hm[:, :n], full(pair.b[0].abs()))
    am_d, cdb = _rowdots(ld, m_mid[:, n:], full(pair.db[0]))
    ad, ae, adb, adbe, arp = _rowdots(ld.abs(), m_hm[:, n:], _matvec(de, hm), full(pair.db[0].abs()),
                                      full(pair.db_err[0]), rp)
    (art,) = _rowdots((lz - ld).abs(), rt)
    s_rho = (art * (1.0 + 2.0 * _U) + arp) * (1.0 + _g2(n + 2))
    cc = cb + cdb
    c_err = g * (ab + adb) + (1.0 + g) * adbe
    s_aff = g * (aw + ad) + (1.0 + g) * ae
    am = am_w - am_d  # lzᵀ(W mid) − ldᵀ(D mid)
    a = torch.cat([lz, -ld], -1) @ m  # â = [lz, −ld]·[W; D], [B, R, d] (the negation is exact)
    ar = _rowdot(a.abs_(), rad) * (1.0 + _g2(d + 2))
    s = (s + (s_rho + s_aff + c_err) * (1.0 + 4.0 * _U)) * (1.0 + 4.0 * _U) + _TINY
    c = c + cc
    v = am + c - ar
    err = s + 4.0 * _U * (am.abs() + c.abs() + ar) * (1.0 + 4.0 * _U) + _TINY
    return _down(v, err)


def _stacked(pair: _Pair) -> tuple[Tensor, Tensor]:
    """``[W₀; D₀]`` and its absolute values, ``[(B,) 2n, d]``, cached on the (compacted) pair."""
    key = ("stacked", 0)
    if key not in pair.cache:
        m = torch.cat([pair.w[0], pair.d[0]], -2)
        pair.cache[key] = (m, m.abs())
    return cast("tuple[Tensor, Tensor]", pair.cache[key])


def _stacked_padded(pair: _Pair) -> tuple[Tensor, Tensor]:
    """``[W₀; 0; D₀; 0]`` (each with the phantom's zero row) and its absolute values, cached on the pair."""
    key = ("stacked_padded", 0)
    if key not in pair.cache:
        m = torch.cat([_zero_padded(pair, "w", 0), _zero_padded(pair, "d", 0)], 0)
        pair.cache[key] = (m, m.abs())
    return cast("tuple[Tensor, Tensor]", pair.cache[key])


def _rowdots(mat: Tensor, *vs: Tensor | None) -> list[Tensor]:
    """``[_rowdot(mat, v) for v in vs]`` (``mat`` ``[B, R, n]``, each ``v`` ``[B, n]``) as one batched product
    (any summation order: the callers' rounding bounds hold for it); ``None`` entries give ``None``."""
    got = [v for v in vs if v is not None]
    if mat.numel() * len(got) <= _SMALL:
        out = iter((mat.unsqueeze(-1) * torch.stack(got, -1).unsqueeze(1)).sum(-2).unbind(-1))
    else:
        out = iter((mat @ torch.stack(got, -1)).unbind(-1))
    return [next(out) if v is not None else cast(Tensor, None) for v in vs]


def _rho(w: Tensor, b: Tensor, hmax: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, n]`` bound on a layer's forward rounding ``|fl(W h + b) − (W h + b)|`` in ``dtype``, ``|h| ≤ hmax``."""
    n = w.shape[1]
    u, eta = _UNIT[dtype], _ETA[dtype]
    return (_gamma(n + 1, u) * (hmax @ w.abs().T + b.abs()) + (n + 1) * eta) * (1.0 + _g2(n + 3))


def _affine_interval(w: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``(c, e)``, ``[B, n_out]``: ``|W h − c| ≤ e`` in exact arithmetic for every ``h ∈ [lo, hi]`` (``[B, n_in]``).

    ``c = fl(W mid)``; ``e`` covers ``|W| rad`` (``rad ≥ |h − mid|``, rounded up) and the rounding of ``c``
    (``≤ γ_n |W||mid|``), every product and sum rounded up by the factor ``1 + 2g``.
    """
    n = w.shape[1]
    g = _g2(n + 2)
    mid = (lo + hi) * 0.5
    rad = torch.maximum(hi - mid, mid - lo) * (1.0 + 4.0 * _U) + _TINY
    c = mid @ w.T
    e = ((rad + g * mid.abs()) @ w.abs().T) * (1.0 + 2.0 * g) + _TINY
    return c, e


def _interval_step(pair: _Pair, k: int, rx: _Relax, rho: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
    """Cheap sound intervals ``(l, u, δ_l, δ_u, l̃, ũ)`` of layer k's computed pre-activations.

    One affine step from the intervals of the layer beneath (``rx.box_c``) — looser than back-substitution
    and used where it already proves a neuron stable:
    ``z = W fl(h) + b + ρ``, ``z̃ = W̃ fl(h̃) + b̃ + ρ̃`` and ``δ = W̃ (fl(h̃) − fl(h)) − D fl(h) + (b̃ − b) + ρ̃ − ρ``
    with ``D = d + d_err`` and ``b̃ − b = db + db_err`` exactly.
    """
    h_lo, h_hi, ht_lo, ht_hi, dh_lo, dh_hi = rx.box_c
    rt, rp = rho
    cz, ez = _affine_interval(pair.w[k], h_lo, h_hi)
    ct, et = _affine_interval(pair.wt[k], ht_lo, ht_hi)
    c1, e1 = _affine_interval(pair.wt[k], dh_lo, dh_hi)
    c2, e2 = _affine_interval(pair.d[k], h_lo, h_hi)
    hmax = torch.maximum(h_lo.abs(), h_hi.abs())
    e3 = (hmax @ pair.d_err[k].T) * (1.0 + 2.0 * _g2(hmax.shape[-1] + 2)) + _TINY
    out = []
    for v, err, parts in ((cz + pair.b[k], ez + rt, (cz, pair.b[k])),
                          (c1 - c2 + pair.db[k], e1 + e2 + e3 + pair.db_err[k] + rt + rp, (c1, c2, pair.db[k])),
                          (ct + pair.bt[k], et + rp, (ct, pair.bt[k]))):
        # the sums' rounding (≤ 3u of the parts' magnitudes) goes into the error, itself rounded up
        err = (err + 4.0 * _U * sum(p.abs() for p in parts)) * (1.0 + 8.0 * _U) + _TINY
        out += [_down(v, err), -_down(-v, err)]
    return tuple(out)


# per row type: (coefficient of z, coefficient of δ) — lower/upper bounds of z, δ and z̃ = z + δ
_ROWS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (1.0, 1.0), (-1.0, -1.0))


def _take(relax: list[_Relax], reg: _Region, rho: list[tuple[Tensor, Tensor]], idx: Tensor
          ) -> tuple[list[_Relax], _Region, list[tuple[Tensor, Tensor]]]:
    """The relaxations, region and rounding bounds of the balls ``idx`` only (every ``[B, …]`` field indexed)."""
    def sel(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v[idx]
        if isinstance(v, tuple):
            return tuple(sel(t) for t in v)
        return v

    rx = [_Relax(**{f.name: sel(getattr(r, f.name)) for f in dataclasses.fields(r)}) for r in relax]
    rad = reg.radius[idx] if isinstance(reg.radius, Tensor) else reg.radius
    rg = _Region(reg.centres[idx], rad, reg.norm, reg.box, reg.lo[idx], reg.hi[idx],
                 None if reg.cut is None else reg.cut.take(idx))
    return rx, rg, [(a[idx], b[idx]) for a, b in rho]


# per group of balls in :func:`_refine`: at most this many (padded) rows in all, and this many balls
_GROUP_ROWS = 2048
_GROUP_BALLS = 64


def _row_groups(counts: Tensor, rows: int = _GROUP_ROWS, balls: int = _GROUP_BALLS) -> list[Tensor]:
    """Balls sorted by how many rows they need (``counts`` ``[B]``), cut into consecutive groups of at most
    ``balls`` balls whose padded size (balls × the group's most rows) stays within ``rows`` (a ball that alone
    exceeds it forms its own group)."""
    order = torch.sort(counts, stable=True).indices
    cnt = counts[order].tolist()
    groups, start = [], 0
    while start < len(cnt):
        end = start + 1
        while end < len(cnt) and end - start < balls and (end - start + 1) * max(cnt[end], 1) <= rows:
            end += 1
        groups.append(order[start:end])
        start = end
    return groups


def _refine(need: Tensor, k: int, pair: _Pair, relax: list[_Relax], reg: _Region,
            rho: list[tuple[Tensor, Tensor]], group: int | None = None) -> Tensor:
    """Back-substituted lower values of the rows ``need`` (``[B, 6, n]`` bool, types ``_ROWS``) → ``[B, 6, n]``.

    Rows not needed come back as ``−inf``. Each ball gets its own rows, gathered into ``[B, R, n]``
    (R: the most any ball of the group needs; the padding rows are discarded), so a ball's values do not
    depend on the other balls of its chunk. Balls are grouped by how many rows they need
    (:func:`_row_groups`, or groups of ``group`` after sorting), so that little is padded.
    """
    bsz, _, n = need.shape
    counts = need.reshape(bsz, -1).sum(1)
    groups = _row_groups(counts) if group is None else _row_groups(counts, 1 << 62, group)
    if len(groups) > 1:
        out = torch.empty(bsz, 6, n, dtype=torch.float64, device=need.device)
        for idx in groups:
            out[idx] = _refine(need[idx], k, pair, *_take(relax, reg, rho, idx), group=len(idx))
        return out
    rows = _one_hot_rows(need, dense=False)
    if rows is None:
        return torch.full((bsz, 6, n), -math.inf, dtype=torch.float64, device=need.device)
    lz, ld, onehot, order, valid = rows
    return _scatter_rows(_backsub(lz, ld, k, pair, relax, reg, rho, onehot), order, valid, n)


def _one_hot_rows(need: Tensor, dense: bool = True) -> tuple[Tensor, Tensor, _OneHot, Tensor, Tensor] | None:
    """The rows ``need`` (``[B, 6, n]``, types ``_ROWS``) as per-ball objectives ``(lz, ld)`` ``[B, R, n]``
    (R: the most any ball needs; padding rows are zero and not ``valid``), their one-hot form, and the
    ``order`` / ``valid`` ``[B, R]`` that :func:`_scatter_rows` uses; ``None`` if no row is needed.
    ``dense=False``: ``lz``, ``ld`` are zero views of that shape only (:func:`_backsub` given the one-hot form
    reads nothing else of them)."""
    bsz, _, n = need.shape
    flat = need.reshape(bsz, 6 * n)
    r = int(flat.sum(1).max()) if bsz else 0
    if r == 0:
        return None
    order = torch.sort((~flat).to(torch.int8), dim=1, stable=True).indices[:, :r]  # needed rows first
    valid = flat.gather(1, order)
    kind, neuron = order // n, order % n
    coef = torch.tensor(_ROWS, dtype=torch.float64, device=need.device)[kind]  # [B, R, 2]
    coef = coef * valid.unsqueeze(-1)
    onehot = (coef[..., 0], coef[..., 1], neuron)
    if not dense:
        shape_only = coef.new_zeros(1, 1, 1).expand(bsz, r, n)
        return shape_only, shape_only, onehot, order, valid
    lz = torch.zeros(bsz, r, n, dtype=torch.float64, device=need.device)
    ld = torch.zeros_like(lz)
    lz.scatter_(2, neuron.unsqueeze(-1), coef[..., :1])
    ld.scatter_(2, neuron.unsqueeze(-1), coef[..., 1:])
    return lz, ld, onehot, order, valid


def _scatter_rows(low: Tensor, order: Tensor, valid: Tensor, n: int) -> Tensor:
    """Row values ``[B, R]`` back into ``[B, 6, n]`` (rows not computed: ``−inf``)."""
    bsz = low.shape[0]
    out = torch.full((bsz, 6 * n + 1), -math.inf, dtype=torch.float64, device=low.device)
    out.scatter_(1, torch.where(valid, order, torch.full_like(order, 6 * n)), low)
    return out[:, :-1].reshape(bsz, 6, n)


def _needed_rows(cheap: tuple[Tensor, ...], last: bool, alpha: float | None) -> Tensor:
    """Which bounds to back-substitute, ``[B, 6, n]``: where the cheap intervals leave the relaxation inexact.

    Output layer: its δ (the gap), both sides. Hidden ReLU/LeakyReLU: z where z is unstable, z̃ where z̃ is,
    δ where either is (the δ-chords and the interval candidate use δ's bounds). Identity layers: none (their
    relaxation is exact whatever the bounds).
    """
    l, u, dl, du, tl, tu = cheap
    no = torch.zeros_like(l, dtype=torch.bool)
    if last:
        return torch.stack([no, no, dl < du, dl < du, no, no], 1)
    if alpha is None:
        return torch.stack([no] * 6, 1)
    uz, ut = (l < 0) & (u > 0), (tl < 0) & (tu > 0)
    ud = (uz | ut) & (dl < du)
    return torch.stack([uz, uz, ud, ud, ut, ut], 1)


def _layer_bounds(pair: _Pair, k: int, relax: list[_Relax], reg: _Region,
                  rho: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, ...]:
    """``(l, u, δ_l, δ_u, l̃, ũ)`` of layer k: back-substituted (the input layer: every row, shared by all balls;
    deeper layers: the cheap intervals, refined where :func:`_needed_rows` says), then cross-tightened.

    On an ℓ2 ball the second layer's rows also get the sign relaxation of the first layer
    (:func:`probprune.bounds.signs.first_layer_low`; deeper layers' rows get it in :func:`_backsub`); each row
    keeps the larger of the two lower values."""
    n = pair.w[k].shape[0]
    if k == 0:
        eye = torch.eye(n, dtype=torch.float64, device=reg.centres.device)
        coef = torch.tensor(_ROWS, dtype=torch.float64, device=eye.device)
        lz = (coef[:, 0, None, None] * eye).reshape(6 * n, n)  # shared by every ball
        ld = (coef[:, 1, None, None] * eye).reshape(6 * n, n)
        neuron = torch.arange(n, device=eye.device).repeat(6)
        onehot = (coef[:, 0].repeat_interleave(n), coef[:, 1].repeat_interleave(n), neuron)  # rows ±e_i: gathers
        low = _backsub(lz, ld, k, pair, relax, reg, rho, onehot)
        l, dl, tl = low[:, :n], low[:, 2 * n:3 * n], low[:, 4 * n:5 * n]
        u, du, tu = -low[:, n:2 * n], -low[:, 3 * n:4 * n], -low[:, 5 * n:]
    else:
        l, u, dl, du, tl, tu = _interval_step(pair, k, relax[k - 1], rho[k])
        need = _needed_rows((l, u, dl, du, tl, tu), k == len(pair.w) - 1, pair.alpha[k] if k < len(pair.alpha)
                            else None)
        low = _refine(need, k, pair, relax, reg, rho)
        if k == 1 and signs.applies(pair, reg) and _plain(relax[0]):
            low = torch.maximum(low, _signed_layer_rows(need, pair, relax, reg, rho))
        return _intersect((l, u, dl, du, tl, tu), low)
    return _cross(l, u, dl, du, tl, tu)


def _signed_layer_rows(need: Tensor, pair: _Pair, relax: list[_Relax], reg: _Region,
                       rho: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The second layer's rows ``need`` (``[B, 6, n₁]``) by the sign relaxation of the first layer → ``[B, 6, n₁]``
    (−inf where not needed), in blocks of at most ``signs.ROW_BLOCK`` (ball × row × neuron) entries."""
    n = need.shape[-1]
    rows = _one_hot_rows(need, dense=False)
    if rows is None:
        return torch.full(need.shape, -math.inf, dtype=torch.float64, device=need.device)
    lz, ld, (cz, cd, nr), order, valid = rows
    bsz, r = order.shape
    width = pair.w[0].shape[0]
    rstep = max(1, min(r, signs.ROW_BLOCK // width))  # rows per block, then balls per block
    bstep = max(1, signs.ROW_BLOCK // (rstep * width))
    alt = torch.empty(bsz, r, dtype=torch.float64, device=order.device)
    for i in range(0, bsz, bstep):
        rx, rg, rh = _take(relax, reg, rho, torch.arange(i, min(i + bstep, bsz), device=order.device))
        for j in range(0, r, rstep):
            b_, r_ = slice(i, i + bstep), slice(j, j + rstep)
            alt[b_, r_] = signs.first_layer_low(lz[b_, r_], ld[b_, r_], pair, rx[0], rx[0].zb, rg, rh,
                                                (cz[b_, r_], cd[b_, r_], nr[b_, r_]))
    return _scatter_rows(alt, order, valid, n)


def _intersect(bounds: tuple[Tensor, ...], low: Tensor) -> tuple[Tensor, ...]:
    """Intervals ``bounds`` intersected with the back-substituted row values ``low`` ``[B, 6, n]``, cross-tightened."""
    l, u, dl, du, tl, tu = bounds
    l, dl, tl = torch.maximum(l, low[:, 0]), torch.maximum(dl, low[:, 2]), torch.maximum(tl, low[:, 4])
    u, du, tu = torch.minimum(u, -low[:, 1]), torch.minimum(du, -low[:, 3]), torch.minimum(tu, -low[:, 5])
    return _cross(l, u, dl, du, tl, tu)


def _cross(l: Tensor, u: Tensor, dl: Tensor, du: Tensor, tl: Tensor, tu: Tensor) -> tuple[Tensor, ...]:
    """Cross-tightening ``z̃ ∈ [l + δ_l, u + δ_u]``, ``δ ∈ [l̃ − u, ũ − l]`` (sums rounded outwards)."""
    ninf = torch.tensor(-math.inf, dtype=torch.float64, device=l.device)
    pinf = torch.tensor(math.inf, dtype=torch.float64, device=l.device)
    tl = torch.maximum(tl, torch.nextafter(l + dl, ninf))
    tu = torch.minimum(tu, torch.nextafter(u + du, pinf))
    dl = torch.maximum(dl, torch.nextafter(tl - u, ninf))
    du = torch.minimum(du, torch.nextafter(tu - l, pinf))
    return l, u, dl, du, tl, tu


def _propagate(pair: _Pair, reg: _Region, dt_t: torch.dtype, dt_p: torch.dtype,
               clip: Callable[[int, tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None
               ) -> tuple[list[_Relax], list[tuple[Tensor, ...]], list[tuple[Tensor, Tensor]]]:
    """Intervals ``(l, u, δ_l, δ_u, l̃, ũ)`` of every layer (``[B, n_k]`` each), hidden relaxations, rounding.

    ``clip(k, bounds)``: narrows hidden layer k's intervals before they are relaxed (branch and bound,
    :mod:`probprune.bounds.differential_split`; valid on the sub-domain it describes)."""
    relax: list[_Relax] = []
    bounds: list[tuple[Tensor, ...]] = []
    rho: list[tuple[Tensor, Tensor]] = []
    xmax = torch.maximum(reg.lo.abs(), reg.hi.abs())
    for k in range(len(pair.w)):
        if k == 0:
            h_t = h_p = xmax  # the input is taken as given in the dtype
        else:
            h_t, h_p = relax[k - 1].hmax_c, relax[k - 1].hpmax_c
        rho.append((_rho(pair.w[k], pair.b[k], h_t, dt_t), _rho(pair.wt[k], pair.bt[k], h_p, dt_p)))
        bounds.append(_layer_bounds(pair, k, relax, reg, rho))
        if clip is not None and k < len(pair.w) - 1:
            bounds[-1] = clip(k, bounds[-1])
        if k < len(pair.w) - 1:
            l, u, dl, du, tl, tu = bounds[-1]
            relax.append(_relax(l, u, dl, du, tl, tu, pair.alpha[k], dt_t, dt_p))
    return relax, bounds, rho


def _identical(target: Net, pruned: Net) -> bool:
    for lt, lp in zip(target.layers, pruned.layers):
        if lt.weight.dtype != lp.weight.dtype or not torch.equal(lt.weight, lp.weight):
            return False
        if (lt.bias is None) != (lp.bias is None) or (lt.bias is not None and not torch.equal(
                lt.bias, cast(Tensor, lp.bias))):
            return False
    return True


def _dtype(net: Net, forward_dtype: torch.dtype | None) -> torch.dtype:
    """The forward dtype of ``net``: float32/float64, every weight and bias exactly representable in it."""
    dt = forward_dtype or net.dtype
    _unit(dt, "forward_dtype")
    _check_forward_dtype((net,), dt)  # else the bound would be for other weights than those the user runs
    return dt


@dataclass(frozen=True, eq=False)
class _Analysis:
    reg: _Region
    pair: _Pair
    relax: list[_Relax]
    bounds: list[tuple[Tensor, ...]]
    rho: list[tuple[Tensor, Tensor]]


def _analyse(pair: _Pair, ball: BallSpec, centres: Tensor | None, dt_t: torch.dtype,
             dt_p: torch.dtype, halfwidth: Tensor | None = None) -> _Analysis:
    """The relaxations and bounds of one chunk of balls (``pair`` and the dtypes prepared once per call)."""
    reg = _region(ball, centres, pair.w[0].shape[1], pair.w[0].device, halfwidth)
    relax, bounds, rho = _propagate(pair, reg, dt_t, dt_p)
    return _Analysis(reg, pair, relax, bounds, rho)


def _assumptions(ball: BallSpec, dt: str) -> tuple[str, ...]:
    box = f" ∩ box {ball.box}" if ball.box is not None else ""
    return (f"ball: {ball.norm} radius {ball.radius!r}{box}",
            "FCN, relu/leaky_relu/identity activations, biases allowed and may differ",
            f"floating point: covers exact arithmetic and forward passes in {dt} (IEEE round-to-nearest, "
            "any summation order, no TF32); bound computed in float64 with every rounding covered")


def _optimise_slopes(an: _Analysis, dt_t: torch.dtype, dt_p: torch.dtype, steps: int, lr: float = 0.1
                     ) -> tuple[Tensor, Tensor]:
    """Output-difference intervals tightened by optimising the unstable neurons' lower slopes (α-CROWN style).

    Per ball and hidden neuron, the lower slopes λ of ``h`` and ``h̃`` are free parameters in ``[α, 1]``
    (every such line is valid: ``λz ≤ σ(z)``), projected before every evaluation; ``steps`` Adam steps on
    the gap value ``sqrt(Σ max(lo², hi²))`` (hidden intervals fixed from the propagation). Every iterate's
    intervals are valid bounds, so their intersection over all iterates (and the propagation's) is returned.
    """
    m, k_out = an.pair.w[-1].shape[0], len(an.pair.w) - 1
    _, _, lo, hi, _, _ = an.bounds[-1]
    eye = torch.eye(m, dtype=torch.float64, device=lo.device)
    lz, ld = torch.zeros(2 * m, m, dtype=torch.float64, device=lo.device), torch.cat([eye, -eye])
    params = {k: (an.relax[k].hl[0].detach().clone().requires_grad_(True),
                  an.relax[k].tl[0].detach().clone().requires_grad_(True))
              for k in range(len(an.relax)) if an.pair.alpha[k] is not None}
    opt = torch.optim.Adam([p for pp in params.values() for p in pp], lr=lr)
    for it in range(steps + 1):
        relax = [_relax(*cast("tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]", an.bounds[k]),
                        an.pair.alpha[k], dt_t, dt_p, lams=params[k]) if k in params
                 else an.relax[k] for k in range(len(an.relax))]
        low = _backsub(lz, ld, k_out, an.pair, relax, an.reg, an.rho)
        lo_i, hi_i = torch.maximum(low[:, :m], lo), torch.minimum(-low[:, m:], hi)
        with torch.no_grad():
            lo, hi = lo_i.detach(), hi_i.detach()
        if it == steps or not params:
            break
        opt.zero_grad()
        torch.maximum(lo_i * lo_i, hi_i * hi_i).sum(-1).clamp_min(1e-300).sqrt().sum().backward()
        opt.step()
    return lo, hi


def _chunks(pair: _Pair, ball: BallSpec, centres: Tensor, dt_t: torch.dtype, dt_p: torch.dtype, batch_size: int,
            cls: Tensor | None = None, optimise: int = 0, optimise_margins: int = 0,
            squares: list[Tensor] | None = None, halfwidth: Tensor | None = None
            ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One propagation per chunk of balls: the output differences' intervals ``[B, m]`` (and, given F's
    classes ``cls``, the certified margins ``[B]`` of both nets, from the same relaxations); ``optimise``
    steps of slope optimisation for the intervals (:func:`_optimise_slopes`), ``optimise_margins`` steps for
    the margins of the balls the plain relaxation leaves uncertified (:func:`_optimise_margins`). Given a list
    ``squares``, each chunk appends its chord bounds on ``‖f − F‖₂²`` ``[b]`` (:func:`_chord_square`)."""
    los, his, mts, mps = [], [], [], []
    for start in range(0, centres.shape[0], batch_size):
        an = _analyse(pair, ball, centres[start:start + batch_size], dt_t, dt_p,
                      None if halfwidth is None else halfwidth[start:start + batch_size])
        _, _, dl, du, _, _ = an.bounds[-1]  # of the computed outputs' difference (rounding inside)
        if squares is not None:  # the chord of the plain intervals: its optimised row is never looser
            squares.append(_chord_square(an, dl, du, dt_t, dt_p, optimise))
        if optimise:
            dl, du = _optimise_slopes(an, dt_t, dt_p, optimise)
        los.append(dl)
        his.append(du)
        if cls is not None:
            mt, mp = _margins(an, cls[start:start + batch_size])
            if optimise_margins:
                mt, mp = _reoptimise_open(an, cls[start:start + batch_size], mt, mp, dt_t, dt_p, optimise_margins)
            mts.append(mt)
            mps.append(mp)
    if cls is None:
        return torch.cat(los), torch.cat(his), None, None
    return torch.cat(los), torch.cat(his), torch.cat(mts), torch.cat(mps)


def _chord_square(an: _Analysis, lo: Tensor, hi: Tensor, dt_t: torch.dtype, dt_p: torch.dtype,
                  steps: int = 0) -> Tensor:
    """Upper bound ``[b]`` on ``‖v‖₂² = Σ_j v_j²`` over the ball, ``v = f(x) − F(x)`` with ``v_j ∈ [lo_j, hi_j]``.

    The convex ``v_j²`` lies below its chord on ``[lo_j, hi_j]``: ``v_j² ≤ (lo_j + hi_j) v_j − lo_j hi_j``, so
    ``‖v‖₂² ≤ max_x wᵀv(x) − Σ_j lo_j hi_j`` with ``w = lo + hi``: one more back-substituted row (``−wᵀδ`` on the
    output layer's δ) instead of the per-coordinate ``Σ_j max(lo_j², hi_j²)``, which assumes every coordinate at
    its extreme at once; ``steps`` > 0: that row's lower slopes optimised (:func:`_optimised_rows`).
    Rounding: ``fl(lo + hi)`` is off by ≤ ``u|w|`` per coordinate (times ``|v_j| ≤ M_j``),
    ``Σ lo_j hi_j`` by ≤ ``γ_{m+1} Σ |lo_j hi_j|``, the final sum by ≤ ``2u`` of its parts; all added as error.
    """
    k = len(an.pair.w) - 1
    w = lo + hi
    ld = (-w).unsqueeze(1)
    valid = torch.ones(ld.shape[:2], dtype=torch.bool, device=ld.device)
    low = _optimised_rows(an, k, torch.zeros_like(ld), ld, valid, dt_t, dt_p, steps)[:, 0]  # ≤ min −wᵀv
    prod = lo * hi
    cs = (-prod).sum(-1)
    mag = torch.maximum(lo.abs(), hi.abs())
    m = lo.shape[-1]
    err = _g2(m + 2) * prod.abs().sum(-1) + 2.0 * _U * (w.abs() * mag).sum(-1) * (1.0 + _g2(m + 2)) \
        + 2.0 * _U * (low.abs() + cs.abs())
    return (-_down(low - cs, err)).clamp_min(0.0)


def _reoptimise_open(an: _Analysis, c: Tensor, mt: Tensor, mp: Tensor, dt_t: torch.dtype, dt_p: torch.dtype,
                     steps: int) -> tuple[Tensor, Tensor]:
    """The margins with the balls not certified by the plain relaxation (a margin ≤ 0) slope-optimised; each
    ball keeps the larger of its two valid lower bounds."""
    idx = (~((mt > 0) & (mp > 0))).nonzero().flatten()
    if idx.numel() == 0:
        return mt, mp
    relax, reg, rho = _take(an.relax, an.reg, an.rho, idx)
    sub = _Analysis(reg, an.pair, relax, [tuple(t[idx] for t in b) for b in an.bounds], rho)
    ot, op = _optimise_margins(sub, c[idx], dt_t, dt_p, steps)
    mt, mp = mt.clone(), mp.clone()
    mt[idx] = torch.maximum(mt[idx], ot)
    mp[idx] = torch.maximum(mp[idx], op)
    return mt, mp


def _gap_bound(lo: Tensor, hi: Tensor, ball: BallSpec, centres: Tensor, dt_t: torch.dtype,
               dt_p: torch.dtype, squares: Tensor | None = None) -> DifferentialBound:
    """``‖f(x) − F(x)‖₂ ≤ sqrt(Σ_j max(lo_j², hi_j²))`` — or ``sqrt(squares)`` where that (another valid upper
    bound on ``‖f − F‖₂²``, :func:`_chord_square`) is smaller — scaled for the forward passes' and our own
    rounding (the sum of squares' own rounding: the factor ``1 + 2γ_{m+5}``)."""
    dt_name = "float32" if torch.float32 in (dt_t, dt_p) else "float64"
    m = lo.shape[-1]
    sq = torch.maximum(lo * lo, hi * hi).sum(-1)
    if squares is not None:
        sq = torch.minimum(sq, squares)
    u_d = max(_UNIT[dt_t], _UNIT[dt_p])
    value = sq.sqrt() * ((1.0 + _gamma(m + 3, u_d)) * (1.0 + _g2(m + 3))) + _TINY
    if not bool(torch.isfinite(value).all()):
        raise ProbPruneError("differential bound: overflows float64; refused")
    return DifferentialBound(value, lo, hi, ball, centres, dt_name, _assumptions(ball, dt_name))


def _zero_bound(ball: BallSpec, centres: Tensor, m: int, dt_t: torch.dtype, dt_p: torch.dtype) -> DifferentialBound:
    """Bitwise identical networks: the gap is 0."""
    dt_name = "float32" if torch.float32 in (dt_t, dt_p) else "float64"
    z = torch.zeros(centres.shape[0], m, dtype=torch.float64, device=centres.device)
    return DifferentialBound(z[:, 0], z, z.clone(), ball, centres, dt_name,
                             (*_assumptions(ball, dt_name), "the networks are bitwise identical: gap 0"))


def _check_batch_size(batch_size: object) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ProbPruneError(f"batch_size={batch_size!r}: must be an integer >= 1")


def _hw(reg: _Region) -> Tensor | None:
    """The checked per-ball half-widths of a region, or ``None`` (a scalar radius)."""
    return reg.radius if isinstance(reg.radius, Tensor) else None


def differential_bound(target: Net, pruned: Net, ball: BallSpec, *, centres: Tensor | None = None,
                       forward_dtype: torch.dtype | None = None, batch_size: int = 32,
                       optimise: int = 0, halfwidth: Tensor | None = None) -> DifferentialBound:
    """Certified upper bound on ``sup_{x ∈ ball} ‖f(x) − F(x)‖₂`` by differential back-substitution.

    Args:
        target: F (single FCN ``Net``, relu, leaky_relu (slope in [0, 1]) or identity hidden activations,
            biases allowed).
        pruned: f, same architecture.
        ball: radius, norm (``l2``/``linf``), optional box; its centre unless ``centres`` is given.
        centres: ``[B, d]`` centres, one ball each (vectorised), overriding ``ball.centre``.
        forward_dtype: the dtype the user's forward passes run in (default: each net's weight dtype).
        batch_size: balls per vectorised chunk (within a chunk, balls are grouped by how many rows they need,
            so larger chunks pad less; memory ~ rows × neurons alive in either net, per ball).
        optimise: gradient steps on the unstable neurons' lower slopes (0: none; each costs about one
            back-substitution of the output rows).
        halfwidth: ``[B, d]`` per-ball ℓ∞ half-widths (``linf`` only): ball b is the box ``c_b ± h_b`` (∩ box),
            replacing the radius.

    Returns:
        :class:`DifferentialBound` with ``value`` ``[B]`` (``B = 1`` without ``centres``).

    >>> import torch
    >>> from probprune.config import NetSpec
    >>> F = Net.from_weights(NetSpec(widths=(2, 2)), [torch.eye(2)])
    >>> f = Net.from_weights(NetSpec(widths=(2, 2)), [torch.diag(torch.tensor([1.0, 0.0]))])
    >>> b = differential_bound(F, f, BallSpec(radius=1.0, centre=(0.0, 2.0)))
    >>> abs(float(b.value[0]) - 3.0) < 1e-5   # f − F = (0, −x₂), x₂ ∈ [1, 3]
    True
    """
    _check_batch_size(batch_size)
    if isinstance(optimise, bool) or not isinstance(optimise, int) or optimise < 0:
        raise ProbPruneError(f"optimise={optimise!r}: must be an integer >= 0")
    pair0 = _prepare(target, pruned)
    reg0 = _region(ball, centres, pair0.w[0].shape[1], pair0.w[0].device, halfwidth)
    dt, dt_p = _dtype(target, forward_dtype), _dtype(pruned, forward_dtype)
    if _identical(target, pruned):
        return _zero_bound(ball, reg0.centres, pair0.w[-1].shape[0], dt, dt_p)
    squares: list[Tensor] = []
    lo, hi, _, _ = _chunks(pair0, ball, reg0.centres, dt, dt_p, batch_size, optimise=optimise, squares=squares,
                           halfwidth=_hw(reg0))
    return _gap_bound(lo, hi, ball, reg0.centres, dt, dt_p, torch.cat(squares))


# ---------------------------------------------------------------------------------------- lower side


def _search_region(reg: _Region) -> Region:
    """The engine's region of the balls of ``reg``."""
    return Region(reg.centres, reg.radius, cast(Literal["l2", "linf"], reg.norm), reg.box)


def _inside(x: Tensor, reg: _Region) -> Tensor:
    """Whether each ``x`` ``[..., B, d]`` is provably in the closed ball ∩ box (float64 check with margin)."""
    return _search_region(reg).inside(x)


def _ascend(objective: Callable[[Tensor], Tensor], reg: _Region, n_restarts: int, n_steps: int, step: float,
            generator: torch.Generator, starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Projected momentum ascent (:func:`probprune.search.maximise`) on ``objective(x [R, B, d]) → [R, B]``.

    Budget: ``4·n_restarts`` starts (the given ones, the centre, random points) take ``⌊n_steps/4⌋`` steps; the
    ``n_restarts`` best per ball take ``n_steps`` more with a fresh schedule and power-method (Frank–Wolfe) trials.
    Returns the best feasible value and point per ball.
    """
    budget = Budget(n_restarts=max(n_restarts, 1) if n_steps else n_restarts, n_steps=n_steps, step_size=step,
                    n_screen=4, screen_steps=n_steps // 4, screen_step_size=2.0 * step, power=True)
    found = maximise(objective, _search_region(reg), budget, generator, starts=starts)
    return found.value, found.x


def gap_search(target: Net, pruned: Net, ball: BallSpec, generator: torch.Generator, *,
               centres: Tensor | None = None, n_restarts: int = 8, n_steps: int = 100,
               step: float = 0.25, starts: Tensor | None = None, halfwidth: Tensor | None = None) -> GapWitness:
    """Lower bound on the gap over the ball by projected momentum ascent (float64), with the witnesses.

    The search engine :func:`probprune.search.maximise`: the given ``starts``, the centre and random points
    (ℓ∞: vertices and uniform in the box; ℓ2: on the sphere; some near the centre), ``4·n_restarts`` in all,
    projected into the ball ∩ box, screened by ``⌊n_steps/4⌋`` steps; the ``n_restarts`` best per ball climb
    ``n_steps`` more (normalised heavy-ball steps, cosine schedule, power-method trials). The returned value is
    the float64 ``‖f(x) − F(x)‖₂`` at a point checked to lie in the closed ball ∩ box.

    Args:
        target, pruned: F and f (single FCN nets).
        ball: the ball; ``centres`` ``[B, d]`` overrides its centre (vectorised).
        generator: randomness of the starts.
        n_restarts, n_steps: budget. step: initial step as a fraction of the radius.
        starts: ``[S, d]`` extra starting points (e.g. data points, or a previous best), projected
            into each ball first.
        halfwidth: ``[B, d]`` per-ball ℓ∞ half-widths (as :func:`differential_bound`).
    """
    pair = _prepare(target, pruned)
    for name, v in (("n_restarts", n_restarts), ("n_steps", n_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ProbPruneError(f"{name}={v!r}: must be an integer >= 0")
    reg = _region(ball, centres, pair.w[0].shape[1], pair.w[0].device, halfwidth)
    if starts is not None and (not isinstance(starts, Tensor) or starts.dim() != 2
                               or starts.shape[1] != reg.centres.shape[1]):
        shape = tuple(starts.shape) if isinstance(starts, Tensor) else type(starts).__name__
        raise ProbPruneError(f"starts: shape {shape}, expected [S, {reg.centres.shape[1]}]")
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)

    def obj(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        diff = cast(Tensor, p64(flat)) - cast(Tensor, t64(flat))
        return (diff * diff).sum(-1).reshape(x.shape[:-1])  # squared: smooth where f = F

    _, xb = _ascend(obj, reg, n_restarts, n_steps, step, generator, starts)
    with torch.no_grad():
        val = obj(xb.unsqueeze(0))[0].sqrt()
    return GapWitness(value=val.detach(), x=xb.detach())


# ---------------------------------------------------------------------------------------- agreement


def _disagree(t64: Net, p64: Net, x: Tensor) -> Tensor:
    """Whether top-1 classes of F and f differ at ``x`` ``[N, d]`` with clear margins (float64)."""
    ft, fp = cast(Tensor, t64(x)), cast(Tensor, p64(x))
    tol_t = 1e-9 * (1.0 + ft.abs().amax(-1))
    tol_p = 1e-9 * (1.0 + fp.abs().amax(-1))
    t2, p2 = ft.topk(2, dim=-1).values, fp.topk(2, dim=-1).values
    clear = (t2[:, 0] - t2[:, 1] > tol_t) & (p2[:, 0] - p2[:, 1] > tol_p)
    return clear & (ft.argmax(-1) != fp.argmax(-1))


def _margin_rows(an: _Analysis, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``e_c − e_j`` on F's logits ``z`` and on f's ``z + δ``: ``(lz, ld)`` ``[b, 2m, m]`` and which rows
    are margins (``j ≠ c``) ``[b, 2m]``."""
    m = an.pair.w[-1].shape[0]
    eye = torch.eye(m, dtype=torch.float64, device=c.device)
    rows = eye[c].unsqueeze(1) - eye.unsqueeze(0)  # [b, m, m]: e_c − e_j (row j = c is zero)
    not_c = eye[c] == 0
    return torch.cat([rows, rows], 1), torch.cat([torch.zeros_like(rows), rows], 1), torch.cat([not_c, not_c], 1)


def _min_margins(low: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``[b]`` minima over the margin rows of F (first half of ``low``) and of f (second half)."""
    m = low.shape[1] // 2
    low = torch.where(valid, low, torch.full_like(low, math.inf))
    return low[:, :m].amin(-1), low[:, m:].amin(-1)


def _margins(an: _Analysis, c: Tensor) -> tuple[Tensor, Tensor]:
    """Certified lower bounds ``[b]`` of ``min_{x, j≠c} F_c − F_j`` and of the same for f (rounding inside).

    Rows ``e_c − e_j`` on F's logits ``z`` and on f's ``z + δ``, back-substituted through the chunk's
    relaxations (no second propagation).
    """
    both, ld, valid = _margin_rows(an, c)
    low = _backsub(both, ld, len(an.pair.w) - 1, an.pair, an.relax, an.reg, an.rho)  # rounding inside
    return _min_margins(low, valid)


def _optimised_rows(an: _Analysis, k: int, lz: Tensor, ld: Tensor, valid: Tensor, dt_t: torch.dtype,
                    dt_p: torch.dtype, steps: int, lr: float = 0.25, onehot: _OneHot | None = None,
                    target: float = math.inf) -> Tensor:
    """Lower values ``[b, R]`` of the rows ``lzᵀ z_k + ldᵀ δ_k`` with the lower slopes optimised per row.

    α-CROWN style: per ball, row and hidden neuron beneath layer k, the lower slopes λ of ``h`` and ``h̃``
    are free in ``[α, 1]`` (every such line is valid), projected into that range after every Adam step and
    again by :func:`_act_lines` before every evaluation; the intervals are those of ``an``. Each iterate's
    back-substituted value is a valid lower bound of its row (the first iterate is the plain relaxation), so
    the row's maximum over the iterates is one. A row stops pulling once that maximum is > ``target``; the
    loop ends early once every ``valid`` row is.
    """
    r = lz.shape[1]
    params = {j: tuple(t.detach().unsqueeze(1).expand(-1, r, -1).clone().requires_grad_(True)
                       for t in (an.relax[j].hl[0], an.relax[j].tl[0]))
              for j in range(k) if an.pair.alpha[j] is not None}
    opt = torch.optim.Adam([p for pp in params.values() for p in pp], lr=lr) if params and steps else None
    best = torch.full(lz.shape[:2], -math.inf, dtype=torch.float64, device=lz.device)
    if opt is not None:  # the plain relaxation's value itself (iterate 0 below may differ from it by rounding)
        with torch.no_grad():
            best = _backsub(lz, ld, k, an.pair, an.relax, an.reg, an.rho, onehot)
    for it in range(steps + 1):
        relax = an.relax if opt is None else [
            _relax(*cast("tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]",
                         tuple(t.unsqueeze(1) for t in an.bounds[j])), an.pair.alpha[j], dt_t, dt_p,
                   lams=cast("tuple[Tensor, Tensor]", params[j])) if j in params else an.relax[j]
            for j in range(len(an.relax))]
        low = _backsub(lz, ld, k, an.pair, relax, an.reg, an.rho, onehot)
        with torch.no_grad():
            best = torch.maximum(best, low.detach())
            open_ = valid & ~(best > target)
        if opt is None or it == steps or not bool(open_.any()):
            break
        opt.zero_grad()
        (-(low * open_).sum()).backward()
        opt.step()
        with torch.no_grad():
            for j, pp in params.items():
                for p in pp:
                    p.clamp_(cast(float, an.pair.alpha[j]), 1.0)
    return best


def _optimise_margins(an: _Analysis, c: Tensor, dt_t: torch.dtype, dt_p: torch.dtype, steps: int,
                      lr: float = 0.25) -> tuple[Tensor, Tensor]:
    """Certified margins ``[b]`` of F and f: the margin rows ``e_c − e_j`` back-substituted with per-row
    optimised lower slopes until > 0 (:func:`_optimised_rows`; the hidden intervals stay the propagation's)."""
    both, ld, valid = _margin_rows(an, c)
    best = _optimised_rows(an, len(an.pair.w) - 1, both, ld, valid, dt_t, dt_p, steps, lr, target=0.0)
    return _min_margins(best, valid)


def _attack(t64: Net, p64: Net, ball: BallSpec, sub: Tensor, csub: Tensor, generator: torch.Generator,
            n_restarts: int, n_steps: int, halfwidth: Tensor | None = None) -> list[Tensor | None]:
    """Per ball of ``sub`` (centres ``[b, d]``, F's classes ``csub``): a float64 input of the ball ∩ box where
    the top-1 classes of F and f differ with clear margins, or ``None`` (projected ascent on
    ``max_j (f_j − f_c) − max_j (F_j − F_c)``; the centres themselves are candidates too)."""
    m = cast(Tensor, t64(sub[:1])).shape[-1]
    reg = _region(ball, sub, sub.shape[1], sub.device, halfwidth)
    mask = torch.eye(m, dtype=torch.float64, device=sub.device)[csub].bool()

    def obj(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ft = cast(Tensor, t64(flat)).reshape(*x.shape[:-1], m)
        fp = cast(Tensor, p64(flat)).reshape(*x.shape[:-1], m)
        oc = ft.gather(-1, csub.expand(x.shape[0], -1).unsqueeze(-1))
        pc = fp.gather(-1, csub.expand(x.shape[0], -1).unsqueeze(-1))
        neg = torch.full_like(ft, -math.inf)
        up = torch.where(mask, neg, fp - pc).amax(-1)
        ut = torch.where(mask, neg, ft - oc).amax(-1)
        return up - ut

    _, xb = _ascend(obj, reg, n_restarts, n_steps, 0.25, generator)
    with torch.no_grad():
        cand = torch.cat([xb, sub])
        dis = _disagree(t64, p64, cand)
        rad = torch.cat([reg.radius, reg.radius]) if isinstance(reg.radius, Tensor) else reg.radius
        ins = _inside(cand, _Region(torch.cat([sub, sub]), rad, reg.norm, reg.box, reg.lo, reg.hi))
    nsub = sub.shape[0]
    out: list[Tensor | None] = [None] * nsub
    for j in range(nsub):
        for cand_j in (j, j + nsub):
            if bool(dis[cand_j]) and bool(ins[cand_j]):
                out[j] = cand[cand_j].detach().clone()
                break
    return out


def _flip_point(net: Net, c0: Tensor, x1: Tensor, cls: Tensor, steps: int = 48) -> Tensor:
    """Per ball, ``t ∈ [0, 1]`` where ``net``'s top-1 class first leaves ``cls`` along ``c0 + t (x1 − c0)``
    (bisection; ``t = 1`` where it keeps ``cls`` at ``x1``). ``c0``, ``x1`` ``[b, d]``."""
    lo = torch.zeros(c0.shape[0], dtype=torch.float64, device=c0.device)
    hi = torch.ones_like(lo)
    flips = cast(Tensor, net(x1)).argmax(-1) != cls
    for _ in range(steps):
        mid = (lo + hi) / 2
        moved = cast(Tensor, net(c0 + mid.unsqueeze(-1) * (x1 - c0))).argmax(-1) != cls
        hi = torch.where(moved, mid, hi)
        lo = torch.where(moved, lo, mid)
    return torch.where(flips, hi, torch.ones_like(hi))


def _boundary_witness(t64: Net, p64: Net, ball: BallSpec, sub: Tensor, csub: Tensor, generator: torch.Generator,
                      n_restarts: int, n_steps: int, halfwidth: Tensor | None = None) -> list[Tensor | None]:
    """Witnesses between two decision boundaries: where one net leaves class c inside the ball, the two nets'
    boundaries along a segment from the centre almost never coincide, and a point between them disagrees.

    Per net, projected ascent lowers its own margin ``g_c − max_{j≠c} g_j``; from the centre to the lowest
    point found, bisection finds where each net first leaves c; the point halfway between the two (and the
    end point) is checked for a clear disagreement (:func:`_disagree`) and for lying in the ball ∩ box.
    """
    m = cast(Tensor, t64(sub[:1])).shape[-1]
    reg = _region(ball, sub, sub.shape[1], sub.device, halfwidth)
    mask = torch.eye(m, dtype=torch.float64, device=sub.device)[csub].bool()
    out: list[Tensor | None] = [None] * sub.shape[0]
    for net in (t64, p64):
        def obj(x: Tensor, net: Net = net) -> Tensor:
            y = cast(Tensor, net(x.reshape(-1, x.shape[-1]))).reshape(*x.shape[:-1], m)
            yc = y.gather(-1, csub.expand(x.shape[0], -1).unsqueeze(-1)).squeeze(-1)
            return torch.where(mask, torch.full_like(y, -math.inf), y).amax(-1) - yc

        _, x1 = _ascend(obj, reg, n_restarts, n_steps, 0.25, generator)
        with torch.no_grad():
            tt, tp = _flip_point(t64, sub, x1, csub), _flip_point(p64, sub, x1, csub)
            for t in ((tt + tp) / 2, torch.ones_like(tt)):
                cand = sub + t.unsqueeze(-1) * (x1 - sub)
                ok = _disagree(t64, p64, cand) & _inside(cand, reg)
                for j in range(sub.shape[0]):
                    if out[j] is None and bool(ok[j]):
                        out[j] = cand[j].detach().clone()
    return out


def certified_agreement(target: Net, pruned: Net, ball: BallSpec, *, centres: Tensor | None = None,
                        forward_dtype: torch.dtype | None = None, attack: bool = True,
                        generator: torch.Generator | None = None, n_restarts: int = 4, n_steps: int = 50,
                        batch_size: int = 32, optimise: int = 0, halfwidth: Tensor | None = None
                        ) -> AgreementResult:
    """Certify (or refute, with a witness) that f and F have the same top-1 class everywhere in the ball.

    ``c`` is F's top-1 class at the centre (float64). Certified means: the back-substituted lower
    bounds of ``F_c − F_j`` and of ``f_c − f_j`` (joint (z, δ) relaxation; f's logits are ``z + δ``),
    less both forward passes' rounding bounds, are > 0 for every ``j ≠ c`` — so ``c`` is the unique
    top-1 class of both nets at every input of the ball, exactly and as computed. Otherwise an
    attack (projected ascent on ``max_j (f_j − f_c) − max_j (F_j − F_c)``) looks for a witness where
    the top-1 classes differ in float64 with clear margins: ``"refuted"`` — where it finds none, each net's own
    margin is attacked and a point between the two decision boundaries along a segment from the centre is tried
    (:func:`_boundary_witness`); else ``"not certified"``.
    The same propagation also gives the certified gap (``AgreementResult.bound``, as
    :func:`differential_bound`).

    Args:
        target, pruned: F and f (single FCN classifiers, ≥ 2 outputs).
        ball: the ball; ``centres`` ``[B, d]`` overrides its centre.
        forward_dtype: dtype of the user's forward passes (default: the weights').
        attack: search for a witness where not certified. generator: its randomness (default seed 0).
        n_restarts, n_steps: attack budget. batch_size: balls per vectorised chunk.
        optimise: Adam steps of per-row slope optimisation of the margins of the balls the plain relaxation
            leaves uncertified (0: none; stops early once every margin of the chunk is certified).
        halfwidth: ``[B, d]`` per-ball ℓ∞ half-widths (as :func:`differential_bound`).
    """
    _check_batch_size(batch_size)
    if isinstance(optimise, bool) or not isinstance(optimise, int) or optimise < 0:
        raise ProbPruneError(f"optimise={optimise!r}: must be an integer >= 0")
    pair0 = _prepare(target, pruned)
    m = pair0.w[-1].shape[0]
    if m < 2:
        raise ProbPruneError(f"certified agreement: the network has {m} output; a classifier needs >= 2")
    reg0 = _region(ball, centres, pair0.w[0].shape[1], pair0.w[0].device, halfwidth)
    hw = _hw(reg0)
    dt_t, dt_p = _dtype(target, forward_dtype), _dtype(pruned, forward_dtype)
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    with torch.no_grad():
        cls = cast(Tensor, t64(reg0.centres)).argmax(-1)
    squares: list[Tensor] = []
    lo, hi, mt_, mp_ = _chunks(pair0, ball, reg0.centres, dt_t, dt_p, batch_size, cls, optimise_margins=optimise,
                               squares=squares, halfwidth=hw)
    mt, mp = cast(Tensor, mt_), cast(Tensor, mp_)  # given classes, _chunks returns the margins
    bound = _zero_bound(ball, reg0.centres, m, dt_t, dt_p) if _identical(target, pruned) else \
        _gap_bound(lo, hi, ball, reg0.centres, dt_t, dt_p, torch.cat(squares))
    verdicts: list[Verdict] = ["certified" if bool(a > 0) and bool(b > 0) else "not certified"
                               for a, b in zip(mt, mp)]
    witnesses: list[Tensor | None] = [None] * len(verdicts)
    open_idx = [i for i, v in enumerate(verdicts) if v != "certified"]
    if attack and open_idx:
        gen = generator if generator is not None else torch.Generator(device=cls.device).manual_seed(0)
        sub_hw = None if hw is None else hw[open_idx]
        found = _attack(t64, p64, ball, reg0.centres[open_idx], cls[open_idx], gen, n_restarts, n_steps, sub_hw)
        rest = [k for k, w in enumerate(found) if w is None]
        if rest:  # no witness yet: look between the two decision boundaries
            more = _boundary_witness(t64, p64, ball, reg0.centres[open_idx][rest], cls[open_idx][rest], gen,
                                     n_restarts, n_steps, None if sub_hw is None else sub_hw[rest])
            for k, w in zip(rest, more):
                found[k] = w
        for i, w in zip(open_idx, found):
            if w is not None:
                verdicts[i] = "refuted"
                witnesses[i] = w
    return AgreementResult(tuple(verdicts), cls, mt, mp, tuple(witnesses), bound)
