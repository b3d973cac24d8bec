"""``probprune experiment mnist|fashion-mnist``: LeNets on real data, pruned, fine-tuned, with gap bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from probprune.cli.app import (
    TERMS,
    ProgressLog,
    VerboseOpt,
    app,
    console,
    emit_json,
    err_console,
    print_header,
    progress_bar,
)
from probprune.cli.flags import EXPERIMENT_FLAGS, ConfigOpt, SetOpt
from probprune.config import EXPERIMENT_EPOCHS, EXPERIMENT_PRUNE_FRACTIONS, ExperimentSpec, ProbPruneError, resolve

#: More torch threads than this is a typo, not a setting.
_MAX_THREADS = 1024


def _write_report(run_dir: Path) -> Path:
    """Write the run's HTML report (``report.html`` in the run folder) at the end of the run; returns its path.

    Imported here, not at start-up: the report needs matplotlib, which ``--help`` should not load.
    """
    from probprune.report import build_report

    return Path(build_report(run_dir))


def markdown_tables(summary: list[dict[str, Any]]) -> str:
    """The summary as one Markdown table per model (the format of docs/experiments.md).

    Accuracy cells are ``mean ± sample std`` over the seeds (just the mean for one seed); gap
    cells are means over the seeds, in logit units.
    """
    def acc(s: dict[str, Any] | None) -> str:
        if s is None:
            return "–"
        m = f"{100 * s['test_accuracy']:.2f}"
        return m if s["n_seeds"] < 2 else f"{m} ± {100 * s['test_accuracy_std']:.2f}"

    def gap(s: dict[str, Any] | None) -> tuple[str, str]:
        if s is None:
            return "–", "–"
        return f"{s['gap_lower']:.3g} / {s['gap_upper']:.3g}", f"{s['mean_test_gap']:.3g}"

    cells = {(s["model"], s["method"], s["scope"], s["prune_fraction"], s["finetuned"]): s for s in summary}
    out: list[str] = []
    for model in dict.fromkeys(s["model"] for s in summary):
        n_seeds = max(s["n_seeds"] for s in summary if s["model"] == model)
        out += [f"#### {model} ({n_seeds} seed{'s' if n_seeds > 1 else ''})", "",
                "| method | scope | prune_fraction | kept weights | accuracy % (no FT) | accuracy % (FT) | "
                "gap lower / upper (no FT) | mean test gap (no FT) | gap lower / upper (FT) | mean test gap (FT) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        keys = sorted({k[1:4] for k in cells if k[0] == model}, key=lambda k: (k[0] != "magnitude", k[1] != "layerwise",
                                                                             k[2]))
        for method, scope, frac in keys:
            no, ft = cells.get((model, method, scope, frac, False)), cells.get((model, method, scope, frac, True))
            kept = (no or ft)["n_kept"]  # type: ignore[index]
            out.append(f"| {method} | {scope} | {frac:g} | {kept:.0f} | {acc(no)} | {acc(ft)} | "
                       f"{gap(no)[0]} | {gap(no)[1]} | {gap(ft)[0]} | {gap(ft)[1]} |")
        out.append("")
    return "\n".join(out)


@app.command("experiment", help=(
    "Train LeNet-300-100 and LeNet-5 on MNIST or Fashion-MNIST (prepared with 'probprune data prepare'), prune "
    "them at random and by magnitude (layerwise and global), with and without fine-tuning (mask fixed), and "
    "record per setting the test accuracy, the certified upper bound and empirical lower bound of the gap over "
    "the ball of radius max ||x|| of the test set, and the mean gap on the test set. " + TERMS))
def experiment_cmd(
    dataset: Annotated[str, typer.Argument(help="mnist or fashion-mnist.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds (default 0,1,2; --quick: 0).")] = None,
    epochs: Annotated[Optional[float], typer.Option(
        help=f"Dense training epochs for every model (default {EXPERIMENT_EPOCHS}).")] = None,
    finetune_epochs: Annotated[Optional[float], typer.Option(
        help="Fine-tuning epochs with the mask fixed (fractions allowed; 0 = no fine-tuned rows).")] = None,
    finetune_lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of fine-tuning (Adam).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        help="Adam L2 weight decay of the dense training (default 1e-4; fine-tuning uses none).")] = None,
    models: Annotated[Optional[str], typer.Option(help="Comma-separated: lenet-300-100,lenet-5.")] = None,
    prune_fractions: Annotated[Optional[str], typer.Option(
        "--prune-fractions",
        help=f"Comma-separated shares REMOVED (default {', '.join(map(str, EXPERIMENT_PRUNE_FRACTIONS))}).")]
    = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated: random,magnitude.")] = None,
    scopes: Annotated[Optional[str], typer.Option(help="Comma-separated: layerwise,global.")] = None,
    quick: Annotated[bool, typer.Option(help="Small smoke run: 1 epoch, fractions 0,0.5,0.9, 2000 test images.")]
    = False,
    runs_dir: Annotated[str, typer.Option(help="Parent folder of the run folder <hash>/.")] = "runs",
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    executor: Annotated[str, typer.Option(help="Where the pruning settings run: local (this process) or ray (a Ray "
                                          "cluster; needs pip install 'probprune[ray]'; dense training stays "
                                          "here).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --executor ray: default starts a local Ray instance; "
                                                   "'auto' or 'ray://host:port' joins a cluster.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (rows and summary).")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the summary as Markdown tables (one per "
                                           "model, as in docs/experiments.md) instead of the terminal table.")]
    = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and run folder, then stop.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    # the workflow (torch, the data sets) is imported when the command runs, not for --help
    from probprune.runner.dataprep import require_dataset
    from probprune.runner.experiment import check_budget, summarize
    from probprune.runner.prune import check_output_dir
    from probprune.runner.ray_executor import make_executor

    if dataset not in ("mnist", "fashion-mnist"):
        raise ProbPruneError(f"dataset={dataset!r}: must be mnist or fashion-mnist")
    if quick and config is not None:
        raise ProbPruneError(f"--quick: a preset of its own; give either --quick or --config {config!r}, not both")
    spec: ExperimentSpec = resolve(
        ExperimentSpec, table=EXPERIMENT_FLAGS, config=config, sets=list(sets or []),
        base=ExperimentSpec.quick(dataset) if quick and config is None else None,
        flags=dict(dataset=dataset, seeds=seeds, epochs=epochs, finetune_epochs=finetune_epochs,
                   finetune_lr=finetune_lr, weight_decay=weight_decay, models=models,
                   prune_fractions=prune_fractions, methods=methods, scopes=scopes))
    check_budget(spec)
    if threads is not None and not 1 <= threads <= _MAX_THREADS:
        raise ProbPruneError(f"threads={threads!r}: must be in [1, {_MAX_THREADS}]")
    check_output_dir("runs_dir", runs_dir)
    ex = None if executor == "local" and address is None else make_executor(executor, address)
    run_dir = f"{runs_dir.rstrip('/')}/{spec.hash}"
    if not dry_run:
        require_dataset(spec.dataset)  # before any output: a missing dataset is one error line
    # stdout stays pure JSON / Markdown
    print_header({"hash": spec.hash, **spec.to_dict()}, run_dir, as_json or markdown, verbose)
    if dry_run:
        return
    out = _run_with_progress(spec, runs_dir, ex, threads, as_json)
    _print_summary(spec, out, summarize(out.rows), _write_report(out.run_dir), as_json, markdown)


def _run_with_progress(spec: ExperimentSpec, runs_dir: str, ex: Any, threads: int | None, as_json: bool) -> Any:
    """Run the experiment with a live bar on a terminal, plain progress lines (every few seconds, with an
    ETA) when stderr is a log, nothing under ``--json``."""
    from probprune.runner.experiment import run_experiment

    # start / join Ray before anything is written: an unreachable cluster leaves no run folder
    getattr(ex, "start", lambda: None)()
    live = not as_json and err_console.is_terminal
    logs: dict[str, ProgressLog] = {}
    with progress_bar(transient=as_json, disable=not live) as bar:
        tasks: dict[str, Any] = {}

        def progress(desc: str, done: int, total: int) -> None:
            if not live:
                if not as_json:
                    logs.setdefault(desc, ProgressLog(err_console)).update(done, total, desc)
                return
            if desc not in tasks:
                tasks[desc] = bar.add_task(desc, total=total)
            bar.update(tasks[desc], completed=done, total=total)

        try:
            return run_experiment(spec, runs_dir, progress=progress, executor=ex, threads=threads)
        finally:
            getattr(ex, "shutdown", lambda: None)()


def _print_summary(spec: ExperimentSpec, out: Any, summary: list[dict[str, Any]], report: Path, as_json: bool,
                   markdown: bool) -> None:
    """The run's summary: Markdown tables, one JSON document, or the terminal table."""
    if markdown and not as_json:
        print(markdown_tables(summary))
        err_console.print(f"run folder: {out.run_dir}  ({out.computed} settings computed in {out.seconds:.1f} s)")
        err_console.print(f"report: {report}", markup=False, soft_wrap=True)
        return
    if as_json:
        emit_json({"run_dir": str(out.run_dir), "config": spec.to_dict(), "seconds": out.seconds,
                   "computed": out.computed, "rows": out.rows, "summary": summary, "report": str(report)})
        return
    t = Table(title=f"{spec.dataset}: test accuracy and gap (mean over {len(spec.seeds)} seed(s)); "
                    "prune_fraction = share removed; gap over the ball of radius max ||x|| of the test set")
    for col in ("model", "method", "scope", "prune_fraction", "fine-tuned", "accuracy %", "kept weights",
                "gap lower", "gap upper", "mean test gap"):
        t.add_column(col, justify="left" if col in ("model", "method", "scope") else "right")
    for s in summary:
        t.add_row(s["model"], s["method"], s["scope"], f"{s['prune_fraction']:g}", "yes" if s["finetuned"] else "no",
                  f"{100 * s['test_accuracy']:.2f} ± {100 * s['test_accuracy_std']:.2f}", f"{s['n_kept']:.0f}",
                  f"{s['gap_lower']:.3g}", f"{s['gap_upper']:.3g}", f"{s['mean_test_gap']:.3g}")
    console.print(t)
    console.print(f"run folder: {out.run_dir}  ({out.computed} settings computed in {out.seconds:.1f} s)")
    console.print(f"report: {report}", markup=False, soft_wrap=True)
