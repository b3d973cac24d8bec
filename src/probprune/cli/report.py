"""``probprune report RUN_DIR``: write ``report.html`` (self-contained) and ``summary.md`` for a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from probprune.cli.app import VerboseOpt, app, console, emit_json, err_console, print_header
from probprune.cli.verify import verdict_counts, verdict_line


@app.command("report", help="Write report.html (one self-contained file: figures embedded, no network access) and "
             "summary.md into a run folder (runs/<hash>). A partial run is reported with a visible warning "
             "(exit 0); a folder with no results is an error (exit 2). --json adds, for a verify run, the grid "
             "points per verdict: n_confirmed, n_consistent, n_refuted (n_fail = n_refuted, n_pass = the others).")
def report_cmd(
    run_dir: Annotated[str, typer.Argument(help="The run folder, e.g. runs/<config-hash>.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved input and output and stop.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    out = Path(run_dir) / "report.html"
    print_header({"run_dir": run_dir}, str(out), as_json, verbose)
    if dry_run:
        return
    from probprune.report import load_report_data, write_report
    from probprune.runner.prune import check_output_paths
    from probprune.store.certify import is_certify_dir

    if is_certify_dir(run_dir):
        _certify_report(run_dir, as_json)
        return
    data = load_report_data(run_dir)
    check_output_paths({"report": out, "summary": Path(run_dir) / "summary.md"})  # before anything is written
    path = write_report(data)
    points = [p.to_dict() for p in data.points]
    doc = {"report": str(path), "summary": str(path.parent / "summary.md"), "status": data.status,
           "n_done": data.n_done, "n_expected": data.n_expected,
           "n_pass": sum(1 for p in points if p.get("passed") is True),
           "n_fail": sum(1 for p in points if p.get("passed") is False), **verdict_counts(points)}
    if as_json:
        emit_json(doc)
        return
    if data.status == "partial":
        err_console.print(f"warning: partial run ({data.n_done} of {data.n_expected} trials); the report says so",
                          markup=False, soft_wrap=True)
    if data.points:
        console.print(verdict_line(doc), markup=False, soft_wrap=True)
    console.print(f"summary: {path.parent / 'summary.md'}", markup=False, soft_wrap=True)
    console.print(f"report: {path}", markup=False, soft_wrap=True)


def _certify_report(run_dir: str, as_json: bool) -> None:
    """The report of a ``probprune certify`` run folder."""
    from probprune.report.certify import build_certify_report
    from probprune.runner.prune import check_output_paths
    from probprune.store.certify import read_certify

    run = read_certify(run_dir)
    check_output_paths({"report": Path(run_dir) / "report.html", "summary": Path(run_dir) / "summary.md"})
    path = build_certify_report(run_dir)
    doc = {"report": str(path), "summary": str(path.parent / "summary.md"), "kind": "certify",
           "n_done": len(run.rows), "n_expected": run.n_expected, "n_levels": len(run.levels),
           "status": "complete" if run.finished else "partial"}
    if as_json:
        emit_json(doc)
        return
    if not run.finished:
        err_console.print(f"warning: partial run ({len(run.rows)} of {run.n_expected} inputs); the report says so",
                          markup=False, soft_wrap=True)
    console.print(f"summary: {doc['summary']}", markup=False, soft_wrap=True)
    console.print(f"report: {path}", markup=False, soft_wrap=True)
