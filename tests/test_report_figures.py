"""Figures of the report: each built from a small synthetic result set, files valid, data = input."""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probprune.config import ProbPruneError
from probprune.records import PointSummary
from probprune.report import figures, make_figures
from probprune.report.data import ReportData, ReportPoint
from reportrows import experiment, point, report, trial
from reportrows import slope as slope_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDTHS = (128, 256, 512)
RULES = (("magnitude", False, -1.5), ("random", False, -0.5), ("random", True, -0.5))
DELTA = 0.1


def val(p: ReportPoint, key: str) -> Any:
    """A field of the point's summary, else of its grid row."""
    return getattr(p.summary, key) if key in PointSummary.__dataclass_fields__ else getattr(p.grid, key)


def synthetic(n_trials: int = 12, seed: int = 0) -> ReportData:
    """Trials with gap ~ c·h^{slope}·lognormal, points summarising them, slopes; records as the store gives them."""
    rng = np.random.default_rng(seed)
    trials: list[Any] = []
    points: list[Any] = []
    gi = 0
    for method, rescale, slope in RULES:
        for w in WIDTHS:
            gaps = 3.0 * w ** slope * np.exp(0.2 * rng.standard_normal(n_trials))
            eps = float(np.quantile(gaps, 0.85))
            sp = 0.3 if method == "magnitude" else 0.2
            for t, g in enumerate(gaps):
                trials.append(trial(**{"grid_index": gi, "trial": t, "seed": 1000 * gi + t, "width": w,
                               "method": method,
                               "scope": "layerwise", "level_name": "p" if method == "random" else "relative_threshold",
                               "level_value": sp, "rescale": rescale, "gap_lower": float(g),
                               "rel_gap_lower": float(g) * 2, "out_sup": 0.5, "gap_upper": float(g) * 7.0,
                               "eps": eps, "sparsity": sp + 0.001 * t, "seconds": 0.01, "device": "cpu",
                               "dtype": "float32", "version": "0.1.0"}))
            cov = float(np.mean(gaps <= eps))
            lo, hi = max(0.0, cov - 0.2), min(1.0, cov + 0.05)
            verdict = "refuted" if cov < 0.85 else "confirmed" if lo > 1 - DELTA else "consistent"
            points.append(point(grid_index=gi, width=w, method=method, scope="layerwise",
                                level_name="p" if method == "random" else "relative_threshold", level_value=sp,
                                rescale=rescale, n_trials=n_trials, gap_lower_median=float(np.median(gaps)),
                                gap_lower_quantile=float(np.quantile(gaps, 1 - DELTA)),
                                gap_upper_median=float(np.median(gaps)) * 7.0, eps=eps, coverage=cov,
                                coverage_low=lo, coverage_high=hi, passed=cov >= 0.85, verdict=verdict,
                                tightness=eps / float(np.quantile(gaps, 1 - DELTA)), theory_exponent=-slope))
            gi += 1
    slopes = [slope_row(prune_index=j, method=m, scope="layerwise", rescale=r, slope=s + 0.01, theory_exponent=-s)
              for j, (m, r, s) in enumerate(RULES)]
    return report("synthetic", config={"bound": {"delta": DELTA}}, points=points, trials=trials, slopes=slopes)


def experiment_rows() -> list[Any]:
    rows = []
    for model in ("lenet300", "lenet5"):
        for method in ("magnitude", "random"):
            for scope in ("layerwise", "global"):
                for ft in (False, True):
                    for pf in (0.0, 0.5, 0.9):
                        for seed in (0, 1, 2):
                            acc = 0.98 - (0.3 if method == "random" else 0.05) * pf ** 2 + 0.001 * seed \
                                + (0.01 if ft else 0.0)
                            rows.append(experiment(dataset="mnist", model=model, method=method, scope=scope,
                                                   prune_fraction=pf, finetuned=ft, seed=seed,
                                                   test_accuracy=acc, gap_upper=10.0, gap_lower=1.0,
                                                   mean_test_gap=0.5, radius=9.0))
    return rows


def check_files(res: figures.FigureResult) -> None:
    assert res.png.read_bytes()[:8] == PNG_MAGIC
    assert res.png.stat().st_size > 5000
    root = ET.parse(res.svg).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 50


@pytest.fixture(scope="module")
def data() -> ReportData:
    return synthetic()


def test_gap_vs_width_plots_the_input_numbers(tmp_path: Path, data: ReportData) -> None:
    res = figures.gap_vs_width(data.points, data.slopes, data.delta, tmp_path)
    check_files(res)
    series = {s["label"]: s for s in res.data["series"]}
    assert set(series) == {"magnitude", "random", "random (rescaled)"}
    for method, rescale, slope in RULES:
        label = "random (rescaled)" if rescale else method
        pts = sorted((p for p in data.points if p.label == label), key=lambda p: p.grid.width)
        s = series[label]
        assert s["width"] == [float(w) for w in WIDTHS]
        for key in ("gap_lower_median", "gap_lower_quantile", "gap_upper_median", "eps"):
            assert s[key] == pytest.approx([val(p, key) for p in pts], rel=1e-12)
        assert s["slope"] == pytest.approx(slope + 0.01)
        assert s["theory_exponent"] == -slope
    assert res.data["delta"] == DELTA


def test_relative_gap_vs_width(tmp_path: Path) -> None:
    pts = [point(width=w, method=m, rel_gap_lower_median=0.1 * k / w) for k, m in ((1, "magnitude"), (3, "random"))
           for w in (64, 128, 256)]
    data = report("x", points=pts, slopes=[slope_row(method="random", slope=-0.5, rel_slope=-1.0)])
    res = figures.relative_gap_vs_width(data.points, data.slopes, tmp_path)
    check_files(res)
    series = {s["label"]: s for s in res.data["series"]}
    assert series["random"]["width"] == [64.0, 128.0, 256.0]
    assert series["random"]["rel_gap_lower_median"] == pytest.approx([0.3 / w for w in (64, 128, 256)])
    assert series["random"]["rel_slope"] == -1.0 and series["magnitude"]["rel_slope"] is None
    with pytest.raises(ProbPruneError, match="no results"):
        figures.relative_gap_vs_width([point(width=4)], [], tmp_path)


def test_coverage_plots_cp_bars(tmp_path: Path, data: ReportData) -> None:
    res = figures.coverage(data.points, data.delta, tmp_path)
    check_files(res)
    ordered = sorted(data.points, key=lambda p: (p.label, p.grid.width))
    assert res.data["coverage"] == pytest.approx([val(p, "coverage") for p in ordered])
    assert res.data["cp_low"] == pytest.approx([val(p, "coverage_low") for p in ordered])
    assert res.data["cp_high"] == pytest.approx([val(p, "coverage_high") for p in ordered])
    assert res.data["passed"] == [val(p, "passed") for p in ordered]
    assert res.data["verdict"] == [val(p, "verdict") for p in ordered] == ["refuted"] * len(ordered)
    assert res.data["level"] == pytest.approx(1 - DELTA)
    assert len(res.data["labels"]) == len(ordered)


def test_coverage_colours_each_point_by_its_verdict(tmp_path: Path) -> None:
    rows = [point(width=64 * (i + 1), method="magnitude", coverage=c, coverage_low=lo, coverage_high=hi,
                  verdict=v, delta=0.05)
            for i, (c, lo, hi, v) in enumerate(((1.0, 0.96, 1.0, "confirmed"), (1.0, 0.83, 1.0, "consistent"),
                                                 (0.5, 0.3, 0.7, "refuted")))]
    res = figures.coverage(report("x", points=rows).points, 0.05, tmp_path)
    assert res.data["verdict"] == ["confirmed", "consistent", "refuted"]
    assert res.data["colors"] == ["#2ca02c", "#b8860b", "#d62728"]  # green, amber, red


def test_gap_distribution_is_the_ecdf_of_the_trials(tmp_path: Path, data: ReportData) -> None:
    res = figures.gap_distribution(data.trials, data.points, data.delta, tmp_path)
    check_files(res)
    panels = res.data["panels"]
    assert len(panels) == len(RULES) * len(WIDTHS)
    for panel in panels:
        gaps = sorted(t.row.gap_lower for t in data.trials
                      if t.label == panel["label"] and t.row.width == panel["width"])
        assert panel["gaps"] == pytest.approx(gaps, rel=1e-12)
        n = len(gaps)
        assert panel["ecdf"] == pytest.approx([(i + 1) / n for i in range(n)])
        eps = next(p.grid.eps for p in data.points if p.label == panel["label"] and p.grid.width == panel["width"])
        assert panel["eps"] == pytest.approx(eps)


def test_gap_distribution_caps_panels(tmp_path: Path, data: ReportData) -> None:
    res = figures.gap_distribution(data.trials, data.points, data.delta, tmp_path, max_panels=5)
    assert len(res.data["panels"]) == 5


def test_gap_vs_prune_fraction_at_fixed_width(tmp_path: Path) -> None:
    base = synthetic()
    # a sweep over levels at width 512: four levels per rule, with sparsity in the summary
    pts = []
    for method, rescale, _ in RULES:
        for j, pf in enumerate((0.1, 0.2, 0.4, 0.8)):
            pts.append(point(width=512, method=method, scope="layerwise", rescale=rescale,
                             level_name="prune_fraction", level_value=pf,
                             gap_lower_median=0.01 * (j + 1) * (2 if method == "random" else 1),
                             gap_lower_quantile=0.012 * (j + 1) * (2 if method == "random" else 1)))
    data = report("x", points=pts + base.points[:2])
    res = figures.gap_vs_prune_fraction(data.points, [], tmp_path, delta=0.05)
    check_files(res)
    assert res.data["width"] == 512  # the width with most grid points
    series = {s["label"]: s for s in res.data["series"]}
    assert set(series) == {"magnitude", "random", "random (rescaled)"}
    for label, s in series.items():
        mine = [p for p in data.points if p.label == label and p.grid.width == 512]
        assert s["prune_fraction"] == pytest.approx([0.1, 0.2, 0.4, 0.8])
        assert s["gap_lower_median"] == pytest.approx([val(p, "gap_lower_median") for p in mine])
        assert s["gap_lower_quantile"] == pytest.approx([val(p, "gap_lower_quantile") for p in mine])


def test_gap_vs_prune_fraction_reads_sparsity_from_trials(tmp_path: Path, data: ReportData) -> None:
    # two magnitude levels at width 256; the summaries carry no sparsity: it comes from the trial rows
    pts = [point(width=256, method="magnitude", scope="layerwise", rescale=False, level_name="relative_threshold",
                 level_value=rho, gap_lower_median=g) for rho, g in ((0.3, 0.01), (0.6, 0.05))]
    trials = [trial(grid_index=i, trial=t, width=256, method="magnitude", scope="layerwise",
                    level_name="relative_threshold", level_value=rho, rescale=False, gap_lower=0.01,
                    sparsity=sp + 0.001 * t) for i, (rho, sp) in enumerate(((0.3, 0.24), (0.6, 0.45)))
              for t in range(12)]
    d = report("x", points=pts, trials=trials)
    res = figures.gap_vs_prune_fraction(d.points, d.trials, tmp_path)
    (series,) = res.data["series"]
    off = float(np.median([0.001 * t for t in range(12)]))
    assert res.data["width"] == 256
    assert series["prune_fraction"] == pytest.approx([0.24 + off, 0.45 + off])
    assert series["gap_lower_median"] == pytest.approx([0.01, 0.05])
    with pytest.raises(ProbPruneError, match="width=999"):
        figures.gap_vs_prune_fraction(d.points, d.trials, tmp_path, width=999)


def test_gap_vs_prune_fraction_is_refused_when_the_levels_are_a_schedule(tmp_path: Path) -> None:
    # the default job: level c·h^-0.5 per width, so at each width one prune_fraction per rule (the measured
    # sparsity, from the trials, a hair off the level for random pruning)
    rules = [(w, m, lv) for w in (128, 512, 2048) for m, lv in (("magnitude", "relative_threshold"), ("random", "p"))]
    pts = [point(width=w, method=m, scope="layerwise", rescale=False, level_name=lv, level_value=w ** -0.5,
                 gap_lower_median=0.1 / w, gap_lower_quantile=0.12 / w) for w, m, lv in rules]
    trials = [trial(width=w, method=m, level_name=lv, level_value=w ** -0.5, gap_lower=0.1 / w,
                    sparsity=w ** -0.5 + (1e-5 if m == "random" else 0.0)) for w, m, lv in rules]
    d = report("x", points=pts, trials=trials)
    with pytest.raises(ProbPruneError, match=r"levels follow a schedule .* at h = 2048 each rule is one point "
                                             r"\(magnitude: 0\.0220971; random: 0\.0221071\)"):
        figures.gap_vs_prune_fraction(d.points, d.trials, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing drawn
    # the report leaves the figure out and says why
    made, notes = make_figures(d, tmp_path / "figs")
    assert "gap_vs_prune_fraction" not in {f.name for f in made} and "gap_vs_width" in {f.name for f in made}
    assert [n for n in notes if n.startswith("figure 'gap vs prune_fraction' left out: no pruning rule has two "
                                             "prune_fractions at one width")]
    # one rule with a single level at a width, without a schedule: refused as well (one dot says nothing)
    one = report("x", points=[ReportPoint(dataclasses.replace(p.grid, width=64), p.summary) for p in pts[:2]])
    with pytest.raises(ProbPruneError, match="each rule has a single level"):
        figures.gap_vs_prune_fraction(one.points, [], tmp_path)


def _labels_overlap(fig: Any, ax: Any) -> bool:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = sorted((lab.get_window_extent(r) for lab in ax.get_xticklabels(which="both")
                    if lab.get_visible() and lab.get_text()), key=lambda b: b.x0)
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


@pytest.mark.parametrize(("lo", "hi"), [(0.0021, 0.0035), (0.0021, 0.09), (0.3, 0.55), (4e-5, 0.9), (0.04, 1.7)])
def test_log_axis_tick_labels_never_overlap(lo: float, hi: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def panel() -> tuple[Any, Any]:
        fig = Figure(figsize=(3.6, 2.9), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot([lo, hi], [0, 1])
        ax.tick_params(labelsize=7)
        return fig, ax

    fig, ax = panel()
    ticks = figures._set_log_x(ax, lo, hi)
    ax.set_xlim(lo, hi)
    assert not _labels_overlap(fig, ax)
    assert 2 <= len(ticks) <= 4 and all(lo <= t <= hi for t in ticks)
    if (lo, hi) == (0.0021, 0.0035):  # under a decade matplotlib labels the minor ticks (2×10⁻³, 3×10⁻³ …)
        fig0, ax0 = panel()
        ax0.set_xscale("log")
        ax0.set_xlim(lo, hi)
        assert _labels_overlap(fig0, ax0)  # what the report drew before


def test_gap_distribution_panels_use_readable_log_ticks(tmp_path: Path) -> None:
    trials = [trial(width=2048, method="magnitude", gap_lower=0.00072 + 0.00001 * t, eps=0.024)
              for t in range(20)]
    res = figures.gap_distribution(report("x", trials=trials).trials, [], 0.05, tmp_path)
    (panel,) = res.data["panels"]
    assert panel["log_x"] and 2 <= len(panel["xticks"]) <= 4
    assert min(panel["xticks"]) >= 0.00072 / 1.15 and max(panel["xticks"]) <= 0.024 * 1.15


def test_accuracy_vs_sparsity_mean_and_sd_over_seeds(tmp_path: Path) -> None:
    rows = experiment_rows()
    res = figures.accuracy_vs_sparsity(rows, tmp_path)
    check_files(res)
    panels = {(p["dataset"], p["model"]): p for p in res.data["panels"]}
    assert set(panels) == {("mnist", "lenet300"), ("mnist", "lenet5")}
    lines = panels[("mnist", "lenet5")]["lines"]
    assert len(lines) == 8  # 2 methods x 2 scopes x fine-tune or not
    line = next(ln for ln in lines if ln["method"] == "random" and ln["scope"] == "global" and ln["finetuned"])
    assert line["prune_fraction"] == [0.0, 0.5, 0.9]
    for pf, mean, sd, n in zip(line["prune_fraction"], line["mean"], line["std"], line["n_seeds"]):
        accs = [100 * (0.98 - 0.3 * pf ** 2 + 0.001 * s + 0.01) for s in range(3)]
        assert n == 3
        assert mean == pytest.approx(sum(accs) / 3)
        assert sd == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accs) / 2))


def test_experiment_gaps_plot_the_seed_means_of_the_sandwich(tmp_path: Path) -> None:
    # distinct numbers per setting and seed; prune_fraction 0 has f = F, gap 0
    rows = [dataclasses.replace(r, gap_upper=100 * r.prune_fraction + r.seed,
                                gap_lower=2 * r.prune_fraction + 0.1 * r.seed,
                                mean_test_gap=0.5 * r.prune_fraction if r.prune_fraction else 0.0)
            for r in experiment_rows()]
    res = figures.experiment_gaps(rows, tmp_path)
    check_files(res)
    panels = {(p["model"], p["scope"]): p for p in res.data["panels"]}
    assert set(panels) == {(m, sc) for m in ("lenet300", "lenet5") for sc in ("global", "layerwise")}
    lines = {(ln["method"], ln["finetuned"], ln["quantity"]): ln for ln in panels[("lenet5", "global")]["lines"]}
    assert len(lines) == 2 * 2 * 3
    up = lines[("random", True, "gap_upper")]
    assert up["prune_fraction"] == [0.0, 0.5, 0.9]  # 0 + seed 1, 2 > 0: on the log axis
    assert up["value"] == pytest.approx([1.0, 51.0, 91.0])  # mean over seeds 0, 1, 2
    low = lines[("magnitude", False, "gap_lower")]
    assert low["prune_fraction"] == [0.0, 0.5, 0.9] and low["value"] == pytest.approx([0.1, 1.1, 1.9])
    mean = lines[("magnitude", False, "mean_test_gap")]
    assert mean["prune_fraction"] == [0.5, 0.9] and mean["value"] == pytest.approx([0.25, 0.45])  # zero left out
    with pytest.raises(ProbPruneError, match="no results"):
        figures.experiment_gaps([dataclasses.replace(rows[0], gap_upper=None, gap_lower=0.0, mean_test_gap=None)],
                                tmp_path / "none")


def test_experiment_gaps_axis_spans_every_level_and_names_the_ones_off_the_log_axis(tmp_path: Path) -> None:
    # two levels, 0 (f = F: every gap 0) and 0.8: the axis must not shrink to 0.76..0.84 around the one point
    rows = [dataclasses.replace(r, gap_upper=(240.0 if r.prune_fraction else 0.0),
                                gap_lower=(1.6 if r.prune_fraction else 0.0),
                                mean_test_gap=(0.4 if r.prune_fraction else 0.0))
            for r in experiment_rows() if r.prune_fraction in (0.0, 0.9)]
    res = figures.experiment_gaps(rows, tmp_path)
    for panel in res.data["panels"]:
        lo, hi = panel["xlim"]
        assert lo < 0.0 and hi > 0.9 and hi - lo < 1.2
        assert panel["off_axis"] == [0.0]
        assert {x for ln in panel["lines"] for x in ln["prune_fraction"]} == {0.9}


def test_empty_inputs_raise(tmp_path: Path) -> None:
    for call in (lambda: figures.gap_vs_width([], [], 0.1, tmp_path),
                 lambda: figures.coverage([], 0.1, tmp_path),
                 lambda: figures.gap_distribution([], [], 0.1, tmp_path),
                 lambda: figures.gap_vs_prune_fraction([], [], tmp_path),
                 lambda: figures.accuracy_vs_sparsity([], tmp_path),
                 lambda: figures.experiment_gaps([], tmp_path)):
        with pytest.raises(ProbPruneError, match="no results"):
            call()
    assert not list(tmp_path.iterdir())


def test_the_report_reads_the_records_fields_by_their_names(tmp_path: Path) -> None:
    # one spelling: a point is a grid row beside its summary; there is no table of other spellings to guess from
    import probprune.report.data as rd

    p = point(width=64, method="random", level_name="p", level_value=0.1, gap_lower_median=0.5, passed=False,
              coverage_low=0.7, coverage_high=0.9)
    assert (p.grid.width, p.grid.level_name, p.grid.level_value, p.summary.gap_lower_median) == (64, "p", 0.1, 0.5)
    assert (p.summary.passed, p.summary.coverage_low, p.summary.coverage_high) == (False, 0.7, 0.9)
    assert not hasattr(rd, "_ALIASES") and not hasattr(rd, "normalise_point")
    with pytest.raises(TypeError, match="gap_median"):
        point(h=64, gap_median=0.5)
