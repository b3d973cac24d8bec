"""The ``gap`` workflow: load a target and a pruned network, pin their gap from both sides.

Either file may be ``.safetensors`` or ``.onnx`` (:func:`~probprune.runner.prune.load_model`); a mixed
pair works when both have the same architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from probprune.bounds.certified import CertifiedBound, certified_gap_bound, lower_at
from probprune.bounds.norms import NormMethod
from probprune.config import GapJob, GapSpec, ProbPruneError
from probprune.gap import sup_gap
from probprune.nets import Net, check_pair
from probprune.rng import derive_seed, make_generator
from probprune.runner.execution import execution
from probprune.runner.prune import LoadedModel, check_device, check_gap_budget, load_model, model_format

__all__ = ["GapOutcome", "Sandwich", "check_gap_job", "gap_sandwich", "run_gap"]


def check_gap_job(job: GapJob) -> None:
    """What a :class:`~probprune.config.GapJob` needs of this machine: model suffixes, the device, the budget."""
    for name in ("weights", "pruned"):
        model_format(name, getattr(job, name))
    check_device(job.device)
    check_gap_budget(job.net, job.gap)


@dataclass(frozen=True, eq=False)
class Sandwich:
    """The gap pinned from both sides: ``lower ≤ gap ≤ upper``.

    Attributes:
        lower: ``[K]``/0-d float64: ``‖f(x*) − F(x*)‖`` re-evaluated in float64 at the estimator's
            maximiser ``x*`` (moved provably inside the ball, see
            :func:`~probprune.bounds.certified.lower_at`), hence a true lower bound up to float64
            rounding, which ``upper``'s rounding margin covers.
        upper: the certified bound's value.
        ratio: upper / lower (1 where upper = 0: the nets agree everywhere; inf where lower = 0 < upper).
        exact_norms: whether every operator norm was exact.
        n_exact, n_norms: exact norms / norms computed.
        x: the maximiser.
        bound: the full :class:`~probprune.bounds.certified.CertifiedBound`.
        n_evals: evaluations the estimator spent per member.
    """

    lower: Tensor
    upper: Tensor
    ratio: Tensor
    exact_norms: bool
    n_exact: int
    n_norms: int
    x: Tensor
    bound: CertifiedBound
    n_evals: int

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (without the maximiser)."""
        return {"lower": self.lower.tolist(), "upper": self.upper.tolist(), "ratio": self.ratio.tolist(),
                "exact_norms": self.exact_norms, "n_exact": self.n_exact, "n_norms": self.n_norms,
                "n_evals": self.n_evals, "bound": self.bound.to_dict()}


@dataclass(frozen=True, eq=False)
class GapOutcome:
    """Target, pruned network and their sandwich."""

    target: Net
    pruned: Net
    sandwich: Sandwich


def gap_sandwich(target: Net, pruned: Net, gap: GapSpec, seed: int = 0, norm_method: NormMethod = "auto", *,
                 bound: CertifiedBound | None = None) -> Sandwich:
    """Lower (empirical sup, re-evaluated in float64) and certified upper bound on the gap.

    The lower value is :func:`~probprune.gap.sup_gap`'s maximiser (seeded from ``seed``) evaluated
    again in float64 by :func:`~probprune.bounds.certified.lower_at`; the upper value is
    :func:`~probprune.bounds.certified.certified_gap_bound`.

    Args:
        target, pruned: F and f (single or ensembles ``[K]``).
        gap: estimator budget and the radius r.
        seed: the estimator's seed.
        norm_method: see :func:`~probprune.bounds.norms.matrix_norm_bound`.
        bound: the certified bound of this pair over the same ball when the caller already has it
            (a certificate computes it in float64 on the CPU); it is used as the upper value instead of
            being computed a second time.

    Raises:
        ProbPruneError: ``gap`` is no GapSpec; ``bound`` is for another radius or ensemble size; the
            networks' outputs overflow in the ball.
    """
    check_pair(target, pruned)
    if not isinstance(gap, GapSpec):
        raise ProbPruneError(f"gap_spec: expected a GapSpec, got {type(gap).__name__}")
    g = make_generator(derive_seed("gap", seed, "estimator"), target.device)
    with torch.no_grad(), execution() as ex:  # the search's forward passes on single-threaded workers
        if bound is None:
            bound = certified_gap_bound(target, pruned, radius=gap.radius, norm_method=norm_method)
        elif bound.radius != gap.radius or tuple(bound.value.shape) != \
                (() if target.n_trials is None else (target.n_trials,)):
            raise ProbPruneError(f"bound: computed for radius {bound.radius!r} and shape {tuple(bound.value.shape)}, "
                                 f"not for this pair over gap.radius={gap.radius!r}")
        est = sup_gap(target, pruned, gap, g, workers=ex.workers)
        lower = lower_at(target, pruned, est.x, gap.radius)
    if not bool(torch.isfinite(lower).all()):
        dtype = str(target.dtype).replace("torch.", "")
        raise ProbPruneError(f"gap.radius={gap.radius!r}: the networks' outputs overflow {dtype} in the ball, so the "
                             "empirical lower bound is not a number; use a smaller radius")
    upper = bound.value.to(lower.device)
    ratio = torch.where(upper == 0, torch.ones_like(upper), upper / lower)
    return Sandwich(lower=lower, upper=upper, ratio=ratio, exact_norms=bound.exact, n_exact=bound.n_exact,
                    n_norms=bound.n_norms, x=est.x, bound=bound, n_evals=int(est.n_evals))


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
