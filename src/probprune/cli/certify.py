"""``probprune certify``: local certified gaps and certified agreement of a pruned network on real inputs."""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from probprune.cli.app import ProgressLog, VerboseOpt, app, console, emit_json, err_console, print_header, progress_bar
from probprune.cli.flags import CERTIFY_FLAGS, ConfigOpt, SetOpt
from probprune.config import CertifyJob, ProbPruneError, resolve

__all__ = ["certify_cmd", "curve_table", "summary_table"]


def _f(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return "inf" if math.isinf(v) else f"{v:.4g}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f} %"


def summary_table(summary: dict[str, Any], norm: str, radius: float | None) -> Table:
    """The summary as a two-column table (``radius`` ``None``: per-input boxes)."""
    ball = "per-input l-infinity boxes" if radius is None else f"{norm} ball of radius {radius:g}"
    t = Table(title=f"certify: {summary['n']} inputs, {ball}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for name, val in (
        ("certified agreement", _pct(summary["certified_agreement"])),
        ("empirical agreement", _pct(summary["empirical_agreement"])),
        ("refuted (disagreement found)", str(summary["refuted"])),
        ("accuracy target F", _pct(summary["accuracy_target"])),
        ("accuracy pruned f", _pct(summary["accuracy_pruned"])),
        ("upper (certified gap) median / max", f"{_f(summary['median_upper'])} / {_f(summary['max_upper'])}"),
        ("lower (found gap) median / max", f"{_f(summary['median_lower'])} / {_f(summary['max_lower'])}"),
        ("upper / lower median / max", f"{_f(summary['median_ratio'])} / {_f(summary['max_ratio'])}"),
        ("differential bound smaller", f"{summary['differential_wins']} / {summary['n']}"),
        ("seconds", f"{summary['seconds']:.1f}"),
    ):
        t.add_row(name, val)
    return t


@app.command("certify", help="Local certificates of a pruned network f (--pruned) against its target F (--weights) "
             "on real inputs: per input, the certified gap sup ||f(x) - F(x)|| over the ball around it (the "
             "smaller of the differential and the layerwise bound), a found gap (gradient search), and whether "
             "f and F provably give the same top-1 class everywhere in the ball (docs/certified.md).")
def certify_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    weights: Annotated[Optional[str], typer.Option(help="Target model F (.onnx, or .safetensors with --arch).")]
    = None,
    pruned: Annotated[Optional[str], typer.Option(help="Pruned model f (.onnx or .safetensors, same architecture).")]
    = None,
    data: Annotated[Optional[str], typer.Option(help="mnist, fashion-mnist (the first N test images, pixels / 255 in "
                                                     "[0, 1]) or an .npy file of inputs [N, d].")] = None,
    radius: Annotated[Optional[float], typer.Option(help="Ball radius r > 0 around each input.")] = None,
    halfwidth: Annotated[Optional[str], typer.Option(
        help="Instead of --radius: an .npy of l-infinity half-widths [N, d] (or [d] for every input; an ONNX graph "
             "model also takes [N, *input shape]): input i's "
             "ball is the box x_i +- h_i (intersected with --clip), as VNN-COMP states its properties.")] = None,
    radii: Annotated[Optional[str], typer.Option(
        help="R1,R2,...: radii of the report's 'certified agreement vs radius' curve (default: 0.25, 0.5 and 2 "
             "times --radius, or of the half-widths).")] = None,
    n_points: Annotated[Optional[int], typer.Option(help="N: how many inputs (the first N; default 100).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="Ball norm: linf (default) or l2.")] = None,
    clip: Annotated[Optional[str], typer.Option(help="LO,HI: the box the inputs live in (e.g. 0,1 for pixels), "
                                                     "intersected with each ball.")] = None,
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="Architecture of .safetensors models, e.g. fcn:784,300,100,10 (an .onnx model carries "
                       "its own; if given, it must match).")] = None,
    activation: Annotated[Optional[str], typer.Option(
        help="Hidden activation of a .safetensors architecture (default relu).")] = None,
    bias: Annotated[Optional[bool], typer.Option("--bias/--no-bias", help="A .safetensors architecture has biases.")]
    = None,
    labels: Annotated[Optional[str], typer.Option(help="Labels [N] (.npy of integers) for an .npy data file.")]
    = None,
    n_restarts: Annotated[Optional[int], typer.Option(help="Gap search: random restarts per input (default 8).")]
    = None,
    n_steps: Annotated[Optional[int], typer.Option(help="Gap search: ascent steps per restart (default 100).")]
    = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the searches (default 0).")] = None,
    split: Annotated[Optional[int], typer.Option(help="N: branch and bound, at most N leaves per ball (splits of "
                                                      "unstable neurons; default 0: none).")] = None,
    optimise: Annotated[Optional[int], typer.Option(
        help="N: Adam steps of per-row slope optimisation of the agreement margins of the inputs the plain bound "
             "leaves uncertified, and on graph models of the gap bound too (never looser; slower; default 0: "
             "none).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Write the per-input rows to this .csv or .json file.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (rows and summary).")] = False,
    run_dir: Annotated[Optional[str], typer.Option(
        help="Store the run in this folder (config.json, results.sqlite, report.html): the same command on the "
             "same folder resumes without redoing stored inputs; a folder of another config is refused.")] = None,
    runs_dir: Annotated[Optional[str], typer.Option(
        help="Store the run in RUNS_DIR/<config-hash>/ (as verify does); see --run-dir.")] = None,
    executor: Annotated[str, typer.Option(help="Where the chunks of inputs run: local (this process) or ray (a Ray "
                                                "cluster, as verify).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --executor ray: default starts a local Ray instance; "
                                                         "'auto', 'ray://HOST:PORT' or 'HOST:PORT' joins one.")] = None,
    solve: Annotated[Optional[str], typer.Option(
        help="max-prune: prune --weights at increasing levels and report the largest prune fraction whose "
             "certified agreement rate is >= --agreement (and the measured curve).")] = None,
    method: Annotated[str, typer.Option(help="--solve max-prune: magnitude or random.")] = "magnitude",
    scope: Annotated[str, typer.Option(help="--solve max-prune: global or layerwise.")] = "global",
    agreement: Annotated[float, typer.Option(help="--solve max-prune: target certified agreement rate in (0, 1].")]
    = 0.95,
    tol: Annotated[float, typer.Option(help="--solve max-prune: width of the final bisection bracket.")] = 0.01,
    verbose: VerboseOpt = False,
    certificate: Annotated[Optional[str], typer.Option(help="Write a local certificate (.json), one ball per input; "
                                                       "`probprune certificate check` re-derives it.")] = None,
) -> None:
    from probprune.runner.certify import check_job  # torch: when the command runs

    _check_required(weights, pruned, data, radius if halfwidth is None else halfwidth, config, solve)
    job: CertifyJob = resolve(CertifyJob, table=CERTIFY_FLAGS, config=config, sets=list(sets or []), flags=dict(
        weights=weights, pruned=weights if solve is not None else pruned, data=data, radius=radius,
        n_points=n_points, norm=norm, clip=clip, arch=arch, activation=activation, bias=bias, labels=labels,
        n_restarts=n_restarts, n_steps=n_steps, seed=seed, out=out, halfwidth=halfwidth, radii=radii, split=split,
        optimise=optimise))
    _check_certificate_path(certificate, solve, job)
    folder = _run_folder(run_dir, runs_dir, job, solve, method, scope, agreement, tol)
    if solve is not None:
        _max_prune(job, solve, method, scope, agreement, tol, as_json, verbose, folder)
        return
    check_job(job)
    ex = _executor(executor, address)
    resolved = job.to_dict()
    print_header(resolved, job.out if folder is None else folder, as_json, verbose, spec=job)
    res = _run_with_progress(job, folder, ex, as_json)
    _write_local_certificate(certificate, job, res)
    _print_outcome(job, res, resolved, None if res.run_dir is None else _write_report(res.run_dir), as_json)


def _run_with_progress(job: CertifyJob, folder: str | None, ex: Any, as_json: bool) -> Any:
    """``run_certify`` under a progress display (as verify: a live bar on a terminal, plain lines every few
    seconds otherwise, nothing under ``--json``); a Ray executor is shut down afterwards."""
    from probprune.runner.certify import run_certify

    live = not as_json and err_console.is_terminal
    log = None if as_json or live else ProgressLog(err_console)
    with progress_bar(transient=True, disable=not live) as bar:
        task = bar.add_task("certifying", total=job.n_points)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if log is not None:
                log.update(done, total, "inputs")

        try:
            return run_certify(job, progress=progress, run_dir=folder, executor=ex)
        finally:
            if ex is not None:
                ex.shutdown()


def _print_outcome(job: CertifyJob, res: Any, resolved: dict[str, Any], report: Any, as_json: bool) -> None:
    """The JSON document, or the table and the run folder's report."""
    if as_json:
        emit_json({"config": resolved, "inputs": res.inputs, "arch": "onnx graph" if res.spec is None
                   else res.spec.to_arch(), "rows": res.rows, "summary": res.summary,
                   "run_dir": None if res.run_dir is None else str(res.run_dir),
                   "report": None if report is None else str(report)})
        return
    console.print(f"inputs: {res.inputs}", markup=False)
    console.print(summary_table(res.summary, job.norm, job.radius))
    console.print("upper = min(differential bound, layerwise bound over the l2 ball around 0 containing the local "
                  "ball); certified agreement: F and f have the same unique top-1 class everywhere in the ball",
                  markup=False)
    if report is not None:
        console.print(f"run: {res.run_dir} ({res.summary['n_new']} inputs computed now, the others were stored)",
                      markup=False, soft_wrap=True)
        console.print(f"report: {report}", markup=False, soft_wrap=True)


def _run_folder(run_dir: str | None, runs_dir: str | None, job: CertifyJob, solve: str | None, method: str,
                scope: str, agreement: float, tol: float) -> str | None:
    """The run folder: ``--run-dir``, or ``--runs-dir``/<config-hash>, or ``None`` (nothing stored)."""
    if run_dir is not None and runs_dir is not None:
        raise ProbPruneError(f"run_dir={run_dir!r}: give --run-dir or --runs-dir, not both")
    if runs_dir is None:
        return run_dir
    from probprune.config import config_hash
    from probprune.runner.certify import MaxPruneSolve, max_prune_hash
    from probprune.runner.prune import check_output_dir

    check_output_dir("runs_dir", runs_dir)
    h = config_hash(job) if solve is None else \
        max_prune_hash(job, MaxPruneSolve(method=method, scope=scope, agreement=agreement, tol=tol))
    return f"{runs_dir.rstrip('/')}/{h}"


def _executor(name: str, address: str | None) -> Any:
    """``None`` (run here) or the Ray executor (started; the caller shuts it down)."""
    from probprune.runner.ray_executor import make_executor

    if name == "local" and address is None:
        return None
    ex = make_executor(name, address)
    return None if name == "local" else ex


def _write_report(run_dir: Any) -> Any:
    """The run's report (``report.html`` in the folder), written at the end of the run."""
    from probprune.report.certify import build_certify_report

    return build_certify_report(run_dir)


def _check_certificate_path(certificate: str | None, solve: str | None, job: CertifyJob) -> None:
    """``--certificate``: a ``.json`` path that can be written (not with ``--solve`` or ``--halfwidth``)."""
    if certificate is None:
        return
    if job.halfwidth is not None:
        raise ProbPruneError(f"certificate={certificate!r}: not taken with --halfwidth yet (the local certificate "
                             "states one radius per ball)")
    out = job.out
    if solve is not None:
        raise ProbPruneError(f"certificate={certificate!r}: not taken with --solve (certify a chosen pruned model)")
    if not certificate.endswith(".json"):
        raise ProbPruneError(f"certificate={certificate!r}: must end in .json")
    from probprune.runner.prune import check_output_paths

    check_output_paths({"out": out, "certificate": certificate})


def _write_local_certificate(certificate: str | None, job: CertifyJob, res: Any) -> None:
    """``--certificate``: the run's balls as a local certificate (:mod:`probprune.runner.certificate_local`)."""
    if certificate is None:
        return
    from probprune.report.certificate import write_certificate
    from probprune.runner.certificate_local import certify_certificate

    write_certificate(certificate, certify_certificate(job, res))


def _check_required(weights: str | None, pruned: str | None, data: str | None, radius: object,
                    config: str | None, solve: str | None) -> None:
    """The flags without a default are given (or left to ``--config``); ``--pruned`` only without ``--solve``."""
    if solve is not None and pruned is not None:
        raise ProbPruneError(f"pruned={pruned!r}: --solve max-prune prunes --weights itself; give no --pruned")
    required: list[tuple[str, object]] = [("weights", weights), ("data", data), ("radius", radius)]
    if solve is None:
        required.append(("pruned", pruned))
    for name, v in required:
        if v is None and config is None:
            raise ProbPruneError(f"{name}: missing; give --{name} (or set it in --config)"
                                 + (", or --solve max-prune" if name == "pruned" else "")
                                 + (", or --halfwidth" if name == "radius" else ""))


def curve_table(outcome: Any) -> Table:
    """The max-prune curve (prune fraction → certified / empirical agreement, accuracy) as a table."""
    s = outcome.summary
    t = Table(title=f"certify --solve max-prune: {s['method']} {s['scope']}, {s['n']} inputs, target certified "
                    f"agreement {100 * s['agreement_target']:.1f} %")
    for name in ("prune fraction", "certified agreement", "empirical agreement", "accuracy pruned", "refuted",
                 "meets target", "seconds"):
        t.add_column(name, justify="right")
    for r in outcome.curve:
        t.add_row(f"{r['prune_fraction']:.4g}", _pct(r["certified_agreement"]), _pct(r["empirical_agreement"]),
                  _pct(r["accuracy_pruned"]), str(r["refuted"]), "yes" if r["meets_target"] else "no",
                  f"{r['seconds']:.1f}")
    return t


def _max_prune(job: Any, solve: str, method: str, scope: str, agreement: float, tol: float, as_json: bool,
               verbose: bool, folder: str | None = None) -> None:
    from probprune.runner.certify import SOLVES, MaxPruneSolve, check_solve, run_max_prune

    if solve not in SOLVES:
        raise ProbPruneError(f"solve={solve!r}: must be one of {', '.join(SOLVES)}")
    spec = MaxPruneSolve(method=method, scope=scope, agreement=agreement, tol=tol)
    check_solve(job, spec)
    resolved = {**job.to_dict(), **spec.to_dict()}
    print_header(resolved, job.out, as_json, verbose)
    log = None if as_json else ProgressLog(err_console)
    res = run_max_prune(job, spec, progress=None if log is None else lambda d, t: log.update(d, t, "levels"),
                        run_dir=folder)
    report = None if res.run_dir is None else _write_report(res.run_dir)
    if as_json:
        emit_json({"config": resolved, "inputs": res.inputs, "arch": res.spec.to_arch(), "curve": res.curve,
                   "summary": res.summary, "run_dir": None if res.run_dir is None else str(res.run_dir),
                   "report": None if report is None else str(report)})
        return
    if report is not None:
        console.print(f"report: {report}", markup=False, soft_wrap=True)
    console.print(f"inputs: {res.inputs}", markup=False)
    console.print(curve_table(res))
    best = res.summary["max_prune_fraction"]
    console.print("largest prune fraction with certified agreement >= "
                  f"{100 * agreement:.1f} %: {'none (not even 0)' if best is None else f'{best:.4g}'} "
                  "(every answered level was measured; the rate need not be monotone in the level)", markup=False)
