"""The report's figures: one function per figure, PNG + SVG, matplotlib's Agg renderer.

Each function takes results as the store returns them (the records of :mod:`probprune.records`, as
:mod:`probprune.report.data` pairs them), never recomputes them, writes ``<out_dir>/<name>.png``
and ``.svg``, and returns a :class:`FigureResult` whose ``data`` is read back from the
drawn artists (lines, error bars), so a test can compare what was plotted with the input.

Terms (``DESIGN.md``): gap = ``sup_{‖x‖₂≤r} ‖f(x) − F(x)‖₂`` in output units; ``prune_fraction`` =
share of weights removed; width h = neurons per hidden layer; ε(δ) = the probabilistic bound
at failure probability δ.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probprune.config import ProbPruneError
from probprune.records import ExperimentRow
from probprune.report.data import ReportPoint, ReportSlope, ReportTrial
from probprune.store import atomic_write_bytes

__all__ = [
    "FigureResult",
    "accuracy_vs_sparsity",
    "coverage",
    "experiment_gaps",
    "gap_distribution",
    "gap_vs_prune_fraction",
    "gap_vs_width",
    "relative_gap_vs_width",
]

_COLORS = {"magnitude": "#1f77b4", "random": "#d62728", "random (rescaled)": "#2ca02c"}
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_GAP_UNIT = "gap sup‖f(x)−F(x)‖₂ over ‖x‖₂≤r (output units)"
#: coverage markers by verdict (``records.VERDICTS``)
_VERDICT_COLORS = {"confirmed": "#2ca02c", "consistent": "#b8860b", "refuted": "#d62728"}


@dataclass(frozen=True)
class FigureResult:
    """One written figure.

    Attributes:
        name: file stem (``gap_vs_width`` …).
        title: caption shown in the report.
        png, svg: the written files.
        data: the plotted numbers, read back from the figure's artists.
    """

    name: str
    title: str
    png: Path
    svg: Path
    data: dict[str, Any] = field(default_factory=dict)


def _color(label: str, i: int) -> str:
    base = label.split(",")[0]
    return _COLORS.get(base, _FALLBACK[i % len(_FALLBACK)])


def _new_figure(n_panels: int, *, ncols: int | None = None, panel: tuple[float, float] = (5.2, 3.8),
                sharey: bool = False) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(n_panels, ncols or n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    png, svg = d / f"{name}.png", d / f"{name}.svg"
    # same figure, same bytes: no date or software version in the files, SVG ids from a fixed salt;
    # each file is rendered in memory and renamed into place (never left half-written)
    with matplotlib.rc_context({"svg.hashsalt": "probprune", "svg.fonttype": "none", "svg.id": None}):
        for path, fmt, meta in ((png, "png", {"Software": None}),
                                (svg, "svg", {"Date": None, "Creator": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=100, metadata=meta)
            atomic_write_bytes(path, buf.getvalue())
    return png, svg


def _xy(line: Any) -> tuple[list[float], list[float]]:
    return ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])


P = TypeVar("P", ReportPoint, ReportTrial)


def _group(rows: Iterable[P]) -> dict[str, list[P]]:
    """Rows by their rule's legend label."""
    out: dict[str, list[P]] = defaultdict(list)
    for r in rows:
        out[r.label].append(r)
    return dict(out)


def _stat(p: ReportPoint, key: str) -> Any:
    """A field of the point's summary (``None`` before its first trial)."""
    return None if p.summary is None else getattr(p.summary, key)


def _fmt_delta(delta: float | None) -> str:
    return "δ unknown" if delta is None else f"δ = {delta:g}"


def _log_ticks(lo: float, hi: float, max_ticks: int = 4) -> list[float]:
    """At most ``max_ticks`` readable ticks for a log axis over ``[lo, hi]`` (lo > 0).

    Powers of ten when at least two fall in range (every k-th of them when there are many), else the
    1-2-5 values, else the 1…9 values in range (thinned to ``max_ticks``), else the two ends rounded
    inward to two significant digits; matplotlib's own choice labels every minor tick on a span under
    a decade, and those labels overlap in a small panel.

    >>> _log_ticks(0.0021, 0.09)
    [0.005, 0.01, 0.02, 0.05]
    >>> _log_ticks(1e-4, 10.0)
    [0.0001, 0.01, 1.0]
    >>> _log_ticks(0.0021, 0.0035), _log_ticks(0.00211, 0.00219)
    ([0.0021, 0.0035], [0.00211, 0.00219])
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        return []
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = [10.0 ** k for k in range(k0, k1 + 1) if lo <= 10.0 ** k <= hi]
    if len(decades) >= 2:
        step = math.ceil(len(decades) / max_ticks)
        return [float(f"{d:.1e}") for d in decades[::step]]
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        cands = [float(f"{m * 10.0 ** k:.1e}") for k in range(k0, k1 + 1) for m in mantissas]
        inside = [c for c in cands if lo <= c <= hi]
        if len(inside) > max_ticks:
            step = math.ceil(len(inside) / max_ticks)
            inside = inside[::step]
        if len(inside) >= 2:
            return inside
    for digits in (2, 3, 4):  # the two ends, rounded inward to as few digits as keeps them apart
        q = 10.0 ** (math.floor(math.log10(lo)) - digits + 1)
        a, b = float(f"{math.ceil(lo / q) * q:.{digits}g}"), float(f"{math.floor(hi / q) * q:.{digits}g}")
        if lo <= a < b <= hi:
            return [a, b]
    return [float(f"{lo:.3g}")] if lo <= float(f"{lo:.3g}") <= hi else []


def _set_log_x(ax: Axes, lo: float, hi: float) -> list[float]:
    """Log x axis over [lo, hi] with :func:`_log_ticks` labels (plain numbers, no minor labels)."""
    ax.set_xscale("log")
    ticks = _log_ticks(lo, hi)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if ticks:
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}" for t in ticks]))
    return ticks


def _need(rows: Sequence[Any], what: str) -> None:
    if not rows:
        raise ProbPruneError(f"{what}: no results to plot")


# --------------------------------------------------------------------------- gap vs width


def gap_vs_width(points: Sequence[ReportPoint], slopes: Sequence[ReportSlope], delta: float | None,
                 out_dir: str | Path, *, name: str = "gap_vs_width") -> FigureResult:
    """Gap vs hidden width h, log-log, one panel per pruning rule.

    Per width: the empirical sup-gap (lower bound; median line, band up to the (1−δ)-quantile),
    the certified upper bound (median), the probabilistic bound ε(δ); the fitted log-log slope
    of the median gap is annotated beside the theory's exponent.

    Args:
        points: grid-point summaries (``width``, ``label``, ``gap_lower_median``,
            ``gap_lower_quantile``, ``gap_upper_median``, ``eps``).
        slopes: fitted slopes (``label``, ``slope`` = d log gap / d log h, ``theory_exponent`` = λ of the
            theory's gap ∝ h^{−λ}).
        delta: failure probability δ of ε(δ) and of the quantile.
        out_dir: folder for ``<name>.png`` / ``.svg``.

    Returns:
        ``data["series"]``: per rule, ``width`` and each plotted quantity, plus ``slope`` and
        ``theory_exponent`` as annotated.
    """
    rows = [p for p in points if p.summary is not None]
    _need(rows, "gap_vs_width")
    groups = _group(rows)
    slope_by = {s.label: s.slope for s in slopes}
    fig, axes = _new_figure(len(groups), ncols=3, sharey=True)
    q = "(1−δ)" if delta is None else f"{1 - delta:g}"
    series = []
    for i, (ax, (label, grp)) in enumerate(zip(axes, sorted(groups.items()))):
        grp = sorted(grp, key=lambda r: r.grid.width)
        w = np.array([float(r.grid.width) for r in grp])
        color = _color(label, i)
        rec: dict[str, Any] = {"label": label}

        def col(key: str, g: list[ReportPoint] = grp) -> np.ndarray:
            return np.array([np.nan if _stat(r, key) is None else float(_stat(r, key)) for r in g])

        med, qu, up = col("gap_lower_median"), col("gap_lower_quantile"), col("gap_upper_median")
        eps = np.array([np.nan if r.grid.eps is None else r.grid.eps for r in grp])
        (lm,) = ax.plot(w, med, "o-", color=color, label="empirical sup-gap (lower bound), median")
        rec["width"], rec["gap_lower_median"] = _xy(lm)
        if np.isfinite(qu).any():
            ax.fill_between(w, med, qu, color=color, alpha=0.2,
                            label=f"band: median … {q}-quantile of the empirical gap")
            (lq,) = ax.plot(w, qu, "-", color=color, lw=0.8, alpha=0.7)
            rec["gap_lower_quantile"] = _xy(lq)[1]
        if np.isfinite(up).any():
            (lu,) = ax.plot(w, up, "s--", color="black", ms=4, label="certified upper bound, median")
            rec["gap_upper_median"] = _xy(lu)[1]
        if np.isfinite(eps).any():
            (le,) = ax.plot(w, eps, "^:", color="#ff7f0e", ms=5, label=f"probabilistic bound ε(δ), {_fmt_delta(delta)}")
            rec["eps"] = _xy(le)[1]
        s = slope_by.get(label)
        rec["slope"] = None if s is None else s.slope
        rec["theory_exponent"] = None if s is None else s.theory_exponent
        # annotated under the panel title (never over the data): fitted slope beside the theory's −λ
        text = "fitted slope " + ("n/a" if rec["slope"] is None else f"{rec['slope']:.3f}")
        text += " · theory slope −λ = " + (
            "n/a" if rec["theory_exponent"] is None else f"{-rec['theory_exponent']:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(w, [str(int(v)) for v in w])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"{label}\n{text}", fontsize=10)
        ax.set_xlabel("hidden width h (neurons per hidden layer)")
        if i % 3 == 0:
            ax.set_ylabel(_GAP_UNIT, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        series.append(rec)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend([h for h, l in zip(handles, labels) if not l.startswith("_")],
               [l for l in labels if not l.startswith("_")], loc="outside lower center",
               ncols=min(2, len(handles)), fontsize=8)
    fig.suptitle("Gap vs width (log-log); colours: pruning rule, black: certified bound, orange: ε(δ)")
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, "Gap vs width (log-log): empirical sup-gap, certified upper bound, ε(δ)", png, svg,
                        {"series": series, "delta": delta})


def relative_gap_vs_width(points: Sequence[ReportPoint], slopes: Sequence[ReportSlope],
                          out_dir: str | Path, *, name: str = "relative_gap_vs_width") -> FigureResult:
    """Relative gap (gap / sup‖F(x)‖, dimensionless) vs hidden width h, log-log, one line per rule.

    With the paper's scale ‖F(x)‖ itself shrinks like h^{−1/2}, so the absolute gap of any pruning
    does too; the relative gap shows what pruning itself costs.

    Args:
        points: grid-point summaries with ``rel_gap_lower_median``.
        slopes: fitted slopes (``label``, ``rel_slope`` if stored).

    Returns:
        ``data["series"]``: per rule, ``width``, ``rel_gap_lower_median`` as plotted and ``rel_slope``.
    """
    rows = [p for p in points if _stat(p, "rel_gap_lower_median") is not None]
    _need(rows, "relative_gap_vs_width")
    rel_by = {s.label: s.slope.rel_slope for s in slopes}
    fig, (ax,) = _new_figure(1, panel=(6.4, 4.4))
    series = []
    widths: set[float] = set()
    for i, (label, grp) in enumerate(sorted(_group(rows).items())):
        grp = sorted(grp, key=lambda r: r.grid.width)
        w = [float(r.grid.width) for r in grp]
        widths.update(w)
        rs = rel_by.get(label)
        tag = f"{label} (fitted slope {rs:.3f})" if rs is not None else label
        (line,) = ax.plot(w, [float(_stat(r, "rel_gap_lower_median")) for r in grp], "o-", color=_color(label, i),
                          label=tag)
        xs, ys = _xy(line)
        series.append({"label": label, "width": xs, "rel_gap_lower_median": ys, "rel_slope": rs})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ws = sorted(widths)
    ax.set_xticks(ws, [str(int(v)) for v in ws])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("hidden width h (neurons per hidden layer)")
    ax.set_ylabel("relative gap: gap / sup‖F(x)‖₂ (dimensionless), median")
    ax.set_title("Relative gap vs width (log-log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, "Relative gap (gap / sup‖F(x)‖₂) vs width (log-log), median over trials", png, svg,
                        {"series": series})


# --------------------------------------------------------------------------- coverage


def coverage(points: Sequence[ReportPoint], delta: float | None, out_dir: str | Path, *,
             name: str = "coverage") -> FigureResult:
    """Empirical coverage P(gap ≤ ε(δ)) per grid point with Clopper–Pearson bars vs the 1−δ line.

    Args:
        points: grid points whose summaries give ``coverage``, ``coverage_low``, ``coverage_high``, ``passed``,
            ``verdict`` (points without ε(δ) are skipped).
        delta: failure probability δ (the line is drawn at 1 − δ).

    Returns:
        ``data``: ``labels`` (x tick labels), ``coverage``, ``cp_low``, ``cp_high`` as plotted, ``level``.
    """
    rows = [p for p in points if _stat(p, "coverage") is not None]
    _need(rows, "coverage")
    rows = sorted(rows, key=lambda r: (r.label, r.grid.width))
    fig, (ax,) = _new_figure(1, panel=(max(6.0, 0.55 * len(rows) + 2.5), 4.2))
    x = np.arange(len(rows), dtype=float)
    cov = np.array([float(_stat(r, "coverage")) for r in rows])
    lo = np.array([np.nan if _stat(r, "coverage_low") is None else float(_stat(r, "coverage_low")) for r in rows])
    hi = np.array([np.nan if _stat(r, "coverage_high") is None else float(_stat(r, "coverage_high")) for r in rows])
    colors = [_VERDICT_COLORS.get(str(_stat(r, "verdict")), "0.4") for r in rows]
    data: dict[str, Any] = {"labels": [], "coverage": [], "cp_low": [], "cp_high": [], "passed": [],
                            "verdict": [], "colors": colors, "level": None if delta is None else 1 - delta}
    for xi, c, l, h, colr in zip(x, cov, lo, hi, colors):
        err = np.array([[c - l], [h - c]]) if np.isfinite(l) and np.isfinite(h) else None
        cont = ax.errorbar([xi], [c], yerr=err, fmt="o", color=colr, capsize=4, ms=6)
        data["coverage"].append(_xy(cont.lines[0])[1][0])
        if err is not None:
            seg = cont.lines[2][0].get_segments()[0]
            data["cp_low"].append(float(seg[0][1]))
            data["cp_high"].append(float(seg[1][1]))
        else:
            data["cp_low"].append(None)
            data["cp_high"].append(None)
    data["passed"] = [_stat(r, "passed") for r in rows]
    data["verdict"] = [_stat(r, "verdict") for r in rows]
    if delta is not None:
        ax.axhline(1 - delta, color="black", ls="--", lw=1, label=f"1 − δ = {1 - delta:g}")
    for v, colr in _VERDICT_COLORS.items():  # a legend entry per verdict shown
        n = data["verdict"].count(v)
        if n:
            ax.errorbar([], [], yerr=[], fmt="o", color=colr, capsize=4, ms=6, label=f"{v} ({n})")
    labels = [f"{r.label}, h={r.grid.width}" for r in rows]
    data["labels"] = labels
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(max(0.0, min(np.nanmin(lo) if np.isfinite(lo).any() else 1.0, float(cov.min())) - 0.05), 1.01)
    ax.set_ylabel("empirical P(gap ≤ ε(δ)) (share of trials)")
    ax.set_xlabel("grid point (pruning rule, hidden width h)")
    ax.set_title("Coverage vs 1 − δ (Clopper–Pearson bars)\nconfirmed: bar above the line; consistent: bar "
                 "crosses it; refuted: bar below", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, "Coverage: empirical P(gap ≤ ε(δ)) with Clopper–Pearson intervals vs 1 − δ",
                        png, svg, data)


# --------------------------------------------------------------------------- distribution


def gap_distribution(trials: Sequence[ReportTrial], points: Sequence[ReportPoint],
                     delta: float | None, out_dir: str | Path, *, name: str = "gap_distribution",
                     max_panels: int = 24) -> FigureResult:
    """ECDF of the empirical sup-gap over the trials of each grid point, with ε(δ) marked.

    Args:
        trials: trial rows (``label``, ``width``, ``gap_lower``; ``eps`` per trial if known).
        points: grid-point summaries (their ``eps`` marks the panel when trials carry none).
        delta: failure probability δ (a line at 1 − δ on the ECDF axis).
        max_panels: at most this many grid points are drawn (the largest widths of each rule first).

    Returns:
        ``data["panels"]``: per grid point, ``label``, ``width``, ``gaps`` (sorted, as plotted), ``ecdf``
        and ``eps``.
    """
    _need(trials, "gap_distribution")
    by_point: dict[tuple[str, int], list[float]] = defaultdict(list)
    eps_by: dict[tuple[str, int], float | None] = {}
    for t in trials:
        k = (t.label, t.row.width)
        by_point[k].append(float(t.row.gap_lower))
        if t.row.eps is not None:
            eps_by[k] = float(t.row.eps)
    for p in points:
        k = (p.label, p.grid.width)
        if k not in eps_by and p.grid.eps is not None:
            eps_by[k] = float(p.grid.eps)
    keys = sorted(by_point, key=lambda k: (k[0], k[1]))
    if len(keys) > max_panels:
        keys = keys[-max_panels:]
    ncols = min(len(keys), 4)
    fig, axes = _new_figure(len(keys), ncols=ncols, panel=(3.6, 2.9))
    panels = []
    for ax, k in zip(axes, keys):
        g = np.sort(np.array(by_point[k]))
        y = np.arange(1, len(g) + 1) / len(g)
        (line,) = ax.step(g, y, where="post", color=_color(k[0], 0), label="ECDF of trials")
        gx, gy = _xy(line)
        eps = eps_by.get(k)
        if eps is not None:
            ax.axvline(eps, color="#ff7f0e", ls=":", lw=1.5, label=f"ε(δ) = {eps:.3g}")
        if delta is not None:
            ax.axhline(1 - delta, color="0.3", ls="--", lw=0.8, label=f"1 − δ = {1 - delta:g}")
        ax.set_title(f"{k[0]}, h={k[1]} (n={len(g)})", fontsize=9)
        log_x = bool(g.size and g[0] > 0)  # ε(δ) often lies decades above the gaps: a log axis shows both
        ticks: list[float] = []
        if log_x:
            span = [float(g[0]), float(g[-1])] + ([eps] if eps is not None and eps > 0 else [])
            lo_x, hi_x = min(span) / 1.15, max(span) * 1.15
            ax.set_xlim(lo_x, hi_x)
            ticks = _set_log_x(ax, lo_x, hi_x)
        ax.set_xlabel("empirical sup-gap (output units" + (", log scale)" if log_x else ")"), fontsize=8)
        ax.set_ylabel("share of trials ≤ gap", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
        panels.append({"label": k[0], "width": k[1], "gaps": gx, "ecdf": gy, "eps": eps, "log_x": log_x,
                       "xticks": ticks})
    fig.suptitle("Distribution of the empirical sup-gap per grid point (ECDF)")
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, "Gap distribution per grid point (ECDF) with ε(δ) marked", png, svg,
                        {"panels": panels, "delta": delta})


# --------------------------------------------------------------------------- gap vs prune_fraction


def _point_sparsity(p: ReportPoint, trials: Sequence[ReportTrial]) -> float | None:
    """The measured share removed at a grid point: its level when that is a prune_fraction, else the trials' median."""
    if p.grid.level_name == "prune_fraction":
        return float(p.grid.level_value)
    vals = [float(t.row.sparsity) for t in trials
            if t.row.sparsity is not None and t.label == p.label and t.row.width == p.grid.width
            and t.row.level == p.grid.level_value]
    return float(np.median(vals)) if vals else None


def _fraction_width(points: Sequence[ReportPoint], trials: Sequence[ReportTrial], width: int | None
                    ) -> tuple[int, list[ReportPoint]]:
    """The width of the gap-vs-prune_fraction figure and its grid points; refused when no rule has two levels."""
    rows = [p for p in points if _stat(p, "gap_lower_median") is not None]
    _need(rows, "gap_vs_prune_fraction")
    levels: dict[int, dict[str, set[float]]] = defaultdict(lambda: defaultdict(set))
    for p in rows:
        sp = _point_sparsity(p, trials)
        if sp is not None:
            levels[p.grid.width][p.label].add(round(sp, 12))
    distinct = {w: max((len(v) for v in by.values()), default=0) for w, by in levels.items()}
    if width is None:
        width = max(distinct, key=lambda w: (distinct[w], w)) if distinct else rows[0].grid.width
    rows = [p for p in rows if p.grid.width == width]
    if not rows:
        raise ProbPruneError(f"width={width!r}: no grid point at this width")
    if distinct.get(width, 0) < 2:
        by_rule = levels.get(width, {})
        at = "; ".join(f"{lab}: {min(v):.6g}" for lab, v in sorted(by_rule.items()) if v)
        scheduled = any(len({round(_point_sparsity(p, trials) or -1.0, 12) for p in grp}) > 1
                        for grp in _group(points).values())
        why = ("the levels follow a schedule (one level per width, falling as h grows)" if scheduled else
               "each rule has a single level")
        raise ProbPruneError(f"no pruning rule has two prune_fractions at one width: {why}, so at h = {width} each "
                             f"rule is one point ({at or 'no sparsity known'}) and a curve against prune_fraction "
                             "would say nothing; the gap vs width figure shows these points")
    return width, rows


def gap_vs_prune_fraction(points: Sequence[ReportPoint], trials: Sequence[ReportTrial],
                          out_dir: str | Path, *, width: int | None = None, delta: float | None = None,
                          name: str = "gap_vs_prune_fraction") -> FigureResult:
    """Gap vs prune_fraction (share of weights removed, measured) at one hidden width, one line per rule.

    Magnitude vs random (and rescaled random): the x value of a grid point is its sparsity (the
    configured prune_fraction when that is the rule's level, else the median over its trial rows),
    the y value its median empirical gap with a bar up to the (1−δ)-quantile.

    The figure needs a rule with at least two prune_fractions at one width. When every rule has a
    single level per width — the default job, whose levels follow a schedule c·h^−α, so at a fixed
    width the "curve" is one dot per rule a hair apart (0.022089 and 0.022099 at h = 2048) — it is
    refused with a sentence that says why (the report shows that sentence instead); gap vs width
    shows those points.

    Args:
        width: the fixed width; default the width where a rule has the most distinct prune_fractions
            (ties: the largest width).

    Returns:
        ``data``: ``width`` and per rule ``prune_fraction`` and ``gap_lower_median`` as plotted
        (``gap_lower_quantile`` too when known).

    Raises:
        ProbPruneError: no grid point with a gap, no sparsity known, or no rule with two prune_fractions
            at the width.
    """
    width, rows = _fraction_width(points, trials, width)
    fig, (ax,) = _new_figure(1, panel=(6.4, 4.4))
    series = []
    for i, (label, grp) in enumerate(sorted(_group(rows).items())):
        pts = [(s, p) for p in grp if (s := _point_sparsity(p, trials)) is not None]
        if not pts:
            continue
        pts.sort(key=lambda sp: sp[0])
        x = np.array([s for s, _ in pts])
        med = np.array([float(_stat(p, "gap_lower_median")) for _, p in pts])
        qu = np.array([np.nan if _stat(p, "gap_lower_quantile") is None else float(_stat(p, "gap_lower_quantile"))
                       for _, p in pts])
        color = _color(label, i)
        if np.isfinite(qu).all():
            qname = "(1−δ)" if delta is None else f"{1 - delta:g}"
            cont = ax.errorbar(x, med, yerr=np.vstack([np.zeros_like(med), qu - med]), fmt="o-", color=color,
                               capsize=3, label=f"{label}: median, bar to {qname}-quantile")
            line = cont.lines[0]
        else:
            (line,) = ax.plot(x, med, "o-", color=color, label=f"{label}: median")
        xs, ys = _xy(line)
        rec: dict[str, Any] = {"label": label, "prune_fraction": xs, "gap_lower_median": ys}
        if np.isfinite(qu).all():
            rec["gap_lower_quantile"] = [float(v) for v in qu]
        series.append(rec)
    _need(series, "gap_vs_prune_fraction (no sparsity known)")
    ax.set_yscale("log")
    ax.set_xlabel("prune_fraction (share of weights removed, measured)")
    ax.set_ylabel(_GAP_UNIT, fontsize=8)
    ax.set_title(f"Gap vs prune_fraction at hidden width h = {width}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, f"Gap vs prune_fraction at fixed width h = {width}: magnitude vs random", png, svg,
                        {"width": width, "series": series})


# --------------------------------------------------------------------------- accuracy vs sparsity


def accuracy_vs_sparsity(rows: Sequence[ExperimentRow], out_dir: str | Path, *,
                         name: str = "accuracy_vs_sparsity") -> FigureResult:
    """Test accuracy vs prune_fraction on real data, one panel per (dataset, model).

    One line per (method, scope, fine-tuned or not); points are the mean over seeds, bars one
    standard deviation (sample, ddof = 1; none with a single seed).

    Args:
        rows: experiment rows (``dataset``, ``model``, ``method``, ``scope``, ``prune_fraction``,
            ``finetuned``, ``seed``, ``test_accuracy`` as a share in [0, 1] or in percent).

    Returns:
        ``data["panels"]``: per (dataset, model), per line: ``prune_fraction``, ``mean``, ``std``,
        ``n_seeds`` (accuracy in percent, as plotted).
    """
    ok = list(rows)
    _need(ok, "accuracy_vs_sparsity")
    percent = max(float(r.test_accuracy) for r in ok) > 1.0
    panels_in: dict[tuple[str, str], list[ExperimentRow]] = defaultdict(list)
    for r in ok:
        panels_in[(r.dataset, r.model)].append(r)
    keys = sorted(panels_in)
    fig, axes = _new_figure(len(keys), ncols=2, panel=(6.0, 4.4))
    styles = {("layerwise", False): "-", ("layerwise", True): "--", ("global", False): "-.", ("global", True): ":"}
    panels = []
    for ax, key in zip(axes, keys):
        lines_in: dict[tuple[str, str, bool], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in panels_in[key]:
            acc = float(r.test_accuracy) * (1.0 if percent else 100.0)
            lines_in[(r.method, r.scope, bool(r.finetuned))][float(r.prune_fraction)].append(acc)
        lines = []
        for (method, scope, ft), by_pf in sorted(lines_in.items()):
            pf = sorted(by_pf)
            mean = np.array([float(np.mean(by_pf[x])) for x in pf])
            std = np.array([float(np.std(by_pf[x], ddof=1)) if len(by_pf[x]) > 1 else 0.0 for x in pf])
            label = f"{method}, {scope}, " + ("fine-tuned" if ft else "no fine-tune")
            cont = ax.errorbar(pf, mean, yerr=std, fmt="o" if scope == "layerwise" else "s", mfc=None if
                               scope == "layerwise" else "white", ls=styles.get((scope, ft), "-"), ms=5, capsize=3,
                               color=_COLORS.get(method, _FALLBACK[0]), label=label)
            xs, ys = _xy(cont.lines[0])
            lines.append({"method": method, "scope": scope, "finetuned": ft, "prune_fraction": xs, "mean": ys,
                          "std": [float(s) for s in std], "n_seeds": [len(by_pf[x]) for x in pf]})
        ax.set_title(f"{key[0]} / {key[1]}")
        ax.set_xlabel("prune_fraction (share of weights removed)")
        ax.set_ylabel("test accuracy (%), mean ± 1 sd over seeds")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")  # the least covered corner: random pruning falls into the lower left
        panels.append({"dataset": key[0], "model": key[1], "lines": lines})
    fig.suptitle("Test accuracy vs prune_fraction (random vs magnitude, layerwise vs global)")
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, "Test accuracy vs prune_fraction on real data (error bars: ±1 sd over seeds)",
                        png, svg, {"panels": panels, "percent_input": percent})


# --------------------------------------------------------------------------- real-data gap sandwich


_QUANTITIES = (("gap_upper", "certified upper", "--", "s"), ("gap_lower", "gap lower (found)", "-", "o"),
               ("mean_test_gap", "mean test gap", ":", "^"))


def _span_every_level(ax: Any, levels: Sequence[float], lines: Sequence[dict[str, Any]]
                      ) -> tuple[tuple[float, float], list[float]]:
    """The x axis of a gap panel spans every measured prune fraction, not only those with a point on the
    log axis (one level 0.8 beside 0 showed as an axis from 0.76 to 0.84), and says which levels have none."""
    lo, hi = min(levels), max(levels)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05
    ax.set_xlim(lo - pad, hi + pad)
    shown = {x for line in lines for x in line["prune_fraction"]}
    off = sorted({x for x in levels if x not in shown})
    if off:
        ax.text(0.02, 0.02, "gap 0 (f = F), off the log axis at prune_fraction " + ", ".join(f"{x:g}" for x in off),
                transform=ax.transAxes, fontsize=7, color="0.35")
    return (lo - pad, hi + pad), off


def experiment_gaps(rows: Sequence[ExperimentRow], out_dir: str | Path, *,
                    name: str = "experiment_gaps") -> FigureResult:
    """The gap sandwich on real data vs prune_fraction, one panel per (dataset, model, scope), log y.

    Per method (colour) and fine-tuned or not (open / filled markers): the certified upper bound, the gap
    lower bound found in the ball, and the mean test-set gap ‖f(x) − F(x)‖₂, each the mean over seeds.
    A setting whose mean is 0 (prune_fraction 0: f = F) cannot sit on a log axis and is left out of that
    line; missing values are left out of the mean.

    Args:
        rows: experiment rows (``dataset``, ``model``, ``method``, ``scope``, ``prune_fraction``,
            ``finetuned``, ``gap_upper``, ``gap_lower``, ``mean_test_gap``).

    Returns:
        ``data["panels"]``: per (dataset, model, scope), per line: ``method``, ``finetuned``, ``quantity``,
        ``prune_fraction`` and ``value`` as plotted; ``xlim`` (spans every measured prune fraction) and
        ``off_axis`` (the prune fractions with no point: every gap 0).
    """
    ok = list(rows)
    _need([r for r in ok if any((getattr(r, q) or 0.0) > 0 for q, *_ in _QUANTITIES)], "experiment_gaps")
    by_panel: dict[tuple[str, str, str], list[ExperimentRow]] = defaultdict(list)
    for r in ok:
        by_panel[(r.dataset, r.model, r.scope)].append(r)
    keys = sorted(by_panel)
    fig, axes = _new_figure(len(keys), ncols=2, panel=(6.0, 4.4))
    panels = []
    for ax, key in zip(axes, keys):
        lines = []
        groups: dict[tuple[str, bool], list[ExperimentRow]] = defaultdict(list)
        for r in by_panel[key]:
            groups[(r.method, bool(r.finetuned))].append(r)
        for (method, ft), grp in sorted(groups.items()):
            for q, qlabel, ls, marker in _QUANTITIES:
                by_pf: dict[float, list[float]] = defaultdict(list)
                for r in grp:
                    if getattr(r, q) is not None:
                        by_pf[float(r.prune_fraction)].append(float(getattr(r, q)))
                # the mean over every seed; a mean of 0 (f = F) has no place on a log axis
                pf = [x for x in sorted(by_pf) if float(np.mean(by_pf[x])) > 0]
                if not pf:
                    continue
                val = [float(np.mean(by_pf[x])) for x in pf]
                (line,) = ax.plot(pf, val, ls=ls, marker=marker, ms=5, color=_COLORS.get(method, _FALLBACK[0]),
                                  mfc="white" if ft else None,
                                  label=f"{method}{', fine-tuned' if ft else ''}: {qlabel}")
                xs, ys = _xy(line)
                lines.append({"method": method, "finetuned": ft, "quantity": q, "prune_fraction": xs, "value": ys})
        ax.set_yscale("log")
        xlim, off = _span_every_level(ax, [float(r.prune_fraction) for r in by_panel[key]], lines)
        ax.set_title(f"{key[0]} / {key[1]} / {key[2]}")
        ax.set_xlabel("prune_fraction (share of weights removed)")
        ax.set_ylabel("‖f(x) − F(x)‖₂ (logits), mean over seeds", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        panels.append({"dataset": key[0], "model": key[1], "scope": key[2], "lines": lines, "xlim": xlim,
                       "off_axis": off})
    # one legend for the encoding (colour = method, style = quantity, open marker = fine-tuned): 12 labelled
    # lines per panel would cover the data
    from matplotlib.lines import Line2D

    methods = sorted({r.method for r in ok})
    handles = [Line2D([], [], color=_COLORS.get(m, _FALLBACK[0]), lw=2, label=m) for m in methods]
    handles += [Line2D([], [], color="0.3", ls=ls, marker=mk, label=ql) for _, ql, ls, mk in _QUANTITIES]
    handles += [Line2D([], [], color="0.3", ls="none", marker="o", label="not fine-tuned"),
                Line2D([], [], color="0.3", ls="none", marker="o", mfc="white", label="fine-tuned")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("Gap sandwich on real data: certified upper ≥ true sup ≥ gap found ≥ mean test gap")
    png, svg = _save(fig, out_dir, name)
    return FigureResult(name, "Gap on real data vs prune_fraction: certified upper bound, gap found in the ball, "
                        "mean test-set gap (log scale)", png, svg, {"panels": panels})
