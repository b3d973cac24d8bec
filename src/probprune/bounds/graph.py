"""A certified upper bound on the gap of two graphs, node by node, and a gap search (lower bound) on graphs.

``docs/certified.md`` ("Graphs") derives every rule. For target F and pruned f (two
:class:`~probprune.nets.graph.Graph`\\ s of one structure, different parameters) and inputs ``‖x‖₂ ≤ r``, each
node v gets upper values of the reaches ``B_v ≥ sup ‖F_v(x)‖``, ``B̃_v ≥ sup ‖f_v(x)‖`` and of the error
``e_v ≥ sup ‖f_v(x) − F_v(x)‖`` (flattened ℓ2 norms; ``B = B̃ = r``, ``e = 0`` at the input):

* affine maps ``z = W h + b`` (linear, conv, ``affine``), ``D = W − W̃``:
  ``e' = min(‖W̃‖e + ‖D‖B, ‖W‖e + ‖D‖B̃) + ‖b̃ − b‖``, ``B' = ‖W‖B + ‖b‖``;
* activations, L-Lipschitz: ``e' = L e``, ``B' = L B + |σ(0)|√n`` (both capped by the range when σ is bounded);
* ``add``: sums; ``cat``: root-sum-squares; reshape, zero pad, identity: unchanged;
* max-pool whose windows cover an entry at most m times: ``√m`` times both (m counted exactly per axis);
* average pools (linear, non-negative): ``‖A‖ ≤ √(‖A‖₁‖A‖_∞)`` from its row and column sums.

Every operator norm is an upper value: linear layers via :func:`~probprune.bounds.norms.operator_norm`
(SVD / Gram–Cholesky / Hölder); convolutions of any stride, zero padding (asymmetric ``same`` too), dilation and
groups via the FFT of the circular convolution on the zero-padded grid (the dilated, group-expanded kernel; no tap
wraps around, and the stride only selects rows); differences ``W − W̃`` formed in float64.

Floating point: the bound covers the graphs **evaluated in float64** (``graph.to(torch.float64)``; parameters of
float32 graphs are cast exactly) and their exact-arithmetic gap. A float64 forward-rounding margin ``E_v`` per
network (dot products ``γ_{n+1}(‖|W|‖(B + E) + ‖b‖)``, one rounding per sum, the activations' assumed accuracy
of 16 u relative to ``|σ(z)| + |z|`` plus their absolute deviation, underflow) is added, and the result is
rounded up for the norm of the gap and the float64 arithmetic of the recursion. A float32 forward pass is **not**
covered (its margin would be ~1e8 times larger; run the graph in float64 for a certified statement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from probprune.bounds.norms import _circular_norm, _gamma, abs_operator_norm_bound, operator_norm, vector_norm_bound
from probprune.config import ProbPruneError
from probprune.nets.graph import Activation, Graph, Node, apply_node
from probprune.search import Budget, Region, maximise

__all__ = ["GraphBound", "GraphPairNorms", "NodeTerm", "certified_graph_gap", "check_graph_pair",
           "conv_operator_norm", "graph_pair_norms", "graph_search_budget", "search_graph_gap"]

_U = 2.0 ** -53
_ETA = 2.0 ** -1074
_MARGIN = 1e-9  # relative round-up of float64 sums of positive terms computed by torch (order n·u ≪ 1e-9)


@dataclass(frozen=True)
class NodeTerm:
    """One node's upper values (floats): reaches of F and f, error, and float64 forward errors of F and f."""

    name: str
    op: str
    reach_target: float
    reach_pruned: float
    error: float
    fwd_target: float
    fwd_pruned: float


@dataclass(frozen=True)
class GraphBound:
    """A certified upper value of ``sup_{‖x‖ ≤ r} ‖f(x) − F(x)‖₂`` for two graphs (module docstring).

    Attributes:
        value: the certified bound (covers the exact gap and the float64 forward passes).
        rounding_margin: the part of ``value`` due to float64 forward rounding and final round-ups.
        radius: r.
        terms: per-node values, in node order.
        assumptions: what the statement assumes, in words.
    """

    value: float
    rounding_margin: float
    radius: float
    terms: tuple[NodeTerm, ...]
    assumptions: tuple[str, ...]


def _dilated_full_kernel(w: Tensor, node: Node) -> Tensor:
    """``[c_out, c_in, kh', kw']`` float64: 1-D as 2-D, dilation as zero taps, groups as a block-diagonal kernel."""
    a = node.attrs
    w = w.double()
    if w.dim() == 3:
        w = w.unsqueeze(2)
    dil = tuple(a["dilation"]) if len(a["dilation"]) == 2 else (1, a["dilation"][0])
    co, cig, kh, kw = w.shape
    dk = torch.zeros(co, cig, dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1, dtype=torch.float64)
    dk[:, :, :: dil[0], :: dil[1]] = w
    g = int(a["groups"])
    if g == 1:
        return dk
    full = torch.zeros(co, cig * g, *dk.shape[2:], dtype=torch.float64)
    per = co // g
    for j in range(g):
        full[j * per:(j + 1) * per, j * cig:(j + 1) * cig] = dk[j * per:(j + 1) * per]
    return full


def _padded_grid(node: Node, in_shape: tuple[int, ...]) -> tuple[int, int]:
    pads = node.attrs["padding"]
    spatial = in_shape[1:]
    if len(spatial) == 1:
        return 1, spatial[0] + pads[0][0] + pads[0][1]
    return spatial[0] + pads[0][0] + pads[0][1], spatial[1] + pads[1][0] + pads[1][1]


def conv_operator_norm(weight: Tensor, node: Node, in_shape: tuple[int, ...], minus: Tensor | None = None) -> float:
    """An upper value of the ℓ2 operator norm of a ``conv`` node's linear part on ``in_shape`` ``(C, *spatial)``.

    The zero-padded input is an isometric embedding in the padded grid; on it, the output is a row selection
    (stride) of the circular convolution with the dilated, group-expanded kernel (no tap wraps around: every
    tap of a kept output lies inside the padded grid), whose norm is the largest singular value over the DFT
    frequencies (exact, computed by :mod:`probprune.bounds.norms`). ``minus``: the norm of ``weight − minus``.
    """
    w = weight.double() if minus is None else weight.double() - minus.double()
    k = _dilated_full_kernel(w, node)
    return float(_circular_norm(k.unsqueeze(0), _padded_grid(node, in_shape), 0)[0])


def _conv_abs_norm(weight: Tensor) -> float:
    """Upper value of ‖|C|‖₂ by Hölder: rows read each tap once; per tap an input pixel feeds each output
    channel at most once, so a column sums |w[:, c]| over channels and taps at most once."""
    a = weight.double().abs()
    rows = float(a.flatten(1).sum(dim=1).max())
    cols = float(a.sum(dim=0).flatten(1).sum(dim=1).max()) if a.dim() > 1 else rows
    return math.sqrt(rows * cols) * (1.0 + _MARGIN)


def _multiplicity(n: int, k: int, s: int, p: int) -> int:
    """How many windows (start o·s − p, length k, n_out of them) cover one entry of an axis of n, at most."""
    n_out = (n + 2 * p - k) // s + 1
    counts = [0] * n
    for o in range(n_out):
        for j in range(max(0, o * s - p), min(n, o * s - p + k)):
            counts[j] += 1
    return max(counts) if counts else 0


def _pool_norm(node: Node, in_shape: tuple[int, ...]) -> tuple[float, int]:
    """Hölder bound √(max row sum · max column sum) of an average pool (sums in float64, rounded up)."""
    x = torch.ones(1, *in_shape, dtype=torch.float64, requires_grad=True)
    y = apply_node(node, [x])
    (cols,) = torch.autograd.grad(y.sum(), x)
    if node.op == "avgpool":
        window = math.prod(node.attrs["kernel"])
    else:
        window = math.prod(-(-i // o) + 1 for i, o in zip(in_shape[1:], node.attrs["output_size"]))
    up = (1.0 + _gamma(2 * window + 4, _U)) ** 2 * (1.0 + _MARGIN)
    return math.sqrt(float(y.detach().max()) * float(cols.max())) * up, window


@dataclass
class _State:
    b_t: float
    b_p: float
    e: float
    f_t: float
    f_p: float


def _dot_rounding(norm: float, abs_norm: float, reach: float, fwd: float, bias: float, fan: int, outs: int) -> float:
    """Forward error after ``fl(W ĥ + b)``: ‖W‖E + γ_{fan+1}(‖|W|‖(B + E) + ‖b‖) + (fan+1)·η·√outs."""
    return norm * fwd + _gamma(fan + 1, _U) * (abs_norm * (reach + fwd) + bias) + (fan + 1) * _ETA * math.sqrt(outs)


def _bias_norm(b: Tensor | None, shape: tuple[int, ...]) -> float:
    if b is None:
        return 0.0
    full = b.double().reshape(b.shape[0], *([1] * (len(shape) - 1))) if len(shape) > 1 else b.double()
    return float(vector_norm_bound(full.expand(shape).reshape(-1)))


@dataclass(frozen=True)
class _AffineNorms:
    """What the affine rule reads off a node's parameters (radius-free): norms, fan-in, bias norms."""

    n_t: float
    n_p: float
    n_d: float
    a_t: float
    a_p: float
    fan: int
    bn: tuple[float, float]
    bdiff: float


def _affine_norms(nt: Node, np_: Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> _AffineNorms:
    """linear / conv / affine: ‖W‖, ‖W̃‖, ‖W − W̃‖ (rounded up for the float64 difference), ‖|W|‖, ‖|W̃|‖, biases."""
    wt, wp = nt.params.get("weight", nt.params.get("scale")), np_.params.get("weight", np_.params.get("scale"))
    if nt.op == "linear":
        wt, wp = cast(Tensor, wt), cast(Tensor, wp)
        n_t, n_p = float(operator_norm(wt).value), float(operator_norm(wp).value)
        n_d = float(operator_norm(wt, minus=wp).value)
        a_t, a_p = float(abs_operator_norm_bound(wt.double())), float(abs_operator_norm_bound(wp.double()))
        fan = int(wt.shape[-1])
        bt, bp = nt.params.get("bias"), np_.params.get("bias")
        bn = (_bias_norm(bt, out_shape), _bias_norm(bp, out_shape))
        zero = torch.zeros(out_shape[0], dtype=torch.float64)
    elif nt.op == "conv":
        wt, wp = cast(Tensor, wt), cast(Tensor, wp)
        n_t, n_p = conv_operator_norm(wt, nt, in_shape), conv_operator_norm(wp, nt, in_shape)
        n_d = conv_operator_norm(wt, nt, in_shape, minus=wp)
        a_t, a_p = _conv_abs_norm(wt), _conv_abs_norm(wp)
        fan = int(wt[0].numel())
        bt, bp = nt.params.get("bias"), np_.params.get("bias")
        bn = (_bias_norm(bt, out_shape), _bias_norm(bp, out_shape))
        zero = torch.zeros(out_shape[0], dtype=torch.float64)
    else:  # affine: diag(scale) (1 when absent) and a broadcast shift
        one = torch.ones((), dtype=torch.float64)
        st = one if wt is None else wt.double()
        sp = one if wp is None else wp.double()
        n_t, n_p = float(st.abs().max()), float(sp.abs().max())
        n_d = float((st - sp).abs().max())
        a_t, a_p, fan = n_t, n_p, 1
        bt, bp = nt.params.get("shift"), np_.params.get("shift")
        zero = torch.zeros((), dtype=torch.float64)
        bn = (0.0 if bt is None else float(vector_norm_bound(bt.double().expand(out_shape).reshape(-1))),
              0.0 if bp is None else float(vector_norm_bound(bp.double().expand(out_shape).reshape(-1))))
    bt0 = zero if bt is None else bt.double()
    bp0 = zero if bp is None else bp.double()
    diff = bp0 - bt0
    if nt.op == "affine":
        bdiff = float(vector_norm_bound(diff.expand(out_shape).reshape(-1)))
    else:
        bdiff = _bias_norm(diff, out_shape)
    # float64 parameters: W − W̃ and b̃ − b were rounded once per entry (|fl(d) − d| ≤ u|d|): the error matrix has
    # ‖E‖₂ ≤ ‖E‖_F ≤ u‖D‖_F ≤ u(1 + u)‖fl(D)‖_F, and ‖d‖ ≤ ‖fl(d)‖/(1 − u)
    n_d += 2.0 * _U * _frobenius(wt, wp)
    bdiff *= 1.0 + 2.0 * _U
    return _AffineNorms(n_t, n_p, n_d, a_t, a_p, fan, bn, bdiff)


def _affine_rule(a: _AffineNorms, s: _State, out_shape: tuple[int, ...]) -> _State:
    """linear / conv / affine: the min of the two rewritings of the difference, plus the bias difference."""
    outs = math.prod(out_shape)
    e = min(a.n_p * s.e + a.n_d * s.b_t, a.n_t * s.e + a.n_d * s.b_p) + a.bdiff
    return _State(a.n_t * s.b_t + a.bn[0], a.n_p * s.b_p + a.bn[1], e,
                  _dot_rounding(a.n_t, a.a_t, s.b_t, s.f_t, a.bn[0], a.fan, outs),
                  _dot_rounding(a.n_p, a.a_p, s.b_p, s.f_p, a.bn[1], a.fan, outs))


def _frobenius(wt: Tensor | None, wp: Tensor | None) -> float:
    """An upper value of ‖fl(W − W̃)‖_F (missing scales are 1)."""
    one = torch.ones((), dtype=torch.float64)
    d = (one if wt is None else wt.double()) - (one if wp is None else wp.double())
    return float(vector_norm_bound(d.reshape(1, -1))[0]) if d.dim() else abs(float(d))


def _act_rule(act: Activation, s: _State, n: int) -> _State:
    root = math.sqrt(n)
    lip, s0 = act.lipschitz, abs(act.sigma0)
    b_t, b_p, e = lip * s.b_t + s0 * root, lip * s.b_p + s0 * root, lip * s.e
    if act.bounded:
        cap = max(abs(act.lo), abs(act.hi)) * root
        b_t, b_p, e = min(b_t, cap), min(b_p, cap), min(e, (act.hi - act.lo) * root)

    def fwd(reach: float, f: float) -> float:
        tiny = _ETA if act.ulps > 0 else 0.0
        return lip * f + act.ulps * _U * ((lip + 1.0) * (reach + f) + s0 * root) + (act.abs_error + tiny) * root

    return _State(b_t, b_p, e, fwd(s.b_t, s.f_t), fwd(s.b_p, s.f_p))


def _node_norms(nt: Node, np_: Node, shapes: dict[str, tuple[int, ...]]) -> _AffineNorms | tuple[float, int] | None:
    """The radius-free part of a node's rule (its norms), or ``None`` for a node without one."""
    if nt.op in ("linear", "conv", "affine"):
        return _affine_norms(nt, np_, shapes[nt.inputs[0]], shapes[nt.name])
    if nt.op in ("avgpool", "adaptive_avgpool"):
        return _pool_norm(nt, shapes[nt.inputs[0]])
    return None


def _node_rule(nt: Node, np_: Node, ins: list[_State], shapes: dict[str, tuple[int, ...]],
               norms: _AffineNorms | tuple[float, int] | None) -> _State:
    in_shape = shapes[nt.inputs[0]]
    out_shape = shapes[nt.name]
    s = ins[0]
    if nt.op in ("linear", "conv", "affine"):
        return _affine_rule(cast(_AffineNorms, norms), s, out_shape)
    if nt.op == "act":
        return _act_rule(nt.attrs["act"], s, math.prod(out_shape))
    if nt.op == "add":
        a, b = ins
        rnd = _U * (a.b_t + a.f_t + b.b_t + b.f_t), _U * (a.b_p + a.f_p + b.b_p + b.f_p)
        return _State(a.b_t + b.b_t, a.b_p + b.b_p, a.e + b.e, a.f_t + b.f_t + rnd[0], a.f_p + b.f_p + rnd[1])
    if nt.op == "cat":
        def rss(vals: list[float]) -> float:
            return math.sqrt(sum(v * v for v in vals))
        return _State(rss([i.b_t for i in ins]), rss([i.b_p for i in ins]), rss([i.e for i in ins]),
                      rss([i.f_t for i in ins]), rss([i.f_p for i in ins]))
    if nt.op in ("reshape", "pad", "identity"):
        return s
    if nt.op == "maxpool":
        at = nt.attrs
        m = math.prod(_multiplicity(int(n), int(k), int(st), int(p))
                      for n, k, st, p in zip(in_shape[1:], at["kernel"], at["stride"], at["padding"]))
        f = math.sqrt(m)
        return _State(f * s.b_t, f * s.b_p, f * s.e, f * s.f_t, f * s.f_p)
    if nt.op in ("avgpool", "adaptive_avgpool"):
        norm, window = cast(tuple[float, int], norms)
        outs = math.prod(out_shape)
        return _State(norm * s.b_t, norm * s.b_p, norm * s.e,
                      _dot_rounding(norm, norm, s.b_t, s.f_t, 0.0, window, outs),
                      _dot_rounding(norm, norm, s.b_p, s.f_p, 0.0, window, outs))
    raise ProbPruneError(f"certified_graph_gap: node {nt.name!r}: op {nt.op} has no rule")


def check_graph_pair(target: Graph, pruned: Graph) -> None:
    """Refuse a pair that is not two single graphs of one structure (names the mismatch)."""
    if not isinstance(target, Graph) or not isinstance(pruned, Graph):
        raise ProbPruneError("certified_graph_gap: target and pruned must be Graphs")
    if target.n_trials is not None or pruned.n_trials is not None:
        raise ProbPruneError("certified_graph_gap: graphs with a trial dim are not supported yet; bound each "
                             "member separately")
    if target.input_shape != pruned.input_shape or len(target.nodes) != len(pruned.nodes):
        raise ProbPruneError("certified_graph_gap: the pruned graph's structure differs from the target's "
                             f"(input {pruned.input_shape} vs {target.input_shape}, {len(pruned.nodes)} vs "
                             f"{len(target.nodes)} nodes)")
    for a, b in zip(target.nodes, pruned.nodes):
        if (a.name, a.op, a.inputs) != (b.name, b.op, b.inputs) or dict(a.attrs) != dict(b.attrs):
            raise ProbPruneError(f"certified_graph_gap: node {b.name!r} ({b.op}) of the pruned graph differs from "
                                 f"the target's node {a.name!r} ({a.op}) in op, inputs or attributes")
        if {k: tuple(v.shape) for k, v in a.params.items()} != {k: tuple(v.shape) for k, v in b.params.items()}:
            raise ProbPruneError(f"certified_graph_gap: node {a.name!r}: parameter names or shapes differ")


@dataclass(frozen=True, eq=False)
class GraphPairNorms:
    """The radius-free part of :func:`certified_graph_gap` for one pair of graphs — every node's operator norms,
    bias norms and pool norms — computed once by :func:`graph_pair_norms` and reused at every radius (the bound
    with them is bit for bit the bound without them).

    Attributes:
        target, pruned: the two graphs (float64, CPU) they were computed from; a bound given these norms checks
            that its graphs have this structure and exactly these parameters.
        nodes: per node name, its norms (absent for nodes without any).
    """

    target: Graph
    pruned: Graph
    nodes: dict[str, _AffineNorms | tuple[float, int]]

    def check(self, target: Graph, pruned: Graph) -> None:
        """Refuse graphs other than those the norms were computed for (structure or any parameter bit)."""
        for mine, other, what in ((self.target, target, "target"), (self.pruned, pruned, "pruned")):
            try:
                check_graph_pair(mine, other)
            except ProbPruneError:
                raise ProbPruneError(f"norms: the {what} graph is not the one the norms were computed for") from None
            a, b = mine.parameters(), other.parameters()
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                raise ProbPruneError(f"norms: the {what} graph's parameters differ from those the norms were "
                                     "computed for (graph_pair_norms(target, pruned) of this pair)")


def graph_pair_norms(target: Graph, pruned: Graph) -> GraphPairNorms:
    """The norms :func:`certified_graph_gap` needs for this pair, once (pass them as ``norms=``).

    >>> import torch
    >>> from probprune.nets.graph import Graph, Node
    >>> F = Graph([Node("fc", "linear", ("input",), params={"weight": torch.eye(2)})], (2,))
    >>> f = F.with_parameters({"fc.weight": torch.diag(torch.tensor([1.0, 0.0]))})
    >>> norms = graph_pair_norms(F, f)
    >>> certified_graph_gap(F, f, radius=3.0, norms=norms).value == certified_graph_gap(F, f, radius=3.0).value
    True
    """
    check_graph_pair(target, pruned)
    target, pruned = target.to(torch.float64, "cpu"), pruned.to(torch.float64, "cpu")
    nodes = {}
    for nt, np_ in zip(target.nodes, pruned.nodes):
        v = _node_norms(nt, np_, target.shapes)
        if v is not None:
            nodes[nt.name] = v
    return GraphPairNorms(target, pruned, nodes)


def certified_graph_gap(target: Graph, pruned: Graph, *, radius: float,
                        norms: GraphPairNorms | None = None) -> GraphBound:
    """Certified upper bound on ``sup_{‖x‖₂ ≤ r} ‖f(x) − F(x)‖₂`` for two graphs of one structure.

    Args:
        target: F.
        pruned: f: the same nodes, ops, inputs and attributes; any parameter values.
        radius: r > 0, finite.
        norms: this pair's :func:`graph_pair_norms` (computed once, reused at every radius); refused if they
            were computed for other graphs.

    Returns:
        :class:`GraphBound`; ``value`` covers the exact gap and the gap of the float64 forward passes.

    Raises:
        ProbPruneError: graphs of different structure, a trial dim, a bad radius, or a bound that overflows.

    >>> import torch
    >>> from probprune.nets.graph import Graph, Node
    >>> F = Graph([Node("fc", "linear", ("input",), params={"weight": torch.eye(2)})], (2,))
    >>> f = F.with_parameters({"fc.weight": torch.diag(torch.tensor([1.0, 0.0]))})
    >>> round(certified_graph_gap(F, f, radius=3.0).value, 6)   # ‖D‖·r
    3.0
    """
    check_graph_pair(target, pruned)
    target, pruned = target.to(torch.float64, "cpu"), pruned.to(torch.float64, "cpu")  # the bound's arithmetic
    if not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ProbPruneError(f"radius={radius!r}: must be a finite number > 0")
    r = float(radius)
    if norms is not None:
        norms.check(target, pruned)
    states: dict[str, _State] = {"input": _State(r, r, 0.0, 0.0, 0.0)}
    terms = []
    for nt, np_ in zip(target.nodes, pruned.nodes):
        nn = _node_norms(nt, np_, target.shapes) if norms is None else norms.nodes.get(nt.name)
        st = _node_rule(nt, np_, [states[i] for i in nt.inputs], target.shapes, nn)
        states[nt.name] = st
        terms.append(NodeTerm(nt.name, nt.op, st.b_t, st.b_p, st.e, st.f_t, st.f_p))
    out = states[target.output]
    m = math.prod(target.output_shape)
    exact = out.e
    value = (out.e + out.f_t + out.f_p) * (1.0 + _gamma(m + 3, _U)) * (1.0 + _gamma(16 * (len(terms) + 1), _U))
    if not math.isfinite(value):
        raise ProbPruneError("certified_graph_gap: the bound overflows float64 (weights or radius too large); refused")
    ops = sorted({n.op for n in target.nodes})
    used = [cast(Activation, n.attrs["act"]) for n in target.nodes if n.op == "act"]
    acts = sorted({f"{a.kind} (L = {a.lipschitz:.10g}, sigma(0) = {a.sigma0:.6g})" for a in used})
    assumptions = (f"input ball of radius r = {r!r} (l2, inputs and outputs flattened)",
                   f"ops: {', '.join(ops)}" + (f"; activations {', '.join(acts)}" if acts else ""),
                   "floating point: covers the exact gap and both graphs evaluated in float64 (IEEE, any summation "
                   "order, no TF32/Winograd/FFT convolution; transcendental activations within 8 ulps); a float32 "
                   "forward pass is not covered",
                   "BatchNorm read by graph_from_module is folded in float64: the bound is about the folded graph")
    return GraphBound(value=value, rounding_margin=value - exact, radius=r, terms=tuple(terms),
                      assumptions=assumptions)


def graph_search_budget(n_restarts: int, n_steps: int) -> Budget:
    """The search engine's budget of :func:`search_graph_gap`: ``4·n_restarts·n_steps`` evaluations in all.

    ``n_restarts`` starts (0 and random points on the sphere) climb ``2·n_steps`` steps (first step ``r/2``,
    cosine decay), each step a gradient and a power-method trial — as many evaluations as the former gradient and
    three trial steps per restart and step. No screening phase: on the VNN-COMP conv nets long climbs from few
    starts found more than many short ones (``benchmarks/RESULTS.md``, sixth session — search).

    Raises:
        ProbPruneError: a budget that is not an integer ≥ 1 (``n_restarts``) or ≥ 0 (``n_steps``).
    """
    for name, v, lo in (("n_restarts", n_restarts, 1), ("n_steps", n_steps, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ProbPruneError(f"{name}={v!r}: must be an integer >= {lo}")
    return Budget(n_restarts=n_restarts, n_steps=2 * n_steps, step_size=0.5, n_screen=1, screen_steps=0, power=True)


def search_graph_gap(target: Graph, pruned: Graph, *, radius: float, n_restarts: int = 8, n_steps: int = 200,
                     seed: int = 0) -> tuple[float, Tensor]:
    """A lower bound on the gap: projected ascent on ``‖f(x) − F(x)‖²`` over the ball (:mod:`probprune.search`).

    The search runs in the graphs' own dtype (float32 for ONNX models: about twice as fast as float64 on a CPU,
    and the search only has to find a good point; float64 graphs in float64). :func:`graph_search_budget` says
    how the budget is spent (random starts from the local generator ``seed``, climbing with normalised momentum
    steps and power-method trials).
    The value returned is ``‖f(x) − F(x)‖`` evaluated **in float64** at the best point, which a float64 check has
    placed inside the ball.

    Returns:
        ``(value, x)`` with ``x`` ``[*input_shape]`` float64.
    """
    check_graph_pair(target, pruned)
    budget = graph_search_budget(n_restarts, n_steps)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ProbPruneError(f"radius={radius!r}: must be a finite number > 0")
    gen = torch.Generator().manual_seed(seed)
    shape = target.input_shape
    d = math.prod(shape)
    # float32 graphs (every ONNX model) are searched in float32; float64 ones in float64
    dt = torch.float64 if any(v.dtype == torch.float64 for g in (target, pruned) for n in g.nodes
                              for v in n.params.values()) else torch.float32
    t32, p32 = target.to(dt), pruned.to(dt)

    def gaps2(z: Tensor) -> Tensor:
        zz = z.reshape(-1, *shape)
        return (p32(zz) - t32(zz)).flatten(1).square().sum(1).reshape(z.shape[:-1])

    region = Region(torch.zeros(1, d, dtype=torch.float64), float(radius))
    found = maximise(gaps2, region, budget, gen, dtype=dt)
    x = found.x[0].double().reshape(1, *shape)  # float32 → float64 is exact: still inside the ball
    with torch.no_grad():
        v = (pruned.to(torch.float64)(x) - target.to(torch.float64)(x)).flatten(1).norm(dim=1)
    return float(v[0]), x[0]
