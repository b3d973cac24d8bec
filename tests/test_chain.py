"""The chain Net as the compiled form of a Graph: ``Net → Graph`` and ``Graph → Net``, exact both ways or refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.graph import certified_graph_gap, search_graph_gap
from probprune.config import ConvSpec, NetSpec, ProbPruneError
from probprune.nets import Net, compile_chain, stack, to_module
from probprune.nets.chain import graph_of
from probprune.nets.fx import graph_from_module
from probprune.nets.graph import Graph, Node, activation

ACTS = ["relu", "leaky_relu", "tanh", "sigmoid", "identity"]


def _rand_net(spec: NetSpec, seed: int = 0, dtype: torch.dtype = torch.float64) -> Net:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=gen, dtype=dtype) / max(1.0, float(torch.tensor(s[1:]).prod()) ** 0.5)
          for s in spec.weight_shapes()]
    bs = [torch.randn(s[0], generator=gen, dtype=dtype) * 0.1 for s in spec.weight_shapes()] if spec.bias else None
    return Net.from_weights(spec, ws, bs)


@st.composite
def net_specs(draw: st.DrawFn) -> NetSpec | None:
    act = draw(st.sampled_from(ACTS))
    bias = draw(st.booleans())
    slope = draw(st.sampled_from([0.01, 0.25, 1.0]))
    if draw(st.booleans()):
        return NetSpec(widths=tuple(draw(st.lists(st.integers(1, 9), min_size=2, max_size=5))),
                       activation=act, negative_slope=slope, bias=bias)  # type: ignore[arg-type]
    convs = []
    for _ in range(draw(st.integers(1, 2))):
        k = draw(st.sampled_from([1, 2, 3]))
        convs.append(ConvSpec(draw(st.integers(1, 4)), k, draw(st.integers(1, 2)), draw(st.integers(0, 1)),
                              draw(st.sampled_from(["zeros", "circular"])), pool=draw(st.sampled_from([1, 2]))))
    widths = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    try:
        return NetSpec(kind="cnn", input_shape=(draw(st.integers(1, 3)), 12, 12), convs=tuple(convs),
                       widths=widths, activation=act, negative_slope=slope, bias=bias)  # type: ignore[arg-type]
    except ProbPruneError:  # a drawn CNN whose feature map shrinks to nothing
        return None


def _inputs(net: Net, n: int = 16, seed: int = 3) -> torch.Tensor:
    shape = net.spec.feature_shapes()[0]
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2.0


def _same(a: Net, b: Net) -> None:
    assert a.spec == b.spec and a.n_trials == b.n_trials and a.dtype == b.dtype
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs(), seed=st.integers(0, 10_000))
def test_net_to_graph_and_back_is_exact(spec: NetSpec | None, seed: int) -> None:
    assume(spec is not None)
    assert spec is not None
    net = _rand_net(spec, seed)
    g = net.to_graph()
    assert [(n.name, n.op) for n in graph_of(net).nodes] == [(n.name, n.op) for n in g.nodes]
    assert sorted(g.prunable()) == sorted(net.names)
    params = g.parameters()  # the Net's tensors (same storage), not copies
    assert list(params) == list(net.state_dict())
    assert all(params[k].data_ptr() == v.data_ptr() for k, v in net.state_dict().items())
    x = _inputs(net)
    want = net(x)
    got = g(x)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-12
    back = compile_chain(g)
    if len(net.layers) == 1 or spec.activation != "leaky_relu":  # the slope means nothing without leaky hidden layers
        spec = dataclasses.replace(spec, negative_slope=0.01)
        if len(net.layers) == 1:
            spec = dataclasses.replace(spec, activation="identity")
    assert back.spec == spec
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values()))
    assert torch.equal(back(x), want)
    # Graph → Net → Graph keeps the nodes and parameters
    again = back.to_graph()
    assert [(n.name, n.op) for n in again.nodes] == [(n.name, n.op) for n in g.nodes] or len(net.layers) == 1


def test_ensembles_keep_their_trial_dim_both_ways() -> None:
    spec = NetSpec(widths=(5, 7, 3), activation="tanh", bias=True)
    ens = stack([_rand_net(spec, s) for s in range(4)])
    g = ens.to_graph()
    assert g.n_trials == 4
    x = torch.randn(6, 5, dtype=torch.float64)
    assert float((g(x) - ens(x)).abs().max()) <= 1e-12
    _same(compile_chain(g), ens)
    cnn = NetSpec(kind="cnn", input_shape=(2, 8, 8), convs=(ConvSpec(3, 3, pool=2),), widths=(4,), bias=True)
    ce = stack([_rand_net(cnn, s) for s in range(3)])
    xc = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    assert float((ce.to_graph()(xc) - ce(xc)).abs().max()) <= 1e-12
    _same(compile_chain(ce.to_graph()), ce)


def test_float32_nets_stay_float32() -> None:
    net = _rand_net(NetSpec(widths=(4, 6, 2), activation="sigmoid"), dtype=torch.float32)
    back = compile_chain(net.to_graph())
    _same(back, net)


def test_circular_padding_is_a_circular_pad_node_and_the_graph_bound_refuses_it(tmp_path: Path) -> None:
    spec = NetSpec(kind="cnn", input_shape=(1, 6, 6), convs=(ConvSpec(2, 3, padding_mode="circular"),), widths=(2,),
                   bias=True)
    net = _rand_net(spec)
    g = net.to_graph()
    assert [(n.name, n.op) for n in g.nodes][:2] == [("0.pad", "circular_pad"), ("0", "conv")]
    assert g.node("0").attrs["padding"] == ((0, 0), (0, 0)) and g.node("0.pad").attrs["pads"] == (1, 1, 1, 1)
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    assert float((g(x) - net(x)).abs().max()) <= 1e-12
    _same(compile_chain(g), net)
    with pytest.raises(ProbPruneError, match=r"node '0.pad': op circular_pad has no rule"):
        certified_graph_gap(g, g, radius=1.0)
    from probprune.nets.onnx_graph import save_onnx_graph

    with pytest.raises(ProbPruneError, match=r"save_onnx_graph: node '0.pad': op circular_pad cannot be written"):
        save_onnx_graph(g, tmp_path / "never.onnx")
    assert not list(tmp_path.iterdir())
    # a circular pad that is not the padding of the conv right after it is refused
    nodes = list(g.nodes)
    nodes[1] = Node("0", "conv", ("0.pad",), {**nodes[1].attrs, "padding": ((1, 1), (1, 1))}, nodes[1].params)
    wide = Graph([*nodes[:2], Node("f", "reshape", ("0",), {"shape": (2 * 8 * 8,)}),
                  Node("o", "linear", ("f",), params={"weight": torch.randn(2, 128)})], (1, 6, 6))
    with pytest.raises(ProbPruneError, match=r"node '0.pad' \(circular_pad\): pads=\(1, 1, 1, 1\) before a conv "
                                             r"with padding"):
        compile_chain(wide)


def test_module_graphs_compile_to_the_modules_function() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.LeakyReLU(0.2), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(48, 5), nn.Dropout(), nn.LeakyReLU(0.2), nn.Linear(5, 2)).eval()
    with torch.no_grad():
        seq[1].running_mean.uniform_(-1, 1)
        seq[1].running_var.uniform_(0.5, 2)
    g = graph_from_module(seq, torch.zeros(1, 2, 8, 8))
    net = compile_chain(g)
    assert net.spec.to_arch() == "cnn:2x8x8,c3k3m2,5,2" and net.spec.activation == "leaky_relu"
    assert net.spec.negative_slope == pytest.approx(0.2) and net.dtype == torch.float64
    x = torch.randn(20, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert float((net(x) - seq.double()(x)).abs().max()) <= 1e-12
    # an FCN read behind a leading Flatten reads flattened inputs
    fcn = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 3)).eval()
    net2 = compile_chain(graph_from_module(fcn, torch.zeros(1, 3, 4)))
    assert net2.spec.widths == (12, 4, 3)
    xf = torch.randn(7, 3, 4, dtype=torch.float64)
    assert float((net2(xf.flatten(1)) - fcn.double()(xf)).abs().max()) <= 1e-12


def test_affine_nodes_fold_in_float64() -> None:
    w = torch.randn(4, 3)
    nodes = [Node("fc", "linear", ("input",), params={"weight": w}),
             Node("bn", "affine", ("fc",), params={"scale": torch.rand(4) + 0.5, "shift": torch.randn(4)}),
             Node("a", "act", ("bn",), attrs={"act": activation("relu")}),
             Node("out", "linear", ("a",), params={"weight": torch.randn(2, 4), "bias": torch.randn(2)})]
    g = Graph(nodes, (3,))
    net = compile_chain(g)
    assert net.dtype == torch.float64 and net.spec.bias
    x = torch.randn(9, 3, dtype=torch.float64)
    assert float((net(x) - g.to(torch.float64)(x)).abs().max()) <= 1e-12


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)) + x)


@pytest.mark.parametrize(("module", "shape", "pattern"), [
    (_Residual(), (4,), r"node 'add' \(add\): reads 2 tensors \('relu', 'input'\): the graph branches.*graph form"),
    (nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)), (4,),
     r"node '1' \(act\): activation gelu is not one the chain Net applies"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), (4,),
     r"node '3' \(act\): mixed activations"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)), (4,),
     r"node '2' \(linear\): has no activation after it while '1' applies one"),
    (nn.Sequential(nn.Linear(4, 2), nn.ReLU()), (4,), r"node '1' \(act\): is an activation after the output layer '0'"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 2)), (1, 6, 6),
     r"node '2' \(avgpool\): op avgpool is not part of a chain Net"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(2, 2)), (1, 6, 6),
     r"node '2' \(maxpool\): kernel=\(3, 3\), stride=\(2, 2\)"),
    (nn.Sequential(nn.Conv2d(1, 2, 2, padding="same"), nn.Flatten(), nn.Linear(72, 2)), (1, 6, 6),
     r"node '0' \(conv\): padding=\(\(0, 1\), \(0, 1\)\) is not the same on every side"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(32, 2)), (2, 6, 6),
     r"node '0' \(conv\): dilation=\(1, 1\), groups=2"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Unflatten(1, (2, 2)), nn.Flatten(), nn.Linear(4, 2)), (4,),
     r"node '2' \(reshape\): reshape \(4,\) → \(2, 2\)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), (1, 4, 4),
     r"node '0' \(conv\): the last weight layer is a conv"),
    (nn.Sequential(nn.Linear(4, 3)), (2, 4), r"node '0' \(linear\): a linear node on input shape \(2, 4\)"),
])
def test_graphs_a_chain_cannot_express_are_refused_naming_the_node(module: nn.Module, shape: tuple[int, ...],
                                                                   pattern: str) -> None:
    g = graph_from_module(module.eval(), torch.zeros(1, *shape))
    with pytest.raises(ProbPruneError, match=r"^compile_chain: " + pattern):
        compile_chain(g)


@pytest.mark.parametrize("spec", [
    NetSpec(widths=(8, 32, 32, 4), activation="relu", bias=True),
    NetSpec(kind="cnn", input_shape=(1, 12, 12), convs=(ConvSpec(4, 3, pool=2),), widths=(10,), activation="tanh"),
])
def test_graph_bound_on_the_chain_graph_covers_the_found_gap(spec: NetSpec) -> None:
    target = _rand_net(spec, 1)
    gen = torch.Generator().manual_seed(2)
    pruned = target.with_weights([w * (torch.rand(w.shape, generator=gen, dtype=w.dtype) > 0.3) for w in
                                  target.weights])
    tg, pg = target.to_graph(), pruned.to_graph()
    graph_b = certified_graph_gap(tg, pg, radius=1.0).value
    chain_b = float(certified_gap_bound(target, pruned, radius=1.0).value)
    found, x = search_graph_gap(tg, pg, radius=1.0, n_restarts=4, n_steps=100)
    assert 0.0 < found <= graph_b and found <= chain_b
    assert float(x.norm()) <= 1.0
    # the same layerwise recursion on the same float64 network: measured equal here (ratio 1 to 12 digits)
    assert abs(graph_b / chain_b - 1.0) <= 1e-3


def test_to_module_graph_names_match_the_chain_graph() -> None:
    net = _rand_net(NetSpec(kind="cnn", input_shape=(1, 8, 8), convs=(ConvSpec(2, 3, pool=2),), widths=(3,)))
    via_fx = graph_from_module(to_module(net).eval(), torch.zeros(1, 1, 8, 8))
    assert [(n.name, n.op) for n in via_fx.nodes] == [(n.name, n.op) for n in net.to_graph().nodes]


@pytest.mark.parametrize("spec", [
    NetSpec(widths=(6, 8, 3), activation="leaky_relu", negative_slope=0.25, bias=True),
    NetSpec(kind="cnn", input_shape=(2, 8, 8), convs=(ConvSpec(3, 3, 2, 1, pool=2),), widths=(4,), activation="tanh"),
])
def test_the_graph_writer_writes_chains_too(tmp_path: Path, spec: NetSpec) -> None:
    ort = pytest.importorskip("onnxruntime")
    from probprune.nets.onnx import load_onnx, save_onnx
    from probprune.nets.onnx_graph import save_onnx_graph

    net = _rand_net(spec, 5, dtype=torch.float32)
    via_graph = save_onnx_graph(net.to_graph(), tmp_path / "g.onnx")
    via_chain = save_onnx(net, tmp_path / "c.onnx")
    x = torch.randn(32, *net.spec.feature_shapes()[0], generator=torch.Generator().manual_seed(1))
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
            for p in (via_graph, via_chain)]
    want = net(x).detach().numpy()
    for got in outs:
        assert float(abs(got - want).max()) <= 1e-5 * max(1.0, float(abs(want).max()))
    back = load_onnx(via_graph)  # the one reader reads what the graph writer wrote back to the same chain
    assert back.spec == net.spec
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values()))
