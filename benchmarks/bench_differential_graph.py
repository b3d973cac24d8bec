"""The differential graph bound vs the layerwise graph bound vs the found gap, on VNN-COMP conv / residual graphs.

Usage::

    .venv/bin/python benchmarks/bench_differential_graph.py --model Convnet_avgpool --radius 0.01 --n 100
    .venv/bin/python benchmarks/bench_differential_graph.py --model resnet_2b --radius 0.01 --n 8

Models: ``../shared/models/vnncomp2021/{Convnet_avgpool,resnet_2b}.onnx`` read by the graph reader (float64
parameters), pruned 50 % by global magnitude (``runner.graph.run_graph_prune``, as ``probprune prune --scope
global --prune-fraction 0.5 --out pruned.onnx`` writes it). Balls: ℓ∞ radius r around the first N MNIST test
images (pixels / 255) ∩ box [0, 1] (Convnet_avgpool), or around the first N of the ResNet's own centres
``cifar10_resnet2b_centers.npy`` (normalised space, no box).

Per input: certified = ``graph_certified_agreement(...).bound`` (the differential graph bound, one propagation with
the agreement margins), found = ``graph_gap_search`` (8 restarts, ``--steps`` Adam steps), layerwise =
``certified_graph_gap`` over the ℓ2 ball around 0 holding every local ball (computed once). Empirical agreement:
no disagreement found by the attack nor at the centre / the search's witness. Prints one markdown row and
writes the per-input values as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from probprune.bounds.differential_graph import graph_certified_agreement, graph_gap_search
from probprune.bounds.graph import certified_graph_gap
from probprune.config import BallSpec, PruneSpec
from probprune.data import load_dataset
from probprune.nets.onnx_graph import load_onnx_graph
from probprune.runner.certify import layerwise_radius
from probprune.runner.graph import GraphModel, run_graph_prune

_REL = Path("shared") / "models" / "vnncomp2021"
MODELS = next((p / _REL for p in Path(__file__).resolve().parents[1:4] if (p / _REL).is_dir()),
              Path(__file__).resolve().parents[2] / _REL)


def _inputs(model: str, n: int) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float] | None]:
    if model == "resnet_2b":
        x = torch.from_numpy(np.load(MODELS / "cifar10_resnet2b_centers.npy"))[:n].double()
        y = torch.from_numpy(np.load(MODELS / "cifar10_resnet2b_labels.npy"))[:n]
        return x, y, None
    ds = load_dataset("mnist")
    x = (ds.test_images[:n].to(torch.float32) / 255.0).double().reshape(n, 1, 28, 28)
    return x, ds.test_labels[:n].clone(), (0.0, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Convnet_avgpool", choices=["Convnet_avgpool", "resnet_2b"])
    ap.add_argument("--radius", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    path = MODELS / f"{args.model}.onnx"
    graph, info = load_onnx_graph(path)
    pruned = run_graph_prune(GraphModel(graph, info, str(path)),
                             PruneSpec(method="magnitude", scope="global", prune_fraction=0.5)).pruned
    x, y, box = _inputs(args.model, args.n)
    ball = BallSpec(radius=args.radius, norm="linf", box=box,
                    centre=None if box is None else tuple(x[0].reshape(-1).tolist()))
    t0 = time.perf_counter()
    big_r = float(layerwise_radius(x.reshape(args.n, -1), args.radius, "linf", box).max())
    layer = float(certified_graph_gap(graph, pruned, radius=big_r).value)
    t_layer = time.perf_counter() - t0
    rows, t_cert, t_found = [], 0.0, 0.0
    gen = torch.Generator().manual_seed(0)
    for start in range(0, args.n, args.batch):
        xb = x[start:start + args.batch]
        t1 = time.perf_counter()
        agr = graph_certified_agreement(graph, pruned, ball, centres=xb, generator=gen, n_restarts=4,
                                        n_steps=args.steps // 2, batch_size=args.batch)
        t2 = time.perf_counter()
        low = graph_gap_search(graph, pruned, ball, gen, centres=xb, n_restarts=8, n_steps=args.steps)
        t3 = time.perf_counter()
        t_cert, t_found = t_cert + t2 - t1, t_found + t3 - t2
        assert agr.bound is not None
        with torch.no_grad():
            xw = low.x.reshape(xb.shape)
            same_w = graph.to(torch.float64)(xw).argmax(-1) == pruned(xw).argmax(-1)
            same_c = graph(xb).argmax(-1) == pruned(xb).argmax(-1)
        for i in range(xb.shape[0]):
            rows.append({"index": start + i, "certified": float(agr.bound.value[i]), "found": float(low.value[i]),
                         "verdict": agr.verdicts[i],
                         "empirical_agree": bool(same_w[i]) and bool(same_c[i]) and agr.verdicts[i] != "refuted"})
        print(f"{len(rows)}/{args.n} {time.perf_counter() - t0:.0f}s", flush=True)
    ratios = [r["certified"] / r["found"] for r in rows]
    lay = [layer / r["found"] for r in rows]
    cert = sum(r["verdict"] == "certified" for r in rows) / args.n
    emp = sum(r["empirical_agree"] for r in rows) / args.n
    summary = {"model": args.model, "radius": args.radius, "n": args.n, "median_ratio": statistics.median(ratios),
               "max_ratio": max(ratios), "layerwise": layer, "layerwise_R": big_r,
               "median_layerwise_ratio": statistics.median(lay), "max_layerwise_ratio": max(lay),
               "certified_agreement": cert, "empirical_agreement": emp, "s_per_image_certified": t_cert / args.n,
               "s_per_image_found": t_found / args.n, "s_layerwise_once": t_layer,
               "median_certified": statistics.median(r["certified"] for r in rows),
               "median_found": statistics.median(r["found"] for r in rows),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load "
                          f"{os.getloadavg()[0]:.1f}"}
    print(f"| {args.model} | ℓ∞ {args.radius:g} | {args.n} "
          f"| {summary['median_ratio']:.3g} / {summary['max_ratio']:.3g} "
          f"| {summary['median_layerwise_ratio']:.3g} / {summary['max_layerwise_ratio']:.3g} | {100 * cert:.0f} % "
          f"| {100 * emp:.0f} % | {summary['s_per_image_certified']:.2f} | {summary['s_per_image_found']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    if not all(math.isfinite(v) for v in ratios):
        raise SystemExit("a found gap of 0: ratio undefined")


if __name__ == "__main__":
    main()
