"""Real-data experiment runs: ``runs/<hash>/`` with ``config.json``, ``results.sqlite`` and checkpoints.

One row per setting (dataset, model, method, scope, prune_fraction, finetuned, seed), keyed by
that tuple, so a setting is never stored twice and an interrupted run resumes with the missing
ones. Every row is committed on its own (a small transaction). The report reads rows with
:func:`read_experiment` and never recomputes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from probprune.config import HASH_RULE, RESULTS_RULE, ProbPruneError
from probprune.records import KEYS, ExperimentRow
from probprune.store.checkpoint import atomic_write_text
from probprune.store.tables import columns, create_table, from_sql, names, values

__all__ = [
    "EXPERIMENT_COLUMNS",
    "EXPERIMENT_DB",
    "EXPERIMENT_KEY",
    "ExperimentStore",
    "experiment_records",
    "is_experiment_dir",
    "read_experiment",
    "read_experiment_config",
]

EXPERIMENT_DB = "results.sqlite"
CONFIG_FILE = "config.json"
_TABLE = "experiment"

#: The columns of one setting (name, SQLite type), derived from :class:`~probprune.records.ExperimentRow`;
#: the first seven are the key.
EXPERIMENT_COLUMNS: tuple[tuple[str, str], ...] = columns(ExperimentRow)
EXPERIMENT_KEY: tuple[str, ...] = KEYS[ExperimentRow]


def _check_rule(cfg_file: Path, stored: Mapping[str, Any]) -> None:
    """Refuse an experiment folder made under an older hash rule (its name is not this config's hash)."""
    rule = stored.get("hash_rule", 1)
    if rule != HASH_RULE:
        raise ProbPruneError(f"run folder {str(cfg_file.parent)!r} was made by an older probprune (hash rule "
                             f"{rule!r}; this one uses {HASH_RULE}); re-run it")


def is_experiment_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an experiment run (its ``config.json`` says ``kind = experiment``)."""
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("kind") == "experiment"
    except (OSError, ValueError, AttributeError):
        return False


def read_experiment_config(run_dir: str | Path) -> dict[str, Any]:
    """The stored config of an experiment run."""
    p = Path(run_dir) / CONFIG_FILE
    if not is_experiment_dir(run_dir):
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: not an experiment run (no {CONFIG_FILE} of kind experiment)")
    doc: dict[str, Any] = json.loads(p.read_text())
    _check_rule(p, doc)
    return doc


def experiment_records(run_dir: str | Path) -> list[ExperimentRow]:
    """All stored settings of an experiment run as :class:`~probprune.records.ExperimentRow` records, in key order.

    ``gap_upper`` is certified, ``gap_lower`` the empirical sup over the ball of radius ``radius`` = max ‖x‖
    of the test set.
    """
    db = Path(run_dir) / EXPERIMENT_DB
    if not db.is_file():
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: no {EXPERIMENT_DB} (not an experiment run, or not started)")
    read_experiment_config(run_dir)  # refuses a folder of an older hash rule
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute(f"SELECT {', '.join(names(ExperimentRow))} FROM {_TABLE} ORDER BY "
                               f"{', '.join(EXPERIMENT_KEY)}").fetchall()
    except sqlite3.Error as e:
        raise ProbPruneError(f"{db}: cannot read experiment results ({e})") from None
    return [from_sql(ExperimentRow, r) for r in rows]


def read_experiment(run_dir: str | Path) -> list[dict[str, Any]]:
    """All stored settings of an experiment run, one plain dict per setting (the fields of
    :class:`~probprune.records.ExperimentRow`), in key order, for JSON output."""
    return [r.to_dict() for r in experiment_records(run_dir)]


class ExperimentStore:
    """Writer of one experiment run folder (only the driver writes).

    Args:
        run_dir: the folder (created if missing).
        config: the experiment config; stored as ``config.json`` (with ``kind``, ``hash_rule`` and
            ``hash``). A folder holding a different config is refused, and so is one made under an
            older hash rule.
        hash: the config's :func:`~probprune.config.config_hash`: when given, a stored config with the
            same hash is the same config (a field added later at its default changes nothing); without
            it the stored config must equal ``config``.
    """

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any], hash: str | None = None) -> None:
        self.path = Path(run_dir)
        cfg = {"kind": "experiment", **dict(config), "hash_rule": HASH_RULE, "results_rule": RESULTS_RULE}
        if hash is not None:
            cfg["hash"] = hash
        cfg_file = self.path / CONFIG_FILE
        if cfg_file.exists():
            try:
                stored = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as e:
                raise ProbPruneError(f"{cfg_file}: unreadable ({e})") from None
            if not isinstance(stored, dict):
                raise ProbPruneError(f"{cfg_file}: not a JSON object")
            _check_rule(cfg_file, stored)
            rule = stored.get("results_rule", 1)
            if rule != RESULTS_RULE:
                raise ProbPruneError(f"{cfg_file}: its rows were computed under results rule {rule!r} (an earlier "
                                     f"probprune's estimators); this probprune computes rule {RESULTS_RULE} and "
                                     "will not append to it: read it as it is, or use another --runs-dir")
            same = stored.get("hash") == hash if hash is not None else stored == json.loads(json.dumps(cfg))
            if not same:
                raise ProbPruneError(f"{cfg_file}: holds a different experiment config; use another --runs-dir")
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                atomic_write_text(cfg_file, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            except OSError as e:
                raise ProbPruneError(f"{cfg_file}: cannot write ({e.strerror or e})") from None
        self._con = sqlite3.connect(str(self.path / EXPERIMENT_DB))
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(create_table(_TABLE, EXPERIMENT_COLUMNS, EXPERIMENT_KEY))
        self._con.commit()

    def done(self) -> set[tuple[Any, ...]]:
        """Keys of the settings already stored."""
        rows = self._con.execute(f"SELECT {', '.join(EXPERIMENT_KEY)} FROM {_TABLE}").fetchall()
        return {(d, m, me, s, round(float(f), 6), bool(ft), int(sd)) for d, m, me, s, f, ft, sd in rows}

    @staticmethod
    def key(row: ExperimentRow) -> tuple[Any, ...]:
        """The key tuple of a row (fraction rounded to 6 digits)."""
        return (row.dataset, row.model, row.method, row.scope, round(float(row.prune_fraction), 6),
                bool(row.finetuned), int(row.seed))

    def add(self, row: ExperimentRow) -> None:
        """Store one setting (one transaction); a setting already stored is left as it is.

        Raises:
            ProbPruneError: a key field or ``test_accuracy`` is ``None``.
        """
        cols = names(ExperimentRow)
        missing = [c for c, decl in EXPERIMENT_COLUMNS if "NOT NULL" in decl and getattr(row, c) is None]
        if missing:
            raise ProbPruneError(f"row: missing column {missing[0]!r}")
        with self._con:
            self._con.execute(f"INSERT OR IGNORE INTO {_TABLE} ({', '.join(cols)}) VALUES "
                              f"({', '.join('?' for _ in cols)})", values(row))

    def close(self) -> None:
        """Close the database, leaving it in rollback-journal mode: no ``-wal``/``-shm`` files behind.

        The writer works in WAL mode (small transactions, readers never blocked); switching back to the
        ``delete`` journal on close folds the log into the file, so a finished run folder holds the
        database alone and a read-only open (:func:`read_experiment`) creates no side files.
        """
        try:
            self._con.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass  # another connection still holds the database open: it stays in WAL mode until that one ends
        finally:
            self._con.close()

    def __enter__(self) -> ExperimentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
