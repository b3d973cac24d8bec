"""graph_from_module (probprune.nets.fx): every supported layer equals the module; refusals are named."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from probprune.config import ProbPruneError
from probprune.nets.fx import graph_from_module

pytestmark = pytest.mark.usefixtures("one_thread")


def fill(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic parameters and BatchNorm statistics from a local generator; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def same(module: nn.Module, x: Tensor) -> None:
    """The graph equals the module: in float64 to ~rounding, and the float32 module to float32 tolerance."""
    g = graph_from_module(module, x)
    with torch.no_grad():
        ref32 = module(x)
        ref64 = nn.Module.double(__import__("copy").deepcopy(module))(x.double())
        out = g(x.double())
    torch.testing.assert_close(out, ref64, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.float(), ref32, rtol=1e-5, atol=1e-5)


LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "conv1d": (lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1, dilation=2), (2, 11)),
    "conv1d-same": (lambda: nn.Conv1d(2, 4, 4, padding="same"), (2, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2), (4, 9, 8)),
    "conv2d-same-even": (lambda: nn.Conv2d(2, 3, 4, padding="same", bias=False), (2, 7, 6)),
    "conv2d-valid": (lambda: nn.Conv2d(2, 3, 3, padding="valid"), (2, 7, 6)),
    # circular padding: a circular_pad node (the pads the forward applies) and the conv without padding
    "conv2d-circular": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=(1, 2), padding_mode="circular"), (2, 7, 6)),
    "conv1d-circular": (lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular"), (2, 7)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(5), (5,)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), (3, 4, 4)),
    "maxpool1d": (lambda: nn.MaxPool1d(3, 2, 1), (2, 9)),
    "maxpool2d-overlap": (lambda: nn.MaxPool2d(3, 2), (2, 9, 9)),
    "maxpool2d-pad": (lambda: nn.MaxPool2d((3, 2), (1, 2), (1, 1)), (2, 7, 6)),
    "avgpool1d": (lambda: nn.AvgPool1d(3, 2, 1), (2, 9)),
    "avgpool2d": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 9, 8)),
    "avgpool2d-incl": (lambda: nn.AvgPool2d(2), (2, 8, 8)),
    "adaptive1d": (lambda: nn.AdaptiveAvgPool1d(3), (2, 10)),
    "adaptive2d": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 7, 8)),
    "flatten": (lambda: nn.Sequential(nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)), (2, 5, 5)),
    "zeropad": (lambda: nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(2, 2, 3)), (2, 5, 5)),
    "constpad1d": (lambda: nn.ConstantPad1d(2, 0.0), (2, 5)),
    "dropout-identity": (lambda: nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Identity()), (3,)),
    "relu": (nn.ReLU, (7,)), "leaky_relu": (lambda: nn.LeakyReLU(0.2), (7,)), "relu6": (nn.ReLU6, (7,)),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 2.0), (7,)), "elu": (lambda: nn.ELU(1.5), (7,)), "gelu": (nn.GELU, (7,)),
    "silu": (nn.SiLU, (7,)), "tanh": (nn.Tanh, (7,)), "sigmoid": (nn.Sigmoid, (7,)),
    "softplus": (lambda: nn.Softplus(2.0, 5.0), (7,)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_each_layer_equals_the_module(name: str) -> None:
    make, shape = LAYERS[name]
    gen = torch.Generator().manual_seed(3)
    module = fill(nn.Sequential(make()), 4)
    same(module, 3 * torch.randn(5, *shape, generator=gen))


class Block(nn.Module):
    """A torchvision-style basic block: conv-BN-ReLU-conv-BN + shortcut, ReLU used twice."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.down(x))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3]).view(1, 2, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = Block(4, 4, 1)
        self.layer2 = Block(4, 6, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_residual_cnn_with_batchnorm() -> None:
    module = fill(ResNet(), 5)
    x = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    same(module, x)
    g = graph_from_module(module, x)
    ops = [n.op for n in g.nodes]
    assert ops.count("add") == 2 and "affine" in ops  # residual sums; normalisation kept as affine
    # every BatchNorm followed a conv feeding nothing else: folded, so no BN parameters remain
    assert not any(k.startswith(("stem.1", "layer1.bn", "layer2.bn")) for k in g.parameters())
    assert "layer2.down.0.bias" in g.parameters()  # the fold adds a bias to a bias-free conv
    assert set(g.prunable()) == {n for n, p in module.named_parameters() if n.endswith("weight") and p.dim() > 1}


class NormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.1307))
        self.std = 0.3081
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 12), nn.Linear(12, 12), nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = (x.view(x.size(0), -1) - self.mean) / self.std
        x = F.gelu(self.fc1(x))
        x = nn.functional.silu(self.fc2(x)) * 0.5 + 1.0
        return self.fc3(x)


def test_mlp_with_gelu_and_input_normalisation() -> None:
    module = fill(NormMLP(), 6)
    same(module, torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(1)))


def test_overlapping_maxpool_net_and_cat() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 2, 5, padding=2)
            self.pool = nn.MaxPool2d(3, 2)
            self.fc = nn.Linear(5 * 4 * 4, 2)

        def forward(self, x: Tensor) -> Tensor:
            y = torch.cat([torch.tanh(self.a(x)), F.leaky_relu(self.b(x), 0.1)], dim=1)
            return self.fc(self.pool(y).flatten(1))

    same(fill(Net(), 7), torch.randn(3, 1, 9, 9, generator=torch.Generator().manual_seed(2)))


def test_module_is_not_modified() -> None:
    module = fill(ResNet(), 5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    graph_from_module(module, torch.rand(2, 2, 8, 8))
    assert not module.training and all(v.dtype == torch.float32 for v in module.state_dict().values()
                                       if v.is_floating_point())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.att(x, x, x)[0]


class Branchy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if x.sum() > 0 else -x


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * x


class MyLinear(nn.Linear):
    """A subclass: traced through, its F.linear call is refused (a subclass may compute anything)."""


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.fc(x))


REFUSALS = {
    "layernorm": (lambda: nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), (3,),
                  r"call_module 1: LayerNorm\).*LayerNorm.*BatchNorm"),
    "attention": (Attn, (2, 4), r"att.*MultiheadAttention.*attention"),
    "sin": (lambda: nn.Sequential(nn.Linear(3, 3), _Sin()), (3,), r"node 'sin'.*function not supported"),
    "product": (Product, (3,), r"node 'mul'.*two input-dependent"),
    "subclass": (lambda: MyLinear(3, 3), (3,), r"node 'linear'.*function not supported"),
    "subclass-inside": (lambda: nn.Sequential(nn.ReLU(), MyLinear(3, 3)), (3,),
                        r"node 'linear' \(call_function linear, inside layer 1 \(MyLinear\)\): function not "
                        r"supported.*MyLinear is a subclass of nn.Linear.*read by exact type"),
    "gelu-tanh": (lambda: nn.GELU("tanh"), (3,), r"approximate='none'"),
    "shared": (Twice, (3,), r"called twice"),
    "control-flow": (Branchy, (3,), r"cannot trace"),
    "reflect": (lambda: nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 5, 5),
                r"padding_mode='reflect'"),
    "ceil": (lambda: nn.MaxPool2d(2, ceil_mode=True), (1, 5, 5), r"ceil_mode"),
    "flatten0": (lambda: nn.Flatten(0), (3,), r"start_dim=1"),
}


class _Sin(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


@pytest.mark.parametrize("name", list(REFUSALS))
def test_unsupported_is_refused_and_named(name: str) -> None:
    make, shape, msg = REFUSALS[name]
    with pytest.raises(ProbPruneError, match=msg):
        graph_from_module(fill(make(), 1), torch.randn(2, *shape))


def test_train_mode_hooks_and_nan_are_refused() -> None:
    module = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.1))
    with pytest.raises(ProbPruneError, match=r"1 \(BatchNorm1d\) is in train mode.*eval"):
        graph_from_module(module.eval()[1].train() and module, torch.randn(2, 3))
    with pytest.raises(ProbPruneError, match=r"2 \(Dropout\) is in train mode"):
        graph_from_module(module.eval()[2].train() and module, torch.randn(2, 3))
    module.eval()
    torch_prune.l1_unstructured(module[0], "weight", amount=0.5)
    with pytest.raises(ProbPruneError, match=r"0 \(Linear\) has forward hooks.*prune.remove"):
        graph_from_module(module, torch.randn(2, 3))
    torch_prune.remove(module[0], "weight")
    graph_from_module(module, torch.randn(2, 3))  # accepted once the hook is removed
    with torch.no_grad():
        module[0].weight[0, 0] = float("nan")
    with pytest.raises(ProbPruneError, match=r"0.weight has NaN"):
        graph_from_module(module, torch.randn(2, 3))
    with pytest.raises(ProbPruneError, match="example_input"):
        graph_from_module(nn.Linear(3, 3).eval(), torch.randn(3))


def test_fixed_batch_reshape_is_refused() -> None:
    class Fixed(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.reshape(2, -1)

    with pytest.raises(ProbPruneError, match="output shape|check inputs"):
        graph_from_module(Fixed().eval(), torch.randn(2, 3, 2))


def test_numerical_check_refuses_a_wrong_node_and_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that maps ReLU to a slightly leaky ReLU: the second defence catches it at that node."""
    from probprune.nets import fx
    from probprune.nets.graph import activation

    monkeypatch.setitem(fx._MODULE_ACTS, nn.ReLU, lambda m: activation("leaky_relu", 1e-9))
    module = fill(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), 8)
    with pytest.raises(ProbPruneError, match=r"differs from the module at node '1' \(act, fx node _1\)"):
        graph_from_module(module, torch.randn(2, 4))


def test_functional_pools_lenet_style() -> None:
    """F.max_pool2d / F.avg_pool2d / F.adaptive_avg_pool2d inside forward, as classic LeNets write them."""

    class LeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 2 * 2 + 3, 3)

        def forward(self, x: Tensor) -> Tensor:
            x = F.max_pool2d(F.relu(self.conv1(x)), 3, stride=2, padding=1)
            y = F.avg_pool2d(torch.sigmoid(self.conv2(x)), 2)
            z = F.adaptive_avg_pool2d(torch.tanh(x), 1).flatten(1)
            return self.fc(torch.cat([y.flatten(1), z], 1))

    same(fill(LeNet(), 9), torch.randn(2, 1, 9, 9))
    ops = [n.op for n in graph_from_module(fill(LeNet(), 9), torch.randn(2, 1, 9, 9)).nodes]
    assert {"maxpool", "avgpool", "adaptive_avgpool", "cat"} <= set(ops)

    class Sliced(LeNet):
        def forward(self, x: Tensor) -> Tensor:
            return self.conv1(x)[:, :2]

    with pytest.raises(ProbPruneError, match=r"node 'getitem'.*function not supported"):
        graph_from_module(fill(Sliced(), 9), torch.randn(2, 1, 9, 9))


@pytest.mark.parametrize("magnitude", [1.0, 1e-42, 1e40])
def test_rounding_scale_is_an_upper_bound(magnitude: float) -> None:
    """The check's rounding scale max |node|(|x|), evaluated in float32 for speed, is never below the float64
    value (tiny entries below float32's normal range, huge ones evaluated in float64) and at most slightly above."""
    from probprune.nets import fx
    from probprune.nets.graph import Node

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(16, 3, 9, 9, generator=gen, dtype=torch.float64) * magnitude
    nodes = [
        (Node("c", "conv", ("input",), {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1),
                                          "groups": 1},
              {"weight": torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64),
               "bias": torch.randn(4, generator=gen, dtype=torch.float64)}), x, 27),
        (Node("l", "linear", ("input",), {}, {"weight": torch.randn(5, 243, generator=gen, dtype=torch.float64)}),
         x.flatten(1), 243),
    ]
    for node, xin, fan in nodes:
        exact = float(fx.apply_node(node, [xin.abs()], {k: v.abs() for k, v in node.params.items()}).max())
        got = fx._abs_scale(node, [xin], fan)
        assert exact <= got <= exact * (1 + 1e-2) + 1e-30, (node.op, exact, got)
