"""``report.html`` (one self-contained file) and ``summary.md`` of a run.

The page embeds every figure as a ``data:`` URI, carries its CSS inline and a
Content-Security-Policy that forbids every fetch (``default-src 'none'; img-src data:``), so it
opens from disk and never touches the network. Each run type gets its own page: a Monte Carlo run
(``probprune verify``) shows its trial count, the terms it uses, the verdict of each grid point
(confirmed / consistent / refuted, and whether its trial count could ever confirm) and the fitted
slopes; a real-data experiment shows its setting count, its own terms and one row per setting with
accuracy and the gap sandwich (lower, certified upper, mean test gap). Both show a visible warning
when the run is partial, the figures, the config, the library versions and the machine.

Same run, same bytes: building the report of one run twice (in two processes, from two folders)
gives the same ``report.html`` and ``summary.md`` except for ONE field, the page's build time,
written as the line ``<p class="muted" id="generated">generated: YYYY-MM-DDTHH:MM:SSZ</p>``
(:data:`GENERATED_LINE` matches it). With ``SOURCE_DATE_EPOCH`` set (the reproducible-builds
convention, seconds since 1970 UTC) that field is that time, and the page is byte-identical. The
page names no absolute path (the run folder by its name, figures by ``figures/<file>``) and shows
none of the store's wall-clock fields (:data:`probprune.store.runs.TIMING_FIELDS`).
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
from typing import Any

from probprune.config import ProbPruneError, package_version
from probprune.records import VERDICTS, ExperimentRow
from probprune.report.data import ReportData, ReportPoint
from probprune.report.figures import FigureResult
from probprune.store.runs import TIMING_FIELDS

__all__ = ["GENERATED_LINE", "environment", "generated_time", "render_html", "render_summary"]

#: The one line of ``report.html`` that differs between two builds of the same run (its build time).
GENERATED_LINE = re.compile(r'^<p class="muted" id="generated">generated: '
                            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z</p>$", re.MULTILINE)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1500px;
padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.muted{color:#666}.warn{background:#fff3cd;border:2px solid #e0a800;padding:.8rem 1rem;border-radius:6px;
font-weight:600}.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}.mid{color:#8a6d00;font-weight:600}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .4rem;
text-align:right}th{background:#f3f3f3}td{white-space:nowrap}td.l,th.l{text-align:left}
.wide{overflow-x:auto;max-width:100%}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#444}pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


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
        "probprune": package_version("probprune", "not installed"),
        "torch": package_version("torch", "not installed"),
        "numpy": package_version("numpy", "not installed"),
        "matplotlib": package_version("matplotlib", "not installed"),
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


def _level(p: ReportPoint) -> str:
    return f"{p.grid.level_name}={_f(p.grid.level_value)}"


_VERDICT_CLASS = {"confirmed": "ok", "consistent": "mid", "refuted": "bad"}


def _stat(p: ReportPoint, key: str) -> Any:
    """A field of the point's summary (``None`` before its first trial)."""
    return None if p.summary is None else getattr(p.summary, key)


def _verdict(p: ReportPoint) -> tuple[str, str]:
    """(verdict word, CSS class) of a grid point: confirmed / consistent / refuted, or – without one."""
    v = _stat(p, "verdict")
    if v in _VERDICT_CLASS:
        return str(v), _VERDICT_CLASS[str(v)]
    return "–", "muted"


# the verdict sits beside the trial count (what a reader looks for first, and what decides whether it can confirm)
_POINT_HEAD = ("#", "width h", "rule", "level", "trials", "verdict", "trials to confirm", "gap median",
               "gap (1−δ)-quantile", "rel. gap median", "certified upper median", "ε(δ)", "coverage P(gap ≤ ε)",
               "Clopper–Pearson interval", "tightness ε/quantile")
_VERDICT_COL = _POINT_HEAD.index("verdict")


def _point_cells(i: int, p: ReportPoint) -> list[str]:
    lo, hi = _stat(p, "coverage_low"), _stat(p, "coverage_high")
    cp = "–" if lo is None else f"[{_f(lo)}, {_f(hi)}]"
    return [str(i), _f(p.grid.width), p.label, _level(p), _f(p.n_trials), _verdict(p)[0],
            _f(_stat(p, "n_trials_to_confirm")), _f(_stat(p, "gap_lower_median")), _f(_stat(p, "gap_lower_quantile")),
            _f(_stat(p, "rel_gap_lower_median")), _f(_stat(p, "gap_upper_median")), _f(p.grid.eps),
            _f(_stat(p, "coverage")), cp, _f(_stat(p, "tightness"))]


def _counts(points: Sequence[ReportPoint]) -> dict[str, int]:
    """Points per verdict (``none``: no ε to check, or no trial yet)."""
    out: dict[str, int] = {v: sum(1 for p in points if _stat(p, "verdict") == v) for v in VERDICTS}
    out["none"] = len(points) - sum(out.values())
    return out


def _counts_text(points: Sequence[ReportPoint]) -> str:
    c = _counts(points)
    return (f"{c['confirmed']} confirmed, {c['consistent']} consistent, {c['refuted']} refuted, "
            f"{c['none']} without a verdict")


def _confidence(data: ReportData) -> float | None:
    vals = {c for p in data.points if (c := _stat(p, "confidence")) is not None}
    return vals.pop() if len(vals) == 1 else None


def _pct(x: float) -> str:
    return f"{100 * x:g} %"


def _can_only_refute(data: ReportData) -> str | None:
    """A plain sentence when some grid points ran too few trials to ever be confirmed (else ``None``)."""
    short = [p for p in data.points if p.n_trials and _stat(p, "n_trials_to_confirm") is not None
             and p.grid.eps is not None and p.n_trials < _stat(p, "n_trials_to_confirm")]
    if not short:
        return None
    need = max(int(_stat(p, "n_trials_to_confirm")) for p in short)
    ran = sorted({p.n_trials for p in short})
    ran_text = " or ".join(str(n) for n in ran)
    delta = data.delta if data.delta is not None else _stat(short[0], "delta")
    conf = _confidence(data)
    target = "1 − δ" if delta is None else f"1 − δ = {1 - delta:g}"
    at = "" if conf is None else f" at {_pct(conf)} confidence"
    every = "Every grid point" if len(short) == len(data.points) else f"{len(short)} of {len(data.points)} grid points"
    return (f"{every} ran {ran_text} trials: such a point can only be refuted, never confirmed. Confirming "
            f"P(gap ≤ ε) ≥ {target}{at} needs at least {need} trials with no violation (with n of n trials "
            f"covered, the Clopper–Pearson lower end is (α/2)^(1/n), α = 1 − confidence, and it exceeds "
            f"1 − δ only from n = {need} on). So “consistent” here means the run did not refute the bound, "
            f"not that it confirmed it; run again with --set mc.n_trials={need} (or more) to be able to "
            "confirm.")


_TERMS_VERIFY = ("Terms: gap = sup over ‖x‖₂ ≤ r of ‖f(x) − F(x)‖₂ (f pruned, F target, output units), "
                 "estimated from below by projected ascent (gap median, quantile) and bounded from above by a "
                 "proof (certified upper); prune_fraction = share of weights removed; sparsity = the share "
                 "removed as measured; ε(δ) = the probabilistic bound, claimed to hold with probability "
                 "≥ 1 − δ; coverage = share of trials with gap ≤ ε(δ), with its Clopper–Pearson interval. "
                 "Verdict of a grid point: confirmed = the whole interval lies above 1 − δ (the trials show "
                 "the claim holds); consistent = the interval contains 1 − δ (the trials neither confirm nor "
                 "refute it); refuted = the whole interval lies below 1 − δ (the trials show it fails). "
                 "Trials to confirm = the fewest failure-free trials that can confirm at this δ and "
                 "confidence.")

_TERMS_EXPERIMENT = ("Terms: F = the dense network trained on the data set, f = F pruned (prune_fraction = "
                     "share of weights removed; sparsity = the share removed as measured); fine-tuned = f "
                     "retrained with its mask fixed. Accuracy = top-1 accuracy of f on the test set (%). The "
                     "gap columns concern sup over ‖x‖₂ ≤ r of ‖f(x) − F(x)‖₂ (logits), r = the largest ‖x‖₂ "
                     "of a test image: gap lower = an input found in the ball where the gap is that large "
                     "(an empirical lower bound); certified upper = a proven upper bound of the sup; mean test "
                     "gap = the mean of ‖f(x) − F(x)‖₂ over the test images. Each row is the mean over "
                     "seeds (accuracy with its sample standard deviation). There is no ε(δ) or coverage here: "
                     "those belong to Monte Carlo runs (probprune verify).")


def _terms(data: ReportData) -> str:
    return _TERMS_EXPERIMENT if data.kind == "experiment" else _TERMS_VERIFY


def _status_line(data: ReportData) -> str:
    if data.n_expected is None:
        return f"{data.status}: {data.n_done} {data.unit} stored"
    return f"{data.status}: {data.n_done} of {data.n_expected} {data.unit} stored"


def _partial_text(data: ReportData) -> str:
    exp = data.n_expected if data.n_expected is not None else "?"
    again = ("run the same probprune experiment command again (stored settings are skipped)"
             if data.kind == "experiment" else
             f"probprune verify --resume DIR, where DIR is the run folder {_folder(data)}")
    return (f"Partial run: only {data.n_done} of {exp} {data.unit} are stored. Every number and figure below "
            f"covers the stored {data.unit} only. Resume with: {again}")


def _folder(data: ReportData) -> str:
    """The run folder by its name (never an absolute path: the page must not depend on where the run lies)."""
    return data.run_dir.name or str(data.config_hash or "?")


def _data_uri(fig: FigureResult) -> str:
    return "data:image/png;base64," + base64.b64encode(fig.png.read_bytes()).decode("ascii")


_EXPERIMENT_HEAD = ("dataset", "model", "method", "scope", "fine-tuned", "prune_fraction", "sparsity", "seeds",
                    "accuracy mean (%)", "accuracy sd", "gap lower", "certified upper", "mean test gap",
                    "radius r")


def _mean(vals: Sequence[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return sum(xs) / len(xs) if xs else None


def _experiment_rows(data: ReportData) -> list[list[str]]:
    """One row per setting (means over seeds), in the store's key order."""
    groups: dict[tuple[Any, ...], list[ExperimentRow]] = {}
    for r in data.experiment:
        k = (r.dataset, r.model, r.method, r.scope, r.finetuned, r.prune_fraction)
        groups.setdefault(k, []).append(r)
    rows = []
    for k in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], k[4], -1.0 if k[5] is None else k[5])):
        rs = groups[k]
        accs = [100.0 * r.test_accuracy for r in rs]
        m = _mean(accs)
        sd = (sum((a - m) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if m is not None and len(accs) > 1 else None
        rows.append([str(k[0]), str(k[1]), str(k[2]), str(k[3]), "yes" if k[4] else "no", _f(k[5]),
                     _f(_mean([r.sparsity for r in rs])), str(len(rs)),
                     "–" if m is None else f"{m:.2f}", "–" if sd is None else f"{sd:.2f}",
                     _f(_mean([r.gap_lower for r in rs])), _f(_mean([r.gap_upper for r in rs])),
                     _f(_mean([r.mean_test_gap for r in rs])), _f(_mean([r.radius for r in rs]))])
    return rows


def _points_html(data: ReportData) -> list[str]:
    """The verdict counts, the can-only-refute warning and the table of grid points."""
    e = html.escape
    out: list[str] = []
    c = _counts(data.points)
    out.append("<h2>Verdict per grid point</h2>")
    delta = "–" if data.delta is None else f"{data.delta:g}"
    conf = _confidence(data)
    at = "" if conf is None else f", {_pct(conf)} confidence"
    out.append(f'<p id="verdicts">δ = {e(delta)}{e(at)}: <span class="ok">{c["confirmed"]} confirmed</span>, '
               f'<span class="mid">{c["consistent"]} consistent</span>, <span class="bad">{c["refuted"]} '
               f"refuted</span>, {c['none']} without a verdict.</p>")
    only = _can_only_refute(data)
    if only is not None:
        out.append(f'<p class="warn" id="can-only-refute">{e(only)}</p>')
    out.append('<div class="wide"><table id="points"><thead><tr>' + "".join(
        f'<th class="{"l" if h in ("rule", "level") else ""}">{e(h)}</th>' for h in _POINT_HEAD)
        + "</tr></thead><tbody>")
    for i, p in enumerate(data.points):
        cells = _point_cells(i, p)
        cls = _verdict(p)[1]
        out.append("<tr>" + "".join(
            f'<td class="{"l" if j in (2, 3) else ""}{" " + cls if j == _VERDICT_COL else ""}">{e(c)}</td>'
            for j, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return out


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
    what = "experiment on real data" if data.kind == "experiment" else "Monte Carlo verify run"
    title = f"probprune report — {what} {data.config_hash or data.run_dir.name}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f'<p class="muted">Folder {e(_folder(data))} · status <b id="status">{e(_status_line(data))}</b></p>',
           f'<p class="muted" id="generated">generated: {e(generated or generated_time())}</p>']
    if data.status == "partial":
        out.append(f'<p class="warn" id="partial-warning">⚠ {e(_partial_text(data))}</p>')
    out.append(f'<p class="muted" id="terms">{e(_terms(data))}</p>')
    if data.points:
        out += _points_html(data)
    if data.slopes:
        out.append("<h2>Fitted slopes of the median gap vs width (log-log)</h2>")
        out.append('<table id="slopes"><thead><tr><th class="l">rule</th><th>fitted slope d log gap / d log h</th>'
                   "<th>theory slope −λ</th></tr></thead><tbody>")
        for s in data.slopes:
            th = s.slope.theory_exponent
            out.append(f'<tr><td class="l">{e(s.label)}</td><td>{e(_f(s.slope.slope))}</td>'
                       f"<td>{e('–' if th is None else _f(-th))}</td></tr>")
        out.append("</tbody></table>")
    exp_rows = _experiment_rows(data)
    if exp_rows:
        out.append("<h2>Real data: accuracy and gap per setting (means over seeds)</h2>")
        out.append('<div class="wide"><table id="experiment"><thead><tr>' + "".join(
            f'<th class="{"l" if j < 5 else ""}">{e(h)}</th>' for j, h in enumerate(_EXPERIMENT_HEAD))
            + "</tr></thead><tbody>")
        for r in exp_rows:
            out.append("<tr>" + "".join(f'<td class="{"l" if j < 5 else ""}">{e(c)}</td>' for j, c in enumerate(r))
                       + "</tr>")
        out.append("</tbody></table></div>")
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
    """``summary.md``: status, terms, the verdict or experiment table, slopes and figure files (for papers, issues)."""
    what = "experiment on real data" if data.kind == "experiment" else "Monte Carlo verify run"
    lines = [f"# probprune {what} {data.config_hash or data.run_dir.name}", "",
             f"- status: **{_status_line(data)}**"]
    if data.status == "partial":
        lines.append(f"- **warning**: {_partial_text(data)}")
    if data.delta is not None and data.kind == "verify":
        conf = _confidence(data)
        lines.append(f"- δ = {data.delta:g}" + ("" if conf is None else f", confidence {_pct(conf)}"))
    lines.append(f"- probprune {env.get('probprune', '?')}, torch {env.get('torch', '?')}; "
                 f"machine: {env.get('machine', '?')}")
    lines += ["", _terms(data)]
    if data.points:
        lines += ["", f"## Verdict per grid point ({_counts_text(data.points)})", ""]
        only = _can_only_refute(data)
        if only is not None:
            lines += [f"**{only}**", ""]
        lines += ["| " + " | ".join(_POINT_HEAD) + " |", "|" + "---|" * len(_POINT_HEAD)]
        for i, p in enumerate(data.points):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _point_cells(i, p)) + " |")
    if data.slopes:
        lines += ["", "## Fitted slopes (median gap vs width, log-log)", "",
                  "| rule | fitted slope | theory slope −λ |", "|---|---|---|"]
        for s in data.slopes:
            th = s.slope.theory_exponent
            lines.append(f"| {s.label} | {_f(s.slope.slope)} | {'–' if th is None else _f(-th)} |")
    exp_rows = _experiment_rows(data)
    if exp_rows:
        lines += ["", "## Real data: accuracy and gap per setting (means over seeds)", "",
                  "| " + " | ".join(_EXPERIMENT_HEAD) + " |", "|" + "---|" * len(_EXPERIMENT_HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in exp_rows]
    if figs:
        lines += ["", "## Figures", ""]
        lines += [f"- {f.title}: `{f.png.name}`, `{f.svg.name}`" for f in figs]
    return "\n".join(lines) + "\n"
