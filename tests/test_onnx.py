"""ONNX in and out (nets/onnx.py): exact or refused; onnxruntime is the reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx  # a dependency of probprune
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import probprune
from probprune.config import ConvSpec, NetSpec, ProbPruneError
from probprune.nets import Net
from probprune.nets import onnx as ponnx
from probprune.nets.onnx import OnnxInfo, load_onnx, read_onnx, save_onnx

try:  # the reference runtime (the dev extra); tests that need it skip without it, the others still run
    import onnxruntime as ort
except ImportError:  # pragma: no cover - the dev extra installs it
    ort = None
HAVE_ORT = ort is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"


# ---------------------------------------------------------------------- helpers


def _rand_net(spec: NetSpec, seed: int = 0) -> Net:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=gen) / max(1.0, float(np.sqrt(np.prod(s[1:])))) for s in spec.weight_shapes()]
    bs = [torch.randn(s[0], generator=gen) * 0.1 for s in spec.weight_shapes()] if spec.bias else None
    return Net.from_weights(spec, ws, bs)


def _ort(path: Path | bytes, x: np.ndarray, name: str | None = None) -> np.ndarray:
    if ort is None:  # pragma: no cover - the dev extra installs it
        pytest.skip("onnxruntime not installed")
    sess = ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {name or sess.get_inputs()[0].name: x})[0])


def _inputs(shape: tuple[int, ...], n: int = 64, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, *shape)) * 2.0).astype(np.float32)


def _t(name: str, arr: np.ndarray) -> Any:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _write(tmp_path: Path, nodes: list[Any], inits: list[Any], in_shape: list[Any], opset: int = 13,
           out_shape: list[Any] | None = None, name: str = "m.onnx", in_name: str = "x",
           out_name: str = "y") -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape or ["ob", "od"])],
                              inits)
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=max(4, helper.find_min_ir_version_for(ops)))
    onnx.checker.check_model(model)
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def _mat(seed: int, *shape: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)


def _agree(path: Path, net: Net, x: np.ndarray, rtol: float = 1e-5) -> None:
    want = _ort(path, x).reshape(x.shape[0], -1)
    shape = (net.spec.input_dim,) if net.spec.kind == "fcn" else net.spec.input_shape
    got = net(torch.from_numpy(x).reshape(x.shape[0], *shape)).detach().numpy()  # type: ignore[misc]
    scale = max(1.0, float(np.abs(want).max()))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * scale


# ---------------------------------------------------------------------- Net → save_onnx → onnxruntime


@needs_ort
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("bias", [False, True])
def test_fcn_round_trip_through_onnxruntime(tmp_path: Path, act: str, bias: bool) -> None:
    slope = 0.2 if act == "leaky_relu" else 0.01
    spec = NetSpec(widths=(7, 9, 6, 3), activation=act, negative_slope=slope, bias=bias)  # type: ignore[arg-type]
    net = _rand_net(spec)
    p = save_onnx(net, tmp_path / "n.onnx")
    x = _inputs((7,))
    want = net(torch.from_numpy(x)).detach().numpy()
    got = _ort(p, x, "input")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["output"]
    back, info = read_onnx(p)
    # ONNX stores the slope as a float32: it comes back as that float32, exactly (0.2 → 0.2000000029…)
    kept = float(np.float32(slope)) if act == "leaky_relu" else 0.01
    assert back.spec == dataclasses.replace(net.spec, negative_slope=kept)
    for a, b in zip(back.state_dict().items(), net.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])  # no folding: the weights come back bit for bit
    assert info.input_shape == ("N", 7) and info.onnxruntime_checked == HAVE_ORT


def test_cnn_with_pools_round_trip_through_onnxruntime(tmp_path: Path) -> None:
    spec = NetSpec(kind="cnn", input_shape=(2, 12, 12), widths=(10, 4), bias=True,
                   convs=(ConvSpec(5, 3, 1, None, pool=2), ConvSpec(4, 3, 2, 0, pool=1), ConvSpec(3, 1, 1, 0, pool=2)))
    net = _rand_net(spec, seed=3)
    p = save_onnx(net, tmp_path / "c.onnx", input_name="img", output_name="logits")
    x = _inputs((2, 12, 12))
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_ort(p, x, "img"), want, rtol=1e-5, atol=1e-6)
    back, info = read_onnx(p)
    assert back.spec == spec and (info.input_name, info.output_name) == ("img", "logits")
    assert all(torch.equal(a, b) for a, b in zip(back.weights, net.weights))


def test_save_onnx_is_deterministic_and_atomic(tmp_path: Path) -> None:
    net = _rand_net(NetSpec(widths=(5, 8, 2), bias=True))
    a = save_onnx(net, tmp_path / "a.onnx").read_bytes()
    b = save_onnx(_rand_net(NetSpec(widths=(5, 8, 2), bias=True)), tmp_path / "b.onnx").read_bytes()
    assert a == b
    other = save_onnx(_rand_net(NetSpec(widths=(5, 8, 2), bias=True), seed=9), tmp_path / "a.onnx").read_bytes()
    assert other != a  # the file was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]  # no temp file left behind
    with pytest.raises(ProbPruneError, match="does not exist"):
        save_onnx(net, tmp_path / "nope" / "x.onnx")
    with pytest.raises(ProbPruneError, match="is a directory"):
        save_onnx(net, tmp_path)


@needs_ort
def test_save_onnx_reproduces_the_input_shape(tmp_path: Path) -> None:
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1, name="flat"),
             helper.make_node("Gemm", ["f", "w", "b"], ["h"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc1")]
    inits = [_t("w", _mat(0, 6, 12)), _t("b", _mat(1, 6)), _t("w2", _mat(2, 3, 6)), _t("b2", _mat(3, 3))]
    p = _write(tmp_path, nodes, inits, [1, 12, 1], opset=9, out_shape=[1, 3])
    net, info = read_onnx(p)
    assert info == OnnxInfo("x", "y", (1, 12, 1), (1, 3), 9, HAVE_ORT)
    q = save_onnx(net, tmp_path / "out.onnx", **info.save_kwargs())
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [("x", [1, 12, 1])]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("y", [1, 3])]
    for i in range(5):
        x = _inputs((12, 1), n=1, seed=i)
        np.testing.assert_allclose(_ort(q, x), _ort(p, x), rtol=0, atol=0)


def test_save_onnx_refuses_bad_arguments(tmp_path: Path) -> None:
    net = _rand_net(NetSpec(widths=(4, 3, 2)))
    from probprune.nets import stack

    with pytest.raises(ProbPruneError, match="trial dim"):
        save_onnx(stack([net, net]), tmp_path / "e.onnx")
    with pytest.raises(ProbPruneError, match="opset=8"):
        save_onnx(net, tmp_path / "e.onnx", opset=8)
    with pytest.raises(ProbPruneError, match="input_shape"):
        save_onnx(net, tmp_path / "e.onnx", input_shape=[1, 5])
    with pytest.raises(ProbPruneError, match="input_name"):
        save_onnx(net, tmp_path / "e.onnx", input_name="")
    bad = net.with_weights([net.weights[0].clone().fill_(float("nan")), net.weights[1]])
    with pytest.raises(ProbPruneError, match="non-finite"):
        save_onnx(bad, tmp_path / "e.onnx")
    assert not list(tmp_path.iterdir())  # nothing written


def test_package_exports() -> None:
    assert probprune.load_onnx is load_onnx and probprune.save_onnx is save_onnx


# ---------------------------------------------------------------------- models built with the onnx helper API


@pytest.mark.parametrize("opset", [9, 13, 17])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_model_loads_and_equals_onnxruntime(tmp_path: Path, opset: int, trans_b: int) -> None:
    w0, w1 = _mat(0, 8, 5), _mat(1, 3, 8)
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=trans_b, name="fc0"),
             helper.make_node("Tanh", ["h"], ["a"], name="act"),
             helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=trans_b, alpha=0.5, beta=2.0, name="fc1")]
    inits = [_t("w0", w0 if trans_b else w0.T), _t("b0", _mat(2, 8)), _t("w1", w1 if trans_b else w1.T),
             _t("b1", _mat(3, 1, 3))]
    p = _write(tmp_path, nodes, inits, ["batch", 5], opset=opset)
    net, info = read_onnx(p)
    assert net.spec.to_arch() == "fcn:5,8,3" and net.spec.activation == "tanh" and net.spec.bias
    assert info.input_shape == ("batch", 5) and info.opset == opset and info.onnxruntime_checked == HAVE_ORT
    _agree(p, net, _inputs((5,)))


def test_matmul_add_model_loads(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m"], name="mm0"),
             helper.make_node("Add", ["bias0", "m"], ["h"], name="add0"),  # constant first: also a bias
             helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.1, name="act"),
             helper.make_node("MatMul", ["a", "w1"], ["y"], name="mm1")]  # no bias: a zero bias is added
    inits = [_t("w0", _mat(0, 6, 9)), _t("bias0", _mat(1, 9)), _t("w1", _mat(2, 9, 4))]
    p = _write(tmp_path, nodes, inits, [None, 6])
    net = load_onnx(p)
    assert net.spec.activation == "leaky_relu" and net.spec.negative_slope == float(np.float32(0.1))
    assert torch.equal(net.weights[0], torch.from_numpy(_mat(0, 6, 9).T.copy()))
    assert torch.count_nonzero(net.biases[1]) == 0  # type: ignore[arg-type]
    _agree(p, net, _inputs((6,)))


def test_batchnorm_is_folded_into_gemm_and_conv(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)

    def bn(name: str, c: int) -> list[Any]:
        return [_t(f"{name}_s", rng.uniform(0.5, 2, c).astype(np.float32)),
                _t(f"{name}_b", rng.standard_normal(c).astype(np.float32)),
                _t(f"{name}_m", rng.standard_normal(c).astype(np.float32)),
                _t(f"{name}_v", rng.uniform(0.1, 3, c).astype(np.float32))]

    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n"], epsilon=1e-3,
                              name="bn1"),
             helper.make_node("Relu", ["n"], ["r"], name="relu1"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flat"),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1, name="fc0"),
             helper.make_node("BatchNormalization", ["g", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["gn"], name="bn2"),
             helper.make_node("Relu", ["gn"], ["gr"], name="relu2"),
             helper.make_node("Dropout", ["gr"], ["d"], name="drop"),
             helper.make_node("Gemm", ["d", "ow", "ob"], ["y"], transB=1, name="out")]
    inits = [_t("cw", _mat(0, 4, 2, 3, 3)), *bn("bn1", 4), _t("gw", _mat(1, 7, 4 * 3 * 3)), _t("gb", _mat(2, 7)),
             *bn("bn2", 7), _t("ow", _mat(3, 2, 7)), _t("ob", _mat(4, 2))]
    p = _write(tmp_path, nodes, inits, ["N", 2, 6, 6])
    net = load_onnx(p)
    assert net.spec.kind == "cnn" and net.spec.convs[0].pool == 2 and net.spec.bias
    _agree(p, net, _inputs((2, 6, 6)))


@pytest.mark.parametrize("shape_const", [[-1, 12], [0, -1], [1, 12]])
def test_reshape_and_constant_nodes(tmp_path: Path, shape_const: list[int]) -> None:
    nodes = [helper.make_node("Constant", [], ["s"], value=_t("sv", np.array(shape_const, dtype=np.int64)), name="k"),
             helper.make_node("Reshape", ["x", "s"], ["f"], name="reshape"),
             helper.make_node("Identity", ["f"], ["f2"], name="id"),
             helper.make_node("Gemm", ["f2", "w", "b"], ["h"], transB=1, name="fc0"),
             helper.make_node("Sigmoid", ["h"], ["a"], name="sig"),
             helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1, name="fc1")]
    inits = [_t("w", _mat(0, 5, 12)), _t("b", _mat(1, 5)), _t("w2", _mat(2, 2, 5))]
    p = _write(tmp_path, nodes, inits, [1, 3, 4, 1])
    net = load_onnx(p)
    assert net.spec.to_arch() == "fcn:12,5,2" and net.spec.activation == "sigmoid"
    _agree(p, net, _inputs((3, 4, 1), n=1))


def test_reshape_that_fixes_a_dynamic_batch_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Reshape", ["x", "s"], ["f"], name="reshape"),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc0")]
    p = _write(tmp_path, nodes, [_t("s", np.array([1, 12], dtype=np.int64)), _t("w", _mat(0, 5, 12))],
               ["N", 3, 4])
    with pytest.raises(ProbPruneError, match=r"node 'reshape' \(Reshape\).*does not keep the batch dim first"):
        load_onnx(p)


# ---------------------------------------------------------------------- refusals


def _fcn_nodes(extra: list[Any], tail: str = "a") -> tuple[list[Any], list[Any]]:
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h"], ["a"], name="relu0"), *extra]
    return nodes, [_t("w0", _mat(0, 4, 4)), _t("b0", _mat(1, 4)), _t("w1", _mat(2, 4, 4)), _t("b1", _mat(3, 4))]


@pytest.mark.parametrize("op,attrs,opset", [("Softmax", {"axis": 1}, 13), ("LayerNormalization", {}, 17)])
def test_unsupported_op_is_refused_by_name(tmp_path: Path, op: str, attrs: dict[str, Any], opset: int) -> None:
    ins = ["g"] if op == "Softmax" else ["g", "ln_s", "ln_b"]
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node(op, ins, ["y"], name="bad", **attrs)])
    inits += [_t("ln_s", np.ones(4, np.float32)), _t("ln_b", np.zeros(4, np.float32))] if op != "Softmax" else []
    p = _write(tmp_path, nodes, inits, ["N", 4], opset=opset)
    with pytest.raises(ProbPruneError, match=rf"node 'bad' \({op}\), node 4 of 4.*op {op} is not supported"):
        load_onnx(p)


def test_residual_add_of_two_activations_is_refused(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("Relu", ["g"], ["r"], name="relu1"),
                               helper.make_node("Add", ["r", "a"], ["s"], name="residual"),
                               helper.make_node("Gemm", ["s", "w1"], ["y"], transB=1, name="fc2")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError, match=r"node 'residual' \(Add\): reads 2 tensors .*the graph branches "
                                             r"\(a residual connection"):
        load_onnx(p)


def test_add_of_two_computed_tensors_without_fork_is_refused(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Add", ["a", "a"], ["s"], name="double"),
                               helper.make_node("Gemm", ["s", "w1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError, match=r"node 'double' \(Add\): reads 2 tensors"):
        load_onnx(p)


def test_two_gemms_in_a_row_with_an_activation_elsewhere_is_refused(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("Gemm", ["g", "w1", "b1"], ["y"], transB=1, name="fc2")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError, match=r"node 'fc1' \(Gemm\): has no activation after it while 'relu0' "
                                             r"applies one"):
        load_onnx(p)


def test_non_chain_graphs_are_refused(tmp_path: Path) -> None:
    # a dangling node reading the input: two readers of the input
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=1, name="fc1"),
                               helper.make_node("Relu", ["x"], ["unused"], name="stray")])
    p = _write(tmp_path, nodes, inits, ["N", 4], name="a.onnx")
    with pytest.raises(ProbPruneError, match="graph branches"):
        load_onnx(p)
    # a node off the chain (reads a constant only) and a chain that never reaches the output
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("Relu", ["b1"], ["y"], name="offchain")])
    p = _write(tmp_path, nodes, inits, ["N", 4], name="b.onnx")
    with pytest.raises(ProbPruneError, match=r"node 'offchain' \(Relu\): input 0 \('b1'\) is not a tensor computed "
                                             r"from the model input"):
        load_onnx(p)
    # the output read again by a later node
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=1, name="fc1"),
                               helper.make_node("Relu", ["y"], ["z"], name="after")])
    p = _write(tmp_path, nodes, inits, ["N", 4], name="c.onnx")
    with pytest.raises(ProbPruneError, match=r"output 'y': is not the last tensor computed from the input "
                                             r"\(node 'after' \(Relu\) comes after it\)"):
        load_onnx(p)


def test_activation_after_the_output_is_refused(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("Relu", ["g"], ["y"], name="relu_out")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError, match=r"node 'relu_out' \(Relu\): is an activation after the output layer"):
        load_onnx(p)


@pytest.mark.parametrize("case,pattern", [
    ("conv_group", r"node 'conv' \(Conv\).*groups=2"),
    ("conv_dilation", r"node 'conv' \(Conv\).*dilation=\(2, 2\)"),
    ("overlapping_pool", r"node 'pool' \(MaxPool\).*stride = kernel"),
    ("bn_after_relu", r"node 'bn' \(BatchNormalization\).*only right after a linear/conv node"),
    ("mixed_acts", r"mixed activations"),
    ("flatten_axis", r"node 'flat' \(Flatten\): axis=2"),
    ("leaky_slope", r"node 'act' \(LeakyRelu\): leaky_relu slope 2.0 is outside \[0, 1\]"),
    ("nan_weight", r"node 'fc0' \(Gemm\): its weight contains non-finite"),
    ("matmul_const_first", r"node 'fc0' \(MatMul\): B \('x'\) must be a constant"),
])
def test_structural_refusals(tmp_path: Path, case: str, pattern: str) -> None:
    mk = helper.make_node
    conv_w = _mat(0, 2, 1 if case == "conv_group" else 2, 3, 3)
    if case in ("conv_group", "conv_dilation", "overlapping_pool"):
        conv_attrs: dict[str, Any] = {"group": 2} if case == "conv_group" else (
            {"dilations": [2, 2]} if case == "conv_dilation" else {})
        pool_attrs = {"kernel_shape": [3, 3], "strides": [2, 2]} if case == "overlapping_pool" else {
            "kernel_shape": [2, 2], "strides": [2, 2]}
        nodes = [mk("Conv", ["x", "cw"], ["c"], name="conv", **conv_attrs), mk("Relu", ["c"], ["r"], name="relu"),
                 mk("MaxPool", ["r"], ["p"], name="pool", **pool_attrs), mk("Flatten", ["p"], ["f"], name="flat"),
                 mk("Gemm", ["f", "gw"], ["y"], transB=1, name="fc")]
        flat = {"conv_group": 2 * 3 * 3, "conv_dilation": 2 * 2 * 2, "overlapping_pool": 2 * 2 * 2}[case]
        p = _write(tmp_path, nodes, [_t("cw", conv_w), _t("gw", _mat(1, 3, flat))], ["N", 2, 8, 8])
    elif case == "bn_after_relu":
        nodes, inits = _fcn_nodes([mk("BatchNormalization", ["a", "s", "b", "m", "v"], ["n"], name="bn"),
                                   mk("Gemm", ["n", "w1"], ["y"], transB=1, name="fc1")])
        inits += [_t(k, np.ones(4, np.float32)) for k in ("s", "b", "m", "v")]
        p = _write(tmp_path, nodes, inits, ["N", 4])
    elif case == "mixed_acts":
        nodes, inits = _fcn_nodes([mk("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                                   mk("Tanh", ["g"], ["t"], name="tanh"),
                                   mk("Gemm", ["t", "w1"], ["y"], transB=1, name="fc2")])
        p = _write(tmp_path, nodes, inits, ["N", 4])
    elif case == "flatten_axis":
        nodes = [mk("Flatten", ["x"], ["f"], axis=2, name="flat"), mk("Gemm", ["f", "w"], ["y"], transB=1, name="fc")]
        p = _write(tmp_path, nodes, [_t("w", _mat(0, 3, 4))], ["N", 2, 4])
    elif case == "leaky_slope":
        nodes = [mk("Gemm", ["x", "w"], ["h"], transB=1, name="fc0"), mk("LeakyRelu", ["h"], ["a"], alpha=2.0,
                                                                         name="act"),
                 mk("Gemm", ["a", "w"], ["y"], transB=1, name="fc1")]
        p = _write(tmp_path, nodes, [_t("w", _mat(0, 4, 4))], ["N", 4])
    elif case == "nan_weight":
        w = _mat(0, 4, 4)
        w[1, 2] = np.nan
        nodes, inits = _fcn_nodes([mk("Gemm", ["a", "w1"], ["y"], transB=1, name="fc1")])
        inits[0] = _t("w0", w)
        p = _write(tmp_path, nodes, inits, ["N", 4])
    else:
        nodes = [mk("MatMul", ["w", "x"], ["y"], name="fc0")]
        p = _write(tmp_path, nodes, [_t("w", _mat(0, 4, 4))], [4, 4])
    with pytest.raises(ProbPruneError, match=pattern):
        load_onnx(p)


def test_io_refusals(tmp_path: Path) -> None:
    mk = helper.make_node
    p = _write(tmp_path, [mk("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], [_t("w", _mat(0, 3, 4))], ["N", "d"])
    with pytest.raises(ProbPruneError, match=r"input 'x': shape \['N', 'd'\]: only the batch dim"):
        load_onnx(p)
    p = _write(tmp_path, [mk("MatMul", ["x", "w"], ["y"], name="fc")], [_t("w", _mat(0, 4, 3))], ["N", 4],
               opset=8, name="o8.onnx")
    with pytest.raises(ProbPruneError, match="opset 8: only opsets 9 and newer"):
        load_onnx(p)
    graph = helper.make_graph([mk("Gemm", ["x", "w", "z"], ["y"], transB=1, name="fc")], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("x", "z")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [_t("w", _mat(0, 3, 4))])
    (tmp_path / "two.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                                          ir_version=7).SerializeToString())
    with pytest.raises(ProbPruneError, match=r"the graph has 2 inputs \(x, z\)"):
        load_onnx(tmp_path / "two.onnx")


def test_bad_files_are_refused(tmp_path: Path) -> None:
    net = _rand_net(NetSpec(widths=(5, 8, 2), bias=True))
    good = save_onnx(net, tmp_path / "good.onnx").read_bytes()
    (tmp_path / "text.onnx").write_text("this is not an onnx model, just some text\n" * 20)
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "dir.onnx").mkdir()
    cases = {"text.onnx": "not an ONNX model|not a valid ONNX model", "trunc.onnx": "not an ONNX model|not a valid",
             "empty.onnx": "the file is empty", "dir.onnx": "is a directory", "missing.onnx": "no such file"}
    for name, pattern in cases.items():
        with pytest.raises(ProbPruneError, match=pattern) as exc:
            load_onnx(tmp_path / name)
        assert name in str(exc.value)
    for cut in range(1, len(good), max(1, len(good) // 40)):  # every truncation: refused, never a wrong net
        (tmp_path / "cut.onnx").write_bytes(good[:cut])
        with pytest.raises(ProbPruneError):
            load_onnx(tmp_path / "cut.onnx")


# ---------------------------------------------------------------------- the numerical defence


def test_numerical_check_refuses_a_wrong_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    load_onnx(p)  # the honest conversion passes
    real = ponnx._in_dtype

    def transposed(*args: Any, **kw: Any) -> Any:  # a converter bug: the first weight transposed
        net = real(*args, **kw)
        return net.with_weights([net.weights[0].T.contiguous(), *net.weights[1:]])

    monkeypatch.setattr(ponnx, "_in_dtype", transposed)
    with pytest.raises(ProbPruneError, match="output 'y': the converted network differs from a float64 evaluation"):
        load_onnx(p)


@needs_ort
def test_numerical_check_against_onnxruntime_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    # with no rounding allowed, onnxruntime's float32 outputs cannot equal the float64 ones
    monkeypatch.setattr(ponnx, "_tolerance", lambda *a, **k: [float("inf"), 0.0])
    with pytest.raises(ProbPruneError, match="output 'y': the converted network differs from onnxruntime's"):
        load_onnx(p)


def test_folding_rounding_is_allowed_but_not_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"], name="bn")])
    inits += [_t("s", rng.uniform(0.3, 3, 4).astype(np.float32)), _t("b", rng.standard_normal(4).astype(np.float32)),
              _t("m", rng.standard_normal(4).astype(np.float32)), _t("v", rng.uniform(0.01, 2, 4).astype(np.float32))]
    p = _write(tmp_path, nodes, inits, ["N", 4])
    net = load_onnx(p)
    _agree(p, net, _inputs((4,)))
    real = ponnx._in_dtype

    def off_by_more(*args: Any, **kw: Any) -> Any:  # a folded weight off by 1e-4 relative: beyond one rounding
        net = real(*args, **kw)
        return net.with_weights([net.weights[0], net.weights[1] * (1 + 1e-4)])

    monkeypatch.setattr(ponnx, "_in_dtype", off_by_more)
    with pytest.raises(ProbPruneError, match="differs from a float64 evaluation"):
        load_onnx(p)


# ---------------------------------------------------------------------- the shared VNN-COMP models (optional)


@needs_ort
@pytest.mark.skipif(not (SHARED / "mnist-net_256x2.onnx").exists(), reason="../shared models absent")
def test_vnncomp_mnist_mlp_loads_and_equals_onnxruntime(tmp_path: Path) -> None:
    src = SHARED / "mnist-net_256x2.onnx"
    net, info = read_onnx(src)
    assert net.spec.to_arch() == "fcn:784,256,256,10" and net.spec.activation == "relu"
    assert info.input_shape == (1, 784, 1) and info.onnxruntime_checked == HAVE_ORT
    rng = np.random.default_rng(0)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    xs = rng.random((100, 1, 784, 1)).astype(np.float32)
    want = np.concatenate([sess.run(None, {info.input_name: x})[0] for x in xs])
    got = net(torch.from_numpy(xs.reshape(100, 784))).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5
    out = save_onnx(net, tmp_path / "mnist.onnx", **info.save_kwargs())
    again = np.concatenate([_ort(out, x, info.input_name) for x in xs])
    assert np.abs(again - want).max() <= 1e-5


@pytest.mark.skipif(not (SHARED / "Convnet_avgpool.onnx").exists(), reason="../shared models absent")
def test_vnncomp_avgpool_cnn_is_refused_clearly() -> None:
    # its Pad pads nothing (read as the identity); the AveragePool after it is what the chain refuses (the graph
    # reads it: tests/test_cli_graph.py)
    with pytest.raises(ProbPruneError, match=r"node 'AveragePool_3' \(AveragePool\): op avgpool is not part of a "
                                             r"chain Net; use the graph form"):
        load_onnx(SHARED / "Convnet_avgpool.onnx")


@pytest.mark.skipif(not (SHARED / "resnet_2b.onnx").exists(), reason="../shared models absent")
def test_vnncomp_resnet_is_refused_clearly() -> None:
    with pytest.raises(ProbPruneError, match=r"graph branches \(a residual connection"):
        load_onnx(SHARED / "resnet_2b.onnx")


# ---------------------------------------------------------------------- more edges


def test_float64_net_round_trip(tmp_path: Path) -> None:
    net = _rand_net(NetSpec(widths=(6, 5, 2), activation="tanh", bias=True)).to(dtype=torch.float64)
    p = save_onnx(net, tmp_path / "d.onnx")
    x = np.random.default_rng(0).standard_normal((16, 6))
    np.testing.assert_allclose(_ort(p, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    back = load_onnx(p)
    assert back.dtype == torch.float64 and all(torch.equal(a, b) for a, b in zip(back.weights, net.weights))


def test_circular_padding_cannot_be_written(tmp_path: Path) -> None:
    spec = NetSpec(kind="cnn", input_shape=(1, 6, 6), widths=(2,), convs=(ConvSpec(2, 3, padding_mode="circular"),))
    with pytest.raises(ProbPruneError, match="padding_mode='circular'"):
        save_onnx(_rand_net(spec), tmp_path / "c.onnx")
    assert not list(tmp_path.iterdir())


def test_used_second_output_is_refused(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Dropout", ["a"], ["d", "mask"], name="drop"),
                               helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT, name="cast"),
                               helper.make_node("Gemm", ["d", "w1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError, match=r"node 'drop' \(Dropout\): its second output 'mask' is used"):
        load_onnx(p)


def test_external_data_is_refused(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    model = onnx.load(str(p))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    with pytest.raises(ProbPruneError, match="external data"):
        load_onnx(tmp_path / "ext.onnx")


def test_load_without_onnxruntime_still_checks_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    net, info = read_onnx(p)
    assert not info.onnxruntime_checked
    monkeypatch.setattr(ponnx, "_tolerance", lambda *a, **k: [-1.0, -1.0])  # the numpy comparison still runs
    with pytest.raises(ProbPruneError, match="float64 evaluation"):
        load_onnx(p)


@pytest.mark.parametrize("opset", [9, 13])
def test_pad_of_zeros_is_the_identity_and_padding_is_refused(tmp_path: Path, opset: int) -> None:
    def model(pads: list[int], name: str) -> Path:
        pad_in, pad_attr = (["r"], {"pads": pads}) if opset < 11 else (["r", "pv"], {})
        nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="conv"),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Pad", pad_in, ["p"], name="pad", **pad_attr),
                 helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                 helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1, name="fc")]
        inits = [_t("cw", _mat(0, 2, 1, 3, 3)), _t("gw", _mat(1, 3, 2 * 4 * 4 if not any(pads) else 2 * 6 * 6)),
                 _t("gb", _mat(2, 3))]
        inits += [_t("pv", np.array(pads, dtype=np.int64))] if opset >= 11 else []
        return _write(tmp_path, nodes, inits, ["N", 1, 6, 6], opset=opset, name=name)

    p = model([0] * 8, "zero.onnx")
    net = load_onnx(p)
    assert net.spec.kind == "cnn"
    _agree(p, net, _inputs((1, 6, 6)))
    with pytest.raises(ProbPruneError, match=r"node 'pad' \(Pad\): pads=\[1, 1, 1, 1, 0, 0\].*only a Pad that "
                                             r"pads nothing"):
        load_onnx(model([0, 0, 1, 1, 0, 0, 1, 1], "pad.onnx"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_nets_round_trip_exactly(tmp_path: Path, data: st.DataObject) -> None:
    act = data.draw(st.sampled_from(["relu", "leaky_relu", "tanh", "sigmoid", "identity"]))
    bias = data.draw(st.booleans())
    if data.draw(st.booleans()):
        spec = NetSpec(widths=tuple(data.draw(st.lists(st.integers(1, 9), min_size=2, max_size=5))),
                       activation=act, negative_slope=0.25, bias=bias)  # type: ignore[arg-type]
    else:
        k = data.draw(st.sampled_from([1, 3]))
        convs = (ConvSpec(data.draw(st.integers(1, 4)), k, data.draw(st.integers(1, 2)),
                          data.draw(st.integers(0, 1)), pool=data.draw(st.sampled_from([1, 2]))),)
        spec = NetSpec(kind="cnn", input_shape=(data.draw(st.integers(1, 3)), 8, 8), convs=convs,
                       widths=(data.draw(st.integers(1, 5)),), activation=act, negative_slope=0.25,  # type: ignore[arg-type]
                       bias=bias)
    net = _rand_net(spec, seed=data.draw(st.integers(0, 1000)))
    p = save_onnx(net, tmp_path / "r.onnx")
    shape = (spec.input_dim,) if spec.kind == "fcn" else spec.input_shape
    x = _inputs(shape, n=8)  # type: ignore[arg-type]
    np.testing.assert_allclose(_ort(p, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    back = load_onnx(p)
    if len(net.layers) == 1:  # no hidden layer: the activation is never applied, and reads back as the identity
        spec = dataclasses.replace(spec, activation="identity", negative_slope=0.01)
    elif act != "leaky_relu":
        spec = dataclasses.replace(spec, negative_slope=0.01)  # the slope only means something for leaky_relu
    assert back.spec == spec  # slope 0.25 is a float32 exactly
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values()))


# ---------------------------------------------------------------------- one reader: the graph, compiled to a chain


def test_load_onnx_is_the_compiled_graph(tmp_path: Path) -> None:
    from probprune.nets import compile_chain
    from probprune.nets.onnx_graph import load_onnx_graph

    spec = NetSpec(kind="cnn", input_shape=(2, 8, 8), convs=(ConvSpec(3, 3, pool=2),), widths=(5, 2), bias=True)
    net = _rand_net(spec, seed=4)
    p = save_onnx(net, tmp_path / "c.onnx")
    graph, _ = load_onnx_graph(p)
    via_graph = compile_chain(graph).to(dtype=torch.float32)
    back = load_onnx(p)
    assert back.spec == via_graph.spec == spec
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in
               zip(back.state_dict().values(), via_graph.state_dict().values(), net.state_dict().values()))


def test_a_graph_the_chain_refuses_is_handed_on(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("Add", ["g", "a"], ["s"], name="residual"),
                               helper.make_node("Gemm", ["s", "w1"], ["y"], transB=1, name="fc2")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError, match=r"node 'residual' \(Add\): reads 2 tensors") as exc:
        read_onnx(p)
    graph, info = exc.value.graph_read  # type: ignore[attr-defined]
    assert [n.op for n in graph.nodes] == ["linear", "act", "linear", "add", "linear"] and info.input_name == "x"
    x = torch.from_numpy(_inputs((4,)).astype(np.float64))
    np.testing.assert_allclose(graph(x).numpy(), _ort(p, x.numpy().astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_batchnorm_default_epsilon_is_the_float32_attribute(tmp_path: Path) -> None:
    # ONNX's default epsilon is the float32 1e-5; reading it as the float64 1e-5 made the graph reader's check refuse
    # a BatchNormalization with unit statistics (its shift cancels to ~5e-6)
    nodes, inits = _fcn_nodes([helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["n"], name="bn"),
                               helper.make_node("Gemm", ["n", "w1"], ["y"], transB=1, name="fc1")])
    inits += [_t(k, np.ones(4, np.float32)) for k in ("s", "b", "m", "v")]
    p = _write(tmp_path, nodes, inits, ["N", 4])
    from probprune.nets.onnx_graph import load_onnx_graph

    graph, _ = load_onnx_graph(p)
    bn = graph.node("bn")
    assert bn.op == "affine" and float(bn.params["scale"][0]) == 1.0 / np.sqrt(1.0 + float(np.float32(1e-5)))
    with pytest.raises(ProbPruneError, match=r"node 'bn' \(BatchNormalization\)"):  # not a chain: after the ReLU
        load_onnx(p)


def test_an_unused_dropout_mask_is_read(tmp_path: Path) -> None:
    nodes, inits = _fcn_nodes([helper.make_node("Dropout", ["a"], ["d", "mask"], name="drop"),
                               helper.make_node("Gemm", ["d", "w1"], ["y"], transB=1, name="fc1")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    net = load_onnx(p)
    assert net.spec.to_arch() == "fcn:4,4,4"
    _agree(p, net, _inputs((4,)))


def test_the_cli_graph_fallback_takes_the_graph_already_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probprune.runner.graph as rgraph

    nodes, inits = _fcn_nodes([helper.make_node("Gemm", ["a", "w1", "b1"], ["g"], transB=1, name="fc1"),
                               helper.make_node("Add", ["g", "a"], ["s"], name="residual"),
                               helper.make_node("Gemm", ["s", "w1"], ["y"], transB=1, name="fc2")])
    p = _write(tmp_path, nodes, inits, ["N", 4])
    with pytest.raises(ProbPruneError) as exc:
        read_onnx(p)

    def no_second_read(path: Any) -> Any:
        raise AssertionError("the model was read twice")

    monkeypatch.setattr(rgraph, "load_onnx_graph", no_second_read)
    found = rgraph.graph_fallback("weights", str(p), exc.value)
    assert isinstance(found, rgraph.GraphModelFound)
    assert found.model.graph is exc.value.graph_read[0]  # type: ignore[attr-defined]
