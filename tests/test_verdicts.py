"""Three verdicts per grid point (confirmed / consistent / refuted): the statistics, the store, the runner."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probprune.config import GapSpec, MCSpec, NetSpec, ProbPruneError, PruneSpec, RunConfig
from probprune.montecarlo import clopper_pearson, min_trials_to_confirm, summarize_point, verdict
from probprune.records import GridRow, TrialRow
from probprune.runner.verify import run_verify
from probprune.store.runs import DB_FILE, RunWriter, open_run, prepare_run, read_points

# --------------------------------------------------------------------------- statistics


def test_verdict_of_an_interval() -> None:
    assert verdict(0.96, 1.0, 0.05) == "confirmed"
    assert verdict(0.83, 1.0, 0.05) == "consistent"  # 20 failure-free trials: the "PASS"
    assert verdict(0.5, 0.94, 0.05) == "refuted"
    # an interval touching 1 − δ contains it: neither shown
    assert verdict(0.95, 1.0, 0.05) == "consistent"
    assert verdict(0.5, 0.95, 0.05) == "consistent"


def test_the_store_names_the_verdicts_montecarlo_returns() -> None:
    # the verdicts are defined once (probprune.records): montecarlo, the store and the report name that one tuple
    from probprune.montecarlo import VERDICTS as MC_VERDICTS
    from probprune.records import VERDICTS
    from probprune.report.html import VERDICTS as REPORT_VERDICTS
    from probprune.store.runs import VERDICT_VALUES

    assert VERDICT_VALUES == MC_VERDICTS
    assert REPORT_VERDICTS is VERDICT_VALUES is MC_VERDICTS is VERDICTS


def test_min_trials_to_confirm_at_the_default_delta() -> None:
    assert min_trials_to_confirm(0.05, 0.95) == 72
    assert clopper_pearson(72, 72)[0] > 0.95 > clopper_pearson(71, 71)[0]
    assert min_trials_to_confirm(0.05, 0.95) > 20  # the default job's trial count can never confirm


@settings(max_examples=60, deadline=None)
@given(delta=st.floats(0.001, 0.6), confidence=st.floats(0.5, 0.999))
def test_min_trials_to_confirm_is_the_least_count_that_can(delta: float, confidence: float) -> None:
    n = min_trials_to_confirm(delta, confidence)
    assert clopper_pearson(n, n, confidence)[0] > 1.0 - delta
    if n > 1:
        assert clopper_pearson(n - 1, n - 1, confidence)[0] <= 1.0 - delta


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, math.nan])
def test_min_trials_to_confirm_refuses_a_bad_delta(bad: float) -> None:
    with pytest.raises(ProbPruneError, match="delta"):
        min_trials_to_confirm(bad)


def test_point_summaries_carry_the_three_verdicts() -> None:
    twenty = summarize_point([0.1] * 20, [0.5] * 20, eps=0.2, delta=0.05)
    assert (twenty.verdict, twenty.passed, twenty.n_trials_to_confirm) == ("consistent", True, 72)
    assert twenty.coverage_low == pytest.approx(0.8316, abs=1e-4)
    enough = summarize_point([0.1] * 72, [0.5] * 72, eps=0.2, delta=0.05)
    assert (enough.verdict, enough.passed) == ("confirmed", True)
    one_miss = summarize_point([0.1] * 71 + [0.3], [0.5] * 72, eps=0.2, delta=0.05)
    assert one_miss.verdict == "consistent"  # one violation keeps 72 trials from confirming
    bad = summarize_point([0.1] * 50, [0.5] * 50, eps=0.01, delta=0.05)
    assert (bad.verdict, bad.passed) == ("refuted", False)
    none = summarize_point([0.1] * 5, [0.5] * 5, eps=None, delta=0.1)
    assert none.verdict is None and none.passed is None and none.n_trials_to_confirm == 36


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 200), frac=st.floats(0, 1), delta=st.sampled_from([0.01, 0.05, 0.1, 0.3]))
def test_verdict_agrees_with_interval_and_passed(n: int, frac: float, delta: float) -> None:
    k = round(frac * n)
    s = summarize_point([0.0] * k + [1.0] * (n - k), [0.0] * n, eps=0.5, delta=delta)
    assert s.coverage_low is not None and s.coverage_high is not None
    assert (s.verdict == "confirmed") == (s.coverage_low > 1 - delta)
    assert (s.verdict == "refuted") == (s.coverage_high < 1 - delta)
    assert s.passed == (s.verdict != "refuted")
    if n < min_trials_to_confirm(delta):
        assert s.verdict != "confirmed"


# --------------------------------------------------------------------------- store

CFG = RunConfig(prunes=(PruneSpec(relative_threshold=0.1),), mc=MCSpec(n_trials=3, hidden_widths=(8,)))
GRID = [{"grid_index": 0, "width": 8, "prune_index": 0, "arch": "fcn:16,8,8,4", "method": "magnitude",
         "scope": "layerwise", "level_name": "relative_threshold", "level_value": 0.1, "rescale": False,
         "schedule_c": None, "schedule_alpha": None, "eps": 1.5, "eps_theory": 1.5, "theorem": "§4",
         "theory_exponent": None}]


def _stored_run(tmp_path: Path) -> Path:
    rows = [{"grid_index": 0, "trial": t, "seed": t, "width": 8, "method": "magnitude",
             "level_name": "relative_threshold", "level": 0.1, "gap_lower": 0.5, "rel_gap_lower": 0.25,
             "out_sup": 2.0, "gap_upper": 1.0, "eps": 1.5, "sparsity": 0.1, "n_evals": 10, "seconds": 0.01,
             "device": "cpu", "dtype": "float32", "version": "0"} for t in range(3)]
    s = summarize_point([0.5] * 3, [1.0] * 3, eps=1.5, delta=0.05)
    run_dir, _ = prepare_run(tmp_path, CFG)
    with RunWriter(run_dir, CFG, [GridRow(**g) for g in GRID], 3, meta={"version": "0"}) as w:
        w.write_chunk([TrialRow(**r) for r in rows], s)
    return run_dir


def test_the_store_keeps_the_verdict(tmp_path: Path) -> None:
    run = _stored_run(tmp_path)
    (p,) = read_points(run)
    assert (p["verdict"], p["n_trials_to_confirm"], p["passed"]) == ("consistent", 72, True)


@pytest.mark.parametrize(("sql", "message"), [
    ("UPDATE points SET verdict = 'pass'", "verdict 'pass', not one of confirmed, consistent, refuted"),
    ("UPDATE points SET verdict = 'confirmed'", "says 'confirmed', but its interval"),
    ("UPDATE points SET verdict = 'refuted'", "says 'refuted', but its interval"),
    ("UPDATE points SET coverage_low = NULL", "no coverage interval"),
    ("UPDATE points SET passed = 0", "passed means not refuted"),
    ("UPDATE points SET n_trials_to_confirm = 0", "n_trials_to_confirm = 0"),
])
def test_a_tampered_verdict_is_refused_on_open(tmp_path: Path, sql: str, message: str) -> None:
    run = _stored_run(tmp_path)
    with sqlite3.connect(run / DB_FILE) as con:
        con.execute(sql)
    con.close()
    with pytest.raises(ProbPruneError, match=message.replace("(", r"\(")):
        open_run(run)


# --------------------------------------------------------------------------- runner


def test_a_run_reports_verdicts_and_the_trials_it_would_need(tmp_path: Path) -> None:
    base = dict(net=NetSpec(widths=(6, 16, 16, 3)), prunes=(PruneSpec(method="magnitude", relative_threshold=0.1),),
                gap=GapSpec(n_points=32, n_restarts=1, n_steps=2))
    few = run_verify(RunConfig(**base, mc=MCSpec(n_trials=8, hidden_widths=(16,))), tmp_path)  # type: ignore[arg-type]
    (p,) = few.points
    assert p["n_covered"] == 8 and p["verdict"] == "consistent" and p["n_trials_to_confirm"] == 72
    wrong = run_verify(RunConfig(**base, mc=MCSpec(n_trials=8, hidden_widths=(16,),  # type: ignore[arg-type]
                                                  eps_scale=1e-4)), tmp_path)
    assert [q["verdict"] for q in wrong.points] == ["refuted"]
    many = run_verify(RunConfig(**base, mc=MCSpec(n_trials=72, hidden_widths=(16,), chunk_size=72)),  # type: ignore[arg-type]
                      tmp_path)
    assert [(q["n_covered"], q["verdict"]) for q in many.points] == [(72, "confirmed")]
