"""`probprune gap` and `probprune prune --gap`: sandwich output, JSON, one-line errors (exit 2)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cliharness import run

ARCH = "fcn:6,16,16,3"


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture()
def files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    t, p = tmp_path / "t.safetensors", tmp_path / "p.safetensors"
    code, _, err = run(["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.5", "--out", str(p),
                        "--save-target", str(t)], capsys)
    assert code == 0, err
    return t, p


FAST = ["--n-points", "128", "--n-restarts", "2", "--n-steps", "10"]


def test_gap_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    t, p = files
    code, out, err = run(["gap", "--arch", ARCH, "--weights", str(t), "--pruned", str(p), "--radius", "2",
                          "--json", *FAST], capsys)
    assert code == 0 and err == ""  # under --json stderr stays empty
    doc = json.loads(out)
    sw = doc["sandwich"]
    assert 0 < sw["lower"] <= sw["upper"]
    assert sw["ratio"] == pytest.approx(sw["upper"] / sw["lower"])
    assert sw["n_exact"] == sw["n_norms"] == 9 and sw["exact_norms"]
    assert [x["name"] for x in sw["bound"]["terms"]] == ["0.weight", "2.weight", "4.weight"]
    assert doc["config"]["gap"]["radius"] == 2.0
    # same file twice: the nets agree, the sandwich is [0, 0]
    code, out, _ = run(["gap", "--arch", ARCH, "--weights", str(t), "--pruned", str(t), "--json", *FAST], capsys)
    same = json.loads(out)["sandwich"]
    assert same["lower"] == 0.0 and same["upper"] == 0.0 and same["ratio"] == 1.0


def test_gap_tables_and_dry_run(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    t, p = files
    code, out, _ = run(["gap", "--arch", ARCH, "--weights", str(t), "--pruned", str(p), *FAST], capsys)
    assert code == 0
    assert out.startswith("probprune gap | config ") and "resolved config" not in out
    assert "gap sandwich" in out and "4.weight" in out and "svd" in out
    code, out, _ = run(["gap", "--arch", ARCH, "--weights", str(t), "--pruned", str(p), "--dry-run", "--verbose"],
                       capsys)
    assert code == 0 and "resolved config" in out and "gap sandwich" not in out


def test_prune_with_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["prune", "--arch", "cnn:1x6x6,c2k3m2,3", "--law", "uniform", "--method", "random",
                        "--p", "0.3", "--gap", "--radius", "0.5", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["sandwich"]["lower"] <= doc["sandwich"]["upper"]
    assert doc["config"]["gap"] == {"radius": 0.5}
    code, out, _ = run(["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.3", "--gap"], capsys)
    assert code == 0 and "gap sandwich" in out and "pruning report" in out
    code, out, _ = run(["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.3", "--json"], capsys)
    assert "sandwich" not in json.loads(out)


def test_bad_input_one_line_exit_2(files: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    t, p = files
    other = tmp_path / "other.safetensors"
    code, _, _ = run(["prune", "--arch", "fcn:6,17,16,3", "--law", "uniform", "--prune-fraction", "0.5",
                      "--out", str(other)], capsys)
    assert code == 0
    nan = tmp_path / "nan.safetensors"
    save_file({"0.weight": torch.full((16, 6), float("nan")), "2.weight": torch.zeros(16, 16),
               "4.weight": torch.zeros(3, 16)}, str(nan))
    base = ["gap", "--arch", ARCH, "--weights", str(t)]
    cases = [
        ([*base, "--pruned", str(p), "--radius", "0"], "radius=0.0"),
        ([*base, "--pruned", str(p), "--radius", "-1"], "radius=-1.0"),
        ([*base, "--pruned", str(p), "--radius", "nan"], "radius=nan"),
        ([*base, "--pruned", str(p), "--radius", "inf"], "radius=inf"),
        ([*base, "--pruned", str(other)], "architecture"),
        ([*base, "--pruned", str(nan)], "non-finite"),
        ([*base, "--pruned", str(tmp_path / "missing.safetensors")], "not found"),
        ([*base, "--pruned", str(p), "--norm-method", "magic"], "norm_method='magic'"),
        (["prune", "--arch", ARCH, "--law", "uniform", "--prune-fraction", "0.5", "--gap", "--radius", "-3",
          "--out", str(tmp_path / "never.safetensors")], "radius=-3.0"),
    ]
    for args, match in cases:
        code, out, err = run(args, capsys)
        assert code == 2, (args, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "never.safetensors").exists()
