"""``probprune gap``: pin the gap between a target and a pruned network from both sides."""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from probprune.cli.app import VerboseOpt, app, console, emit_json, err_console, print_header
from probprune.cli.flags import GAP_FLAGS, ConfigOpt, SetOpt, model_net
from probprune.config import GapJob, ProbPruneError, resolve

__all__ = ["gap_cmd", "graph_sandwich_tables", "sandwich_doc", "sandwich_tables"]


def _f(v: float) -> str:
    return f"{v:.6g}"


def sandwich_doc(sw: Any) -> dict[str, Any]:
    """The JSON form of a ``Sandwich`` (plus a one-line verdict)."""
    doc: dict[str, Any] = sw.to_dict()
    return doc


def sandwich_tables(sw: Any, radius: float) -> list[Table]:
    """Rich tables: the sandwich itself and the per-layer terms of the certified bound."""
    doc = sw.to_dict()
    lower, upper, ratio = doc["lower"], doc["upper"], doc["ratio"]
    if not isinstance(lower, list):
        lower, upper, ratio = [lower], [upper], [ratio]
    t = Table(title=f"gap sandwich: lower <= sup_(||x|| <= {radius:g}) ||f(x) - F(x)|| <= upper")
    for col in ("member", "lower (empirical)", "upper (certified)", "upper / lower"):
        t.add_column(col, justify="right")
    for i, (lo, up, ra) in enumerate(zip(lower, upper, ratio)):
        t.add_row(str(i) if len(lower) > 1 else "-", _f(lo), _f(up), "inf" if math.isinf(ra) else _f(ra))
    terms = Table(title=f"certified bound per layer ({doc['n_exact']}/{doc['n_norms']} norms exact)")
    for col in ("layer", "||W|| <=", "||W~|| <=", "||D|| <=", "method", "L", "error e_i <="):
        terms.add_column(col, justify="left" if col in ("layer", "method") else "right")
    for term in doc["bound"]["terms"]:
        def first(v: Any) -> float:
            return float(v[0]) if isinstance(v, list) else float(v)
        nt, npr, nd = term["norm_target"], term["norm_pruned"], term["norm_diff"]
        method = "/".join(sorted({nt["method"] + ("" if nt["exact"] else "*") for nt in (nt, npr, nd)}))
        terms.add_row(term["name"], _f(first(nt["value"])), _f(first(npr["value"])), _f(first(nd["value"])),
                      method, _f(term["lipschitz"]), _f(first(term["error"])))
    return [t, terms]


@app.command("gap", help="Pin the gap sup_{||x|| <= r} ||f(x) - F(x)|| between a target F (--weights) and a pruned "
             "network f (--pruned): an empirical lower bound (sampling + projected gradient ascent) and a "
             "certified upper bound (layerwise operator norms, docs/certified.md).")
def gap_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    weights: Annotated[Optional[str], typer.Option(help="Target model F (.safetensors or .onnx).")] = None,
    pruned: Annotated[Optional[str], typer.Option(
        help="Pruned model f (.safetensors or .onnx, same architecture).")] = None,
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="Architecture, e.g. fcn:784,300,100,10 (not needed when either model is .onnx; if given, "
                       "it must match).")] = None,
    radius: Annotated[Optional[float], typer.Option(help="Input ball radius r > 0 (default 1, as in the paper).")]
    = None,
    activation: Annotated[Optional[str], typer.Option(
        help="Hidden activation: relu (default), leaky_relu, tanh, sigmoid, identity; an .onnx model's own.")]
    = None,
    bias: Annotated[Optional[bool], typer.Option(
        "--bias/--no-bias", help="Layers carry biases; default no, an .onnx model's own.")] = None,
    n_points: Annotated[Optional[int], typer.Option(help="Estimator: random starting points (default 2048).")]
    = None,
    n_restarts: Annotated[Optional[int], typer.Option(
        help="Estimator: best points refined by gradient ascent (default 8).")] = None,
    n_steps: Annotated[Optional[int], typer.Option(help="Estimator: ascent steps per restart (default 50).")] = None,
    step_size: Annotated[Optional[float], typer.Option(
        help="Estimator: initial step as a fraction of r (default 0.1).")] = None,
    norm_method: Annotated[Optional[str], typer.Option(
        help="auto (default), svd, gram-cholesky or frobenius-holder.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the estimator's sampling (default 0).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu (default) or cuda.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and stop.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    from probprune.runner.gap import check_gap_job, run_gap  # when the command runs, not at start-up (torch)

    if isinstance(radius, float) and not math.isfinite(radius):
        raise ProbPruneError(f"radius={radius!r}: must be finite")
    for name, path in (("weights", weights), ("pruned", pruned)):
        if path is None and config is None:
            raise ProbPruneError(f"{name}: missing; give --{name} FILE (or set it in --config)")
    from probprune.runner.graph import GraphModelFound

    loaded: dict[str, Any] = {}
    flags = dict(weights=weights, pruned=pruned, arch=arch, radius=radius, activation=activation, bias=bias,
                 n_points=n_points, n_restarts=n_restarts, n_steps=n_steps, step_size=step_size,
                 norm_method=norm_method, seed=seed, device=device)
    try:
        job: GapJob = resolve(GapJob, table=GAP_FLAGS, config=config, sets=list(sets or []),
                              groups=(model_net(("weights", "pruned"), loaded),), flags=flags)
    except GraphModelFound as found:  # an ONNX graph the chain reader refuses: the graph path
        if found.name != "weights":
            raise ProbPruneError(f"{found.name}={found.model.path!r}: is an ONNX graph model; give as --weights "
                                 "the ONNX graph it was pruned from") from None
        _graph_gap(found, flags, (config, sets), as_json, dry_run, verbose)
        return
    check_gap_job(job)
    g = job.gap
    resolved = {"arch": job.net.to_arch(), "activation": job.net.activation, "bias": job.net.bias,
                "weights": job.weights, "pruned": job.pruned, "seed": job.seed, "norm_method": job.norm_method,
                "gap": {"radius": g.radius, "n_points": g.n_points, "n_restarts": g.n_restarts, "n_steps": g.n_steps,
                        "step_size": g.step_size}}
    print_header(resolved, None, as_json, verbose, spec=job)
    if dry_run:
        return
    if as_json:  # stderr stays empty under --json
        res = run_gap(job, loaded)
    else:
        with err_console.status("estimating and bounding the gap", spinner="dots"):
            res = run_gap(job, loaded)
    sw = res.sandwich
    if as_json:
        emit_json({"config": resolved, "sandwich": sandwich_doc(sw)})
        return
    for table in sandwich_tables(sw, g.radius):
        console.print(table)
    console.print("* certified upper value, not the exact norm; assumptions: "
                  + "; ".join(sw.bound.assumptions), markup=False)


def graph_sandwich_tables(sw: Any) -> list[Table]:
    """Rich tables of a ``GraphSandwich``: the sandwich and the per-node values of the certified bound."""
    doc = sw.to_dict()
    radius = doc["bound"]["radius"]
    t = Table(title=f"gap sandwich: lower <= sup_(||x|| <= {radius:g}) ||f(x) - F(x)|| <= upper")
    for col in ("lower (empirical)", "upper (certified)", "upper / lower"):
        t.add_column(col, justify="right")
    t.add_row(_f(doc["lower"]), _f(doc["upper"]), "inf" if math.isinf(doc["ratio"]) else _f(doc["ratio"]))
    terms = Table(title="certified bound per node (upper values)")
    for col in ("node", "op", "reach F <=", "reach f <=", "error <="):
        terms.add_column(col, justify="left" if col in ("node", "op") else "right")
    for term in doc["bound"]["terms"]:
        terms.add_row(term["name"], term["op"], _f(term["reach_target"]), _f(term["reach_pruned"]),
                      _f(term["error"]))
    return [t, terms]


#: The GapJob settings the graph path does not take, as the user gives them.
_GRAPH_REFUSED = {"net": "--arch/--activation/--bias (net)", "norm_method": "--norm-method (norm_method)"}


def _graph_gap(found: Any, flags: dict[str, Any], settings: tuple[str | None, list[str] | None], as_json: bool,
               dry_run: bool, verbose: bool) -> None:
    """``gap`` on an ONNX graph target (:mod:`probprune.runner.graph`): the pruned model must be its twin.

    The settings are the chain path's :class:`~probprune.config.GapJob` from the same resolver
    (``settings`` = ``--config``, ``--set``; :func:`~probprune.cli.flags.graph_job`).
    """
    from probprune.cli.flags import graph_job
    from probprune.runner.graph import GRAPH_NOTE, run_graph_gap

    model = found.model
    for name, flag in (("arch", "--arch"), ("activation", "--activation"), ("bias", "--bias/--no-bias"),
                       ("norm_method", "--norm-method")):
        if flags.get(name) is not None:
            raise ProbPruneError(f"{name}={flags[name]!r}: {flag} is not taken for an ONNX graph model "
                                 f"(weights={model.path!r})")
    job: GapJob = graph_job(GapJob, model.path, table=GAP_FLAGS, flags=flags, config=settings[0], sets=settings[1],
                            refused=_GRAPH_REFUSED)
    if job.device != "cpu":
        raise ProbPruneError(f"device={job.device!r}: ONNX graph models are bounded on the cpu")
    g, seed, pruned = job.gap, job.seed, job.pruned
    resolved = {"model": "onnx graph", "weights": model.path, "pruned": pruned, "seed": seed,
                "gap": {"radius": g.radius, "n_restarts": g.n_restarts, "n_steps": g.n_steps}}
    print_header(resolved, None, as_json, verbose)
    if dry_run:
        return
    if as_json:
        sw = run_graph_gap(model, pruned, g, seed)
        emit_json({"config": resolved, "sandwich": sw.to_dict()})
        return
    with err_console.status("searching and bounding the gap", spinner="dots"):
        sw = run_graph_gap(model, pruned, g, seed)
    for table in graph_sandwich_tables(sw):
        console.print(table)
    console.print("* certified upper value; assumptions: " + "; ".join(sw.bound.assumptions) + "; " + GRAPH_NOTE,
                  markup=False)
