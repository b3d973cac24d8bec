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
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probprune.config import ConvSpec, NetSpec, ProbPruneError

__all__ = [
    "Activation",
    "Layer",
    "Net",
    "check_finite",
    "check_pair",
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
        """Build a ``Net`` from per-layer weights (and biases), checking shapes.

        All weights must share one trial shape: none, or a leading ``K``.
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

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Evaluate on inputs.

        Args:
            x: ``[N, d_0]`` (FCN) or ``[N, C, H, W]`` (CNN); for an ensemble, ``[K, N, …]``
                (an input without the trial dim is shared by all members).
            return_hidden: also return the post-activation output of every hidden layer.

        Returns:
            ``[(K,) N, h_l]`` outputs (and the hidden list).
        """
        k = self.n_trials
        base = 2 if self.spec.kind == "fcn" else 4
        if x.dim() == base + 1 and k is None:
            raise ProbPruneError(f"input shape {tuple(x.shape)}: has a trial dim but the Net has none")
        if x.dim() not in (base, base + 1):
            raise ProbPruneError(f"input shape {tuple(x.shape)}: expected {base} dims (or {base + 1} with trials)")
        if k is not None and not return_hidden and _member_loop(self, x):
            return _forward_members(self.layers, x, k)
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
#   on ``torch.get_num_threads()`` Python threads, each task single-threaded: small products
#   scale better across cores this way than split inside one product. Every block is computed
#   by one thread whatever the ensemble size or thread count, so a member's outputs do not
#   depend on how trials are chunked or how many threads run;
# - on a GPU each hidden ReLU layer is one cuBLASLt product with the ReLU in its epilogue
#   (``torch._addmm_activation``): no separate ReLU pass re-reads and re-writes the activations.
#   Small products on a GPU are launch-bound, so there the batched form stays.
# ``PROBPRUNE_FORWARD=batched|members`` forces one form (benchmarks compare both).

_MEMBER_BLOCK_ELEMS = 1 << 19
"""CPU: rows per block so that one block's widest activation holds about this many elements."""
_MEMBER_MIN_ELEMS_CPU = 1 << 15
"""CPU: the member loop is used when points × widest layer reaches this (tiny batches stay batched)."""
_MEMBER_MIN_ELEMS_CUDA = 1 << 22
"""CUDA: the member loop is used when points × widest layer reaches this (each product is large)."""

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
"""(process id, workers, pool) of the CPU member loop; rebuilt after a fork or a thread-count change."""


def _cpu_pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    pid = os.getpid()
    if _POOL is None or _POOL[0] != pid or _POOL[1] != workers:
        if _POOL is not None and _POOL[0] == pid:
            _POOL[2].shutdown(wait=False)
        _POOL = (pid, workers, ThreadPoolExecutor(workers, thread_name_prefix="probprune-forward"))
    return _POOL[2]


def cpu_parallel(calls: Sequence[Callable[[], None]]) -> None:
    """Run CPU work items on ``torch.get_num_threads()`` Python threads, each item single-threaded.

    Torch releases the GIL inside its kernels, so independent items (ensemble members, row
    blocks) run on separate cores; each item sees one intra-op thread, so its result does not
    depend on the thread count. The global thread count is restored afterwards. Exceptions of
    an item are raised here.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)  # every item single-threaded (also on this thread)
    try:
        if threads == 1 or len(calls) <= 1:
            for call in calls:
                call()
            return

        def item(call: Callable[[], None]) -> None:
            torch.set_num_threads(1)  # a worker thread's own OpenMP setting
            call()

        pool = _cpu_pool(threads)
        for fut in [pool.submit(item, call) for call in calls]:
            fut.result()
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _member_loop(net: Net, x: Tensor) -> bool:
    """Whether :meth:`Net.forward` runs this ensemble member by member (see the note above)."""
    mode = os.environ.get("PROBPRUNE_FORWARD", "auto")
    if mode not in ("auto", "batched", "members"):
        raise ProbPruneError(f"PROBPRUNE_FORWARD={mode!r}: must be auto, batched or members")
    if mode == "batched" or any(layer.conv is not None for layer in net.layers):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(
            layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad)
            for layer in net.layers)):
        return False
    if mode == "members":
        return True
    size = int(x.shape[-2]) * max(int(layer.weight.shape[-2]) for layer in net.layers)
    if x.device.type == "cpu":
        return size >= _MEMBER_MIN_ELEMS_CPU
    return x.device.type == "cuda" and size >= _MEMBER_MIN_ELEMS_CUDA


def _forward_members(layers: Sequence[Layer], x: Tensor, k: int) -> Tensor:
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
        cpu_parallel([functools.partial(run, j, s) for j, s in tasks])
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


_ACT_TYPES: dict[type, str] = {
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
}


def from_module(seq: nn.Module, input_shape: tuple[int, int, int] | None = None) -> Net:
    """Read a plain ``nn.Sequential`` (Linear/Conv2d/activations/MaxPool2d/Flatten) into a ``Net``.

    Args:
        seq: the stack; one hidden activation type throughout, none after the last layer.
        input_shape: (C, H, W) for a CNN (the spatial size is not stored in the module).
    """
    if not isinstance(seq, nn.Sequential):
        raise ProbPruneError(f"from_module: expected nn.Sequential, got {type(seq).__name__}")
    weights: list[Tensor] = []
    biases: list[Tensor | None] = []
    convs: list[ConvSpec] = []
    acts: set[tuple[str, float]] = set()
    linear_widths: list[int] = []
    seen_linear = False
    pending: dict[str, int] = {}
    mods = list(seq)
    for idx, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            if seen_linear:
                raise ProbPruneError(f"from_module: conv layer {idx} after a linear layer is not supported")
            ks, st, pd, dl = m.kernel_size, m.stride, m.padding, m.dilation
            square = ks[0] == ks[1] and st[0] == st[1] and not isinstance(pd, str) and pd[0] == pd[1]
            if not square or dl != (1, 1) or m.groups != 1:
                raise ProbPruneError(f"from_module: layer {idx} Conv2d needs square kernel/stride/padding, "
                                     "no dilation, groups=1")
            if m.padding_mode not in ("zeros", "circular"):
                raise ProbPruneError(f"from_module: layer {idx} padding_mode={m.padding_mode!r} unsupported")
            if convs:
                convs[-1] = dataclasses.replace(convs[-1], pool=pending.pop("pool", 1))
            pending.clear()
            pad = None if pd[0] == ks[0] // 2 else pd[0]
            convs.append(ConvSpec(m.out_channels, ks[0], st[0], pad, m.padding_mode))  # type: ignore[arg-type]
            weights.append(m.weight.detach().clone())
            biases.append(None if m.bias is None else m.bias.detach().clone())
        elif isinstance(m, nn.Linear):
            if convs and not seen_linear:
                convs[-1] = dataclasses.replace(convs[-1], pool=pending.pop("pool", 1))
            if not seen_linear and not convs:
                linear_widths.append(m.in_features)
            seen_linear = True
            linear_widths.append(m.out_features)
            weights.append(m.weight.detach().clone())
            biases.append(None if m.bias is None else m.bias.detach().clone())
        elif type(m) in _ACT_TYPES:
            slope = float(getattr(m, "negative_slope", 0.01))
            acts.add((_ACT_TYPES[type(m)], slope))
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            if k != s or m.padding not in (0, (0, 0)) or m.dilation not in (1, (1, 1)) or m.ceil_mode:
                raise ProbPruneError(f"from_module: layer {idx} MaxPool2d must have kernel == stride, no padding")
            pending["pool"] = int(k)
        elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            continue
        else:
            raise ProbPruneError(f"from_module: layer {idx} of type {type(m).__name__} is not supported")
    if not weights:
        raise ProbPruneError("from_module: the model has no prunable layer (nn.Linear or nn.Conv2d)")
    if len(acts) > 1:
        raise ProbPruneError(f"from_module: mixed activations {sorted(acts)} are not supported")
    act, slope = acts.pop() if acts else ("identity", 0.01)
    has_bias = [b is not None for b in biases]
    if any(has_bias) and not all(has_bias):
        raise ProbPruneError("from_module: some layers have biases and some not; use bias everywhere or nowhere")
    if convs:
        if input_shape is None:
            raise ProbPruneError("from_module: a CNN needs input_shape=(C, H, W)")
        spec = NetSpec(kind="cnn", input_shape=input_shape, convs=tuple(convs),
                       widths=tuple(linear_widths), activation=act, negative_slope=slope,  # type: ignore[arg-type]
                       bias=all(has_bias))
    else:
        spec = NetSpec(kind="fcn", widths=tuple(linear_widths), activation=act,  # type: ignore[arg-type]
                       negative_slope=slope, bias=all(has_bias))
    return Net.from_weights(spec, weights, biases)


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
