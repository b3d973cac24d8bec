"""Slow one-net-at-a-time references that the batched code is checked against, and the shared tester.

The library runs ensembles (a leading trial dim ``[n_members, …]``) in one batched pass. Each
function here computes the same thing for **one** network, the plain way a user would write it
(a loop over layers with ``torch.nn.functional``, one generator per network), so that a test can
say "member k of the batched result equals the reference on member k" through one function:
:func:`check_batched_equals_reference`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from probprune.bounds import CertifiedBound, certified_gap_bound
from probprune.config import RunConfig
from probprune.masks import PruneResult, prune
from probprune.montecarlo import GridPoint
from probprune.nets import Net
from probprune.rng import derive_seed, make_generator
from probprune.sampling import sample_net

__all__ = ["certified_bound_one", "check_batched_equals_reference", "forward_one", "gap_over_points",
           "magnitude_mask_one", "one_trial"]

Case = TypeVar("Case")


# ---------------------------------------------------------------------------- the shared tester


def _assert_same(got: Any, want: Any, atol: float, rtol: float, where: str) -> None:
    """``got`` equals ``want``: bit for bit (same dtype) when ``atol == rtol == 0``, else to the tolerances."""
    if isinstance(want, Tensor):
        assert isinstance(got, Tensor), f"{where}: got {type(got).__name__}, expected a tensor"
        assert got.shape == want.shape and got.dtype == want.dtype, \
            f"{where}: got {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} {want.dtype}"
        if atol == 0.0 and rtol == 0.0:
            assert torch.equal(got, want), f"{where}: not bit-identical (max |diff| " \
                f"{float((got.double() - want.double()).abs().max()) if got.numel() else 0.0})"
        else:
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{where}: {m}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), \
            f"{where}: got {len(got) if isinstance(got, (list, tuple)) else got!r}, expected {len(want)} items"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, atol, rtol, f"{where}[{i}]")
    elif isinstance(want, float):
        g = float(got)
        assert abs(g - want) <= atol + rtol * abs(want) if (atol or rtol) else g == want, \
            f"{where}: got {g!r}, expected {want!r} (atol={atol}, rtol={rtol})"
    else:
        assert got == want, f"{where}: got {got!r}, expected {want!r}"


def check_batched_equals_reference(batched_fn: Callable[[Case], Sequence[Any]],
                                   reference_fn: Callable[[Case, int], Any], cases: Iterable[Case], *,
                                   atol: float = 0.0, rtol: float = 0.0, members: Sequence[int] | None = None) -> int:
    """Check that member k of ``batched_fn(case)`` equals ``reference_fn(case, k)``, for every case and member.

    Args:
        batched_fn: the batched computation of one case; returns one entry per member (a tensor
            with the trial dim first, or a sequence). Entries are tensors, floats or (nested)
            sequences of them.
        reference_fn: the one-net-at-a-time computation of member ``k`` of a case.
        cases: the inputs (parameters, networks …) to check.
        atol, rtol: tolerances (``|got − want| ≤ atol + rtol·|want|``); both 0 (default) asks for
            bit-identical tensors of the same dtype and equal floats.
        members: which members to compare (default: all of them).

    Returns:
        How many (case, member) pairs were compared (a test can assert it is not 0).
    """
    n = 0
    for i, case in enumerate(cases):
        got = batched_fn(case)
        ks = range(len(got)) if members is None else members
        for k in ks:
            _assert_same(got[k], reference_fn(case, k), atol, rtol, f"case {i}, member {k}")
            n += 1
    assert n > 0, "check_batched_equals_reference: nothing was compared"
    return n


# ---------------------------------------------------------------------------- one network at a time


def forward_one(net: Net, x: Tensor) -> Tensor:
    """The outputs of one network (no trial dim) on ``x`` ``[N, …]``: a plain loop over its layers."""
    assert net.n_trials is None, "forward_one: one network, not an ensemble"
    for layer in net.layers:
        if layer.conv is None:
            x = layer.activation(F.linear(x, layer.weight, layer.bias))
            continue
        c, pad = layer.conv, layer.conv.pad
        if c.padding_mode == "circular" and pad > 0:
            x = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), layer.weight, layer.bias, stride=c.stride)
        else:
            x = F.conv2d(x, layer.weight, layer.bias, stride=c.stride, padding=pad)
        x = layer.activation(x)
        if c.pool > 1:
            x = F.max_pool2d(x, c.pool)
        if layer.flatten:
            x = x.flatten(start_dim=1)
    return x


def gap_over_points(target: Net, pruned: Net, x: Tensor) -> Tensor:
    """``‖f(x_n) − F(x_n)‖₂`` at each of the given points ``x`` ``[N, …]`` for one pair: ``[N]``."""
    return (forward_one(pruned, x) - forward_one(target, x)).norm(dim=1)


def magnitude_mask_one(weight: Tensor, prune_fraction: float) -> Tensor:
    """Keep-mask of one tensor: the ``round(prune_fraction·n)`` entries of smallest ``|w|`` removed (a sort).

    Ties are not resolved here: compare on weights without equal magnitudes.
    """
    flat = [abs(float(v)) for v in weight.reshape(-1)]
    order = sorted(range(len(flat)), key=flat.__getitem__)
    keep = torch.ones(len(flat), dtype=torch.bool)
    keep[order[:round(prune_fraction * len(flat))]] = False
    return keep.reshape(weight.shape)


def one_trial(cfg: RunConfig, point: GridPoint, config_hash: str, trial: int,
              dtype: torch.dtype = torch.float32) -> tuple[Net, PruneResult]:
    """Trial ``trial`` of a Monte Carlo grid point, one network: its target and its pruning.

    The target is sampled with the trial's own generator (seed from (config hash, grid point,
    trial, ``weights``)) and pruned by the point's rule (random masks from the ``mask`` stream).
    """
    one = sample_net(point.net, cfg.law, make_generator(derive_seed(config_hash, point.index, trial, "weights")),
                     dtype=dtype)
    pr = point.prune
    gen = make_generator(derive_seed(config_hash, point.index, trial, "mask")) if pr.method == "random" else None
    res = prune(one, pr, generator=gen, law=cfg.law)
    return one, res


def certified_bound_one(target: Net, pruned: Net, radius: float) -> CertifiedBound:
    """The certified gap bound of one pair (no trial dim): per-layer terms of one network."""
    assert target.n_trials is None and pruned.n_trials is None, "certified_bound_one: one pair, not an ensemble"
    return certified_gap_bound(target, pruned, radius=radius)
