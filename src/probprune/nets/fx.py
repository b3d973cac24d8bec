"""Read any ``nn.Module`` that ``torch.fx`` can trace into a :class:`~probprune.nets.graph.Graph`: exact or refused.

Why ``torch.fx.symbolic_trace`` and not ``torch.export``: fx keeps the module hierarchy — a call of
``features.0`` stays one node whose target *is* that submodule, so parameters keep the user's names
(``features.0.weight``) and the exact layer type (and its eval-mode state) can be checked, while
``torch.export`` lowers every layer to ATen ops (``aten.convolution``, ``aten._native_batch_norm_legit_no_training``)
with lifted, renamed parameters and decomposed activations, which would have to be pattern-matched back. fx is
also available for every module without tracing overheads or a C++ toolchain. Its limit — data-dependent
control flow cannot be traced — is a refusal here, with the tracer's message.

Rules (every refusal names the fx node, its op and what to do):

* every submodule must be in eval mode (BatchNorm and Dropout must be ``eval()``; :func:`read_module` with
  ``eval_mode`` reads the eval-mode function instead and refuses only a BatchNorm in train mode), and no module
  may carry forward hooks or pre-hooks (a model pruned with ``torch.nn.utils.prune`` does: call ``prune.remove``
  first) or an instance-level ``forward``, nor may any global module hook be registered;
* a module's layer is read by its **exact type** (a subclass may compute anything else): a subclass defined
  outside ``torch.nn`` is traced through its own forward like any module of yours (``nn.Sequential``, your own
  blocks contribute the functions they call), and one torch.fx keeps as a leaf (a parametrised ``Linear``) is
  refused; refusals say which layer a node is inside of, and that it is a subclass;
* a circular conv is a ``circular_pad`` node (the pads its forward applies) and the conv without padding; the
  kernel is the weight's;
* parameters are copied in float64 (exact for float32 and float64 weights); BatchNorm (eval) is folded, in
  float64, into the linear/conv node before it when that node feeds nothing else, and kept as a per-channel
  ``affine`` node otherwise. The graph computes the folded network: its float64 weights are the rounded
  products ``W·γ/√(σ² + ε)``, so the graph is the module up to float64 rounding (checked below) and the
  certificate of :mod:`probprune.bounds.graph` is about the graph as built;
* constants computed from parameters and buffers alone (input normalisation ``(x − mean) / std``) are
  evaluated once in float64; division by a constant becomes multiplication by its float64 reciprocal;
* then a numerical second check: a float64 copy of the module and the graph run side by side on 256 fixed
  inputs (norms spread over [0, 10], from a local generator); each node, fed the module's own inputs to it, must
  agree to float64 rounding of that node, and the whole output within the rounding propagated through the graph,
  or the node is named and the conversion refused.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from probprune.config import ProbPruneError
from probprune.nets import _check_points
from probprune.nets.graph import Activation, Graph, Node, activation, apply_node

__all__ = ["Check", "ModuleRead", "check_against", "check_points", "graph_from_module", "read_module"]

_CHECK_SEED = 20_260_515
_SLACK = 64.0
_U = 2.0 ** -53
_TINY = 2.0 ** -1074

_HINT = ("rewrite that part with supported layers (Linear, Conv1d/2d, BatchNorm, pools, residual add, cat, "
         "flatten, the supported activations) or leave it out of the certified part")
_REFUSED_HINTS: dict[type, str] = {
    nn.LayerNorm: "LayerNorm divides by the input's own statistics; no Lipschitz rule here covers it — use "
                  "BatchNorm (eval) or remove it",
    nn.MultiheadAttention: "attention multiplies input-dependent tensors (not Lipschitz on a ball by these rules)",
    nn.GroupNorm: "GroupNorm divides by the input's own statistics; use BatchNorm (eval)",
}
_MODULE_ACTS: dict[type, Callable[[nn.Module], Activation]] = {
    nn.ReLU: lambda m: activation("relu"),
    nn.LeakyReLU: lambda m: activation("leaky_relu", cast(nn.LeakyReLU, m).negative_slope),
    nn.ReLU6: lambda m: activation("relu6"),
    nn.Hardtanh: lambda m: activation("hardtanh", cast(nn.Hardtanh, m).min_val, cast(nn.Hardtanh, m).max_val),
    nn.ELU: lambda m: activation("elu", cast(nn.ELU, m).alpha),
    nn.GELU: lambda m: _gelu(cast(nn.GELU, m).approximate),
    nn.SiLU: lambda m: activation("silu"),
    nn.Tanh: lambda m: activation("tanh"),
    nn.Sigmoid: lambda m: activation("sigmoid"),
    nn.Softplus: lambda m: activation("softplus", cast(nn.Softplus, m).beta, cast(nn.Softplus, m).threshold),
}
_FUNC_ACTS: dict[Any, tuple[str, tuple[tuple[str, float], ...]]] = {
    F.relu: ("relu", ()), torch.relu: ("relu", ()), "relu": ("relu", ()),
    F.relu6: ("relu6", ()), F.silu: ("silu", ()),
    torch.tanh: ("tanh", ()), F.tanh: ("tanh", ()), "tanh": ("tanh", ()),
    torch.sigmoid: ("sigmoid", ()), F.sigmoid: ("sigmoid", ()), "sigmoid": ("sigmoid", ()),
    F.leaky_relu: ("leaky_relu", (("negative_slope", 0.01),)),
    F.hardtanh: ("hardtanh", (("min_val", -1.0), ("max_val", 1.0))),
    F.elu: ("elu", (("alpha", 1.0),)),
    F.softplus: ("softplus", (("beta", 1.0), ("threshold", 20.0))),
}
_ALIASES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_MAXPOOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_FUNC_POOLS: dict[Any, tuple[tuple[str, ...], Callable[..., nn.Module]]] = {
    F.max_pool1d: (_MAXPOOL_ARGS, nn.MaxPool1d), F.max_pool2d: (_MAXPOOL_ARGS, nn.MaxPool2d),
    F.avg_pool1d: (_AVGPOOL_ARGS[:-1], nn.AvgPool1d), F.avg_pool2d: (_AVGPOOL_ARGS, nn.AvgPool2d),
    F.adaptive_avg_pool1d: (("output_size",), nn.AdaptiveAvgPool1d),
    F.adaptive_avg_pool2d: (("output_size",), nn.AdaptiveAvgPool2d),
}
"""Functional pools, read as the module with the same arguments."""
_RESHAPES = ("view", "reshape", "flatten")
_LEAVES = (set(_MODULE_ACTS) | set(_ALIASES) | {nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d,
           nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
           nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d})


def _gelu(approximate: str) -> Activation:
    if approximate != "none":
        raise ProbPruneError(f"GELU(approximate={approximate!r}) is not supported; use approximate='none'")
    return activation("gelu")


def _module_of(node: torch.fx.Node) -> tuple[str, type] | None:
    """The innermost module (path, type) whose forward created ``node`` (``None`` at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, t = list(stack.values())[-1]
    return str(path), t


def _supported_base(t: type) -> type | None:
    """The supported layer type ``t`` strictly derives from, if any (read by exact type: never as that base)."""
    return next((b for b in _LEAVES if issubclass(t, b) and t is not b), None)


def _subclass_note(t: type, traced: bool = True) -> str:
    base = _supported_base(t)
    if base is None:
        return ""
    how = ", so it is traced through its own forward" if traced else ""
    return (f"{t.__name__} is a subclass of nn.{base.__name__}; layers are read by exact type (a subclass may "
            f"compute anything else){how} — if it computes the same function, copy its parameters into a plain "
            f"nn.{base.__name__}")


def _refuse(node: torch.fx.Node, what: str, hint: str = _HINT) -> ProbPruneError:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    where = f"{node.op} {target}"
    if node.op == "call_module" and node.graph.owning_module is not None:
        where += f": {type(node.graph.owning_module.get_submodule(str(node.target))).__name__}"
    inside = _module_of(node)
    if node.op != "call_module" and inside is not None:
        where += f", inside layer {inside[0]} ({inside[1].__name__})"
        note = _subclass_note(inside[1])
        if note:
            hint = f"{hint}; {note}"
    return ProbPruneError(f"graph_from_module: node {node.name!r} ({where}): {what}; {hint}")


def _label(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """How the readers name an fx node to a user: ``layer 2 (Linear)``, or the node and the layer it is in."""
    if node.op == "call_module":
        return f"layer {node.target} ({type(gm.get_submodule(str(node.target))).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    inside = _module_of(node)
    if inside is None:
        return f"node {node.name!r} ({node.op} {target})"
    base = _supported_base(inside[1])
    sub = "" if base is None else f", a subclass of nn.{base.__name__} read through its own forward"
    return f"node {node.name!r} ({node.op} {target}, inside layer {inside[0]} ({inside[1].__name__}{sub}))"


def _pair(v: Any, dims: int) -> tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * dims


def _global_hooks_present() -> bool:
    """Whether module hooks registered for every module (``register_module_forward_hook`` …) exist."""
    glob = nn.modules.module
    return bool(getattr(glob, "_global_forward_hooks", None) or getattr(glob, "_global_forward_pre_hooks", None))


def _check_module(module: nn.Module, eval_mode: bool = False) -> None:
    """Eval mode everywhere (or, with ``eval_mode``, read as eval: then no BatchNorm in train mode), no hooks
    (module's own or global), no instance-level ``forward``."""
    if _global_hooks_present():
        raise ProbPruneError("graph_from_module: a global forward hook is registered "
                             "(torch.nn.modules.module.register_module_forward_hook / _pre_hook: it may change any "
                             "module's output); remove it first")
    mods = list(module.named_modules())
    for name, m in sorted(mods, key=lambda nm: any(True for _ in nm[1].children())):  # layers before containers
        label = f"layer {name}" if name else "the module"
        if m.training and (not eval_mode or isinstance(m, nn.modules.batchnorm._BatchNorm)):
            why = ("BatchNorm in train mode normalises by the batch's own statistics; " if eval_mode else "")
            raise ProbPruneError(f"graph_from_module: {label} ({type(m).__name__}) is in train mode; {why}call "
                                 "model.eval() first (BatchNorm and Dropout are read in eval mode only)")
        if m._forward_hooks or m._forward_pre_hooks:
            raise ProbPruneError(f"graph_from_module: {label} ({type(m).__name__}) has forward hooks, which change "
                                 "its function (a torch.nn.utils.prune mask is one: call "
                                 "torch.nn.utils.prune.remove(module, 'weight') first); remove them")
        if "forward" in vars(m):
            raise ProbPruneError(f"graph_from_module: {label} ({type(m).__name__}) has an overridden forward (an "
                                 "instance attribute), which changes its function; delete it first")


class _Recorder(torch.fx.Interpreter):
    """Runs the traced module and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}
        # run_node names the failing node itself; torch's extra traceback would log it through torch._logging,
        # importing torch._dynamo and torch._inductor on the first failure (seconds)
        self.extra_traceback = False

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except Exception as exc:  # a shape the layer cannot take: name the node
            raise ProbPruneError(f"{_label(n, self.module)} cannot run: "  # type: ignore[arg-type]
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        # a copy: an in-place module later in the graph (ReLU(inplace=True)) would overwrite the value
        self.values[n.name] = out.clone() if isinstance(out, Tensor) else out
        return out


@dataclass
class _Builder:
    """State of one conversion: emitted nodes, fx name → graph name, constants and static values."""

    gm: torch.fx.GraphModule
    values: dict[str, Any]
    nodes: list[Node] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # fx node → graph node it equals
    consts: dict[str, Any] = field(default_factory=dict)  # fx node → constant (tensor or number) or static value
    folded: set[str] = field(default_factory=set)  # fx nodes whose graph node absorbed a following BatchNorm
    origin: dict[str, str] = field(default_factory=dict)  # graph node → the fx node it was emitted for
    used_modules: set[str] = field(default_factory=set)
    taken: set[str] = field(default_factory=lambda: {"input"})

    def emit(self, fx_node: torch.fx.Node, name: str, op: str, inputs: tuple[str, ...],
             attrs: Mapping[str, Any] | None = None, params: Mapping[str, Tensor] | None = None) -> None:
        if name in self.taken:
            name = fx_node.name
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        own = {k: v.detach().clone() for k, v in (params or {}).items()}
        self.nodes.append(Node(name, op, inputs, attrs or {}, own))
        self.names[fx_node.name] = name
        self.origin[name] = fx_node.name

    def tensor_input(self, fx_node: torch.fx.Node, arg: Any) -> str:
        """The graph name of an argument that must be an input-dependent tensor."""
        if isinstance(arg, torch.fx.Node) and arg.name in self.names:
            return self.names[arg.name]
        raise _refuse(fx_node, f"argument {arg!r} is not a tensor computed from the input")

    def is_dynamic(self, arg: Any) -> bool:
        return isinstance(arg, torch.fx.Node) and arg.name in self.names

    def const(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.consts[arg.name]
        return arg

    def shape(self, fx_node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(cast(Tensor, self.values[fx_node.name]).shape[1:])


def _arg(node: torch.fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _conv_node(b: _Builder, n: torch.fx.Node, m: nn.Conv1d | nn.Conv2d, src: str) -> None:
    """A conv node as its forward computes it: the kernel from the weight, a circular pad (the list the forward
    applies, fixed at construction) as a ``circular_pad`` node before a conv without padding."""
    dims = 1 if isinstance(m, nn.Conv1d) else 2
    if m.padding_mode not in ("zeros", "circular"):
        raise _refuse(n, f"padding_mode={m.padding_mode!r}", "only zero and circular padding are supported")
    k, d = tuple(int(v) for v in m.weight.shape[2:]), _pair(m.dilation, dims)
    if m.padding_mode == "circular":
        pads = ((0, 0),) * dims
        b.emit(n, f"{n.target}.pad", "circular_pad", (src,),
               {"pads": tuple(int(v) for v in m._reversed_padding_repeated_twice)})
        src = b.nodes[-1].name
    elif m.padding == "same":
        pads = tuple((t // 2, t - t // 2) for t in (di * (ki - 1) for ki, di in zip(k, d)))
    elif m.padding == "valid":
        pads = ((0, 0),) * dims
    else:
        pads = tuple((p, p) for p in _pair(m.padding, dims))
    params = {"weight": m.weight.double()}
    if m.bias is not None:
        params["bias"] = m.bias.double()
    b.emit(n, str(n.target), "conv", (src,), {"stride": _pair(m.stride, dims), "padding": pads, "dilation": d,
                                              "groups": int(m.groups)}, params)


def _batchnorm(b: _Builder, n: torch.fx.Node, m: nn.modules.batchnorm._BatchNorm, src: str) -> None:
    if m.running_mean is None or m.running_var is None:
        raise _refuse(n, "BatchNorm without running statistics", "use track_running_stats=True")
    scale = 1.0 / torch.sqrt(m.running_var.double() + float(m.eps))
    if m.weight is not None:
        scale = scale * m.weight.double()
    shift = -m.running_mean.double() * scale
    if m.bias is not None:
        shift = shift + m.bias.double()
    arg = cast(torch.fx.Node, n.args[0])
    prev = b.nodes[-1] if b.nodes else None
    if (prev is not None and prev.name == src and prev.op in ("linear", "conv") and len(arg.users) == 1
            and b.names.get(arg.name) == src and arg.name not in b.folded):
        w = prev.params["weight"]
        shape = (-1,) + (1,) * (w.dim() - 1)
        bias = prev.params.get("bias", torch.zeros(w.shape[0], dtype=torch.float64))
        b.nodes[-1] = Node(prev.name, prev.op, prev.inputs, prev.attrs,
                           {"weight": w * scale.reshape(shape), "bias": bias * scale + shift})
        b.names[n.name] = prev.name
        b.folded.add(arg.name)
        return
    spatial = len(b.shape(n)) - 1
    shape = (-1,) + (1,) * spatial
    b.emit(n, str(n.target), "affine", (src,), {}, {"scale": scale.reshape(shape), "shift": shift.reshape(shape)})


def _pool(b: _Builder, n: torch.fx.Node, m: nn.Module, src: str) -> None:
    name = str(n.target) if n.op == "call_module" else n.name
    dims = 1 if isinstance(m, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        b.emit(n, name, "adaptive_avgpool", (src,), {"dims": dims, "output_size": b.shape(n)[1:]})
        return
    pm = cast(Any, m)
    if pm.ceil_mode:
        raise _refuse(n, "ceil_mode=True", "use ceil_mode=False")
    k = _pair(pm.kernel_size, dims)
    s = _pair(pm.stride if pm.stride is not None else pm.kernel_size, dims)
    attrs = {"dims": dims, "kernel": k, "stride": s, "padding": _pair(pm.padding, dims)}
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        if _pair(m.dilation, dims) != (1,) * dims or m.return_indices:
            raise _refuse(n, "dilation or return_indices", "use a max-pool with dilation 1")
        b.emit(n, name, "maxpool", (src,), attrs)
        return
    if getattr(m, "divisor_override", None) is not None:
        raise _refuse(n, "divisor_override", "use the default divisor")
    b.emit(n, name, "avgpool", (src,), {**attrs, "count_include_pad": bool(pm.count_include_pad)})


def _call_module(b: _Builder, n: torch.fx.Node) -> None:
    target = str(n.target)
    m = b.gm.get_submodule(target)
    t = type(m)
    if t in _REFUSED_HINTS:
        raise _refuse(n, f"{t.__name__} is not supported", _REFUSED_HINTS[t])
    if len(n.args) != 1 or n.kwargs:
        raise _refuse(n, "a module called with more than one argument")
    src = b.tensor_input(n, n.args[0])
    if any(True for _ in m.parameters(recurse=False)):
        if target in b.used_modules:
            raise _refuse(n, f"module {target} is called twice (shared weights)", "use one module per call")
        b.used_modules.add(target)
    if t is nn.Linear:
        lin = cast(nn.Linear, m)
        params = {"weight": lin.weight.double()} | ({"bias": lin.bias.double()} if lin.bias is not None else {})
        b.emit(n, target, "linear", (src,), {}, params)
    elif t in (nn.Conv1d, nn.Conv2d):
        _conv_node(b, n, cast(nn.Conv2d, m), src)
    elif t in (nn.BatchNorm1d, nn.BatchNorm2d):
        _batchnorm(b, n, cast(nn.modules.batchnorm._BatchNorm, m), src)
    elif t in _MODULE_ACTS:
        try:
            act = _MODULE_ACTS[t](m)
        except ProbPruneError as exc:
            raise _refuse(n, str(exc), "use a supported setting") from exc
        b.emit(n, target, "act", (src,), {"act": act})
    elif t in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
        _pool(b, n, m, src)
    elif t in (nn.Flatten, nn.Unflatten):
        if t is nn.Flatten and cast(nn.Flatten, m).start_dim == 0:
            raise _refuse(n, "Flatten(start_dim=0) merges the batch dim", "use start_dim=1")
        b.emit(n, target, "reshape", (src,), {"shape": b.shape(n)})
    elif t in (nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d):
        pm = cast(Any, m)
        if float(pm.value) != 0.0:
            raise _refuse(n, f"constant padding with value {pm.value}", "only zero padding is supported")
        b.emit(n, target, "pad", (src,), {"pads": tuple(int(v) for v in pm.padding)})
    elif t in _ALIASES:
        b.names[n.name] = src
    else:
        note = _subclass_note(t, traced=False)
        raise _refuse(n, f"module type {t.__name__} is not supported", note or _HINT)


def _const_operand(b: _Builder, n: torch.fx.Node, c: Any, sample: tuple[int, ...]) -> Tensor:
    """A constant operand of x·c or x + c as a float64 tensor broadcast over one sample (batch dims dropped)."""
    t = torch.as_tensor(c, dtype=torch.float64).detach()
    while t.dim() > len(sample):
        if t.shape[0] != 1:
            raise _refuse(n, f"a constant of shape {tuple(t.shape)} varies over the batch dim")
        t = t[0]
    shape = _broadcast(tuple(t.shape), sample)
    if shape is None:
        raise _refuse(n, f"a constant of shape {tuple(t.shape)} does not broadcast to {sample}")
    if shape != sample:
        raise _refuse(n, f"a constant of shape {tuple(t.shape)} enlarges the sample shape {sample}")
    return t.clone()


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The broadcast shape of ``a`` and ``b`` (None if they do not broadcast). Plain Python: the first call of
    ``torch.broadcast_shapes`` imports torch's symbolic-shape machinery (seconds)."""
    n = max(len(a), len(b))
    out = []
    for x, y in zip((1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b):
        if x != y and 1 not in (x, y):
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def _arith(b: _Builder, n: torch.fx.Node, kind: str) -> None:
    a0, a1 = n.args[0], n.args[1] if len(n.args) > 1 else n.kwargs.get("other")
    if n.kwargs.get("alpha", 1) != 1:
        raise _refuse(n, "alpha ≠ 1", "write the scaling as a separate multiplication")
    dyn0, dyn1 = b.is_dynamic(a0), b.is_dynamic(a1)
    sample = b.shape(n)
    if dyn0 and dyn1:
        if kind == "add":
            b.emit(n, n.name, "add", (b.names[cast(torch.fx.Node, a0).name], b.names[cast(torch.fx.Node, a1).name]))
            return
        if kind == "sub":
            neg = f"{n.name}_neg"
            src1 = b.names[cast(torch.fx.Node, a1).name]
            b.nodes.append(Node(neg, "affine", (src1,), {}, {"scale": torch.tensor(-1.0, dtype=torch.float64)}))
            b.origin[neg] = n.name
            b.taken.add(neg)
            b.emit(n, n.name, "add", (b.names[cast(torch.fx.Node, a0).name], neg))
            return
        raise _refuse(n, f"{kind} of two input-dependent tensors", "only sums of tensors are linear")
    src = b.tensor_input(n, a0 if dyn0 else a1)
    if b.shape(cast(torch.fx.Node, a0 if dyn0 else a1)) != sample:
        raise _refuse(n, "broadcasting changes the tensor's shape")
    c = _const_operand(b, n, b.const(a1 if dyn0 else a0), sample)
    one = torch.ones((), dtype=torch.float64)
    if kind == "add":
        params = {"shift": c}
    elif kind == "sub":
        params = {"shift": -c} if dyn0 else {"scale": -one, "shift": c}
    elif kind == "mul":
        params = {"scale": c}
    elif kind == "div" and dyn0:
        params = {"scale": 1.0 / c}
    else:
        raise _refuse(n, "division by an input-dependent tensor")
    b.emit(n, n.name, "affine", (src,), {}, params)


_ARITH = {operator.add: "add", torch.add: "add", operator.iadd: "add", "add": "add",
          operator.sub: "sub", torch.sub: "sub", "sub": "sub",
          operator.mul: "mul", torch.mul: "mul", "mul": "mul",
          operator.truediv: "div", torch.div: "div", "div": "div"}


def _reshape(b: _Builder, n: torch.fx.Node) -> None:
    """flatten/view/reshape: the per-sample output shape as recorded; the batch dim must stay first."""
    src = b.tensor_input(n, n.args[0])
    before = cast(Tensor, b.values[cast(torch.fx.Node, n.args[0]).name]).shape[0]
    if cast(Tensor, b.values[n.name]).shape[0] != before:
        raise _refuse(n, "the reshape changes the batch dim", "keep the batch dim first (e.g. x.flatten(1))")
    b.emit(n, n.name, "reshape", (src,), {"shape": b.shape(n)})


def _call_function(b: _Builder, n: torch.fx.Node) -> None:
    fn = n.target
    if fn in _ARITH:
        if fn is torch.div and n.kwargs.get("rounding_mode") is not None:
            raise _refuse(n, "division with rounding")
        _arith(b, n, _ARITH[fn])
        return
    if fn in _FUNC_ACTS or (fn is F.gelu):
        if fn is F.gelu:
            act = _gelu(str(n.kwargs.get("approximate", "none")))
        else:
            kind, defaults = _FUNC_ACTS[fn]
            act = activation(kind, *(_arg(n, i + 1, k, d) for i, (k, d) in enumerate(defaults)))
        b.emit(n, n.name, "act", (b.tensor_input(n, n.args[0]),), {"act": act})
        return
    if fn is torch.flatten:
        _reshape(b, n)
        return
    if fn in (torch.cat, torch.concat):
        parts = _arg(n, 0, "tensors", ())
        dim = int(_arg(n, 1, "dim", 0))
        nd = len(b.shape(n)) + 1
        dim = dim + nd if dim < 0 else dim
        if dim == 0:
            raise _refuse(n, "concatenation along the batch dim")
        b.emit(n, n.name, "cat", tuple(b.tensor_input(n, p) for p in parts), {"dim": dim - 1})
        return
    if fn is F.pad:
        if _arg(n, 2, "mode", "constant") != "constant" or float(_arg(n, 3, "value", 0.0) or 0.0) != 0.0:
            raise _refuse(n, "non-zero or non-constant padding", "only zero padding is supported")
        pads = tuple(int(v) for v in cast(tuple[int, ...], b.const(n.args[1])))
        b.emit(n, n.name, "pad", (b.tensor_input(n, n.args[0]),), {"pads": pads})
        return
    if fn in _FUNC_POOLS:
        names, make = _FUNC_POOLS[fn]
        kwargs = {k: b.const(_arg(n, i + 1, k, None)) for i, k in enumerate(names)}
        try:
            module = make(**{k: v for k, v in kwargs.items() if v is not None})
        except TypeError as exc:
            raise _refuse(n, f"arguments not understood ({exc})") from exc
        _pool(b, n, module, b.tensor_input(n, n.args[0]))
        return
    if fn is operator.neg:
        b.emit(n, n.name, "affine", (b.tensor_input(n, n.args[0]),), {},
               {"scale": torch.tensor(-1.0, dtype=torch.float64)})
        return
    if fn is F.dropout and _arg(n, 2, "training", True) is not False:
        raise _refuse(n, "functional dropout with training=True", "pass training=self.training and call eval()")
    if fn is F.dropout:
        b.names[n.name] = b.tensor_input(n, n.args[0])
        return
    raise _refuse(n, "function not supported")


def _convert_node(b: _Builder, n: torch.fx.Node) -> None:
    """One fx node: emitted, aliased, kept as a constant/static value, or refused."""
    args = [a for a in n.all_input_nodes]
    if n.op == "get_attr" or (n.op != "output" and args and not any(b.is_dynamic(a) for a in args)
                              and n.op in ("call_function", "call_method")):
        b.consts[n.name] = b.values[n.name]  # computed from parameters, buffers or shapes alone
        return
    if n.op == "call_method" and n.target in ("size", "dim"):
        b.consts[n.name] = b.values[n.name]
        return
    if n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "dtype", "device"):
        b.consts[n.name] = b.values[n.name]
        return
    if n.op == "call_module":
        _call_module(b, n)
    elif n.op == "call_function":
        _call_function(b, n)
    elif n.op == "call_method":
        _call_method(b, n)
    else:
        raise _refuse(n, f"fx op {n.op} is not supported")


def _call_method(b: _Builder, n: torch.fx.Node) -> None:
    name = str(n.target)
    if name in _RESHAPES:
        _reshape(b, n)
    elif name in _FUNC_ACTS:
        b.emit(n, n.name, "act", (b.tensor_input(n, n.args[0]),), {"act": activation(_FUNC_ACTS[name][0])})
    elif name in _ARITH:
        _arith(b, n, _ARITH[name])
    elif name == "contiguous":
        b.names[n.name] = b.tensor_input(n, n.args[0])
    else:
        raise _refuse(n, "tensor method not supported")


def _trace(module: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(module)
    except Exception as exc:  # the tracer raises TraceError, TypeError, RuntimeError …
        raise ProbPruneError(f"graph_from_module: torch.fx cannot trace the module ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); data-dependent control flow "
                             "must be rewritten without Python branches on tensor values") from exc


def graph_from_module(module: nn.Module, example_input: Tensor) -> Graph:
    """The :class:`Graph` that computes exactly what ``module`` computes (eval mode), or refuse.

    Args:
        module: any ``nn.Module`` ``torch.fx.symbolic_trace`` can trace, in eval mode, without hooks; it is not
            modified (not its dtype, device or mode).
        example_input: ``[N, …]`` float tensor with the per-sample shape the network takes.

    Returns:
        The graph (float64 parameters named as in ``module.named_parameters()``; BatchNorm folded where it
        follows a linear/conv node feeding nothing else). A bare layer (``nn.Linear(3, 2)`` itself) is read as
        ``nn.Sequential(layer)``: its parameters are ``0.weight``, ``0.bias``.

    Raises:
        ProbPruneError: what is refused, naming the node (module docstring).
    """
    return read_module(module, example_input)[0]


class Check(NamedTuple):
    """The numerical check a read passed: the float64 inputs, the float64 module's outputs on them, and the bound
    on the output difference float64 rounding can build up (the graph's output was within it)."""

    x: Tensor
    out: Tensor
    tol: float


class ModuleRead(NamedTuple):
    """What :func:`read_module` read: the graph, per graph node its name for the user, the check it passed."""

    graph: Graph
    labels: dict[str, str]
    check: Check


def read_module(module: nn.Module, example_input: Tensor, *, eval_mode: bool = False,
                end_to_end: bool = True) -> ModuleRead:
    """:func:`graph_from_module`, with per graph node how to name it to the user (``layer 2 (Linear)``) and the
    numerical check the graph passed.

    With ``eval_mode`` the module's eval-mode function is read whatever its modes (Dropout is the identity),
    except that a BatchNorm in train mode is refused (:func:`probprune.nets.from_module`'s rule); without it every
    submodule must be in eval mode. Without ``end_to_end`` the graph's own end-to-end forward is not run (the
    caller checks what it builds against the module within the returned bound: :func:`check_against`).
    """
    gm, x = _prepare(module, example_input, eval_mode)
    rec = _Recorder(gm)
    with torch.no_grad():
        try:
            rec.run(x)
        except Exception as exc:
            raise ProbPruneError(f"graph_from_module: the module cannot run on example_input of shape "
                                 f"{tuple(x.shape)}: {str(exc).splitlines()[0]}") from exc
    b = _Builder(gm, rec.values)
    out_arg: Any = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if "input" in b.names.values():
                raise _refuse(n, "a second input", "the graph has one input tensor")
            b.names[n.name] = "input"
        elif n.op == "output":
            out_arg = n.args[0]
        else:
            _convert_node(b, n)
    if not isinstance(out_arg, torch.fx.Node) or out_arg.name not in b.names:
        raise ProbPruneError("graph_from_module: the output must be one tensor computed from the input")
    if b.names[out_arg.name] != b.nodes[-1].name if b.nodes else True:
        raise ProbPruneError("graph_from_module: the output is not the last node computed (or is the input "
                             "itself); nothing to certify")
    graph = Graph(b.nodes, tuple(x.shape[1:]))
    check = _check_numerics(graph, gm, b, end_to_end)
    fx_nodes = {n.name: n for n in gm.graph.nodes}
    return ModuleRead(graph, {g: _label(fx_nodes[f], gm) for g, f in b.origin.items()}, check)


def _prepare(module: nn.Module, example_input: Tensor, eval_mode: bool) -> tuple[torch.fx.GraphModule, Tensor]:
    """Checks, then the traced float64 (eval-mode) copy of ``module`` and the float64 example input."""
    if not isinstance(module, nn.Module):
        raise ProbPruneError(f"graph_from_module: module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 2 or not example_input.is_floating_point():
        raise ProbPruneError("graph_from_module: example_input must be a float tensor [N, …] with a batch dim, got "
                             f"{getattr(example_input, 'shape', type(example_input).__name__)}")
    _check_module(module, eval_mode)
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ProbPruneError(f"graph_from_module: {name} has NaN or inf entries")
    mod = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    if eval_mode:
        mod.eval()  # the eval-mode function: Python branches on self.training are traced as in eval
    if type(mod) in _LEAVES:  # fx traces the root's own forward (F.linear …): read a bare layer as a 1-layer stack
        mod = nn.Sequential(mod)
    return _trace(mod), example_input.detach().to(device="cpu", dtype=torch.float64)


def check_points(shape: tuple[int, ...]) -> Tensor:
    """256 float64 inputs ``[256, *shape]`` of the stack converters' check (:func:`probprune.nets._check_points`),
    drawn with the graph readers' own seed."""
    return _check_points(shape, seed=_CHECK_SEED)


def _fan(node: Node, xs: list[Tensor], shape: tuple[int, ...]) -> int:
    """Terms summed per output entry (the length of the dot product that rounds)."""
    if node.op == "linear":
        return int(node.params["weight"].shape[-1])
    if node.op == "conv":
        return int(node.params["weight"][0].numel())
    if node.op == "avgpool":
        return math.prod(node.attrs["kernel"])
    if node.op == "adaptive_avgpool":
        return math.prod(-(-i // o) + 1 for i, o in zip(xs[0].shape[2:], node.attrs["output_size"]))
    return 2


_SUMS = ("linear", "conv", "affine", "avgpool", "adaptive_avgpool")
"""Ops whose output entries are sums of products of inputs and parameters."""


def _abs_scale(node: Node, xs: list[Tensor], fan: int) -> float:
    """An upper bound on ``max |node|(|inputs|)`` (the node with its parameters' absolute values): the size its
    float64 rounding is relative to; for other ops the largest input entry.

    The sums are evaluated in float32 (an order of magnitude faster than float64 convolutions on a CPU): a sum of
    ``fan`` non-negative products, each input rounded once to float32, is within a relative ``(fan + 3)·2⁻²⁴``
    of the exact value for any summation order; the result is raised by ``(fan + 3)·2⁻¹⁶`` (256 times that, room
    for any float32 algorithm, Winograd transforms included) plus an absolute term for entries below float32's
    normal range. Values near float32's overflow are evaluated in float64 instead.
    """
    if node.op not in _SUMS:
        return max(float(v.abs().max()) for v in xs)
    tops = [float(v.abs().max()) for v in xs] + [float(t.abs().max()) for t in node.params.values()]
    big = max(tops) if tops else 0.0
    if not big * big * (fan + 1) < 2.0 ** 100:
        absp = {k: v.abs() for k, v in node.params.items()}
        return float(apply_node(node, [v.abs() for v in xs], absp).max())
    absp32 = {k: v.abs().float() for k, v in node.params.items()}
    s32 = float(apply_node(node, [v.abs().float() for v in xs], absp32).max())
    return s32 * (1.0 + (fan + 3) * 2.0 ** -16) + (fan + 3) * 2.0 ** -120 * (1.0 + big) ** 2


def _inf_lipschitz(node: Node) -> float:
    """A Lipschitz constant of the node in the ∞-norm (per input; for ``add`` each input's)."""
    if node.op == "linear":
        return float(node.params["weight"].abs().sum(dim=-1).max())
    if node.op == "conv":
        return float(node.params["weight"].abs().flatten(1).sum(dim=1).max())
    if node.op == "affine":
        return float(node.params["scale"].abs().max()) if "scale" in node.params else 1.0
    if node.op == "act":
        return float(cast(Activation, node.attrs["act"]).lipschitz)
    return 1.0  # pools (max and means are 1-Lipschitz in ∞-norm), add, cat, reshape, pad, identity


def _check_numerics(graph: Graph, gm: torch.fx.GraphModule, b: _Builder, end_to_end: bool = True) -> Check:
    """Second defence: run the float64 module on the check inputs and compare node by node (:func:`check_against`)."""
    x = check_points(graph.input_shape)
    rec = _Recorder(gm)
    with torch.no_grad():
        try:
            whole = rec.run(x)
        except Exception as exc:
            raise ProbPruneError(f"graph_from_module: the module cannot run on {x.shape[0]} check inputs of "
                                 f"shape {tuple(x.shape)}: {str(exc).splitlines()[0]} (does it fix the batch "
                                 "size?)") from exc
    ref: dict[str, tuple[str, Any]] = {}
    for fx_name, g in b.names.items():
        if fx_name not in b.folded:
            ref[g] = (f"fx node {fx_name}", rec.values[fx_name])  # the last fx node equal to g (a folded BatchNorm)
    tol = check_against(graph, x, ref, whole, "graph_from_module", "the module", end_to_end=end_to_end)
    return Check(x, torch.as_tensor(whole, dtype=torch.float64), tol)


def check_against(graph: Graph, x: Tensor, ref: Mapping[str, tuple[str, Any]], whole: Any, who: str,
                  what: str, *, end_to_end: bool = True) -> float:
    """Each node, fed the reference's values of its inputs, agrees with the reference to float64 rounding of the
    node; the whole output within the rounding propagated through the graph (∞-norm Lipschitz constants).

    Args:
        graph: the converted graph.
        x: the float64 check inputs ``[n, *input_shape]``.
        ref: per graph node name: (a label of the reference tensor, its float64 value on ``x``); nodes without a
            reference (helper nodes of the conversion) are fed their own outputs.
        whole: the reference's output on ``x``.
        who, what: the caller (for messages) and what the reference is (``the module``, ``the ONNX model``).
        end_to_end: also run the graph's own forward and hold its output to the propagated bound (a caller that
            runs its own end-to-end check of what it returns — :func:`probprune.nets.from_module`, whose ``Net``
            is compared with the module — skips it).

    Returns:
        The ∞-norm bound on the output difference that float64 rounding can build up through the graph's nodes
        (what the whole output was held to).

    Raises:
        ProbPruneError: naming the first node (and its reference tensor) outside the tolerance.
    """
    vals: dict[str, Tensor] = {"input": x}
    err: dict[str, float] = {"input": 0.0}
    with torch.no_grad():
        for node in graph.nodes:
            xs = [vals[i] for i in node.inputs]
            got = apply_node(node, xs)
            label, want = ref.get(node.name, ("", got))
            where = f"node {node.name!r} ({node.op}" + (f", {label}" if label else "") + ")"
            if not isinstance(want, Tensor) or want.shape != got.shape:
                raise ProbPruneError(f"{who}: {where} has output shape {tuple(got.shape)}, {what}'s "
                                     f"{tuple(getattr(want, 'shape', ()))}; refusing the conversion")
            top = float(want.abs().max())  # NaN or inf when any entry is
            if not math.isfinite(top):
                raise ProbPruneError(f"{who}: cannot check {where}: {what}'s output is not finite in float64 for "
                                     "inputs of norm ≤ 10")
            fan = _fan(node, xs, graph.shapes[node.name])
            scale = _abs_scale(node, xs, fan)
            extra = cast(Activation, node.attrs["act"]).abs_error if node.op == "act" else 0.0
            tol = _SLACK * (fan + 1) * (_U * (scale + top) + _TINY) + extra
            diff = float((got - want).abs().max())
            if not diff <= tol:
                raise ProbPruneError(f"{who}: the graph differs from {what} at {where}: max |difference| {diff:.3g} "
                                     f"on {x.shape[0]} inputs of norm ≤ 10, tolerance {tol:.3g} (float64 rounding); "
                                     "refusing the conversion")
            ins = [err[i] for i in node.inputs]
            err[node.name] = _inf_lipschitz(node) * (sum(ins) if node.op == "add" else max(ins)) + tol
            vals[node.name] = want
        if not end_to_end:
            return err[graph.output]
        out = graph.forward(x)
    whole_t = torch.as_tensor(whole, dtype=torch.float64)
    diff = float((out - whole_t).abs().max()) if out.shape == whole_t.shape else math.inf
    if not diff <= err[graph.output]:
        raise ProbPruneError(f"{who}: the graph's output differs from {what}'s: max |difference| {diff:.3g} on "
                             f"{x.shape[0]} inputs, tolerance {err[graph.output]:.3g}; refusing the conversion")
    return err[graph.output]
