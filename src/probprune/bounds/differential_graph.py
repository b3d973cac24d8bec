"""The differential bound on graphs: back-substitution of (value, difference) pairs on a DAG, any ball.

``docs/certified.md`` §7.5 derives every rule. Target F and pruned f are two
:class:`~probprune.nets.graph.Graph`\\ s of one structure. Every node v carries the target's value ``v`` and the
difference ``Δv = ṽ − v`` (pruned minus target, both *as computed* by the float64 forward pass), with per-entry
intervals of ``v``, ``Δv`` and ``ṽ = v + Δv`` (cross-tightened after every node). A linear objective
``Λ_vᵀ v + Λ_Δᵀ Δv`` at a node is bounded below by walking the DAG backwards (CROWN/DeepPoly style) down to the
input, where it is minimised exactly over the ball (:func:`probprune.bounds.differential._min_linear`):

* linear nodes (linear, conv, affine scale-shift, average and adaptive-average pools) ``v' = L v + b``,
  ``ṽ' = L̃ ṽ + b̃``: ``Δv' = L̃ Δv − L_D v + (b̃ − b)`` with ``L_D = L − L̃`` (the op with the weight difference,
  linear in the weight), so the objective becomes ``(Λ_v L − Λ_Δ L_D) v + (Λ_Δ L̃) Δv + Λ_vᵀb + Λ_Δᵀ(b̃ − b)``;
  the products ``Λ L`` are vector-Jacobian products of the op (``coef @ W`` for linear, the transposed
  convolution for conv, the pools' adjoints) — no dense matrix is formed;
* reshape, zero pad, identity: exact re-indexing of the coefficients (pad: crop);
* ``add``: both inputs receive the coefficients (``v = a + b``, ``Δv = Δa + Δb``); several consumers' coefficients
  are summed; ``cat``: the coefficients are split;
* ReLU and LeakyReLU (slope in [0, 1]): the joint (z, δ) relaxations of :mod:`probprune.bounds.differential`
  (``_relax``/``_relax_step``: independent, δ-chord and interval candidates, three decompositions);
* ReLU6 and Hardtanh as ``a + relu(z − a) − relu(z − b)``: the same joint relaxation for each of the two pairs;
* every other activation (ELU, GELU, SiLU, tanh, sigmoid, softplus, LeakyReLU outside [0, 1])
  and max pools: intervals — the objective's part at the node is minimised over its box and back-substitution
  stops there. Activations: ``σ(z) ∈ σ(mid) ± L·rad`` (L the Lipschitz constant; monotone kinds: ``[σ(l), σ(u)]``),
  ``|σ(z̃) − σ(z)| ≤ L|δ|``; max pool: ``max(z + δ) − max(z) ∈ [min δ, max δ]`` over each window.

Intervals come first from one cheap interval step per node; the inputs of activations and max pools and the
output are then refined by back-substitution of the rows where the cheap intervals leave the relaxation
inexact (ReLU: the unstable neurons), each ball with its own rows. A linear node reading the input directly is
bounded exactly over the box (``c ± |L| r``) and, for ℓ2, by ``L c ± r‖L_i‖₂``. On ℓ2 balls, where every row of a
back-substitution has reached a ReLU-family node fed by a fully connected node on the input, the rows are also
bounded by the sign relaxation of that layer (:mod:`probprune.bounds.signs`, ``docs/certified.md`` §6.2) and keep
the larger value.

Floating point: the bound covers the exact-arithmetic gap and the two graphs **evaluated in float64** (float32
parameters cast exactly; IEEE round-to-nearest, any summation order, no TF32/FFT/Winograd convolution;
transcendental activations within their assumed ulps). Every forward rounding ``|ρ| ≤ γ_{n+1}(|L||v| + |b|)``
enters the slack through the signed coefficients, and every rounding of the bound's own arithmetic is covered.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.nn import grad as nn_grad

from probprune.bounds import signs
from probprune.bounds.differential import (
    AgreementResult,
    DifferentialBound,
    GapWitness,
    Verdict,
    _ascend,
    _attack,
    _check_batch_size,
    _down,
    _g2,
    _min_linear,
    _Region,
    _region,
    _Relax,
    _relax,
    _relax_step,
    _rowdot,
    _two_diff,
)
from probprune.bounds.graph import check_graph_pair
from probprune.bounds.norms import _gamma
from probprune.config import BallSpec, ProbPruneError
from probprune.nets.graph import Activation, Graph, Node, apply_node

__all__ = ["graph_certified_agreement", "graph_differential_bound", "graph_gap_search"]

_U = 2.0 ** -53
_ETA = 2.0 ** -1074
_TINY = 2.0 ** -960
_LINEAR = ("linear", "conv", "affine", "avgpool", "adaptive_avgpool")
_EXACT = ("reshape", "pad", "identity")
_MONOTONE = ("relu6", "hardtanh", "tanh", "sigmoid", "softplus")
_ROWS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (1.0, 1.0), (-1.0, -1.0))
_ROW_BUDGET = 1 << 22  # entries of the largest coefficient tensor of one back-substitution chunk
_F64 = torch.float64

Bounds = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # (l, u, δ_l, δ_u, l̃, ũ), [B, n] each


# ---------------------------------------------------------------------------------------- setup


@dataclass(frozen=True, eq=False)
class _Lin:
    """The linear part of one node for both graphs (float64), its biases, and the exact weight difference."""

    node: Node
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    pt: dict[str, Tensor]
    pp: dict[str, Tensor]
    pd: dict[str, Tensor] | None  # fl(L − L̃) (None: identical parameters)
    pe: dict[str, Tensor] | None  # |exact remainder| of the difference (TwoSum)
    bt: Tensor                    # [n_out] the bias, broadcast over the output
    bp: Tensor
    db: Tensor                    # fl(b̃ − b) and its exact remainder's magnitude
    dbe: Tensor
    terms: int                    # an upper value of the inner length of the forward sums

    def apply(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The linear part with ``params`` on flat inputs ``[N, n_in]`` → ``[N, n_out]``."""
        if self.node.op == "linear":
            return x @ params["weight"].T
        return apply_node(self.node, [x.reshape(x.shape[0], *self.in_shape)], params).reshape(x.shape[0], -1)

    def vjp(self, params: dict[str, Tensor], coef: Tensor) -> Tensor:
        """``coef L`` for coefficient rows ``[M, n_out]`` → ``[M, n_in]`` (the op's adjoint)."""
        if self.node.op == "linear":
            return coef @ params["weight"]
        if self.node.op in ("reshape", "identity"):
            return coef  # both keep the flat order: the adjoint is the identity on flat coefficients
        m = coef.shape[0]
        a = self.node.attrs
        if self.node.op == "conv" and all(lo == hi for lo, hi in a["padding"]):
            fn = nn_grad.conv1d_input if len(a["padding"]) == 1 else nn_grad.conv2d_input
            out = fn((m, *self.in_shape), params["weight"], coef.reshape(m, *self.out_shape), a["stride"],
                     tuple(lo for lo, _ in a["padding"]), a["dilation"], a["groups"])
            return out.reshape(m, -1)
        x0 = torch.zeros(m, math.prod(self.in_shape), dtype=_F64, device=coef.device, requires_grad=True)
        with torch.enable_grad():  # linear in coef: its graph is kept where coef needs gradients (optimise)
            (grad,) = torch.autograd.grad(self.apply(params, x0), x0, coef, create_graph=coef.requires_grad)
        return grad


def _absd(p: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.abs() for k, v in p.items()}


def _lin_params(node: Node) -> dict[str, Tensor]:
    keys = {"linear": ("weight",), "conv": ("weight",), "affine": ("scale",)}.get(node.op, ())
    return {k: node.params[k].double() for k in keys if k in node.params}


def _make_lin(nt: Node, np_: Node, shapes: dict[str, tuple[int, ...]]) -> _Lin:
    in_shape, out_shape = shapes[nt.inputs[0]], shapes[nt.name]
    pt, pp = _lin_params(nt), _lin_params(np_)
    zero_in = torch.zeros(1, *in_shape, dtype=_F64)
    full_t = {k: v.double() for k, v in nt.params.items()}
    full_p = {k: v.double() for k, v in np_.params.items()}
    # the op on a zero input is exactly its bias broadcast over the output (0·w sums to 0, 0 + b = b)
    bt = apply_node(nt, [zero_in], full_t).reshape(-1)
    bp = apply_node(np_, [zero_in], full_p).reshape(-1)
    same = all(torch.equal(full_t[k], full_p[k]) for k in full_t)
    pd = pe = None
    if not same:
        pairs = {k: _two_diff(pt[k], pp[k]) for k in pt}
        pd = {k: d for k, (d, _) in pairs.items()}
        pe = {k: e.abs() for k, (_, e) in pairs.items()}
    db, dbe = _two_diff(bp, bt)
    n_in = math.prod(in_shape)
    terms = {"conv": int(pt["weight"][0].numel()) if "weight" in pt else 1, "affine": 1}.get(nt.op, n_in)
    return _Lin(nt, in_shape, out_shape, pt, pp, pd, pe, bt, bp, db, dbe.abs(), max(1, terms))


def _alpha(act: Activation) -> float | None:
    """The leaky slope α of a ReLU-family activation the joint relaxation covers (relu: 0), else None."""
    if act.kind == "relu":
        return 0.0
    if act.kind == "leaky_relu" and 0.0 <= act.params[0] <= 1.0:
        return float(act.params[0])
    return None


@dataclass(frozen=True, eq=False)
class _Prep:
    """Both graphs (float64), their linear parts, who consumes each node, and which nodes are refined."""

    target: Graph
    pruned: Graph
    lins: dict[str, _Lin]
    consumers: dict[str, list[Node]]
    adjacent: frozenset[str]
    order: dict[str, int]
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)


def _root(g: Graph, name: str) -> str:
    """Follow reshape/identity nodes back (they keep the flat order) to the node they copy."""
    while name != "input" and g.node(name).op in ("reshape", "identity"):
        name = g.node(name).inputs[0]
    return name


def _prepare(target: Graph, pruned: Graph) -> _Prep:
    check_graph_pair(target, pruned)
    t, p = target.to(_F64, "cpu"), pruned.to(_F64, "cpu")
    lins = {nt.name: _make_lin(nt, np_, t.shapes) for nt, np_ in zip(t.nodes, p.nodes)
            if nt.op in _LINEAR or nt.op in _EXACT}
    consumers: dict[str, list[Node]] = {"input": []}
    for n in t.nodes:
        consumers.setdefault(n.name, [])
        for i in n.inputs:
            consumers[i].append(n)
    adjacent = frozenset(n.name for n in t.nodes if n.op in ("linear", "conv", "affine")
                         and _root(t, n.inputs[0]) == "input")
    return _Prep(t, p, lins, consumers, adjacent, {n.name: k for k, n in enumerate(t.nodes)})


# ---------------------------------------------------------------------------------------- intervals


@dataclass
class _State:
    """One node's intervals of the computed values, forward rounding bounds and (ReLU family) relaxation."""

    b: Bounds
    rho: tuple[Tensor, Tensor] | None = None
    relax: _Relax | None = None
    clamp: tuple[_Relax, _Relax, float, float] | None = None  # ReLU6/Hardtanh: relaxations of relu(z − a), relu(z − b)

    def mags(self) -> tuple[Tensor, Tensor, Tensor]:
        """Upper values of ``|v|``, ``|ṽ|``, ``|Δv|``."""
        l, u, dl, du, tl, tu = self.b
        return torch.maximum(l.abs(), u.abs()), torch.maximum(tl.abs(), tu.abs()), torch.maximum(dl.abs(), du.abs())


def _box(v: Tensor, err: Tensor) -> tuple[Tensor, Tensor]:
    """``[lo, hi] ⊇ [v − err, v + err]`` in exact arithmetic."""
    return _down(v, err), -_down(-v, err)


def _tighten(b: Bounds) -> Bounds:
    """Cross-tightening ``ṽ ∈ [l + δ_l, u + δ_u]``, ``δ ∈ [l̃ − u, ũ − l]`` (outward rounded)."""
    l, u, dl, du, tl, tu = b
    ninf, pinf = torch.tensor(-math.inf, dtype=_F64), torch.tensor(math.inf, dtype=_F64)
    tl = torch.maximum(tl, torch.nextafter(l + dl, ninf))
    tu = torch.minimum(tu, torch.nextafter(u + du, pinf))
    dl = torch.maximum(dl, torch.nextafter(tl - u, ninf))
    du = torch.minimum(du, torch.nextafter(tu - l, pinf))
    return l, u, dl, du, tl, tu


def _interval(lin: _Lin, params: dict[str, Tensor], lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``(c, e)``: ``|L h − c| ≤ e`` for every ``h ∈ [lo, hi]`` (exact arithmetic; ``c = fl(L mid)``)."""
    g = _g2(max(lin.terms, 1) + 2)
    mid = (lo + hi) * 0.5
    rad = torch.maximum(hi - mid, mid - lo) * (1.0 + 4.0 * _U) + _TINY
    return lin.apply(params, mid), lin.apply(_absd(params), rad + g * mid.abs()) * (1.0 + 2.0 * g) + _TINY


def _rho(lin: _Lin, params: dict[str, Tensor], bias: Tensor, hmax: Tensor) -> Tensor:
    """``[B, n_out]`` bound on the float64 forward rounding of the node, ``|h| ≤ hmax``."""
    n = lin.terms
    return (_gamma(n + 1, _U) * (lin.apply(_absd(params), hmax) + bias.abs()) + (n + 1) * _ETA) \
        * (1.0 + _g2(n + 3))


def _lin_state(lin: _Lin, s: _State, reg: _Region, adjacent: bool) -> _State:
    l, u, dl, du, tl, tu = s.b
    if lin.node.op in _EXACT:
        out = [lin.apply({}, v) for v in s.b]
        return _State(cast(Bounds, tuple(out)))
    hmax, hpmax, _ = s.mags()
    rt, rp = _rho(lin, lin.pt, lin.bt, hmax), _rho(lin, lin.pp, lin.bp, hpmax)
    cz, ez = _interval(lin, lin.pt, l, u)
    ct, et = _interval(lin, lin.pp, tl, tu)
    c1, e1 = _interval(lin, lin.pp, dl, du)
    dv, de, parts = c1, e1 + rt + rp, [c1.abs()]
    if lin.pd is not None and lin.pe is not None:
        c2, e2 = _interval(lin, lin.pd, l, u)
        e3 = lin.apply(lin.pe, hmax) * (1.0 + _g2(lin.terms + 2)) + _TINY
        dv, de, parts = c1 - c2 + lin.db, de + e2 + e3 + lin.dbe, [c1.abs(), c2.abs(), lin.db.abs()]
    vals = [(cz + lin.bt, ez + rt, [cz.abs(), lin.bt.abs()]), (dv, de, parts), (ct + lin.bp, et + rp,
                                                                               [ct.abs(), lin.bp.abs()])]
    out = []
    for v, err, ps in vals:
        err = (err + 4.0 * _U * sum(ps)) * (1.0 + 8.0 * _U) + _TINY
        out += list(_box(v, err))
    b = (out[0], out[1], out[2], out[3], out[4], out[5])
    if adjacent and reg.norm == "l2":
        b = _l2_adjacent(lin, reg, b, rt, rp)
    return _State(_tighten(b), (rt, rp))


def _row_norms(lin: _Lin, params: dict[str, Tensor]) -> Tensor:
    """``[n_out]`` upper values of the ℓ2 norms of the rows of the linear part (sums of squares, rounded up)."""
    n_in = math.prod(lin.in_shape)
    sq = lin.apply({k: v * v for k, v in params.items()}, torch.ones(1, n_in, dtype=_F64))[0]
    return sq.sqrt() * (1.0 + _g2(lin.terms + 4)) + _TINY


def _l2_adjacent(lin: _Lin, reg: _Region, b: Bounds, rt: Tensor, rp: Tensor) -> Bounds:
    """A node reading the input: ``L c ± r‖L_i‖₂`` (plus roundings), intersected with the box intervals."""
    c, r = reg.centres, reg.radius
    g = _g2(lin.terms + 2)
    xmax = torch.maximum(reg.lo.abs(), reg.hi.abs())

    def lin_ball(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        v = lin.apply(params, c)
        e = r * _row_norms(lin, params) * (1.0 + 4.0 * _U) + g * lin.apply(_absd(params), c.abs())
        return v, e * (1.0 + 2.0 * g) + _TINY

    vz, ez = lin_ball(lin.pt)
    vt, et = lin_ball(lin.pp)
    if lin.pd is not None and lin.pe is not None:
        vd, ed = lin_ball(lin.pd)
        e3 = lin.apply(lin.pe, xmax) * (1.0 + 2.0 * g) + _TINY
        dv, derr = -vd + lin.db, ed + e3 + lin.dbe + rt + rp + 4.0 * _U * (vd.abs() + lin.db.abs())
    else:
        dv, derr = torch.zeros_like(vz), rt + rp
    lz, uz = _box(vz + lin.bt, ez + rt + 4.0 * _U * (vz.abs() + lin.bt.abs()))
    ltl, utl = _box(vt + lin.bp, et + rp + 4.0 * _U * (vt.abs() + lin.bp.abs()))
    ld, ud = _box(dv, derr * (1.0 + 8.0 * _U) + _TINY)
    l, u, dl, du, tl, tu = b
    return (torch.maximum(l, lz), torch.minimum(u, uz), torch.maximum(dl, ld), torch.minimum(du, ud),
            torch.maximum(tl, ltl), torch.minimum(tu, utl))


def _sigma_box(act: Activation, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """An interval of the *computed* ``fl(σ(z))`` for ``z ∈ [lo, hi]`` (module docstring, §7.5)."""
    zmax = torch.maximum(lo.abs(), hi.abs())
    tau = act.ulps * _U * ((act.lipschitz + 1.0) * zmax + abs(act.sigma0)) + act.abs_error \
        + (_ETA if act.ulps > 0 else 0.0)

    def err(z: Tensor, fz: Tensor) -> Tensor:  # |torch's σ(z) − σ(z)| (library accuracy)
        return act.ulps * _U * (fz.abs() + z.abs()) + act.abs_error + (_ETA if act.ulps > 0 else 0.0)

    monotone = act.kind in _MONOTONE or (act.kind in ("elu", "leaky_relu") and act.params[0] >= 0)
    if monotone:
        flo, fhi = act(lo), act(hi)
        a, b = flo - err(lo, flo) - tau, fhi + err(hi, fhi) + tau
        scale = flo.abs() + fhi.abs() + 2.0 * tau + err(lo, flo) + err(hi, fhi)
    else:
        mid = (lo + hi) * 0.5
        rad = torch.maximum(hi - mid, mid - lo) * (1.0 + 4.0 * _U) + _TINY
        fm = act(mid)
        spread = act.lipschitz * rad * (1.0 + 2.0 * _U) + err(mid, fm) + tau
        a, b = fm - spread, fm + spread
        scale = fm.abs() + spread
    a = torch.maximum(a, torch.full_like(a, act.lo) - tau) if math.isfinite(act.lo) else a
    b = torch.minimum(b, torch.full_like(b, act.hi) + tau) if math.isfinite(act.hi) else b
    # the sums above are rounded: 4u of the magnitudes involved covers them
    return _down(a, 4.0 * _U * (scale + a.abs())), -_down(-b, 4.0 * _U * (scale + b.abs()))


def _tau(act: Activation, zmax: Tensor) -> Tensor:
    """Bound on ``|fl(σ(z)) − σ(z)|`` for ``|z| ≤ zmax`` (the activation's assumed accuracy, as bounds/graph.py)."""
    return act.ulps * _U * ((act.lipschitz + 1.0) * zmax + abs(act.sigma0)) * (1.0 + 4.0 * _U) \
        + act.abs_error + (_ETA if act.ulps > 0 else 0.0)


def _act_state(act: Activation, s: _State) -> _State:
    """ReLU family: the joint relaxation's intervals (and the relaxation); others: Lipschitz intervals."""
    alpha = _alpha(act)
    if alpha is not None:
        rx = _relax(*s.b, alpha, _F64, _F64)
        h_lo, h_hi, ht_lo, ht_hi, dh_lo, dh_hi = rx.box_c
        return _State(_tighten((h_lo, h_hi, dh_lo, dh_hi, ht_lo, ht_hi)), None, rx)
    clamp = _clamp_relax(act, s) if act.kind in ("relu6", "hardtanh") else None
    l, u, dl, du, tl, tu = s.b
    hl, hu = _sigma_box(act, l, u)
    htl, htu = _sigma_box(act, tl, tu)
    zmax, ztmax, dmax = s.mags()
    taus = (_tau(act, zmax) + _tau(act, ztmax)) * (1.0 + 2.0 * _U)
    lip = act.lipschitz * (1.0 + 4.0 * _U)
    if act.kind in _MONOTONE or (act.kind in ("elu", "leaky_relu") and act.params[0] >= 0):
        # σ non-decreasing, slopes in [0, L]: σ(z + δ) − σ(z) lies between 0 and Lδ
        lo_d, hi_d = lip * dl.clamp_max(0) - taus, lip * du.clamp_min(0) + taus
    else:
        lo_d, hi_d = -(lip * dmax) - taus, lip * dmax + taus
    scale = lip * dmax + taus
    lo_d, hi_d = _down(lo_d, 4.0 * _U * scale), -_down(-hi_d, 4.0 * _U * scale)
    if clamp is not None:  # Δh = Δr₁ − Δr₂: the two ReLU pairs' difference intervals
        b1, b2 = clamp[0].box_c, clamp[1].box_c
        lo_d = torch.maximum(lo_d, torch.nextafter(b1[4] - b2[5], torch.tensor(-math.inf, dtype=_F64)))
        hi_d = torch.minimum(hi_d, torch.nextafter(b1[5] - b2[4], torch.tensor(math.inf, dtype=_F64)))
    return _State(_tighten((hl, hu, lo_d, hi_d, htl, htu)), clamp=clamp)


def _clamp_relax(act: Activation, s: _State) -> tuple[_Relax, _Relax, float, float]:
    """``clamp(z, a, b) = a + relu(z − a) − relu(z − b)`` (a < b; exact in the reals): the joint relaxations of
    the two ReLU pairs in ``y = z − a`` and ``y = z − b`` (same δ), on outward-rounded shifted intervals."""
    a, b = (0.0, 6.0) if act.kind == "relu6" else (float(act.params[0]), float(act.params[1]))
    l, u, dl, du, tl, tu = s.b
    ninf, pinf = torch.tensor(-math.inf, dtype=_F64), torch.tensor(math.inf, dtype=_F64)

    def shift(c: float) -> _Relax:
        return _relax(torch.nextafter(l - c, ninf), torch.nextafter(u - c, pinf), dl, du,
                      torch.nextafter(tl - c, ninf), torch.nextafter(tu - c, pinf), 0.0, _F64, _F64)

    return shift(a), shift(b), a, b


def _clamp_step(cz: Tensor, cd: Tensor, st: _State, s_in: _State) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``czᵀh + cdᵀΔh`` with ``h = a + r₁ − r₂``, ``Δh = Δr₁ − Δr₂`` (r₁ = relu(z − a), r₂ = relu(z − b)): each pair by
    ``_relax_step`` (the second with negated coefficients), in ``(z − a, δ)`` and ``(z − b, δ)``; then the shifts
    move into the constant: ``lz₁(z − a) + lz₂(z − b) = (lz₁ + lz₂) z − a Σlz₁ − b Σlz₂``."""
    rx1, rx2, a, b = cast("tuple[_Relax, _Relax, float, float]", st.clamp)
    z1, d1, c1, s1 = _relax_step(cz, cd, rx1)
    z2, d2, c2, s2 = _relax_step(-cz, -cd, rx2)
    lz, ld = z1 + z2, d1 + d2
    n = cz.shape[-1]
    g = _g2(n + 4)
    cc = c1 + c2 + a * cz.sum(-1) - a * z1.sum(-1) - b * z2.sum(-1)
    zmax, _, dmax = s_in.mags()
    c_err = g * (abs(a) * (cz.abs().sum(-1) + z1.abs().sum(-1)) + abs(b) * z2.abs().sum(-1)
                 + c1.abs() + c2.abs() + cc.abs())
    s_sum = _U * (1.0 + g) * (_rowdot(lz.abs(), zmax) + _rowdot(ld.abs(), dmax))
    return lz, ld, cc, (s1 + s2 + c_err + s_sum) * (1.0 + 4.0 * _U) + _TINY


def _maxpool_state(node: Node, s: _State, in_shape: tuple[int, ...]) -> _State:
    """Max pool (exact in floating point): ``max`` is monotone, ``max(z + δ) − max(z) ∈ [min δ, max δ]``."""
    def pool(v: Tensor) -> Tensor:
        return apply_node(node, [v.reshape(v.shape[0], *in_shape)]).reshape(v.shape[0], -1)

    l, u, dl, du, tl, tu = s.b
    return _State(_tighten((pool(l), pool(u), -pool(-dl), pool(du), pool(tl), pool(tu))))


def _argmax_in_window(node: Node, lo: Tensor, hi: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Per window (``[B, n_out]``): the flat input index ``k`` of the largest lower bound, and whether it
    dominates (``lo_k ≥ hi_i`` for every other input ``i`` of the window). Windows must not overlap."""
    fn = torch.nn.functional.max_pool1d if node.attrs["dims"] == 1 else torch.nn.functional.max_pool2d
    kernel, stride = node.attrs["kernel"], node.attrs["stride"]  # tuples in the IR (every reader writes them so)
    bsz, spatial = lo.shape[0], math.prod(in_shape[1:])
    lk, idx = fn(lo.reshape(bsz, *in_shape), kernel, stride, node.attrs["padding"], return_indices=True)
    chan = torch.arange(in_shape[0]).view(1, -1, *([1] * (idx.dim() - 2))) * spatial
    k = (idx + chan).reshape(bsz, -1)
    others = hi.clone().scatter_(1, k, -math.inf)  # windows do not overlap: input k is in one window only
    second = fn(others.reshape(bsz, *in_shape), kernel, stride, node.attrs["padding"]).reshape(bsz, -1)
    return k, lk.reshape(bsz, -1) >= second


def _maxpool_step(node: Node, cz: Tensor, cd: Tensor, st: _State, s_in: _State,
                  in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Back-substitution through a max pool with non-overlapping windows (None otherwise: the caller concretises).

    Per window, ``m = max_i z_i ≥ z_k`` (``k``: the largest lower bound), with equality where ``z_k`` dominates
    the window; ``Δm = m̃ − m = δ_k`` where ``k`` dominates the window in both nets. So ``cz·m ≥ cz·z_k`` where
    ``cz ≥ 0`` or ``k`` dominates, else ``≥ cz·u`` (the node's upper bound); ``cd·Δm = cd·δ_k`` where both dominate
    at ``k``, else ``≥ cd·Δ_l`` or ``cd·Δ_u`` (the node's interval). ``max`` is exact in floating point and every
    input gets at most one coefficient (no sums); only the constant's sum is rounded (its slack)."""
    if any(s_ < k_ for s_, k_ in zip(node.attrs["stride"], node.attrs["kernel"])):
        return None
    l, u, dl, du, tl, tu = s_in.b
    k, dom = _argmax_in_window(node, l, u, in_shape)
    kp, dom_p = _argmax_in_window(node, tl, tu, in_shape)
    both = dom & dom_p & (k == kp)
    _, m_hi, d_lo, d_hi, _, _ = st.b
    use_z = dom.unsqueeze(1) | (cz >= 0)
    use_d = both.unsqueeze(1).expand_as(cd)
    zero = torch.zeros_like(cz)
    terms = torch.where(use_z, zero, torch.where(cz < 0, cz * m_hi.unsqueeze(1), zero)) + torch.where(
        use_d, zero, torch.where(cd > 0, cd * d_lo.unsqueeze(1), torch.where(cd < 0, cd * d_hi.unsqueeze(1), zero)))
    g = _g2(cz.shape[-1] + 2)
    cc = terms.sum(-1)
    slack = g * terms.abs().sum(-1) * (1.0 + g) * (1.0 + 4.0 * _U) + _TINY
    idx = k.unsqueeze(1).expand_as(cz)
    n_in = l.shape[-1]
    a = torch.zeros(*cz.shape[:2], n_in, dtype=_F64).scatter_(2, idx, torch.where(use_z, cz, zero))
    gg = torch.zeros_like(a).scatter_(2, idx, torch.where(use_d, cd, zero))
    return a, gg, cc, slack


def _add_state(a: _State, b: _State) -> _State:
    """``fl(a + b) = a + b + ρ``, ``|ρ| ≤ u(|a| + |b|)`` per net; the difference meets ``ρ̃ − ρ``."""
    am, apm, _ = a.mags()
    bm, bpm, _ = b.mags()
    rt, rp = _U * (1.0 + 4.0 * _U) * (am + bm), _U * (1.0 + 4.0 * _U) * (apm + bpm)
    out = []
    for (x, y), err in zip(((a.b[0], b.b[0]), (a.b[1], b.b[1]), (a.b[2], b.b[2]), (a.b[3], b.b[3]),
                            (a.b[4], b.b[4]), (a.b[5], b.b[5])), (rt, rt, rt + rp, rt + rp, rp, rp)):
        out.append((x + y, err + 4.0 * _U * (x.abs() + y.abs())))
    b6 = [(_down(v, e) if k % 2 == 0 else -_down(-v, e)) for k, (v, e) in enumerate(out)]
    return _State(_tighten(cast(Bounds, tuple(b6))), (rt, rp))


def _cat_state(node: Node, ins: list[_State], shapes: dict[str, tuple[int, ...]]) -> _State:
    dim = int(node.attrs["dim"]) + 1
    parts = []
    for k in range(6):
        vs = [s.b[k].reshape(s.b[k].shape[0], *shapes[i]) for s, i in zip(ins, node.inputs)]
        parts.append(torch.cat(vs, dim=dim).reshape(vs[0].shape[0], -1))
    return _State(cast(Bounds, tuple(parts)))


def _node_state(prep: _Prep, node: Node, states: dict[str, _State], reg: _Region) -> _State:
    ins = [states[i] for i in node.inputs]
    if node.name in prep.lins:
        return _lin_state(prep.lins[node.name], ins[0], reg, node.name in prep.adjacent)
    if node.op == "act":
        return _act_state(node.attrs["act"], ins[0])
    if node.op == "maxpool":
        return _maxpool_state(node, ins[0], prep.target.shapes[node.inputs[0]])
    if node.op == "add":
        return _add_state(ins[0], ins[1])
    if node.op == "cat":
        return _cat_state(node, ins, prep.target.shapes)
    raise ProbPruneError(f"differential graph bound: node {node.name!r}: op {node.op} has no rule")


# ---------------------------------------------------------------------------------------- back-substitution


def _lin_back(lin: _Lin, lz: Tensor, ld: Tensor, s_in: _State) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``lzᵀ v' + ldᵀ Δv'`` through ``v' = L v + b``: coefficients of ``(v, Δv)``, the constant and the slack."""
    bsz, r, n_out = lz.shape
    fz, fd = lz.reshape(bsz * r, n_out), ld.reshape(bsz * r, n_out)

    def back(params: dict[str, Tensor], coef: Tensor) -> Tensor:
        return lin.vjp(params, coef).reshape(bsz, r, -1)

    if lin.node.op in _EXACT:
        zero = torch.zeros(bsz, r, dtype=_F64)
        return back({}, fz), back({}, fd), zero, zero
    a = back(lin.pt, fz)
    gg = back(lin.pp, fd)
    hmax, _, dhmax = s_in.mags()
    g = _g2(max(n_out, lin.terms, math.prod(lin.in_shape)) + 2)
    alz, ald = lz.abs(), ld.abs()
    s = _rowdot(alz, lin.apply(_absd(lin.pt), hmax)) + _rowdot(ald, lin.apply(_absd(lin.pp), dhmax))
    cc = _rowdot(lz, lin.bt.unsqueeze(0)) + _rowdot(ld, lin.db.unsqueeze(0))
    c_err = g * (_rowdot(alz, lin.bt.abs().unsqueeze(0)) + _rowdot(ald, lin.db.abs().unsqueeze(0))) \
        + (1.0 + g) * _rowdot(ald, lin.dbe.unsqueeze(0))
    s = g * s
    if lin.pd is not None and lin.pe is not None:
        a = a - back(lin.pd, fd)
        s = s + g * _rowdot(ald, lin.apply(_absd(lin.pd), hmax)) \
            + (1.0 + g) * _rowdot(ald, lin.apply(lin.pe, hmax) * (1.0 + g))
    return a, gg, cc, (s * (1.0 + g) + c_err) * (1.0 + 4.0 * _U) + _TINY


def _concretize(lz: Tensor, ld: Tensor, b: Bounds) -> tuple[Tensor, Tensor]:
    """Lower value of ``lzᵀ v + ldᵀ Δv`` over the node's box (``coef·mid − |coef|·rad``) and its slack."""
    l, u, dl, du, _, _ = b
    g = _g2(lz.shape[-1] + 2)
    out = torch.zeros(lz.shape[:2], dtype=_F64)
    s = torch.zeros_like(out)
    for coef, lo, hi in ((lz, l, u), (ld, dl, du)):
        mid = (lo + hi) * 0.5
        rad = torch.maximum(hi - mid, mid - lo) * (1.0 + 4.0 * _U) + _TINY
        ac = coef.abs()
        out = out + _rowdot(coef, mid) - _rowdot(ac, rad)
        s = s + g * (_rowdot(ac, mid.abs() + rad) * (1.0 + g))
    return out, s * (1.0 + 4.0 * _U) + _TINY


def _gather_relax(rx: _Relax, idx: Tensor) -> _Relax:
    """The relaxation of the neurons ``idx`` (``[B, R]``) only, as per-row fields ``[B, R, 1]``."""
    def take(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.gather(1, idx).unsqueeze(-1)
        return tuple(take(t) for t in v) if isinstance(v, tuple) else v

    return _Relax(**{f.name: take(getattr(rx, f.name)) for f in dataclasses.fields(rx)})


def _onehot_step(cz: Tensor, cd: Tensor, rx: _Relax, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``_relax_step`` for rows that are ``cz e_i`` and ``cd e_i`` (``[B, R]`` values, neurons ``idx``): the step is
    elementwise, so it runs on the gathered neuron of each row (sums of one term, rounded as such) and the new
    coefficients are scattered back to ``[B, R, n]``."""
    a, gg, cc, sl = _relax_step(cz.unsqueeze(-1), cd.unsqueeze(-1), _gather_relax(rx, idx))
    n = rx.zmax.shape[-1]
    shape = (*idx.shape, n)
    dense = [torch.zeros(shape, dtype=_F64).scatter_(2, idx.unsqueeze(-1), v) for v in (a, gg)]
    return dense[0], dense[1], cc, sl


def _backsub(prep: _Prep, states: dict[str, _State], name: str, lz: Tensor, ld: Tensor, reg: _Region,
             onehot: tuple[Tensor, Tensor, Tensor] | None = None, relax: dict[str, _Relax] | None = None) -> Tensor:
    """Certified lower value over the ball of ``lzᵀ v + ldᵀ Δv`` at node ``name`` (``[B, R, n]`` each) → ``[B, R]``.

    In exact arithmetic the objective is ≥ (current coefficients)·(current pairs) + ``c`` − ``s`` at every step.
    ``onehot``: ``(coefficient of v, of Δv, neuron)`` ``[B, R]`` each when every row is ``(cz e_i, cd e_i)``
    (ReLU-family nodes then take their step on the gathered neurons, :func:`_onehot_step`). ``relax``: per-row
    relaxations of ReLU-family nodes replacing their states' (slopes optimised per row, :func:`_optimised_rows`).
    """
    coefs: dict[str, tuple[Tensor, Tensor]] = {name: (lz, ld)}
    c = torch.zeros(lz.shape[:2], dtype=_F64)
    s = torch.zeros_like(c)
    alt: Tensor | None = None  # the rows' lower value by the sign relaxation of the first layer
    for node in reversed(prep.target.nodes[:prep.order[name] + 1]):
        if node.name not in coefs:
            continue
        cz, cd = coefs.pop(node.name)
        st = states[node.name]
        sl = torch.zeros_like(c)
        cc = torch.zeros_like(c)
        if st.rho is not None:  # the forward rounding: czᵀρ + cdᵀ(ρ̃ − ρ) = (cz − cd)ᵀρ + cdᵀρ̃
            rt, rp = st.rho
            sl = (_rowdot((cz - cd).abs(), rt) * (1.0 + 2.0 * _U) + _rowdot(cd.abs(), rp)) \
                * (1.0 + _g2(cz.shape[-1] + 2))
        pushes: list[tuple[str, Tensor, Tensor]] = []
        if node.name in prep.lins:
            a, gg, cc, s2 = _lin_back(prep.lins[node.name], cz, cd, states[node.inputs[0]])
            sl, pushes = sl + s2, [(node.inputs[0], a, gg)]
        elif node.op == "act" and st.relax is not None and onehot is not None and node.name == name:
            a, gg, cc, s2 = _onehot_step(onehot[0], onehot[1], st.relax, onehot[2])
            sl, pushes = sl + s2, [(node.inputs[0], a, gg)]
        elif node.op == "act" and st.relax is not None:
            rx = st.relax if relax is None else relax.get(node.name, st.relax)
            if not coefs and rx is st.relax and (first := _first_layer(prep, node, reg)) is not None:
                # every row now sits on the first layer's outputs alone: the sign relaxation (ℓ2 balls)
                low = signs.act_rows_low(cz, cd, first, st.relax, states[node.inputs[0]].b, reg,
                                         cast("tuple[Tensor, Tensor]", states[node.inputs[0]].rho))
                alt = _down(low + c, s + 4.0 * _U * (low.abs() + c.abs()) + _TINY)
            a, gg, cc, s2 = _relax_step(cz, cd, rx)
            sl, pushes = sl + s2, [(node.inputs[0], a, gg)]
        elif node.op == "act" and st.clamp is not None:
            a, gg, cc, s2 = _clamp_step(cz, cd, st, states[node.inputs[0]])
            sl, pushes = sl + s2, [(node.inputs[0], a, gg)]
        elif node.op == "maxpool" and (mp := _maxpool_step(node, cz, cd, st, states[node.inputs[0]],
                                                           prep.target.shapes[node.inputs[0]])) is not None:
            a, gg, cc, s2 = mp
            sl, pushes = sl + s2, [(node.inputs[0], a, gg)]
        elif node.op in ("act", "maxpool"):
            cc, s2 = _concretize(cz, cd, st.b)
            sl = sl + s2
        elif node.op == "add":
            pushes = [(node.inputs[0], cz, cd), (node.inputs[1], cz, cd)]
        else:  # cat: split
            pushes = _split(node, cz, cd, prep.target.shapes)
        for target_name, a, gg in pushes:
            if target_name in coefs:
                oz, od = coefs[target_name]
                a, gg = oz + a, od + gg
                hm, _, dm = states[target_name].mags()
                sl = sl + _U * (1.0 + 4.0 * _U) * (_rowdot(a.abs(), hm) + _rowdot(gg.abs(), dm)) \
                    * (1.0 + _g2(a.shape[-1] + 2))
            coefs[target_name] = (a, gg)
        c = c + cc
        s = (s + sl + 2.0 * _U * c.abs()) * (1.0 + 4.0 * _U) + _TINY
    low = _down(_min_linear(coefs["input"][0], c, reg), s) if "input" in coefs else _down(c, s)
    return low if alt is None else torch.maximum(low, alt)


def _first_layer(prep: _Prep, act: Node, reg: _Region) -> Any:
    """For a ReLU-family node fed by a fully connected node on the (flat) input, on an ℓ2 ball: that layer in the
    form :func:`probprune.bounds.signs.act_rows_low` takes (cached per node); else None."""
    if reg.norm != "l2":
        return None
    key = f"signs:{act.name}"
    if key not in prep.cache:
        lin = prep.lins.get(act.inputs[0])
        alpha = _alpha(act.attrs["act"])
        ok = lin is not None and lin.node.op == "linear" and act.inputs[0] in prep.adjacent \
            and "weight" in lin.pt and alpha is not None
        if ok and lin is not None:
            w = lin.pt["weight"]
            d = lin.pd["weight"] if lin.pd is not None else torch.zeros_like(w)
            de = lin.pe["weight"] if lin.pe is not None else torch.zeros_like(w)
            prep.cache[key] = types.SimpleNamespace(w=(w,), d=(d,), d_err=(de,), b=(lin.bt,), db=(lin.db,),
                                                    db_err=(lin.dbe,), alpha=(alpha,), cache={})
        else:
            prep.cache[key] = None
    first = prep.cache[key]
    if first is None or not signs.usable(reg, first.alpha[0], first.w[0].shape[0]):
        return None
    return first


def _split(node: Node, cz: Tensor, cd: Tensor, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, Tensor, Tensor]]:
    dim = int(node.attrs["dim"]) + 2
    sizes = [shapes[i][dim - 2] for i in node.inputs]
    bsz, r = cz.shape[:2]
    zs = cz.reshape(bsz, r, *shapes[node.name]).split(sizes, dim=dim)
    ds = cd.reshape(bsz, r, *shapes[node.name]).split(sizes, dim=dim)
    return [(i, z.reshape(bsz, r, -1), d.reshape(bsz, r, -1)) for i, z, d in zip(node.inputs, zs, ds)]


def _refine(prep: _Prep, states: dict[str, _State], name: str, need: Tensor, reg: _Region,
            optimise: int = 0) -> Tensor:
    """Back-substituted lower values of the rows ``need`` (``[B, 6, n]``, types ``_ROWS``) → ``[B, 6, n]`` (−inf
    where not needed). Each ball gets its own rows; chunks of rows keep the coefficient tensors small.
    ``optimise`` > 0: each row also with its lower slopes optimised (:func:`_optimised_rows`, smaller chunks:
    per-row relaxations); the larger of the two valid values is kept."""
    bsz, _, n = need.shape
    flat = need.reshape(bsz, 6 * n)
    r = int(flat.sum(1).max())
    out = torch.full((bsz, 6 * n + 1), -math.inf, dtype=_F64)
    if r == 0:
        return out[:, :-1].reshape(bsz, 6, n)
    order = torch.sort((~flat).to(torch.int8), dim=1, stable=True).indices[:, :r]  # needed rows first
    valid = flat.gather(1, order)
    kind, neuron = order // n, order % n
    coef = torch.tensor(_ROWS, dtype=_F64)[kind] * valid.unsqueeze(-1)  # [B, R, 2]
    widest = max(math.prod(s) for s in prep.target.shapes.values())
    chunk = max(1, (_OPT_BUDGET if optimise else _ROW_BUDGET) // (bsz * widest))
    for r0 in range(0, r, chunk):
        sl = slice(r0, min(r, r0 + chunk))
        nb = neuron[:, sl].unsqueeze(-1)
        lz = torch.zeros(bsz, nb.shape[1], n, dtype=_F64).scatter_(2, nb, coef[:, sl, :1])
        ld = torch.zeros_like(lz).scatter_(2, nb, coef[:, sl, 1:])
        low = _backsub(prep, states, name, lz, ld, reg, (coef[:, sl, 0], coef[:, sl, 1], nb[..., 0]))
        if optimise:
            low = torch.maximum(low, _optimised_rows(prep, states, name, lz, ld, reg, optimise, valid[:, sl]))
        dst = torch.where(valid[:, sl], order[:, sl], torch.full_like(order[:, sl], 6 * n))
        out.scatter_(1, dst, low)
    return out[:, :-1].reshape(bsz, 6, n)


def _needed(prep: _Prep, node: Node, st: _State) -> Tensor | None:
    """Rows to back-substitute: inputs of ReLU-family activations where unstable, of other activations and max
    pools everywhere, the output's difference; none for a node reading the input (already tight), and no value
    rows for a monotone activation of such a node (σ of the exact range is the exact range of σ: no row is tighter;
    its differences' rows stay, their joint relaxation in (z, δ) can be)."""
    is_out = node.name == prep.target.output
    if node.name in prep.adjacent:
        return None
    exact = node.op == "act" and node.inputs[0] in prep.adjacent and (
        _alpha(node.attrs["act"]) is not None or node.attrs["act"].kind in _MONOTONE
        or (node.attrs["act"].kind == "elu" and node.attrs["act"].params[0] >= 0))
    l, u, dl, du, tl, tu = st.b
    no = torch.zeros_like(l, dtype=torch.bool)
    rows = [no] * 6
    for c in prep.consumers[node.name]:
        if c.op == "act" and _alpha(c.attrs["act"]) is not None:
            uz, ut = (l < 0) & (u > 0), (tl < 0) & (tu > 0)
            ud = (uz | ut) & (dl < du)
        elif c.op == "act" and c.attrs["act"].kind in ("relu6", "hardtanh"):
            lo_, hi_ = (0.0, 6.0) if c.attrs["act"].kind == "relu6" else c.attrs["act"].params
            uz = ((l < lo_) & (u > lo_)) | ((l < hi_) & (u > hi_))
            ut = ((tl < lo_) & (tu > lo_)) | ((tl < hi_) & (tu > hi_))
            ud = (uz | ut) & (dl < du)
        elif c.op in ("act", "maxpool"):
            uz, ut, ud = (no, no, dl < du) if exact else (l < u, tl < tu, dl < du)
        else:
            continue
        rows = [rows[0] | uz, rows[1] | uz, rows[2] | ud, rows[3] | ud, rows[4] | ut, rows[5] | ut]
    if is_out:
        rows[2], rows[3] = rows[2] | (dl < du), rows[3] | (dl < du)
    need = torch.stack(rows, 1)
    return need if bool(need.any()) else None


_OPT_BUDGET = 1 << 19  # entries of one row chunk's coefficients when its slopes are optimised (per-row relaxations)
_LR = 0.25  # Adam's step on the lower slopes (they live in [α, 1])
_LR_PLANE = 0.02  # and on the slopes of the lines of Δh


def _vertices(b: Bounds, alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Points covering the vertices of the pieces of ``Δh = σ(z + δ) − σ(z)`` (σ(y) = max(y, αy)) on
    ``D = {z ∈ [l, u], δ ∈ [δ_l, δ_u], z + δ ∈ [l̃, ũ]}``: the pairwise intersections of the lines ``z ∈ {l, u, 0}``,
    ``δ ∈ {δ_l, δ_u}``, ``z + δ ∈ {l̃, ũ, 0}``, clamped into the box (``[..., n, 21]``), with ``Δh`` there, a mask
    of the points kept (those not outside ``D`` by more than their rounding) and a bound on the magnitudes.

    Δh is linear on each piece (the signs of z and z + δ), so a plane below (above) Δh at every vertex of the
    pieces is below (above) it on D; points that are not vertices only make the plane's intercept safer.
    """
    l, u, dl, du, tl, tu = b
    zero = torch.zeros_like(l)
    zs, ds, ss = (l, u, zero), (dl, du), (tl, tu, zero)
    pz = [a for a in zs for _ in ds] + [a for a in zs for _ in ss] + [c - d for d in ds for c in ss]
    pd = [d for _ in zs for d in ds] + [c - a for a in zs for c in ss] + [d for d in ds for _ in ss]
    z = torch.stack(pz, -1).clamp(l.unsqueeze(-1), u.unsqueeze(-1))
    d = torch.stack(pd, -1).clamp(dl.unsqueeze(-1), du.unsqueeze(-1))
    mag = torch.maximum(l.abs(), u.abs()) + torch.maximum(dl.abs(), du.abs()) + torch.maximum(tl.abs(), tu.abs())
    tol = (8.0 * _U * mag + _TINY).unsqueeze(-1)
    sm = z + d
    keep = (sm >= tl.unsqueeze(-1) - tol) & (sm <= tu.unsqueeze(-1) + tol)
    f = torch.maximum(sm, alpha * sm) - torch.maximum(z, alpha * z)
    return z, d, torch.where(keep, f, torch.full_like(f, math.nan)), mag


def _intercept(p: Tensor, q: Tensor, verts: tuple[Tensor, Tensor, Tensor, Tensor], up: bool) -> Tensor:
    """The tightest intercept ``r`` with ``p z + q δ + r ≤ Δh`` (``up``: ≥) at every kept point of
    :func:`_vertices`, moved outwards by a bound on the points' rounding (``|∂Δh| ≤ 1`` in z and δ per unit of
    displacement, ≤ 2u of the magnitudes each) and on the evaluation's (a few roundings of terms ≤
    ``(2 + |p| + |q|) · mag``): a valid line on D. −inf / +inf where no point is kept."""
    z, d, f, mag = verts
    e = f - p.unsqueeze(-1) * z - q.unsqueeze(-1) * d
    fill = math.inf if not up else -math.inf
    kept = ~torch.isnan(e)
    e = torch.where(kept, e, torch.full_like(e, fill))
    r = e.amax(-1) if up else e.amin(-1)
    m = _g2(12) * (2.0 + p.abs() + q.abs()) * mag + _TINY
    m = m + 2.0 * _U * r.abs().nan_to_num(0.0, 0.0, 0.0)
    r = r + m if up else r - m
    # no point kept (D empty in floating point, or non-finite bounds): no valid finite intercept is claimed
    ok = kept.any(-1) & ~torch.isnan(r)
    return torch.where(ok, r, torch.full_like(r, -fill))


_Params = dict[str, tuple[Tensor, ...]]


def _slope_params(prep: _Prep, states: dict[str, _State], name: str, r: int) -> tuple[_Params, _Params]:
    """Per ReLU-family node before ``name`` with an unstable neuron (in either graph): the lower slopes of ``h``
    and ``h̃``, one per ball, row and neuron (``[B, r, n]`` leaves, starting at the plain relaxation's), and
    offsets ``(Δp, Δq)`` of the slopes of the lower and of the upper line of ``Δh`` for the
    neurons unstable in either graph (``[B, r, k]`` leaves at 0; the second dict: their indices ``[B, k]``
    and which are real, ``[B, 1, k]`` — balls with fewer are padded with stable neurons, left unmoved)."""
    out: _Params = {}
    aux: _Params = {}
    for node in prep.target.nodes[:prep.order[name]]:
        rx = states[node.name].relax
        if node.op != "act" or rx is None:
            continue
        l, u, dl, du, tl, tu = states[node.inputs[0]].b
        unst = ((l < 0) & (u > 0)) | ((tl < 0) & (tu > 0))
        if not bool(unst.any()):
            continue
        k = int(unst.sum(1).max())
        idx = torch.sort((~unst).to(torch.int8), dim=1, stable=True).indices[:, :k]
        aux[node.name] = (idx, unst.gather(1, idx).unsqueeze(1).to(_F64))
        ps = [lam.detach().unsqueeze(1).expand(-1, r, -1) for lam in (rx.hl[0], rx.tl[0])]
        ps += [torch.zeros(l.shape[0], r, k, dtype=_F64)] * 4
        out[node.name] = tuple(p.clone().requires_grad_(True) for p in ps)
    return out, aux


def _row_relax(prep: _Prep, states: dict[str, _State], params: _Params, aux: _Params) -> dict[str, _Relax]:
    """The joint relaxations of the nodes of ``params`` from their inputs' intervals, with those lower slopes per
    row (projected into ``[α, 1]`` by ``_act_lines`` before any use: every such line is valid) and, for the
    neurons ``aux``, the lines of ``Δh`` with their slopes' offsets and the tightest valid intercepts on D
    (:func:`_intercept`); the other neurons keep the plain lines."""
    out = {}
    for k, ps in params.items():
        node = prep.target.node(k)
        alpha = cast(float, _alpha(node.attrs["act"]))
        b = cast(Bounds, tuple(t.unsqueeze(1) for t in states[node.inputs[0]].b))
        rx = _relax(*b[:6], alpha, _F64, _F64, lams=(ps[0], ps[1]))
        # the picked lines' slopes moved by (Δp, Δq), intercepts from the vertices
        idx, real = aux[k]
        bsz, r, n = ps[0].shape
        ix = idx.unsqueeze(1).expand(-1, r, -1)
        picked = [t.expand(bsz, r, n).gather(2, ix) for t in (rx.gl[0], rx.gl[1], rx.gu[0], rx.gu[1])]
        verts = _vertices(cast(Bounds, tuple(t.gather(2, idx.unsqueeze(1)) for t in b)), alpha)
        p_l, q_l = picked[0] + ps[2] * real, picked[1] + ps[3] * real
        p_u, q_u = picked[2] + ps[4] * real, picked[3] + ps[5] * real
        lines = (p_l, q_l, _intercept(p_l, q_l, verts, False), p_u, q_u, _intercept(p_u, q_u, verts, True))
        old = (*rx.gl, *rx.gu)
        new = [o.expand(bsz, r, n).scatter(2, ix, v) for o, v in zip(old, lines)]
        gl, gu = (new[0], new[1], new[2]), (new[3], new[4], new[5])
        l, u, dl, du, _, _ = b
        zc, dc = (l + u) / 2, (dl + du) / 2
        wg = ((gu[0] - gl[0]) * zc + (gu[1] - gl[1]) * dc + (gu[2] - gl[2])).clamp_min(0)
        rx = dataclasses.replace(rx, gl=gl, gu=gu, width_g=wg)
        out[k] = rx
    return out


def _optimised_rows(prep: _Prep, states: dict[str, _State], name: str, lz: Tensor, ld: Tensor, reg: _Region,
                    steps: int, valid: Tensor | None = None, target: Tensor | None = None) -> Tensor:
    """Lower values ``[B, R]`` of the rows ``lzᵀ v + ldᵀ Δv`` at node ``name`` with the lower slopes optimised per row.

    α-CROWN style: per ball, row and neuron of every ReLU-family node beneath ``name``, the lower slopes λ of
    ``h`` and ``h̃`` are free in ``[α, 1]``, projected into that range after every Adam step and again before
    every evaluation; the intervals stay the states'. Every evaluation is the plain back-substitution's
    arithmetic (rounding slack included) with other valid lines, so each is a certified lower value of its row
    and the row's maximum over the ``steps + 1`` evaluations is one (−inf where none is finite). Rows not
    ``valid`` are not pulled; a row stops pulling once its maximum exceeds its ``target``.
    """
    params, aux = _slope_params(prep, states, name, lz.shape[1])
    best = torch.full(lz.shape[:2], -math.inf, dtype=_F64)
    if not params or steps == 0:
        return best
    alphas = {k: cast(float, _alpha(prep.target.node(k).attrs["act"])) for k in params}
    groups: list[dict[str, Any]] = [{"params": [p for pp in params.values() for p in pp[:2]]},
                                    {"params": [p for pp in params.values() for p in pp[2:]], "lr": _LR_PLANE}]
    opt = torch.optim.Adam(groups, lr=_LR)
    ok = torch.ones_like(best, dtype=torch.bool) if valid is None else valid
    for it in range(steps + 1):
        with torch.enable_grad():
            low = _backsub(prep, states, name, lz, ld, reg, relax=_row_relax(prep, states, params, aux))
            with torch.no_grad():
                best = torch.maximum(best, torch.nan_to_num(low.detach(), nan=-math.inf))
                pull = ok & torch.isfinite(low) & (torch.ones_like(ok) if target is None else ~(best > target))
            if it == steps or not bool(pull.any()):
                break
            opt.zero_grad()
            (-torch.where(pull, low, torch.zeros_like(low)).sum()).backward()
        opt.step()
        with torch.no_grad():
            for k, pp in params.items():
                for p in pp[:2]:
                    p.clamp_(alphas[k], 1.0)
    return best


_PHASES = (torch.tensor([True, True, False, False, True, True]).view(1, 6, 1),
           torch.tensor([False, False, True, True, False, False]).view(1, 6, 1))
"""The two phases of a node's rows: first both sides of ``z`` and ``z̃``, then the differences ``δ`` still needed."""


def _states(prep: _Prep, reg: _Region, optimise: int = 0, deep: frozenset[str] = frozenset()) -> dict[str, _State]:
    """The intervals of every node, in topological order: the cheap interval step, then the rows ``_needed``
    back-substituted in two phases (:data:`_PHASES`), the node's intervals tightened after each: a neuron the
    first phase proves stable in both graphs needs no rows of its difference (its relaxation is exact; the
    difference keeps the cross-tightened interval). Every row is sound on its own."""
    zero = torch.zeros_like(reg.lo)
    states = {"input": _State((reg.lo, reg.hi, zero, zero, reg.lo, reg.hi))}
    for node in prep.target.nodes:
        st = _node_state(prep, node, states, reg)
        states[node.name] = st
        for phase in _PHASES:
            need = _needed(prep, node, st)
            if need is None or not bool((need & phase).any()):
                continue
            low = _refine(prep, states, node.name, need & phase, reg, optimise if node.name in deep else 0)
            l, u, dl, du, tl, tu = st.b
            st.b = _tighten((torch.maximum(l, low[:, 0]), torch.minimum(u, -low[:, 1]),
                             torch.maximum(dl, low[:, 2]), torch.minimum(du, -low[:, 3]),
                             torch.maximum(tl, low[:, 4]), torch.minimum(tu, -low[:, 5])))
    return states


# ---------------------------------------------------------------------------------------- public


def _flat_centres(g: Graph, ball: BallSpec, centres: Tensor | None) -> Tensor | None:
    """``[B, d]`` float64 centres from ``[B, *input_shape]`` or ``[B, d]`` (None: the ball's own centre)."""
    if centres is None:
        return None
    d = math.prod(g.input_shape)
    if not isinstance(centres, Tensor) or centres.dim() < 2 or centres[0].numel() != d or centres.shape[0] < 1 \
            or (centres.dim() > 2 and tuple(centres.shape[1:]) != g.input_shape):
        shape = tuple(centres.shape) if isinstance(centres, Tensor) else type(centres).__name__
        raise ProbPruneError(f"centres: shape {shape}, expected [B, {d}] or [B, {', '.join(map(str, g.input_shape))}]")
    return centres.detach().reshape(centres.shape[0], d).to("cpu", _F64)


def _flat_halfwidths(g: Graph, halfwidth: Tensor | None, flat: Tensor | None) -> Tensor | None:
    """``[B, d]`` float64 half-widths shaped as the centres (checked by ``_region``); None: the radius."""
    if halfwidth is None:
        return None
    if flat is None or not isinstance(halfwidth, Tensor) or halfwidth.shape[0] != flat.shape[0] \
            or halfwidth[0].numel() != flat.shape[1]:
        shape = tuple(halfwidth.shape) if isinstance(halfwidth, Tensor) else type(halfwidth).__name__
        raise ProbPruneError(f"halfwidth: shape {shape}, expected one half-width per centre coordinate (centres "
                             f"given: {None if flat is None else tuple(flat.shape)})")
    return halfwidth.detach().reshape(flat.shape).to("cpu", _F64)


def _identical(target: Graph, pruned: Graph) -> bool:
    return all(torch.equal(a.params[k], b.params[k]) and a.params[k].dtype == b.params[k].dtype
               for a, b in zip(target.nodes, pruned.nodes) for k in a.params)


def _assumptions(prep: _Prep, ball: BallSpec, boxes: bool = False) -> tuple[str, ...]:
    box = f" ∩ box {ball.box}" if ball.box is not None else ""
    what = "per-input half-widths (l-infinity boxes)" if boxes else f"radius {ball.radius!r}"
    ops = sorted({n.op for n in prep.target.nodes})
    acts = sorted({cast(Activation, n.attrs["act"]).kind for n in prep.target.nodes if n.op == "act"})
    return (f"ball: {ball.norm} {what}{box} (inputs flattened)",
            f"graph ops: {', '.join(ops)}" + (f"; activations {', '.join(acts)}" if acts else ""),
            "floating point: covers the exact gap and both graphs evaluated in float64 (float32 parameters cast "
            "exactly; IEEE round-to-nearest, any summation order, no TF32/FFT/Winograd convolution; transcendental "
            "activations within their assumed ulps); a float32 forward pass is not covered; computed in float64 "
            "with every rounding covered")


def _deep(prep: _Prep, depth: int) -> frozenset[str]:
    """The inputs of the last ``depth`` ReLU-family activations (their rows get optimised slopes too)."""
    acts = [n for n in prep.target.nodes if n.op == "act" and _alpha(n.attrs["act"]) is not None]
    return frozenset(n.inputs[0] for n in acts[len(acts) - depth:]) if depth > 0 else frozenset()


def _check_steps(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProbPruneError(f"{name}={v!r}: must be an integer >= 0")


def _output_rows(dl: Tensor, du: Tensor, cls: Tensor | None) -> tuple[Tensor, Tensor]:
    """The chord row ``−wᵀΔv`` (``w = lo + hi``) and, classes given, the margin rows ``e_c − e_j`` of F (on v)
    and of f (on v + Δv): ``[b, 1 (+ 2m), m]`` coefficients of v and of Δv."""
    m = dl.shape[-1]
    rows_z = torch.zeros(dl.shape[0], 1, m, dtype=_F64)
    rows_d = (-(dl + du)).unsqueeze(1)
    if cls is not None:
        eye = torch.eye(m, dtype=_F64)
        rows = eye[cls].unsqueeze(1) - eye.unsqueeze(0)  # [b, m, m]: e_c − e_j
        rows_z = torch.cat([rows_z, rows, rows], 1)
        rows_d = torch.cat([rows_d, torch.zeros_like(rows), rows], 1)
    return rows_z, rows_d


def _margins(low: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
    """The least margin rows of F and of f (``low`` from :func:`_output_rows`' rows), j ≠ c."""
    m = (low.shape[1] - 1) // 2
    not_c = torch.eye(m, dtype=_F64)[cls] == 0
    inf = torch.full_like(low[:, 1:m + 1], math.inf)
    return torch.where(not_c, low[:, 1:m + 1], inf).amin(-1), torch.where(not_c, low[:, m + 1:], inf).amin(-1)


def _optimised_output(prep: _Prep, states: dict[str, _State], reg: _Region, dl: Tensor, du: Tensor,
                      sq: Tensor, cls: Tensor | None, mt: Tensor | None, mp: Tensor | None, steps: int
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """The output's results with optimised slopes (:func:`_optimised_rows`), each never looser than the plain
    one given: the rows ``±Δv_j`` (intervals intersected), then the chord row of the tightened intervals (the
    smaller chord bound kept) and the margin rows of balls whose plain margins are not both > 0 (the larger
    kept; a margin row stops once > 0)."""
    b, m = dl.shape
    out = prep.target.output
    eye = torch.eye(m, dtype=_F64).expand(b, m, m)
    ld = torch.cat([eye, -eye], 1)
    low = _optimised_rows(prep, states, out, torch.zeros_like(ld), ld, reg, steps)
    dl, du = torch.maximum(dl, low[:, :m]), torch.minimum(du, -low[:, m:])
    rows_z, rows_d = _output_rows(dl, du, cls)
    valid = torch.zeros(rows_z.shape[:2], dtype=torch.bool)
    valid[:, 0] = True
    target = torch.full(valid.shape, math.inf, dtype=_F64)
    if cls is not None and mt is not None and mp is not None:
        valid[:, 1:] = ~((mt > 0) & (mp > 0)).unsqueeze(1)
        target[:, 1:] = 0.0
    if not bool(valid[:, 1:].any()):  # no margin to pull: the chord row alone
        rows_z, rows_d, valid, target = rows_z[:, :1], rows_d[:, :1], valid[:, :1], target[:, :1]
    low = _optimised_rows(prep, states, out, rows_z, rows_d, reg, steps, valid, target)
    sq = torch.minimum(sq, _chord_square(low[:, 0], dl, du))
    if cls is not None and mt is not None and mp is not None and low.shape[1] > 1:
        ot, op = _margins(low, cls)
        mt, mp = torch.maximum(mt, ot), torch.maximum(mp, op)
    return dl, du, sq, mt, mp


def _analyse(prep: _Prep, ball: BallSpec, centres: Tensor | None, batch_size: int, cls: Tensor | None = None,
             halfwidth: Tensor | None = None, optimise: int = 0, depth: int = 0
             ) -> tuple[_Region, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per chunk of balls: the states; the output differences' intervals ``[B, m]``, the chord bounds on
    ``‖f − F‖₂²`` ``[B]`` (:func:`_chord_square`) and (classes given) the certified margins ``[B]`` of both
    graphs. ``optimise`` > 0: then tightened by that many steps of slope optimisation
    (:func:`_optimised_output`), and the rows of the inputs of the last ``depth`` ReLU-family activations too."""
    d = math.prod(prep.target.input_shape)
    reg0 = _region(ball, centres, d, torch.device("cpu"), halfwidth)
    los, his, sqs, mts, mps = [], [], [], [], []
    out = prep.target.output
    deep = _deep(prep, depth) if optimise else frozenset()
    for start in range(0, reg0.centres.shape[0], batch_size):
        hw = None if halfwidth is None else reg0.radius[start:start + batch_size]  # type: ignore[index]
        reg = _region(ball, reg0.centres[start:start + batch_size], d, torch.device("cpu"), hw)
        states = _states(prep, reg, optimise, deep)
        _, _, dl, du, _, _ = states[out].b
        c = None if cls is None else cls[start:start + batch_size]
        rows_z, rows_d = _output_rows(dl, du, c)
        low = _backsub(prep, states, out, rows_z, rows_d, reg)
        sq = _chord_square(low[:, 0], dl, du)
        mt, mp = (None, None) if c is None else _margins(low, c)
        if optimise:
            dl, du, sq, mt, mp = _optimised_output(prep, states, reg, dl, du, sq, c, mt, mp, optimise)
        los.append(dl)
        his.append(du)
        sqs.append(sq)
        if mt is not None and mp is not None:
            mts.append(mt)
            mps.append(mp)
    mt = torch.cat(mts) if cls is not None else None
    mp = torch.cat(mps) if cls is not None else None
    return reg0, torch.cat(los), torch.cat(his), torch.cat(sqs), mt, mp


def _chord_square(low: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Upper bound ``[B]`` on ``‖Δv‖₂²`` over the ball from the chords of the convex ``Δv_j²`` on ``[lo_j, hi_j]``
    (``docs/certified.md`` "The output norm"): ``‖Δv‖₂² ≤ max_x wᵀΔv − Σ_j lo_j hi_j``, ``w = fl(lo + hi)``, with
    ``low`` a certified lower value of ``−wᵀΔv`` (one back-substituted row). Rounding: ``fl(lo + hi)`` is off by
    ``≤ u|w_j|`` (times ``|Δv_j| ≤ max(|lo_j|, |hi_j|)``), ``Σ lo_j hi_j`` by ``≤ γ_{m+1} Σ|lo_j hi_j|``, the final
    subtraction by ``2u`` of its parts; all added before the result is rounded up."""
    prod = lo * hi
    cs = (-prod).sum(-1)
    m = lo.shape[-1]
    mag = torch.maximum(lo.abs(), hi.abs())
    err = _g2(m + 2) * prod.abs().sum(-1) + 2.0 * _U * ((lo + hi).abs() * mag).sum(-1) * (1.0 + _g2(m + 2)) \
        + 2.0 * _U * (low.abs() + cs.abs())
    return (-_down(low - cs, err)).clamp_min(0.0)


def _value(lo: Tensor, hi: Tensor, squares: Tensor | None = None) -> Tensor:
    """``‖f(x) − F(x)‖₂ ≤ sqrt(Σ_j max(lo_j², hi_j²))`` — or ``sqrt(squares)`` where that (the chord bound on the
    squares, :func:`_chord_square`) is smaller — scaled for the float64 subtraction/norm and our rounding."""
    m = lo.shape[-1]
    sq = torch.maximum(lo * lo, hi * hi).sum(-1)
    if squares is not None:
        sq = torch.minimum(sq, squares)
    value = sq.sqrt() * ((1.0 + _gamma(m + 3, _U)) * (1.0 + _g2(m + 3))) + _TINY
    if not bool(torch.isfinite(value).all()):
        raise ProbPruneError("differential graph bound: overflows float64; refused")
    return value


def graph_differential_bound(target: Graph, pruned: Graph, ball: BallSpec, *, centres: Tensor | None = None,
                             batch_size: int = 8, halfwidth: Tensor | None = None, optimise: int = 0,
                             optimise_depth: int = 0) -> DifferentialBound:
    """Certified upper bound on ``sup_{x ∈ ball} ‖f(x) − F(x)‖₂`` for two graphs, by differential back-substitution.

    Args:
        target: F (a :class:`~probprune.nets.graph.Graph`, no trial dim).
        pruned: f, the same structure (nodes, ops, inputs, attributes), any parameter values.
        ball: radius, norm (``l2``/``linf``), optional box; its centre (flat) unless ``centres`` is given.
        centres: ``[B, *input_shape]`` or ``[B, d]`` centres, one ball each (vectorised).
        batch_size: balls per vectorised chunk.
        halfwidth: per-ball ℓ∞ half-widths shaped as ``centres`` (``linf`` only): ball b is the box ``c_b ± h_b``
            (∩ box), replacing the radius (how VNN-COMP states its properties).
        optimise: Adam steps on the unstable neurons' lower ReLU slopes, per objective row, of the rows the
            value is concretised from (the output's ``±Δv_j`` and the chord row; ``docs/certified.md`` §7.6);
            0: none. Each step costs about one back-substitution of those rows with gradients.
        optimise_depth: with ``optimise``, the rows of the inputs of the last ``optimise_depth`` ReLU-family
            activations are optimised too (their intervals tightened before the relaxations above them are built).

    Returns:
        :class:`~probprune.bounds.differential.DifferentialBound` (``centres`` flat ``[B, d]``;
        ``forward_dtype`` ``"float64"``: the graphs evaluated in float64, and exact arithmetic, are covered).

    >>> import torch
    >>> from probprune.nets.graph import Graph, Node
    >>> F = Graph([Node("fc", "linear", ("input",), params={"weight": torch.eye(2)})], (2,))
    >>> f = F.with_parameters({"fc.weight": torch.diag(torch.tensor([1.0, 0.0]))})
    >>> b = graph_differential_bound(F, f, BallSpec(radius=1.0, centre=(0.0, 2.0)))
    >>> abs(float(b.value[0]) - 3.0) < 1e-9   # f − F = (0, −x₂), x₂ ∈ [1, 3]
    True
    """
    _check_batch_size(batch_size)
    _check_steps("optimise", optimise)
    _check_steps("optimise_depth", optimise_depth)
    prep = _prepare(target, pruned)
    flat = _flat_centres(prep.target, ball, centres)
    hw = _flat_halfwidths(prep.target, halfwidth, flat)
    if _identical(target, pruned):
        reg = _region(ball, flat, math.prod(prep.target.input_shape), torch.device("cpu"), hw)
        z = torch.zeros(reg.centres.shape[0], math.prod(prep.target.output_shape), dtype=_F64)
        return DifferentialBound(z[:, 0], z, z.clone(), ball, reg.centres, "float64",
                                 (*_assumptions(prep, ball, hw is not None), "the graphs are bitwise identical: gap 0"))
    reg, lo, hi, sq, _, _ = _analyse(prep, ball, flat, batch_size, halfwidth=hw, optimise=optimise,
                                     depth=optimise_depth)
    return DifferentialBound(_value(lo, hi, sq), lo, hi, ball, reg.centres, "float64",
                             _assumptions(prep, ball, hw is not None))


class _Flat:
    """A graph as a function of flat inputs ``[N, d]`` → ``[N, m]`` (float64), for the searches."""

    def __init__(self, g: Graph) -> None:
        self.g = g.to(_F64, "cpu")

    def __call__(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.g(x.reshape(x.shape[0], *self.g.input_shape))).reshape(x.shape[0], -1)


def graph_gap_search(target: Graph, pruned: Graph, ball: BallSpec, generator: torch.Generator, *,
                     centres: Tensor | None = None, n_restarts: int = 8, n_steps: int = 100,
                     step: float = 0.25, halfwidth: Tensor | None = None) -> GapWitness:
    """Lower bound on the gap over each ball by projected Adam ascent (float64), with witnesses inside the ball.

    The search of :func:`probprune.bounds.differential.gap_search` on graphs: centre plus ``n_restarts`` random
    starts, projected into the ball ∩ box; the value is ``‖f(x) − F(x)‖₂`` evaluated in float64 at a point
    checked to lie in the closed ball ∩ box. Witnesses ``x`` are flat ``[B, d]``. ``halfwidth``: per-ball ℓ∞
    boxes, as for :func:`graph_differential_bound`.
    """
    check_graph_pair(target, pruned)
    for name, v in (("n_restarts", n_restarts), ("n_steps", n_steps)):
        _check_steps(name, v)
    flat = _flat_centres(target, ball, centres)
    reg = _region(ball, flat, math.prod(target.input_shape), torch.device("cpu"),
                  _flat_halfwidths(target, halfwidth, flat))
    t64, p64 = _Flat(target), _Flat(pruned)

    def obj(x: Tensor) -> Tensor:
        f2 = x.reshape(-1, x.shape[-1])
        diff = p64(f2) - t64(f2)
        return (diff * diff).sum(-1).reshape(x.shape[:-1])

    _, xb = _ascend(obj, reg, n_restarts, n_steps, step, generator)
    with torch.no_grad():
        val = obj(xb.unsqueeze(0))[0].sqrt()
    return GapWitness(value=val.detach(), x=xb.detach())


def graph_certified_agreement(target: Graph, pruned: Graph, ball: BallSpec, *, centres: Tensor | None = None,
                              attack: bool = True, generator: torch.Generator | None = None, n_restarts: int = 4,
                              n_steps: int = 50, batch_size: int = 8, halfwidth: Tensor | None = None,
                              optimise: int = 0, optimise_depth: int = 0) -> AgreementResult:
    """Certify (or refute, with a witness) that the graphs f and F have the same top-1 class everywhere in the ball.

    As :func:`probprune.bounds.differential.certified_agreement`: ``c`` is F's top-1 class at the centre
    (float64); certified means the back-substituted lower bounds of ``F_c − F_j`` and ``f_c − f_j`` (f's logits
    are ``v + Δv``) are > 0 for every ``j ≠ c`` — exactly and for both graphs evaluated in float64. Otherwise the
    attack looks for an input of the ball where the top-1 classes differ (``"refuted"``). The bound of the same
    propagation is ``AgreementResult.bound``. ``halfwidth``: per-ball ℓ∞ boxes, as for
    :func:`graph_differential_bound`. ``optimise``, ``optimise_depth``: as there; the margin rows of balls the
    plain relaxation leaves uncertified are optimised too (each stops once > 0).
    """
    _check_batch_size(batch_size)
    _check_steps("optimise", optimise)
    _check_steps("optimise_depth", optimise_depth)
    prep = _prepare(target, pruned)
    m = math.prod(prep.target.output_shape)
    if m < 2 or len(prep.target.output_shape) != 1:
        raise ProbPruneError(f"certified agreement: the graph's output shape is {prep.target.output_shape}; a "
                             "classifier needs [m] logits, m >= 2")
    flat = _flat_centres(prep.target, ball, centres)
    hw = _flat_halfwidths(prep.target, halfwidth, flat)
    reg0 = _region(ball, flat, math.prod(prep.target.input_shape), torch.device("cpu"), hw)
    t64, p64 = _Flat(prep.target), _Flat(prep.pruned)
    with torch.no_grad():
        cls = t64(reg0.centres).argmax(-1)
    reg, lo, hi, sq, mt_, mp_ = _analyse(prep, ball, reg0.centres, batch_size, cls, hw, optimise, optimise_depth)
    mt, mp = cast(Tensor, mt_), cast(Tensor, mp_)
    if _identical(target, pruned):
        z = torch.zeros_like(lo)
        same = (*_assumptions(prep, ball, hw is not None), "the graphs are bitwise identical: gap 0")
        bound = DifferentialBound(z[:, 0], z, z.clone(), ball, reg.centres, "float64", same)
    else:
        bound = DifferentialBound(_value(lo, hi, sq), lo, hi, ball, reg.centres, "float64",
                                  _assumptions(prep, ball, hw is not None))
    verdicts: list[Verdict] = ["certified" if bool(a > 0) and bool(b > 0) else "not certified"
                               for a, b in zip(mt, mp)]
    witnesses: list[Tensor | None] = [None] * len(verdicts)
    open_idx = [i for i, v in enumerate(verdicts) if v != "certified"]
    if attack and open_idx:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        found = _attack(cast(Any, t64), cast(Any, p64), ball, reg0.centres[open_idx], cls[open_idx], gen,
                        n_restarts, n_steps, None if hw is None else hw[open_idx])
        for i, w in zip(open_idx, found):
            if w is not None:
                verdicts[i] = "refuted"
                witnesses[i] = w
    return AgreementResult(tuple(verdicts), cls, mt, mp, tuple(witnesses), bound)


