"""What a report shows about one run folder: the store's records, read once, never recomputed.

A Monte Carlo run (``probprune verify``) gives its grid points (:class:`~probprune.records.GridRow` with
the point's :class:`~probprune.records.PointSummary`), its trials (:class:`~probprune.records.TrialRow`,
each beside its grid point: the trial row names the rule only by index) and its fitted slopes
(:class:`~probprune.records.SlopeRow`, beside a grid point of the rule); a real-data experiment gives
its settings (:class:`~probprune.records.ExperimentRow`). The figures and pages read those records'
fields by name: nothing is renamed between the store and the report.

Terms (``DESIGN.md``): ``prune_fraction`` = share of weights **removed**; ``sparsity`` = the same share as
measured; gap = ``sup_{‖x‖≤r} ‖f(x) − F(x)‖₂`` (output units).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from probprune.config import ProbPruneError, to_dict
from probprune.records import ExperimentRow, GridRow, PointSummary, SlopeRow, TrialRow
from probprune.store.experiments import experiment_records, is_experiment_dir
from probprune.store.runs import DB_FILE, grid_records, open_run, point_records, slope_records, trial_records

__all__ = [
    "ReportData",
    "ReportPoint",
    "ReportSlope",
    "ReportTrial",
    "experiment_expected",
    "load_report_data",
    "series_label",
]


def series_label(method: str, scope: str | None, rescale: bool | None) -> str:
    """Legend label of a pruning rule, e.g. ``random (rescaled), global``.

    >>> series_label("random", "layerwise", True)
    'random (rescaled)'
    """
    s = str(method) + (" (rescaled)" if rescale else "")
    return s if scope in (None, "layerwise") else f"{s}, {scope}"


@dataclass(frozen=True)
class ReportPoint:
    """One grid point as stored: its setting and bound, and its statistics (``None`` before its first trial)."""

    grid: GridRow
    summary: PointSummary | None = None

    @property
    def label(self) -> str:
        """The rule's legend label (:func:`series_label`)."""
        return series_label(self.grid.method, self.grid.scope, self.grid.rescale)

    @property
    def n_trials(self) -> int:
        """Trials summarised (0 before the first)."""
        return 0 if self.summary is None else self.summary.n_trials

    def to_dict(self) -> dict[str, Any]:
        """The point as ``store.runs.read_points`` gives it (grid fields, then the statistics but ``eps``)."""
        stats = self.summary.to_dict() if self.summary is not None else {"n_trials": 0}
        return {**self.grid.to_dict(), **{k: v for k, v in stats.items() if k != "eps"}}


@dataclass(frozen=True)
class ReportTrial:
    """One stored trial beside its grid point (for the rule's scope and rescaling, which the row does not hold)."""

    grid: GridRow
    row: TrialRow

    @property
    def label(self) -> str:
        """The rule's legend label (:func:`series_label`)."""
        return series_label(self.row.method, self.grid.scope, self.grid.rescale)


@dataclass(frozen=True)
class ReportSlope:
    """One fitted slope beside a grid point of its rule (``None`` when no grid point names the rule)."""

    slope: SlopeRow
    grid: GridRow | None = None

    @property
    def label(self) -> str:
        """The rule's legend label (:func:`series_label`)."""
        g = self.grid
        return series_label(self.slope.method, None if g is None else g.scope, None if g is None else g.rescale)


def experiment_expected(config: Mapping[str, Any]) -> int | None:
    """Settings an experiment config asks for: models × seeds × prune_fractions × methods × scopes × (1 or 2).

    The second factor 2 is the fine-tuned copy of every setting (``finetune_epochs > 0``); the product
    mirrors ``runner.experiment.ExperimentSpec.n_settings`` (the report cannot import the runner).
    ``None`` when the stored config lacks one of the lists.

    >>> experiment_expected({"models": ["a", "b"], "seeds": [0], "prune_fractions": [0, .5, .9],
    ...                      "methods": ["random", "magnitude"], "scopes": ["layerwise", "global"],
    ...                      "finetune_epochs": 0.1})
    48
    """
    n = 1
    for key in ("models", "seeds", "prune_fractions", "methods", "scopes"):
        v = config.get(key)
        if not isinstance(v, (list, tuple)):
            return None
        n *= len(v)
    ft = config.get("finetune_epochs")
    if isinstance(ft, bool) or not isinstance(ft, (int, float)):
        return None
    return n * (2 if ft > 0 else 1)


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows about one run folder (read, never recomputed).

    Attributes:
        run_dir: the run folder.
        config: the stored config as plain JSON data (``config.json``).
        config_hash: the run's hash (folder name) or ``None``.
        status: ``complete`` or ``partial`` (trials / settings still missing).
        n_done, n_expected: what is stored / what the config asks for (``None`` if unknown): trials of a
            Monte Carlo run, settings of a real-data experiment (see :attr:`kind`).
        delta: failure probability δ of the probabilistic bound (``None`` if none).
        points, trials, slopes: Monte Carlo results.
        experiment: real-data settings.
        versions: library versions / devices recorded in the trials.
        meta: the run's stored metadata (created, version, device …).
    """

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    status: Literal["complete", "partial"] = "complete"
    n_done: int = 0
    n_expected: int | None = None
    delta: float | None = None
    points: list[ReportPoint] = field(default_factory=list)
    trials: list[ReportTrial] = field(default_factory=list)
    slopes: list[ReportSlope] = field(default_factory=list)
    experiment: list[ExperimentRow] = field(default_factory=list)
    versions: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> Literal["verify", "experiment"]:
        """Which run this is: a Monte Carlo check (``verify``) or a real-data experiment (``experiment``)."""
        if self.config.get("kind") == "experiment" or (self.experiment and not (self.points or self.trials)):
            return "experiment"
        return "verify"

    @property
    def unit(self) -> str:
        """What :attr:`n_done` counts: ``trials`` or ``settings``."""
        return "settings" if self.kind == "experiment" else "trials"

    @property
    def empty(self) -> bool:
        """No trial, grid point or experiment row to show."""
        return not (self.trials or self.experiment or any(p.n_trials for p in self.points))


def versions_of(trials: Sequence[TrialRow]) -> dict[str, list[str]]:
    """The distinct ``version``, ``device`` and ``dtype`` values recorded in the trials."""
    out: dict[str, list[str]] = {}
    for key in ("version", "device", "dtype"):
        vals = sorted({str(v) for t in trials if (v := getattr(t, key)) is not None})
        if vals:
            out[key] = vals
    return out


def default_delta(config: Mapping[str, Any], has_results: bool) -> float | None:
    """δ of the stored config; the config's default 0.05 (``BoundSpec``) when a config with results omits it."""
    bound = config.get("bound")
    if isinstance(bound, Mapping):
        d = bound.get("delta", 0.05)
        return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None
    return 0.05 if has_results else None


def _config_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: config.json is not readable JSON ({e})") from None
    return dict(data) if isinstance(data, Mapping) else {}


def _load_experiment(d: Path) -> ReportData:
    rows = experiment_records(d)
    cfg = _config_json(d)
    n_expected = experiment_expected(cfg)
    status: Literal["complete", "partial"] = \
        "partial" if n_expected is not None and len(rows) < n_expected else "complete"
    return ReportData(run_dir=d, config=cfg, config_hash=d.name, status=status, n_done=len(rows),
                      n_expected=n_expected, delta=default_delta(cfg, False), experiment=rows)


def _load_verify(d: Path) -> ReportData:
    info = open_run(d)
    grid = {g.grid_index: g for g in grid_records(d)}
    by_rule: dict[int, GridRow] = {}
    for g in grid.values():
        by_rule.setdefault(g.prune_index, g)
    trials = trial_records(d)
    cfg = to_dict(info.config)
    return ReportData(
        run_dir=d, config=cfg, config_hash=info.hash, status=info.status, n_done=info.n_done,
        n_expected=info.n_expected, delta=default_delta(cfg, True),
        points=[ReportPoint(g, s) for g, s in point_records(d)],
        trials=[ReportTrial(grid[t.grid_index], t) for t in trials],
        slopes=[ReportSlope(s, by_rule.get(s.prune_index)) for s in slope_records(d)],
        versions=versions_of(trials), meta=dict(info.meta))


def load_report_data(run_dir: str | Path) -> ReportData:
    """Read one run folder through the store's readers (Monte Carlo results or real-data results).

    Raises:
        ProbPruneError: ``run_dir`` is not a folder, or its store fails validation.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: not a directory")
    if is_experiment_dir(d):
        return _load_experiment(d)
    if (d / DB_FILE).is_file():
        return _load_verify(d)
    cfg = _config_json(d)
    return ReportData(run_dir=d, config=cfg, config_hash=d.name if (d / "config.json").is_file() else None,
                      delta=default_delta(cfg, False))
