"""``probprune verify`` (Monte Carlo check of the bounds) and ``probprune config show``.

No maths here: resolve a config (embedded default, ``--config`` TOML, ``--resume`` run
folder; then short flags; then ``--set``), hand it to :func:`probprune.runner.verify.run_verify`,
print what the store returns.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
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
    print_table,
)
from probprune.cli.flags import SCHEDULE_HELP, VERIFY_FLAGS, ConfigOpt, SetOpt, verify_net, verify_prunes
from probprune.config import (
    ProbPruneError,
    RunConfig,
    canonical_json,
    config_hash,
    default_config,
    resolve,
    to_dict,
)

__all__ = [
    "VERDICT_STYLE",
    "config_app",
    "confirm_sentence",
    "points_table",
    "ray_line",
    "report_after_verify",
    "resolve_config",
    "slopes_table",
    "verdict_counts",
    "verdict_line",
    "verify_cmd",
]

config_app = typer.Typer(rich_markup_mode=None, name="config", help="Show resolved configs and their hashes.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")

def resolve_config(
    config: str | None = None,
    sets: list[str] | None = None,
    *,
    resume: str | None = None,
    **flags: Any,
) -> RunConfig:
    """The run config: (resume folder | ``--config`` TOML or preset | the ``default`` preset), then the short
    flags (:data:`~probprune.cli.flags.VERIFY_FLAGS` and the architecture and pruning-rule groups), then
    ``--set`` — through the one resolver, :func:`probprune.config.resolve`."""
    if resume is not None and config is not None:
        raise ProbPruneError(f"--config {config!r}: give either --config or --resume, not both")
    base: RunConfig | None = None
    if resume is not None:
        from probprune.store.runs import open_run

        base = open_run(resume).config
    elif config is None:
        base = default_config()
    cfg: RunConfig = resolve(RunConfig, table=VERIFY_FLAGS, flags=flags, config=config, base=base,
                             sets=list(sets or []), groups=(verify_net, verify_prunes))
    return cfg


def report_after_verify(run_dir: Path) -> Path | None:
    """Build the HTML report of a run when :mod:`probprune.report` provides ``build_report`` (else ``None``)."""
    try:
        rep = importlib.import_module("probprune.report")
    except ImportError:
        return None
    build = getattr(rep, "build_report", None)
    if build is None:
        return None
    return Path(build(run_dir))


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else format(v, spec)
    return str(v)


_SYMBOL = {"relative_threshold": "ρ", "threshold": "τ", "p": "p", "prune_fraction": "q"}


#: Colour of each verdict on a terminal (plain words when not on one).
VERDICT_STYLE = {"confirmed": "green", "consistent": "yellow", "refuted": "bold red"}


def _verdict(p: dict[str, Any]) -> str | None:
    v = p.get("verdict")
    if isinstance(v, str):
        return v
    if p.get("passed") is False:  # a row written before verdicts: failed means refuted
        return "refuted"
    return None


def verdict_counts(points: list[dict[str, Any]]) -> dict[str, int]:
    """``n_confirmed``, ``n_consistent``, ``n_refuted``: grid points per verdict (points without one not counted)."""
    vs = [_verdict(p) for p in points]
    return {f"n_{v}": sum(1 for x in vs if x == v) for v in VERDICT_STYLE}


def verdict_line(counts: Mapping[str, Any]) -> str:
    """``verdicts: A confirmed, B consistent, C refuted`` from :func:`verdict_counts`."""
    return (f"verdicts: {counts['n_confirmed']} confirmed, {counts['n_consistent']} consistent, "
            f"{counts['n_refuted']} refuted")


def confirm_sentence(points: list[dict[str, Any]]) -> str | None:
    """The warning for points with too few trials to confirm the bound, or ``None`` when every point has enough.

    With n trials and no failure the Clopper–Pearson interval of P(gap ≤ ε) still contains 1 − δ for
    n below ``n_trials_to_confirm``: such a run can refute the bound, never confirm it.
    """
    short = [p for p in points if p.get("n_trials_to_confirm") is not None and p.get("eps") is not None
             and p.get("n_trials") is not None and p["n_trials"] < p["n_trials_to_confirm"]]
    if not short:
        return None
    n = min(int(p["n_trials"]) for p in short)
    m = max(int(p["n_trials_to_confirm"]) for p in short)
    return (f"{n} trials per point can only refute the bound, not confirm it (with no failure the "
            f"Clopper–Pearson interval still contains 1 − δ); confirming needs ≥ {m} trials "
            f"(--set mc.n_trials={m}).")


def points_table(points: list[dict[str, Any]]) -> Table:
    """Rich table of the per-point statistics, with the verdict of each point (confirmed / consistent / refuted)."""
    t = Table(title="verify: sup-gap (empirical lower, certified upper) vs ε(δ); coverage = P(gap ≤ ε)")
    t.add_column("verdict", no_wrap=True, min_width=7)
    for c in ("h", "rule", "R", "gap med", "q(1-δ)", "upper med", "ε(δ)", "coverage [CP]", "ε/q"):
        t.add_column(c, justify="left" if c == "rule" else "right")
    for p in points:
        v = _verdict(p)
        res = "-" if v is None else f"[{VERDICT_STYLE.get(v, 'default')}]{v}[/]"
        cov = "-" if p["coverage"] is None else \
            f"{p['coverage']:.2f} [{p['coverage_low']:.2f},{p['coverage_high']:.2f}]"
        rule = f"{p['method'][:3]} {_SYMBOL.get(p['level_name'], p['level_name'])}={p['level_value']:.3g}"
        if p["rescale"]:
            rule += " resc"
        t.add_row(res, str(p["width"]), rule, str(p["n_trials"]), _fmt(p["gap_lower_median"]),
                  _fmt(p["gap_lower_quantile"]), _fmt(p["gap_upper_median"]), _fmt(p["eps"]), cov,
                  _fmt(p["tightness"]))
    return t


def slopes_table(slopes: list[dict[str, Any]]) -> Table:
    """Rich table of the fitted log-log slopes beside the theory exponent."""
    t = Table(title="gap vs width: fitted decay exponent λ (gap ∝ h^-λ) vs theory")
    for c in ("method", "widths", "fitted λ", "theory λ", "relative-gap slope"):
        t.add_column(c, justify="left" if c == "method" else "right")
    for s in slopes:
        t.add_row(s["method"], str(s["n_widths"]), _fmt(s["exponent"]), _fmt(s["theory_exponent"]),
                  _fmt(s["rel_slope"]))
    return t


@app.command("verify", help="Monte Carlo check of the gap bounds: R sampled targets per grid point (hidden widths × "
             "pruning rules), empirical sup-gap and certified upper bound per trial, coverage of ε(δ) with a "
             "Clopper–Pearson interval and a verdict per point — confirmed (interval above 1 − δ), consistent "
             "(it contains 1 − δ: too few trials to confirm) or refuted (below) —, tightness, log-log slope vs "
             "width. With no options: the paper's "
             "FCN setting (about 3 minutes on 2 CPU cores). Runs are stored in RUNS_DIR/<config-hash>/ and resume "
             "where they stopped. " + TERMS)
def verify_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture, e.g. fcn:16,64,64,4 (clears the width grid).")]
    = None,
    widths: Annotated[Optional[str], typer.Option(help="Grid of hidden widths, e.g. 128,256,512.")] = None,
    law: Annotated[Optional[str], typer.Option(help="Weight law, e.g. uniform:K=2.449.")] = None,
    method: Annotated[Optional[str], typer.Option(help="magnitude or random (one pruning rule).")] = None,
    scope: Annotated[Optional[str], typer.Option(help="layerwise or global.")] = None,
    prune_fraction: Annotated[Optional[float], typer.Option(help="Share of weights REMOVED in [0, 1].")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= threshold.")] = None,
    relative_threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= rho * a_i.")]
    = None,
    p: Annotated[Optional[float], typer.Option("--p", help="Random: remove each weight with probability p.")]
    = None,
    rescale: Annotated[Optional[bool], typer.Option("--rescale/--no-rescale", help="Random: survivors x 1/(1-p).")]
    = None,
    schedule: Annotated[Optional[str], typer.Option(help=SCHEDULE_HELP)] = None,
    delta: Annotated[Optional[float], typer.Option(help="Failure probability delta of the bound.")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Check this eps instead of the theory's eps(delta).")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Trials R per grid point (>= 1).")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="Trials per batched ensemble.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Master seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32 or float64.")] = None,
    matmul: Annotated[Optional[str], typer.Option(help="fp32 (default) or tf32: TF32 tensor-core products on "
                                                  "CUDA for the gap search (faster, ~1e-3 relative rounding).")]
    = None,
    runs_dir: Annotated[str, typer.Option(help="Parent folder of run folders.")] = "runs",
    resume: Annotated[Optional[str], typer.Option(help="Continue the run in this folder (runs/<hash>).")] = None,
    executor: Annotated[str, typer.Option(help="Where trials run: local (this process) or ray (a Ray cluster; "
                                          "needs pip install 'probprune[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --executor ray: default starts a local Ray "
                                                   "instance; 'auto' or 'ray://host:port' joins a cluster.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print one JSON document instead of tables: per point its verdict, the counts n_confirmed / "
        "n_consistent / n_refuted, and all_passed = no point refuted (weaker than confirmed).")
    )] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and run folder, then stop.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    cfg = resolve_config(config, sets, resume=resume, arch=arch, widths=widths, law=law, method=method, scope=scope,
                         prune_fraction=prune_fraction, threshold=threshold, relative_threshold=relative_threshold,
                         p=p, rescale=rescale, schedule=schedule, delta=delta, eps=eps, trials=trials,
                         chunk_size=chunk_size, seed=seed, device=device, dtype=dtype, matmul=matmul)
    from probprune.runner.prune import check_device, check_output_dir, check_verify_budget
    from probprune.runner.ray_executor import make_executor
    from probprune.runner.verify import check_run

    check_device(cfg.mc.device, "mc.device")
    if resume is None:
        check_output_dir("runs_dir", runs_dir)
    check_verify_budget(cfg)  # before anything is allocated or written
    ex = make_executor(executor, address)
    out, _ = check_run(cfg, runs_dir, resume)
    print_header({"hash": config_hash(cfg), **to_dict(cfg, non_default_only=False)}, str(out), as_json, verbose)
    if dry_run:
        return
    # start / join Ray before anything is written: an unreachable cluster leaves no run folder
    getattr(ex, "start", lambda: None)()
    ex_doc = _executor_doc(ex)  # while it runs: describing a stopped Ray would start it again
    where = ray_line(ex_doc)
    if where is not None and not as_json:
        console.print(where, markup=False, soft_wrap=True)
    res = _run_with_progress(cfg, runs_dir, ex, resume, as_json)
    report = report_after_verify(res.run_dir)
    if as_json:
        emit_json({"run_dir": str(res.run_dir), "hash": res.info.hash, "status": res.info.status,
                   "n_done": res.info.n_done, "n_expected": res.info.n_expected, "n_new": res.n_new,
                   "resumed": res.resumed, "seconds": res.seconds, "points": res.points, "slopes": res.slopes,
                   **verdict_counts(res.points), "all_passed": all(_verdict(p) != "refuted" for p in res.points),
                   "executor": ex_doc,
                   "report": None if report is None else str(report),
                   # one form in every command's --json: the config as an object (canonical text beside it)
                   "config": to_dict(cfg), "canonical": canonical_json(cfg)})
        return
    _print_results(res, report)


def _print_results(res: Any, report: Path | None) -> None:
    """The tables, the verdict line and the run folder of a finished ``verify``."""
    print_table(points_table(res.points))
    if res.slopes:
        print_table(slopes_table(res.slopes))
    counts = verdict_counts(res.points)
    console.print(verdict_line(counts), markup=False, soft_wrap=True)
    if counts["n_refuted"]:
        console.print(f"[bold red]{counts['n_refuted']} grid point(s) refuted[/bold red]: the Clopper–Pearson "
                      "interval of P(gap ≤ ε) lies below 1 − δ.", soft_wrap=True)
    sentence = confirm_sentence(res.points)
    if sentence is not None:
        console.print(sentence, markup=False, soft_wrap=True)
    state = "resumed, " if res.resumed else ""
    console.print(f"run directory: {res.run_dir} ({state}{res.info.status}, {res.info.n_done}/{res.info.n_expected} "
                  f"trials, {res.n_new} new, {res.seconds:.1f} s)", markup=False, soft_wrap=True)
    if report is not None:
        console.print(f"report: {report}", markup=False, soft_wrap=True)


def _executor_doc(ex: Any) -> dict[str, Any]:
    """``{"name": "local"}``, or ``{"name": "ray", …}`` with what the Ray executor reports (after its start)."""
    describe = getattr(ex, "describe", None)
    return {"name": "local"} if describe is None else {"name": "ray", **describe()}


def ray_line(d: dict[str, Any]) -> str | None:
    """One line saying where Ray runs the work (local instance or cluster address, nodes, workers) from
    :func:`_executor_doc`; ``None`` for the local executor."""
    if d.get("name") != "ray":
        return None
    gpus = f", {d['n_gpus']:g} GPU(s)" if d["n_gpus"] else ""
    return (f"executor: {d['where']} (address {d['address']}): {d['n_nodes']} node(s), {d['n_cpus']:g} CPU(s){gpus}, "
            f"{d['n_workers']} worker(s) at once")


def _run_with_progress(cfg: RunConfig, runs_dir: str, ex: Any, resume: str | None, as_json: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from probprune.runner.verify import ProgressEvent, run_verify

    target = err_console if as_json else console
    live = not as_json and console.is_terminal
    # not on a terminal a live bar shows nothing until the end: plain lines on stderr every few seconds
    log = None if as_json or live else ProgressLog(err_console)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=target, transient=False,
                  disable=not live) as bar:  # under --json stderr stays empty
        task = bar.add_task("trials", total=None)

        def on_progress(ev: ProgressEvent) -> None:
            desc = "trials" if ev.width is None else f"h={ev.width} {ev.method}"
            bar.update(task, total=ev.total, completed=ev.done, description=desc)
            if log is not None:
                log.update(ev.done, ev.total, "trials" if ev.width is None else f"trials (now h={ev.width} "
                                                                                f"{ev.method})")

        try:
            return run_verify(cfg, runs_dir, executor=ex, progress=on_progress, resume=resume)
        finally:
            getattr(ex, "shutdown", lambda: None)()


@config_app.command("show", help="Print the resolved config (default: the verify default), its hash and run folder.")
def config_show(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    runs_dir: Annotated[str, typer.Option(help="Parent folder of run folders.")] = "runs",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    from probprune.store.runs import run_dir_for

    cfg = resolve_config(config, sets)
    doc: dict[str, Any] = {"hash": config_hash(cfg), "run_dir": str(run_dir_for(runs_dir, cfg)),
                           "canonical": canonical_json(cfg), "config": to_dict(cfg)}
    if as_json:
        emit_json(doc)
        return
    print_header({"hash": doc["hash"], **doc["config"]}, doc["run_dir"], False, verbose=True)
    console.print(f"[bold]hash[/bold]: {doc['hash']}")
    console.print("[bold]canonical[/bold]:")
    console.print(doc["canonical"], markup=False)
