"""The graph IR (probprune.nets.graph): activations' exact constants, ops, validation, the trial dim."""

import math

import pytest
import torch

from probprune.config import ProbPruneError
from probprune.nets.graph import ACTIVATIONS, Graph, Node, activation

pytestmark = pytest.mark.usefixtures("one_thread")

PARAMS = {"leaky_relu": (0.2,), "hardtanh": (-0.5, 2.0), "elu": (1.5,), "softplus": (2.0, 20.0)}


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_lipschitz_is_an_upper_value_and_tight(kind: str) -> None:
    """sup |σ'| on a fine grid (float64 autograd) is ≤ L and within 1e-6 of it; σ(0) is σ at 0."""
    act = activation(kind, *PARAMS.get(kind, ()))
    x = torch.linspace(-12, 12, 2_400_001, dtype=torch.float64, requires_grad=True)
    act(x).sum().backward()
    assert x.grad is not None
    found = float(x.grad.abs().max())
    assert found <= act.lipschitz
    assert act.lipschitz - found < 1e-6 * act.lipschitz
    assert act.sigma0 == pytest.approx(float(act(torch.zeros(1, dtype=torch.float64))[0]), rel=1e-11, abs=1e-15)
    assert act.sigma0 >= float(act(torch.zeros(1, dtype=torch.float64))[0])


def test_gelu_silu_constants() -> None:
    """The closed forms: GELU' peaks at √2 (Φ(√2) + e^{-1}/√π), SiLU' where x·tanh(x/2) = 2."""
    assert activation("gelu").lipschitz == pytest.approx(1.1289041451862, abs=1e-12)
    assert activation("silu").lipschitz == pytest.approx(1.0998393201299, abs=1e-12)
    assert activation("sigmoid").lipschitz == 0.25 and activation("sigmoid").sigma0 == 0.5
    assert activation("softplus", 1.0, 20.0).abs_error == pytest.approx(math.log1p(math.exp(-20.0)))
    assert activation("relu6").bounded and activation("tanh").bounded and not activation("gelu").bounded


def test_activation_refusals() -> None:
    with pytest.raises(ProbPruneError, match="unknown"):
        activation("swish")
    with pytest.raises(ProbPruneError, match="expected 1"):
        activation("leaky_relu")
    with pytest.raises(ProbPruneError, match="beta"):
        activation("softplus", -1.0, 20.0)
    with pytest.raises(ProbPruneError, match="min_val"):
        activation("hardtanh", 1.0, 1.0)


def _cnn(k: int | None, gen: torch.Generator) -> Graph:
    lead = () if k is None else (k,)
    conv = {"stride": (2, 1), "padding": ((1, 2), (0, 1)), "dilation": (1, 2), "groups": 2}
    return Graph([
        Node("c1", "conv", ("input",), conv, {"weight": torch.randn(*lead, 4, 1, 3, 2, generator=gen),
                                             "bias": torch.randn(*lead, 4, generator=gen)}),
        Node("a1", "act", ("c1",), {"act": activation("silu")}),
        Node("sc", "affine", ("a1",), {}, {"scale": torch.rand(4, 1, 1, generator=gen), "shift": torch.tensor(0.5)}),
        Node("p", "maxpool", ("sc",), {"dims": 2, "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}),
        Node("q", "avgpool", ("sc",), {"dims": 2, "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1),
                                       "count_include_pad": False}),
        Node("s", "add", ("p", "q")),
        Node("ad", "adaptive_avgpool", ("s",), {"dims": 2, "output_size": (2, 3)}),
        Node("pd", "pad", ("ad",), {"pads": (1, 0, 0, 1)}),
        Node("f", "reshape", ("pd",), {"shape": (-1,)}),
        Node("g", "reshape", ("ad",), {"shape": (24,)}),
        Node("cat", "cat", ("f", "g"), {"dim": 0}),
        Node("fc", "linear", ("cat",), {}, {"weight": torch.randn(*lead, 3, 72, generator=gen)}),
    ], (2, 9, 8))


def test_trial_dim_forward_equals_each_member() -> None:
    """[K, N, …] and shared [N, …] inputs: member k of the batched pass is the k-th graph alone.

    Checked in float64 to 1e-12: in float32 the batched (grouped) and the single-member convolutions may take
    different kernels, whose roundings differ by a few 1e-6 on some CPUs (measured 3.8e-6 on an AMD EPYC) —
    that is not what this test is about; the float64 check is ~1e6 times stricter on the semantics."""
    gen = torch.Generator().manual_seed(0)
    g32 = _cnn(3, gen)
    g = Graph([Node(n.name, n.op, n.inputs, n.attrs, {a: v.double() for a, v in n.params.items()})
               for n in g32.nodes], g32.input_shape)
    assert g.n_trials == 3 and g.output_shape == (3,)
    x = torch.randn(3, 5, 2, 9, 8, generator=gen, dtype=torch.float64)
    y, ys = g(x), g(x[0])
    for k in range(3):
        one = Graph([Node(n.name, n.op, n.inputs, n.attrs,
                          {a: (v[k] if a in ("weight", "bias") else v) for a, v in n.params.items()})
                     for n in g.nodes], g.input_shape)
        torch.testing.assert_close(y[k], one(x[k]), rtol=0, atol=1e-12)
        torch.testing.assert_close(ys[k], one(x[0]), rtol=0, atol=1e-12)


def test_parameters_by_name_and_replacement() -> None:
    g = _cnn(None, torch.Generator().manual_seed(1))
    assert g.prunable() == ("c1.weight", "fc.weight")
    assert list(g.parameters()) == ["c1.weight", "c1.bias", "sc.scale", "sc.shift", "fc.weight"]
    h = g.with_parameters({"fc.weight": torch.zeros(3, 72)})
    assert float(h(torch.randn(2, 2, 9, 8)).abs().max()) == 0.0
    with pytest.raises(ProbPruneError, match="no such parameter"):
        g.with_parameters({"fc.bias": torch.zeros(3)})
    with pytest.raises(ProbPruneError, match="expected shape"):
        g.with_parameters({"fc.weight": torch.zeros(3, 71)})
    assert g.to(torch.float64).parameters()["fc.weight"].dtype == torch.float64


def test_graph_validation_refusals() -> None:
    w = torch.eye(2)
    with pytest.raises(ProbPruneError, match="not an earlier node"):
        Graph([Node("a", "linear", ("b",), params={"weight": w})], (2,))
    with pytest.raises(ProbPruneError, match="used twice"):
        Graph([Node("a", "linear", ("input",), params={"weight": w}),
               Node("a", "linear", ("a",), params={"weight": w})], (2,))
    with pytest.raises(ProbPruneError, match="unknown"):
        Graph([Node("a", "softmax", ("input",))], (2,))
    with pytest.raises(ProbPruneError, match="NaN or inf"):
        Graph([Node("a", "linear", ("input",), params={"weight": torch.tensor([[math.nan, 0.0]])})], (2,))
    with pytest.raises(ProbPruneError, match="float32 or float64"):
        Graph([Node("a", "linear", ("input",), params={"weight": w.half()})], (2,))
    with pytest.raises(ProbPruneError, match="cannot run"):
        Graph([Node("a", "linear", ("input",), params={"weight": torch.eye(3)})], (2,))
    with pytest.raises(ProbPruneError, match="takes 2 inputs"):
        Graph([Node("a", "add", ("input",))], (2,))
    with pytest.raises(ProbPruneError, match="different trial dims"):
        Graph([Node("a", "linear", ("input",), params={"weight": torch.ones(2, 2, 2)}),
               Node("b", "linear", ("a",), params={"weight": torch.ones(3, 2, 2)})], (2,))
    with pytest.raises(ProbPruneError, match="broadcasting changes the shape"):
        Graph([Node("a", "affine", ("input",), params={"scale": torch.ones(3, 1)})], (1,))
    with pytest.raises(ProbPruneError, match="broadcasting changes the shape"):
        Graph([Node("a", "linear", ("input",), params={"weight": torch.ones(1, 2)}), Node("b", "add", ("a", "input"))],
              (2,))
    g = Graph([Node("a", "linear", ("input",), params={"weight": w})], (2,))
    with pytest.raises(ProbPruneError, match="expected"):
        g(torch.ones(3, 3))
