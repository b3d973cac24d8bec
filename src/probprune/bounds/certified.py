"""A certified upper bound on the gap by layerwise perturbation, and the lower/upper sandwich.

Notation (``docs/certified.md`` has the derivation): target layers ``W_i, b_i``, pruned
layers ``W̃_i = W_i − D_i, b̃_i``; hidden outputs ``h_i = P_i(σ_i(W_i h_{i−1} + b_i))`` with
``P_i`` a non-overlapping max-pool or flatten (1-Lipschitz, ``‖P(v)‖ ≤ ‖v‖``), ``h_0 = x``,
``‖x‖ ≤ r``; the last layer has no activation. With ``e_i ≥ sup‖h̃_i − h_i‖`` and reaches
``B_i ≥ sup‖h_i‖``, ``B̃_i ≥ sup‖h̃_i‖``::

    e_0 = 0,  B_0 = B̃_0 = r
    e_i = L_i · ( min(‖W̃_i‖ e_{i−1} + ‖D_i‖ B_{i−1},  ‖W_i‖ e_{i−1} + ‖D_i‖ B̃_{i−1}) + ‖b̃_i − b_i‖ )
    B_i = min( L_i (‖W_i‖ B_{i−1} + ‖b_i‖) + |σ_i(0)| √n_i ,  √n_i  [σ bounded by 1: tanh, sigmoid] )

and the gap is at most ``e_l``. Without biases and with σ(0) = 0 this is the issue's
``e_i ≤ L_i (‖W̃_i‖ e_{i−1} + ‖D_i‖ ∏_{j<i} L_j ‖W_j‖ r)`` (or tighter by the min).
Every operator norm is exact or a certified upper value (:mod:`probprune.bounds.norms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import Tensor

from probprune.bounds.norms import NormMethod, NormValue, operator_norm
from probprune.config import GapSpec, ProbPruneError
from probprune.nets import Layer, Net, check_pair

__all__ = [
    "CertifiedBound",
    "Estimator",
    "LayerTerm",
    "LowerEstimate",
    "Sandwich",
    "certified_gap_bound",
    "lower_at",
    "sandwich",
]

_BOUNDED = ("tanh", "sigmoid")  # |σ| ≤ 1


@dataclass(frozen=True, eq=False)
class LayerTerm:
    """One layer's contribution to the certified bound (values ``[K]`` or 0-d, float64).

    Attributes:
        name: weight name (``0.weight`` …).
        norm_target: ‖W_i‖ (upper value). ``norm_pruned``: ‖W̃_i‖. ``norm_diff``: ‖D_i‖ = ‖W_i − W̃_i‖.
        lipschitz: L_i of the activation after this layer (1 for the last layer).
        sigma0: σ_i(0) (0 except sigmoid: 1/2).
        bias_norm: ‖b_i‖ over the layer output (a conv bias counted at every position).
        bias_diff: ‖b̃_i − b_i‖ likewise (0 when the biases are unchanged, as after pruning).
        reach_target, reach_pruned: B_i, B̃_i — bounds on ‖h_i‖, ‖h̃_i‖ over the ball.
        error: e_i — bound on ‖h̃_i − h_i‖ over the ball.
    """

    name: str
    norm_target: NormValue
    norm_pruned: NormValue
    norm_diff: NormValue
    lipschitz: float
    sigma0: float
    bias_norm: Tensor
    bias_diff: Tensor
    reach_target: Tensor
    reach_pruned: Tensor
    error: Tensor

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form."""
        return {"name": self.name, "norm_target": self.norm_target.to_dict(),
                "norm_pruned": self.norm_pruned.to_dict(), "norm_diff": self.norm_diff.to_dict(),
                "lipschitz": self.lipschitz, "sigma0": self.sigma0, "bias_norm": self.bias_norm.tolist(),
                "bias_diff": self.bias_diff.tolist(), "reach_target": self.reach_target.tolist(),
                "reach_pruned": self.reach_pruned.tolist(), "error": self.error.tolist()}


@dataclass(frozen=True, eq=False)
class CertifiedBound:
    """A certified upper bound on ``sup_{‖x‖ ≤ r} ‖f(x) − F(x)‖₂``.

    Attributes:
        value: ``[K]`` or 0-d float64, ≥ the true gap.
        terms: per-layer :class:`LayerTerm`.
        exact: whether every operator norm used was exact (else some are certified upper values).
        assumptions: what the bound relies on, in words.
        radius: r.
    """

    value: Tensor
    terms: tuple[LayerTerm, ...]
    exact: bool
    assumptions: tuple[str, ...]
    radius: float

    @property
    def n_norms(self) -> int:
        """Number of operator norms computed (three per layer)."""
        return 3 * len(self.terms)

    @property
    def n_exact(self) -> int:
        """How many of them were exact."""
        return sum(int(n.exact) for t in self.terms for n in (t.norm_target, t.norm_pruned, t.norm_diff))

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form."""
        return {"value": self.value.tolist(), "exact": self.exact, "n_exact": self.n_exact,
                "n_norms": self.n_norms, "radius": self.radius, "assumptions": list(self.assumptions),
                "terms": [t.to_dict() for t in self.terms]}


def _sigma0(layer: Layer) -> float:
    return float(layer.activation(torch.zeros(1, dtype=torch.float64))[0])


def _out_positions(layer: Layer, in_shape: tuple[int, ...]) -> int:
    """Spatial positions of a conv layer's output before pooling (1 for a linear layer)."""
    if layer.conv is None:
        return 1
    c = layer.conv
    h = (in_shape[-2] + 2 * c.pad - c.kernel) // c.stride + 1
    w = (in_shape[-1] + 2 * c.pad - c.kernel) // c.stride + 1
    return h * w


def _bias_norm(b: Tensor | None, positions: int, like: Tensor) -> Tensor:
    if b is None:
        return torch.zeros_like(like)
    return b.double().norm(dim=-1) * math.sqrt(positions)


def certified_gap_bound(target: Net, pruned: Net, radius: float, norm_method: NormMethod = "auto") -> CertifiedBound:
    """Certified upper bound on the gap ``sup_{‖x‖ ≤ r} ‖f(x) − F(x)‖₂`` (module docstring).

    Args:
        target: F (single or ensemble ``[K]``).
        pruned: f, same architecture and trial dim; any weights (pruned or not) and biases.
        radius: r > 0 (finite).
        norm_method: for linear layers, see :func:`~probprune.bounds.norms.matrix_norm_bound`.

    Returns:
        :class:`CertifiedBound` with ``value`` ``[K]`` (or 0-d) and per-layer terms.

    Assumptions: activations L-Lipschitz elementwise (σ(0) ≠ 0 allowed); max-pools
    non-overlapping; biases allowed and may differ. Exact arithmetic in the networks'
    forward pass (float rounding there is not covered).

    >>> import torch
    >>> from probprune.config import NetSpec
    >>> F = Net.from_weights(NetSpec(widths=(2, 2)), [torch.eye(2)])
    >>> f = Net.from_weights(NetSpec(widths=(2, 2)), [torch.diag(torch.tensor([1.0, 0.0]))])
    >>> round(float(certified_gap_bound(F, f, 3.0).value), 6)   # ‖D‖·r
    3.0
    """
    check_pair(target, pruned)
    _check_radius(radius)
    spec = target.spec
    feats = spec.feature_shapes()
    k = target.n_trials
    like = torch.zeros(() if k is None else (k,), dtype=torch.float64, device=target.device)
    err = like.clone()
    reach_t = like + radius
    reach_p = like + radius
    terms: list[LayerTerm] = []
    all_exact = True
    names = spec.layer_names()
    n_layers = len(target.layers)
    for i, (lt, lp, name) in enumerate(zip(target.layers, pruned.layers, names)):
        in_shape = feats[i]
        conv = lt.conv
        ishape = in_shape if conv is not None else None
        w_t, w_p = lt.weight, lp.weight
        n_t = operator_norm(w_t, conv, ishape, norm_method)
        n_p = operator_norm(w_p, conv, ishape, norm_method)
        n_d = operator_norm(w_t, conv, ishape, norm_method, minus=w_p)  # D = W − W̃
        all_exact = all_exact and n_t.exact and n_p.exact and n_d.exact
        pos = _out_positions(lt, in_shape)
        bn_t = _bias_norm(lt.bias, pos, like)
        bn_p = _bias_norm(lp.bias, pos, like)
        if lt.bias is None and lp.bias is None:
            bdiff = like.clone()
        else:
            bt = torch.zeros_like(cast(Tensor, lp.bias)) if lt.bias is None else lt.bias
            bp = torch.zeros_like(bt) if lp.bias is None else lp.bias
            bdiff = _bias_norm(bp - bt, pos, like)
        lip = lt.activation.lipschitz
        s0 = _sigma0(lt)
        pre = torch.minimum(n_p.value * err + n_d.value * reach_t, n_t.value * err + n_d.value * reach_p)
        err = lip * (pre + bdiff)
        units = math.prod(feats[i + 1]) if i + 1 < n_layers else spec.output_dim
        new_t = lip * (n_t.value * reach_t + bn_t) + abs(s0) * math.sqrt(units)
        new_p = lip * (n_p.value * reach_p + bn_p) + abs(s0) * math.sqrt(units)
        if lt.activation.name in _BOUNDED and i < n_layers - 1:
            cap = math.sqrt(units)
            new_t, new_p = new_t.clamp_max(cap), new_p.clamp_max(cap)
            # entries of h_i, h̃_i lie in [−1, 1] (tanh) or (0, 1) (sigmoid)
            err = err.clamp_max((2.0 if lt.activation.name == "tanh" else 1.0) * cap)
        reach_t, reach_p = new_t, new_p
        terms.append(LayerTerm(name=name, norm_target=n_t, norm_pruned=n_p, norm_diff=n_d, lipschitz=lip,
                               sigma0=s0, bias_norm=bn_t, bias_diff=bdiff, reach_target=reach_t,
                               reach_pruned=reach_p, error=err))
    act = target.layers[0].activation if n_layers > 1 else None
    assumptions = [f"input ball of radius r = {radius!r} (l2, conv inputs flattened)"]
    if act is not None:
        s0 = _sigma0(target.layers[0])
        assumptions.append(f"activation {act.name}: {act.lipschitz}-Lipschitz, sigma(0) = {s0}"
                           + (" (reach includes |sigma(0)|·sqrt(n))" if s0 != 0 else ""))
    assumptions.append("biases: " + ("present; they cancel in D but enter the reach via ||b|| and the error "
                                     "via ||b~ - b||" if spec.bias else "none"))
    if any(c.pool > 1 for c in spec.convs):
        assumptions.append("max-pool: non-overlapping, 1-Lipschitz and norm-non-increasing")
    methods = sorted({n.method for t in terms for n in (t.norm_target, t.norm_pruned, t.norm_diff)})
    assumptions.append(f"operator norms: {'all exact' if all_exact else 'some certified upper values'} "
                       f"({', '.join(methods)})")
    assumptions.append("exact arithmetic in the forward pass; norms in float64 with a 1e-9 relative margin")
    return CertifiedBound(value=err, terms=tuple(terms), exact=all_exact, assumptions=tuple(assumptions),
                          radius=float(radius))


# ---------------------------------------------------------------------------- the sandwich


class LowerEstimate(Protocol):
    """What an estimator returns: ``value`` ``[K]``/0-d and the maximiser ``x`` ``[K, *input]``/``[*input]``."""

    @property
    def value(self) -> Tensor: ...

    @property
    def x(self) -> Tensor: ...


Estimator = Callable[[Net, Net, GapSpec, torch.Generator], LowerEstimate]
"""``probprune.gap.sup_gap`` (``bounds`` may not import ``gap``, so callers pass it in)."""


@dataclass(frozen=True, eq=False)
class Sandwich:
    """The gap pinned from both sides: ``lower ≤ gap ≤ upper``.

    Attributes:
        lower: ``[K]``/0-d float64: ``‖f(x*) − F(x*)‖`` re-evaluated in float64 at the estimator's
            maximiser ``x*`` (inside the ball), hence a true lower bound.
        upper: the certified bound's value.
        ratio: upper / lower (1 where upper = 0: the nets agree everywhere; inf where lower = 0 < upper).
        exact_norms: whether every operator norm was exact.
        n_exact, n_norms: exact norms / norms computed.
        x: the maximiser.
        bound: the full :class:`CertifiedBound`.
        n_evals: evaluations the estimator spent per member.
    """

    lower: Tensor
    upper: Tensor
    ratio: Tensor
    exact_norms: bool
    n_exact: int
    n_norms: int
    x: Tensor
    bound: CertifiedBound
    n_evals: int

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (without the maximiser)."""
        return {"lower": self.lower.tolist(), "upper": self.upper.tolist(), "ratio": self.ratio.tolist(),
                "exact_norms": self.exact_norms, "n_exact": self.n_exact, "n_norms": self.n_norms,
                "n_evals": self.n_evals, "bound": self.bound.to_dict()}


def lower_at(target: Net, pruned: Net, x: Tensor, radius: float) -> Tensor:
    """``‖f(x) − F(x)‖`` in float64 at one point per member, ``x`` projected into the ball first.

    Args:
        target, pruned: F and f (single or ensembles ``[K]``).
        x: ``[K, *input]`` or ``[*input]``.
        radius: r.

    Returns:
        ``[K]`` or 0-d float64 (a true lower bound on the gap).
    """
    check_pair(target, pruned)
    k = target.n_trials
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
    x64 = x.detach().to(device=target.device, dtype=torch.float64)
    lead = 1 if k is not None else 0
    flat = x64.reshape(*x64.shape[:lead], -1)
    norm = flat.norm(dim=-1)
    x64 = x64 * (radius / norm.clamp_min(radius)).reshape(*norm.shape, *([1] * (x64.dim() - lead)))
    xin = x64.unsqueeze(lead)  # one point per member: [K, 1, …] or [1, …]
    diff = cast(Tensor, p64.forward(xin)) - cast(Tensor, t64.forward(xin))
    return diff.norm(dim=-1).squeeze(-1)


def sandwich(
    target: Net,
    pruned: Net,
    gap_spec: GapSpec,
    generator: torch.Generator,
    *,
    estimator: Estimator,
    norm_method: NormMethod = "auto",
) -> Sandwich:
    """Lower (empirical sup, re-evaluated in float64) and certified upper bound on the gap.

    Args:
        target, pruned: F and f (single or ensembles ``[K]``).
        gap_spec: estimator budget and the radius r.
        generator: the estimator's randomness.
        estimator: ``probprune.gap.sup_gap`` (passed in: ``bounds`` does not import ``gap``).
        norm_method: see :func:`~probprune.bounds.norms.matrix_norm_bound`.
    """
    check_pair(target, pruned)
    if not isinstance(gap_spec, GapSpec):
        raise ProbPruneError(f"gap_spec: expected a GapSpec, got {type(gap_spec).__name__}")
    bound = certified_gap_bound(target, pruned, gap_spec.radius, norm_method)
    est = estimator(target, pruned, gap_spec, generator)
    lower = lower_at(target, pruned, est.x, gap_spec.radius)
    upper = bound.value
    ratio = torch.where(upper == 0, torch.ones_like(upper), upper / lower)
    return Sandwich(lower=lower, upper=upper, ratio=ratio, exact_norms=bound.exact, n_exact=bound.n_exact,
                    n_norms=bound.n_norms, x=est.x, bound=bound, n_evals=int(getattr(est, "n_evals", 0)))


def _check_radius(radius: float) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) \
            or radius <= 0:
        raise ProbPruneError(f"radius={radius!r}: must be a finite number > 0")


