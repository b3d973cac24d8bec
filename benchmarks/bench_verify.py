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


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _naive(widths: list[int], n_points: int, n_trials: int, frac: float, threads: int, device: str = "cpu",
           matmul: str = "fp32") -> dict[str, Any]:
    import copy

    import torch
    from torch import nn
    from torch.nn.utils import prune as tprune

    from probprune.runner.execution import matmul_precision

    torch.set_num_threads(threads)
    k_scale = math.sqrt(6.0)
    ctx = matmul_precision(matmul)
    ctx.__enter__()
    _sync(device)
    t0 = time.perf_counter()
    gaps = []
    for t in range(n_trials):
        torch.manual_seed(t)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            lin = nn.Linear(a, b, bias=False, device=device)
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
        x = torch.randn(n_points, widths[0], device=device)
        x = x / x.norm(dim=1, keepdim=True)
        with torch.no_grad():
            gaps.append(float((pruned(x) - target(x)).norm(dim=1).max()))
    dt = time.perf_counter() - t0
    ctx.__exit__(None, None, None)
    return {"seconds": dt, "gap_mean": sum(gaps) / len(gaps)}


def _ours(widths: list[int], n_points: int, n_trials: int, frac: float, threads: int, chunk: int,
          device: str = "cpu", matmul: str = "fp32", profile: bool = False, forward: str = "auto") -> dict[str, Any]:
    import torch

    from probprune.config import ExecutionPolicy, GapSpec, MCSpec, NetSpec, PruneSpec, RunConfig, config_hash
    from probprune.gap import sup_gap
    from probprune.montecarlo import expand_grid, probe_generator, prune_ensemble, sample_ensemble
    from probprune.runner.execution import execution

    torch.set_num_threads(threads)
    cfg = RunConfig(net=NetSpec(widths=tuple(widths)), prunes=(PruneSpec(method="magnitude", prune_fraction=frac),),
                    gap=GapSpec(n_points=n_points, n_restarts=0, n_steps=0),
                    mc=MCSpec(n_trials=n_trials, device=device, matmul=matmul))
    h = config_hash(cfg)
    point = expand_grid(cfg)[0]
    phases = {"sample": 0.0, "prune": 0.0, "gap": 0.0}
    # nets.Net.forward: batched products or member by member (what run_verify hands the engine)
    policy = ExecutionPolicy(forward=forward, threads=threads, matmul=matmul)  # type: ignore[arg-type]

    def mark(name: str, since: float) -> float:
        if profile:  # synchronising costs overlap, so only when asked
            _sync(device)
            now = time.perf_counter()
            phases[name] += now - since
            return now
        return since

    _sync(device)
    t0 = time.perf_counter()
    gaps: list[float] = []
    for s in range(0, n_trials, chunk):
        trials = list(range(s, min(n_trials, s + chunk)))
        t = t0 if s == 0 else time.perf_counter()
        with torch.no_grad(), execution(policy) as ex:
            target = sample_ensemble(cfg, point, h, trials, workers=ex.workers)
            t = mark("sample", t)
            pruned, _ = prune_ensemble(cfg, point, h, trials, target)
            t = mark("prune", t)
            est = sup_gap(target, pruned, cfg.gap, probe_generator(h, point.index, "gap", device),
                          policy=ex.policy, workers=ex.workers)
            gaps.extend(est.value.tolist())
            mark("gap", t)
        del target, pruned, est
    dt = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": dt, "gap_mean": sum(gaps) / len(gaps)}
    if profile:
        out["phases"] = phases
    return out


def _gemm(n: int, threads: int, reps: int = 5, device: str = "cpu", kind: str = "fp32") -> dict[str, Any]:
    """Best of ``reps`` n×n @ n×n products: ``fp32`` (TF32 off), ``tf32`` or ``bf16``."""
    import torch

    from probprune.runner.execution import matmul_precision

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with matmul_precision("tf32" if kind == "tf32" else "fp32"):
        c = a @ b  # warm-up
        best = math.inf
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "gflops": 2.0 * n ** 3 / best / 1e9}


def _child(q: Any, name: str, kwargs: dict[str, Any]) -> None:
    fn = {"naive": _naive, "ours": _ours, "gemm": _gemm}[name]
    out = fn(**kwargs)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    q.put(out)


def _run(name: str, **kwargs: Any) -> dict[str, Any]:
    """One phase in a fresh subprocess (CPU: its peak RSS is its own)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, name, kwargs))
    p.start()
    out = q.get()
    p.join()
    return dict(out)


def _run_cuda(name: str, **kwargs: Any) -> dict[str, Any]:
    """One phase in this process (a CUDA context per phase would cost seconds); peak = CUDA memory."""
    import torch

    fn = {"naive": _naive, "ours": _ours, "gemm": _gemm}[name]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(**kwargs)
    out["peak_mem_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return out


def _baseline_rss() -> float:
    """Peak RSS of a child that only imports torch and probprune (subtracted to get the work's memory)."""
    return _run("gemm", n=64, threads=1)["peak_rss_mib"]


def _torch_profile(widths: list[int], n_points: int, chunk: int, frac: float, device: str, matmul: str,
                   forward: str = "auto") -> None:
    """One warm ensemble chunk under torch.profiler: the top operators by device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    kw: dict[str, Any] = {"widths": widths, "n_points": n_points, "n_trials": chunk, "frac": frac, "threads": 2,
                          "chunk": chunk, "device": device, "matmul": matmul, "forward": forward}
    _ours(**kw)  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        _ours(**kw)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=40))


def _selection(device: str, k: int, n: int, frac: float) -> None:
    """Exact k-th value per row of ``[k, n]`` by topk, kthvalue and sort (what exact-count pruning costs)."""
    import torch

    x = torch.rand(k, n, device=device)
    kk = int(round(frac * n))
    ways = {
        "topk(k smallest)": lambda: torch.topk(x, kk, dim=-1, largest=False, sorted=False).values.amax(-1),
        "kthvalue": lambda: torch.kthvalue(x, kk, dim=-1).values,
        "sort": lambda: torch.sort(x, dim=-1).values[:, kk - 1],
    }
    ref = None
    for name, f in ways.items():
        v = f()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            v = f()
        _sync(device)
        dt = (time.perf_counter() - t0) / 3
        ref = v if ref is None else ref
        print(f"  selection {name:17s} [{k}, {n}]: {dt * 1e3:8.2f} ms  (agrees: {bool(torch.equal(v, ref))})")


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
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: phases run in this process, "
                    "after one untimed warm-up round)")
    ap.add_argument("--matmul", default="fp32", help="comma list of fp32,tf32: precision of the float32 "
                    "products of (a) and (b) (tf32 only matters on CUDA)")
    ap.add_argument("--forward", default="auto", help="comma list of auto,batched,members: how our engine runs "
                    "an ensemble's forward (nets.Net.forward; auto picks per device and size)")
    ap.add_argument("--profile", action="store_true", help="also time our phases (sample/prune/gap) separately")
    ap.add_argument("--selection", action="store_true", help="also time exact k-th value selection methods")
    ap.add_argument("--torch-profile", action="store_true", help="print torch.profiler's top operators for one "
                    "chunk of ours at the largest --hidden and the last --matmul")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    where = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    print(f"machine: {where}, {mp.cpu_count()} CPUs visible, torch {torch.__version__}, device {args.device}, "
          f"{args.threads} threads; load average before: {_loadavg()}")
    runner = _run_cuda if cuda else _run
    base = 0.0 if cuda else _baseline_rss()
    mem_key = "peak_mem_mib" if cuda else "peak_rss_mib"
    gemm_kinds = ["fp32", "tf32", "bf16"] if cuda else ["fp32"]
    precisions = [m.strip() for m in args.matmul.split(",") if m.strip()]
    gemm = {kd: [runner("gemm", n=args.gemm_n, threads=args.threads, device=args.device, kind=kd)["gflops"]
                 for _ in range(args.repeats)] for kd in gemm_kinds}
    for kd, vals in gemm.items():
        print(f"GEMM {kd} {args.gemm_n}^2: median {statistics.median(vals):.1f} GFLOP/s  "
              f"runs {[round(v, 1) for v in vals]}")
    if args.selection:
        _selection(args.device, args.chunk, 2048 * 2048, args.prune_fraction)
    results: list[dict[str, Any]] = []
    for hval in [int(x) for x in args.hidden.split(",")]:
        widths = [hval if t == "H" else int(t) for t in args.widths.split(",")]
        work = _flops(widths, args.points, args.trials)
        for prec in precisions:
            kw = {"widths": widths, "n_points": args.points, "n_trials": args.trials, "frac": args.prune_fraction,
                  "threads": args.threads, "device": args.device, "matmul": prec}
            modes = [m.strip() for m in args.forward.split(",") if m.strip()]
            runs: dict[str, list[dict[str, Any]]] = {"naive": [], "gemm": [], **{f"ours:{m}": [] for m in modes}}
            ref_kind = "tf32" if prec == "tf32" and cuda else "fp32"
            for rep in range(args.repeats + (1 if cuda else 0)):  # interleaved: load changes hit all alike
                r_a = runner("naive", **kw)
                r_b = {m: runner("ours", chunk=args.chunk, profile=args.profile, forward=m, **kw) for m in modes}
                r_c = runner("gemm", n=args.gemm_n, threads=args.threads, device=args.device, kind=ref_kind)
                if cuda and rep == 0:
                    continue  # warm-up round (kernels, cuBLAS handles, allocator)
                runs["naive"].append(r_a)
                for m in modes:
                    runs[f"ours:{m}"].append(r_b[m])
                runs["gemm"].append(r_c)
            t_a = statistics.median(r["seconds"] for r in runs["naive"])
            g_c = statistics.median(r["gflops"] for r in runs["gemm"])
            g_a = work / t_a / 1e9
            n_w = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
            theory_mib = (args.chunk * n_w * (4 + 4 + 1)) / 2 ** 20
            print(f"\nFCN {widths}, {args.trials} trials x {args.points} sphere points, magnitude "
                  f"{args.prune_fraction:.0%} layerwise, matmul {prec}, useful work {work / 1e9:.1f} GFLOP "
                  f"(median of {args.repeats})")
            print(f"  (a) naive loop : {t_a:7.3f} s  {g_a:9.1f} GFLOP/s  ({100 * g_a / g_c:.0f}% of GEMM)  "
                  f"runs {[round(r['seconds'], 3) for r in runs['naive']]}")
            print(f"  (c) {ref_kind} GEMM {args.gemm_n}^2: {g_c:9.1f} GFLOP/s  "
                  f"runs {[round(r['gflops'], 1) for r in runs['gemm']]}")
            what = "peak CUDA memory" if cuda else "peak RSS above an idle child"
            for m in modes:
                ours = runs[f"ours:{m}"]
                t_b = statistics.median(r["seconds"] for r in ours)
                g_b = work / t_b / 1e9
                row = {"device": args.device, "matmul": prec, "forward": m, "widths": widths,
                       "n_points": args.points, "n_trials": args.trials, "chunk": args.chunk, "gflop": work / 1e9,
                       "naive_s": t_a, "ours_s": t_b, "naive_gflops": g_a, "ours_gflops": g_b,
                       "gemm_kind": ref_kind, "gemm_gflops": g_c, "speedup": t_a / t_b,
                       "ours_pct_gemm": 100 * g_b / g_c, "naive_pct_gemm": 100 * g_a / g_c,
                       "naive_all_s": [r["seconds"] for r in runs["naive"]],
                       "ours_all_s": [r["seconds"] for r in ours],
                       "gemm_all_gflops": [r["gflops"] for r in runs["gemm"]],
                       "peak_mib_naive": max(r[mem_key] for r in runs["naive"]) - base,
                       "peak_mib_ours": max(r[mem_key] for r in ours) - base,
                       "ensemble_weights_masks_mib": theory_mib,
                       "gap_mean_naive": runs["naive"][0]["gap_mean"], "gap_mean_ours": ours[0]["gap_mean"]}
                if args.profile:
                    row["ours_phases_s"] = {p: statistics.median(r["phases"][p] for r in ours)
                                            for p in ours[0]["phases"]}
                results.append(row)
                print(f"  (b) ours, forward {m:8s}: {t_b:7.3f} s  {g_b:9.1f} GFLOP/s  "
                      f"runs {[round(x, 3) for x in row['ours_all_s']]}")
                print(f"      (b)/(a) = {row['speedup']:.2f}x   (b) = {row['ours_pct_gemm']:.0f}% of (c)")
                if args.profile:
                    print("      phases: " + ", ".join(f"{p} {v:.3f} s" for p, v in row["ours_phases_s"].items()))
                print(f"      {what}: naive {row['peak_mib_naive']:.0f} MiB, ours {row['peak_mib_ours']:.0f} MiB "
                      f"(K={args.chunk} targets + pruned + masks = {theory_mib:.0f} MiB); mean sampled gap: "
                      f"naive {row['gap_mean_naive']:.4g}, ours {row['gap_mean_ours']:.4g} (different draws)")
    if args.torch_profile:
        hval = int(args.hidden.split(",")[-1])
        widths = [hval if t == "H" else int(t) for t in args.widths.split(",")]
        print(f"\ntorch.profiler, one chunk of ours (K = {args.chunk}, {widths}, matmul {precisions[-1]}):")
        _torch_profile(widths, args.points, args.chunk, args.prune_fraction, args.device, precisions[-1],
                       args.forward.split(",")[0].strip())
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
