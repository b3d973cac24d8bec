"""report.html / summary.md / ``probprune report``: self-contained page, partial runs, empty runs, bad input."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probprune.cli import main
from probprune.config import BoundSpec, MCSpec, NetSpec, ProbPruneError, PruneSpec, RunConfig, config_hash
from probprune.montecarlo import min_trials_to_confirm
from probprune.records import GridRow, PointSummary, SlopeRow, TrialRow
from probprune.report import build_report, load_report_data, write_report
from probprune.store.runs import RunWriter
from reportrows import experiment, report

WIDTHS = (32, 64)
RULES = (PruneSpec(method="magnitude", relative_threshold=0.2), PruneSpec(method="random", p=0.1, rescale=True))
N_TRIALS = 6


def _cfg() -> RunConfig:
    return RunConfig(net=NetSpec(widths=(8, 32, 32, 4)), prunes=RULES, bound=BoundSpec(delta=0.1),
                     mc=MCSpec(n_trials=N_TRIALS, hidden_widths=WIDTHS))


def make_run(root: Path, n_written: int = N_TRIALS) -> tuple[Path, list[dict[str, Any]]]:
    """A run folder written through the store's own writer, with ``n_written`` trials per grid point."""
    cfg = _cfg()
    run = root / config_hash(cfg)
    grid = []
    for i, (w, (k, pr)) in enumerate((w, kp) for w in WIDTHS for kp in enumerate(RULES)):
        grid.append({"grid_index": i, "width": w, "prune_index": k, "arch": f"fcn:8,{w},{w},4", "method": pr.method,
                     "scope": pr.scope, "level_name": pr.level_name, "level_value": getattr(pr, pr.level_name or ""),
                     "rescale": pr.rescale, "eps": (0.01 if i == 1 else 0.5) / w ** 0.5, "theory_exponent": 0.5})
    rng = np.random.default_rng(1)
    points = []
    with RunWriter(run, cfg, [GridRow(**g) for g in grid], N_TRIALS, meta={"version": "test", "device": "cpu"}) as wr:
        for g in grid:
            if n_written == 0:
                continue
            gaps = 0.3 / g["width"] ** 0.5 * np.exp(0.1 * rng.standard_normal(n_written))
            rows = [{"grid_index": g["grid_index"], "trial": t, "seed": t, "width": g["width"],
                     "method": g["method"], "level_name": g["level_name"], "level": g["level_value"],
                     "gap_lower": float(x), "rel_gap_lower": float(x) * 3, "out_sup": 0.3, "gap_upper": float(x) * 9,
                     "eps": g["eps"], "sparsity": 0.2, "n_evals": 100, "seconds": 0.01, "device": "cpu",
                     "dtype": "float32", "version": "test"} for t, x in enumerate(gaps)]
            cov = float(np.mean(gaps <= g["eps"]))
            med = float(np.median(gaps))
            point = {"grid_index": g["grid_index"], "n_trials": n_written, "gap_lower_median": med,
                     "gap_lower_quantile": float(np.quantile(gaps, 0.9)), "gap_upper_median": med * 9,
                     "rel_gap_lower_median": med * 3,
                     "eps": g["eps"], "n_covered": int(cov * n_written), "coverage": cov,
                     # grid point 1 is refuted (interval below 1 − δ = 0.9), the others consistent
                     "coverage_low": 0.0 if g["grid_index"] == 1 else cov - 0.3,
                     "coverage_high": 0.5 if g["grid_index"] == 1 else 1.0, "passed": g["grid_index"] != 1,
                     "verdict": "refuted" if g["grid_index"] == 1 else "consistent",
                     "n_trials_to_confirm": min_trials_to_confirm(0.1), "confidence": 0.95,
                     "tightness": 1.5, "delta": 0.1}
            points.append({**g, **point})
            wr.write_chunk([TrialRow(**r) for r in rows],
                           PointSummary(**{k: v for k, v in point.items() if k != "grid_index"}),
                           [SlopeRow(prune_index=k, method=pr.method, n_widths=2, slope=-0.5, intercept=0.0,
                                     exponent=0.5, theory_exponent=0.5) for k, pr in enumerate(RULES)])
    return run, points


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "img":
            self.imgs.append(str(a.get("src")))
        for k in ("src", "href", "srcset", "data", "action", "poster"):
            if a.get(k):
                self.urls.append(str(a[k]))


def parse(path: Path) -> tuple[_Page, str]:
    text = path.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    return p, text


def test_report_is_self_contained_and_shows_the_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, points = make_run(tmp_path)
    with pytest.raises(SystemExit) as ex:
        main(["report", str(run), "--json"])
    assert ex.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"] == str(run / "report.html") and doc["status"] == "complete"
    assert (doc["n_pass"], doc["n_fail"], doc["n_done"], doc["n_expected"]) == (3, 1, 24, 24)
    path = run / "report.html"
    page, text = parse(path)
    # every figure embedded as a PNG data URI; nothing else is referenced
    assert len(page.imgs) == 4  # gap vs width, relative gap vs width, coverage, distribution
    # one level per rule and width: gap vs prune_fraction would be a dot per rule; left out with the reason
    assert "figure &#x27;gap vs prune_fraction&#x27; left out: no pruning rule has two prune_fractions" in text
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(u.startswith("data:") for u in page.urls)
    assert not re.search(r"(?i)(https?:|//[a-z0-9.-]+\.[a-z]{2,}/|<script|<link|@import|url\()", text)
    assert "default-src 'none'" in text
    # the verdict table holds every grid point with its verdict, numbers as stored
    table = text.split('id="points"')[1].split("</table>")[0]
    assert table.count("<tr>") == len(points) + 1
    assert table.count('mid">consistent<') == 3 and table.count('bad">refuted<') == 1
    assert ">confirmed<" not in table and "PASS" not in text and "FAIL" not in text
    assert table.count(">36<") == 4  # trials to confirm at δ = 0.1, 95 %
    assert "0 confirmed</span>, <span class=\"mid\">3 consistent</span>" in text
    # 6 trials per point can never confirm: the page says so, with the count that could
    warn = text.split('id="can-only-refute">')[1].split("</p>")[0]
    assert "Every grid point ran 6 trials" in warn and "can only be refuted, never confirmed" in warn
    assert "at least 36 trials with no violation" in warn and "--set mc.n_trials=36" in warn
    assert "1 − δ = 0.9 at 95 % confidence" in warn
    assert f"{points[0]['gap_lower_median']:.4g}" in table
    assert "partial-warning" not in page.ids
    assert "complete: 24 of 24 trials stored" in text
    assert "report probprune" in text and "report machine" in text and "run meta version" in text
    assert '"n_trials": 6' in text  # the config
    for name in ("gap_vs_width", "relative_gap_vs_width", "coverage", "gap_distribution"):
        assert (run / "figures" / f"{name}.png").is_file() and (run / "figures" / f"{name}.svg").is_file()
    assert not (run / "figures" / "gap_vs_prune_fraction.png").exists()
    summary = (run / "summary.md").read_text()
    assert "| 3 | 64 | random (rescaled) | p=0.1 | 6 |" in summary
    assert "(0 confirmed, 3 consistent, 1 refuted, 0 without a verdict)" in summary
    assert "**Every grid point ran 6 trials: such a point can only be refuted, never confirmed." in summary
    assert "| 1 | 32 | random (rescaled) | p=0.1 | 6 | refuted | 36 |" in summary
    assert summary.count("| 6 | consistent | 36 |") == 3


def test_report_reads_the_store_without_recomputing(tmp_path: Path) -> None:
    run, points = make_run(tmp_path)
    data = load_report_data(run)
    assert data.status == "complete" and data.n_done == 24 and data.n_expected == 24 and data.delta == 0.1
    assert [p.summary.gap_lower_median for p in data.points] == pytest.approx([p["gap_lower_median"] for p in points])
    assert [p.label for p in data.points] == ["magnitude", "random (rescaled)"] * 2
    # trials get their rule from the grid (scope, rescale) and slopes from their pruning rule
    assert {t.label for t in data.trials} == {"magnitude", "random (rescaled)"}
    assert [s.label for s in data.slopes] == ["magnitude", "random (rescaled)"]


def test_partial_run_is_reported_with_a_visible_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = make_run(tmp_path, n_written=3)
    with pytest.raises(SystemExit) as ex:
        main(["report", str(run)])
    assert ex.value.code in (0, None)
    out = capsys.readouterr()
    assert "partial run" in out.err
    assert f"report: {run / 'report.html'}" in out.out
    page, text = parse(run / "report.html")
    assert "partial-warning" in page.ids
    assert "Partial run: only 12 of 24 trials" in text
    assert "**warning**: Partial run" in (run / "summary.md").read_text()


def test_empty_run_is_an_error_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = make_run(tmp_path, n_written=0)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(SystemExit) as ex:
        main(["report", str(run)])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no results" in err[0]
    # nothing of the report is written (the store's read-only SQLite open may leave its -wal/-shm files)
    after = sorted(p.name for p in run.iterdir() if not p.name.startswith("results.sqlite-"))
    assert after == before


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_not_a_run_dir_is_an_error(tmp_path: Path, make: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        main(["report", str(make(tmp_path))])
    assert ex.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(ProbPruneError):
        build_report(make(tmp_path))


def test_report_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = make_run(tmp_path)
    with pytest.raises(SystemExit) as ex:
        main(["report", str(run), "--dry-run"])
    assert ex.value.code in (0, None)
    assert "report.html" in capsys.readouterr().out.replace("\n", "")  # rich may wrap the path
    assert not (run / "report.html").exists() and not (run / "figures").exists()


def test_experiment_results_get_the_accuracy_figure_and_table(tmp_path: Path) -> None:
    rows = [experiment(dataset="mnist", model="lenet300", method=m, scope="layerwise", prune_fraction=pf,
                       finetuned=False, seed=s, test_accuracy=0.9 - pf * (0.5 if m == "random" else 0.1) + 0.01 * s)
            for m in ("magnitude", "random") for pf in (0.0, 0.5) for s in (0, 1)]
    data = report(tmp_path, experiment=rows)
    path = write_report(data)
    page, text = parse(path)
    assert len(page.imgs) == 1 and 'id="fig-accuracy_vs_sparsity"' in text  # no gap stored: no gap figure
    table = text.split('id="experiment"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 4
    assert ">85.50<" in table  # magnitude, prune_fraction 0.5: mean of 85.0 and 86.0
    assert ">65.50<" in table  # random, prune_fraction 0.5: mean of 65.0 and 66.0


def test_experiment_run_folder_through_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probprune.store.experiments import ExperimentStore

    run = tmp_path / "exp"
    with ExperimentStore(run, {"dataset": "mnist", "seeds": [0, 1]}) as st:
        for method in ("magnitude", "random"):
            for pf in (0.0, 0.9):
                for seed in (0, 1):
                    st.add(experiment(dataset="mnist", model="lenet300", method=method, scope="global",
                                      prune_fraction=pf, finetuned=True, seed=seed,
                                      test_accuracy=0.98 - pf * (0.2 if method == "random" else 0.01) - 0.002 * seed,
                                      gap_upper=50.0, gap_lower=2.0, mean_test_gap=0.7, radius=9.3))
    data = load_report_data(run)
    assert len(data.experiment) == 8 and not data.points and data.config.get("kind") == "experiment"
    with pytest.raises(SystemExit) as ex:
        main(["report", str(run)])
    assert ex.value.code in (0, None)
    page, text = parse(run / "report.html")
    assert len(page.imgs) == 2 and {"fig-accuracy_vs_sparsity", "fig-experiment_gaps"} <= page.ids
    table = text.split('id="experiment"')[1].split("</table>")[0]
    assert ">79.90<" in table  # random, global, fine-tuned, prune_fraction 0.9: mean of 80.0 and 79.8


def _experiment_run(root: Path, drop: int = 0) -> tuple[Path, list[dict[str, Any]]]:
    """An experiment folder with the quick preset's grid (2 models × 3 fractions × 2 methods × 2 scopes × 2)."""
    from probprune.store.experiments import ExperimentStore

    cfg = {"dataset": "mnist", "models": ["lenet-300-100", "lenet-5"], "prune_fractions": [0.0, 0.5, 0.9],
           "methods": ["random", "magnitude"], "scopes": ["layerwise", "global"], "seeds": [0],
           "finetune_epochs": 0.1}
    rows = [{"dataset": "mnist", "model": m, "method": me, "scope": sc, "prune_fraction": pf, "finetuned": ft,
             "seed": 0, "test_accuracy": 0.97 - 0.3 * pf * (me == "random") + 0.01 * ft,
             "gap_lower": 1.0 + 10 * pf + 0.5 * (m == "lenet-5"), "gap_upper": 300.0 + 1000 * pf,
             "mean_test_gap": 0.25 + pf, "radius": 9.25, "sparsity": pf}
            for m in cfg["models"] for pf in cfg["prune_fractions"] for me in cfg["methods"]
            for sc in cfg["scopes"] for ft in (False, True)]
    run = root / "exp"
    with ExperimentStore(run, cfg) as st:
        for r in rows[:len(rows) - drop]:
            st.add(experiment(**r))
    return run, rows


def test_experiment_report_describes_an_experiment(tmp_path: Path) -> None:
    run, rows = _experiment_run(tmp_path)
    assert len(rows) == 48
    data = load_report_data(run)
    assert (data.kind, data.status, data.n_done, data.n_expected) == ("experiment", "complete", 48, 48)
    page, text = parse(build_report(run))
    assert "complete: 48 of 48 settings stored" in text and "trials" not in text.split('id="terms"')[0]
    assert "experiment on real data" in text.split("</title>")[0]
    terms = text.split('id="terms">')[1].split("</p>")[0]
    assert "certified upper" in terms and "mean test gap" in terms and "largest ‖x‖₂ of a test image" in terms
    assert "Clopper" not in terms and "verdict" not in terms.lower()  # ε(δ) and coverage do not apply here
    table = text.split('id="experiment"')[1].split("</table>")[0]
    head = table.split("</thead>")[0]
    for col in ("gap lower", "certified upper", "mean test gap", "radius r", "accuracy mean (%)", "sparsity"):
        assert f">{col}<" in head
    assert table.count("<tr>") == 1 + 48
    # lenet-5, random, global, not fine-tuned, prune_fraction 0.9: each number as stored
    want = ">".join(["mnist</td><td class=\"l\"", "lenet-5</td><td class=\"l\"", "random</td><td class=\"l\"",
                     "global</td><td class=\"l\"", "no</td><td class=\"\"", "0.9</td><td class=\"\"",
                     "0.9</td><td class=\"\"", "1</td><td class=\"\"", "70.00</td><td class=\"\"",
                     "–</td><td class=\"\"", "10.5</td><td class=\"\"", "1200</td><td class=\"\"",
                     "1.15</td><td class=\"\"", "9.25</td>"])
    assert want in table
    summary = (run / "summary.md").read_text()
    assert "# probprune experiment on real data" in summary and "complete: 48 of 48 settings stored" in summary
    assert "| mnist | lenet-5 | random | global | no | 0.9 | 0.9 | 1 | 70.00 | – | 10.5 | 1200 | 1.15 | 9.25 |" \
        in summary
    assert "ε(δ) = the probabilistic bound" not in summary and "Verdict" not in summary


def test_partial_experiment_report_counts_settings(tmp_path: Path) -> None:
    run, _ = _experiment_run(tmp_path, drop=5)
    page, text = parse(build_report(run))
    assert "partial: 43 of 48 settings stored" in text and "partial-warning" in page.ids
    warn = text.split('id="partial-warning">')[1].split("</p>")[0]
    assert "only 43 of 48 settings are stored" in warn and "probprune experiment" in warn
    assert "verify --resume" not in warn
