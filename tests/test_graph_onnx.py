"""load_onnx_graph (probprune.nets.onnx_graph): ONNX DAGs read exactly (onnxruntime as the reference) or refused."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from probprune.bounds.graph import certified_graph_gap, search_graph_gap
from probprune.config import ProbPruneError
from probprune.graphmasks import prune_graph
from probprune.nets.onnx_graph import load_onnx_graph

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def _init(name: str, shape: tuple[int, ...], gen: np.random.Generator, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((gen.standard_normal(shape) * scale).astype(np.float32), name)


def save(tmp: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_shape: list[int | str],
         out: str = "y", opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", "m"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp / "m.onnx"
    onnx.save_model(model, str(path))
    return path


def resnet_onnx(tmp: Path) -> Path:
    """Normalise (Sub/Div constants) → Conv → BN → Relu → [Conv → BN] + shortcut → Relu → MaxPool k3 s2 → Pad →
    Conv ‖ AveragePool (Concat) → GlobalAveragePool → Flatten → Gemm → LeakyRelu → MatMul."""
    gen = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array(np.array([0.5, 0.4], np.float32).reshape(1, 2, 1, 1), "mean"),
             numpy_helper.from_array(np.array([0.25, 0.3], np.float32).reshape(1, 2, 1, 1), "std"),
             _init("stem.weight", (c, 2, 3, 3), gen), _init("stem.bias", (c,), gen),
             _init("b1.weight", (c, c, 3, 3), gen), _init("side.weight", (c, 2, 1, 1), gen),
             _init("tail.weight", (3, c, 3, 3), gen), _init("fc.weight", (5, 3 + c), gen), _init("fc.bias", (5,), gen),
             _init("out.weight", (5, 2), gen)]
    for bn in ("bn0", "bn1"):
        inits += [numpy_helper.from_array((gen.random(c) + 0.5).astype(np.float32), f"{bn}.scale"),
                  _init(f"{bn}.B", (c,), gen), _init(f"{bn}.mean", (c,), gen),
                  numpy_helper.from_array((gen.random(c) + 0.5).astype(np.float32), f"{bn}.var")]
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads"))
    n = helper.make_node
    nodes = [n("Sub", ["x", "mean"], ["s"], name="sub"), n("Div", ["s", "std"], ["nx"], name="div"),
             n("Conv", ["nx", "stem.weight", "stem.bias"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
             n("BatchNormalization", ["c0", "bn0.scale", "bn0.B", "bn0.mean", "bn0.var"], ["n0"], name="bn0"),
             n("Relu", ["n0"], ["r0"], name="r0"),
             n("Conv", ["r0", "b1.weight"], ["c1"], pads=[1, 1, 1, 1], name="b1"),
             n("BatchNormalization", ["c1", "bn1.scale", "bn1.B", "bn1.mean", "bn1.var"], ["n1"], name="bn1"),
             n("Conv", ["nx", "side.weight"], ["sc"], name="side"),
             n("Add", ["n1", "sc"], ["a"], name="add"), n("Relu", ["a"], ["r1"], name="r1"),
             n("MaxPool", ["r1"], ["p"], kernel_shape=[3, 3], strides=[2, 2], name="pool"),
             n("Pad", ["p", "pads"], ["pp"], mode="constant", name="pad"),
             n("Conv", ["pp", "tail.weight"], ["t"], pads=[1, 1, 1, 1], name="tail"),
             n("AveragePool", ["pp"], ["ap"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], name="avg"),
             n("Identity", ["ap"], ["ap2"], name="id"),
             n("Concat", ["t", "ap2"], ["cat"], axis=1, name="cat"),
             n("GlobalAveragePool", ["cat"], ["g"], name="gap"), n("Flatten", ["g"], ["f"], axis=1, name="flat"),
             n("Gemm", ["f", "fc.weight", "fc.bias"], ["h"], transB=1, alpha=0.5, name="fc"),
             n("LeakyRelu", ["h"], ["lr"], alpha=0.1, name="lrelu"),
             n("Gemm", ["lr", "out.weight"], ["y"], name="out")]
    return save(tmp, nodes, inits, ["N", 2, 9, 9])


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"x": x.astype(np.float32)})[0])


def test_residual_cnn_equals_onnxruntime(tmp_path: Path) -> None:
    path = resnet_onnx(tmp_path)
    g, info = load_onnx_graph(path)
    assert info.input_shape == ("N", 2, 9, 9) and g.input_shape == (2, 9, 9)
    ops = [nd.op for nd in g.nodes]
    assert ops.count("add") == 1 and "maxpool" in ops and "cat" in ops and "adaptive_avgpool" in ops
    assert {"stem.weight", "b1.weight", "fc.weight", "out.weight"} <= set(g.prunable())
    assert not any(k.startswith("bn") for k in g.parameters())  # both BatchNorms folded
    x = np.random.default_rng(1).random((100, 2, 9, 9))
    got = g(torch.from_numpy(x)).numpy()
    assert np.abs(got - _ort(path, x)).max() <= 1e-5


@pytest.mark.parametrize("op,attrs,extra", [
    ("Tanh", {}, []), ("Sigmoid", {}, []), ("Elu", {"alpha": 0.7}, []), ("Softplus", {}, []),
    ("LeakyRelu", {"alpha": 0.3}, []), ("Clip", {}, ["lo", "hi"]), ("Relu", {}, [])])
def test_activations_equal_onnxruntime(tmp_path: Path, op: str, attrs: dict[str, float], extra: list[str]) -> None:
    gen = np.random.default_rng(2)
    inits = [_init("fc.weight", (6, 4), gen, 2.0), _init("fc.bias", (6,), gen),
             numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
             numpy_helper.from_array(np.array(1.5, np.float32), "hi")]
    nodes = [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["h"], transB=1, name="fc"),
             helper.make_node(op, ["h", *extra], ["y"], name="act", **attrs)]
    path = save(tmp_path, nodes, inits, [1, 4])
    g, _ = load_onnx_graph(path)
    x = np.random.default_rng(3).standard_normal((20, 4)) * 3
    got = g(torch.from_numpy(x)).numpy()
    want = np.concatenate([_ort(path, x[i:i + 1]) for i in range(20)])
    assert np.abs(got - want).max() <= 1e-5


def test_pruned_onnx_graph_certified_at_least_found(tmp_path: Path) -> None:
    g, _ = load_onnx_graph(resnet_onnx(tmp_path))
    f, _ = prune_graph(g, 0.5, "magnitude", "global")
    bound = certified_graph_gap(g, f, radius=1.0)
    found, _ = search_graph_gap(g, f, radius=1.0, n_restarts=4, n_steps=60)
    assert 0 < found <= bound.value


def test_refusals(tmp_path: Path) -> None:
    gen = np.random.default_rng(4)
    inits = [_init("w", (3, 3), gen)]
    n = helper.make_node
    with pytest.raises(ProbPruneError, match=r"node 'sm' \(Softmax\).*not supported"):
        load_onnx_graph(save(tmp_path, [n("MatMul", ["x", "w"], ["h"], name="mm"),
                                        n("Softmax", ["h"], ["y"], name="sm")], inits, [1, 3]))
    with pytest.raises(ProbPruneError, match=r"node 'mul' \(Mul\).*two input-dependent"):
        load_onnx_graph(save(tmp_path, [n("MatMul", ["x", "w"], ["h"], name="mm"),
                                        n("Mul", ["h", "x"], ["y"], name="mul")], inits, [1, 3]))
    with pytest.raises(ProbPruneError, match=r"Flatten.*axis=2"):
        load_onnx_graph(save(tmp_path, [n("Flatten", ["x"], ["y"], axis=2, name="fl")], [], [1, 3, 2]))
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(resnet_onnx(tmp_path).read_bytes()[:200])
    with pytest.raises(ProbPruneError, match="broken|truncated|not an ONNX"):
        load_onnx_graph(bad)


def test_save_and_reload_roundtrip(tmp_path: Path) -> None:
    """A pruned fx-read residual CNN (BatchNorm, GELU, SiLU, ReLU6, Softplus(β), pools, cat, pad) written to ONNX:
    onnxruntime runs it with the graph's values, and load_onnx_graph reads back the very parameters."""
    import torch.nn.functional as F
    from torch import nn

    from probprune.nets.fx import graph_from_module
    from probprune.nets.onnx_graph import save_onnx_graph

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding="same")
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, dilation=1)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.fc = nn.Linear(36 + 36 + 4 + 16, 5)
            self.sp = nn.Softplus(2.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.silu(self.bn(self.conv(x * 2.0 - 0.5)))
            a = F.relu6(self.conv2(h))
            b = self.pool(F.gelu(h))
            c = F.adaptive_avg_pool2d(h, 1)
            d = F.avg_pool2d(F.pad(h, (1, 1, 1, 1)), 4, 4)
            return self.sp(self.fc(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1), d.flatten(1)], 1)))

    module = Net()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
        module.bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    module.eval()
    g = graph_from_module(module, torch.randn(2, 2, 6, 6))
    f, _ = prune_graph(g, 0.5)
    path = save_onnx_graph(f, tmp_path / "pruned.onnx")
    x = np.random.default_rng(5).standard_normal((30, 2, 6, 6))
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = s.run(None, {"input": x.astype(np.float32)})[0]
    assert np.abs(got - f(torch.from_numpy(x)).numpy()).max() <= 1e-5
    back, info = load_onnx_graph(path)
    assert info.input_shape == ("N", 2, 6, 6)
    assert np.abs(back(torch.from_numpy(x)).numpy() - got).max() <= 1e-5
    for k in f.prunable():  # float32 round trip of the parameters, names kept
        torch.testing.assert_close(back.parameters()[k], f.parameters()[k].float().double(), rtol=0, atol=0)
