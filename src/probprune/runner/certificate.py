"""Make and check certificates: the gap sandwich of a pruned network, recomputed from its weights.

``make_certificate`` turns a prune outcome into a certificate document (schema:
``probprune/certificate.schema.json``): the empirical lower bound and the certified upper bound on
the gap ``sup_{‖x‖₂≤r} ‖f(x) − F(x)‖₂`` (:func:`probprune.bounds.sandwich`), the probabilistic
bound ε(δ) when the target was sampled from a law (``docs/theory.md``), per-layer prune_fraction,
seeds, file digests and versions.

``check_certificate`` recomputes the certified upper bound from the weights — the pruned file,
and the target file or (for a sampled target) the target re-sampled from the recorded law and
seed — and confirms the certificate or rejects it with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from probprune.bounds import NormMethod, certified_gap_bound
from probprune.bounds.probabilistic import probabilistic_bound
from probprune.config import GapSpec, LawSpec, NetSpec, ProbPruneError, parse_arch, parse_law
from probprune.nets import Net
from probprune.rng import derive_seed, make_generator
from probprune.runner.gap import gap_sandwich
from probprune.runner.prune import PruneJob, PruneOutcome, load_net
from probprune.sampling import sample_net
from probprune.store import file_sha256

__all__ = ["CheckOutcome", "check_certificate", "file_sha256", "make_certificate"]

RTOL = 1e-6


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0+unknown"


def _zeros(net: Net) -> list[int]:
    return [int((w == 0).sum()) for w in net.weights]


def _job_hash(resolved: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _norm(n: Any) -> dict[str, Any]:
    return {"value": float(n.value), "exact": bool(n.exact), "method": str(n.method)}


def make_certificate(outcome: PruneOutcome, job: PruneJob, *, gap: GapSpec | None = None,
                     delta: float | None = None, norm_method: NormMethod = "auto") -> dict[str, Any]:
    """The certificate document of one prune job (``report.certificate.write_certificate`` validates and writes it).

    Args:
        outcome: what :func:`~probprune.runner.run_prune` returned (single networks, no trial dim).
        job: the job that produced it (arch, law, seed, files).
        gap: estimator budget and radius r of the sandwich (default ``GapSpec()``: r = 1).
        delta: failure probability δ of the probabilistic bound ε(δ); used only with a law
            (default 0.05 when the target was sampled).
        norm_method: operator-norm method of the certified bound.

    Returns:
        The certificate as plain JSON data.

    Raises:
        ProbPruneError: an ensemble outcome, or bad ``delta``.
    """
    if outcome.target.n_trials is not None:
        raise ProbPruneError(f"n_trials={outcome.target.n_trials!r}: a certificate covers one network, not an ensemble")
    g = gap or GapSpec()
    sw = gap_sandwich(outcome.target, outcome.pruned, g, job.seed, norm_method)
    spec, pr = job.net, job.prune
    prob: dict[str, Any] | None = None
    if job.law is not None:
        d = 0.05 if delta is None else delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d < 1.0:
            raise ProbPruneError(f"delta={d!r}: must be in (0, 1)")
        try:
            b = probabilistic_bound(spec, job.law, pr, d, radius=g.radius)
            prob = {"delta": d, "eps": float(b.eps), "theorem": b.theorem,
                    "note": "P(gap > eps) <= delta over the draw of the target (and random masks)"}
        except ProbPruneError as e:  # an assumption of the theorems fails: say which, give no ε
            prob = {"delta": d, "eps": None, "theorem": None, "note": f"not applicable: {e}"}
    stats = outcome.stats.to_dict()
    zeros = _zeros(outcome.pruned.to(device="cpu"))
    layers = [{"name": r["name"], "size": int(r["size"]), "pruned": int(r["pruned"]),
               "prune_fraction": float(r["sparsity"]), "zeros": z, "threshold": r["threshold"]}
              for r, z in zip(stats["layers"], zeros)]
    level_name = pr.level_name or pr.schedule_field()
    resolved = {"arch": spec.to_arch(), "activation": spec.activation, "bias": spec.bias,
                "law": None if job.law is None else job.law.to_text(), "weights": job.weights,
                "seed": job.seed, "prune": {k: v for k, v in vars(pr).items() if v is not None},
                "gap": vars(g), "delta": None if prob is None else prob["delta"], "norm_method": norm_method}
    upper = float(sw.upper)
    lower = float(sw.lower)
    ratio = float(sw.ratio)
    doc: dict[str, Any] = {
        "format": "probprune-certificate/1",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "arch": spec.to_arch(), "activation": spec.activation, "bias": spec.bias,
        "law": None if job.law is None else job.law.to_text(),
        "target": {"source": "file" if job.weights is not None else "sampled",
                   "path": job.weights if job.weights is not None else job.save_target,
                   "sha256": file_sha256(job.weights) if job.weights is not None else
                   (file_sha256(job.save_target) if job.save_target is not None else None)},
        "pruned": {"path": job.out, "sha256": None if job.out is None else file_sha256(job.out)},
        "prune": {"method": pr.method, "scope": pr.scope, "level_name": level_name,
                  "level_value": float(getattr(pr, level_name)), "rescale": bool(pr.rescale)},
        "layers": layers,
        "total": {"size": int(stats["total"]["size"]), "pruned": int(stats["total"]["pruned"]),
                  "prune_fraction": float(stats["total"]["sparsity"])},
        "gap": {"radius": g.radius, "lower": lower, "upper": upper, "ratio": ratio if math.isfinite(ratio) else None,
                "exact_norms": bool(sw.exact_norms), "n_exact": int(sw.n_exact), "n_norms": int(sw.n_norms),
                "n_evals": int(sw.n_evals), "norm_method": norm_method,
                "layers": [{"name": t.name, "norm_target": _norm(t.norm_target), "norm_pruned": _norm(t.norm_pruned),
                            "norm_diff": _norm(t.norm_diff), "error": float(t.error)} for t in sw.bound.terms]},
        "probabilistic": prob,
        "seeds": {"seed": int(job.seed)},
        "config_hash": _job_hash(resolved),
        "versions": {"probprune": _v("probprune"), "torch": torch.__version__, "python": sys.version.split()[0]},
        "device": str(job.device),
    }
    return doc


@dataclass(frozen=True)
class CheckOutcome:
    """A confirmed certificate: the recomputed numbers beside the certified ones.

    Attributes:
        upper: certified upper bound recomputed from the weights.
        certified: the certificate's upper bound.
        radius: r.
        target_source: ``file`` (``--target``) or ``resampled`` (law + seed).
        notes: remarks that do not reject (e.g. a file digest differs but the numbers agree).
    """

    upper: float
    certified: float
    radius: float
    target_source: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"confirmed": True, "upper": self.upper, "certified": self.certified, "radius": self.radius,
                "target_source": self.target_source, "notes": list(self.notes)}


def _resample_target(spec: NetSpec, law: LawSpec, seed: int) -> Net:
    # the derivation of ``run_prune`` for a sampled target (a test pins the two together)
    g = make_generator(derive_seed("prune", seed, "weights"), "cpu")
    return sample_net(spec, law, g, device="cpu")


def check_certificate(doc: Mapping[str, Any], weights: str | Path, target: str | Path | None = None,
                      rtol: float = RTOL, where: str = "certificate") -> CheckOutcome:
    """Recompute the certified upper bound from the weights and confirm the certificate, or reject it.

    Args:
        doc: the certificate, already validated against the schema
            (``report.certificate.read_certificate``).
        weights: the pruned network f (.safetensors).
        target: the target F (.safetensors); may be left out when the certificate's target was
            sampled (it is re-sampled from the recorded law and seed).
        rtol: relative tolerance between recomputed and certified upper bound.

    Raises:
        ProbPruneError: unreadable weights, or numbers that do not match the weights (the message
            says which).
    """
    spec = parse_arch(doc["arch"], activation=doc["activation"], bias=doc["bias"])
    pruned = load_net(spec, str(weights))
    notes: list[str] = []
    if target is not None:
        want = doc["target"]["sha256"]
        if want is not None and file_sha256(target) != want:
            raise ProbPruneError(f"{where}: rejected: target {str(target)!r} is not the certified target "
                                 f"(sha256 {file_sha256(target)[:12]}… ≠ {want[:12]}…)")
        tnet = load_net(spec, str(target))
        source = "file"
    elif doc["target"]["source"] == "sampled" and doc["law"] is not None:
        tnet = _resample_target(spec, parse_law(doc["law"]), int(doc["seeds"]["seed"]))
        source = "resampled"
    else:
        raise ProbPruneError(f"{where}: the certified target is a file ({doc['target']['path']!r}); "
                             "give it with --target FILE")
    if doc["pruned"]["sha256"] is not None and file_sha256(weights) != doc["pruned"]["sha256"]:
        notes.append(f"{weights} differs byte-wise from the certified file; its numbers were checked instead")
    zeros = _zeros(pruned)
    for layer, z in zip(doc["layers"], zeros):
        if layer["zeros"] != z:
            raise ProbPruneError(f"{where}: rejected: layer {layer['name']} of {str(weights)!r} has {z} zero weights, "
                                 f"the certificate says {layer['zeros']}")
    if len(doc["layers"]) != len(zeros):
        raise ProbPruneError(f"{where}: rejected: {len(doc['layers'])} layers certified, the weights have {len(zeros)}")
    # the pruned net must be the target with weights removed: every kept weight equals the target's
    for name, wt, wp in zip(spec.layer_names(), tnet.weights, pruned.weights):
        moved = (wp != 0) & (wp != wt)
        if bool(moved.any()) and not doc["prune"]["rescale"]:
            raise ProbPruneError(f"{where}: rejected: {int(moved.sum())} kept weights of layer {name} differ from "
                                 "the target's (not a pruned copy of this target)")
    radius = float(doc["gap"]["radius"])
    with torch.no_grad():
        bound = certified_gap_bound(tnet.to(dtype=torch.float64), pruned.to(dtype=torch.float64), radius,
                                    doc["gap"]["norm_method"])
    upper = float(bound.value)
    certified = float(doc["gap"]["upper"])
    if not math.isclose(upper, certified, rel_tol=rtol, abs_tol=1e-12):
        raise ProbPruneError(f"{where}: rejected: the certified upper bound recomputed from the weights is {upper!r}, "
                             f"the certificate says {certified!r} (relative tolerance {rtol:g})")
    if doc["gap"]["lower"] > upper * (1 + rtol):
        raise ProbPruneError(f"{where}: rejected: its lower bound {doc['gap']['lower']!r} exceeds the recomputed "
                             f"upper bound {upper!r}")
    return CheckOutcome(upper, certified, radius, source, tuple(notes))

