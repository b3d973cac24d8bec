"""Small builders of the report's records for tests: name only the fields a test cares about.

Every builder fills the other fields of :mod:`probprune.records` with neutral values; the field names are
the records' own (no other spelling is accepted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from probprune.records import ExperimentRow, GridRow, PointSummary, SlopeRow, TrialRow
from probprune.report.data import ReportData, ReportPoint, ReportSlope, ReportTrial, default_delta, versions_of

_GRID = {f.name for f in dataclasses.fields(GridRow)}
_STATS = {f.name for f in dataclasses.fields(PointSummary)}
_TRIAL = {f.name for f in dataclasses.fields(TrialRow)}


def grid(**kw: Any) -> GridRow:
    """A grid row; unnamed fields: grid point 0 of rule 0, layerwise, not rescaled, level p = 0."""
    base: dict[str, Any] = {"grid_index": 0, "width": 1, "prune_index": 0, "arch": "", "method": "magnitude",
                            "scope": "layerwise", "level_name": "p", "level_value": 0.0, "rescale": False}
    return GridRow(**{**base, **{k: v for k, v in kw.items() if k in _GRID}})


def point(**kw: Any) -> ReportPoint:
    """A grid point with a summary (``n_trials`` default 1) from grid and summary fields (``eps`` goes to both)."""
    unknown = set(kw) - _GRID - _STATS
    if unknown:
        raise TypeError(f"point: unknown field(s) {sorted(unknown)}")
    stats = {k: v for k, v in kw.items() if k in _STATS}
    return ReportPoint(grid(**kw), PointSummary(**{"n_trials": 1, **stats}))


def trial(**kw: Any) -> ReportTrial:
    """A trial beside its grid point (``scope``, ``rescale``, ``level_value`` → the grid; ``level`` follows it)."""
    unknown = set(kw) - _GRID - _TRIAL
    if unknown:
        raise TypeError(f"trial: unknown field(s) {sorted(unknown)}")
    g = grid(**kw)
    base: dict[str, Any] = {"grid_index": g.grid_index, "trial": 0, "seed": 0, "width": g.width, "method": g.method,
                            "level_name": g.level_name, "level": g.level_value}
    return ReportTrial(g, TrialRow(**{**base, **{k: v for k, v in kw.items() if k in _TRIAL}}))


def slope(**kw: Any) -> ReportSlope:
    """A fitted slope beside a grid point of its rule (``scope``, ``rescale`` → that grid point)."""
    fields = {f.name for f in dataclasses.fields(SlopeRow)}
    row = SlopeRow(**{"prune_index": 0, "n_widths": 2, **{k: v for k, v in kw.items() if k in fields}})
    return ReportSlope(row, grid(method=row.method, **{k: v for k, v in kw.items() if k in ("scope", "rescale")}))


def experiment(**kw: Any) -> ExperimentRow:
    """An experiment row from its fields."""
    return ExperimentRow(**kw)


def report(run_dir: str | Path, *, config: Mapping[str, Any] | None = None, points: Sequence[ReportPoint] = (),
           trials: Sequence[ReportTrial] = (), slopes: Sequence[ReportSlope] = (),
           experiment: Sequence[ExperimentRow] = (), **kw: Any) -> ReportData:
    """A :class:`ReportData` as :func:`probprune.report.data.load_report_data` would build it from such records."""
    cfg = dict(config or {})
    return ReportData(run_dir=Path(run_dir), config=cfg, points=list(points), trials=list(trials),
                      slopes=list(slopes), experiment=list(experiment),
                      delta=kw.pop("delta", default_delta(cfg, bool(points or trials))),
                      n_done=kw.pop("n_done", len(trials)), versions=versions_of([t.row for t in trials]), **kw)
