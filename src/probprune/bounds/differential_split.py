"""Branch and bound on the differential bound: split unstable neurons, bound every leaf, take the max.

The ball ``X`` (ℓ2 / ℓ∞ ∩ box, or a per-input box) is cut by the sign of one pre-activation at a time:
for a hidden neuron i of layer k, of the target (``z_{k,i}``) or of the pruned net (``z̃_{k,i} = z + δ``),

    X = {x ∈ X : z_{k,i}(x) ≥ 0} ∪ {x ∈ X : z_{k,i}(x) ≤ 0}.

Every leaf of the tree is a set of such sign constraints. In a leaf the propagation of
:mod:`probprune.bounds.differential` runs unchanged, except that after layer k's intervals are computed (valid
on the whole ball, hence on the leaf) the constrained neuron's interval is clipped to ``[max(l, 0), u]`` or
``[l, min(u, 0)]`` (valid on the leaf by its constraint) and cross-tightened again; the relaxation then
treats that neuron as stable (exact). Every later interval, relaxation and the output's bounds are computed
from these and hold for every x of the leaf. The pre-activations are those *as computed* in the forward
dtype (the propagation models the rounding ρ inside), so the constraints are on the computed values; for each
x and each admissible rounding one of the two signs holds, so the leaves still cover the ball.

* **Gap.** ``sup_X ‖f − F‖₂ = max over leaves of sup_leaf``, each bounded by the leaf's own
  differential value (:func:`~probprune.bounds.differential._gap_bound` of its intervals, with the chord row);
  a child's intervals are intersected with its parent's and its value min'ed with its parent's (the parent's
  bounds hold on the child's smaller set). The returned value is the minimum of this and the plain bound.
* **Agreement.** Certified when on every leaf both margins ``F_c − F_j`` and ``f_c − f_j`` (j ≠ c) have
  back-substituted lower bounds > 0 (a child keeps the larger of its and its parent's margins).
* **Infeasible leaves.** If any interval of a leaf comes out empty (``lower > upper`` at any layer: e.g. the
  leaf asks ``z ≤ 0`` where ``l > 0``), the leaf is empty: each interval encloses its quantity at every x of
  the leaf, so a point of the leaf would lie in an empty interval. Only such leaves are dropped.
* **Choice of the neuron** (a heuristic; it changes tightness, never soundness): BaBSR-like — one objective
  row (the gap's per-coordinate worst ends, or the worst margin row) is pushed down through the leaf's
  relaxations without rounding; a neuron's score is ``|coefficient| × the looseness of its relaxation at the
  box centre`` (h for a split of z, h̃ for z̃, half of the joint Δh term to either); the largest score among
  neurons unstable in the leaf is split.
* **Budget.** ``leaves`` per ball (the tree's leaves, empty ones included); rounds split the worst half of a
  ball's splittable leaves (by value or margin), every round's new leaves batched as balls of one propagation.
  ``leaves ≤ 1`` is the plain bound exactly.

Derivation and the rounding argument: ``docs/certified.md`` ("Branch and bound").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from probprune.bounds.differential import (
    AgreementResult,
    DifferentialBound,
    Verdict,
    _Analysis,
    _backsub,
    _chord_square,
    _cross,
    _decompose,
    _down,
    _dtype,
    _g2,
    _gap_bound,
    _hw,
    _identical,
    _margin_rows,
    _min_linear,
    _Pair,
    _prepare,
    _propagate,
    _Region,
    _region,
    _rho,
    _rowdot,
    certified_agreement,
    differential_bound,
)
from probprune.config import BallSpec, ProbPruneError
from probprune.nets import Net

__all__ = ["split_certified_agreement", "split_differential_bound"]


def _check_leaves(leaves: object) -> int:
    if isinstance(leaves, bool) or not isinstance(leaves, int) or leaves < 0:
        raise ProbPruneError(f"leaves={leaves!r}: must be an integer >= 0 (leaves per ball; 0 or 1: no splitting)")
    return leaves


# ------------------------------------------------------------------------------------------ leaves


@dataclass(frozen=True, eq=False)
class _Leaves:
    """A batch of leaves: the ball of each and its sign constraints per hidden layer.

    ``sz[k]``, ``st[k]``: ``[N, n_k]`` int8, +1: ``z_{k,i} ≥ 0`` (``z̃`` for ``st``), −1: ``≤ 0``, 0: free.
    """

    ball: Tensor
    sz: tuple[Tensor, ...]
    st: tuple[Tensor, ...]

    def take(self, idx: Tensor) -> _Leaves:
        return _Leaves(self.ball[idx], tuple(t[idx] for t in self.sz), tuple(t[idx] for t in self.st))


def _roots(pair: _Pair, n_balls: int, device: torch.device) -> _Leaves:
    widths = [w.shape[0] for w in pair.w[:-1]]
    zeros = tuple(torch.zeros(n_balls, n, dtype=torch.int8, device=device) for n in widths)
    return _Leaves(torch.arange(n_balls, device=device), zeros, tuple(t.clone() for t in zeros))


def _children(lv: _Leaves, parents: Tensor, layer: Tensor, kind: Tensor, neuron: Tensor) -> _Leaves:
    """Two children per parent (``parents`` ``[P]`` indices): the split neuron ≥ 0, then ≤ 0."""
    sub = lv.take(torch.cat([parents, parents]))
    sign = torch.cat([torch.ones_like(parents), -torch.ones_like(parents)]).to(torch.int8)
    lay, knd, neu = (torch.cat([t, t]) for t in (layer, kind, neuron))
    sz, st = [t.clone() for t in sub.sz], [t.clone() for t in sub.st]
    rows = torch.arange(sign.shape[0], device=sign.device)
    for k in range(len(sz)):
        for kk, tgt in ((0, sz), (1, st)):
            sel = (lay == k) & (knd == kk)
            if bool(sel.any()):
                tgt[k][rows[sel], neu[sel]] = sign[sel]
    return _Leaves(sub.ball, tuple(sz), tuple(st))


def _clipper(lv: _Leaves, parent: tuple[tuple[Tensor, ...], ...] | None
             ) -> Callable[[int, tuple[Tensor, ...]], tuple[Tensor, ...]]:
    """The hook of :func:`~probprune.bounds.differential._propagate`: layer k's intervals intersected with the
    parent leaf's (valid on the parent's set, which holds this leaf's), clipped by the leaf's sign constraints
    (valid on the leaf), then cross-tightened."""
    def clip(k: int, b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        sz, st = lv.sz[k], lv.st[k]
        if parent is None and not bool((sz != 0).any() or (st != 0).any()):
            return b
        l, u, dl, du, tl, tu = b
        if parent is not None:
            pl_, pu_, pdl, pdu, ptl, ptu = parent[k]
            l, dl, tl = torch.maximum(l, pl_), torch.maximum(dl, pdl), torch.maximum(tl, ptl)
            u, du, tu = torch.minimum(u, pu_), torch.minimum(du, pdu), torch.minimum(tu, ptu)
        l = torch.where(sz > 0, l.clamp_min(0.0), l)
        u = torch.where(sz < 0, u.clamp_max(0.0), u)
        tl = torch.where(st > 0, tl.clamp_min(0.0), tl)
        tu = torch.where(st < 0, tu.clamp_max(0.0), tu)
        return _cross(l, u, dl, du, tl, tu)
    return clip


def _empty(bounds: list[tuple[Tensor, ...]]) -> Tensor:
    """``[N]``: some interval of the leaf is empty (``lower > upper``), so the leaf is (proved) empty."""
    out = torch.zeros(bounds[0][0].shape[0], dtype=torch.bool, device=bounds[0][0].device)
    for l, u, dl, du, tl, tu in bounds:
        out |= ((l > u) | (dl > du) | (tl > tu)).any(-1)
    return out


# ------------------------------------------------------------------------------------------ input cuts


@dataclass(frozen=True, eq=False)
class _Cut:
    """Linear constraints ``G x + e ≥ 0`` that hold on each leaf: its sign constraints on the *first* layer's
    pre-activations, which are affine in x. ``G`` ``[B, q, d]`` rows ``s_i W_i`` (``W̃_i`` for z̃; zero rows pad),
    ``e`` ``[B, q]`` ``s_i b_i + ρ_i`` rounded up (ρ: the bound on the forward rounding of that pre-activation,
    so the constraint holds for the computed value: ``s_i fl(z_i) ≥ 0`` ⇒ ``s_i (W_i x + b_i) + ρ_i ≥ 0``).

    Used by ``_min_linear`` on ℓ∞ regions (boxes): for β ≥ 0, ``λᵀx + c ≥ (λ − Gᵀβ)ᵀx + c − βᵀe`` on the leaf, and
    the right side is minimised over the whole box (docs/certified.md, "Branch and bound").
    """

    g: Tensor
    e: Tensor

    def take(self, idx: Tensor) -> _Cut:
        return _Cut(self.g[idx], self.e[idx])

    def __call__(self, lam: Tensor, const: Tensor, reg: _Region) -> Tensor:
        if reg.norm != "linf" or lam.dim() != 3:
            return _min_linear(lam, const, reg)  # β = 0 (shared rows, ℓ2 balls)
        beta = _betas(lam, self.g, self.e, reg.lo, reg.hi)
        lam2 = lam - torch.einsum("brq,bqd->brd", beta, self.g)
        c2 = const - (beta * self.e.unsqueeze(1)).sum(-1)
        q, d = self.g.shape[1], lam.shape[-1]
        gq = _g2(q + 2)
        # |fl(λ − Gᵀβ) − (λ − Gᵀβ)| ≤ γ (|λ| + |G|ᵀβ) per entry, times |x| ≤ xmax; the constant likewise
        err = gq * (lam.abs() + torch.einsum("brq,bqd->brd", beta, self.g.abs()))
        xmax = torch.maximum(reg.lo.abs(), reg.hi.abs())
        slack = _rowdot(err, xmax) * (1.0 + _g2(d + 2)) \
            + gq * (const.abs() + (beta * self.e.abs().unsqueeze(1)).sum(-1))
        return _down(_min_linear(lam2, c2, reg), slack)


def _betas(lam: Tensor, g: Tensor, e: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Multipliers ``β ≥ 0`` ``[B, R, q]``: one sweep of exact coordinate ascent on the concave, piecewise-linear
    ``φ(β) = min_{x ∈ [lo, hi]} (λ − Gᵀβ)ᵀx − βᵀe`` (a heuristic: any β ≥ 0 gives a valid bound).

    Along ``β_i`` the slope is ``−e_i − Σ_d g_d (lo_d if t_d > 0 else hi_d)`` with ``t = λ − β_i g``; it drops by
    ``|g_d| (hi_d − lo_d)`` where ``t_d`` crosses 0 (at ``β = t_d / g_d``); the maximiser is the first breakpoint
    where it turns ≤ 0 (a weighted median).
    """
    bsz, r, _ = lam.shape
    q = g.shape[1]
    beta = torch.zeros(bsz, r, q, dtype=lam.dtype, device=lam.device)
    cur = lam
    lo3, hi3, w = lo.unsqueeze(1), hi.unsqueeze(1), (hi - lo).clamp_min(0).unsqueeze(1)
    inf = torch.tensor(math.inf, dtype=lam.dtype, device=lam.device)
    for i in range(q):
        gi, ei = g[:, i].unsqueeze(1), e[:, i].unsqueeze(1)
        if not bool((gi != 0).any()):
            continue
        pos = (cur > 0) | ((cur == 0) & (gi < 0))
        s0 = -ei - (gi * torch.where(pos, lo3, hi3)).sum(-1)
        valid = (gi != 0) & (cur * gi > 0)
        bp = torch.where(valid, cur / torch.where(gi != 0, gi, 1.0), inf)
        order = bp.sort(-1)
        cw = torch.where(valid, gi.abs() * w, 0.0).gather(-1, order.indices).cumsum(-1)
        hit = (s0.unsqueeze(-1) - cw) <= 0
        k = hit.to(torch.int8).argmax(-1, keepdim=True)
        last = torch.where(torch.isfinite(order.values), order.values, 0.0).amax(-1)
        pick = torch.where(hit.any(-1), order.values.gather(-1, k).squeeze(-1), last)
        bi = torch.nan_to_num(torch.where(s0 <= 0, 0.0, pick), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        beta[..., i] = bi
        cur = cur - bi.unsqueeze(-1) * gi
    return beta


def _cut(pair: _Pair, lv: _Leaves, reg: _Region, dt_t: torch.dtype, dt_p: torch.dtype) -> _Cut | None:
    """The leaves' first-layer sign constraints as :class:`_Cut` (``None`` where no leaf of the batch has any)."""
    sz, st = lv.sz[0], lv.st[0]
    if reg.norm != "linf" or not bool((sz != 0).any() or (st != 0).any()):
        return None
    xmax = torch.maximum(reg.lo.abs(), reg.hi.abs())
    pinf = torch.tensor(math.inf, dtype=torch.float64, device=xmax.device)
    gs, es = [], []
    for sign, w, b, dt in ((sz, pair.w[0], pair.b[0], dt_t), (st, pair.wt[0], pair.bt[0], dt_p)):
        q = int((sign != 0).sum(1).max())
        if q == 0:
            continue
        idx = torch.sort((sign == 0).to(torch.int8), dim=1, stable=True).indices[:, :q]  # constrained first
        s = sign.gather(1, idx).double()
        rho = _rho(w, b, xmax, dt).gather(1, idx)
        gs.append(s.unsqueeze(-1) * w[idx])
        es.append(torch.where(s != 0, torch.nextafter(s * b[idx] + rho, pinf), 0.0))
    return _Cut(torch.cat(gs, 1), torch.cat(es, 1))


# ------------------------------------------------------------------------------------------ choice


def _split_choice(an: _Analysis, lz: Tensor, ld: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BaBSR-like choice per leaf: ``(score, layer, kind, neuron)`` ``[N]`` (kind 0: z, 1: z̃; score ≤ 0: none).

    The objective ``lzᵀ z_L + ldᵀ δ_L`` (``[N, m]``, to be bounded below) goes down through the leaf's
    relaxations (float, no rounding: a heuristic); per hidden neuron the score is the coefficient's magnitude
    times the relaxation's looseness at the box centre, for the decomposition the bound itself would pick.
    """
    pair = an.pair
    n = lz.shape[0]
    best = torch.zeros(n, dtype=torch.float64, device=lz.device)
    layer = torch.zeros(n, dtype=torch.long, device=lz.device)
    kind, neuron = torch.zeros_like(layer), torch.zeros_like(layer)
    for j in range(len(pair.w) - 1, 0, -1):
        a = lz @ pair.w[j] - ld @ pair.d[j]
        gg = ld @ pair.wt[j]
        rx = an.relax[j - 1]
        # the decomposition the bound itself picks (one row per leaf; its rounding slack is not needed here)
        ch, cd, ct = (t[:, 0] for t in _decompose(a.unsqueeze(1), gg.unsqueeze(1), rx)[:3])
        if pair.alpha[j - 1] is not None:
            l, u, _, _, tl, tu = an.bounds[j - 1]
            joint = 0.5 * cd.abs() * rx.width_g
            for kk, (sc, lo_, hi_) in enumerate(((ch.abs() * rx.width_h + joint, l, u),
                                                 (ct.abs() * rx.width_t + joint, tl, tu))):
                sc = torch.where((lo_ < 0) & (hi_ > 0), sc, torch.full_like(sc, -1.0))
                val, idx = sc.max(-1)
                better = val > best
                best = torch.where(better, val, best)
                layer = torch.where(better, torch.full_like(layer, j - 1), layer)
                kind = torch.where(better, torch.full_like(kind, kk), kind)
                neuron = torch.where(better, idx, neuron)
        (al, _), (au, _) = rx.hl, rx.hu
        (pl, ql, _), (pu, qu, _) = rx.gl, rx.gu
        (tal, _), (tau, _) = rx.tl, rx.tu
        tz = ct * torch.where(ct > 0, tal, tau)
        lz = ch * torch.where(ch > 0, al, au) + cd * torch.where(cd > 0, pl, pu) + tz
        ld = cd * torch.where(cd > 0, ql, qu) + tz
    return best, layer, kind, neuron


# ------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True, eq=False)
class _Eval:
    """Per leaf of a batch: the output-difference intervals, the gap value (``inf``: not finite), margins,
    emptiness, and the chosen split."""

    lo: Tensor
    hi: Tensor
    value: Tensor
    mt: Tensor
    mp: Tensor
    empty: Tensor
    choice: tuple[Tensor, Tensor, Tensor, Tensor]
    hidden: tuple[tuple[Tensor, ...], ...]  # per hidden layer the leaf's six intervals (after clipping)

    def take(self, idx: Tensor) -> _Eval:
        c = self.choice
        return _Eval(self.lo[idx], self.hi[idx], self.value[idx], self.mt[idx], self.mp[idx], self.empty[idx],
                     (c[0][idx], c[1][idx], c[2][idx], c[3][idx]), tuple(tuple(t[idx] for t in b) for b in self.hidden))


def _cat(parts: list[_Eval]) -> _Eval:
    one = [torch.cat(t) for t in zip(*[(p.lo, p.hi, p.value, p.mt, p.mp, p.empty, *p.choice) for p in parts])]
    hidden = tuple(tuple(torch.cat([p.hidden[k][j] for p in parts]) for j in range(6))
                   for k in range(len(parts[0].hidden)))
    return _Eval(one[0], one[1], one[2], one[3], one[4], one[5], (one[6], one[7], one[8], one[9]), hidden)


def _evaluate(pair: _Pair, ball: BallSpec, centres: Tensor, hw: Tensor | None, lv: _Leaves, dt_t: torch.dtype,
              dt_p: torch.dtype, parent: _Eval | None, cls: Tensor | None) -> _Eval:
    """One propagation of a batch of leaves (each a ball of the batch, with its clipping hook).

    ``parent``: the parents' results, one per leaf (their intervals hold on the leaves: intersected in);
    ``cls``: F's class per leaf for the margins (else the margins are ``nan`` and the choice follows the gap).
    """
    reg = _region(ball, centres[lv.ball], pair.w[0].shape[1], pair.w[0].device, None if hw is None else hw[lv.ball])
    reg = dataclasses.replace(reg, cut=_cut(pair, lv, reg, dt_t, dt_p))
    relax, bounds, rho = _propagate(pair, reg, dt_t, dt_p, clip=_clipper(lv, None if parent is None else parent.hidden))
    an = _Analysis(reg, pair, relax, bounds, rho)
    empty = _empty(bounds)
    _, _, lo, hi, _, _ = bounds[-1]
    if parent is not None:
        lo, hi = torch.maximum(lo, parent.lo), torch.minimum(hi, parent.hi)
    empty = empty | (lo > hi).any(-1)
    nan = torch.full_like(lo[:, 0], math.nan)
    value = torch.full_like(nan, math.inf)
    ok = (~empty) & torch.isfinite(lo).all(-1) & torch.isfinite(hi).all(-1)
    k = len(pair.w) - 1
    if cls is None:
        sq = _chord_square(an, torch.where(ok.unsqueeze(-1), lo, 0.0), torch.where(ok.unsqueeze(-1), hi, 0.0),
                           dt_t, dt_p)
        fin = ok & torch.isfinite(sq)
        if bool(fin.any()):
            value[fin] = _gap_bound(lo[fin], hi[fin], ball, reg.centres[fin], dt_t, dt_p, sq[fin]).value
        end = torch.where(hi * hi >= lo * lo, hi, lo)
        rows = (torch.zeros_like(lo), torch.nan_to_num(-end, nan=0.0, posinf=0.0, neginf=0.0))
        return _Eval(lo, hi, value, nan, nan, empty, _split_choice(an, *rows), tuple(bounds[:-1]))
    lz, ld, valid = _margin_rows(an, cls)
    low = _backsub(lz, ld, k, pair, relax, reg, rho)
    low = torch.where(valid, torch.nan_to_num(low, nan=-math.inf), torch.full_like(low, math.inf))
    m = lo.shape[-1]
    mt, mp = low[:, :m].amin(-1), low[:, m:].amin(-1)
    worst = low.argmin(-1)
    rows_z = lz[torch.arange(lz.shape[0]), worst]
    rows_d = ld[torch.arange(ld.shape[0]), worst]
    return _Eval(lo, hi, value, mt, mp, empty, _split_choice(an, rows_z, rows_d), tuple(bounds[:-1]))


def _evaluate_chunks(pair: _Pair, ball: BallSpec, centres: Tensor, hw: Tensor | None, lv: _Leaves,
                     dt_t: torch.dtype, dt_p: torch.dtype, parent: _Eval | None, cls: Tensor | None,
                     batch_size: int) -> _Eval:
    parts = []
    for s in range(0, lv.ball.shape[0], batch_size):
        idx = torch.arange(s, min(s + batch_size, lv.ball.shape[0]), device=lv.ball.device)
        parts.append(_evaluate(pair, ball, centres, hw, lv.take(idx), dt_t, dt_p,
                               None if parent is None else parent.take(idx), None if cls is None else cls[idx]))
    return _cat(parts)


# ------------------------------------------------------------------------------------------ the tree


@dataclass(frozen=True, eq=False)
class _Tree:
    """The result of the tree per ball: gap value ``[B]`` (max over non-empty leaves), the union of the leaves'
    intervals ``[B, m]``, whether every leaf's margins are > 0 ``[B]``, the minimal margins ``[B]``, and the
    number of leaves ``[B]``."""

    value: Tensor
    lo: Tensor
    hi: Tensor
    proven: Tensor
    mt: Tensor
    mp: Tensor
    n_leaves: Tensor


def _pick(ev: _Eval, lv: _Leaves, count: Tensor, leaves: int, agree: bool) -> Tensor:
    """Indices of the leaves to split this round (module docstring: the worst half of a ball's leaves for the
    gap; every open leaf for agreement, when the budget allows them all)."""
    live = ~ev.empty
    has = ev.choice[0] > 0
    out: list[Tensor] = []
    for b in range(count.shape[0]):
        room = leaves - int(count[b])
        if room <= 0:
            continue
        mine = ((lv.ball == b) & live).nonzero().flatten()
        if agree:
            opn = mine[~((ev.mt[mine] > 0) & (ev.mp[mine] > 0))]
            if opn.numel() == 0 or opn.numel() > room or not bool(has[opn].all()):
                continue  # proved, or it cannot be proved within the budget
            out.append(opn)
            continue
        if mine.numel() == 0:
            continue
        order = mine[torch.sort(ev.value[mine], descending=True, stable=True).indices]
        take = order[:min(room, (order.numel() + 1) // 2)]
        ok = torch.cumprod(has[take].to(torch.int64), 0).bool()  # stop at the first unsplittable leaf
        out.append(take[ok])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=lv.ball.device)


def _grow(pair: _Pair, ball: BallSpec, centres: Tensor, hw: Tensor | None, dt_t: torch.dtype, dt_p: torch.dtype,
          leaves: int, batch_size: int, cls: Tensor | None) -> _Tree:
    """Branch and bound over every ball of ``centres`` (``cls`` given: for the margins, else for the gap)."""
    nb, dev = centres.shape[0], centres.device
    lv = _roots(pair, nb, dev)
    ev = _evaluate_chunks(pair, ball, centres, hw, lv, dt_t, dt_p, None, cls, batch_size)
    count = torch.ones(nb, dtype=torch.long, device=dev)
    while True:
        par = _pick(ev, lv, count, leaves, cls is not None)
        if par.numel() == 0:
            break
        _, layer, kind, neuron = (t[par] for t in ev.choice)
        kids = _children(lv, par, layer, kind, neuron)
        p2 = torch.cat([par, par])
        ek = _evaluate_chunks(pair, ball, centres, hw, kids, dt_t, dt_p, ev.take(p2),
                              None if cls is None else cls[kids.ball], batch_size)
        # a child lies in its parent: the parent's bounds hold on it too
        ek = dataclasses.replace(ek, value=torch.minimum(ek.value, ev.value[p2]),
                                 mt=torch.maximum(ek.mt, ev.mt[p2]), mp=torch.maximum(ek.mp, ev.mp[p2]))
        keep = torch.ones(lv.ball.shape[0], dtype=torch.bool, device=dev)
        keep[par] = False
        kidx = keep.nonzero().flatten()
        lv = _Leaves(torch.cat([lv.ball[kidx], kids.ball]),
                     tuple(torch.cat([a[kidx], c]) for a, c in zip(lv.sz, kids.sz)),
                     tuple(torch.cat([a[kidx], c]) for a, c in zip(lv.st, kids.st)))
        ev = _cat([ev.take(kidx), ek])
        count.index_add_(0, kids.ball[: par.numel()], torch.ones_like(par))
    return _summarise(ev, lv, nb, count)


def _summarise(ev: _Eval, lv: _Leaves, nb: int, count: Tensor) -> _Tree:
    m = ev.lo.shape[-1]
    dev = ev.lo.device
    value = torch.full((nb,), math.inf, dtype=torch.float64, device=dev)
    lo = torch.full((nb, m), math.inf, dtype=torch.float64, device=dev)
    hi = torch.full((nb, m), -math.inf, dtype=torch.float64, device=dev)
    mt = torch.full((nb,), math.inf, dtype=torch.float64, device=dev)
    mp = mt.clone()
    for b in range(nb):
        mine = ((lv.ball == b) & ~ev.empty).nonzero().flatten()
        if mine.numel() == 0:  # every leaf proved empty: impossible (the centre is in the ball); keep the plain bound
            lo[b], hi[b] = -math.inf, math.inf
            mt[b] = mp[b] = -math.inf
            continue
        value[b] = ev.value[mine].max()
        lo[b], hi[b] = ev.lo[mine].amin(0), ev.hi[mine].amax(0)
        mt[b], mp[b] = ev.mt[mine].min(), ev.mp[mine].min()
    proven = (mt > 0) & (mp > 0)
    return _Tree(value, lo, hi, proven, mt, mp, count)


# ------------------------------------------------------------------------------------------ public


def _combine(plain: DifferentialBound, tree: _Tree, leaves: int) -> DifferentialBound:
    """The plain bound intersected with the tree's (both valid): min of the values, intersection of intervals."""
    value = torch.where(torch.isnan(tree.value), plain.value, torch.minimum(plain.value, tree.value))
    lo = torch.maximum(plain.lower, torch.nan_to_num(tree.lo, nan=-math.inf))
    hi = torch.minimum(plain.upper, torch.nan_to_num(tree.hi, nan=math.inf))
    note = (f"branch and bound: at most {leaves} leaves per ball (sign splits of unstable pre-activations); "
            "the minimum of the plain and the split bound")
    return dataclasses.replace(plain, value=value, lower=lo, upper=hi, assumptions=(*plain.assumptions, note))


def split_differential_bound(target: Net, pruned: Net, ball: BallSpec, *, leaves: int = 8,
                             centres: Tensor | None = None, forward_dtype: torch.dtype | None = None,
                             batch_size: int = 32, halfwidth: Tensor | None = None) -> DifferentialBound:
    """:func:`~probprune.bounds.differential.differential_bound` tightened by branch and bound (module docstring).

    Args:
        target, pruned, ball, centres, forward_dtype, batch_size, halfwidth: as ``differential_bound``
            (``batch_size``: leaves per vectorised chunk).
        leaves: at most this many leaves per ball (0 or 1: the plain bound exactly).

    Returns:
        :class:`~probprune.bounds.differential.DifferentialBound`: per ball the minimum of the plain value and the
        maximum over the tree's non-empty leaves (never larger than the plain value).

    >>> import torch
    >>> from probprune.config import NetSpec
    >>> F = Net.from_weights(NetSpec(widths=(1, 1, 1)), [torch.ones(1, 1), torch.ones(1, 1)])
    >>> f = Net.from_weights(NetSpec(widths=(1, 1, 1)), [torch.ones(1, 1), torch.zeros(1, 1)])
    >>> b = split_differential_bound(F, f, BallSpec(radius=1.0), leaves=2)   # f − F = −relu(x), x ∈ [−1, 1]
    >>> abs(float(b.value[0]) - 1.0) < 1e-6
    True
    """
    _check_leaves(leaves)
    plain = differential_bound(target, pruned, ball, centres=centres, forward_dtype=forward_dtype,
                               batch_size=batch_size, halfwidth=halfwidth)
    if leaves <= 1 or _identical(target, pruned):
        return plain
    pair = _prepare(target, pruned)
    dt_t, dt_p = _dtype(target, forward_dtype), _dtype(pruned, forward_dtype)
    reg = _region(ball, centres, pair.w[0].shape[1], pair.w[0].device, halfwidth)
    tree = _grow(pair, ball, reg.centres, _hw(reg), dt_t, dt_p, leaves, batch_size, None)
    return _combine(plain, tree, leaves)


def split_certified_agreement(target: Net, pruned: Net, ball: BallSpec, *, leaves: int = 8,
                              centres: Tensor | None = None, forward_dtype: torch.dtype | None = None,
                              attack: bool = True, generator: torch.Generator | None = None, n_restarts: int = 4,
                              n_steps: int = 50, batch_size: int = 32, optimise: int = 0,
                              halfwidth: Tensor | None = None, gap: bool = True) -> AgreementResult:
    """:func:`~probprune.bounds.differential.certified_agreement`, then branch and bound on the balls it leaves
    "not certified": such a ball becomes "certified" when both nets' margins are > 0 on every non-empty leaf of
    a tree of at most ``leaves`` leaves (module docstring); "refuted" balls (a witness) are never touched.

    Args:
        leaves: at most this many leaves per ball (0 or 1: ``certified_agreement`` exactly).
        gap: also tighten ``result.bound`` by :func:`split_differential_bound` (min with the plain one).
        the rest: as ``certified_agreement``.
    """
    _check_leaves(leaves)
    res = certified_agreement(target, pruned, ball, centres=centres, forward_dtype=forward_dtype, attack=attack,
                              generator=generator, n_restarts=n_restarts, n_steps=n_steps, batch_size=batch_size,
                              optimise=optimise, halfwidth=halfwidth)
    if leaves <= 1:
        return res
    pair = _prepare(target, pruned)
    dt_t, dt_p = _dtype(target, forward_dtype), _dtype(pruned, forward_dtype)
    reg = _region(ball, centres, pair.w[0].shape[1], pair.w[0].device, halfwidth)
    hw = _hw(reg)
    bound = res.bound
    if gap and bound is not None and not _identical(target, pruned):
        bound = _combine(bound, _grow(pair, ball, reg.centres, hw, dt_t, dt_p, leaves, batch_size, None), leaves)
    verdicts: list[Verdict] = list(res.verdicts)
    mt, mp = res.margin_target.clone(), res.margin_pruned.clone()
    open_idx = torch.tensor([i for i, v in enumerate(verdicts) if v == "not certified"], dtype=torch.long)
    if open_idx.numel():
        tree = _grow(pair, ball, reg.centres[open_idx], None if hw is None else hw[open_idx], dt_t, dt_p, leaves,
                     batch_size, res.target_class[open_idx])
        mt[open_idx] = torch.maximum(mt[open_idx], tree.mt)
        mp[open_idx] = torch.maximum(mp[open_idx], tree.mp)
        for j, i in enumerate(open_idx.tolist()):
            if bool(tree.proven[j]):
                verdicts[i] = "certified"
    return AgreementResult(tuple(verdicts), res.target_class, mt, mp, res.witnesses, bound)
