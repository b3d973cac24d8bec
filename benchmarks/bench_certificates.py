"""Graph and local certificates on the published VNN-COMP 2021 networks: time to make and to check each.

For each ONNX model in ``../shared/models/vnncomp2021`` (or ``--models DIR``): ``prune --weights M.onnx
--prune-fraction 0.5 --scope global --out P.onnx --certificate C.json`` (a graph certificate: certified_graph_gap
at radius 1 and a witness), then ``certificate check``; for the MNIST MLP also ``certify --data mnist --n-points N
--norm linf --radius 0.01 --clip 0,1 --certificate L.json`` (local balls) and its check. Prints one Markdown table
(seconds wall-clock, the bounds stated). Not a test: the models are not part of the repository.

    python benchmarks/bench_certificates.py [--models DIR] [--n-points 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from probprune.cli import main


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    try:
        main(args)
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"probprune {' '.join(args)} exited with {e.code}") from None
    return time.perf_counter() - t0


def _graph_row(model: Path, d: Path) -> str:
    pruned, cert = d / f"{model.stem}-pruned.onnx", d / f"{model.stem}.json"
    t_make = _run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--scope", "global",
                   "--out", str(pruned), "--certificate", str(cert)])
    t_check = _run(["certificate", "check", str(cert), "--weights", str(model), "--pruned", str(pruned)])
    doc = json.loads(cert.read_text())
    g = doc["gap"]
    return (f"| {model.name} | graph, {doc['graph']['n_nodes']} nodes, {doc['total']['size']} weights | "
            f"r = 1 (ℓ2, around 0) | {g['lower']:.4g} | {g['upper']:.4g} | {t_make:.1f} | {t_check:.1f} |")


def _local_row(model: Path, d: Path, n: int) -> str:
    pruned, cert = d / f"{model.stem}-pruned.onnx", d / f"{model.stem}-local.json"
    t_make = _run(["certify", "--weights", str(model), "--pruned", str(pruned), "--data", "mnist", "--n-points",
                   str(n), "--norm", "linf", "--radius", "0.01", "--clip", "0,1", "--certificate", str(cert)])
    t_check = _run(["certificate", "check", str(cert), "--weights", str(model), "--pruned", str(pruned)])
    balls = json.loads(cert.read_text())["local"]
    agree = sum(bool(b["certified_agree"]) for b in balls)
    ups = sorted(b["upper"] for b in balls)
    los = sorted(b["lower"] for b in balls)
    return (f"| {model.name} | local, {n} MNIST test images, {agree}/{n} certified to agree | ℓ∞ 0.01 ∩ [0, 1] | "
            f"median {los[n // 2]:.4g} | median {ups[n // 2]:.4g} | {t_make:.1f} | {t_check:.1f} |")


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "models" /
                                            "vnncomp2021"))
    ap.add_argument("--n-points", type=int, default=10)
    a = ap.parse_args()
    models = sorted(Path(a.models).glob("*.onnx"))
    rows = ["| model | certificate | ball | lower | certified upper | make s | check s |",
            "|---|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for m in models:
            rows.append(_graph_row(m, d))
            if m.name.startswith("mnist-net"):
                rows.append(_local_row(m, d, a.n_points))
    print("\n".join(rows))


if __name__ == "__main__":
    main_()
