"""ONNX on the command line: ``prune --weights model.onnx --out pruned.onnx``, ``gap`` on ONNX and mixed pairs.

Every model is built here with ``save_onnx`` (no shared files). onnxruntime is the reference for
what a written model computes (those tests are skipped when it is not installed).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cliharness import run
from probprune.config import LawSpec, parse_arch
from probprune.nets.onnx import save_onnx
from probprune.sampling import sample_net

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--n-points", "256", "--n-restarts", "2", "--n-steps", "20"]
ARCH = "fcn:6,16,16,3"
CNN = "cnn:1x8x8,c4k3m2,3"


def _model(path: Path, arch: str = ARCH, activation: str = "relu", bias: bool = True, **kw: Any) -> Path:
    """A sampled network written as ONNX (names and shape from ``kw``)."""
    net = sample_net(parse_arch(arch, activation=activation, bias=bias), LawSpec(), torch.Generator().manual_seed(3))
    save_onnx(net, path, **kw)
    return path


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _session(path: Path) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _io(sess: Any) -> tuple[list[tuple[str, list[Any]]], list[str]]:
    return [(i.name, list(i.shape)) for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]


def _ort_gap(t: Any, p: Any, x: np.ndarray) -> np.ndarray:
    name = t.get_inputs()[0].name
    ft, fp = t.run(None, {name: x})[0], p.run(None, {name: x})[0]
    return np.linalg.norm(fp.astype(np.float64) - ft.astype(np.float64), axis=-1)


def _ball(n: int, shape: tuple[int, ...], radius: float, seed: int = 0) -> np.ndarray:
    """``n`` points in the closed ball of ``radius`` (half on its sphere, half inside), float32."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, int(np.prod(shape))))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= np.where(np.arange(n) % 2 == 0, 1.0, g.uniform(0.2, 1.0, n))[:, None] * radius * (1 - 1e-6)
    return x.reshape(n, *shape).astype(np.float32)


def _in(tmp: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    before = os.getcwd()
    os.chdir(tmp)
    try:
        return run(argv, capsys)
    finally:
        os.chdir(before)


# --------------------------------------------------------------------------- prune: ONNX in, ONNX out


@pytest.mark.parametrize(("arch", "shape"), [(ARCH, ["batch", 1, 2, 3]), (CNN, [1, 1, 8, 8])])
def test_prune_onnx_to_onnx_keeps_names_and_zero_count(arch: str, shape: list[Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path / "m.onnx", arch, input_name="pixels", output_name="logits", input_shape=shape)
    out = tmp_path / "pruned.onnx"
    code, stdout, err = run(["prune", "--weights", str(src), "--prune-fraction", "0.6", "--scope", "global",
                             "--out", str(out), "--json"], capsys)
    assert code == 0 and err == "", err
    doc = json.loads(stdout)
    assert doc["config"]["arch"] == arch and doc["config"]["bias"] is True
    before, after = _initializers(src), _initializers(out)
    assert sorted(before) == sorted(after)
    weights = [k for k in after if k.endswith(".weight")]
    zeros = sum(int((after[k] == 0).sum()) for k in weights)
    assert zeros == doc["stats"]["total"]["pruned"] > 0
    for k in after:  # survivors are the target's weights, unchanged; biases are never pruned
        assert np.array_equal(after[k][after[k] != 0], before[k][after[k] != 0])
        if k.endswith(".bias"):
            assert np.array_equal(after[k], before[k])
    t, p = _session(src), _session(out)
    assert _io(p) == _io(t) == ([("pixels", shape)], ["logits"])
    x = _ball(1 if shape[0] == 1 else 8, tuple(shape[1:]), 3.0)
    assert p.run(None, {"pixels": x})[0].shape == t.run(None, {"pixels": x})[0].shape


def test_prune_onnx_arch_must_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    code, _, err = run(["prune", "--weights", str(src), "--arch", ARCH, "--bias", "--prune-fraction", "0.5",
                        "--out", str(out)], capsys)
    assert code == 0, err
    assert out.exists()
    for extra, frag in ((["--arch", "fcn:6,16,3"], "architecture fcn:6,16,16,3, not fcn:6,16,3"),
                        (["--activation", "tanh"], "activation relu, not tanh"),
                        (["--no-bias"], "bias True, not False")):
        bad = tmp_path / "bad.onnx"
        code, _, err = run(["prune", "--weights", str(src), *extra, "--prune-fraction", "0.5", "--out", str(bad)],
                           capsys)
        assert code == 2 and len(err.splitlines()) == 1 and frag in err, err
        assert not bad.exists()


def test_prune_gap_on_onnx_equals_gap_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    code, stdout, err = run(["prune", "--weights", str(src), "--prune-fraction", "0.5", "--out", str(out), "--gap",
                             "--radius", "2", "--json"], capsys)
    assert code == 0, err
    inline = json.loads(stdout)["sandwich"]
    code, stdout, err = run(["gap", "--weights", str(src), "--pruned", str(out), "--radius", "2", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["sandwich"]["upper"] == inline["upper"]


# --------------------------------------------------------------------------- gap on ONNX, mixed pairs


@pytest.mark.parametrize("arch", [ARCH, CNN])
def test_gap_sandwich_brackets_the_onnxruntime_gap(arch: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path / "m.onnx", arch, activation="tanh")
    out = tmp_path / "p.onnx"
    code, _, err = run(["prune", "--weights", str(src), "--prune-fraction", "0.7", "--out", str(out)], capsys)
    assert code == 0, err
    radius = 1.5
    code, stdout, err = run(["gap", "--weights", str(src), "--pruned", str(out), "--radius", str(radius), "--json",
                             *FAST], capsys)
    assert code == 0 and err == "", err
    sw = json.loads(stdout)["sandwich"]
    t, p = _session(src), _session(out)
    shape = tuple(t.get_inputs()[0].shape[1:])
    found = _ort_gap(t, p, _ball(64, shape, radius))
    assert 0 < sw["lower"] <= sw["upper"]
    assert found.max() <= sw["upper"]  # the certified bound holds for the models onnxruntime runs
    # the search (2 restarts of ascent from 256 points) finds at least what 16 random points show
    assert sw["lower"] >= _ort_gap(t, p, _ball(16, shape, radius, seed=1)).max() * (1 - 1e-6)


def test_mixed_safetensors_onnx_pairs_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.5", "--seed", "4"]
    for suffix in (".onnx", ".safetensors"):
        code, _, err = run([*base, "--save-target", str(tmp_path / f"t{suffix}"), "--out",
                            str(tmp_path / f"p{suffix}")], capsys)
        assert code == 0, err
    uppers, lowers = {}, {}
    for ts in (".onnx", ".safetensors"):
        for ps in (".onnx", ".safetensors"):
            arch = ["--arch", ARCH] if ts == ps == ".safetensors" else []
            code, stdout, err = run(["gap", *arch, "--weights", str(tmp_path / f"t{ts}"), "--pruned",
                                     str(tmp_path / f"p{ps}"), "--json", *FAST], capsys)
            assert code == 0, (ts, ps, err)
            sw = json.loads(stdout)["sandwich"]
            uppers[ts, ps], lowers[ts, ps] = sw["upper"], sw["lower"]
    assert len(set(uppers.values())) == 1 and len(set(lowers.values())) == 1, (uppers, lowers)
    # the sampled target written as ONNX computes what its safetensors twin computes
    t = _session(tmp_path / "t.onnx")
    x = _ball(8, (6,), 2.0)
    from probprune.runner import load_net
    net = load_net(ARCH, str(tmp_path / "t.safetensors"))
    assert np.allclose(t.run(None, {"input": x})[0], net.forward(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_gap_needs_arch_only_without_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.5", "--save-target",
                        str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "p.safetensors")], capsys)
    assert code == 0, err
    code, _, err = run(["gap", "--weights", str(tmp_path / "t.safetensors"), "--pruned",
                        str(tmp_path / "p.safetensors"), *FAST], capsys)
    assert code == 2 and "--arch" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- bad ONNX input

def _bad_fixtures(root: Path) -> dict[str, str]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = {"m": str(_model(root / "m.onnx")), "small": str(_model(root / "small.onnx", "fcn:6,4,3")),
         "cnn": str(_model(root / "cnn.onnx", CNN))}
    data = Path(f["m"]).read_bytes()
    (root / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (root / "empty.onnx").write_bytes(b"")
    (root / "garbage.onnx").write_bytes(b"\xff\xfe not protobuf at all" * 20)
    (root / "dir.onnx").mkdir()
    (root / "model.pt").write_bytes(b"\x80\x04 a pickle")

    def graph_model(name: str, nodes: list[Any], inits: list[Any], in_shape: list[Any],
                    out_shape: list[Any]) -> None:
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        onnx.save_model(m, str(root / name))

    w = numpy_helper.from_array(np.ones((3, 6), np.float32), "w")
    gemm = helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1)
    graph_model("softmax.onnx", [gemm, helper.make_node("Softmax", ["h"], ["y"], name="sm")], [w], ["N", 6], ["N", 3])
    graph_model("dynamic.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], [w],
                ["N", "F"], ["N", 3])
    nan = numpy_helper.from_array(np.full((3, 6), np.nan, np.float32), "w")
    graph_model("nan.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], [nan],
                ["N", 6], ["N", 3])
    for name in ("trunc", "empty", "garbage", "softmax", "dynamic", "nan"):
        f[name] = str(root / f"{name}.onnx")
    f["dir"], f["pt"] = str(root / "dir.onnx"), str(root / "model.pt")
    return f


_P = ["prune", "--prune-fraction", "0.5", "--out", "o.onnx", "--weights"]
_G = ["gap", "--weights", "{m}", "--pruned"]
BAD_CASES: list[tuple[str, list[str], str]] = [
    ("prune-trunc", [*_P, "{trunc}"], r"weights=.*trunc\.onnx.*(broken|truncated|not an ONNX)"),
    ("prune-empty", [*_P, "{empty}"], r"weights=.*empty"),
    ("prune-garbage", [*_P, "{garbage}"], r"weights=.*not an ONNX model"),
    ("prune-dir", [*_P, "{dir}"], r"weights=.*director"),
    ("prune-missing", [*_P, "nope.onnx"], r"weights=.*no such file"),
    ("prune-softmax", [*_P, "{softmax}"], r"weights=.*Softmax"),
    ("prune-dynamic", [*_P, "{dynamic}"], r"weights=.*dynamic"),
    ("prune-nan", [*_P, "{nan}"], r"weights=.*(finite|NaN|nan)"),
    ("prune-pickle", [*_P, "{pt}"], r"weights=.*\.safetensors or \.onnx.*never loaded"),
    ("prune-out-pickle", ["prune", "--weights", "{m}", "--prune-fraction", "0.5", "--out", "o.pth"],
     r"out=.*\.safetensors or \.onnx.*never loaded"),
    ("prune-out-suffix", ["prune", "--weights", "{m}", "--prune-fraction", "0.5", "--out", "o.onx"],
     r"out=.*must end in \.safetensors or \.onnx"),
    ("prune-arch-mismatch", [*_P, "{m}", "--arch", "fcn:6,4,3"], r"weights=.*architecture fcn:6,16,16,3"),
    ("prune-cnn-arch-mismatch", [*_P, "{cnn}", "--arch", "cnn:1x8x8,c4k3,3"], r"architecture cnn:1x8x8,c4k3m2,3"),
    ("prune-activation-bogus", [*_P, "{m}", "--activation", "bogus"], r"activation"),
    ("prune-cert-onnx-in", ["prune", "--weights", "{m}", "--prune-fraction", "0.5", "--out", "o.safetensors",
                            "--certificate", "c.json"], r"out=.*written as \.onnx"),  # a graph certificate
    ("prune-cert-onnx-out", ["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.5", "--out",
                             "o.onnx", "--certificate", "c.json"], r"certificate=.*not supported for ONNX.*out="),
    ("prune-save-target-onnx-weights", [*_P, "{m}", "--save-target", "t.onnx"], r"save_target"),
    ("prune-no-arch-law", ["prune", "--law", "uniform", "--prune-fraction", "0.5", "--out", "o.onnx"], r"--arch"),
    ("prune-json", [*_P, "{trunc}", "--json"], r"weights="),
    ("gap-pruned-trunc", [*_G, "{trunc}"], r"pruned=.*trunc"),
    ("gap-pruned-other-arch", [*_G, "{small}"], r"pruned=.*architecture fcn:6,4,3, not fcn:6,16,16,3"),
    ("gap-pruned-cnn", [*_G, "{cnn}"], r"pruned=.*architecture"),
    ("gap-pruned-pickle", [*_G, "{pt}"], r"pruned=.*never loaded"),
    ("gap-weights-softmax", ["gap", "--weights", "{softmax}", "--pruned", "{m}"], r"weights=.*Softmax"),
    ("gap-arch-mismatch", [*_G, "{m}", "--arch", "fcn:6,16,3"], r"architecture"),
    ("gap-json", [*_G, "{garbage}", "--json"], r"pruned="),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _bad_fixtures(tmp_path_factory.mktemp("onnx_fixtures"))


@pytest.mark.parametrize(("argv", "fragment"), [pytest.param(c[1], c[2], id=c[0]) for c in BAD_CASES])
def test_bad_onnx_input(argv: list[str], fragment: str, bad_files: dict[str, str], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    args = [re.sub(r"\{(\w+)\}", lambda m: bad_files[m.group(1)], a) for a in argv]
    code, out, err = _in(tmp_path, args, capsys)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert re.search(fragment, lines[0]), lines[0]
    if "--json" in args:
        assert out == ""
    assert os.listdir(tmp_path) == [], "files written"
