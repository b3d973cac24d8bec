"""Atomic file writes that follow the umask (stdlib only, so every layer that writes files may use it).

A file is written under a unique hidden name beside its target (``.<name>.<12 hex>.tmp``), flushed
and ``fsync``-ed, then renamed into place with :func:`os.replace`: a reader sees the old file or the
new one, never a partial one, and an error (or an interrupt) leaves no temporary file behind. The
temporary file is created with mode ``0o666`` so that the process umask decides the final
permissions, as for any ``open(path, "w")`` — ``tempfile.mkstemp`` would force ``0o600``, and the
rename would carry that mode onto every checkpoint, certificate, data file and report.

Errors are the :class:`OSError` of the failing call; callers turn them into their own
``ProbPruneError`` naming the file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "temp_beside"]


def temp_beside(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Create a new empty file beside ``path`` under a unique hidden name; returns ``(fd, name)``.

    The parent folder is created when missing. The file is opened read-write with
    ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW`` where the platform has it) and mode ``0o666``, so the
    umask decides its permissions.

    Raises:
        OSError: the folder cannot be made or written, or no free name was found.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        name = str(p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"{p.parent}: no free temporary name for {p.name!r}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` (fsync-ed), then rename it into place.

    Raises:
        OSError: the file cannot be written (the temporary file is removed).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     atomic_write_bytes(Path(d) / "sub" / "a.bin", b"ok")
    ...     (Path(d) / "sub" / "a.bin").read_bytes(), sorted(p.name for p in (Path(d) / "sub").iterdir())
    (b'ok', ['a.bin'])
    """
    p = Path(path)
    fd, tmp = temp_beside(p)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` as UTF-8 (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
