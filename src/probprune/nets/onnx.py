"""ONNX in and out for the networks a :class:`~probprune.nets.Net` represents: exact or refused.

:func:`load_onnx` / :func:`read_onnx` read an ONNX model (opset 9 and newer) through the one reader there is:
:func:`~probprune.nets.onnx_graph.load_onnx_graph` reads it as a :class:`~probprune.nets.graph.Graph` (exact,
checked node by node against the ONNX reference evaluator in float64), and
:func:`~probprune.nets.chain.compile_chain` lowers that graph to the chain ``Net`` — or refuses, naming the ONNX
node (its name and op type) and what to do, when the graph is not a chain ``Net`` expresses (the graph form then
takes it: :mod:`probprune.runner.graph`). :func:`save_onnx` writes a ``Net`` as a model that onnxruntime runs with
the same values. ONNX is protobuf: nothing is unpickled.

The compiled ``Net`` is in the model's dtype. Its parameters are the model's own tensors, exactly, unless the
graph reader folded something (``BatchNormalization`` into the Gemm/Conv before it, Gemm ``alpha``/``beta`` ≠ 1,
an affine node folded by the lowering): folding is computed in float64 and stored once in the model's dtype, so a
folded layer equals the ONNX layers it replaces up to one rounding of its parameters to that dtype (≤ u·|w| per
entry), the size of the rounding the ONNX model itself makes when it evaluates the unfolded layers. The ``Net``
is then checked numerically against the float64 graph (float64 rounding plus exactly that allowance per layer)
and, when onnxruntime is installed, against onnxruntime's run of the model (rounding of the model's dtype), on
256 inputs from a fixed local generator with norms spread over [0, 10]; a difference beyond rounding refuses the
conversion, naming the output.

The file-level helpers here (``_read_model``, ``_opset``, ``_attrs``, ``_constants``, ``_dims``) are shared with
the graph reader.
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

from probprune.config import NetSpec, ProbPruneError
from probprune.files import atomic_write_bytes
from probprune.nets import (
    _CHECK_SLACK,
    Net,
    _abs_scale,
    _apply_layer,
    _check_points,
    check_finite,
)

if TYPE_CHECKING:  # pragma: no cover
    from onnx import ModelProto, NodeProto

    from probprune.nets.graph import Graph
    from probprune.nets.graph import Node as GraphNode

__all__ = ["OnnxInfo", "load_onnx", "read_onnx", "save_onnx"]

_MIN_OPSET = 9
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


# ---------------------------------------------------------------------- one reader: the graph, compiled


def _tolerance(net64: Net, x: Tensor, us: Sequence[float], u_model: float) -> list[float]:
    """∞-norm bounds on the output difference that rounding (``u`` per operation, for each ``u`` in ``us``;
    ``u_model`` per parameter: folded ones were rounded once to the model's dtype) can build up through the
    layers, as in ``from_module``'s check."""
    tiny = 2.0 ** -1074
    errs = [0.0] * len(us)
    h = x
    for layer in net64.layers:
        scale = float(_abs_scale(layer, h))
        y = _apply_layer(layer, h, None)
        fan_in = math.prod(layer.weight.shape[1:])
        w_inf = float(layer.weight.abs().flatten(1).sum(dim=1).max())
        top = float(y.abs().max())
        for i, u in enumerate(us):
            tol = _CHECK_SLACK * (fan_in + 1) * (u * (scale + top) + tiny) + 2.0 * u_model * scale
            errs[i] = layer.activation.lipschitz * w_inf * errs[i] + tol
        h = y
    return errs


def _run_chunks(fn: Any, x: np.ndarray, batch: int | None) -> np.ndarray:
    if batch is None or batch >= x.shape[0]:
        return np.asarray(fn(x))
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def _check_numbers(model: ModelProto, graph: Graph, net: Net, batch: int | None, inp: str, out: str) -> bool:
    """The compiled Net (in the model's dtype) against the float64 graph, and against onnxruntime when installed.

    The graph was checked node by node against the ONNX reference evaluator by its reader; here the ``Net`` —
    the same function unless a folded parameter was rounded to the model's dtype — must equal the graph to that
    rounding, and onnxruntime's run of the model to the rounding of the model's dtype. Returns whether
    onnxruntime ran.
    """
    x = _check_points(graph.input_shape)
    n = x.shape[0]
    net64 = net.to(device="cpu", dtype=torch.float64)
    u_model = 2.0 ** -24 if net.dtype == torch.float32 else 2.0 ** -53
    shape = net.spec.feature_shapes()[0]
    with torch.no_grad():
        tol64, tolm = _tolerance(net64, x.reshape(n, *shape), (2.0 ** -53, u_model), u_model)
        want = graph.to(torch.float64)(x).reshape(n, -1)
        got = cast(Tensor, net64.forward(x.reshape(n, *shape)))
    diff = float((got - want).abs().max()) if got.shape == want.shape else math.inf
    if not diff <= tol64:
        raise _fail(f"output {out!r}: the converted network differs from a float64 evaluation of the ONNX graph: "
                    f"max |difference| {diff:.3g} on {n} random inputs of norm ≤ 10, tolerance {tol64:.3g}; "
                    "refusing the conversion")
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    xm = x.numpy().astype(np.float32 if net.dtype == torch.float32 else np.float64)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if "NOT_IMPLEMENTED" in str(exc):  # e.g. float64 Conv: the CPU provider has no kernel; the graph checked it
            return False
        raise _fail(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc
    try:
        ort_out = _run_chunks(lambda xx: sess.run([out], {inp: xx})[0], xm, batch).astype(np.float64).reshape(n, -1)
    except Exception as exc:
        raise _fail(f"onnxruntime cannot run the model on inputs of shape {list(xm.shape)}: "
                    f"{str(exc).splitlines()[0]}") from exc
    with torch.no_grad():
        got_m = cast(Tensor, net64.forward(torch.from_numpy(xm.astype(np.float64)).reshape(n, *shape))).numpy()
    diff = float(np.abs(got_m - ort_out).max()) if got_m.shape == ort_out.shape else math.inf
    if not diff <= tolm:
        raise _fail(f"output {out!r}: the converted network differs from onnxruntime's: max |difference| "
                    f"{diff:.3g} on {n} random inputs of norm ≤ 10, tolerance {tolm:.3g} (float32 rounding of the "
                    "model); refusing the conversion")
    return True


def _onnx_label(origin: Mapping[str, NodeProto]) -> Callable[[GraphNode], str]:
    def label(node: GraphNode) -> str:
        src = origin.get(node.name)
        return f"node {node.name!r} ({node.op})" if src is None else _label(src)

    return label


def _in_dtype(net: Net, dtype: torch.dtype) -> Net:
    """The compiled Net (float64, from the graph) in the model's dtype: exact unless parameters were folded (a
    BatchNormalization, a Gemm ``alpha``/``beta``, in float64), which are then rounded once to that dtype."""
    return net if dtype == torch.float64 else net.to(dtype=dtype)


def read_onnx(path: str | os.PathLike[str]) -> tuple[Net, OnnxInfo]:
    """Read an ONNX model into a :class:`Net` computing exactly its function, or refuse; with its :class:`OnnxInfo`.

    One reader: :func:`~probprune.nets.onnx_graph.load_onnx_graph` reads the model as a graph (exact, checked node
    by node against the ONNX reference evaluator in float64), :func:`~probprune.nets.chain.compile_chain` lowers
    it to the chain ``Net`` (refused, naming the ONNX node and its op type, when the graph is not a chain), and
    the ``Net`` in the model's dtype is checked against the float64 graph and, when installed, onnxruntime. Its
    parameters are the model's own, exactly, unless a BatchNormalization or a Gemm ``alpha``/``beta`` was folded
    (in float64, then rounded once to the model's dtype, which the checks allow). It takes ``[N, features]`` (an
    FCN: the input flattened, as its leading ``Flatten``/``Reshape`` does) or ``[N, C, H, W]`` (a CNN); the
    declared input shape is in the info.

    Raises:
        ProbPruneError: naming the file, node (name and op type) or output, and the reason. When the graph was
            read and only the lowering to a chain refused, the error carries it as ``graph_read``
            (``(Graph, OnnxGraphInfo)``) for callers that take graphs.
    """
    from probprune.nets.chain import compile_chain
    from probprune.nets.onnx_graph import read_model_graph

    model = _read_model(path)
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
    try:
        g, ginfo, origin = read_model_graph(model)
    except ProbPruneError as exc:
        raise _fail(str(exc).removeprefix("load_onnx_graph: ")) from None
    try:
        net64 = compile_chain(g, who="load_onnx", label=_onnx_label(origin))
    except ProbPruneError as exc:
        exc.graph_read = (g, ginfo)  # type: ignore[attr-defined]
        raise
    net = _in_dtype(net64, _DTYPES[elem])
    check_finite(net, "load_onnx: parameters in the model's dtype")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] >= 1 else None
    ort_checked = _check_numbers(model, g, net, batch, inp.name, outp.name)
    info = OnnxInfo(input_name=inp.name, output_name=outp.name, input_shape=dims, output_shape=_dims(outp),
                    opset=ginfo.opset, onnxruntime_checked=ort_checked)
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

