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

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probprune.config import ConvSpec, ExecutionPolicy, NetSpec, ProbPruneError

if TYPE_CHECKING:  # pragma: no cover
    from probprune.nets.fx import Check
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
# One code path reads a module: the fx reader (``nets/fx.py``: a ``torch.fx`` trace, every layer matched by exact
# type, no hooks, BatchNorm folded in float64, a float64 check of every node against the module) makes the graph,
# and :func:`probprune.nets.chain.compile_chain` lowers it to the chain ``Net`` or refuses naming the node. Here:
# the parameters' dtypes and values, the example input's shape, the ``Net``'s dtype and device, and a last float64
# check of the compiled ``Net`` against the module.

_CHECK_SEED = 13
"""Seed of the local generator that draws the inputs of the stack converters' numerical checks."""
_CHECK_POINTS = 256
"""Inputs of the numerical conversion checks: norms uniform in [0, 1] (half) and [0, 10] (half), and 0."""
_CHECK_SLACK = 64.0
"""Factor on the float64 rounding estimate ``(fan_in + 1)·u·scale`` allowed between the two sides."""
_WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
_GRAPH_HINT = ("the graph path reads networks a chain Net cannot express: probprune.graph_from_module(module, "
               "example_input)")


def _tensor_label(module: nn.Module, name: str) -> str:
    path, _, attr = name.rpartition(".")
    if not path:
        return f"the module ({type(module).__name__}) {attr}"
    return f"layer {path} ({type(module.get_submodule(path)).__name__}) {attr}"


def _check_tensors(module: nn.Module) -> torch.dtype | None:
    """Every parameter (and floating buffer) dense, on a real device, finite, float32/float64; the parameters
    share one dtype, which is returned (``None`` without parameters)."""
    dtype: torch.dtype | None = None
    first = ""
    params = [(n, t, True) for n, t in module.named_parameters()]
    buffers = [(n, t, False) for n, t in module.named_buffers() if t.is_floating_point()]
    for name, t, is_param in params + buffers:
        label = f"from_module: {_tensor_label(module, name)}"
        if isinstance(t, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)):
            raise ProbPruneError(f"{label} is uninitialised (a lazy module); run the model once on an input first")
        check_dtype(label, t)
        if t.is_meta:
            raise ProbPruneError(f"{label} is on the meta device (no values); load the weights first")
        if t.layout is not torch.strided:
            raise ProbPruneError(f"{label} has layout {t.layout}; only dense (strided) tensors are supported "
                                 "(call .to_dense() first)")
        if is_param and dtype is None:
            dtype, first = t.dtype, label.removeprefix("from_module: ")
        elif is_param and t.dtype != dtype:
            raise ProbPruneError(f"{label}: dtype {t.dtype} differs from {first}'s {dtype}; all parameters must "
                                 "share one dtype (call model.float() or model.double())")
        if not bool(torch.isfinite(t).all()):
            raise ProbPruneError(f"{label} contains non-finite values (NaN or inf)")
    return dtype


def _example_input(module: nn.Module, input_shape: Sequence[int] | None) -> Tensor:
    """``[1, *shape]`` zeros: ``input_shape`` if given, else the first ``nn.Linear``'s ``in_features``."""
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
            raise ProbPruneError(f"from_module: input_shape={input_shape!r}: expected positive integers, e.g. "
                                 "(C, H, W)")
        return torch.zeros(1, *shape, dtype=torch.float64)
    found = next(((n, m) for n, m in module.named_modules() if isinstance(m, _WEIGHT_TYPES)), None)
    if found is None:
        raise ProbPruneError("from_module: the model has no prunable layer (nn.Linear or nn.Conv2d); nothing to "
                             "prune or certify")
    name, m = found
    if not isinstance(m, nn.Linear):
        raise ProbPruneError(f"from_module: the first weight layer, layer {name or '(the module)'} "
                             f"({type(m).__name__}), is a convolution: a CNN needs input_shape=(C, H, W) (the "
                             "spatial size is not stored in the module)")
    return torch.zeros(1, int(m.in_features), dtype=torch.float64)


def _in_dtype(net64: Net, dtype: torch.dtype | None) -> Net:
    """The compiled float64 Net in the module's dtype where that is exact (every parameter is a number of that
    dtype: the module's own tensors are); folded parameters (BatchNorm, a scale after a layer) are float64
    products, and the Net then stays float64."""
    if dtype is None or dtype == net64.dtype:
        return net64
    tensors = net64.state_dict().values()
    if all(torch.equal(t.to(dtype).to(t.dtype), t) for t in tensors):
        return net64.to(dtype=dtype)
    return net64


def from_module(module: nn.Module, input_shape: Sequence[int] | None = None) -> Net:
    """Read a module into a chain ``Net`` that computes exactly the module's function, or refuse.

    One code path: :func:`probprune.nets.fx.read_module` (the reader of :func:`probprune.graph_from_module`)
    traces the module with ``torch.fx`` into a :class:`~probprune.nets.graph.Graph` — layers read by **exact
    type** (a subclass is traced through its own forward, never read as its parent), forward hooks, pre-hooks,
    global hooks and instance-level ``forward`` refused (a ``torch.nn.utils.prune`` mask is a hook: call
    ``prune.remove`` first), BatchNorm folded in float64, every node checked in float64 against the module on 256
    fixed inputs — and :func:`probprune.nets.chain.compile_chain` lowers the graph to a ``Net`` or refuses naming
    the first node a chain cannot express (a residual add, GELU, mixed activations, …: read those with
    ``graph_from_module``, the graph path). A chain is: ``[Flatten]`` (FCN input), per hidden layer
    ``Linear | Conv2d`` (square kernel and stride, equal zero or circular padding, no dilation, groups 1) → one
    activation (ReLU, LeakyReLU with slope in [0, 1], Tanh, Sigmoid; the same after every hidden layer, or none
    anywhere) → ``MaxPool2d`` (square, stride = kernel) → ``Flatten`` after the last conv, then the output
    ``Linear``; ``Identity``, ``Dropout`` and per-channel affine maps right after a layer (BatchNorm, constant
    scale/shift) are absorbed. A last float64 check runs the compiled ``Net`` against the module.

    The ``Net`` is the module's **eval-mode** (inference) function whatever its mode: ``Dropout`` is the identity
    (in training mode with ``p > 0`` the output is random and no deterministic network equals it); a BatchNorm in
    training mode is refused (it normalises by the batch's statistics: call ``model.eval()``). The user's module
    is never modified (not its dtype, its device or its train/eval mode).

    Args:
        module: any ``nn.Module`` ``torch.fx`` can trace; parameters float32 or float64 (:func:`check_dtype`),
            all one dtype, dense, finite.
        input_shape: the per-sample input shape, ``(C, H, W)`` for a CNN (the spatial size is not stored in the
            module); ``None`` for an FCN, whose input width is the first ``nn.Linear``'s ``in_features``.

    Returns:
        A single :class:`Net` (no trial dim) on the module's device, in the parameters' dtype — float64 where a
        folded parameter is not a number of that dtype (the fold is exact only in float64). Its parameter names
        are :func:`to_module`'s (``0.weight``, ``2.weight`` …), not the module's.

    Raises:
        ProbPruneError: ``from_module: layer 2 (Linear): …`` naming the layer (path and type) or fx node, and the
            reason.

    >>> from torch import nn
    >>> from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))).spec.to_arch()
    'fcn:3,4,2'
    """
    from probprune.nets.fx import read_module

    if not isinstance(module, nn.Module):
        raise ProbPruneError(f"from_module: expected an nn.Module, got {type(module).__name__}")
    dtype = _check_tensors(module)
    x = _example_input(module, input_shape)
    try:
        graph, labels, check = read_module(module, x, eval_mode=True, end_to_end=False)
    except ProbPruneError as exc:
        msg = str(exc).removeprefix("graph_from_module: ")
        if "cannot run on example_input" in msg:
            given = "given as input_shape" if input_shape is not None else "the first nn.Linear's in_features"
            msg = msg.replace("on example_input of shape", "on inputs of shape") + f" (per-sample shape: {given})"
        raise ProbPruneError(f"from_module: {msg}") from None
    net64 = _compile_labelled(graph, labels)
    _check_compiled(net64, check)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    net = _in_dtype(net64, dtype).to(device=device)
    check_finite(net, "from_module: converted parameters")
    return net


def _compile_labelled(graph: Graph, labels: Mapping[str, str]) -> Net:
    """:func:`~probprune.nets.chain.compile_chain`, its refusals naming layers as the user wrote them (the node
    and every node it mentions: ``layer 1 (Tanh)``) and pointing to the graph path."""
    from probprune.nets.chain import GRAPH_HINT, _Refusal
    from probprune.nets.chain import compile_chain as _compile

    def label(name: str) -> str:
        return labels.get(name, f"node {name!r}")

    known = {node.name for node in graph.nodes}
    try:
        return _compile(graph)
    except _Refusal as exc:
        what = re.sub(r"'([^']*)'(?: \([a-z_]+\))?",
                      lambda m: label(m.group(1)) if m.group(1) in known else m.group(0), exc.what)
        hint = _GRAPH_HINT if exc.hint == GRAPH_HINT else f"{exc.hint}; {_GRAPH_HINT}"
        raise ProbPruneError(f"from_module: {label(exc.node.name)}: {what}; {hint}") from None
    except ProbPruneError as exc:
        raise ProbPruneError(f"from_module: {str(exc).removeprefix('compile_chain: ')}") from None


def _check_compiled(net64: Net, check: Check) -> None:
    """The compiled float64 Net against the float64 module on the reader's check inputs, within the rounding bound
    the graph was held to (the Net computes the graph's nodes: the same bound covers it), else refuse."""
    n = check.x.shape[0]
    with torch.no_grad():
        got = cast(Tensor, net64.forward(check.x.reshape(n, *net64.spec.feature_shapes()[0])))
    want = check.out.reshape(n, -1)
    diff = float((got - want).abs().max()) if got.shape == want.shape else math.inf
    if not diff <= check.tol:
        raise ProbPruneError(f"from_module: the compiled network's output differs from the module's: max |difference| "
                             f"{diff:.3g} on {n} inputs of norm ≤ 10, tolerance {check.tol:.3g} (float64 rounding); "
                             "refusing the conversion")


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
