"""``probprune bound``: the probabilistic gap bound ε(δ) and its inverses (``docs/theory.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from probprune.cli.app import TERMS, VerboseOpt, app, console, emit_json, print_header, print_table
from probprune.cli.flags import BOUND_FLAGS, SCHEDULE_HELP, ConfigOpt, SetOpt, refuse_c_alpha, schedule_group
from probprune.config import BoundJob, ProbPruneError, parse_arch, parse_law, resolve, to_dict


def _bound_table(b: dict[str, Any]) -> Table:
    t = Table(title=f"ε(δ={b['delta']:g}) = {b['value']:.6g}   [{b['theorem']}]")
    for col in ("layer", "level", "‖W‖≤", "‖W̃‖≤", "‖D‖≤", "routes x/e/D", "error≤", "share of ε"):
        t.add_column(col, justify="left" if col in ("layer", "routes x/e/D") else "right")
    for r in b["layers"]:
        routes = "/".join(x.replace("op:", "") for x in (r["route_target"], r["route_pruned"], r["route_diff"]))
        t.add_row(r["name"], f"{r['level']:.4g}", f"{r['norm_target']:.4g}", f"{r['norm_pruned']:.4g}",
                  f"{r['norm_diff']:.4g}", routes, f"{r['error']:.4g}", f"{r['contribution']:.4g}")
    if b.get("lipschitz_term"):
        t.add_row("η-net", "", "", "", "", f"η={b['eta']:.2g} logN={b['log_net_size']:.0f}", "",
                  f"{b['lipschitz_term']:.4g}")
    return t


def _net_group(data: dict[str, Any], flags: Mapping[str, Any]) -> None:
    """``--arch`` with ``--activation`` (or the config file's ``net``) → ``net``; no level given: the job names one."""
    net = data.get("net") if isinstance(data.get("net"), dict) else {}
    arch = flags.get("arch") if flags.get("arch") is not None else net.get("arch")  # type: ignore[union-attr]
    if arch is None:
        raise ProbPruneError("arch: give --arch (e.g. fcn:16,2048,2048,4)")
    act = flags.get("activation") or net.get("activation", "relu")  # type: ignore[union-attr]
    data["net"] = parse_arch(arch, activation=act)
    data.setdefault("prune", {})
    data.setdefault("law", to_dict(parse_law("uniform:K=sqrt6")))


@app.command("bound", help="Probabilistic bound ε(δ) on the gap sup_{‖x‖≤r} ‖f(x) − F(x)‖ of a pruned sampled "
             "network (docs/theory.md), or its inverses: --solve max-prune (largest level with ε ≤ --eps) and "
             "--solve min-width (smallest hidden width; --schedule c,alpha gives a schedule c·h^-α). " + TERMS)
def bound_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture, e.g. fcn:16,2048,2048,4.")] = None,
    law: Annotated[Optional[str], typer.Option(
        help="Weight law of the target, e.g. uniform:K=2.449 or gaussian:K=2.449 (default uniform:K=sqrt6).")]
    = None,
    activation: Annotated[Optional[str], typer.Option(help="Hidden activation (σ(0) = 0 needed; default relu).")]
    = None,
    method: Annotated[Optional[str], typer.Option(help="magnitude (default) or random.")] = None,
    relative_threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= rho * a_i.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= threshold.")] = None,
    p: Annotated[Optional[float], typer.Option("--p", help="Random: remove each weight with probability p.")] = None,
    prune_fraction: Annotated[Optional[float], typer.Option(
        help="Share REMOVED; magnitude only (mapped to the threshold rule, see docs/theory.md §2.4).")] = None,
    rescale: Annotated[Optional[bool], typer.Option("--rescale/--no-rescale", help="Random: survivors × 1/(1-p).")]
    = None,
    delta: Annotated[Optional[float], typer.Option(help="Failure probability δ in (0, 1) (default 0.05).")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Target ε* > 0 for --solve.")] = None,
    solve: Annotated[Optional[str], typer.Option(help="none (default), max-prune or min-width.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help=SCHEDULE_HELP)] = None,
    alpha: Annotated[Optional[float], typer.Option(hidden=True, help="Refused: use --schedule c,alpha.")] = None,
    c: Annotated[Optional[float], typer.Option("--c", hidden=True, help="Refused: use --schedule c,alpha.")] = None,
    radius: Annotated[Optional[float], typer.Option(help="Input ball radius r > 0 (default 1).")] = None,
    theorem: Annotated[Optional[str], typer.Option(help="auto (default), operator (§4) or net (§5).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and stop.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    from probprune.runner.bound import check_job, run_bound  # here: scipy/torch only when it runs

    refuse_c_alpha(c, alpha)
    job: BoundJob = resolve(BoundJob, table=BOUND_FLAGS, config=config, sets=list(sets or []),
                            groups=(_net_group, schedule_group()),
                            flags=dict(arch=arch, law=law, activation=activation, method=method,
                                       relative_threshold=relative_threshold, threshold=threshold, p=p,
                                       prune_fraction=prune_fraction, rescale=rescale, delta=delta, eps=eps,
                                       solve=solve, schedule=schedule, radius=radius, theorem=theorem))
    resolved = {"arch": job.net.to_arch(), "activation": job.net.activation, "law": job.law.to_text(),
                "delta": job.delta, "eps": job.eps, "solve": job.solve, "radius": job.radius, "theorem": job.theorem,
                "prune": {k: v for k, v in vars(job.prune).items() if v is not None}}
    check_job(job)
    print_header(resolved, None, as_json, verbose, spec=job)
    if dry_run:
        return
    doc = run_bound(job)
    if as_json:
        emit_json({"config": resolved, **doc})
        return
    _print_bound(job, doc)


def _print_bound(job: BoundJob, doc: dict[str, Any]) -> None:
    b = doc["bound"]
    if "answer" in doc:
        if job.solve == "max-prune":
            a = doc["answer"]
            console.print(f"[bold]largest {a['level_name']}[/bold] with ε(δ={job.delta:g}) ≤ {job.eps:g}: "
                          f"{a['level']:.6g}")
        else:
            console.print(f"[bold]smallest hidden width[/bold] with ε(δ={job.delta:g}) ≤ {job.eps:g}: "
                          f"{doc['answer']['hidden_width']}")
    print_table(_bound_table(b))
    console.print(f"probability budget: {len(b['budget'])} events, δ split equally "
                  f"({b['budget'][0]['delta']:.3g} each)")
    for n in b["notes"]:
        console.print(f"note: {n}")
    if "paper" in doc:
        k = doc["paper"]["constants"]
        console.print(f"paper form (K's implied by our theorem): K1={k['K1']:.4g} K2={k['K2']:.4g} K3={k['K3']:.4g} "
                      f"K4={k['K4']:.4g} K5={k['K5']:.4g} α={k['alpha']:g} → h ≥ {doc['paper']['paper_width']:.4g}; "
                      f"theory exponent of the gap: {doc['paper']['theory_exponent']:g}")
