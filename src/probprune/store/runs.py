"""Run folders: ``runs/<config-hash>/`` with ``config.json`` and ``results.sqlite``.

A run is data. ``config.json`` holds the canonical JSON of the run's config (its SHA-256
prefix is the folder name); ``results.sqlite`` holds one row per trial (primary key
``(grid_index, trial)``, so a trial can never be stored twice), one row per grid point
(``grid``: the point's setting and bound; ``points``: its statistics, recomputed by the
driver after every chunk) and the fitted slopes. The database runs in WAL mode and every
chunk is one small transaction: a run stopped at any moment (Ctrl-C, SIGKILL) keeps every
committed chunk and resumes with the missing trials only. A writer that closes cleanly
checkpoints the WAL and switches the database back to rollback-journal mode, so a finished run
folder holds no ``-wal``/``-shm`` files.

Only the driver process writes, and only one at a time: :class:`RunWriter` holds an exclusive,
non-blocking ``flock`` on the folder's ``lock`` file for its whole life (a second process is
refused with the holder's pid). Readers (the report) use :func:`open_run`,
:func:`read_trials`, :func:`read_points` and :func:`read_slopes`, open the database read-only
(creating no files) and never recompute.

Nothing in a run folder is trusted: every open (read, report, resume) validates the store
first (:func:`open_run`, and :class:`RunWriter` before it writes): the schema, the stored
config hash against ``config.json`` (a missing ``hash`` meta row is refused, not guessed),
grid and trial indices in range, no duplicate ``(grid_index, trial)`` rows, no NULL or
non-numeric value where a number is required, trial rows that agree with their grid point, and
one ``points`` row per grid point with trials whose ``n_trials`` is that point's trial count.
Any violation raises one :class:`ProbPruneError` naming it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from probprune.config import (
    HASH_RULE,
    RESULTS_RULE,
    ProbPruneError,
    RunConfig,
    canonical_json,
    config_hash,
    from_dict,
    to_dict,
)
from probprune.records import KEYS, VERDICTS, GridRow, PointSummary, SlopeRow, TrialRow
from probprune.store.checkpoint import atomic_write_text
from probprune.store.tables import columns, create_table, from_sql, names, values

__all__ = [
    "CONFIG_FILE",
    "DB_FILE",
    "GRID_COLUMNS",
    "LOCK_FILE",
    "POINT_COLUMNS",
    "SLOPE_COLUMNS",
    "TIMING_FIELDS",
    "TRIAL_COLUMNS",
    "VERDICT_VALUES",
    "RunInfo",
    "RunWriter",
    "grid_records",
    "is_run_dir",
    "open_run",
    "point_records",
    "prepare_run",
    "read_grid",
    "read_points",
    "read_slopes",
    "read_trials",
    "run_dir_for",
    "slope_records",
    "trial_records",
]

CONFIG_FILE = "config.json"
DB_FILE = "results.sqlite"
LOCK_FILE = "lock"
SCHEMA_VERSION = 2  # 2: points.verdict, points.n_trials_to_confirm

#: The tables' columns ``(name, SQL declaration)``, derived from the records' fields (:mod:`probprune.store.tables`).
TRIAL_COLUMNS: tuple[tuple[str, str], ...] = columns(TrialRow)
GRID_COLUMNS: tuple[tuple[str, str], ...] = columns(GridRow)
POINT_COLUMNS: tuple[tuple[str, str], ...] = (("grid_index", "INTEGER PRIMARY KEY"), *columns(PointSummary, ()))
SLOPE_COLUMNS: tuple[tuple[str, str], ...] = columns(SlopeRow)
#: The values of ``points.verdict`` (:data:`probprune.records.VERDICTS`): the Clopper–Pearson interval of the
#: coverage lies above 1 − δ / contains it / lies below it.
VERDICT_VALUES: tuple[str, ...] = VERDICTS

#: The store's wall-clock fields, by table: ``meta`` keys (``created``, ``finished``: UTC times) and
#: columns (``seconds``: time spent on a trial / chunk / setting). They are the only stored values that
#: differ between two runs of the same config and seed — every other row and column is a function of
#: the config — so a comparison of two runs leaves exactly these out, and the report does not show them.
TIMING_FIELDS: Mapping[str, tuple[str, ...]] = {
    "meta": ("created", "finished"),
    "trials": ("seconds",),
    "experiment": ("seconds",),
}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    create_table("grid", GRID_COLUMNS),
    create_table("trials", TRIAL_COLUMNS, KEYS[TrialRow]),
    create_table("points", POINT_COLUMNS),
    create_table("slopes", SLOPE_COLUMNS),
)


def run_dir_for(runs_dir: str | Path, cfg: RunConfig) -> Path:
    """``runs_dir / config_hash(cfg)`` (nothing is created)."""
    return Path(runs_dir) / config_hash(cfg)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run (``config.json`` and ``results.sqlite``)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / DB_FILE).is_file()


def _load_stored_config(path: Path) -> tuple[RunConfig, str, str]:
    """``(config, hash, text)`` of a run folder's ``config.json``."""
    try:
        text = (path / CONFIG_FILE).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProbPruneError(f"run {str(path)!r}: {CONFIG_FILE} is unreadable ({e})") from None
    cfg = from_dict(data)
    return cfg, config_hash(cfg), text


def _rule1_hash(cfg: RunConfig) -> str:
    """The hash a run folder got under hash rule 1 (before issue 14): the non-default JSON without mc.chunk_size.

    Only to recognise such a folder and refuse it with the reason (its trials are seeded from that hash).
    """
    data = to_dict(cfg, non_default_only=True)
    mc = data.get("mc")
    if isinstance(mc, dict):
        mc.pop("chunk_size", None)
        if not mc:
            del data["mc"]
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _wal_header(db: Path) -> bool:
    """Whether the database file's header says WAL mode (format bytes 18-19 equal 2)."""
    try:
        with db.open("rb") as f:
            head = f.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[18] == 2 and head[19] == 2


def _connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection that creates no file in the run folder.

    A database left in WAL mode with no ``-wal`` file has nothing outside the main file, so it
    is opened ``immutable`` (a plain read-only open would create ``-wal``/``-shm``). With a
    ``-wal`` present (a writer at work, or one that was killed) the WAL must be read: a plain
    read-only open, which only uses files that are already there.
    """
    db = path / DB_FILE
    uri = f"file:{urllib.parse.quote(str(db))}?mode=ro"
    if _wal_header(db) and not db.with_name(DB_FILE + "-wal").exists():
        uri += "&immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=30.0)
        con.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error as e:
        raise ProbPruneError(f"run {str(path)!r}: {DB_FILE} is not a probprune results database ({e})") from None
    con.row_factory = sqlite3.Row
    return con


# --------------------------------------------------------------------------- validation

_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "meta": (("key", "TEXT PRIMARY KEY"), ("value", "TEXT NOT NULL")),
    "grid": GRID_COLUMNS,
    "trials": TRIAL_COLUMNS,
    "points": POINT_COLUMNS,
    "slopes": SLOPE_COLUMNS,
}
_META_INTS = ("schema_version", "n_grid", "n_trials", "n_expected")


def _kind(decl: str) -> str:
    return decl.split()[0]


def _required(cols: Sequence[tuple[str, str]]) -> list[str]:
    return [c for c, t in cols if "NOT NULL" in t or "PRIMARY KEY" in t]


def _bad_value_sql(table: str, cols: Sequence[tuple[str, str]], required: Sequence[str]) -> str:
    """SQL for the first row of ``table`` with a value of the wrong storage class or a NULL where one is required.

    One scan of the table: the query yields ``(rowid, column, problem)``.
    """
    wrong = {"INTEGER": "('real', 'text', 'blob')", "REAL": "('text', 'blob')", "TEXT": "('integer', 'real', 'blob')"}
    cases = [f"WHEN {c} IS NULL THEN '{c}\x1fNULL'" for c in required]
    cases += [f"WHEN typeof({c}) IN {wrong[_kind(t)]} THEN '{c}\x1ftype'" for c, t in cols]
    return (f"SELECT rowid, bad FROM (SELECT rowid, CASE {' '.join(cases)} END AS bad FROM {table}) "
            "WHERE bad IS NOT NULL LIMIT 1")


def _check_grid_rows(con: sqlite3.Connection, db: str, cfg: RunConfig, n_grid: int) -> None:
    """The grid rows are the config's grid: hidden widths (outer) × pruning rules (inner), each rule as resolved.

    Only what the config alone determines is checked here (the bound ε needs the theory: the
    driver compares it on resume).
    """
    n_rules = len(cfg.prunes)
    widths = cfg.mc.hidden_widths
    want = max(1, len(widths)) * n_rules
    if n_grid != want:
        raise ProbPruneError(f"{db}: meta n_grid = {n_grid}, but {CONFIG_FILE} gives {want} grid point(s) "
                             f"({max(1, len(widths))} width(s) × {n_rules} pruning rule(s))")
    cols = ("grid_index", "width", "prune_index", "method", "scope", "rescale", "level_name", "level_value",
            "schedule_c", "schedule_alpha")
    for row in con.execute(f"SELECT {', '.join(cols)} FROM grid ORDER BY grid_index"):
        r = dict(zip(cols, row))
        g = int(r["grid_index"])
        rule = cfg.prunes[g % n_rules]
        expect: dict[str, Any] = {"prune_index": g % n_rules, "method": rule.method, "scope": rule.scope,
                                  "rescale": int(rule.rescale), "schedule_c": rule.schedule_c,
                                  "schedule_alpha": rule.schedule_alpha}
        if widths:
            expect["width"] = widths[g // n_rules]
        if isinstance(r["width"], int) and r["width"] >= 1:
            resolved = rule.at_width(r["width"])
            expect["level_name"] = resolved.level_name
            if resolved.level_name is not None:
                expect["level_value"] = getattr(resolved, resolved.level_name)
        for c, v in expect.items():
            if not (r[c] is None and v is None) and not _same(r[c], v):
                raise ProbPruneError(f"{db}: grid point {g} has {c} = {r[c]!r}, but {CONFIG_FILE} gives {v!r}")


def _check_hash(stored: str | None, db: str, where: str, cfg: RunConfig, h: str, config_text: str | None) -> None:
    """The meta row ``hash`` is the config's hash; a folder of an older hash rule is refused with the reason."""
    if stored is None:
        raise ProbPruneError(f"{db}: the meta row 'hash' is missing, so nothing ties its rows to "
                             f"{CONFIG_FILE} (hash {h}); refusing to read or resume it")
    if stored == h:
        return
    if stored == _rule1_hash(cfg):
        raise ProbPruneError(f"run folder {where[4:]} was made by an older probprune (hash rule 1, hash {stored}); "
                             f"this probprune (hash rule {HASH_RULE}) names its config {h} and seeds its trials "
                             "from that hash: re-run it")
    if config_text is not None and hashlib.sha256(config_text.strip().encode()).hexdigest()[:16] == stored:
        raise ProbPruneError(f"{where}: made by an earlier probprune whose config hash ({stored}) included "
                             f"execution settings (mc.chunk_size); this config now hashes to {h} and its trials "
                             "are seeded from that hash, so the stored rows cannot be read or resumed as this "
                             "config's: run the config again")
    raise ProbPruneError(f"{where}: {CONFIG_FILE} (hash {h}) disagrees with its database (hash {stored})")


def _validate(con: sqlite3.Connection, where: str, cfg: RunConfig, h: str, config_text: str | None
              ) -> tuple[dict[str, str], int, int, int]:
    """Check the whole store against ``cfg``; return ``(meta, n_done, n_grid, n_trials)``.

    Args:
        con: a connection to the database.
        where: ``run '<folder>'`` (the prefix of every message).
        cfg, h: the run's config and its hash.
        config_text: the stored ``config.json`` text (to recognise a run of an older hash definition).

    Raises:
        ProbPruneError: the first problem found, named.
    """
    db = f"{where}: {DB_FILE}"
    _check_schema(con, db)
    meta = _check_meta(con, db, where, cfg, h, config_text)
    n_grid, n_trials = int(meta["n_grid"]), int(meta["n_trials"])
    _check_values(con, db)
    # grid: exactly the points 0 … n_grid−1
    idx = [int(r[0]) for r in con.execute("SELECT grid_index FROM grid ORDER BY grid_index")]
    if idx != list(range(n_grid)):
        odd = next((i for i in idx if not 0 <= i < n_grid), None)
        if odd is not None:
            raise ProbPruneError(f"{db}: grid point {odd} is out of range [0, {n_grid})")
        raise ProbPruneError(f"{db}: {len(idx)} grid point(s) stored, meta n_grid = {n_grid}")
    _check_grid_rows(con, db, cfg, n_grid)
    _check_trials(con, db, n_grid, n_trials)
    n_done = _check_points(con, db, n_grid)
    _check_verdicts(con, db)
    prunes = {int(r[0]) for r in con.execute("SELECT DISTINCT prune_index FROM grid")}
    for (pi,) in con.execute("SELECT prune_index FROM slopes ORDER BY prune_index"):
        if int(pi) not in prunes:
            raise ProbPruneError(f"{db}: a slopes row names pruning rule {pi}, which no grid point has")
    return meta, n_done, n_grid, n_trials


def _check_schema(con: sqlite3.Connection, db: str) -> None:
    """Every table with exactly the columns this version writes (the records' fields)."""
    for table, cols in _TABLES.items():
        have = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        if not have:
            raise ProbPruneError(f"{db}: table {table!r} is missing")
        want = [c for c, _ in cols]
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        if missing or extra:
            what = f"lacks column(s) {', '.join(missing)}" if missing else f"has unknown column(s) {', '.join(extra)}"
            raise ProbPruneError(f"{db}: table {table!r} {what}")


def _check_results_rule(meta: Mapping[str, str], where: str) -> None:
    """Refuse to resume a run whose rows an earlier estimator rule computed (see :data:`RESULTS_RULE`)."""
    rule = meta.get("results_rule", "1")
    if rule != str(RESULTS_RULE):
        raise ProbPruneError(f"{where}: its rows were computed under results rule {rule} (an earlier probprune's "
                             f"estimators); this probprune computes rule {RESULTS_RULE} and will not append to "
                             "it: read it as it is, or run the config again in another --runs-dir")


def _check_meta(con: sqlite3.Connection, db: str, where: str, cfg: RunConfig, h: str, config_text: str | None
                ) -> dict[str, str]:
    """The ``meta`` table: text values, the hash that ties the rows to ``config.json``, counts that agree."""
    meta = {str(k): v for k, v in con.execute("SELECT key, value FROM meta")}
    for k, v in meta.items():
        if not isinstance(v, str):
            raise ProbPruneError(f"{db}: meta row {k!r} holds {v!r}, not text")
    _check_hash(meta.get("hash"), db, where, cfg, h, config_text)
    ints: dict[str, int] = {}
    for k in _META_INTS:
        v = meta.get(k)
        if v is None or not v.isdigit():
            raise ProbPruneError(f"{db}: meta row {k!r} is {'missing' if v is None else repr(v)}")
        ints[k] = int(v)
    if ints["schema_version"] != SCHEMA_VERSION:
        raise ProbPruneError(f"{db}: schema version {ints['schema_version']}, this probprune reads "
                             f"version {SCHEMA_VERSION}")
    n_grid, n_trials = ints["n_grid"], ints["n_trials"]
    if n_trials != cfg.mc.n_trials:
        raise ProbPruneError(f"{db}: meta n_trials = {n_trials}, but {CONFIG_FILE} says mc.n_trials = "
                             f"{cfg.mc.n_trials}")
    if ints["n_expected"] != n_grid * n_trials:
        raise ProbPruneError(f"{db}: meta n_expected = {ints['n_expected']}, not n_grid × n_trials = "
                             f"{n_grid} × {n_trials}")
    return meta


def _check_values(con: sqlite3.Connection, db: str) -> None:
    """Storage classes, then NULLs where the record's field admits no ``None``."""
    for table in ("grid", "trials", "points", "slopes"):
        cols = _TABLES[table]
        bad = con.execute(_bad_value_sql(table, cols, _required(cols))).fetchone()
        if bad is not None:
            col, problem = str(bad[1]).split("\x1f")
            what = f"required column {col} is NULL" if problem == "NULL" else \
                f"column {col} has a value of the wrong type"
            raise ProbPruneError(f"{db}: table {table!r}, row {bad[0]}: {what}")


def _check_trials(con: sqlite3.Connection, db: str, n_grid: int, n_trials: int) -> None:
    """Trial indices in range, no duplicates, each trial agreeing with its grid point."""
    row = con.execute("SELECT grid_index, trial FROM trials WHERE grid_index < 0 OR grid_index >= ? "
                      "ORDER BY grid_index, trial LIMIT 1", (n_grid,)).fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: trial {row[1]} names grid point {row[0]}, out of range [0, {n_grid})")
    row = con.execute("SELECT grid_index, trial FROM trials WHERE trial < 0 OR trial >= ? "
                      "ORDER BY grid_index, trial LIMIT 1", (n_trials,)).fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: trial {row[1]} at grid point {row[0]} is out of range [0, {n_trials})")
    row = con.execute("SELECT grid_index, trial, COUNT(*) FROM trials GROUP BY grid_index, trial "
                      "HAVING COUNT(*) > 1 ORDER BY grid_index, trial LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: trial {row[1]} at grid point {row[0]} is stored {row[2]} times")
    row = con.execute("SELECT t.grid_index, t.trial, t.width, g.width, t.method, g.method FROM trials t "
                      "JOIN grid g USING (grid_index) WHERE t.width != g.width OR t.method != g.method "
                      "ORDER BY t.grid_index, t.trial LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: trial {row[1]} at grid point {row[0]} says width {row[2]}, method "
                             f"{row[4]!r}; the grid point is width {row[3]}, method {row[5]!r}")


def _check_points(con: sqlite3.Connection, db: str, n_grid: int) -> int:
    """One ``points`` row per grid point with trials, counting exactly its trials; returns the trials stored."""
    counts = {int(g): int(n) for g, n in con.execute("SELECT grid_index, COUNT(*) FROM trials GROUP BY grid_index")}
    points = {int(g): int(n) for g, n in con.execute("SELECT grid_index, n_trials FROM points")}
    for gi in sorted(set(counts) | set(points)):
        n_rows, n = counts.get(gi, 0), points.get(gi)
        if not 0 <= gi < n_grid:
            raise ProbPruneError(f"{db}: a points row names grid point {gi}, out of range [0, {n_grid})")
        if n is None:
            raise ProbPruneError(f"{db}: grid point {gi} has {n_rows} trial(s) but no points row")
        if n != n_rows:
            raise ProbPruneError(f"{db}: the points row of grid point {gi} counts {n} trial(s), the trials "
                                 f"table holds {n_rows}")
    return sum(counts.values())


def _check_verdicts(con: sqlite3.Connection, db: str) -> None:
    """Each stored verdict is one of :data:`VERDICT_VALUES` and says what its row's interval and ``passed`` say.

    confirmed ⇔ coverage_low > 1 − δ; refuted ⇔ coverage_high < 1 − δ; consistent otherwise; ``passed`` is
    "not refuted". A verdict needs its interval and δ; ``n_trials_to_confirm`` is at least 1.
    """
    allowed = ", ".join(f"'{v}'" for v in VERDICT_VALUES)
    row = con.execute(f"SELECT grid_index, verdict FROM points WHERE verdict IS NOT NULL AND verdict NOT IN "
                      f"({allowed}) ORDER BY grid_index LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: the points row of grid point {row[0]} has verdict {row[1]!r}, not one of "
                             f"{', '.join(VERDICT_VALUES)}")
    row = con.execute("SELECT grid_index, verdict FROM points WHERE verdict IS NOT NULL AND (coverage_low IS NULL "
                      "OR coverage_high IS NULL OR delta IS NULL) ORDER BY grid_index LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: the points row of grid point {row[0]} has verdict {row[1]!r} but no "
                             "coverage interval or δ to ground it")
    implied = ("CASE WHEN coverage_low > 1.0 - delta THEN 'confirmed' WHEN coverage_high < 1.0 - delta "
               "THEN 'refuted' ELSE 'consistent' END")
    row = con.execute(f"SELECT grid_index, verdict, {implied}, coverage_low, coverage_high, delta FROM points "
                      f"WHERE verdict IS NOT NULL AND verdict != {implied} ORDER BY grid_index LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: the points row of grid point {row[0]} says {row[1]!r}, but its interval "
                             f"[{row[3]}, {row[4]}] against 1 − δ = {1.0 - row[5]} is {row[2]!r}")
    row = con.execute("SELECT grid_index, verdict, passed FROM points WHERE verdict IS NOT NULL AND passed IS NOT "
                      "NULL AND passed != (verdict != 'refuted') ORDER BY grid_index LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: the points row of grid point {row[0]} says verdict {row[1]!r} but passed = "
                             f"{row[2]} (passed means not refuted)")
    row = con.execute("SELECT grid_index, n_trials_to_confirm FROM points WHERE n_trials_to_confirm < 1 "
                      "ORDER BY grid_index LIMIT 1").fetchone()
    if row is not None:
        raise ProbPruneError(f"{db}: the points row of grid point {row[0]} has n_trials_to_confirm = {row[1]}, "
                             "not a positive count")


@dataclass(frozen=True)
class RunInfo:
    """What a run folder holds, without reading its trials.

    Attributes:
        path: the run folder.
        config: the run's :class:`RunConfig` (from ``config.json``).
        hash: its config hash (the folder name for runs made by ``probprune verify``).
        status: ``complete`` when every expected trial is stored, else ``partial``.
        n_done: trials stored.
        n_expected: grid points × trials per point.
        n_grid: grid points.
        meta: the ``meta`` table (created, version, device, dtype …).
    """

    path: Path
    config: RunConfig
    hash: str
    status: Literal["complete", "partial"]
    n_done: int
    n_expected: int
    n_grid: int
    meta: dict[str, str]


def open_run(path: str | Path) -> RunInfo:
    """Open a run folder for reading, after validating the whole store (see the module docstring).

    Raises:
        ProbPruneError: ``path`` is not a run folder (no ``config.json``/``results.sqlite``), is damaged,
            or its database breaks any check of the store (the message names the first problem).
    """
    p = Path(path)
    if not is_run_dir(p):
        raise ProbPruneError(f"run {str(path)!r}: not a run directory (needs {CONFIG_FILE} and {DB_FILE})")
    cfg, h, text = _load_stored_config(p)
    with closing(_connect_ro(p)) as con:
        try:
            meta, n_done, n_grid, n_trials = _validate(con, f"run {str(path)!r}", cfg, h, text)
        except sqlite3.Error as e:
            raise ProbPruneError(f"run {str(path)!r}: {DB_FILE} cannot be read ({e})") from None
    n_expected = n_grid * n_trials
    status: Literal["complete", "partial"] = "complete" if n_expected and n_done == n_expected else "partial"
    return RunInfo(p, cfg, h, status, n_done, n_expected, n_grid, meta)


def trial_records(path: str | Path, grid_index: int | None = None) -> list[TrialRow]:
    """The stored trials as :class:`~probprune.records.TrialRow` records, ordered by (grid_index, trial)."""
    p = Path(path)
    open_run(p)
    with closing(_connect_ro(p)) as con:
        sql = f"SELECT {', '.join(names(TrialRow))} FROM trials"
        if grid_index is None:
            cur = con.execute(sql + " ORDER BY grid_index, trial")
        else:
            cur = con.execute(sql + " WHERE grid_index = ? ORDER BY trial", (int(grid_index),))
        return [from_sql(TrialRow, tuple(r)) for r in cur]


def grid_records(path: str | Path) -> list[GridRow]:
    """The grid points as :class:`~probprune.records.GridRow` records (setting and bound), by grid index."""
    p = Path(path)
    open_run(p)
    with closing(_connect_ro(p)) as con:
        cur = con.execute(f"SELECT {', '.join(names(GridRow))} FROM grid ORDER BY grid_index")
        return [from_sql(GridRow, tuple(r)) for r in cur]


def point_records(path: str | Path) -> list[tuple[GridRow, PointSummary | None]]:
    """Every grid point with its statistics as last written by the driver (``None``: no trial yet)."""
    p = Path(path)
    grid = grid_records(p)
    cols = names(PointSummary)
    with closing(_connect_ro(p)) as con:
        stats = {int(r[0]): from_sql(PointSummary, tuple(r)[1:])
                 for r in con.execute(f"SELECT grid_index, {', '.join(cols)} FROM points")}
    return [(g, stats.get(g.grid_index)) for g in grid]


def slope_records(path: str | Path) -> list[SlopeRow]:
    """The fitted slopes as :class:`~probprune.records.SlopeRow` records, by pruning rule."""
    p = Path(path)
    open_run(p)
    with closing(_connect_ro(p)) as con:
        cur = con.execute(f"SELECT {', '.join(names(SlopeRow))} FROM slopes ORDER BY prune_index")
        return [from_sql(SlopeRow, tuple(r)) for r in cur]


def read_trials(path: str | Path, grid_index: int | None = None) -> list[dict[str, Any]]:
    """One plain dict per stored trial (the fields of :class:`~probprune.records.TrialRow`), for JSON output."""
    return [r.to_dict() for r in trial_records(path, grid_index)]


def read_grid(path: str | Path) -> list[dict[str, Any]]:
    """One plain dict per grid point: its setting and bound (the fields of :class:`~probprune.records.GridRow`)."""
    return [g.to_dict() for g in grid_records(path)]


def read_points(path: str | Path) -> list[dict[str, Any]]:
    """One plain dict per grid point: setting, bound and statistics (as last written by the driver), for JSON.

    Keys: the fields of :class:`~probprune.records.GridRow` (``width``, ``method``, ``scope``, ``level_name``,
    ``level_value``, ``rescale``, ``eps``, ``eps_theory``, ``theorem``, ``theory_exponent`` …) and then those of
    :class:`~probprune.records.PointSummary` but ``eps`` (``n_trials``, ``gap_lower_median``,
    ``gap_lower_quantile`` (the (1−δ)-quantile), …, ``verdict``, ``n_trials_to_confirm``). A point with no
    trial yet has ``n_trials = 0`` and ``None`` statistics.
    """
    out = []
    for g, s in point_records(path):
        stats = {k: v for k, v in (s.to_dict() if s is not None else dict.fromkeys(names(PointSummary))).items()
                 if k != "eps"}
        out.append({**g.to_dict(), **stats})
        if s is None:
            out[-1]["n_trials"] = 0
    return out


def read_slopes(path: str | Path) -> list[dict[str, Any]]:
    """Fitted log-log slope of the median gap vs width per pruning rule, beside the theory exponent.

    Keys: the fields of :class:`~probprune.records.SlopeRow`: ``prune_index``, ``method``, ``n_widths``, ``slope``
    (d log gap / d log h), ``intercept``, ``exponent`` (−slope, compare with ``theory_exponent`` λ of
    gap ∝ h^{−λ}), ``rel_slope``.
    """
    return [s.to_dict() for s in slope_records(path)]


# --------------------------------------------------------------------------- writing (driver only)


def prepare_run(runs_dir: str | Path, cfg: RunConfig, *, resume: str | Path | None = None) -> tuple[Path, bool]:
    """Where ``cfg`` lives and whether it already exists there; checks, writes nothing.

    Args:
        runs_dir: parent folder of run folders.
        cfg: the resolved config.
        resume: an explicit run folder to continue (must hold a run of exactly ``cfg``).

    Returns:
        ``(run_dir, exists)``.

    Raises:
        ProbPruneError: ``resume`` is not a run folder; the stored config disagrees with ``cfg``; an existing
            store fails validation (:func:`open_run`); another process is writing the folder.
    """
    h = config_hash(cfg)
    if resume is not None:
        p = Path(resume)
        if not is_run_dir(p):
            raise ProbPruneError(f"--resume {str(resume)!r}: not a run directory (needs {CONFIG_FILE} and {DB_FILE})")
        _check_unlocked(p)
        stored = open_run(p).hash  # the whole store is validated before any work is planned on it
        if stored != h:
            raise ProbPruneError(f"--resume {str(resume)!r}: the config (hash {h}) disagrees with the stored run "
                                 f"(hash {stored})")
        return p, True
    p = Path(runs_dir) / h
    if p.is_dir():
        _check_unlocked(p)
    if (p / CONFIG_FILE).is_file():
        _, stored, _ = _load_stored_config(p)
        if stored != h:  # equal hashes: the same run, up to execution settings (mc.chunk_size)
            raise ProbPruneError(f"run {str(p)!r}: its {CONFIG_FILE} disagrees with this config (hash {h})")
        if (p / DB_FILE).is_file():
            open_run(p)
        return p, (p / DB_FILE).is_file()
    if p.exists() and not p.is_dir():
        raise ProbPruneError(f"run {str(p)!r}: exists and is not a directory")
    return p, False


class RunWriter:
    """The driver's handle on a run folder: creates it, stores chunks, updates statistics.

    One connection in WAL mode; every :meth:`write_chunk` is one transaction (rows + point
    summary + slopes), so a reader or a killed driver only ever sees whole chunks. The writer
    holds the folder's lock from construction to :meth:`close`; an existing database is
    validated (and its grid compared with ``grid``) before anything is written to it.
    """

    def __init__(self, run_dir: str | Path, cfg: RunConfig, grid: Sequence[GridRow], n_trials: int,
                 meta: Mapping[str, str] | None = None) -> None:
        """Open (creating if needed) the run folder of ``cfg`` at ``run_dir``.

        Args:
            run_dir: the folder (``runs/<config-hash>``).
            cfg: the run's config; ``config.json`` gets its canonical JSON.
            grid: one record per grid point.
            n_trials: trials per grid point (n_expected = len(grid)·n_trials).
            meta: extra key/values for the ``meta`` table (version, device …).

        Raises:
            ProbPruneError: another process holds the folder; the stored database fails validation, belongs
                to another config or holds another grid.
        """
        self.path = Path(run_dir)
        self.hash = config_hash(cfg)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.path)
        try:
            con = sqlite3.connect(self.path / DB_FILE, timeout=60.0, isolation_level=None)
        except sqlite3.Error as e:
            _unlock_folder(self.path, self._lock)
            raise ProbPruneError(f"run {str(self.path)!r}: {DB_FILE} cannot be opened ({e})") from None
        self._con: sqlite3.Connection | None = con
        try:
            self._open(con, cfg, grid, n_trials, meta)
        except sqlite3.DatabaseError as e:
            con.close()
            _unlock_folder(self.path, self._lock)
            raise ProbPruneError(f"run {str(self.path)!r}: {DB_FILE} is not a probprune results database "
                                 f"({e})") from None
        except BaseException:
            con.close()
            _unlock_folder(self.path, self._lock)
            raise

    def _open(self, con: sqlite3.Connection, cfg: RunConfig, grid: Sequence[GridRow], n_trials: int,
              meta: Mapping[str, str] | None) -> None:
        where = f"run {str(self.path)!r}"
        if con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
            # an existing store: trust nothing in it before writing (resume of a damaged or forged run)
            text = None
            if (self.path / CONFIG_FILE).is_file():
                _, stored_hash, text = _load_stored_config(self.path)
                if stored_hash != self.hash:
                    raise ProbPruneError(f"{where}: its {CONFIG_FILE} (hash {stored_hash}) disagrees with this "
                                         f"config (hash {self.hash})")
            meta_rows, *_ = _validate(con, where, cfg, self.hash, text)
            _check_grid(con, where, grid)
            _check_results_rule(meta_rows, where)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        with self._tx() as tx:
            for ddl in _SCHEMA:
                tx.execute(ddl)
            base = {"hash": self.hash, "results_rule": str(RESULTS_RULE),
                    "schema_version": str(SCHEMA_VERSION), "n_grid": str(len(grid)),
                    "n_trials": str(n_trials), "n_expected": str(len(grid) * n_trials)}
            stored = dict(tx.execute("SELECT key, value FROM meta").fetchall())
            if "created" not in stored:
                base["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for k, v in {**base, **(meta or {})}.items():
                tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, str(v)))
            tx.executemany(_insert("grid", names(GridRow), "INSERT OR REPLACE"), [values(g) for g in grid])
        if not (self.path / CONFIG_FILE).is_file():
            # written last: a folder with config.json always has a complete schema and grid
            atomic_write_text(self.path / CONFIG_FILE, canonical_json(cfg) + "\n")

    def _live(self) -> sqlite3.Connection:
        if self._con is None:
            raise ProbPruneError(f"run {str(self.path)!r}: the writer is closed")
        return self._con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._live()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def done(self) -> dict[int, dict[int, TrialRow]]:
        """Stored trials by grid index then trial index (the driver's resume state)."""
        out: dict[int, dict[int, TrialRow]] = {}
        for r in self._live().execute(f"SELECT {', '.join(names(TrialRow))} FROM trials"):
            row = from_sql(TrialRow, r)
            out.setdefault(row.grid_index, {})[row.trial] = row
        return out

    def write_chunk(self, rows: Sequence[TrialRow], point: PointSummary | None,
                    slopes: Sequence[SlopeRow] = ()) -> None:
        """Store one chunk of trial rows with the updated point summary and slopes (one transaction).

        The summary belongs to the chunk's grid point (every row of a chunk has the same ``grid_index``). A
        trial already stored makes the whole transaction fail (primary key): nothing is duplicated.

        Raises:
            ProbPruneError: a summary with no rows, or rows of several grid points with one summary.
        """
        gis = {r.grid_index for r in rows}
        if point is not None and len(gis) != 1:
            raise ProbPruneError(f"write_chunk: a point summary needs the rows of one grid point, got grid "
                                 f"indices {sorted(gis)}")
        with self._tx() as con:
            con.executemany(_insert("trials", names(TrialRow)), [values(r) for r in rows])
            if point is not None:
                con.execute(_insert("points", ["grid_index", *names(PointSummary)], "INSERT OR REPLACE"),
                            [gis.pop(), *values(point)])
            if slopes:
                con.execute("DELETE FROM slopes")
                con.executemany(_insert("slopes", names(SlopeRow)), [values(s) for s in slopes])

    def set_meta(self, key: str, value: str) -> None:
        """Set one ``meta`` entry (e.g. ``finished``)."""
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Checkpoint the WAL into the database file, leave WAL mode, close and release the folder.

        Back in rollback-journal mode the folder keeps no ``-wal``/``-shm`` files, and later
        read-only opens create none. A reader holding the database at this moment keeps it in
        WAL mode (the next writer's close switches it back); the data is complete either way.
        """
        con, self._con = self._con, None
        if con is None:
            return
        try:
            con.execute("PRAGMA busy_timeout = 5000")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass  # busy: the WAL is already checkpointed as far as the reader allows; nothing is lost
        finally:
            con.close()
            _unlock_folder(self.path, self._lock)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock_folder(path: Path) -> int:
    """Take the run folder's exclusive lock (non-blocking); return the lock file's descriptor.

    The lock is an ``flock`` on ``path/lock``, released by the kernel when its holder dies, so a
    killed run never leaves a stale lock. The file holds the holder's pid (for the message).

    Raises:
        ProbPruneError: another process holds the lock.
    """
    lock = path / LOCK_FILE
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ProbPruneError(f"run folder {str(path)!r}: cannot create its {LOCK_FILE} file ({e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ProbPruneError(f"run folder {str(path)!r} is in use by another probprune process "
                                 f"(pid {pid})") from None
        # the previous holder unlinks the file on release: our descriptor may name a removed file
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise ProbPruneError(f"run folder {str(path)!r}: its {LOCK_FILE} file keeps changing; another process is "
                         "starting and stopping on it")


def _check_unlocked(path: Path) -> None:
    """Refuse early (writing nothing) when another process holds the run folder's lock.

    Only a probe: the writer takes the lock for real (:func:`_lock_folder`), so a process that
    starts between this check and that one is still refused there.
    """
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file: no holder (a holder's file exists for as long as it holds it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise ProbPruneError(f"run folder {str(path)!r} is in use by another probprune process (pid {pid})") from None
    finally:
        os.close(fd)


def _unlock_folder(path: Path, fd: int) -> None:
    """Remove the lock file (while still holding it) and release the lock."""
    try:
        (path / LOCK_FILE).unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return bool(a == b)


def _check_grid(con: sqlite3.Connection, where: str, grid: Sequence[GridRow]) -> None:
    """Refuse to resume a store whose grid is not the grid this config expands to."""
    cols = names(GridRow)
    rows = con.execute(f"SELECT {', '.join(cols)} FROM grid ORDER BY grid_index").fetchall()
    if len(rows) != len(grid):
        raise ProbPruneError(f"{where}: {DB_FILE} holds {len(rows)} grid point(s), this config has {len(grid)}")
    for stored, g in zip(rows, grid):
        for c, v, want in zip(cols, stored, values(g)):
            if not _same(v, want):
                raise ProbPruneError(f"{where}: {DB_FILE}: grid point {g.grid_index} has {c} = {v!r}, "
                                     f"this config gives {want!r}")


def _insert(table: str, cols: Sequence[str], verb: str = "INSERT") -> str:
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
