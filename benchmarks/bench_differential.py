"""Differential bound vs the layerwise bound vs projected-gradient lower bound on mnist-net_256x2.

Usage: ``.venv/bin/python benchmarks/bench_differential.py [--n-images 100] [--radii 0.01,0.03]``;
speed (issue 16): ``… bench_differential.py --speed 1000 [--batch-size 64] [--threads 2] [--old-n 1000]``
(its last line: ``1000 images linf 0.03: X s wall, Y s CPU, float64 path Z s``).

Network: ``../shared/models/vnncomp2021/mnist-net_256x2.onnx`` (784-256-256-10, ReLU, biases; Gemm weights
read with the ``onnx`` package), pruned 50 % and 90 % by global magnitude. Balls:

* global: ℓ2 radius 1 around 0 (the paper's ball);
* local: ℓ∞ radius r ∩ box [0, 1] around the first N MNIST test images (pixels / 255).

For local balls the layerwise bound (``certified_gap_bound``) is taken at the ℓ2 ball around 0 of radius
``max_i ‖c_i‖₂ + r·√784``, which contains every local ball (it has no centre or ℓ∞ form). Certified
agreement: ``certified_agreement`` (margins of both nets by back-substitution, then an attack); empirical
agreement: share of images where that attack found no disagreement; accuracy of both nets on the N images;
"optimised margins": ``certified_agreement(optimise=20)`` (per-row slopes for the uncertified balls). The
differential bound includes the chord combination of the output norm (``_chord_square``).
Prints a markdown table. Float32 nets; every certified number covers their float32 forward passes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import cast

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.differential import certified_agreement, differential_bound, gap_search
from probprune.config import BallSpec, NetSpec, PruneSpec
from probprune.data import load_dataset
from probprune.masks import prune
from probprune.nets import Net

_REL = Path("shared") / "models" / "vnncomp2021" / "mnist-net_256x2.onnx"
# ../shared beside the checkout (main), else beside the worktrees' parent (/work/wt/<name>)
OLD_COMMIT = "abbe30d"  # the last commit before the seventh session's speed work on bounds/differential.py
MODEL = next((p / _REL for p in Path(__file__).resolve().parents[1:4] if (p / _REL).is_file()),
             Path(__file__).resolve().parents[2] / _REL)


def load_mnist_256x2(path: Path = MODEL) -> Net:
    """The VNN-COMP MNIST MLP as a ``Net`` (Flatten, Gemm(transB=1), Relu, …: weights taken as stored)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    if ops != ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]:
        raise SystemExit(f"unexpected graph {ops}")
    for n in model.graph.node:
        if n.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("transB") != 1 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise SystemExit(f"unexpected Gemm attributes {attrs}")
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    spec = NetSpec(widths=(784, 256, 256, 10), bias=True)
    return Net.from_weights(spec, [init[f"layers.{i}.weight"] for i in (0, 2, 4)],
                            [init[f"layers.{i}.bias"] for i in (0, 2, 4)])


def crown_merged(target: Net, pruned: Net, centres: Tensor, radius: float, norm: str,
                 box: tuple[float, float] | None) -> Tensor:
    """Baseline: plain CROWN on the merged net ``x ↦ f(x) − F(x)`` (float64, no rounding margins).

    The merged net stacks F and f side by side (block-diagonal hidden weights), its output layer is
    ``[−W_l, W̃_l]``; every unstable ReLU of F and of f is relaxed independently (chord above, λz below
    with λ = 1 if u > −l else 0), bounds back-substituted to the input for every layer. Returns
    ``[B]`` values ``sqrt(Σ max(lo², hi²))`` of the output intervals. Not float-rigorous (a baseline).
    """
    ws, bs = [], []
    n = len(target.layers)
    for k, (lt, lp) in enumerate(zip(target.layers, pruned.layers)):
        w, wt = lt.weight.double(), lp.weight.double()
        b = lt.bias.double() if lt.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        bt = lp.bias.double() if lp.bias is not None else torch.zeros(wt.shape[0], dtype=torch.float64)
        if k == 0:
            ws.append(torch.cat([w, wt]))
            bs.append(torch.cat([b, bt]))
        elif k < n - 1:
            ws.append(torch.block_diag(w, wt))
            bs.append(torch.cat([b, bt]))
        else:
            ws.append(torch.cat([-w, wt], dim=1))
            bs.append(bt - b)
    c = centres.double()
    lo, hi = c - radius, c + radius
    if box is not None:
        lo, hi = lo.clamp_min(box[0]), hi.clamp_max(box[1])

    def concretise(lam: Tensor, const: Tensor) -> Tensor:  # lower bound of lam·x + const over the ball
        boxv = (lam.clamp_min(0) @ lo.unsqueeze(-1) + lam.clamp_max(0) @ hi.unsqueeze(-1)).squeeze(-1)
        if norm == "linf":
            return boxv + const
        ballv = (lam @ c.unsqueeze(-1)).squeeze(-1) - radius * lam.norm(dim=-1)
        return torch.maximum(ballv, boxv) + const

    lines: list[tuple[Tensor, Tensor, Tensor]] = []  # per hidden layer: λ (lower slope), s, t (upper s z + t)
    bounds = None
    for k in range(n):
        m = ws[k].shape[0]
        eye = torch.eye(m, dtype=torch.float64).expand(c.shape[0], m, m)
        lam = torch.cat([eye, -eye], 1)
        const = torch.zeros(lam.shape[:2], dtype=torch.float64)
        for j in range(k, -1, -1):
            const = const + lam @ bs[j]
            lam = lam @ ws[j]
            if j == 0:
                break
            low, s_up, t_up = lines[j - 1]
            pos, neg = lam.clamp_min(0), lam.clamp_max(0)
            const = const + (neg * t_up.unsqueeze(1)).sum(-1)
            lam = pos * low.unsqueeze(1) + neg * s_up.unsqueeze(1)
        val = concretise(lam, const)
        l, u = val[:, :m], -val[:, m:]
        bounds = (l, u)
        if k < n - 1:
            unst = (l < 0) & (u > 0)
            s_ = torch.where(unst, u / (u - l).clamp_min(1e-300), (l >= 0).double())
            t_ = torch.where(unst, -s_ * l, torch.zeros_like(l))
            lam_ = torch.where(unst, (u > -l).double(), (l >= 0).double())
            lines.append((lam_, s_, t_))
    assert bounds is not None
    l, u = bounds
    return torch.maximum(l * l, u * u).sum(-1).sqrt()


def _med_max(v: Tensor) -> str:
    vals = v.tolist()
    return f"{statistics.median(vals):.4g} / {max(vals):.4g}"


def _time_bound(target: Net, x: Tensor, batch_size: int) -> None:
    """Wall and CPU seconds of the batched differential bound (and certified agreement) at linf 0.03 ∩ [0, 1]."""
    pruned = cast(Net, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model)
    ball = BallSpec(radius=0.03, norm="linf", box=(0.0, 1.0))
    for name, fn in (("differential_bound", lambda: differential_bound(target, pruned, ball, centres=x,
                                                                       batch_size=batch_size)),
                     ("certified_agreement (no attack)", lambda: certified_agreement(
                         target, pruned, ball, centres=x, attack=False, batch_size=batch_size))):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{name}: {x.shape[0]} images in {wall:.1f} s wall ({cpu:.1f} s CPU, "
              f"{1000 * wall / x.shape[0]:.1f} ms per image), load average {os.getloadavg()[0]:.1f}", flush=True)


def _old_differential(commit: str = OLD_COMMIT) -> ModuleType | None:
    """The previous session's ``bounds/differential.py`` (float64, no compaction), loaded from git as a module."""
    repo = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:src/probprune/bounds/differential.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = "probprune_bench_differential_old"
    mod = ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, f"differential.py@{commit}", "exec"), mod.__dict__)
    return mod


def _timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _gemm_rate(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a plain 1024² matrix product in ``dtype`` at the current thread count (best of repeats)."""
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    a @ b
    best, t_end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * 1024 ** 3 / best


def speed(target: Net, x: Tensor, n_found: int, n_old: int, n_opt: int, optimise: int, batch_size: int) -> None:
    """Issue 16's speed target: the symbolic differential bound on the first N images (ℓ∞ 0.03 ∩ [0, 1], 50 %
    global magnitude), in one run: (a) the previous session's float64 module (git ``OLD_COMMIT``), (b) this one,
    (c) the machine's limit — a plain float32 matrix product of the FLOPs (b) does (counted by
    ``torch.utils.flop_counter`` on the first 200 images, scaled) — plus certified ÷ found on the first
    ``n_found`` images for both paths, and the optimised variant (``optimise`` steps) on ``n_opt`` images."""
    n = x.shape[0]
    pruned = cast(Net, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model)
    ball = BallSpec(radius=0.03, norm="linf", box=(0.0, 1.0))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    new, wall, cpu = _timed(lambda: differential_bound(target, pruned, ball, centres=x, batch_size=batch_size).value)
    print(f"new path: {n} images in {wall:.2f} s wall, {cpu:.2f} s CPU ({1e3 * wall / n:.2f} ms per image); "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    old_mod = _old_differential()
    n_old = min(n_old, n)
    old_wall = old_cpu = math.nan
    old: Tensor | None = None
    if old_mod is None:
        print(f"old path: git show {OLD_COMMIT} failed; not timed")
    else:
        old, old_wall, old_cpu = _timed(lambda: old_mod.differential_bound(target, pruned, ball, centres=x[:n_old],
                                                                           batch_size=32).value)
        scale = n / n_old
        old_wall, old_cpu = old_wall * scale, old_cpu * scale
        note = "" if n_old == n else f" (timed on {n_old} images, scaled ×{scale:.3g})"
        print(f"old path: {n} images in {old_wall:.2f} s wall, {old_cpu:.2f} s CPU{note}; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        rel = new[:n_old] / old - 1.0
        print(f"new vs old certified values: new/old − 1 in [{float(rel.min()):.2e}, {float(rel.max()):.2e}] "
              f"over {n_old} images")
    k = min(200, n)
    with FlopCounterMode(display=False) as fc:
        differential_bound(target, pruned, ball, centres=x[:k], batch_size=batch_size)
    flops = fc.get_total_flops() * n / k
    r32, r64 = _gemm_rate(torch.float32), _gemm_rate(torch.float64)
    print(f"FLOPs of the new path's products: {flops / n / 1e6:.1f} MFLOP per image, {flops / 1e9:.1f} GFLOP in all; "
          f"machine: float32 GEMM {r32 / 1e9:.1f} GFLOP/s, float64 {r64 / 1e9:.1f} GFLOP/s → limit "
          f"{flops / r32:.2f} s (float32), {flops / r64:.2f} s (float64)")
    print(f"ratios: old / new = {old_wall / wall:.1f}×, new / float32 limit = {wall / (flops / r32):.1f}×, "
          f"new / float64 limit = {wall / (flops / r64):.1f}×")
    m = min(n_found, n)
    found = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=x[:m], n_restarts=4,
                       n_steps=80).value
    print(f"certified ÷ found (first {m} images, gap_search 4 restarts × 80 steps): new {_med_max(new[:m] / found)}"
          + ("" if old is None else f", old {_med_max(old[:min(m, n_old)] / found[:n_old])}"))
    j = min(n_opt, n)
    plain, pw, _ = _timed(lambda: differential_bound(target, pruned, ball, centres=x[:j], batch_size=batch_size).value)
    opt, ow, _ = _timed(lambda: differential_bound(target, pruned, ball, centres=x[:j], batch_size=batch_size,
                                                   optimise=optimise).value)
    f_j = found[:min(j, m)]
    print(f"optimised (optimise={optimise}) on {j} images: {1e3 * ow / j:.1f} ms per image vs plain "
          f"{1e3 * pw / j:.1f} ms ({ow / pw:.1f}×); certified ÷ found optimised {_med_max(opt[:len(f_j)] / f_j)}, "
          f"plain {_med_max(plain[:len(f_j)] / f_j)}; value optimised ÷ plain {_med_max(opt / plain)}")
    print(f"{n} images linf 0.03: {wall:.2f} s wall, {cpu:.2f} s CPU, float64 path {old_wall:.2f} s "
          f"(load average {os.getloadavg()[0]:.1f}, {torch.get_num_threads()} threads)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--radii", default="0.01,0.03")
    ap.add_argument("--fractions", default="0.5,0.9")
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--optimise", type=int, default=30, help="slope-optimisation steps of the 'optimised' column")
    ap.add_argument("--optimise-margins", type=int, default=20,
                    help="per-row slope-optimisation steps of the margins in the 'optimised margins' column")
    ap.add_argument("--speed", type=int, default=0, metavar="N",
                    help="the speed benchmark on the first N images (issue 16: N = 1000) and exit")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target is stated for 2 cores)")
    ap.add_argument("--old-n", type=int, default=1000, help="--speed: time the old path on this many images only "
                                                            "(scaled to N; for loaded machines)")
    ap.add_argument("--found-n", type=int, default=200, help="--speed: images for certified ÷ found")
    ap.add_argument("--opt-n", type=int, default=50, help="--speed: images for the optimised variant")
    ap.add_argument("--time-n", type=int, default=0, help="only time differential_bound on the first N images "
                                                          "(linf 0.03, 50 %% global magnitude) and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_mnist_256x2()
    ds = load_dataset("mnist")
    if args.speed:
        x = ds.test_images[:args.speed].reshape(args.speed, -1).double() / 255.0
        speed(target, x, args.found_n, args.old_n, args.opt_n, args.optimise, args.batch_size)
        return
    if args.time_n:
        _time_bound(target, ds.test_images[:args.time_n].reshape(args.time_n, -1).double() / 255.0, args.batch_size)
        return
    n = args.n_images
    x = ds.test_images[:n].reshape(n, -1).double() / 255.0
    labels = ds.test_labels[:n]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {n} MNIST test images")
    rows = ["| prune | ball | layerwise | CROWN merged (med / max) | differential (med / max) | "
            "PGD lower (med / max) | "
            "differential ÷ PGD (med / max) | optimised ÷ PGD (med / max) | CROWN ÷ PGD (med / max) | "
            "layerwise ÷ PGD (med) | time diff. / optimised / PGD (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    agree_rows = ["| prune | ball | certified agreement | optimised margins | empirical agreement | acc. target | "
                  "acc. pruned | refuted | time plain / optimised (s) |", "|---|---|---|---|---|---|---|---|---|"]
    acc_t = float((cast(Tensor, target(x.float())).argmax(-1) == labels).double().mean())
    for frac in (float(f) for f in args.fractions.split(",")):
        pruned = cast(Net, prune(target, PruneSpec(prune_fraction=frac, scope="global")).model)
        acc_p = float((cast(Tensor, pruned(x.float())).argmax(-1) == labels).double().mean())
        # global ball
        ball = BallSpec(radius=1.0)
        t0 = time.perf_counter()
        ours = differential_bound(target, pruned, ball).value
        t1 = time.perf_counter()
        opt = differential_bound(target, pruned, ball, optimise=args.optimise).value
        t1o = time.perf_counter()
        found = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), n_restarts=32,
                           n_steps=300, starts=x / x.norm(dim=-1, keepdim=True)).value
        t2 = time.perf_counter()
        lw = float(certified_gap_bound(target, pruned, radius=1.0).value)
        cr = float(crown_merged(target, pruned, torch.zeros(1, 784, dtype=torch.float64), 1.0, "l2", None)[0])
        rows.append(f"| {frac:.0%} | l2 1 around 0 | {lw:.4g} | {cr:.4g} | {float(ours[0]):.4g} | "
                    f"{float(found[0]):.4g} | {float(ours[0] / found[0]):.4g} | {float(opt[0] / found[0]):.4g} | "
                    f"{cr / float(found[0]):.4g} | {lw / float(found[0]):.4g} | {t1 - t0:.2f} / {t1o - t1:.2f} / "
                    f"{t2 - t1o:.1f} |")
        print(rows[-1], flush=True)
        for r in (float(v) for v in args.radii.split(",")):
            ball = BallSpec(radius=r, norm="linf", box=(0.0, 1.0))
            t0 = time.perf_counter()
            ours = differential_bound(target, pruned, ball, centres=x, batch_size=args.batch_size).value
            t1 = time.perf_counter()
            opt = differential_bound(target, pruned, ball, centres=x, batch_size=args.batch_size,
                                     optimise=args.optimise).value
            t1o = time.perf_counter()
            found = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=x,
                               n_restarts=4, n_steps=80).value
            t2 = time.perf_counter()
            big = float(x.norm(dim=-1).max()) + r * math.sqrt(784)
            lw = float(certified_gap_bound(target, pruned, radius=big).value)
            cr = crown_merged(target, pruned, x, r, "linf", (0.0, 1.0))
            ratio = ours / found
            rows.append(f"| {frac:.0%} | linf {r} ∩ [0,1] | {lw:.4g} (l2 {big:.3g} around 0) | {_med_max(cr)} | "
                        f"{_med_max(ours)} | {_med_max(found)} | {_med_max(ratio)} | {_med_max(opt / found)} | "
                        f"{_med_max(cr / found)} | {lw / statistics.median(found.tolist()):.4g} | "
                        f"{t1 - t0:.1f} / {t1o - t1:.1f} / {t2 - t1o:.1f} |")
            print(rows[-1], flush=True)
            t0 = time.perf_counter()
            res = certified_agreement(target, pruned, ball, centres=x, batch_size=args.batch_size)
            t1 = time.perf_counter()
            cert = res.certified_rate
            refuted = sum(v == "refuted" for v in res.verdicts) / n
            res_o = certified_agreement(target, pruned, ball, centres=x, batch_size=args.batch_size, attack=False,
                                        optimise=args.optimise_margins)
            t2 = time.perf_counter()
            agree_rows.append(f"| {frac:.0%} | linf {r} ∩ [0,1] | {cert:.1%} | {res_o.certified_rate:.1%} | "
                              f"{1 - refuted:.1%} | {acc_t:.1%} | {acc_p:.1%} | {refuted:.1%} | "
                              f"{t1 - t0:.1f} / {t2 - t1:.1f} |")
            print(agree_rows[-1], flush=True)
    print()
    print("\n".join(rows))
    print()
    print("\n".join(agree_rows))


if __name__ == "__main__":
    main()
