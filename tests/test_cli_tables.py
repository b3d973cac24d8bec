"""Every results table keeps every number whole: at 60, 80 and 200 columns on a terminal and redirected.

The numbers are parsed back out of the printed text and compared with the same command's ``--json``.
Also: the help texts (``[ray]`` shown, the TERMS sentence only where a prune setting is taken, no
truncated defaults) and ``report --json``'s verdict counts.
"""

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from cliharness import run
from probprune.cli.app import console, print_table

TINY = ["--arch", "fcn:6,16,16,3", "--widths", "16,24", "--trials", "4", "--chunk-size", "2",
        "--set", "gap.n_points=64", "--set", "gap.n_restarts=1", "--set", "gap.n_steps=2"]
WIDTHS = (60, 80, 200)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w])")


def numbers(text: str) -> Counter[str]:
    """Every number token in ``text`` (ANSI colours removed), counted."""
    return Counter(_NUM.findall(_ANSI.sub("", text)))


def assert_whole(text: str, expected: list[str]) -> None:
    """No ellipsis anywhere, and each expected number appears whole (as often as expected)."""
    plain = _ANSI.sub("", text)
    assert "…" not in plain and "..." not in plain, plain
    have, want = numbers(plain), Counter(expected)
    missing = {k: n for k, n in want.items() if have[k] < n}
    assert not missing, (missing, plain)


@pytest.fixture(params=[(w, tty) for w in WIDTHS for tty in (True, False)],
                ids=[f"{w}-{'tty' if tty else 'redirected'}" for w in WIDTHS for tty in (True, False)])
def screen(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, bool]]:
    """The CLI's console as a terminal of ``w`` columns, or redirected with ``COLUMNS=w``."""
    w, tty = request.param
    monkeypatch.setattr(console, "_force_terminal", tty)
    monkeypatch.setattr(console, "_width", w)
    yield w, tty


def _g(v: float) -> str:
    return "inf" if v == float("inf") else format(v, ".3g")


def test_verify_tables_show_every_number(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, screen: tuple[int, bool]) -> None:
    import probprune.cli.verify as cli_verify

    monkeypatch.setattr(cli_verify, "report_after_verify", lambda run_dir: None)
    code, out, err = run(["verify", *TINY, "--runs-dir", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    code, out, err = run(["verify", *TINY, "--runs-dir", str(tmp_path)], capsys)
    assert code == 0, err
    want: list[str] = []
    for p in doc["points"]:
        want += [str(p["width"]), _g(p["gap_lower_median"]), _g(p["gap_lower_quantile"]), _g(p["gap_upper_median"]),
                 _g(p["eps"]), _g(p["tightness"])]
    assert_whole(out, want)
    for p in doc["points"]:  # coverage and its interval: 0.xx [0.xx,1.00]
        assert f"{p['coverage']:.2f} [{p['coverage_low']:.2f},{p['coverage_high']:.2f}]" in _ANSI.sub("", out)
    assert _ANSI.sub("", out).count("consistent") >= len(doc["points"])
    w, tty = screen
    lines = _ANSI.sub("", out).splitlines()
    rows = [ln for ln in lines if "│" in ln]
    if tty:  # on a terminal a table is drawn only when it fits, else stacked records (no table rows)
        assert all(len(ln) <= w for ln in rows)
        assert rows if w == 200 else True
        assert rows or sum(ln.strip().startswith("gap med:") for ln in lines) == len(doc["points"])
    else:  # redirected: the whole table, one line per point, whatever COLUMNS says
        assert len([ln for ln in rows if "consistent" in ln]) == len(doc["points"])


def test_bound_table_shows_every_number(capsys: pytest.CaptureFixture[str], screen: tuple[int, bool]) -> None:
    args = ["bound", "--arch", "fcn:16,64,64,4", "--method", "magnitude", "--relative-threshold", "0.05"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    code, out, err = run(args, capsys)
    assert code == 0, err
    want = []
    for r in doc["bound"]["layers"]:
        want += [format(r[k], ".4g")
                 for k in ("level", "norm_target", "norm_pruned", "norm_diff", "error", "contribution")]
    assert_whole(out, want)


def test_prune_table_shows_every_number(capsys: pytest.CaptureFixture[str], screen: tuple[int, bool]) -> None:
    args = ["prune", "--arch", "fcn:16,64,64,4", "--law", "uniform:K=2.449", "--seed", "0", "--method",
            "magnitude", "--prune-fraction", "0.9", "--scope", "global"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    code, out, err = run(args, capsys)
    assert code == 0, err
    want = []
    for r in [*doc["stats"]["layers"], doc["stats"]["total"]]:
        want += [str(r["size"]), str(r["pruned"]), f"{r['sparsity']:.4f}", f"{r['density']:.4f}"]
    assert_whole(out, want)


#: A tiny real experiment (seconds): both LeNets, so that a cut model name could not be told apart.
TINY_EXPERIMENT = ["experiment", "mnist", "--models", "lenet-300-100,lenet-5", "--seeds", "0", "--epochs", "0.02",
                   "--finetune-epochs", "0", "--prune-fractions", "0,0.5", "--methods", "magnitude", "--scopes",
                   "global", "--set", "test_limit=200", "--set", "gap_points=16", "--set", "gap_restarts=1",
                   "--set", "gap_steps=2"]


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny experiment run once (``--json``); later runs of the same command resume it (nothing computed)."""
    from probprune.data import dataset_status

    if not dataset_status("mnist")["ready"]:
        if os.environ.get("CI") == "true":
            pytest.fail("mnist is not prepared — CI must prepare it (make data)")
        pytest.skip("mnist is not prepared (probprune data prepare mnist)")
    import probprune.cli.experiment as cli_experiment

    runs = tmp_path_factory.mktemp("experiment-runs")
    capture = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_experiment, "_write_report", lambda run_dir: Path(run_dir) / "report.html")
        mp.setattr(sys, "stdout", capture)
        try:
            from probprune.cli import main

            main([*TINY_EXPERIMENT, "--runs-dir", str(runs), "--json"])
        except SystemExit as e:
            assert not e.code, capture.getvalue()
    doc: dict = json.loads(capture.getvalue())
    assert doc["computed"] == len(doc["rows"]) == 4
    return runs, doc


@pytest.mark.data
def test_experiment_table_shows_every_number(experiment_run: tuple[Path, dict], capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch, screen: tuple[int, bool]) -> None:
    """The real ``experiment`` command's summary table, parsed back and compared with its ``--json``."""
    import probprune.cli.experiment as cli_experiment

    runs, doc = experiment_run
    monkeypatch.setattr(cli_experiment, "_write_report", lambda run_dir: Path(run_dir) / "report.html")
    code, out, err = run([*TINY_EXPERIMENT, "--runs-dir", str(runs)], capsys)
    assert code == 0, err
    summary = doc["summary"]
    assert len(summary) == 4 and {s["model"] for s in summary} == {"lenet-300-100", "lenet-5"}
    want: list[str] = []
    for s in summary:
        want += [format(s["prune_fraction"], "g"), f"{100 * s['test_accuracy']:.2f}",
                 f"{100 * s['test_accuracy_std']:.2f}", f"{s['n_kept']:.0f}", format(s["gap_lower"], ".3g"),
                 format(s["gap_upper"], ".3g"), format(s["mean_test_gap"], ".3g")]
    assert any(float(v) > 0 for v in want[4::7] + want[5::7])  # the pruned rows carry real gap numbers
    assert_whole(out, want)
    plain = _ANSI.sub("", out)
    w, tty = screen
    rows = [ln for ln in plain.splitlines() if "│" in ln and "lenet" in ln]
    if tty and rows:  # a table drawn on a terminal fits it
        assert all(len(ln) <= w for ln in plain.splitlines() if "│" in ln)
    if tty and not rows:  # stacked records: every model name whole on its own line
        names = [ln.split(":", 1)[1].strip() for ln in plain.splitlines() if ln.strip().startswith("model:")]
        assert sorted(names) == sorted(s["model"] for s in summary)
    if not tty:  # redirected: the whole table, one line per setting, whatever COLUMNS says
        assert sorted(ln.split("│")[1].strip() for ln in rows) == sorted(s["model"] for s in summary)
    assert w == 200 or not tty or not rows  # 60 and 80 columns cannot hold the ten columns: stacked there


def test_data_info_table_keeps_paths_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], screen: tuple[int, bool]) -> None:
    root = tmp_path / ("a-rather-long-folder-name-" * 3) / "data"
    monkeypatch.setenv("PROBPRUNE_DATA", str(root))
    code, out, _ = run(["data", "info", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    code, out, _ = run(["data", "info"], capsys)
    assert code == 0
    plain = _ANSI.sub("", out)
    assert "…" not in plain
    for d in doc["datasets"]:
        # a path is cut into lines only by the terminal (stacked records keep each value on its own line)
        assert d["path"] in plain.replace("\n", "") or d["path"] in plain


def test_redirected_subprocess_prints_the_wide_table(tmp_path: Path) -> None:
    """A real pipe with COLUMNS=60: the table comes out at its full width, paths and all."""
    root = tmp_path / ("long-folder-name-" * 4) / "data"
    env = {**os.environ, "COLUMNS": "60", "PROBPRUNE_DATA": str(root)}
    env.pop("FORCE_COLOR", None)
    res = subprocess.run([sys.executable, "-m", "probprune", "data", "info"], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    assert str(root / "mnist") in res.stdout and max(len(ln) for ln in res.stdout.splitlines()) > 60


def test_print_table_layouts() -> None:
    t = Table(title="t")
    for c in ("model", "certified upper", "gap median"):
        t.add_column(c)
    t.add_row("LeNet-300-100", "3.2912345", "0.0008229")
    t.add_row("LeNet-5", "12.5", "[green]0.022089[/green]")
    for w, kind in ((20, "stacked"), (60, "table"), (200, "table")):
        buf = io.StringIO()
        c = Console(file=buf, width=w, force_terminal=True, color_system=None)
        assert print_table(t, c) == kind
        assert_whole(buf.getvalue(), ["3.2912345", "0.0008229", "12.5", "0.022089", "300", "100", "5"])
        assert "LeNet-300-100" in buf.getvalue() and "[green]" not in buf.getvalue()
    buf = io.StringIO()
    assert print_table(t, Console(file=buf, width=20, force_terminal=False)) == "wide"
    assert max(len(ln) for ln in buf.getvalue().splitlines()) > 20 and "LeNet-300-100" in buf.getvalue()
    assert "model: LeNet-300-100" in _stacked_text(t)


def _stacked_text(t: Table) -> str:
    buf = io.StringIO()
    print_table(t, Console(file=buf, width=10, force_terminal=True, color_system=None))
    return " ".join(buf.getvalue().split())


# ---------------------------------------------------------------- help texts

def _help(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, _ = run([*args, "--help"], capsys)
    assert code == 0
    return " ".join(out.replace("│", " ").split())


@pytest.mark.parametrize("cmd", [["verify"], ["experiment"]])
def test_help_shows_the_ray_extra(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "pip install 'probprune[ray]'" in _help(cmd, capsys)


@pytest.mark.parametrize("cmd", [["prune"], ["verify"], ["bound"], ["experiment"]])
def test_terms_where_a_prune_setting_is_taken(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "share of weights REMOVED" in _help(cmd, capsys)


@pytest.mark.parametrize("cmd", [["data", "info"], ["data"], ["config", "show"], ["config"], ["report"],
                                 ["certificate", "check"]])
def test_no_terms_where_no_prune_setting(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "share of weights REMOVED" not in _help(cmd, capsys)


def test_experiment_help_shows_every_default_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    from probprune.config import EXPERIMENT_PRUNE_FRACTIONS as PRUNE_FRACTIONS

    text = _help(["experiment"], capsys)
    assert "…" not in text
    assert "(default " + ", ".join(map(str, PRUNE_FRACTIONS)) + ")" in text


# ---------------------------------------------------------------- report --json verdict counts

def test_report_json_counts_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_report_html import make_run

    run_dir, points = make_run(tmp_path)
    code, out, err = run(["report", str(run_dir), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    want = Counter(p["verdict"] for p in points)
    assert (doc["n_confirmed"], doc["n_consistent"], doc["n_refuted"]) == (
        want["confirmed"], want["consistent"], want["refuted"]) == (0, 3, 1)
    assert doc["n_fail"] == doc["n_refuted"]


# ---------------------------------------------------------------- packaged config presets

REPO = Path(__file__).resolve().parents[1]


def test_packaged_presets_are_the_repository_configs() -> None:
    import tomllib

    from probprune.config import presets

    repo = {p.stem: p.read_bytes() for p in sorted((REPO / "configs").glob("*.toml"))}
    packaged = {name: p.read_bytes() for name, p in presets().items()}
    assert repo and packaged == repo  # same names, same bytes
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "configs/*.toml" in data["tool"]["setuptools"]["package-data"]["probprune"]


@pytest.mark.parametrize("name", ["quick", "quick.toml", "fixed-level"])
def test_config_preset_name_works_from_any_folder(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    stem = name.removesuffix(".toml")
    code, out, err = run(["config", "show", "--config", str(REPO / "configs" / f"{stem}.toml"), "--json"], capsys)
    assert code == 0, err
    want = json.loads(out)["hash"]
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    code, out, err = run(["config", "show", "--config", name, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["hash"] == want


def test_unknown_config_names_the_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["config", "show", "--config", "qiuck"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --config 'qiuck': file not found") and "quick" in err


# ---------------------------------------------------------------- --executor ray says where it ran

def test_executor_ray_says_where_the_work_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    import probprune.cli.verify as cli_verify

    monkeypatch.setattr(cli_verify, "report_after_verify", lambda run_dir: None)
    args = ["verify", *TINY, "--widths", "16", "--runs-dir", str(tmp_path), "--executor", "ray"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    ex = json.loads(out)["executor"]
    assert ex["name"] == "ray" and ex["where"] == "local Ray instance" and ex["n_nodes"] == 1
    assert ex["n_cpus"] >= 1 and ex["n_workers"] == int(ex["n_cpus"]) and ":" in ex["address"]
    code, out, err = run(args, capsys)  # a second run (a no-op) on a fresh local instance prints the line
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("executor: "))
    assert line.startswith("executor: local Ray instance (address ") and "1 node(s)" in line
    assert f"{ex['n_workers']} worker(s) at once" in line


# ---------------------------------------------------------------- progress lines when not on a terminal

def test_progress_log_prints_every_few_seconds_with_an_eta() -> None:
    from probprune.cli.app import ProgressLog

    now = [0.0]
    buf = io.StringIO()
    log = ProgressLog(Console(file=buf, width=200), interval_s=5.0, clock=lambda: now[0])
    for done, t in ((0, 0.0), (1, 1.0), (2, 6.0), (3, 7.0), (4, 12.0), (10, 30.0), (10, 31.0)):
        now[0] = t
        log.update(done, 10, "trials")
    lines = buf.getvalue().splitlines()
    assert lines == ["progress: trials 0/10 (0 %), 0 s elapsed, ETA -",
                     "progress: trials 2/10 (20 %), 6 s elapsed, ETA 24 s",
                     "progress: trials 4/10 (40 %), 12 s elapsed, ETA 18 s",
                     "progress: trials 10/10 (100 %), 30 s elapsed, ETA 0 s"]


def test_redirected_verify_logs_progress_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import probprune.cli.verify as cli_verify

    monkeypatch.setattr(cli_verify, "report_after_verify", lambda run_dir: None)
    code, out, err = run(["verify", *TINY, "--runs-dir", str(tmp_path)], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("progress: trials")]
    assert lines and lines[-1].startswith("progress: trials") and " 16/16 (100 %)" in lines[-1]
    assert "ETA" in lines[-1] and "progress:" not in out  # stdout keeps only the results
    code, out, err = run(["verify", *TINY, "--runs-dir", str(tmp_path / "j"), "--json"], capsys)
    assert code == 0 and err == ""  # under --json stderr stays empty


def test_report_text_says_the_verdict_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_report_html import make_run

    run_dir, _ = make_run(tmp_path)
    code, out, err = run(["report", str(run_dir)], capsys)
    assert code == 0, err
    assert "verdicts: 0 confirmed, 3 consistent, 1 refuted" in out
