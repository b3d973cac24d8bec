"""Probabilistic gap bounds with explicit constants, and their inverses (``docs/theory.md``).

For a target network F whose weights are drawn from a :class:`~probprune.config.LawSpec`
(uniform ``U[-a_i, a_i]`` or Gaussian ``N(0, a_i²/3)``, ``a_i = K/√max(fan_out, fan_in)``) and
its pruned copy f (magnitude ``|w| ≤ ρ·a_i`` or random with independent masks), every bound
here is a number ε(δ) such that

    P( sup_{‖x‖₂ ≤ r} ‖f(x) − F(x)‖₂ > ε(δ) ) ≤ δ,

the probability being over the weights and the masks. Two theorems are implemented:

* **Theorem O** (``docs/theory.md`` §4, "operator route"): layerwise propagation with
  high-probability operator-norm bounds on every ``W_i``, ``W̃_i``, ``D_i`` (matrix Bernstein,
  its Gram form for thin matrices, Gordon's bound for Gaussian matrices; per-frequency matrix
  Bernstein for convolutions). FCNs and CNNs.
* **Theorem N** (§5, "η-net route", FCNs): the errors are propagated at the points of an η-net of
  the input ball, where each layer acts on a vector independent of it and contributes its
  *typical* size (e.g. ``ν·(√h_out + √(2ξ))`` at the output layer instead of ``‖W̃_l‖``); the net is
  extended to the whole ball by a Lipschitz argument.

``probabilistic_bound`` evaluates both (each at the full δ) and returns the smaller: the choice
depends on no random quantity, so the guarantee holds at δ (§6).
"""


from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from probprune.bounds.concentration import activation_gain
from probprune.bounds.entries import gauss_trunc_z
from probprune.bounds.theorems import ETA_GRID, BoundTerm, layer_laws, theorem_n, theorem_o
from probprune.config import LawSpec, NetSpec, ProbPruneError, PruneSpec, _fail, layer_scale
from probprune.nets import Activation

__all__ = [
    "Bound",
    "bound_exponent",
    "check_assumptions",
    "hidden_width",
    "probabilistic_bound",
    "resolve_levels",
    "solve_max_prune",
    "solve_min_width",
    "theory_exponent",
    "with_hidden_width",
]

TheoremChoice = Literal["auto", "operator", "net"]


@dataclass(frozen=True)
class Bound:
    """A probabilistic gap bound: P(gap > value) ≤ delta (``docs/theory.md``).

    Attributes:
        value: ε(δ), the bound on sup_{‖x‖≤r} ‖f(x) − F(x)‖₂.
        delta: δ.
        theorem: the section of docs/theory.md (``§4 Theorem O`` or ``§5 Theorem N``).
        method, law, arch, rescale, radius: the setting.
        levels: per-layer level (ρ_i or p_i).
        layers: per-layer terms.
        budget: (event, probability) pairs; they sum to δ.
        assumptions: the assumptions checked (all hold, else an error was raised).
        notes: approximations or caveats (e.g. prune_fraction mapped to ρ).
        eta: the η of the net (Theorem N), else None.
        log_net_size: log N of the η-net (Theorem N), else 0.
        lipschitz_term: η·r·(Lip F + Lip f) (Theorem N), else 0.
        value_operator, value_net: the two theorems' values (None where not applicable).
    """

    value: float
    delta: float
    theorem: str
    method: str
    law: str
    arch: str
    rescale: bool
    radius: float
    levels: tuple[float, ...]
    layers: tuple[BoundTerm, ...]
    budget: tuple[tuple[str, float], ...]
    assumptions: tuple[str, ...]
    notes: tuple[str, ...] = ()
    eta: float | None = None
    log_net_size: float = 0.0
    lipschitz_term: float = 0.0
    value_operator: float | None = None
    value_net: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (for ``--json`` and the store)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layers"] = [t.to_dict() for t in self.layers]
        d["budget"] = [{"event": e, "delta": p} for e, p in self.budget]
        d["levels"] = list(self.levels)
        d["assumptions"] = list(self.assumptions)
        d["notes"] = list(self.notes)
        return d


# --------------------------------------------------------------------------- assumptions & levels


def _check_setting(spec: NetSpec, law: LawSpec, delta: float, radius: float) -> list[str]:
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not (0.0 < delta < 1.0):
        raise _fail("delta", delta, "must be in (0, 1)")
    if not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0.0:
        raise _fail("radius", radius, "must be a finite number > 0")
    if not isinstance(law, LawSpec):
        raise _fail("law", law, "the theorems need a LawSpec (uniform or gaussian)")
    act = Activation(spec.activation, spec.negative_slope)
    if not act.zero_at_zero:
        raise _fail("activation", spec.activation, "assumption σ(0) = 0 violated (the theorems need σ(0) = 0)")
    if spec.bias:
        raise _fail("net.bias", spec.bias, "assumption violated: the theorems are for bias-free networks")
    checked = [f"σ = {spec.activation}: σ(0) = 0, {act.lipschitz:g}-Lipschitz",
               "bias-free layers",
               f"entries i.i.d. {law.kind}, a_i = K/√max(fan_out, fan_in), K = {law.scale:g}",
               f"inputs in the ℓ2 ball of radius {radius:g}"]
    if spec.kind == "fcn":
        d0, hout = spec.widths[0], spec.widths[-1]
        for i, h in enumerate(spec.widths[1:-1], start=1):
            if h <= d0:
                raise _fail(f"net.widths[{i}]", h,
                            f"assumption violated: hidden width must exceed the input width {d0}")
            if h <= hout:
                raise _fail(f"net.widths[{i}]", h,
                            f"assumption violated: hidden width must exceed the output width {hout}")
        checked.append("hidden widths exceed the input and output widths")
    else:
        for i, conv in enumerate(spec.convs):
            if conv.padding_mode == "circular" and 2 * conv.pad > conv.kernel - 1:
                raise _fail(f"net.convs[{i}].padding", conv.pad,
                            "circular padding wider than (kernel-1)/2 is not covered (rows repeat)")
        checked.append("convolutions embedded in circular ones (zero padding: grid n+2·pad; stride ≤ 1-Lipschitz)")
    return checked


def check_assumptions(spec: NetSpec, law: LawSpec, delta: float, radius: float = 1.0,
                      prune: PruneSpec | None = None) -> list[str]:
    """Check the theorems' assumptions (§1) and, if ``prune`` has a level, the level; return what was checked.

    Raises:
        ProbPruneError: naming the violated assumption (σ(0) ≠ 0, biases, hidden width ≤ input width, …).
    """
    checked = _check_setting(spec, law, delta, radius)
    if prune is not None and (prune.level_name is not None or prune.schedule_c is not None):
        resolve_levels(spec, law, prune)
    return checked


def resolve_levels(spec: NetSpec, law: LawSpec, prune: PruneSpec,
                   levels: Sequence[float] | None = None) -> tuple[list[float], list[str]]:
    """Per-layer level (ρ_i for magnitude, p_i for random) of a pruning rule, with notes.

    * ``relative_threshold`` ρ → ρ_i = ρ; ``threshold`` τ → ρ_i = τ/a_i;
    * magnitude ``prune_fraction`` q → the threshold rule removing q in expectation:
      uniform ρ = q (P(|w| ≤ ρa) = ρ), Gaussian ρ = Φ⁻¹((1+q)/2)/√3. The exact-count rule is
      approximated by this threshold rule (noted in the result);
    * random ``p`` → p_i = p; random ``prune_fraction`` (exact count) is **not covered**: error;
    * a schedule c·h^{−α} is resolved at the smallest hidden width.

    >>> from probprune.config import NetSpec, LawSpec, PruneSpec
    >>> resolve_levels(NetSpec(widths=(4, 8, 2)), LawSpec(), PruneSpec(relative_threshold=0.1))[0]
    [0.1, 0.1]
    """
    shapes = spec.weight_shapes()
    notes: list[str] = []
    if levels is not None:
        lv = [float(x) for x in levels]
        if len(lv) != len(shapes):
            raise _fail("levels", list(levels), f"need one level per layer ({len(shapes)})")
    else:
        pr = prune
        if pr.schedule_c is not None:
            h = hidden_width(spec)
            pr = pr.at_width(h)
            notes.append(f"schedule c·h^-α resolved at h = {h}")
        name = pr.level_name
        if name is None:
            raise ProbPruneError("prune: give one level (relative_threshold, threshold, p or prune_fraction)")
        if pr.method == "random":
            if name == "prune_fraction":
                raise _fail("prune_fraction", pr.prune_fraction,
                            "exact-count random pruning is not covered by the theorems (they need independent "
                            "Bernoulli masks); give p instead")
            lv = [float(pr.p)] * len(shapes)  # type: ignore[arg-type]
        elif name == "relative_threshold":
            lv = [float(pr.relative_threshold)] * len(shapes)  # type: ignore[arg-type]
        elif name == "threshold":
            lv = [float(pr.threshold) / layer_scale(s, law.scale) for s in shapes]  # type: ignore[arg-type]
        else:
            q = float(pr.prune_fraction)  # type: ignore[arg-type]
            if law.kind == "uniform":
                rho = q
            else:
                rho = math.inf if q >= 1.0 else statistics.NormalDist().inv_cdf((1.0 + q) / 2.0) / math.sqrt(3.0)
            lv = [rho] * len(shapes)
            notes.append(f"prune_fraction={q:g} mapped to the threshold rule ρ={rho:.6g} that removes the same "
                         "share in expectation; the exact-count rule itself is not covered by the proof")
        if pr.scope == "global" and name == "prune_fraction":
            raise _fail("scope", pr.scope, "a global exact-count ranking is not covered; use a threshold")
    method = prune.method
    for i, v in enumerate(lv):
        if not math.isfinite(v) or v < 0.0:
            raise _fail(f"level[{i}]", v, "must be a finite number >= 0")
        if method == "random" and v > 1.0:
            raise _fail(f"p[{i}]", v, "must be in [0, 1]")
        if method == "random" and prune.rescale and v >= 1.0:
            raise _fail(f"p[{i}]", v, "rescaling survivors by 1/(1-p) needs p < 1")
        if method == "magnitude" and law.kind == "uniform" and v > 1.0:
            raise _fail(f"relative_threshold[{i}]", v, "must be in [0, 1] under the uniform law (ρ = 1 removes all)")
    return lv, notes


def hidden_width(spec: NetSpec) -> int:
    """The width h that a schedule c·h^{−α} reads: the smallest hidden width (else the output width).

    Hidden widths: an FCN's widths but the first and last, a CNN's head widths but the last.

    >>> hidden_width(NetSpec(widths=(16, 256, 128, 4)))
    128
    """
    hidden = list(spec.widths[1:-1]) if spec.kind == "fcn" else list(spec.widths[:-1])
    return min(hidden) if hidden else spec.widths[-1]


def with_hidden_width(spec: NetSpec, h: int, field: str = "arch") -> NetSpec:
    """``spec`` with every hidden width (see :func:`hidden_width`) replaced by ``h``.

    Args:
        spec: the template architecture.
        h: the new hidden width.
        field: the setting named in the error (``mc.hidden_widths`` for a Monte Carlo grid).

    Raises:
        ProbPruneError: the architecture has no hidden layer to vary.

    >>> with_hidden_width(NetSpec(widths=(16, 256, 128, 4)), 64).widths
    (16, 64, 64, 4)
    """
    w = spec.widths
    if spec.kind == "fcn":
        if len(w) < 3:
            raise ProbPruneError(f"{field}: the architecture {spec.to_arch()} has no hidden layer to vary")
        return dataclasses.replace(spec, widths=(w[0], *([int(h)] * (len(w) - 2)), w[-1]))
    if len(w) < 2:
        raise ProbPruneError(f"{field}: the architecture {spec.to_arch()} has no hidden head layer to vary")
    return dataclasses.replace(spec, widths=(*([int(h)] * (len(w) - 1)), w[-1]))


def _split_delta(spec: NetSpec, law: LawSpec, delta: float, n_events: int
                 ) -> tuple[float, float, list[tuple[str, float]]]:
    """δ split equally over ``n_events`` (+ the truncation event T for a Gaussian law): (δ each, z of T, budget)."""
    gaussian = law.kind == "gaussian"
    d_ev = delta / (n_events + (1 if gaussian else 0))
    z = math.inf
    items: list[tuple[str, float]] = []
    if gaussian:
        n_entries = sum(math.prod(s) for s in spec.weight_shapes())
        z = gauss_trunc_z(n_entries, d_ev)
        items.append((f"T: all |w| ≤ {z:.3f}·s_i (Gaussian truncation)", d_ev))
    return d_ev, z, items


def _operator_route(spec: NetSpec, law: LawSpec, prune: PruneSpec, levels: list[float], lips: list[float],
                    radius: float, delta: float, base: dict[str, Any]) -> Bound:
    """Theorem O (§4) at δ: three operator-norm events per layer."""
    d_ev, z, items = _split_delta(spec, law, delta, 3 * spec.n_layers)
    layers = layer_laws(spec, law, prune.method, levels, bool(prune.rescale), z)
    value, terms = theorem_o(layers, lips, radius, d_ev)
    for ly in layers:
        items += [(f"‖W‖ {ly.name}", d_ev), (f"‖W̃‖ {ly.name}", d_ev), (f"‖D‖ {ly.name}", d_ev)]
    return Bound(value=value, theorem="§4 Theorem O (operator-norm route)", layers=tuple(terms),
                 budget=tuple(items), value_operator=value, **base)


def _net_route(spec: NetSpec, law: LawSpec, prune: PruneSpec, levels: list[float], act: Activation,
               lips: list[float], radius: float, delta: float, base: dict[str, Any]) -> Bound:
    """Theorem N (§5, FCNs) at δ, at the η of :data:`ETA_GRID` that gives the smallest value."""
    nl = spec.n_layers
    relu = act.name == "relu"
    rescale = bool(prune.rescale)
    n_ev = 3 * nl + (nl - 1) + (nl - 1) + nl + nl + ((nl - 1) if relu else 0)
    d_ev, z, items = _split_delta(spec, law, delta, n_ev)
    layers = layer_laws(spec, law, prune.method, levels, rescale, z)
    gamma = activation_gain(act)
    # the first smallest over the fixed grid: the choice depends on no random quantity
    value, lip_term, log_n, terms, eta = min(
        ((*theorem_n(layers, lips, gamma, act.lipschitz, radius, spec.input_dim, d_ev, eta, relu=relu,
                     joint=not rescale), eta) for eta in ETA_GRID), key=lambda r: r[0])
    for i, ly in enumerate(layers):
        items += [(f"‖W‖ {ly.name}", d_ev), (f"‖W̃‖ {ly.name}", d_ev), (f"‖D‖ {ly.name}", d_ev)]
        if i < nl - 1:
            items.append((f"net: ‖σ(W x)‖ {ly.name}", d_ev))
            if relu:
                items.append((f"net: ‖σ(W x)‖ half-χ² {ly.name}", d_ev))
        if i > 0:
            items.append((f"net: ‖W̃ e‖ {ly.name}", d_ev))
        items.append((f"net: ‖D x‖ {ly.name}", d_ev))
        items.append((f"net: ‖W̃ e − D x‖ joint {ly.name}", d_ev))
    return Bound(value=value, theorem="§5 Theorem N (η-net route)", layers=tuple(terms), budget=tuple(items),
                 eta=eta, log_net_size=log_n, lipschitz_term=lip_term, value_net=value, **base)


def probabilistic_bound(
    spec: NetSpec,
    law: LawSpec,
    prune: PruneSpec,
    delta: float,
    *,
    radius: float = 1.0,
    levels: Sequence[float] | None = None,
    theorem: TheoremChoice = "auto",
) -> Bound:
    """ε(δ) with P(sup_{‖x‖≤r} ‖f(x) − F(x)‖₂ > ε) ≤ δ for a sampled target and its pruned copy.

    Covers magnitude pruning (|w| ≤ ρ_i·a_i) and random pruning (independent masks, optionally
    rescaled) of bias-free FCNs and CNNs with σ(0) = 0, weights uniform or Gaussian. FCN: the
    smaller of Theorem O (§4) and Theorem N (§5, η-net); CNN: Theorem O with per-frequency
    bounds (§4.3). Paper symbols: K = ``law.scale``, a_i, ρ, p, ε, δ.

    Args:
        spec: architecture (bias-free; FCN hidden widths > input and output widths).
        law: the weight law of the target.
        prune: the pruning rule (see :func:`resolve_levels` for how levels are read).
        delta: failure probability δ ∈ (0, 1).
        radius: input ball radius r > 0.
        levels: optional per-layer levels (ρ_i or p_i), overriding ``prune``'s level.
        theorem: ``auto`` (smaller of the two), ``operator`` (§4) or ``net`` (§5, FCN only).

    Returns:
        :class:`Bound` with ε, per-layer terms, the probability budget and the assumptions.

    Raises:
        ProbPruneError: naming the violated assumption or the bad value.

    >>> from probprune.config import NetSpec, LawSpec, PruneSpec
    >>> b = probabilistic_bound(NetSpec(widths=(16, 2048, 2048, 4)), LawSpec(),
    ...                         PruneSpec(relative_threshold=0.05), 0.05)
    >>> round(b.value, 3), b.theorem
    (0.055, '§5 Theorem N (η-net route)')
    """
    if theorem not in ("auto", "operator", "net"):
        raise _fail("theorem", theorem, "must be auto, operator or net")
    checked = _check_setting(spec, law, delta, radius)
    lv, notes = resolve_levels(spec, law, prune, levels)
    act = Activation(spec.activation, spec.negative_slope)
    lips = [act.lipschitz] * (spec.n_layers - 1) + [1.0]
    if theorem == "net" and spec.kind != "fcn":
        raise _fail("theorem", theorem, "Theorem N (η-net) is for FCNs; CNNs use Theorem O")
    base: dict[str, Any] = dict(delta=delta, method=prune.method, law=law.to_text(), arch=spec.to_arch(),
                                rescale=bool(prune.rescale), radius=float(radius), levels=tuple(lv),
                                assumptions=tuple(checked), notes=tuple(notes))
    results: list[Bound] = []
    if theorem in ("auto", "operator"):
        results.append(_operator_route(spec, law, prune, lv, lips, radius, delta, base))
    if theorem in ("auto", "net") and spec.kind == "fcn":
        results.append(_net_route(spec, law, prune, lv, act, lips, radius, delta, base))
    best = min(results, key=lambda b: b.value)
    value_operator = next((b.value for b in results if b.theorem.startswith("§4")), None)
    value_net = next((b.value for b in results if b.theorem.startswith("§5")), None)
    return dataclasses.replace(best, value_operator=value_operator, value_net=value_net)


# --------------------------------------------------------------------------- exponents


def theory_exponent(method: Literal["magnitude", "random"], alpha: float, rescale: bool = False) -> float:
    """Predicted exponent λ of the gap, gap ∝ h^{−λ}, for the schedule level = c·h^{−α} (§8).

    With a_i ∝ h^{−1/2} the output scale gives h^{−1/2}; the pruned part's entry standard
    deviation is ∝ ρ^{3/2}·a (magnitude) or p^{1/2}·a (random, with or without rescale as p → 0), so
    λ = 1/2 + 3α/2 (magnitude) or 1/2 + α/2 (random). Our bounds attain λ up to log factors.

    >>> theory_exponent("magnitude", 0.5), theory_exponent("random", 0.5)
    (1.25, 0.75)
    """
    if not isinstance(alpha, (int, float)) or not (0.0 < alpha < 1.0):
        raise _fail("alpha", alpha, "must be in (0, 1)")
    if method == "magnitude":
        return 0.5 + 1.5 * alpha
    if method == "random":
        return 0.5 + 0.5 * alpha
    raise _fail("method", method, "must be magnitude or random")


def bound_exponent(spec: NetSpec, law: LawSpec, method: Literal["magnitude", "random"], c: float, alpha: float,
                   delta: float = 0.05, h1: int = 2 ** 12, h2: int = 2 ** 16, rescale: bool = False) -> float:
    """Local log-log slope −d log ε / d log h of our bound between widths h1 and h2 for level c·h^{−α}."""
    if spec.kind != "fcn":
        raise _fail("arch", spec.to_arch(), "width solving replaces FCN hidden widths; not defined for CNNs")
    vals = []
    for h in (h1, h2):
        s = with_hidden_width(spec, h)
        pr = PruneSpec(method=method, rescale=rescale, **{"relative_threshold" if method == "magnitude" else "p":
                                                          min(1.0, c * h ** (-alpha))})
        vals.append(probabilistic_bound(s, law, pr, delta).value)
    return -math.log(vals[1] / vals[0]) / math.log(h2 / h1)


# --------------------------------------------------------------------------- inverses


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0.0:
        raise _fail("eps", eps, "must be a finite number > 0")


def _level_max(law: LawSpec, prune: PruneSpec) -> float:
    if prune.method == "random":
        return 1.0 - 1e-9 if prune.rescale else 1.0
    return 1.0 if law.kind == "uniform" else 10.0


def solve_max_prune(spec: NetSpec, law: LawSpec, prune: PruneSpec, delta: float, eps: float, *,
                    radius: float = 1.0, tol: float = 1e-6) -> tuple[float, Bound]:
    """Largest uniform level (ρ or p, all layers) with ε(δ) ≤ ε*, by bisection (§7).

    Relies on ε being nondecreasing in the level (§7: every entry statistic is, and the bound
    is a min over fixed candidates of nondecreasing functions). Returns (level, bound at level);
    the bound at level + tol exceeds ε* unless level is the top of the range.
    """
    _check_eps(eps)
    field_name = "relative_threshold" if prune.method == "magnitude" else "p"

    def at(level: float) -> Bound:
        kw: dict[str, Any] = {"prune_fraction": None, "threshold": None, "relative_threshold": None, "p": None,
                              "schedule_c": None, "schedule_alpha": None}
        kw[field_name] = level
        pr = dataclasses.replace(prune, **kw)
        return probabilistic_bound(spec, law, pr, delta, radius=radius)

    lo, hi = 0.0, _level_max(law, prune)
    b_hi = at(hi)
    if b_hi.value <= eps:
        return hi, b_hi
    b_lo = at(lo)
    if b_lo.value > eps:
        raise _fail("eps", eps, f"even pruning nothing gives ε = {b_lo.value:.4g}")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        b = at(mid)
        if b.value <= eps:
            lo, b_lo = mid, b
        else:
            hi = mid
    return lo, b_lo


def solve_min_width(spec: NetSpec, law: LawSpec, prune: PruneSpec, delta: float, eps: float, *,
                    radius: float = 1.0, h_max: int = 2 ** 30,
                    level_at: Callable[[int], PruneSpec] | None = None) -> tuple[int, Bound]:
    """Smallest common hidden width h of an FCN with ε(δ) ≤ ε* (§7).

    The level is ``prune``'s fixed level, or its schedule c·h^{−α} evaluated at h. Search:
    doubling from the smallest admissible width, then bisection — which assumes ε decreasing in
    h. That is not proven for every setting (log factors grow with h); the tests check it
    numerically and that the answer passes while h − 1 fails.
    """
    _check_eps(eps)
    if spec.kind != "fcn":
        raise _fail("arch", spec.to_arch(), "min-width solves for FCN hidden widths")
    d0, hout = spec.widths[0], spec.widths[-1]
    h_lo = max(d0, hout) + 1

    def at(h: int) -> Bound:
        pr = level_at(h) if level_at is not None else prune.at_width(h)
        return probabilistic_bound(with_hidden_width(spec, h), law, pr, delta, radius=radius)

    b = at(h_lo)
    if b.value <= eps:
        return h_lo, b
    lo, hi = h_lo, h_lo
    while True:
        hi = min(2 * hi, h_max)
        b_hi = at(hi)
        if b_hi.value <= eps:
            break
        if hi >= h_max:
            raise _fail("eps", eps, f"no hidden width up to {h_max} meets it (ε = {b_hi.value:.4g} there)")
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        bm = at(mid)
        if bm.value <= eps:
            hi, b_hi = mid, bm
        else:
            lo = mid
    return hi, b_hi
