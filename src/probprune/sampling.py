"""Draw target networks from a weight law (one network or a batched ensemble).

The paper's law: entries of layer i i.i.d. ``U[-a_i, a_i]``,
``a_i = K / sqrt(max(fan_out_i, fan_in_i))`` (conv: fan_in = c_in·k·k, fan_out = c_out·k·k).
The Gaussian law has the same variance ``a_i²/3``. Any callable with the
:class:`Law` signature can stand in for a :class:`~probprune.config.LawSpec`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

import torch
from torch import Tensor

from probprune.config import LawSpec, NetSpec, ProbPruneError, layer_scale
from probprune.nets import Net, cpu_parallel

__all__ = ["Law", "layer_scale", "layer_scales", "sample_net", "sample_tensor"]


class Law(Protocol):
    """A user law: returns a tensor of ``shape`` drawn with ``generator``.

    Args:
        shape: the tensor shape (weight ``(out, in)`` / ``(c_out, c_in, k, k)`` or bias ``(out,)``).
        a: the paper's scale a_i of this layer (callers may ignore it).
        generator: the only source of randomness allowed.
        device, dtype: where and how to allocate.
    """

    def __call__(self, shape: tuple[int, ...], a: float, generator: torch.Generator,
                 device: torch.device, dtype: torch.dtype) -> Tensor: ...


def layer_scales(spec: NetSpec, law: LawSpec) -> list[float]:
    """a_i for every layer of ``spec`` (the bound for magnitude thresholds τ_i = ρ·a_i)."""
    return [layer_scale(s, law.scale) for s in spec.weight_shapes()]


def sample_tensor(law: LawSpec | Law, shape: tuple[int, ...], a: float, generator: torch.Generator,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """One tensor of i.i.d. entries from ``law`` at scale ``a``.

    Uniform: ``U[-a, a)`` drawn in place (``Tensor.uniform_``); Gaussian: ``N(0, 1)·a/√3``.
    """
    dev = torch.device(device)
    if isinstance(law, LawSpec):
        if law.kind == "uniform":
            # one pass: U[-a, a) drawn in place
            return torch.empty(shape, device=dev, dtype=dtype).uniform_(-a, a, generator=generator)
        z = torch.randn(shape, generator=generator, device=dev, dtype=dtype)
        return z * (a / math.sqrt(3.0))
    t = law(tuple(shape), a, generator, dev, dtype)
    if not isinstance(t, Tensor) or tuple(t.shape) != tuple(shape):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ProbPruneError(f"law: the user law returned {got}, expected shape {tuple(shape)}")
    return t.to(device=dev, dtype=dtype)


def sample_net(
    spec: NetSpec,
    law: LawSpec | Law,
    generator: torch.Generator | Sequence[torch.Generator],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    scale: float | None = None,
    *,
    workers: Executor | None = None,
) -> Net:
    """Sample a target network, or an ensemble with one generator per member.

    Layers are drawn in order from the generator (weights, then the bias of that layer,
    biases at the same scale a_i), so layers of equal shape get different weights and
    member k of an ensemble is bit-identical to ``sample_net(spec, law, generators[k])``.

    Args:
        spec: architecture.
        law: a :class:`LawSpec` or a user :class:`Law`.
        generator: one generator → one network; a sequence of ``n_members`` generators → an
            ensemble (weights ``[n_members, …]``, the trial dim first).
        device, dtype: where and how to allocate.
        scale: the paper's scale K in ``a_i = K/√max(h_i, h_{i−1})`` for a user law (default √6;
            a ``LawSpec`` carries its own).
        workers: CPU workers (the runner's pool) on which the members of an ensemble draw in
            parallel, each from its own generator; ``None`` draws them one after another.

    >>> from probprune.rng import make_generator
    >>> net = sample_net(NetSpec(widths=(4, 8, 2)), LawSpec(scale=2.0), make_generator(0))
    >>> bool(net.weights[0].abs().max() <= 2.0 / 8 ** 0.5)
    True
    """
    k_scale = law.scale if isinstance(law, LawSpec) else (math.sqrt(6.0) if scale is None else scale)
    if isinstance(generator, torch.Generator):
        gens: list[torch.Generator] = [generator]
        single = True
    else:
        gens = list(generator)
        single = False
        if not gens:
            raise ProbPruneError("generator: an empty sequence of generators")
    shapes = spec.weight_shapes()
    if single:
        ws: list[Tensor] = []
        bs: list[Tensor | None] = []
        for shape in shapes:
            a = layer_scale(shape, k_scale)
            ws.append(sample_tensor(law, shape, a, gens[0], device, dtype))
            bs.append(sample_tensor(law, (shape[0],), a, gens[0], device, dtype) if spec.bias else None)
        return Net.from_weights(spec, ws, bs)
    # ensemble: every member draws straight into its slice of the stacked tensors (no copies);
    # per member the draws come in the same order as a one-network call, so member k is
    # bit-identical to sample_net(spec, law, generators[k])
    dev = torch.device(device)
    k = len(gens)
    weights = [torch.empty((k, *shape), device=dev, dtype=dtype) for shape in shapes]
    biases: list[Tensor | None] = [torch.empty((k, shape[0]), device=dev, dtype=dtype) if spec.bias else None
                                   for shape in shapes]
    in_place = isinstance(law, LawSpec) and law.kind == "uniform"

    def member(j: int) -> None:
        g = gens[j]
        for i, shape in enumerate(shapes):
            a = layer_scale(shape, k_scale)
            targets = [weights[i][j]] + ([biases[i][j]] if spec.bias else [])  # type: ignore[index]
            for t in targets:
                if in_place:
                    t.uniform_(-a, a, generator=g)
                else:
                    t.copy_(sample_tensor(law, tuple(t.shape), a, g, dev, dtype))

    if dev.type == "cpu" and isinstance(law, LawSpec):
        # members draw from their own generators: on a CPU they may run on separate cores (a user
        # law may not be thread-safe, so it keeps the loop)
        cpu_parallel([functools.partial(member, j) for j in range(k)], workers)
    else:
        for j in range(k):
            member(j)
    return Net.from_weights(spec, weights, biases)
