"""The differential bound on graphs: soundness on random DAGs (Hypothesis), agreement with the chain bound,
exact cases, batching, certified agreement never contradicted, bad input."""

from __future__ import annotations

import math
import re
from typing import Any, cast

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from probprune.bounds import signs
from probprune.bounds.differential import _gap_bound, differential_bound
from probprune.bounds.differential_graph import (
    graph_certified_agreement,
    graph_differential_bound,
    graph_gap_search,
)
from probprune.config import BallSpec, NetSpec, ProbPruneError
from probprune.nets import Net
from probprune.nets.graph import ACTIVATIONS, Graph, Node, activation

pytestmark = pytest.mark.usefixtures("one_thread")

_PARAMS = {"leaky_relu": (0.1,), "hardtanh": (-0.5, 0.7), "elu": (1.0,), "softplus": (1.0, 20.0)}


def _act(kind: str) -> object:
    return activation(kind, *_PARAMS.get(kind, ()))


def _chain_graph(ws: list[Tensor], bs: list[Tensor], act: str) -> Graph:
    nodes, prev = [], "input"
    for k, (w, b) in enumerate(zip(ws, bs)):
        nodes.append(Node(f"fc{k}", "linear", (prev,), params={"weight": w, "bias": b}))
        prev = f"fc{k}"
        if k < len(ws) - 1:
            nodes.append(Node(f"a{k}", "act", (prev,), attrs={"act": _act(act)}))
            prev = f"a{k}"
    return Graph(nodes, (ws[0].shape[1],))


def _chain_pair(seed: int, widths: tuple[int, ...], act: str) -> tuple[Net, Net, Graph, Graph]:
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=g, dtype=torch.float64) / math.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.randn(o, generator=g, dtype=torch.float64) * 0.3 for o in widths[1:]]
    wp = [w * (torch.rand(w.shape, generator=g) < 0.6) for w in ws]
    name = "leaky_relu" if act == "leaky_relu" else act
    spec = NetSpec(widths=widths, bias=True, activation=name, negative_slope=0.1)  # type: ignore[arg-type]
    return (Net.from_weights(spec, ws, bs), Net.from_weights(spec, wp, bs), _chain_graph(ws, bs, act),
            _chain_graph(wp, bs, act))


def _dag(seed: int, acts: tuple[str, str], residual: bool, cat: bool, pool: str, keep: float = 0.6
         ) -> tuple[Graph, Graph]:
    """conv → BN (affine) → act → [conv (+ residual)] → [cat with a 1×1 conv] → pool → act → flatten → linear."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    pad = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}
    one = {"stride": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1), "groups": 1}
    nodes = [Node("c1", "conv", ("input",), pad, {"weight": t(3, 2, 3, 3, scale=0.4), "bias": t(3, scale=0.2)}),
             Node("bn", "affine", ("c1",), {"param_dims": {"scale": 3, "shift": 3}},
                  {"scale": 1.0 + t(3, 1, 1, scale=0.2), "shift": t(3, 1, 1, scale=0.1)}),
             Node("a1", "act", ("bn",), {"act": _act(acts[0])})]
    last = "a1"
    if residual:
        nodes += [Node("c2", "conv", ("a1",), pad, {"weight": t(3, 3, 3, 3, scale=0.3), "bias": t(3, scale=0.1)}),
                  Node("sum", "add", ("c2", "a1"))]
        last = "sum"
    channels = 3
    if cat:
        nodes += [Node("c3", "conv", (last,), one, {"weight": t(2, 3, 1, 1, scale=0.5)}),
                  Node("cat", "cat", (last, "c3"), {"dim": 0})]
        last, channels = "cat", 5
    if pool == "max":
        nodes.append(Node("pool", "maxpool", (last,), {"dims": 2, "kernel": (2, 2), "stride": (2, 2),
                                                       "padding": (0, 0)}))
    elif pool == "avg":
        nodes.append(Node("pool", "avgpool", (last,), {"dims": 2, "kernel": (2, 2), "stride": (2, 2),
                                                       "padding": (0, 0), "count_include_pad": True}))
    else:
        nodes.append(Node("pool", "adaptive_avgpool", (last,), {"dims": 2, "output_size": (2, 2)}))
    nodes += [Node("a2", "act", ("pool",), {"act": _act(acts[1])}),
              Node("flat", "reshape", ("a2",), {"shape": (channels * 4,)}),
              Node("out", "linear", ("flat",), params={"weight": t(3, channels * 4, scale=0.4), "bias": t(3)})]
    target = Graph(nodes, (2, 4, 4))
    prunable = target.prunable()
    params = target.parameters()
    pruned = target.with_parameters({k: params[k] * (torch.rand(params[k].shape, generator=g) < keep)
                                     for k in prunable})
    return target, pruned


def _points(ball: BallSpec, centre: Tensor, n: int, g: torch.Generator) -> Tensor:
    """Random points (interior, boundary) inside ball ∩ box, float64 ``[n, d]``."""
    d = centre.shape[0]
    r = ball.radius * (1 - 1e-9)
    if ball.norm == "linf":
        u = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
        corners = torch.randint(0, 2, (n, d), generator=g).double() * 2 - 1
        pts = centre + r * torch.cat([u, corners])
    else:
        v = torch.randn(2 * n, d, generator=g, dtype=torch.float64)
        v = v / v.norm(dim=-1, keepdim=True)
        rad = torch.cat([torch.rand(n, 1, generator=g, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64)])
        pts = centre + r * rad * v
    if ball.box is not None:
        pts = pts.clamp(*ball.box)
        if ball.norm == "l2":
            v = pts - centre
            nrm = v.norm(dim=-1, keepdim=True)
            pts = centre + v * torch.where(nrm > r, r / nrm, torch.ones_like(nrm))
    return pts


def _diff_at(target: Graph, pruned: Graph, x: Tensor) -> Tensor:
    xs = x.reshape(x.shape[0], *target.input_shape)
    return (pruned(xs) - target(xs)).flatten(1)


def _gap_at(target: Graph, pruned: Graph, x: Tensor) -> Tensor:
    return _diff_at(target, pruned, x).norm(dim=1)


# ---------------------------------------------------------------------------------------- FC chains


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "identity"])
@pytest.mark.parametrize("ball", [BallSpec(radius=0.1, norm="linf"), BallSpec(radius=0.7, norm="l2"),
                                  BallSpec(radius=0.3, norm="linf", box=(-1.5, 1.5))], ids=["linf", "l2", "box"])
def test_chain_as_graph_equals_the_chain_bound_and_covers_the_found_gap(act: str, ball: BallSpec,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the rules coincide (linear = affine step, ReLU/LeakyReLU = the same joint relaxation, the first
    layer exact over the ball, on ℓ2 balls the sign relaxation of the first layer) the graph bound is the chain
    bound up to the rounding slack's bookkeeping — with the sign relaxation and without it."""
    target, pruned, gt, gp = _chain_pair(3, (6, 12, 10, 3), "relu" if act == "identity" else act)
    if act == "identity":
        spec = NetSpec(widths=(6, 12, 10, 3), bias=True, activation="identity")
        biases = [cast(Tensor, lay.bias) for lay in target.layers]
        target = Net.from_weights(spec, [lay.weight for lay in target.layers], biases)
        pruned = Net.from_weights(spec, [lay.weight for lay in pruned.layers], biases)
        gt = _chain_graph([lay.weight for lay in target.layers], biases, "relu")
        gt = Graph([n if n.op != "act" else Node(n.name, "identity", n.inputs) for n in gt.nodes], gt.input_shape)
        gp = gt.with_parameters({k: v for k, v in zip(
            gt.prunable(), [lay.weight for lay in pruned.layers])})
    centres = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).clamp(-1.2, 1.2)
    with_signs = differential_bound(target, pruned, ball, centres=centres).value
    assert torch.allclose(graph_differential_bound(gt, gp, ball, centres=centres).value, with_signs, rtol=1e-9,
                          atol=0.0)
    monkeypatch.setattr(signs, "usable", lambda *_: False)
    graph_b = graph_differential_bound(gt, gp, ball, centres=centres)
    chain_b = differential_bound(target, pruned, ball, centres=centres)
    if ball.norm == "l2" and act != "identity":
        assert bool((with_signs < chain_b.value).any()), (with_signs, chain_b.value)
    assert torch.allclose(graph_b.lower, chain_b.lower, rtol=1e-9, atol=1e-12)
    assert torch.allclose(graph_b.upper, chain_b.upper, rtol=1e-9, atol=1e-12)
    # both take the smaller of the per-coordinate norm combination and the chord bound on the squares
    per_coord = _gap_bound(chain_b.lower, chain_b.upper, ball, chain_b.centres, target.dtype, pruned.dtype).value
    graph = graph_b.value
    assert bool((graph <= per_coord * (1 + 1e-9)).all())
    assert torch.allclose(graph, chain_b.value, rtol=1e-9, atol=0.0), (graph, chain_b.value)
    found = graph_gap_search(gt, gp, ball, torch.Generator().manual_seed(0), centres=centres, n_restarts=6).value
    assert bool((graph >= found).all()), (graph, found)


# ---------------------------------------------------------------------------------------- random DAGs


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), acts=st.tuples(st.sampled_from(ACTIVATIONS), st.sampled_from(ACTIVATIONS)),
       residual=st.booleans(), cat=st.booleans(), pool=st.sampled_from(["max", "avg", "adaptive"]),
       norm=st.sampled_from(["l2", "linf"]), radius=st.sampled_from([0.01, 0.1, 0.5, 1.0]), box=st.booleans())
def test_random_dags_bound_every_found_gap(seed: int, acts: tuple[str, str], residual: bool, cat: bool, pool: str,
                                           norm: str, radius: float, box: bool) -> None:
    target, pruned = _dag(seed, acts, residual, cat, pool)
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(2, 32, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
    ball = BallSpec(radius=radius, norm=norm, box=(-1.0, 1.0) if box else None)  # type: ignore[arg-type]
    check_covers_every_found_gap(target, pruned, ball, centres, g)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), act=st.sampled_from(["relu", "leaky_relu"]), residual=st.booleans(),
       flat=st.booleans(), radius=st.sampled_from([0.05, 0.5, 2.0]), box=st.booleans(), at_zero=st.booleans())
def test_fully_connected_first_layers_on_l2_balls_with_the_sign_relaxation(
        seed: int, act: str, residual: bool, flat: bool, radius: float, box: bool, at_zero: bool) -> None:
    """[reshape →] linear → σ → linear → σ [+ the first σ's output] → linear on ℓ2 balls: the sign relaxation of the
    first layer acts (rows of the second and third layer reach the first σ alone) and every found gap is covered."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    nodes = [Node("flat", "reshape", ("input",), {"shape": (6,)})] if flat else []
    first_in = "flat" if flat else "input"
    nodes += [Node("fc0", "linear", (first_in,), params={"weight": t(10, 6, scale=0.5), "bias": t(10, scale=0.2)}),
              Node("a0", "act", ("fc0",), {"act": _act(act)}),
              Node("fc1", "linear", ("a0",), params={"weight": t(10, 10, scale=0.4), "bias": t(10, scale=0.2)}),
              Node("a1", "act", ("fc1",), {"act": _act(act)})]
    last = "a1"
    if residual:
        nodes.append(Node("sum", "add", ("a1", "a0")))
        last = "sum"
    nodes.append(Node("out", "linear", (last,), params={"weight": t(3, 10, scale=0.4), "bias": t(3)}))
    target = Graph(nodes, (2, 3) if flat else (6,))
    params = target.parameters()
    pruned = target.with_parameters({k: params[k] * (torch.rand(params[k].shape, generator=g) < 0.5)
                                     for k in target.prunable()})
    centres = torch.zeros(2, 6, dtype=torch.float64) if at_zero else torch.rand(2, 6, generator=g,
                                                                                    dtype=torch.float64) * 0.8
    ball = BallSpec(radius=radius, box=(-1.0, 1.0) if box else None)
    calls = []
    orig = signs.act_rows_low
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(signs, "act_rows_low", lambda *a: calls.append(1) or orig(*a))
        check_covers_every_found_gap(target, pruned, ball, centres, g)
    assert calls


def check_covers_every_found_gap(target: Graph, pruned: Graph, ball: BallSpec, centres: Tensor,
                                 g: torch.Generator, **options: Any) -> None:
    """The bound ≥ the gap search's value at every ball, ≥ the gap at 200 sampled points of each ball, and the
    per-coordinate bounds contain every sampled difference (``options``: of ``graph_differential_bound``)."""
    bound = graph_differential_bound(target, pruned, ball, centres=centres, **options)
    found = graph_gap_search(target, pruned, ball, g, centres=centres, n_restarts=4, n_steps=40).value
    assert bool((bound.value >= found).all()), (bound.value, found)
    for b in range(centres.shape[0]):
        pts = _points(ball, centres[b], 200, g)
        gaps = _gap_at(target, pruned, pts)
        assert float(gaps.max()) <= float(bound.value[b]), (float(gaps.max()), float(bound.value[b]))
        diff = _diff_at(target, pruned, pts)
        assert bool((diff >= bound.lower[b]).all()) and bool((diff <= bound.upper[b]).all())


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("both", [True, False], ids=["both-pruned", "second-pruned"])
def test_every_activation_between_two_linear_nodes(kind: str, norm: str, both: bool) -> None:
    """linear → σ → linear, a wide ball: the activation's interval rule (or the joint relaxation) is what the
    bound rests on; with only the second node pruned the gap is ``(W̃₂ − W₂) σ(z)``, bounded by σ's interval."""
    g = torch.Generator().manual_seed(11)
    w1, w2 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    target = Graph([Node("fc1", "linear", ("input",), params={"weight": w1, "bias": torch.randn(6, generator=g,
                                                                                              dtype=torch.float64)}),
                    Node("act", "act", ("fc1",), {"act": _act(kind)}),
                    Node("fc2", "linear", ("act",), params={"weight": w2})], (4,))
    pruned = target.with_parameters({"fc1.weight": w1 * (w1.abs() > 0.5) if both else w1,
                                     "fc2.weight": w2 * (w2.abs() > 0.7)})
    centres = torch.randn(3, 4, generator=g, dtype=torch.float64)
    ball = BallSpec(radius=1.5, norm=norm)  # type: ignore[arg-type]
    bound = graph_differential_bound(target, pruned, ball, centres=centres)
    found = graph_gap_search(target, pruned, ball, g, centres=centres, n_restarts=8, n_steps=60).value
    assert bool((bound.value >= found).all()), (bound.value, found)
    for b in range(3):
        pts = _points(ball, centres[b], 500, g)
        diff = pruned(pts) - target(pts)
        assert bool((diff >= bound.lower[b]).all()) and bool((diff <= bound.upper[b]).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_conv1d_strides_groups_dilation_asymmetric_padding_and_pad_nodes(norm: str) -> None:
    """The ops the random DAGs do not draw: pad nodes, 1-D convs with stride, groups and dilation, a conv with
    asymmetric ("same") padding (adjoint by autograd), identity, a pruned affine map."""
    g = torch.Generator().manual_seed(8)

    def t(*shape: int, s: float = 0.5) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    nodes = [Node("pad", "pad", ("input",), {"pads": (1, 2)}),
             Node("c1", "conv", ("pad",), {"stride": (2,), "padding": ((0, 0),), "dilation": (2,), "groups": 2},
                  {"weight": t(4, 1, 3), "bias": t(4, s=0.1)}),
             Node("r1", "act", ("c1",), {"act": activation("relu")}),
             Node("c2", "conv", ("r1",), {"stride": (1,), "padding": ((0, 1),), "dilation": (1,), "groups": 1},
                  {"weight": t(3, 4, 2)}),
             Node("id", "identity", ("c2",)),
             Node("bn", "affine", ("id",), {"param_dims": {"scale": 2}}, {"scale": 1.0 + t(3, 1, s=0.2)}),
             Node("r2", "act", ("bn",), {"act": activation("leaky_relu", 0.2)}),
             Node("flat", "reshape", ("r2",), {"shape": (3 * 3,)}),
             Node("out", "linear", ("flat",), params={"weight": t(2, 9)})]
    target = Graph(nodes, (2, 6))
    params = target.parameters()
    pruned = target.with_parameters({k: v * (v.abs() > 0.3) for k, v in params.items() if not k.endswith("bias")})
    centres = torch.randn(3, 12, generator=g, dtype=torch.float64)
    ball = BallSpec(radius=0.4, norm=norm)  # type: ignore[arg-type]
    bound = graph_differential_bound(target, pruned, ball, centres=centres)
    found = graph_gap_search(target, pruned, ball, g, centres=centres, n_restarts=8, n_steps=60).value
    assert bool((bound.value >= found).all()), (bound.value, found)
    assert float((bound.value / found).max()) < 3.0  # the joint relaxation, not a product of norms
    for b in range(3):
        pts = _points(ball, centres[b], 500, g)
        diff = pruned(pts.reshape(-1, 2, 6)) - target(pts.reshape(-1, 2, 6))
        assert bool((diff >= bound.lower[b]).all()) and bool((diff <= bound.upper[b]).all())


@pytest.mark.parametrize("kind", ["relu6", "hardtanh"])
def test_relu6_and_hardtanh_take_the_joint_relaxation_of_two_relus(kind: str) -> None:
    """``clamp(z, a, b) = a + relu(z − a) − relu(z − b)``: the joint relaxation (not intervals) — within 2.5× of the
    found gap where intervals alone gave 3–7×."""
    target, pruned = _dag(0, (kind, kind), True, True, "avg")
    centres = (torch.rand(3, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * 0.9
    ball = BallSpec(radius=0.1, norm="linf")
    bound = graph_differential_bound(target, pruned, ball, centres=centres).value
    found = graph_gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=centres).value
    assert bool((bound >= found).all())
    assert float((bound / found).max()) < 2.5, (bound, found)


def test_the_bound_is_tight_on_a_small_conv_dag_at_a_small_radius() -> None:
    target, pruned = _dag(5, ("relu", "relu"), True, True, "avg")
    centres = torch.rand(2, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5
    ball = BallSpec(radius=0.001, norm="linf")
    bound = graph_differential_bound(target, pruned, ball, centres=centres).value
    found = graph_gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=centres).value
    assert bool((bound >= found).all())
    assert float((bound / found).max()) < 1.05, (bound, found)


# ---------------------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_exact_on_one_linear_node_with_one_output(norm: str) -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1, 5, generator=g, dtype=torch.float64)
    b = torch.randn(1, generator=g, dtype=torch.float64)
    target = Graph([Node("fc", "linear", ("input",), params={"weight": w, "bias": b})], (5,))
    wp, bp = w * torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64), b + 0.25
    pruned = target.with_parameters({"fc.weight": wp, "fc.bias": bp})
    c = torch.randn(5, generator=g, dtype=torch.float64)
    r = 0.3
    d = (wp - w)[0]
    exact = abs(float(d @ c + (bp - b))) + r * float(d.norm(p=2 if norm == "l2" else 1))
    bound = float(graph_differential_bound(target, pruned, BallSpec(radius=r, norm=norm,  # type: ignore[arg-type]
                                                                      centre=tuple(c.tolist()))).value[0])
    assert exact <= bound <= exact * (1 + 1e-12) + 1e-300


def test_exact_on_one_scale_shift_node_over_a_box() -> None:
    """An elementwise affine node: the coordinates of the difference are independent over an ℓ∞ ball, so
    ``sqrt(Σ max(lo², hi²))`` is the exact gap."""
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    target = Graph([Node("bn", "affine", ("input",), {"param_dims": {"scale": 1, "shift": 1}},
                         {"scale": s, "shift": t})], (4,))
    pruned = target.with_parameters({"bn.scale": s * 0.5, "bn.shift": t + 0.1})
    c, r = torch.randn(4, generator=g, dtype=torch.float64), 0.2
    ds, dt = -0.5 * s, torch.full((4,), 0.1, dtype=torch.float64)
    ends = torch.stack([ds * (c - r) + dt, ds * (c + r) + dt]).abs().amax(0)
    exact = float(ends.norm())
    bound = float(graph_differential_bound(target, pruned, BallSpec(radius=r, norm="linf",
                                                                      centre=tuple(c.tolist()))).value[0])
    assert exact <= bound <= exact * (1 + 1e-12)


def test_identical_graphs_give_zero() -> None:
    target, _ = _dag(1, ("relu", "gelu"), True, False, "max")
    b = graph_differential_bound(target, target, BallSpec(radius=0.5), centres=torch.zeros(2, 32, dtype=torch.float64))
    assert b.value.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------------- batching


def test_batched_equals_one_ball_at_a_time() -> None:
    target, pruned = _dag(7, ("relu", "leaky_relu"), True, True, "max")
    centres = torch.rand(5, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5
    ball = BallSpec(radius=0.2, norm="linf", box=(-1.0, 1.0))
    together = graph_differential_bound(target, pruned, ball, centres=centres, batch_size=5)
    alone = torch.cat([graph_differential_bound(target, pruned, ball, centres=centres[i:i + 1]).value
                       for i in range(5)])
    assert torch.allclose(together.value, alone, rtol=1e-9, atol=0.0)
    assert together.centres.shape == (5, 32)


# ---------------------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certified_agreement_is_never_contradicted(seed: int) -> None:
    target, pruned = _dag(seed, ("relu", "relu"), True, seed % 2 == 0, "avg", keep=0.8)
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 32, generator=g, dtype=torch.float64) * 2 - 1
    ball = BallSpec(radius=0.05, norm="linf")
    res = graph_certified_agreement(target, pruned, ball, centres=centres, generator=g)
    assert len(res.verdicts) == 6 and res.bound is not None
    for i, v in enumerate(res.verdicts):
        pts = torch.cat([centres[i:i + 1], _points(ball, centres[i], 300, g)]).reshape(-1, 2, 4, 4)
        ct, cp = target(pts).argmax(-1), pruned(pts).argmax(-1)
        if v == "certified":
            assert bool((ct == res.target_class[i]).all()) and bool((cp == res.target_class[i]).all())
        elif v == "refuted":
            w = res.witnesses[i]
            assert w is not None and float((w - centres[i]).abs().max()) <= ball.radius
            xw = w.reshape(1, 2, 4, 4)
            assert int(target(xw).argmax()) != int(pruned(xw).argmax())
    bound = graph_differential_bound(target, pruned, ball, centres=centres).value
    assert torch.allclose(res.bound.value, bound, rtol=1e-12, atol=0.0)


def test_agreement_certified_for_a_graph_and_itself_at_small_radius() -> None:
    target, _ = _dag(3, ("relu", "relu"), False, False, "avg")
    res = graph_certified_agreement(target, target, BallSpec(radius=1e-4, norm="linf"),
                                    centres=torch.rand(3, 32, generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64))
    assert res.verdicts == ("certified",) * 3


# ---------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_message() -> None:
    target, pruned = _dag(1, ("relu", "relu"), False, False, "avg")
    ball = BallSpec(radius=0.1)
    with pytest.raises(ProbPruneError, match="centres"):
        graph_differential_bound(target, pruned, ball, centres=torch.zeros(2, 31, dtype=torch.float64))
    other, _ = _dag(1, ("relu", "relu"), True, False, "avg")
    with pytest.raises(ProbPruneError, match="structure|differs"):
        graph_differential_bound(target, other, ball, centres=torch.zeros(1, 32, dtype=torch.float64))
    with pytest.raises(ProbPruneError, match="batch_size"):
        graph_differential_bound(target, pruned, ball, centres=torch.zeros(1, 32, dtype=torch.float64), batch_size=0)
    with pytest.raises(ProbPruneError, match="box"):
        graph_differential_bound(target, pruned, BallSpec(radius=0.1, box=(0.0, 1.0)),
                                 centres=torch.full((1, 32), 2.0, dtype=torch.float64))
    reg = Graph([Node("fc", "linear", ("input",), params={"weight": torch.ones(1, 3, dtype=torch.float64)})], (3,))
    with pytest.raises(ProbPruneError, match="classifier"):
        graph_certified_agreement(reg, reg, ball, centres=torch.zeros(1, 3, dtype=torch.float64))


# ---------------------------------------------------------------------------------------- output norm, boxes


def test_chord_of_the_squares_is_exact_where_coordinates_trade_off() -> None:
    """Δv = (x, 1 − x) on x ∈ [0, 1]: each coordinate reaches 1, never both; the gap is exactly 1.

    ``sqrt(Σ max(lo², hi²))`` gives √2; the chord ``v_j² ≤ (lo_j + hi_j) v_j − lo_j hi_j`` summed gives
    ``x + (1 − x) = 1``.
    """
    zero = torch.zeros(2, 1, dtype=torch.float64)
    bias = torch.zeros(2, dtype=torch.float64)
    target = Graph([Node("fc", "linear", ("input",), params={"weight": zero, "bias": bias})], (1,))
    pruned = target.with_parameters({"fc.weight": torch.tensor([[1.0], [-1.0]], dtype=torch.float64),
                                     "fc.bias": torch.tensor([0.0, 1.0], dtype=torch.float64)})
    b = graph_differential_bound(target, pruned, BallSpec(radius=0.5, norm="linf"),
                                 centres=torch.tensor([[0.5]], dtype=torch.float64))
    per_coord = float(torch.maximum(b.lower ** 2, b.upper ** 2).sum(-1).sqrt()[0])
    assert per_coord > 1.41
    assert 1.0 <= float(b.value[0]) <= 1.0 + 1e-9


def test_chord_never_looser_than_the_per_coordinate_norm_on_a_dag() -> None:
    target, pruned = _dag(5, ("relu", "relu"), True, True, "avg")
    centres = torch.rand(3, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5
    b = graph_differential_bound(target, pruned, BallSpec(radius=0.3, norm="linf"), centres=centres)
    per_coord = _gap_bound(b.lower, b.upper, b.ball, b.centres, torch.float64, torch.float64).value
    assert bool((b.value <= per_coord * (1 + 1e-12)).all())


def test_per_input_boxes_bound_every_sampled_gap_and_equal_the_radius_when_uniform() -> None:
    target, pruned = _dag(9, ("relu", "leaky_relu"), True, False, "max")
    g = torch.Generator().manual_seed(4)
    centres = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) - 0.5
    ball = BallSpec(radius=0.2, norm="linf", box=(-1.0, 1.0))
    uniform = graph_differential_bound(target, pruned, ball, centres=centres,
                                       halfwidth=torch.full_like(centres, 0.2)).value
    assert torch.equal(uniform, graph_differential_bound(target, pruned, ball, centres=centres).value)
    hw = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 0.3
    b = graph_differential_bound(target, pruned, ball, centres=centres, halfwidth=hw)
    found = graph_gap_search(target, pruned, ball, g, centres=centres, halfwidth=hw, n_restarts=4, n_steps=40)
    flat_c, flat_h = centres.reshape(3, -1), hw.reshape(3, -1)
    assert bool(((found.x - flat_c).abs() <= flat_h * (1 + 1e-12)).all())
    assert bool((b.value >= found.value).all())
    for i in range(3):
        u = torch.rand(300, 32, generator=g, dtype=torch.float64) * 2 - 1
        u[:150] = u[:150].sign()
        pts = (flat_c[i] + flat_h[i] * u).clamp(-1.0, 1.0)
        assert float(_gap_at(target, pruned, pts).max()) <= float(b.value[i])
    agr = graph_certified_agreement(target, pruned, ball, centres=centres, halfwidth=hw, generator=g)
    assert torch.allclose(agr.bound.value, b.value, rtol=1e-12, atol=0.0)  # type: ignore[union-attr]
    with pytest.raises(ProbPruneError, match="halfwidth"):
        graph_differential_bound(target, pruned, ball, centres=centres, halfwidth=hw[:2])
    with pytest.raises(ProbPruneError, match="halfwidth"):
        graph_differential_bound(target, pruned, BallSpec(radius=0.2), centres=centres, halfwidth=hw)


def test_onehot_first_step_equals_the_dense_step() -> None:
    """Rows ``±e_i`` at a ReLU node take their first step on the gathered neuron: the same lower values as the
    dense step (up to the smaller rounding slack of one-term sums)."""
    from probprune.bounds.differential import _region
    from probprune.bounds.differential_graph import _backsub, _prepare, _states

    target, pruned = _dag(4, ("relu", "relu"), True, False, "max")
    prep = _prepare(target, pruned)
    centres = torch.rand(2, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 0.5
    reg = _region(BallSpec(radius=0.2, norm="linf"), centres, 32, torch.device("cpu"))
    states = _states(prep, reg)
    n = math.prod(target.shapes["a1"])
    idx = torch.arange(n).repeat(2, 2)  # [2, 2n]
    cz = torch.cat([torch.ones(2, n), -torch.ones(2, n)], 1).double()
    cd = torch.cat([torch.full((2, n), 0.5), -torch.ones(2, n)], 1).double()
    lz = torch.zeros(2, 2 * n, n, dtype=torch.float64).scatter_(2, idx.unsqueeze(-1), cz.unsqueeze(-1))
    ld = torch.zeros_like(lz).scatter_(2, idx.unsqueeze(-1), cd.unsqueeze(-1))
    dense = _backsub(prep, states, "a1", lz, ld, reg)
    gathered = _backsub(prep, states, "a1", lz, ld, reg, (cz, cd, idx))
    assert torch.allclose(dense, gathered, rtol=1e-12, atol=1e-13)
    assert bool((gathered >= dense).all())  # never a larger slack


# ---------------------------------------------------------------------------------------- optimised slopes


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), acts=st.tuples(st.sampled_from(["relu", "leaky_relu", "relu6"]),
                                                   st.sampled_from(["relu", "leaky_relu"])),
       residual=st.booleans(), cat=st.booleans(), pool=st.sampled_from(["max", "avg", "adaptive"]),
       norm=st.sampled_from(["l2", "linf"]), radius=st.sampled_from([0.05, 0.2, 0.5]), depth=st.integers(0, 2))
def test_optimised_slopes_bound_every_found_gap(seed: int, acts: tuple[str, str], residual: bool, cat: bool,
                                                pool: str, norm: str, radius: float, depth: int) -> None:
    """Slopes optimised per row (output rows, chord row, and the last ``depth`` ReLU inputs' rows) stay sound:
    the bound covers the strongest gap found and every sampled difference, on residual / conv / pool DAGs."""
    target, pruned = _dag(seed, acts, residual, cat, pool)
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(2, 32, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
    ball = BallSpec(radius=radius, norm=norm)  # type: ignore[arg-type]
    check_covers_every_found_gap(target, pruned, ball, centres, g, optimise=8, optimise_depth=depth)


@pytest.mark.parametrize("seed,pool", [(0, "avg"), (1, "max"), (2, "adaptive"), (3, "avg")])
def test_optimised_slopes_never_looser_per_ball_and_tighter_somewhere(seed: int, pool: str) -> None:
    target, pruned = _dag(seed, ("relu", "relu"), True, seed % 2 == 1, pool)
    centres = torch.rand(4, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5
    ball = BallSpec(radius=0.3, norm="linf")
    plain = graph_differential_bound(target, pruned, ball, centres=centres)
    opt = graph_differential_bound(target, pruned, ball, centres=centres, optimise=15)
    assert bool((opt.value <= plain.value).all()), (opt.value, plain.value)
    assert bool((opt.lower >= plain.lower).all()) and bool((opt.upper <= plain.upper).all())
    # the slopes move the bound: strictly tighter for some ball (a plain relaxation with an unstable neuron)
    assert bool((opt.value < plain.value * (1 - 1e-6)).any()), (opt.value, plain.value)


def test_optimised_slopes_batched_equals_one_ball_at_a_time() -> None:
    target, pruned = _dag(7, ("relu", "leaky_relu"), True, True, "max")
    centres = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5
    ball = BallSpec(radius=0.2, norm="linf", box=(-1.0, 1.0))
    together = graph_differential_bound(target, pruned, ball, centres=centres, batch_size=3, optimise=6,
                                        optimise_depth=1)
    alone = torch.cat([graph_differential_bound(target, pruned, ball, centres=centres[i:i + 1], optimise=6,
                                                optimise_depth=1).value for i in range(3)])
    assert torch.allclose(together.value, alone, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("seed", [0, 2])
def test_optimised_agreement_never_contradicted_and_margins_never_lower(seed: int) -> None:
    target, pruned = _dag(seed, ("relu", "relu"), True, seed % 2 == 0, "avg", keep=0.8)
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 32, generator=g, dtype=torch.float64) * 2 - 1
    ball = BallSpec(radius=0.15, norm="linf")
    plain = graph_certified_agreement(target, pruned, ball, centres=centres, attack=False)
    opt = graph_certified_agreement(target, pruned, ball, centres=centres, attack=False, optimise=10)
    assert bool((opt.margin_target >= plain.margin_target).all())
    assert bool((opt.margin_pruned >= plain.margin_pruned).all())
    assert opt.bound is not None and plain.bound is not None and bool((opt.bound.value <= plain.bound.value).all())
    for i, v in enumerate(opt.verdicts):
        if v != "certified":
            continue
        pts = torch.cat([centres[i:i + 1], _points(ball, centres[i], 300, g)]).reshape(-1, 2, 4, 4)
        assert bool((target(pts).argmax(-1) == opt.target_class[i]).all())
        assert bool((pruned(pts).argmax(-1) == opt.target_class[i]).all())


@pytest.mark.parametrize("name", ["optimise", "optimise_depth"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_bad_optimise_values_are_refused_naming_the_value(name: str, value: object) -> None:
    target, pruned = _dag(1, ("relu", "relu"), False, False, "avg")
    centres = torch.zeros(1, 32, dtype=torch.float64)
    bad = cast("dict[str, Any]", {name: value})
    with pytest.raises(ProbPruneError, match=re.escape(f"{name}={value!r}")):
        graph_differential_bound(target, pruned, BallSpec(radius=0.1), centres=centres, **bad)
    with pytest.raises(ProbPruneError, match=re.escape(f"{name}={value!r}")):
        graph_certified_agreement(target, pruned, BallSpec(radius=0.1), centres=centres, **bad)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_vertex_intercepts_give_valid_planes_of_the_relu_difference(alpha: float) -> None:
    """For any slopes (p, q), ``p z + q δ + r_low ≤ σ(z + δ) − σ(z) ≤ p z + q δ + r_up`` on D (the box ∩
    ``z + δ ∈ [l̃, ũ]``), at dense samples, on D's edges and on the kinks; and the lower intercept is attained
    within the rounding margin at a sample (the tightest one: no vertex may be missing, none may be too many)."""
    from probprune.bounds.differential_graph import _intercept, _vertices

    g = torch.Generator().manual_seed(int(alpha * 10))
    n = 64
    l, u = -torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    dl = -torch.rand(n, generator=g, dtype=torch.float64) * 0.7
    du = torch.rand(n, generator=g, dtype=torch.float64) * 0.7
    tl = torch.maximum(l + dl, -torch.rand(n, generator=g, dtype=torch.float64) * 0.8)
    tu = torch.minimum(u + du, torch.rand(n, generator=g, dtype=torch.float64) * 0.8)
    b = (l, u, dl, du, tl, tu)
    verts = _vertices(b, alpha)  # type: ignore[arg-type]
    p, q = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    r_lo, r_up = _intercept(p, q, verts, False), _intercept(p, q, verts, True)
    k = 4000
    t = torch.rand(k, n, generator=g, dtype=torch.float64)
    z = torch.cat([l + (u - l) * t, torch.zeros(k, n, dtype=torch.float64), l.expand(k, n), u.expand(k, n)])
    d = torch.cat([dl + (du - dl) * torch.rand(k, n, generator=g, dtype=torch.float64),
                   dl + (du - dl) * t, dl + (du - dl) * t, dl + (du - dl) * t])
    # also on the kink z + δ = 0 and on the edges z + δ = l̃, ũ of D
    z, d = torch.cat([z, z, z, z]), torch.cat([d, -z, tl - z, tu - z])
    d = d.clamp(dl, du)
    inside = (z + d >= tl) & (z + d <= tu)
    sigma = torch.nn.functional.leaky_relu
    dh = sigma(z + d, alpha) - sigma(z, alpha)
    low, up = p * z + q * d + r_lo, p * z + q * d + r_up
    assert bool(((low <= dh) | ~inside).all()) and bool(((up >= dh) | ~inside).all())
    gap = torch.where(inside, dh - low, torch.full_like(dh, math.inf)).amin(0)
    assert bool(inside.any(0).all()) and bool((gap < 1e-2).all()), gap.max()


def test_vertex_intercepts_claim_nothing_where_no_point_is_kept() -> None:
    """Bounds whose D is empty (z + δ ≤ 2 on the box, z̃ ≥ 5): no point is kept, so no finite intercept is
    claimed — the lower one is −inf, the upper +inf (a minimum over no points would be +inf: unsound)."""
    from probprune.bounds.differential_graph import _intercept, _vertices

    def t(v: float) -> Tensor:
        return torch.tensor([v], dtype=torch.float64)

    verts = _vertices((t(-1.0), t(1.0), t(-1.0), t(1.0), t(5.0), t(6.0)), 0.0)
    p = q = torch.zeros(1, dtype=torch.float64)
    assert float(_intercept(p, q, verts, False)[0]) == -math.inf
    assert float(_intercept(p, q, verts, True)[0]) == math.inf
