"""from_module: a conversion is exact or refused (issue 13, item 1), and weight dtypes.

``from_module`` is the fx reader (``nets.fx.read_module``) then ``compile_chain`` (issue 15: one code path for
reading a module): refusals name the layer as the user wrote it (``layer 2 (Linear)``) or the fx node and the layer
it is inside of; forms the old walker refused and the reader reads exactly are tested equal to the module.

Explicit regressions for the issue's examples, then Hypothesis properties over random layer lists:
either ``from_module`` refuses, or the Net computes the module's function and the certified
bound for a pruned copy is at least the largest gap found on the *modules* (the user's function).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, cast

import pytest
import torch
import torch.nn.utils.parametrize as parametrize
import torch.nn.utils.prune as torch_prune
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import probprune.nets as nets
from probprune import ProbPruneError
from probprune.bounds.certified import certified_gap_bound
from probprune.config import GapSpec, NetSpec, PruneSpec
from probprune.gap import sup_gap
from probprune.masks import prune
from probprune.nets import Net, from_module, from_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread, immune to a busy CPU

SCALE = float(os.environ.get("PROBPRUNE_PROPERTY_SCALE", "1"))
"""Multiplies the property tests' example counts (CI's slow job: 20 → thousands of cases)."""

# --------------------------------------------------------------------------- helpers


class ScaledLinear(nn.Linear):
    """A Linear subclass whose forward is not nn.Linear's (the issue's 18x violation)."""

    def forward(self, x: Tensor) -> Tensor:
        return 18.0 * super().forward(x)


class SameLinear(nn.Linear):
    """A Linear subclass with the very same forward: still refused (types are matched exactly)."""


class MyReLU(nn.ReLU):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) + 0.5


def fill(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Deterministic weights from a local generator (never the global RNG)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[1:].numel() if p.dim() > 1 else max(1, p.numel())
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale / math.sqrt(fan_in))
    return module


def snapshot(m: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[torch.dtype]]:
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    return sd, [x.training for x in m.modules()], [p.dtype for p in m.parameters()]


def assert_unchanged(m: nn.Module, before: tuple[dict[str, Tensor], list[bool], list[torch.dtype]]) -> None:
    sd, modes, dtypes = before
    now = m.state_dict()
    assert sorted(now) == sorted(sd)
    assert all(torch.equal(now[k], sd[k]) and now[k].dtype == sd[k].dtype for k in sd)
    assert [x.training for x in m.modules()] == modes
    assert [p.dtype for p in m.parameters()] == dtypes


def module_out(m: nn.Module, x: Tensor) -> Tensor:
    ev = copy.deepcopy(m).eval().double()
    with torch.no_grad():
        return cast(Tensor, ev(x.double()))


def module_gap_search(target: nn.Module, pruned: nn.Module, in_shape: tuple[int, ...], radius: float,
                      starts: Tensor | None, seed: int, n_points: int = 256, n_steps: int = 30) -> float:
    """Largest ``‖f(x) − F(x)‖`` found on the modules themselves: random points + projected ascent."""
    t = copy.deepcopy(target).eval().double()
    p = copy.deepcopy(pruned).eval().double()
    for m in (t, p):
        for q in m.parameters():
            q.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    d = math.prod(in_shape)
    z = torch.randn(n_points, d, generator=gen, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    r = radius * torch.rand(n_points, 1, generator=gen, dtype=torch.float64) ** (1.0 / d)
    pts = torch.cat([z * radius, z * r])  # sphere and ball
    if starts is not None:
        pts = torch.cat([pts, starts.reshape(-1, d).double()])

    def project(x: Tensor) -> Tensor:
        return x * (radius / x.norm(dim=1, keepdim=True).clamp_min(radius))

    def gaps(x: Tensor) -> Tensor:
        xs = x.reshape(-1, *in_shape)
        return cast(Tensor, p(xs) - t(xs)).reshape(x.shape[0], -1).norm(dim=1)

    pts = project(pts)
    with torch.no_grad():
        vals = gaps(pts)
    best = float(vals.max())
    x = pts[vals.argsort(descending=True)[:4]].clone()
    step = 0.1 * radius
    for _ in range(n_steps):
        x.requires_grad_(True)
        g = torch.autograd.grad(gaps(x).sum(), x)[0]
        with torch.no_grad():
            x = project(x + step * g / g.norm(dim=1, keepdim=True).clamp_min(1e-300))
            best = max(best, float(gaps(x).max()))
        step *= 0.9
    return best


# --------------------------------------------------------------------------- the examples


def test_two_linear_layers_in_a_row_refused_and_misread_would_be_false() -> None:
    # issue 13: Linear, Tanh, Linear, Linear with weights scaled up was certified as Tanh after
    # every hidden layer (bound 2.2 while the module's real gap is >= 10.8)
    seq = fill(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Linear(16, 2)), 0, 8.0)
    with pytest.raises(ProbPruneError, match=r"layer 2 \(Linear\): has no activation after it while layer 1 "
                                             r"\(Tanh\) applies one"):
        from_module(seq)
    # why it must be refused: the old reading (tanh after both hidden layers) is a different
    # network, and its certified bound is below the gap of the user's own pruned module
    ws = [cast(nn.Linear, seq[i]) for i in (0, 2, 3)]
    misread = Net.from_weights(NetSpec(widths=(4, 16, 16, 2), activation="tanh", bias=True),
                               [m.weight.detach() for m in ws], [m.bias.detach() for m in ws])
    pruned_mod = prune(seq, PruneSpec(prune_fraction=0.9)).model
    pws = [cast(nn.Linear, pruned_mod[i]) for i in (0, 2, 3)]
    pruned_misread = misread.with_weights([m.weight.detach() for m in pws])
    wrong = float(certified_gap_bound(misread, pruned_misread, radius=1.0).value)
    real = module_gap_search(seq, pruned_mod, (4,), 1.0, None, 0)
    assert real > 2.0 * wrong  # the old "certificate" (≈ 65.6) was false for the user's model (gap ≥ 158)


def test_linear_linear_sigmoid_refused() -> None:
    seq = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 2))
    with pytest.raises(ProbPruneError, match=r"layer 0 \(Linear\): has no activation after it while layer 2 "
                                             r"\(Sigmoid\) applies one"):
        from_module(seq)


def test_activation_after_output_refused() -> None:
    seq = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2), nn.ReLU())
    with pytest.raises(ProbPruneError, match=r"layer 3 \(ReLU\): is an activation after the output layer "
                                             r"layer 2 \(Linear\)"):
        from_module(seq)


@pytest.mark.parametrize("cls", [ScaledLinear, SameLinear])
def test_linear_subclass_refused(cls: type[nn.Linear]) -> None:
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), cls(8, 2))
    with pytest.raises(ProbPruneError, match=rf"inside layer 2 \({cls.__name__}\)\): function not supported.*"
                                             rf"{cls.__name__} is a subclass of nn.Linear; layers are read by exact "
                                             "type"):
        from_module(seq)


@pytest.mark.parametrize(("seq", "shape", "fragment"), [
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.ReLU(), nn.Linear(8, 2)), None,
     r"layer 2 \(ReLU\): an activation after layer 1 \(ReLU\)"),
    (nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), None, r"layer 0 \(ReLU\): comes before the first linear/conv node"),
    (nn.Sequential(nn.Linear(4, 8), MyReLU(), nn.Linear(8, 2)), None,
     r"inside layer 1 \(MyReLU, a subclass of nn.ReLU read through its own forward\)\): an affine map after"),
    (nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), None,
     r"layer 1 \(GELU\): activation gelu is not one the chain Net applies.*graph_from_module"),
    (nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(2.0), nn.Linear(8, 2)), None,
     r"layer 1 \(LeakyReLU\): leaky_relu slope 2.0 is outside \[0, 1\]"),
    (nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(-0.1), nn.Linear(8, 2)), None,
     r"leaky_relu slope -0.1 is outside \[0, 1\]"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2)), None,
     "mixed activations"),
    (nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.1), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2)),
     None, "mixed activations"),
    (nn.Sequential(nn.Linear(4, 8), nn.Identity(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), None,
     r"layer 0 \(Linear\): has no activation after it while layer 3 \(ReLU\) applies one"),
    (nn.Sequential(nn.Linear(4, 8), nn.MaxPool2d(2), nn.Linear(8, 2)), None,
     r"inputs of shape \(1, 4\): layer 1 \(MaxPool2d\) cannot run"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Dropout(0.1), nn.Sigmoid()), None,
     "after the output layer"),
    (nn.Sequential(nn.Flatten(start_dim=0), nn.Linear(4, 2)), None, "start_dim=0"),
    (nn.Sequential(nn.Linear(4, 2)), (1, 2, 2), r"inputs of shape \(1, 1, 2, 2\): layer 0 \(Linear\) cannot run"),
    # a Linear on the last dim of a (C, H, W) input is not an FCN on the flattened input
    (nn.Sequential(nn.Linear(2, 2)), (1, 2, 2), r"layer 0 \(Linear\): a linear node on input shape \(1, 2, 2\); "
     "flatten the input first"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(6, 2)), (1, 8, 8),
     r"layer 2 \(Linear\): a linear node after the conv layer 0 \(Conv2d\) without a flatten"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2)), (1, 8, 8),
     r"layer 2 \(ReLU\): an activation after layer 1 \(MaxPool2d\)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(1), nn.Flatten(),
                   nn.Linear(18, 2)), (1, 8, 8), r"layer 3 \(MaxPool2d\): a second max-pool"),
    # old code read kernel_size[0] only: a (2, 3) pool was certified as a 2x2 one
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d((2, 3)), nn.Flatten(), nn.Linear(12, 2)),
     (1, 8, 8), r"layer 2 \(MaxPool2d\): kernel=\(2, 3\) differs between the axes"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(50, 2)),
     (1, 8, 8), r"layer 2 \(MaxPool2d\): kernel=\(2, 2\), stride=\(1, 1\).*stride = kernel"),
    # a conv after a linear layer: the feature vector unflattened into a map
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 64), nn.ReLU(),
                   nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(64, 2)), (1, 8, 8),
     r"layer 5 \(Unflatten\): reshape \(64,\) → \(1, 8, 8\)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2), nn.ReLU(),
                   nn.Conv2d(1, 1, 1), nn.Linear(2, 2)), (1, 8, 8), r"layer 5 \(Conv2d\) cannot run"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect", padding=1), nn.ReLU(), nn.Flatten(),
                   nn.Linear(128, 2)), (1, 8, 8), "padding_mode='reflect'"),
    (nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 8, 8), r"layer 0 \(Conv2d\): the last weight layer is a conv"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(7, 2)), None,
     r"inputs of shape \(1, 4\): layer 2 \(Linear\) cannot run: mat1 and mat2.*in_features"),
    (nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.ReLU(), nn.Linear(8, 2))), None,
     r"layer 1.0 \(ReLU\): an activation after layer 0.1 \(ReLU\)"),
    # what the fx reader reads and a chain cannot express: refused naming the layer, pointing to the graph path
    (nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)), None,
     r"call_module 1: LayerNorm\): LayerNorm is not supported"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.AvgPool1d(2), nn.Linear(4, 2)), None,
     r"layer 2 \(AvgPool1d\): op avgpool is not part of a chain Net.*graph_from_module\(module, example_input\)"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2)), None,
     r"layer 2 \(BatchNorm1d\) is in train mode; BatchNorm in train mode normalises by the batch's own statistics"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)), (1, 8, 8),
     r"layer 0 \(Conv2d\): dilation=\(2, 2\)"),
])
def test_refused_structures(seq: nn.Sequential, shape: tuple[int, int, int] | None, fragment: str) -> None:
    before = snapshot(seq)
    with pytest.raises(ProbPruneError, match=fragment):
        from_module(seq, input_shape=shape)
    assert_unchanged(seq, before)


def test_hooks_overrides_and_wrappers_refused() -> None:
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    handle = seq[2].register_forward_hook(lambda m, i, o: o * 3)
    with pytest.raises(ProbPruneError, match=r"layer 2 \(Linear\) has forward hooks"):
        from_module(seq)
    handle.remove()
    handle = seq.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    with pytest.raises(ProbPruneError, match=r"the module \(Sequential\) has forward hooks"):
        from_module(seq)
    handle.remove()
    seq[0].forward = lambda x: torch.zeros(x.shape[0], 8)  # type: ignore[method-assign]
    with pytest.raises(ProbPruneError, match=r"layer 0 \(Linear\) has an overridden forward"):
        from_module(seq)
    del seq[0].forward
    assert from_module(seq).spec == NetSpec(widths=(4, 8, 2), bias=True)
    # torch.nn.utils.prune re-parametrises through a forward pre-hook
    pr = copy.deepcopy(seq)
    torch_prune.l1_unstructured(pr[0], "weight", amount=0.5)
    with pytest.raises(ProbPruneError, match=r"layer 0 \(Linear\) has forward hooks.*torch.nn.utils.prune.remove"):
        from_module(pr)
    torch_prune.remove(pr[0], "weight")
    assert from_module(pr).spec == NetSpec(widths=(4, 8, 2), bias=True)
    # parametrisations swap in a generated subclass (a leaf for torch.fx): refused by exact type
    par = copy.deepcopy(seq)
    parametrize.register_parametrization(par[2], "weight", _Double())
    with pytest.raises(ProbPruneError, match=r"call_module 2: ParametrizedLinear\): module type ParametrizedLinear "
                                             r"is not supported; ParametrizedLinear is a subclass of nn.Linear"):
        from_module(par)


def test_wrappers_are_traced_through_exactly() -> None:
    """What the walker refused and the fx reader reads exactly: a Sequential subclass with its own forward (traced
    through: the doubling is a scale folded into the layer), a bare layer (a one-layer stack)."""

    class MySeq(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
            return cast(Tensor, super().forward(x)) * 2

    seq = fill(MySeq(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), 5)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    net = from_module(seq)
    assert net.spec == NetSpec(widths=(4, 6, 2), activation="tanh", bias=True)
    assert net.dtype == torch.float32  # 2·W and 2·b are float32 numbers: the Net keeps the module's dtype
    assert torch.equal(net.weights[1], 2 * seq[2].weight.detach())
    assert torch.allclose(cast(Tensor, net.to(dtype=torch.float64)(x)), module_out(seq, x), rtol=1e-12, atol=1e-12)
    bare = fill(nn.Linear(4, 2), 6)
    one = from_module(bare)
    assert one.spec.widths == (4, 2) and one.spec.bias and torch.equal(one.weights[0], bare.weight.detach())
    assert torch.allclose(cast(Tensor, one.to(dtype=torch.float64)(x)), module_out(bare, x), rtol=1e-12, atol=1e-12)


class _Double(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return 2 * w


def test_edited_conv_attributes_are_read_as_the_forward_applies_them() -> None:
    """The walker refused conv attributes edited after construction; the fx reader reads what the forward applies
    (the kernel from the weight, the circular pad from the list fixed at construction): exact."""
    def cnn() -> nn.Sequential:
        return fill(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(128, 2)), 3)

    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    plain = from_module(cnn(), input_shape=(1, 8, 8))
    assert plain.spec.to_arch() == "cnn:1x8x8,c2k3r,2"
    for attr, value in (("padding", (0, 0)), ("kernel_size", (1, 1))):
        seq = cnn()
        setattr(seq[0], attr, value)
        net = from_module(seq, input_shape=(1, 8, 8))
        assert net.spec == plain.spec, attr
        assert torch.allclose(cast(Tensor, net.to(dtype=torch.float64)(x)), module_out(seq, x), rtol=1e-12,
                              atol=1e-12)


def test_numerical_check_names_the_first_disagreeing_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    # the second defence, on its own: make the structural reader misread Tanh as Sigmoid
    from probprune.nets import fx
    from probprune.nets.graph import activation

    seq = fill(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)), 1)
    assert from_module(seq).spec.activation == "tanh"
    monkeypatch.setitem(fx._MODULE_ACTS, nn.Tanh, lambda m: activation("sigmoid"))
    with pytest.raises(ProbPruneError, match=r"from_module: the graph differs from the module at node '1' \(act, "
                                             r"fx node _1\)"):
        from_module(seq)
    monkeypatch.undo()
    # a global forward hook changes every module's output: refused by structure, and (with that
    # check switched off) by the numbers, which name the first layer it touches
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: o + 1e-3 if isinstance(m, nn.Linear) and m.out_features == 4 else o)
    try:
        with pytest.raises(ProbPruneError, match="global forward hook"):
            from_module(seq)
        monkeypatch.setattr(fx, "_global_hooks_present", lambda: False)
        with pytest.raises(ProbPruneError, match=r"differs from the module at node '2' \(linear, fx node _2\)"):
            from_module(seq)
    finally:
        handle.remove()
        monkeypatch.undo()
    assert from_module(seq).spec.activation == "tanh"


def test_compiled_net_is_checked_against_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last defence: a compiler that misreads the chain (here: ReLU compiled as Tanh) is caught by the float64
    check of the compiled Net against the module."""
    from probprune.nets import chain

    seq = fill(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), 2)
    real = chain._activation_of
    monkeypatch.setattr(chain, "_activation_of", lambda layers: ("tanh", 0.01) if real(layers)[0] == "relu"
                        else real(layers))
    with pytest.raises(ProbPruneError, match="from_module: the compiled network's output differs from the module's"):
        from_module(seq)


def test_check_is_deterministic_and_uses_no_global_rng() -> None:
    seq = fill(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), 2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    from_module(seq)
    assert torch.equal(torch.get_rng_state(), state)
    assert nets._CHECK_POINTS >= 200  # "a few hundred random inputs"


def test_accepted_forms_are_exact_and_module_untouched() -> None:
    cases: list[tuple[nn.Sequential, tuple[int, int, int] | None, str, str]] = [
        # identity-activation nets: consecutive linear maps are exact as separate layers
        (nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(3, 2)), None, "fcn:4,6,3,2", "identity"),
        (nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 2)), None, "fcn:4,6,2", "identity"),
        # Dropout in training mode: the eval-mode function is converted
        (nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 6), nn.Dropout(0.3), nn.Tanh(), nn.Dropout(0.2),
                       nn.Linear(6, 2), nn.Dropout(0.1)), None, "fcn:4,6,2", "tanh"),
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.LeakyReLU(0.3), nn.Linear(6, 2)), (3, 2, 2),
         "fcn:12,6,2", "leaky_relu"),
        # nested Sequentials are flattened (a Sequential is the composition of its children)
        (nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.Sigmoid()), nn.Sequential(nn.Sequential(nn.Linear(6, 5)),
                                                                                 nn.Sigmoid()), nn.Linear(5, 2)),
         None, "fcn:4,6,5,2", "sigmoid"),
        (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2, padding=0), nn.ReLU(), nn.Flatten(),
                       nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 2)), (2, 10, 10),
         "cnn:2x10x10,c3k3rm2,c4k3s2p0,5,2", "relu"),
    ]
    for i, (seq, shape, arch, act) in enumerate(cases):
        fill(seq, 10 + i, 2.0)
        seq.train()
        before = snapshot(seq)
        net = from_module(seq, input_shape=shape)
        assert_unchanged(seq, before)
        assert net.spec.to_arch() == arch and net.spec.activation == act
        assert net.dtype == torch.float32 and net.n_trials is None
        in_shape = shape if shape is not None else (net.spec.input_dim,)
        x = torch.randn(20, *in_shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 3
        ours = cast(Tensor, net.to(dtype=torch.float64)(x if net.spec.kind == "cnn" else x.reshape(20, -1)))
        assert torch.allclose(ours, module_out(seq, x), rtol=1e-12, atol=1e-12)
    assert from_module(cases[3][0], (3, 2, 2)).spec.negative_slope == 0.3


def test_forms_the_walker_refused_are_now_read_exactly() -> None:
    """Exact forms the walker refused and the one reader accepts: each Net equals the module (float64)."""
    cases: list[tuple[nn.Module, tuple[int, ...] | None, str, torch.dtype]] = [
        # a Flatten on a vector is the identity
        (nn.Sequential(nn.Linear(4, 8), nn.Flatten(), nn.ReLU(), nn.Linear(8, 2)), None, "fcn:4,8,2", torch.float32),
        # mixed biases: a zero bias is exact (z + 0 = z)
        (nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 2)), None, "fcn:4,8,2", torch.float32),
        # BatchNorm (eval) folded into the layer before it, in float64: the Net is float64
        (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval(), None, "fcn:4,8,2",
         torch.float64),
        (nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                       nn.Linear(27, 2)).eval(), (1, 8, 8), "cnn:1x8x8,c3k3p0m2,2", torch.float64),
    ]
    for i, (mod, shape, arch, dtype) in enumerate(cases):
        fill(mod, 20 + i)
        for m in mod.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
                    m.running_mean.uniform_(-1.0, 1.0)  # type: ignore[union-attr]
        before = snapshot(mod)
        net = from_module(mod, input_shape=shape)
        assert_unchanged(mod, before)
        assert net.spec.to_arch() == arch and net.dtype == dtype, (i, net.spec.to_arch(), net.dtype)
        in_shape = shape if shape is not None else (4,)
        x = torch.randn(30, *in_shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 3
        ours = cast(Tensor, net.to(dtype=torch.float64)(x))
        assert torch.allclose(ours, module_out(mod, x), rtol=1e-12, atol=1e-12), i


def test_input_shape_inferred_or_refused() -> None:
    assert from_module(nn.Sequential(nn.Flatten(), nn.Linear(12, 2))).spec.widths == (12, 2)
    with pytest.raises(ProbPruneError, match=r"layer 0 \(Conv2d\), is a convolution: a CNN needs input_shape"):
        from_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))
    with pytest.raises(ProbPruneError, match=r"input_shape=\(1, 0, 3\): expected positive integers"):
        from_module(nn.Sequential(nn.Linear(3, 2)), input_shape=(1, 0, 3))
    with pytest.raises(ProbPruneError, match="no prunable layer"):
        from_module(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(ProbPruneError, match="expected an nn.Module, got dict"):
        from_module({"0.weight": torch.ones(2, 2)})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- weight dtypes


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_non_real_weights_refused(dtype: torch.dtype) -> None:
    spec = NetSpec(widths=(3, 4, 2))
    w = [torch.ones(4, 3, dtype=dtype), torch.ones(2, 4, dtype=dtype)]
    with pytest.raises(ProbPruneError, match=rf"0.weight: dtype {dtype} is not supported: .*real floating point"):
        Net.from_weights(spec, w)
    with pytest.raises(ProbPruneError, match=rf"0.weight: dtype {dtype}"):
        from_state_dict(spec, {"0.weight": w[0], "2.weight": w[1]})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_refused(dtype: torch.dtype) -> None:
    spec = NetSpec(widths=(3, 4, 2), bias=True)
    w = [torch.ones(4, 3, dtype=dtype), torch.ones(2, 4, dtype=dtype)]
    b = [torch.ones(4, dtype=dtype), torch.ones(2, dtype=dtype)]
    with pytest.raises(ProbPruneError, match=rf"0.weight: dtype {dtype} is not supported.*model.float\(\)"):
        Net.from_weights(spec, w, b)
    with pytest.raises(ProbPruneError, match=rf"2.bias: dtype {dtype} is not supported"):
        Net.from_weights(spec, [x.float() for x in w], [b[0].float(), b[1]])
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(dtype)
    with pytest.raises(ProbPruneError, match=rf"layer 0 \(Linear\) weight: dtype {dtype}.*model.float\(\)"):
        from_module(seq)
    assert all(p.dtype == dtype for p in seq.parameters())
    assert from_module(seq.float()).dtype == torch.float32


def test_mixed_dtypes_refused_and_float64_kept() -> None:
    spec = NetSpec(widths=(3, 4, 2), bias=True)
    w32 = [torch.ones(4, 3), torch.ones(2, 4)]
    b32 = [torch.ones(4), torch.ones(2)]
    with pytest.raises(ProbPruneError, match="2.weight: dtype torch.float64 differs from 0.weight's torch.float32"):
        Net.from_weights(spec, [w32[0], w32[1].double()], b32)
    with pytest.raises(ProbPruneError, match="0.bias: dtype torch.float64 differs from 0.weight's torch.float32"):
        Net.from_weights(spec, w32, [b32[0].double(), b32[1]])
    with pytest.raises(ProbPruneError, match="0.bias: expected a tensor or None, got list"):
        Net.from_weights(spec, w32, [[1.0] * 4, b32[1]])  # type: ignore[list-item]
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    assert from_module(seq).dtype == torch.float64
    seq[2].double().weight.data = seq[2].weight.data.float()
    with pytest.raises(ProbPruneError, match="dtype"):
        from_module(seq)


def test_meta_sparse_and_non_finite_weights_refused() -> None:
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to("meta")
    with pytest.raises(ProbPruneError, match=r"layer 0 \(Linear\) weight is on the meta device"):
        from_module(seq)
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        seq[2].bias[1] = float("nan")
    with pytest.raises(ProbPruneError, match=r"layer 2 \(Linear\) bias contains non-finite values"):
        from_module(seq)
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seq[0].weight = nn.Parameter(seq[0].weight.detach().to_sparse())
    with pytest.raises(ProbPruneError, match=r"layer 0 \(Linear\) weight has layout torch.sparse_coo"):
        from_module(seq)
    with pytest.raises(ProbPruneError, match=r"layer 0 \(LazyLinear\) weight is uninitialised"):
        from_module(nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2)))


# --------------------------------------------------------------------------- properties


ACTS = ("relu", "leaky_relu", "tanh", "sigmoid")
UNSUPPORTED = ("gelu", "batchnorm", "sub_linear", "same_linear", "sub_relu", "softplus")


def _act(name: str, slope: float) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[name]() if name != "leaky_relu" \
        else nn.LeakyReLU(slope)


Token = tuple[Any, ...]


@st.composite
def valid_tokens(draw: st.DrawFn) -> tuple[str, tuple[int, ...], list[Token]]:
    """A layer list the Net can represent (with Identity/Dropout sprinkled anywhere)."""
    act = draw(st.sampled_from((*ACTS, "none")))
    slope = draw(st.floats(0.0, 1.0))
    toks: list[Token] = []
    if draw(st.booleans()):
        c, h = draw(st.integers(1, 2)), draw(st.integers(3, 6))
        in_shape: tuple[int, ...] = (c, h, h)
        kind = "cnn"
        size = h
        for _ in range(draw(st.integers(1, 2))):
            k = draw(st.integers(1, 3))
            pad = draw(st.integers(0, 1))
            stride = draw(st.integers(1, 2))
            out = (size + 2 * pad - k) // stride + 1
            if out < 1:
                continue
            toks.append(("conv", draw(st.integers(1, 3)), k, stride, pad, draw(st.sampled_from(("zeros", "circular")))))
            size = out
            if act != "none":
                toks.append(("act", act, slope))
            if size >= 2 and draw(st.booleans()):
                toks.append(("pool", 2))
                size //= 2
        if not toks:
            toks.append(("conv", 1, 1, 1, 0, "zeros"))
            if act != "none":
                toks.append(("act", act, slope))
        toks.append(("flatten",))
        n_head = draw(st.integers(1, 2))
    else:
        in_shape = (draw(st.integers(1, 5)),)
        kind = "fcn"
        if draw(st.booleans()):
            toks.append(("flatten",))
        n_head = draw(st.integers(1, 4))
    for i in range(n_head):
        toks.append(("linear", draw(st.integers(1, 6))))
        if i < n_head - 1 and act != "none":
            toks.append(("act", act, slope))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(toks)))
        toks.insert(pos, draw(st.sampled_from((("identity",), ("dropout", 0.0), ("dropout", 0.5)))))
    return kind, in_shape, toks


any_token = st.one_of(
    st.tuples(st.just("linear"), st.integers(1, 6)),
    st.tuples(st.just("conv"), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
              st.sampled_from(("zeros", "circular"))),
    st.tuples(st.just("act"), st.sampled_from(ACTS), st.floats(0.0, 1.0)),
    st.tuples(st.just("pool"), st.integers(1, 3)),
    st.just(("flatten",)), st.just(("identity",)), st.just(("dropout", 0.5)),
    st.tuples(st.sampled_from(UNSUPPORTED)),
)


@st.composite
def any_tokens(draw: st.DrawFn) -> tuple[str, tuple[int, ...], list[Token]]:
    """A valid list mutated (insert / delete / swap / replace), or a random soup of layers."""
    kind, in_shape, toks = draw(valid_tokens())
    if draw(st.integers(0, 3)) == 0:
        toks = draw(st.lists(any_token, min_size=1, max_size=8))
    else:
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(("insert", "delete", "swap", "replace")))
            pos = draw(st.integers(0, max(0, len(toks) - 1)))
            if op == "insert":
                toks.insert(pos, draw(any_token))
            elif op == "delete" and len(toks) > 1:
                del toks[pos]
            elif op == "swap" and pos + 1 < len(toks):
                toks[pos], toks[pos + 1] = toks[pos + 1], toks[pos]
            elif op == "replace":
                toks[pos] = draw(any_token)
    return kind, in_shape, toks


def build(in_shape: tuple[int, ...], toks: list[Token], bias: list[bool], nest: list[int]) -> nn.Sequential:
    """The module a user would write for ``toks`` (tokens that cannot run at this point are skipped)."""
    shape = in_shape
    mods: list[nn.Module] = []
    n_weight = 0
    for t in toks:
        name = t[0]
        m: nn.Module
        if name in ("linear", "sub_linear", "same_linear"):
            out = t[1] if name == "linear" else 3
            cls = {"linear": nn.Linear, "sub_linear": ScaledLinear, "same_linear": SameLinear}[name]
            m = cls(shape[-1], out, bias=bias[n_weight % len(bias)])
            n_weight += 1
            shape = (*shape[:-1], out)
        elif name == "conv":
            if len(shape) != 3:
                continue
            _, c_out, k, stride, pad, mode = t
            hw = [(s + 2 * pad - k) // stride + 1 for s in shape[1:]]  # not square after a Linear on the last dim
            if min(hw) < 1 or (mode == "circular" and pad > min(shape[1:])):
                continue
            m = nn.Conv2d(shape[0], c_out, k, stride=stride, padding=pad, padding_mode=mode,
                          bias=bias[n_weight % len(bias)])
            n_weight += 1
            shape = (c_out, hw[0], hw[1])
        elif name == "pool":
            if len(shape) != 3 or min(shape[1:]) < t[1]:
                continue
            m = nn.MaxPool2d(t[1])
            shape = (shape[0], shape[1] // t[1], shape[2] // t[1])
        elif name == "flatten":
            m = nn.Flatten()
            shape = (math.prod(shape),)
        elif name == "act":
            m = _act(t[1], t[2])
        elif name == "identity":
            m = nn.Identity()
        elif name == "dropout":
            m = nn.Dropout(t[1])
        elif name == "gelu":
            m = nn.GELU()
        elif name == "softplus":
            m = nn.Softplus()
        elif name == "sub_relu":
            m = MyReLU()
        elif name == "batchnorm":
            if len(shape) != 1:
                continue
            m = nn.BatchNorm1d(shape[0])
        else:
            raise AssertionError(name)
        mods.append(m)
    if len(mods) >= 2 and len(nest) == 2:  # wrap a contiguous run into a nested Sequential
        a = nest[0] % len(mods)
        b = a + 1 + nest[1] % (len(mods) - a)
        mods = [*mods[:a], nn.Sequential(*mods[a:b]), *mods[b:]]
    return nn.Sequential(*mods)


def _weight_count(seq: nn.Module) -> int:
    return sum(type(m) in (nn.Linear, nn.Conv2d) for m in seq.modules())


def check_refused_or_exact(kind: str, in_shape: tuple[int, ...], seq: nn.Sequential, seed: int,
                           scale: float, q: float) -> bool:
    """The property: refused, or exact and the certified bound ≥ the gap found on the modules.

    Returns whether the module was accepted.
    """
    fill(seq, seed, scale)
    seq.double()
    seq.train(bool(seed % 2))
    shape = cast(tuple[int, int, int], in_shape) if kind == "cnn" else None
    before = snapshot(seq)
    try:
        net = from_module(seq, input_shape=shape)
    except ProbPruneError:
        assert_unchanged(seq, before)
        return False
    assert_unchanged(seq, before)
    assert net.dtype == torch.float64
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(64, *in_shape, generator=gen, dtype=torch.float64)
    x = x * (torch.rand(64, generator=gen, dtype=torch.float64) * 5).reshape(-1, *[1] * len(in_shape))
    net_in = x if net.spec.kind == "cnn" else x.reshape(64, -1)
    ref = module_out(seq, x)
    ours = cast(Tensor, net(net_in))
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10 * (1 + float(ref.abs().max())))
    # prune the user's module, convert the pruned copy, certify, and search the gap on the modules
    if seed % 3 == 0:
        pruned_mod = prune(seq, PruneSpec(method="random", p=q, rescale=bool(seed % 2)),
                           generator=torch.Generator().manual_seed(seed))
    else:
        pruned_mod = prune(seq, PruneSpec(prune_fraction=q))
    pm = cast(nn.Sequential, pruned_mod.model)
    pruned = from_module(pm, input_shape=shape)
    radius = 1.0
    bound = float(certified_gap_bound(net, pruned, radius=radius).value)
    est = sup_gap(net, pruned, GapSpec(radius=radius, n_points=64, n_restarts=2, n_steps=10),
                  torch.Generator().manual_seed(seed))
    found = module_gap_search(seq, pm, in_shape, radius, est.x.reshape(1, -1), seed, n_points=32, n_steps=10)
    # the found gap is a float64 forward pass, exact up to float64 rounding of the module itself
    # (≈ 1e-15 relative here): that, and only that, is the slack
    assert found <= bound * (1 + 1e-12) + 1e-300, (found, bound)
    return True


@settings(max_examples=int(100 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tokens(), st.sampled_from(([True], [False])), st.lists(st.integers(0, 20), max_size=2),
       st.integers(0, 10_000), st.floats(0.3, 4.0), st.floats(0.0, 0.95))
def test_property_valid_structures_accepted_and_sound(
        case: tuple[str, tuple[int, ...], list[Token]], bias: list[bool], nest: list[int], seed: int,
        scale: float, q: float) -> None:
    kind, in_shape, toks = case
    seq = build(in_shape, toks, bias, nest)
    # every list the Net can represent is accepted (so the other property cannot pass by refusing all)
    assert check_refused_or_exact(kind, in_shape, seq, seed, scale, q)


@settings(max_examples=int(200 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_tokens(), st.lists(st.booleans(), min_size=1, max_size=3), st.lists(st.integers(0, 20), max_size=2),
       st.integers(0, 10_000), st.floats(0.3, 4.0), st.floats(0.0, 0.95))
def test_property_any_layer_list_refused_or_exact(
        case: tuple[str, tuple[int, ...], list[Token]], bias: list[bool], nest: list[int], seed: int,
        scale: float, q: float) -> None:
    kind, in_shape, toks = case
    seq = build(in_shape, toks, bias, nest)
    if _weight_count(seq) == 0:
        with pytest.raises(ProbPruneError):
            from_module(seq, input_shape=cast(tuple[int, int, int], in_shape) if kind == "cnn" else None)
        event("no weight layer")
        return
    event("accepted" if check_refused_or_exact(kind, in_shape, seq, seed, scale, q) else "refused")
