"""``probprune bound``: the probabilistic gap bound ε(δ) and its inverses (``docs/theory.md``)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from probprune.cli.app import TERMS, VerboseOpt, app, console, emit_json, print_header, print_table
from probprune.config import ProbPruneError, PruneSpec, parse_arch, parse_law


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


@app.command("bound", help="Probabilistic bound ε(δ) on the gap sup_{‖x‖≤r} ‖f(x) − F(x)‖ of a pruned sampled "
             "network (docs/theory.md), or its inverses: --solve max-prune (largest level with ε ≤ --eps) and "
             "--solve min-width (smallest hidden width; --c/--alpha give a schedule c·h^-α). " + TERMS)
def bound_cmd(
    arch: Annotated[str, typer.Option("--arch", help="Architecture, e.g. fcn:16,2048,2048,4.")],
    law: Annotated[str, typer.Option(help="Weight law of the target, e.g. uniform:K=2.449 or gaussian:K=2.449.")]
    = "uniform:K=sqrt6",
    activation: Annotated[str, typer.Option(help="Hidden activation (σ(0) = 0 needed).")] = "relu",
    method: Annotated[str, typer.Option(help="magnitude or random.")] = "magnitude",
    relative_threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= rho * a_i.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Magnitude: remove |w| <= threshold.")] = None,
    p: Annotated[Optional[float], typer.Option("--p", help="Random: remove each weight with probability p.")] = None,
    prune_fraction: Annotated[Optional[float], typer.Option(
        help="Share REMOVED; magnitude only (mapped to the threshold rule, see docs/theory.md §2.4).")] = None,
    rescale: Annotated[bool, typer.Option(help="Random: survivors × 1/(1-p).")] = False,
    delta: Annotated[float, typer.Option(help="Failure probability δ in (0, 1).")] = 0.05,
    eps: Annotated[Optional[float], typer.Option(help="Target ε* > 0 for --solve.")] = None,
    solve: Annotated[str, typer.Option(help="none, max-prune or min-width.")] = "none",
    alpha: Annotated[Optional[float], typer.Option(help="Schedule exponent α in (0, 1): level = c·h^-α.")] = None,
    c: Annotated[Optional[float], typer.Option("--c", help="Schedule constant c > 0: level = c·h^-α.")] = None,
    radius: Annotated[float, typer.Option(help="Input ball radius r > 0.")] = 1.0,
    theorem: Annotated[str, typer.Option(help="auto, operator (§4) or net (§5).")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and stop.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    from probprune.runner.bound import BoundJob, check_job, run_bound  # here: scipy/torch only when it runs

    net = parse_arch(arch, activation=activation)
    lw = parse_law(law)
    if (alpha is None) != (c is None):
        raise ProbPruneError(f"alpha={alpha!r}, c={c!r}: a schedule needs both --alpha and --c")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ProbPruneError(f"alpha={alpha!r}: must be in (0, 1)")
    if solve == "max-prune" and alpha is not None:
        raise ProbPruneError("alpha: --solve max-prune finds a fixed level; drop --alpha/--c")
    if solve == "max-prune" and any(v is not None for v in (relative_threshold, threshold, p, prune_fraction)):
        raise ProbPruneError("--solve max-prune finds the level itself; give no level")
    spec = PruneSpec(method=method, prune_fraction=prune_fraction, threshold=threshold,  # type: ignore[arg-type]
                     relative_threshold=relative_threshold, p=p, rescale=rescale, schedule_c=c, schedule_alpha=alpha)
    job = BoundJob(net=net, law=lw, prune=spec, delta=delta, eps=eps, solve=solve, radius=radius,  # type: ignore[arg-type]
                   theorem=theorem)  # type: ignore[arg-type]
    resolved = {"arch": net.to_arch(), "activation": activation, "law": lw.to_text(), "delta": delta, "eps": eps,
                "solve": solve, "radius": radius, "theorem": theorem,
                "prune": {k: v for k, v in vars(spec).items() if v is not None}}
    check_job(job)
    print_header(resolved, None, as_json, verbose)
    if dry_run:
        return
    doc = run_bound(job)
    if as_json:
        emit_json({"config": resolved, **doc})
        return
    b = doc["bound"]
    if "answer" in doc:
        if solve == "max-prune":
            a = doc["answer"]
            console.print(f"[bold]largest {a['level_name']}[/bold] with ε(δ={delta:g}) ≤ {eps:g}: {a['level']:.6g}")
        else:
            console.print(f"[bold]smallest hidden width[/bold] with ε(δ={delta:g}) ≤ {eps:g}: "
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
