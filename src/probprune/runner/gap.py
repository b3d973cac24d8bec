"""The ``gap`` workflow: load a target and a pruned network, pin their gap from both sides."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probprune.bounds import NormMethod, Sandwich, sandwich
from probprune.config import GapSpec, NetSpec, ProbPruneError, check_seed
from probprune.gap import sup_gap
from probprune.nets import Net
from probprune.rng import derive_seed, make_generator
from probprune.runner.prune import check_device, check_gap_budget, load_net

__all__ = ["GapJob", "GapOutcome", "gap_sandwich", "run_gap"]


@dataclass(frozen=True)
class GapJob:
    """What ``probprune gap`` does: load ``weights`` (target F) and ``pruned`` (f), estimate and bound the gap."""

    net: NetSpec
    weights: str
    pruned: str
    gap: GapSpec = field(default_factory=GapSpec)
    seed: int = 0
    device: str = "cpu"
    norm_method: NormMethod = "auto"

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        check_device(self.device)
        for name in ("weights", "pruned"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.endswith(".safetensors"):
                raise ProbPruneError(f"{name}={v!r}: must be a .safetensors file")
        if self.norm_method not in ("auto", "svd", "gram-cholesky", "frobenius-holder"):
            raise ProbPruneError(f"norm_method={self.norm_method!r}: must be auto, svd, gram-cholesky or "
                                 "frobenius-holder")
        check_gap_budget(self.net, self.gap)


@dataclass(frozen=True, eq=False)
class GapOutcome:
    """Target, pruned network and their sandwich."""

    target: Net
    pruned: Net
    sandwich: Sandwich


def gap_sandwich(target: Net, pruned: Net, gap: GapSpec, seed: int = 0,
                 norm_method: NormMethod = "auto") -> Sandwich:
    """Lower (empirical sup) and certified upper bound on the gap, the estimator seeded from ``seed``."""
    g = make_generator(derive_seed("gap", seed, "estimator"), target.device)
    with torch.no_grad():
        sw = sandwich(target, pruned, gap, g, estimator=sup_gap, norm_method=norm_method)
    if not bool(torch.isfinite(torch.as_tensor(sw.lower)).all()):
        dtype = str(target.dtype).replace("torch.", "")
        raise ProbPruneError(f"gap.radius={gap.radius!r}: the networks' outputs overflow {dtype} in the ball, so the "
                             "empirical lower bound is not a number; use a smaller radius")
    return sw


def run_gap(job: GapJob) -> GapOutcome:
    """Load both networks (same architecture, finite weights), then compute their :class:`Sandwich`."""
    target = load_net(job.net, job.weights).to(device=job.device)
    try:
        pruned = load_net(job.net, job.pruned).to(device=job.device)
    except ProbPruneError as e:
        raise ProbPruneError(f"pruned: {e}") from None
    return GapOutcome(target, pruned, gap_sandwich(target, pruned, job.gap, job.seed, job.norm_method))
