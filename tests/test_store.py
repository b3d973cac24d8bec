"""store.runs: run folders, canonical config.json, SQLite rows, no duplicates, read API, bad folders."""

import json
import sqlite3
from pathlib import Path

import pytest

from probprune.config import MCSpec, ProbPruneError, PruneSpec, RunConfig, canonical_json, config_hash
from probprune.records import GridRow, PointSummary, SlopeRow, TrialRow
from probprune.store.runs import (
    CONFIG_FILE,
    DB_FILE,
    RunWriter,
    is_run_dir,
    open_run,
    prepare_run,
    read_grid,
    read_points,
    read_slopes,
    read_trials,
    run_dir_for,
)

CFG = RunConfig(prunes=(PruneSpec(relative_threshold=0.1),), mc=MCSpec(n_trials=3, hidden_widths=(8, 16)))
GRID = [{"grid_index": g, "width": w, "prune_index": 0, "arch": f"fcn:16,{w},{w},4", "method": "magnitude",
         "scope": "layerwise", "level_name": "relative_threshold", "level_value": 0.1, "rescale": False,
         "schedule_c": None, "schedule_alpha": None, "eps": 1.5, "eps_theory": 1.5, "theorem": "§4",
         "theory_exponent": None} for g, w in enumerate((8, 16))]


def _row(g: int, t: int, gap: float = 0.5) -> TrialRow:
    return TrialRow(**_row_dict(g, t, gap))


def _row_dict(g: int, t: int, gap: float = 0.5) -> dict:
    return {"grid_index": g, "trial": t, "seed": 1000 * g + t, "width": GRID[g]["width"], "method": "magnitude",
            "level_name": "relative_threshold", "level": 0.1, "gap_lower": gap, "rel_gap_lower": gap / 2,
            "out_sup": 2.0, "gap_upper": 2 * gap, "eps": 1.5, "sparsity": 0.1, "n_evals": 10, "seconds": 0.01,
            "device": "cpu", "dtype": "float32", "version": "0.1.0"}


def _point(g: int, n: int) -> PointSummary:
    return PointSummary(**{k: v for k, v in _point_dict(g, n).items() if k != "grid_index"})


def _point_dict(g: int, n: int) -> dict:
    return {"grid_index": g, "n_trials": n, "gap_lower_median": 0.5, "gap_lower_quantile": 0.5,
            "rel_gap_lower_median": 0.25, "gap_upper_median": 1.0, "eps": 1.5, "n_covered": n, "coverage": 1.0,
            "coverage_low": 0.3, "coverage_high": 1.0, "coverage_certified": 1.0, "passed": True,
            "tightness": 3.0, "delta": 0.05, "confidence": 0.95}


def _writer(tmp_path: Path) -> RunWriter:
    run_dir, exists = prepare_run(tmp_path, CFG)
    assert not exists and not run_dir.exists()  # prepare writes nothing
    return RunWriter(run_dir, CFG, [GridRow(**g) for g in GRID], CFG.mc.n_trials, meta={"version": "0.1.0"})


def test_run_folder_layout_and_read_api(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    run_dir = w.path
    assert run_dir == run_dir_for(tmp_path, CFG) == tmp_path / config_hash(CFG)
    assert (run_dir / CONFIG_FILE).read_text().strip() == canonical_json(CFG)
    with sqlite3.connect(run_dir / DB_FILE) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    w.write_chunk([_row(0, 0), _row(0, 1)], _point(0, 2),
                  [SlopeRow(prune_index=0, method="magnitude", n_widths=2, slope=-1.0, intercept=0.0,
                            exponent=1.0, rel_slope=-0.5, theory_exponent=1.25)])
    w.close()
    info = open_run(run_dir)
    assert info.config == CFG and info.hash == config_hash(CFG)
    assert (info.status, info.n_done, info.n_expected, info.n_grid) == ("partial", 2, 6, 2)
    assert info.meta["version"] == "0.1.0" and "created" in info.meta
    trials = read_trials(run_dir)
    assert [(r["grid_index"], r["trial"]) for r in trials] == [(0, 0), (0, 1)]
    assert trials[0] == _row_dict(0, 0)
    assert read_trials(run_dir, grid_index=1) == []
    pts = read_points(run_dir)
    assert [p["width"] for p in pts] == [8, 16]
    assert pts[0]["passed"] is True and pts[0]["n_trials"] == 2 and pts[0]["rescale"] is False
    assert pts[1]["n_trials"] == 0 and pts[1]["passed"] is None and pts[1]["coverage"] is None
    assert pts[0]["eps"] == 1.5 and pts[0]["theorem"] == "§4"
    assert read_slopes(run_dir)[0]["theory_exponent"] == 1.25
    assert [g["grid_index"] for g in read_grid(run_dir)] == [0, 1]


def test_duplicate_trials_are_impossible_and_roll_back_the_chunk(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write_chunk([_row(0, 0)], _point(0, 1))
    with pytest.raises(sqlite3.IntegrityError):
        w.write_chunk([_row(0, 2), _row(0, 0, gap=9.0)], _point(0, 3))
    w.close()
    rows = read_trials(w.path)
    assert [(r["trial"], r["gap_lower"]) for r in rows] == [(0, 0.5)]  # the whole chunk rolled back
    assert read_points(w.path)[0]["n_trials"] == 1


def test_complete_status_reopen_and_resume_state(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for g in range(2):
        w.write_chunk([_row(g, t) for t in range(3)], _point(g, 3))
    w.close()
    assert open_run(w.path).status == "complete"
    run_dir, exists = prepare_run(tmp_path, CFG)
    assert exists and run_dir == w.path
    w2 = RunWriter(run_dir, CFG, [GridRow(**g) for g in GRID], 3)
    done = w2.done()
    w2.close()
    assert {g: sorted(v) for g, v in done.items()} == {0: [0, 1, 2], 1: [0, 1, 2]}
    assert prepare_run("/nonexistent", CFG, resume=run_dir) == (run_dir, True)


def _snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_bad_folders_and_mismatched_configs_change_nothing(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write_chunk([_row(0, 0)], _point(0, 1))
    w.close()
    before = _snapshot(tmp_path)
    other = RunConfig(prunes=(PruneSpec(relative_threshold=0.2),), mc=MCSpec(n_trials=3))
    with pytest.raises(ProbPruneError, match="disagrees"):
        prepare_run(tmp_path, other, resume=w.path)
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (empty, tmp_path / "missing", w.path / CONFIG_FILE):
        with pytest.raises(ProbPruneError, match="not a run directory"):
            prepare_run(tmp_path, CFG, resume=bad)
        with pytest.raises(ProbPruneError, match="not a run directory"):
            open_run(bad)
    # a folder named like the hash whose config.json says something else
    fake = tmp_path / config_hash(other)
    fake.mkdir()
    (fake / CONFIG_FILE).write_text(canonical_json(CFG) + "\n")
    with pytest.raises(ProbPruneError, match="disagrees"):
        prepare_run(tmp_path, other)
    # a results.sqlite that is not ours
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / CONFIG_FILE).write_text(canonical_json(CFG))
    (junk / DB_FILE).write_text("not a database")
    assert is_run_dir(junk)
    with pytest.raises(ProbPruneError, match="not a probprune results database"):
        open_run(junk)
    (fake / CONFIG_FILE).unlink()
    fake.rmdir()
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("junk")} == before
    assert not (tmp_path / "missing").exists()


def test_config_json_round_trips_through_from_dict(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.close()
    data = json.loads((w.path / CONFIG_FILE).read_text())
    assert data["mc"]["hidden_widths"] == [8, 16]
    assert open_run(w.path).config == CFG
