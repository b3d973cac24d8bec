"""Monte Carlo verification of the gap bounds: batched trials and their statistics.

One *trial* draws a target network F from the law, prunes it to f, and measures the gap
``sup_{‖x‖₂ ≤ r} ‖f(x) − F(x)‖₂`` from both sides: an empirical lower value (sup-gap
estimator of :mod:`probprune.gap`) and a certified upper value (:mod:`probprune.bounds`).
A *grid point* is one (hidden width h, pruning rule) pair; R trials per point are run as
ensembles of ``K`` networks held as stacked tensors, so every layer is one batched matrix
product over all members.

Randomness: trial ``t`` of grid point ``g`` uses generators seeded with
``derive_seed(config_hash, g, t, stream)`` for the streams ``weights`` and ``mask`` — never
the execution order — so any chunking of the trials gives the same numbers. The probe points
of the sup-gap estimator (streams ``gap`` and ``output``, seeded by ``derive_seed(config_hash,
g, stream)``) are shared by all trials of a grid point: each trial's empirical gap is then a
fixed function of its own networks, so trials stay i.i.d. and chunking cannot change them.

The statistics (coverage of ε(δ) with a Clopper–Pearson interval, tightness ratio,
log-log slope of gap vs width) are plain functions of the per-trial values. This module is
pure: no files, no printing, no global RNG.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import torch
from scipy.stats import beta as _beta
from torch import Tensor

from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.paper import log_log_fit
from probprune.bounds.probabilistic import hidden_width, probabilistic_bound, theory_exponent, with_hidden_width
from probprune.config import ExecutionPolicy, NetSpec, ProbPruneError, PruneSpec, RunConfig
from probprune.gap import sup_gap, sup_output
from probprune.masks import count_true, prune
from probprune.nets import Net
from probprune.records import VERDICTS, GridRow, PointSummary, SlopeRow, TrialRow, Verdict
from probprune.rng import derive_seed, make_generator
from probprune.sampling import sample_net

__all__ = [
    "PROBE_STREAMS",
    "STREAMS",
    "VERDICTS",
    "GridPoint",
    "PointBound",
    "PointSummary",
    "TrialRow",
    "Verdict",
    "clopper_pearson",
    "expand_grid",
    "fit_slope",
    "hidden_width",
    "min_trials_to_confirm",
    "point_bound",
    "probe_generator",
    "prune_ensemble",
    "run_trials",
    "sample_ensemble",
    "slopes_by_rule",
    "summarize_point",
    "torch_dtype",
    "trial_generators",
    "verdict",
]

STREAMS: tuple[str, ...] = ("weights", "mask")
PROBE_STREAMS: tuple[str, ...] = ("gap", "output")


def torch_dtype(name: str) -> torch.dtype:
    """``float32`` / ``float64`` → the torch dtype.

    >>> torch_dtype("float64")
    torch.float64
    """
    if name == "float32":
        return torch.float32
    if name == "float64":
        return torch.float64
    raise ProbPruneError(f"mc.dtype={name!r}: must be float32 or float64")


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class GridPoint:
    """One point of the verification grid: an architecture and a resolved pruning rule.

    Attributes:
        index: grid index g (widths outer, pruning rules inner).
        width: hidden width h of this point (the smallest hidden width of ``net``).
        prune_index: position of the rule in ``RunConfig.prunes``.
        net: the architecture at this width.
        prune: the rule with its level fixed (a schedule c·h^{−α} resolved at h).
        rule: the rule as configured (schedule kept), for the theory exponent.
    """

    index: int
    width: int
    prune_index: int
    net: NetSpec
    prune: PruneSpec
    rule: PruneSpec

    @property
    def level_name(self) -> str:
        """``relative_threshold``, ``threshold``, ``p`` or ``prune_fraction``."""
        return self.prune.level_name or ""

    @property
    def level_value(self) -> float:
        """The level ρ, τ, p or prune_fraction at this point."""
        return float(getattr(self.prune, self.level_name))


def expand_grid(cfg: RunConfig) -> list[GridPoint]:
    """All grid points of a run: hidden widths (``mc.hidden_widths``, or the arch as given) × pruning rules.

    Raises:
        ProbPruneError: a rule without a level or schedule, or widths on an arch without hidden layers.

    >>> from probprune.config import MCSpec
    >>> cfg = RunConfig(prunes=(PruneSpec(schedule_c=1.0, schedule_alpha=0.5),), mc=MCSpec(hidden_widths=(64, 256)))
    >>> [(p.width, round(p.level_value, 4)) for p in expand_grid(cfg)]
    [(64, 0.125), (256, 0.0625)]
    """
    nets = [cfg.net] if not cfg.mc.hidden_widths else \
        [with_hidden_width(cfg.net, h, "mc.hidden_widths") for h in cfg.mc.hidden_widths]
    points: list[GridPoint] = []
    for net in nets:
        h = hidden_width(net)
        for j, rule in enumerate(cfg.prunes):
            if rule.level_name is None and rule.schedule_c is None:
                raise ProbPruneError(f"prunes[{j}]: give a level (relative_threshold, threshold, p, prune_fraction) "
                                     "or a schedule (schedule_c, schedule_alpha)")
            points.append(GridPoint(len(points), h, j, net, rule.at_width(h), rule))
    return points


# --------------------------------------------------------------------------- per-point bound


@dataclass(frozen=True)
class PointBound:
    """ε used at a grid point and where it came from.

    Attributes:
        eps: the ε checked (``bound.eps`` if given, else ε(δ) of the theory, times ``mc.eps_scale``), or
            ``None`` when no theorem covers the point.
        eps_theory: ε(δ) of :func:`probprune.bounds.probabilistic_bound` (``None`` if not covered).
        theorem: the theorem used, or why none applies.
        theory_exponent: predicted decay exponent λ (gap ∝ h^{−λ}) for a schedule, else ``None``.
    """

    eps: float | None
    eps_theory: float | None
    theorem: str
    theory_exponent: float | None


def point_bound(cfg: RunConfig, point: GridPoint) -> PointBound:
    """The probabilistic bound ε(δ) at a grid point (``mc.eps_scale`` applied; 1 = as proved).

    A point outside the theorems' assumptions (e.g. exact-count random pruning, biases,
    σ(0) ≠ 0) gets ``eps_theory=None`` and the reason in ``theorem``.
    """
    rule = point.rule
    lam: float | None = None
    if rule.schedule_alpha is not None:
        lam = theory_exponent(rule.method, rule.schedule_alpha, rule.rescale)
    try:
        b = probabilistic_bound(point.net, cfg.law, point.prune, cfg.bound.delta, radius=cfg.gap.radius)
        eps_theory: float | None = float(b.value)
        theorem = b.theorem
    except ProbPruneError as e:
        eps_theory, theorem = None, f"not covered: {e}"
    base = cfg.bound.eps if cfg.bound.eps is not None else eps_theory
    eps = None if base is None else base * cfg.mc.eps_scale
    return PointBound(eps, eps_theory, theorem, lam)


# --------------------------------------------------------------------------- trials


def trial_generators(config_hash: str, grid_index: int, trials: Sequence[int], stream: str,
                     device: str = "cpu") -> list[torch.Generator]:
    """One generator per trial for ``stream``, seeded by ``derive_seed(config_hash, g, t, stream)``."""
    if stream not in STREAMS:
        raise ProbPruneError(f"stream={stream!r}: must be one of {', '.join(STREAMS)}")
    return [make_generator(derive_seed(config_hash, grid_index, int(t), stream), device) for t in trials]


def probe_generator(config_hash: str, grid_index: int, stream: str, device: str = "cpu") -> torch.Generator:
    """The generator of the estimator's probe points at a grid point (shared by all its trials)."""
    if stream not in PROBE_STREAMS:
        raise ProbPruneError(f"stream={stream!r}: must be one of {', '.join(PROBE_STREAMS)}")
    return make_generator(derive_seed(config_hash, grid_index, stream), device)


def sample_ensemble(cfg: RunConfig, point: GridPoint, config_hash: str, trials: Sequence[int], *,
                    workers: Executor | None = None) -> Net:
    """Targets F of ``trials`` at ``point`` as one ensemble ``[K, …]`` (member k = trial ``trials[k]``).

    ``workers``: CPU workers on which the members draw in parallel (same values either way).
    """
    gens = trial_generators(config_hash, point.index, trials, "weights", cfg.mc.device)
    return sample_net(point.net, cfg.law, gens, cfg.mc.device, torch_dtype(cfg.mc.dtype), workers=workers)


def prune_ensemble(cfg: RunConfig, point: GridPoint, config_hash: str, trials: Sequence[int],
                   target: Net) -> tuple[Net, Tensor]:
    """Prune every member of ``target`` by the point's rule.

    Returns:
        The pruned ensemble f and the measured sparsity per member ``[K]`` (share removed).
    """
    pr = point.prune
    gens = trial_generators(config_hash, point.index, trials, "mask", cfg.mc.device) \
        if pr.method == "random" else None
    res = prune(target, pr, generator=gens, law=cfg.law)
    size = sum(keep[0].numel() for keep in res.masks.values())
    kept = sum(count_true(keep.reshape(len(trials), -1)) for keep in res.masks.values())
    removed = (size - torch.as_tensor(kept)).to(torch.float64).cpu()  # one transfer for all layers
    return res.model, removed / max(size, 1)


def run_trials(cfg: RunConfig, point: GridPoint, config_hash: str, trials: Sequence[int],
               eps: float | None = None, *, certify: bool = True, version: str | None = None,
               policy: ExecutionPolicy | None = None, workers: Executor | None = None) -> list[TrialRow]:
    """Run ``trials`` of ``point`` as one ensemble: sample → prune → sup-gap → certified bound.

    Every value is a function of (config, grid index, trial index) alone: chunks of any
    size give identical rows (up to ``seconds``) on the same device and dtype.

    Args:
        cfg: the run.
        point: the grid point (from :func:`expand_grid`).
        config_hash: ``config_hash(cfg)`` — the root of every seed.
        trials: trial indices t (distinct, >= 0); the ensemble size K is ``len(trials)``.
        eps: ε to record in the rows (see :func:`point_bound`).
        certify: compute the certified upper bound (``False`` records NaN; for benchmarks).
        policy, workers: how the forward passes run (:meth:`probprune.nets.Net.forward`); nothing
            global is read or set here — the runner applies ``mc.matmul`` (TF32 flags) and the
            thread count around the call (:func:`probprune.runner.execution.execution`). The
            certified bound covers a TF32 forward whenever ``mc.matmul = tf32``.
        version: the probprune version to record in the rows.

    Returns:
        One :class:`TrialRow` per trial, in the order of ``trials``.
    """
    ts = [int(t) for t in trials]
    if not ts:
        raise ProbPruneError("trials: empty chunk")
    if len(set(ts)) != len(ts) or min(ts) < 0:
        raise ProbPruneError(f"trials={ts!r}: must be distinct indices >= 0")
    start = time.perf_counter()
    with torch.no_grad():
        target = sample_ensemble(cfg, point, config_hash, ts, workers=workers)
        pruned, sparsity = prune_ensemble(cfg, point, config_hash, ts, target)
    dev = cfg.mc.device
    est = sup_gap(target, pruned, cfg.gap, probe_generator(config_hash, point.index, "gap", dev),
                  policy=policy, workers=workers)
    out = sup_output(target, cfg.gap, probe_generator(config_hash, point.index, "output", dev),
                     policy=policy, workers=workers)
    gap_lower = est.value.detach().to(torch.float64).cpu().reshape(-1)
    out_sup = out.value.detach().to(torch.float64).cpu().reshape(-1)
    if certify:
        with torch.no_grad():
            # TF32 products (mc.matmul = tf32) round their operands: the bound then covers that forward pass too
            cb = certified_gap_bound(target, pruned, radius=cfg.gap.radius, tf32=cfg.mc.matmul == "tf32")
        upper = torch.as_tensor(cb.value).detach().to(torch.float64).cpu().reshape(-1)
    else:
        upper = torch.full((len(ts),), math.nan, dtype=torch.float64)
    per = (time.perf_counter() - start) / len(ts)
    n_evals = int(est.n_evals)  # per member
    rows: list[TrialRow] = []
    for k, t in enumerate(ts):
        lo, osup = float(gap_lower[k]), float(out_sup[k])
        rows.append(TrialRow(
            grid_index=point.index, trial=t, seed=derive_seed(config_hash, point.index, t, "weights"),
            width=point.width, method=point.prune.method, level_name=point.level_name, level=point.level_value,
            gap_lower=lo, rel_gap_lower=lo / osup if osup > 0 else math.nan, out_sup=osup,
            gap_upper=float(upper[k]), eps=eps, sparsity=float(sparsity[k]), n_evals=n_evals, seconds=per,
            device=cfg.mc.device, dtype=cfg.mc.dtype, version=version))
    return rows


# --------------------------------------------------------------------------- statistics


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a binomial proportion with ``k`` successes in ``n``.

    ``lo = Beta(α/2; k, n − k + 1)``, ``hi = Beta(1 − α/2; k + 1, n − k)`` quantiles, with
    ``lo = 0`` at k = 0 and ``hi = 1`` at k = n (α = 1 − confidence).

    >>> clopper_pearson(0, 10)[0], clopper_pearson(10, 10)[1]
    (0.0, 1.0)
    >>> round(clopper_pearson(5, 10)[0], 4)
    0.1871
    """
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, int) or not isinstance(n, int):
        raise ProbPruneError(f"clopper_pearson: k={k!r}, n={n!r} must be integers")
    if n < 1 or not 0 <= k <= n:
        raise ProbPruneError(f"clopper_pearson: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ProbPruneError(f"confidence={confidence!r}: must be in (0, 1)")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(_beta.ppf(a / 2.0, k, n - k + 1))
    hi = 1.0 if k == n else float(_beta.ppf(1.0 - a / 2.0, k + 1, n - k))
    return lo, hi


def verdict(coverage_low: float, coverage_high: float, delta: float) -> Verdict:
    """The verdict of a Clopper–Pearson interval ``[coverage_low, coverage_high]`` on the claim coverage ≥ 1 − δ.

    *confirmed*: the whole interval lies above 1 − δ (the data show the bound holds, at the interval's
    confidence); *refuted*: the whole interval lies below 1 − δ (the data show it fails); *consistent*:
    the interval contains 1 − δ (the data neither confirm nor refute it — too few trials to tell).

    >>> verdict(0.83, 1.0, 0.05), verdict(0.96, 1.0, 0.05), verdict(0.2, 0.9, 0.05)
    ('consistent', 'confirmed', 'refuted')
    """
    target = 1.0 - delta
    if coverage_low > target:
        return "confirmed"
    if coverage_high < target:
        return "refuted"
    return "consistent"


def min_trials_to_confirm(delta: float, confidence: float = 0.95) -> int:
    """The fewest trials that can confirm P(gap ≤ ε) ≥ 1 − δ: n failure-free trials, lower end above 1 − δ.

    With k = n covered trials the two-sided Clopper–Pearson lower end is ``(α/2)^(1/n)``
    (α = 1 − confidence), which exceeds 1 − δ exactly when ``n > ln(α/2) / ln(1 − δ)``. With fewer
    trials a point can be *refuted* or *consistent*, never *confirmed*; with more, one failure may
    still keep it from confirming.

    >>> min_trials_to_confirm(0.05), min_trials_to_confirm(0.1), min_trials_to_confirm(0.05, 0.99)
    (72, 36, 104)
    """
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ProbPruneError(f"delta={delta!r}: must be in (0, 1)")
    if not 0.0 < confidence < 1.0:
        raise ProbPruneError(f"confidence={confidence!r}: must be in (0, 1)")
    n = max(1, math.floor(math.log((1.0 - confidence) / 2.0) / math.log1p(-delta)))
    # the closed form can be off by one where the ratio is (nearly) an integer: settle it with the interval itself
    while n > 1 and clopper_pearson(n - 1, n - 1, confidence)[0] > 1.0 - delta:
        n -= 1
    while clopper_pearson(n, n, confidence)[0] <= 1.0 - delta:
        n += 1
    return n


def _quantile(values: Sequence[float], q: float) -> float:
    """Empirical q-quantile (linear interpolation, as ``numpy.quantile``'s default)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(xs) - 1)
    return xs[i] + (xs[j] - xs[i]) * (pos - i)


def summarize_point(gap_lower: Sequence[float], gap_upper: Sequence[float], eps: float | None, delta: float,
                    confidence: float = 0.95, rel_gap_lower: Sequence[float] | None = None) -> PointSummary:
    """Coverage of ε at one grid point: empirical P(gap ≤ ε), its Clopper–Pearson interval, verdict.

    A trial *violates* ε when its empirical sup-gap (a lower bound on the true gap) exceeds ε —
    a certain violation. The claim P(gap ≤ ε) ≥ 1 − δ is **refuted** when the whole Clopper–Pearson
    interval of the coverage lies below 1 − δ, **confirmed** when it lies above, and **consistent**
    (neither shown) when it contains 1 − δ — always the case with fewer than
    :func:`min_trials_to_confirm` trials and no failure (20 trials give [0.83, 1] at 95 %).

    Args:
        gap_lower: ``[R]`` empirical sup-gaps.
        gap_upper: ``[R]`` certified upper bounds (NaN where not computed).
        eps: ε (``None``: nothing to check).
        delta: δ of the bound.
        confidence: confidence of the interval.
        rel_gap_lower: ``[R]`` relative gaps (optional).

    >>> s = summarize_point([0.1, 0.2, 0.3], [0.5, 0.6, 0.7], eps=0.25, delta=0.05)
    >>> s.n_covered, s.verdict, s.passed
    (2, 'consistent', True)
    >>> summarize_point([0.1] * 50, [0.5] * 50, eps=0.01, delta=0.05).verdict
    'refuted'
    >>> summarize_point([0.1] * 72, [0.5] * 72, eps=0.2, delta=0.05).verdict
    'confirmed'
    """
    n = len(gap_lower)
    if n < 1:
        raise ProbPruneError("summarize_point: no trials")
    if len(gap_upper) != n:
        raise ProbPruneError(f"summarize_point: {len(gap_upper)} upper values for {n} trials")
    lo_med = _quantile(gap_lower, 0.5)
    lo_q = _quantile(gap_lower, 1.0 - delta)
    ups = [u for u in gap_upper if not math.isnan(u)]
    up_med = _quantile(ups, 0.5) if ups else math.nan
    rel_med = _quantile([r for r in rel_gap_lower if not math.isnan(r)], 0.5) if rel_gap_lower else math.nan
    n_min = min_trials_to_confirm(delta, confidence)
    if eps is None:
        return PointSummary(n, lo_med, lo_q, rel_med, up_med, None, None, None, None, None, None, None, None,
                            delta, confidence, None, n_min)
    k = sum(1 for g in gap_lower if g <= eps)
    c_lo, c_hi = clopper_pearson(k, n, confidence)
    cert = sum(1 for u in ups if u <= eps) / len(ups) if ups else None
    tight = eps / lo_q if lo_q > 0 else math.inf
    v = verdict(c_lo, c_hi, delta)
    return PointSummary(n, lo_med, lo_q, rel_med, up_med, eps, k, k / n, c_lo, c_hi, cert,
                        v != "refuted", tight, delta, confidence, v, n_min)


def fit_slope(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``log v = slope·log h + intercept``; points with v ≤ 0 or NaN are dropped.

    Returns:
        ``(slope, intercept)``; NaN when fewer than two distinct widths remain.

    >>> s, b = fit_slope([100, 400, 1600], [1.0, 0.5, 0.25])
    >>> round(s, 6)
    -0.5
    """
    pts = [(h, v) for h, v in zip(widths, values) if h > 0 and v is not None and not math.isnan(v) and v > 0]
    if len({math.log(h) for h, _ in pts}) < 2:
        return math.nan, math.nan
    slope, intercept, _ = log_log_fit([h for h, _ in pts], [v for _, v in pts])
    return slope, intercept


def slopes_by_rule(points: Sequence[tuple[GridRow, PointSummary]]) -> list[SlopeRow]:
    """Fitted log-log slope of the median gap vs width, per pruning rule, beside the theory exponent.

    Args:
        points: grid points with their summaries (``prune_index``, ``method``, ``width`` and ``theory_exponent``
            of the grid row; ``gap_lower_median`` and ``rel_gap_lower_median`` of the summary).

    Returns:
        One record per rule with ≥ 2 widths: ``slope`` (d log gap / d log h), ``exponent`` (−slope, to
        compare with the theory's λ in gap ∝ h^{−λ}), the same for the relative gap, and ``theory_exponent``.
    """
    by: dict[int, list[tuple[GridRow, PointSummary]]] = {}
    for g, summary in points:
        by.setdefault(g.prune_index, []).append((g, summary))
    out: list[SlopeRow] = []
    for j, pts in sorted(by.items()):
        ws = [float(g.width) for g, _ in pts]
        if len(set(ws)) < 2:
            continue
        s, b = fit_slope(ws, [math.nan if p.gap_lower_median is None else p.gap_lower_median for _, p in pts])
        sr, _ = fit_slope(ws, [math.nan if p.rel_gap_lower_median is None else p.rel_gap_lower_median
                               for _, p in pts])
        out.append(SlopeRow(prune_index=j, method=pts[0][0].method, n_widths=len(set(ws)), slope=s, intercept=b,
                            exponent=-s, rel_slope=sr, theory_exponent=pts[0][0].theory_exponent))
    return out
