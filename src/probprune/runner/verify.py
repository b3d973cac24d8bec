"""``verify`` as a workflow: grid → units of work → executor (map) → driver (merge, store).

The grid is hidden widths × pruning rules (:func:`probprune.montecarlo.expand_grid`). A
*unit of work* is one grid point and a chunk of its trial indices; it is computed purely
from (config, grid index, trial indices) by :func:`compute_unit` — seeds come from
``derive_seed(config_hash, grid_index, trial, stream)`` — so units may run in any order,
in any process (the local executor here; a Ray executor has the same shape). Only the
driver (:func:`run_verify`) writes the store: each finished unit becomes one transaction
with its rows, the point's recomputed statistics and the refitted slopes.

Resume: trials already in ``results.sqlite`` are skipped; re-running a finished config is a no-op.
``mc.chunk_size`` only decides how the missing trials are grouped into units: it is not part of
the config hash (:data:`probprune.config.EXECUTION_FIELDS`), so a run may be resumed with another
chunk size, and chunk sizes 1, 7 and R give the same rows. The chunk size of the last writer is
recorded in the ``meta`` table. How a unit executes (forward form, threads; ``PROBPRUNE_FORWARD`` is
read once, into the run's :class:`~probprune.config.ExecutionPolicy`) travels with the unit and is
applied — then restored — by :func:`probprune.runner.execution.execution` around it. One driver at
a time: a second ``verify`` on a folder that is being written is refused
(:class:`probprune.store.runs.RunWriter` holds the folder's lock).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from probprune.config import (
    ExecutionPolicy,
    ProbPruneError,
    RunConfig,
    canonical_json,
    config_hash,
    from_dict,
    package_version,
)
from probprune.montecarlo import (
    GridPoint,
    PointBound,
    expand_grid,
    point_bound,
    run_trials,
    slopes_by_rule,
    summarize_point,
)
from probprune.records import GridRow, PointSummary, TrialRow
from probprune.runner.execution import execution, policy_from_env
from probprune.runner.prune import check_device as prune_check_device
from probprune.store.runs import RunInfo, RunWriter, open_run, prepare_run, read_points, read_slopes

__all__ = [
    "Executor",
    "LocalExecutor",
    "ProgressEvent",
    "Unit",
    "VerifyResult",
    "check_device",
    "check_run",
    "compute_unit",
    "from_canonical",
    "library_version",
    "plan_units",
    "run_verify",
]

def library_version() -> str:
    """The installed probprune version (stored with every trial)."""
    return package_version("probprune")


def check_device(device: str) -> None:
    """Fail early (before any file is written) when ``mc.device`` is not on this machine (the one shared rule)."""
    prune_check_device(device, "mc.device")


# --------------------------------------------------------------------------- units and executors


@dataclass(frozen=True)
class Unit:
    """One unit of work: trials ``trials`` of grid point ``grid_index`` of the run ``config``.

    Plain data (picklable): ``config`` is the canonical dict of the run, so a remote worker
    rebuilds everything from it; ``policy`` says how to execute it (never what it computes).
    """

    config: dict[str, Any]
    config_hash: str
    grid_index: int
    trials: tuple[int, ...]
    eps: float | None
    version: str
    policy: ExecutionPolicy = field(default_factory=ExecutionPolicy)


def compute_unit(unit: Unit) -> list[TrialRow]:
    """Rows of one unit (pure in its inputs: the same unit gives the same rows, up to ``seconds``)."""
    cfg = from_dict(unit.config)
    if config_hash(cfg) != unit.config_hash:
        raise ProbPruneError(f"unit: config hash {config_hash(cfg)} differs from {unit.config_hash}")
    point = expand_grid(cfg)[unit.grid_index]
    # the run's TF32 setting is mc.matmul (hashed: TF32 changes the numbers)
    with execution(replace(unit.policy, matmul=cfg.mc.matmul)) as ex:
        return run_trials(cfg, point, unit.config_hash, unit.trials, unit.eps, version=unit.version,
                          policy=ex.policy, workers=ex.workers)


class Executor(Protocol):
    """Runs units, yielding each with its rows as it finishes (any order)."""

    def map(self, fn: Callable[[Unit], list[TrialRow]], units: Sequence[Unit]
            ) -> Iterator[tuple[Unit, list[TrialRow]]]:
        """Apply ``fn`` to every unit; yield ``(unit, rows)`` pairs."""
        ...


class LocalExecutor:
    """Runs units one after another in this process (the default executor)."""

    def map(self, fn: Callable[[Unit], list[TrialRow]], units: Sequence[Unit]
            ) -> Iterator[tuple[Unit, list[TrialRow]]]:
        """Apply ``fn`` to each unit in order."""
        for u in units:
            yield u, fn(u)


def plan_units(cfg: RunConfig, points: Sequence[GridPoint], bounds: Sequence[PointBound],
               done: dict[int, Iterable[int]], version: str = "", policy: ExecutionPolicy | None = None
               ) -> list[Unit]:
    """Units for the missing trials: per grid point, missing indices in order, ``mc.chunk_size`` at a time."""
    data = from_canonical(cfg)
    h = config_hash(cfg)
    units: list[Unit] = []
    for p, b in zip(points, bounds):
        have = set(done.get(p.index, ()))
        missing = [t for t in range(cfg.mc.n_trials) if t not in have]
        cs = cfg.mc.chunk_size
        for i in range(0, len(missing), cs):
            units.append(Unit(data, h, p.index, tuple(missing[i:i + cs]), b.eps, version,
                              ExecutionPolicy() if policy is None else policy))
    return units


def from_canonical(cfg: RunConfig) -> dict[str, Any]:
    """The canonical dict of ``cfg`` (what ``config.json`` holds)."""
    return dict(json.loads(canonical_json(cfg)))


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class ProgressEvent:
    """What the driver reports to a progress callback after planning and after every unit."""

    done: int
    total: int
    new: int
    grid_index: int | None = None
    width: int | None = None
    method: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`run_verify`."""

    run_dir: Path
    info: RunInfo
    points: list[dict[str, Any]]
    slopes: list[dict[str, Any]]
    n_new: int
    seconds: float
    resumed: bool
    bounds: list[PointBound] = field(default_factory=list)


def _point_row(cfg: RunConfig, bound: PointBound, rows: Iterable[TrialRow]) -> PointSummary:
    rs = list(rows)
    lower = [r.gap_lower for r in rs]
    upper = [math.nan if r.gap_upper is None else r.gap_upper for r in rs]
    rel = [math.nan if r.rel_gap_lower is None else r.rel_gap_lower for r in rs]
    return summarize_point(lower, upper, bound.eps, cfg.bound.delta, cfg.mc.confidence, rel)


def _grid_row(point: GridPoint, bound: PointBound) -> GridRow:
    pr = point.prune
    return GridRow(grid_index=point.index, width=point.width, prune_index=point.prune_index,
                   arch=point.net.to_arch(), method=pr.method, scope=pr.scope, level_name=point.level_name,
                   level_value=point.level_value, rescale=pr.rescale, schedule_c=point.rule.schedule_c,
                   schedule_alpha=point.rule.schedule_alpha, eps=bound.eps, eps_theory=bound.eps_theory,
                   theorem=bound.theorem, theory_exponent=bound.theory_exponent)


def check_run(cfg: RunConfig, runs_dir: str | Path = "runs", resume: str | Path | None = None) -> tuple[Path, bool]:
    """Every check of :func:`run_verify` that needs no computation; writes nothing.

    Returns:
        ``(run_dir, exists)``.

    Raises:
        ProbPruneError: empty grid, a rule without a level, CUDA absent, ``resume`` not a run folder or
            holding another config.
    """
    points = expand_grid(cfg)
    if not points:
        raise ProbPruneError("grid: no grid points (empty widths or pruning rules)")
    check_device(cfg.mc.device)
    return prepare_run(runs_dir, cfg, resume=resume)


def run_verify(
    cfg: RunConfig,
    runs_dir: str | Path = "runs",
    *,
    executor: Executor | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    resume: str | Path | None = None,
    policy: ExecutionPolicy | None = None,
) -> VerifyResult:
    """Run (or resume) the verification of ``cfg`` into ``runs_dir/<config-hash>/``.

    Everything that can be wrong with the input (grid, device, a ``resume`` folder that is
    not a run or holds another config) is checked before anything is written.

    Args:
        cfg: the run.
        runs_dir: parent folder of run folders.
        executor: where units run (default :class:`LocalExecutor`).
        progress: called with a :class:`ProgressEvent` after planning and after each unit.
        resume: an explicit run folder to continue (must hold exactly ``cfg``).
        policy: how units execute (default: ``forward`` from ``$PROBPRUNE_FORWARD``, read once
            here; the process's thread count); results are the same either way.

    Returns:
        :class:`VerifyResult` with the run folder, its info, the points and the slopes as stored.
    """
    start = time.perf_counter()
    pol = policy_from_env() if policy is None else policy
    points = expand_grid(cfg)
    if not points:
        raise ProbPruneError("grid: no grid points (empty widths or pruning rules)")
    # a remote executor checks the device against its cluster, not this (driver) machine
    getattr(executor, "check_device", check_device)(cfg.mc.device)
    run_dir, exists = prepare_run(runs_dir, cfg, resume=resume)
    bounds = [point_bound(cfg, p) for p in points]
    ver = library_version()
    grid = [_grid_row(p, b) for p, b in zip(points, bounds)]
    writer = RunWriter(run_dir, cfg, grid, cfg.mc.n_trials,
                       meta={"version": ver, "device": cfg.mc.device, "dtype": cfg.mc.dtype,
                             "torch": torch.__version__, "chunk_size": str(cfg.mc.chunk_size)})
    n_new = 0
    try:
        state = writer.done()
        units = plan_units(cfg, points, bounds, {g: rows.keys() for g, rows in state.items()}, ver, pol)
        total = len(points) * cfg.mc.n_trials
        n_done = sum(len(v) for v in state.values())
        if progress is not None:
            progress(ProgressEvent(n_done, total, 0))
        summaries = {g: _point_row(cfg, bounds[g], rows.values()) for g, rows in state.items() if rows}
        ex = executor if executor is not None else LocalExecutor()
        for unit, rows in ex.map(compute_unit, units):
            g = unit.grid_index
            cur = state.setdefault(g, {})
            for r in rows:
                cur[r.trial] = r
            summaries[g] = _point_row(cfg, bounds[g], cur.values())
            slopes = slopes_by_rule([(grid[i], s) for i, s in summaries.items()])
            writer.write_chunk(rows, summaries[g], slopes)
            n_done += len(rows)
            n_new += len(rows)
            if progress is not None:
                progress(ProgressEvent(n_done, total, len(rows), g, points[g].width, points[g].prune.method))
        if n_done >= total:
            writer.set_meta("finished", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    finally:
        writer.close()
    info = open_run(run_dir)
    return VerifyResult(run_dir, info, read_points(run_dir), read_slopes(run_dir), n_new,
                        time.perf_counter() - start, exists, bounds)

