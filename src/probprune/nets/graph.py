"""One exact graph IR: nodes with an op, named parameters and inputs, in topological order.

A :class:`Graph` is a network as a DAG. Every :class:`Node` has a ``name`` (for modules read from
``torch.fx``: the module's qualified name, e.g. ``features.0``), an ``op`` (:data:`OPS`), the names of
its ``inputs`` (earlier nodes, or ``"input"``), static ``attrs`` and float ``params``; the parameter
``weight`` of node ``features.0`` is addressed as ``features.0.weight`` (:meth:`Graph.parameters`),
which is how masks and checkpoints name it.

Ops (per-sample shapes; the batch dim ``N`` is never touched):

* ``linear`` (``weight [out, in]``, optional ``bias``), ``conv`` (1-D or 2-D: ``weight [c_out, c_in/groups,
  *k]``, optional ``bias``; attrs ``stride``, ``padding`` as ``(before, after)`` pairs per spatial axis —
  ``"same"`` is resolved to explicit pairs —, ``dilation``, ``groups``; zero padding only);
* ``affine`` — ``x·scale + shift`` with ``scale``/``shift`` broadcast over the sample (BatchNorm in eval mode
  where nothing precedes it to fold into, input normalisation, multiplication or division by constants);
* ``add`` (two inputs: residual sums), ``cat`` (attr ``dim``, per-sample), ``reshape`` (attr ``shape``),
  ``pad`` (attr ``pads`` in :func:`torch.nn.functional.pad` order, zeros), ``identity``;
* ``circular_pad`` (attr ``pads`` as for ``pad``; wraps around: what ``nn.Conv2d(padding_mode="circular")`` applies
  before its convolution — the chain ``Net``'s circular convs are ``circular_pad`` then ``conv`` with no padding);
* ``maxpool``, ``avgpool`` (attrs ``kernel``, ``stride``, ``padding``; avg: ``count_include_pad``),
  ``adaptive_avgpool`` (attr ``output_size``), 1-D or 2-D (attr ``dims``);
* ``act`` — an elementwise :class:`Activation` (attr ``act``) with its exact Lipschitz constant and σ(0).

:meth:`Graph.forward` runs ``[N, *input_shape]`` inputs; with a trial dimension (every parameter
``[K, …]``, an ensemble of K graphs of one architecture) it also takes ``[K, N, …]`` inputs and returns
``[K, N, …]``, as one vectorised pass (:func:`torch.func.vmap`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from probprune.config import ProbPruneError

__all__ = ["ACTIVATIONS", "OPS", "Activation", "Graph", "Node", "activation"]

OPS = ("linear", "conv", "affine", "add", "cat", "reshape", "pad", "identity", "maxpool", "avgpool",
       "adaptive_avgpool", "act", "circular_pad")
"""Every op a :class:`Node` may have."""

ACTIVATIONS = ("relu", "leaky_relu", "relu6", "hardtanh", "elu", "gelu", "silu", "tanh", "sigmoid", "softplus")
"""Every activation kind (``docs/certified.md`` "Graphs" derives each Lipschitz constant)."""

_REL = 1e-12
"""Relative margin added to a Lipschitz constant computed in float64 (a few roundings of libm functions)."""


def _up(v: float) -> float:
    return v * (1.0 + _REL) + 1e-300


def _gelu_lipschitz() -> float:
    """max |GELU'|: GELU'(x) = Φ(x) + xφ(x), GELU'' = φ(x)(2 − x²) = 0 at ±√2; the max is at √2."""
    return _up(0.5 * (1.0 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi))


def _silu_lipschitz() -> float:
    """max |SiLU'|: SiLU'(x) = s(1 + x(1 − s)) peaks where x·tanh(x/2) = 2 (bisection on [2, 3]).

    SiLU'(x) + SiLU'(−x) = 1, so the minimum 1 − max is smaller in magnitude. At the root x*, SiLU'' = 0
    and |SiLU'''| ≤ 1, so an ``x̂`` within 1e-15 of ``x*`` gives SiLU'(x̂) within 1e-30 of the max.
    """
    lo, hi = 2.0, 3.0  # g(x) = x·tanh(x/2) − 2 is increasing on x > 0, g(2) < 0 < g(3)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid * math.tanh(0.5 * mid) < 2.0:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    s = 1.0 / (1.0 + math.exp(-x))
    return _up(s * (1.0 + x * (1.0 - s)))


@dataclass(frozen=True)
class Activation:
    """An elementwise activation of a graph: its function, exact Lipschitz constant, σ(0) and range.

    Attributes:
        kind: one of :data:`ACTIVATIONS`.
        params: ``leaky_relu``: (slope,); ``hardtanh``: (min, max); ``elu``: (alpha,); ``softplus``:
            (beta, threshold); others: ().
        lipschitz: an upper value of ``sup |σ'|`` (exact up to a 1e-12 relative round-up).
        sigma0: σ(0).
        lo, hi: the range of σ (±inf where unbounded).
        ulps: assumed float error of the library function in units of u, relative to ``|σ(z)| + |z|``.
        abs_error: absolute deviation of torch's function from the mathematical σ per entry (softplus:
            torch returns x above the threshold, off by ``log1p(exp(−threshold))/beta``).
    """

    kind: str
    params: tuple[float, ...] = ()
    lipschitz: float = field(init=False)
    sigma0: float = field(init=False)
    lo: float = field(init=False)
    hi: float = field(init=False)
    ulps: float = field(init=False)
    abs_error: float = field(init=False)

    def __post_init__(self) -> None:
        k, p = self.kind, tuple(float(v) for v in self.params)
        want = {"leaky_relu": 1, "hardtanh": 2, "elu": 1, "softplus": 2}.get(k, 0)
        if k not in ACTIVATIONS:
            raise ProbPruneError(f"activation={k!r}: unknown (one of {', '.join(ACTIVATIONS)})")
        if len(p) != want or not all(math.isfinite(v) for v in p):
            raise ProbPruneError(f"activation {k}: params={self.params!r}, expected {want} finite numbers")
        inf = math.inf
        lip, s0, lo, hi, ulps, abs_err = 1.0, 0.0, -inf, inf, 16.0, 0.0
        if k == "relu":
            lo, ulps = 0.0, 0.0
        elif k == "leaky_relu":
            lip, ulps = max(1.0, abs(p[0])), 1.0
        elif k in ("relu6", "hardtanh"):
            a, b = (0.0, 6.0) if k == "relu6" else p
            if not a < b:
                raise ProbPruneError(f"activation hardtanh: min_val={a} must be below max_val={b}")
            s0, lo, hi, ulps = min(max(0.0, a), b), a, b, 0.0
        elif k == "elu":
            lip = max(1.0, abs(p[0]))  # α·eˣ on x < 0, 1 on x > 0
        elif k == "gelu":
            lip = _gelu_lipschitz()
        elif k == "silu":
            lip = _silu_lipschitz()
        elif k == "tanh":
            lo, hi = -1.0, 1.0
        elif k == "sigmoid":
            lip, s0, lo, hi = 0.25, 0.5, 0.0, 1.0
        elif k == "softplus":
            beta, thr = p
            if beta <= 0:
                raise ProbPruneError(f"activation softplus: beta={beta} must be > 0")
            s0, lo = _up(math.log(2.0) / beta), 0.0
            # torch returns x above the threshold; exp underflow below it (≤ 2η/β)
            abs_err = _up((math.log1p(math.exp(-thr)) + 2.0 ** -1073) / beta) if thr > -700 else inf
        for name, v in (("lipschitz", lip), ("sigma0", s0), ("lo", lo), ("hi", hi), ("ulps", ulps),
                        ("abs_error", abs_err)):
            object.__setattr__(self, name, v)

    @property
    def bounded(self) -> bool:
        """Whether the range is bounded on both sides (reach and error then also have a cap)."""
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def __call__(self, x: Tensor) -> Tensor:
        """σ applied entrywise (torch's own function for the kind)."""
        k, p = self.kind, self.params
        fns: dict[str, Callable[[Tensor], Tensor]] = {
            "relu": F.relu, "relu6": F.relu6, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh,
            "sigmoid": torch.sigmoid,
            "leaky_relu": lambda t: F.leaky_relu(t, p[0] if p else 0.01),
            "hardtanh": lambda t: F.hardtanh(t, p[0], p[1]),
            "elu": lambda t: F.elu(t, p[0]),
            "softplus": lambda t: F.softplus(t, p[0], p[1]),
        }
        return fns[k](x)


def activation(kind: str, *params: float) -> Activation:
    """The activation ``kind`` with its parameters (see :class:`Activation`).

    >>> round(activation("gelu").lipschitz, 4), round(activation("silu").lipschitz, 4)
    (1.1289, 1.0998)
    >>> activation("sigmoid").sigma0
    0.5
    """
    return Activation(kind, tuple(float(v) for v in params))


@dataclass(frozen=True, eq=False)
class Node:
    """One node of a :class:`Graph`.

    Attributes:
        name: unique name; parameters are addressed as ``f"{name}.{param}"``.
        op: one of :data:`OPS`.
        inputs: names of the nodes it reads (``"input"`` is the graph input).
        attrs: static attributes of the op (module docstring).
        params: float tensors by short name (``weight``, ``bias``, ``scale``, ``shift``), each optionally
            with a leading trial dim.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))
        # parameters are values, never autograd leaves of a user's module
        object.__setattr__(self, "params", MappingProxyType({k: v.detach() if isinstance(v, Tensor) else v
                                                             for k, v in self.params.items()}))


_ARITY = {"add": 2, "cat": -1}


def _pool_args(node: Node) -> tuple[Any, Any, Any]:
    return node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]


def _conv(node: Node, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    a = node.attrs
    pads = a["padding"]
    fn = F.conv1d if len(pads) == 1 else F.conv2d
    if all(lo == hi for lo, hi in pads):
        return fn(x, p["weight"], p.get("bias"), a["stride"], tuple(lo for lo, _ in pads), a["dilation"], a["groups"])
    flat = tuple(v for pair in reversed(pads) for v in pair)  # F.pad: last axis first
    return fn(F.pad(x, flat), p["weight"], p.get("bias"), a["stride"], 0, a["dilation"], a["groups"])


def _affine(node: Node, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    if "scale" in p:
        x = x * p["scale"]
    if "shift" in p:
        x = x + p["shift"]
    return x


def _maxpool(node: Node, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    fn = F.max_pool1d if node.attrs["dims"] == 1 else F.max_pool2d
    return fn(x, *_pool_args(node))


def _avgpool(node: Node, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    fn = F.avg_pool1d if node.attrs["dims"] == 1 else F.avg_pool2d
    k, s, pad = _pool_args(node)
    return fn(x, k, s, pad, False, node.attrs["count_include_pad"])


def _adaptive(node: Node, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    fn = F.adaptive_avg_pool1d if node.attrs["dims"] == 1 else F.adaptive_avg_pool2d
    return fn(x, node.attrs["output_size"])


_UNARY: dict[str, Callable[[Node, Tensor, Mapping[str, Tensor]], Tensor]] = {
    "linear": lambda n, x, p: F.linear(x, p["weight"], p.get("bias")),
    "conv": _conv,
    "affine": _affine,
    "reshape": lambda n, x, p: x.reshape(x.shape[0], *n.attrs["shape"]),
    "pad": lambda n, x, p: F.pad(x, n.attrs["pads"]),
    "circular_pad": lambda n, x, p: F.pad(x, n.attrs["pads"], mode="circular"),
    "identity": lambda n, x, p: x,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "adaptive_avgpool": _adaptive,
    "act": lambda n, x, p: n.attrs["act"](x),
}


def apply_node(node: Node, xs: Sequence[Tensor], params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Run one node on its inputs ``[N, …]`` (one member: parameters without a trial dim).

    Args:
        node: the node.
        xs: its input tensors, in ``node.inputs`` order.
        params: parameters to use instead of ``node.params`` (same short names).
    """
    p = node.params if params is None else params
    if node.op == "add":
        return xs[0] + xs[1]
    if node.op == "cat":
        return torch.cat(list(xs), dim=int(node.attrs["dim"]) + 1)
    return _UNARY[node.op](node, xs[0], p)


class Graph:
    """A network as a DAG of :class:`Node`\\ s in topological order, with one input and one output.

    Args:
        nodes: the nodes, each reading only earlier nodes or ``"input"``; the last one is the output.
        input_shape: the per-sample input shape (``(784,)``, ``(3, 32, 32)``).

    Raises:
        ProbPruneError: an unknown op, a duplicate or forward reference, a non-float or non-finite
            parameter, mixed trial dims, or a graph that cannot run on its input shape.

    >>> g = Graph([Node("fc", "linear", ("input",), params={"weight": torch.eye(2)}),
    ...            Node("act", "act", ("fc",), attrs={"act": activation("relu")})], (2,))
    >>> g(torch.tensor([[1.0, -1.0]])).tolist(), sorted(g.parameters())
    ([[1.0, 0.0]], ['fc.weight'])
    """

    def __init__(self, nodes: Sequence[Node], input_shape: Sequence[int]) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in input_shape)
        if not self.nodes:
            raise ProbPruneError("graph: no nodes")
        if not self.input_shape or min(self.input_shape) < 1:
            raise ProbPruneError(f"graph: input_shape={self.input_shape!r} must be positive dims")
        seen = {"input"}
        trials: set[int] = set()
        for node in self.nodes:
            if node.op not in OPS:
                raise ProbPruneError(f"graph node {node.name!r}: op={node.op!r} is unknown (one of {', '.join(OPS)})")
            if node.name in seen:
                raise ProbPruneError(f"graph node {node.name!r}: the name is used twice")
            for i in node.inputs:
                if i not in seen:
                    raise ProbPruneError(f"graph node {node.name!r}: input {i!r} is not an earlier node")
            arity = _ARITY.get(node.op, 1)
            if (arity > 0 and len(node.inputs) != arity) or (arity < 0 and not node.inputs):
                raise ProbPruneError(f"graph node {node.name!r}: op {node.op} takes {arity if arity > 0 else '≥ 1'} "
                                     f"inputs, got {len(node.inputs)}")
            if node.op == "act" and not isinstance(node.attrs.get("act"), Activation):
                raise ProbPruneError(f"graph node {node.name!r}: attrs['act'] must be an Activation")
            for pname, t in node.params.items():
                k = self._check_param(node, pname, t)
                if k is not None:  # parameters without a trial dim are shared by every member
                    trials.add(k)
            seen.add(node.name)
        if len(trials) > 1:
            raise ProbPruneError(f"graph: parameters have different trial dims {sorted(trials)}")
        self.n_trials: int | None = trials.pop() if trials else None
        self.shapes: dict[str, tuple[int, ...]] = self._infer_shapes()

    @staticmethod
    def _check_param(node: Node, pname: str, t: Tensor) -> int | None:
        """Dtype, finiteness and the trial dim of one parameter (``None``: no trial dim)."""
        full = f"{node.name}.{pname}"
        if not isinstance(t, Tensor) or t.dtype not in (torch.float32, torch.float64):
            raise ProbPruneError(f"graph parameter {full}: must be a float32 or float64 tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
        if not bool(torch.isfinite(t).all()):
            raise ProbPruneError(f"graph parameter {full}: has NaN or inf entries")
        base = {"linear": 2, "conv": len(node.attrs.get("padding", ())) + 2}.get(node.op) if pname == "weight" \
            else 1 if pname == "bias" else node.attrs.get("param_dims", {}).get(pname)
        if base is None:
            return None
        if t.dim() == base:
            return None
        if t.dim() == base + 1:
            return int(t.shape[0])
        raise ProbPruneError(f"graph parameter {full}: shape {tuple(t.shape)} has {t.dim()} dims, expected {base} "
                             f"(or {base + 1} with a trial dim)")

    def _infer_shapes(self) -> dict[str, tuple[int, ...]]:
        devices = {v.device for n in self.nodes for v in n.params.values()}
        if len(devices) > 1:
            raise ProbPruneError(f"graph: parameters on several devices {sorted(map(str, devices))}")
        x = torch.zeros(1, *self.input_shape, dtype=torch.float64, device=devices.pop() if devices else None)
        vals: dict[str, Tensor] = {"input": x}
        shapes = {"input": self.input_shape}
        try:
            for node in self.nodes:
                params = {k: (v[0] if self.n_trials is not None and self._has_trial(node, k) else v).double()
                          for k, v in node.params.items()}
                ins = [vals[i] for i in node.inputs]
                out = apply_node(node, ins, params)
                if node.op in ("add", "affine") and any(t.shape != out.shape for t in ins):
                    raise ProbPruneError(f"graph node {node.name!r} ({node.op}): broadcasting changes the shape "
                                         f"{[tuple(t.shape[1:]) for t in ins]} → {tuple(out.shape[1:])}; not supported")
                vals[node.name] = out
                shapes[node.name] = tuple(out.shape[1:])
        except ProbPruneError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise ProbPruneError(f"graph node {node.name!r} ({node.op}): cannot run on input shape "
                                 f"{self.input_shape}: {str(exc).splitlines()[0]}") from exc
        return shapes

    def _has_trial(self, node: Node, pname: str) -> bool:
        return self._check_param(node, pname, node.params[pname]) is not None

    @property
    def output(self) -> str:
        """Name of the output node (the last one)."""
        return self.nodes[-1].name

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-sample output shape."""
        return self.shapes[self.output]

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise ProbPruneError(f"graph: no node {name!r}")

    def parameters(self) -> dict[str, Tensor]:
        """Every parameter by full name (``features.0.weight``), in node order."""
        return {f"{n.name}.{k}": v for n in self.nodes for k, v in n.params.items()}

    def prunable(self) -> tuple[str, ...]:
        """Names of the weight tensors of linear and conv nodes (what pruning masks)."""
        return tuple(f"{n.name}.weight" for n in self.nodes if n.op in ("linear", "conv"))

    def with_parameters(self, new: Mapping[str, Tensor]) -> Graph:
        """The same graph with some parameters replaced (by full name; shapes and dtypes must match).

        Raises:
            ProbPruneError: an unknown name, or a tensor of another shape or dtype.
        """
        old = self.parameters()
        for k, v in new.items():
            if k not in old:
                raise ProbPruneError(f"graph parameter {k!r}: no such parameter (known: {', '.join(old)})")
            if not isinstance(v, Tensor) or v.shape != old[k].shape or v.dtype != old[k].dtype:
                raise ProbPruneError(f"graph parameter {k}: expected shape {tuple(old[k].shape)} {old[k].dtype}, got "
                                     f"{tuple(getattr(v, 'shape', ()))} {getattr(v, 'dtype', type(v).__name__)}")
        nodes = [Node(n.name, n.op, n.inputs, n.attrs, {k: new.get(f"{n.name}.{k}", v) for k, v in n.params.items()})
                 for n in self.nodes]
        return Graph(nodes, self.input_shape)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Graph:
        """A copy with every parameter cast to ``dtype`` (float32 → float64 is exact) and/or moved to ``device``."""
        return Graph([Node(n.name, n.op, n.inputs, n.attrs, {k: v.to(device=device, dtype=dtype)
                                                             for k, v in n.params.items()})
                      for n in self.nodes], self.input_shape)

    def _forward_one(self, params: Mapping[str, Tensor], x: Tensor,
                     keep: bool = False) -> Tensor | dict[str, Tensor]:
        vals: dict[str, Tensor] = {"input": x}
        for node in self.nodes:
            own = {k: params[f"{node.name}.{k}"] for k in node.params}
            vals[node.name] = apply_node(node, [vals[i] for i in node.inputs], own)
        return vals if keep else vals[self.output]

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``[N, *out]`` of inputs ``[N, *input_shape]``; with a trial dim also ``[K, N, …]`` inputs.

        A graph with a trial dim maps ``[N, …]`` inputs (shared by all members) or ``[K, N, …]`` inputs to
        ``[K, N, *out]``, vectorised over the members.
        """
        d = len(self.input_shape)
        if not isinstance(x, Tensor) or tuple(x.shape[x.dim() - d:]) != self.input_shape or x.dim() not in (d + 1,
                                                                                                            d + 2):
            raise ProbPruneError(f"graph input: shape {tuple(getattr(x, 'shape', ()))}, expected [N, "
                                 f"{', '.join(map(str, self.input_shape))}] (or [K, N, …] with a trial dim)")
        params = self.parameters()
        if self.n_trials is None:
            if x.dim() == d + 2:
                raise ProbPruneError("graph input: a [K, N, …] input needs a graph with a trial dim")
            return self._forward_one(params, x)  # type: ignore[return-value]
        k = self.n_trials
        if x.dim() == d + 2 and x.shape[0] != k:
            raise ProbPruneError(f"graph input: {x.shape[0]} members in the input, the graph has {k}")
        trial = {name: v for name, v in params.items()
                 if self._has_trial(self.node(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1])}
        shared = {name: v for name, v in params.items() if name not in trial}

        def one(tp: dict[str, Tensor], xi: Tensor) -> Tensor:
            return self._forward_one({**shared, **tp}, xi)  # type: ignore[return-value]

        fn = torch.func.vmap(one, in_dims=(0, 0 if x.dim() == d + 2 else None))
        return fn(trial, x)  # type: ignore[no-any-return]

    __call__ = forward

    def activations(self, x: Tensor) -> dict[str, Tensor]:
        """Every node's output on ``[N, *input_shape]`` inputs (no trial dim), keyed by node name."""
        if self.n_trials is not None:
            raise ProbPruneError("graph.activations: not for a graph with a trial dim")
        return self._forward_one(self.parameters(), x, keep=True)  # type: ignore[return-value]

    def __repr__(self) -> str:
        ops = ", ".join(f"{n.name}:{n.op}" for n in self.nodes)
        return f"Graph(input_shape={self.input_shape}, nodes=[{ops}])"
