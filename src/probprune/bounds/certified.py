"""A certified upper bound on the gap by layerwise perturbation, and a provable lower value.

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

Floating point (issue 13). The bound is for the networks *as evaluated in floating point*:
``value ≥ sup_{‖x‖ ≤ r} ‖fl(f(x)) − fl(F(x))‖₂`` where ``fl`` is the forward pass in the
weights' dtype (float32 or float64; or ``forward_dtype``), and also ≥ the exact-arithmetic gap
and the gap of a forward pass in any more precise IEEE format (the margin is monotone in the
unit roundoff u). It is ``(e_l + M_f + M_F)·(1 + γ_{m+3})·(1 + 16(l+1)·u₆₄)`` with

* ``e_l``: the recursion above in exact arithmetic, with every ingredient an upper value:
  operator norms (:mod:`~probprune.bounds.norms`, differences ``W − W̃`` formed in float64
  from both operands cast first, and scaled by powers of two against under/overflow), bias
  norms ``‖b‖`` and ``‖b̃ − b‖`` (the difference formed in float64, the norm scaled and
  rounded up by :func:`~probprune.bounds.norms.vector_norm_bound`);
* ``M_f, M_F`` (``CertifiedBound.rounding_margin`` holds their total effect): a rigorous bound on
  ``‖fl(N(x)) − N(x)‖`` over the ball, by the standard error analysis of a dot product of
  length n, ``|fl(wᵀx + b) − (wᵀx + b)| ≤ γ_{n+1}(|w|ᵀ|x| + |b|)`` in any summation order, with or
  without FMA, the bias added inside or after (``γ_n = n·u/(1 − n·u)``), plus ``(n+1)·η`` per
  output for underflow (η the smallest subnormal). Layer by layer, with ``E_0 = 0`` (the input
  is taken as given in the dtype), ``A_i ≥ ‖|W_i|‖₂``
  (:func:`~probprune.bounds.norms.abs_operator_norm_bound`) and ``S_i ≥ ‖σ_i(z_i)‖`` before pooling::

      Δz_i = ‖W_i‖ E_{i−1} + γ_{n_i+1}(A_i (B_{i−1} + E_{i−1}) + ‖b_i‖) + (n_i+1)·η·√p_i
      E_i  = L_i Δz_i + c_σ u (S_i + L_i Δz_i) + [c_σ > 0]·η·√p_i

  (``p_i`` outputs before pooling; max-pool and flatten are exact and 1-Lipschitz). ``c_σ``:
  0 for relu/identity (exact), 1 for leaky_relu (one product), 16 for tanh/sigmoid (the library
  functions are assumed accurate to 8 ulps; CPU SLEEF and CUDA libdevice are within 1–4). For
  tanh/sigmoid, ``E_i`` is also capped by the range (entries of both in [−1, 1] or [0, 1]).
  Two bitwise identical networks compute identical outputs (deterministic kernels), so their
  margin is 0;
* ``(1 + γ_{m+3})`` covers the gap's own norm computed in that dtype (m outputs; the difference
  and the sum of squares rounded), and ``(1 + 16(l+1)u₆₄)`` the float64 arithmetic of the
  recursion itself (positive terms, ≤ 8 roundings per layer on any path).

Assumed: IEEE arithmetic with round-to-nearest in the products and convolutions, i.e. sums of
products (CPU; CUDA with TF32 off and direct or GEMM-based convolution algorithms). TF32 tensor
cores are covered only with ``tf32=True`` (operands rounded to 10 mantissa bits: γ_{n+1} becomes
``(1 + 2^−10)²(1 + γ_{n+1}) − 1``); not covered: float16/bfloat16 matmul modes and Winograd/FFT
convolution algorithms.
A bound that overflows float64 is refused.

The lower value (:func:`lower_at`, the sandwich of :func:`probprune.runner.gap.gap_sandwich`) evaluates
both networks in float64 at a point provably inside the ball: a true lower value of the
exact-arithmetic gap up to float64 rounding, which the float32/float64 margin above covers, so
``lower ≤ upper`` always.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from probprune.bounds.norms import (
    NormMethod,
    NormValue,
    _gamma,
    abs_operator_norm_bound,
    operator_norm,
    vector_norm_bound,
)
from probprune.config import NetSpec, ProbPruneError
from probprune.nets import Layer, Net, check_pair

__all__ = [
    "CertifiedBound",
    "LayerTerm",
    "PairNorms",
    "certified_gap_bound",
    "lower_at",
    "pair_norms",
]

_BOUNDED = ("tanh", "sigmoid")  # |σ| ≤ 1
_U64 = 2.0 ** -53
_UNIT = {torch.float32: 2.0 ** -24, torch.float64: _U64}
"""Unit roundoff u of the float dtypes a forward pass may run in."""
_TF32 = 2.0 ** -10
"""Relative error of one float32 operand rounded (or truncated) to TF32's 10 mantissa bits."""
_TINY = {torch.float32: 2.0 ** -149, torch.float64: 2.0 ** -1074}
"""Smallest subnormal η: the absolute error of one underflowing product."""
_ACT_ULPS = {"relu": 0.0, "identity": 0.0, "leaky_relu": 1.0, "tanh": 16.0, "sigmoid": 16.0}
"""c_σ: relative rounding error of the activation in units of u (module docstring)."""


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
        value: ``[K]`` or 0-d float64, ≥ the true gap, in floating point (module docstring).
        terms: per-layer :class:`LayerTerm` (their ``error`` is the exact-arithmetic e_i).
        exact: whether every operator norm used was exact (else some are certified upper values).
        assumptions: what the bound relies on, in words.
        radius: r.
        rounding_margin: ``[K]``/0-d float64: ``value − e_l``, what covers the forward passes'
            rounding (and the float64 arithmetic of the bound); 0 for identical networks.
        forward_dtype: the dtype whose forward pass the bound covers (``float32``/``float64``).
    """

    value: Tensor
    terms: tuple[LayerTerm, ...]
    exact: bool
    assumptions: tuple[str, ...]
    radius: float
    rounding_margin: Tensor | None = None
    forward_dtype: str = "float64"

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
                "rounding_margin": None if self.rounding_margin is None else self.rounding_margin.tolist(),
                "forward_dtype": self.forward_dtype, "terms": [t.to_dict() for t in self.terms]}


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
    """Upper value of ‖b‖ over the layer output (a conv bias repeated at ``positions`` places)."""
    if b is None:
        return torch.zeros_like(like)
    return vector_norm_bound(b) * (math.sqrt(positions) * (1.0 + 2.0 * _U64))


def _unit(dtype: torch.dtype, what: str) -> float:
    if dtype not in _UNIT:
        raise ProbPruneError(f"{what}: dtype {dtype} is not supported (float32 or float64 only)")
    return _UNIT[dtype]


def _same(a: Tensor | None, b: Tensor | None, lead: int) -> Tensor | bool:
    """Whether two parameters are bitwise equal, per member (``[K]`` bool) or overall."""
    if a is None or b is None:
        return a is None and b is None
    eq = a == b
    return eq.flatten(lead).all(dim=-1) if lead else bool(eq.all())


def _check_forward_dtype(nets: tuple[Net, ...], dtype: torch.dtype) -> None:
    """Refuse a forward dtype in which some weight or bias is not exactly representable."""
    for net in nets:
        for name, layer in zip(net.spec.layer_names(), net.layers):
            for what, t in ((name, layer.weight), (name.replace("weight", "bias"), layer.bias)):
                if t is not None and t.dtype != dtype and not bool((t.to(dtype).to(t.dtype) == t).all()):
                    raise ProbPruneError(f"forward_dtype={str(dtype).removeprefix('torch.')}: {what} is not "
                                         "exactly representable in it (the bound would be for other weights)")


@dataclass(frozen=True)
class _LayerShape:
    """What the recursion and the rounding analysis read off one layer's structure (module docstring)."""

    ishape: tuple[int, ...] | None  # the input shape of a conv layer (None: linear)
    pos: int  # output positions before pooling (1 for a linear layer)
    fan_in: int  # dot-product length n_i
    root: float  # √(outputs before pooling)
    units: int  # outputs after pooling
    lip: float  # L_i
    s0: float  # σ_i(0)
    c_act: float  # c_σ: the activation's rounding in units of u
    bounded: bool  # a tanh/sigmoid hidden layer: entries in [−1, 1] or (0, 1)
    span: float  # the length of that range: 2 (tanh) or 1 (sigmoid)


def _layer_shape(layer: Layer, in_shape: tuple[int, ...], units: int, last: bool) -> _LayerShape:
    conv, w = layer.conv, layer.weight
    pos = _out_positions(layer, in_shape)
    if conv is None:
        fan_in, pre_units = int(w.shape[-1]), int(w.shape[-2])
    else:
        fan_in, pre_units = int(w.shape[-3]) * conv.kernel * conv.kernel, int(w.shape[-4]) * pos
    act = layer.activation.name
    return _LayerShape(None if conv is None else in_shape, pos, fan_in, math.sqrt(pre_units), units,
                       layer.activation.lipschitz, _sigma0(layer), _ACT_ULPS[act],  # c_σ = 0 after the output layer
                       act in _BOUNDED and not last, 2.0 if act == "tanh" else 1.0)


def _bias_norms(lt: Layer, lp: Layer, positions: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Upper values of ‖b_i‖, ‖b̃_i‖ and ‖b̃_i − b_i‖ (the difference formed in float64) over the layer output."""
    bn_t = _bias_norm(lt.bias, positions, like)
    bn_p = _bias_norm(lp.bias, positions, like)
    if lt.bias is None and lp.bias is None:
        return bn_t, bn_p, like.clone()
    bt = torch.zeros_like(cast(Tensor, lp.bias)) if lt.bias is None else lt.bias
    bp = torch.zeros_like(bt) if lp.bias is None else lp.bias
    return bn_t, bn_p, _bias_norm(bp.double() - bt.double(), positions, like)


def _forward_error(sh: _LayerShape, a_abs: Tensor, fe: Tensor, norm: Tensor, bnorm: Tensor, reach: Tensor,
                   rounding: tuple[float, float], tf32: bool) -> Tensor:
    """E_i of one network from E_{i−1} (module docstring): dot products of length fan_in (+ the bias), then σ.

    ``a_abs`` is that network's ‖|W_i|‖ (upper value), ``norm``/``bnorm``/``reach`` its ‖W_i‖, ‖b_i‖, B_{i−1};
    ``rounding`` = (u, η) of its forward dtype.
    """
    u, eta = rounding
    gam = _gamma(sh.fan_in + 1, u)
    if tf32 and u > _U64:
        gam = (1.0 + _TF32) ** 2 * (1.0 + gam) - 1.0
    dz = norm * fe + gam * (a_abs * (reach + fe) + bnorm) + (sh.fan_in + 1) * eta * sh.root
    s_pre = sh.lip * (norm * reach + bnorm) + abs(sh.s0) * sh.root  # ≥ ‖σ(z)‖ before pooling
    if sh.bounded:
        s_pre = s_pre.clamp_max(sh.root)
    e = sh.lip * dz + sh.c_act * u * (s_pre + sh.lip * dz) + (eta * sh.root if sh.c_act > 0 else 0.0)
    if sh.bounded:
        e = e.clamp_max(sh.span * math.sqrt(sh.units))
    return e


@dataclass(frozen=True, eq=False)
class PairNorms:
    """The operator norms of one (target, pruned) pair, computed once (:func:`pair_norms`) and reused by every
    :func:`certified_gap_bound` of that pair at any radius: the recursion then only rescales.

    Attributes:
        norm_method: the method they were computed with.
        spec: the target's architecture (the conv layers' strides and paddings enter the norms).
        weights: per layer the target's and the pruned net's weight tensors they were computed from (a bound
            given these norms checks, bit for bit, that its networks have exactly these weights).
        layers: per layer ``(‖W‖, ‖W̃‖, ‖W − W̃‖, ‖|W|‖, ‖|W̃|‖)`` — the same values, computed by the same calls,
            as the bound computes without a cache (so a cached bound equals the uncached one bit for bit).
    """

    norm_method: str
    spec: NetSpec
    weights: tuple[tuple[Tensor, Tensor], ...]
    layers: tuple[tuple[NormValue, NormValue, NormValue, Tensor, Tensor], ...]

    def check(self, target: Net, pruned: Net, norm_method: str) -> None:
        """Refuse networks (or a norm method) other than those the norms were computed for."""
        if norm_method != self.norm_method or target.spec != self.spec:
            raise ProbPruneError(f"norms: computed for norm_method={self.norm_method!r} and the architecture "
                                 f"{self.spec.to_arch()}, not {norm_method!r} and {target.spec.to_arch()}")
        for i, ((wt, wp), lt, lp) in enumerate(zip(self.weights, target.layers, pruned.layers)):
            for w, layer in ((wt, lt), (wp, lp)):
                v = layer.weight
                if v is not w and (v.dtype != w.dtype or v.shape != w.shape or v.device != w.device
                                   or not torch.equal(v, w)):
                    raise ProbPruneError(f"norms: layer {i} of these networks differs from the pair the norms "
                                         "were computed for (pair_norms(target, pruned) of this pair)")


def _layer_norms(lt: Layer, lp: Layer, ishape: tuple[int, ...] | None, norm_method: NormMethod
                 ) -> tuple[NormValue, NormValue, NormValue, Tensor, Tensor]:
    n_t = operator_norm(lt.weight, lt.conv, ishape, norm_method)
    n_p = operator_norm(lp.weight, lt.conv, ishape, norm_method)
    n_d = operator_norm(lt.weight, lt.conv, ishape, norm_method, minus=lp.weight)  # D = W − W̃ in float64
    return (n_t, n_p, n_d, abs_operator_norm_bound(lt.weight, lt.conv, ishape),
            abs_operator_norm_bound(lp.weight, lp.conv, ishape))


def pair_norms(target: Net, pruned: Net, norm_method: NormMethod = "auto") -> PairNorms:
    """The operator norms :func:`certified_gap_bound` needs for this pair, once (pass them as ``norms=``).

    >>> import torch
    >>> from probprune.config import NetSpec
    >>> F = Net.from_weights(NetSpec(widths=(2, 2)), [torch.eye(2)])
    >>> f = Net.from_weights(NetSpec(widths=(2, 2)), [torch.diag(torch.tensor([1.0, 0.0]))])
    >>> norms = pair_norms(F, f)
    >>> bool(certified_gap_bound(F, f, radius=3.0, norms=norms).value == certified_gap_bound(F, f, radius=3.0).value)
    True
    """
    check_pair(target, pruned)
    feats = target.spec.feature_shapes()
    layers = []
    for i, (lt, lp) in enumerate(zip(target.layers, pruned.layers)):
        ishape = None if lt.conv is None else feats[i]
        layers.append(_layer_norms(lt, lp, ishape, norm_method))
    weights = tuple((lt.weight, lp.weight) for lt, lp in zip(target.layers, pruned.layers))
    return PairNorms(str(norm_method), target.spec, weights, tuple(layers))


def _propagate(target: Net, pruned: Net, radius: float, norm_method: NormMethod,
               rounding: tuple[tuple[float, float], tuple[float, float]], tf32: bool,
               norms: PairNorms | None = None) -> tuple[Tensor, Tensor, list[LayerTerm]]:
    """The recursion over the layers: (e_l, M_f + M_F — 0 where f and F are bitwise identical —, terms)."""
    spec = target.spec
    feats = spec.feature_shapes()
    k = target.n_trials
    lead = 0 if k is None else 1
    like = torch.zeros(() if k is None else (k,), dtype=torch.float64, device=target.device)
    err, reach_t, reach_p = like.clone(), like + radius, like + radius
    fe_t, fe_p = like.clone(), like.clone()  # E_i: forward rounding error of F and of f (module docstring)
    same: Tensor | bool = True  # f and F bitwise identical (per member)
    terms: list[LayerTerm] = []
    n_layers = len(target.layers)
    for i, (lt, lp, name) in enumerate(zip(target.layers, pruned.layers, spec.layer_names())):
        units = math.prod(feats[i + 1]) if i + 1 < n_layers else spec.output_dim
        sh = _layer_shape(lt, feats[i], units, i == n_layers - 1)
        n_t, n_p, n_d, a_t, a_p = _layer_norms(lt, lp, sh.ishape, norm_method) if norms is None else norms.layers[i]
        bn_t, bn_p, bdiff = _bias_norms(lt, lp, sh.pos, like)
        same = same & _same(lt.weight, lp.weight, lead) & _same(lt.bias, lp.bias, lead)
        pre = torch.minimum(n_p.value * err + n_d.value * reach_t, n_t.value * err + n_d.value * reach_p)
        err = sh.lip * (pre + bdiff)
        fe_t = _forward_error(sh, a_t, fe_t, n_t.value, bn_t, reach_t, rounding[0], tf32)
        fe_p = _forward_error(sh, a_p, fe_p, n_p.value, bn_p, reach_p, rounding[1], tf32)
        cap = math.sqrt(sh.units)
        reach_t = sh.lip * (n_t.value * reach_t + bn_t) + abs(sh.s0) * cap
        reach_p = sh.lip * (n_p.value * reach_p + bn_p) + abs(sh.s0) * cap
        if sh.bounded:
            reach_t, reach_p = reach_t.clamp_max(cap), reach_p.clamp_max(cap)
            err = err.clamp_max(sh.span * cap)  # entries of h_i, h̃_i lie in [−1, 1] (tanh) or (0, 1) (sigmoid)
        terms.append(LayerTerm(name=name, norm_target=n_t, norm_pruned=n_p, norm_diff=n_d, lipschitz=sh.lip,
                               sigma0=sh.s0, bias_norm=bn_t, bias_diff=bdiff, reach_target=reach_t,
                               reach_pruned=reach_p, error=err))
    fwd = torch.where(torch.as_tensor(same, device=like.device), torch.zeros_like(like), fe_t + fe_p)
    return err, fwd, terms


def _assumptions(target: Net, radius: float, terms: list[LayerTerm], all_exact: bool,
                 dtypes: tuple[torch.dtype, torch.dtype], tf32_used: bool) -> tuple[str, ...]:
    """What the bound relies on, in words."""
    spec = target.spec
    act = target.layers[0].activation if len(target.layers) > 1 else None
    out = [f"input ball of radius r = {radius!r} (l2, conv inputs flattened)"]
    if act is not None:
        s0 = _sigma0(target.layers[0])
        out.append(f"activation {act.name}: {act.lipschitz}-Lipschitz, sigma(0) = {s0}"
                   + (" (reach includes |sigma(0)|·sqrt(n))" if s0 != 0 else ""))
    out.append("biases: " + ("present; they cancel in D but enter the reach via ||b|| and the error "
                             "via ||b~ - b||" if spec.bias else "none"))
    if any(c.pool > 1 for c in spec.convs):
        out.append("max-pool: non-overlapping, 1-Lipschitz and norm-non-increasing")
    methods = sorted({n.method for t in terms for n in (t.norm_target, t.norm_pruned, t.norm_diff)})
    out.append(f"operator norms: {'all exact' if all_exact else 'some certified upper values'} "
               f"({', '.join(methods)})")
    names_dt = sorted({str(d).removeprefix("torch.") for d in dtypes})
    out.append(f"floating point: covers the forward passes in {'/'.join(names_dt)} (or more precise) "
               "IEEE arithmetic, any summation order ("
               + ("TF32 products and convolutions included" if tf32_used else "no TF32")
               + ", no Winograd/FFT convolution), tanh/sigmoid within 8 ulps; differences and norms in "
               "float64, rounded up")
    return tuple(out)


def certified_gap_bound(target: Net, pruned: Net, *, radius: float, norm_method: NormMethod = "auto",
                        forward_dtype: torch.dtype | None = None, tf32: bool = False,
                        norms: PairNorms | None = None) -> CertifiedBound:
    """Certified upper bound on the gap ``sup_{‖x‖ ≤ r} ‖f(x) − F(x)‖₂`` (module docstring).

    Args:
        target: F (single or ensemble ``[K]``).
        pruned: f, same architecture and trial dim; any weights (pruned or not) and biases.
        radius: r > 0 (finite).
        norm_method: for linear layers, see :func:`~probprune.bounds.norms.matrix_norm_bound`.
        forward_dtype: the dtype the networks are evaluated in, when it differs from their weights':
            float32 weights cast to float64 for this computation but run in float32 by the user
            (``torch.float32``), or float32 weights that the user runs in float64 (``torch.float64``:
            the far smaller float64 margin). Every weight and bias must be exactly representable in
            it. Default: each network's own weight dtype.
        tf32: also cover float32 products and convolutions on TF32 tensor cores (CUDA with
            ``allow_tf32``): each operand is rounded to 10 mantissa bits (relative error ≤ 2^−10,
            truncation included), the products are exact in float32 and the sums float32, so a
            dot product errs by ≤ ((1 + 2^−10)²(1 + γ_{n+1}) − 1)·(|w|ᵀ|x| + |b|). No effect on float64.
        norms: the pair's operator norms from :func:`pair_norms` (computed once, reused at every radius; the
            result is bit for bit the one without them). Refused if they were computed for other weights.

    Returns:
        :class:`CertifiedBound` with ``value`` ``[K]`` (or 0-d) and per-layer terms.

    Assumptions: activations L-Lipschitz elementwise (σ(0) ≠ 0 allowed); max-pools
    non-overlapping; biases allowed and may differ. Floating-point forward passes in the
    weights' dtype (or ``forward_dtype``) are covered by ``rounding_margin`` (module docstring).

    >>> import torch
    >>> from probprune.config import NetSpec
    >>> F = Net.from_weights(NetSpec(widths=(2, 2)), [torch.eye(2)])
    >>> f = Net.from_weights(NetSpec(widths=(2, 2)), [torch.diag(torch.tensor([1.0, 0.0]))])
    >>> b = certified_gap_bound(F, f, radius=3.0)
    >>> round(float(b.value - b.rounding_margin), 6)   # ‖D‖·r in exact arithmetic (+ 1e-9 norm margin)
    3.0
    >>> 0 < float(b.rounding_margin) < 1e-5   # + the float32 forward passes' rounding
    True
    """
    check_pair(target, pruned)
    _check_radius(radius)
    if norms is not None:
        norms.check(target, pruned, str(norm_method))
    if forward_dtype is not None:
        _unit(forward_dtype, "forward_dtype")
        _check_forward_dtype((target, pruned), forward_dtype)
    dt_t = forward_dtype or target.layers[0].weight.dtype
    dt_p = forward_dtype or pruned.layers[0].weight.dtype
    u_t, u_p = _unit(dt_t, "target weights"), _unit(dt_p, "pruned weights")
    err, fwd, terms = _propagate(target, pruned, radius, norm_method, ((u_t, _TINY[dt_t]), (u_p, _TINY[dt_p])), tf32,
                                 norms)
    u_max = max(u_t, u_p)
    n_layers = len(terms)
    value = (err + fwd) * ((1.0 + _gamma(target.spec.output_dim + 3, u_max)) * (1.0 + 16.0 * (n_layers + 1) * _U64))
    if not bool(torch.isfinite(value).all()):
        raise ProbPruneError("certified bound: overflows float64 (weights or radius too large for a finite "
                             "bound); refused")
    all_exact = all(n.exact for t in terms for n in (t.norm_target, t.norm_pruned, t.norm_diff))
    assumptions = _assumptions(target, radius, terms, all_exact, (dt_t, dt_p), tf32 and u_max > _U64)
    return CertifiedBound(value=value, terms=tuple(terms), exact=all_exact, assumptions=assumptions,
                          radius=float(radius), rounding_margin=value - err,
                          forward_dtype="float32" if u_max > _U64 else "float64")


# ---------------------------------------------------------------------------- a lower value


def lower_at(target: Net, pruned: Net, x: Tensor, radius: float) -> Tensor:
    """``‖f(x) − F(x)‖`` in float64 at one point per member, ``x`` projected into the ball first.

    The projection is rounded inwards: a point within ``4γ_{d+4}`` (float64, d inputs) of the
    sphere or beyond it is scaled to radius ``r(1 − 4γ_{d+4})`` by its computed norm, which puts
    it inside the closed ball in exact arithmetic; interior points are used unchanged.

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
    # provably inside the ball: the computed norm errs by ≤ γ_{d+4} relative, so points within 4γ of the
    # sphere (or beyond it) are scaled to r·(1 − 4γ) of it; interior points are left as they are
    g4 = 4.0 * _gamma(int(flat.shape[-1]) + 4, _U64)
    scale = torch.where(norm >= radius * (1.0 - g4), radius * (1.0 - g4) / norm.clamp_min(radius * (1.0 - g4)),
                        torch.ones_like(norm))
    x64 = x64 * scale.reshape(*norm.shape, *([1] * (x64.dim() - lead)))
    xin = x64.unsqueeze(lead)  # one point per member: [K, 1, …] or [1, …]
    diff = cast(Tensor, p64.forward(xin)) - cast(Tensor, t64.forward(xin))
    return diff.norm(dim=-1).squeeze(-1)


def _check_radius(radius: float) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) \
            or radius <= 0:
        raise ProbPruneError(f"radius={radius!r}: must be a finite number > 0")


