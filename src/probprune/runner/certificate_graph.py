"""Certificates of ONNX models read as graphs (format ``probprune-certificate/4``, ``model: graph``): make, check.

:func:`make_graph_certificate` turns a graph prune (:func:`~probprune.runner.graph.run_graph_prune`, written with
:func:`~probprune.runner.graph.write_graph`) into a certificate document (schema
``probprune/certificate4.schema.json``): the upper side is :func:`~probprune.bounds.graph.certified_graph_gap`
(its per-node terms and its assumptions: it covers both graphs evaluated in **float64**), the lower side the gap
``‖f(x*) − F(x*)‖₂`` (float64) at a witness x* found by :func:`~probprune.bounds.graph.search_graph_gap`; the model
kind (``graph``), the content digests of the two ONNX files and of the graphs' parameters (float64, as the bound
used them), the BatchNorm statement (a BatchNormalization after a Conv/Gemm is folded in float64 when read, and
pruning ranks and masks the **folded** weights: pruned after folding), per-tensor sparsity, seed, versions.

:func:`check_graph_certificate` re-derives it from the two files: their digests; the graphs read again (structure,
parameter digests, BatchNormalization count); the recorded pruning re-run on the target, which must give the pruned
file's parameters bit for bit; the statistics; the certified bound and every term, recomputed; the witness (finite,
of the input's size, inside the ball) and the gap at it. Any difference raises
:class:`~probprune.runner.certificate.CertificateRejected` naming the field.

Why a new format: a graph certificate has no chain architecture, and its gap section has other terms. Every object
of the format-3 schema forbids unknown keys and pins ``format`` to ``probprune-certificate/3``, so a format-3
checker refuses a format-4 document instead of confirming the part it understands; relabelled ``/3``, the
``model``/``graph`` keys are refused by that schema.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probprune.bounds.graph import GraphBound, certified_graph_gap
from probprune.config import ExecutionPolicy, GapSpec, ProbPruneError, PruneSpec, config_hash
from probprune.nets.graph import Graph
from probprune.nets.onnx_graph import load_onnx_graph
from probprune.rng import derive_seed
from probprune.runner.certificate import RTOL, CertificateRejected, CheckOutcome
from probprune.runner.certificate import _Checker as Checker
from probprune.runner.certificate import _ratio as ratio
from probprune.runner.certificate import _versions as versions
from probprune.runner.graph import (
    GraphModel,
    GraphPruneOutcome,
    graph_fallback,
    load_pruned_graph,
    run_graph_prune,
)
from probprune.store import file_sha256

__all__ = ["BATCHNORM_STATEMENT", "GRAPH_FORMAT", "check_graph_certificate", "graph_params_sha256",
           "make_graph_certificate", "read_graph_model"]

GRAPH_FORMAT = "probprune-certificate/4"
"""The format of graph certificates (``probprune/certificate4.schema.json``)."""

BATCHNORM_STATEMENT = ("a BatchNormalization directly after a Conv/Gemm that feeds nothing else is folded into it in "
                       "float64 when the model is read; pruning ranks and masks the folded weights (pruned after "
                       "folding) and the bound is about the folded graphs; any other BatchNormalization is a "
                       "per-channel affine node, not pruned")


def graph_params_sha256(graph: Graph) -> str:
    """SHA-256 of a graph's parameters as the bound uses them: name, shape and float64 bytes, in node order."""
    h = hashlib.sha256()
    for name, t in graph.parameters().items():
        h.update(name.encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
        h.update(t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def read_graph_model(name: str, path: str | Path) -> GraphModel:
    """An ONNX file read as a graph (any ONNX model the graph reader reads exactly, chain or not).

    Raises:
        ProbPruneError: naming ``name``: not ``.onnx``, a missing, broken or unsupported file.
    """
    p = str(path)
    if not p.lower().endswith(".onnx") or not Path(p).is_file():
        raise ProbPruneError(f"{name}={p!r}: a graph certificate is about ONNX files; give an existing .onnx file")
    try:
        graph, info = load_onnx_graph(p)
    except ProbPruneError as e:
        raise graph_fallback(name, p, e) from None
    return GraphModel(graph, info, p)


def _batchnorm_nodes(path: str) -> int:
    import onnx  # the file was read by load_onnx_graph already: it parses

    model = onnx.load(path, load_external_data=False)
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def _graph_section(model: GraphModel, pruned: Graph) -> dict[str, Any]:
    """The ``graph`` section, re-derivable from the two files (shared by maker and checker)."""
    g = model.graph
    return {"input_name": model.info.input_name, "output_name": model.info.output_name,
            "input_shape": list(g.input_shape), "output_shape": list(g.output_shape), "opset": int(model.info.opset),
            "n_nodes": len(g.nodes), "ops": sorted({n.op for n in g.nodes}),
            "params_sha256": {"target": graph_params_sha256(g), "pruned": graph_params_sha256(pruned)},
            "batchnorm": {"nodes": _batchnorm_nodes(model.path), "pruned": "after folding",
                          "statement": BATCHNORM_STATEMENT}}


def _gap_at(target: Graph, pruned: Graph, x: Tensor) -> float:
    """``‖f(x) − F(x)‖₂`` of one input in float64 on the CPU (``x`` flat float64)."""
    t64, p64 = target.to(torch.float64, "cpu"), pruned.to(torch.float64, "cpu")
    xin = x.reshape(1, *target.input_shape)
    with torch.no_grad():
        return float((p64(xin) - t64(xin)).reshape(-1).norm())


def _witness(x: Tensor, radius: float) -> Tensor:
    """The search's maximiser, flat float64, pulled inside ``‖x‖₂ ≤ r`` (as float64 computes the norm)."""
    w = x.detach().to(device="cpu", dtype=torch.float64).reshape(-1).clone()
    n = float(w.norm())
    if n > radius:
        w = w * (radius / n)
    while float(w.norm()) > radius:  # rounding of the projection: pull it inside, a few ulps at a time
        w = w * (1.0 - 2.0 ** -50)
    return w


def _gap_numbers(bound: GraphBound, lower: float) -> dict[str, Any]:
    """The gap section's re-derivable numbers (shared by maker and checker)."""
    upper = float(bound.value)
    return {"lower": lower, "upper": upper, "ratio": ratio(upper, lower),
            "rounding_margin": float(bound.rounding_margin), "assumptions": list(bound.assumptions),
            "terms": [{"name": t.name, "op": t.op, "reach_target": float(t.reach_target),
                       "reach_pruned": float(t.reach_pruned), "error": float(t.error),
                       "fwd_target": float(t.fwd_target), "fwd_pruned": float(t.fwd_pruned)} for t in bound.terms]}


def _zeros(graph: Graph, names: list[str]) -> list[int]:
    params = graph.parameters()
    return [int((params[n] == 0).sum()) for n in names]


def _stats_sections(stats: Mapping[str, Any], zeros: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    layers = [{"name": r["name"], "size": int(r["size"]), "pruned": int(r["pruned"]),
               "sparsity": float(r["sparsity"]), "zeros": int(z), "threshold": None}
              for r, z in zip(stats["layers"], zeros)]
    t = stats["total"]
    return layers, {"size": int(t["size"]), "pruned": int(t["pruned"]), "sparsity": float(t["sparsity"])}


def _resolved(path: str, seed: int, prune: Mapping[str, Any], radius: float, n_restarts: int,
              n_steps: int) -> dict[str, Any]:
    # the settings the config hash covers (the checker rebuilds this from the document)
    return {"model": "graph", "weights": path, "seed": seed, "prune": dict(prune),
            "gap": {"radius": radius, "n_restarts": n_restarts, "n_steps": n_steps}}


def make_graph_certificate(model: GraphModel, outcome: GraphPruneOutcome, spec: PruneSpec, out: str,
                           gap: GapSpec | None = None) -> dict[str, Any]:
    """The certificate document of a graph prune whose pruned graph was written to ``out``.

    Args:
        model: the target (read from ``model.path``).
        outcome: what :func:`~probprune.runner.graph.run_graph_prune` returned for ``spec`` (its seed is used).
        spec: the pruning rule (method, scope, ``prune_fraction``).
        out: the written pruned ONNX file (its digest is recorded; it is read back and must be ``outcome.pruned``).
        gap: radius and search budget (``n_restarts``, ``n_steps``) of the sandwich (default r = 1).

    Returns:
        The certificate as plain JSON data (no timestamp).

    Raises:
        ProbPruneError: the written file is not the pruned graph, or the bound/search refuse.
    """
    from probprune.bounds.graph import graph_search_budget, search_graph_gap
    from probprune.runner.execution import execution

    g = gap or GapSpec()
    if g.n_restarts < 1:
        raise ProbPruneError(f"gap.n_restarts={g.n_restarts!r}: the graph search needs at least 1 restart")
    pruned = load_pruned_graph(model, out)
    if graph_params_sha256(pruned) != graph_params_sha256(outcome.pruned):
        raise ProbPruneError(f"out={out!r}: the written file does not hold the pruned graph")
    bound = certified_graph_gap(model.graph, pruned, radius=g.radius)
    with execution(ExecutionPolicy(threads=1)):  # as graph_sandwich: small convolutions, one thread
        _, x = search_graph_gap(model.graph, pruned, radius=g.radius, n_restarts=g.n_restarts, n_steps=g.n_steps,
                                seed=derive_seed("gap", outcome.seed, "estimator"))
    witness = _witness(x, g.radius)
    names = [r["name"] for r in outcome.stats["layers"]]
    layers, total = _stats_sections(outcome.stats, _zeros(pruned, names))
    prune = {"method": spec.method, "scope": spec.scope, "level_name": "prune_fraction",
             "level_value": float(spec.prune_fraction or 0.0), "rescale": False}
    return {
        "format": GRAPH_FORMAT, "model": "graph",
        "graph": _graph_section(model, pruned),
        "target": {"source": "file", "path": model.path, "sha256": file_sha256(model.path)},
        "pruned": {"path": out, "sha256": file_sha256(out)},
        "prune": prune, "layers": layers, "total": total,
        "gap": {"radius": float(g.radius), **_gap_numbers(bound, _gap_at(model.graph, pruned, witness)),
                "witness": [float(v) for v in witness.tolist()],
                "estimator": {"n_restarts": g.n_restarts, "n_steps": g.n_steps,
                              "n_evals": graph_search_budget(g.n_restarts, g.n_steps).n_evals + 1}},
        "seeds": {"seed": int(outcome.seed)},
        "config_hash": config_hash(_resolved(model.path, outcome.seed, prune, float(g.radius), g.n_restarts,
                                             g.n_steps), kind="certificate"),
        "versions": versions(), "device": "cpu",
    }


# ---------------------------------------------------------------------------- the checker


def _check_digest(c: Checker, field: str, stated: str, path: str, what: str) -> None:
    got = file_sha256(path)
    if got != stated:
        raise CertificateRejected(f"{c.where}: rejected: field {field}: {path!r} is not the certified {what} "
                                  f"(stated {stated}, recomputed {got})", field, stated, got)
    c.verified.append(field)


def _check_pruning(doc: Mapping[str, Any], model: GraphModel, pruned: Graph, c: Checker) -> GraphPruneOutcome:
    """Re-run the recorded pruning on the target; the pruned file's parameters must come out bit for bit."""
    p = doc["prune"]
    seed = int(doc["seeds"]["seed"])
    spec = PruneSpec(method=p["method"], scope=p["scope"], prune_fraction=float(p["level_value"]))
    res = run_graph_prune(model, spec, seed)
    got, want = res.pruned.parameters(), pruned.parameters()
    diff = [(n, int((got[n] != want[n]).sum()), got[n].numel()) for n in got if not torch.equal(got[n], want[n])]
    if diff:
        for key, alt in (("method", "random" if p["method"] == "magnitude" else "magnitude"),
                         ("scope", "global" if p["scope"] == "layerwise" else "layerwise")):
            other = run_graph_prune(model, PruneSpec(**{**{"method": p["method"], "scope": p["scope"]}, key: alt},
                                                     prune_fraction=float(p["level_value"])), seed)
            if all(torch.equal(v, want[n]) for n, v in other.pruned.parameters().items()):
                c.reject(f"prune.{key}", p[key], alt, " (the pruned file is the target pruned with this setting)")
        name, n, size = diff[0]
        raise CertificateRejected(
            f"{c.where}: rejected: field prune: re-running the recorded pruning (prune.method={p['method']!r}, "
            f"prune.scope={p['scope']!r}, prune.level_value={p['level_value']!r}, seeds.seed={seed!r}) on the "
            f"target does not give the pruned file's parameters ({name}: {n} of {size} entries differ)",
            "prune", dict(p), f"{name}: {n} of {size} entries differ")
    c.verified += ["prune", "model", "device"]
    if p["method"] == "random":
        c.verified.append("seeds.seed")
    else:
        c.not_verified.append(("seeds.seed", "used only by the search for the witness (magnitude masks)"))
    return res


def _check_gap(doc: Mapping[str, Any], target: Graph, pruned: Graph, c: Checker) -> tuple[float, float]:
    """The certified bound and its terms recomputed from the files; the witness re-evaluated."""
    g = doc["gap"]
    radius = float(g["radius"])
    bound = certified_graph_gap(target, pruned, radius=radius)
    upper = float(bound.value)
    if not math.isclose(float(g["upper"]), upper, rel_tol=c.rtol, abs_tol=0.0):
        c.reject("gap.upper", g["upper"], upper, " (certified_graph_gap recomputed from the two files)")
    x = c.witness(g, math.prod(target.input_shape), radius)
    lower = _gap_at(target, pruned, x)
    c.same("gap", {k: g[k] for k in ("lower", "upper", "ratio", "rounding_margin", "assumptions", "terms")},
           _gap_numbers(bound, lower), " (re-derived from the two files and the witness)")
    c.verified.append("gap.radius")
    c.not_verified.append(("gap.estimator", "the search budget that found the witness; the witness itself proves "
                                            "the lower bound"))
    return upper, lower


def check_graph_certificate(doc: Mapping[str, Any], weights: str | Path, pruned: str | Path, rtol: float = RTOL,
                            where: str = "certificate") -> CheckOutcome:
    """Re-derive every number of a graph certificate from the target and pruned ONNX files; confirm or reject.

    Args:
        doc: the certificate, validated against its schema (``report.certificate.read_certificate``).
        weights: the target F (.onnx).
        pruned: the pruned model f (.onnx).
        rtol: relative tolerance between stated and recomputed floats.
        where: prefix of error messages.

    Raises:
        CertificateRejected: a stated value differs from the re-derived one (names the field, both values).
        ProbPruneError: a file that is not an ONNX graph of the target's structure.
    """
    c = Checker(where, rtol)
    _check_digest(c, "target.sha256", doc["target"]["sha256"], str(weights), "target")
    _check_digest(c, "pruned.sha256", doc["pruned"]["sha256"], str(pruned), "pruned model")
    model = read_graph_model("weights", weights)
    pgraph = load_pruned_graph(model, str(pruned))
    c.same("graph", dict(doc["graph"]), _graph_section(model, pgraph), " (read from the two files)")
    res = _check_pruning(doc, model, pgraph, c)
    names = [r["name"] for r in res.stats["layers"]]
    layers, total = _stats_sections(res.stats, _zeros(pgraph, names))
    c.same("layers", list(doc["layers"]), layers)
    c.same("total", dict(doc["total"]), total)
    upper, lower = _check_gap(doc, model.graph, pgraph, c)
    g, est = doc["gap"], doc["gap"]["estimator"]
    c.same("config_hash", doc["config_hash"], config_hash(_resolved(
        doc["target"]["path"], int(doc["seeds"]["seed"]), doc["prune"], float(g["radius"]), est["n_restarts"],
        est["n_steps"]), kind="certificate"))
    for key in ("target", "pruned"):
        c.not_verified.append((f"{key}.path", "a file name, not a property of the networks"))
    mine = versions()
    if dict(doc["versions"]) == mine:
        c.verified.append("versions")
    else:
        c.not_verified.append(("versions", f"made with {doc['versions']}, checked with {mine}"))
    c.verified += ["format", "target.source"]
    return CheckOutcome(upper=upper, certified=float(g["upper"]), lower=lower, radius=float(g["radius"]),
                        target_source="file", verified=tuple(c.verified), not_verified=tuple(c.not_verified))
