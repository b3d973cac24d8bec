"""`probprune prune`: tables, JSON, files, help text and one-line errors (exit 2, nothing written)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cliharness import run


def test_sample_prune_save_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, tgt = tmp_path / "p.safetensors", tmp_path / "t.safetensors"
    code, stdout, _ = run(["prune", "--arch", "fcn:16,64,64,4", "--law", "uniform:K=2.449", "--seed", "0",
                           "--method", "magnitude", "--prune-fraction", "0.9", "--scope", "global",
                           "--out", str(out), "--save-target", str(tgt), "--json"], capsys)
    assert code == 0
    doc = json.loads(stdout)
    assert doc["stats"]["total"]["pruned"] == round(0.9 * (16 * 64 + 64 * 64 + 64 * 4))
    assert [r["name"] for r in doc["stats"]["layers"]] == ["0.weight", "2.weight", "4.weight"]
    pruned = load_file(str(out))
    assert sorted(load_file(str(tgt))) == sorted(pruned)
    assert sorted(pruned) == ["0.weight", "2.weight", "4.weight"]
    zeros = sum(int((v == 0).sum()) for v in pruned.values())
    assert zeros == doc["stats"]["total"]["pruned"]
    # loading the saved target and pruning it the same way gives the same weights
    out2 = tmp_path / "p2.safetensors"
    code, _, _ = run(["prune", "--arch", "fcn:16,64,64,4", "--weights", str(tgt), "--prune-fraction", "0.9",
                      "--scope", "global", "--out", str(out2)], capsys)
    assert code == 0
    again = load_file(str(out2))
    assert all(torch.equal(again[k], pruned[k]) for k in pruned)


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(["prune", "--arch", "fcn:8,32,2", "--law", "gaussian", "--method", "random",
                           "--p", "0.5", "--rescale"], capsys)
    assert code == 0
    assert stdout.startswith("probprune prune | config ") and "0.weight" in stdout and "total" in stdout


def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    good = tmp_path / "good.safetensors"
    save_file({"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(2, 4)}, str(good))
    nan = tmp_path / "nan.safetensors"
    save_file({"0.weight": torch.full((4, 3), float("nan")), "2.weight": torch.zeros(2, 4)}, str(nan))
    return [
        (["--arch", "fcn:16,0,4", "--law", "uniform", "--prune-fraction", "0.5"], "net.widths"),
        (["--arch", "fcn:16,8,4", "--law", "uniform", "--prune-fraction", "1.5"], "prune_fraction=1.5"),
        (["--arch", "fcn:16,8,4", "--law", "uniform", "--method", "random", "--p", "-0.2"], "p=-0.2"),
        (["--arch", "fcn:16,8,4", "--law", "uniform", "--threshold", "-1"], "threshold=-1.0"),
        (["--arch", "fcn:16,8,4", "--law", "uniform", "--prune-fraction", "0.5", "--threshold", "0.1"],
         "threshold"),
        (["--arch", "fcn:3,4,2", "--weights", str(nan), "--prune-fraction", "0.5"], "non-finite"),
        (["--arch", "fcn:3,5,2", "--weights", str(good), "--prune-fraction", "0.5"], "shape"),
        (["--arch", "fcn:3,4,2", "--weights", str(tmp_path / "missing.safetensors"), "--prune-fraction", "0.5"],
         "not found"),
        (["--arch", "fcn:3,4,2", "--prune-fraction", "0.5"], "--weights"),
    ]


def test_bad_input_one_line_exit_2_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, match in _bad_cases(tmp_path):
        out = tmp_path / "out.safetensors"
        code, _, err = run(["prune", *args, "--out", str(out)], capsys)
        assert code == 2, (args, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (args, err)
        assert "Traceback" not in err
        assert not out.exists()


def test_subprocess_entry_point_and_help() -> None:
    res = subprocess.run([sys.executable, "-m", "probprune", "prune", "--arch", "fcn:4,4", "--law", "uniform",
                          "--prune-fraction", "2"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: prune_fraction=2.0")
    res = subprocess.run([sys.executable, "-m", "probprune", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("probprune ")
    for args in (["--help"], ["prune", "--help"]):
        res = subprocess.run([sys.executable, "-m", "probprune", *args], capture_output=True, text=True,
                             env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
        assert res.returncode == 0
        assert "REMOVED" in res.stdout and "density" in res.stdout


# issue 17: only where the command takes a prune setting (tests/test_cli_tables.py: not in data/config/report …)
@pytest.mark.parametrize("args", [["prune"], ["bound"], ["verify"], ["experiment"]])
def test_every_command_help_explains_prune_fraction_vs_density(args: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run([*args, "--help"], capsys)
    assert code == 0
    text = " ".join(stdout.split())
    assert "REMOVED" in text and "density" in text, args
