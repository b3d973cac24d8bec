"""Graphs on real published networks (issue 15): read, check, prune, certified bound vs gap search.

For every ``../shared/models/vnncomp2021/*.onnx``: read it with ``load_onnx_graph`` (exact or refused), compare the
float64 graph with onnxruntime on 100 inputs (uniform in [0, 1] per pixel; max |difference| must be ≤ 1e-5), prune
it (magnitude global 50 % and 90 %, random 30 % layerwise), write the pruned graph as ONNX and run it in onnxruntime
(max |difference| from the graph on the same inputs), and report the sandwich ``search ≤ gap ≤ certified``
at radius 1 — and, for the CIFAR ResNet, at the median ℓ2 norm of its 48 VNN-COMP centres — with times.

Run: ``python benchmarks/bench_graph.py [--models DIR] [--restarts 4] [--steps 60]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probprune.bounds.graph import certified_graph_gap, search_graph_gap
from probprune.graphmasks import prune_graph
from probprune.nets.onnx_graph import load_onnx_graph, save_onnx_graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    found = [p for p in (root.parent / "shared", root.parent.parent / "shared") if (p / "models").is_dir()]
    ap.add_argument("--models", default=str((found[0] if found else root.parent / "shared") / "models" / "vnncomp2021"))
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    if not list(Path(args.models).glob("*.onnx")):
        raise SystemExit(f"no .onnx files in {args.models}; pass --models DIR")
    import onnxruntime as ort

    torch.set_num_threads(1)
    rows = []
    for path in sorted(Path(args.models).glob("*.onnx")):
        t0 = time.perf_counter()
        g, info = load_onnx_graph(path)
        t_load = time.perf_counter() - t0
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.rand(100, *g.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        batch = info.input_shape[0] if isinstance(info.input_shape[0], int) else 100
        want = np.concatenate([sess.run(None, {info.input_name: x[i:i + batch].float().numpy()})[0]
                               for i in range(0, 100, batch)]).reshape(100, -1)
        diff = float(np.abs(g(x).numpy().reshape(100, -1) - want).max())
        radii = [1.0]
        centres = path.parent / "cifar10_resnet2b_centers.npy"
        if path.stem == "resnet_2b" and centres.exists():
            radii.append(float(np.median(np.linalg.norm(np.load(centres).reshape(48, -1), axis=1))))
        for label, frac, method, scope in (("magnitude global 50%", 0.5, "magnitude", "global"),
                                           ("magnitude global 90%", 0.9, "magnitude", "global"),
                                           ("random 30%", 0.3, "random", "layerwise")):
            f, _ = prune_graph(g, frac, method, scope, generator=torch.Generator().manual_seed(1))  # type: ignore[arg-type]
            with tempfile.TemporaryDirectory() as tmp:  # the pruned model as ONNX, run by onnxruntime
                out = save_onnx_graph(f, Path(tmp) / "pruned.onnx")
                ps = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
                pdiff = float(np.abs(ps.run(None, {"input": x.float().numpy()})[0].reshape(100, -1)
                                     - f(x).numpy().reshape(100, -1)).max())
            for r in radii:
                t1 = time.perf_counter()
                bound = certified_graph_gap(g, f, radius=r)
                t_bound = time.perf_counter() - t1
                t2 = time.perf_counter()
                found, _ = search_graph_gap(g, f, radius=r, n_restarts=args.restarts, n_steps=args.steps)
                t_search = time.perf_counter() - t2
                rows.append((path.stem, str(len(g.nodes)), f"{t_load:.1f}", f"{diff:.1e}", label, f"{pdiff:.1e}",
                             f"{r:.4g}", f"{found:.4g}", f"{bound.value:.4g}", f"{bound.value / found:.3g}",
                             f"{t_bound:.2f}",
                             f"{t_search:.1f}"))
                print(" | ".join(rows[-1]), flush=True)
    head = ("model", "nodes", "load s", "max |graph − ort|", "pruning", "pruned .onnx: max |ort − graph|", "radius",
            "search (lower)", "certified (upper)", "upper/lower", "bound s", "search s")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
