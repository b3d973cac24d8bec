"""The CLI on ONNX graphs the chain reader refuses: ``prune --weights model.onnx --out pruned.onnx`` and ``gap``.

Every model is built here (a small residual CNN with AveragePool and Pad, which the chain reader refuses);
onnxruntime is the reference for what a written model computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cliharness import run
from probprune.bounds.graph import certified_graph_gap
from probprune.config import ProbPruneError
from probprune.graphmasks import prune_graph
from probprune.nets.onnx import read_onnx
from probprune.nets.onnx_graph import load_onnx_graph

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--n-restarts", "2", "--n-steps", "20"]


def _residual(path: Path, extra: str | None = None, width: int = 3) -> Path:
    """x → Conv → Relu → Conv, + x (residual Add) → Relu → AveragePool → Pad → Flatten → Gemm (→ ``extra`` op)."""
    gen = np.random.default_rng(1)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((gen.standard_normal(shape) * 0.4).astype(np.float32), name)

    n = helper.make_node
    inits = [init("c1.weight", (width, 2, 3, 3)), init("c1.bias", (width,)), init("c2.weight", (2, width, 3, 3)),
             init("fc.weight", (4, 2 * 4 * 4)), init("fc.bias", (4,)),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64), "pads")]
    nodes = [n("Conv", ["x", "c1.weight", "c1.bias"], ["h1"], pads=[1, 1, 1, 1], name="c1"),
             n("Relu", ["h1"], ["r1"], name="r1"),
             n("Conv", ["r1", "c2.weight"], ["h2"], pads=[1, 1, 1, 1], name="c2"),
             n("Add", ["h2", "x"], ["s"], name="skip"), n("Relu", ["s"], ["r2"], name="r2"),
             n("AveragePool", ["r2"], ["a"], kernel_shape=[2, 2], strides=[2, 2], name="avg"),
             n("Pad", ["a", "pads"], ["p"], mode="constant", name="pad"),
             n("Flatten", ["p"], ["f"], axis=1, name="flat"),
             n("Gemm", ["f", "fc.weight", "fc.bias"], ["y" if extra is None else "z"], transB=1, name="fc")]
    if extra is not None:
        nodes.append(n(extra, ["z"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "residual",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _chain(path: Path) -> Path:
    """Gemm → Relu → Gemm: a chain (the chain reader's)."""
    gen = np.random.default_rng(2)
    inits = [numpy_helper.from_array(gen.standard_normal(s).astype(np.float32), nm)
             for nm, s in (("l1.weight", (5, 4)), ("l2.weight", (3, 5)))]
    n = helper.make_node
    nodes = [n("Gemm", ["x", "l1.weight"], ["h"], transB=1, name="l1"), n("Relu", ["h"], ["r"], name="r"),
             n("Gemm", ["r", "l2.weight"], ["y"], transB=1, name="l2")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _json(code: int, out: str, err: str) -> dict:
    assert code == 0, err
    doc: dict = json.loads(out)
    return doc


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A residual model (read by the graph path only) and where its pruned copy goes."""
    tmp = tmp_path_factory.mktemp("graph")
    model, out = _residual(tmp / "model.onnx"), tmp / "pruned.onnx"
    with pytest.raises(ProbPruneError):  # the chain reader refuses it, so this is the graph path
        read_onnx(model)
    return model, out


def test_prune_writes_a_graph_onnxruntime_runs(pair: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, out = pair
    doc = _json(*run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--scope", "global",
                      "--out", str(out), "--json"], capsys))
    target, info = load_onnx_graph(model)
    expect, masks = prune_graph(target, 0.5, "magnitude", "global")
    total = sum(m.numel() for m in masks.values())
    assert doc["stats"]["total"]["pruned"] == round(0.5 * total) == sum(int((~m).sum()) for m in masks.values())
    assert {r["name"] for r in doc["stats"]["layers"]} == set(expect.prunable())
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [info.input_name]
    assert [o.name for o in sess.get_outputs()] == [info.output_name]
    x = np.random.default_rng(0).standard_normal((16, 2, 6, 6)).astype(np.float32)
    import torch

    want = expect(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, atol=1e-5, rtol=0)
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in onnx.load(str(out)).graph.initializer
                if t.name.endswith(".weight"))
    assert zeros == doc["stats"]["total"]["pruned"]


def test_gap_on_the_pair_is_the_certified_graph_gap(pair: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model, out = pair
    if not out.exists():
        _json(*run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--scope", "global",
                    "--out", str(out), "--json"], capsys))
    doc = _json(*run(["gap", "--weights", str(model), "--pruned", str(out), "--radius", "1", "--json", *FAST],
                     capsys))
    sw = doc["sandwich"]
    assert 0 < sw["lower"] <= sw["upper"]
    direct = certified_graph_gap(load_onnx_graph(model)[0], load_onnx_graph(out)[0], radius=1.0)
    assert sw["upper"] == direct.value
    assert any("float64" in a for a in sw["bound"]["assumptions"]) and "float64" in sw["notes"][0]
    # prune --gap gives the same sandwich as gap on the written file (its pruned graph is the file's)
    again = _json(*run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--scope", "global",
                        "--gap", "--radius", "1", "--json"], capsys))
    assert again["sandwich"]["upper"] == sw["upper"]


def test_random_masks_follow_the_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _residual(tmp_path / "model.onnx")
    docs = [_json(*run(["prune", "--weights", str(model), "--method", "random", "--prune-fraction", "0.3",
                        "--seed", str(s), "--out", str(tmp_path / f"p{i}.onnx"), "--json"], capsys))
            for i, s in enumerate((4, 4, 5))]
    w = [{t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / f"p{i}.onnx")).graph.initializer}
         for i in range(3)]
    assert all(np.array_equal(w[0][k], w[1][k]) for k in w[0])
    assert not all(np.array_equal(w[0][k], w[2][k]) for k in w[0])
    assert docs[0]["stats"]["layers"][0]["pruned"] == round(0.3 * docs[0]["stats"]["layers"][0]["size"])


def test_chain_models_keep_the_chain_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _chain(tmp_path / "chain.onnx")
    doc = _json(*run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--gap", "--json"], capsys))
    assert "exact_norms" in doc["sandwich"] and "model" not in doc["sandwich"]
    assert doc["config"]["arch"] == "fcn:4,5,3"


def _refused(argv: list[str], fragment: str, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(tmp.iterdir())
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert set(tmp.iterdir()) == before  # nothing written


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _residual(tmp_path / "model.onnx")
    other = _residual(tmp_path / "wider.onnx", width=5)
    out, cert = str(tmp_path / "p.onnx"), str(tmp_path / "c.json")
    _refused(["gap", "--weights", str(model), "--pruned", str(other), *FAST], "differ", tmp_path, capsys)
    (tmp_path / "p.safetensors").write_bytes(b"")
    _refused(["gap", "--weights", str(model), "--pruned", str(tmp_path / "p.safetensors")],
             "give the pruned model as .onnx", tmp_path, capsys)
    _refused(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--certificate", cert],
             "give --out pruned.onnx too", tmp_path, capsys)  # a graph certificate states the pruned file's digest
    _refused(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--out", out, "--certificate", cert,
              "--delta", "0.1"], "delta=0.1", tmp_path, capsys)
    _refused(["prune", "--weights", str(model), "--threshold", "0.1", "--out", out], "--threshold", tmp_path,
             capsys)
    _refused(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--out", str(tmp_path / "q.safetensors")],
             "out=", tmp_path, capsys)
    _refused(["gap", "--weights", str(_chain(tmp_path / "chain.onnx")), "--pruned", str(model), *FAST],
             "is a graph", tmp_path, capsys)  # a graph is no pruned twin of a chain
    bad = _residual(tmp_path / "softmax.onnx", extra="Softmax")
    _refused(["prune", "--weights", str(bad), "--prune-fraction", "0.5", "--out", out], "node 'head' (Softmax)",
             tmp_path, capsys)


# ---------------------------------------------------------------- --config / --set on the graph path

def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_prune_settings_from_flags_file_and_set_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The graph path resolves the same PruneJob as the chain path: flags = --config file = --set."""
    model = _residual(tmp_path / "model.onnx")
    outs = [tmp_path / f"p{i}.onnx" for i in range(3)]
    by_flags = _json(*run(["prune", "--weights", str(model), "--method", "random", "--scope", "global",
                           "--prune-fraction", "0.4", "--seed", "7", "--out", str(outs[0]), "--json"], capsys))
    cfg = tmp_path / "prune.toml"
    cfg.write_text(f'weights = "{model}"\nseed = 7\nout = "{outs[1]}"\n\n'
                   '[prune]\nmethod = "random"\nscope = "global"\nprune_fraction = 0.4\n')
    by_file = _json(*run(["prune", "--config", str(cfg), "--json"], capsys))
    by_set = _json(*run(["prune", "--weights", str(model), "--prune-fraction", "0.9",
                         "--set", "prune.prune_fraction=0.4", "--set", "prune.method=random",
                         "--set", "prune.scope=global", "--set", "seed=7",
                         "--set", f"out={outs[2]}", "--json"], capsys))
    for doc, out in zip((by_flags, by_file, by_set), outs):
        assert doc["config"] == by_flags["config"] and doc["stats"] == by_flags["stats"]
        assert doc["out"] == str(out) and out.is_file()
    assert by_flags["config"]["seed"] == 7 and by_flags["config"]["prune"]["method"] == "random"
    assert by_flags["stats"]["total"]["pruned"] > 0
    w = [_initializers(out) for out in outs]
    assert all(w[0].keys() == x.keys() and all(np.array_equal(w[0][k], x[k]) for k in w[0]) for x in w[1:])
    other = _json(*run(["prune", "--config", str(cfg), "--set", "seed=8", "--set", f"out={tmp_path / 'q.onnx'}",
                        "--json"], capsys))  # --set wins over the file: another seed, other random masks
    assert other["config"]["seed"] == 8
    assert not all(np.array_equal(w[0][k], v) for k, v in _initializers(tmp_path / "q.onnx").items())


def test_gap_settings_from_flags_file_and_set_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, pruned = _residual(tmp_path / "model.onnx"), tmp_path / "pruned.onnx"
    _json(*run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--out", str(pruned), "--json"],
               capsys))
    by_flags = _json(*run(["gap", "--weights", str(model), "--pruned", str(pruned), "--radius", "0.5",
                           "--n-restarts", "2", "--n-steps", "15", "--seed", "3", "--json"], capsys))
    cfg = tmp_path / "gap.toml"
    cfg.write_text(f'weights = "{model}"\npruned = "{pruned}"\nseed = 3\n\n'
                   '[gap]\nradius = 0.5\nn_restarts = 2\nn_steps = 15\n')
    by_file = _json(*run(["gap", "--config", str(cfg), "--json"], capsys))
    by_set = _json(*run(["gap", "--weights", str(model), "--pruned", str(pruned), "--set", "gap.radius=0.5",
                         "--set", "gap.n_restarts=2", "--set", "gap.n_steps=15", "--set", "seed=3", "--json"],
                        capsys))
    assert by_flags["config"]["gap"] == {"radius": 0.5, "n_restarts": 2, "n_steps": 15}
    # graph_search_budget's 4·R·T evaluations + the float64 value at the witness
    assert by_flags["sandwich"]["bound"]["radius"] == 0.5 and by_flags["sandwich"]["n_evals"] == 4 * 2 * 15 + 1
    assert by_file == by_flags and by_set == by_flags
    wider = _json(*run(["gap", "--config", str(cfg), "--set", "gap.radius=2", "--json"], capsys))
    assert wider["sandwich"]["bound"]["radius"] == 2.0 and wider["sandwich"]["upper"] > by_flags["sandwich"]["upper"]


def test_graph_path_refuses_settings_it_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Settings that do not apply to a graph are refused in one line whether given as flags, in the file or by
    --set; nothing is written."""
    model = _residual(tmp_path / "model.onnx")
    out = str(tmp_path / "p.onnx")
    base = ["prune", "--weights", str(model), "--prune-fraction", "0.5", "--out", out]
    for name, text, fragment in (
            ("arch.toml", '[net]\narch = "fcn:72,4"\n', "net="),
            ("law.toml", '[law]\nscale = 2.0\n', "law="),
            ("dev.toml", 'device = "cuda"\n', "device="),
            ("out.toml", f'out = "{tmp_path / "p.safetensors"}"\n', "out=")):
        (tmp_path / name).write_text(text)
        _refused([*base[:-2], "--config", str(tmp_path / name)], fragment, tmp_path, capsys)
    _refused([*base, "--set", "net.arch=fcn:72,4"], "net.arch='fcn:72,4' (--set)", tmp_path, capsys)
    _refused([*base, "--set", "law.scale=2"], "law.scale='2' (--set)", tmp_path, capsys)
    _refused([*base, "--set", f"weights={tmp_path / 'other.onnx'}"], "the ONNX graph model read is", tmp_path,
             capsys)
    _refused([*base, "--set", "prune.threshold=0.1", "--set", "prune.prune_fraction=null"], "--threshold", tmp_path,
             capsys)
    pruned = tmp_path / "pruned.onnx"
    _json(*run([*base[:-1], str(pruned), "--json"], capsys))
    gap = ["gap", "--weights", str(model), "--pruned", str(pruned), *FAST]
    (tmp_path / "norm.toml").write_text('norm_method = "svd"\n')
    _refused([*gap, "--config", str(tmp_path / "norm.toml")], "norm_method=", tmp_path, capsys)
    _refused([*gap, "--set", "norm_method=svd"], "norm_method='svd' (--set)", tmp_path, capsys)
    _refused([*gap, "--set", "device=cuda"], "device=", tmp_path, capsys)


def test_certificate_with_settings_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--certificate on the graph path takes --out (and the rest) from --config, as from flags."""
    model = _residual(tmp_path / "model.onnx")
    cfg = tmp_path / "prune.toml"
    cfg.write_text(f'weights = "{model}"\nout = "{tmp_path / "p1.onnx"}"\n\n[prune]\nscope = "global"\n'
                   'prune_fraction = 0.5\n')
    by_file = _json(*run(["prune", "--config", str(cfg), "--certificate", str(tmp_path / "c1.json"), "--json"],
                         capsys))
    by_flags = _json(*run(["prune", "--weights", str(model), "--scope", "global", "--prune-fraction", "0.5",
                           "--out", str(tmp_path / "p2.onnx"), "--certificate", str(tmp_path / "c2.json"), "--json"],
                          capsys))
    assert by_file["stats"] == by_flags["stats"] and by_file["out"] == str(tmp_path / "p1.onnx")
    assert by_file["certificate"]["gap"] == by_flags["certificate"]["gap"] > 0
    assert (tmp_path / "c1.json").is_file() and (tmp_path / "p1.onnx").is_file()
