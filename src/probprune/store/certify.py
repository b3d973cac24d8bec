"""Certify runs: ``<runs>/<hash>/`` with ``config.json`` and ``results.sqlite`` (``probprune certify``).

``config.json`` holds ``kind = certify``, the job's canonical config (and, for ``--solve max-prune``, the
solve), its hash (the folder's name), the hash rule and the SHA-256 of every file the job reads (models,
data, labels, half-widths): a folder whose files changed since it was made is refused, so stored rows always
belong to the models on disk. ``results.sqlite`` holds one typed record per input
(:class:`~probprune.records.CertifyRow`, key ``index``), one per (scale, input) of the "certified agreement
vs radius" curve (:class:`~probprune.records.CertifyRadiusRow`) and one per measured prune fraction
(:class:`~probprune.records.CertifyLevelRow`), plus a ``meta`` table (``created``, ``finished``, ``n_expected``).

As :mod:`probprune.store.runs`: one writer at a time (the folder's ``lock``, an ``flock`` released when its
holder dies), every chunk one transaction (a killed run keeps every committed chunk and resumes with the rest),
WAL while writing and a rollback journal after a clean close (no side files left). Readers open the database
read-only and validate what they read (the config's hash, indices in range, known verdicts).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probprune.config import HASH_RULE, RESULTS_RULE, ProbPruneError
from probprune.records import KEYS, CertifyLevelRow, CertifyRadiusRow, CertifyRow
from probprune.store.checkpoint import atomic_write_text
from probprune.store.runs import _check_unlocked, _lock_folder, _unlock_folder
from probprune.store.tables import columns, from_sql, names, values

__all__ = ["CERTIFY_DB", "CertifyRun", "CertifyStore", "is_certify_dir", "read_certify", "read_certify_config"]

CERTIFY_DB = "results.sqlite"
CONFIG_FILE = "config.json"
_TABLES: dict[type, str] = {CertifyRow: "inputs", CertifyRadiusRow: "radii", CertifyLevelRow: "levels"}
_VERDICTS = ("certified", "not certified", "refuted")


def is_certify_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a certify run (its ``config.json`` says ``kind = certify``)."""
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("kind") == "certify"
    except (OSError, ValueError, AttributeError):
        return False


def read_certify_config(run_dir: str | Path) -> dict[str, Any]:
    """The stored ``config.json`` of a certify run (checked: kind, hash rule, a hash and a config).

    Raises:
        ProbPruneError: not a certify run, made under another hash rule, or missing fields.
    """
    p = Path(run_dir) / CONFIG_FILE
    if not is_certify_dir(run_dir):
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: not a certify run (no {CONFIG_FILE} of kind certify)")
    doc: dict[str, Any] = json.loads(p.read_text())
    if doc.get("hash_rule") != HASH_RULE:
        raise ProbPruneError(f"run folder {str(run_dir)!r} was made under hash rule {doc.get('hash_rule')!r} "
                             f"(this probprune uses {HASH_RULE}); re-run it")
    for key, tp in (("hash", str), ("config", dict), ("files", dict)):
        if not isinstance(doc.get(key), tp):
            raise ProbPruneError(f"{p}: field {key!r} missing or of the wrong type")
    return doc


@dataclass(frozen=True, eq=False)
class CertifyRun:
    """What a certify run folder holds, as read (and validated) from it."""

    run_dir: Path
    config: dict[str, Any]
    meta: dict[str, str]
    rows: list[CertifyRow]
    radii: list[CertifyRadiusRow]
    levels: list[CertifyLevelRow]

    @property
    def n_expected(self) -> int:
        """Inputs the run will hold when finished."""
        return int(self.meta.get("n_expected", "0"))

    @property
    def finished(self) -> bool:
        """Whether the run was finished (``meta.finished`` set)."""
        return "finished" in self.meta


def _q(cols: Sequence[str]) -> str:
    """Quoted column names (``index`` is an SQL keyword)."""
    return ", ".join(f'"{c}"' for c in cols)


def _create(cls: type) -> str:
    """``CREATE TABLE`` of a record's table with quoted names (as :func:`probprune.store.tables.create_table`)."""
    key = KEYS[cls]
    body = ", ".join(f'"{c}" {t}' for c, t in columns(cls))
    extra = f", PRIMARY KEY ({_q(key)})" if len(key) > 1 else ""
    return f"CREATE TABLE IF NOT EXISTS {_TABLES[cls]} ({body}{extra})"


def _select(con: sqlite3.Connection, cls: type) -> list[Any]:
    table = _TABLES[cls]
    if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
        return []
    sql = f"SELECT {_q(names(cls))} FROM {table} ORDER BY {_q(KEYS[cls])}"
    return [from_sql(cls, r) for r in con.execute(sql)]


def _validate(where: str, meta: Mapping[str, str], rows: Sequence[CertifyRow], radii: Sequence[CertifyRadiusRow],
              doc: Mapping[str, Any]) -> None:
    if meta.get("hash") != doc["hash"]:
        raise ProbPruneError(f"{where}: the database's hash {meta.get('hash')!r} is not config.json's "
                             f"{doc['hash']!r}")
    n = int(meta.get("n_expected", "0"))
    for r in rows:
        if not 0 <= r.index < n:
            raise ProbPruneError(f"{where}: input index {r.index} outside 0..{n - 1}")
        if r.verdict not in _VERDICTS or r.certified_agree != (r.verdict == "certified"):
            raise ProbPruneError(f"{where}: input {r.index}: verdict {r.verdict!r} / certified_agree "
                                 f"{r.certified_agree!r} inconsistent")
        if not r.upper == min(r.upper_differential, r.upper_layerwise) or not r.upper >= 0:
            raise ProbPruneError(f"{where}: input {r.index}: upper {r.upper!r} is not the smaller certified bound")
    for q in radii:
        if not 0 <= q.index < n or not q.scale > 0:
            raise ProbPruneError(f"{where}: radius row (scale {q.scale!r}, index {q.index}) out of range")


def read_certify(run_dir: str | Path) -> CertifyRun:
    """Read a certify run folder read-only (creates no files), validated.

    Raises:
        ProbPruneError: not a certify run, no database, or a store that fails validation.
    """
    doc = read_certify_config(run_dir)
    db = Path(run_dir) / CERTIFY_DB
    if not db.is_file():
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: no {CERTIFY_DB} (the run has not stored anything)")
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            rows, radii = _select(con, CertifyRow), _select(con, CertifyRadiusRow)
            levels = _select(con, CertifyLevelRow)
    except (sqlite3.Error, TypeError) as e:
        raise ProbPruneError(f"{db}: not a certify results database ({e})") from None
    _validate(f"run {str(run_dir)!r}", meta, rows, radii, doc)
    return CertifyRun(Path(run_dir), doc, meta, rows, radii, levels)


class CertifyStore:
    """The driver's writer of one certify run folder (created if missing; only one writer at a time).

    Args:
        run_dir: the folder.
        doc: what ``config.json`` holds (``kind``, ``config``, ``hash``, ``files`` …; ``hash_rule`` is added).
        n_expected: inputs the finished run holds.

    Raises:
        ProbPruneError: another process holds the folder; it holds another config (another hash) or was made
            from other files (a model, the data, labels or half-widths changed since); its store fails
            validation.
    """

    def __init__(self, run_dir: str | Path, doc: Mapping[str, Any], n_expected: int) -> None:
        self.path = Path(run_dir)
        self.doc = {**dict(doc), "kind": "certify", "hash_rule": HASH_RULE, "results_rule": RESULTS_RULE}
        check_folder(self.path, self.doc)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.path)
        try:
            self._con = self._open(n_expected)
        except BaseException:
            _unlock_folder(self.path, self._lock)
            raise

    def _open(self, n_expected: int) -> sqlite3.Connection:
        cfg_file = self.path / CONFIG_FILE
        if (self.path / CERTIFY_DB).is_file():
            read_certify(self.path)  # trust nothing stored before writing to it
        con = sqlite3.connect(self.path / CERTIFY_DB, timeout=60.0, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for cls in _TABLES:
                con.execute(_create(cls))
            meta = {"hash": str(self.doc["hash"]), "n_expected": str(n_expected)}
            if not con.execute("SELECT 1 FROM meta WHERE key = 'created'").fetchone():
                meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            con.execute("COMMIT")
        except sqlite3.Error as e:
            con.close()
            raise ProbPruneError(f"run {str(self.path)!r}: {CERTIFY_DB} cannot be written ({e})") from None
        if not cfg_file.is_file():  # written last: a folder with config.json always has its schema
            atomic_write_text(cfg_file, json.dumps(self.doc, indent=2, sort_keys=True) + "\n")
        return con

    def done(self) -> set[int]:
        """Indices of the inputs already stored."""
        return {int(i) for (i,) in self._con.execute("SELECT \"index\" FROM inputs")}

    def levels(self) -> dict[float, CertifyLevelRow]:
        """The stored max-prune levels by prune fraction."""
        return {r.prune_fraction: r for r in _select(self._con, CertifyLevelRow)}

    def add(self, records: Sequence[Any]) -> None:
        """Store one chunk of records (any of the three kinds) in one transaction; a stored key fails it."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            for cls, table in _TABLES.items():
                rs = [r for r in records if type(r) is cls]
                if rs:
                    marks = ", ".join("?" * len(names(cls)))
                    self._con.executemany(f"INSERT INTO {table} ({_q(names(cls))}) VALUES ({marks})",
                                          [values(r) for r in rs])
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def set_meta(self, key: str, value: str) -> None:
        """Set one ``meta`` entry (e.g. ``finished``)."""
        self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Leave WAL mode (no side files), close the database and release the folder."""
        try:
            self._con.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass  # a reader holds it: it stays in WAL mode until the next writer's close; nothing is lost
        finally:
            self._con.close()
            _unlock_folder(self.path, self._lock)

    def __enter__(self) -> CertifyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_folder(path: Path, doc: Mapping[str, Any]) -> None:
    """Refuse (writing nothing) a folder that is locked, not a certify run, or made by another config / files.

    Raises:
        ProbPruneError: naming what differs.
    """
    if path.exists() and not path.is_dir():
        raise ProbPruneError(f"run {str(path)!r}: exists and is not a directory")
    if not path.is_dir():
        return
    _check_unlocked(path)
    if not (path / CONFIG_FILE).exists():
        if any(path.iterdir()):
            raise ProbPruneError(f"run {str(path)!r}: a folder with other files and no {CONFIG_FILE}; use an empty "
                                 "or new folder")
        return
    stored = read_certify_config(path)
    rule = stored.get("results_rule", 1)
    if rule != RESULTS_RULE:
        raise ProbPruneError(f"run {str(path)!r}: its rows were computed under results rule {rule!r} (an earlier "
                             f"probprune's estimators); this probprune computes rule {RESULTS_RULE} and will not "
                             "append to it: read it as it is, or use another --run-dir")
    if stored["hash"] != doc["hash"]:
        raise ProbPruneError(f"run {str(path)!r}: holds another certify config (hash {stored['hash']}, this one "
                             f"{doc['hash']}); use another --run-dir")
    for name, digest in dict(doc.get("files", {})).items():
        if stored["files"].get(name) != digest:
            raise ProbPruneError(f"run {str(path)!r}: {name} changed since the run was made (sha256 "
                                 f"{str(stored['files'].get(name))[:12]}…, now {str(digest)[:12]}…); use another "
                                 "--run-dir")
