"""`probprune verify` and `probprune config show`: JSON, tables, dry run, resume, one-line errors (exit 2)."""

import importlib
import json
from pathlib import Path

import pytest
import torch

from cliharness import run
from probprune.config import config_hash, default_config

QUICK = ["--arch", "fcn:6,16,16,3", "--widths", "16,24", "--trials", "4", "--chunk-size", "2",
         "--set", "gap.n_points=64", "--set", "gap.n_restarts=1", "--set", "gap.n_steps=2"]



@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the HTML report after verify (its own tests cover it; it is the slow part here)."""
    import probprune.cli.verify as cli_verify

    monkeypatch.setattr(cli_verify, "report_after_verify", lambda run_dir: None)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_json_run_then_resume_is_a_noop(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(["verify", *QUICK, "--runs-dir", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    assert err == ""  # under --json: no config dump, no progress bar on stderr
    doc = json.loads(out)
    run_dir = Path(doc["run_dir"])
    assert run_dir.parent == tmp_path and run_dir.name == doc["hash"]
    assert doc["status"] == "complete" and doc["n_done"] == doc["n_expected"] == 16 and doc["n_new"] == 16
    assert len(doc["points"]) == 4 and {s["method"] for s in doc["slopes"]} == {"magnitude", "random"}
    assert doc["all_passed"] is True
    # verdicts: 4 failure-free trials leave every interval containing 1 - δ (consistent, not confirmed)
    assert all(p["verdict"] == "consistent" and p["n_trials"] < p["n_trials_to_confirm"] for p in doc["points"])
    assert (doc["n_confirmed"], doc["n_consistent"], doc["n_refuted"]) == (0, 4, 0)
    assert doc["executor"] == {"name": "local"}
    # the config is an object, as in every command's --json (the canonical text beside it)
    assert doc["config"]["mc"]["n_trials"] == 4 and doc["config"]["mc"]["hidden_widths"] == [16, 24]
    assert json.loads(doc["canonical"])["mc"]["n_trials"] == 4
    assert all(p["passed"] is True and p["eps"] > p["gap_lower_quantile"] for p in doc["points"])
    assert (run_dir / "config.json").is_file() and (run_dir / "results.sqlite").is_file()
    report_path = getattr(importlib.import_module("probprune.report"), "build_report", None)
    if report_path is not None:  # the report hook ran and said where the report is
        assert doc["report"] is not None and Path(doc["report"]).is_file()
    import probprune.cli.verify as cli_verify

    monkeypatch.setattr(cli_verify, "report_after_verify", lambda run_dir: None)
    code, out, err = run(["verify", "--resume", str(run_dir), "--json"], capsys)
    assert code == 0 and err == "", err
    again = json.loads(out)
    assert again["n_new"] == 0 and again["resumed"] is True and again["points"] == doc["points"]
    # the same config from flags finds the same folder
    code, out, _ = run(["verify", *QUICK, "--runs-dir", str(tmp_path), "--json"], capsys)
    assert code == 0 and json.loads(out)["n_new"] == 0


def test_table_output_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_report: None) -> None:
    code, out, _ = run(["verify", *QUICK, "--runs-dir", str(tmp_path), "--dry-run"], capsys)
    assert code == 0 and out.startswith("probprune verify | config ") and f"output: {tmp_path}" in out
    assert len(out.strip().splitlines()) == 1  # the full config is behind --verbose
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
    code, out, err = run(["verify", *QUICK, "--method", "random", "--p", "0.1", "--rescale",
                          "--runs-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert "coverage" in out and "run directory:" in out
    # 4 trials without a failure cannot confirm: each point is "consistent", and the output says how many would
    assert "consistent" in out and "pass" not in out.split("run directory:")[0]
    assert "4 trials per point can only refute" in out and "--set mc.n_trials=" in out
    assert "verdicts: 0 confirmed, 2 consistent, 0 refuted" in out


def test_default_dry_run_is_the_paper_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["verify", "--runs-dir", str(tmp_path), "--dry-run"], capsys)
    assert code == 0 and str(tmp_path / config_hash(default_config())) in out
    assert list(tmp_path.iterdir()) == []


def test_config_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["config", "show", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["hash"] == config_hash(default_config())
    assert doc["config"]["mc"]["hidden_widths"] == [128, 256, 512, 1024, 2048]
    code, out, _ = run(["config", "show", "--set", "mc.n_trials=7", "--json"], capsys)
    assert json.loads(out)["config"]["mc"]["n_trials"] == 7
    code, out, _ = run(["config", "show"], capsys)
    assert code == 0 and "hash" in out


def _bad_cases(tmp_path: Path, run_dir: Path) -> list[tuple[list[str], str]]:
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[mc]\nn_trails = 5\n")
    wrong_type = tmp_path / "wrong_type.toml"
    wrong_type.write_text('[mc]\nn_trials = "many"\n')
    bad_section = tmp_path / "bad_section.toml"
    bad_section.write_text("[montecarlo]\nn_trials = 5\n")
    not_toml = tmp_path / "not.toml"
    not_toml.write_text("[mc\n")
    cases = [
        (["--config", str(unknown)], "n_trails"),
        (["--config", str(wrong_type)], "n_trials"),
        (["--config", str(bad_section)], "montecarlo"),
        (["--config", str(not_toml)], "TOML"),
        (["--config", str(tmp_path / "missing.toml")], "not found"),
        ([*QUICK, "--widths", ""], "empty grid"),
        ([*QUICK, "--widths", "16,x"], "--widths"),
        ([*QUICK, "--trials", "0"], "n_trials"),
        ([*QUICK, "--set", "mc.n_trials=-3"], "n_trials"),
        ([*QUICK, "--set", "mc.nope=1"], "nope"),
        ([*QUICK, "--set", "prunes=[]"], "prunes"),
        ([*QUICK, "--delta", "1.5"], "delta"),
        ([*QUICK, "--p", "0.1", "--method", "magnitude"], "p"),
        ([*QUICK, "--schedule", "1"], "schedule"),
        ([*QUICK, "--arch", "fcn:6"], "widths"),
        ([*QUICK, "--matmul", "bf16"], "mc.matmul"),
        ([*QUICK, "--matmul", "tf32", "--dtype", "float64"], "float32"),
        (["--resume", str(tmp_path)], "not a run directory"),
        (["--resume", str(tmp_path / "nowhere")], "not a run directory"),
        (["--resume", str(run_dir), "--trials", "9"], "disagrees"),
        (["--resume", str(run_dir), "--config", str(unknown)], "--resume"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*QUICK, "--device", "cuda"], "CUDA"))
    return cases


def test_bad_input_one_line_exit_2_nothing_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   no_report: None) -> None:
    runs = tmp_path / "runs"
    code, out, _ = run(["verify", *QUICK, "--runs-dir", str(runs), "--json"], capsys)
    assert code == 0
    run_dir = Path(json.loads(out)["run_dir"])
    cases = _bad_cases(tmp_path, run_dir)
    before = _snapshot(tmp_path)
    for args, needle in cases:
        code, out, err = run(["verify", *args, "--runs-dir", str(runs)], capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, err)
        assert out == ""  # not even the header: the config is resolved before anything is printed
        assert _snapshot(tmp_path) == before, args


def test_refuted_points_are_named_in_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   no_report: None) -> None:
    tiny = [*QUICK, "--eps", "1e-9", "--runs-dir", str(tmp_path)]  # every gap exceeds this ε: coverage 0
    code, out, err = run(["verify", *tiny, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert all(p["verdict"] == "refuted" for p in doc["points"])
    assert (doc["n_confirmed"], doc["n_consistent"], doc["n_refuted"]) == (0, 0, 4)
    assert doc["all_passed"] is False
    code, out, err = run(["verify", *tiny], capsys)
    assert code == 0, err
    assert "4 grid point(s) refuted" in out and out.count("refuted") >= 6  # 4 rows + counts + failure line
    assert "FAIL" not in out
