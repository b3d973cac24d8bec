"""The chain :class:`~probprune.nets.Net` as the compiled form of a :class:`~probprune.nets.graph.Graph`.

The graph is the one IR every reader produces; a ``Net`` is what the batched Monte Carlo engine runs: a chain of
linear/conv layers with one hidden activation type. Two maps connect them:

* :func:`graph_of` (also :meth:`Net.to_graph`): ``Net → Graph``, exact. Node names are the indices of
  :func:`~probprune.nets.to_module` (``0``, ``1`` …), so the graph's parameters are named like the Net's
  (``0.weight``). A trial dim is kept (an ensemble becomes a graph with a trial dim). A conv layer with circular
  padding becomes a ``circular_pad`` node (``0.pad``) and the conv without padding (the graph bound has no rule
  for ``circular_pad`` and refuses such graphs; the chain bound covers them).
* :func:`compile_chain`: ``Graph → Net``, exact, or refused naming the node when the graph is not a chain a
  ``Net`` expresses. Accepted, in this order: ``identity`` nodes (and pads of nothing) anywhere; a leading
  ``reshape`` to the flattened input (an FCN then reads the flattened input, as
  :func:`~probprune.nets.from_module` does behind ``nn.Flatten``); per layer ``[circular_pad →] linear | conv``
  (2-D, square kernel and stride, equal zero padding on every side — or none after a ``circular_pad`` equal on
  every side —, no dilation, groups 1) → per-output-channel ``affine`` nodes folded into it → one activation
  (``relu``, ``leaky_relu`` with a slope in [0, 1], ``tanh``, ``sigmoid``; the same after every hidden layer, or
  none anywhere) → ``maxpool`` (conv only: square, stride = kernel, no padding) → ``reshape`` to a vector (after
  the last conv only); the output ``linear`` with nothing after it.

Folding an ``affine`` node (``z·s + t``, e.g. a BatchNorm no reader could fold) changes parameters by
arithmetic: it is done in float64 and the Net is then float64 (``W·s``, ``b·s + t`` each rounded once in float64,
the readers' own BatchNorm rule). Every other compiled parameter is the graph's tensor itself, so the Net and the
graph compute the same function in the same dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor

from probprune.config import ConvSpec, NetSpec, ProbPruneError
from probprune.nets import Activation as NetActivation
from probprune.nets import Net
from probprune.nets.graph import Activation, Graph, Node, activation

__all__ = ["compile_chain", "graph_of"]

_NET_ACTS = ("relu", "leaky_relu", "tanh", "sigmoid")
"""Graph activation kinds a ``Net`` applies (besides the identity: no activation node)."""


# ---------------------------------------------------------------------- Net → Graph


def _graph_act(a: NetActivation) -> Activation:
    return activation("leaky_relu", a.negative_slope) if a.name == "leaky_relu" else activation(a.name)


def graph_of(net: Net) -> Graph:
    """The :class:`Graph` of a chain ``Net``: same function, same parameter names (``0.weight`` …), same trial dim.

    Args:
        net: a single network or an ensemble (its trial dim becomes the graph's).

    Returns:
        Nodes named by :func:`~probprune.nets.to_module`'s indices: the weight layer, its activation (``act``, or
        ``identity`` for an identity-activation Net: indices stay stable), its ``maxpool``, the ``reshape`` after
        the last conv layer; a circular conv is a ``circular_pad`` node (``0.pad``) and the conv without padding.
        The parameters are the Net's tensors (no copy, no cast).

    >>> from probprune.config import NetSpec
    >>> net = Net.from_weights(NetSpec(widths=(3, 4, 2)), [torch.ones(4, 3), torch.ones(2, 4)])
    >>> [f"{n.name}:{n.op}" for n in graph_of(net).nodes]
    ['0:linear', '1:act', '2:linear']
    """
    nodes: list[Node] = []
    prev = "input"
    idx = 0
    last = len(net.layers) - 1

    def add(op: str, attrs: dict[str, object] | None = None, params: dict[str, Tensor] | None = None) -> None:
        nonlocal prev, idx
        nodes.append(Node(str(idx), op, (prev,), attrs or {}, params or {}))
        prev = str(idx)
        idx += 1

    for i, layer in enumerate(net.layers):
        params = {"weight": layer.weight} | ({} if layer.bias is None else {"bias": layer.bias})
        conv = layer.conv
        if conv is None:
            add("linear", params=params)
        else:
            p = conv.pad
            if conv.padding_mode == "circular":  # the wrap-around pad (also of nothing: the spec round-trips)
                nodes.append(Node(f"{idx}.pad", "circular_pad", (prev,), {"pads": (p, p, p, p)}))
                prev, p = f"{idx}.pad", 0
            add("conv", {"stride": (conv.stride, conv.stride), "padding": ((p, p), (p, p)), "dilation": (1, 1),
                         "groups": 1}, params)
        if i < last:
            act = layer.activation
            if act.name == "identity":
                add("identity")
            else:
                add("act", {"act": _graph_act(act)})
        if conv is not None and conv.pool > 1:
            add("maxpool", {"dims": 2, "kernel": (conv.pool, conv.pool), "stride": (conv.pool, conv.pool),
                            "padding": (0, 0)})
        if layer.flatten:
            add("reshape", {"shape": (math.prod(net.spec.feature_shapes()[i + 1]),)})
    in_shape = net.spec.feature_shapes()[0]
    return Graph(nodes, in_shape)


# ---------------------------------------------------------------------- Graph → Net


class _Refusal(ProbPruneError):
    """A node the chain cannot express: the node, what is wrong, what to do."""

    def __init__(self, node: Node, what: str, hint: str) -> None:
        super().__init__(f"compile_chain: node {node.name!r} ({node.op}): {what}; {hint}")
        self.node, self.what, self.hint = node, what, hint


GRAPH_HINT = "use the graph form (nets.graph.Graph) for this network"
"""The hint of a refusal that has no more specific one."""


def _fail(node: Node, what: str, hint: str = GRAPH_HINT) -> _Refusal:
    return _Refusal(node, what, hint)


@dataclass
class _Layer:
    """One weight layer of the chain being compiled, with what follows it."""

    node: Node
    weight: Tensor
    bias: Tensor | None
    conv: tuple[int, int, int] | None  # (kernel, stride, padding)
    circular: bool = False  # the padding wraps around (a circular_pad node before the conv)
    folded: bool = False
    act: Node | None = None
    pool: Node | None = None
    flat: Node | None = None
    tail: list[Node] = field(default_factory=list)


def _square(node: Node, what: str, v: tuple[int, ...]) -> int:
    if len(set(v)) != 1:
        raise _fail(node, f"{what}={v} differs between the axes", "the chain Net needs a square geometry")
    return int(v[0])


def _conv_geometry(node: Node, weight: Tensor) -> tuple[int, int, int]:
    a = node.attrs
    if len(a["padding"]) != 2:
        raise _fail(node, "a 1-D convolution", "the chain Net has 2-D convolutions only")
    pads = [v for pair in a["padding"] for v in pair]
    if len(set(pads)) != 1:
        raise _fail(node, f"padding={a['padding']} is not the same on every side",
                    "the chain Net pads every side equally")
    if tuple(a["dilation"]) != (1, 1) or int(a["groups"]) != 1:
        raise _fail(node, f"dilation={a['dilation']}, groups={a['groups']}", "the chain Net has dilation 1, groups 1")
    k = _square(node, "kernel", tuple(int(d) for d in weight.shape[-2:]))
    s = _square(node, "stride", tuple(int(v) for v in a["stride"]))
    return k, s, int(pads[0])


def _fold_affine(layer: _Layer, node: Node, trials: bool) -> None:
    """Fold ``z·scale + shift`` (one value per output channel) into the layer before it, in float64."""
    hint = "the chain Net folds only per-channel affine maps into the layer before them"
    if trials:
        raise _fail(node, "an affine map in a graph with a trial dim", hint)
    lin = layer.conv is None
    c = int(layer.weight.shape[-2 if lin else -4])
    for pname, t in node.params.items():
        if not (t.numel() == 1 or (t.dim() >= 1 and t.shape[0] == c and math.prod(t.shape[1:]) == 1)):
            raise _fail(node, f"{pname} of shape {tuple(t.shape)} is not one value per output channel", hint)
    w = layer.weight.double()
    b = None if layer.bias is None else layer.bias.double()
    if "scale" in node.params:
        s = node.params["scale"].double().reshape(-1).expand(c)
        w = w * s.reshape((c,) + (1,) * (1 if lin else 3))
        b = None if b is None else b * s
    if "shift" in node.params:
        t = node.params["shift"].double().reshape(-1).expand(c)
        b = t.clone() if b is None else b + t
    layer.weight, layer.bias, layer.folded = w, b, True


def _read_tail(layer: _Layer, node: Node, trials: bool) -> None:
    """Attach a node that follows a weight layer (affine, activation, max-pool, flatten) or refuse it."""
    after = layer.flat or layer.pool or layer.act
    if node.op == "affine":
        if after is not None:
            raise _fail(node, f"an affine map after {after.name!r} ({after.op})",
                        "the chain Net folds affine maps only right after a linear/conv node")
        _fold_affine(layer, node, trials)
    elif node.op == "act":
        act: Activation = node.attrs["act"]
        if act.kind not in _NET_ACTS:
            raise _fail(node, f"activation {act.kind} is not one the chain Net applies ({', '.join(_NET_ACTS)})")
        if act.kind == "leaky_relu" and not 0.0 <= act.params[0] <= 1.0:
            raise _fail(node, f"leaky_relu slope {act.params[0]} is outside [0, 1]")
        if after is not None:
            raise _fail(node, f"an activation after {after.name!r} ({after.op})",
                        "the chain Net applies one activation per layer, before its max-pool and flatten")
        layer.act = node
    elif node.op == "maxpool":
        a = node.attrs
        if layer.conv is None or a["dims"] != 2:
            raise _fail(node, "a max-pool after a linear layer (or 1-D)", "the chain Net pools after 2-D convs only")
        if layer.pool is not None or layer.flat is not None:
            raise _fail(node, f"a second max-pool or a max-pool after {after.name!r}",  # type: ignore[union-attr]
                        "the chain Net has at most one max-pool per conv layer, before the flatten")
        _square(node, "kernel", tuple(a["kernel"]))
        if tuple(a["stride"]) != tuple(a["kernel"]) or any(int(p) != 0 for p in a["padding"]):
            raise _fail(node, f"kernel={a['kernel']}, stride={a['stride']}, padding={a['padding']}",
                        "the chain Net max-pools with stride = kernel and no padding")
        layer.pool = node
    elif node.op == "pad":
        raise _fail(node, f"pads={list(node.attrs['pads'])} (per axis, last first): a pad outside a conv",
                    "the chain Net reads only a Pad that pads nothing (as the identity); use the graph form")
    else:
        raise _fail(node, f"op {node.op} is not part of a chain Net")


def _layers(graph: Graph) -> tuple[list[_Layer], bool]:
    """The weight layers of a chain graph, each with its tail; whether the input is flattened first."""
    layers: list[_Layer] = []
    lead_flat = False
    prev = "input"
    wrap: Node | None = None  # a circular_pad waiting for its conv
    for node in graph.nodes:
        if node.inputs != (prev,):
            what = (f"reads {len(node.inputs)} tensors ({', '.join(map(repr, node.inputs))})" if len(node.inputs) != 1
                    else f"reads {node.inputs[0]!r}, not the node before it ({prev!r})")
            raise _fail(node, f"{what}: the graph branches (a residual connection or several heads)",
                        "the chain Net is a chain of layers; use the graph form for residual or branching networks")
        prev = node.name
        if wrap is not None and node.op != "conv":
            raise _fail(wrap, f"is followed by {node.name!r} ({node.op}), not a conv",
                        "the chain Net pads circularly only inside its convs")
        if node.op == "circular_pad":
            wrap = node
            continue
        if node.op == "identity" or (node.op == "pad" and not any(node.attrs["pads"])):
            continue  # a pad of nothing is the identity
        if node.op == "reshape":
            lead_flat = _read_reshape(graph, node, layers) or lead_flat
            continue
        if node.op in ("linear", "conv"):
            _start_layer(graph, node, layers, lead_flat, wrap)
            wrap = None
            continue
        if not layers:
            raise _fail(node, "comes before the first linear/conv node", "the chain Net starts with a weight layer")
        _read_tail(layers[-1], node, graph.n_trials is not None)
    if wrap is not None:
        raise _fail(wrap, "is the last node", "the chain Net pads circularly only inside its convs")
    if not layers:
        raise ProbPruneError("compile_chain: the graph has no linear or conv node")
    return layers, lead_flat


def _read_reshape(graph: Graph, node: Node, layers: list[_Layer]) -> bool:
    """A no-op reshape, the FCN's input flatten (returns True) or the flatten after the last conv; else refuse."""
    ins = graph.shapes[node.inputs[0]]
    out = graph.shapes[node.name]
    if out == ins:
        return False  # the identity
    flat = out == (math.prod(ins),)
    if not layers and flat and len(ins) > 1:
        return True  # the FCN input flattened: the Net reads flattened inputs
    last = layers[-1] if layers else None
    if flat and last is not None and last.conv is not None and last.flat is None:
        last.flat = node
        return False
    raise _fail(node, f"reshape {ins} → {out}",
                "the chain Net flattens only its input or once between the last conv and the first linear node")


def _start_layer(graph: Graph, node: Node, layers: list[_Layer], lead_flat: bool, wrap: Node | None) -> None:
    w = node.params["weight"]
    if node.op == "conv":
        if layers and layers[-1].conv is None:
            raise _fail(node, "a conv after a linear layer", "the chain Net is conv layers, then a linear head")
        if layers and layers[-1].flat is not None:
            raise _fail(node, f"a conv after the flatten {layers[-1].flat.name!r}",
                        "the chain Net flattens once, after the last conv")
        if not layers and (len(graph.input_shape) != 3 or lead_flat):
            raise _fail(node, f"a conv on input shape {graph.input_shape}", "the chain Net's convs read (C, H, W)")
        geom: tuple[int, int, int] | None = _conv_geometry(node, w)
        if wrap is not None:
            pads = tuple(int(v) for v in wrap.attrs["pads"])
            if len(pads) != 4 or len(set(pads)) != 1 or geom[2] != 0:  # type: ignore[index]
                raise _fail(wrap, f"pads={pads} before a conv with padding {node.attrs['padding']}",
                            "the chain Net's circular convs pad every side equally and nothing more")
            geom = (geom[0], geom[1], pads[0])  # type: ignore[index]
    else:
        if not layers and len(graph.input_shape) != 1 and not lead_flat:
            raise _fail(node, f"a linear node on input shape {graph.input_shape}",
                        "flatten the input first (the chain Net's linear layers read vectors)")
        if layers and layers[-1].conv is not None and layers[-1].flat is None:
            raise _fail(node, f"a linear node after the conv {layers[-1].node.name!r} without a flatten",
                        "flatten the feature map first")
        geom = None
    layers.append(_Layer(node, w, node.params.get("bias"), geom, circular=wrap is not None))


def _activation_of(layers: list[_Layer]) -> tuple[str, float]:
    """The one hidden activation (name, slope), or identity when no hidden layer has one."""
    last = layers[-1]
    if last.conv is not None:
        raise _fail(last.node, "the last weight layer is a conv", "the chain Net ends with a linear head")
    if last.act is not None or last.pool is not None or last.flat is not None:
        extra = cast(Node, last.act or last.pool or last.flat)
        what = "an activation" if extra is last.act else f"a {extra.op}"
        raise _fail(extra, f"is {what} after the output layer {last.node.name!r}",
                    "the chain Net's last layer is a linear map with nothing after it")
    hidden = layers[:-1]
    acts = [layer.act for layer in hidden if layer.act is not None]
    if acts and len(acts) < len(hidden):
        bare = next(layer.node for layer in hidden if layer.act is None)
        raise _fail(bare, f"has no activation after it while {acts[0].name!r} applies one",
                    "the chain Net applies the same activation after every hidden layer")
    kinds = {(a.attrs["act"].kind, a.attrs["act"].params) for a in acts}
    if len(kinds) > 1:
        raise _fail(acts[-1], f"mixed activations {sorted(kinds)}", "the chain Net applies one activation type")
    if not kinds:
        return "identity", 0.01
    kind, params = kinds.pop()
    return kind, float(params[0]) if params else 0.01


def _trial_tensor(t: Tensor, base: int, k: int | None) -> Tensor:
    return t if k is None or t.dim() == base + 1 else t.unsqueeze(0).expand(k, *t.shape).clone()


def compile_chain(graph: Graph, *, who: str = "compile_chain", label: Callable[[Node], str] | None = None) -> Net:
    """The chain :class:`Net` that computes exactly what ``graph`` computes, or refuse naming the node.

    Args:
        graph: a chain graph (module docstring): any reader's output, or :func:`graph_of`'s.
        who: the prefix of refusals (a reader names itself: ``load_onnx``).
        label: how refusals name a node (default ``node 'name' (op)``; the ONNX reader names the ONNX node and
            its op type).

    Returns:
        A ``Net`` in the graph's parameter dtype (float64 when an affine node was folded), with the graph's trial
        dim; parameters shared by every member of a graph with a trial dim are repeated per member.

    Raises:
        ProbPruneError: ``compile_chain: node 'name' (op): what; what to do`` for the first node that a ``Net``
            cannot express (branches, pads, average pools, other activations, mixed activations, …).
    """
    try:
        return _compile(graph)
    except _Refusal as exc:
        if who == "compile_chain" and label is None:
            raise
        name = f"node {exc.node.name!r} ({exc.node.op})" if label is None else label(exc.node)
        raise ProbPruneError(f"{who}: {name}: {exc.what}; {exc.hint}") from None
    except ProbPruneError as exc:
        if who == "compile_chain":
            raise
        raise ProbPruneError(f"{who}: {str(exc).removeprefix('compile_chain: ')}") from None


def _compile(graph: Graph) -> Net:
    layers, _ = _layers(graph)
    act_name, slope = _activation_of(layers)
    k = graph.n_trials
    f64 = any(layer.folded for layer in layers)
    dtype = torch.float64 if f64 else layers[0].weight.dtype
    has_bias = any(layer.bias is not None for layer in layers)
    weights: list[Tensor] = []
    biases: list[Tensor | None] = []
    convs: list[ConvSpec] = []
    for layer in layers:
        base = 2 if layer.conv is None else 4
        w = _trial_tensor(layer.weight, base, k).to(dtype)
        out = int(w.shape[-base])
        b = layer.bias
        if b is None and has_bias:  # a zero bias is exact: z + 0 = z
            b = torch.zeros(out, dtype=dtype, device=w.device)
        weights.append(w)
        biases.append(None if b is None else _trial_tensor(b, 1, k).to(dtype))
        if layer.conv is not None:
            kern, s, p = layer.conv
            pool = 1 if layer.pool is None else int(layer.pool.attrs["kernel"][0])
            convs.append(ConvSpec(out, kern, s, p, "circular" if layer.circular else "zeros", pool))
    widths = tuple(int(w.shape[-2]) for w, layer in zip(weights, layers) if layer.conv is None)
    try:
        if convs:
            spec = NetSpec(kind="cnn", input_shape=graph.input_shape, convs=tuple(convs),  # type: ignore[arg-type]
                           widths=widths, activation=act_name, negative_slope=slope, bias=has_bias)  # type: ignore[arg-type]
        else:
            spec = NetSpec(kind="fcn", widths=(int(weights[0].shape[-1]), *widths), activation=act_name,  # type: ignore[arg-type]
                           negative_slope=slope, bias=has_bias)
        return Net.from_weights(spec, weights, biases)
    except ProbPruneError as exc:
        raise ProbPruneError(f"compile_chain: the layers do not fit one chain architecture: {exc}") from exc
