"""The gap between a pruned network f and its target F, estimated from below.

The gap (``DESIGN.md``) is ``sup_{‖x‖₂ ≤ r} ‖f(x) − F(x)‖₂`` (conv inputs flattened).
:func:`sup_gap` estimates it from below — every value it returns is attained at a point
of the ball, so it is a true lower bound on the gap:

1. **sampling** (``torch.no_grad``): ``n_points`` inputs, half uniform on the sphere of
   radius r, half uniform in the ball (radius law ``r·U^{1/d}``), shared by all members;
   f and F are evaluated together as one batched ensemble of ``2K`` networks;
2. **projected ascent** (:func:`probprune.search.maximise`, the one search engine) on ``‖f(x) − F(x)‖``:
   the sampling phase's ``n_restarts`` best points and random points on the sphere (12·``n_restarts`` starts)
   take a few large normalised momentum steps; the ``n_restarts`` best trajectories then climb with a fresh
   cosine schedule (``step_size·r`` at its start), each step also trying the power-method step to
   ``r·∇/‖∇‖`` (exact for a linear layer), then projection onto the ball. The best point seen is kept.

Bias-free networks with positively homogeneous activations (relu, leaky_relu, identity;
max-pool keeps this) satisfy ``g(t·x) = t·g(x)`` for ``t ≥ 0``, so the sup over the ball
equals ``r ×`` the sup over the unit sphere; the estimator then searches the unit sphere
only and scales by r (``GapEstimate.homogeneous``).

Everything is batched over members (trial dim K) and points; randomness comes only from
the explicit ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from probprune.config import ExecutionPolicy, GapSpec, ProbPruneError
from probprune.nets import Net, check_finite, check_pair
from probprune.search import Budget, Region, maximise

__all__ = [
    "GapEstimate",
    "RelativeGap",
    "check_pair",
    "is_homogeneous",
    "mean_gap",
    "relative_gap",
    "sup_gap",
    "sup_output",
]

# elements of the largest activation tensor per chunk of the sampling phase: ≈ 64 MiB in float32 on
# CPU (cache- and RSS-friendly); ≈ 1 GiB on a GPU, where small chunks re-read every weight per chunk
# and leave the matrix units waiting on memory
_CHUNK_ELEMS = 1 << 24
_CHUNK_ELEMS_CUDA = 1 << 28


def _chunk_points(device: torch.device, members: int, width: int) -> int:
    """Points per evaluation chunk so that one activation block holds about ``_CHUNK_ELEMS`` elements."""
    budget = _CHUNK_ELEMS_CUDA if device.type == "cuda" else _CHUNK_ELEMS
    return max(1, budget // max(1, members * width))


@dataclass(frozen=True, eq=False)
class GapEstimate:
    """An empirical sup over the ball (a lower bound on the true sup).

    Attributes:
        value: ``[K]`` (ensemble) or 0-d: the best ``‖f(x) − F(x)‖`` (or ``‖F(x)‖``) found.
        x: maximiser, ``[K, *input_shape]`` or ``[*input_shape]``, with ``‖x‖ ≤ radius``.
        n_evals: points evaluated per member (each evaluates f and F).
        radius: r.
        homogeneous: whether the sphere-scaling shortcut was used.
        sampled: ``[K]``/0-d best value of the sampling phase alone (before ascent).
    """

    value: Tensor
    x: Tensor
    n_evals: int
    radius: float
    homogeneous: bool
    sampled: Tensor


@dataclass(frozen=True, eq=False)
class RelativeGap:
    """Relative gap ``gap / sup‖F(x)‖`` with both sups estimated by :func:`sup_gap`'s estimator."""

    value: Tensor
    gap: GapEstimate
    output: GapEstimate


# ---------------------------------------------------------------------------- helpers


def _input_shape(net: Net) -> tuple[int, ...]:
    net_spec = net.spec
    return (net_spec.widths[0],) if net_spec.kind == "fcn" else tuple(net_spec.input_shape)  # type: ignore[arg-type]


def _max_width(net: Net) -> int:
    """Largest per-sample activation size (conv outputs before pooling included)."""
    net_spec = net.spec
    feats = [math.prod(s) for s in net_spec.feature_shapes()]
    sizes = [*feats, net_spec.output_dim]
    for i, conv in enumerate(net_spec.convs):
        sizes.append(feats[i + 1] * conv.pool * conv.pool * 4)  # generous: floor-pooling drops edges
    return max(sizes)


def is_homogeneous(net: Net) -> bool:
    """Whether ``net(t·x) = t·net(x)`` for ``t ≥ 0``: positively homogeneous σ and no (or zero) biases."""
    if not all(layer.activation.positively_homogeneous for layer in net.layers):
        return False
    return all(b is None or not bool(b.any()) for b in net.biases)


def _as_ensemble(net: Net) -> Net:
    if net.n_trials is not None:
        return net
    return Net.from_weights(net.spec, [w.unsqueeze(0) for w in net.weights],
                            [None if b is None else b.unsqueeze(0) for b in net.biases])


Objective = Callable[[Tensor], Tensor]
"""Maps flat inputs ``[K, M, D]`` (or shared ``[M, D]``) to norms ``[K, M]``."""


def _diff_objective(target: Net, pruned: Net, policy: ExecutionPolicy | None = None,
                    workers: Executor | None = None) -> tuple[Objective, int]:
    # f and F run as two ensemble passes over the same points: no stacked copy of their weights,
    # so memory stays at the weights, the masks and one chunk of activations
    t, p = _as_ensemble(target), _as_ensemble(pruned)
    k = t.n_trials or 1
    shape = _input_shape(target)

    def fn(x: Tensor) -> Tensor:
        if x.dim() == 2:  # shared points
            xin = x.reshape(x.shape[0], *shape)
        else:
            xin = x.reshape(k, x.shape[1], *shape)
        out = cast(Tensor, p.forward(xin, policy=policy, workers=workers))
        out = out - cast(Tensor, t.forward(xin, policy=policy, workers=workers))
        return out.norm(dim=-1)

    return fn, k


def _output_objective(net: Net, policy: ExecutionPolicy | None = None,
                      workers: Executor | None = None) -> tuple[Objective, int]:
    ens = _as_ensemble(net)
    k = ens.n_trials or 1
    shape = _input_shape(net)

    def fn(x: Tensor) -> Tensor:
        xin = x.reshape(x.shape[0], *shape) if x.dim() == 2 else x.reshape(k, x.shape[1], *shape)
        out = cast(Tensor, ens.forward(xin, policy=policy, workers=workers))
        return out.norm(dim=-1)

    return fn, k


def _sample_points(n: int, d: int, radius: float, sphere_only: bool, generator: torch.Generator,
                   device: torch.device, dtype: torch.dtype) -> Tensor:
    z = torch.randn(n, d, generator=generator, device=device, dtype=dtype)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    if not sphere_only:
        n_ball = n // 2
        u = torch.rand(n_ball, 1, generator=generator, device=device, dtype=dtype)
        z[n - n_ball:] = z[n - n_ball:] * u.pow(1.0 / d)
    return z * radius


def _maximise(fn: Objective, k: int, d: int, width: int, gap_spec: GapSpec, homogeneous: bool,
              generator: torch.Generator, device: torch.device, dtype: torch.dtype
              ) -> tuple[Tensor, Tensor, int, Tensor]:
    """Sampling then projected ascent of ``fn``; returns value [K], x [K, D], n_evals, sampled [K]."""
    rad = 1.0 if homogeneous else float(gap_spec.radius)
    pts = _sample_points(gap_spec.n_points, d, rad, homogeneous, generator, device, dtype)
    chunk = _chunk_points(device, k, width)
    with torch.no_grad():
        vals = torch.cat([fn(pts[s:s + chunk]) for s in range(0, gap_spec.n_points, chunk)], dim=1)  # [K, N]
    n_evals = gap_spec.n_points
    best_val, best_idx = vals.max(dim=1)
    best_x = pts[best_idx]  # [K, D]
    sampled = best_val.clone()
    r = min(gap_spec.n_restarts, gap_spec.n_points)
    if r == 0 or gap_spec.n_steps == 0:
        return best_val, best_x, n_evals, sampled
    idx = vals.topk(r, dim=1).indices  # [K, R]: the sampling phase's best points start the ascent
    # not strict: points on the sphere up to one rounding, as before; lower_at re-projects the witness in float64
    region = Region(torch.zeros(k, d, dtype=torch.float64, device=device), rad, sphere=homogeneous, strict=False)
    found = maximise(lambda x: fn(x.transpose(0, 1)).transpose(0, 1), region, _budget(gap_spec, r), generator,
                     starts=pts[idx].transpose(0, 1), dtype=dtype)
    n_evals += found.n_evals
    better = found.value > best_val
    best_val = torch.where(better, found.value, best_val)
    best_x = torch.where(better.unsqueeze(1), found.x, best_x)
    return best_val, best_x, n_evals, sampled


def _budget(gap_spec: GapSpec, r: int) -> Budget:
    """The engine's budget for ``n_restarts = r``, ``n_steps = T``: ``4·r·T`` evaluations per member.

    ``16r`` starts (the sampling phase's r best points, the rest random) climb ``S = ⌊T/6⌋`` steps with steps
    2.5 times larger (exploration: which basins are good shows after a few steps); the r best trajectories climb
    ``2T − 8S`` more from their best points, each step a gradient and a power-method trial (exact for a linear
    layer) — as many evaluations as the former one gradient and three trial steps per restart and step, spent
    on many more starts.
    """
    t = gap_spec.n_steps
    screen = t // 6
    step = float(gap_spec.step_size)
    return Budget(n_restarts=r, n_steps=2 * t - 6 * screen, step_size=step, n_screen=12, screen_steps=screen,
                  screen_step_size=2.5 * step, power=True)


def _estimate(fn: Objective, k: int, net: Net, gap_spec: GapSpec, homogeneous: bool,
              generator: torch.Generator, single: bool) -> GapEstimate:
    if not isinstance(gap_spec, GapSpec):
        raise ProbPruneError(f"gap_spec: expected a GapSpec, got {type(gap_spec).__name__}")
    if not isinstance(generator, torch.Generator):
        raise ProbPruneError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    shape = _input_shape(net)
    d = math.prod(shape)
    val, x, n_evals, sampled = _maximise(fn, k, d, _max_width(net), gap_spec, homogeneous, generator,
                                         net.device, net.dtype)
    if homogeneous:  # sup over the ball = r · sup over the unit sphere
        val, x, sampled = val * gap_spec.radius, x * gap_spec.radius, sampled * gap_spec.radius
    x = x.reshape(k, *shape).detach()
    if single:
        val, x, sampled = val[0], x[0], sampled[0]
    return GapEstimate(value=val.detach(), x=x, n_evals=n_evals, radius=float(gap_spec.radius),
                       homogeneous=homogeneous, sampled=sampled.detach())


# ---------------------------------------------------------------------------- public API


def sup_gap(target: Net, pruned: Net, gap_spec: GapSpec, generator: torch.Generator, *,
            policy: ExecutionPolicy | None = None, workers: Executor | None = None) -> GapEstimate:
    """Estimate the gap ``sup_{‖x‖ ≤ r} ‖f(x) − F(x)‖₂`` from below (sampling + projected ascent).

    Args:
        target: F, one network or an ensemble with trial dim K.
        pruned: f, same architecture and trial dim as ``target``.
        gap_spec: budget: radius r, ``n_points``, ``n_restarts``, ``n_steps``, ``step_size``.
        generator: the only randomness (input sampling); same generator state → same result.
        policy, workers: how the forward passes run (:meth:`probprune.nets.Net.forward`; the
            values agree to rounding whatever the policy).

    Returns:
        :class:`GapEstimate`: ``value`` ``[K]`` (or 0-d), maximiser ``x`` ``[K, *input]``,
        ``n_evals = n_points + n_restarts·n_steps·4`` per member.

    Assumptions: none on the nets (any activation, biases); when both nets are bias-free
    with positively homogeneous activations the search runs on the unit sphere and is
    scaled by r (exact identity, see module docstring).

    >>> import torch
    >>> from probprune.config import GapSpec, NetSpec
    >>> F = Net.from_weights(NetSpec(widths=(2, 2)), [torch.eye(2)])
    >>> f = Net.from_weights(NetSpec(widths=(2, 2)), [torch.diag(torch.tensor([1.0, 0.0]))])
    >>> est = sup_gap(F, f, GapSpec(radius=2.0, n_points=64), torch.Generator().manual_seed(0))
    >>> round(float(est.value), 4)   # ‖D‖₂ · r = 1 · 2
    2.0
    """
    check_pair(target, pruned)
    fn, k = _diff_objective(target, pruned, policy, workers)
    homog = is_homogeneous(target) and is_homogeneous(pruned)
    return _estimate(fn, k, target, gap_spec, homog, generator, target.n_trials is None)


def sup_output(net: Net, gap_spec: GapSpec, generator: torch.Generator, *,
               policy: ExecutionPolicy | None = None, workers: Executor | None = None) -> GapEstimate:
    """Estimate ``sup_{‖x‖ ≤ r} ‖F(x)‖₂`` from below with the estimator of :func:`sup_gap`.

    Args:
        net: F, one network or an ensemble ``[K]``.
        gap_spec: the estimator budget (radius r …).
        generator: the only randomness.
        policy, workers: how the forward passes run (as in :func:`sup_gap`).
    """
    if not isinstance(net, Net):
        raise ProbPruneError(f"net: expected a Net, got {type(net).__name__}")
    check_finite(net, "weights")
    fn, k = _output_objective(net, policy, workers)
    return _estimate(fn, k, net, gap_spec, is_homogeneous(net), generator, net.n_trials is None)


def relative_gap(target: Net, pruned: Net, gap_spec: GapSpec, generator: torch.Generator, *,
                 policy: ExecutionPolicy | None = None, workers: Executor | None = None) -> RelativeGap:
    """Relative gap ``sup‖f − F‖ / sup‖F‖`` over the ball, both sups estimated the same way.

    The numerator is a lower bound on the gap and the denominator a lower bound on
    ``sup‖F‖``, so the ratio is an estimate (neither bound). A zero denominator gives inf/nan.
    """
    gap = sup_gap(target, pruned, gap_spec, generator, policy=policy, workers=workers)
    out = sup_output(target, gap_spec, generator, policy=policy, workers=workers)
    return RelativeGap(value=gap.value / out.value, gap=gap, output=out)


def mean_gap(target: Net, pruned: Net, x: Tensor, *, policy: ExecutionPolicy | None = None,
             workers: Executor | None = None) -> Tensor:
    """Average ``‖f(x) − F(x)‖₂`` over the given inputs (e.g. a test set).

    Args:
        target, pruned: F and f (single or ensembles ``[K]``).
        x: ``[N, *input]`` shared by all members, or ``[K, N, *input]``.
        policy, workers: how the forward passes run (as in :func:`sup_gap`).

    Returns:
        ``[K]`` or 0-d: the mean over the N inputs.
    """
    check_pair(target, pruned)
    shape = _input_shape(target)
    single = target.n_trials is None
    k = target.n_trials or 1
    if not isinstance(x, Tensor) or x.dim() < len(shape) + 1:
        raise ProbPruneError(f"x: expected [N, {', '.join(map(str, shape))}] inputs, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    shared = x.dim() == len(shape) + 1
    if tuple(x.shape[-len(shape):]) != shape or (not shared and (x.dim() != len(shape) + 2 or x.shape[0] != k)):
        raise ProbPruneError(f"x: shape {tuple(x.shape)} does not fit input {shape} with {k} member(s)")
    n = x.shape[0] if shared else x.shape[1]
    if n == 0:
        raise ProbPruneError("x: no inputs given")
    fn, _ = _diff_objective(target, pruned, policy, workers)
    flat = x.reshape(n, -1) if shared else x.reshape(k, n, -1)
    flat = flat.to(device=target.device, dtype=target.dtype)
    chunk = _chunk_points(target.device, k, _max_width(target))
    total = torch.zeros(k, dtype=torch.float64, device=target.device)
    with torch.no_grad():
        for s in range(0, n, chunk):
            part = flat[s:s + chunk] if shared else flat[:, s:s + chunk]
            total += fn(part).double().sum(dim=1)
    mean = (total / n).to(target.dtype)
    return mean[0] if single else mean
