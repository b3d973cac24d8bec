"""`probprune bound`: ε and per-layer terms (table and JSON), the solvers, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from cliharness import run
from probprune.bounds.probabilistic import probabilistic_bound
from probprune.config import LawSpec, PruneSpec, parse_arch

ARCH = ["--arch", "fcn:64,2048,2048,10", "--law", "uniform:K=2.449"]


def test_bound_json_matches_library(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["bound", *ARCH, "--method", "magnitude", "--relative-threshold", "0.05", "--delta", "0.05",
                        "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    lib = probabilistic_bound(parse_arch("fcn:64,2048,2048,10"), LawSpec(scale=2.449),
                              PruneSpec(relative_threshold=0.05), 0.05)
    assert doc["bound"]["value"] == pytest.approx(lib.value)
    assert [r["name"] for r in doc["bound"]["layers"]] == ["0.weight", "2.weight", "4.weight"]
    assert doc["bound"]["theorem"].startswith("§")


def test_bound_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["bound", *ARCH, "--method", "random", "--p", "0.01", "--rescale"], capsys)
    assert code == 0
    assert "ε(δ=0.05)" in out and "0.weight" in out and "4.weight" in out and "probability budget" in out


def test_solve_max_prune(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["bound", *ARCH, "--solve", "max-prune", "--eps", "0.1", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    level = doc["answer"]["level"]
    assert 0 < level < 1 and doc["bound"]["value"] <= 0.1
    above = probabilistic_bound(parse_arch("fcn:64,2048,2048,10"), LawSpec(scale=2.449),
                                PruneSpec(relative_threshold=level + 1e-5), 0.05)
    assert above.value > 0.1


def test_solve_min_width_with_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["bound", "--arch", "fcn:16,64,64,4", "--method", "random", "--solve", "min-width",
                        "--eps", "0.5", "--schedule", "0.5,0.5", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    h = doc["answer"]["hidden_width"]
    assert h > 16 and doc["bound"]["value"] <= 0.5
    assert doc["paper"]["theory_exponent"] == pytest.approx(0.75) and doc["paper"]["constants"]["source"] == "theorem"


def test_the_old_schedule_spelling_is_refused_with_the_one_to_use(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["bound", "--arch", "fcn:16,64,64,4", "--method", "random", "--solve", "min-width",
                          "--eps", "0.5", "--alpha", "0.5", "--c", "0.5", "--json"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: --c/--alpha (c=0.5, alpha=0.5): the schedule is one flag in every "
                                        "command now: --schedule c,alpha (level = c·h^-alpha)"]


def test_dry_run_prints_config_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["bound", *ARCH, "--relative-threshold", "0.05", "--dry-run"], capsys)
    assert code == 0 and "ε(" not in out
    assert out.splitlines() == [out.splitlines()[0]] and out.startswith("probprune bound | config ")  # one line
    code, out, _ = run(["bound", *ARCH, "--relative-threshold", "0.05", "--dry-run", "--verbose"], capsys)
    assert code == 0 and "resolved config" in out and '"relative_threshold": 0.05' in out and "ε(" not in out


@pytest.mark.parametrize(("extra", "match"), [
    (["--relative-threshold", "0.1", "--delta", "1.5"], "delta"),
    (["--relative-threshold", "0.1", "--delta", "0"], "delta"),
    (["--solve", "max-prune", "--eps", "0"], "eps"),
    (["--solve", "max-prune", "--eps", "-1"], "eps"),
    (["--solve", "min-width", "--eps", "0.1", "--alpha", "1.5", "--c", "1"], "alpha"),
    (["--relative-threshold", "1.5"], "relative_threshold"),
    (["--method", "random", "--p", "1.5"], "p"),
    (["--method", "random", "--prune-fraction", "0.1"], "exact-count"),
    (["--relative-threshold", "0.1", "--activation", "sigmoid"], "σ"),
    (["--solve", "max-prune"], "eps"),
])
def test_bad_input_one_line_exit_2(extra: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["bound", "--arch", "fcn:16,64,64,4", *extra], capsys)
    assert code == 2 and out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0]


def test_assumption_violation_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["bound", "--arch", "fcn:16,8,4", "--relative-threshold", "0.1"], capsys)
    assert code == 2 and out == "" and "hidden width must exceed the input width" in err
