"""The sign relaxation of the first hidden layer over ℓ2 balls (``bounds/signs.py``): soundness, exact cases, gain."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from probprune.bounds import signs
from probprune.bounds.differential import _analyse, _dtype, _prepare, differential_bound, gap_search
from probprune.config import BallSpec
from probprune.nets import Net

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(seed: int, widths: tuple[int, ...], bias: bool, slope: float, keep: float, dtype: torch.dtype,
          ) -> tuple[Net, Net]:
    from probprune.config import NetSpec

    g = torch.Generator().manual_seed(seed)
    spec = NetSpec(widths=widths, bias=bias, activation="relu" if slope == 0 else "leaky_relu",
                   negative_slope=slope if slope else 0.01)
    ws = [torch.randn(o, i, generator=g, dtype=dtype) / math.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.randn(o, generator=g, dtype=dtype) * 0.3 for o in widths[1:]] if bias else None
    masks = [torch.rand(w.shape, generator=g) < keep for w in ws]
    return Net.from_weights(spec, ws, bs), Net.from_weights(spec, [w * m for w, m in zip(ws, masks)], bs)


def _second_layer(net: Net, x: Tensor, slope: float) -> Tensor:
    """The second layer's pre-activations as the net computes them (its own dtype), returned in float64."""
    l0, l1 = net.layers[0], net.layers[1]
    z = x.to(l0.weight.dtype) @ l0.weight.T
    if l0.bias is not None:
        z = z + l0.bias
    h = torch.nn.functional.leaky_relu(z, slope) if slope else torch.relu(z)
    z1 = h @ l1.weight.T
    if l1.bias is not None:
        z1 = z1 + l1.bias
    return z1.double()


def _ball_points(centre: Tensor, r: float, n: int, g: torch.Generator) -> Tensor:
    v = torch.randn(n, centre.shape[0], generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    rad = torch.cat([torch.rand(n // 2, 1, generator=g, dtype=torch.float64), torch.ones(n - n // 2, 1,
                                                                                       dtype=torch.float64)])
    return centre + r * (1 - 1e-12) * rad * v


def _rows_min(target: Net, pruned: Net, slope: float, lz: Tensor, ld: Tensor, centre: Tensor, r: float,
              g: torch.Generator) -> Tensor:
    """The smallest value of each row ``lzᵀz₁ + ldᵀδ₁`` found: sampled points, then projected descent per row."""
    pts = _ball_points(centre, r, 400, g)

    def rows(x: Tensor) -> Tensor:  # [n, R]
        z, zt = _second_layer(target, x, slope), _second_layer(pruned, x, slope)
        return z @ lz.T + (zt - z) @ ld.T

    best = rows(pts).amin(0)
    x = centre.expand(lz.shape[0], -1).clone() + 0.1 * r * torch.randn(lz.shape[0], centre.shape[0], generator=g,
                                                                      dtype=torch.float64)
    for _ in range(60):
        x.requires_grad_(True)
        z, zt = _second_layer(target, x, slope), _second_layer(pruned, x, slope)
        val = (z * lz).sum(-1) + ((zt - z) * ld).sum(-1)
        (grad,) = torch.autograd.grad(val.sum(), x)
        with torch.no_grad():
            x = x - 0.1 * r * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            off = x - centre
            x = centre + off * (r * (1 - 1e-12) / off.norm(dim=-1, keepdim=True)).clamp(max=1.0)
            best = torch.minimum(best, (_second_layer(target, x, slope) * lz).sum(-1)
                                 + ((_second_layer(pruned, x, slope) - _second_layer(target, x, slope)) * ld).sum(-1))
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), widths=st.sampled_from([(3, 6, 4), (5, 12, 6, 2), (8, 16, 3)]),
       bias=st.booleans(), slope=st.sampled_from([0.0, 0.01, 0.3]), keep=st.sampled_from([0.3, 0.7]),
       radius=st.sampled_from([1e-4, 0.1, 1.0, 3.0]), at_zero=st.booleans(), box=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_first_layer_rows_never_exceed_a_value_the_nets_reach(seed: int, widths: tuple[int, ...], bias: bool,
                                                            slope: float, keep: float, radius: float,
                                                            at_zero: bool, box: bool, dtype: torch.dtype) -> None:
    """Any rows (random dense coefficients, not only ±e_i) get lower values ≤ the smallest value found in the
    ball, for the nets as computed in their dtype; a box is ignored (the ball contains ball ∩ box)."""
    target, pruned = _pair(seed, widths, bias, slope, keep, dtype)
    g = torch.Generator().manual_seed(seed)
    d = widths[0]
    centre = torch.zeros(d, dtype=torch.float64) if at_zero else torch.rand(d, generator=g, dtype=torch.float64)
    ball = BallSpec(radius=radius, centre=tuple(centre.tolist()), norm="l2", box=(-5.0, 5.0) if box else None)
    pair = _prepare(target, pruned)
    an = _analyse(pair, ball, None, _dtype(target, None), _dtype(pruned, None))
    assert signs.applies(pair, an.reg)
    n1 = widths[2]
    lz = torch.randn(5, n1, generator=g, dtype=torch.float64)
    ld = torch.randn(5, n1, generator=g, dtype=torch.float64) * torch.tensor([0.0, 1.0, 1.0, 3.0, -2.0]
                                                                            ).unsqueeze(1)
    low = signs.first_layer_low(lz.unsqueeze(0), ld.unsqueeze(0), pair, an.relax[0], an.bounds[0], an.reg,
                                an.rho)[0]
    found = _rows_min(target, pruned, slope, lz, ld, centre, radius, g)
    assert bool((low <= found).all()), (low, found)


def test_all_stable_first_layer_is_exact() -> None:
    """Every first-layer neuron stable in both nets: the rows are affine in x and the value is their exact minimum
    over the ball (``aᵀc + β − r‖a‖``), up to the rounding slack."""
    target, pruned = _pair(4, (4, 6, 3), True, 0.0, 0.6, torch.float64)
    centre = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    ball = BallSpec(radius=1e-3, centre=tuple(centre.tolist()))
    pair = _prepare(target, pruned)
    an = _analyse(pair, ball, None, torch.float64, torch.float64)
    l, u, _, _, tl, tu = an.bounds[0]
    assert bool(((l > 0) | (u < 0)).all() and ((tl > 0) | (tu < 0)).all())
    lz = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    ld = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64)
    low = float(signs.first_layer_low(lz.unsqueeze(0), ld.unsqueeze(0), pair, an.relax[0], an.bounds[0], an.reg,
                                      an.rho)[0, 0])
    x = centre.clone().requires_grad_(True)
    z, zt = _second_layer(target, x[None], 0.0)[0], _second_layer(pruned, x[None], 0.0)[0]
    row = (z * lz[0]).sum() + ((zt - z) * ld[0]).sum()
    (a,) = torch.autograd.grad(row, x)
    exact = float(row.detach()) - 1e-3 * float(a.norm())
    assert low <= exact
    assert low >= exact - 1e-12 * (1 + abs(exact))


def test_it_tightens_the_ball_around_zero_and_stays_above_the_found_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Around 0 with no biases every first-layer neuron is unstable: the sign relaxation makes the gap bound
    strictly smaller than back-substitution alone, and it still covers the largest gap a search finds."""
    target, pruned = _pair(7, (40, 64, 32, 5), False, 0.0, 0.5, torch.float32)
    ball = BallSpec(radius=1.0)
    with_signs = float(differential_bound(target, pruned, ball).value[0])
    found = float(gap_search(target, pruned, ball, torch.Generator().manual_seed(0), n_restarts=8,
                             n_steps=100).value[0])
    monkeypatch.setattr(signs, "applies", lambda *_: False)
    without = float(differential_bound(target, pruned, ball).value[0])
    assert found <= with_signs < 0.9 * without, (found, with_signs, without)


def test_only_l2_balls_and_relu_family_first_layers() -> None:
    """ℓ∞ balls and identity first layers keep back-substitution alone (``applies`` says no)."""
    target, pruned = _pair(1, (3, 5, 2), True, 0.0, 0.5, torch.float64)
    pair = _prepare(target, pruned)
    linf = _analyse(pair, BallSpec(radius=0.1, norm="linf"), None, torch.float64, torch.float64)
    assert not signs.applies(pair, linf.reg)
    l2 = _analyse(pair, BallSpec(radius=0.1), None, torch.float64, torch.float64)
    assert signs.applies(pair, l2.reg)
    from probprune.config import NetSpec

    spec = NetSpec(widths=(3, 5, 2), bias=True, activation="identity")
    t2 = Net.from_weights(spec, [lay.weight for lay in target.layers], [lay.bias for lay in target.layers])
    p2 = Net.from_weights(spec, [lay.weight for lay in pruned.layers], [lay.bias for lay in pruned.layers])
    assert not signs.applies(_prepare(t2, p2), l2.reg)


def test_blocks_of_rows_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second layer's rows are bounded in blocks (of balls, and of rows within a ball) to bound memory; the
    values do not depend on the block size (to rounding: a block gathers its own balls' live neurons)."""
    target, pruned = _pair(5, (6, 12, 9, 3), True, 0.0, 0.5, torch.float32)
    cs = torch.rand(5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ball = BallSpec(radius=0.8)
    whole = differential_bound(target, pruned, ball, centres=cs).value
    monkeypatch.setattr(signs, "ROW_BLOCK", 40)  # 3 rows of 12 neurons per block, one ball at a time
    blocks = differential_bound(target, pruned, ball, centres=cs).value
    assert torch.allclose(whole, blocks, rtol=1e-12, atol=0)
    monkeypatch.setattr(signs, "applies", lambda *_: False)
    assert bool((whole < differential_bound(target, pruned, ball, centres=cs).value).any())
