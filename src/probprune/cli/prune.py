"""``probprune prune``: prune a loaded or sampled network and report per-layer sparsity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from probprune.cli.app import TERMS, VerboseOpt, app, console, emit_json, print_header, stats_table
from probprune.cli.flags import PRUNE_FLAGS, ConfigOpt, SetOpt, model_net
from probprune.cli.gap import sandwich_doc, sandwich_tables
from probprune.config import MIN_DELTA, GapSpec, ProbPruneError, PruneJob, resolve

ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture, e.g. fcn:784,300,100,10 or "
                                                "cnn:1x28x28,c6k5m2,c16k5p0m2,120,84,10 (not needed for an "
                                                ".onnx model; if given, it must match).")]


def _level_rule(data: dict[str, Any], _: Any) -> None:
    data.setdefault("prune", {})  # no level given: the job's own refusal names the flags to use


def _prune_job(config: str | None, sets: list[str] | None,
               flags: dict[str, Any]) -> tuple[PruneJob | None, dict[str, Any]]:
    """The job from the one resolver (``--config``, the flags of :data:`PRUNE_FLAGS`, ``--set``) and the models
    read on the way (``weights`` → ONNX model); no job and ``{"graph": GraphModelFound}`` for an ONNX graph
    the chain reader refuses (:mod:`probprune.runner.graph`; :func:`_graph_prune` resolves its job)."""
    from probprune.runner.graph import GraphModelFound

    loaded: dict[str, Any] = {}
    try:
        job: PruneJob = resolve(PruneJob, table=PRUNE_FLAGS, flags=flags, config=config, sets=list(sets or []),
                                groups=(_level_rule, model_net(("weights",), loaded)))
    except GraphModelFound as found:  # resolved again by the graph path (graph_job), the file not read again
        return None, {"graph": found}
    return job, loaded


def _graph_for_certificate(job: PruneJob | None, loaded: dict[str, Any],
                           certificate: str | None) -> tuple[PruneJob | None, dict[str, Any]]:
    """An ONNX chain model with ``--certificate`` takes the graph path: its certificate is a graph certificate
    (:mod:`probprune.runner.certificate_graph`); ``(None, {"graph": GraphModelFound})`` then, else unchanged.
    The graph path resolves ``--config``/``--set`` again as a graph job (:func:`_graph_prune`)."""
    if job is None or certificate is None or job.weights is None or not str(job.weights).lower().endswith(".onnx"):
        return job, loaded
    from probprune.runner.certificate_graph import read_graph_model
    from probprune.runner.graph import GraphModelFound

    return None, {"graph": GraphModelFound("weights", read_graph_model("weights", job.weights))}


def _check_certificate(certificate: str | None, delta: float | None, job: PruneJob) -> None:
    if certificate is None:
        if delta is not None:
            raise ProbPruneError(f"delta={delta!r}: needs --certificate and --law, and must be in [{MIN_DELTA:g}, 1)")
        return
    from probprune.runner.prune import model_format

    if delta is not None and (job.law is None or not MIN_DELTA <= delta < 1.0):
        raise ProbPruneError(f"delta={delta!r}: needs --certificate and --law, and must be in [{MIN_DELTA:g}, 1)")
    for name, path in (("weights", job.weights), ("out", job.out), ("save_target", job.save_target)):
        if path is not None and model_format(name, path) == "onnx":
            raise ProbPruneError(f"certificate={certificate!r}: certificates are not supported for ONNX models "
                                 f"yet ({name}={path!r}); use .safetensors files, or leave --certificate out")


def _resolved(job: PruneJob, gap: GapSpec | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"arch": job.net.to_arch(), "activation": job.net.activation, "bias": job.net.bias,
                           "weights": job.weights, "law": None if job.law is None else job.law.to_text(),
                           "seed": job.seed, "prune": {k: v for k, v in vars(job.prune).items() if v is not None}}
    if gap is not None:
        doc["gap"] = {"radius": gap.radius}
    return doc


@app.command("prune", help="Prune a network (loaded with --weights or sampled with --law) and print the "
             "per-layer report. " + TERMS)
def prune_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    arch: ArchOpt = None,
    weights: Annotated[Optional[str], typer.Option(
        help="Target model: .safetensors (needs --arch; tensors named as to_module does, or as your own "
             "nn.Module's state_dict, e.g. features.0.weight; --out keeps those names) or .onnx.")] = None,
    law: Annotated[Optional[str], typer.Option(help="Sample the target from a law, e.g. uniform:K=2.449.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling and random masks (default 0).")] = None,
    activation: Annotated[Optional[str], typer.Option(
        help="Hidden activation: relu (default), leaky_relu, tanh, sigmoid, identity; an .onnx model's own.")]
    = None,
    bias: Annotated[Optional[bool], typer.Option(
        "--bias/--no-bias", help="Layers carry biases (never pruned); default no, an .onnx model's own.")] = None,
    method: Annotated[Optional[str], typer.Option(help="magnitude (default) or random.")] = None,
    scope: Annotated[Optional[str], typer.Option(help="layerwise (default) or global.")] = None,
    prune_fraction: Annotated[Optional[float], typer.Option(
        help="Share of weights REMOVED in [0, 1] (density = 1 - prune_fraction).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= threshold.")] = None,
    relative_threshold: Annotated[Optional[float], typer.Option(
        help="Magnitude: remove |w| <= rho * a_i (needs --law).")] = None,
    p: Annotated[Optional[float], typer.Option("--p", help="Random: remove each weight with probability p.")] = None,
    rescale: Annotated[Optional[bool], typer.Option("--rescale/--no-rescale",
                                                    help="Random: multiply survivors by 1/(1-p).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Write the pruned model here (.safetensors or .onnx).")] = None,
    save_target: Annotated[Optional[str], typer.Option(
        help="Also save the sampled target (.safetensors or .onnx).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu (default) or cuda.")] = None,
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
    from probprune.runner import gap_sandwich, run_prune
    from probprune.runner.certificate import make_certificate
    from probprune.runner.prune import check_gap_budget, check_job_outputs, check_prune_job, write_outputs

    if certificate is not None and not certificate.endswith(".json"):
        raise ProbPruneError(f"certificate={certificate!r}: must end in .json")
    flags = dict(arch=arch, weights=weights, law=law, seed=seed, activation=activation, bias=bias, method=method,
                 scope=scope, prune_fraction=prune_fraction, threshold=threshold, relative_threshold=relative_threshold,
                 p=p, rescale=rescale, out=out, save_target=save_target, device=device)
    job, loaded = _graph_for_certificate(*_prune_job(config, sets, flags), certificate)
    if job is None:  # an ONNX graph the chain reader refuses: the graph path
        return _graph_prune(loaded["graph"], flags, (config, sets), as_json, dry_run, verbose,
                            radius if gap else None, certificate, delta, cert_radius=radius)
    _check_certificate(certificate, delta, job)
    check_prune_job(job)
    gap_spec = GapSpec(radius=radius) if gap else None
    if gap_spec is not None or certificate is not None:
        check_gap_budget(job.net, gap_spec or GapSpec(radius=radius))
    check_job_outputs(job, ("certificate", certificate))  # every output path, before any work
    resolved = _resolved(job, gap_spec)
    print_header(resolved, job.out, as_json, verbose, spec=job)
    if dry_run:
        return
    res = run_prune(job, write=False, loaded=loaded.get("weights"))
    sw = None if gap_spec is None else gap_sandwich(res.target, res.pruned, gap_spec, job.seed)
    cert_doc = None
    new_files = [Path(f) for f in (job.out, job.save_target, certificate) if f is not None and not Path(f).exists()]
    try:
        write_outputs(job, res)  # after the sandwich; the certificate records the written files' digests
        if certificate is not None:
            cert_doc = make_certificate(res, job, gap=GapSpec(radius=radius), delta=delta)
            write_certificate(certificate, cert_doc)
    except BaseException:
        for f in new_files:  # a failed command leaves no new file behind
            f.unlink(missing_ok=True)
        raise
    _print_outcome(job, res.stats.to_dict(), sw, cert_doc, certificate, resolved, radius, as_json)


def _print_outcome(job: PruneJob, stats: dict[str, Any], sw: Any, cert_doc: dict[str, Any] | None,
                   certificate: str | None, resolved: dict[str, Any], radius: float, as_json: bool) -> None:
    from probprune.runner.prune import model_format

    if as_json:
        doc = {"config": resolved, "stats": stats, "out": job.out, "save_target": job.save_target}
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
    if job.out:
        console.print(f"pruned {'model' if model_format('out', job.out) == 'onnx' else 'weights'} written to "
                      f"{job.out}", markup=False, soft_wrap=True)
    if cert_doc is not None:
        console.print(f"certificate written to {certificate}", markup=False, soft_wrap=True)


def _graph_refusals(flags: dict[str, Any], certificate: str | None, delta: float | None, path: str) -> None:
    """What the graph path of ``prune`` does not take: one line naming the flag."""
    if delta is not None:
        raise ProbPruneError(f"delta={delta!r}: needs --law; an ONNX graph model has no probabilistic bound ε(δ)")
    if certificate is not None and flags.get("out") is None:
        raise ProbPruneError(f"certificate={certificate!r}: a graph certificate states the digest of the pruned "
                             f"model: give --out pruned.onnx too (weights={path!r} is an ONNX graph)")
    for name, flag in (("arch", "--arch"), ("activation", "--activation"), ("bias", "--bias/--no-bias"),
                       ("law", "--law"), ("save_target", "--save-target")):
        if flags.get(name) is not None:
            raise ProbPruneError(f"{name}={flags[name]!r}: {flag} is not taken for an ONNX graph model "
                                 f"(weights={path!r} carries its architecture and weights)")
    if flags.get("device") not in (None, "cpu"):
        raise ProbPruneError(f"device={flags['device']!r}: ONNX graph models are pruned and bounded on the cpu")
    out = flags.get("out")
    if out is not None and not str(out).lower().endswith(".onnx"):
        raise ProbPruneError(f"out={out!r}: the pruned ONNX graph model is written as .onnx")


#: The PruneJob settings the graph path does not take (the graph carries them), as the user gives them.
_GRAPH_REFUSED = {"net": "--arch/--activation/--bias (net)", "law": "--law (law)",
                  "save_target": "--save-target (save_target)"}


def _graph_prune(found: Any, flags: dict[str, Any], settings: tuple[str | None, list[str] | None], as_json: bool,
                 dry_run: bool, verbose: bool, radius: float | None, certificate: str | None,
                 delta: float | None, cert_radius: float = 1.0) -> None:
    """``prune`` on an ONNX graph (:mod:`probprune.runner.graph`): prune, optionally the sandwich, write ``--out``.

    The settings are the chain path's :class:`~probprune.config.PruneJob` from the same resolver
    (``settings`` = ``--config``, ``--set``; :func:`~probprune.cli.flags.graph_job`).
    """
    from probprune.cli.flags import graph_job
    from probprune.runner.graph import GRAPH_NOTE, check_graph_prune, graph_sandwich, run_graph_prune, write_graph
    from probprune.runner.prune import check_output_paths

    model = found.model
    _graph_refusals({**flags, "out": None}, None, delta, model.path)  # the flags; --out may come from --config
    job: PruneJob = graph_job(PruneJob, model.path, table=PRUNE_FLAGS, flags=flags, config=settings[0],
                              sets=settings[1], refused=_GRAPH_REFUSED, groups=(_level_rule,))
    _graph_refusals({"device": job.device, "out": job.out}, certificate, None, model.path)
    spec, seed = job.prune, job.seed
    check_graph_prune(spec)
    flags = {**flags, "out": job.out}
    gap_spec = None if radius is None else GapSpec(radius=radius)
    check_output_paths({"out": flags.get("out"), "certificate": certificate})
    resolved: dict[str, Any] = {"model": "onnx graph", "weights": model.path, "seed": seed,
                                "prune": {k: v for k, v in vars(spec).items() if v is not None}}
    if gap_spec is not None:
        resolved["gap"] = {"radius": gap_spec.radius}
    print_header(resolved, flags.get("out"), as_json, verbose)
    if dry_run:
        return
    res = run_graph_prune(model, spec, seed)
    sw = None if gap_spec is None else graph_sandwich(res.target, res.pruned, gap_spec, seed)
    cert_doc = None
    if certificate is not None:
        cert_doc = _graph_certificate(model, res, spec, flags["out"], certificate, GapSpec(radius=cert_radius))
    elif flags.get("out") is not None:
        write_graph(res, flags["out"])
    if as_json:
        doc: dict[str, Any] = {"config": resolved, "stats": res.stats, "out": flags.get("out"), "save_target": None}
        if sw is not None:
            doc["sandwich"] = sw.to_dict()
        if cert_doc is not None:
            doc["certificate"] = {"path": certificate, "gap": cert_doc["gap"]["upper"],
                                  "lower": cert_doc["gap"]["lower"], "model": "graph"}
        emit_json(doc)
        return
    console.print(stats_table(res.stats))
    if sw is not None:
        from probprune.cli.gap import graph_sandwich_tables

        for table in graph_sandwich_tables(sw):
            console.print(table)
        console.print("* certified upper value; assumptions: " + "; ".join(sw.bound.assumptions) + "; "
                      + GRAPH_NOTE, markup=False)
    if flags.get("out"):
        console.print(f"pruned model written to {flags['out']}", markup=False, soft_wrap=True)
    if cert_doc is not None:
        console.print(f"certificate written to {certificate}", markup=False, soft_wrap=True)


def _graph_certificate(model: Any, res: Any, spec: Any, out: str, certificate: str, gap: Any) -> dict[str, Any]:
    """Write the pruned graph and its certificate (:mod:`probprune.runner.certificate_graph`); on failure neither
    new file is left behind."""
    from probprune.report.certificate import write_certificate
    from probprune.runner.certificate_graph import make_graph_certificate
    from probprune.runner.graph import write_graph

    new_files = [Path(f) for f in (out, certificate) if not Path(f).exists()]
    try:
        write_graph(res, out)
        doc = make_graph_certificate(model, res, spec, out, gap)
        write_certificate(certificate, doc)
    except BaseException:
        for f in new_files:
            f.unlink(missing_ok=True)
        raise
    return doc
