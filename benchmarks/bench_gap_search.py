"""The gap search (empirical lower bound) against a float64 reference search (issue 16 item 4).

Run: ``python benchmarks/bench_gap_search.py [--models DIR] [--seeds 5] [--images 20] [--quick]``; prints a
Markdown table. Run it with ``PYTHONPATH=<checkout>/src`` of the code to measure (the script only uses
``gap_sandwich``, ``gap_search`` and ``search_graph_gap``, which every version since session 5 has).

Cases (every net pruned 50 % by global magnitude, one thread):

* ``mnist-net_256x2`` (784-256-256-10, biases), ℓ2 ball r = 1 around 0: the sandwich's lower value
  (:func:`probprune.runner.gap.gap_sandwich`, float64 value at the witness) at the default ``GapSpec`` over
  ``--seeds`` seeds, and at a larger budget (64 restarts, 200 steps);
* the same net, ℓ∞ balls 0.01 and 0.03 ∩ [0, 1] around the first ``--images`` MNIST test images (pixels / 255):
  :func:`probprune.bounds.differential.gap_search` at its default budget and at 16 restarts × 200 steps;
* ``Convnet_avgpool`` and ``resnet_2b`` read as graphs, ℓ2 ball r = 1 around 0:
  :func:`probprune.bounds.graph.search_graph_gap` at the default ``GapSpec`` budget (what ``prune --gap`` runs)
  and at 64 restarts × 200 steps.

The **reference** is written here, independently of the library: float64 copies of the nets, many random starts
(ℓ2: uniform on the sphere; ℓ∞: uniform in the box ∩ ball), a monotone projected gradient ascent with a
per-restart backtracking step (a step is taken only where it increases the gap; the step grows ×1.5 after a
success, halves after a failure, and is reset to r/2 when it falls below r·1e-7), for a long time. Its value is
``‖f(x) − F(x)‖₂`` in float64 at its best point (projected by plain clamping / scaling: a reference, not a
certificate).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from probprune.bounds.differential import gap_search
from probprune.bounds.graph import search_graph_gap
from probprune.config import BallSpec, GapSpec, PruneSpec
from probprune.data import load_dataset
from probprune.graphmasks import prune_graph
from probprune.masks import prune
from probprune.nets.graph import Graph
from probprune.nets.onnx import load_onnx
from probprune.nets.onnx_graph import load_onnx_graph
from probprune.runner.gap import gap_sandwich

F64 = torch.float64
Fn = Callable[[Tensor], Tensor]


def reference(gap2: Fn, centres: Tensor, radius: float, norm: str, box: tuple[float, float] | None,
              n_restarts: int, n_steps: int, seed: int = 123) -> Tensor:
    """Independent float64 search: best ``sqrt(gap2(x))`` per ball, ``gap2`` maps ``[N, d]`` to ``[N]``."""
    g = torch.Generator().manual_seed(seed)
    b, d = centres.shape

    def project(x: Tensor) -> Tensor:
        v = x - centres
        if norm == "linf":
            v = v.clamp(-radius, radius)
            out = centres + v
            return out if box is None else out.clamp(box[0], box[1])
        if box is not None:
            v = (centres + v).clamp(box[0], box[1]) - centres
        n = v.norm(dim=-1, keepdim=True)
        return centres + v * torch.clamp(radius / n.clamp_min(1e-300), max=1.0)

    def value(x: Tensor) -> Tensor:
        return gap2(x.reshape(-1, d)).reshape(n_restarts, b)

    if norm == "linf":
        x = centres + radius * (2 * torch.rand(n_restarts, b, d, generator=g, dtype=F64) - 1)
    else:
        z = torch.randn(n_restarts, b, d, generator=g, dtype=F64)
        x = centres + radius * z / z.norm(dim=-1, keepdim=True)
    x = project(x)
    with torch.no_grad():
        v = value(x)
    eta = torch.full((n_restarts, b, 1), 0.5 * radius, dtype=F64)
    for _ in range(n_steps):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(value(xr).sum(), xr)
        with torch.no_grad():
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            y = project(x + eta * step)
            vy = value(y)
            ok = (vy > v).unsqueeze(-1)
            x = torch.where(ok, y, x)
            v = torch.where(ok.squeeze(-1), vy, v)
            eta = torch.where(ok, eta * 1.5, eta * 0.5)
            eta = torch.where(eta < radius * 1e-7, torch.full_like(eta, 0.5 * radius), eta)
    return v.amax(0).sqrt()


def _fmt(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{min(vals):.4f} / {statistics.median(vals):.4f} / {max(vals):.4f}"


def mnist_cases(model: Path, seeds: int, n_images: int, quick: bool, rows: list[tuple[str, ...]]) -> None:
    target = load_onnx(model)
    pruned = prune(target, PruneSpec(method="magnitude", scope="global", prune_fraction=0.5)).model
    t64, p64 = target.to(dtype=F64), pruned.to(dtype=F64)

    def gap2(x: Tensor) -> Tensor:
        return (p64(x) - t64(x)).square().sum(-1)  # type: ignore[operator]

    t0 = time.perf_counter()
    ref_v = float(reference(gap2, torch.zeros(1, 784, dtype=F64), 1.0, "l2", None, 64 if quick else 256,
                            100 if quick else 300)[0])
    t_ref = time.perf_counter() - t0
    default = GapSpec(radius=1.0)
    for label, spec, n_seeds in ((f"default ({default.n_restarts} × {default.n_steps})", default, seeds),
                                 ("64 × 200", GapSpec(radius=1.0, n_restarts=64, n_steps=200), 1)):
        vals, times = [], []
        for s in range(n_seeds):
            t0 = time.perf_counter()
            vals.append(float(gap_sandwich(target, pruned, spec, seed=s).lower))
            times.append(time.perf_counter() - t0)
        rows.append(("mnist-net_256x2", "ℓ2 1 around 0", label, f"{n_seeds} seeds" if n_seeds > 1 else "seed 0",
                     _fmt(vals), f"{ref_v:.4f}", f"{min(vals) / ref_v:.4f}", f"{statistics.median(times):.2f}",
                     f"{t_ref:.0f}"))
        print(" | ".join(rows[-1]), flush=True)
    ds = load_dataset("mnist")
    centres = ds.test_images[:n_images].reshape(n_images, -1).to(F64) / 255.0
    for r in (0.01, 0.03):
        ball = BallSpec(radius=r, norm="linf", box=(0.0, 1.0))
        t0 = time.perf_counter()
        refr = reference(gap2, centres, r, "linf", (0.0, 1.0), 8 if quick else 24, 100 if quick else 200)
        t_ref = time.perf_counter() - t0
        for label, kw in (("default (8 × 100)", {}), ("16 × 200", {"n_restarts": 16, "n_steps": 200})):
            t0 = time.perf_counter()
            w = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=centres,
                           **kw)  # type: ignore[arg-type]
            t = time.perf_counter() - t0
            ratio = (w.value / refr).tolist()
            n_ge = sum(q >= 1 - 1e-6 for q in ratio)
            rows.append(("mnist-net_256x2", f"ℓ∞ {r} ∩ [0,1], {n_images} images", label, "ours/ref min / median",
                         f"{min(ratio):.4f} / {statistics.median(ratio):.4f}", f"ours ≥ ref on {n_ge}/{n_images}",
                         f"{min(ratio):.4f}", f"{t:.2f}", f"{t_ref:.0f}"))
            print(" | ".join(rows[-1]), flush=True)


def graph_cases(models: Path, quick: bool, rows: list[tuple[str, ...]]) -> None:
    default = GapSpec(radius=1.0)
    for name in ("Convnet_avgpool", "resnet_2b"):
        g, _ = load_onnx_graph(models / f"{name}.onnx")
        f, _ = prune_graph(g, 0.5, "magnitude", "global", generator=torch.Generator().manual_seed(1))
        g64, f64 = g.to(F64), f.to(F64)
        shape = g.input_shape
        d = math.prod(shape)

        def gap2(x: Tensor, g64: Graph = g64, f64: Graph = f64, shape: tuple[int, ...] = shape) -> Tensor:
            xx = x.reshape(-1, *shape)
            return (f64(xx) - g64(xx)).flatten(1).square().sum(-1)

        t0 = time.perf_counter()
        ref_v = float(reference(gap2, torch.zeros(1, d, dtype=F64), 1.0, "l2", None, 16 if quick else 64,
                                100 if quick else 300)[0])
        t_ref = time.perf_counter() - t0
        for label, rs, st in ((f"default ({default.n_restarts} × {default.n_steps})", default.n_restarts,
                               default.n_steps), ("64 × 200", 64, 200)):
            t0 = time.perf_counter()
            v = search_graph_gap(g, f, radius=1.0, n_restarts=rs, n_steps=st)[0]
            t = time.perf_counter() - t0
            rows.append((name, "ℓ2 1 around 0 (graph)", label, "seed 0", f"{v:.4f}", f"{ref_v:.4f}",
                         f"{v / ref_v:.4f}", f"{t:.2f}", f"{t_ref:.0f}"))
            print(" | ".join(rows[-1]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    found = [p for p in (root.parent / "shared", root.parent.parent / "shared") if (p / "models").is_dir()]
    ap.add_argument("--models", default=str((found[0] if found else root.parent / "shared") / "models" / "vnncomp2021"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="small reference budgets (a smoke run)")
    ap.add_argument("--only", choices=("mnist", "graphs"), default=None)
    args = ap.parse_args()
    models = Path(args.models)
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; torch "
          f"{torch.__version__}; one thread", flush=True)
    rows: list[tuple[str, ...]] = []
    if args.only in (None, "mnist"):
        mnist_cases(models / "mnist-net_256x2.onnx", args.seeds, args.images, args.quick, rows)
    if args.only in (None, "graphs"):
        graph_cases(models, args.quick, rows)
    head = ("net", "ball", "budget", "over", "ours (min / median / max)", "reference (float64)", "ours / ref (min)",
            "ours s", "ref s")
    print(f"\nload at the end {os.getloadavg()[0]:.1f}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
