"""Read an ONNX model (opset 9 and newer) into a :class:`~probprune.nets.graph.Graph`: exact or refused.

Unlike :func:`probprune.nets.onnx.load_onnx` (chains that are today's ``Net``), any DAG of these ops is read:
``Gemm`` (``transA = 0``), ``MatMul`` by a constant, ``Conv`` (explicit pads, strides, dilations, groups), ``Add`` /
``Sub`` (of two tensors, or of a constant), ``Mul`` / ``Div`` by constants, ``BatchNormalization`` (inference:
folded in float64 into the Conv/Gemm before it when that node feeds nothing else, else a per-channel affine node),
``Relu``, ``LeakyRelu``, ``Elu``, ``Tanh``, ``Sigmoid``, ``Softplus``, ``Gelu``, ``Mul(x, Sigmoid(x))`` (SiLU), ``Clip``
(→ Hardtanh / ReLU6 / ReLU), ``Flatten``
(axis 1), ``Reshape`` (batch dim kept first), ``Pad`` (constant zero), ``MaxPool``, ``AveragePool``,
``GlobalAveragePool``, ``Concat``, ``Identity``, ``Dropout``, ``Constant``. Anything else is refused naming the node
(name, op type) and what to do. Parsing (file checks, opset, attributes, constants) reuses
:mod:`probprune.nets.onnx`; nothing is unpickled.

Parameters are float64 (ONNX float32 values are widened exactly); a Gemm's ``alpha``/``beta`` and a folded
BatchNormalization are multiplied in float64. Node names come from the weight's initializer (``layers.0.weight`` →
node ``layers.0``), so parameters keep the model's names.

Numerical second check: a float64 copy of the model (every float initializer and constant widened, input and
output declared double) is evaluated by ``onnx.reference.ReferenceEvaluator`` — the ONNX project's own numpy
implementation of the operator definitions, independent of this conversion — on 256 fixed inputs with norms
spread over [0, 10]; every node must agree to float64 rounding (:func:`probprune.nets.fx.check_against`) or the
conversion is refused, naming the node and its ONNX tensor. (Two of the evaluator's operators are replaced by their
definitions: BatchNormalization of opsets 9–13, which it evaluates with batch statistics, and Gelu, whose erf it
approximates to ~1e-7.)

:func:`save_onnx_graph` writes a graph back (opset 13, or 20 with a GELU) for onnxruntime.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from probprune.config import ProbPruneError
from probprune.nets.fx import check_against, check_points
from probprune.nets.graph import Graph, Node, activation, apply_node
from probprune.nets.onnx import _attrs, _constants, _dims, _opset, _read_model

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

__all__ = ["OnnxGraphInfo", "load_onnx_graph", "save_onnx_graph"]

_ACTS = {"Relu": ("relu", ()), "Tanh": ("tanh", ()), "Sigmoid": ("sigmoid", ()), "LeakyRelu": ("leaky_relu", (0.01,)),
         "Elu": ("elu", (1.0,)), "Softplus": ("softplus", ())}
_ALIASES = ("Identity", "Dropout")


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What the reader saw: tensor names, the declared input shape, the opset."""

    input_name: str
    output_name: str
    input_shape: tuple[int | str | None, ...]
    opset: int


def _fail(msg: str) -> ProbPruneError:
    return ProbPruneError(f"load_onnx_graph: {msg}")


def _label(node: NodeProto) -> str:
    return f"node {node.name or '(unnamed)'!r} ({node.op_type})"


@dataclass
class _Reader:
    consts: dict[str, np.ndarray]
    batch: int | None
    opset: int
    consumers: dict[str, int]
    producer: dict[str, NodeProto] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # ONNX tensor → graph node
    vals: dict[str, Tensor] = field(default_factory=dict)  # graph node → value on one zero sample
    folded: set[str] = field(default_factory=set)  # ONNX tensors whose graph node absorbed a BatchNormalization
    taken: set[str] = field(default_factory=lambda: {"input"})
    origin: dict[str, NodeProto] = field(default_factory=dict)  # graph node → the ONNX node it was read from
    position: str = ""  # where the node being read is: "node 4 of 6"

    def emit(self, onnx_node: NodeProto, base: str, op: str, inputs: tuple[str, ...],
             attrs: dict[str, Any] | None = None, params: dict[str, Tensor] | None = None) -> None:
        name = base or onnx_node.name or f"{onnx_node.op_type.lower()}_{len(self.nodes)}"
        while name in self.taken:
            name += "_"
        for pname, t in (params or {}).items():
            if not bool(torch.isfinite(t).all()):
                raise _fail(f"{_label(onnx_node)}: its {pname} contains non-finite values (NaN or inf)")
        node = Node(name, op, inputs, attrs or {}, params or {})
        try:
            self.vals[name] = apply_node(node, [self.vals[i] for i in inputs])
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise _fail(f"{_label(onnx_node)}: cannot run on its input shapes: {str(exc).splitlines()[0]}") from exc
        self.taken.add(name)
        self.origin[name] = onnx_node
        self.nodes.append(node)
        self.names[onnx_node.output[0]] = name

    def src(self, node: NodeProto, i: int = 0) -> str:
        t = node.input[i] if len(node.input) > i else ""
        if t not in self.names:
            raise _fail(f"{_label(node)}: input {i} ({t!r}) is not a tensor computed from the model input")
        return self.names[t]

    def const(self, node: NodeProto, i: int, what: str) -> np.ndarray | None:
        if len(node.input) <= i or node.input[i] == "":
            return None
        t = node.input[i]
        if t not in self.consts:
            raise _fail(f"{_label(node)}: {what} ({t!r}) must be a constant (initializer or Constant)")
        return self.consts[t]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.vals[name].shape[1:])


def _f64(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


def _base(node: NodeProto, r: _Reader, i: int = 1) -> str:
    t = node.input[i] if len(node.input) > i else ""
    return t.removesuffix(".weight") if t.endswith(".weight") else ""


def _gemm(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    if int(a.get("transA", 0)):
        raise _fail(f"{_label(node)}: transA=1 is not supported; export with the input untransposed")
    w = r.const(node, 1, "B")
    if w is None:
        raise _fail(f"{_label(node)}: no weight")
    w64 = _f64(w if int(a.get("transB", 0)) else w.T) * float(a.get("alpha", 1.0))
    params = {"weight": w64}
    c = r.const(node, 2, "C")
    if c is not None:
        params["bias"] = (_f64(c) * float(a.get("beta", 1.0))).reshape(-1).expand(w64.shape[0]).clone()
    r.emit(node, _base(node, r), "linear", (r.src(node),), {}, params)


def _conv(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    w = r.const(node, 1, "W")
    if w is None:
        raise _fail(f"{_label(node)}: no weight")
    dims = w.ndim - 2
    if dims not in (1, 2) or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _fail(f"{_label(node)}: {dims}-D or auto_pad={a.get('auto_pad')!r} is not supported; export 1-D/2-D "
                    "convolutions with explicit pads")
    pads = list(a.get("pads", [0] * 2 * dims))
    params = {"weight": _f64(w)}
    b = r.const(node, 2, "B")
    if b is not None:
        params["bias"] = _f64(b)
    attrs = {"stride": tuple(int(v) for v in a.get("strides", [1] * dims)),
             "padding": tuple((int(pads[i]), int(pads[i + dims])) for i in range(dims)),
             "dilation": tuple(int(v) for v in a.get("dilations", [1] * dims)), "groups": int(a.get("group", 1))}
    r.emit(node, _base(node, r), "conv", (r.src(node),), attrs, params)


def _batchnorm(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    if int(a.get("training_mode", 0)) or len([o for o in node.output if o]) != 1:
        raise _fail(f"{_label(node)}: training mode (or running-statistics outputs) is not supported; export in "
                    "eval mode")
    parts = [r.const(node, i, what) for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
    if any(p is None for p in parts):
        raise _fail(f"{_label(node)}: scale, B, mean and var must all be given")
    gamma, beta, mean, var = (_f64(cast(np.ndarray, p)) for p in parts)
    scale = gamma / torch.sqrt(var + float(a.get("epsilon", np.float32(1e-5))))  # the default is a float32 attribute
    shift = beta - mean * scale
    src = r.src(node)
    prev = r.nodes[-1] if r.nodes else None
    if (prev is not None and prev.name == src and prev.op in ("linear", "conv") and r.consumers[node.input[0]] == 1
            and node.input[0] not in r.folded):
        w = prev.params["weight"]
        bias = prev.params.get("bias", torch.zeros(w.shape[0], dtype=torch.float64))
        r.nodes[-1] = Node(prev.name, prev.op, prev.inputs, prev.attrs,
                           {"weight": w * scale.reshape((-1,) + (1,) * (w.dim() - 1)), "bias": bias * scale + shift})
        r.vals[prev.name] = apply_node(r.nodes[-1], [r.vals[i] for i in prev.inputs])
        r.names[node.output[0]] = prev.name
        r.folded.add(node.input[0])
        return
    shape = (-1,) + (1,) * (len(r.shape(src)) - 1)
    r.emit(node, "", "affine", (src,), {}, {"scale": scale.reshape(shape), "shift": shift.reshape(shape)})


def _per_sample_const(r: _Reader, node: NodeProto, c: np.ndarray, rank: int) -> Tensor:
    """A constant operand (numpy broadcasting against ``[N, …]`` of ``rank`` dims) as a per-sample tensor."""
    t = _f64(c)
    if t.dim() == rank:
        if t.shape[0] != 1:
            raise _fail(f"{_label(node)}: a constant of shape {list(c.shape)} varies over the batch dim")
        t = t[0]
    elif t.dim() > rank:
        raise _fail(f"{_label(node)}: a constant of shape {list(c.shape)} has more dims than the tensor")
    return t


def _arith(r: _Reader, node: NodeProto) -> None:
    op = node.op_type
    dyn = [len(node.input) > i and node.input[i] in r.names for i in (0, 1)]
    if all(dyn):
        if op == "Add":
            r.emit(node, "", "add", (r.src(node, 0), r.src(node, 1)))
            return
        if op == "Sub":
            neg = Node(f"{node.output[0]}_neg", "affine", (r.src(node, 1),), {},
                       {"scale": torch.tensor(-1.0, dtype=torch.float64)})
            r.vals[neg.name] = apply_node(neg, [r.vals[neg.inputs[0]]])
            r.nodes.append(neg)
            r.taken.add(neg.name)
            r.emit(node, "", "add", (r.src(node, 0), neg.name))
            return
        for i, j in ((0, 1), (1, 0)):  # Mul(x, Sigmoid(x)) is SiLU
            sig = r.producer.get(node.input[j])
            if op == "Mul" and sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == node.input[i]:
                r.emit(node, "", "act", (r.src(node, i),), {"act": activation("silu")})
                return
        raise _fail(f"{_label(node)}: {op} of two input-dependent tensors is not supported (not linear)")
    i_dyn = 0 if dyn[0] else 1
    src = r.src(node, i_dyn)
    c = r.const(node, 1 - i_dyn, "the other operand")
    t = _per_sample_const(r, node, cast(np.ndarray, c), len(r.shape(src)) + 1)
    one = torch.ones((), dtype=torch.float64)
    if op == "Add":
        params = {"shift": t}
    elif op == "Sub":
        params = {"shift": -t} if i_dyn == 0 else {"scale": -one, "shift": t}
    elif op == "Mul":
        params = {"scale": t}
    elif i_dyn == 0:
        params = {"scale": 1.0 / t}
    else:
        raise _fail(f"{_label(node)}: division by an input-dependent tensor is not supported")
    r.emit(node, "", "affine", (src,), {}, params)


def _reshape(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    src = r.src(node)
    before = r.shape(src)
    n = math.prod(before)
    if node.op_type == "Flatten":
        if int(a.get("axis", 1)) != 1:
            raise _fail(f"{_label(node)}: axis={a.get('axis')} is not supported; only axis=1 keeps the batch dim")
        r.emit(node, "", "reshape", (src,), {"shape": (n,)})
        return
    target = [int(v) for v in np.asarray(r.const(node, 1, "shape")).reshape(-1)]
    if int(a.get("allowzero", 0)) or not target or target[0] not in (0, -1) + ((r.batch,) if r.batch else ()):
        raise _fail(f"{_label(node)}: shape {target} does not keep the batch dim first (use 0 or -1 there)")
    rest = [before[i - 1] if v == 0 and i - 1 < len(before) else v for i, v in enumerate(target) if i > 0]
    if target[0] == -1 and -1 in rest:
        raise _fail(f"{_label(node)}: shape {target} has two -1 entries")
    if -1 in rest:
        known = math.prod(v for v in rest if v != -1)
        rest = [n // known if v == -1 else v for v in rest]
    if math.prod(rest) != n:
        raise _fail(f"{_label(node)}: shape {target} does not fit a sample of {n} entries")
    r.emit(node, "", "reshape", (src,), {"shape": tuple(rest)})


def _pool(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    src = r.src(node)
    dims = len(r.shape(src)) - 1
    if node.op_type == "GlobalAveragePool":
        r.emit(node, "", "adaptive_avgpool", (src,), {"dims": dims, "output_size": (1,) * dims})
        return
    k = tuple(int(v) for v in a["kernel_shape"])
    pads = [int(v) for v in a.get("pads", [0] * 2 * dims)]
    if (pads[:dims] != pads[dims:] or int(a.get("ceil_mode", 0)) or a.get("auto_pad", "NOTSET") not in
            ("NOTSET", "VALID") or any(int(v) != 1 for v in a.get("dilations", [1] * dims))
            or len([o for o in node.output if o]) != 1):
        raise _fail(f"{_label(node)}: asymmetric pads, ceil_mode, auto_pad, dilation or an indices output is not "
                    "supported")
    attrs = {"dims": dims, "kernel": k, "stride": tuple(int(v) for v in a.get("strides", [1] * dims)),
             "padding": tuple(pads[:dims])}
    if node.op_type == "MaxPool":
        r.emit(node, "", "maxpool", (src,), attrs)
    else:
        r.emit(node, "", "avgpool", (src,), {**attrs, "count_include_pad": bool(a.get("count_include_pad", 0))})


def _pad(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    src = r.src(node)
    pads = a.get("pads") if r.opset < 11 else r.const(node, 1, "pads")
    value = a.get("value", 0.0) if r.opset < 11 else r.const(node, 2, "constant_value")
    if a.get("mode", "constant") != "constant" or (value is not None and float(np.asarray(value).reshape(-1)[0]) != 0):
        raise _fail(f"{_label(node)}: only constant zero padding is supported")
    p = [int(v) for v in np.asarray(pads).reshape(-1)]
    rank = len(r.shape(src)) + 1
    if len(p) != 2 * rank or p[0] or p[rank] or min(p) < 0:
        raise _fail(f"{_label(node)}: pads {p}: the batch dim must not be padded and pads must be ≥ 0")
    flat = tuple(v for d in reversed(range(1, rank)) for v in (p[d], p[d + rank]))
    r.emit(node, "", "pad", (src,), {"pads": flat})


def _act(r: _Reader, node: NodeProto, a: dict[str, Any]) -> None:
    op = node.op_type
    if op == "Clip":
        lo = a.get("min", -math.inf) if r.opset < 11 else r.const(node, 1, "min")
        hi = a.get("max", math.inf) if r.opset < 11 else r.const(node, 2, "max")
        lo_f = -math.inf if lo is None else float(np.asarray(lo))
        hi_f = math.inf if hi is None else float(np.asarray(hi))
        if lo_f == 0 and hi_f == math.inf:
            act = activation("relu")
        elif math.isfinite(lo_f) and math.isfinite(hi_f):
            act = activation("hardtanh", lo_f, hi_f)
        else:
            raise _fail(f"{_label(node)}: Clip({lo_f}, {hi_f}) is not supported (finite bounds or [0, ∞) only)")
    elif op in ("LeakyRelu", "Elu"):
        act = activation(_ACTS[op][0], float(a.get("alpha", _ACTS[op][1][0])))
    elif op == "Gelu":
        if a.get("approximate", "none") != "none":
            raise _fail(f"{_label(node)}: approximate={a.get('approximate')!r} is not supported")
        act = activation("gelu")
    elif op == "Softplus":
        act = activation("softplus", 1.0, 20.0)  # torch's threshold 20 deviates ≤ 2.1e-9 (allowed for, docs)
    else:
        act = activation(_ACTS[op][0])
    r.emit(node, "", "act", (r.src(node),), {"act": act})


def _convert(r: _Reader, node: NodeProto) -> None:
    op = node.op_type
    a = _attrs(node)
    if all(t in r.consts or t == "" for t in node.input) and op in ("Add", "Sub", "Mul", "Div", "Reshape",
                                                                    "Identity"):
        x0 = r.consts[node.input[0]]
        x1 = r.consts[node.input[1]] if len(node.input) > 1 else None
        fns = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
        r.consts[node.output[0]] = (fns[op](x0, cast(np.ndarray, x1)) if op in fns else
                                    x0.reshape([int(v) for v in cast(np.ndarray, x1)]) if op == "Reshape" else x0)
        return  # a constant computed from constants
    handlers = {"Gemm": _gemm, "Conv": _conv, "BatchNormalization": _batchnorm, "Flatten": _reshape,
                "Reshape": _reshape, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _pool, "Pad": _pad,
                "Clip": _act}
    if op in handlers:
        handlers[op](r, node, a)
    elif op in _ACTS or op == "Gelu":
        _act(r, node, a)
    elif op in ("Add", "Sub", "Mul", "Div"):
        _arith(r, node)
    elif op == "MatMul":
        w = r.const(node, 1, "B")
        if w is None or w.ndim != 2 or len(r.shape(r.src(node))) != 1:
            raise _fail(f"{_label(node)}: only [N, in] × constant [in, out] is supported")
        r.emit(node, _base(node, r), "linear", (r.src(node),), {}, {"weight": _f64(w.T)})
    elif op == "Concat":
        axis = int(a.get("axis", 1))
        rank = len(r.shape(r.src(node))) + 1
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise _fail(f"{_label(node)}: concatenation along the batch dim is not supported")
        r.emit(node, "", "cat", tuple(r.src(node, i) for i in range(len(node.input))), {"dim": axis - 1})
    elif op in _ALIASES:
        used = [o for o in node.output[1:] if o and r.consumers.get(o, 0)]
        if used:
            raise _fail(f"{_label(node)}: its second output {used[0]!r} is used; only its first output can be part "
                        "of a network")
        r.names[node.output[0]] = r.src(node)
    else:
        raise _fail(f"{_label(node)}, {r.position}: op {op} is not supported; LayerNormalization, attention, "
                    "Softmax and other ops have no rule here — remove them from the certified part or replace them "
                    "with supported ops")


def _double_model(model: ModelProto, names: list[str]) -> ModelProto:
    """A float64 copy of the model whose outputs are ``names`` (every float initializer and constant widened)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, t in enumerate(g.initializer):
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind == "f":
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float64), t.name))
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and numpy_helper.to_array(attr.t).dtype.kind == "f":
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64)))
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                raise _fail(f"{_label(node)}: value_float constants are not supported by the float64 check")
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            v.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    del g.value_info[:]
    del g.output[:]
    g.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return m


def _check(model: ModelProto, graph: Graph, r: _Reader, inp: str, out: str) -> None:
    """Second defence: the ONNX reference evaluator on a float64 copy, node by node (module docstring)."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):  # type: ignore[misc]
        """Inference mode, as the operator definition says for one output (onnx's reference evaluator of opsets
        9–13 applies the default momentum to batch statistics even then)."""

        op_domain = ""

        def _run(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 epsilon: float | None = None, momentum: float | None = None,
                 training_mode: int | None = None) -> tuple[np.ndarray]:
            shape = (-1,) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else epsilon
            y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            return (y + bias.reshape(shape),)

    class Gelu(OpRun):  # type: ignore[misc]
        """x·Φ(x) with libm's erf (onnx's reference evaluator approximates erf to ~1e-7)."""

        op_domain = ""

        def _run(self, x: np.ndarray, approximate: str | None = None) -> tuple[np.ndarray]:
            erf = np.vectorize(math.erf, otypes=[np.float64])
            return ((0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype),)

    tensors = [t for t in r.names if t != inp and t not in r.folded]
    evaluator = ReferenceEvaluator(_double_model(model, tensors), new_ops=[BatchNormalization, Gelu])
    x = check_points(graph.input_shape)
    step = x.shape[0] if r.batch is None else r.batch
    chunks: list[list[np.ndarray]] = []
    try:
        for i in range(0, x.shape[0], step):
            chunks.append(list(cast(list[np.ndarray], evaluator.run(None, {inp: x[i:i + step].numpy()}))))
    except Exception as exc:
        raise _fail(f"the ONNX reference evaluator cannot run the float64 model: {str(exc).splitlines()[0]}") from exc
    values = {t: torch.from_numpy(np.concatenate([c[j] for c in chunks]).astype(np.float64))
              for j, t in enumerate(tensors)}
    ref = {r.names[t]: (f"ONNX tensor {t!r}", values[t]) for t in tensors}
    check_against(graph, x, ref, values[out], "load_onnx_graph", "the ONNX model")


def load_onnx_graph(path: str | os.PathLike[str]) -> tuple[Graph, OnnxGraphInfo]:
    """Read an ONNX model into a :class:`Graph` computing exactly its function (float64 parameters), or refuse.

    The graph takes ``[N, *sample]`` inputs, ``sample`` the declared input shape without its batch dim.

    Raises:
        ProbPruneError: naming the file, node (name and op type) or tensor, and the reason.
    """
    graph, info, _ = read_model_graph(_read_model(path))
    return graph, info


def read_model_graph(model: ModelProto) -> tuple[Graph, OnnxGraphInfo, dict[str, NodeProto]]:
    """:func:`load_onnx_graph` on a parsed and checked model; also the ONNX node each graph node was read from."""
    opset = _opset(model)
    consts = _constants(model)
    g = model.graph
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise _fail(f"the graph has {len(inputs)} inputs and {len(g.output)} outputs; exactly one of each is "
                    "supported")
    inp, outp = inputs[0], g.output[0]
    dims = _dims(inp)
    if dims is None or len(dims) < 2 or not all(isinstance(d, int) and d >= 1 for d in dims[1:]):
        raise _fail(f"input {inp.name!r}: shape {dims}: needs a declared shape [N, ...] whose dims after the batch "
                    "dim are fixed")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] >= 1 else None
    consumers: dict[str, int] = {}
    for node in g.node:
        for t in node.input:
            consumers[t] = consumers.get(t, 0) + 1
    for o in g.output:
        consumers[o.name] = consumers.get(o.name, 0) + 1
    sample = cast(tuple[int, ...], dims[1:])
    r = _Reader(consts, batch, opset, consumers, names={inp.name: "input"},
                vals={"input": torch.zeros(1, *sample, dtype=torch.float64)})
    total = sum(node.op_type != "Constant" for node in g.node)
    pos = 0
    for node in g.node:
        if node.op_type != "Constant":
            pos += 1
            r.position = f"node {pos} of {total}"
            _convert(r, node)
        for o in node.output:
            r.producer[o] = node
    if outp.name not in r.names or r.names[outp.name] != (r.nodes[-1].name if r.nodes else None):
        after = f" ({_label(r.origin[r.nodes[-1].name])} comes after it)" if r.nodes and r.nodes[-1].name in r.origin \
            else ""
        raise _fail(f"output {outp.name!r}: is not the last tensor computed from the input{after}: the graph branches "
                    "or has unused nodes; remove them (or extra outputs)")
    graph = Graph(r.nodes, sample)
    _check(model, graph, r, inp.name, outp.name)
    return graph, OnnxGraphInfo(inp.name, outp.name, dims, opset), r.origin


@dataclass
class _Writer:
    """Collects ONNX nodes and initializers while writing a graph."""

    np_dtype: Any
    nodes: list[Any] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)

    def init(self, name: str, value: Tensor | np.ndarray, dtype: Any = None) -> str:
        from onnx import numpy_helper

        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        self.inits.append(numpy_helper.from_array(arr.astype(dtype or self.np_dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def _write_act(w: _Writer, node: Node, x: str, out: str) -> None:
    act = node.attrs["act"]
    k, p, nm = act.kind, act.params, node.name
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}
    if k in simple:
        w.node(simple[k], [x], out, nm)
    elif k == "leaky_relu":
        w.node("LeakyRelu", [x], out, nm, alpha=float(p[0]))
    elif k == "elu":
        w.node("Elu", [x], out, nm, alpha=float(p[0]))
    elif k in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if k == "relu6" else p
        w.node("Clip", [x, w.init(f"{nm}.min", np.array(lo)), w.init(f"{nm}.max", np.array(hi))], out, nm)
    elif k == "silu":
        w.node("Mul", [x, w.node("Sigmoid", [x], f"{out}.s", f"{nm}.sigmoid")], out, nm)
    elif k == "gelu":  # opset 20
        w.node("Gelu", [x], out, nm)
    else:  # softplus(β): Softplus(βx)/β (ONNX's has no threshold: ≤ log1p(e^−threshold)/β from torch's)
        beta = float(p[0])
        if beta == 1.0:
            w.node("Softplus", [x], out, nm)
        else:
            bx = w.node("Mul", [x, w.init(f"{nm}.beta", np.array(beta))], f"{out}.a", f"{nm}.a")
            w.node("Div", [w.node("Softplus", [bx], f"{out}.b", f"{nm}.b"), w.init(f"{nm}.beta_", np.array(beta))],
                   out, nm)


def _write_node(w: _Writer, g: Graph, node: Node, ins: list[str], out: str) -> None:
    nm, a, p = node.name, node.attrs, node.params
    if node.op == "linear":
        w.node("Gemm", [ins[0], w.init(f"{nm}.weight", p["weight"])] + ([w.init(f"{nm}.bias", p["bias"])]
                                                                        if "bias" in p else []), out, nm, transB=1)
    elif node.op == "conv":
        pads = [lo for lo, _ in a["padding"]] + [hi for _, hi in a["padding"]]
        w.node("Conv", [ins[0], w.init(f"{nm}.weight", p["weight"])] + ([w.init(f"{nm}.bias", p["bias"])]
                                                                        if "bias" in p else []), out, nm,
               strides=list(a["stride"]), pads=pads, dilations=list(a["dilation"]), group=int(a["groups"]))
    elif node.op == "affine":
        h = ins[0]
        if "scale" in p:
            h = w.node("Mul", [h, w.init(f"{nm}.scale", p["scale"])], out if "shift" not in p else f"{out}.m", nm)
        if "shift" in p:
            w.node("Add", [h, w.init(f"{nm}.shift", p["shift"])], out, f"{nm}.shift" if "scale" in p else nm)
        if not p:
            w.node("Identity", [h], out, nm)
    elif node.op in ("add", "cat"):
        w.node("Add" if node.op == "add" else "Concat", ins, out, nm, **({"axis": int(a["dim"]) + 1}
                                                                           if node.op == "cat" else {}))
    elif node.op == "reshape":
        w.node("Reshape", [ins[0], w.init(f"{nm}.shape", np.array([-1, *g.shapes[nm]]), np.int64)], out, nm)
    elif node.op == "pad":
        flat, rank = list(a["pads"]), len(g.shapes[nm]) + 1
        begin, end = [0] * rank, [0] * rank
        for i in range(len(flat) // 2):
            begin[rank - 1 - i], end[rank - 1 - i] = flat[2 * i], flat[2 * i + 1]
        w.node("Pad", [ins[0], w.init(f"{nm}.pads", np.array(begin + end), np.int64)], out, nm, mode="constant")
    elif node.op in ("maxpool", "avgpool"):
        extra = {"count_include_pad": int(a["count_include_pad"])} if node.op == "avgpool" else {}
        w.node("MaxPool" if node.op == "maxpool" else "AveragePool", ins, out, nm, kernel_shape=list(a["kernel"]),
               strides=list(a["stride"]), pads=list(a["padding"]) * 2, **extra)
    elif node.op == "adaptive_avgpool":
        src = g.shapes[node.inputs[0]][1:]
        if all(o == 1 for o in a["output_size"]):
            w.node("GlobalAveragePool", ins, out, nm)
        elif all(i % o == 0 for i, o in zip(src, a["output_size"])):
            k = [i // o for i, o in zip(src, a["output_size"])]
            w.node("AveragePool", ins, out, nm, kernel_shape=k, strides=k)
        else:
            raise ProbPruneError(f"save_onnx_graph: node {nm!r}: adaptive pooling of {src} to {a['output_size']} "
                                 "has uneven windows; ONNX has no such op")
    elif node.op == "act":
        _write_act(w, node, ins[0], out)
    elif node.op == "identity":
        w.node("Identity", ins, out, nm)
    else:  # circular_pad (ONNX Pad mode "wrap" needs opset 19), and any op added later: never written as another
        raise ProbPruneError(f"save_onnx_graph: node {nm!r}: op {node.op} cannot be written to ONNX here; keep the "
                             "network as a Net (probprune.nets.onnx.save_onnx refuses circular padding too)")


def save_onnx_graph(graph: Graph, path: str | os.PathLike[str], input_name: str = "input",
                    output_name: str = "output", dtype: torch.dtype = torch.float32, opset: int = 13) -> Path:
    """Write a graph as an ONNX model (opset 13) that onnxruntime runs with the same values.

    Args:
        graph: the graph (no trial dim).
        path: the ``.onnx`` file (written atomically).
        input_name, output_name: the model's tensor names.
        dtype: of the stored parameters and the input: float32 (what onnxruntime's CPU provider runs for every op;
            float64 parameters are rounded once to float32) or float64 (exact).
        opset: the default-domain opset (≥ 13; 20 when the graph has a GELU, ONNX's ``Gelu``). SiLU is written as
            ``Mul(x, Sigmoid(x))`` (read back as SiLU), Softplus(β ≠ 1) as ``Softplus(βx)/β``.

    Returns:
        The path written. The model's input is ``[N, *graph.input_shape]`` with a dynamic batch dim.
    """
    import onnx
    from onnx import TensorProto, helper

    from probprune.nets.onnx import _atomic_write

    if graph.n_trials is not None:
        raise ProbPruneError("save_onnx_graph: a graph with a trial dim; save each member")
    if dtype not in (torch.float32, torch.float64) or opset < 13:
        raise ProbPruneError(f"save_onnx_graph: dtype={dtype} / opset={opset}: float32 or float64, opset ≥ 13")
    elem = TensorProto.FLOAT if dtype == torch.float32 else TensorProto.DOUBLE
    w = _Writer(np.float32 if dtype == torch.float32 else np.float64)
    names = {"input": input_name}
    for node in graph.nodes:
        out = output_name if node.name == graph.output else f"{node.name}:out"
        _write_node(w, graph, node, [names[i] for i in node.inputs], out)
        names[node.name] = out
    g = helper.make_graph(w.nodes, "probprune-graph",
                          [helper.make_tensor_value_info(input_name, elem, ["N", *graph.input_shape])],
                          [helper.make_tensor_value_info(output_name, elem, ["N", *graph.output_shape])], w.inits)
    if any(n.op == "act" and n.attrs["act"].kind == "gelu" for n in graph.nodes):
        opset = max(opset, 20)  # Gelu
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="probprune")
    onnx.checker.check_model(model)
    return _atomic_write(Path(path), model.SerializeToString())
