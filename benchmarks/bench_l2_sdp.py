"""A semidefinite (Shor / Lagrangian-dual) bound on the ℓ2 gap of a ReLU chain pair — prototype, NOT YET A CERTIFICATE.

Usage: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_l2_sdp.py [--steps 300] [--lr 0.05] [--decay-from N]
[--families all] [--net mnist|random] [--hidden 32,32] [--baselines]``.

Problem (issue 16): F = ``mnist-net_256x2`` (784-256-256-10), f = F pruned 50 % by global magnitude, the ℓ2 ball of
radius 1 around 0; gap = sup ‖f(x) − F(x)‖₂. Lifted vector u = (1, x, y₁, ỹ₁, …, y_L, ỹ_L); every per-neuron fact
(a linear g(u) ≥ 0 or a product of two of them, the ReLU equality y(y − z) = 0, the pair constraint
(ỹ − y)((z̃ − z) − (ỹ − y)) ≥ 0, the ball 1 − ‖x‖² ≥ 0) enters the Lagrangian with its multiplier:
M = CᵀC + Σ λᵢ Aᵢ + Σ μⱼ Eⱼ. Weak duality: ‖Cu‖² ≤ uᵀMu on the feasible set, so with M_ww ≺ 0 the squared gap is
at most m₀₀ + m_wᵀ(−M_ww)⁻¹m_w for *any* multipliers; minimised by Adam (float64, Cholesky, autograd).

The per-neuron facts are linear in (1, z, z̃, y, ỹ) of that neuron, so every quadratic fact of one neuron is a
5 × 5 form Q = Gᵀ Λ G (G: the facts' coefficients, Λ ≥ 0 their pairwise multipliers); M is assembled from these
through z = W y_prev + b. Interval facts come from the library's differential propagation (``_analyse``: z, z̃,
δ = z̃ − z intervals and its linear relaxations of y, ỹ, Δy). The value printed is a float64 evaluation of the dual
function (no rounding analysis, exact-arithmetic networks): **not yet a certificate**.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.differential import _analyse, _prepare, differential_bound, gap_search
from probprune.config import BallSpec, NetSpec, PruneSpec
from probprune.masks import prune
from probprune.nets import Net

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_differential import load_mnist_256x2

FOUND = 1.446  # issue 16's converged search on mnist-net_256x2, 50 % global, l2 r = 1 around 0
FAMILIES = ("relu", "interval", "rlt", "pair", "diff", "lines", "cross", "output")


@dataclass
class Layer:
    """One hidden layer's data: weights of both nets, intervals, per-neuron fact matrix G [n, F, 5]."""

    w: Tensor
    b: Tensor
    wt: Tensor
    bt: Tensor
    g: Tensor            # [n, F, 5] facts g(q) = G q ≥ 0, q = (1, z, z̃, y, ỹ)
    pair_mask: Tensor    # [F, F] which products are used (upper triangle)
    names: list[str]
    output: bool = False  # the output layer: facts on (1, z, z̃) only (intervals of z, z̃, δ)


def _facts(rx: object, bounds: tuple[Tensor, ...], fam: set[str]) -> tuple[Tensor, list[str]]:
    """Linear facts per neuron as coefficient rows over (1, z, z̃, y, ỹ)."""
    l, u, dl, du, tl, tu = (t[0] for t in bounds)
    n = l.shape[0]
    zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    rows: list[tuple[str, list[Tensor]]] = [("1", [one, zero, zero, zero, zero])]
    # F: y - relu(l) >= 0, y - z >= 0, relu(u) - y >= 0; f likewise (always: the ReLU's linear facts)
    rows += [("y-rl", [-l.clamp_min(0), zero, zero, one, zero]), ("y-z", [zero, -one, zero, one, zero]),
             ("ty-rl", [-tl.clamp_min(0), zero, zero, zero, one]), ("ty-tz", [zero, zero, -one, zero, one])]
    if "interval" in fam:
        rows += [("ru-y", [u.clamp_min(0), zero, zero, -one, zero]), ("z-l", [-l, one, zero, zero, zero]),
                 ("u-z", [u, -one, zero, zero, zero]),
                 ("ru-ty", [tu.clamp_min(0), zero, zero, zero, -one]), ("tz-tl", [-tl, zero, one, zero, zero]),
                 ("tu-tz", [tu, zero, -one, zero, zero])]
    if "diff" in fam:  # δ = z̃ − z in [dl, du]; Δy = ỹ − y in [min(0, dl), max(0, du)]
        rows += [("d-dl", [-dl, -one, one, zero, zero]), ("du-d", [du, one, -one, zero, zero]),
                 ("Dy-lo", [-dl.clamp_max(0), zero, zero, -one, one]),
                 ("hi-Dy", [du.clamp_min(0), zero, zero, one, -one])]
    if "lines" in fam:  # the differential bound's own linear relaxations (Δy in z, δ; y in z; ỹ in z̃)
        pl, ql, rl = rx.gl  # type: ignore[attr-defined]
        pu, qu, ru = rx.gu  # type: ignore[attr-defined]
        # Δy ≥ p z + q δ + r:  (ỹ − y) − p z − q (z̃ − z) − r ≥ 0
        rows += [("gl", [-rl[0], -pl[0] + ql[0], -ql[0], -one, one]),
                 ("gu", [ru[0], pu[0] - qu[0], qu[0], one, -one])]
        a, beta = rx.hu  # type: ignore[attr-defined]
        rows += [("hu", [beta[0], a[0], zero, -one, zero])]
        a, beta = rx.tu  # type: ignore[attr-defined]
        rows += [("tu", [beta[0], zero, a[0], zero, -one])]
    g = torch.stack([torch.stack(r, -1) for _, r in rows], 1)  # [n, F, 5]
    return g, [nm for nm, _ in rows]


def build(target: Net, pruned: Net, radius: float, fam: set[str]) -> tuple[list[Layer], Tensor, Tensor, Tensor]:
    pair = _prepare(target, pruned)
    ball = BallSpec(radius=radius)
    an = _analyse(pair, ball, None, torch.float64, torch.float64)
    layers = []
    for k in range(len(pair.w) - 1):
        g, names = _facts(an.relax[k], an.bounds[k], fam)
        nf = g.shape[1]
        mask = torch.triu(torch.ones(nf, nf, dtype=torch.bool), 1)
        if "rlt" not in fam:  # only products with the constant (the linear facts) and the interval products
            keep = {("ru-y", "y-rl"), ("z-l", "u-z"), ("ru-ty", "ty-rl"), ("tz-tl", "tu-tz")}
            for i in range(nf):
                for j in range(i + 1, nf):
                    mask[i, j] = i == 0 or (names[i], names[j]) in keep or (names[j], names[i]) in keep
        elif "cross" not in fam:  # RLT within each net only (plus the constant and the δ facts with anything)
            def side(nm: str) -> str:
                return "t" if nm.startswith(("t", "ru-t")) else ("d" if nm[0] in "dDhg" and nm != "hu" else "F")
            for i in range(1, nf):
                for j in range(i + 1, nf):
                    si, sj = side(names[i]), side(names[j])
                    mask[i, j] = si == sj or "d" in (si, sj)
        layers.append(Layer(pair.w[k], pair.b[k], pair.wt[k], pair.bt[k], g, mask, names))
    wl, bl, wtl, btl = pair.w[-1], pair.b[-1], pair.wt[-1], pair.bt[-1]
    if "output" in fam:
        l, u, dl, du, tl, tu = (t[0] for t in an.bounds[-1])
        n = l.shape[0]
        zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        rows = [("1", [one, zero, zero]), ("z-l", [-l, one, zero]), ("u-z", [u, -one, zero]),
                ("tz-tl", [-tl, zero, one]), ("tu-tz", [tu, zero, -one]), ("d-dl", [-dl, -one, one]),
                ("du-d", [du, one, -one])]
        g = torch.stack([torch.stack([*r, zero, zero], -1) for _, r in rows], 1)
        mask = torch.triu(torch.ones(len(rows), len(rows), dtype=torch.bool), 1)
        layers.append(Layer(wl, bl, wtl, btl, g, mask, [nm for nm, _ in rows], output=True))
    return layers, wl, wtl, btl - bl


class Dual(torch.nn.Module):
    """Multipliers (λ = exp θ ≥ 0, μ free) and the dual function's value."""

    def __init__(self, layers: list[Layer], w_out: Tensor, wt_out: Tensor, c_out: Tensor, d_in: int,
                 radius: float, fam: set[str]) -> None:
        super().__init__()
        self.layers, self.radius, self.fam, self.d_in = layers, radius, fam, d_in
        hidden = [lay for lay in layers if not lay.output]
        self.sizes = [d_in] + [x for lay in hidden for x in (lay.w.shape[0], lay.w.shape[0])]
        self.off = [1]
        for s in self.sizes:
            self.off.append(self.off[-1] + s)
        n_tot = self.off[-1]
        cmat = torch.zeros(w_out.shape[0], n_tot, dtype=torch.float64)
        cmat[:, 0] = c_out
        if hidden:
            cmat[:, self.off[-3]:self.off[-2]] = -w_out
            cmat[:, self.off[-2]:self.off[-1]] = wt_out
        else:
            cmat[:, 1:1 + d_in] = wt_out - w_out
        self.ctc = cmat.T @ cmat
        cn2 = float(torch.linalg.matrix_norm(cmat[:, 1:], 2)) ** 2
        self.theta = torch.nn.ParameterList()
        self.mu = torch.nn.ParameterList()
        self.pair = torch.nn.ParameterList()
        for lay in layers:
            n, nf = lay.g.shape[0], lay.g.shape[1]
            th = torch.full((n, nf, nf), -8.0, dtype=torch.float64)
            for nm_a, nm_b in (("ru-y", "y-rl"), ("ru-ty", "ty-rl")):  # start: −c y² on every y
                if nm_a in lay.names:
                    i, j = sorted((lay.names.index(nm_a), lay.names.index(nm_b)))
                    th[:, i, j] = math.log(2.0 * cn2 + 1.0)
            self.theta.append(torch.nn.Parameter(th))
            self.mu.append(torch.nn.Parameter(torch.zeros(n, 2, dtype=torch.float64)))
            self.pair.append(torch.nn.Parameter(torch.full((n,), -8.0, dtype=torch.float64)))
        self.ball = torch.nn.Parameter(torch.tensor(math.log(cn2 + 1.0) if not hidden else 0.0,
                                                    dtype=torch.float64))
        if not hidden or "interval" not in fam:
            # no −y² facts: the ball multiplier and ReLU equalities must carry definiteness
            for m in self.mu:
                m.data.fill_(-2.0 * cn2 - 1.0)
            self.ball.data.fill_(math.log(10.0 * cn2 + 1.0) + 2.0 * len(layers))

    def quad(self, k: int) -> Tensor:
        """Per-neuron 5 × 5 forms [n, 5, 5] of layer k (sum of every fact times its multiplier)."""
        lay = self.layers[k]
        lam = torch.exp(self.theta[k]) * lay.pair_mask
        q = torch.einsum("nfa,nfg,ngb->nab", lay.g, lam, lay.g)
        q = 0.5 * (q + q.transpose(1, 2))
        n = q.shape[0]
        e = torch.zeros(n, 5, 5, dtype=torch.float64)
        mu = self.mu[k]
        if "relu" in self.fam and not lay.output:  # y² − y z = 0 ; ỹ² − ỹ z̃ = 0
            e = e.index_put((torch.arange(n), torch.full((n,), 3), torch.full((n,), 3)), mu[:, 0])
            e = e.index_put((torch.arange(n), torch.full((n,), 4), torch.full((n,), 4)), mu[:, 1])
            e = e.index_put((torch.arange(n), torch.full((n,), 3), torch.full((n,), 1)), -0.5 * mu[:, 0])
            e = e.index_put((torch.arange(n), torch.full((n,), 1), torch.full((n,), 3)), -0.5 * mu[:, 0])
            e = e.index_put((torch.arange(n), torch.full((n,), 4), torch.full((n,), 2)), -0.5 * mu[:, 1])
            e = e.index_put((torch.arange(n), torch.full((n,), 2), torch.full((n,), 4)), -0.5 * mu[:, 1])
        q = q + e
        if "pair" in self.fam and not lay.output:  # (ỹ − y)((z̃ − z) − (ỹ − y)) ≥ 0
            a = torch.tensor([0.0, 0.0, 0.0, -1.0, 1.0], dtype=torch.float64)
            b = torch.tensor([0.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
            p = 0.5 * (torch.outer(a, b) + torch.outer(b, a))
            q = q + torch.exp(self.pair[k])[:, None, None] * p
        return q

    def matrix(self) -> Tensor:
        m = self.ctc.clone()
        lb = torch.exp(self.ball)
        m = m + torch.zeros_like(m).index_put((torch.tensor([0]), torch.tensor([0])), lb * self.radius ** 2)
        idx = torch.arange(1, 1 + self.d_in)
        m = m.index_put((idx, idx), -lb, accumulate=True)
        for k, lay in enumerate(self.layers):
            q = self.quad(k)
            n = lay.w.shape[0]
            if k == 0:
                pf = pt = (1, 1 + self.d_in)
            else:
                pf = (self.off[2 * k - 1], self.off[2 * k])
                pt = (self.off[2 * k], self.off[2 * k + 1])
            ones = torch.ones(n, 1, dtype=torch.float64)
            # pieces of (1, z, z̃, y, ỹ): list of (start, end, matrix [n, width] or None = identity)
            pieces: list[list[tuple[int, int, Tensor | None]]] = [
                [(0, 1, ones)], [(0, 1, lay.b[:, None]), (pf[0], pf[1], lay.w)],
                [(0, 1, lay.bt[:, None]), (pt[0], pt[1], lay.wt)], [], []]
            if not lay.output:
                pieces[3] = [(self.off[2 * k + 1], self.off[2 * k + 2], None)]
                pieces[4] = [(self.off[2 * k + 2], self.off[2 * k + 3], None)]
            blocks: dict[tuple[int, int, int, int], Tensor] = {}
            for a in range(5):
                for b in range(a, 5):
                    c = q[:, a, b]
                    for sa, ea, pa in pieces[a]:
                        for sb, eb, pb in pieces[b]:
                            right = c[:, None] * (torch.eye(n, dtype=torch.float64) if pb is None else pb)
                            blk = right if pa is None else pa.T @ right
                            key = (sa, ea, sb, eb)
                            blocks[key] = blocks[key] + blk if key in blocks else blk
                            if a != b:
                                keyt = (sb, eb, sa, ea)
                                blocks[keyt] = blocks[keyt] + blk.T if keyt in blocks else blk.T
            for (sa, ea, sb, eb), blk in blocks.items():
                m[sa:ea, sb:eb] += blk
        return m

    @torch.no_grad()
    def restore(self, margin: float = 1e-2) -> float:
        """Make M_ww ≺ 0 again by adding ρ(1 − ‖x‖²/r² ... ) — ρ to the ball multiplier and to every hidden
        neuron's (relu(u) − y)(y − relu(l)) multiplier, i.e. −ρ·I on the whole of w (a valid multiplier change,
        so the bound stays a bound); ρ = λ_max(M_ww)⁺ + margin · mean |diag M_ww|."""
        mww = self.matrix()[1:, 1:]
        lmax = float(torch.linalg.eigvalsh(mww)[-1])
        rho = max(lmax, 0.0) + margin * float(mww.diagonal().abs().mean())
        self.ball.copy_(torch.log(torch.exp(self.ball) + rho / self.radius ** 0))
        for k, lay in enumerate(self.layers):
            if lay.output:
                continue
            for nm_a, nm_b in (("ru-y", "y-rl"), ("ru-ty", "ty-rl")):
                i, j = sorted((lay.names.index(nm_a), lay.names.index(nm_b)))
                th = self.theta[k]
                th[:, i, j] = torch.log(torch.exp(th[:, i, j]) + rho)
        return rho

    def value(self) -> tuple[Tensor, bool]:
        m = self.matrix()
        neg = -m[1:, 1:]
        chol, info = torch.linalg.cholesky_ex(neg)
        if int(info) != 0:
            return torch.tensor(math.inf, dtype=torch.float64), False
        mw = m[1:, :1]
        sol = torch.cholesky_solve(mw, chol)
        return m[0, 0] + (mw * sol).sum(), True


def optimise(dual: Dual, steps: int, lr: float, log_every: int = 25, decay_from: int | None = None
             ) -> tuple[float, int, float]:
    """Adam on the multipliers; after a step that loses definiteness, :meth:`Dual.restore`. Returns the square
    root of the smallest dual value met at an iterate whose Cholesky succeeded (each one is a dual point, so
    each value bounds the squared gap — in exact arithmetic), the steps and the seconds."""
    opt = torch.optim.Adam(dual.parameters(), lr=lr)
    best = math.inf
    t0 = time.perf_counter()
    val, ok = dual.value()
    if not ok:
        raise SystemExit("initial multipliers not definite")
    n_restore = 0
    for it in range(steps):
        if decay_from is not None and it >= decay_from:  # cosine from lr down to lr / 10 at the last step
            frac = (it - decay_from) / max(steps - 1 - decay_from, 1)
            for gr in opt.param_groups:
                gr["lr"] = lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * frac)))
        opt.zero_grad()
        val, ok = dual.value()
        best = min(best, float(val.detach()))
        val.backward()
        opt.step()
        with torch.no_grad():
            trial, ok = dual.value()
        if not ok:
            dual.restore()
            n_restore += 1
        if it % log_every == 0 or it == steps - 1:
            print(f"  it {it:4d}: bound² {float(val):.6g} → bound {math.sqrt(max(float(val), 0)):.5g} "
                  f"(best {math.sqrt(max(best, 0)):.5g}), lr {opt.param_groups[0]['lr']:.3g}, "
                  f"{n_restore} restorations, {time.perf_counter() - t0:.1f} s", flush=True)
    with torch.no_grad():
        val, ok = dual.value()
    best = min(best, float(val)) if ok else best
    return math.sqrt(best), steps, time.perf_counter() - t0


def lbfgs(dual: Dual, steps: int, memory: int = 20, log_every: int = 25) -> tuple[float, int, float]:
    """L-BFGS (two-loop recursion) on the multipliers' parameters with backtracking: a trial point that loses
    definiteness counts as +inf, so every accepted iterate is a valid dual point."""
    params = list(dual.parameters())

    def flat() -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in params])

    def put(v: Tensor) -> None:
        i = 0
        with torch.no_grad():
            for p in params:
                p.copy_(v[i:i + p.numel()].view_as(p))
                i += p.numel()

    def fg() -> tuple[float, Tensor | None]:
        for p in params:
            p.grad = None
        val, ok = dual.value()
        if not ok:
            return math.inf, None
        val.backward()
        return float(val.detach()), torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                                for p in params])

    t0 = time.perf_counter()
    x = flat()
    f, g = fg()
    if g is None:
        raise SystemExit("initial multipliers not definite")
    hist: list[tuple[Tensor, Tensor, float]] = []
    evals = 1
    for it in range(steps):
        q = -g
        alphas = []
        for s_, y_, rho in reversed(hist):
            a = rho * float(s_ @ q)
            alphas.append(a)
            q = q - a * y_
        if hist:
            s_, y_, _ = hist[-1]
            q = q * (float(s_ @ y_) / float(y_ @ y_))
        else:
            q = q * (0.1 / float(g.abs().max()))
        for (s_, y_, rho), a in zip(hist, reversed(alphas)):
            b = rho * float(y_ @ q)
            q = q + (a - b) * s_
        d = q
        slope = float(g @ d)
        if slope >= 0:
            hist.clear()
            d = -g * (0.1 / float(g.abs().max()))
            slope = float(g @ d)
        step = 1.0
        for _ in range(30):
            put(x + step * d)
            f_new, g_new = fg()
            evals += 1
            if g_new is not None and f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            put(x)
            print(f"  it {it}: line search failed", flush=True)
            break
        assert g_new is not None
        x_new = flat()
        s_, y_ = x_new - x, g_new - g
        sy = float(s_ @ y_)
        if sy > 1e-12 * float(y_ @ y_):
            hist.append((s_, y_, 1.0 / sy))
            if len(hist) > memory:
                hist.pop(0)
        x, f, g = x_new, f_new, g_new
        if it % log_every == 0 or it == steps - 1:
            print(f"  it {it:4d}: bound² {f:.6g} → bound {math.sqrt(max(f, 0)):.5g}, step {step:.3g}, "
                  f"{evals} evaluations, {time.perf_counter() - t0:.1f} s", flush=True)
    put(x)
    return math.sqrt(f), steps, time.perf_counter() - t0


def random_pair(widths: tuple[int, ...], seed: int) -> tuple[Net, Net]:
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=g) / math.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    bs = [0.1 * torch.randn(o, generator=g) for o in widths[1:]]
    target = Net.from_weights(NetSpec(widths=widths, bias=True), ws, bs)
    pruned = cast(Net, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model)
    return target, pruned


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="mnist", choices=("mnist", "random"))
    ap.add_argument("--hidden", default="32,32", help="--net random: hidden widths (784 inputs, 10 outputs)")
    ap.add_argument("--in-dim", type=int, default=784)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--method", default="adam", choices=("lbfgs", "adam"))
    ap.add_argument("--decay-from", type=int, default=None, help="adam: cosine-decay the rate to lr/10 from this step")
    ap.add_argument("--families", default="all", help=f"comma list of {FAMILIES} or all; prefix - to drop one")
    ap.add_argument("--baselines", action="store_true", help="also the library's layerwise / differential bounds")
    ap.add_argument("--search", action="store_true", help="re-measure the found gap (gap_search 16 × 50)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fam = set(FAMILIES)
    if args.families != "all":
        items = args.families.split(",")
        if all(i.startswith("-") for i in items):
            fam -= {i[1:] for i in items}
        else:
            fam = set(items)
    if args.net == "mnist":
        target = load_mnist_256x2()
        pruned = cast(Net, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model)
    else:
        hidden = tuple(int(h) for h in args.hidden.split(",") if h)
        target, pruned = random_pair((args.in_dim, *hidden, 10), args.seed)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 thread, torch "
          f"{torch.__version__}; load average {os.getloadavg()[0]:.2f}; net {args.net} "
          f"{[lay.weight.shape[1] for lay in target.layers] + [target.layers[-1].weight.shape[0]]}; "
          f"families {sorted(fam)}", flush=True)
    ball = BallSpec(radius=1.0)
    found = FOUND if args.net == "mnist" else math.nan
    if args.search or args.net != "mnist":
        t0 = time.perf_counter()
        found = float(gap_search(target, pruned, ball, torch.Generator().manual_seed(0), n_restarts=16,
                                 n_steps=50).value[0])
        print(f"found (gap_search 16 restarts × 50 steps): {found:.5g} in {time.perf_counter() - t0:.1f} s",
              flush=True)
    if args.baselines or args.net != "mnist":
        lw = float(certified_gap_bound(target, pruned, radius=1.0).value)
        t0 = time.perf_counter()
        diff = float(differential_bound(target, pruned, ball).value[0])
        print(f"layerwise {lw:.5g} (÷ found {lw / found:.4g}); differential {diff:.5g} (÷ found "
              f"{diff / found:.4g}, {time.perf_counter() - t0:.1f} s)", flush=True)
    t0 = time.perf_counter()
    layers, w_out, wt_out, c_out = build(target, pruned, 1.0, fam)
    d_in = target.layers[0].weight.shape[1]
    if layers and not layers[0].output:
        # x enters only through W₁x, W̃₁x and the ball (around 0): the part of x orthogonal to both row spaces
        # only costs ball, so x = Q α with Q an orthonormal basis of the row spaces, exactly (1809 → 1537 here)
        q_basis = torch.linalg.qr(torch.cat([layers[0].w, layers[0].wt]).T).Q
        q_basis = q_basis[:, :min(q_basis.shape[1], d_in)]
        layers[0].w, layers[0].wt = layers[0].w @ q_basis, layers[0].wt @ q_basis
        d_in = q_basis.shape[1]
    dual = Dual(layers, w_out, wt_out, c_out, d_in, 1.0, fam)
    print(f"facts per neuron: {layers[0].names if layers else []}; set-up {time.perf_counter() - t0:.1f} s",
          flush=True)
    if args.method == "adam":
        bound, its, secs = optimise(dual, args.steps, args.lr, decay_from=args.decay_from)
    else:
        bound, its, secs = lbfgs(dual, args.steps)
    print(f"SDP dual bound (NOT YET A CERTIFICATE: float64, no rounding analysis) {bound:.5g} after {its} "
          f"{args.method} steps "
          f"in {secs:.1f} s ({1e3 * secs / max(its, 1):.0f} ms/step); ÷ found {bound / found:.4g}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
