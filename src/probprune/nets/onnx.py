"""ONNX in and out for the networks a :class:`~probprune.nets.Net` represents: exact or refused.

:func:`load_onnx` reads an ONNX model (opset 9 and newer) that is exactly an FC or conv stack of
today's ``Net``; :func:`save_onnx` writes a ``Net`` as a model that onnxruntime runs with the same
values. ONNX is protobuf: nothing is unpickled.

Reading has the two defences of :func:`~probprune.nets.from_module`:

1. **structure**: the graph must be a chain from its single input to its single output (every
   computed tensor read by exactly one node, every node reading exactly one computed tensor, no
   node off the chain), and the nodes must come in the order ``Net.forward`` applies them:
   ``[Flatten/Reshape]`` (FCN input only), then per hidden layer ``Gemm | MatMul | Conv`` →
   per-channel constants folded into it (``Add`` of a constant, ``BatchNormalization``) → one
   activation → ``[MaxPool]`` (conv only) → ``[Flatten/Reshape]`` (after the last conv), then the
   output ``Gemm``/``MatMul`` with no activation after it. Anything else is refused, naming the
   node (its name and op type) and what to do;
2. **numbers**: the ``Net`` (widened to float64) is compared with a float64 numpy evaluation of the
   ONNX nodes (written from the ONNX operator definitions, independently of the conversion), and
   with onnxruntime when it is installed, on 256 inputs from a fixed local generator with norms
   spread over [0, 10]; a difference beyond rounding refuses the conversion, naming the output.

Folding (``BatchNormalization``, a bias ``Add`` after a layer that has a bias, Gemm ``alpha``/``beta``
≠ 1) is computed in float64 and stored once in the model's dtype: a folded layer equals the ONNX
layers it replaces up to one rounding of its parameters to that dtype (≤ u·|w| per entry, u the
unit roundoff of the dtype), which is the size of the rounding the ONNX model itself makes when
it evaluates the unfolded layers in that dtype; the numerical check allows exactly this for
folded layers and float64 rounding elsewhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from probprune.config import ConvSpec, NetSpec, ProbPruneError
from probprune.files import atomic_write_bytes
from probprune.nets import (
    _CHECK_SLACK,
    Activation,
    Net,
    _abs_scale,
    _apply_layer,
    _check_points,
    check_finite,
)

if TYPE_CHECKING:  # pragma: no cover
    from onnx import ModelProto, NodeProto

__all__ = ["OnnxInfo", "load_onnx", "read_onnx", "save_onnx"]

_MIN_OPSET = 9
_SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Tanh", "Sigmoid",
                  "MaxPool", "Flatten", "Reshape", "Identity", "Dropout", "Pad", "Constant")
_ACT_OPS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
_HINTS = {
    "Softmax": "remove the final Softmax and certify the logits (it does not change the top-1 class)",
    "LogSoftmax": "remove the final LogSoftmax and certify the logits (it does not change the top-1 class)",
    "AveragePool": "average pooling is not representable yet (graph IR, issue 15)",
    "GlobalAveragePool": "average pooling is not representable yet (graph IR, issue 15)",
    "LayerNormalization": "LayerNorm is not a per-channel constant affine map and is not supported",
}
_DTYPES = {1: torch.float32, 11: torch.float64}  # TensorProto.FLOAT, TensorProto.DOUBLE


@dataclass(frozen=True)
class OnnxInfo:
    """What :func:`read_onnx` keeps of an ONNX model besides its ``Net``: enough to write it back.

    Args:
        input_name: the graph input's name.
        output_name: the graph output's name.
        input_shape: the declared input shape; symbolic dims are strings (``"N"``), unknown ones ``None``.
        output_shape: the declared output shape (same convention), ``None`` when not declared.
        opset: the model's default-domain opset.
        onnxruntime_checked: whether onnxruntime ran as the second numerical reference.

    ``save_onnx(net, path, **info.save_kwargs())`` writes a model with the same names and input shape.
    """

    input_name: str
    output_name: str
    input_shape: tuple[int | str | None, ...]
    output_shape: tuple[int | str | None, ...] | None
    opset: int
    onnxruntime_checked: bool = False

    def save_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`save_onnx` that reproduce the names, input shape and opset."""
        return {"input_name": self.input_name, "output_name": self.output_name,
                "input_shape": self.input_shape, "opset": max(self.opset, _MIN_OPSET)}


# ---------------------------------------------------------------------- reading the file


def _fail(msg: str) -> ProbPruneError:
    return ProbPruneError(f"load_onnx: {msg}")


def _label(node: NodeProto) -> str:
    return f"node {node.name or '(unnamed)'!r} ({node.op_type})"


def _read_model(path: str | os.PathLike[str]) -> ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise _fail(f"{str(p)!r}: no such file")
    if p.is_dir():
        raise _fail(f"{str(p)!r}: is a directory, expected an .onnx file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise _fail(f"{str(p)!r}: cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise _fail(f"{str(p)!r}: the file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise _fail(f"{str(p)!r}: not an ONNX model (protobuf decoding failed: {exc}); the file is broken, "
                    "truncated or of another format") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise _fail(f"{str(p)!r}: not an ONNX model (no IR version or no graph nodes); the file is broken, "
                    "truncated or of another format")
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise _fail(f"initializer {t.name!r}: stored as external data; save the model with its weights inside "
                        "the .onnx file (onnx.save_model(..., save_as_external_data=False))")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and protobuf errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(f"{str(p)!r}: not a valid ONNX model ({first}); the file is broken or truncated") from exc
    return model


def _opset(model: ModelProto) -> int:
    versions = [int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise _fail("the model imports no default-domain (ai.onnx) opset")
    opset = max(versions)
    if opset < _MIN_OPSET:
        raise _fail(f"opset {opset}: only opsets {_MIN_OPSET} and newer are read; convert the model with "
                    "onnx.version_converter.convert_version(model, 13)")
    return opset


def _attrs(node: NodeProto) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = onnx.numpy_helper.to_array(a.t)
        elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS, onnx.AttributeProto.SPARSE_TENSOR):
            raise _fail(f"{_label(node)}: attribute {a.name!r} of a graph or sparse type is not supported")
        else:
            v = onnx.helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _constants(model: ModelProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs, by tensor name."""
    import onnx

    consts: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        try:
            consts[t.name] = np.array(onnx.numpy_helper.to_array(t))
        except Exception as exc:
            raise _fail(f"initializer {t.name!r}: cannot be read ({exc})") from exc
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        a = _attrs(node)
        if len(node.output) != 1 or len(a) != 1:
            raise _fail(f"{_label(node)}: expected one output and one value attribute")
        (key, v), = a.items()
        if key == "value":
            arr = np.array(v)
        elif key in ("value_float", "value_floats"):
            arr = np.array(v, dtype=np.float32)
        elif key in ("value_int", "value_ints"):
            arr = np.array(v, dtype=np.int64)
        else:
            raise _fail(f"{_label(node)}: a Constant with {key!r} is not supported (only numeric tensors)")
        consts[node.output[0]] = arr
    return consts


def _dims(value_info: Any) -> tuple[int | str | None, ...] | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return tuple(dims)


def _chain(model: ModelProto, consts: Mapping[str, np.ndarray], inp: str, out: str) -> list[NodeProto]:
    """The nodes from the input to the output, refusing any graph that is not a chain."""
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            raise _fail(f"{_label(n)}: operator domain {n.domain!r} is not supported (only the default ai.onnx "
                        "domain)")
    users: dict[str, list[NodeProto]] = {}
    for n in nodes:
        for name in dict.fromkeys(i for i in n.input if i and i not in consts):
            users.setdefault(name, []).append(n)
    chain: list[NodeProto] = []
    cur = inp
    while cur != out:
        readers = users.get(cur, [])
        if not readers:
            where = f"the output of {_label(chain[-1])}" if chain else "the graph input"
            raise _fail(f"tensor {cur!r} ({where}) is read by no node and is not the graph output {out!r}: the "
                        "graph is not a chain from its input to its output")
        if len(readers) > 1:
            raise _fail(f"tensor {cur!r} is read by {len(readers)} nodes ({', '.join(_label(r) for r in readers)}): "
                        "the graph branches (a residual connection or several heads); only a chain of layers is "
                        "supported today")
        node = readers[0]
        computed = [i for i in node.input if i and i not in consts]
        if len(computed) != 1:
            raise _fail(f"{_label(node)} reads {len(computed)} computed tensors ({', '.join(computed)}), e.g. a "
                        "residual Add of two activations; only a chain (one computed input per node) is supported "
                        "today")
        if node in chain:  # pragma: no cover - a valid ONNX graph is acyclic (the checker verifies the order)
            raise _fail(f"{_label(node)}: the graph has a cycle")
        for extra in node.output[1:]:
            if extra and (extra in users or extra == out):
                raise _fail(f"{_label(node)}: its second output {extra!r} is used; only its first output can be "
                            "part of a network")
        chain.append(node)
        if not node.output or not node.output[0]:
            raise _fail(f"{_label(node)}: has no output")
        cur = node.output[0]
    if out in users:
        raise _fail(f"the graph output {out!r} is also read by {_label(users[out][0])}: the graph branches after "
                    "its output")
    off = [n for n in nodes if n not in chain]
    if off:
        raise _fail(f"{_label(off[0])} is not on the chain from the input {inp!r} to the output {out!r}; remove "
                    "unused nodes (or extra outputs) from the graph")
    return chain


# ---------------------------------------------------------------------- conversion


@dataclass
class _Item:
    kind: str  # weight | affine | act | pool | flatten | noop
    node: NodeProto
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    scale: np.ndarray | None = None  # affine: per output channel
    folded: bool = False  # weight: alpha/beta arithmetic
    conv: tuple[int, int, int] | None = None  # (kernel, stride, pad)
    act: Activation | None = None
    pool: int = 1


def _const(node: NodeProto, consts: Mapping[str, np.ndarray], idx: int, what: str) -> np.ndarray | None:
    if len(node.input) <= idx or not node.input[idx]:
        return None
    name = node.input[idx]
    if name not in consts:
        raise _fail(f"{_label(node)}: its {what} {name!r} is computed, not a constant; only constant {what}s are "
                    "supported")
    return consts[name]


def _param(node: NodeProto, consts: Mapping[str, np.ndarray], idx: int, what: str,
           dtype: np.dtype) -> np.ndarray | None:
    arr = _const(node, consts, idx, what)
    if arr is None:
        return None
    if arr.dtype != dtype:
        raise _fail(f"{_label(node)}: {what} {node.input[idx]!r} has dtype {arr.dtype}, the model input {dtype}; "
                    "a network's parameters must share its input's dtype")
    if not np.isfinite(arr).all():
        raise _fail(f"{_label(node)}: {what} {node.input[idx]!r} contains non-finite values (NaN or inf)")
    return arr.astype(np.float64)


def _int_list(v: object, name: str, node: NodeProto) -> list[int]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) for x in v):
        raise _fail(f"{_label(node)}: attribute {name}={v!r} must be a list of integers")
    return [int(x) for x in v]


def _channel_vector(node: NodeProto, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A constant added to a layer's output, as a per-channel vector, or refuse."""
    rank = len(shape)
    if c.ndim > rank:
        raise _fail(f"{_label(node)}: constant of shape {c.shape} has more dims than the tensor {shape}")
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    ch = shape[1]
    if full.shape[0] != 1 or full.shape[1] not in (1, ch) or any(d != 1 for d in full.shape[2:]):
        raise _fail(f"{_label(node)}: constant of shape {c.shape} added to a tensor of shape {shape} is not one "
                    "value per channel; only a per-channel bias can be folded into the layer")
    return np.broadcast_to(full.reshape(-1), (ch,)).astype(np.float64).copy()


@dataclass(frozen=True)
class _Node:
    """One node of the chain as a reader sees it: attributes, constants and the shape it reads."""

    node: NodeProto
    attrs: dict[str, Any]
    consts: Mapping[str, np.ndarray]
    shape: tuple[int, ...]
    dtype: np.dtype
    opset: int
    batch_fixed: bool
    after: str | None  # the kind of the last non-noop item before this node (None: the input)


_Reader = Callable[[_Node], tuple[_Item, tuple[int, ...]]]


def _convert(chain: Sequence[NodeProto], consts: Mapping[str, np.ndarray], in_shape: tuple[int, ...],
             batch_fixed: bool, opset: int, dtype: np.dtype) -> tuple[list[_Item], tuple[int, ...]]:
    """Read every node of the chain into an item, tracking the tensor shape (batch first)."""
    items: list[_Item] = []
    shape = in_shape
    for pos, node in enumerate(chain):
        op = node.op_type
        a = _attrs(node)
        if op not in _SUPPORTED_OPS:
            hint = _HINTS.get(op, "re-export the model without it")
            names = ", ".join("Pad (of zeros)" if o == "Pad" else o for o in _SUPPORTED_OPS)
            raise _fail(f"{_label(node)}, node {pos + 1} of {len(chain)} on the path from the input: op {op} is not "
                        f"supported ({hint}); supported: {names}")
        if op != "Add" and node.input[0] in consts:
            raise _fail(f"{_label(node)}: its first input must be the network's tensor, the others constants")
        after = next((it.kind for it in reversed(items) if it.kind != "noop"), None)
        item, shape = _READERS.get(op, _read_identity)(
            _Node(node, a, consts, shape, dtype, opset, batch_fixed, after))
        items.append(item)
    return items, shape


def _read_dense(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Gemm / MatMul: a fully-connected layer (alpha, beta and transB folded into the weight)."""
    node, a, consts, shape, dtype = n.node, n.attrs, n.consts, n.shape, n.dtype
    op = node.op_type
    if len(shape) != 2:
        raise _fail(f"{_label(node)}: reads a tensor of shape {list(shape)}; a fully-connected layer needs "
                    "[N, features] (insert a Flatten before it)")
    b_mat = _param(node, consts, 1, "weight", dtype)
    if b_mat is None or b_mat.ndim != 2:
        raise _fail(f"{_label(node)}: weight must be a constant matrix")
    alpha, beta, bias, folded = 1.0, 1.0, None, False
    if op == "Gemm":
        if int(a.get("transA", 0)) != 0:
            raise _fail(f"{_label(node)}: transA=1 is not supported (the network's tensor is [N, features])")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        bmat = b_mat.T if int(a.get("transB", 0)) else b_mat
        c = _param(node, consts, 2, "bias", dtype)
    else:
        bmat, c = b_mat, None
    if bmat.shape[0] != shape[1]:
        raise _fail(f"{_label(node)}: weight of shape {list(b_mat.shape)} does not fit the input "
                    f"[N, {shape[1]}]")
    weight = bmat.T * alpha
    folded = alpha != 1.0
    out = int(bmat.shape[1])
    if c is not None:
        if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or (c.ndim >= 1 and c.shape[-1] not in (1, out)):
            raise _fail(f"{_label(node)}: bias of shape {list(c.shape)} is not one value per output (needs "
                        f"[{out}] or [1, {out}])")
        bias = np.broadcast_to(c.reshape(-1), (out,)) * beta
        folded = folded or beta != 1.0
    item = _Item("weight", node, weight=weight, bias=bias, folded=folded)
    shape = (shape[0], out)
    return item, shape


def _read_conv(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Conv: a square 2-d convolution with equal pads and strides."""
    node, a, consts, shape, dtype = n.node, n.attrs, n.consts, n.shape, n.dtype
    if len(shape) != 4:
        raise _fail(f"{_label(node)}: reads a tensor of shape {list(shape)}; only 2-d convolutions on "
                    "[N, C, H, W] are supported")
    w = _param(node, consts, 1, "weight", dtype)
    if w is None or w.ndim != 4:
        raise _fail(f"{_label(node)}: weight must be a constant [C_out, C_in, k, k] tensor")
    k = int(w.shape[2])
    auto_pad = a.get("auto_pad", "NOTSET")
    pads = _int_list(a.get("pads", [0, 0, 0, 0]), "pads", node)
    strides = _int_list(a.get("strides", [1, 1]), "strides", node)
    dil = _int_list(a.get("dilations", [1, 1]), "dilations", node)
    ks = _int_list(a.get("kernel_shape", list(w.shape[2:])), "kernel_shape", node)
    if auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    if (auto_pad not in ("NOTSET", "VALID") or int(a.get("group", 1)) != 1 or w.shape[2] != w.shape[3]
            or ks != [k, k] or len(pads) != 4 or len(set(pads)) != 1 or len(strides) != 2
            or strides[0] != strides[1] or dil != [1, 1]):
        raise _fail(f"{_label(node)}: kernel {list(w.shape[2:])}, kernel_shape={ks}, pads={pads}, "
                    f"strides={strides}, dilations={dil}, group={a.get('group', 1)}, auto_pad={auto_pad}: "
                    "only a square kernel with equal pads and strides on every side, no dilation, group 1 "
                    "and no auto_pad is supported")
    if int(w.shape[1]) != shape[1]:
        raise _fail(f"{_label(node)}: weight has {w.shape[1]} input channels, the tensor {shape[1]}")
    b = _param(node, consts, 2, "bias", dtype)
    if b is not None and b.shape != (w.shape[0],):
        raise _fail(f"{_label(node)}: bias of shape {list(b.shape)}, expected [{w.shape[0]}]")
    p, s = pads[0], strides[0]
    h, wd = (shape[2] + 2 * p - k) // s + 1, (shape[3] + 2 * p - k) // s + 1
    if h < 1 or wd < 1:
        raise _fail(f"{_label(node)}: the feature map becomes empty")
    item = _Item("weight", node, weight=w, bias=b, conv=(k, s, p))
    shape = (shape[0], int(w.shape[0]), h, wd)
    return item, shape


def _read_affine(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Add of a constant / inference BatchNormalization: folded into the layer before it."""
    node, a, consts, shape, dtype = n.node, n.attrs, n.consts, n.shape, n.dtype
    op = node.op_type
    if n.after not in ("weight", "affine"):
        raise _fail(f"{_label(node)}: a constant {'shift' if op == 'Add' else 'normalisation'} is "
                    "supported only right after a Gemm/MatMul/Conv (folded into it); here it follows "
                    f"{'the input' if n.after is None else 'a ' + str(n.after)}")
    if op == "Add":
        other = next(i for i in node.input if i in consts)
        c = consts[other]
        if c.dtype != dtype or not np.isfinite(c).all():
            raise _fail(f"{_label(node)}: constant {other!r} must be finite and of dtype {dtype}")
        item = _Item("affine", node, bias=_channel_vector(node, c, shape))
    else:
        if n.opset < 9 or int(a.get("spatial", 1)) != 1 or int(a.get("training_mode", 0)) != 0:
            raise _fail(f"{_label(node)}: only inference-mode BatchNormalization (spatial=1, "
                        "training_mode=0) is supported")
        vals = [_param(node, consts, i, nm, dtype) for i, nm in
                ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
        ch = shape[1]
        if any(v is None or v.shape != (ch,) for v in vals):
            raise _fail(f"{_label(node)}: scale, bias, mean and var must be constants of shape [{ch}]")
        gamma, beta_, mean, var = (cast(np.ndarray, v) for v in vals)
        eps = float(a.get("epsilon", 1e-5))
        if not (var + eps > 0).all():
            raise _fail(f"{_label(node)}: var + epsilon must be positive")
        sc = gamma / np.sqrt(var + eps)
        item = _Item("affine", node, scale=sc, bias=beta_ - mean * sc)
    return item, shape


def _read_activation(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Relu / LeakyRelu / Tanh / Sigmoid."""
    node, a, shape = n.node, n.attrs, n.shape
    op = node.op_type
    slope = float(a.get("alpha", np.float32(0.01)))  # an ONNX float attribute: a float32, kept exactly
    if op == "LeakyRelu" and not 0.0 <= slope <= 1.0:
        raise _fail(f"{_label(node)}: alpha={slope}: only slopes in [0, 1] are supported (the bounds use "
                    "Lipschitz constant 1)")
    item = _Item("act", node, act=Activation(_ACT_OPS[op], slope if op == "LeakyRelu" else 0.01))
    return item, shape


def _read_maxpool(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """MaxPool: square and non-overlapping."""
    node, a, shape = n.node, n.attrs, n.shape
    if len(shape) != 4:
        raise _fail(f"{_label(node)}: reads a tensor of shape {list(shape)}; only 2-d max-pools are supported")
    ks = _int_list(a.get("kernel_shape"), "kernel_shape", node)
    st = _int_list(a.get("strides", [1] * len(ks)), "strides", node)
    pads = _int_list(a.get("pads", [0] * 2 * len(ks)), "pads", node)
    dil = _int_list(a.get("dilations", [1] * len(ks)), "dilations", node)
    if (len(ks) != 2 or ks[0] != ks[1] or st != ks or any(pads) or any(d != 1 for d in dil)
            or int(a.get("ceil_mode", 0)) != 0 or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
        raise _fail(f"{_label(node)}: kernel_shape={ks}, strides={st}, pads={pads}, dilations={dil}, "
                    f"ceil_mode={a.get('ceil_mode', 0)}: only a square non-overlapping max-pool (strides = "
                    "kernel, no padding, no dilation, floor mode) is supported")
    k = ks[0]
    if shape[2] // k < 1 or shape[3] // k < 1:
        raise _fail(f"{_label(node)}: the feature map becomes empty")
    item = _Item("pool", node, pool=k)
    shape = (shape[0], shape[1], shape[2] // k, shape[3] // k)
    return item, shape


def _read_flatten(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Flatten(axis=1) / a Reshape to [N, features]."""
    node, a, consts, shape = n.node, n.attrs, n.consts, n.shape
    op = node.op_type
    flat = (shape[0], math.prod(shape[1:]))
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += len(shape)
        if axis != 1:
            raise _fail(f"{_label(node)}: axis={a.get('axis', 1)} on a tensor of shape {list(shape)}; only "
                        "Flatten(axis=1) (keep the batch dim, flatten the rest) is supported")
    else:
        target = _const(node, consts, 1, "shape")
        if target is None or target.ndim != 1 or target.dtype.kind not in "iu":
            raise _fail(f"{_label(node)}: the target shape must be a constant 1-d integer tensor")
        t = [int(v) for v in target]
        allowzero = int(a.get("allowzero", 0))
        res = [shape[i] if v == 0 and not allowzero and i < len(shape) else v for i, v in enumerate(t)]
        keeps_batch = t[0] in (0, -1) if not n.batch_fixed else res[0] in (shape[0], -1)
        ok = len(res) == 2 and keeps_batch and (
            res[1] == flat[1] or (res[1] == -1 and res[0] != -1)) and not (res[0] == -1 and res[1] == -1)
        if t[0] == 0 and allowzero:
            ok = False
        if not ok:
            raise _fail(f"{_label(node)}: shape {t} on a tensor of shape {list(shape)}; only a Reshape to "
                        "[N, features] that keeps the batch dim is supported (e.g. shape [-1, "
                        f"{flat[1]}] or [0, -1])")
    item = _Item("noop" if len(shape) == 2 else "flatten", node)
    shape = flat
    return item, shape


def _read_dropout(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Dropout in inference mode: the identity."""
    node, consts, shape = n.node, n.consts, n.shape
    if len(node.input) >= 3 and node.input[2]:
        tm = _const(node, consts, 2, "training_mode")
        if tm is None or bool(np.asarray(tm).reshape(-1)[0]):
            raise _fail(f"{_label(node)}: training_mode must be a constant false (inference)")
    item = _Item("noop", node)
    return item, shape


def _read_pad(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """A Pad that pads nothing: the identity."""
    node, a, consts, shape = n.node, n.attrs, n.consts, n.shape
    pads_v = a.get("pads") if n.opset < 11 else _const(node, consts, 1, "pads")
    mode = a.get("mode", "constant")
    if pads_v is None or any(int(v) != 0 for v in np.asarray(pads_v).reshape(-1)) or mode != "constant":
        raise _fail(f"{_label(node)}: pads={None if pads_v is None else np.asarray(pads_v).tolist()}, "
                    f"mode={mode!r}: only a Pad that pads nothing (the identity) is supported today; padding "
                    "is not representable yet (graph IR, issue 15) except as a Conv's own pads attribute")
    item = _Item("noop", node)
    return item, shape


def _read_identity(n: _Node) -> tuple[_Item, tuple[int, ...]]:
    """Identity."""
    return _Item("noop", n.node), n.shape


_READERS: dict[str, _Reader] = {
    "Gemm": _read_dense, "MatMul": _read_dense, "Conv": _read_conv, "Add": _read_affine,
    "BatchNormalization": _read_affine, "MaxPool": _read_maxpool, "Flatten": _read_flatten,
    "Reshape": _read_flatten, "Dropout": _read_dropout, "Pad": _read_pad,
    **dict.fromkeys(_ACT_OPS, _read_activation),
}


def _build(items: Sequence[_Item], in_shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Net, list[bool]]:
    """Check the order of the items against ``Net.forward`` and fold them into a ``Net``."""
    wpos = _weight_items(items)
    hidden_acts: list[_Item | None] = []
    weights: list[np.ndarray] = []
    biases: list[np.ndarray | None] = []
    folded: list[bool] = []
    convs: list[ConvSpec] = []
    widths: list[int] = []
    for j, start in enumerate(wpos):
        wl = items[start]
        last = j == len(wpos) - 1
        w, b, was_folded, act, pool = _fold_layer(items, wpos, j)
        if wl.conv is not None:
            if last:
                raise _fail(f"{_label(wl.node)} is the last weight layer; a CNN must end with a fully-connected "
                            "head (Flatten, Gemm)")
            k, s, p = wl.conv
            convs.append(ConvSpec(int(w.shape[0]), k, s, p, "zeros", 1 if pool is None else pool.pool))
        else:
            widths.append(int(w.shape[0]))
        if not last:
            hidden_acts.append(act)
        weights.append(w)
        biases.append(b)
        folded.append(was_folded)
    act_name, slope = _net_activation(hidden_acts, items, wpos)
    has_bias = any(b is not None for b in biases)
    if has_bias:  # a zero bias on a bias-free layer is exact: x + 0 = x
        biases = [np.zeros(int(w.shape[0])) if b is None else b for w, b in zip(weights, biases)]
    if convs:
        spec = NetSpec(kind="cnn", input_shape=cast(tuple[int, int, int], tuple(in_shape[1:])), convs=tuple(convs),
                       widths=tuple(widths), activation=act_name, negative_slope=slope,  # type: ignore[arg-type]
                       bias=has_bias)
    else:
        spec = NetSpec(kind="fcn", widths=(int(weights[0].shape[1]), *widths), activation=act_name,  # type: ignore[arg-type]
                       negative_slope=slope, bias=has_bias)
    tw = [torch.from_numpy(np.ascontiguousarray(w)).to(dtype) for w in weights]
    tb: list[Tensor | None] = [None if b is None else torch.from_numpy(np.ascontiguousarray(b)).to(dtype)
                               for b in biases]
    try:
        net = Net.from_weights(spec, tw, tb)
    except ProbPruneError as exc:
        raise _fail(f"the layers do not fit one architecture: {exc}") from exc
    check_finite(net, "load_onnx: folded parameters")
    return net, folded


def _weight_items(items: Sequence[_Item]) -> list[int]:
    """Indices of the weight items; only no-ops (and an FCN's input flatten) may come before the first."""
    wpos = [i for i, it in enumerate(items) if it.kind == "weight"]
    if not wpos:
        raise _fail("the model has no Gemm, MatMul or Conv layer")
    first_conv = items[wpos[0]].conv is not None
    for it in items[:wpos[0]]:
        if it.kind == "noop" or (it.kind == "flatten" and not first_conv):
            continue
        raise _fail(f"{_label(it.node)} comes before the first weight layer; the network must start with Gemm, "
                    "MatMul or Conv")
    return wpos


def _fold_layer(items: Sequence[_Item], wpos: Sequence[int], j: int
                ) -> tuple[np.ndarray, np.ndarray | None, bool, _Item | None, _Item | None]:
    """Weight layer ``j`` with the affine items after it folded in (float64), its activation and max-pool.

    Returns:
        ``(weight, bias, folded, activation, pool)``; ``folded``: the parameters were changed by arithmetic.
    """
    start = wpos[j]
    end = wpos[j + 1] if j + 1 < len(wpos) else len(items)
    wl = items[start]
    last = j == len(wpos) - 1
    w = cast(np.ndarray, wl.weight).copy()
    b = None if wl.bias is None else wl.bias.copy()
    was_folded = wl.folded
    act: _Item | None = None
    pool: _Item | None = None
    flat: _Item | None = None
    for it in items[start + 1:end]:
        if it.kind == "affine":  # _convert placed it right after the weight or another affine item
            if it.scale is not None:
                w = w * it.scale.reshape((-1,) + (1,) * (w.ndim - 1))
                b = None if b is None else b * it.scale
                was_folded = True
            if b is not None:
                was_folded = True
            b = cast(np.ndarray, it.bias) if b is None else b + cast(np.ndarray, it.bias)
        elif it.kind == "act":
            if last:
                raise _fail(f"{_label(it.node)} is an activation after the output layer {_label(wl.node)}; the "
                            "Net's last layer has no activation (remove it, or certify the network without it)")
            if act is not None:
                raise _fail(f"{_label(act.node)} and {_label(it.node)} are two activations in a row; the Net "
                            "applies exactly one activation after each hidden layer")
            if pool is not None or flat is not None:
                raise _fail(f"{_label(it.node)} comes after {_label(cast(_Item, pool or flat).node)}; the Net "
                            "applies conv → activation → max-pool → flatten, in that order")
            act = it
        elif it.kind == "pool":
            if pool is not None or flat is not None:
                raise _fail(f"{_label(it.node)} follows {_label(cast(_Item, pool or flat).node)}; the Net has "
                            "at most one max-pool per conv layer, before the flatten")
            pool = it
        elif it.kind == "flatten":
            nxt_conv = not last and items[wpos[j + 1]].conv is not None
            if wl.conv is None or last or nxt_conv or flat is not None:
                raise _fail(f"{_label(it.node)}: a flatten is supported only at the input of an FCN or once "
                            "between the last Conv and the first Gemm/MatMul")
            flat = it
    return w, b, was_folded, act, pool


def _net_activation(hidden_acts: Sequence[_Item | None], items: Sequence[_Item], wpos: Sequence[int]
                    ) -> tuple[str, float]:
    """The network-wide activation (name, slope): one type after every hidden layer, or none anywhere."""
    present = [a for a in hidden_acts if a is not None]
    kinds = sorted({(cast(Activation, a.act).name, cast(Activation, a.act).negative_slope) for a in present})
    if len(kinds) > 1:
        raise _fail(f"mixed activations {kinds} are not supported; the Net applies one activation type (and slope) "
                    "after every hidden layer")
    if present and len(present) < len(hidden_acts):
        j = list(hidden_acts).index(None)
        raise _fail(f"{_label(items[wpos[j]].node)} and {_label(items[wpos[j + 1]].node)} follow each other with no "
                    f"activation between them, while {_label(present[0].node)} applies one; the Net applies the same "
                    "activation after every hidden layer")
    return kinds[0] if kinds else ("identity", 0.01)


# ---------------------------------------------------------------------- float64 reference evaluation


def _eval_node(node: NodeProto, x: np.ndarray, consts: Mapping[str, np.ndarray]) -> np.ndarray:
    """One ONNX node in float64 numpy, from the operator definition."""
    a = _attrs(node)
    op = node.op_type

    def c(i: int) -> np.ndarray | None:
        return consts[node.input[i]].astype(np.float64) if len(node.input) > i and node.input[i] else None

    if op == "Gemm":
        am = x.T if int(a.get("transA", 0)) else x
        bm = cast(np.ndarray, c(1))
        bm = bm.T if int(a.get("transB", 0)) else bm
        y = float(a.get("alpha", 1.0)) * (am @ bm)
        cc = c(2)
        return y if cc is None else y + float(a.get("beta", 1.0)) * cc
    if op == "MatMul":
        return np.matmul(x, cast(np.ndarray, c(1)))
    if op == "Add":
        other = next(i for i in node.input if i in consts)
        return x + consts[other].astype(np.float64)
    if op == "BatchNormalization":
        sh = (1, -1) + (1,) * (x.ndim - 2)
        scale, bias, mean, var = (cast(np.ndarray, c(i)).reshape(sh) for i in (1, 2, 3, 4))
        return (x - mean) / np.sqrt(var + float(a.get("epsilon", 1e-5))) * scale + bias
    if op == "Conv":
        w = cast(np.ndarray, c(1))
        if int(a.get("group", 1)) != 1 or any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise _fail(f"{_label(node)}: no float64 reference for grouped or dilated convolutions")  # pragma: no cover
        pads = list(a.get("pads", [0, 0, 0, 0])) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0, 0, 0]
        s = list(a.get("strides", [1, 1]))
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        win = np.lib.stride_tricks.sliding_window_view(xp, (w.shape[2], w.shape[3]), axis=(2, 3))
        win = win[:, :, ::s[0], ::s[1]]
        y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
        b = c(2)
        return y if b is None else y + b.reshape(1, -1, 1, 1)
    if op == "Relu":
        return np.maximum(x, 0.0)
    if op == "LeakyRelu":
        return np.where(x >= 0, x, float(a.get("alpha", np.float32(0.01))) * x)
    if op == "Tanh":
        return np.tanh(x)
    if op == "Sigmoid":
        from scipy.special import expit

        return cast(np.ndarray, expit(x))
    if op == "MaxPool":
        ks = list(a["kernel_shape"])
        st = list(a.get("strides", [1, 1]))
        win = np.lib.stride_tricks.sliding_window_view(x, tuple(ks), axis=(2, 3))[:, :, ::st[0], ::st[1]]
        return cast(np.ndarray, win.max(axis=(-2, -1)))
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:axis]), -1)
    if op == "Reshape":
        t = [int(v) for v in cast(np.ndarray, c(1))]
        t = [x.shape[i] if v == 0 and not int(a.get("allowzero", 0)) else v for i, v in enumerate(t)]
        return x.reshape(t)
    if op == "Pad":  # _convert accepted only pads of zeros (checked again here: the reference must not guess)
        pv = a.get("pads") if "pads" in a else cast(np.ndarray, c(1))
        if any(int(v) != 0 for v in np.asarray(pv).reshape(-1)):  # pragma: no cover - refused by _convert
            raise _fail(f"{_label(node)}: no float64 reference for a Pad that pads")
        return x
    if op in ("Identity", "Dropout"):
        return x
    raise _fail(f"{_label(node)}: no float64 reference for op {op}")  # pragma: no cover - _convert refused it


def _tolerance(net64: Net, x: Tensor, folded: Sequence[bool], us: Sequence[float],
               u_model: float) -> list[float]:
    """∞-norm bounds on the output difference that rounding (``u`` per operation, for each ``u`` in
    ``us``; ``u_model`` per folded parameter) can build up through the layers, as in ``from_module``'s check."""
    tiny = 2.0 ** -1074
    errs = [0.0] * len(us)
    h = x
    for layer, fold in zip(net64.layers, folded):
        scale = float(_abs_scale(layer, h))
        y = _apply_layer(layer, h, None)
        fan_in = math.prod(layer.weight.shape[1:])
        w_inf = float(layer.weight.abs().flatten(1).sum(dim=1).max())
        top = float(y.abs().max())
        for i, u in enumerate(us):
            tol = _CHECK_SLACK * (fan_in + 1) * (u * (scale + top) + tiny) + (2.0 * u_model * scale if fold else 0.0)
            errs[i] = layer.activation.lipschitz * w_inf * errs[i] + tol
        h = y
    return errs


def _run_chunks(fn: Any, x: np.ndarray, batch: int | None) -> np.ndarray:
    if batch is None or batch >= x.shape[0]:
        return np.asarray(fn(x))
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def _check_numbers(model: ModelProto, chain: Sequence[NodeProto], consts: Mapping[str, np.ndarray], net: Net,
                   folded: Sequence[bool], in_shape: tuple[int, ...], batch: int | None, inp: str,
                   out: str) -> bool:
    """Second defence: float64 numpy evaluation of the nodes, and onnxruntime if installed; refuse on a mismatch."""
    x = _check_points(in_shape[1:]).numpy()
    n = x.shape[0]
    net64 = net.to(device="cpu", dtype=torch.float64)
    u_model = 2.0 ** -24 if net.dtype == torch.float32 else 2.0 ** -53
    net_in_shape = net.spec.feature_shapes()[0]  # the input shape per sample

    def net_out(xx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return cast(Tensor, net64.forward(torch.from_numpy(xx).reshape(n, *net_in_shape))).numpy()

    with torch.no_grad():  # one pass for both references (the float32-rounded inputs are one rounding away)
        tol64, tolm = _tolerance(net64, torch.from_numpy(x).reshape(n, *net_in_shape), folded,
                                 (2.0 ** -53, u_model), u_model)

    def ref(xx: np.ndarray) -> np.ndarray:
        h = xx
        for node in chain:
            h = _eval_node(node, h, consts)
        return h

    with np.errstate(over="ignore", invalid="ignore"):
        want = _run_chunks(ref, x, batch).reshape(n, -1)
    if not np.isfinite(want).all():
        raise _fail(f"cannot check the conversion: output {out!r} is not finite in float64 for inputs of norm ≤ 10")
    got = net_out(x)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
    if not diff <= tol64:
        raise _fail(f"output {out!r}: the converted network differs from a float64 evaluation of the ONNX nodes: "
                    f"max |difference| {diff:.3g} on {n} random inputs of norm ≤ 10, tolerance {tol64:.3g}; "
                    "refusing the conversion")
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    np_dtype = np.float32 if net.dtype == torch.float32 else np.float64
    xm = x.astype(np_dtype)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if "NOT_IMPLEMENTED" in str(exc):  # e.g. float64 Conv: the CPU provider has no kernel; numpy checked it
            return False
        raise _fail(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc
    try:
        ort_out = _run_chunks(lambda xx: sess.run([out], {inp: xx})[0], xm, batch).astype(np.float64).reshape(n, -1)
    except Exception as exc:
        raise _fail(f"onnxruntime cannot run the model on inputs of shape {list(xm.shape)}: "
                    f"{str(exc).splitlines()[0]}") from exc
    got = net_out(xm.astype(np.float64))
    diff = float(np.abs(got - ort_out).max()) if got.shape == ort_out.shape else math.inf
    if not diff <= tolm:
        raise _fail(f"output {out!r}: the converted network differs from onnxruntime's: max |difference| "
                    f"{diff:.3g} on {n} random inputs of norm ≤ 10, tolerance {tolm:.3g} (float32 rounding of the "
                    "model); refusing the conversion")
    return True


# ---------------------------------------------------------------------- public API


def read_onnx(path: str | os.PathLike[str]) -> tuple[Net, OnnxInfo]:
    """Read an ONNX model into a :class:`Net` computing exactly its function, or refuse; with its :class:`OnnxInfo`.

    See the module docstring for what is accepted and how the conversion is checked. The ``Net``
    takes ``[N, features]`` (an FCN: the input flattened, as its leading ``Flatten``/``Reshape``
    does) or ``[N, C, H, W]`` (a CNN); the ONNX input's declared shape is kept in the info.

    Raises:
        ProbPruneError: naming the file, node (name and op type) or output, and the reason.
    """
    model = _read_model(path)
    opset = _opset(model)
    consts = _constants(model)
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise _fail(f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); exactly one is "
                    "supported")
    if len(graph.output) != 1:
        raise _fail(f"the graph has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)}); "
                    "exactly one is supported")
    inp, outp = inputs[0], graph.output[0]
    elem = inp.type.tensor_type.elem_type
    if elem not in _DTYPES:
        raise _fail(f"input {inp.name!r}: element type {elem} is not supported (float32 or float64 only)")
    dims = _dims(inp)
    if dims is None or len(dims) < 2:
        raise _fail(f"input {inp.name!r}: shape {dims}: needs a declared shape [N, ...] of rank ≥ 2")
    if not all(isinstance(d, int) and d >= 1 for d in dims[1:]):
        raise _fail(f"input {inp.name!r}: shape {list(dims)}: only the batch dim (the first) may be dynamic; fix "
                    "the other dims when exporting")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] >= 1 else None
    in_shape = (1 if batch is None else batch, *cast(tuple[int, ...], dims[1:]))
    dtype = _DTYPES[elem]
    np_dtype = np.dtype(np.float32 if dtype == torch.float32 else np.float64)
    chain = _chain(model, consts, inp.name, outp.name)
    items, _ = _convert(chain, consts, in_shape, batch is not None, opset, np_dtype)
    net, folded = _build(items, in_shape, dtype)
    ort_checked = _check_numbers(model, chain, consts, net, folded, in_shape, batch, inp.name, outp.name)
    info = OnnxInfo(input_name=inp.name, output_name=outp.name, input_shape=dims, output_shape=_dims(outp),
                    opset=opset, onnxruntime_checked=ort_checked)
    return net, info


def load_onnx(path: str | os.PathLike[str]) -> Net:
    """Read an ONNX model into a :class:`Net` that computes exactly its function, or refuse.

    Use :func:`read_onnx` to also get the input/output names and input shape (:class:`OnnxInfo`),
    which :func:`save_onnx` can reproduce.

    Raises:
        ProbPruneError: naming the file, node (name and op type) or output, and the reason.
    """
    return read_onnx(path)[0]


def save_onnx(net: Net, path: str | os.PathLike[str], input_name: str = "input", output_name: str = "output",
              opset: int = 17, input_shape: Sequence[int | str | None] | None = None) -> Path:
    """Write ``net`` as an ONNX model (atomically: temp file + rename; same net → same bytes).

    The graph is ``[Flatten]`` (when ``input_shape`` has more than two dims for an FCN), then per
    layer ``Gemm`` (``transB=1``, weights ``[out, in]``) or ``Conv``, its activation, ``MaxPool``,
    the ``Flatten`` after the last conv; initializers are named as :attr:`Net.names`
    (``0.weight``, ``0.bias`` …). float32 nets are written as FLOAT, float64 nets as DOUBLE
    (onnxruntime's CPU provider has no float64 Conv).

    Args:
        net: a single network (no trial dim), finite.
        path: the ``.onnx`` file to write; its folder must exist.
        input_name: the graph input's name.
        output_name: the graph output's name.
        opset: default-domain opset, 9 … the installed onnx's newest.
        input_shape: declared input shape, batch first (ints fixed, strings symbolic, ``None`` unknown);
            default ``["N", *features]`` (FCN) or ``["N", C, H, W]`` (CNN).

    Returns:
        The written path.

    Raises:
        ProbPruneError: for an ensemble, non-finite weights, circular padding, a bad shape, names or opset,
            or a path that cannot be written.


    >>> import pathlib, tempfile
    >>> net = Net.from_weights(NetSpec(widths=(3, 4, 2)), [torch.ones(4, 3), -torch.ones(2, 4)])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = load_onnx(save_onnx(net, pathlib.Path(d) / "net.onnx"))
    >>> back.spec == net.spec and all(torch.equal(a, b) for a, b in zip(back.weights, net.weights))
    True
    """
    import onnx
    from onnx import TensorProto, helper

    _check_save_args(net, input_name, output_name, opset)
    spec = net.spec
    shape = _declared_shape(spec, input_shape)
    elem = TensorProto.FLOAT if net.dtype == torch.float32 else TensorProto.DOUBLE
    nodes, inits = _graph_nodes(net, input_name, len(shape) > 2 and spec.kind == "fcn")
    nodes[-1].output[0] = output_name
    graph = helper.make_graph(nodes, "probprune", [helper.make_tensor_value_info(input_name, elem, list(shape))],
                              [helper.make_tensor_value_info(output_name, elem, [shape[0], spec.output_dim])], inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="probprune",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    data = model.SerializeToString(deterministic=True)
    return _atomic_write(Path(path), data)


def _check_save_args(net: Net, input_name: str, output_name: str, opset: int) -> None:
    """A single finite Net, an opset onnx knows, two distinct names that are not parameter names."""
    import onnx

    if not isinstance(net, Net):
        raise ProbPruneError(f"save_onnx: net must be a Net, got {type(net).__name__}")
    if net.n_trials is not None:
        raise ProbPruneError("save_onnx: the Net has a trial dim; take a member first (net.member(k))")
    check_finite(net, "save_onnx: weights")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not _MIN_OPSET <= opset <= newest:
        raise ProbPruneError(f"save_onnx: opset={opset!r}: must be an integer in [{_MIN_OPSET}, {newest}]")
    for what, name in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(name, str) or not name:
            raise ProbPruneError(f"save_onnx: {what}={name!r}: must be a non-empty string")
    if input_name == output_name or input_name in net.state_dict() or output_name in net.state_dict():
        raise ProbPruneError(f"save_onnx: input_name={input_name!r}, output_name={output_name!r}: must differ from "
                             f"each other and from the parameter names {net.names}")


def _declared_shape(spec: NetSpec, input_shape: Sequence[int | str | None] | None) -> tuple[int | str | None, ...]:
    """The graph input's declared shape, batch first (default ``["N", *features]``); it must fit the net."""
    feat = spec.feature_shapes()[0]  # the input shape per sample
    shape: tuple[int | str | None, ...] = ("N", *feat) if input_shape is None else tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape[1:]) \
            or not (shape[0] is None or isinstance(shape[0], str) or (isinstance(shape[0], int) and shape[0] >= 1)):
        raise ProbPruneError(f"save_onnx: input_shape={list(shape)}: must be [batch, positive ints...]")
    rest = cast(tuple[int, ...], shape[1:])
    if (spec.kind == "cnn" and rest != feat) or math.prod(rest) != spec.input_dim:
        raise ProbPruneError(f"save_onnx: input_shape={list(shape)} does not fit the network's input "
                             f"{list(feat)} (batch first)")
    return shape


def _graph_nodes(net: Net, input_name: str, flatten_input: bool) -> tuple[list[Any], list[Any]]:
    """The nodes (in order, the last one's output still unnamed) and the initializers of ``net``'s graph."""
    from onnx import helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    cur = input_name
    counter = [0]

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def add(op: str, inputs: list[str], **attrs: Any) -> None:
        nonlocal cur
        name = fresh(op.lower())
        out = name + "_out"
        nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        cur = out

    if flatten_input:
        add("Flatten", [cur], axis=1)
    last = len(net.layers) - 1
    for i, (wname, layer) in enumerate(zip(net.names, net.layers)):
        w = layer.weight.detach().cpu().contiguous().numpy()
        inits.append(numpy_helper.from_array(w, wname))
        ins = [cur, wname]
        if layer.bias is not None:
            bname = wname.replace(".weight", ".bias")
            inits.append(numpy_helper.from_array(layer.bias.detach().cpu().contiguous().numpy(), bname))
            ins.append(bname)
        if layer.conv is None:
            add("Gemm", ins, transB=1)
        else:
            c = layer.conv
            if c.padding_mode != "zeros" and c.pad > 0:
                raise ProbPruneError(f"save_onnx: {wname}: padding_mode={c.padding_mode!r} cannot be written as an "
                                     "ONNX Conv (only zero padding)")
            add("Conv", ins, kernel_shape=[c.kernel, c.kernel], pads=[c.pad] * 4, strides=[c.stride] * 2,
                dilations=[1, 1], group=1)
        act = layer.activation
        if i < last and act.name != "identity":
            if act.name == "leaky_relu":
                add("LeakyRelu", [cur], alpha=float(act.negative_slope))
            else:
                add({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[act.name], [cur])
        if layer.conv is not None and layer.conv.pool > 1:
            add("MaxPool", [cur], kernel_shape=[layer.conv.pool] * 2, strides=[layer.conv.pool] * 2)
        if layer.flatten:
            add("Flatten", [cur], axis=1)
    return nodes, inits


def _atomic_write(path: Path, data: bytes) -> Path:
    if path.is_dir():
        raise ProbPruneError(f"save_onnx: path {str(path)!r} is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise ProbPruneError(f"save_onnx: path {str(path)!r}: folder {str(parent)!r} does not exist")
    try:  # the umask decides the mode; no temporary file is left behind (probprune.files)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ProbPruneError(f"save_onnx: path {str(path)!r}: cannot write ({exc.strerror or exc})") from exc
    return path

