"""The certified gap bound on graphs (probprune.bounds.graph): certified ≥ the strongest gap a search finds."""

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from probprune.bounds.graph import certified_graph_gap, conv_operator_norm, search_graph_gap
from probprune.config import ProbPruneError
from probprune.nets.fx import graph_from_module
from probprune.nets.graph import ACTIVATIONS, Graph, Node, activation, apply_node

sys.path.insert(0, str(Path(__file__).parent))
from test_graph_fx import NormMLP, ResNet, fill

pytestmark = pytest.mark.usefixtures("one_thread")

SCALE = float(os.environ.get("PROBPRUNE_PROPERTY_SCALE", "1"))
"""Multiplies the property tests' example counts (CI's slow job)."""

PARAMS = {"leaky_relu": (0.2,), "hardtanh": (-0.5, 2.0), "elu": (1.5,), "softplus": (2.0, 20.0)}


def prune_graph(g: Graph, frac: float, gen: torch.Generator, bias_noise: float = 0.0) -> Graph:
    """Random pruning of every weight (a fraction ``frac`` removed), optionally with changed biases."""
    new = {}
    for name, w in g.parameters().items():
        if name in g.prunable():
            new[name] = w * (torch.rand(w.shape, generator=gen, dtype=w.dtype) >= frac)
        elif bias_noise and name.endswith("bias"):
            new[name] = w + bias_noise * torch.randn(w.shape, generator=gen, dtype=w.dtype)
    return g.with_parameters(new)


def check(target: Graph, pruned: Graph, radius: float, restarts: int = 6, steps: int = 120) -> tuple[float, float]:
    bound = certified_graph_gap(target, pruned, radius=radius)
    found, x = search_graph_gap(target, pruned, radius=radius, n_restarts=restarts, n_steps=steps)
    assert float(x.norm()) <= radius
    assert found <= bound.value, (found, bound.value)
    return bound.value, found


def lin(name: str, src: str, n_out: int, n_in: int, gen: torch.Generator) -> Node:
    return Node(name, "linear", (src,), {}, {"weight": torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
                                             / math.sqrt(n_in),
                                             "bias": 0.3 * torch.randn(n_out, generator=gen, dtype=torch.float64)})


def test_one_linear_layer_closes_the_sandwich() -> None:
    """e = ‖D‖·r is the gap itself for one linear layer: bound and search agree to 1e-6."""
    gen = torch.Generator().manual_seed(0)
    g = Graph([lin("fc", "input", 5, 7, gen)], (7,))
    f = prune_graph(g, 0.5, gen)
    bound, found = check(g, f, 2.0)
    assert bound <= found * (1 + 1e-6)


def _unrolled(node: Node, in_shape: tuple[int, ...], weight: Tensor) -> Tensor:
    """The explicit matrix of a node's linear part (bias dropped), by the Jacobian."""
    p = {"weight": weight}
    d = math.prod(in_shape)
    return torch.autograd.functional.jacobian(lambda v: apply_node(node, [v.reshape(1, *in_shape)], p).reshape(-1),
                                              torch.zeros(d, dtype=torch.float64))


CONVS = {
    "stride-asym-pad": ({"stride": (2, 1), "padding": ((1, 2), (0, 1)), "dilation": (1, 1), "groups": 1}, (3, 2, 3, 2),
                        (2, 7, 6)),
    "dilation-groups": ({"stride": (1, 2), "padding": ((2, 2), (1, 1)), "dilation": (2, 1), "groups": 2}, (4, 1, 3, 3),
                        (2, 6, 7)),
    "conv1d": ({"stride": (2,), "padding": ((1, 2),), "dilation": (2,), "groups": 1}, (3, 2, 3), (2, 11)),
    "valid": ({"stride": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1), "groups": 1}, (2, 2, 3, 3),
              (2, 5, 5)),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_norm_is_an_upper_value(name: str) -> None:
    attrs, wshape, in_shape = CONVS[name]
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(*wshape, generator=gen, dtype=torch.float64)
    node = Node("c", "conv", ("input",), attrs, {"weight": w})
    true = float(torch.linalg.matrix_norm(_unrolled(node, in_shape, w), ord=2))
    got = conv_operator_norm(w, node, in_shape)
    assert true <= got <= 3 * true


def _single_op_graphs() -> dict[str, tuple[list[Node], tuple[int, ...]]]:
    gen = torch.Generator().manual_seed(2)
    conv = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}
    c0 = Node("c0", "conv", ("input",), conv, {"weight": 0.4 * torch.randn(3, 2, 3, 3, generator=gen,
                                                                             dtype=torch.float64),
                                               "bias": 0.2 * torch.randn(3, generator=gen, dtype=torch.float64)})
    out: dict[str, tuple[list[Node], tuple[int, ...]]] = {}
    pools = {
        "maxpool-overlap": Node("p", "maxpool", ("c0",), {"dims": 2, "kernel": (3, 3), "stride": (1, 1),
                                                          "padding": (1, 1)}),
        "maxpool-k3s2": Node("p", "maxpool", ("c0",), {"dims": 2, "kernel": (3, 3), "stride": (2, 2),
                                                       "padding": (0, 0)}),
        "avgpool": Node("p", "avgpool", ("c0",), {"dims": 2, "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1),
                                                  "count_include_pad": False}),
        "adaptive": Node("p", "adaptive_avgpool", ("c0",), {"dims": 2, "output_size": (2, 2)}),
        "pad": Node("p", "pad", ("c0",), {"pads": (1, 0, 2, 1)}),
        "affine": Node("p", "affine", ("c0",), {}, {"scale": torch.rand(3, 1, 1, generator=gen, dtype=torch.float64),
                                                    "shift": torch.ones(3, 1, 1, dtype=torch.float64)}),
    }
    for name, p in pools.items():
        n_flat = math.prod(Graph([c0, p], (2, 5, 5)).output_shape)
        out[name] = ([c0, p, Node("f", "reshape", ("p",), {"shape": (-1,)}), lin("fc", "f", 3, n_flat, gen)],
                     (2, 5, 5))
    for kind in ACTIVATIONS:
        act = activation(kind, *PARAMS.get(kind, ()))
        out[f"act-{kind}"] = ([lin("fc1", "input", 6, 4, gen), Node("a", "act", ("fc1",), {"act": act}),
                               lin("fc2", "a", 3, 6, gen)], (4,))
    out["add"] = ([lin("fc1", "input", 4, 4, gen), Node("a", "act", ("fc1",), {"act": activation("relu")}),
                   Node("s", "add", ("a", "input")), lin("fc2", "s", 3, 4, gen)], (4,))
    out["cat"] = ([lin("fc1", "input", 4, 4, gen), Node("a", "act", ("fc1",), {"act": activation("tanh")}),
                   Node("s", "cat", ("a", "input"), {"dim": 0}), lin("fc2", "s", 3, 8, gen)], (4,))
    return out


SINGLE = _single_op_graphs()


@pytest.mark.parametrize("name", list(SINGLE))
def test_every_op_certified_at_least_found(name: str) -> None:
    nodes, shape = SINGLE[name]
    g = Graph(nodes, shape)
    gen = torch.Generator().manual_seed(3)
    for radius, frac, noise in ((1.0, 0.5, 0.0), (3.0, 0.3, 0.1)):
        f = prune_graph(g, frac, gen, noise)
        bound, found = check(g, f, radius)
        assert found > 0


@pytest.mark.parametrize("model", ["resnet", "mlp"])
def test_real_modules_certified_at_least_found(model: str) -> None:
    """Residual CNN with BatchNorm, and an MLP with GELU and input normalisation (fx-read), magnitude-pruned."""
    module, shape = (fill(ResNet(), 5), (2, 8, 8)) if model == "resnet" else (fill(NormMLP(), 6), (4, 4))
    g = graph_from_module(module, torch.rand(2, *shape))
    new = {}
    for k in g.prunable():
        w = g.parameters()[k]
        t = w.abs().flatten().kthvalue(max(1, w.numel() // 2)).values
        new[k] = torch.where(w.abs() <= t, torch.zeros_like(w), w)
    f = g.with_parameters(new)
    bound, found = check(g, f, 1.0, restarts=4, steps=80)
    assert found > 0 and math.isfinite(bound)


def test_identical_graphs_only_rounding() -> None:
    gen = torch.Generator().manual_seed(4)
    nodes, shape = SINGLE["act-gelu"]
    g = Graph(nodes, shape)
    b = certified_graph_gap(g, g, radius=1.0)
    assert 0 < b.value == b.rounding_margin < 1e-12
    assert search_graph_gap(g, g, radius=1.0, n_restarts=2, n_steps=5)[0] == 0.0
    _ = gen


def test_refusals() -> None:
    gen = torch.Generator().manual_seed(5)
    g = Graph([lin("fc", "input", 3, 4, gen)], (4,))
    h = Graph([lin("fc", "input", 3, 4, gen), Node("a", "act", ("fc",), {"act": activation("relu")})], (4,))
    with pytest.raises(ProbPruneError, match="structure differs"):
        certified_graph_gap(g, h, radius=1.0)
    other = Graph([Node("fc", "linear", ("input",), {}, {"weight": torch.ones(3, 4, dtype=torch.float64)})], (4,))
    with pytest.raises(ProbPruneError, match="parameter names or shapes"):
        certified_graph_gap(g, other, radius=1.0)
    with pytest.raises(ProbPruneError, match="radius"):
        certified_graph_gap(g, g, radius=-1.0)
    k = Graph([Node("fc", "linear", ("input",), {}, {"weight": torch.ones(2, 3, 4)})], (4,))
    with pytest.raises(ProbPruneError, match="trial dim"):
        certified_graph_gap(k, k, radius=1.0)


@st.composite
def dags(draw: st.DrawFn) -> tuple[Graph, Graph, float]:
    """Small random DAGs: an optional conv stem (conv, activation, pool), then residual adds, cats, affine maps
    and mixed activations on vectors, and a final linear layer; the pruned twin drops random weights."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    nodes: list[Node] = []
    acts = [activation(k, *PARAMS.get(k, ())) for k in ACTIVATIONS]
    src, width = "input", 6
    shape: tuple[int, ...] = (width,)
    if draw(st.booleans()):
        shape = (2, 5, 5)
        pad = draw(st.sampled_from([((1, 1), (1, 1)), ((0, 1), (1, 0)), ((0, 0), (0, 0))]))
        nodes.append(Node("c", "conv", ("input",), {"stride": (draw(st.sampled_from([1, 2])),) * 2, "padding": pad,
                                                    "dilation": (1, 1), "groups": 1},
                          {"weight": 0.5 * torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64),
                           "bias": 0.2 * torch.randn(3, generator=gen, dtype=torch.float64)}))
        nodes.append(Node("ca", "act", ("c",), {"act": draw(st.sampled_from(acts))}))
        pool = draw(st.sampled_from(["max", "avg", "none"]))
        last = "ca"
        if pool != "none":
            op = "maxpool" if pool == "max" else "avgpool"
            attrs = {"dims": 2, "kernel": (2, 2), "stride": (1, 1), "padding": (0, 0)}
            nodes.append(Node("cp", op, ("ca",), attrs if pool == "max" else {**attrs, "count_include_pad": True}))
            last = "cp"
        nodes.append(Node("cf", "reshape", (last,), {"shape": (-1,)}))
        flat = math.prod(Graph(nodes, shape).output_shape)
        nodes.append(lin("cl", "cf", width, flat, gen))
        src = "cl"
    widths = {src: width}
    for i in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["linear", "act", "add", "cat", "affine"]))
        name = f"n{i}"
        if op == "linear":
            nodes.append(lin(name, src, width, widths[src], gen))
        elif op == "act":
            nodes.append(Node(name, "act", (src,), {"act": draw(st.sampled_from(acts))}))
        elif op == "affine":
            nodes.append(Node(name, "affine", (src,), {}, {
                "scale": torch.randn(widths[src], generator=gen, dtype=torch.float64),
                "shift": torch.randn((), generator=gen, dtype=torch.float64)}))
        else:
            other = draw(st.sampled_from(sorted(widths)))
            if op == "add" and widths[other] != widths[src]:
                op, other = "add", src
            nodes.append(Node(name, op, (src, other), {"dim": 0} if op == "cat" else {}))
        widths[name] = widths[src] + widths[nodes[-1].inputs[1]] if op == "cat" else \
            width if op == "linear" else widths[src]
        src = name
    nodes.append(lin("out", src, 3, widths[src], gen))
    g = Graph(nodes, shape)
    f = prune_graph(g, draw(st.sampled_from([0.2, 0.5, 0.9])), gen, draw(st.sampled_from([0.0, 0.05])))
    return g, f, draw(st.sampled_from([0.5, 1.0, 4.0]))


@settings(max_examples=max(4, int(12 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags_certified_at_least_found(case: tuple[Graph, Graph, float]) -> None:
    g, f, r = case
    check(g, f, r, restarts=4, steps=60)


def _tight_cases() -> dict[str, tuple[Graph, Graph]]:
    """Graphs whose gap the bound attains: any under-estimating rule for these ops fails here."""
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    d = torch.zeros_like(w)
    d[0] = w[0]  # pruned row 0: D has rank one

    def two(op: str, attrs: dict[str, object]) -> tuple[Graph, Graph]:
        nodes = [Node("a", "linear", ("input",), {}, {"weight": w}), Node("b", "linear", ("input",), {}, {"weight": w}),
                 Node("s", op, ("a", "b"), attrs), Node("r", "reshape", ("s",), {"shape": (-1,)}),
                 Node("p", "pad", ("r",), {"pads": (2, 1)})]
        g = Graph(nodes, (4,))
        return g, g.with_parameters({"a.weight": w - d, "b.weight": w - d})

    s = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    aff = Graph([Node("s", "affine", ("input",), {}, {"scale": s, "shift": torch.ones(4, dtype=torch.float64)})], (4,))
    return {"add": two("add", {}), "cat": two("cat", {"dim": 0}),
            "affine": (aff, aff.with_parameters({"s.scale": s * torch.tensor([1.0, 1.0, 0.0, 1.0],
                                                                              dtype=torch.float64)}))}


@pytest.mark.parametrize("name", ["add", "cat", "affine"])
def test_rules_are_attained_where_the_gap_is_known(name: str) -> None:
    g, f = _tight_cases()[name]
    bound, found = check(g, f, 1.5)
    assert bound <= found * (1 + 1e-6)


@pytest.mark.parametrize("dims,spot,m", [(1, (0, 3), 3), (2, (0, 2, 2), 4)])
def test_overlapping_maxpool_factor_is_attained(dims: int, spot: tuple[int, ...], m: int) -> None:
    """One entry inside m windows: P(c·e_j) has c in m places, so the gap is √m·‖D‖·r — the rule's factor."""
    shape = (1, 7) if dims == 1 else (1, 5, 5)
    n = math.prod(shape)
    u = torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    d = torch.zeros(n, 4, dtype=torch.float64)
    d[int(torch.tensor(spot[1:]) @ torch.tensor([shape[-1], 1][-len(spot[1:]):]))] = u
    pool = {"dims": dims, "kernel": (3,) * dims, "stride": (1,) if dims == 1 else (2, 2),
            "padding": (1,) if dims == 1 else (0, 0)}
    g = Graph([Node("fc", "linear", ("input",), {}, {"weight": torch.zeros(n, 4, dtype=torch.float64)}),
               Node("r", "reshape", ("fc",), {"shape": shape}), Node("p", "maxpool", ("r",), pool)], (4,))
    f = g.with_parameters({"fc.weight": d})
    bound, found = check(g, f, 2.0)
    assert found == pytest.approx(math.sqrt(m) * 2.0 * float(u.norm()), rel=1e-9)
    assert bound <= found * (1 + 1e-6)
