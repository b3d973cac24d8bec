"""Branch and bound on the differential bound: what splitting buys on mnist-net_256x2 (issue 16, tightness).

Usage: ``.venv/bin/python benchmarks/bench_differential_split.py [--n-images 100] [--leaves 8,32]
[--parts linf,agree,l2]``

Network: ``../shared/models/vnncomp2021/mnist-net_256x2.onnx`` (784-256-256-10), pruned 50 % by global
magnitude, float32 nets (every certified number covers their float32 forward passes); the first N MNIST test
images (pixels / 255). In ONE run, per part:

* ``linf``: ℓ∞ 0.01 ∩ [0, 1] around each image — certified ÷ found (median / max) for the plain differential
  bound and for ``split_differential_bound`` at each leaf budget; found = ``gap_search`` (4 × 80, as
  ``bench_differential.py``), the better of it and a stronger 16 × 200 search on the worst balls;
* ``agree``: certified agreement count, plain vs ``split_certified_agreement`` per budget (same attack);
* ``l2``: ℓ2 r = 1 around 0 — plain and split ÷ found (32 × 300 search started at the images), and a
  diagnostic of one more idea, the joint concretisation of the output norm (:func:`_joint_norm_estimate`: not a
  certificate, float64 spectral norms): it shows where the bound's size comes from.

Every row has seconds per image and the load average (``os.getloadavg``) at its end. ``OMP_NUM_THREADS=1``
and one torch thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_differential import load_mnist_256x2

from probprune.bounds.differential import certified_agreement, differential_bound, gap_search
from probprune.bounds.differential_split import split_certified_agreement, split_differential_bound
from probprune.config import BallSpec, PruneSpec
from probprune.data import load_dataset
from probprune.masks import prune
from probprune.nets import Net


def _mm(v: Tensor) -> str:
    vals = v.tolist()
    return f"{statistics.median(vals):.4g} / {max(vals):.4g}"


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _linf(target: Net, pruned: Net, x: Tensor, budgets: list[int], bs: int, worst_k: int,
          worst_budgets: list[int]) -> list[str]:
    ball = BallSpec(radius=0.01, norm="linf", box=(0.0, 1.0))
    n = x.shape[0]
    t0 = time.perf_counter()
    found = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=x, n_restarts=4,
                       n_steps=80).value
    t1 = time.perf_counter()
    plain = differential_bound(target, pruned, ball, centres=x, batch_size=bs).value
    t2 = time.perf_counter()
    worst = torch.topk(plain / found, min(10, n)).indices
    strong = gap_search(target, pruned, ball, torch.Generator().manual_seed(1), centres=x[worst], n_restarts=16,
                        n_steps=200).value
    found[worst] = torch.maximum(found[worst], strong)
    rows = [f"| plain | {_mm(plain / found)} | {(t2 - t1) / n:.3f} | {_load()} |"]
    best = plain
    print(f"linf 0.01: found (4x80) {t1 - t0:.1f} s; plain {rows[-1]}", flush=True)
    for b in budgets:
        t0 = time.perf_counter()
        s = split_differential_bound(target, pruned, ball, centres=x, leaves=b, batch_size=bs).value
        t1 = time.perf_counter()
        if bool((s < found).any()):
            raise SystemExit("split bound below a found gap: unsound")
        rows.append(f"| split {b} leaves | {_mm(s / found)} | {(t1 - t0) / n:.3f} | {_load()} |")
        print(rows[-1], flush=True)
        best = torch.minimum(best, s)
    # the worst balls (by certified ÷ found after the all-ball budgets) get larger trees; the others keep theirs
    k = min(worst_k, n)
    top = torch.topk(best / found, k).indices
    for b in worst_budgets:
        t0 = time.perf_counter()
        s = split_differential_bound(target, pruned, ball, centres=x[top], leaves=b, batch_size=bs).value
        t1 = time.perf_counter()
        if bool((s < found[top]).any()):
            raise SystemExit("split bound below a found gap: unsound")
        mixed = best.clone()
        mixed[top] = torch.minimum(best[top], s)
        rows.append(f"| + split {b} leaves on the {k} worst | {_mm(mixed / found)} | {(t1 - t0) / k:.3f} "
                    f"(per worst ball) | {_load()} |")
        print(rows[-1], flush=True)
    return rows


def _agree(target: Net, pruned: Net, x: Tensor, budgets: list[int], bs: int) -> list[str]:
    ball = BallSpec(radius=0.01, norm="linf", box=(0.0, 1.0))
    n = x.shape[0]
    t0 = time.perf_counter()
    res = certified_agreement(target, pruned, ball, centres=x, batch_size=bs,
                              generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    refuted = sum(v == "refuted" for v in res.verdicts)
    emp = n - refuted
    rows = [f"| plain | {sum(v == 'certified' for v in res.verdicts)} / {n} | {emp} | {refuted} | "
            f"{(t1 - t0) / n:.3f} | {_load()} |"]
    print(rows[-1], flush=True)
    for b in budgets:
        t0 = time.perf_counter()
        r = split_certified_agreement(target, pruned, ball, centres=x, leaves=b, batch_size=bs, gap=False,
                                      generator=torch.Generator().manual_seed(0))
        t1 = time.perf_counter()
        rows.append(f"| split {b} leaves | {sum(v == 'certified' for v in r.verdicts)} / {n} | {emp} | "
                    f"{sum(v == 'refuted' for v in r.verdicts)} | {(t1 - t0) / n:.3f} | {_load()} |")
        print(rows[-1], flush=True)
    return rows


def _joint_norm_estimate(target: Net, pruned: Net, ball: BallSpec) -> tuple[float, float, float]:
    """The output rows' linear bounds ``a_jᵀx + α_j ≤ v_j ≤ b_jᵀx + β_j`` (captured at the concretisation through
    ``_Region.cut``; the slack of every rounding recovered from a zero concretisation), then
    ``max over 2^m sign patterns of r‖M_P‖₂ + ‖M_P c + m_P‖`` (rows of M_P: a_j or b_j) — the sup of
    ``sqrt(Σ max(L_j², U_j²))`` taken jointly instead of per coordinate. Float64, not a certificate: a diagnostic.
    Returns (joint estimate, mean |constant| of the rows, mean ‖linear part‖ of the rows)."""
    import dataclasses
    import itertools

    from probprune.bounds import differential as dm

    pair = dm._prepare(target, pruned)
    an = dm._analyse(pair, ball, None, torch.float32, torch.float32)
    seen: dict[str, Tensor] = {}

    class Rec:
        def take(self, idx: Tensor) -> Rec:
            return self

        def __call__(self, lam: Tensor, const: Tensor, reg: object) -> Tensor:
            seen["lam"], seen["const"] = lam, const
            return torch.zeros_like(const)

    m = pair.w[-1].shape[0]
    eye = torch.eye(m, dtype=torch.float64)
    low = dm._backsub(torch.zeros(2 * m, m, dtype=torch.float64), torch.cat([eye, -eye]), len(pair.w) - 1, pair,
                      an.relax, dataclasses.replace(an.reg, cut=Rec()), an.rho)
    slack = -low[0]
    d = seen["lam"].shape[-1]
    lam, const = seen["lam"].reshape(-1, 2 * m, d)[0], seen["const"].reshape(-1, 2 * m)[0]
    c = an.reg.centres[0]
    rows, offs = torch.cat([lam[:m], -lam[m:]]), torch.cat([const[:m] - slack[:m], -(const[m:] - slack[m:])])
    best = 0.0
    for pat in itertools.product([0, 1], repeat=m):
        sel = torch.arange(m) + m * torch.tensor(pat)
        mat, off = rows[sel], offs[sel]
        best = max(best, float(ball.radius * torch.linalg.matrix_norm(mat, 2) + (mat @ c + off).norm()))
    return best, float(const.abs().mean()), float(lam.norm(dim=-1).mean())


def _l2(target: Net, pruned: Net, x: Tensor, budgets: list[int]) -> list[str]:
    ball = BallSpec(radius=1.0)
    t0 = time.perf_counter()
    found = float(gap_search(target, pruned, ball, torch.Generator().manual_seed(0), n_restarts=32, n_steps=300,
                             starts=x / x.norm(dim=-1, keepdim=True)).value[0])
    t1 = time.perf_counter()
    plain = float(differential_bound(target, pruned, ball).value[0])
    t2 = time.perf_counter()
    rows = [f"| plain | {plain:.4g} | {found:.4g} | {plain / found:.4g} | {t2 - t1:.2f} | {_load()} |"]
    print(f"l2 1 around 0: found {t1 - t0:.1f} s; {rows[-1]}", flush=True)
    t0 = time.perf_counter()
    jn, cmean, lmean = _joint_norm_estimate(target, pruned, ball)
    t1 = time.perf_counter()
    rows.append(f"| joint output norm (diagnostic, not certified; rows: mean |constant| {cmean:.3g}, mean "
                f"‖linear part‖ {lmean:.3g}) | {jn:.4g} | {found:.4g} | {jn / found:.4g} | {t1 - t0:.2f} | {_load()} |")
    print(rows[-1], flush=True)
    for b in budgets:
        t0 = time.perf_counter()
        s = float(split_differential_bound(target, pruned, ball, leaves=b).value[0])
        t1 = time.perf_counter()
        rows.append(f"| split {b} leaves | {s:.4g} | {found:.4g} | {s / found:.4g} | {t1 - t0:.2f} | {_load()} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--leaves", default="8,32")
    ap.add_argument("--parts", default="linf,agree,l2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--first", type=int, default=0, help="skip the first K images (a slice of the 100)")
    ap.add_argument("--worst", type=int, default=10, help="linf: how many of the worst balls get --worst-leaves")
    ap.add_argument("--worst-leaves", default="64,128", help="linf: leaf budgets for the worst balls")
    args = ap.parse_args()
    torch.set_num_threads(1)
    budgets = [int(b) for b in args.leaves.split(",") if b]
    target = load_mnist_256x2()
    pruned = cast(Net, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model)
    ds = load_dataset("mnist")
    x = ds.test_images[args.first:args.first + args.n_images].reshape(args.n_images, -1).double() / 255.0
    print(f"machine: {platform.machine()} {os.cpu_count()}-core CPU, 1 torch thread, torch {torch.__version__}; "
          f"{args.n_images} MNIST test images from {args.first}; load {_load()}", flush=True)
    parts = args.parts.split(",")
    if "linf" in parts:
        print("\n| linf 0.01 ∩ [0,1] | certified ÷ found (med / max) | s per image | load |\n|---|---|---|---|")
        print("\n".join(_linf(target, pruned, x, budgets, args.batch_size, args.worst,
                               [int(b) for b in args.worst_leaves.split(",") if b])))
    if "agree" in parts:
        print("\n| linf 0.01 agreement | certified | empirical | refuted | s per image | load |\n"
              "|---|---|---|---|---|---|")
        print("\n".join(_agree(target, pruned, x, budgets, args.batch_size)))
    if "l2" in parts:
        print("\n| l2 1 around 0 | certified | found | ratio | s | load |\n|---|---|---|---|---|---|")
        print("\n".join(_l2(target, pruned, x, budgets)))


if __name__ == "__main__":
    main()
