"""Tightness of the probabilistic bound: ε(δ=0.05) vs the empirical 95% quantile of the sup-gap.

Paper setting: uniform law, K = √6, FCN 16 → h → h → 4, ReLU, bias-free, unit ball. For each
h the script samples ``n_trials`` target networks (ensembles, batched), prunes them (magnitude
ρ = 0.05; random p = 0.05 without rescale), estimates each sup-gap from below with
``probprune.gap.sup_gap`` and prints ε(δ), the empirical 95% quantile, their ratio, the
absolute and relative numbers and which theorem gave ε. Trial counts shrink at large h to
fit a shared 2-core CPU (the quantile is then coarse; the count is printed).

Run: ``python benchmarks/bench_bound_tightness.py [--widths 128,256,...] [--trials 64] [--markdown]``
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from probprune.bounds.probabilistic import probabilistic_bound
from probprune.config import GapSpec, LawSpec, NetSpec, PruneSpec
from probprune.gap import sup_gap, sup_output
from probprune.masks import prune
from probprune.rng import derive_seed, make_generator
from probprune.sampling import sample_net


def trials_for(h: int, base: int) -> int:
    """Fewer trials at large widths (CPU budget): base up to 512, then halving per doubling, at least 16."""
    return max(16, base if h <= 512 else int(base * 512 / h))


def measure(h: int, method: str, level: float, n_trials: int, chunk: int, spec_gap: GapSpec,
            device: str = "cpu") -> tuple[list[float], list[float]]:
    """Empirical sup-gaps and sup‖F‖ of ``n_trials`` sampled (target, pruned) pairs at width h."""
    spec = NetSpec(widths=(16, h, h, 4))
    law = LawSpec()
    gaps: list[float] = []
    outs: list[float] = []
    for start in range(0, n_trials, chunk):
        ids = range(start, min(n_trials, start + chunk))
        gens = [make_generator(derive_seed("bench-tight", h, method, k, "w"), device) for k in ids]
        target = sample_net(spec, law, gens, device)
        if method == "magnitude":
            pruned = prune(target, PruneSpec(relative_threshold=level), law=law).model
        else:
            mg = [make_generator(derive_seed("bench-tight", h, method, k, "mask"), device) for k in ids]
            pruned = prune(target, PruneSpec(method="random", p=level), generator=mg).model
        g = make_generator(derive_seed("bench-tight", h, method, start, "x"), device)
        gaps += sup_gap(target, pruned, spec_gap, g).value.flatten().tolist()
        outs += sup_output(target, spec_gap, g).value.flatten().tolist()
    return gaps, outs


def quantile(xs: list[float], q: float) -> float:
    """Empirical q-quantile (linear interpolation)."""
    return float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="128,256,512,1024,2048,4096")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (float32 products; TF32 stays off)")
    ap.add_argument("--all-trials", action="store_true", help="--trials at every width (no shrinking)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec_gap = GapSpec()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.machine()} {platform.processor() or ''}"
    print(f"# machine: {where}, torch {torch.__version__}, "
          f"threads {args.threads}; level {args.level}, δ = {args.delta}; gap estimator {spec_gap}")
    hdr = ("| h | method | trials | ε(δ) | theorem | Thm O ε | q95 gap | ratio ε/q95 | q95 rel. gap | "
           "ε / median sup‖F‖ | s |")
    print(hdr)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for h in (int(x) for x in args.widths.split(",")):
        for method in ("magnitude", "random"):
            t0 = time.perf_counter()
            pr = PruneSpec(relative_threshold=args.level) if method == "magnitude" else \
                PruneSpec(method="random", p=args.level)
            b = probabilistic_bound(NetSpec(widths=(16, h, h, 4)), LawSpec(), pr, args.delta)
            n = args.trials if args.all_trials else trials_for(h, args.trials)
            gaps, outs = measure(h, method, args.level, n, args.chunk, spec_gap, args.device)
            q = quantile(gaps, 1.0 - args.delta)
            rel = quantile([g / o for g, o in zip(gaps, outs)], 1.0 - args.delta)
            med_out = quantile(outs, 0.5)
            print(f"| {h} | {method} | {n} | {b.value:.4g} | {b.theorem.split()[1]} {b.theorem.split()[2]} | "
                  f"{b.value_operator:.4g} | {q:.4g} | {b.value / q:.1f} | {rel:.4g} | {b.value / med_out:.3g} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
