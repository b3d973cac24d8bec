"""``probprune prune``: prune a loaded or sampled network and report per-layer sparsity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from probprune.cli.app import TERMS, VerboseOpt, app, console, emit_json, print_header, stats_table
from probprune.cli.gap import sandwich_doc, sandwich_tables
from probprune.config import MIN_DELTA, GapSpec, ProbPruneError, PruneSpec, parse_law

ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture, e.g. fcn:784,300,100,10 or "
                                                "cnn:1x28x28,c6k5m2,c16k5p0m2,120,84,10 (not needed for an "
                                                ".onnx model; if given, it must match).")]


@app.command("prune", help="Prune a network (loaded with --weights or sampled with --law) and print the "
             "per-layer report. " + TERMS)
def prune_cmd(
    arch: ArchOpt = None,
    weights: Annotated[Optional[str], typer.Option(
        help="Target model: .safetensors (names as to_module; needs --arch) or .onnx.")] = None,
    law: Annotated[Optional[str], typer.Option(help="Sample the target from a law, e.g. uniform:K=2.449.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling and random masks.")] = 0,
    activation: Annotated[Optional[str], typer.Option(
        help="Hidden activation: relu (default), leaky_relu, tanh, sigmoid, identity; an .onnx model's own.")]
    = None,
    bias: Annotated[Optional[bool], typer.Option(
        "--bias/--no-bias", help="Layers carry biases (never pruned); default no, an .onnx model's own.")] = None,
    method: Annotated[str, typer.Option(help="magnitude or random.")] = "magnitude",
    scope: Annotated[str, typer.Option(help="layerwise or global.")] = "layerwise",
    prune_fraction: Annotated[Optional[float], typer.Option(
        help="Share of weights REMOVED in [0, 1] (density = 1 - prune_fraction).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= threshold.")] = None,
    relative_threshold: Annotated[Optional[float], typer.Option(
        help="Magnitude: remove |w| <= rho * a_i (needs --law).")] = None,
    p: Annotated[Optional[float], typer.Option("--p", help="Random: remove each weight with probability p.")] = None,
    rescale: Annotated[bool, typer.Option(help="Random: multiply survivors by 1/(1-p).")] = False,
    out: Annotated[Optional[str], typer.Option(help="Write the pruned model here (.safetensors or .onnx).")] = None,
    save_target: Annotated[Optional[str], typer.Option(
        help="Also save the sampled target (.safetensors or .onnx).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and stop.")] = False,
    verbose: VerboseOpt = False,
    gap: Annotated[bool, typer.Option("--gap", help="After pruning, print the gap sandwich (lower/upper bound).")]
    = False,
    radius: Annotated[float, typer.Option(help="With --gap: input ball radius r > 0.")] = 1.0,
    certificate: Annotated[Optional[str], typer.Option(
        help="Write a JSON certificate here: gap sandwich (lower, certified upper, radius --radius), per-layer "
             "prune_fraction, ε(δ) when --law is given, seeds, digests, versions.")] = None,
    delta: Annotated[Optional[float], typer.Option(
        help="With --certificate and --law: failure probability δ of the probabilistic bound ε(δ) (default 0.05).")]
    = None,
) -> None:
    # the workflow (torch, matplotlib) is imported when the command runs, not for --help
    from probprune.report.certificate import write_certificate
    from probprune.runner import PruneJob, gap_sandwich, run_prune
    from probprune.runner.certificate import make_certificate
    from probprune.runner.prune import check_gap_budget, model_format, model_spec, write_outputs

    if certificate is not None and not certificate.endswith(".json"):
        raise ProbPruneError(f"certificate={certificate!r}: must end in .json")
    if delta is not None and (certificate is None or law is None or not MIN_DELTA <= delta < 1.0):
        raise ProbPruneError(f"delta={delta!r}: needs --certificate and --law, and must be in [{MIN_DELTA:g}, 1)")
    gap_spec = GapSpec(radius=radius) if gap else None
    if certificate is not None:
        for name, path in (("weights", weights), ("out", out), ("save_target", save_target)):
            if path is not None and model_format(name, path) == "onnx":
                raise ProbPruneError(f"certificate={certificate!r}: certificates are not supported for ONNX models "
                                     f"yet ({name}={path!r}); use .safetensors files, or leave --certificate out")
    net, loaded = model_spec(arch, activation, bias, ("weights", weights))  # no --weights: --arch, sampled
    spec = PruneSpec(method=method, scope=scope, prune_fraction=prune_fraction, threshold=threshold,  # type: ignore[arg-type]
                     relative_threshold=relative_threshold, p=p, rescale=rescale)
    job = PruneJob(net=net, prune=spec, weights=weights, law=None if law is None else parse_law(law), seed=seed,
                   out=out, save_target=save_target, device=device)
    if gap_spec is not None or certificate is not None:
        check_gap_budget(net, gap_spec or GapSpec(radius=radius))
    job.check_outputs(("certificate", certificate))  # every output path, before any work
    resolved = {"arch": net.to_arch(), "activation": net.activation, "bias": net.bias, "weights": weights,
                "law": None if job.law is None else job.law.to_text(), "seed": seed,
                "prune": {k: v for k, v in vars(spec).items() if v is not None}}
    if gap_spec is not None:
        resolved["gap"] = {"radius": radius}
    print_header(resolved, out, as_json, verbose)
    if dry_run:
        return
    res = run_prune(job, write=False, loaded=loaded.get("weights"))
    stats = res.stats.to_dict()
    sw = None if gap_spec is None else gap_sandwich(res.target, res.pruned, gap_spec, seed)
    cert_doc = None
    new_files = [Path(f) for f in (out, save_target, certificate) if f is not None and not Path(f).exists()]
    try:
        write_outputs(job, res)  # after the sandwich; the certificate records the written files' digests
        if certificate is not None:
            cert_doc = make_certificate(res, job, gap=GapSpec(radius=radius), delta=delta)
            write_certificate(certificate, cert_doc)
    except BaseException:
        for f in new_files:  # a failed command leaves no new file behind
            f.unlink(missing_ok=True)
        raise
    if as_json:
        doc = {"config": resolved, "stats": stats, "out": out, "save_target": save_target}
        if cert_doc is not None:
            doc["certificate"] = {"path": certificate, "gap": cert_doc["gap"]["upper"],
                                  "lower": cert_doc["gap"]["lower"], "probabilistic": cert_doc["probabilistic"]}
        if sw is not None:
            doc["sandwich"] = sandwich_doc(sw)
        emit_json(doc)
        return
    console.print(stats_table(stats))
    if sw is not None:
        for table in sandwich_tables(sw, radius):
            console.print(table)
    if out:
        console.print(f"pruned {'model' if model_format('out', out) == 'onnx' else 'weights'} written to {out}",
                      markup=False, soft_wrap=True)
    if cert_doc is not None:
        console.print(f"certificate written to {certificate}", markup=False, soft_wrap=True)
