"""The experiment store's files: a finished run folder holds the database alone (no ``-wal``/``-shm``)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from probprune.records import ExperimentRow
from probprune.store.experiments import ExperimentStore, read_experiment


def _row(seed: int) -> ExperimentRow:
    return ExperimentRow(dataset="mnist", model="lenet-300-100", method="random", scope="layerwise",
                         prune_fraction=0.5, finetuned=False, seed=seed, test_accuracy=0.9 - 0.01 * seed)


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _journal_mode(db: Path) -> str:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])


def test_finished_run_and_its_readers_leave_no_side_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with ExperimentStore(run, {"a": 1}) as store:
        store.add(_row(0))
    assert _files(run) == ["config.json", "results.sqlite"]
    assert _journal_mode(run / "results.sqlite") == "delete"
    # a read-only reader (the report, the summary) creates nothing
    assert [r["seed"] for r in read_experiment(run)] == [0]
    assert _files(run) == ["config.json", "results.sqlite"]
    # resuming works as before, and leaves the folder as clean
    with ExperimentStore(run, {"a": 1}) as store:
        assert store.done() == {ExperimentStore.key(_row(0))}
        store.add(_row(1))
    assert [r["seed"] for r in read_experiment(run)] == [0, 1]
    assert _files(run) == ["config.json", "results.sqlite"]


def test_close_while_another_connection_reads_keeps_the_rows(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = ExperimentStore(run, {"a": 1})
    store.add(_row(0))
    other = sqlite3.connect(run / "results.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN")
        assert other.execute("SELECT COUNT(*) FROM experiment").fetchone()[0] == 1
        store.close()  # cannot leave WAL mode under an open read: closes anyway, without an error
        other.execute("COMMIT")
    finally:
        other.close()
    assert [r["seed"] for r in read_experiment(run)] == [0]
