"""Result records: the rows that travel from the engine through the store to the report, defined once.

Every result a run stores is one of these frozen dataclasses. The Monte Carlo engine
(:mod:`probprune.montecarlo`) and the workflows (:mod:`probprune.runner`) build them, the store
derives its SQLite tables from their fields (:mod:`probprune.store.tables`: column names in field
order, SQL types from the annotations, ``NOT NULL`` for every field that is not ``… | None``, the
primary key from :data:`KEYS`) and the report reads them back, attribute by attribute. No layer
re-keys them: a column is the field of the same name everywhere.

A float that is NaN (no value: a relative gap with ``sup ‖F‖ = 0``, a certified bound that was not
computed) is stored as SQL NULL and read back as ``None``, which is why such fields are typed
``float | None``.

Terms (``DESIGN.md``): gap = ``sup_{‖x‖₂ ≤ r} ‖f(x) − F(x)‖₂``; ``prune_fraction`` = share of weights
**removed**; ``sparsity`` = the same share as measured.

>>> GridRow.__dataclass_fields__["rescale"].type
'bool'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "KEYS",
    "VERDICTS",
    "CertifyLevelRow",
    "CertifyRadiusRow",
    "CertifyRow",
    "ExperimentRow",
    "GridRow",
    "PointSummary",
    "SlopeRow",
    "TrialRow",
    "Verdict",
]

#: What one grid point's trials say about the bound's claim P(gap ≤ ε) ≥ 1 − δ: the Clopper–Pearson
#: interval of the coverage lies above 1 − δ / contains it / lies below it.
Verdict = Literal["confirmed", "consistent", "refuted"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "consistent", "refuted")


class _Record:
    """What every record can do: give its fields as a plain dict (for JSON output)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, in field order."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True, kw_only=True)
class TrialRow(_Record):
    """Result of one trial (one row of the ``trials`` table; key ``(grid_index, trial)``).

    Attributes:
        grid_index, trial: the key (g, t).
        seed: ``derive_seed(config_hash, g, t, "weights")`` (the mask seed derives the same way).
        width: hidden width h of the grid point.
        method: pruning method of the grid point (``magnitude`` / ``random``).
        level_name, level: the level the rule was resolved to at this width (``relative_threshold``,
            ``threshold``, ``p`` or ``prune_fraction``) and its value.
        gap_lower: empirical sup-gap (a lower bound on the gap).
        rel_gap_lower: gap_lower / out_sup (``None``/NaN when out_sup = 0).
        out_sup: empirical sup ‖F(x)‖₂ over the ball.
        gap_upper: certified upper bound on the gap (``None``/NaN when not computed).
        eps: ε checked at this point (or ``None``).
        sparsity: measured share of weights removed.
        n_evals: network evaluations spent by the sup-gap estimator.
        seconds: wall time of the trial (its share of the ensemble's time).
        device, dtype: where and in which precision it ran.
        version: the probprune version that computed it.
    """

    grid_index: int
    trial: int
    seed: int
    width: int
    method: str
    level_name: str
    level: float
    gap_lower: float
    rel_gap_lower: float | None = None
    out_sup: float | None = None
    gap_upper: float | None = None
    eps: float | None = None
    sparsity: float | None = None
    n_evals: int | None = None
    seconds: float | None = None
    device: str | None = None
    dtype: str | None = None
    version: str | None = None


@dataclass(frozen=True, kw_only=True)
class GridRow(_Record):
    """One grid point: its setting and its bound (one row of the ``grid`` table; key ``grid_index``).

    Attributes:
        grid_index: g (widths outer, pruning rules inner).
        width: hidden width h.
        prune_index: position of the rule in ``RunConfig.prunes``.
        arch: the architecture at this width (``fcn:16,128,128,4``).
        method, scope, rescale: the pruning rule.
        level_name, level_value: its level at this width (a schedule c·h^{−α} resolved at h).
        schedule_c, schedule_alpha: the schedule as configured (``None`` for a fixed level).
        eps: ε checked (``None`` when no theorem covers the point and none is given).
        eps_theory: ε(δ) of the theory (``None`` if not covered).
        theorem: the theorem used, or why none applies.
        theory_exponent: the theory's λ of gap ∝ h^{−λ} for a schedule, else ``None``.
    """

    grid_index: int
    width: int
    prune_index: int
    arch: str
    method: str
    scope: str
    level_name: str
    level_value: float
    rescale: bool
    schedule_c: float | None = None
    schedule_alpha: float | None = None
    eps: float | None = None
    eps_theory: float | None = None
    theorem: str | None = None
    theory_exponent: float | None = None


@dataclass(frozen=True)
class PointSummary(_Record):
    """Statistics of one grid point over its trials (the ``points`` table is ``grid_index`` + these fields).

    Attributes:
        n_trials: trials summarised.
        gap_lower_median, gap_lower_quantile: median and (1−δ)-quantile of the empirical sup-gap.
        rel_gap_lower_median: median relative gap.
        gap_upper_median: median certified upper bound.
        eps: ε checked (or ``None``).
        n_covered: trials with gap_lower ≤ ε.
        coverage: n_covered / n_trials — the empirical P(gap ≤ ε).
        coverage_low, coverage_high: Clopper–Pearson interval of the coverage at ``confidence``.
        coverage_certified: share of trials whose certified upper bound is ≤ ε (proof the bound held).
        passed: ``True`` unless the point is *refuted* (``verdict != "refuted"``; ``None`` without ε) —
            "not refuted", which is weaker than *confirmed*; kept for scripts that read it.
        tightness: ε / gap_lower_quantile (how loose the bound is; ≥ 1 when it holds).
        delta, confidence: δ and the interval's confidence.
        verdict: ``confirmed`` (interval above 1 − δ), ``consistent`` (it contains 1 − δ) or ``refuted``
            (below), see :func:`probprune.montecarlo.verdict`; ``None`` without ε.
        n_trials_to_confirm: the fewest trials that can confirm at this δ and confidence
            (:func:`probprune.montecarlo.min_trials_to_confirm`, e.g. 72 at δ = 0.05, 95 %); a point with
            fewer trials can only be refuted or consistent.
    """

    n_trials: int
    gap_lower_median: float | None = None
    gap_lower_quantile: float | None = None
    rel_gap_lower_median: float | None = None
    gap_upper_median: float | None = None
    eps: float | None = None
    n_covered: int | None = None
    coverage: float | None = None
    coverage_low: float | None = None
    coverage_high: float | None = None
    coverage_certified: float | None = None
    passed: bool | None = None
    tightness: float | None = None
    delta: float | None = None
    confidence: float | None = None
    verdict: Verdict | None = None
    n_trials_to_confirm: int | None = None


@dataclass(frozen=True, kw_only=True)
class SlopeRow(_Record):
    """Fitted log-log slope of the median gap vs width for one pruning rule (``slopes``; key ``prune_index``).

    Attributes:
        prune_index: the rule's position in ``RunConfig.prunes``.
        method: its pruning method.
        n_widths: distinct widths fitted.
        slope, intercept: ``log gap_median = slope·log h + intercept`` (NaN/``None`` when not fittable).
        exponent: −slope, to compare with the theory's λ in gap ∝ h^{−λ}.
        rel_slope: the slope of the median relative gap.
        theory_exponent: the theory's λ (``None`` without a schedule).
    """

    prune_index: int
    method: str
    n_widths: int
    slope: float | None = None
    intercept: float | None = None
    exponent: float | None = None
    rel_slope: float | None = None
    theory_exponent: float | None = None


@dataclass(frozen=True, kw_only=True)
class ExperimentRow(_Record):
    """One setting of a real-data experiment (one row of the ``experiment`` table; key :data:`KEYS`).

    Attributes:
        dataset, model, method, scope: the setting.
        prune_fraction: share of weights removed (configured).
        finetuned: f retrained with its mask fixed.
        seed: the dense target's seed.
        test_accuracy: top-1 accuracy of f on the test set (share in [0, 1]).
        dense_accuracy: the same for F.
        gap_upper: certified upper bound of the gap over the ball of radius ``radius``.
        gap_lower: empirical lower bound of that gap (an input found in the ball).
        mean_test_gap, max_test_gap: mean / max ‖f(x) − F(x)‖₂ over the test set.
        radius: r of the ball (the largest ‖x‖₂ of a test input).
        sparsity: share of weights removed, measured.
        n_weights, n_kept: weights in all, weights non-zero after pruning (and fine-tuning).
        gap_n_evals: network evaluations of the gap search.
        bound_exact: the certified bound used exact operator norms.
        seconds: wall time of the setting.
    """

    dataset: str
    model: str
    method: str
    scope: str
    prune_fraction: float
    finetuned: bool
    seed: int
    test_accuracy: float
    dense_accuracy: float | None = None
    gap_upper: float | None = None
    gap_lower: float | None = None
    mean_test_gap: float | None = None
    max_test_gap: float | None = None
    radius: float | None = None
    sparsity: float | None = None
    n_weights: int | None = None
    n_kept: int | None = None
    gap_n_evals: int | None = None
    bound_exact: bool | None = None
    seconds: float | None = None


@dataclass(frozen=True, kw_only=True)
class CertifyRow(_Record):
    """One input of a ``probprune certify`` run (one row of the ``inputs`` table; key ``index``).

    Attributes:
        index: the input's row in the data (0-based).
        label: its label, when known.
        class_target, class_pruned: top-1 classes of F and f at the input (float64).
        lower: found gap ``‖f(x) − F(x)‖₂`` at a witness inside the ball (empirical lower bound).
        upper: certified gap: ``min(upper_differential, upper_layerwise)``.
        upper_differential, upper_layerwise: the two certified upper bounds.
        layerwise_radius: R of the ℓ2 ball around 0 the layerwise bound used.
        upper_from: ``differential`` or ``layerwise`` (the smaller one).
        ratio: ``upper / lower`` (``inf`` when lower = 0 < upper).
        verdict: ``certified`` / ``not certified`` / ``refuted`` (certified agreement).
        certified_agree, empirical_agree: the agreement verdicts.
        margin_target, margin_pruned: certified lower bounds of both nets' top-1 margins over the ball.
    """

    index: int
    label: int | None
    class_target: int
    class_pruned: int
    lower: float
    upper: float
    upper_differential: float
    upper_layerwise: float
    layerwise_radius: float
    upper_from: str
    ratio: float
    verdict: str
    certified_agree: bool
    empirical_agree: bool
    margin_target: float
    margin_pruned: float


@dataclass(frozen=True, kw_only=True)
class CertifyRadiusRow(_Record):
    """Certified agreement of one input at one scale of its ball (the "certified agreement vs radius" curve).

    Attributes:
        scale: the ball's size as a multiple of the run's (radius·scale, or half-widths·scale).
        index: the input.
        radius: the ball's radius (``None`` for per-input boxes).
        certified_agree: F and f provably have the same unique top-1 class in the scaled ball.
        upper: the differential certified gap over the scaled ball.
    """

    scale: float
    index: int
    radius: float | None
    certified_agree: bool
    upper: float


@dataclass(frozen=True, kw_only=True)
class CertifyLevelRow(_Record):
    """One measured prune fraction of ``certify --solve max-prune`` (one row of the ``levels`` table).

    Attributes:
        prune_fraction: the level (share of weights removed).
        certified_agreement, empirical_agreement: shares of inputs over the data.
        refuted: inputs where a disagreement was found.
        accuracy_pruned: top-1 accuracy of f at the inputs (``None`` without labels).
        meets_target: ``certified_agreement ≥`` the target.
        seconds: wall time of the level.
    """

    prune_fraction: float
    certified_agreement: float
    empirical_agreement: float
    refuted: int
    accuracy_pruned: float | None
    meets_target: bool
    seconds: float | None = None


#: The primary key of each record's table (the ``points`` table adds ``grid_index`` to :class:`PointSummary`).
KEYS: dict[type, tuple[str, ...]] = {
    TrialRow: ("grid_index", "trial"),
    GridRow: ("grid_index",),
    SlopeRow: ("prune_index",),
    ExperimentRow: ("dataset", "model", "method", "scope", "prune_fraction", "finetuned", "seed"),
    CertifyRow: ("index",),
    CertifyRadiusRow: ("scale", "index"),
    CertifyLevelRow: ("prune_fraction",),
}
