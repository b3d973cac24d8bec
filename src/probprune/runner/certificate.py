"""Make and check certificates: every number of a pruning certificate, re-derived from the weights.

``make_certificate`` turns a prune outcome into a certificate document (schema:
``probprune/certificate.schema.json``, format ``probprune-certificate/3``): the empirical lower
bound on the gap ``sup_{‖x‖₂≤r} ‖f(x) − F(x)‖₂`` together with its **witness** (the input x* in
the ball where it is attained, so one forward pass re-proves it), the certified upper bound with
its per-layer norms, the probabilistic bound ε(δ) when the target was sampled from a law
(``docs/theory.md``), per-layer pruning statistics, the pruning rule, seeds, file digests and
versions. The document holds no timestamp: the same command and seed give the same bytes.

``check_certificate`` re-derives what the certificate states: it re-runs the recorded pruning on
the target (the ``--target`` file, or the target re-sampled from the recorded law and seed) and
requires the pruned weights bit for bit, recounts the statistics, recomputes the certified bound
and its norms, re-evaluates the gap at the witness, recomputes ε(δ) with the function that made
it, the config hash and the digests. Any mismatch raises :class:`CertificateRejected` naming the
field, the stated and the recomputed value. What cannot be re-derived (the search budget of the
lower bound, file paths, a seed nothing random used, differing versions) is listed as not
verified; ``confirmed`` covers only the verified fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn, cast

import torch
from torch import Tensor

from probprune.bounds.certified import CertifiedBound, certified_gap_bound
from probprune.bounds.norms import NormMethod
from probprune.bounds.probabilistic import probabilistic_bound
from probprune.config import (
    GapSpec,
    LawSpec,
    NetSpec,
    ProbPruneError,
    PruneJob,
    PruneSpec,
    config_hash,
    package_version,
    parse_arch,
    parse_law,
)
from probprune.masks import MaskStats
from probprune.nets import Net
from probprune.runner.gap import gap_sandwich
from probprune.runner.prune import PruneOutcome, load_net, run_prune, save_net
from probprune.store import file_sha256

__all__ = ["FORMAT", "CertificateRejected", "CheckOutcome", "check_certificate", "file_sha256", "make_certificate"]

FORMAT: str = json.loads(files("probprune").joinpath("certificate.schema.json").read_text(encoding="utf-8"))[
    "properties"]["format"]["const"]
"""The certificate format, as the schema states it (``probprune-certificate/3``)."""
RTOL = 1e-9
"""Relative tolerance between a stated and a recomputed float: maker and checker run the same
float64 computation on the CPU, so genuine certificates agree to rounding (~1e-15)."""

_PROB_NOTE = "P(gap > eps) <= delta over the draw of the target (and random masks)"


class CertificateRejected(ProbPruneError):
    """A certificate whose stated value differs from the value re-derived from the weights.

    Attributes:
        field: the certificate field (dotted path, e.g. ``gap.layers.1.norm_diff.value``).
        stated: the certificate's value.
        recomputed: the value re-derived by the checker.
    """

    def __init__(self, message: str, field: str, stated: Any, recomputed: Any) -> None:
        super().__init__(message)
        self.field = field
        self.stated = stated
        self.recomputed = recomputed

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``certificate check --json`` prints it before exiting with code 2)."""
        return {"confirmed": False, "error": str(self), "field": self.field, "stated": _plain(self.stated),
                "recomputed": _plain(self.recomputed)}


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.loads(json.dumps(v, default=str))


def _versions() -> dict[str, str]:
    return {"probprune": package_version("probprune"), "torch": torch.__version__, "python": sys.version.split()[0]}


def _resolved(arch: str, activation: str, bias: bool, law: str | None, weights: str | None, seed: int,
              pr: PruneSpec, g: GapSpec, delta: float | None, norm_method: str) -> dict[str, Any]:
    # the settings the config hash covers (the checker rebuilds this from the document)
    return {"arch": arch, "activation": activation, "bias": bias, "law": law, "weights": weights, "seed": seed,
            "prune": {k: v for k, v in vars(pr).items() if v is not None}, "gap": vars(g), "delta": delta,
            "norm_method": norm_method}


def _norm(n: Any) -> dict[str, Any]:
    return {"value": float(n.value), "exact": bool(n.exact), "method": str(n.method)}


def _zeros(net: Net) -> list[int]:
    return [int((w == 0).sum()) for w in net.weights]


def _input_shape(spec: NetSpec) -> tuple[int, ...]:
    if spec.kind == "fcn":
        return (int(spec.widths[0]),)
    return tuple(int(s) for s in spec.input_shape)  # type: ignore[union-attr]


def _forward_dtype(target: Net, pruned: Net) -> torch.dtype:
    """The dtype the user's networks run in: the less precise of the two weight dtypes."""
    return torch.float32 if torch.float32 in (target.dtype, pruned.dtype) else torch.float64


def _cpu64(net: Net) -> Net:
    return net.to(device="cpu", dtype=torch.float64)


def _gap_at(t64: Net, p64: Net, x: torch.Tensor) -> float:
    """``‖f(x) − F(x)‖₂`` in float64 on the CPU at one input ``x`` (flat, float64); no projection."""
    xin = x.reshape(1, *_input_shape(t64.spec))
    with torch.no_grad():
        out_p = cast(torch.Tensor, p64.forward(xin))
        out_t = cast(torch.Tensor, t64.forward(xin))
    return float((out_p - out_t).reshape(-1).norm())


def _bound64(t64: Net, p64: Net, radius: float, norm_method: NormMethod, forward_dtype: torch.dtype) -> CertifiedBound:
    """The certified bound computed in float64 on the CPU for networks the user runs in ``forward_dtype``.

    The float64 copies are exact, but the user evaluates the networks in their own weight dtype
    (float32 usually), so the bound's rounding margin is the one of that dtype.
    """
    with torch.no_grad():
        return certified_gap_bound(t64, p64, radius=radius, norm_method=norm_method, forward_dtype=forward_dtype)


def _witness(x: torch.Tensor, radius: float) -> torch.Tensor:
    """The estimator's maximiser as a flat float64 CPU vector with ``‖x‖₂ ≤ r`` in float64."""
    w = x.detach().to(device="cpu", dtype=torch.float64).reshape(-1).clone()
    n = float(w.norm())
    if n > radius:
        w = w * (radius / n)
    shrink = 1.0
    while float(w.norm()) > radius:  # rounding of the projection: pull it inside, a few ulps at a time
        shrink *= 1.0 - 2.0 ** -50
        w = w * shrink
    return w


def _ratio(upper: float, lower: float) -> float | None:
    if upper == 0.0:
        return 1.0
    if lower == 0.0:
        return None
    r = upper / lower
    return r if math.isfinite(r) else None


def _gap_numbers(bound: CertifiedBound, lower: float) -> dict[str, Any]:
    """The gap section's re-derivable numbers (shared by maker and checker)."""
    upper = float(bound.value)
    return {"lower": lower, "upper": upper, "ratio": _ratio(upper, lower), "exact_norms": bool(bound.exact),
            "n_exact": int(bound.n_exact), "n_norms": int(bound.n_norms),
            "layers": [{"name": t.name, "norm_target": _norm(t.norm_target), "norm_pruned": _norm(t.norm_pruned),
                        "norm_diff": _norm(t.norm_diff), "error": float(t.error)} for t in bound.terms]}


def _probabilistic(spec: NetSpec, law: LawSpec, pr: PruneSpec, delta: float, radius: float) -> dict[str, Any]:
    """The probabilistic section (shared by maker and checker): ε(δ) or the reason it does not apply."""
    try:
        b = probabilistic_bound(spec, law, pr, delta, radius=radius)
    except ProbPruneError as e:  # an assumption of the theorems fails: say which, give no ε
        return {"delta": delta, "eps": None, "theorem": None, "note": f"not applicable: {e}"}
    return {"delta": delta, "eps": float(b.value), "theorem": b.theorem, "note": _PROB_NOTE}


def _stats_sections(stats: MaskStats, zeros: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``layers`` and ``total`` of a certificate (shared by maker and checker)."""
    d = stats.to_dict()
    layers = [{"name": r["name"], "size": int(r["size"]), "pruned": int(r["pruned"]),
               "sparsity": float(r["sparsity"]), "zeros": int(z),
               "threshold": None if r["threshold"] is None else float(r["threshold"])}
              for r, z in zip(d["layers"], zeros)]
    total = {"size": int(d["total"]["size"]), "pruned": int(d["total"]["pruned"]),
             "sparsity": float(d["total"]["sparsity"])}
    return layers, total


def make_certificate(outcome: PruneOutcome, job: PruneJob, *, gap: GapSpec | None = None,
                     delta: float | None = None, norm_method: NormMethod = "auto") -> dict[str, Any]:
    """The certificate document of one prune job (``report.certificate.write_certificate`` validates and writes it).

    The lower bound is ``‖f(x*) − F(x*)‖₂`` evaluated in float64 on the CPU at the stored witness
    x* (the estimator's maximiser, ``‖x*‖₂ ≤ r``); the upper bound and its norms are computed in
    float64 on the CPU — the computations :func:`check_certificate` repeats.

    Args:
        outcome: what :func:`~probprune.runner.run_prune` returned (single networks, no trial dim).
        job: the job that produced it (arch, law, seed, files).
        gap: estimator budget and radius r of the sandwich (default ``GapSpec()``: r = 1).
        delta: failure probability δ of the probabilistic bound ε(δ); used only with a law
            (default 0.05 when a law is given).
        norm_method: operator-norm method of the certified bound.

    Returns:
        The certificate as plain JSON data (no timestamp: deterministic given the job).

    Raises:
        ProbPruneError: an ensemble outcome, or bad ``delta``.
    """
    if outcome.target.n_trials is not None:
        raise ProbPruneError(f"n_trials={outcome.target.n_trials!r}: a certificate covers one network, not an ensemble")
    g = gap or GapSpec()
    spec, pr = job.net, job.prune
    d: float | None = None
    if job.law is not None:
        d = 0.05 if delta is None else delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d < 1.0:
            raise ProbPruneError(f"delta={d!r}: must be in (0, 1)")
        d = float(d)
    t64, p64 = _cpu64(outcome.target), _cpu64(outcome.pruned)
    bound = _bound64(t64, p64, g.radius, norm_method, _forward_dtype(outcome.target, outcome.pruned))
    sw = gap_sandwich(outcome.target, outcome.pruned, g, job.seed, norm_method, bound=bound)  # the bound once
    witness = _witness(sw.x, g.radius)
    numbers = _gap_numbers(bound, _gap_at(t64, p64, witness))
    prob = None if job.law is None or d is None else _probabilistic(spec, job.law, pr, d, g.radius)
    layers, total = _stats_sections(outcome.stats, _zeros(outcome.pruned.to(device="cpu")))
    level_name = pr.level_name or pr.schedule_field()
    law_text = None if job.law is None else job.law.to_text()
    target_sha = file_sha256(job.weights) if job.weights is not None else \
        (file_sha256(job.save_target) if job.save_target is not None else None)
    resolved = _resolved(spec.to_arch(), spec.activation, spec.bias, law_text, job.weights, job.seed, pr, g, d,
                         norm_method)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "arch": spec.to_arch(), "activation": spec.activation, "bias": spec.bias,
        "law": law_text,
        "target": {"source": "file" if job.weights is not None else "sampled",
                   "path": job.weights if job.weights is not None else job.save_target, "sha256": target_sha},
        "pruned": {"path": job.out, "sha256": None if job.out is None else file_sha256(job.out)},
        "prune": {"method": pr.method, "scope": pr.scope, "level_name": level_name,
                  "level_value": float(getattr(pr, level_name)), "rescale": bool(pr.rescale)},
        "layers": layers,
        "total": total,
        "gap": {"radius": g.radius, **numbers, "norm_method": norm_method,
                "witness": [float(v) for v in witness.tolist()],
                "estimator": {"n_points": g.n_points, "n_restarts": g.n_restarts, "n_steps": g.n_steps,
                              "step_size": g.step_size, "n_evals": int(sw.n_evals)}},
        "probabilistic": prob,
        "seeds": {"seed": int(job.seed)},
        "config_hash": config_hash(resolved, kind="certificate"),
        "versions": _versions(),
        "device": str(job.device),
    }
    return doc


# ---------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class CheckOutcome:
    """A confirmed certificate: what was re-derived, what could not be, and the key numbers.

    Attributes:
        upper: certified upper bound recomputed from the weights.
        certified: the certificate's upper bound.
        lower: the gap re-evaluated at the witness (= the certificate's lower bound).
        radius: r.
        target_source: ``file`` (``--target``) or ``resampled`` (law + seed).
        verified: the certificate fields re-derived and found equal (dotted paths).
        not_verified: ``(field, reason)`` for each field that could not be re-derived; the
            confirmation does not cover them.
        notes: remarks that do not reject.
    """

    upper: float
    certified: float
    lower: float
    radius: float
    target_source: str
    verified: tuple[str, ...] = field(default_factory=tuple)
    not_verified: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``confirmed`` covers exactly the ``verified`` fields."""
        return {"confirmed": True, "upper": self.upper, "certified": self.certified, "lower": self.lower,
                "radius": self.radius, "target_source": self.target_source, "verified": list(self.verified),
                "not_verified": [{"field": f, "reason": r} for f, r in self.not_verified],
                "notes": list(self.notes)}


class _Checker:
    """Compares stated values to re-derived ones; records what was verified."""

    def __init__(self, where: str, rtol: float) -> None:
        self.where = where
        self.rtol = rtol
        self.verified: list[str] = []
        self.not_verified: list[tuple[str, str]] = []

    def reject(self, path: str, stated: Any, recomputed: Any, detail: str = "") -> None:
        raise CertificateRejected(f"{self.where}: rejected: field {path}: stated {stated!r}, recomputed "
                                  f"{recomputed!r}{detail}", path, stated, recomputed)

    def witness(self, g: Mapping[str, Any], d_in: int, radius: float) -> Tensor:
        """The gap section's witness as float64 ``[d_in]``: finite, of the input's size and in the ℓ2 ball of
        ``radius`` around 0 (else rejected); recorded as verified."""
        x = torch.tensor(g["witness"], dtype=torch.float64)
        if x.numel() != d_in or not bool(torch.isfinite(x).all()):
            self.reject("gap.witness", f"{x.numel()} entries", f"{d_in} finite entries (the input size)")
        xn = float(x.norm())
        if not xn <= radius:
            raise CertificateRejected(f"{self.where}: rejected: field gap.witness: the witness lies outside the "
                                      f"ball: ‖x‖₂ = {xn!r} > gap.radius = {radius!r}", "gap.witness", xn, radius)
        self.verified.append("gap.witness")
        return x

    def same(self, path: str, stated: Any, expected: Any, detail: str = "") -> None:
        """Require ``stated == expected`` (floats to ``rtol``, recursively); record ``path`` as verified."""
        self._walk(path, stated, expected, detail)
        self.verified.append(path)

    def _walk(self, path: str, stated: Any, expected: Any, detail: str) -> None:
        if isinstance(expected, dict):
            if not isinstance(stated, dict) or set(stated) != set(expected):
                self.reject(path, stated, expected, detail)
            for k in sorted(expected):
                self._walk(f"{path}.{k}", stated[k], expected[k], detail)
        elif isinstance(expected, list):
            if not isinstance(stated, list) or len(stated) != len(expected):
                self.reject(path, stated, expected, detail)
            for i, (s, e) in enumerate(zip(stated, expected)):
                self._walk(f"{path}.{i}", s, e, detail)
        elif isinstance(expected, float) and not isinstance(stated, bool) and isinstance(stated, (int, float)):
            if not math.isclose(float(stated), expected, rel_tol=self.rtol, abs_tol=0.0):
                self.reject(path, stated, expected, detail)
        elif type(stated) is not type(expected) or stated != expected:
            self.reject(path, stated, expected, detail)


def _prune_spec(doc: Mapping[str, Any], c: _Checker) -> PruneSpec:
    p = doc["prune"]
    try:
        return PruneSpec(method=p["method"], scope=p["scope"], rescale=p["rescale"],
                         **{p["level_name"]: p["level_value"]})
    except ProbPruneError as e:
        raise ProbPruneError(f"{c.where}: rejected: field prune: {_rule_text(doc)} is not a valid pruning rule "
                             f"({e})") from None


def _rule_text(doc: Mapping[str, Any]) -> str:
    p = doc["prune"]
    text = (f"prune.method={p['method']!r}, prune.scope={p['scope']!r}, prune.level_name={p['level_name']!r}, "
            f"prune.level_value={p['level_value']!r}, prune.rescale={p['rescale']!r}, "
            f"seeds.seed={doc['seeds']['seed']!r}")
    return text + (f", law={doc['law']!r}" if doc["law"] is not None else "")


def _device_ok(dev: str) -> bool:
    try:
        d = torch.device(dev)
    except (RuntimeError, ValueError):
        return False
    return d.type == "cpu" or (d.type == "cuda" and torch.cuda.is_available())


def _differing(a: Net, b: Net) -> list[tuple[str, int, int]]:
    """``(name, differing entries, size)`` for every tensor of ``a`` that is not bit-equal to ``b``'s."""
    sa, sb = a.to(device="cpu").state_dict(), b.to(device="cpu").state_dict()
    out = []
    for name in sa:
        x, y = sa[name], sb.get(name)
        if y is None or x.shape != y.shape or x.dtype != y.dtype:
            out.append((name, x.numel(), x.numel()))
        elif not torch.equal(x, y):
            out.append((name, int((x != y).sum()), x.numel()))
    return out


def _saved_sha256(net: Net) -> str:
    with tempfile.TemporaryDirectory(prefix="probprune-check-") as d:
        path = str(Path(d) / "target.safetensors")
        save_net(net, path)
        return file_sha256(path)


def _check_target_file(doc: Mapping[str, Any], target: str | Path | None, law: LawSpec | None, c: _Checker) -> str:
    """Where the target comes from: ``resampled`` (law + seed) or ``file`` (``--target``, with the stated digest)."""
    where = c.where
    tsrc = doc["target"]["source"]
    if target is not None:
        want = doc["target"]["sha256"]
        got = file_sha256(target)
        if want is not None and got != want:
            raise CertificateRejected(f"{where}: rejected: field target.sha256: target {str(target)!r} is not the "
                                      f"certified target (stated {want}, recomputed {got})",
                                      "target.sha256", want, got)
        if want is None:
            c.not_verified.append(("target.sha256", "no digest recorded"))
        else:
            c.verified.append("target.sha256")
    if tsrc == "sampled" and law is None:
        raise ProbPruneError(f"{where}: rejected: field law: a sampled target needs a law, the certificate has none")
    if tsrc == "sampled":
        return "resampled"  # re-sampled from law and seed; a --target file must equal it
    if target is not None:
        return "file"
    raise ProbPruneError(f"{where}: the certified target is a file ({doc['target']['path']!r}); "
                         "give it with --target FILE")


def _check_zeros(doc: Mapping[str, Any], pruned: Net, weights: str | Path, c: _Checker) -> list[int]:
    """The zero weights of each layer, counted straight from the pruned file, against ``layers.*.zeros``."""
    zeros = _zeros(pruned)
    if len(doc["layers"]) != len(zeros):
        c.reject("layers", f"{len(doc['layers'])} layers", f"{len(zeros)} layers", f" in {str(weights)!r}")
    for i, (layer, z) in enumerate(zip(doc["layers"], zeros)):
        if layer["zeros"] != z:
            c.reject(f"layers.{i}.zeros", layer["zeros"], z,
                     f" (layer {layer['name']} of {str(weights)!r} has {z} zero weights)")
    return zeros


@dataclass(frozen=True)
class _Rerun:
    """The recorded pruning, ready to re-run on the target (a file, or re-sampled from law and seed)."""

    spec: NetSpec
    law: LawSpec | None
    seed: int
    source: str
    target: str | Path | None
    device: str

    def __call__(self, p: PruneSpec) -> PruneOutcome:
        job = PruneJob(net=self.spec, prune=p, weights=None if self.source == "resampled" else str(self.target),
                       law=self.law, seed=self.seed, device=self.device)
        return run_prune(job)


def _rerun_device(doc: Mapping[str, Any], pr: PruneSpec, source: str, c: _Checker, notes: list[str]) -> str:
    """The recorded device, or the CPU where the re-run does not depend on it (magnitude pruning of a file)."""
    dev = str(doc["device"])
    needs_dev = source == "resampled" or pr.method == "random"
    if not _device_ok(dev):
        if needs_dev:
            raise ProbPruneError(f"{c.where}: device={dev!r}: the certificate was made on {dev}; its sampled target "
                                 "and random masks can be re-derived only there (not available here)")
        notes.append(f"made on device {dev!r}, magnitude pruning of a file target re-run on the CPU")
        dev = "cpu"
    return dev


def _reject_pruning(doc: Mapping[str, Any], pr: PruneSpec, rerun: _Rerun, res: PruneOutcome, pruned: Net,
                    weights: str | Path, zeros: Sequence[int], diff: Sequence[tuple[str, int, int]],
                    c: _Checker) -> NoReturn:
    """Reject a re-run that does not give the pruned weights, naming the forged setting where one change does."""
    alternatives: dict[str, Any] = {"method": ("random" if pr.method == "magnitude" else "magnitude"),
                                    "scope": ("global" if pr.scope == "layerwise" else "layerwise"),
                                    "rescale": not pr.rescale}
    for key, alt in alternatives.items():
        try:
            reproduced = not _differing(rerun(dataclasses.replace(pr, **{key: alt})).pruned, pruned)
        except ProbPruneError:  # the changed setting is not a valid rule here
            continue
        if reproduced:
            c.reject(f"prune.{key}", doc["prune"][key], alt,
                     " (the pruned weights are the target pruned with this setting)")
    name, n, size = diff[0]
    raise CertificateRejected(
        f"{c.where}: rejected: field prune: re-running the recorded pruning ({_rule_text(doc)}) on the "
        f"{'re-sampled ' if rerun.source == 'resampled' else ''}target does not give the pruned weights of "
        f"{str(weights)!r} ({name}: {n} of {size} entries differ; the re-run removes {res.stats.pruned} "
        f"weights, the file has {sum(zeros)} zero weights of {res.stats.size})", "prune", dict(doc["prune"]),
        f"{name}: {n} of {size} entries differ")


def _check_pruning(doc: Mapping[str, Any], pr: PruneSpec, rerun: _Rerun, pruned: Net, weights: str | Path,
                   zeros: Sequence[int], c: _Checker) -> PruneOutcome:
    """Re-run the recorded pruning on the target; require the pruned weights (and a given target) bit for bit."""
    res = rerun(pr)
    if rerun.source == "resampled" and rerun.target is not None:
        tdiff = _differing(res.target, load_net(rerun.spec, str(rerun.target)))
        if tdiff:
            name, n, size = tdiff[0]
            raise CertificateRejected(
                f"{c.where}: rejected: field target: {str(rerun.target)!r} is not the target re-sampled from "
                f"law={doc['law']!r}, seeds.seed={rerun.seed!r} ({name}: {n} of {size} entries differ)",
                "target", str(rerun.target), f"{name}: {n} of {size} entries differ")
        c.verified.append("target")
    diff = _differing(res.pruned, pruned)
    if diff:
        _reject_pruning(doc, pr, rerun, res, pruned, weights, zeros, diff, c)
    c.verified += ["arch", "activation", "bias", "law", "target.source", "prune", "device"]
    if rerun.source == "resampled" or pr.method == "random":
        c.verified.append("seeds.seed")  # the sampled target / the random masks came out bit for bit
    else:
        c.not_verified.append(("seeds.seed", "used only by the search for the witness (no sampling, no random "
                                             "masks)"))
    return res


def _check_gap(doc: Mapping[str, Any], spec: NetSpec, target: Net, pruned: Net, c: _Checker) -> tuple[float, float]:
    """The certified bound and the gap at the witness, in float64 on the CPU as the maker computed them.

    Returns:
        ``(upper, lower)`` recomputed from the weights and the witness.
    """
    g = doc["gap"]
    radius = float(g["radius"])
    t64, p64 = _cpu64(target), _cpu64(pruned)
    bound = _bound64(t64, p64, radius, g["norm_method"], _forward_dtype(target, pruned))
    upper = float(bound.value)
    if not math.isclose(float(g["upper"]), upper, rel_tol=c.rtol, abs_tol=0.0):
        c.reject("gap.upper", g["upper"], upper, " (the certified upper bound recomputed from the weights)")
    x = c.witness(g, math.prod(_input_shape(spec)), radius)
    lower = _gap_at(t64, p64, x)
    c.same("gap", {k: g[k] for k in ("lower", "upper", "ratio", "exact_norms", "n_exact", "n_norms", "layers")},
           _gap_numbers(bound, lower), " (re-derived from the weights and the witness)")
    c.verified += ["gap.radius", "gap.norm_method"]
    c.not_verified.append(("gap.estimator", "the search budget that found the witness; the witness itself proves "
                                            "the lower bound"))
    return upper, lower


def _check_probabilistic(doc: Mapping[str, Any], spec: NetSpec, law: LawSpec | None, pr: PruneSpec,
                         c: _Checker) -> None:
    """ε(δ) recomputed at the stated δ with the function that made it (no section without a law)."""
    prob = doc["probabilistic"]
    if law is None:
        c.same("probabilistic", prob, None)
    elif prob is None:
        c.reject("probabilistic", None, "a probabilistic section (a law is recorded)")
    else:
        want = _probabilistic(spec, law, pr, float(prob["delta"]), float(doc["gap"]["radius"]))
        c.same("probabilistic", dict(prob), want, f" (ε recomputed at probabilistic.delta={prob['delta']!r})")


def _check_config_hash(doc: Mapping[str, Any], pr: PruneSpec, c: _Checker) -> None:
    """The config hash, rebuilt from the document's settings."""
    g, prob = doc["gap"], doc["probabilistic"]
    est = g["estimator"]
    gs = GapSpec(radius=float(g["radius"]), n_points=est["n_points"], n_restarts=est["n_restarts"],
                 n_steps=est["n_steps"], step_size=est["step_size"])
    resolved = _resolved(doc["arch"], doc["activation"], doc["bias"], doc["law"],
                         doc["target"]["path"] if doc["target"]["source"] == "file" else None,
                         int(doc["seeds"]["seed"]), pr, gs, None if prob is None else prob["delta"], g["norm_method"])
    rule1 = hashlib.sha256(json.dumps(resolved, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    c.same("config_hash", doc["config_hash"], config_hash(resolved, kind="certificate"),
           " (made by an older probprune, hash rule 1: make the certificate again)" if doc["config_hash"] == rule1
           else "")


def _check_files(doc: Mapping[str, Any], weights: str | Path, target: str | Path | None, res: PruneOutcome,
                 c: _Checker) -> None:
    """The file digests (of the re-sampled target when no file was given) and the versions."""
    if doc["pruned"]["sha256"] is None:
        c.not_verified.append(("pruned.sha256", "no digest recorded"))
    else:
        c.same("pruned.sha256", doc["pruned"]["sha256"], file_sha256(weights), f" (of {str(weights)!r})")
    if target is None:
        if doc["target"]["sha256"] is None:
            c.not_verified.append(("target.sha256", "no digest recorded"))
        else:
            c.same("target.sha256", doc["target"]["sha256"], _saved_sha256(res.target),
                   " (of the re-sampled target, saved as prune --save-target saves it)")
    for key in ("target", "pruned"):
        if doc[key]["path"] is not None:
            c.not_verified.append((f"{key}.path", "a file name, not a property of the networks"))
    mine = _versions()
    if dict(doc["versions"]) == mine:
        c.verified.append("versions")
    else:
        c.not_verified.append(("versions", f"made with {json.dumps(doc['versions'], sort_keys=True)}, checked with "
                                           f"{json.dumps(mine, sort_keys=True)}"))


def check_certificate(doc: Mapping[str, Any], weights: str | Path, target: str | Path | None = None,
                      rtol: float = RTOL, where: str = "certificate") -> CheckOutcome:
    """Re-derive every number and setting of a certificate from the weights; confirm it or reject it.

    Order: the zero counts of the pruned file; the recorded pruning re-run on the target (the
    ``target`` file, or the target re-sampled from the recorded law and seed on the recorded
    device), which must give the pruned weights bit for bit (on a mismatch, single changes of
    method, scope and rescale are tried to name the forged field); per-layer and total
    statistics; the certified bound, its per-layer norms and counts; the gap at the witness
    (``‖x*‖₂ ≤ r`` required) and the ratio; ε(δ); the config hash; the file digests; versions.

    Args:
        doc: the certificate, already validated against the schema
            (``report.certificate.read_certificate``).
        weights: the pruned network f (.safetensors).
        target: the target F (.safetensors); may be left out when the certificate's target was
            sampled (it is re-sampled from the recorded law and seed).
        rtol: relative tolerance between stated and recomputed floats.
        where: prefix of error messages.

    Returns:
        :class:`CheckOutcome`: the verified fields and those that could not be re-derived.

    Raises:
        CertificateRejected: a stated value differs from the re-derived one (names the field,
            both values).
        ProbPruneError: unreadable weights, a missing ``--target``, a device not available here.
    """
    if doc.get("model") is not None:  # format 4: checked from the target and the pruned file
        name = "certificate_graph.check_graph_certificate" if doc["model"] == "graph" else \
            "certificate_local.check_local_certificate"
        raise ProbPruneError(f"{where}: field model: {doc['model']!r}: check it with probprune.runner.{name} "
                             "(`certificate check CERT --weights TARGET --pruned PRUNED`)")
    c = _Checker(where, rtol)
    spec = parse_arch(doc["arch"], activation=doc["activation"], bias=doc["bias"])
    pruned = load_net(spec, str(weights))
    law = None if doc["law"] is None else parse_law(doc["law"])
    notes: list[str] = []
    source = _check_target_file(doc, target, law, c)
    zeros = _check_zeros(doc, pruned, weights, c)
    pr = _prune_spec(doc, c)
    rerun = _Rerun(spec, law, int(doc["seeds"]["seed"]), source, target, _rerun_device(doc, pr, source, c, notes))
    res = _check_pruning(doc, pr, rerun, pruned, weights, zeros, c)
    layers, total = _stats_sections(res.stats, zeros)
    c.same("layers", list(doc["layers"]), layers)
    c.same("total", dict(doc["total"]), total)
    upper, lower = _check_gap(doc, spec, res.target, pruned, c)
    _check_probabilistic(doc, spec, law, pr, c)
    _check_config_hash(doc, pr, c)
    _check_files(doc, weights, target, res, c)
    c.verified.append("format")
    return CheckOutcome(upper=upper, certified=float(doc["gap"]["upper"]), lower=lower,
                        radius=float(doc["gap"]["radius"]), target_source=source, verified=tuple(c.verified),
                        not_verified=tuple(c.not_verified), notes=tuple(notes))
