"""Benchmark of the gap sandwich: estimator throughput and certified-bound time (issue 3).

Prints, measured in one run on this machine:

1. the machine's float32 / float64 GEMM rate (the yardstick);
2. evaluations/s of ``sup_gap`` (one evaluation = f and F at one input, per member), for one
   network and for a batched ensemble, against the naive loop over members;
3. the time of ``certified_gap_bound`` for a depth-4 FCN of width 8192 (``auto`` norms), and
   what the tight alternatives would take there: full SVD and the Gram–Cholesky certificate
   per 8192×8192 matrix, *extrapolated* (n³) from timings at smaller sizes (stated as such);
4. how loose the cheap certified norm is against the exact one at a measurable size.

Usage: ``python benchmarks/bench_gap.py [--threads 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.norms import matrix_norm_bound
from probprune.config import GapSpec, LawSpec, NetSpec, PruneSpec
from probprune.gap import sup_gap
from probprune.masks import prune
from probprune.nets import Net
from probprune.sampling import sample_net


def timed(fn, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rate(dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, dtype=dtype)
    a @ a
    return 2 * n**3 / timed(lambda: a @ a, 2) / 1e9


def pruned_pair(widths: tuple[int, ...], k: int | None, seed: int = 0) -> tuple[Net, Net]:
    spec = NetSpec(widths=widths)
    g = [torch.Generator().manual_seed(seed + j) for j in range(k)] if k else torch.Generator().manual_seed(seed)
    t = sample_net(spec, LawSpec(), g)
    mg = [torch.Generator().manual_seed(99 + j) for j in range(k)] if k else torch.Generator().manual_seed(99)
    return t, prune(t, PruneSpec(method="random", p=0.1), generator=mg).model


def bench_estimator(quick: bool) -> None:
    widths = (64, 512, 512, 10) if quick else (64, 1024, 1024, 10)
    k = 4 if quick else 16
    spec = GapSpec(n_points=512 if quick else 2048)
    t, p = pruned_pair(widths, k)
    gen = torch.Generator().manual_seed(0)
    sup_gap(t.member(0), p.member(0), GapSpec(n_points=64, n_steps=2), gen)  # warm-up
    est = sup_gap(t, p, spec, torch.Generator().manual_seed(0))
    t_ens = timed(lambda: sup_gap(t, p, spec, torch.Generator().manual_seed(0)))
    t_loop = timed(lambda: [sup_gap(t.member(j), p.member(j), spec, torch.Generator().manual_seed(0))
                            for j in range(k)])
    evals = est.n_evals * k
    flops_per_eval = 2 * 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))  # f and F, forward only
    print(f"estimator  fcn:{','.join(map(str, widths))}  K={k}  n_points={spec.n_points} restarts={spec.n_restarts} "
          f"steps={spec.n_steps}  ({est.n_evals} evaluations per member)")
    print(f"  batched ensemble : {t_ens:8.3f} s  {evals / t_ens:12.0f} evaluations/s  "
          f"(~{evals * flops_per_eval / t_ens / 1e9:.1f} GFLOP/s forward-equivalent, ascent backward not counted)")
    print(f"  loop over members: {t_loop:8.3f} s  {evals / t_loop:12.0f} evaluations/s  "
          f"-> batched is {t_loop / t_ens:.2f}x the loop")
    t1, p1 = t.member(0), p.member(0)
    t_one = timed(lambda: sup_gap(t1, p1, spec, torch.Generator().manual_seed(0)))
    print(f"  single network   : {t_one:8.3f} s  {est.n_evals / t_one:12.0f} evaluations/s")


def bench_certified(quick: bool) -> None:
    h = 2048 if quick else 8192
    widths = (784, h, h, h, 10)
    t, p = pruned_pair(widths, None)
    t0 = time.perf_counter()
    b = certified_gap_bound(t, p, radius=1.0)
    dt = time.perf_counter() - t0
    methods = [f"{x.name}:{x.norm_target.method}" for x in b.terms]
    print(f"certified bound  fcn:{','.join(map(str, widths))} (random pruning p=0.1): {dt:.2f} s  "
          f"value={float(b.value):.4g}  norms exact {b.n_exact}/{b.n_norms}  [{' '.join(methods)}]")
    # the tight alternatives on one h×h matrix, measured at smaller n and scaled by n³
    sizes = (256, 512) if quick else (512, 1024)
    svd_t, gc_t = {}, {}
    for n in sizes:
        w = torch.rand(n, n, generator=torch.Generator().manual_seed(n)) * 2 - 1
        svd_t[n] = timed(lambda w=w: torch.linalg.svdvals(w.double()))
        gc_t[n] = timed(lambda w=w: matrix_norm_bound(w, "gram-cholesky"))
    n_max = sizes[-1]
    est_svd = svd_t[n_max] * (h / n_max) ** 3
    est_gc = gc_t[n_max] * (h / n_max) ** 3
    print(f"  full SVD of one {h}x{h} matrix (float64): measured {svd_t[sizes[0]]:.3f} s at n={sizes[0]}, "
          f"{svd_t[n_max]:.3f} s at n={n_max}; EXTRAPOLATED (n^3) to n={h}: ~{est_svd:.0f} s each, "
          f"~{est_svd * 6 / 60:.0f} min for the 6 square-matrix norms of this bound")
    print(f"  Gram-Cholesky certificate of one {h}x{h}: {gc_t[n_max]:.3f} s at n={n_max}; EXTRAPOLATED to n={h}: "
          f"~{est_gc:.0f} s each")
    # looseness of the cheap certified norm where the exact one is affordable
    n = 1024 if not quick else 512
    w = torch.rand(n, n, generator=torch.Generator().manual_seed(1)) * 2 - 1
    exact = float(matrix_norm_bound(w, "gram-cholesky").value)
    cheap = float(matrix_norm_bound(w, "frobenius-holder").value)
    print(f"  cheap certified norm (frobenius-holder) / tight, uniform {n}x{n}: {cheap / exact:.1f}x "
          f"(~sqrt(n)/2 = {n ** 0.5 / 2:.1f}); the bound multiplies such factors over layers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--skip-estimator", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} (other work shares these cores)")
    print(f"GEMM float32 {gemm_rate(torch.float32, 2048):.1f} GFLOP/s, float64 {gemm_rate(torch.float64, 2048):.1f} "
          "GFLOP/s (n=2048)")
    if not args.skip_estimator:
        bench_estimator(args.quick)
    bench_certified(args.quick)


if __name__ == "__main__":
    main()
