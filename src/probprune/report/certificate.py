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

__all__ = ["FORMAT", "FORMAT_GRAPH", "file_sha256", "load_schema", "read_certificate", "validate_certificate",
           "write_certificate"]


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
    if fmt == FORMAT_GRAPH and doc.get("model") == "chain":
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
