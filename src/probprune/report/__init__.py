"""Reports: figures, a self-contained HTML page per run, certificates (reads only what ``store`` returns).

``build_report(run_dir)`` reads a run folder (Monte Carlo results and/or real-data results),
writes ``figures/*.png|svg``, ``report.html`` (one self-contained file) and ``summary.md`` into
it and returns the path of ``report.html``.

Two builds of one run give byte-identical files, except the ``generated:`` line of ``report.html``
(:data:`probprune.report.html.GENERATED_LINE`; fixed too when ``SOURCE_DATE_EPOCH`` is set).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from probprune.config import ProbPruneError
from probprune.report import figures
from probprune.report.data import ReportData, load_report_data
from probprune.report.figures import FigureResult
from probprune.report.html import environment, generated_time, render_html, render_summary
from probprune.store import atomic_write_text

__all__ = ["FigureResult", "ReportData", "build_report", "load_report_data", "make_figures", "write_report"]

FIGURES_DIR = "figures"


def make_figures(data: ReportData, out_dir: str | Path) -> tuple[list[FigureResult], list[str]]:
    """Every figure the results allow; returns (figures, notes on figures left out and why)."""
    out = Path(out_dir)
    todo: list[tuple[str, Callable[[], FigureResult]]] = []
    points = [p for p in data.points if p.n_trials != 0]
    if points:
        todo.append(("gap vs width", lambda: figures.gap_vs_width(points, data.slopes, data.delta, out)))
        if any(p.summary is not None and p.summary.rel_gap_lower_median is not None for p in points):
            todo.append(("relative gap vs width", lambda: figures.relative_gap_vs_width(points, data.slopes, out)))
        todo.append(("coverage", lambda: figures.coverage(points, data.delta, out)))
    if data.trials:
        todo.append(("gap distribution", lambda: figures.gap_distribution(data.trials, points, data.delta, out)))
    if points:
        todo.append(("gap vs prune_fraction",
                     lambda: figures.gap_vs_prune_fraction(points, data.trials, out, delta=data.delta)))
    if data.experiment:
        todo.append(("accuracy vs prune_fraction", lambda: figures.accuracy_vs_sparsity(data.experiment, out)))
        todo.append(("real-data gap vs prune_fraction", lambda: figures.experiment_gaps(data.experiment, out)))
    made, notes = [], []
    for what, make in todo:
        try:
            made.append(make())
        except ProbPruneError as e:  # nothing of that kind stored yet (e.g. a partial run): say so
            notes.append(f"figure '{what}' left out: {e}")
    return made, notes


def write_report(data: ReportData, out_dir: str | Path | None = None) -> Path:
    """Write figures, ``report.html`` and ``summary.md`` for ``data`` into ``out_dir`` (default: the run folder).

    Raises:
        ProbPruneError: ``data`` holds no results (nothing is written).
    """
    if data.empty:
        raise ProbPruneError(f"run_dir={str(data.run_dir)!r}: no results to report (no trials or experiment rows "
                             "stored yet)")
    out = Path(out_dir) if out_dir is not None else data.run_dir
    generated = generated_time()  # the page's one timestamp; read (and checked) before anything is written
    figs, notes = make_figures(data, out / FIGURES_DIR)
    env = environment()
    atomic_write_text(out / "summary.md", render_summary(data, figs, env))
    path = out / "report.html"
    atomic_write_text(path, render_html(data, figs, env, notes, generated=generated))
    return path


def build_report(run_dir: str | Path) -> Path:
    """Read ``run_dir`` through the store and write its report; returns the path of ``report.html``.

    A partial run is reported with a visible warning; a folder with no results raises.

    A ``probprune certify`` run folder gets its own page (:func:`probprune.report.certify.build_certify_report`).

    Raises:
        ProbPruneError: ``run_dir`` is not a folder, or holds no results.
    """
    from probprune.store.certify import is_certify_dir

    if is_certify_dir(run_dir):
        from probprune.report.certify import build_certify_report

        return build_certify_report(run_dir)
    return write_report(load_report_data(run_dir))
