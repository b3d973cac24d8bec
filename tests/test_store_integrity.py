"""store.runs integrity: a tampered store is refused on every open, one writer per run folder, chunk size
changes no number, read-only opens create no file and a finished run leaves no ``-wal``/``-shm``."""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cliharness import run
from probprune.config import (
    GapSpec,
    MCSpec,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    RunConfig,
    canonical_json,
    config_hash,
    default_config,
    from_dict,
)
from probprune.records import GridRow, PointSummary, TrialRow
from probprune.runner.verify import run_verify
from probprune.store.runs import (
    CONFIG_FILE,
    DB_FILE,
    LOCK_FILE,
    RunWriter,
    open_run,
    read_grid,
    read_points,
    read_slopes,
    read_trials,
)

CFG = RunConfig(
    net=NetSpec(widths=(4, 8, 8, 2)),
    prunes=(PruneSpec(method="magnitude", prune_fraction=0.3),),
    gap=GapSpec(n_points=32, n_restarts=1, n_steps=2),
    mc=MCSpec(n_trials=4, hidden_widths=(8, 12), chunk_size=2),
)
N_TRIALS = CFG.mc.n_trials


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A real finished run of CFG (2 grid points × 4 trials), made by the verify driver."""
    res = run_verify(CFG, tmp_path_factory.mktemp("built"))
    assert res.info.status == "complete" and res.info.n_done == 8
    return res.run_dir


@pytest.fixture
def fresh(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built run (the folder name, i.e. its hash, kept)."""
    dst = tmp_path / "runs" / built.name
    shutil.copytree(built, dst)
    return dst


def _sql(run_dir: Path, *statements: str) -> None:
    con = sqlite3.connect(run_dir / DB_FILE, isolation_level=None)
    try:
        for s in statements:
            con.execute(s)
    finally:
        con.close()


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _no_pk(extra: str) -> list[str]:
    """Rebuild ``trials`` without its primary key (as a forger must), then run ``extra``."""
    return ["CREATE TABLE t2 AS SELECT * FROM trials", "DROP TABLE trials", "ALTER TABLE t2 RENAME TO trials", extra]


def _edit_config(run_dir: Path) -> None:
    data = json.loads((run_dir / CONFIG_FILE).read_text())
    data["prunes"][0]["prune_fraction"] = 0.9
    (run_dir / CONFIG_FILE).write_text(json.dumps(data))


# (name, tampering, message fragment); every case reads as valid (or crashes) on a store that trusts its rows
TAMPER: list[tuple[str, Callable[[Path], None], str]] = [
    ("trial 999", lambda d: _sql(d, "INSERT INTO trials SELECT grid_index, 999, seed, width, method, level_name, "
                                    "level, gap_lower, rel_gap_lower, out_sup, gap_upper, eps, sparsity, n_evals, "
                                    "seconds, device, dtype, version FROM trials WHERE grid_index = 0 AND trial = 0"),
     f"trial 999 at grid point 0 is out of range [0, {N_TRIALS})"),
    ("trial -1", lambda d: _sql(d, "UPDATE trials SET trial = -1 WHERE grid_index = 1 AND trial = 3"),
     f"trial -1 at grid point 1 is out of range [0, {N_TRIALS})"),
    ("grid point 7", lambda d: _sql(d, "UPDATE trials SET grid_index = 7 WHERE grid_index = 1 AND trial = 2"),
     "trial 2 names grid point 7, out of range [0, 2)"),
    ("duplicate", lambda d: _sql(d, *_no_pk("INSERT INTO trials SELECT * FROM trials WHERE grid_index = 0 "
                                            "AND trial = 1")),
     "trial 1 at grid point 0 is stored 2 times"),
    # gap_lower is NOT NULL in the table (TrialRow.gap_lower is a float): a forger must rebuild the table first
    ("NULL gap", lambda d: _sql(d, *_no_pk("UPDATE trials SET gap_lower = NULL WHERE grid_index = 0 AND trial = 2")),
     "required column gap_lower is NULL"),
    ("NULL key", lambda d: _sql(d, *_no_pk("UPDATE trials SET seed = NULL WHERE trial = 0")),
     "required column seed is NULL"),
    ("text gap", lambda d: _sql(d, "UPDATE trials SET gap_lower = 'small' WHERE grid_index = 0 AND trial = 0"),
     "column gap_lower has a value of the wrong type"),
    ("hash row deleted, config edited", lambda d: (_sql(d, "DELETE FROM meta WHERE key = 'hash'"), _edit_config(d)),
     "the meta row 'hash' is missing"),
    ("hash row deleted", lambda d: _sql(d, "DELETE FROM meta WHERE key = 'hash'"), "the meta row 'hash' is missing"),
    ("config edited", _edit_config, "disagrees with its database"),
    ("points dropped", lambda d: _sql(d, "DROP TABLE points"), "table 'points' is missing"),
    ("point deleted", lambda d: _sql(d, "DELETE FROM points WHERE grid_index = 1"),
     "grid point 1 has 4 trial(s) but no points row"),
    ("point count", lambda d: _sql(d, "UPDATE points SET n_trials = 40 WHERE grid_index = 0"),
     "the points row of grid point 0 counts 40 trial(s), the trials table holds 4"),
    ("trial deleted", lambda d: _sql(d, "DELETE FROM trials WHERE grid_index = 0 AND trial = 3"),
     "the points row of grid point 0 counts 4 trial(s), the trials table holds 3"),
    ("column dropped", lambda d: _sql(d, "ALTER TABLE trials DROP COLUMN gap_upper"),
     "table 'trials' lacks column(s) gap_upper"),
    ("column added", lambda d: _sql(d, "ALTER TABLE points ADD COLUMN forged REAL"),
     "table 'points' has unknown column(s) forged"),
    ("grid row deleted", lambda d: _sql(d, "DELETE FROM grid WHERE grid_index = 1"),
     "1 grid point(s) stored, meta n_grid = 2"),
    ("width", lambda d: _sql(d, "UPDATE trials SET width = 99 WHERE grid_index = 0 AND trial = 0"),
     "trial 0 at grid point 0 says width 99"),
    ("n_trials meta", lambda d: _sql(d, "UPDATE meta SET value = '40' WHERE key = 'n_trials'"),
     "meta n_trials = 40, but config.json says mc.n_trials = 4"),
    ("n_expected meta", lambda d: _sql(d, "UPDATE meta SET value = '7' WHERE key = 'n_expected'"),
     "meta n_expected = 7, not n_grid × n_trials = 2 × 4"),
    ("slope of no rule", lambda d: _sql(d, "UPDATE slopes SET prune_index = 5"),
     "a slopes row names pruning rule 5"),
    # a consistent forgery of grid and trials together still disagrees with config.json
    ("grid relabelled", lambda d: _sql(d, "UPDATE grid SET width = 64 WHERE grid_index = 1",
                                       "UPDATE trials SET width = 64 WHERE grid_index = 1"),
     "grid point 1 has width = 64, but config.json gives 12"),
    ("rule relabelled", lambda d: _sql(d, "UPDATE grid SET method = 'random' WHERE grid_index = 0",
                                       "UPDATE trials SET method = 'random' WHERE grid_index = 0"),
     "grid point 0 has method = 'random', but config.json gives 'magnitude'"),
    ("level relabelled", lambda d: _sql(d, "UPDATE grid SET level_value = 0.05"),
     "grid point 0 has level_value = 0.05, but config.json gives 0.3"),
    ("grid point removed", lambda d: _sql(d, "DELETE FROM trials WHERE grid_index = 1", "DELETE FROM points WHERE "
                                          "grid_index = 1", "DELETE FROM grid WHERE grid_index = 1",
                                          "UPDATE meta SET value = '1' WHERE key = 'n_grid'",
                                          "UPDATE meta SET value = '4' WHERE key = 'n_expected'"),
     "meta n_grid = 1, but config.json gives 2 grid point(s)"),
]


@pytest.mark.parametrize(("name", "tamper", "fragment"), TAMPER, ids=[t[0] for t in TAMPER])
def test_a_tampered_store_is_refused_on_every_open(fresh: Path, capsys: pytest.CaptureFixture[str], name: str,
                                                   tamper: Callable[[Path], None], fragment: str) -> None:
    tamper(fresh)
    before = _files(fresh)
    for read in (open_run, read_trials, read_points, read_grid, read_slopes):
        with pytest.raises(ProbPruneError) as e:
            read(fresh)
        assert fragment in str(e.value) and str(fresh) in str(e.value)
    # resume through the driver (the folder given, and the folder found by hash) refuses before any work
    with pytest.raises(ProbPruneError) as e:
        run_verify(CFG, fresh.parent, resume=fresh)
    assert fragment in str(e.value)
    with pytest.raises(ProbPruneError) as e:
        run_verify(CFG, fresh.parent)
    assert fragment in str(e.value) or "disagrees with this config" in str(e.value)
    # the writer itself re-validates (defence in depth when called without prepare_run)
    with pytest.raises(ProbPruneError) as e:
        RunWriter(fresh, CFG, read_grid_unchecked(fresh), N_TRIALS)
    assert fragment in str(e.value) or "disagrees with this config" in str(e.value)
    # the CLI: exit 2 with one error line naming the problem, no traceback, nothing written
    for args in (["report", str(fresh), "--json"], ["verify", "--resume", str(fresh), "--json"]):
        code, out, err = run(args, capsys)
        assert code == 2, (args, out, err)
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and fragment in errors[0] and err.strip().endswith(errors[0])
        assert "Traceback" not in err
    assert _files(fresh) == before


def read_grid_unchecked(run_dir: Path) -> list[GridRow]:
    """The grid rows as the driver would give them to the writer (read past any validation)."""
    con = sqlite3.connect(f"file:{run_dir / DB_FILE}?mode=ro&immutable=1", uri=True)
    con.row_factory = sqlite3.Row
    fields = [f.name for f in dataclasses.fields(GridRow)]
    try:
        return [GridRow(**{f: dict(r).get(f) for f in fields})
                for r in con.execute("SELECT * FROM grid ORDER BY grid_index")]
    except sqlite3.Error:
        return []
    finally:
        con.close()


def test_the_untouched_copy_reads_as_complete(fresh: Path) -> None:
    # the premise of the tampering table: the copy itself is valid and complete
    info = open_run(fresh)
    assert (info.status, info.n_done, info.n_expected, info.n_grid) == ("complete", 8, 8, 2)
    assert [p["n_trials"] for p in read_points(fresh)] == [4, 4]
    res = run_verify(CFG, fresh.parent, resume=fresh)
    assert res.n_new == 0 and res.info.status == "complete"


def test_a_resumed_grid_must_be_the_configs_grid(fresh: Path) -> None:
    _sql(fresh, "UPDATE grid SET eps = 1e-9 WHERE grid_index = 1", "UPDATE points SET eps = 1e-9 WHERE grid_index = 1")
    info = open_run(fresh)  # structurally sound, so the reader opens it …
    assert info.status == "complete"
    with pytest.raises(ProbPruneError, match=r"grid point 1 has eps = 1e-09, this config gives"):
        run_verify(CFG, fresh.parent, resume=fresh)  # … but the driver will not resume onto another grid


def test_a_run_of_the_earlier_hash_definition_is_refused_with_the_reason(tmp_path: Path) -> None:
    # an old run folder: config.json kept mc.chunk_size and the stored hash was the hash of that text
    res = run_verify(CFG, tmp_path / "new")
    old_text = canonical_json(CFG)  # holds mc.chunk_size = 2, which the old hash included
    assert '"chunk_size":2' in old_text
    old_hash = hashlib.sha256(old_text.encode()).hexdigest()[:16]
    assert old_hash != config_hash(CFG)
    old = tmp_path / "old" / old_hash
    shutil.copytree(res.run_dir, old)
    (old / CONFIG_FILE).write_text(old_text + "\n")
    _sql(old, f"UPDATE meta SET value = '{old_hash}' WHERE key = 'hash'")
    assert from_dict(json.loads(old_text)) == CFG
    for call in (lambda: open_run(old), lambda: run_verify(CFG, tmp_path / "old", resume=old)):
        with pytest.raises(ProbPruneError, match=r"earlier probprune whose config hash .* included execution "
                                                 r"settings \(mc.chunk_size\)"):
            call()


def test_a_run_of_hash_rule_1_is_refused_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a folder made before issue 14: its meta hash (and folder name) is the rule-1 hash of the same config.json
    res = run_verify(CFG, tmp_path / "new")
    data = json.loads(canonical_json(CFG))
    data["mc"].pop("chunk_size", None)
    rule1 = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert rule1 != config_hash(CFG)
    old = tmp_path / "old" / rule1
    shutil.copytree(res.run_dir, old)
    _sql(old, f"UPDATE meta SET value = '{rule1}' WHERE key = 'hash'")
    msg = (rf"run folder '{old}' was made by an older probprune \(hash rule 1, hash {rule1}\); this probprune "
           rf"\(hash rule 2\) names its config {config_hash(CFG)} .*: re-run it")
    for call in (lambda: open_run(old), lambda: run_verify(CFG, tmp_path / "old", resume=old)):
        with pytest.raises(ProbPruneError, match=msg):
            call()
    code, _, err = run(["verify", "--resume", str(old), "--json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "hash rule 1" in err


def test_a_run_of_an_older_results_rule_is_read_but_not_resumed(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # a run whose rows an earlier estimator computed (same config, same hash): never appended to
    res = run_verify(CFG, tmp_path / "new")
    assert open_run(res.run_dir).meta["results_rule"] == "2"
    for how in ("UPDATE meta SET value = '1' WHERE key = 'results_rule'",
                "DELETE FROM meta WHERE key = 'results_rule'"):
        old = tmp_path / f"old{len(how)}" / res.run_dir.name
        shutil.copytree(res.run_dir, old)
        _sql(old, how)
        assert len(read_trials(old)) == len(read_trials(res.run_dir))  # still readable
        with pytest.raises(ProbPruneError, match=r"results rule 1 .* will not append to it"):
            run_verify(CFG, old.parent, resume=old)
        code, _, err = run(["verify", "--resume", str(old), "--json"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "results rule 1" in err


# --------------------------------------------------------------------------- chunk size is execution only


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_trials(run_dir)]


def test_chunk_size_changes_neither_the_hash_nor_any_trial(tmp_path: Path, one_thread: None) -> None:
    base = RunConfig(net=CFG.net, prunes=CFG.prunes, gap=CFG.gap, mc=MCSpec(n_trials=45, hidden_widths=(8,)))
    cfgs = {cs: dataclasses.replace(base, mc=dataclasses.replace(base.mc, chunk_size=cs)) for cs in (1, 7, 45)}
    assert len({config_hash(c) for c in cfgs.values()}) == 1
    runs = {cs: run_verify(c, tmp_path / f"cs{cs}") for cs, c in cfgs.items()}
    # config.json still records the chunk size that made the run, and round-trips it
    assert json.loads((runs[7].run_dir / CONFIG_FILE).read_text())["mc"]["chunk_size"] == 7
    assert open_run(runs[7].run_dir).config == cfgs[7]
    assert {r.run_dir.name for r in runs.values()} == {config_hash(base)}
    ref = _rows(runs[45].run_dir)
    assert len(ref) == 45 and len({r["seed"] for r in ref}) == 45
    for cs in (1, 7):
        assert _rows(runs[cs].run_dir) == ref, cs
        assert read_points(runs[cs].run_dir) == read_points(runs[45].run_dir)
    assert open_run(runs[7].run_dir).meta["chunk_size"] == "7"
    # a run folder is resumed with any chunk size (the hash, hence the folder, is the same)
    again = run_verify(cfgs[1], tmp_path / "cs45")
    assert again.resumed and again.n_new == 0


def test_execution_settings_leave_the_pinned_default_hashes_alone() -> None:
    assert config_hash(RunConfig(mc=MCSpec(chunk_size=3))) == config_hash(RunConfig()) == "3b76612531ce75aa"
    assert config_hash(RunConfig(mc=MCSpec(n_trials=5, chunk_size=1))) == "ed0102ab72ceae70"
    # the shipped default sets chunk_size = 10, which no longer enters its hash
    assert config_hash(default_config()) == config_hash(dataclasses.replace(
        default_config(), mc=dataclasses.replace(default_config().mc, chunk_size=16))) == "d532fd7e38716ac9"


# --------------------------------------------------------------------------- one writer per run folder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = run_verify(CFG, tmp_path)
    before = _files(res.run_dir)
    grid = read_grid(res.run_dir)
    held = RunWriter(res.run_dir, CFG, [GridRow(**g) for g in grid], N_TRIALS)
    try:
        assert (res.run_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
        msg = f"is in use by another probprune process (pid {os.getpid()})"
        with pytest.raises(ProbPruneError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            run_verify(CFG, tmp_path)
        code, out, err = run(["verify", "--resume", str(res.run_dir), "--json"], capsys)
        assert code == 2 and err.strip().splitlines()[-1] == f"error: run folder {str(res.run_dir)!r} {msg}"
        code, out, err = run(["verify", "--arch", "fcn:4,8,8,2", "--widths", "8,12", "--method", "magnitude",
                              "--prune-fraction", "0.3", "--trials", "4", "--set", "gap.n_points=32", "--set",
                              "gap.n_restarts=1", "--set", "gap.n_steps=2", "--runs-dir", str(tmp_path)], capsys)
        assert code == 2 and err.strip().splitlines() == [f"error: run folder {str(res.run_dir)!r} {msg}"]
    finally:
        held.close()
    assert not (res.run_dir / LOCK_FILE).exists()
    after = _files(res.run_dir)
    assert after.keys() == before.keys()
    assert run_verify(CFG, tmp_path).n_new == 0  # released: the next writer gets the folder


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    res = run_verify(CFG, tmp_path)
    (res.run_dir / LOCK_FILE).write_text("999999\n")  # a killed writer's file: no flock is held on it
    again = run_verify(CFG, tmp_path)
    assert again.n_new == 0 and not (res.run_dir / LOCK_FILE).exists()


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:  # released between the glob and the read
        return ""


@pytest.mark.slow
def test_two_verify_processes_on_one_run_folder(tmp_path: Path) -> None:
    """Two real ``probprune verify`` processes: the second is refused with the first one's pid (exit 2)."""
    args = [sys.executable, "-m", "probprune", "verify", "--arch", "fcn:6,16,16,3", "--widths", "16,24",
            "--trials", "6", "--chunk-size", "2", "--set", "gap.n_points=64", "--set", "gap.n_restarts=2",
            "--set", "gap.n_steps=3", "--runs-dir", str(tmp_path), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        locks: list[Path] = []
        while time.time() < deadline and first.poll() is None:
            locks = [p for p in tmp_path.glob(f"*/{LOCK_FILE}") if _text(p)]
            if locks:
                break
            time.sleep(0.005)
        assert locks, "the first verify never took the folder's lock"
        first.send_signal(signal.SIGSTOP)  # keep it mid-run, holding the lock, while the second one starts
        try:
            assert locks[0].read_text().strip() == str(first.pid)
            second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        finally:
            first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert lines[-1] == (f"error: run folder {str(locks[0].parent)!r} is in use by another probprune process "
                         f"(pid {first.pid})")
    assert "Traceback" not in second.stderr and "IntegrityError" not in second.stderr
    assert first.returncode == 0, err
    doc = json.loads(out)
    assert doc["status"] == "complete" and doc["n_done"] == doc["n_expected"] == 24
    run_dir = locks[0].parent
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(DB_FILE)) == [DB_FILE]
    assert not (run_dir / LOCK_FILE).exists()


# --------------------------------------------------------------------------- no -wal/-shm


def _db_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(DB_FILE))


def test_a_finished_run_leaves_no_wal_and_reads_create_none(fresh: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    assert _db_files(fresh) == [DB_FILE] and not (fresh / LOCK_FILE).exists()
    assert (fresh / DB_FILE).read_bytes()[18:20] == b"\x01\x01"  # back in rollback-journal mode
    before = _files(fresh)
    open_run(fresh), read_trials(fresh), read_points(fresh), read_grid(fresh), read_slopes(fresh)
    assert _files(fresh) == before
    code, _, err = run(["report", str(fresh), "--json"], capsys)
    assert code == 0, err
    assert _db_files(fresh) == [DB_FILE]
    assert (fresh / DB_FILE).read_bytes() == before[DB_FILE]


def test_a_database_left_in_wal_mode_is_read_without_creating_files(fresh: Path) -> None:
    # a writer whose close could not leave WAL mode (a reader held the database): the header says WAL,
    # the last connection's close removed -wal/-shm
    con = sqlite3.connect(fresh / DB_FILE)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.close()
    assert _db_files(fresh) == [DB_FILE] and (fresh / DB_FILE).read_bytes()[18:20] == b"\x02\x02"
    before = _files(fresh)
    info = open_run(fresh)
    assert info.status == "complete" and len(read_trials(fresh)) == 8
    assert _files(fresh) == before


def test_a_live_writers_committed_chunks_are_read(tmp_path: Path) -> None:
    part = RunConfig(net=CFG.net, prunes=CFG.prunes, gap=CFG.gap, mc=dataclasses.replace(CFG.mc, n_trials=2))
    src = run_verify(part, tmp_path / "src")
    rows = read_trials(src.run_dir)
    grid = [GridRow(**g) for g in read_grid(src.run_dir)]
    points = {p["grid_index"]: PointSummary(n_trials=p["n_trials"], eps=p["eps"]) for p in read_points(src.run_dir)}
    w = RunWriter(tmp_path / "live" / src.run_dir.name, part, grid, 2)
    try:
        (w.path / CONFIG_FILE).write_text(canonical_json(part) + "\n")
        w.write_chunk([TrialRow(**r) for r in rows if r["grid_index"] == 0], points[0])
        assert DB_FILE + "-wal" in _db_files(w.path)
        info = open_run(w.path)
        assert (info.status, info.n_done) == ("partial", 2)
    finally:
        w.close()
    assert _db_files(w.path) == [DB_FILE]


def test_a_run_folder_with_uri_characters_in_its_path_is_read(fresh: Path) -> None:
    # the read-only open is a file: URI; '?', '#' and '%' in the path must not cut or re-encode it
    odd = fresh.parent.parent / "a?b #c %41" / fresh.name
    shutil.copytree(fresh, odd)
    before = _files(odd)
    assert open_run(odd).status == "complete" and len(read_trials(odd)) == 8
    assert _files(odd) == before
