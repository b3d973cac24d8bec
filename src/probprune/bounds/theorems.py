"""The two theorems of the probabilistic bound, at one fixed probability per event (``docs/theory.md`` §4–§5).

* **Theorem O** (§4, "operator route", :func:`theorem_o`): layerwise propagation with
  high-probability operator-norm bounds on every ``W_i``, ``W̃_i``, ``D_i``. FCNs and CNNs.
* **Theorem N** (§5, "η-net route", :func:`theorem_n`, FCNs): the errors propagated at the points
  of an η-net of the input ball, each layer contributing its *typical* size on a vector
  independent of it; extended to the ball by a Lipschitz argument.

Both take the per-layer entry laws (:func:`layer_laws`) and the probability ``d_ev`` given to each
event; splitting δ into events and choosing between the theorems is
:func:`probprune.bounds.probabilistic.probabilistic_bound`'s job.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from probprune.bounds.concentration import chernoff_sq, conv_op_bound, forward_fixed, op_norm_bound, subgauss_fixed
from probprune.bounds.entries import EntryStats, entry_stats
from probprune.config import LawSpec, NetSpec, layer_scale

__all__ = ["ETA_GRID", "BoundTerm", "LayerLaw", "layer_laws", "theorem_n", "theorem_o"]

ETA_GRID: tuple[float, ...] = tuple(10.0 ** (-k / 4.0) for k in range(2, 49))  # 10^-0.5 … 10^-12


@dataclass(frozen=True)
class BoundTerm:
    """One layer's share of a bound (all norms are high-probability upper bounds).

    Attributes:
        name: parameter name (``0.weight`` …).
        shape: weight shape.
        a: the paper's scale a_i.
        level: ρ_i (magnitude) or p_i (random).
        norm_target, norm_pruned, norm_diff: bounds on ‖W_i‖, ‖W̃_i‖, ‖D_i‖ (operator norms).
        gain_target, gain_pruned, gain_diff: factors actually used in the recursion for ‖x_i‖ = ‖σ(W_i x_{i−1})‖
            (per ‖x_{i−1}‖), ‖W̃_i e_{i−1}‖ (per ‖e_{i−1}‖), ‖D_i x_{i−1}‖ (per ‖x_{i−1}‖).
        route_target, route_pruned, route_diff: how each gain was bounded: ``op:<method>`` (operator norm),
            ``net`` (fixed-vector bound on the η-net) or ``joint`` (W̃e − Dx in one piece).
        reach_target: bound on sup ‖x_i‖ (i < l) over the net points (or the ball, Theorem O).
        error: bound on ‖e_i‖ (hidden) or on the gap at the net points (last layer).
        contribution: the part of ε caused by pruning this layer (they sum to ε − lipschitz_term).
    """

    name: str
    shape: tuple[int, ...]
    a: float
    level: float
    norm_target: float
    norm_pruned: float
    norm_diff: float
    gain_target: float
    gain_pruned: float
    gain_diff: float
    route_target: str
    route_pruned: str
    route_diff: str
    reach_target: float
    error: float
    contribution: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class LayerLaw:
    name: str
    shape: tuple[int, ...]
    m: int  # output dim (rows) of the linear map
    n: int  # input dim
    a: float
    level: float
    is_conv: bool
    n_freq: int
    target: EntryStats
    pruned: EntryStats
    diff: EntryStats


def layer_laws(spec: NetSpec, law: LawSpec, method: str, levels: list[float], rescale: bool,
            trunc_z: float) -> list[LayerLaw]:
    out: list[LayerLaw] = []
    shapes = spec.weight_shapes()
    feats = spec.feature_shapes()
    names = spec.layer_names()
    n_conv = len(spec.convs) if spec.kind == "cnn" else 0
    for i, (shape, feat, name, lv) in enumerate(zip(shapes, feats, names, levels)):
        a = layer_scale(shape, law.scale)
        args = (law, a)
        w = entry_stats(*args, "target", method, lv, rescale, trunc_z)  # type: ignore[arg-type]
        kept = entry_stats(*args, "pruned", method, lv, rescale, trunc_z)  # type: ignore[arg-type]
        rem = entry_stats(*args, "diff", method, lv, rescale, trunc_z)  # type: ignore[arg-type]
        if i < n_conv:
            conv = spec.convs[i]
            _, hh, ww = feat
            if conv.padding_mode == "zeros":
                gh, gw = hh + 2 * conv.pad, ww + 2 * conv.pad
            else:
                gh, gw = hh, ww
            out.append(LayerLaw(name, tuple(shape), shape[0], shape[1], a, lv, True, gh * gw, w, kept, rem))
        else:
            out.append(LayerLaw(name, tuple(shape), shape[0], shape[1], a, lv, False, 1, w, kept, rem))
    return out


def _op(layer: LayerLaw, st: EntryStats, delta: float) -> tuple[float, str]:
    if layer.is_conv:
        return conv_op_bound(layer.m, layer.n, layer.shape[2], layer.n_freq, st, delta)
    return op_norm_bound(layer.m, layer.n, st, delta)


def theorem_o(layers: list[LayerLaw], lips: list[float], radius: float, d_ev: float
               ) -> tuple[float, list[BoundTerm]]:
    """Theorem O: ε = r Σ_i (Π_{j>i} L_j‖W̃_j‖) L_i ‖D_i‖ (Π_{j<i} L_j‖W_j‖) (with L_l = 1)."""
    ops = [(_op(ly, ly.target, d_ev), _op(ly, ly.pruned, d_ev), _op(ly, ly.diff, d_ev)) for ly in layers]
    x_norm, err = radius, 0.0
    xs: list[float] = []
    errs: list[float] = []
    for lip, (w, k, d) in zip(lips, ops):
        err = lip * (k[0] * err + d[0] * x_norm)
        x_norm = lip * w[0] * x_norm
        xs.append(x_norm)
        errs.append(err)
    terms = _terms(layers, lips, ops, [(lip * w[0], k[0], d[0], "op", "op", "op")
                                       for lip, (w, k, d) in zip(lips, ops)], xs, errs, radius)
    return errs[-1], terms


_Op = tuple[float, str]


def _terms(layers: list[LayerLaw], lips: list[float], ops: Sequence[tuple[_Op, _Op, _Op]],
           gains: list[tuple[float, float, float, str, str, str]], xs: list[float], errs: list[float],
           radius: float) -> list[BoundTerm]:
    n = len(layers)
    out: list[BoundTerm] = []
    for i, ly in enumerate(layers):
        x_prev = radius if i == 0 else xs[i - 1]
        c = lips[i] * gains[i][2] * x_prev
        for j in range(i + 1, n):
            c *= lips[j] * gains[j][1]
        w, k, d = ops[i]
        gx, ge, gd, rx, re_, rd = gains[i]
        out.append(BoundTerm(ly.name, ly.shape, ly.a, ly.level, w[0], k[0], d[0], gx, ge, gd,
                             f"{rx}:{w[1]}" if rx == "op" else rx, f"{re_}:{k[1]}" if re_ == "op" else re_,
                             f"{rd}:{d[1]}" if rd == "op" else rd, xs[i], errs[i], c))
    return out


def theorem_n(layers: list[LayerLaw], lips: list[float], gamma: float, lip_act: float, radius: float, d0: int,
               d_ev: float, eta: float, relu: bool = False, joint: bool = False
               ) -> tuple[float, float, float, list[BoundTerm]]:
    """Theorem N at one η: returns (ε, lipschitz term, log N, terms).

    ``relu``: hidden activation is ReLU (§3.6 half-χ² bounds for ‖x_i‖ and ‖e_i‖);
    ``joint``: each entry of W̃ and D is nonzero in at most one of them (no rescale), so
    ``W̃e − Dx`` has proxy ``ν̃²‖e‖² + ν_D²‖x‖²`` (§3.6); otherwise ``(ν̃‖e‖ + ν_D‖x‖)²``.
    """
    log_n = d0 * math.log1p(2.0 / eta)
    xi = log_n + math.log(1.0 / d_ev)
    ops = [(_op(ly, ly.target, d_ev), _op(ly, ly.pruned, d_ev), _op(ly, ly.diff, d_ev)) for ly in layers]
    x_norm, err = radius, 0.0
    xs: list[float] = []
    errs: list[float] = []
    gains: list[tuple[float, float, float, str, str, str]] = []
    nl = len(layers)
    for i, (ly, lip, (w, k, d)) in enumerate(zip(layers, lips, ops)):
        hidden = i < nl - 1
        fe_net = subgauss_fixed(ly.m, ly.pruned.proxy, xi)
        fd_net = subgauss_fixed(ly.m, ly.diff.proxy, xi)
        ge, re_ = (k[0], "op") if k[0] <= fe_net else (fe_net, "net")
        gd, rd = (d[0], "op") if d[0] <= fd_net else (fd_net, "net")
        if hidden:
            fx_net = forward_fixed(ly.m, ly.target, gamma, lip_act, xi)
            if relu:
                fx_net = min(fx_net, math.sqrt(ly.target.proxy * chernoff_sq(ly.m, xi, True)))
            gx, rx = (lip * w[0], "op") if lip * w[0] <= fx_net else (fx_net, "net")
        else:
            gx, rx = w[0], "op"
        sum_form = lip * (ge * err + gd * x_norm)
        # the error vector u = W̃e − Dx bounded in one piece at the net points (§3.6)
        ke, kd = math.sqrt(ly.pruned.proxy) * err, math.sqrt(ly.diff.proxy) * x_norm
        kappa = math.hypot(ke, kd) if joint else ke + kd
        one = kappa * math.sqrt(chernoff_sq(ly.m, xi, relu and hidden)) * (1.0 if (relu and hidden) else lip)
        if one < sum_form:
            r = one / sum_form
            ge, gd, re_, rd = ge * r, gd * r, "joint", "joint"
            err = one
        else:
            err = sum_form
        x_norm = gx * x_norm
        xs.append(x_norm)
        errs.append(err)
        gains.append((gx, ge, gd, rx, re_, rd))
    lip_f = math.prod(lip * o[0][0] for lip, o in zip(lips, ops))
    lip_pruned = math.prod(lip * o[1][0] for lip, o in zip(lips, ops))
    lip_term = eta * radius * (lip_f + lip_pruned)
    terms = _terms(layers, lips, ops, gains, xs, errs, radius)
    return errs[-1] + lip_term, lip_term, log_n, terms
