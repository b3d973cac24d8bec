"""Certificate documents: JSON Schema, validation, reading and writing (no maths here).

A certificate says how far a pruned network f can be from its target F — the gap
``sup_{‖x‖₂≤r} ‖f(x) − F(x)‖₂`` pinned between an empirical lower bound and a certified upper
bound, plus the probabilistic bound ε(δ) when the target was sampled from a law — together with
everything needed to recompute it (architecture, law, pruning rule, per-layer sparsity,
seeds, file digests, versions) and the witness input of the lower bound. The numbers are made
and re-derived by :mod:`probprune.runner.certificate` (which may compute; this module only checks
the document's form); the schema ships as ``probprune/certificate.schema.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from probprune.config import ProbPruneError
from probprune.store import atomic_write_text, file_sha256

__all__ = ["FORMAT", "FORMAT_GRAPH", "file_sha256", "load_schema", "read_certificate", "render_certificate",
           "validate_certificate", "write_certificate"]


_SCHEMA_FILES: dict[str, str] = {"probprune-certificate/3": "certificate.schema.json",
                                  "probprune-certificate/4": "certificate4.schema.json",
                                  "probprune-certificate/4-local": "certificate4-local.schema.json"}


def load_schema(fmt: str = "probprune-certificate/3") -> dict[str, Any]:
    """The JSON Schema of one certificate kind (package data): ``probprune-certificate/3`` chain prune
    certificates (``certificate.schema.json``), ``probprune-certificate/4`` graph certificates
    (``certificate4.schema.json``), ``probprune-certificate/4-local`` local certificates of chain models
    (``certificate4-local.schema.json``; its documents say format 4, ``model: chain``)."""
    text = files("probprune").joinpath(_SCHEMA_FILES[fmt]).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


FORMAT: str = load_schema()["properties"]["format"]["const"]
"""The format of chain-model certificates (the format-3 schema's ``format`` constant)."""
FORMAT_GRAPH: str = load_schema("probprune-certificate/4")["properties"]["format"]["const"]
"""The format of graph-model certificates (``probprune-certificate/4``); a format-3 checker refuses it."""

_OLD_FORMATS: dict[str, str] = {
    # format -> why its numbers cannot be checked as they stand
    "probprune-certificate/1": "is an older certificate without a witness for its lower bound, so its numbers "
                               "cannot all be re-derived",
    "probprune-certificate/2": "is an older certificate that stores the measured sparsity under the key "
                               "prune_fraction (now sparsity)",
}


def validate_certificate(doc: Any, where: str = "certificate") -> None:
    """Check ``doc`` against the schema and the few rules a schema cannot state.

    Raises:
        ProbPruneError: naming the first offending field and value.
    """
    try:
        import jsonschema
    except ModuleNotFoundError:  # pragma: no cover - jsonschema is a dependency
        raise ProbPruneError("jsonschema: not installed (pip install jsonschema) — needed to check certificates") \
            from None
    old = doc.get("format") if isinstance(doc, Mapping) else None
    if isinstance(old, str) and old in _OLD_FORMATS:
        raise ProbPruneError(f"{where}: field format: {old!r} {_OLD_FORMATS[old]}; remake it with "
                             f"`probprune prune … --certificate FILE` (format {FORMAT})")
    fmt = doc.get("format") if isinstance(doc, Mapping) else None
    fmt = fmt if isinstance(fmt, str) and fmt in _SCHEMA_FILES else FORMAT
    if fmt == FORMAT_GRAPH and (doc.get("model") == "chain" or "local" in doc):  # local balls, chain or graph
        fmt = f"{FORMAT_GRAPH}-local"
    validator = jsonschema.Draft202012Validator(load_schema(fmt))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.absolute_path) or "(document)"
        raise ProbPruneError(f"{where}: field {field}: {e.message} (schema {fmt})")
    _finite(doc, "", where)
    for name, gap in [("gap", doc.get("gap"))] + [(f"local.{i}", b) for i, b in enumerate(doc.get("local", []))]:
        if gap is not None and gap["lower"] > gap["upper"] * (1 + 1e-9) + 1e-12:
            raise ProbPruneError(f"{where}: field {name}.lower={gap['lower']!r} exceeds {name}.upper="
                                 f"{gap['upper']!r}")
    for i, layer in enumerate(doc.get("layers", [])):
        if layer["pruned"] > layer["size"] or layer["zeros"] > layer["size"]:
            raise ProbPruneError(f"{where}: field layers.{i}: pruned={layer['pruned']!r} / zeros={layer['zeros']!r} "
                                 f"exceed size={layer['size']!r}")


def _finite(node: Any, path: str, where: str) -> None:
    """Refuse a number that is not finite (``1e999`` parses as inf): no certified number is one."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ProbPruneError(f"{where}: field {path or '(document)'}: {node!r} is not a finite number")
    if isinstance(node, Mapping):
        for k, v in node.items():
            _finite(v, f"{path}.{k}" if path else str(k), where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _finite(v, f"{path}.{i}" if path else str(i), where)


def write_certificate(path: str | Path, doc: Mapping[str, Any]) -> None:
    """Validate ``doc`` (e.g. from ``runner.certificate.make_certificate``), then write it atomically as JSON.

    Raises:
        ProbPruneError: ``doc`` is not a valid certificate (nothing is written).
    """
    validate_certificate(doc)
    # sorted keys, floats as repr (round-trip), no timestamp: the same document gives the same bytes
    try:
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False)
    except ValueError as e:  # NaN / infinity: not JSON, and not a certified number
        raise ProbPruneError(f"certificate={str(path)!r}: a number is not finite ({e})") from None
    atomic_write_text(path, text + "\n")


def _no_constant(name: str) -> Any:
    # NaN / Infinity are not JSON, and no certified number is one
    raise ValueError(f"{name} is not a JSON number")


def read_certificate(path: str | Path) -> dict[str, Any]:
    """Read and validate a certificate file.

    Raises:
        ProbPruneError: missing file, not JSON (NaN / Infinity included, or nested too deeply),
            or not a valid certificate.
    """
    p = Path(path)
    if not p.is_file():
        raise ProbPruneError(f"certificate={str(path)!r}: file not found")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ProbPruneError(f"certificate={str(path)!r}: not readable JSON ({e})") from None
    except RecursionError:
        raise ProbPruneError(f"certificate={str(path)!r}: not readable JSON (nested too deeply)") from None
    validate_certificate(doc, where=f"certificate={str(path)!r}")
    return dict(doc)


def _g(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _kind(doc: Mapping[str, Any]) -> str:
    if doc.get("model") == "graph":
        return "graph (an ONNX model read as a graph)" + (", local certificate" if "local" in doc else "")
    if doc.get("model") == "chain":
        return f"chain {doc['arch']} ({doc['activation']}), local certificate"
    return f"chain {doc['arch']} ({doc['activation']})"


def _files_lines(doc: Mapping[str, Any]) -> list[str]:
    lines = [f"- {key}: `{doc[key]['path']}` sha256 {doc[key]['sha256'] or '(none recorded)'}"
             for key in ("target", "pruned")]
    params = doc.get("params_sha256") or (doc.get("graph") or {}).get("params_sha256")
    if params:
        lines.append(f"- parameter digests: target {params['target']}, pruned {params['pruned']}")
    return lines


def _prune_lines(doc: Mapping[str, Any]) -> list[str]:
    if "prune" not in doc:
        return []
    p, t = doc["prune"], doc["total"]
    lines = [f"- pruning: {p['method']}, {p['scope']}, {p['level_name']} = {_g(p['level_value'])}; "
             f"{t['pruned']} of {t['size']} weights removed (sparsity {t['sparsity']:.4f})"]
    if doc.get("model") == "graph":
        bn = doc["graph"]["batchnorm"]
        lines.append(f"- BatchNorm: {bn['nodes']} BatchNormalization node(s); weights pruned {bn['pruned']} "
                     f"({bn['statement']})")
    return lines


def _gap_lines(doc: Mapping[str, Any]) -> list[str]:
    if "gap" not in doc:
        return []
    g = doc["gap"]
    lines = ["", f"Gap sup ‖f(x) − F(x)‖₂ over the ℓ2 ball of radius {_g(g['radius'])} around 0:", "",
             "| lower (witness) | certified upper | ratio |", "|---:|---:|---:|",
             f"| {_g(g['lower'])} | {_g(g['upper'])} | {_g(g['ratio'])} |"]
    for a in g.get("assumptions", []):
        lines.append(f"- assumes: {a}")
    return lines


def _local_lines(doc: Mapping[str, Any]) -> list[str]:
    balls = doc.get("local") or []
    if not balls:
        return []
    lines = ["", f"Local balls ({len(balls)}): sup ‖f(x) − F(x)‖₂ over {{x : ‖x − centre‖ ≤ radius}} ∩ box", "",
             "| # | centre | norm | radius | box | lower | certified upper | method | certified agreement |",
             "|---:|---|---|---:|---|---:|---:|---|---|"]
    for i, b in enumerate(balls):
        c = b["centre"]
        centre = f"row {c['index']} of `{c['path']}`" if isinstance(c, Mapping) else f"inline ({len(c)} numbers)"
        box = "-" if b["box"] is None else f"[{_g(b['box'][0])}, {_g(b['box'][1])}]"
        lines.append(f"| {i} | {centre} | {b['norm']} | {_g(b['radius'])} | {box} | {_g(b['lower'])} | "
                     f"{_g(b['upper'])} | {b['method']} | {_g(b['certified_agree'])} |")
    return lines


def render_certificate(doc: Mapping[str, Any]) -> str:
    """A certificate as a short Markdown report: the model kind, files and digests, the pruning, the gap sandwich
    (with its assumptions), and a table of the local balls. It states; ``probprune certificate check`` confirms.

    Raises:
        ProbPruneError: ``doc`` is not a valid certificate.
    """
    validate_certificate(doc)
    lines = [f"# probprune certificate ({doc['format']})", "", f"- model: {_kind(doc)}", *_files_lines(doc),
             *_prune_lines(doc), *_gap_lines(doc), *_local_lines(doc), "",
             "Check it (every number re-derived from the files): `probprune certificate check CERT --weights … "
             + ("--pruned …`" if "model" in doc else "[--target …]`")]
    return "\n".join(lines) + "\n"
