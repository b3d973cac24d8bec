"""Operator norms once per (target, pruned) pair: a ``probprune certify`` run before and after, in one script run.

Target: ``mnist-net_256x2`` (VNN-COMP 2021, ``/work/shared/models/vnncomp2021/``), pruned 50 % by global magnitude;
the first N MNIST test images (default 20), ℓ∞ ball of radius 0.03 ∩ [0, 1], the certify defaults (8 restarts,
100 steps). Three runs of :func:`probprune.runner.certify.run_certify` on the same job, interleaved:

* ``before``: every input's layerwise bound recomputes the pair's operator norms (what certify did: 3 SVDs and
  3 ‖|W|‖ bounds per layer per input) — the norm cache is switched off;
* ``after``: the norms once per pair (:func:`probprune.bounds.certified.pair_norms`), every input only rescales;
* ``norms only``: the time of one :func:`~probprune.bounds.certified.pair_norms` of the pair and of N bounds with
  and without it (the part that changed).

The rows of ``before`` and ``after`` must be equal (the cached bound is the uncached one bit for bit): checked.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_certify_norms.py [--n-points 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import probprune.runner.certify as rc
from probprune.bounds.certified import certified_gap_bound, pair_norms
from probprune.config import CertifyJob, PruneSpec
from probprune.masks import prune
from probprune.nets.onnx import load_onnx, save_onnx

MODEL = Path("/work/shared/models/vnncomp2021/mnist-net_256x2.onnx")


def _run(job: CertifyJob, cached: bool) -> tuple[float, list[dict[str, Any]]]:
    real = rc.pair_norms
    if not cached:
        rc.pair_norms = lambda *a, **k: None  # type: ignore[assignment]  # every bound recomputes its norms
    try:
        t0 = time.perf_counter()
        out = rc.run_certify(job)
        return time.perf_counter() - t0, out.rows
    finally:
        rc.pair_norms = real  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-points", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = load_onnx(str(MODEL))
    pruned = prune(target, PruneSpec(method="magnitude", scope="global", prune_fraction=0.5)).model
    with tempfile.TemporaryDirectory() as d:
        t_path, p_path = Path(d) / "t.onnx", Path(d) / "p.onnx"
        save_onnx(target, t_path)
        save_onnx(pruned, p_path)
        job = CertifyJob(weights=str(t_path), pruned=str(p_path), data="mnist", n_points=args.n_points, norm="linf",
                         radius=0.03, clip=(0.0, 1.0))
        times: dict[str, list[float]] = {"before": [], "after": []}
        rows: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeat):  # interleaved, so that a load change hits both
            for name, cached in (("before", False), ("after", True)):
                t, r = _run(job, cached)
                times[name].append(t)
                rows[name] = r
        same = rows["before"] == rows["after"]
        loaded = rc.load_job(job)
        radii = [float(r["layerwise_radius"]) for r in rows["after"]]
        t0 = time.perf_counter()
        norms = pair_norms(loaded.target, loaded.pruned)  # type: ignore[arg-type]
        t_norms = time.perf_counter() - t0
        t0 = time.perf_counter()
        a = [float(certified_gap_bound(loaded.target, loaded.pruned, radius=r).value) for r in radii]  # type: ignore[arg-type]
        t_uncached = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = [float(certified_gap_bound(loaded.target, loaded.pruned, radius=r, norms=norms).value)  # type: ignore[arg-type]
             for r in radii]
        t_cached = time.perf_counter() - t0
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({"model": MODEL.name, "n_points": args.n_points, "repeat": args.repeat, "times_s": times,
                      "best_before_s": best["before"], "best_after_s": best["after"],
                      "ratio_before_over_after": best["before"] / best["after"], "rows_equal": same,
                      "pair_norms_s": t_norms, "layerwise_uncached_s": t_uncached,
                      "layerwise_cached_s": t_cached + t_norms, "layerwise_equal": a == b,
                      "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
