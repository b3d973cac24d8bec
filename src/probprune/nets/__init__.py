"""Target and pruned networks as values: weights + activations, with an optional trial dim.

A :class:`Net` holds the weights of an FCN or CNN described by a
:class:`~probprune.config.NetSpec`. Every weight may carry a leading trial dimension
``K`` so that an ensemble of ``K`` networks of one architecture is one ``Net`` whose
:meth:`Net.forward` runs all members in one batched pass (linear layers as batched
matrix products, conv layers as one grouped convolution).

Parameter names follow ``to_module(net).state_dict()`` (``0.weight``, ``2.weight`` …),
so masks, checkpoints and user modules share one naming.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probprune.config import ConvSpec, ExecutionPolicy, NetSpec, ProbPruneError

if TYPE_CHECKING:  # pragma: no cover
    from probprune.nets.graph import Graph

__all__ = [
    "Activation",
    "Layer",
    "Net",
    "check_dtype",
    "check_finite",
    "check_pair",
    "compile_chain",
    "from_module",
    "from_state_dict",
    "stack",
    "to_module",
]


@dataclass(frozen=True)
class Activation:
    """An elementwise activation σ with its Lipschitz constant L and whether σ(0) = 0.

    >>> Activation("sigmoid").lipschitz
    0.25
    >>> Activation("relu").zero_at_zero
    True
    """

    name: str = "relu"
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.name not in ("relu", "leaky_relu", "tanh", "sigmoid", "identity"):
            raise ProbPruneError(f"activation={self.name!r}: unknown activation")

    @property
    def lipschitz(self) -> float:
        """Lipschitz constant L (relu, leaky_relu with slope ≤ 1, tanh, identity: 1; sigmoid: 1/4)."""
        return 0.25 if self.name == "sigmoid" else 1.0

    @property
    def zero_at_zero(self) -> bool:
        """Whether σ(0) = 0 (false for sigmoid only)."""
        return self.name != "sigmoid"

    @property
    def positively_homogeneous(self) -> bool:
        """Whether σ(c·x) = c·σ(x) for c ≥ 0 (relu, leaky_relu, identity)."""
        return self.name in ("relu", "leaky_relu", "identity")

    def apply_(self, x: Tensor) -> Tensor:
        """σ applied in place (for fresh intermediate tensors outside autograd); returns ``x``."""
        if self.name == "relu":
            return torch.relu_(x)
        if self.name == "leaky_relu":
            return F.leaky_relu_(x, self.negative_slope)
        if self.name == "tanh":
            return torch.tanh_(x)
        if self.name == "sigmoid":
            return torch.sigmoid_(x)
        return x

    def __call__(self, x: Tensor) -> Tensor:
        if self.name == "relu":
            return torch.relu(x)
        if self.name == "leaky_relu":
            return F.leaky_relu(x, self.negative_slope)
        if self.name == "tanh":
            return torch.tanh(x)
        if self.name == "sigmoid":
            return torch.sigmoid(x)
        return x

    def to_module(self) -> nn.Module:
        """The matching ``torch.nn`` module."""
        if self.name == "relu":
            return nn.ReLU()
        if self.name == "leaky_relu":
            return nn.LeakyReLU(self.negative_slope)
        if self.name == "tanh":
            return nn.Tanh()
        if self.name == "sigmoid":
            return nn.Sigmoid()
        return nn.Identity()


IDENTITY = Activation("identity")


@dataclass(frozen=True, eq=False)
class Layer:
    """One weight layer, followed by its activation (and for conv layers a max-pool).

    Args:
        weight: ``[*T, out, in]`` (linear) or ``[*T, c_out, c_in, k, k]`` (conv); ``*T`` is
            the optional trial dim.
        bias: ``[*T, out]`` or ``None``.
        activation: σ applied after the layer (identity for the last layer).
        conv: the conv geometry, ``None`` for a linear layer.
        flatten: flatten the feature map after this layer (last conv layer).
    """

    weight: Tensor
    bias: Tensor | None
    activation: Activation
    conv: ConvSpec | None = None
    flatten: bool = False

    @property
    def is_conv(self) -> bool:
        """Whether this is a conv layer."""
        return self.conv is not None


def _has_trial(layer: Layer) -> bool:
    return layer.weight.dim() == (5 if layer.is_conv else 3)


@dataclass(frozen=True, eq=False)
class Net:
    """A network (or an ensemble of ``n_trials`` networks) of one architecture.

    Paper: ``F(x) = W_l σ_{l−1}(W_{l−1} … σ_1(W_1 x))`` (biases optional here).

    >>> import torch
    >>> from probprune.config import NetSpec
    >>> spec = NetSpec(widths=(3, 5, 2))
    >>> net = Net.from_weights(spec, [torch.ones(5, 3), torch.ones(2, 5)])
    >>> net(torch.ones(1, 3)).tolist()
    [[15.0, 15.0]]
    """

    spec: NetSpec
    layers: tuple[Layer, ...]

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_weights(
        spec: NetSpec,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor | None] | None = None,
    ) -> Net:
        """Build a ``Net`` from per-layer weights (and biases), checking shapes and dtypes.

        All weights must share one trial shape (none, or a leading ``K``) and one dtype,
        float32 or float64 (:func:`check_dtype`: integer, bool, complex, float16 and bfloat16
        tensors are refused); each bias must have its weight's dtype.
        """
        shapes = spec.weight_shapes()
        names = spec.layer_names()
        if len(weights) != len(shapes):
            raise ProbPruneError(
                f"weights: {len(weights)} tensors given, the architecture {spec.to_arch()} has {len(shapes)} layers")
        if biases is None:
            biases = [None] * len(shapes)
        if len(biases) != len(shapes):
            raise ProbPruneError(f"biases: {len(biases)} given for {len(shapes)} layers")
        act = Activation(spec.activation, spec.negative_slope)
        trial: tuple[int, ...] | None = None
        layers: list[Layer] = []
        n_conv = len(spec.convs)
        for i, (w, b, shape, name) in enumerate(zip(weights, biases, shapes, names)):
            if not isinstance(w, Tensor):
                raise ProbPruneError(f"{name}: expected a tensor, got {type(w).__name__}")
            check_dtype(name, w)
            if w.dtype != weights[0].dtype:
                raise ProbPruneError(f"{name}: dtype {w.dtype} differs from {names[0]}'s {weights[0].dtype}; "
                                     "all layers must share one dtype")
            lead = tuple(w.shape[: w.dim() - len(shape)])
            if tuple(w.shape[w.dim() - len(shape):]) != shape or len(lead) > 1:
                raise ProbPruneError(
                    f"{name}: shape {tuple(w.shape)} does not fit the architecture {spec.to_arch()} "
                    f"(expected {shape}, optionally with a leading trial dim)")
            if trial is None:
                trial = lead
            elif lead != trial:
                raise ProbPruneError(f"{name}: trial dims {lead} differ from the first layer's {trial}")
            if spec.bias and b is None:
                raise ProbPruneError(f"{name.replace('weight', 'bias')}: the architecture has biases, none given")
            if b is not None:
                bname = name.replace("weight", "bias")
                if not isinstance(b, Tensor):
                    raise ProbPruneError(f"{bname}: expected a tensor or None, got {type(b).__name__}")
                check_dtype(bname, b)
                if b.dtype != w.dtype:
                    raise ProbPruneError(f"{bname}: dtype {b.dtype} differs from {name}'s {w.dtype}; a bias must "
                                         "share its weight's dtype")
                if tuple(b.shape) != (*lead, shape[0]):
                    raise ProbPruneError(
                        f"{name.replace('weight', 'bias')}: shape {tuple(b.shape)}, expected {(*lead, shape[0])}")
            conv = spec.convs[i] if i < n_conv else None
            layers.append(Layer(
                weight=w, bias=b,
                activation=act if i < len(shapes) - 1 else IDENTITY,
                conv=conv, flatten=(conv is not None and i == n_conv - 1),
            ))
        return Net(spec=spec, layers=tuple(layers))

    # ------------------------------------------------------------------ views
    @property
    def n_trials(self) -> int | None:
        """Size of the leading trial dim, or ``None`` for a single network."""
        first = self.layers[0]
        return int(first.weight.shape[0]) if _has_trial(first) else None

    @property
    def weights(self) -> tuple[Tensor, ...]:
        """The weight tensors, in layer order."""
        return tuple(layer.weight for layer in self.layers)

    @property
    def biases(self) -> tuple[Tensor | None, ...]:
        """The bias tensors (or ``None``), in layer order."""
        return tuple(layer.bias for layer in self.layers)

    @property
    def names(self) -> list[str]:
        """Weight parameter names (``0.weight`` …), as in :func:`to_module`'s state dict."""
        return self.spec.layer_names()

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.layers[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.layers[0].weight.dtype

    def with_weights(self, weights: Sequence[Tensor], biases: Sequence[Tensor | None] | None = None) -> Net:
        """A new ``Net`` with other weights (biases kept unless given)."""
        return Net.from_weights(self.spec, weights, self.biases if biases is None else biases)

    def member(self, k: int) -> Net:
        """Member ``k`` of an ensemble, without the trial dim."""
        if self.n_trials is None:
            raise ProbPruneError("member: this Net has no trial dim")
        if not 0 <= k < self.n_trials:
            raise ProbPruneError(f"member k={k}: must be in [0, {self.n_trials})")
        return Net.from_weights(self.spec, [w[k] for w in self.weights],
                                [None if b is None else b[k] for b in self.biases])

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Net:
        """A copy on another device / dtype."""
        return Net.from_weights(
            self.spec, [w.to(device=device, dtype=dtype) for w in self.weights],
            [None if b is None else b.to(device=device, dtype=dtype) for b in self.biases])

    def state_dict(self) -> dict[str, Tensor]:
        """Weights and biases keyed as in ``to_module(net).state_dict()``."""
        out: dict[str, Tensor] = {}
        for name, layer in zip(self.names, self.layers):
            out[name] = layer.weight
            if layer.bias is not None:
                out[name.replace(".weight", ".bias")] = layer.bias
        return out

    def n_params(self) -> int:
        """Number of weights per member (biases excluded)."""
        return sum(math.prod(s) for s in self.spec.weight_shapes())

    def to_graph(self) -> Graph:
        """This chain as a :class:`~probprune.nets.graph.Graph` (exact; :func:`probprune.nets.chain.graph_of`)."""
        from probprune.nets.chain import graph_of

        return graph_of(self)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, return_hidden: bool = False, *, policy: ExecutionPolicy | None = None,
                workers: Executor | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Evaluate on inputs.

        Args:
            x: ``[N, d_0]`` (FCN) or ``[N, C, H, W]`` (CNN); for an ensemble, ``[K, N, …]``
                (an input without the trial dim is shared by all members).
            return_hidden: also return the post-activation output of every hidden layer.
            policy: ``policy.forward`` picks the form of an FCN ensemble's forward outside autograd
                (default ``auto``; see the note on the member-by-member forward below).
            workers: single-threaded CPU workers for the member-by-member form (the runner's
                :func:`probprune.runner.execution.execution` owns them). Without workers, ``auto``
                runs a CPU ensemble batched and ``members`` runs the row blocks one after another
                on this thread.

        Returns:
            ``[(K,) N, h_l]`` outputs (and the hidden list).
        """
        k = self.n_trials
        base = 2 if self.spec.kind == "fcn" else 4
        if x.dim() == base + 1 and k is None:
            raise ProbPruneError(f"input shape {tuple(x.shape)}: has a trial dim but the Net has none")
        if x.dim() not in (base, base + 1):
            raise ProbPruneError(f"input shape {tuple(x.shape)}: expected {base} dims (or {base + 1} with trials)")
        mode = "auto" if policy is None else policy.forward
        if k is not None and not return_hidden and _member_loop(self, x, mode, workers is not None):
            return _forward_members(self.layers, x, k, workers)
        if k is not None and x.dim() == base:
            x = x.unsqueeze(0).expand(k, *x.shape)
        hidden: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x = _apply_layer(layer, x, k)
            if i < len(self.layers) - 1:
                hidden.append(x)
        return (x, hidden) if return_hidden else x

    __call__ = forward


# ---------------------------------------------------------------------- member-by-member forward
#
# An FCN ensemble can run as one batched product per layer (``[K, N, in] @ [K, in, out]``) or
# member by member, each member's points in row blocks carried through every layer. Outside
# autograd the second is faster where it matters (benchmarks/RESULTS.md, "Third session"):
# - on a CPU a block's activations stay in cache, and the (member, block) tasks run in parallel
#   on the caller's single-threaded workers (``workers``: the runner owns the pool and sizes it
#   by ``ExecutionPolicy.threads``): small products scale better across cores this way than
#   split inside one product. Every block is computed by one single-threaded worker whatever the
#   ensemble size or worker count, so a member's outputs do not depend on how trials are chunked
#   or how many workers run. Without workers ``auto`` keeps the batched form on a CPU: row blocks
#   on the calling thread's own intra-op threads measured slower than one batched product
#   (a forced ``members`` runs them there);
# - on a GPU each hidden ReLU layer is one cuBLASLt product with the ReLU in its epilogue
#   (``torch._addmm_activation``): no separate ReLU pass re-reads and re-writes the activations.
#   Small products on a GPU are launch-bound, so there the batched form stays.
# ``ExecutionPolicy(forward="batched"|"members")`` forces one form (benchmarks compare both; the
# runner reads the ``PROBPRUNE_FORWARD`` knob into the policy).

_MEMBER_BLOCK_ELEMS = 1 << 19
"""CPU: rows per block so that one block's widest activation holds about this many elements."""
_MEMBER_MIN_ELEMS_CPU = 1 << 15
"""CPU: the member loop is used when points × widest layer reaches this (tiny batches stay batched)."""
_MEMBER_MIN_ROWS = 4
"""Below this many points the ensemble runs batched in every mode: a product of one or two rows takes another
kernel (a matrix-vector path) in the member loop than in the batched product, so the two forms would differ in
the last bits there, while elsewhere they agree bit for bit (``tests/test_runner_execution.py``)."""
_MEMBER_MIN_ELEMS_CUDA = 1 << 22
"""CUDA: the member loop is used when points × widest layer reaches this (each product is large)."""

def cpu_parallel(calls: Sequence[Callable[[], None]], workers: Executor | None = None) -> None:
    """Run CPU work items on ``workers`` (e.g. the runner's single-threaded pool), else one after another.

    Torch releases the GIL inside its kernels, so independent items (ensemble members, row
    blocks) run on separate cores. Nothing global is read or changed here: the caller owns the
    workers and their thread settings. With workers, every item runs on one of them (even a
    single item), so an item's result does not depend on how many items there are. Exceptions
    of an item are raised here.
    """
    if workers is None:
        for call in calls:
            call()
        return
    for fut in [workers.submit(call) for call in calls]:
        fut.result()


def _member_loop(net: Net, x: Tensor, mode: str, pooled: bool) -> bool:
    """Whether :meth:`Net.forward` runs this ensemble member by member (see the note above)."""
    if mode == "batched" or any(layer.conv is not None for layer in net.layers):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(
            layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad)
            for layer in net.layers)):
        return False
    if int(x.shape[-2]) < _MEMBER_MIN_ROWS:
        return False
    if mode == "members":
        return True
    size = int(x.shape[-2]) * max(int(layer.weight.shape[-2]) for layer in net.layers)
    if x.device.type == "cpu":  # auto: only on single-threaded workers (on one thread the batched form is faster)
        return pooled and size >= _MEMBER_MIN_ELEMS_CPU
    return x.device.type == "cuda" and size >= _MEMBER_MIN_ELEMS_CUDA


def _forward_members(layers: Sequence[Layer], x: Tensor, k: int, workers: Executor | None) -> Tensor:
    """FCN ensemble forward, member by member in row blocks; ``x`` is ``[N, d]`` (shared) or ``[K, N, d]``."""
    n = int(x.shape[-2])
    if x.dim() == 3 and x.shape[0] != k:
        raise ProbPruneError(f"input shape {tuple(x.shape)}: trial dim {x.shape[0]} differs from the Net's {k}")
    cuda = x.device.type == "cuda"
    width = max(int(layer.weight.shape[-2]) for layer in layers)
    block = n if cuda else min(n, max(512, _MEMBER_BLOCK_ELEMS // max(1, width)))
    out = torch.empty(k, n, int(layers[-1].weight.shape[-2]), dtype=x.dtype, device=x.device)
    # ReLU layers on a GPU: the activation in the product's epilogue (needs a bias vector; zeros if none)
    fused = [cuda and layer.activation.name == "relu" for layer in layers]
    zeros = [torch.zeros(int(layer.weight.shape[-2]), dtype=x.dtype, device=x.device)
             if f and layer.bias is None else None for f, layer in zip(fused, layers)]

    def run(j: int, s: int) -> None:
        y = (x if x.dim() == 2 else x[j])[s:s + block]
        for i, layer in enumerate(layers):
            b = zeros[i] if layer.bias is None else layer.bias[j]
            wt = layer.weight[j].t()
            if fused[i] and b is not None:
                y = torch._addmm_activation(b, y, wt)
                continue
            y = torch.mm(y, wt) if b is None else torch.addmm(b, y, wt)
            layer.activation.apply_(y)
        out[j, s:s + block] = y

    tasks = [(j, s) for j in range(k) for s in range(0, n, block)]
    if cuda:
        for j, s in tasks:
            run(j, s)
    else:
        cpu_parallel([functools.partial(run, j, s) for j, s in tasks], workers)
    return out


def _apply_layer(layer: Layer, x: Tensor, k: int | None) -> Tensor:
    w, b = layer.weight, layer.bias
    if layer.conv is None:
        if k is None:
            y = F.linear(x, w, b)
        else:
            y = torch.matmul(x, w.transpose(-1, -2))
            if b is not None:
                y = y + b.unsqueeze(-2)
        # y is a fresh tensor: outside autograd the activation can overwrite it (saves a pass + memory)
        return layer.activation.apply_(y) if not y.requires_grad else layer.activation(y)
    conv = layer.conv
    pad = conv.pad
    if k is None:
        z = x
        weight, bias, groups = w, b, 1
    else:
        kk, n = x.shape[0], x.shape[1]
        z = x.transpose(0, 1).reshape(n, kk * x.shape[2], x.shape[3], x.shape[4])
        weight = w.reshape(kk * w.shape[1], *w.shape[2:])
        bias = None if b is None else b.reshape(-1)
        groups = kk
    if conv.padding_mode == "circular" and pad > 0:
        z = F.pad(z, (pad, pad, pad, pad), mode="circular")
        y = F.conv2d(z, weight, bias, stride=conv.stride, padding=0, groups=groups)
    else:
        y = F.conv2d(z, weight, bias, stride=conv.stride, padding=pad, groups=groups)
    y = layer.activation(y)
    if conv.pool > 1:
        y = F.max_pool2d(y, conv.pool)
    if k is not None:
        n = y.shape[0]
        y = y.reshape(n, k, -1, y.shape[-2], y.shape[-1]).transpose(0, 1)
    if layer.flatten:
        y = y.flatten(start_dim=-3)
    return y


# ---------------------------------------------------------------------- helpers


def stack(nets: Sequence[Net]) -> Net:
    """Stack single networks of one architecture into an ensemble with a trial dim."""
    if not nets:
        raise ProbPruneError("stack: no networks given")
    spec = nets[0].spec
    for n in nets:
        if n.spec != spec:
            raise ProbPruneError(f"stack: architectures differ ({n.spec.to_arch()} vs {spec.to_arch()})")
        if n.n_trials is not None:
            raise ProbPruneError("stack: networks must not already have a trial dim")
    weights = [torch.stack([n.weights[i] for n in nets]) for i in range(len(nets[0].layers))]
    biases: list[Tensor | None] = []
    for i in range(len(nets[0].layers)):
        bs = [n.biases[i] for n in nets]
        biases.append(None if bs[0] is None else torch.stack([b for b in bs if b is not None]))
    return Net.from_weights(spec, weights, biases)


SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
"""Weight/bias dtypes a ``Net`` accepts: the certified bounds assume float32 or float64 arithmetic."""


def compile_chain(graph: Graph) -> Net:
    """The chain :class:`Net` a chain graph compiles to, exactly, or refused naming the node.

    See :func:`probprune.nets.chain.compile_chain`; :meth:`Net.to_graph` is the inverse.
    """
    from probprune.nets.chain import compile_chain as _compile

    return _compile(graph)


def check_dtype(name: str, t: Tensor) -> None:
    """Raise :class:`ProbPruneError` naming ``name`` unless ``t`` is float32 or float64.

    Integer, bool and complex tensors are not real weights; float16/bfloat16 (and float8) are
    refused rather than silently widened, because the certified bounds assume float32/float64
    arithmetic in the networks' forward pass.

    >>> check_dtype("0.weight", torch.zeros(2, dtype=torch.float16))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    probprune.config.ProbPruneError: 0.weight: dtype torch.float16 is not supported: ...
    """
    if t.dtype in SUPPORTED_DTYPES:
        return
    if t.dtype.is_floating_point:
        raise ProbPruneError(f"{name}: dtype {t.dtype} is not supported: the certified bounds assume float32 or "
                             "float64 arithmetic; convert to float32 or float64 first, e.g. model.float()")
    raise ProbPruneError(f"{name}: dtype {t.dtype} is not supported: weights and biases must be real floating "
                         "point (float32 or float64)")


def check_finite(net: Net, what: str = "weights") -> None:
    """Raise :class:`ProbPruneError` if any weight or bias is NaN or infinite."""
    tensors = net.state_dict()
    if not tensors:
        return
    # a sum is finite when every entry is (a NaN/inf entry makes it NaN/inf): one reduction per
    # tensor and one host synchronisation for all; only a non-finite sum (NaN/inf somewhere, or an
    # overflow of finite entries) needs the elementwise check
    sums = torch.stack([t.sum().to(torch.float64) for t in tensors.values()])
    if bool(torch.isfinite(sums).all()):
        return
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            bad = t[~torch.isfinite(t)].flatten()[0].item()
            raise ProbPruneError(f"{what} {name}: contains non-finite value {bad}")


def check_pair(target: Net, pruned: Net) -> None:
    """Raise :class:`ProbPruneError` unless target and pruned share architecture and trial dim and are finite."""
    if not isinstance(target, Net) or not isinstance(pruned, Net):
        raise ProbPruneError(f"target/pruned: expected Net values, got {type(target).__name__}, "
                             f"{type(pruned).__name__}")
    if target.spec != pruned.spec:
        raise ProbPruneError(f"pruned: architecture {pruned.spec.to_arch()} (activation {pruned.spec.activation}, "
                             f"bias {pruned.spec.bias}) differs from the target's {target.spec.to_arch()} "
                             f"(activation {target.spec.activation}, bias {target.spec.bias})")
    if target.n_trials != pruned.n_trials:
        raise ProbPruneError(f"pruned: n_trials={pruned.n_trials} differs from the target's {target.n_trials}")
    check_finite(target, "target")
    check_finite(pruned, "pruned")


def to_module(net: Net) -> nn.Sequential:
    """An ``nn.Sequential`` of plain ``nn.Linear``/``nn.Conv2d``/activation layers with identical outputs.

    Indices match :attr:`Net.names` (``0.weight``, ``2.weight`` …). Only single networks
    (no trial dim) can be converted.
    """
    if net.n_trials is not None:
        raise ProbPruneError("to_module: take a member first (net.member(k)); ensembles have a trial dim")
    mods: list[nn.Module] = []
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        w = layer.weight
        has_b = layer.bias is not None
        m: nn.Module
        if layer.conv is not None:
            c = layer.conv
            m = nn.Conv2d(w.shape[1], w.shape[0], c.kernel, stride=c.stride, padding=c.pad,
                          padding_mode=c.padding_mode, bias=has_b, device=w.device, dtype=w.dtype)
        else:
            m = nn.Linear(w.shape[1], w.shape[0], bias=has_b, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            if layer.bias is not None:
                m.bias.copy_(layer.bias)  # type: ignore[union-attr]
        mods.append(m)
        if i < last:  # hidden layers always get their activation module (nn.Identity too): stable indices
            mods.append(layer.activation.to_module())
        if layer.conv is not None and layer.conv.pool > 1:
            mods.append(nn.MaxPool2d(layer.conv.pool))
        if layer.flatten:
            mods.append(nn.Flatten())
    return nn.Sequential(*mods)


# ---------------------------------------------------------------------- from_module: exact or refused
#
# A conversion is exact or refused. Two independent defences:
# 1. structure: every module is matched by exact type (a subclass may override ``forward``), with
#    no hooks and no instance-level ``forward``; the order of the modules must be the order in
#    which :meth:`Net.forward` applies them (weight layer, its activation, its max-pool, the
#    flatten after the last conv layer …, the output layer with nothing after it);
# 2. numbers: the converted Net and a float64 copy of the module are run side by side, layer by
#    layer, on fixed random inputs, and must agree to float64 rounding.

_ACT_TYPES: dict[type, str] = {
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
}
_NOOP_TYPES: tuple[type, ...] = (nn.Identity, nn.Dropout)
"""Identity maps of the eval-mode function (``nn.Dropout`` is the identity in eval mode)."""
_ACCEPTED_TYPES: tuple[type, ...] = (
    nn.Sequential, nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.Flatten, *_ACT_TYPES, *_NOOP_TYPES)

_CHECK_SEED = 13
"""Seed of the local generator that draws the inputs of the numerical conversion check."""
_CHECK_POINTS = 256
"""Inputs of the numerical conversion check: norms uniform in [0, 1] (half) and [0, 10] (half), and 0."""
_CHECK_SLACK = 64.0
"""Factor on the float64 rounding estimate ``(fan_in + 1)·u·scale`` allowed between the two sides."""

_ModuleKind = Literal["weight", "act", "pool", "flatten", "noop"]


@dataclass(frozen=True, eq=False)
class _Leaf:
    """One module of the user's model in forward order, with its index path (``"3"``, ``"1.0"``)."""

    path: str
    module: nn.Module
    kind: _ModuleKind

    @property
    def label(self) -> str:
        return f"layer {self.path} ({type(self.module).__name__})"


def _walk(seq: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module | None]]:
    """The modules a ``nn.Sequential`` applies, in order, nested ``nn.Sequential`` flattened.

    ``_modules`` (not ``named_children``, which drops repeats) is what ``Sequential.forward`` runs.
    """
    out: list[tuple[str, nn.Module | None]] = []
    for name, m in seq._modules.items():
        path = f"{prefix}{name}"
        if type(m) is nn.Sequential and not _has_hooks(m):
            out.extend(_walk(m, path + "."))
        else:
            out.append((path, m))
    return out


def _global_hooks_present() -> bool:
    """Whether hooks registered for every module (``register_module_forward_hook`` …) exist."""
    glob = torch.nn.modules.module
    return bool(getattr(glob, "_global_forward_hooks", None) or getattr(glob, "_global_forward_pre_hooks", None))


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks) or "forward" in vars(m)


def _classify(path: str, m: nn.Module | None) -> _Leaf:
    """Refuse any module whose ``forward`` is not exactly the one the Net applies."""
    if m is None:
        raise ProbPruneError(f"from_module: layer {path} is None; nn.Sequential cannot run it")
    name = type(m).__name__
    if _has_hooks(m):
        raise ProbPruneError(
            f"from_module: layer {path} ({name}) has forward hooks or an overridden forward (e.g. from "
            "torch.nn.utils.prune or weight_norm), which change its function; remove them first "
            "(e.g. torch.nn.utils.prune.remove(module, 'weight'))")
    t = type(m)
    if t not in _ACCEPTED_TYPES:
        base = next((b for b in _ACCEPTED_TYPES if isinstance(m, b)), None)
        if base is not None:
            raise ProbPruneError(
                f"from_module: layer {path} is {name}, a subclass of nn.{base.__name__}: its forward may differ "
                f"from nn.{base.__name__}'s, so it is refused (types are matched exactly); if it computes the "
                f"same function, copy its parameters into a plain nn.{base.__name__}")
        raise ProbPruneError(
            f"from_module: layer {path} of type {name} is not supported (supported: nn.Linear, nn.Conv2d, "
            "nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, "
            "nested nn.Sequential)")
    if t in (nn.Linear, nn.Conv2d):
        return _Leaf(path, m, "weight")
    if t in _ACT_TYPES:
        return _Leaf(path, m, "act")
    if t is nn.MaxPool2d:
        return _Leaf(path, m, "pool")
    if t is nn.Flatten:
        if (m.start_dim, m.end_dim) != (1, -1):  # type: ignore[union-attr]
            raise ProbPruneError(f"from_module: layer {path} Flatten(start_dim={m.start_dim}, "
                                 f"end_dim={m.end_dim}): only Flatten(start_dim=1, end_dim=-1) is supported")
        return _Leaf(path, m, "flatten")
    if t is nn.Sequential:  # a nested Sequential with hooks
        raise ProbPruneError(f"from_module: layer {path} (Sequential) has forward hooks; remove them first")
    return _Leaf(path, m, "noop")


def _pool_size(leaf: _Leaf) -> int:
    m = cast(nn.MaxPool2d, leaf.module)  # _classify matched the exact type

    def pair(v: object) -> tuple[object, object]:
        return (v[0], v[1]) if isinstance(v, (tuple, list)) and len(v) == 2 else (v, v)

    k, s, p, d = pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation)
    if not (isinstance(k[0], int) and k[0] == k[1] and s == k and p == (0, 0) and d == (1, 1)
            and not m.ceil_mode and not m.return_indices):
        raise ProbPruneError(
            f"from_module: {leaf.label} kernel_size={m.kernel_size}, stride={m.stride}, padding={m.padding}, "
            f"dilation={m.dilation}, ceil_mode={m.ceil_mode}: only a square non-overlapping max-pool "
            "(stride == kernel_size, no padding, no dilation, floor mode, no indices) is supported")
    return int(k[0])


def _conv_spec(leaf: _Leaf) -> ConvSpec:
    m = cast(nn.Conv2d, leaf.module)  # _classify matched the exact type
    ks, st, pd, dl = m.kernel_size, m.stride, m.padding, m.dilation
    if isinstance(pd, str) or ks[0] != ks[1] or st[0] != st[1] or pd[0] != pd[1] or dl != (1, 1) or m.groups != 1:
        raise ProbPruneError(
            f"from_module: {leaf.label} kernel_size={ks}, stride={st}, padding={pd}, dilation={dl}, "
            f"groups={m.groups}: needs a square kernel/stride/padding (integers), no dilation, groups=1")
    if m.padding_mode not in ("zeros", "circular"):
        raise ProbPruneError(f"from_module: {leaf.label} padding_mode={m.padding_mode!r}: only 'zeros' and "
                             "'circular' are supported")
    # forward reads the kernel from the weight and a circular pad from a list fixed at construction:
    # attributes edited afterwards would describe another function
    w = m.weight
    if isinstance(w, Tensor) and w.dim() == 4 and tuple(w.shape[-2:]) != tuple(ks):
        raise ProbPruneError(f"from_module: {leaf.label} weight shape {tuple(w.shape)} does not match "
                             f"kernel_size={ks}")
    if m.padding_mode != "zeros" and list(m._reversed_padding_repeated_twice) != [pd[0]] * 4:
        raise ProbPruneError(f"from_module: {leaf.label} padding={pd} differs from the padding its forward applies "
                             f"({list(m._reversed_padding_repeated_twice)}); rebuild the layer instead of editing it")
    pad = None if pd[0] == ks[0] // 2 else pd[0]
    return ConvSpec(m.out_channels, ks[0], st[0], pad, m.padding_mode)  # type: ignore[arg-type]


def _param(leaf: _Leaf, attr: str) -> Tensor | None:
    t = getattr(leaf.module, attr)
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise ProbPruneError(f"from_module: {leaf.label} {attr} is a {type(t).__name__}, not a tensor")
    check_dtype(f"from_module: {leaf.label} {attr}", t)
    if t.is_meta:
        raise ProbPruneError(f"from_module: {leaf.label} {attr} is on the meta device (no values); "
                             "load the weights first")
    if t.layout is not torch.strided:
        raise ProbPruneError(f"from_module: {leaf.label} {attr} has layout {t.layout}; only dense (strided) "
                             "tensors are supported (call .to_dense() first)")
    if not bool(torch.isfinite(t).all()):
        raise ProbPruneError(f"from_module: {leaf.label} {attr} contains non-finite values (NaN or inf)")
    return t.detach().clone()


def from_module(seq: nn.Module, input_shape: tuple[int, int, int] | None = None) -> Net:
    """Read a plain ``nn.Sequential`` into a ``Net`` that computes exactly the same function, or refuse.

    Accepted, by **exact type** (subclasses, modules with forward hooks or an instance-level
    ``forward`` are refused): ``nn.Linear``, ``nn.Conv2d`` (square kernel/stride/padding, zeros or
    circular padding, no dilation, groups 1), ``nn.ReLU``, ``nn.LeakyReLU`` (slope in [0, 1]),
    ``nn.Tanh``, ``nn.Sigmoid``, ``nn.MaxPool2d`` (square, stride = kernel, no padding),
    ``nn.Flatten`` (default dims), ``nn.Identity``, ``nn.Dropout`` and nested ``nn.Sequential``
    (flattened: a Sequential is the composition of its children; index paths like ``1.0`` name
    nested layers in messages).

    The order must be the one :meth:`Net.forward` applies: ``[Flatten]`` (FCN input only), then
    per hidden layer ``weight → activation [→ MaxPool2d] [→ Flatten after the last conv]``, then
    the output ``nn.Linear`` with no activation after it. Every hidden layer carries exactly one
    activation of one network-wide type, or none has one (an identity-activation net: consecutive
    linear maps are then kept as separate layers, which is exact). Refused: an activation after
    the output layer, two activations in a row, an activation missing after one hidden layer while
    others have one, a pool or flatten elsewhere, a conv after a linear layer, mixed biases.

    ``nn.Dropout`` is read as the identity: the Net is the module's **eval-mode** (inference)
    function, whatever ``seq.training`` is; in training mode with ``p > 0`` the module's output is
    random and no deterministic network equals it. ``nn.Identity`` and ``nn.Dropout`` may sit
    anywhere.

    After the structural check, the conversion is checked numerically: a float64 eval-mode copy of
    the module and the Net (widened to float64, so only the conversion and not float rounding is
    compared) run layer by layer on 256 inputs from a fixed local generator (input norms spread
    over [0, 10], and 0); each layer must agree to float64 rounding (``64·(fan_in+1)·2⁻⁵³`` times
    the layer's ``|W|·|x| + |b|``, whatever the weights' own dtype) or the conversion is refused,
    naming the first disagreeing layer. The user's module is never modified (not its dtype, its
    device or its train/eval mode).

    Args:
        seq: the model, an ``nn.Sequential``; weights float32 or float64 (see :func:`check_dtype`).
        input_shape: ``(C, H, W)`` for a CNN (the spatial size is not stored in the module).

    Returns:
        A single :class:`Net` (no trial dim) on the module's device, in the weights' dtype.

    Raises:
        ProbPruneError: naming the layer (index path and type) and the reason.

    >>> from torch import nn
    >>> from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))).spec.to_arch()
    'fcn:3,4,2'
    """
    _check_plain(seq)
    leaves = [_classify(path, m) for path, m in _walk(seq)]
    wpos = _weight_positions(leaves)
    hidden, convs, segments = _read_layers(leaves, wpos)
    act_name, slope = _one_activation(hidden, leaves, wpos)
    weights, biases = _weights_and_biases(leaves, wpos)
    spec = _spec_of(leaves, wpos, weights, convs, input_shape, act_name, slope, all(b is not None for b in biases))
    net = Net.from_weights(spec, weights, biases)
    _check_conversion(seq, net, leaves, segments, wpos[0])
    return net


def _check_plain(seq: nn.Module) -> None:
    """``seq`` is a plain ``nn.Sequential`` whose forward nothing changes (no hooks, no overridden forward)."""
    if type(seq) is not nn.Sequential:
        base = "a subclass of nn.Sequential (its forward may differ)" if isinstance(seq, nn.Sequential) else ""
        raise ProbPruneError(f"from_module: expected a plain nn.Sequential, got {type(seq).__name__} {base}".strip())
    if _has_hooks(seq):
        raise ProbPruneError("from_module: the nn.Sequential has forward hooks or an overridden forward; "
                             "remove them first")
    if _global_hooks_present():
        raise ProbPruneError("from_module: global module forward hooks are registered "
                             "(torch.nn.modules.module.register_module_forward_hook / _pre_hook); they change every "
                             "module's forward: remove them first")


def _weight_positions(leaves: list[_Leaf]) -> list[int]:
    """Indices of the weight layers; only no-ops (and an FCN's input flatten) may come before the first."""
    wpos = [i for i, leaf in enumerate(leaves) if leaf.kind == "weight"]
    if not wpos:
        raise ProbPruneError("from_module: the model has no prunable layer (nn.Linear or nn.Conv2d)")
    first_is_linear = type(leaves[wpos[0]].module) is nn.Linear
    for leaf in leaves[:wpos[0]]:
        if leaf.kind == "noop" or (leaf.kind == "flatten" and first_is_linear):
            continue  # an FCN's input is flattened: a leading Flatten is the identity on [N, d]
        raise ProbPruneError(f"from_module: {leaf.label} comes before the first weight layer; the network "
                             "must start with nn.Linear or nn.Conv2d")
    return wpos


def _read_layers(leaves: list[_Leaf], wpos: list[int]
                 ) -> tuple[list[_Leaf | None], list[ConvSpec], list[list[int]]]:
    """Per weight layer, in order: its activation (hidden layers), its conv spec, the leaves it covers."""
    n_layers = len(wpos)
    hidden: list[_Leaf | None] = []  # the activation after each hidden layer (None: no activation)
    convs: list[ConvSpec] = []
    segments: list[list[int]] = []  # leaf indices each Net layer covers (weight layer … before the next)
    seen_linear = False
    for j, start in enumerate(wpos):
        end = wpos[j + 1] if j + 1 < n_layers else len(leaves)
        segments.append(list(range(start, end)))
        wl = leaves[start]
        is_conv = type(wl.module) is nn.Conv2d
        last = j == n_layers - 1
        next_conv = not last and type(leaves[wpos[j + 1]].module) is nn.Conv2d
        if is_conv and seen_linear:
            raise ProbPruneError(f"from_module: {wl.label} comes after a linear layer; a CNN is conv layers, then "
                                 "a linear head")
        seen_linear = seen_linear or not is_conv
        act, pool, flat = _layer_tail(leaves[start + 1:end], wl, is_conv, last, next_conv)
        if last and is_conv:
            raise ProbPruneError(f"from_module: {wl.label} is the last weight layer; a CNN must end with a linear "
                                 "head (nn.Flatten, nn.Linear)")
        if is_conv and not last and not next_conv and flat is None:
            raise ProbPruneError(f"from_module: the linear {leaves[wpos[j + 1]].label} follows the conv "
                                 f"{wl.label} without nn.Flatten between them")
        if is_conv:
            convs.append(dataclasses.replace(_conv_spec(wl), pool=1 if pool is None else _pool_size(pool)))
        if not last:
            hidden.append(act)
    return hidden, convs, segments


def _layer_tail(tail: list[_Leaf], wl: _Leaf, is_conv: bool, last: bool, next_conv: bool
                ) -> tuple[_Leaf | None, _Leaf | None, _Leaf | None]:
    """The activation, max-pool and flatten between weight layer ``wl`` and the next (each optional, in order)."""
    act: _Leaf | None = None
    pool: _Leaf | None = None
    flat: _Leaf | None = None
    for leaf in tail:
        if leaf.kind == "act":
            if last:
                raise ProbPruneError(
                    f"from_module: {leaf.label} is an activation after the output layer, {wl.label}; the Net's "
                    "last layer has no activation (remove it, or certify the network without it)")
            if act is not None:
                raise ProbPruneError(f"from_module: {act.label} and {leaf.label} are two activations in a row; "
                                     "the Net applies exactly one activation after each hidden layer")
            if pool is not None or flat is not None:
                after = pool if pool is not None else flat
                raise ProbPruneError(f"from_module: {leaf.label} comes after {after.label}; the Net applies "  # type: ignore[union-attr]
                                     "conv → activation → max-pool → flatten, in that order")
            act = leaf
        elif leaf.kind == "pool":
            if not is_conv:
                raise ProbPruneError(f"from_module: {leaf.label} follows the linear {wl.label}; max-pools "
                                     "are supported only after conv layers")
            if pool is not None or flat is not None:
                raise ProbPruneError(f"from_module: {leaf.label} follows {(pool or flat).label}; the Net has at "  # type: ignore[union-attr]
                                     "most one max-pool per conv layer, before the flatten")
            pool = leaf
        elif leaf.kind == "flatten":
            if not is_conv or last or next_conv or flat is not None:
                raise ProbPruneError(f"from_module: {leaf.label} is supported only at the input of an FCN or "
                                     "once between the last conv layer and the first linear layer")
            flat = leaf
    return act, pool, flat


def _one_activation(hidden: list[_Leaf | None], leaves: list[_Leaf], wpos: list[int]) -> tuple[str, float]:
    """The network-wide activation (name, slope): one type after every hidden layer, or none anywhere."""
    present = [a for a in hidden if a is not None]
    kinds = sorted({(_ACT_TYPES[type(a.module)], float(getattr(a.module, "negative_slope", 0.01))) for a in present})
    if len(kinds) > 1:
        raise ProbPruneError(f"from_module: mixed activations {kinds} are not supported; the Net applies one "
                             "activation type (and slope) after every hidden layer")
    if present and len(present) < len(hidden):
        j = hidden.index(None)
        raise ProbPruneError(
            f"from_module: {leaves[wpos[j]].label} and {leaves[wpos[j + 1]].label} follow each other with no "
            f"activation between them, while {present[0].label} applies one; the Net applies the same activation "
            "after every hidden layer (insert it, or remove the activations everywhere)")
    act_name, slope = kinds[0] if kinds else ("identity", 0.01)
    if act_name == "leaky_relu" and not 0.0 <= slope <= 1.0:
        raise ProbPruneError(f"from_module: {present[0].label} negative_slope={slope}: only slopes in [0, 1] are "
                             "supported (the bounds use Lipschitz constant 1)")
    if act_name != "leaky_relu":
        slope = 0.01  # the NetSpec default: the slope is meaningless for other activations
    return act_name, slope


def _weights_and_biases(leaves: list[_Leaf], wpos: list[int]) -> tuple[list[Tensor], list[Tensor | None]]:
    """The weight layers' parameters; biases everywhere or nowhere."""
    weights: list[Tensor] = []
    biases: list[Tensor | None] = []
    for start in wpos:
        w = _param(leaves[start], "weight")
        if w is None:
            raise ProbPruneError(f"from_module: {leaves[start].label} has no weight")
        weights.append(w)
        biases.append(_param(leaves[start], "bias"))
    has_bias = [b is not None for b in biases]
    if any(has_bias) and not all(has_bias):
        raise ProbPruneError("from_module: some layers have biases and some not; use bias everywhere or nowhere")
    return weights, biases


def _spec_of(leaves: list[_Leaf], wpos: list[int], weights: list[Tensor], convs: list[ConvSpec],
             input_shape: tuple[int, int, int] | None, act_name: str, slope: float, bias: bool) -> NetSpec:
    """The :class:`NetSpec` the layers read describe; every weight shape must fit it."""
    linears = [w for i, w in zip(wpos, weights) if type(leaves[i].module) is nn.Linear]
    widths = [int(w.shape[0]) for w in linears]
    if convs:
        if input_shape is None:
            raise ProbPruneError("from_module: a CNN needs input_shape=(C, H, W)")
        spec = NetSpec(kind="cnn", input_shape=input_shape, convs=tuple(convs), widths=tuple(widths),
                       activation=act_name, negative_slope=slope, bias=bias)  # type: ignore[arg-type]
    else:
        if input_shape is not None:
            # a module whose first layer is nn.Linear acts on the last dim of a (C, H, W) input:
            # it equals an FCN on the flattened input only behind a leading nn.Flatten
            lead_flat = any(leaf.kind == "flatten" for leaf in leaves[:wpos[0]])
            if not lead_flat or math.prod(input_shape) != int(linears[0].shape[1]):
                raise ProbPruneError(
                    f"from_module: input_shape={tuple(input_shape)} given, but the model is fully connected and "
                    f"{leaves[wpos[0]].label} (in_features={int(linears[0].shape[1])}) does not read the flattened "
                    "input; start the model with nn.Flatten() and matching in_features, or pass input_shape=None")
        spec = NetSpec(kind="fcn", widths=(int(linears[0].shape[1]), *widths),
                       activation=act_name, negative_slope=slope, bias=bias)  # type: ignore[arg-type]
    for start, w, shape in zip(wpos, weights, spec.weight_shapes()):
        if tuple(w.shape) != tuple(shape):
            raise ProbPruneError(f"from_module: {leaves[start].label} weight shape {tuple(w.shape)} does not fit the "
                                 f"layers before it (expected {tuple(shape)} for {spec.to_arch()})")
    return spec


def _abs_scale(layer: Layer, x: Tensor) -> Tensor:
    """``max(|W|·|x| + |b|)`` over the batch: the size float rounding of the layer's sum is relative to."""
    conv = None if layer.conv is None else dataclasses.replace(layer.conv, pool=1)
    absl = Layer(weight=layer.weight.abs(), bias=None if layer.bias is None else layer.bias.abs(),
                 activation=IDENTITY, conv=conv, flatten=False)
    return _apply_layer(absl, x.abs(), None).abs().max()


def _check_points(shape: tuple[int, ...], seed: int = _CHECK_SEED) -> Tensor:
    """The conversion checks' float64 inputs ``[n, *shape]``: norms uniform in [0, 1] (half) and [0, 10] (half), and 0.

    Drawn from a local generator seeded with ``seed`` (never the global RNG); shared by
    :func:`from_module`, :mod:`probprune.nets.onnx` and the graph readers (their own seed).
    """
    gen = torch.Generator().manual_seed(seed)
    n, d = _CHECK_POINTS, math.prod(shape)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    half = n // 2
    norms = torch.cat([torch.rand(half, generator=gen, dtype=torch.float64),
                       10.0 * torch.rand(n - half, generator=gen, dtype=torch.float64)])
    norms[0] = 0.0
    return (z * norms[:, None]).reshape(n, *shape)


def _check_conversion(seq: nn.Module, net: Net, leaves: Sequence[_Leaf], segments: Sequence[Sequence[int]],
                      first: int) -> None:
    """Second defence: the Net computes the module's function (float64, layer by layer), else refuse."""
    mod = copy.deepcopy(seq)  # the user's module keeps its dtype, device and mode
    mod.eval()
    mod.to(device="cpu", dtype=torch.float64)
    mods = [cast(nn.Module, m) for _, m in _walk(mod)]  # no None: _classify refused it
    net64 = net.to(device="cpu", dtype=torch.float64)
    spec = net64.spec
    x = _check_points(spec.feature_shapes()[0])  # the input shape per sample
    n = x.shape[0]
    u = 2.0 ** -53
    tiny = 2.0 ** -1074
    with torch.no_grad():
        try:
            h = x
            for i in range(first):
                h = mods[i](h)
            err = 0.0  # ∞-norm bound on the difference the layers' rounding can build up to the output
            for j, layer in enumerate(net64.layers):
                ref = h
                for i in segments[j]:
                    ref = mods[i](ref)
                got = _apply_layer(layer, h, None)
                where = ", ".join(leaves[i].label for i in segments[j])
                if got.shape != ref.shape:
                    raise ProbPruneError(f"from_module: the converted layer {j} ({where}) has output shape "
                                         f"{tuple(got.shape)}, the module's {tuple(ref.shape)}; refusing the "
                                         "conversion")
                if not bool(torch.isfinite(ref).all()):
                    raise ProbPruneError(f"from_module: cannot check the conversion: the module's output after "
                                         f"{where} is not finite in float64 for inputs of norm ≤ 10")
                fan_in = math.prod(layer.weight.shape[1:])
                tol = _CHECK_SLACK * (fan_in + 1) * (u * float(_abs_scale(layer, h) + ref.abs().max()) + tiny)
                diff = float((got - ref).abs().max())
                if not diff <= tol:
                    raise ProbPruneError(
                        f"from_module: the converted network differs from the module at layer {j} ({where}): "
                        f"max |difference| {diff:.3g} on {n} random inputs of norm ≤ 10, tolerance {tol:.3g} "
                        "(float64 rounding); refusing the conversion")
                w_inf = float(layer.weight.abs().flatten(1).sum(dim=1).max())
                err = layer.activation.lipschitz * w_inf * err + tol
                h = ref
            whole = mod(x)
        except RuntimeError as exc:  # a shape the module cannot run (guarded above; kept as a refusal)
            raise ProbPruneError(f"from_module: cannot run the module on inputs of shape {tuple(x.shape)}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        out = cast(Tensor, net64.forward(x))
        diff = float((out - whole).abs().max()) if out.shape == whole.shape else math.inf
        if not diff <= err:
            raise ProbPruneError(f"from_module: the converted network's output differs from the module's: max "
                                 f"|difference| {diff:.3g} on {n} random inputs, tolerance {err:.3g}; refusing "
                                 "the conversion")


def from_state_dict(spec: NetSpec, tensors: Mapping[str, Tensor]) -> Net:
    """Build a ``Net`` from tensors named as in ``to_module(net).state_dict()``.

    Raises :class:`ProbPruneError` naming a missing, extra or misshapen tensor, or a
    non-finite value.
    """
    names = spec.layer_names()
    expected = set(names) | ({n.replace(".weight", ".bias") for n in names} if spec.bias else set())
    missing = sorted(expected - set(tensors))
    if missing:
        raise ProbPruneError(f"tensor {missing[0]!r}: missing for architecture {spec.to_arch()} "
                             f"(file has {sorted(tensors)})")
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ProbPruneError(f"tensor {extra[0]!r}: does not belong to architecture {spec.to_arch()}")
    weights = [tensors[n] for n in names]
    biases = [tensors[n.replace(".weight", ".bias")] if spec.bias else None for n in names]
    net = Net.from_weights(spec, weights, biases)
    check_finite(net)
    return net
