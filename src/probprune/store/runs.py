"""Run folders: ``runs/<config-hash>/`` with ``config.json`` and ``results.sqlite``.

A run is data. ``config.json`` holds the canonical JSON of the run's config (its SHA-256
prefix is the folder name); ``results.sqlite`` holds one row per trial (primary key
``(grid_index, trial)``, so a trial can never be stored twice), one row per grid point
(``grid``: the point's setting and bound; ``points``: its statistics, recomputed by the
driver after every chunk) and the fitted slopes. The database runs in WAL mode and every
chunk is one small transaction: a run stopped at any moment (Ctrl-C, SIGKILL) keeps every
committed chunk and resumes with the missing trials only.

Only the driver process writes. Readers (the report) use :func:`open_run`,
:func:`read_trials`, :func:`read_points` and :func:`read_slopes` and never recompute.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from probprune.config import ProbPruneError, RunConfig, canonical_json, config_hash, from_dict
from probprune.store.checkpoint import atomic_write_text

__all__ = [
    "CONFIG_FILE",
    "DB_FILE",
    "GRID_COLUMNS",
    "POINT_COLUMNS",
    "SLOPE_COLUMNS",
    "TRIAL_COLUMNS",
    "RunInfo",
    "RunWriter",
    "is_run_dir",
    "open_run",
    "prepare_run",
    "read_grid",
    "read_points",
    "read_slopes",
    "read_trials",
    "run_dir_for",
]

CONFIG_FILE = "config.json"
DB_FILE = "results.sqlite"
SCHEMA_VERSION = 1

TRIAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grid_index", "INTEGER NOT NULL"), ("trial", "INTEGER NOT NULL"), ("seed", "INTEGER NOT NULL"),
    ("width", "INTEGER NOT NULL"), ("method", "TEXT NOT NULL"), ("level_name", "TEXT NOT NULL"),
    ("level", "REAL NOT NULL"), ("gap_lower", "REAL"), ("rel_gap_lower", "REAL"), ("out_sup", "REAL"),
    ("gap_upper", "REAL"), ("eps", "REAL"), ("sparsity", "REAL"), ("n_evals", "INTEGER"),
    ("seconds", "REAL"), ("device", "TEXT"), ("dtype", "TEXT"), ("version", "TEXT"),
)
GRID_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grid_index", "INTEGER PRIMARY KEY"), ("width", "INTEGER NOT NULL"), ("prune_index", "INTEGER NOT NULL"),
    ("arch", "TEXT NOT NULL"), ("method", "TEXT NOT NULL"), ("scope", "TEXT NOT NULL"),
    ("level_name", "TEXT NOT NULL"), ("level_value", "REAL NOT NULL"), ("rescale", "INTEGER NOT NULL"),
    ("schedule_c", "REAL"), ("schedule_alpha", "REAL"), ("eps", "REAL"), ("eps_theory", "REAL"),
    ("theorem", "TEXT"), ("theory_exponent", "REAL"),
)
POINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grid_index", "INTEGER PRIMARY KEY"), ("n_trials", "INTEGER NOT NULL"), ("gap_lower_median", "REAL"),
    ("gap_lower_quantile", "REAL"), ("rel_gap_lower_median", "REAL"), ("gap_upper_median", "REAL"),
    ("eps", "REAL"), ("n_covered", "INTEGER"), ("coverage", "REAL"), ("coverage_low", "REAL"),
    ("coverage_high", "REAL"), ("coverage_certified", "REAL"), ("passed", "INTEGER"), ("tightness", "REAL"),
    ("delta", "REAL"), ("confidence", "REAL"),
)
SLOPE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("prune_index", "INTEGER PRIMARY KEY"), ("method", "TEXT"), ("n_widths", "INTEGER"), ("slope", "REAL"),
    ("intercept", "REAL"), ("exponent", "REAL"), ("rel_slope", "REAL"), ("theory_exponent", "REAL"),
)


def _ddl(name: str, cols: Sequence[tuple[str, str]], extra: str = "") -> str:
    body = ", ".join(f"{c} {t}" for c, t in cols)
    return f"CREATE TABLE IF NOT EXISTS {name} ({body}{extra})"


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _ddl("grid", GRID_COLUMNS),
    _ddl("trials", TRIAL_COLUMNS, ", PRIMARY KEY (grid_index, trial)"),
    _ddl("points", POINT_COLUMNS),
    _ddl("slopes", SLOPE_COLUMNS),
)


def run_dir_for(runs_dir: str | Path, cfg: RunConfig) -> Path:
    """``runs_dir / config_hash(cfg)`` (nothing is created)."""
    return Path(runs_dir) / config_hash(cfg)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run (``config.json`` and ``results.sqlite``)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / DB_FILE).is_file()


def _load_stored_config(path: Path) -> tuple[RunConfig, str]:
    try:
        text = (path / CONFIG_FILE).read_text()
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise ProbPruneError(f"run {str(path)!r}: {CONFIG_FILE} is unreadable ({e})") from None
    cfg = from_dict(data)
    return cfg, config_hash(cfg)


def _connect_ro(path: Path) -> sqlite3.Connection:
    db = path / DB_FILE
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)
        con.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error as e:
        raise ProbPruneError(f"run {str(path)!r}: {DB_FILE} is not a probprune results database ({e})") from None
    con.row_factory = sqlite3.Row
    return con


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
    """Open a run folder for reading.

    Raises:
        ProbPruneError: ``path`` is not a run folder (no ``config.json``/``results.sqlite``) or is damaged.
    """
    p = Path(path)
    if not is_run_dir(p):
        raise ProbPruneError(f"run {str(path)!r}: not a run directory (needs {CONFIG_FILE} and {DB_FILE})")
    cfg, h = _load_stored_config(p)
    with closing(_connect_ro(p)) as con:
        meta = {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}
        n_done = int(con.execute("SELECT COUNT(*) FROM trials").fetchone()[0])
        n_grid = int(con.execute("SELECT COUNT(*) FROM grid").fetchone()[0])
    if meta.get("hash") not in (None, h):
        raise ProbPruneError(f"run {str(path)!r}: {CONFIG_FILE} (hash {h}) disagrees with its database "
                             f"(hash {meta.get('hash')})")
    n_expected = int(meta.get("n_expected", "0"))
    status: Literal["complete", "partial"] = "complete" if n_expected and n_done >= n_expected else "partial"
    return RunInfo(p, cfg, h, status, n_done, n_expected, n_grid, meta)


def _rows(con: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return [dict(r) for r in con.execute(sql, tuple(args))]


def read_trials(path: str | Path, grid_index: int | None = None) -> list[dict[str, Any]]:
    """One dict per stored trial (columns of :data:`TRIAL_COLUMNS`), ordered by (grid_index, trial)."""
    p = Path(path)
    open_run(p)
    with closing(_connect_ro(p)) as con:
        if grid_index is None:
            return _rows(con, "SELECT * FROM trials ORDER BY grid_index, trial")
        return _rows(con, "SELECT * FROM trials WHERE grid_index = ? ORDER BY trial", (int(grid_index),))


def read_grid(path: str | Path) -> list[dict[str, Any]]:
    """One dict per grid point: its setting and bound (:data:`GRID_COLUMNS`)."""
    p = Path(path)
    open_run(p)
    with closing(_connect_ro(p)) as con:
        out = _rows(con, "SELECT * FROM grid ORDER BY grid_index")
    for r in out:
        r["rescale"] = bool(r["rescale"])
    return out


def read_points(path: str | Path) -> list[dict[str, Any]]:
    """One dict per grid point: setting, bound and statistics (as last written by the driver).

    Keys: the grid columns (``width``, ``method``, ``scope``, ``level_name``, ``level_value``,
    ``rescale``, ``eps``, ``eps_theory``, ``theorem``, ``theory_exponent`` …) and the statistics
    (``n_trials``, ``gap_lower_median``, ``gap_lower_quantile`` (the (1−δ)-quantile),
    ``rel_gap_lower_median``, ``gap_upper_median``, ``n_covered``, ``coverage``, ``coverage_low``,
    ``coverage_high``, ``coverage_certified``, ``passed`` (bool or None), ``tightness``, ``delta``,
    ``confidence``). A point with no trial yet has ``n_trials = 0`` and ``None`` statistics.
    """
    p = Path(path)
    open_run(p)
    stat_cols = [c for c, _ in POINT_COLUMNS if c not in ("grid_index", "eps")]
    sel = ", ".join(f"p.{c} AS {c}" for c in stat_cols)
    with closing(_connect_ro(p)) as con:
        out = _rows(con, f"SELECT g.*, {sel} FROM grid g LEFT JOIN points p USING (grid_index) "
                         "ORDER BY g.grid_index")
    for r in out:
        r["rescale"] = bool(r["rescale"])
        r["passed"] = None if r["passed"] is None else bool(r["passed"])
        if r["n_trials"] is None:
            r["n_trials"] = 0
    return out


def read_slopes(path: str | Path) -> list[dict[str, Any]]:
    """Fitted log-log slope of the median gap vs width per pruning rule, beside the theory exponent.

    Keys: ``prune_index``, ``method``, ``n_widths``, ``slope`` (d log gap / d log h), ``intercept``,
    ``exponent`` (−slope, compare with ``theory_exponent`` λ of gap ∝ h^{−λ}), ``rel_slope``.
    """
    p = Path(path)
    open_run(p)
    with closing(_connect_ro(p)) as con:
        return _rows(con, "SELECT * FROM slopes ORDER BY prune_index")


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
        ProbPruneError: ``resume`` is not a run folder; the stored config disagrees with ``cfg``.
    """
    h = config_hash(cfg)
    if resume is not None:
        p = Path(resume)
        if not is_run_dir(p):
            raise ProbPruneError(f"--resume {str(resume)!r}: not a run directory (needs {CONFIG_FILE} and {DB_FILE})")
        _, stored = _load_stored_config(p)
        if stored != h:
            raise ProbPruneError(f"--resume {str(resume)!r}: the config (hash {h}) disagrees with the stored run "
                                 f"(hash {stored})")
        return p, True
    p = Path(runs_dir) / h
    if (p / CONFIG_FILE).is_file():
        _, stored = _load_stored_config(p)
        if stored != h or (p / CONFIG_FILE).read_text().strip() != canonical_json(cfg):
            raise ProbPruneError(f"run {str(p)!r}: its {CONFIG_FILE} disagrees with this config (hash {h})")
        return p, (p / DB_FILE).is_file()
    if p.exists() and not p.is_dir():
        raise ProbPruneError(f"run {str(p)!r}: exists and is not a directory")
    return p, False


class RunWriter:
    """The driver's handle on a run folder: creates it, stores chunks, updates statistics.

    One connection in WAL mode; every :meth:`write_chunk` is one transaction (rows + point
    summary + slopes), so a reader or a killed driver only ever sees whole chunks.
    """

    def __init__(self, run_dir: str | Path, cfg: RunConfig, grid: Sequence[Mapping[str, Any]], n_trials: int,
                 meta: Mapping[str, str] | None = None) -> None:
        """Open (creating if needed) the run folder of ``cfg`` at ``run_dir``.

        Args:
            run_dir: the folder (``runs/<config-hash>``).
            cfg: the run's config; ``config.json`` gets its canonical JSON.
            grid: one dict per grid point (:data:`GRID_COLUMNS`).
            n_trials: trials per grid point (n_expected = len(grid)·n_trials).
            meta: extra key/values for the ``meta`` table (version, device …).
        """
        self.path = Path(run_dir)
        self.hash = config_hash(cfg)
        self.path.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path / DB_FILE, timeout=60.0, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        with self._tx() as con:
            for ddl in _SCHEMA:
                con.execute(ddl)
            stored = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if stored.get("hash") not in (None, self.hash):
                raise ProbPruneError(f"run {str(self.path)!r}: database belongs to config {stored.get('hash')}, "
                                     f"not {self.hash}")
            base = {"hash": self.hash, "schema_version": str(SCHEMA_VERSION), "n_grid": str(len(grid)),
                    "n_trials": str(n_trials), "n_expected": str(len(grid) * n_trials)}
            if "created" not in stored:
                base["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for k, v in {**base, **(meta or {})}.items():
                con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, str(v)))
            names = [c for c, _ in GRID_COLUMNS]
            for g in grid:
                con.execute(f"INSERT OR REPLACE INTO grid ({', '.join(names)}) VALUES "
                            f"({', '.join('?' * len(names))})", [_sql(g.get(c)) for c in names])
        if not (self.path / CONFIG_FILE).is_file():
            # written last: a folder with config.json always has a complete schema and grid
            atomic_write_text(self.path / CONFIG_FILE, canonical_json(cfg) + "\n")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def done(self) -> dict[int, dict[int, dict[str, Any]]]:
        """Stored trials by grid index then trial index (the driver's resume state)."""
        self._con.row_factory = sqlite3.Row
        out: dict[int, dict[int, dict[str, Any]]] = {}
        for r in self._con.execute("SELECT * FROM trials"):
            d = dict(r)
            out.setdefault(int(d["grid_index"]), {})[int(d["trial"])] = d
        self._con.row_factory = None
        return out

    def write_chunk(self, rows: Sequence[Mapping[str, Any]], point: Mapping[str, Any] | None,
                    slopes: Sequence[Mapping[str, Any]] = ()) -> None:
        """Store one chunk of trial rows with the updated point summary and slopes (one transaction).

        A trial already stored makes the whole transaction fail (primary key): nothing is duplicated.
        """
        t_names = [c for c, _ in TRIAL_COLUMNS]
        p_names = [c for c, _ in POINT_COLUMNS]
        s_names = [c for c, _ in SLOPE_COLUMNS]
        with self._tx() as con:
            con.executemany(f"INSERT INTO trials ({', '.join(t_names)}) VALUES ({', '.join('?' * len(t_names))})",
                            [[_sql(r.get(c)) for c in t_names] for r in rows])
            if point is not None:
                con.execute(f"INSERT OR REPLACE INTO points ({', '.join(p_names)}) VALUES "
                            f"({', '.join('?' * len(p_names))})", [_sql(point.get(c)) for c in p_names])
            if slopes:
                con.execute("DELETE FROM slopes")
                con.executemany(f"INSERT INTO slopes ({', '.join(s_names)}) VALUES "
                                f"({', '.join('?' * len(s_names))})",
                                [[_sql(s.get(c)) for c in s_names] for s in slopes])

    def set_meta(self, key: str, value: str) -> None:
        """Set one ``meta`` entry (e.g. ``finished``)."""
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        try:
            self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._con.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sql(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v != v:  # NaN is stored as NULL
        return None
    return v
