"""Offline MNIST / Fashion-MNIST (IDX files), the LeNets, training and fine-tuning with fixed masks.

The datasets live in ``$PROBPRUNE_DATA`` (default ``$XDG_CACHE_HOME/probprune/data``, i.e.
``~/.cache/probprune/data``), one folder per dataset holding the four standard IDX files
(``train-images-idx3-ubyte`` …). Nothing is downloaded or read at import time; a missing
dataset raises :class:`~probprune.config.ProbPruneError` naming the command that prepares it
(``probprune data prepare mnist``). The IDX reader is plain numpy (no torchvision).

Inputs fed to the networks are pixels scaled to [0, 1] (``uint8 / 255``), flattened for an
FCN or shaped ``[N, 1, 28, 28]`` for a CNN; the gap's ball radius on real data is the largest
input norm of the test set in that scaling.

Training draws every random number (initial weights, batch order) from an explicit
``torch.Generator``; fine-tuning re-applies the keep-masks after every optimizer step, so
removed weights stay exactly zero.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import math
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probprune.config import DATASETS, MODELS, NetSpec, ProbPruneError, TrainSpec, parse_arch
from probprune.files import atomic_write_bytes
from probprune.nets import Net, from_module, to_module

__all__ = [
    "DATASETS",
    "IDX_FILES",
    "LENET_5",
    "LENET_300_100",
    "MD5",
    "MODELS",
    "Dataset",
    "accuracy",
    "as_net",
    "data_dir",
    "dataset_dir",
    "dataset_status",
    "decode_idx",
    "encode_idx",
    "init_module",
    "inputs_for",
    "lenet_spec",
    "load_dataset",
    "md5_hex",
    "predict",
    "read_idx",
    "train",
    "write_idx",
]

DatasetName = Literal["mnist", "fashion-mnist"]
ModelName = Literal["lenet-300-100", "lenet-5"]


#: The four IDX files of a dataset, by role.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: md5 of the uncompressed canonical IDX files.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

#: LeNet-300-100 (LeCun et al. 1998; Han et al. 2015): 784-300-100-10, ReLU, biases.
LENET_300_100 = "fcn:784,300,100,10"
#: LeNet-5 (two 5×5 convs with 6 and 16 channels, 2×2 max-pool, head 120-84-10), ReLU, biases.
LENET_5 = "cnn:1x28x28,c6k5m2,c16k5p0m2,120,84,10"

_ARCH: dict[str, str] = {"lenet-300-100": LENET_300_100, "lenet-5": LENET_5}

# IDX type codes → numpy dtypes (big-endian as stored).
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[str, int] = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


# --------------------------------------------------------------------------- IDX files


def md5_hex(data: bytes) -> str:
    """The md5 hex digest of ``data`` (a checksum against corruption, not a security measure).

    >>> md5_hex(b"")
    'd41d8cd98f00b204e9800998ecf8427e'
    """
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of an array (magic ``0 0 type ndim``, big-endian dims, big-endian data).

    >>> encode_idx(np.array([1, 2], dtype=np.uint8)).hex()
    '00000801000000020102'
    """
    arr = np.asarray(array)
    key = f"{arr.dtype.kind}{arr.dtype.itemsize}"
    if key not in _IDX_CODES:
        raise ProbPruneError(f"encode_idx: dtype {arr.dtype} has no IDX type code")
    if not 1 <= arr.ndim <= 255:
        raise ProbPruneError(f"encode_idx: ndim {arr.ndim} must be in [1, 255]")
    code = _IDX_CODES[key]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=_IDX_TYPES[code]).tobytes()


def decode_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (optionally gzip-compressed) into a native-endian array.

    Args:
        data: the file content.
        name: the file name, used in error messages.

    Raises:
        ProbPruneError: bad magic, unknown type, truncated or over-long data (names ``name``).

    >>> decode_idx(encode_idx(np.arange(6, dtype=np.uint8).reshape(2, 3))).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ProbPruneError(f"{name}: corrupt gzip data ({e})") from None
    if len(data) < 4:
        raise ProbPruneError(f"{name}: truncated IDX file ({len(data)} bytes, no header)")
    zero1, zero2, code, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 != 0 or zero2 != 0 or code not in _IDX_TYPES or ndim == 0:
        raise ProbPruneError(f"{name}: not an IDX file (magic bytes {data[:4].hex()})")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ProbPruneError(f"{name}: truncated IDX header ({len(data)} bytes, need {head})")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    dtype = _IDX_TYPES[code]
    want = math.prod(dims) * dtype.itemsize
    have = len(data) - head
    if have < want:
        raise ProbPruneError(f"{name}: truncated IDX data ({have} bytes after the header, expected {want} "
                             f"for shape {tuple(dims)})")
    if have > want:
        raise ProbPruneError(f"{name}: {have - want} bytes of trailing data after shape {tuple(dims)}")
    arr = np.frombuffer(data, dtype=dtype, offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or ``.gz``) into a numpy array; errors name the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ProbPruneError(f"{p}: file not found") from None
    except OSError as e:
        raise ProbPruneError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode_idx(data, str(p))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write an array as an IDX file atomically (temporary name beside it, then rename)."""
    _atomic_write(Path(path), encode_idx(array))


def _atomic_write(path: Path, data: bytes) -> None:
    # data files are as readable as the user's others (the umask decides; probprune.files)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise ProbPruneError(f"{path}: cannot write ({e.strerror or e})") from None


# --------------------------------------------------------------------------- datasets


def data_dir() -> Path:
    """Where datasets live: ``$PROBPRUNE_DATA``, else ``$XDG_CACHE_HOME/probprune/data`` (``~/.cache/…``)."""
    env = os.environ.get("PROBPRUNE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "probprune" / "data"


def _check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ProbPruneError(f"dataset={name!r}: must be one of {', '.join(DATASETS)}")


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of dataset ``name`` under ``root`` (default :func:`data_dir`)."""
    _check_dataset(name)
    return (Path(root) if root is not None else data_dir()) / name


def dataset_status(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """Whether each IDX file of ``name`` is present (sizes only; no checksum): for ``data info``."""
    d = dataset_dir(name, root)
    files = {f: (d / f).stat().st_size if (d / f).is_file() else None for f in MD5[name]}
    return {"dataset": name, "path": str(d), "files": files, "ready": all(v is not None for v in files.values())}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A prepared dataset: uint8 images ``[N, 28, 28]`` and int64 labels ``[N]`` (CPU tensors)."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, verify: bool = True) -> Dataset:
    """Load a prepared dataset from :func:`dataset_dir`, checking each file's md5 when ``verify``.

    Raises:
        ProbPruneError: a missing file (the message names ``probprune data prepare <name>``),
            a corrupt file or a checksum mismatch (the message names the file).
    """
    d = dataset_dir(name, root)
    arrays: dict[str, np.ndarray] = {}
    for role, fname in IDX_FILES.items():
        p = d / fname
        if not p.is_file():
            raise ProbPruneError(f"dataset {name}: {p} is missing; prepare it with: probprune data prepare {name}")
        raw = p.read_bytes()
        if verify and md5_hex(raw) != MD5[name][fname]:
            raise ProbPruneError(f"{p}: md5 {md5_hex(raw)} differs from the canonical {MD5[name][fname]}; "
                                 f"re-run: probprune data prepare {name}")
        arrays[role] = decode_idx(raw, str(p))
    for split in ("train", "test"):
        xi, yi = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if xi.ndim != 3 or yi.ndim != 1 or xi.shape[0] != yi.shape[0]:
            raise ProbPruneError(f"dataset {name}: {split} images {xi.shape} and labels {yi.shape} do not match")
    return Dataset(
        name=name,
        train_images=torch.from_numpy(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )


def inputs_for(images: Tensor, net_spec: NetSpec, dtype: torch.dtype = torch.float32) -> Tensor:
    """Network inputs from uint8 images ``[N, H, W]``: ``/255``, shaped ``[N, H·W]`` (FCN) or ``[N, 1, H, W]``.

    >>> from probprune.config import parse_arch
    >>> inputs_for(torch.full((2, 28, 28), 255, dtype=torch.uint8), parse_arch(LENET_300_100)).shape
    torch.Size([2, 784])
    """
    x = images.to(dtype) / 255.0
    if net_spec.kind == "fcn":
        return x.reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], 1, *x.shape[1:])


# --------------------------------------------------------------------------- models


def lenet_spec(model: str) -> NetSpec:
    """The ``NetSpec`` of ``lenet-300-100`` or ``lenet-5`` (ReLU, with biases).

    >>> lenet_spec("lenet-300-100").widths
    (784, 300, 100, 10)
    >>> sum(math.prod(s) for s in lenet_spec("lenet-5").weight_shapes())
    61470
    """
    if model not in _ARCH:
        raise ProbPruneError(f"model={model!r}: must be one of {', '.join(MODELS)}")
    return parse_arch(_ARCH[model], activation="relu", bias=True)


def init_module(net_spec: NetSpec, generator: torch.Generator) -> nn.Sequential:
    """A fresh ``nn.Sequential`` for ``net_spec`` with weights and biases ~ U[−1/√fan_in, 1/√fan_in].

    The bound is torch's default initialisation for ``nn.Linear``/``nn.Conv2d``, but drawn
    from ``generator`` (never the global RNG), layer by layer, weight then bias.
    """
    weights: list[Tensor] = []
    biases: list[Tensor | None] = []
    for shape in net_spec.weight_shapes():
        fan_in = math.prod(shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        weights.append((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        biases.append((torch.rand(shape[0], generator=generator) * 2 - 1) * bound if net_spec.bias else None)
    return to_module(Net.from_weights(net_spec, weights, biases))


def train(
    module: nn.Sequential,
    x: Tensor,
    y: Tensor,
    train_spec: TrainSpec,
    generator: torch.Generator,
    masks: Mapping[str, Tensor] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> nn.Sequential:
    """Train a copy of ``module`` (the input is not modified); with ``masks``, fine-tune with fixed masks.

    Args:
        module: the network (e.g. :func:`init_module` or ``to_module(net)``).
        x: inputs ``[N, …]`` (see :func:`inputs_for`); y: labels ``[N]`` (int64).
        train_spec: the schedule.
        generator: draws the batch order (one permutation per epoch).
        masks: keep-masks by parameter name (``0.weight`` …, True = kept); the masked weights
            are zeroed before training and again after every optimizer step.
        on_step: called as ``on_step(step, n_steps)`` after each step (progress bars).

    Returns:
        The trained copy, in eval mode.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ProbPruneError(f"train: {x.shape[0]} inputs and {y.shape[0]} labels (need equal, > 0)")
    model = copy.deepcopy(module)
    params = dict(model.named_parameters())
    keep: list[tuple[Tensor, Tensor]] = []
    for name, m in (masks or {}).items():
        if name not in params:
            raise ProbPruneError(f"masks: {name!r} is not a parameter (known: {', '.join(params)})")
        if m.shape != params[name].shape:
            raise ProbPruneError(f"masks: {name!r} has shape {tuple(m.shape)}, parameter {tuple(params[name].shape)}")
        keep.append((params[name], m.to(dtype=params[name].dtype)))

    def reapply() -> None:
        with torch.no_grad():
            for p, m in keep:
                p.mul_(m)

    reapply()
    n = x.shape[0]
    bs = train_spec.batch_size
    per_epoch = math.ceil(n / bs)
    n_steps = max(1, math.ceil(train_spec.epochs * per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=train_spec.lr, weight_decay=train_spec.weight_decay)
    model.train()
    step = 0
    perm = torch.randperm(n, generator=generator)
    while step < n_steps:
        i = step % per_epoch
        if i == 0 and step > 0:
            perm = torch.randperm(n, generator=generator)
        idx = perm[i * bs:(i + 1) * bs]
        lr = train_spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / n_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        reapply()
        step += 1
        if on_step is not None:
            on_step(step, n_steps)
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module | Net, x: Tensor, batch_size: int = 2000) -> Tensor:
    """Logits ``[N, classes]`` of a module or ``Net`` on inputs ``[N, …]``, in batches."""
    outs: list[Tensor] = [cast(Tensor, model(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module | Net, x: Tensor, y: Tensor, batch_size: int = 2000) -> float:
    """Share of inputs ``x`` ``[N, …]`` whose arg-max logit equals the label ``y`` ``[N]``."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ProbPruneError(f"accuracy: {x.shape[0]} inputs and {y.shape[0]} labels (need equal, > 0)")
    return float((predict(model, x, batch_size).argmax(dim=-1) == y).double().mean())


def as_net(module: nn.Sequential, net_spec: NetSpec) -> Net:
    """The ``Net`` of a trained LeNet module (checked against ``net_spec``)."""
    net = from_module(module, input_shape=net_spec.input_shape)
    if net.spec != net_spec:
        raise ProbPruneError(f"as_net: module is {net.spec.to_arch()}, expected {net_spec.to_arch()}")
    return net
