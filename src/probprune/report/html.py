"""``report.html`` (one self-contained file) and ``summary.md`` of a run.

The page embeds every figure as a ``data:`` URI, carries its CSS inline and a
Content-Security-Policy that forbids every fetch (``default-src 'none'; img-src data:``), so it
opens from disk and never touches the network. It shows the run's status (a visible warning when
the run is partial), the config, the pass/fail table, the fitted slopes, the figures and the
library versions and machine.

Same run, same bytes: building the report of one run twice (in two processes, from two folders)
gives the same ``report.html`` and ``summary.md`` except for ONE field, the page's build time,
written as the line ``<p class="muted" id="generated">generated: YYYY-MM-DDTHH:MM:SSZ</p>``
(:data:`GENERATED_LINE` matches it). With ``SOURCE_DATE_EPOCH`` set (the reproducible-builds
convention, seconds since 1970 UTC) that field is that time, and the page is byte-identical. The
page names no absolute path (the run folder by its name, figures by ``figures/<file>``) and shows
none of the store's wall-clock fields (:data:`probprune.store.reports.TIMING_FIELDS`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from probprune.config import ProbPruneError
from probprune.report.figures import FigureResult
from probprune.store.reports import TIMING_FIELDS, ReportData

__all__ = ["GENERATED_LINE", "environment", "generated_time", "render_html", "render_summary"]

#: The one line of ``report.html`` that differs between two builds of the same run (its build time).
GENERATED_LINE = re.compile(r'^<p class="muted" id="generated">generated: '
                            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z</p>$", re.MULTILINE)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1500px;
padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.muted{color:#666}.warn{background:#fff3cd;border:2px solid #e0a800;padding:.8rem 1rem;border-radius:6px;
font-weight:600}.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#444}pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def generated_time() -> str:
    """The report's build time, ``YYYY-MM-DDTHH:MM:SSZ`` (UTC): now, or ``SOURCE_DATE_EPOCH`` when set.

    Raises:
        ProbPruneError: ``SOURCE_DATE_EPOCH`` is set but not a whole number of seconds in range.

    >>> GENERATED_LINE.fullmatch(f'<p class="muted" id="generated">generated: {generated_time()}</p>') is not None
    True
    """
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        when = datetime.now(timezone.utc)
    else:
        try:
            when = datetime.fromtimestamp(int(raw), timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise ProbPruneError(f"SOURCE_DATE_EPOCH={raw!r}: must be a whole number of seconds since "
                                 "1970-01-01 UTC, e.g. 1700000000") from None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def environment() -> dict[str, str]:
    """Library versions and the machine the report was built on (no time: see :func:`generated_time`)."""
    return {
        "probprune": _v("probprune"),
        "torch": _v("torch"),
        "numpy": _v("numpy"),
        "matplotlib": _v("matplotlib"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": f"{platform.machine()}, {_cpu_model()}, {os.cpu_count()} logical CPUs",
    }


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _level(p: Mapping[str, Any]) -> str:
    if p.get("level_name") is None:
        return "–"
    return f"{p['level_name']}={_f(p.get('level_value'))}"


def _verdict(p: Mapping[str, Any]) -> tuple[str, str]:
    if p.get("passed") is True:
        return "PASS", "ok"
    if p.get("passed") is False:
        return "FAIL", "bad"
    return "–", "muted"


_POINT_HEAD = ("#", "width h", "rule", "level", "trials", "gap median", "gap (1−δ)-quantile", "rel. gap median",
               "certified upper median", "ε(δ)", "coverage P(gap ≤ ε)", "Clopper–Pearson interval", "verdict",
               "tightness ε/quantile")


def _point_cells(i: int, p: Mapping[str, Any]) -> list[str]:
    cp = "–" if p.get("cp_low") is None else f"[{_f(p['cp_low'])}, {_f(p['cp_high'])}]"
    return [str(i), _f(p.get("width")), str(p.get("label")), _level(p), _f(p.get("n_trials")),
            _f(p.get("gap_lower_median")), _f(p.get("gap_lower_quantile")), _f(p.get("rel_gap_lower_median")),
            _f(p.get("gap_upper_median")), _f(p.get("eps")), _f(p.get("coverage")), cp, _verdict(p)[0],
            _f(p.get("tightness"))]


def _counts(points: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    n_pass = sum(1 for p in points if p.get("passed") is True)
    n_fail = sum(1 for p in points if p.get("passed") is False)
    return n_pass, n_fail, len(points) - n_pass - n_fail


def _status_line(data: ReportData) -> str:
    exp = "?" if data.n_expected is None else str(data.n_expected)
    return f"{data.status}: {data.n_done} of {exp} trials stored"


def _partial_text(data: ReportData) -> str:
    return (f"Partial run: only {data.n_done} of {data.n_expected if data.n_expected is not None else '?'} "
            f"trials are stored. Every number and figure below covers the stored trials only. "
            f"Resume with: probprune verify --resume DIR, where DIR is the run folder {_folder(data)}")


def _folder(data: ReportData) -> str:
    """The run folder by its name (never an absolute path: the page must not depend on where the run lies)."""
    return data.run_dir.name or str(data.config_hash or "?")


def _data_uri(fig: FigureResult) -> str:
    return "data:image/png;base64," + base64.b64encode(fig.png.read_bytes()).decode("ascii")


def _experiment_rows(figs: Sequence[FigureResult]) -> list[list[str]]:
    rows = []
    for fig in figs:
        if fig.name != "accuracy_vs_sparsity":
            continue
        for panel in fig.data["panels"]:
            for ln in panel["lines"]:
                for x, m, s, n in zip(ln["prune_fraction"], ln["mean"], ln["std"], ln["n_seeds"]):
                    rows.append([panel["dataset"], panel["model"], ln["method"], ln["scope"],
                                 "yes" if ln["finetuned"] else "no", f"{x:g}", f"{m:.2f}", f"{s:.2f}", str(n)])
    return rows


def render_html(data: ReportData, figs: Sequence[FigureResult], env: Mapping[str, str],
                notes: Sequence[str] = (), generated: str | None = None) -> str:
    """The whole self-contained page (figures inlined as ``data:`` URIs).

    Args:
        data: the run's results as read from the store.
        figs: figures written for it (their PNGs are embedded).
        env: :func:`environment` (versions, machine).
        notes: extra lines shown under the figures (e.g. a figure that had nothing to plot).
        generated: the build time shown on the ``generated:`` line (default :func:`generated_time`); the
            only part of the page that is not a function of the run's stored results and the software.
    """
    e = html.escape
    title = f"probprune report — run {data.config_hash or data.run_dir.name}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f'<p class="muted">Folder {e(_folder(data))} · status <b id="status">{e(_status_line(data))}</b></p>',
           f'<p class="muted" id="generated">generated: {e(generated or generated_time())}</p>']
    if data.status == "partial":
        out.append(f'<p class="warn" id="partial-warning">⚠ {e(_partial_text(data))}</p>')
    out.append('<p class="muted">Terms: gap = sup over ‖x‖₂ ≤ r of ‖f(x) − F(x)‖₂ (f pruned, F target, output '
               "units); prune_fraction = share of weights removed; sparsity = the share removed as measured; "
               "ε(δ) = probabilistic bound holding with probability ≥ 1 − δ; coverage = share of trials with "
               "gap ≤ ε(δ), with its Clopper–Pearson interval; a grid point fails when that interval lies "
               "below 1 − δ.</p>")
    if data.points:
        n_pass, n_fail, n_none = _counts(data.points)
        out.append("<h2>Pass / fail per grid point</h2>")
        delta = "–" if data.delta is None else f"{data.delta:g}"
        out.append(f'<p>δ = {e(delta)}: <span class="ok">{n_pass} pass</span>, <span class="bad">{n_fail} fail'
                   f"</span>, {n_none} without a verdict.</p>")
        out.append('<table id="points"><thead><tr>' + "".join(
            f'<th class="{"l" if h in ("rule", "level") else ""}">{e(h)}</th>' for h in _POINT_HEAD)
            + "</tr></thead><tbody>")
        for i, p in enumerate(data.points):
            cells = _point_cells(i, p)
            cls = _verdict(p)[1]
            out.append("<tr>" + "".join(
                f'<td class="{"l" if j in (2, 3) else ""}{" " + cls if j == 12 else ""}">{e(c)}</td>'
                for j, c in enumerate(cells)) + "</tr>")
        out.append("</tbody></table>")
    if data.slopes:
        out.append("<h2>Fitted slopes of the median gap vs width (log-log)</h2>")
        out.append('<table id="slopes"><thead><tr><th class="l">rule</th><th>fitted slope d log gap / d log h</th>'
                   "<th>theory slope −λ</th></tr></thead><tbody>")
        for s in data.slopes:
            th = s.get("theory_exponent")
            out.append(f'<tr><td class="l">{e(str(s["label"]))}</td><td>{e(_f(s.get("slope")))}</td>'
                       f"<td>{e('–' if th is None else _f(-th))}</td></tr>")
        out.append("</tbody></table>")
    exp_rows = _experiment_rows(figs)
    if exp_rows:
        out.append("<h2>Real data: test accuracy (%) per setting, mean and sd over seeds</h2>")
        head = ("dataset", "model", "method", "scope", "fine-tuned", "prune_fraction", "accuracy mean", "sd", "seeds")
        out.append('<table id="experiment"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
                   + "</tr></thead><tbody>")
        for r in exp_rows:
            out.append("<tr>" + "".join(f'<td class="{"l" if j < 5 else ""}">{e(c)}</td>' for j, c in enumerate(r))
                       + "</tr>")
        out.append("</tbody></table>")
    out.append("<h2>Figures</h2>")
    for fig in figs:
        out.append(f'<figure id="fig-{e(fig.name)}"><img src="{_data_uri(fig)}" alt="{e(fig.title)}">'
                   f"<figcaption>{e(fig.title)} (files: {e(fig.png.name)}, {e(fig.svg.name)} in "
                   f"{e(fig.png.parent.name)}/)</figcaption></figure>")
    for n in notes:
        out.append(f'<p class="muted">{e(n)}</p>')
    out.append("<h2>Config</h2>")
    cfg_text = json.dumps(data.config, indent=2, sort_keys=True, default=str)
    out.append(f'<pre id="config">{html.escape(cfg_text, quote=False)}</pre>')
    out.append("<h2>Versions and machine</h2><dl>")
    recorded = {f"run {k}": ", ".join(v) for k, v in data.versions.items()}
    # wall-clock fields of the store (created, finished) differ between two runs of one config: not shown
    recorded.update({f"run meta {k}": v for k, v in sorted(data.meta.items()) if k not in TIMING_FIELDS["meta"]})
    for k, v in {**{f"report {k}": v for k, v in env.items()}, **recorded}.items():
        out.append(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>")
    out.append("</dl></body></html>")
    return "\n".join(out) + "\n"


def render_summary(data: ReportData, figs: Sequence[FigureResult], env: Mapping[str, str]) -> str:
    """``summary.md``: status, pass/fail table, slopes and figure files, for pasting into papers or issues."""
    lines = [f"# probprune run {data.config_hash or data.run_dir.name}", "",
             f"- status: **{_status_line(data)}**"]
    if data.status == "partial":
        lines.append(f"- **warning**: {_partial_text(data)}")
    if data.delta is not None:
        lines.append(f"- δ = {data.delta:g}")
    lines.append(f"- probprune {env.get('probprune', '?')}, torch {env.get('torch', '?')}; "
                 f"machine: {env.get('machine', '?')}")
    if data.points:
        n_pass, n_fail, n_none = _counts(data.points)
        lines += ["", f"## Pass / fail ({n_pass} pass, {n_fail} fail, {n_none} without a verdict)", "",
                  "| " + " | ".join(_POINT_HEAD) + " |", "|" + "---|" * len(_POINT_HEAD)]
        for i, p in enumerate(data.points):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _point_cells(i, p)) + " |")
    if data.slopes:
        lines += ["", "## Fitted slopes (median gap vs width, log-log)", "",
                  "| rule | fitted slope | theory slope −λ |", "|---|---|---|"]
        for s in data.slopes:
            th = s.get("theory_exponent")
            lines.append(f"| {s['label']} | {_f(s.get('slope'))} | {'–' if th is None else _f(-th)} |")
    exp_rows = _experiment_rows(figs)
    if exp_rows:
        lines += ["", "## Real data: test accuracy (%)", "",
                  "| dataset | model | method | scope | fine-tuned | prune_fraction | mean | sd | seeds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in exp_rows]
    if figs:
        lines += ["", "## Figures", ""]
        lines += [f"- {f.title}: `{f.png.name}`, `{f.svg.name}`" for f in figs]
    return "\n".join(lines) + "\n"
