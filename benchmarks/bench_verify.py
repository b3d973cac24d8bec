"""Speed of the verify engine against the naive loop and the machine's GEMM rate (issue 5).

Work per trial: sample an FCN [d0, H, H, d_out] from the paper's uniform law, prune it
(magnitude, 20% of every layer removed), evaluate target and pruned net on N random points
of the unit sphere, take the max of ‖f(x) − F(x)‖₂. Useful FLOPs per trial =
2 nets × 2·N·Σ(fan_in·fan_out).

(a) naive: what a user would write — per trial build an ``nn.Sequential``, fill it from the
    law, copy it, prune with ``torch.nn.utils.prune.l1_unstructured`` (+ ``prune.remove``),
    evaluate both under ``torch.no_grad`` on sphere points, take the max;
(b) ours: the verify engine — ``montecarlo.sample_ensemble`` / ``prune_ensemble`` on an
    ensemble of K trials, then ``gap.sup_gap`` (sampling only: no ascent), the same work;
(c) a large float32 GEMM (n × n @ n × n) — the machine's matrix-multiply rate.

Every phase runs in a fresh subprocess (so its peak RSS is its own) and the three phases
are interleaved ``--repeats`` times; medians are printed. Run: ``python benchmarks/bench_verify.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import resource
import statistics
import time
from typing import Any


def _flops(widths: list[int], n_points: int, n_trials: int) -> float:
    per_point = 2.0 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 2.0 * per_point * n_points * n_trials  # target and pruned


def _naive(widths: list[int], n_points: int, n_trials: int, frac: float, threads: int) -> dict[str, Any]:
    import copy

    import torch
    from torch import nn
    from torch.nn.utils import prune as tprune

    torch.set_num_threads(threads)
    k_scale = math.sqrt(6.0)
    t0 = time.perf_counter()
    gaps = []
    for t in range(n_trials):
        torch.manual_seed(t)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            lin = nn.Linear(a, b, bias=False)
            bound = k_scale / math.sqrt(max(a, b))
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound)
            layers.append(lin)
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        target = nn.Sequential(*layers)
        pruned = copy.deepcopy(target)
        for m in pruned:
            if isinstance(m, nn.Linear):
                tprune.l1_unstructured(m, "weight", amount=frac)
                tprune.remove(m, "weight")
        x = torch.randn(n_points, widths[0])
        x = x / x.norm(dim=1, keepdim=True)
        with torch.no_grad():
            gaps.append(float((pruned(x) - target(x)).norm(dim=1).max()))
    dt = time.perf_counter() - t0
    return {"seconds": dt, "gap_mean": sum(gaps) / len(gaps)}


def _ours(widths: list[int], n_points: int, n_trials: int, frac: float, threads: int, chunk: int
          ) -> dict[str, Any]:
    import torch

    from probprune.config import GapSpec, MCSpec, NetSpec, PruneSpec, RunConfig, config_hash
    from probprune.gap import sup_gap
    from probprune.montecarlo import expand_grid, probe_generator, prune_ensemble, sample_ensemble

    torch.set_num_threads(threads)
    cfg = RunConfig(net=NetSpec(widths=tuple(widths)), prunes=(PruneSpec(method="magnitude", prune_fraction=frac),),
                    gap=GapSpec(n_points=n_points, n_restarts=0, n_steps=0), mc=MCSpec(n_trials=n_trials))
    h = config_hash(cfg)
    point = expand_grid(cfg)[0]
    t0 = time.perf_counter()
    gaps: list[float] = []
    for s in range(0, n_trials, chunk):
        trials = list(range(s, min(n_trials, s + chunk)))
        with torch.no_grad():
            target = sample_ensemble(cfg, point, h, trials)
            pruned, _ = prune_ensemble(cfg, point, h, trials, target)
            est = sup_gap(target, pruned, cfg.gap, probe_generator(h, point.index, "gap"))
        gaps.extend(est.value.tolist())
    dt = time.perf_counter() - t0
    return {"seconds": dt, "gap_mean": sum(gaps) / len(gaps)}


def _gemm(n: int, threads: int, reps: int = 5) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = a @ b  # warm-up
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "gflops": 2.0 * n ** 3 / best / 1e9}


def _child(q: Any, name: str, kwargs: dict[str, Any]) -> None:
    fn = {"naive": _naive, "ours": _ours, "gemm": _gemm}[name]
    out = fn(**kwargs)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    q.put(out)


def _run(name: str, **kwargs: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, name, kwargs))
    p.start()
    out = q.get()
    p.join()
    return dict(out)


def _baseline_rss() -> float:
    """Peak RSS of a child that only imports torch and probprune (subtracted to get the work's memory)."""
    return _run("gemm", n=64, threads=1)["peak_rss_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,H,H,4", help="FCN widths; H is replaced by each --hidden value")
    ap.add_argument("--hidden", default="512,2048")
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=8, help="ensemble size K of our engine")
    ap.add_argument("--prune-fraction", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm-n", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} CPUs visible, "
          f"torch {torch.__version__}, {args.threads} threads; load average before: {_loadavg()}")
    base = _baseline_rss()
    results: list[dict[str, Any]] = []
    for hval in [int(x) for x in args.hidden.split(",")]:
        widths = [hval if t == "H" else int(t) for t in args.widths.split(",")]
        work = _flops(widths, args.points, args.trials)
        runs: dict[str, list[dict[str, Any]]] = {"naive": [], "ours": [], "gemm": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            runs["naive"].append(_run("naive", widths=widths, n_points=args.points, n_trials=args.trials,
                                      frac=args.prune_fraction, threads=args.threads))
            runs["ours"].append(_run("ours", widths=widths, n_points=args.points, n_trials=args.trials,
                                     frac=args.prune_fraction, threads=args.threads, chunk=args.chunk))
            runs["gemm"].append(_run("gemm", n=args.gemm_n, threads=args.threads))
        t_a = statistics.median(r["seconds"] for r in runs["naive"])
        t_b = statistics.median(r["seconds"] for r in runs["ours"])
        g_c = statistics.median(r["gflops"] for r in runs["gemm"])
        g_a, g_b = work / t_a / 1e9, work / t_b / 1e9
        # what the ensemble must hold: K targets + K pruned (float32) + masks (bool) + one activation batch
        n_w = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        theory_mib = (args.chunk * n_w * (4 + 4 + 1)) / 2 ** 20
        row = {"widths": widths, "n_points": args.points, "n_trials": args.trials, "chunk": args.chunk,
               "gflop": work / 1e9, "naive_s": t_a, "ours_s": t_b, "naive_gflops": g_a, "ours_gflops": g_b,
               "gemm_gflops": g_c, "speedup": t_a / t_b, "ours_pct_gemm": 100 * g_b / g_c,
               "naive_pct_gemm": 100 * g_a / g_c,
               "naive_all_s": [r["seconds"] for r in runs["naive"]], "ours_all_s": [r["seconds"] for r in runs["ours"]],
               "gemm_all_gflops": [r["gflops"] for r in runs["gemm"]],
               "peak_rss_mib_naive": max(r["peak_rss_mib"] for r in runs["naive"]) - base,
               "peak_rss_mib_ours": max(r["peak_rss_mib"] for r in runs["ours"]) - base,
               "ensemble_weights_masks_mib": theory_mib,
               "gap_mean_naive": runs["naive"][0]["gap_mean"], "gap_mean_ours": runs["ours"][0]["gap_mean"]}
        results.append(row)
        print(f"\nFCN {widths}, {args.trials} trials x {args.points} sphere points, "
              f"magnitude {args.prune_fraction:.0%} layerwise, useful work {work / 1e9:.1f} GFLOP "
              f"(median of {args.repeats})")
        print(f"  (a) naive loop : {t_a:7.2f} s  {g_a:7.1f} GFLOP/s  ({row['naive_pct_gemm']:.0f}% of GEMM)  "
              f"runs {[round(x, 2) for x in row['naive_all_s']]}")
        print(f"  (b) our engine : {t_b:7.2f} s  {g_b:7.1f} GFLOP/s  ({row['ours_pct_gemm']:.0f}% of GEMM)  "
              f"runs {[round(x, 2) for x in row['ours_all_s']]}")
        print(f"  (c) fp32 GEMM {args.gemm_n}^2: {g_c:7.1f} GFLOP/s  "
              f"runs {[round(x, 1) for x in row['gemm_all_gflops']]}")
        print(f"  (b)/(a) = {row['speedup']:.2f}x   (b) = {row['ours_pct_gemm']:.0f}% of (c)")
        print(f"  peak RSS above an idle child: naive {row['peak_rss_mib_naive']:.0f} MiB, ours "
              f"{row['peak_rss_mib_ours']:.0f} MiB (K={args.chunk} targets + pruned + masks = {theory_mib:.0f} MiB)")
        print(f"  mean sampled gap: naive {row['gap_mean_naive']:.4g}, ours {row['gap_mean_ours']:.4g} "
              "(different draws; same law)")
    print(f"\nload average after: {_loadavg()}")
    if args.json:
        print(json.dumps(results, indent=2))


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
