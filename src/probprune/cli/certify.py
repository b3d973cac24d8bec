"""``probprune certify``: local certified gaps and certified agreement of a pruned network on real inputs."""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from probprune.cli.app import ProgressLog, VerboseOpt, app, console, emit_json, err_console, print_header
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


def summary_table(summary: dict[str, Any], norm: str, radius: float) -> Table:
    """The summary as a two-column table."""
    t = Table(title=f"certify: {summary['n']} inputs, {norm} ball of radius {radius:g}")
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
    out: Annotated[Optional[str], typer.Option(help="Write the per-input rows to this .csv or .json file.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (rows and summary).")] = False,
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
    from probprune.runner.certify import check_job, run_certify  # torch: when the command runs

    _check_required(weights, pruned, data, radius, config, solve)
    job: CertifyJob = resolve(CertifyJob, table=CERTIFY_FLAGS, config=config, sets=list(sets or []), flags=dict(
        weights=weights, pruned=weights if solve is not None else pruned, data=data, radius=radius,
        n_points=n_points, norm=norm, clip=clip, arch=arch, activation=activation, bias=bias, labels=labels,
        n_restarts=n_restarts, n_steps=n_steps, seed=seed, out=out))
    _check_certificate_path(certificate, solve, job.out)
    if solve is not None:
        _max_prune(job, solve, method, scope, agreement, tol, as_json, verbose)
        return
    check_job(job)
    resolved = job.to_dict()
    print_header(resolved, job.out, as_json, verbose, spec=job)
    live = not as_json and err_console.is_terminal
    # as verify: a live bar on a terminal, plain lines every few seconds otherwise, nothing under --json
    log = None if as_json or live else ProgressLog(err_console)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not live) as bar:
        task = bar.add_task("certifying", total=job.n_points)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if log is not None:
                log.update(done, total, "inputs")

        res = run_certify(job, progress=progress)
    _write_local_certificate(certificate, job, res)
    if as_json:
        emit_json({"config": resolved, "inputs": res.inputs, "arch": "onnx graph" if res.spec is None
                   else res.spec.to_arch(), "rows": res.rows, "summary": res.summary})
        return
    console.print(f"inputs: {res.inputs}", markup=False)
    console.print(summary_table(res.summary, job.norm, job.radius))
    console.print("upper = min(differential bound, layerwise bound over the l2 ball around 0 containing the local "
                  "ball); certified agreement: F and f have the same unique top-1 class everywhere in the ball",
                  markup=False)


def _check_certificate_path(certificate: str | None, solve: str | None, out: str | None) -> None:
    """``--certificate``: a ``.json`` path that can be written (not with ``--solve``)."""
    if certificate is None:
        return
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


def _check_required(weights: str | None, pruned: str | None, data: str | None, radius: float | None,
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
                                 + (", or --solve max-prune" if name == "pruned" else ""))


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
               verbose: bool) -> None:
    from probprune.runner.certify import SOLVES, MaxPruneSolve, check_solve, run_max_prune

    if solve not in SOLVES:
        raise ProbPruneError(f"solve={solve!r}: must be one of {', '.join(SOLVES)}")
    spec = MaxPruneSolve(method=method, scope=scope, agreement=agreement, tol=tol)
    check_solve(job, spec)
    resolved = {**job.to_dict(), **spec.to_dict()}
    print_header(resolved, job.out, as_json, verbose)
    log = None if as_json else ProgressLog(err_console)
    res = run_max_prune(job, spec, progress=None if log is None else lambda d, t: log.update(d, t, "levels"))
    if as_json:
        emit_json({"config": resolved, "inputs": res.inputs, "arch": res.spec.to_arch(), "curve": res.curve,
                   "summary": res.summary})
        return
    console.print(f"inputs: {res.inputs}", markup=False)
    console.print(curve_table(res))
    best = res.summary["max_prune_fraction"]
    console.print("largest prune fraction with certified agreement >= "
                  f"{100 * agreement:.1f} %: {'none (not even 0)' if best is None else f'{best:.4g}'} "
                  "(every answered level was measured; the rate need not be monotone in the level)", markup=False)
