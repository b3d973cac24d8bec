"""Branch and bound on the differential bound: sound (Hypothesis), never looser, exact by enumeration, agreement."""

from __future__ import annotations

import itertools
import math
from typing import cast

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from probprune.bounds.differential import certified_agreement, differential_bound, gap_search
from probprune.bounds.differential_split import split_certified_agreement, split_differential_bound
from probprune.config import BallSpec, NetSpec, ProbPruneError
from probprune.nets import Net

pytestmark = pytest.mark.usefixtures("one_thread")


def _net_pair(seed: int, widths: tuple[int, ...], keep: float, act: str = "relu",
              dtype: torch.dtype = torch.float64) -> tuple[Net, Net]:
    g = torch.Generator().manual_seed(seed)
    name, _, slope = act.partition(":")
    spec = NetSpec(widths=widths, bias=True, activation=name,  # type: ignore[arg-type]
                   negative_slope=float(slope or 0.01))
    ws = [torch.randn(o, i, generator=g, dtype=dtype) / math.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.randn(o, generator=g, dtype=dtype) * 0.3 for o in widths[1:]]
    masks = [torch.rand(w.shape, generator=g) < keep for w in ws]
    return Net.from_weights(spec, ws, bs), Net.from_weights(spec, [w * m for w, m in zip(ws, masks)], bs)


def _points(ball: BallSpec, c: Tensor, n: int, g: torch.Generator) -> Tensor:
    """Random points of ball ∩ box (interior and boundary), float64 ``[n, d]``."""
    d = c.shape[0]
    r = ball.radius * (1 - 1e-9)
    if ball.norm == "linf":
        u = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
        corners = torch.randint(0, 2, (n, d), generator=g).double() * 2 - 1
        pts = c + r * torch.cat([u, corners])
        return pts if ball.box is None else pts.clamp(*ball.box)
    v = torch.randn(2 * n, d, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    rad = torch.cat([torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / d), torch.ones(n, 1).double()])
    pts = c + r * rad * v
    if ball.box is not None:
        pts = pts.clamp(*ball.box)
        w = pts - c
        nrm = w.norm(dim=-1, keepdim=True)
        pts = c + w * torch.where(nrm > r, r / nrm, torch.ones_like(nrm))
    return pts


def _gap_at(target: Net, pruned: Net, x: Tensor) -> tuple[Tensor, Tensor]:
    """``‖f − F‖₂`` in float64 and in the nets' dtype at the points ``x``."""
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    g64 = (cast(Tensor, p64(x)) - cast(Tensor, t64(x))).norm(dim=-1)
    xd = x.to(target.dtype)
    gd = (cast(Tensor, pruned(xd)) - cast(Tensor, target(xd))).double().norm(dim=-1)
    return g64, gd


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), widths=st.sampled_from([(3, 6, 2), (4, 8, 8, 3), (2, 6, 5, 1)]),
       act=st.sampled_from(["relu", "leaky_relu:0.2"]), keep=st.sampled_from([0.4, 0.8]),
       norm=st.sampled_from(["l2", "linf"]), radius=st.sampled_from([0.1, 0.5, 1.5]),
       box=st.sampled_from([None, (0.0, 1.0)]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_split_bound_is_sound_and_never_looser(seed: int, widths: tuple[int, ...], act: str, keep: float, norm: str,
                                               radius: float, box: tuple[float, float] | None,
                                               dtype: torch.dtype) -> None:
    target, pruned = _net_pair(seed, widths, keep, act, dtype)
    g = torch.Generator().manual_seed(seed)
    cs = torch.rand(2, widths[0], generator=g, dtype=torch.float64)
    ball = BallSpec(radius=radius, norm=norm, box=box)  # type: ignore[arg-type]
    plain = differential_bound(target, pruned, ball, centres=cs)
    split = split_differential_bound(target, pruned, ball, centres=cs, leaves=6, batch_size=5)
    assert bool((split.value <= plain.value).all())
    assert bool((split.lower >= plain.lower).all()) and bool((split.upper <= plain.upper).all())
    wit = gap_search(target, pruned, ball, g, centres=cs, n_restarts=3, n_steps=30)
    assert bool((wit.value <= split.value).all())
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    for i in range(2):
        pts = torch.cat([_points(BallSpec(radius=radius, norm=norm, box=box,  # type: ignore[arg-type]
                                          centre=tuple(cs[i].tolist())), cs[i], 150, g), wit.x[i:i + 1]])
        g64, gd = _gap_at(target, pruned, pts)
        assert float(g64.max()) <= float(split.value[i]) and float(gd.max()) <= float(split.value[i])
        diff = cast(Tensor, p64(pts)) - cast(Tensor, t64(pts))
        assert bool((diff >= split.lower[i]).all()) and bool((diff <= split.upper[i]).all())


def test_split_bound_on_per_input_boxes_is_sound() -> None:
    target, pruned = _net_pair(3, (3, 8, 8, 2), 0.5)
    g = torch.Generator().manual_seed(3)
    cs = torch.rand(3, 3, generator=g, dtype=torch.float64)
    hw = torch.rand(3, 3, generator=g, dtype=torch.float64) * 0.6
    ball = BallSpec(radius=1.0, norm="linf")
    plain = differential_bound(target, pruned, ball, centres=cs, halfwidth=hw)
    split = split_differential_bound(target, pruned, ball, centres=cs, halfwidth=hw, leaves=8)
    assert bool((split.value <= plain.value).all())
    for i in range(3):
        u = torch.rand(400, 3, generator=g, dtype=torch.float64) * 2 - 1
        corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=torch.float64)
        pts = cs[i] + hw[i] * torch.cat([u, corners])
        assert float(_gap_at(target, pruned, pts)[0].max()) <= float(split.value[i])


def test_splitting_tightens_a_loose_ball() -> None:
    """On a net with many unstable neurons the tree's bound is strictly below the plain one (a regression check
    that splitting is used at all) and stays above the best found gap."""
    target, pruned = _net_pair(11, (2, 12, 12, 2), 0.5)
    ball = BallSpec(radius=1.0, norm="linf", centre=(0.2, -0.1))
    plain = float(differential_bound(target, pruned, ball).value[0])
    split = float(split_differential_bound(target, pruned, ball, leaves=32).value[0])
    found = float(gap_search(target, pruned, ball, torch.Generator().manual_seed(0), n_restarts=8,
                             n_steps=100).value[0])
    assert found <= split < 0.95 * plain


def _exact_max_2d(target: Net, pruned: Net, lo: float, hi: float, m: int = 4000) -> float:
    """``max ‖f − F‖₂`` over the square ``[lo, hi]²`` of a 2-input, one-hidden-layer pair with one output:
    ``f − F`` is affine on each cell of the arrangement of the hidden neurons' lines, so ``|f − F|`` (convex on
    each cell) is largest at a vertex of a cell: a corner of the square, where a line meets an edge, or where
    two lines meet inside the square."""
    lines = []
    for net in (target, pruned):
        w, b = net.layers[0].weight.double(), cast(Tensor, net.layers[0].bias).double()
        lines += [(w[i], float(b[i])) for i in range(w.shape[0])]
    pts = [torch.tensor(c, dtype=torch.float64) for c in itertools.product([lo, hi], repeat=2)]
    for a, b in lines:
        for axis, v in itertools.product((0, 1), (lo, hi)):  # a·x + b = 0 with x_axis = v
            other = 1 - axis
            if abs(float(a[other])) > 1e-12:
                p = torch.zeros(2, dtype=torch.float64)
                p[axis] = v
                p[other] = -(b + float(a[axis]) * v) / float(a[other])
                pts.append(p)
    for (a1, b1), (a2, b2) in itertools.combinations(lines, 2):
        mat = torch.stack([a1, a2])
        if abs(float(torch.linalg.det(mat))) > 1e-12:
            pts.append(torch.linalg.solve(mat, -torch.tensor([b1, b2], dtype=torch.float64)))
    cand = torch.stack(pts)
    cand = cand[((cand >= lo - 1e-12) & (cand <= hi + 1e-12)).all(-1)].clamp(lo, hi)
    return float(_gap_at(target, pruned, cand)[0].max())


@pytest.mark.parametrize("seed", [1, 4, 5, 6])
def test_every_neuron_split_gives_the_exact_maximum_on_a_one_output_net(seed: int) -> None:
    """One hidden layer, one output, 2 inputs (seeds where the plain bound is loose): with every unstable neuron
    split, each leaf is linear in x on a polygon, and the first-layer cuts make its concretisation the exact
    minimum over box ∩ polygon, so the tree's value equals the maximum enumerated over the arrangement (to
    rounding)."""
    target, pruned = _net_pair(seed, (2, 3, 1), 0.5)
    ball = BallSpec(radius=0.5, norm="linf", centre=(0.0, 0.0))
    exact = _exact_max_2d(target, pruned, -0.5, 0.5)
    plain = float(differential_bound(target, pruned, ball).value[0])
    split = float(split_differential_bound(target, pruned, ball, leaves=64).value[0])
    assert plain > 1.01 * exact
    assert exact <= split <= exact * (1 + 1e-9)


def test_budget_zero_and_one_are_the_plain_bound_exactly() -> None:
    target, pruned = _net_pair(5, (3, 7, 7, 2), 0.5)
    cs = torch.rand(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ball = BallSpec(radius=0.4, norm="l2", box=(0.0, 1.0))
    plain = differential_bound(target, pruned, ball, centres=cs)
    a = certified_agreement(target, pruned, ball, centres=cs, n_steps=10)
    for leaves in (0, 1):
        s = split_differential_bound(target, pruned, ball, centres=cs, leaves=leaves)
        assert torch.equal(s.value, plain.value) and torch.equal(s.lower, plain.lower)
        b = split_certified_agreement(target, pruned, ball, centres=cs, leaves=leaves, n_steps=10)
        assert a.verdicts == b.verdicts and torch.equal(a.margin_target, b.margin_target)


def test_batched_leaves_equal_one_ball_at_a_time() -> None:
    target, pruned = _net_pair(8, (3, 8, 8, 2), 0.5)
    cs = torch.rand(3, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ball = BallSpec(radius=0.7, norm="linf")
    together = split_differential_bound(target, pruned, ball, centres=cs, leaves=8, batch_size=3).value
    alone = torch.cat([split_differential_bound(target, pruned, ball, centres=cs[i:i + 1], leaves=8).value
                       for i in range(3)])
    assert torch.allclose(together, alone, rtol=1e-12, atol=0.0)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), keep=st.sampled_from([0.5, 0.9]), norm=st.sampled_from(["l2", "linf"]),
       radius=st.sampled_from([0.05, 0.2, 0.6]))
def test_split_agreement_never_certified_where_a_point_disagrees(seed: int, keep: float, norm: str,
                                                                 radius: float) -> None:
    target, pruned = _net_pair(seed, (4, 10, 10, 3), keep, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    cs = torch.rand(4, 4, generator=g, dtype=torch.float64)
    ball = BallSpec(radius=radius, norm=norm)  # type: ignore[arg-type]
    plain = certified_agreement(target, pruned, ball, centres=cs, n_steps=20)
    res = split_certified_agreement(target, pruned, ball, centres=cs, n_steps=20, leaves=8, gap=False)
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    for i, v in enumerate(res.verdicts):
        assert float(res.margin_target[i]) >= float(plain.margin_target[i])
        if plain.verdicts[i] != "not certified":
            assert v == plain.verdicts[i]  # certified stays certified, refuted keeps its witness
        if v == "certified":
            pts = _points(BallSpec(radius=radius, norm=norm, centre=tuple(cs[i].tolist())),  # type: ignore[arg-type]
                          cs[i], 150, g)
            ct, cp = cast(Tensor, t64(pts)).argmax(-1), cast(Tensor, p64(pts)).argmax(-1)
            assert bool((ct == res.target_class[i]).all()) and bool((cp == ct).all())
            assert bool((cast(Tensor, target(pts.float())).argmax(-1) ==
                         cast(Tensor, pruned(pts.float())).argmax(-1)).all())


def test_split_agreement_certifies_a_ball_the_plain_margins_do_not() -> None:
    """Seeds where the plain relaxation leaves a ball open and the tree certifies it (found by a search over 30
    small nets: seeds 5, 21, 27); the certified ball is then checked at sampled points."""
    for seed, i in ((5, 0), (21, 0)):
        target, pruned = _net_pair(seed, (2, 8, 8, 3), 0.8)
        cs = torch.rand(4, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ball = BallSpec(radius=0.3, norm="linf")
        plain = certified_agreement(target, pruned, ball, centres=cs, attack=False)
        res = split_certified_agreement(target, pruned, ball, centres=cs, attack=False, leaves=16, gap=False)
        assert plain.verdicts[i] == "not certified" and res.verdicts[i] == "certified"
        assert float(res.margin_target[i]) > 0 and float(res.margin_pruned[i]) > 0
        pts = _points(BallSpec(radius=0.3, norm="linf", centre=tuple(cs[i].tolist())), cs[i], 300,
                      torch.Generator().manual_seed(seed))
        t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
        assert bool((cast(Tensor, t64(pts)).argmax(-1) == cast(Tensor, p64(pts)).argmax(-1)).all())


@pytest.mark.parametrize("leaves", [-1, 1.5, True, "4"])
def test_bad_leaves_are_refused(leaves: object) -> None:
    target, pruned = _net_pair(0, (2, 3, 1), 0.5)
    with pytest.raises(ProbPruneError, match="leaves"):
        split_differential_bound(target, pruned, BallSpec(radius=1.0), leaves=leaves)  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="leaves"):
        split_certified_agreement(target, pruned, BallSpec(radius=1.0), leaves=leaves)  # type: ignore[arg-type]


def test_certify_cli_split_flag(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """``probprune certify --split N``: never a larger upper bound, never fewer certified inputs than without it,
    and bad values are one line ``error: …`` with exit code 2."""
    import json
    from pathlib import Path

    import numpy as np

    from cliharness import run
    from probprune.nets.onnx import save_onnx

    tmp = Path(str(tmp_path))
    target, pruned = _net_pair(4, (6, 16, 16, 4), 0.5, dtype=torch.float32)
    save_onnx(target, tmp / "t.onnx")
    save_onnx(pruned, tmp / "p.onnx")
    np.save(tmp / "x.npy", np.random.default_rng(0).uniform(0.0, 1.0, size=(2, 6)).astype(np.float32))
    base = ["certify", "--weights", str(tmp / "t.onnx"), "--pruned", str(tmp / "p.onnx"), "--data",
            str(tmp / "x.npy"), "--n-points", "2", "--norm", "linf", "--radius", "0.3", "--n-restarts", "2",
            "--n-steps", "10", "--json"]
    docs = []
    for extra in ([], ["--split", "8"]):
        code, out, err = run([*base, *extra], capsys)
        assert code == 0, err
        docs.append(json.loads(out))
    plain, split = docs
    assert split["summary"]["certified_agreement"] >= plain["summary"]["certified_agreement"]
    for a, b in zip(plain["rows"], split["rows"]):
        assert b["upper"] <= a["upper"] and b["lower"] <= b["upper"]
    for bad in ("-1", "1.5", "abc"):
        code, out, err = run([*base, "--split", bad], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "split" in lines[0], err


def test_pp_certify_split_keyword() -> None:
    """``pp.certify(…, split=N)``: the same rows as ``split=0`` except never a larger upper bound and never fewer
    certified inputs; the upper bound at every input is the split bound's (min with the layerwise one)."""
    import probprune as pp

    target, pruned = _net_pair(4, (6, 16, 16, 4), 0.5, dtype=torch.float32)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    kw = dict(radius=0.3, norm="linf", clip=(0.0, 1.0), n_restarts=2, n_steps=10)
    plain = pp.certify(target, pruned, x, **kw)  # type: ignore[arg-type]
    split = pp.certify(target, pruned, x, split=8, **kw)  # type: ignore[arg-type]
    assert split.summary["certified_agreement"] >= plain.summary["certified_agreement"]
    tight = 0
    for a, b in zip(plain.rows, split.rows):
        assert b["upper"] <= a["upper"] and b["lower"] <= b["upper"]
        tight += b["upper"] < a["upper"]
    assert tight >= 1  # at this loose ball the tree tightens at least one input
    assert pp.certify(target, pruned, x, split=1, **kw).rows == plain.rows  # type: ignore[arg-type]


@pytest.mark.parametrize("split", [-1, 1.5, True, "4"])
def test_pp_certify_bad_split_is_refused(split: object) -> None:
    import probprune as pp

    target, pruned = _net_pair(0, (2, 3, 2), 0.5)
    with pytest.raises(ProbPruneError, match="split="):
        pp.certify(target, pruned, torch.zeros(1, 2), radius=0.1, split=split)  # type: ignore[arg-type]


def test_pp_certify_split_on_graphs_is_refused() -> None:
    import probprune as pp

    target, pruned = _net_pair(0, (2, 3, 2), 0.5)
    with pytest.raises(ProbPruneError, match="split=4: not supported for graph models"):
        pp.certify(target.to_graph(), pruned.to_graph(), torch.zeros(1, 2), radius=0.1, split=4)


def test_pp_certify_optimise_keyword() -> None:
    """``pp.certify(…, optimise=N)``: the margins of the uncertified inputs slope-optimised — never fewer certified
    inputs than ``optimise=0``, never certified where the attack refuted, the same gap rows; on this pair it
    certifies an input the plain relaxation leaves open."""
    import probprune as pp

    target, pruned = _net_pair(5, (6, 16, 16, 4), 0.8, dtype=torch.float32)
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    kw = dict(radius=0.3, norm="linf", clip=(0.0, 1.0), n_restarts=2, n_steps=10)
    plain = pp.certify(target, pruned, x, **kw)  # type: ignore[arg-type]
    opt = pp.certify(target, pruned, x, optimise=30, **kw)  # type: ignore[arg-type]
    gained = 0
    for a, b in zip(plain.rows, opt.rows):
        assert b["certified_agree"] >= a["certified_agree"]
        assert not (b["certified_agree"] and b["verdict"] == "refuted")
        assert (a["upper"], a["lower"]) == (b["upper"], b["lower"])
        gained += b["certified_agree"] > a["certified_agree"]
    assert gained >= 1


@pytest.mark.parametrize("optimise", [-1, 1.5, True, "4"])
def test_pp_certify_bad_optimise_is_refused(optimise: object) -> None:
    import probprune as pp

    target, pruned = _net_pair(0, (2, 3, 2), 0.5)
    with pytest.raises(ProbPruneError, match="optimise="):
        pp.certify(target, pruned, torch.zeros(1, 2), radius=0.1, optimise=optimise)  # type: ignore[arg-type]


def test_certify_cli_optimise_flag(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """``probprune certify --optimise N`` certifies more inputs on this pair; bad values are one line
    ``error: …``, exit 2."""
    import json
    from pathlib import Path

    import numpy as np

    from cliharness import run
    from probprune.nets.onnx import save_onnx

    tmp = Path(str(tmp_path))
    target, pruned = _net_pair(5, (6, 16, 16, 4), 0.8, dtype=torch.float32)
    save_onnx(target, tmp / "t.onnx")
    save_onnx(pruned, tmp / "p.onnx")
    np.save(tmp / "x.npy", torch.rand(6, 6, generator=torch.Generator().manual_seed(0)).numpy())
    base = ["certify", "--weights", str(tmp / "t.onnx"), "--pruned", str(tmp / "p.onnx"), "--data",
            str(tmp / "x.npy"), "--n-points", "6", "--norm", "linf", "--radius", "0.3", "--clip", "0,1",
            "--n-restarts", "2", "--n-steps", "10", "--json"]
    docs = []
    for extra in ([], ["--optimise", "30"]):
        code, out, err = run([*base, *extra], capsys)
        assert code == 0, err
        docs.append(json.loads(out))
    assert docs[1]["summary"]["certified_agreement"] > docs[0]["summary"]["certified_agreement"]
    for bad in ("-1", "1.5", "abc"):
        code, out, err = run([*base, "--optimise", bad], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "optimise" in lines[0], err


def test_pp_certify_optimise_on_graphs() -> None:
    """On graphs ``optimise=N`` reaches ``graph_certified_agreement``: per input never a larger upper bound, never
    fewer certified inputs, the same lower bounds, and at this loose ball tighter somewhere."""
    import probprune as pp

    target, pruned = _net_pair(5, (6, 16, 16, 4), 0.8, dtype=torch.float32)
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    kw = dict(radius=0.3, norm="linf", clip=(0.0, 1.0), n_restarts=2, n_steps=10)
    tg, pg = target.to_graph(), pruned.to_graph()
    plain = pp.certify(tg, pg, x, **kw)  # type: ignore[arg-type]
    opt = pp.certify(tg, pg, x, optimise=20, **kw)  # type: ignore[arg-type]
    assert opt.summary["certified_agreement"] >= plain.summary["certified_agreement"]
    tight = 0
    for a, b in zip(plain.rows, opt.rows):
        assert b["upper"] <= a["upper"] and b["lower"] == a["lower"] and b["lower"] <= b["upper"]
        assert b["certified_agree"] >= a["certified_agree"]
        tight += b["upper_differential"] < a["upper_differential"]
    assert tight >= 1
