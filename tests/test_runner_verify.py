"""runner.verify: map-then-merge driver, resume after SIGKILL, re-run no-op, wrong bound fails, early errors."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from probprune.config import GapSpec, MCSpec, NetSpec, ProbPruneError, PruneSpec, RunConfig, config_hash, default_config
from probprune.runner.verify import (
    LocalExecutor,
    ProgressEvent,
    Unit,
    compute_unit,
    run_verify,
)
from probprune.store.runs import DB_FILE, open_run, read_points, read_slopes, read_trials

CFG = RunConfig(
    net=NetSpec(widths=(6, 16, 16, 3)),
    prunes=(PruneSpec(method="magnitude", schedule_c=1.0, schedule_alpha=0.5),
            PruneSpec(method="random", schedule_c=1.0, schedule_alpha=0.5)),
    gap=GapSpec(n_points=64, n_restarts=2, n_steps=3),
    mc=MCSpec(n_trials=5, hidden_widths=(16, 32), chunk_size=2),
)


def _content(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_trials(run_dir)]


class StopAfter:
    """An executor that dies (like Ctrl-C) after ``n`` units."""

    def __init__(self, n: int) -> None:
        self.n = n

    def map(self, fn: Callable[[Unit], list[dict[str, Any]]], units: Sequence[Unit]
            ) -> Iterator[tuple[Unit, list[dict[str, Any]]]]:
        for i, u in enumerate(units):
            if i == self.n:
                raise KeyboardInterrupt
            yield u, fn(u)


class Reversed(LocalExecutor):
    """Units in reverse order (as a distributed executor may finish them)."""

    def map(self, fn: Callable[[Unit], list[dict[str, Any]]], units: Sequence[Unit]
            ) -> Iterator[tuple[Unit, list[dict[str, Any]]]]:
        yield from super().map(fn, list(reversed(units)))


def test_run_complete_points_slopes_and_rerun_is_a_noop(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    res = run_verify(CFG, tmp_path, progress=events.append)
    assert res.run_dir == tmp_path / config_hash(CFG)
    assert res.info.status == "complete" and res.n_new == 20 and not res.resumed
    assert events[0].done == 0 and events[-1].done == events[-1].total == 20
    rows = read_trials(res.run_dir)
    assert len(rows) == 20 and len({(r["grid_index"], r["trial"]) for r in rows}) == 20
    assert all(r["device"] == "cpu" and r["dtype"] == "float32" and r["version"] for r in rows)
    pts = read_points(res.run_dir)
    assert [(p["width"], p["method"]) for p in pts] == [(16, "magnitude"), (16, "random"), (32, "magnitude"),
                                                      (32, "random")]
    for p in pts:
        assert p["n_trials"] == 5 and p["eps"] is not None and p["passed"] is True
        assert p["gap_lower_median"] <= p["gap_upper_median"]
        assert p["coverage_low"] <= p["coverage"] <= p["coverage_high"]
    slopes = read_slopes(res.run_dir)
    assert [s["method"] for s in slopes] == ["magnitude", "random"]
    assert [s["theory_exponent"] for s in slopes] == [pytest.approx(1.25), pytest.approx(0.75)]
    before = _content(res.run_dir)
    again = run_verify(CFG, tmp_path)
    assert again.n_new == 0 and again.resumed and _content(res.run_dir) == before


def test_interrupted_run_resumes_to_the_same_rows_in_any_unit_order(tmp_path: Path) -> None:
    ref = run_verify(CFG, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run_verify(CFG, tmp_path / "cut", executor=StopAfter(3))
    cut = tmp_path / "cut" / config_hash(CFG)
    info = open_run(cut)
    assert info.status == "partial" and info.n_done == 5  # chunks [0, 1], [2, 3], [4] of the first point
    res = run_verify(CFG, tmp_path / "cut", executor=Reversed(), resume=cut)
    assert res.n_new == 15 and res.info.status == "complete"
    assert _content(cut) == _content(ref.run_dir)
    assert read_points(cut) == read_points(ref.run_dir)


def test_a_deliberately_wrong_bound_is_reported_as_fail(tmp_path: Path) -> None:
    # Our ε(δ) is valid but loose (ε / (1−δ)-quantile ≈ 50-100 at these widths), so ε/10 still holds here;
    # ε/1000 lies below every observed gap: a wrong bound, which must be reported as FAIL.
    wrong = RunConfig(net=CFG.net, prunes=CFG.prunes, gap=CFG.gap,
                      mc=MCSpec(n_trials=12, hidden_widths=(16,), chunk_size=12, eps_scale=0.001))
    res = run_verify(wrong, tmp_path)
    for p in res.points:
        gaps = [r["gap_lower"] for r in read_trials(res.run_dir, grid_index=p["grid_index"])]
        assert p["eps"] < min(gaps)  # the premise: this ε is violated by every trial
        assert p["passed"] is False and p["n_covered"] == 0
        assert p["coverage_high"] < 0.95 and p["tightness"] < 1.0
    right = RunConfig(net=wrong.net, prunes=wrong.prunes, gap=wrong.gap,
                      mc=MCSpec(n_trials=12, hidden_widths=(16,), chunk_size=12))
    ok = run_verify(right, tmp_path)
    assert [p["passed"] for p in ok.points] == [True, True]
    assert ok.points[0]["eps"] == pytest.approx(1000 * res.points[0]["eps"])


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        cuda = RunConfig(net=CFG.net, prunes=CFG.prunes, mc=MCSpec(device="cuda"))
        with pytest.raises(ProbPruneError, match="CUDA"):
            run_verify(cuda, tmp_path)
    no_level = RunConfig(prunes=(PruneSpec(),))
    with pytest.raises(ProbPruneError, match="give a level"):
        run_verify(no_level, tmp_path)
    with pytest.raises(ProbPruneError, match="not a run directory"):
        run_verify(CFG, tmp_path, resume=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_compute_unit_checks_its_config_hash() -> None:
    from probprune.runner.verify import from_canonical

    u = Unit(from_canonical(CFG), "0" * 16, 0, (0,), None, "x")
    with pytest.raises(ProbPruneError, match="hash"):
        compute_unit(u)


def test_default_config_grid() -> None:
    widths = sorted({p for p in default_config().mc.hidden_widths})
    assert widths == [128, 256, 512, 1024, 2048]
    assert default_config().net.widths[0] == 16 and default_config().net.widths[-1] == 4
    assert {r.method for r in default_config().prunes} == {"magnitude", "random"}
    assert all(r.schedule_c is not None for r in default_config().prunes)


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as con:
            return int(con.execute("SELECT COUNT(*) FROM trials").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_database(tmp_path: Path) -> None:
    """A real subprocess killed with SIGKILL between commits resumes to the rows of an uninterrupted run."""
    args = ["--arch", "fcn:6,16,16,3", "--widths", "16,24,32", "--trials", "8", "--chunk-size", "2",
            "--set", "gap.n_points=64", "--set", "gap.n_restarts=2", "--set", "gap.n_steps=3", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "probprune", "verify", *args]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--runs-dir", str(killed_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    total = 3 * 2 * 8
    seen = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            dbs = list(killed_dir.glob(f"*/{DB_FILE}"))
            seen = _count(dbs[0]) if dbs else 0
            if seen >= 4:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_dir = next(killed_dir.iterdir())
    n_killed = open_run(run_dir).n_done
    assert 4 <= n_killed < total and n_killed % 2 == 0  # whole chunks only
    # resume (the same code path as `probprune verify --resume`) and run the same config uninterrupted elsewhere
    cfg = open_run(run_dir).config
    res = run_verify(cfg, tmp_path, resume=run_dir)
    assert res.n_new == total - n_killed and res.info.status == "complete"
    ref = run_verify(cfg, tmp_path / "fresh").run_dir
    assert ref.name == run_dir.name
    a, b = _content(run_dir), _content(ref)
    assert len(a) == total and len({(r["grid_index"], r["trial"]) for r in a}) == total
    assert a == b
    assert read_points(run_dir) == read_points(ref)
