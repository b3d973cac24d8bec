"""`probprune certify` on ONNX graph models: the same rows and summary as chains, both bounds valid, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cliharness import run
from probprune.bounds.differential_graph import graph_differential_bound, graph_gap_search
from probprune.bounds.graph import certified_graph_gap
from probprune.config import BallSpec, CertifyJob, ProbPruneError
from probprune.nets.graph import Graph, Node, activation
from probprune.nets.onnx_graph import load_onnx_graph, save_onnx_graph
from probprune.runner.certify_graph import certify_graphs

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--n-restarts", "2", "--n-steps", "15"]


def _residual(seed: int) -> Graph:
    """conv → relu → conv (+ skip) → relu → avgpool → flatten → linear: a residual graph (no chain form)."""
    g = torch.Generator().manual_seed(seed)
    pad = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}

    def t(*shape: int, s: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    nodes = [Node("c1", "conv", ("input",), pad, {"weight": t(3, 1, 3, 3, s=0.5), "bias": t(3, s=0.1)}),
             Node("r1", "act", ("c1",), {"act": activation("relu")}),
             Node("c2", "conv", ("r1",), pad, {"weight": t(3, 3, 3, 3, s=0.3), "bias": t(3, s=0.1)}),
             Node("sum", "add", ("c2", "r1")),
             Node("r2", "act", ("sum",), {"act": activation("relu")}),
             Node("pool", "avgpool", ("r2",), {"dims": 2, "kernel": (2, 2), "stride": (2, 2), "padding": (0, 0),
                                              "count_include_pad": True}),
             Node("flat", "reshape", ("pool",), {"shape": (12,)}),
             Node("fc", "linear", ("flat",), params={"weight": t(4, 12, s=0.5), "bias": t(4, s=0.1)})]
    return Graph(nodes, (1, 4, 4))


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    target = _residual(0)
    params = target.parameters()
    pruned = target.with_parameters({k: params[k] * (params[k].abs() > 0.15) for k in target.prunable()})
    paths = {"t": tmp_path / "t.onnx", "p": tmp_path / "p.onnx", "x": tmp_path / "x.npy", "y": tmp_path / "y.npy"}
    save_onnx_graph(target, paths["t"], dtype=torch.float64)
    save_onnx_graph(pruned, paths["p"], dtype=torch.float64)
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(6, 1, 4, 4))
    np.save(paths["x"], x)
    with torch.no_grad():
        np.save(paths["y"], target(torch.from_numpy(x)).argmax(-1).numpy().astype(np.int64))
    return paths


def test_certify_takes_an_onnx_graph_and_writes_the_chain_rows(files: dict[str, Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                          str(files["x"]), "--labels", str(files["y"]), "--n-points", "6", "--norm", "linf",
                          "--radius", "0.02", "--clip", "0,1", "--json", *FAST], capsys)
    assert code == 0, err
    doc = json.loads(out)
    rows, summary = doc["rows"], doc["summary"]
    assert doc["arch"] == "onnx graph" and summary["model"] == "graph" and len(rows) == 6
    assert summary["accuracy_target"] == 1.0
    target, _ = load_onnx_graph(files["t"])
    pruned, _ = load_onnx_graph(files["p"])
    x = torch.from_numpy(np.load(files["x"]))
    ball = BallSpec(radius=0.02, norm="linf", box=(0.0, 1.0))
    diff = graph_differential_bound(target, pruned, ball, centres=x).value
    for i, r in enumerate(rows):
        assert r["index"] == i and r["lower"] <= r["upper"]
        assert r["upper"] == min(r["upper_differential"], r["upper_layerwise"])
        assert r["upper_differential"] == pytest.approx(float(diff[i]), rel=1e-12)
        # each input's own layerwise radius; the rows' cached norms give the uncached bound bit for bit
        assert r["upper_layerwise"] == certified_graph_gap(target, pruned, radius=r["layerwise_radius"]).value
        assert r["layerwise_radius"] >= float(x[i].reshape(-1).clamp(0.0, 1.0).norm()) and r["upper_from"] == \
            "differential"
        if r["certified_agree"]:
            assert r["empirical_agree"] and r["class_target"] == r["class_pruned"]
    assert {"certified_agreement", "empirical_agreement", "median_ratio", "max_upper"} <= set(summary)


def test_the_graph_rows_cover_a_stronger_search(files: dict[str, Path]) -> None:
    target, _ = load_onnx_graph(files["t"])
    pruned, _ = load_onnx_graph(files["p"])
    x = torch.from_numpy(np.load(files["x"]))
    out = certify_graphs(target, pruned, x, radius=0.3, norm="l2", n_restarts=2, n_steps=10)
    strong = graph_gap_search(target, pruned, BallSpec(radius=0.3), torch.Generator().manual_seed(5), centres=x,
                              n_restarts=10, n_steps=80).value
    for r, s in zip(out.rows, strong.tolist()):
        assert r["upper"] >= s and r["upper"] >= r["lower"]
    same = certify_graphs(target, target, x[:2], radius=0.3, norm="l2", n_restarts=1, n_steps=2)
    assert same.summary["max_upper"] == 0.0


@pytest.mark.parametrize("case,match", [
    ("npy", "expected numbers"), ("labels", "labels="), ("points", "n_points=7"), ("pruned", "pruned="),
    ("clip", "clip="),
])
def test_bad_graph_input_is_one_line(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     case: str, match: str) -> None:
    args = ["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data", str(files["x"]),
            "--n-points", "6", "--norm", "linf", "--radius", "0.02", *FAST]
    if case == "npy":
        np.save(tmp_path / "bad.npy", np.zeros((6, 15)))
        args[args.index("--data") + 1] = str(tmp_path / "bad.npy")
    elif case == "labels":
        np.save(tmp_path / "lab.npy", np.zeros(3, dtype=np.int64))
        args += ["--labels", str(tmp_path / "lab.npy")]
    elif case == "points":
        args[args.index("--n-points") + 1] = "7"
    elif case == "pruned":
        other = _residual(1)
        head = Node("fc", "linear", ("flat",), params={"weight": torch.ones(3, 12, dtype=torch.float64)})
        save_onnx_graph(Graph([*other.nodes[:-1], head], other.input_shape), tmp_path / "o.onnx")
        args[args.index("--pruned") + 1] = str(tmp_path / "o.onnx")
    else:
        args += ["--clip", "0.5,1"]
    code, out, err = run(args, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert match in err, err


def test_an_onnx_conv_chain_is_certified_through_the_graph_bound(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # a conv chain (what the chain reader compiles to a Net): the chain differential bound is FCN only, so
    # certify takes the graph path for it instead of refusing
    from probprune.config import ConvSpec, LawSpec, NetSpec, PruneSpec
    from probprune.masks import prune
    from probprune.nets.onnx import load_onnx, save_onnx
    from probprune.sampling import sample_net

    spec = NetSpec(kind="cnn", input_shape=(1, 8, 8), convs=(ConvSpec(3, 3, pool=2),), widths=(4,), bias=True)
    target = sample_net(spec, LawSpec(), torch.Generator().manual_seed(0), dtype=torch.float64)
    pruned = prune(target, PruneSpec(method="magnitude", scope="global", prune_fraction=0.5),
                   generator=torch.Generator().manual_seed(1)).model
    t, p, xs = tmp_path / "t.onnx", tmp_path / "p.onnx", tmp_path / "x.npy"
    save_onnx(target, t)
    save_onnx(pruned, p)
    assert load_onnx(t).spec.kind == "cnn"
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(4, 1, 8, 8))
    np.save(xs, x)
    code, out, err = run(["certify", "--weights", str(t), "--pruned", str(p), "--data", str(xs), "--n-points", "4",
                          "--norm", "linf", "--radius", "0.05", "--clip", "0,1", "--json", *FAST], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["summary"]["model"] == "graph" and len(doc["rows"]) == 4
    tg, _ = load_onnx_graph(t)
    pg, _ = load_onnx_graph(p)
    diff = graph_differential_bound(tg, pg, BallSpec(radius=0.05, norm="linf", box=(0.0, 1.0)),
                                    centres=torch.from_numpy(x)).value
    for i, r in enumerate(doc["rows"]):
        assert r["lower"] <= r["upper"] <= r["upper_differential"]
        assert r["upper_differential"] == pytest.approx(float(diff[i]), rel=1e-12)


# ------------------------------------------------------------------- --halfwidth, run folders, Ray on graphs


def _job(files: dict[str, Path], **kw: object) -> CertifyJob:
    base: dict[str, object] = dict(weights=str(files["t"]), pruned=str(files["p"]), data=str(files["x"]),
                                   labels=str(files["y"]), n_points=6, norm="linf", radius=0.03, clip=(0.0, 1.0),
                                   n_restarts=2, n_steps=8, batch_size=2)
    base.update(kw)
    return CertifyJob(**base)  # type: ignore[arg-type]


def test_graph_halfwidth_boxes_are_sound_and_equal_widths_are_the_radius(files: dict[str, Path]) -> None:
    target, _ = load_onnx_graph(files["t"])
    pruned, _ = load_onnx_graph(files["p"])
    x = torch.from_numpy(np.load(files["x"]))
    hw = torch.from_numpy(np.random.default_rng(3).uniform(0.0, 0.08, size=x.shape))
    ball = BallSpec(radius=float(hw.max()), norm="linf", box=(0.0, 1.0), centre=tuple(x[0].reshape(-1).tolist()))
    out = certify_graphs(target, pruned, x, norm="linf", clip=(0.0, 1.0), halfwidth=hw, n_restarts=2, n_steps=10)
    strong = graph_gap_search(target, pruned, ball, torch.Generator().manual_seed(9), centres=x, n_restarts=6,
                              n_steps=30, halfwidth=hw)
    flat = x.reshape(6, -1)
    assert bool((strong.x >= flat - hw.reshape(6, -1) - 1e-12).all())  # the search stays in each box
    assert bool((strong.x <= flat + hw.reshape(6, -1) + 1e-12).all())
    for r, s in zip(out.rows, strong.value.tolist()):
        assert r["lower"] <= r["upper"] and s <= r["upper"]
    # a box of equal half-widths r is the l-infinity ball of radius r: the same bound, bit for bit
    same = torch.full_like(x, 0.03)
    by_box = graph_differential_bound(target, pruned, BallSpec(radius=0.03, norm="linf"), centres=x, halfwidth=same)
    by_radius = graph_differential_bound(target, pruned, BallSpec(radius=0.03, norm="linf"), centres=x)
    assert torch.equal(by_box.value, by_radius.value)
    with pytest.raises(ProbPruneError, match="l-infinity"):
        graph_differential_bound(target, pruned, BallSpec(radius=0.03), centres=x, halfwidth=same)


def test_cli_halfwidth_on_a_graph_model(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    hw = np.random.default_rng(1).uniform(0.0, 0.05, size=(3, 1, 4, 4))
    np.save(tmp_path / "h.npy", hw)
    code, out, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                          str(files["x"]), "--n-points", "3", "--norm", "linf", "--halfwidth", str(tmp_path / "h.npy"),
                          "--clip", "0,1", "--json", "--run-dir", str(tmp_path / "run"), "--radii", "0.1", *FAST],
                         capsys)
    assert code == 0, err
    rows = json.loads(out)["rows"]
    page = (tmp_path / "run" / "report.html").read_text()  # the run folder's report, as for chains
    assert "<img " in page
    target, _ = load_onnx_graph(files["t"])
    pruned, _ = load_onnx_graph(files["p"])
    x = torch.from_numpy(np.load(files["x"]))[:3]
    api = certify_graphs(target, pruned, x, norm="linf", clip=(0.0, 1.0), halfwidth=torch.from_numpy(hw),
                         n_restarts=2, n_steps=15)
    for r, a in zip(rows, api.rows):  # the certified side is deterministic: CLI and API agree exactly
        assert (r["upper"], r["upper_differential"], r["upper_layerwise"], r["verdict"] == "certified") == \
            (a["upper"], a["upper_differential"], a["upper_layerwise"], a["verdict"] == "certified")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4, 4)))
    code, out, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                          str(files["x"]), "--n-points", "3", "--norm", "linf", "--halfwidth", str(bad),
                          "--out", str(tmp_path / "o.json"), *FAST], capsys)
    assert code == 2 and err.startswith("error: halfwidth=") and len(err.strip().splitlines()) == 1, err
    assert "[N, 1, 4, 4]" in err and not (tmp_path / "o.json").exists()


class _Killed(Exception):
    pass


def test_a_killed_graph_run_resumes_without_recomputing(files: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import probprune.runner.certify as rc
    import probprune.runner.certify_graph as cg
    from probprune.store.certify import read_certify

    job = _job(files, n_points=4, n_steps=4, radii=(0.06,))
    whole = rc.run_certify(job, run_dir=tmp_path / "whole")
    assert whole.summary["model"] == "graph" and whole.summary["n_new"] == 4 and whole.spec is None
    assert [c["scale"] for c in whole.summary["curve"]] == [1.0, 2.0]

    def kill(done: int, total: int) -> None:
        if done >= 2:
            raise _Killed

    with pytest.raises(_Killed):
        rc.run_certify(job, progress=kill, run_dir=tmp_path / "killed")
    assert len(read_certify(tmp_path / "killed").rows) == 2
    computed: list[int] = []
    real = cg.graph_chunk_rows

    def counting(*a: object, **kw: object) -> object:
        rows = real(*a, **kw)  # type: ignore[arg-type]
        computed.extend(r.index for r in rows)
        return rows

    monkeypatch.setattr(cg, "graph_chunk_rows", counting)
    resumed = rc.run_certify(job, run_dir=tmp_path / "killed")
    assert sorted(computed) == [2, 3] and resumed.summary["n_new"] == 2 and resumed.rows == whole.rows
    assert [q.to_dict() for q in read_certify(tmp_path / "killed").radii] == \
        [q.to_dict() for q in read_certify(tmp_path / "whole").radii]
    assert rc.run_certify(job).rows == whole.rows  # no folder: the same rows
    other = _job(files, n_points=4, n_steps=4, radii=(0.06,), radius=0.05)
    with pytest.raises(ProbPruneError, match="run_dir|config"):
        rc.run_certify(other, run_dir=tmp_path / "whole")


def test_max_prune_of_a_graph_model_is_one_line(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["certify", "--weights", str(files["t"]), "--data", str(files["x"]), "--n-points", "6",
                          "--norm", "linf", "--radius", "0.02", "--solve", "max-prune", *FAST], capsys)
    assert code == 2 and err.startswith("error: weights=") and "max-prune" in err, err
    assert len(err.strip().splitlines()) == 1
