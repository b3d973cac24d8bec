"""The report of a ``probprune certify`` run folder: ``report.html`` (self-contained) and ``summary.md``.

Reads only what :func:`probprune.store.certify.read_certify` returns and recomputes nothing but counts and
shares of the stored verdicts. The page shows the store's numbers (inputs stored of expected, or levels
measured), the terms, the summary the run stored, and the figures:

* certified gap vs found gap per input (log–log, with the diagonal: every point lies on or above it);
* certified agreement vs radius (the run's ball and the scaled balls it measured);
* for ``--solve max-prune``: the measured curve prune fraction → certified agreement, empirical agreement,
  accuracy, with the target.

Like the other reports it embeds its figures as ``data:`` URIs under a Content-Security-Policy that forbids
every fetch, names no absolute path, and shows no wall-clock field of the store.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probprune.config import ProbPruneError
from probprune.records import CertifyLevelRow, CertifyRadiusRow, CertifyRow
from probprune.report.figures import FigureResult, _new_figure, _save, _xy
from probprune.report.html import _CSP, _CSS, _data_uri, environment, generated_time
from probprune.store import atomic_write_text
from probprune.store.certify import CertifyRun, read_certify

__all__ = ["agreement_vs_radius", "build_certify_report", "gap_scatter", "max_prune_curve", "render_certify"]

FIGURES_DIR = "figures"


def gap_scatter(rows: Sequence[CertifyRow], out_dir: str | Path) -> FigureResult:
    """Certified gap (upper) against found gap (lower) per input, log–log, with the diagonal.

    Raises:
        ProbPruneError: no input with a positive found gap (nothing to place on log axes).
    """
    pos = [r for r in rows if r.lower > 0 and r.upper > 0 and math.isfinite(r.upper)]
    if not pos:
        raise ProbPruneError("no input with a positive found gap (identical networks, or nothing stored)")
    fig, (ax,) = _new_figure(1, panel=(5.6, 4.6))
    for verdict, color in (("certified", "#2ca02c"), ("not certified", "#b8860b"), ("refuted", "#d62728")):
        sel = [r for r in pos if r.verdict == verdict]
        if sel:
            ax.plot([r.lower for r in sel], [r.upper for r in sel], "o", ms=4, color=color, alpha=0.8,
                    label=f"agreement {verdict} ({len(sel)})")
    lo = min(min(r.lower for r in pos), min(r.upper for r in pos))
    hi = max(max(r.lower for r in pos), max(r.upper for r in pos))
    ax.plot([lo, hi], [lo, hi], "--", color="#555", lw=1, label="certified = found")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("found gap ‖f(x)−F(x)‖₂ at a witness in the ball (lower)")
    ax.set_ylabel("certified gap (upper)")
    ax.legend(fontsize=8)
    left = len(rows) - len(pos)
    title = "Certified vs found gap per input" + (f" ({left} with found gap 0 not shown)" if left else "")
    ax.set_title(title, fontsize=10)
    png, svg = _save(fig, out_dir, "certified_vs_found")
    pts = [_xy(line) for line in ax.get_lines()[:-1]]
    return FigureResult("certified_vs_found", title, png, svg,
                        {"x": [v for p in pts for v in p[0]], "y": [v for p in pts for v in p[1]]})


def _curve(rows: Sequence[CertifyRow], radii: Sequence[CertifyRadiusRow], radius: float | None
           ) -> list[tuple[float, float | None, float]]:
    """(scale, radius, certified share) per measured scale; scale 1 from the inputs' own verdicts."""
    by: dict[float, list[bool]] = {}
    rad: dict[float, float | None] = {1.0: radius}
    if rows:
        by[1.0] = [r.certified_agree for r in rows]
    for q in radii:
        by.setdefault(q.scale, []).append(q.certified_agree)
        rad[q.scale] = q.radius
    return [(s, rad.get(s), sum(v) / len(v)) for s, v in sorted(by.items())]


def agreement_vs_radius(rows: Sequence[CertifyRow], radii: Sequence[CertifyRadiusRow], radius: float | None,
                        out_dir: str | Path) -> FigureResult:
    """Certified agreement rate against the ball's radius (or the scale of per-input boxes).

    Raises:
        ProbPruneError: fewer than two measured balls.
    """
    pts = _curve(rows, radii, radius)
    if len(pts) < 2:
        raise ProbPruneError("fewer than two ball sizes measured")
    boxes = radius is None
    xs = [s if boxes else float(r if r is not None else s * (radius or 1.0)) for s, r, _ in pts]
    fig, (ax,) = _new_figure(1, panel=(5.6, 4.2))
    ax.plot(xs, [100 * v for _, _, v in pts], "o-", color="#1f77b4", label="certified agreement")
    if rows:
        emp = 100 * sum(r.empirical_agree for r in rows) / len(rows)
        x1 = 1.0 if boxes else float(radius or 1.0)
        ax.plot([x1], [emp], "s", color="#d62728", label="empirical agreement (run's ball)")
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("scale of the per-input boxes" if boxes else "radius r of the ball")
    ax.set_ylabel("share of inputs (%)")
    ax.legend(fontsize=8)
    title = "Certified agreement vs " + ("box scale" if boxes else "radius")
    ax.set_title(title, fontsize=10)
    png, svg = _save(fig, out_dir, "agreement_vs_radius")
    x, y = _xy(ax.get_lines()[0])
    return FigureResult("agreement_vs_radius", title, png, svg, {"x": x, "y": y})


def max_prune_curve(levels: Sequence[CertifyLevelRow], target: float | None, out_dir: str | Path) -> FigureResult:
    """``--solve max-prune``: prune fraction → certified agreement, empirical agreement, accuracy.

    Raises:
        ProbPruneError: no level measured.
    """
    if not levels:
        raise ProbPruneError("no prune level measured")
    fig, (ax,) = _new_figure(1, panel=(5.6, 4.2))
    fr = [lv.prune_fraction for lv in levels]
    ax.plot(fr, [100 * lv.certified_agreement for lv in levels], "o-", color="#1f77b4", label="certified agreement")
    ax.plot(fr, [100 * lv.empirical_agreement for lv in levels], "s--", color="#d62728", label="empirical agreement")
    acc = [(lv.prune_fraction, lv.accuracy_pruned) for lv in levels if lv.accuracy_pruned is not None]
    if acc:
        ax.plot([a for a, _ in acc], [100 * float(b) for _, b in acc], "^:", color="#2ca02c",
                label="accuracy of f")
    if target is not None:
        ax.axhline(100 * target, color="#555", lw=1, ls="-.", label=f"target {100 * target:.3g} %")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("prune fraction (share of weights removed)")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    title = "How much may I prune, with a certificate? (measured levels)"
    ax.set_title(title, fontsize=10)
    png, svg = _save(fig, out_dir, "max_prune_curve")
    x, y = _xy(ax.get_lines()[0])
    return FigureResult("max_prune_curve", title, png, svg, {"x": x, "y": y})


def _figures(run: CertifyRun, out: Path) -> tuple[list[FigureResult], list[str]]:
    radius = run.config["config"].get("radius")
    solve = run.config.get("solve") or {}
    todo = [("certified vs found gap", lambda: gap_scatter(run.rows, out)),
            ("certified agreement vs radius", lambda: agreement_vs_radius(run.rows, run.radii, radius, out))] \
        if not solve else [("max-prune curve", lambda: max_prune_curve(run.levels, solve.get("agreement"), out))]
    made, notes = [], []
    for what, make in todo:
        try:
            made.append(make())
        except ProbPruneError as e:
            notes.append(f"figure '{what}' left out: {e}")
    return made, notes


def _status(run: CertifyRun) -> tuple[str, str]:
    """(status, the status line): the store's own numbers."""
    if run.config.get("solve"):
        state = "complete" if run.finished else "partial"
        return state, f"{state}: {len(run.levels)} prune levels measured"
    state = "complete" if len(run.rows) >= run.n_expected and run.n_expected > 0 else "partial"
    return state, f"{state}: {len(run.rows)} of {run.n_expected} inputs stored"


_TERMS = ("<b>gap</b> = sup ‖f(x) − F(x)‖₂ over the input's ball ∩ the clip box (F: --weights, f: --pruned). "
          "<b>upper</b> (certified gap): the smaller of two certified upper bounds, the differential bound "
          "(joint bounds on F's pre-activations and on their difference, back-substituted to the input) and the "
          "layerwise bound over an ℓ2 ball around 0 containing the local ball; every rounding is covered. "
          "<b>lower</b> (found gap): ‖f(x) − F(x)‖₂ at an input found inside the ball (a gradient search). "
          "<b>certified agreement</b>: F and f provably have F's top-1 class at the input as their unique "
          "top-1 class everywhere in the ball. <b>empirical agreement</b>: no input of the ball where their "
          "top-1 classes differ was found. <b>refuted</b>: such an input was found.")


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    def f(v: Any) -> str:
        return "–" if v is None else ("inf" if isinstance(v, float) and math.isinf(v) else f"{float(v):.4g}")

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * float(v):.1f} %"

    if "max_prune_fraction" in summary:
        best = summary["max_prune_fraction"]
        return [("largest prune fraction with certified agreement ≥ target", "none" if best is None else f(best)),
                ("target certified agreement", pct(summary.get("agreement_target"))),
                ("method, scope", f"{summary.get('method')}, {summary.get('scope')}"),
                ("inputs", str(summary.get("n"))), ("accuracy target F", pct(summary.get("accuracy_target")))]
    return [("inputs", str(summary.get("n"))),
            ("certified agreement", pct(summary.get("certified_agreement"))),
            ("empirical agreement", pct(summary.get("empirical_agreement"))),
            ("refuted (disagreement found)", str(summary.get("refuted"))),
            ("accuracy target F / pruned f", f"{pct(summary.get('accuracy_target'))} / "
                                             f"{pct(summary.get('accuracy_pruned'))}"),
            ("certified gap median / max", f"{f(summary.get('median_upper'))} / {f(summary.get('max_upper'))}"),
            ("found gap median / max", f"{f(summary.get('median_lower'))} / {f(summary.get('max_lower'))}"),
            ("certified / found median / max", f"{f(summary.get('median_ratio'))} / {f(summary.get('max_ratio'))}"),
            ("differential bound smaller", f"{summary.get('differential_wins')} of {summary.get('n')}")]


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<div class="wide"><table><tr>{th}</tr>{trs}</table></div>'


def _stored_summary(run: CertifyRun) -> dict[str, Any]:
    try:
        doc = json.loads(run.meta.get("summary", "{}"))
    except ValueError:
        raise ProbPruneError(f"run {run.run_dir.name!r}: its stored summary is not JSON") from None
    return {k: v for k, v in doc.items() if k not in ("seconds", "n_new")} if isinstance(doc, dict) else {}


def render_certify(run: CertifyRun, figs: Sequence[FigureResult], notes: Sequence[str], generated: str) -> str:
    """The page (a string) of a certify run."""
    state, line = _status(run)
    cfg = run.config["config"]
    ball = (f"per-input ℓ∞ boxes from {Path(str(cfg['halfwidth'])).name}" if cfg.get("halfwidth")
            else f"{cfg.get('norm', 'linf')} ball of radius {cfg.get('radius')}")
    clip = f" ∩ box {cfg['clip']}" if cfg.get("clip") else ""
    summary = _stored_summary(run)
    parts = [f'<h1>probprune certify: {html.escape(run.run_dir.name)}</h1>',
             f'<p id="status" class="{"ok" if state == "complete" else "warn"}">{html.escape(line)}</p>',
             f"<p>{html.escape(ball + clip)}; data {html.escape(Path(str(cfg.get('data'))).name)}, "
             f"{html.escape(str(cfg.get('n_points', 100)))} inputs</p>",
             f'<p id="terms">{_TERMS}</p>', "<h2>Summary</h2>"]
    parts.append(_table(("quantity", "value"), _summary_rows(summary)) if summary else
                 '<p class="warn">no summary stored yet (the run did not finish)</p>')
    curve = _curve(run.rows, run.radii, cfg.get("radius"))
    if len(curve) > 1:
        parts += ["<h2>Certified agreement vs radius</h2>",
                  _table(("scale", "radius", "certified agreement"),
                         [(f"{s:g}", "box" if r is None else f"{r:g}", f"{100 * v:.1f} %") for s, r, v in curve])]
    if run.levels:
        parts += ["<h2>Measured prune levels</h2>", _table(
            ("prune fraction", "certified agreement", "empirical agreement", "accuracy f", "refuted", "meets target"),
            [(f"{lv.prune_fraction:.4g}", f"{100 * lv.certified_agreement:.1f} %",
              f"{100 * lv.empirical_agreement:.1f} %",
              "–" if lv.accuracy_pruned is None else f"{100 * lv.accuracy_pruned:.1f} %", str(lv.refuted),
              "yes" if lv.meets_target else "no") for lv in run.levels])]
    parts.append("<h2>Figures</h2>")
    for fig in figs:
        parts.append(f'<figure><img src="{_data_uri(fig)}" alt="{html.escape(fig.title)}">'
                     f"<figcaption>{html.escape(fig.title)}</figcaption></figure>")
    parts += [f'<p class="muted">{html.escape(n)}</p>' for n in notes]
    env = environment()
    parts += ["<h2>Config</h2>", f"<pre>{html.escape(json.dumps(run.config, indent=2, sort_keys=True))}</pre>",
              "<h2>Environment</h2>", "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                     for k, v in env.items()) + "</dl>",
              f'<p class="muted" id="generated">generated: {generated}</p>']
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>probprune certify {html.escape(run.run_dir.name)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _markdown(run: CertifyRun, figs: Sequence[FigureResult]) -> str:
    _, line = _status(run)
    rows = _summary_rows(_stored_summary(run))
    out = [f"# probprune certify: {run.run_dir.name}", "", line, "", "| quantity | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += ["", *[f"![{f.title}]({FIGURES_DIR}/{f.png.name})" for f in figs], ""]
    return "\n".join(out)


def build_certify_report(run_dir: str | Path) -> Path:
    """Read a certify run folder and write ``figures/``, ``report.html`` and ``summary.md`` into it.

    Raises:
        ProbPruneError: not a certify run, or nothing stored yet.
    """
    run = read_certify(run_dir)
    if not run.rows and not run.levels:
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: no results to report (no inputs or levels stored yet)")
    generated = generated_time()
    out = Path(run_dir)
    figs, notes = _figures(run, out / FIGURES_DIR)
    atomic_write_text(out / "summary.md", _markdown(run, figs))
    path = out / "report.html"
    atomic_write_text(path, render_certify(run, figs, notes, generated))
    return path
