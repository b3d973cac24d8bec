"""The ``prune`` workflow: load or sample a target, prune it, write the pruned weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probprune.config import LawSpec, NetSpec, ProbPruneError, PruneSpec, parse_arch
from probprune.masks import MaskStats, prune
from probprune.nets import Net, from_state_dict
from probprune.rng import derive_seed, make_generator
from probprune.sampling import sample_net
from probprune.store import load_tensors, save_tensors

__all__ = ["PruneJob", "PruneOutcome", "load_net", "run_prune", "save_net"]


@dataclass(frozen=True)
class PruneJob:
    """What ``probprune prune`` does: target from ``weights`` or sampled from ``law`` with ``seed``."""

    net: NetSpec
    prune: PruneSpec
    weights: str | None = None
    law: LawSpec | None = None
    seed: int = 0
    out: str | None = None
    save_target: str | None = None
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights is None and self.law is None:
            raise ProbPruneError("weights: give --weights FILE or --law to sample a target")
        if self.weights is not None and self.law is not None and self.save_target is not None:
            raise ProbPruneError("save_target: only a sampled target (--law) can be saved")
        if self.prune.level_name is None:
            raise ProbPruneError("prune: give one level: --prune-fraction, --threshold, --relative-threshold or --p")
        if self.prune.relative_threshold is not None and self.law is None:
            raise ProbPruneError(
                f"relative_threshold={self.prune.relative_threshold!r}: needs --law (τ_i = ρ·a_i)")
        for name in ("out", "save_target"):
            v = getattr(self, name)
            if v is not None and not str(v).endswith(".safetensors"):
                raise ProbPruneError(f"{name}={v!r}: must end in .safetensors")


@dataclass(frozen=True, eq=False)
class PruneOutcome:
    """Target, pruned network, keep-masks and stats of one prune job."""

    target: Net
    pruned: Net
    masks: dict[str, torch.Tensor]
    stats: MaskStats
    seed: int


def load_net(spec: NetSpec | str, path: str) -> Net:
    """Load a ``Net`` of architecture ``spec`` from a safetensors file (names as ``to_module``)."""
    s = parse_arch(spec) if isinstance(spec, str) else spec
    tensors, meta = load_tensors(path)
    stored = meta.get("arch")
    if stored is not None and stored != s.to_arch():
        raise ProbPruneError(f"weights={path!r}: file holds architecture {stored}, not {s.to_arch()}")
    try:
        return from_state_dict(s, tensors)
    except ProbPruneError as e:
        raise ProbPruneError(f"weights={path!r}: {e}") from None


def save_net(net: Net, path: str) -> None:
    """Save a single ``Net`` as safetensors with its architecture in the metadata."""
    save_tensors(path, net.state_dict(), {"arch": net.spec.to_arch(), "format": "probprune"})


def run_prune(job: PruneJob) -> PruneOutcome:
    """Load or sample the target, prune it, then write ``out`` / ``save_target`` (after all checks)."""
    if job.weights is not None:
        target = load_net(job.net, job.weights).to(device=job.device)
    else:
        g = make_generator(derive_seed("prune", job.seed, "weights"), job.device)
        target = sample_net(job.net, job.law, g, device=job.device)  # type: ignore[arg-type]
    pr = job.prune
    gen = make_generator(derive_seed("prune", job.seed, "mask"), job.device) if pr.method == "random" else None
    res = prune(target, pr.method, prune_fraction=pr.prune_fraction, threshold=pr.threshold,
                relative_threshold=pr.relative_threshold, p=pr.p, scope=pr.scope, rescale=pr.rescale,
                generator=gen, law=job.law)
    if job.out is not None:
        Path(job.out).parent.mkdir(parents=True, exist_ok=True)
        save_net(res.model, job.out)
    if job.save_target is not None:
        save_net(target, job.save_target)
    return PruneOutcome(target, res.model, res.masks, res.stats, job.seed)
