"""The ``gap`` workflow: load a target and a pruned network, pin their gap from both sides.

Either file may be ``.safetensors`` or ``.onnx`` (:func:`~probprune.runner.prune.load_model`); a mixed
pair works when both have the same architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from probprune.bounds import NormMethod, Sandwich, sandwich
from probprune.config import GapJob, GapSpec, ProbPruneError
from probprune.gap import sup_gap
from probprune.nets import Net
from probprune.rng import derive_seed, make_generator
from probprune.runner.prune import LoadedModel, check_device, check_gap_budget, load_model, model_format

__all__ = ["GapOutcome", "check_gap_job", "gap_sandwich", "run_gap"]


def check_gap_job(job: GapJob) -> None:
    """What a :class:`~probprune.config.GapJob` needs of this machine: model suffixes, the device, the budget."""
    for name in ("weights", "pruned"):
        model_format(name, getattr(job, name))
    check_device(job.device)
    check_gap_budget(job.net, job.gap)


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


def run_gap(job: GapJob, loaded: Mapping[str, LoadedModel] | None = None) -> GapOutcome:
    """Load both networks (same architecture, finite weights), then compute their :class:`Sandwich`.

    Args:
        job: what to do.
        loaded: models already read (option name ``weights``/``pruned`` → model, from
            :func:`~probprune.runner.prune.model_spec`), so that no file is read twice.
    """
    check_gap_job(job)
    have = dict(loaded or {})
    target = (have.get("weights") or load_model(job.weights, job.net, "weights")).net.to(device=job.device)
    try:
        pruned = (have.get("pruned") or load_model(job.pruned, job.net, "pruned")).net.to(device=job.device)
    except ProbPruneError as e:
        msg = str(e)
        raise ProbPruneError(msg if msg.startswith("pruned") else f"pruned: {msg}") from None
    if target.dtype != pruned.dtype:
        raise ProbPruneError(f"pruned={job.pruned!r}: its weights are {str(pruned.dtype).replace('torch.', '')}, "
                             f"the target's {str(target.dtype).replace('torch.', '')}; give both in one dtype")
    return GapOutcome(target, pruned, gap_sandwich(target, pruned, job.gap, job.seed, job.norm_method))
