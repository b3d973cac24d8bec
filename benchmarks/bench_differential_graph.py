"""The differential graph bound vs plain CROWN on the merged net vs the layerwise graph bound vs the found gap.

Usage::

    .venv/bin/python benchmarks/bench_differential_graph.py --model Convnet_avgpool --radius 0.01 --n 100
    .venv/bin/python benchmarks/bench_differential_graph.py --model resnet_2b --radius 0.01 --n 48
    .venv/bin/python benchmarks/bench_differential_graph.py --model resnet_2b --boxes --n 48
    .venv/bin/python benchmarks/bench_differential_graph.py --model resnet_2b --radius 0.01 --n 48 --crown-n 0 \
        --optimise 40

Models: ``../shared/models/vnncomp2021/{Convnet_avgpool,resnet_2b}.onnx`` read by the graph reader (float64
parameters), pruned 50 % by global magnitude (``runner.graph.run_graph_prune``, as ``probprune prune --scope
global --prune-fraction 0.5 --out pruned.onnx`` writes it). Balls: ℓ∞ radius r around the first N MNIST test
images (pixels / 255) ∩ box [0, 1] (Convnet_avgpool), or around the first N of the ResNet's own centres
``cifar10_resnet2b_centers.npy`` (normalised space, no box); ``--boxes``: the ResNet's VNN-COMP boxes
``centre ± cifar10_resnet2b_halfwidths.npy`` (per pixel) instead of the radius.

Per input, all in one run: certified = ``graph_certified_agreement(...).bound`` (the differential graph bound,
one propagation with the agreement margins and the chord bound on the output norm), found = ``graph_gap_search``
(8 restarts, ``--steps`` Adam steps), CROWN = :func:`crown_merged_graph` (plain CROWN on ``x ↦ f(x) − F(x)``: the
two graphs side by side, each ReLU of F and of f relaxed independently, float64, no rounding margins — a
baseline, not a certificate) on the first ``--crown-n`` inputs, layerwise = ``certified_graph_gap`` over the ℓ2
ball around 0 holding every local ball (computed once). Empirical agreement: no disagreement found by the attack
nor at the centre / the search's witness. ``--optimise N`` (``--optimise-depth D``): the same agreement call with
N steps of slope optimisation too, same balls, its value per input as ``optimised`` and its own time (the call
includes its own plain propagation). Prints one markdown row and writes the per-input values as JSON
(``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probprune.bounds.differential_graph import _make_lin, graph_certified_agreement, graph_gap_search
from probprune.bounds.graph import certified_graph_gap
from probprune.config import BallSpec, PruneSpec
from probprune.data import load_dataset
from probprune.nets.graph import Graph, Node
from probprune.nets.onnx_graph import load_onnx_graph
from probprune.runner.certify import layerwise_radius
from probprune.runner.graph import GraphModel, run_graph_prune

_REL = Path("shared") / "models" / "vnncomp2021"
MODELS = next((p / _REL for p in Path(__file__).resolve().parents[1:4] if (p / _REL).is_dir()),
              Path(__file__).resolve().parents[2] / _REL)
_ROWS = 512  # objective rows per back-substitution chunk of the CROWN baseline


def _inputs(model: str, n: int) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float] | None]:
    if model == "resnet_2b":
        x = torch.from_numpy(np.load(MODELS / "cifar10_resnet2b_centers.npy"))[:n].double()
        y = torch.from_numpy(np.load(MODELS / "cifar10_resnet2b_labels.npy"))[:n]
        return x, y, None
    ds = load_dataset("mnist")
    x = (ds.test_images[:n].to(torch.float32) / 255.0).double().reshape(n, 1, 28, 28)
    return x, ds.test_labels[:n].clone(), (0.0, 1.0)


# ---------------------------------------------------------------------------------------- CROWN baseline


class _Crown:
    """Plain CROWN on one graph (float64, relu only): per ReLU input the bounds of its unstable neurons
    back-substituted to the input box; relaxations ``λz ≤ relu(z) ≤ s z + t`` (λ = 1 if u > −l else 0)."""

    def __init__(self, g: Graph, lo: Tensor, hi: Tensor) -> None:
        self.g, self.lo, self.hi = g, lo, hi
        self.lins = {n.name: _make_lin(n, n, g.shapes) for n in g.nodes
                     if n.op in ("linear", "conv", "affine", "avgpool", "adaptive_avgpool", "reshape", "pad",
                                 "identity")}
        self.lines: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.box: dict[str, tuple[Tensor, Tensor]] = {"input": (lo, hi)}
        for node in g.nodes:
            self._forward(node)

    def _forward(self, n: Node) -> None:
        ins = [self.box[i] for i in n.inputs]
        if n.name in self.lins:
            lin = self.lins[n.name]
            l, u = ins[0]
            mid, rad = (l + u) / 2, (u - l) / 2
            c = lin.apply(lin.pt, mid) + lin.bt
            e = lin.apply({k: v.abs() for k, v in lin.pt.items()}, rad)
            self.box[n.name] = (c - e, c + e)
        elif n.op == "add":
            self.box[n.name] = (ins[0][0] + ins[1][0], ins[0][1] + ins[1][1])
        elif n.op == "act" and n.attrs["act"].kind == "relu":
            z = n.inputs[0]
            l, u = self.box[z]
            unst = (l < 0) & (u > 0)
            if bool(unst.any()):
                l, u = self._refine(z, l, u, unst)
                self.box[z] = (l, u)
            unst = (l < 0) & (u > 0)
            s = torch.where(unst, u / (u - l).clamp_min(1e-300), (l >= 0).double())
            t = torch.where(unst, -s * l, torch.zeros_like(l))
            lam = torch.where(unst, (u > -l).double(), (l >= 0).double())
            self.lines[n.name] = (lam, s, t)
            self.box[n.name] = (l.clamp_min(0), u.clamp_min(0))
        else:
            raise SystemExit(f"CROWN baseline: op {n.op} not covered")

    def _refine(self, name: str, l: Tensor, u: Tensor, unst: Tensor) -> tuple[Tensor, Tensor]:
        bsz, n = l.shape
        r = int(unst.sum(1).max())
        idx = torch.sort((~unst).to(torch.int8), dim=1, stable=True).indices[:, :r]
        ok = unst.gather(1, idx)
        l, u = l.clone(), u.clone()
        for r0 in range(0, r, _ROWS // 2):
            sl = idx[:, r0:r0 + _ROWS // 2]
            rows = torch.zeros(bsz, sl.shape[1], n, dtype=torch.float64).scatter_(2, sl.unsqueeze(-1), 1.0)
            lam, const = self.back(name, torch.cat([rows, -rows], 1))
            low = _concretise(lam, const, self.lo, self.hi)
            k = sl.shape[1]
            m = ok[:, r0:r0 + k]
            lo_new = torch.where(m, low[:, :k], torch.full_like(low[:, :k], -math.inf))
            hi_new = torch.where(m, -low[:, k:], torch.full_like(low[:, :k], math.inf))
            l.scatter_reduce_(1, sl, lo_new, "amax")
            u.scatter_reduce_(1, sl, hi_new, "amin")
        return l, u

    def back(self, name: str, coef: Tensor) -> tuple[Tensor, Tensor]:
        """``coefᵀ v_name ≥ Λ x + const`` over the box: ``(Λ [B, R, d], const [B, R])``."""
        bsz, r, _ = coef.shape
        coefs = {name: coef}
        const = torch.zeros(bsz, r, dtype=torch.float64)
        order = [n.name for n in self.g.nodes]
        for node in reversed(self.g.nodes[:order.index(name) + 1]):
            if node.name not in coefs:
                continue
            c = coefs.pop(node.name)
            if node.name in self.lins:
                lin = self.lins[node.name]
                const = const + c @ lin.bt
                pushes = [(node.inputs[0], lin.vjp(lin.pt, c.reshape(bsz * r, -1)).reshape(bsz, r, -1))]
            elif node.op == "add":
                pushes = [(node.inputs[0], c), (node.inputs[1], c)]
            else:  # relu
                lam, s, t = self.lines[node.name]
                pos, neg = c.clamp_min(0), c.clamp_max(0)
                const = const + (neg * t.unsqueeze(1)).sum(-1)
                pushes = [(node.inputs[0], pos * lam.unsqueeze(1) + neg * s.unsqueeze(1))]
            for tgt, v in pushes:
                coefs[tgt] = coefs[tgt] + v if tgt in coefs else v
        return coefs["input"], const


def _concretise(lam: Tensor, const: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Lower value of ``Λ x + const`` over the box ``[lo, hi]``."""
    return (lam.clamp_min(0) @ lo.unsqueeze(-1) + lam.clamp_max(0) @ hi.unsqueeze(-1)).squeeze(-1) + const


def crown_merged_graph(target: Graph, pruned: Graph, lo: Tensor, hi: Tensor) -> Tensor:
    """Baseline ``[B]``: plain CROWN on the merged net ``x ↦ f(x) − F(x)`` over the boxes ``[lo, hi]`` (``[B, d]``).

    The merged net is F and f side by side: its intermediate bounds are each graph's own CROWN bounds (the two
    never interact below the output), its output row ``e_j`` back-substitutes through f with ``+e_j`` and
    through F with ``−e_j`` and the two input coefficients are summed before the box is applied. Returns
    ``sqrt(Σ max(lo_j², hi_j²))`` of the output intervals. Float64, no rounding margins (not a certificate).
    """
    ct, cp = _Crown(target.to(torch.float64), lo, hi), _Crown(pruned.to(torch.float64), lo, hi)
    m = math.prod(target.output_shape)
    eye = torch.eye(m, dtype=torch.float64).expand(lo.shape[0], m, m)
    rows = torch.cat([eye, -eye], 1)
    lp, cpc = cp.back(pruned.output, rows)
    lt, ctc = ct.back(target.output, -rows)
    low = _concretise(lp + lt, cpc + ctc, lo, hi)
    lo_j, hi_j = low[:, :m], -low[:, m:]
    return torch.maximum(lo_j * lo_j, hi_j * hi_j).sum(-1).sqrt()


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Convnet_avgpool", choices=["Convnet_avgpool", "resnet_2b"])
    ap.add_argument("--radius", type=float, default=0.01)
    ap.add_argument("--boxes", action="store_true", help="resnet_2b: the VNN-COMP per-pixel boxes")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--crown-n", type=int, default=None, help="inputs for the CROWN baseline (default: all)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--optimise", type=int, default=0,
                    help="also the bound with N steps of slope optimisation (graph_certified_agreement(optimise=N)), "
                         "in the same run, beside the plain one")
    ap.add_argument("--optimise-depth", type=int, default=0, help="optimise_depth of the optimised bound")
    ap.add_argument("--out", default=None)
    ap.add_argument("--time-against", default=None, metavar="FILE.py",
                    help="only time graph_differential_bound against another version of differential_graph.py "
                         "(e.g. `git show main:src/probprune/bounds/differential_graph.py > old.py`), interleaved, "
                         "one input at a time, same process and load; prints both values and the time ratio")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    path = MODELS / f"{args.model}.onnx"
    graph, info = load_onnx_graph(path)
    pruned = run_graph_prune(GraphModel(graph, info, str(path)),
                             PruneSpec(method="magnitude", scope="global", prune_fraction=0.5)).pruned
    x, y, box = _inputs(args.model, args.n)
    hw_all = None
    if args.boxes:
        if args.model != "resnet_2b":
            raise SystemExit("--boxes: resnet_2b only")
        hw_all = torch.from_numpy(np.load(MODELS / "cifar10_resnet2b_halfwidths.npy"))[:args.n].double()
    radius = float(hw_all.max()) if hw_all is not None else args.radius
    ball = BallSpec(radius=radius, norm="linf", box=box,
                    centre=None if box is None else tuple(x[0].reshape(-1).tolist()))
    if args.time_against:
        _time_against(args.time_against, graph, pruned, ball, x, hw_all)
        return
    t0 = time.perf_counter()
    big_r = float(layerwise_radius(x.reshape(args.n, -1), radius, "linf", box,
                                   None if hw_all is None else hw_all.reshape(args.n, -1)).max())
    layer = float(certified_graph_gap(graph, pruned, radius=big_r).value)
    t_layer = time.perf_counter() - t0
    rows, t_cert, t_found, t_crown, t_opt = [], 0.0, 0.0, 0.0, 0.0
    n_crown = args.n if args.crown_n is None else min(args.n, args.crown_n)
    gen = torch.Generator().manual_seed(0)
    for start in range(0, args.n, args.batch):
        xb = x[start:start + args.batch]
        hw = None if hw_all is None else hw_all[start:start + args.batch]
        t1 = time.perf_counter()
        agr = graph_certified_agreement(graph, pruned, ball, centres=xb, generator=gen, n_restarts=4,
                                        n_steps=args.steps // 2, batch_size=args.batch, halfwidth=hw)
        t2 = time.perf_counter()
        t_cert += t2 - t1  # the plain call alone (the optimised one is timed apart)
        opt = None
        if args.optimise:
            opt = graph_certified_agreement(graph, pruned, ball, centres=xb, generator=gen, n_restarts=4,
                                            n_steps=args.steps // 2, batch_size=args.batch, halfwidth=hw,
                                            optimise=args.optimise, optimise_depth=args.optimise_depth)
            assert opt.bound is not None
        t_opt += time.perf_counter() - t2
        t2 = time.perf_counter()
        low = graph_gap_search(graph, pruned, ball, gen, centres=xb, n_restarts=8, n_steps=args.steps, halfwidth=hw)
        t3 = time.perf_counter()
        crown: list[float | None] = [None] * xb.shape[0]
        k = max(0, min(xb.shape[0], n_crown - start))
        if k:
            xf = xb[:k].reshape(k, -1)
            h = args.radius if hw is None else hw[:k].reshape(k, -1)
            lo, hi = xf - h, xf + h
            if box is not None:
                lo, hi = lo.clamp_min(box[0]), hi.clamp_max(box[1])
            crown[:k] = crown_merged_graph(graph, pruned, lo, hi).tolist()
        t4 = time.perf_counter()
        t_found, t_crown = t_found + t3 - t2, t_crown + t4 - t3
        assert agr.bound is not None
        with torch.no_grad():
            xw = low.x.reshape(xb.shape)
            same_w = graph.to(torch.float64)(xw).argmax(-1) == pruned(xw).argmax(-1)
            same_c = graph(xb).argmax(-1) == pruned(xb).argmax(-1)
        for i in range(xb.shape[0]):
            rows.append({"index": start + i, "certified": float(agr.bound.value[i]), "found": float(low.value[i]),
                         "crown": crown[i], "verdict": agr.verdicts[i], "label": int(y[start + i]),
                         "optimised": None if opt is None else float(opt.bound.value[i]),  # type: ignore[union-attr]
                         "verdict_optimised": None if opt is None else opt.verdicts[i],
                         "empirical_agree": bool(same_w[i]) and bool(same_c[i]) and agr.verdicts[i] != "refuted"})
        print(f"{len(rows)}/{args.n} {time.perf_counter() - t0:.0f}s load {os.getloadavg()[0]:.1f}", flush=True)
        if args.out:  # what is done so far, so that a run stopped early still leaves its rows
            Path(args.out).with_suffix(".partial.json").write_text(json.dumps({"rows": rows, "layerwise": layer,
                                                                               "layerwise_R": big_r}, indent=1))
    _report(args, rows, layer, big_r, n_crown, (t_cert, t_found, t_crown, t_layer, t_opt))


def _time_against(old_path: str, graph: Graph, pruned: Graph, ball: BallSpec, x: Tensor, hw: Tensor | None) -> None:
    """Seconds of ``graph_differential_bound`` (this tree) vs an older module, input by input, alternating."""
    import importlib.util

    from probprune.bounds.differential_graph import graph_differential_bound

    spec = importlib.util.spec_from_file_location("old_differential_graph", old_path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # its dataclasses look their module up
    spec.loader.exec_module(old)
    t_new = t_old = 0.0
    for i in range(x.shape[0]):
        kw: dict[str, Any] = {} if hw is None else {"halfwidth": hw[i:i + 1]}
        t1 = time.perf_counter()
        v_old = float(old.graph_differential_bound(graph, pruned, ball, centres=x[i:i + 1], **kw).value[0]) \
            if hw is None else math.nan  # the older module has no per-input boxes
        t2 = time.perf_counter()
        v_new = float(graph_differential_bound(graph, pruned, ball, centres=x[i:i + 1], **kw).value[0])
        t3 = time.perf_counter()
        t_old, t_new = t_old + t2 - t1, t_new + t3 - t2
        print(f"input {i}: old {v_old:.6g} in {t2 - t1:.1f} s, new {v_new:.6g} in {t3 - t2:.1f} s, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"total: old {t_old:.1f} s, new {t_new:.1f} s, old / new = {t_old / t_new:.2f}")


def _report(args: argparse.Namespace, rows: list[dict], layer: float, big_r: float, n_crown: int,
            times: tuple[float, float, float, float, float]) -> None:
    t_cert, t_found, t_crown, t_layer, t_opt = times
    ratios = [r["certified"] / r["found"] for r in rows]
    opt = [r["optimised"] / r["found"] for r in rows if r["optimised"] is not None]
    crown = [r["crown"] / r["found"] for r in rows if r["crown"] is not None]
    crown_ours = [r["crown"] / r["certified"] for r in rows if r["crown"] is not None]
    lay = [layer / r["found"] for r in rows]
    cert = sum(r["verdict"] == "certified" for r in rows) / args.n
    emp = sum(r["empirical_agree"] for r in rows) / args.n
    summary = {"model": args.model, "ball": "VNN-COMP boxes" if args.boxes else f"linf {args.radius:g}",
               "n": args.n, "median_ratio": statistics.median(ratios), "max_ratio": max(ratios),
               "crown_n": n_crown, "median_crown_ratio": statistics.median(crown) if crown else None,
               "max_crown_ratio": max(crown) if crown else None,
               "median_crown_over_ours": statistics.median(crown_ours) if crown_ours else None,
               "layerwise": layer, "layerwise_R": big_r,
               "median_layerwise_ratio": statistics.median(lay), "max_layerwise_ratio": max(lay),
               "certified_agreement": cert, "empirical_agreement": emp, "s_per_image_certified": t_cert / args.n,
               "s_per_image_found": t_found / args.n, "s_per_image_crown": t_crown / max(n_crown, 1),
               "s_layerwise_once": t_layer,
               "optimise": args.optimise, "optimise_depth": args.optimise_depth,
               "median_optimised_ratio": statistics.median(opt) if opt else None,
               "max_optimised_ratio": max(opt) if opt else None,
               "s_per_image_optimised": t_opt / args.n if opt else None,
               "certified_agreement_optimised": sum(r["verdict_optimised"] == "certified" for r in rows) / args.n
               if opt else None,
               "median_certified": statistics.median(r["certified"] for r in rows),
               "median_found": statistics.median(r["found"] for r in rows),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load at the end "
                          f"{os.getloadavg()[0]:.1f}"}

    def pair(a: object, b: object) -> str:
        return "–" if a is None else f"{a:.3g} / {b:.3g}"

    print("| model | ball | N | ours ÷ found median / max | CROWN-merged ÷ found (N) | layerwise ÷ found | "
          "certified agr. | empirical agr. | s/image ours | found | CROWN |")
    print(f"| {args.model} | {summary['ball']} | {args.n} "
          f"| {pair(summary['median_ratio'], summary['max_ratio'])} "
          f"| {pair(summary['median_crown_ratio'], summary['max_crown_ratio'])} ({n_crown}) "
          f"| {pair(summary['median_layerwise_ratio'], summary['max_layerwise_ratio'])} | {100 * cert:.0f} % "
          f"| {100 * emp:.0f} % | {summary['s_per_image_certified']:.2f} | {summary['s_per_image_found']:.2f} "
          f"| {summary['s_per_image_crown']:.2f} |")
    if opt:
        print(f"optimised (optimise={args.optimise}, depth {args.optimise_depth}): ours ÷ found median / max "
              f"{pair(summary['median_optimised_ratio'], summary['max_optimised_ratio'])} (plain "
              f"{pair(summary['median_ratio'], summary['max_ratio'])}), {summary['s_per_image_optimised']:.2f} "
              f"s/image (plain {summary['s_per_image_certified']:.2f}), certified agreement "
              f"{100 * summary['certified_agreement_optimised']:.0f} %")
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    if not all(math.isfinite(v) for v in ratios):
        raise SystemExit("a found gap of 0: ratio undefined")


if __name__ == "__main__":
    main()
