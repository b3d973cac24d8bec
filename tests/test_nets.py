"""Nets: adapters both ways, ensembles, activations, bad shapes."""

import pytest
import torch
from torch import nn

from probprune import LawSpec, NetSpec, ProbPruneError, sample_net
from probprune.config import ExecutionPolicy, parse_arch
from probprune.nets import Activation, from_module, from_state_dict, stack, to_module
from probprune.rng import make_generator
from probprune.runner.execution import execution, policy_from_env
from reference import check_batched_equals_reference, forward_one

ARCHS = [
    "fcn:5,17,9,3",
    "fcn:4,2",
    "cnn:1x8x8,c4k3m2,c6k3p0,7",
    "cnn:2x9x9,c3k3s2r,c5k1,6,4",
    "cnn:3x7x7,c4k5p2r,3",
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("bias", [False, True])
def test_to_module_identical_outputs_and_round_trip(arch: str, act: str, bias: bool) -> None:
    spec = parse_arch(arch, activation=act, bias=bias)
    net = sample_net(spec, LawSpec(), make_generator(0), dtype=torch.float64)
    mod = to_module(net)
    x = torch.randn(6, *((spec.input_dim,) if spec.kind == "fcn" else spec.input_shape), dtype=torch.float64)
    assert torch.allclose(mod(x), net(x), atol=1e-12)
    assert sorted(mod.state_dict()) == sorted(net.state_dict())
    back = from_module(mod, input_shape=spec.input_shape)
    if act != "identity" and spec.n_layers > 1:  # a one-layer net has no hidden activation to read back
        assert back.spec == spec
    assert torch.allclose(back(x), net(x), atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_ensemble_forward_equals_members(arch: str) -> None:
    spec = parse_arch(arch, bias=True)
    ens = sample_net(spec, LawSpec(), [make_generator(s) for s in range(3)], dtype=torch.float64)
    shape = (spec.input_dim,) if spec.kind == "fcn" else spec.input_shape
    x = torch.randn(3, 5, *shape, dtype=torch.float64)
    shared = torch.randn(5, *shape, dtype=torch.float64)
    # the batched ensemble forward vs member k run alone, by the library and by the plain layer loop
    # (torch.allclose's tolerances: atol 1e-12, rtol 1e-5)
    check_batched_equals_reference(lambda xin: ens(xin), lambda xin, k: ens.member(k)(xin[k]), [x],
                                   atol=1e-12, rtol=1e-5)
    check_batched_equals_reference(lambda xin: ens(xin), lambda xin, k: forward_one(ens.member(k), xin[k]), [x],
                                   atol=1e-12, rtol=1e-5)
    check_batched_equals_reference(lambda xin: ens(xin), lambda xin, k: ens.member(k)(xin), [shared],
                                   atol=1e-12, rtol=1e-5, members=[2])
    again = stack([ens.member(k) for k in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(again.weights, ens.weights))


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "identity"])
@pytest.mark.parametrize("bias", [False, True])
def test_member_loop_forward_equals_batched(act: str, bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Net.forward runs ensembles member by member in row blocks outside autograd; the batched form
    # is the reference. 1300 points over a 1024-wide layer: three row blocks of at most 512 rows.
    spec = parse_arch("fcn:6,1024,40,3", activation=act, bias=bias)
    ens = sample_net(spec, LawSpec(), [make_generator(s) for s in range(3)], dtype=torch.float64)
    shared = torch.randn(1300, 6, dtype=torch.float64)
    per = torch.randn(3, 1300, 6, dtype=torch.float64)
    members, batched = ExecutionPolicy(forward="members"), ExecutionPolicy(forward="batched")
    with torch.no_grad(), execution(ExecutionPolicy(threads=1)) as ex1:
        outs = {}
        for mode, pol in (("members", members), ("batched", batched)):
            outs[mode] = (ens(shared, policy=pol, workers=ex1.workers), ens(per, policy=pol, workers=ex1.workers))
    for a, b in zip(outs["members"], outs["batched"]):
        assert a.shape == b.shape == (3, 1300, 3)
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)
    # each row block is computed by one single-threaded worker: a member's outputs do not depend
    # on the ensemble size (how trials are chunked) or on the thread count
    sub = stack([ens.member(2), ens.member(0)])
    threads = torch.get_num_threads()
    with torch.no_grad():
        with execution(ExecutionPolicy(forward="members", threads=2)) as ex:
            two = sub(shared, policy=ex.policy, workers=ex.workers)
        with execution(ExecutionPolicy(forward="members", threads=1)) as ex:
            one = sub(shared, policy=ex.policy, workers=ex.workers)
    assert torch.get_num_threads() == threads
    assert torch.equal(two[0], outs["members"][0][2]) and torch.equal(two[1], outs["members"][0][0])
    assert torch.equal(one, two)
    # with autograd the batched form runs (and gradients flow)
    x = shared[:7].clone().requires_grad_(True)
    ens(x, policy=members).sum().backward()
    assert x.grad is not None and x.grad.shape == (7, 6)
    # the knob is read by the runner, once, into the policy; the core never reads the environment
    monkeypatch.setenv("PROBPRUNE_FORWARD", "fast")
    with pytest.raises(ProbPruneError, match="PROBPRUNE_FORWARD='fast'"):
        policy_from_env()
    with torch.no_grad():
        assert torch.equal(ens(shared, policy=members), ens(shared, policy=members, workers=None))
    with pytest.raises(ProbPruneError, match="execution.forward='fast'"):
        ExecutionPolicy(forward="fast")  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="trial dim 2"):
        ens(per[:2], policy=members)


def test_activation_constants() -> None:
    assert Activation("sigmoid").lipschitz == 0.25 and not Activation("sigmoid").zero_at_zero
    for name in ("relu", "leaky_relu", "tanh", "identity"):
        assert Activation(name).lipschitz == 1.0 and Activation(name).zero_at_zero
    # Lipschitz constants hold numerically
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    for name in ("relu", "leaky_relu", "tanh", "sigmoid", "identity"):
        a = Activation(name)
        slopes = (a(x[1:]) - a(x[:-1])).abs() / (x[1:] - x[:-1])
        assert float(slopes.max()) <= a.lipschitz + 1e-9
    with pytest.raises(ProbPruneError, match="softplus"):
        Activation("softplus")


def test_from_module_user_model_and_errors() -> None:
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    net = from_module(seq)
    assert net.spec == NetSpec(widths=(4, 8, 2), bias=True)
    with pytest.raises(ProbPruneError, match="no prunable layer"):
        from_module(nn.Sequential(nn.ReLU()))
    with pytest.raises(ProbPruneError, match="BatchNorm1d"):
        from_module(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))
    with pytest.raises(ProbPruneError, match="mixed activations"):
        from_module(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)))
    with pytest.raises(ProbPruneError, match="input_shape"):
        from_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))


def test_bad_architectures() -> None:
    with pytest.raises(ProbPruneError, match="net.widths"):
        parse_arch("fcn:4,0,2")
    with pytest.raises(ProbPruneError, match="net.widths"):
        parse_arch("fcn:4")
    with pytest.raises(ProbPruneError, match="arch"):
        parse_arch("rnn:4,2")
    with pytest.raises(ProbPruneError, match="arch"):
        parse_arch("fcn:4,x,2")
    with pytest.raises(ProbPruneError, match="empty"):
        parse_arch("cnn:1x4x4,c2k5p0,3")
    assert parse_arch("cnn:1x28x28,c6k5m2,c16k5p0m2,120,84,10").to_arch() == "cnn:1x28x28,c6k5m2,c16k5p0m2,120,84,10"


def test_from_state_dict_errors() -> None:
    spec = NetSpec(widths=(3, 4, 2))
    good = {"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(2, 4)}
    assert from_state_dict(spec, good).n_trials is None
    with pytest.raises(ProbPruneError, match="2.weight"):
        from_state_dict(spec, {"0.weight": torch.zeros(4, 3)})
    with pytest.raises(ProbPruneError, match="shape"):
        from_state_dict(spec, {"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(3, 4)})
    with pytest.raises(ProbPruneError, match="non-finite"):
        from_state_dict(spec, {"0.weight": torch.full((4, 3), float("inf")), "2.weight": torch.zeros(2, 4)})
    with pytest.raises(ProbPruneError, match="9.weight"):
        from_state_dict(spec, {**good, "9.weight": torch.zeros(1)})


def test_net_to_half_or_int_refused_naming_the_tensor() -> None:
    net = sample_net(parse_arch("fcn:3,4,2", bias=True), LawSpec(), make_generator(0))
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ProbPruneError, match=rf"0.weight: dtype {dtype} is not supported.*model.float\(\)"):
            net.to(dtype=dtype)
    with pytest.raises(ProbPruneError, match="0.weight: dtype torch.int32 is not supported"):
        net.to(dtype=torch.int32)
    assert net.to(dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ProbPruneError, match="0.weight: dtype torch.float16"):
        sample_net(parse_arch("fcn:3,4,2"), LawSpec(), make_generator(0), dtype=torch.float16)
