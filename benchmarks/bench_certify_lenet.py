"""Certified agreement of the LeNets trained by ``probprune experiment`` on MNIST (docs/experiments.md table).

For each dense LeNet checkpoint of an experiment run folder (``<run>/checkpoints/<model>-seed<s>.safetensors``),
prune it (magnitude or random, global scope, several fractions) exactly as the experiment does (same mask and
fine-tuning seeds), with and without one epoch of masked fine-tuning, save f as safetensors, and run
``probprune certify`` (as a run folder, :func:`probprune.runner.certify.run_certify`) on the first N MNIST test
images at two ℓ∞ radii intersected with the pixel box [0, 1]. Prints one JSON line per setting and a markdown
table at the end.

Both get the full sandwich (differential + layerwise bound, gap search, certified agreement, empirical agreement):
LeNet-300-100 through the chain path (f saved as safetensors), LeNet-5 — a conv net — through the graph path (F and
f exported to ONNX with :func:`probprune.nets.onnx.save_onnx`, float32 as trained, and certified by
``run_certify``, which reads them with the graph reader and runs ``runner/certify_graph.py``: the differential
graph bound, its agreement margins and the layerwise graph bound, no run folder).

Usage::

    python benchmarks/bench_certify_lenet.py --run RUN_DIR --out OUT_DIR [--n-points 100] [--radii 0.01,0.03]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from probprune.config import CertifyJob, PruneSpec, TrainSpec
from probprune.data import as_net, inputs_for, lenet_spec, load_dataset, train
from probprune.masks import prune
from probprune.nets import Net, from_state_dict, to_module
from probprune.nets.onnx import save_onnx
from probprune.rng import derive_seed, make_generator
from probprune.runner.certify import run_certify
from probprune.runner.prune import save_net
from probprune.store import load_tensors


def _pruned(target: Net, model: str, seed: int, method: str, frac: float, ft: bool, ds: Any) -> Net:
    """f as ``probprune experiment`` makes it (its seed streams; fine-tuning 1 epoch, lr 2e-3, batch 128)."""
    stream = (method, "global", round(frac, 6))
    gen = make_generator(derive_seed("experiment:mnist", model, seed, *stream, "mask"))
    res = prune(target, PruneSpec(method=method, prune_fraction=frac, scope="global"),  # type: ignore[arg-type]
                generator=gen if method == "random" else None)
    if not ft:
        return res.model
    g = make_generator(derive_seed("experiment:mnist", model, seed, *stream, "finetune"))
    x = inputs_for(ds.train_images, target.spec, torch.float32)
    module = train(to_module(res.model), x, ds.train_labels, TrainSpec(epochs=1.0, batch_size=128, lr=2e-3), g,
                   masks=res.masks)
    return as_net(module, target.spec)


def _accuracy(net: Net, ds: Any, n: int) -> float:
    with torch.no_grad():
        out = net(inputs_for(ds.test_images[:n], net.spec, torch.float32))
    return float((out.argmax(-1) == ds.test_labels[:n]).double().mean())  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="experiment run folder with checkpoints/")
    ap.add_argument("--out", required=True, help="folder for the pruned models and the certify run folders")
    ap.add_argument("--n-points", type=int, default=100)
    ap.add_argument("--radii", default="0.01,0.03")
    ap.add_argument("--fractions", default="0.5,0.8,0.9")
    ap.add_argument("--methods", default="magnitude,random")
    ap.add_argument("--models", default="lenet-300-100,lenet-5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-restarts", type=int, default=4)
    ap.add_argument("--n-steps", type=int, default=50)
    ap.add_argument("--finetune", choices=("both", "no", "yes"), default="both")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("mnist")
    table = []
    for model in a.models.split(","):
        ckpt = Path(a.run) / "checkpoints" / f"{model}-seed{a.seed}.safetensors"
        spec = lenet_spec(model)
        target = from_state_dict(spec, load_tensors(str(ckpt))[0])
        for method in a.methods.split(","):
            for frac in (float(f) for f in a.fractions.split(",")):
                for ft in {"both": (False, True), "no": (False,), "yes": (True,)}[a.finetune]:
                    t0 = time.perf_counter()
                    pruned = _pruned(target, model, a.seed, method, frac, ft, ds)
                    t_train = time.perf_counter() - t0
                    path = out / f"{model}-{method}-{frac:g}{'-ft' if ft else ''}.safetensors"
                    save_net(pruned, str(path))
                    for r in (float(v) for v in a.radii.split(",")):
                        t1 = time.perf_counter()
                        row: dict[str, Any] = {"model": model, "method": method, "prune_fraction": frac,
                                               "finetuned": ft, "radius": r, "n": a.n_points,
                                               "accuracy_target": _accuracy(target, ds, a.n_points),
                                               "accuracy_pruned": _accuracy(pruned, ds, a.n_points),
                                               "train_seconds": round(t_train, 1)}
                        keys = ("certified_agreement", "empirical_agreement", "refuted", "median_upper",
                                "median_lower", "median_ratio", "max_ratio", "differential_wins")
                        if spec.kind == "fcn":
                            job = CertifyJob(weights=str(ckpt), pruned=str(path), data="mnist", radius=r,
                                             n_points=a.n_points, norm="linf", clip=(0.0, 1.0), arch=spec.to_arch(),
                                             bias=True, n_restarts=a.n_restarts, n_steps=a.n_steps, seed=a.seed,
                                             radii=(r,))  # no radius curve: the table's two radii are its own
                            s = run_certify(job, run_dir=out / "runs" / f"{path.stem}-r{r:g}").summary
                            row.update({k: s[k] for k in keys})
                        else:  # the graph path: both nets as ONNX
                            t_onnx, p_onnx = out / f"{model}-target.onnx", path.with_suffix(".onnx")
                            save_onnx(target, t_onnx)
                            save_onnx(pruned, p_onnx)
                            job = CertifyJob(weights=str(t_onnx), pruned=str(p_onnx), data="mnist", radius=r,
                                             n_points=a.n_points, norm="linf", clip=(0.0, 1.0),
                                             n_restarts=a.n_restarts, n_steps=a.n_steps, seed=a.seed, radii=(r,))
                            s = run_certify(job).summary
                            row.update({k: s[k] for k in keys})
                        row["seconds"] = round(time.perf_counter() - t1, 1)
                        print(json.dumps(row), flush=True)
                        table.append(row)
    (out / "rows.json").write_text(json.dumps(table, indent=1))
    _print_table(table)


def _print_table(table: list[dict[str, Any]]) -> None:
    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.0f} %"

    def g(v: Any) -> str:
        return "–" if v is None else f"{v:.3g}"

    print("| model | method | prune fraction | fine-tuned | ℓ∞ r | acc F / f | certified agreement | empirical "
          "agreement | median certified gap | median found gap | median ratio | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['method']} | {r['prune_fraction']:g} | {'yes' if r['finetuned'] else 'no'} | "
              f"{r['radius']:g} | {pct(r['accuracy_target'])} / {pct(r['accuracy_pruned'])} | "
              f"{pct(r['certified_agreement'])} | {pct(r['empirical_agreement'])} | {g(r['median_upper'])} | "
              f"{g(r.get('median_lower'))} | {g(r.get('median_ratio'))} | {r['seconds']:g} |")


if __name__ == "__main__":
    main()
