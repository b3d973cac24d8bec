"""Checkpoints as safetensors (+ the architecture string in the file's metadata); atomic writes
(:mod:`probprune.files`, re-exported here for the layers above).

Same tensors, same metadata → same bytes, in every process: the safetensors writer keeps the
metadata in a hash map whose order changes from one call to the next, so :func:`save_tensors`
rewrites the file's JSON header in one canonical form (see :func:`canonical_header`) before the
file is renamed into place. The tensor data is left exactly as the library wrote it (its order is
fixed by dtype alignment and name, not by the order of the mapping passed in).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probprune.config import ProbPruneError
from probprune.files import atomic_write_bytes, atomic_write_text, temp_beside

__all__ = ["atomic_write_bytes", "atomic_write_text", "canonical_header", "file_sha256", "load_tensors",
           "save_tensors"]

_METADATA_KEY = "__metadata__"
_HEADER_ALIGN = 8  # the safetensors writer pads its header with spaces so that the data starts 8-aligned


def canonical_header(header: Mapping[str, object]) -> bytes:
    """The one byte form of a parsed safetensors header that :func:`save_tensors` writes.

    ``__metadata__`` first with its keys sorted, then the tensor entries in the order of their data
    (``data_offsets``, ties by name), compact JSON (no spaces, UTF-8 kept as is), padded with spaces to a
    multiple of 8 bytes as the safetensors writer does. Key order inside each tensor entry is fixed too.

    Args:
        header: the header as parsed JSON (``{"__metadata__": {str: str}, name: {dtype, shape,
            data_offsets}, ...}``).

    Returns:
        The header bytes (without the 8-byte length prefix).

    >>> canonical_header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    ...                   "__metadata__": {"b": "2", "a": "1"}})
    b'{"__metadata__":{"a":"1","b":"2"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} '
    """
    doc: dict[str, object] = {}
    meta = header.get(_METADATA_KEY)
    if isinstance(meta, Mapping):
        doc[_METADATA_KEY] = {str(k): meta[k] for k in sorted(meta, key=str)}
    entries: list[tuple[int, str, Mapping[str, object]]] = []
    for name, entry in header.items():
        if name == _METADATA_KEY:
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, Mapping) else None
        if not (isinstance(entry, Mapping) and isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)):
            raise ProbPruneError(f"safetensors header: entry {name!r} has no data_offsets [start, end]")
        entries.append((int(offsets[0]), name, entry))
    for _start, name, entry in sorted(entries, key=lambda e: (e[0], e[1])):
        doc[name] = {"dtype": entry.get("dtype"), "shape": entry.get("shape"),
                     "data_offsets": entry.get("data_offsets"),
                     **{k: entry[k] for k in sorted(entry) if k not in ("dtype", "shape", "data_offsets")}}
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % _HEADER_ALIGN)


def _rewrite_canonical(src: str, dst: str) -> None:
    """Copy the safetensors file ``src`` to ``dst`` with its header in canonical form (data bytes unchanged)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        (n,) = struct.unpack("<Q", fin.read(8))
        header = json.loads(fin.read(n).decode("utf-8"))
        head = canonical_header(header)
        fout.write(struct.pack("<Q", len(head)))
        fout.write(head)
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors to a safetensors file atomically (contiguous CPU copies), byte-reproducibly.

    The same tensors and metadata give the same file bytes in any process and any call, whatever the
    order of ``tensors`` or ``metadata`` (the header is written by :func:`canonical_header`), so a
    recorded ``sha256`` of a checkpoint re-made from the same seed matches.
    """
    p = Path(path)
    fd, raw = temp_beside(p)
    os.close(fd)
    fd, tmp = temp_beside(p)
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, raw,
                  metadata=dict(metadata or {}))
        _rewrite_canonical(raw, tmp)
        os.replace(tmp, p)
    finally:
        for t in (raw, tmp):
            if os.path.exists(t):
                os.unlink(t)


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file: (tensors, metadata). Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise ProbPruneError(f"weights={str(path)!r}: file not found")
    try:
        tensors = load_file(str(p))
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ProbPruneError(f"weights={str(path)!r}: not a readable safetensors file ({e})") from None
    return tensors, dict(sorted(meta.items()))


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
