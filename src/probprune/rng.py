"""Explicit randomness: seeds derived from (config hash, grid point, trial, stream).

Seeds never depend on execution order, so chunked, resumed and distributed runs
draw exactly what a one-shot run draws.
"""

from __future__ import annotations

import hashlib

import torch

from probprune.config import ProbPruneError

__all__ = ["derive_seed", "make_generator"]


def derive_seed(config_hash: str, *keys: object) -> int:
    """A 63-bit seed from a config hash and any keys (grid point, trial, stream name).

    >>> derive_seed("abc", 0, 1, "weights") == derive_seed("abc", 0, 1, "weights")
    True
    >>> derive_seed("abc", 0, 1, "weights") != derive_seed("abc", 0, 1, "mask")
    True
    """
    text = "\x1f".join([str(config_hash), *(repr(k) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``.

    >>> g = make_generator(3); torch.rand(1, generator=g).item() == torch.rand(1, generator=make_generator(3)).item()
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ProbPruneError(f"seed={seed!r}: must be a non-negative integer")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbPruneError(f"device={str(device)!r}: CUDA is not available on this machine")
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    return g
