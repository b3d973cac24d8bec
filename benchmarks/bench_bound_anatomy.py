"""Anatomy of Theorem N: how much of ε(δ) is the union bound over the η-net (issue 4).

Theorem N (docs/theory.md §5) = E_l(ξ) + η·r·(Lip F + Lip f), where ξ = d₀·log(1 + 2/η) + log(1/δ')
is what the union over the net costs every per-layer event. This script evaluates the first part,
E_l, at fixed η *without* the Lipschitz remainder — what any argument that made the remainder
free at that η (an "oracle" Lipschitz bound for f − F) could reach at best — and, as ``no net``,
the same recursion with ξ = log(1/δ'): a bound for one fixed input, which does not bound the sup.
Dividing by a measured 95% quantile of the sup-gap (``--q95``, e.g. from bench_bound_tightness.py)
gives the best tightness ratio reachable inside this proof architecture.

Run: ``python benchmarks/bench_bound_anatomy.py [--h 2048] [--q95-magnitude Q] [--q95-random Q]``
"""

from __future__ import annotations

import argparse
import math

from probprune.bounds.concentration import activation_gain
from probprune.bounds.theorems import layer_laws, theorem_n
from probprune.config import LawSpec, NetSpec
from probprune.nets import Activation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h", type=int, default=2048, help="hidden width of fcn:16,h,h,4")
    ap.add_argument("--level", type=float, default=0.05, help="ρ (magnitude) and p (random, no rescale)")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--q95-magnitude", type=float, default=None, help="measured q95 of the sup-gap (magnitude)")
    ap.add_argument("--q95-random", type=float, default=None, help="measured q95 of the sup-gap (random)")
    args = ap.parse_args()

    spec = NetSpec(widths=(16, args.h, args.h, 4))
    law = LawSpec()
    relu = Activation("relu")
    nl = spec.n_layers
    n_ev = 3 * nl + (nl - 1) + (nl - 1) + nl + nl + (nl - 1)  # the events of Theorem N with ReLU (§5)
    d_ev = args.delta / n_ev
    q95 = {"magnitude": args.q95_magnitude, "random": args.q95_random}
    print(f"fcn:16,{args.h},{args.h},4, uniform K = √6, level {args.level}, δ = {args.delta} "
          f"({n_ev} events, δ' = {d_ev:.3g})")
    print("| method | η | log N | ξ | E_l (net part) | η·r·(Lip F + Lip f) | ε_N(η) | E_l / q95 |")
    print("|---|---|---|---|---|---|---|---|")
    for method in ("magnitude", "random"):
        layers = layer_laws(spec, law, method, [args.level] * nl, False, math.inf)
        for eta in (1e-4, 1e-2, 0.1, 0.5, 1.0, math.inf):
            e, lip_term, log_n, _ = theorem_n(layers, [1.0] * nl, activation_gain(relu), 1.0, 1.0,
                                           spec.input_dim, d_ev, eta if math.isfinite(eta) else 1e6,
                                           relu=True, joint=True)
            net = e - lip_term  # η = 10⁶ (no net): log N ≈ 3e-5, the remainder ≈ 4e7 cancels to ~1e-8
            xi = log_n + math.log(1.0 / d_ev)
            q = q95[method]
            ratio = f"{net / q:.2f}" if q else "—"
            eta_s = f"{eta:g}" if math.isfinite(eta) else "no net (one x)"
            lt = f"{lip_term:.3g}" if math.isfinite(eta) else "—"
            tot = f"{e:.4g}" if math.isfinite(eta) else "—"
            print(f"| {method} | {eta_s} | {log_n:.1f} | {xi:.1f} | {net:.4g} | {lt} | {tot} | {ratio} |")


if __name__ == "__main__":
    main()
