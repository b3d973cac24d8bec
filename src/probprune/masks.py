"""Pruning masks: magnitude and random rules, layerwise or global, for ``Net`` and any ``nn.Module``.

A mask is a ``bool`` tensor shaped like its weight, **True = kept**. ``prune_fraction``
(and the measured ``sparsity``) is the share of weights **removed**; ``density`` is the
share kept.

One path serves every rule (:func:`prune`): a score per weight from :data:`SCORES`
(``magnitude``: ``|w|``; ``random``: uniform draws, so random pruning is magnitude pruning
with random scores) → a keep-mask, either by rank (:func:`mask_from_scores`, for
``prune_fraction``) or at a fixed level (``threshold``, ``relative_threshold``, ``p``) →
:func:`apply_mask`.

Selection by ``prune_fraction`` removes exactly ``round(prune_fraction · n)`` entries per scope,
the smallest scores first; **ties are broken by flat index: among entries tied with the last
removed score, the lowest flat index is removed first** (global scope: the flat index in the
layers' concatenation, in layer order; an ensemble: each member ranked alone). On tensors
without ties this equals ``torch.nn.utils.prune.l1_unstructured`` (layerwise) and
``global_unstructured(..., L1Unstructured)`` (global). With a prior mask, entries it removed
stay removed and count towards the ``round(prune_fraction · n)`` of the full tensor.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from probprune.config import LawSpec, ProbPruneError, PruneSpec, layer_scale
from probprune.nets import Net, check_finite

__all__ = [
    "SCORES",
    "LayerStats",
    "MaskStats",
    "PruneResult",
    "ScoreRule",
    "apply_mask",
    "count_true",
    "magnitude_mask",
    "magnitude_scores",
    "mask_from_scores",
    "n_to_prune",
    "prune",
    "random_mask",
    "random_scores",
]

Scope = Literal["layerwise", "global"]


def _check_level(name: str, value: float) -> None:
    """``prune_fraction`` (share removed) or ``p`` (probability of removal) must be in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        what = "share of weights removed" if name == "prune_fraction" else "probability of removal"
        raise ProbPruneError(f"{name}={value!r}: must be a number in [0, 1] ({what})")


def n_to_prune(prune_fraction: float, n: int) -> int:
    """Entries removed for ``prune_fraction`` of ``n``: ``round(prune_fraction·n)`` as torch does.

    >>> n_to_prune(0.5, 5), n_to_prune(0.3, 10)
    (2, 3)
    """
    _check_level("prune_fraction", prune_fraction)
    return int(round(prune_fraction * n))


def count_true(mask: Tensor) -> Tensor:
    """Number of ``True`` entries along the last dim of a bool tensor (int64, shape ``mask.shape[:-1]``).

    Equal to ``mask.sum(-1)``, but without converting every entry to int64 (on a CPU that
    conversion costs ~4 ns per entry): the bytes are summed eight at a time as int64 words in
    blocks of 255 (no carry between byte lanes), then the lanes are added.

    >>> count_true(torch.tensor([[True, False, True], [False, False, False]])).tolist()
    [2, 0]
    """
    n = mask.shape[-1]
    if mask.dtype != torch.bool:
        raise ProbPruneError(f"count_true: expected a bool tensor, got {mask.dtype}")
    # the int64 view needs a contiguous, 8-byte aligned block (a split or sliced mask may start mid-word)
    if mask.device.type != "cpu" or n % 8 != 0 or n < 8 * 255 or not mask.is_contiguous() \
            or mask.storage_offset() % 8 != 0:
        return torch.count_nonzero(mask, dim=-1)
    lead = mask.shape[:-1]
    words = mask.reshape(-1, n).view(torch.uint8).view(torch.int64)  # [R, n/8], 8 byte lanes of 0/1
    n_w = words.shape[-1]
    main = (n_w // 255) * 255
    lanes = words[:, :main].reshape(words.shape[0], -1, 255).sum(dim=-1)  # each lane ≤ 255: no carry
    total = lanes.contiguous().view(torch.uint8).sum(dim=-1, dtype=torch.int64)
    if main < n_w:
        rest = words[:, main:].sum(dim=-1, keepdim=True)  # < 255 words: no carry either
        total = total + rest.contiguous().view(torch.uint8).sum(dim=-1, dtype=torch.int64)
    return total.reshape(lead)


def _select_deferred(scores: Tensor, k: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
    """Remove the ``k`` smallest of each row of ``scores`` ``[..., n]``, ties not yet resolved.

    Returns ``(keep, kth, surplus)``: ``keep`` = scores above the k-th smallest value ``kth``
    ``[..., 1]``, and per row (flattened) how many entries tied with that value ``keep`` removes
    beyond the ``k`` asked for. Where a surplus is positive, :func:`_fix_ties` applies the tie
    rule; checking that later lets :func:`_select` read every layer's surplus back in one host
    synchronisation. ``k`` is an int (one for every row) or a tensor ``[...]``; O(n) per row.
    """
    n = scores.shape[-1]
    lead = scores.shape[:-1]
    if n == 0 or (isinstance(k, int) and k == 0):
        return (torch.ones_like(scores, dtype=torch.bool),
                torch.full((*lead, 1), -math.inf, dtype=scores.dtype, device=scores.device),
                torch.zeros(math.prod(lead), dtype=torch.long, device=scores.device))
    kt = torch.as_tensor(k, device=scores.device, dtype=torch.long).expand(lead) if lead else \
        torch.as_tensor(k, device=scores.device, dtype=torch.long)
    kk = kt.clamp(min=1).unsqueeze(-1)
    if n <= 4096:
        kth = torch.gather(torch.sort(scores, dim=-1).values, -1, kk - 1)
    elif isinstance(k, int):  # one k for every row, known on the host: no device round trip
        kth = _kth_same(scores, k)
    else:
        kth = _kth_value(scores, kk)
    keep = scores > kth
    surplus = (n - count_true(keep).unsqueeze(-1) - kk).reshape(-1)
    if not isinstance(k, int):  # rows with k = 0 keep everything (their kk was clamped to 1)
        zero = (kt == 0).reshape(-1)
        keep = keep | zero.reshape(*lead, 1)
        surplus = torch.where(zero, 0, surplus)
    return keep, kth, surplus


def _fix_ties(scores: Tensor, keep: Tensor, kth: Tensor, surplus: Tensor) -> Tensor:
    """Keep the ``surplus`` highest-index entries tied with the k-th value, per row (see above)."""
    n = scores.shape[-1]
    flat_s, flat_k, kth_f = scores.reshape(-1, n), keep.reshape(-1, n).clone(), kth.reshape(-1)
    for r in (surplus > 0).nonzero().flatten().tolist():
        idx = (flat_s[r] == kth_f[r]).nonzero().flatten()
        flat_k[r, idx[len(idx) - int(surplus[r]):]] = True
    return flat_k.reshape(scores.shape)


def _kth_same(scores: Tensor, k: int) -> Tensor:
    """k-th smallest (1-based) of every row of ``scores`` ``[..., n]``, as ``[..., 1]``."""
    flat = scores.reshape(-1, scores.shape[-1])
    n = flat.shape[-1]
    # partial selection on the smaller side (topk beats kthvalue on CPU and by ~17x on a GPU; same value)
    if k <= n // 2:
        kth = torch.topk(flat, k, dim=-1, largest=False, sorted=False).values.amax(dim=-1)
    else:
        kth = torch.topk(flat, n - k + 1, dim=-1, largest=True, sorted=False).values.amin(dim=-1)
    return kth.reshape(*scores.shape[:-1], 1)


def _kth_value(scores: Tensor, kk: Tensor) -> Tensor:
    """k-th smallest per row (``kk`` ``[..., 1]``, 1-based), via kthvalue per distinct k."""
    flat = scores.reshape(-1, scores.shape[-1])
    ks = kk.reshape(-1)
    if bool((ks == ks[0]).all()):  # one k for every row: no row copies
        return _kth_same(scores, int(ks[0]))
    out = torch.empty(flat.shape[0], 1, dtype=scores.dtype, device=scores.device)
    for kv in torch.unique(ks).tolist():
        rows = (ks == kv).nonzero().flatten()
        out[rows, 0] = torch.kthvalue(flat[rows], int(kv), dim=-1).values
    return out.reshape(*scores.shape[:-1], 1)



# --------------------------------------------------------------------------- selection by rank


@dataclass(frozen=True, eq=False)
class _Selection:
    """Keep-masks per layer, with the removed counts and thresholds when known without another pass."""

    masks: list[Tensor]
    n_removed: list[int] | None = None
    thresholds: list[float | None] | None = None


def _flat(scores: Tensor, prior: Tensor | None, lead: int) -> Tensor:
    """``scores`` as ``[*trial, n]``, with ``-inf`` where ``prior`` already removed an entry."""
    f = scores.reshape(*scores.shape[:lead], -1)
    if prior is None:
        return f
    if prior.shape != scores.shape:
        raise ProbPruneError(f"prior mask shape {tuple(prior.shape)} differs from scores {tuple(scores.shape)}")
    return torch.where(prior.reshape(f.shape), f, torch.full_like(f, -math.inf))


def _select(scores: Sequence[Tensor], prune_fraction: float, scope: Scope,
            prior: Sequence[Tensor | None], trial_dim: bool) -> _Selection:
    """:func:`mask_from_scores`, with one host synchronisation for every layer's tie check.

    Layerwise without a prior (the common case) every row removes exactly ``k``, and the k-th
    smallest score is the largest removed one: counts and thresholds come with that one read-back.
    """
    _check_level("prune_fraction", prune_fraction)
    if scope not in ("layerwise", "global"):
        raise ProbPruneError(f"scope={scope!r}: must be layerwise or global")
    if not scores:
        raise ProbPruneError("scores: no layers to prune")
    has_prior = any(pm is not None for pm in prior)
    flats = [_flat(s, pm, 1 if trial_dim else 0) for s, pm in zip(scores, prior)]
    groups = flats if scope == "layerwise" else [torch.cat(flats, dim=-1)]
    picks = []
    for f in groups:
        k: Tensor | int = n_to_prune(prune_fraction, f.shape[-1])
        if has_prior:  # entries the prior removed count towards k
            k = torch.maximum(count_true(f == -math.inf), torch.as_tensor(k, device=f.device))
        picks.append((f, k, *_select_deferred(f, k)))
    # per group: the largest tie surplus, and the largest removed score
    # (k = 0 gives kth = −inf: nothing removed)
    read = torch.stack([torch.stack([surplus.amax().to(torch.float64), kth.amax().to(torch.float64)])
                        for *_, kth, surplus in picks]).tolist()
    keeps = [keep if r[0] <= 0 else _fix_ties(f, keep, kth, surplus)  # ties: rare, resolved by flat index
             for (f, _, keep, kth, surplus), r in zip(picks, read)]
    if scope == "global":
        keeps = list(torch.split(keeps[0], [f.shape[-1] for f in flats], dim=-1))
    masks = [keep.reshape(s.shape) for keep, s in zip(keeps, scores)]
    if scope == "global" or has_prior:
        return _Selection(masks)
    n_removed = [int(k) * (f.numel() // max(1, f.shape[-1])) for f, k, *_ in picks]  # k: an int here
    return _Selection(masks, n_removed, [None if r[1] < 0 else r[1] for r in read])


def mask_from_scores(
    scores: Sequence[Tensor],
    prune_fraction: float,
    scope: Scope = "layerwise",
    prior: Sequence[Tensor | None] | None = None,
    trial_dim: bool = False,
) -> list[Tensor]:
    """Keep-masks removing the lowest-scoring ``prune_fraction`` of entries per scope.

    The selection :func:`prune` runs for every ``prune_fraction`` rule; ties by the module's rule
    (lowest flat index removed first).

    Args:
        scores: one score tensor per layer (e.g. ``|w|``); with ``trial_dim`` each has a
            leading ``K`` and every member is ranked separately.
        prune_fraction: share **removed** in [0, 1], counted per layer (``layerwise``) or
            over all layers together (``global``), prior removals included.
        scope: ``layerwise`` or ``global``.
        prior: earlier keep-masks; entries already removed stay removed and are counted.
        trial_dim: whether tensors carry a leading trial dim.

    Returns:
        Keep-masks (``bool``, True = kept), shaped like ``scores``.

    >>> m = mask_from_scores([torch.tensor([3., 1., 2., 4.])], 0.5)[0]
    >>> m.tolist()
    [True, False, False, True]
    """
    return _select(scores, prune_fraction, scope, [None] * len(scores) if prior is None else list(prior),
                   trial_dim).masks


# --------------------------------------------------------------------------- scores and fixed levels


def magnitude_scores(weights: Sequence[Tensor], generators: Sequence[torch.Generator],
                     trial_dim: bool) -> list[Tensor]:
    """Score of the magnitude rule: ``|w|`` per entry (``generators`` unused)."""
    return [w.abs() for w in weights]


def random_scores(weights: Sequence[Tensor], generators: Sequence[torch.Generator],
                  trial_dim: bool) -> list[Tensor]:
    """Score of the random rule: i.i.d. ``U[0, 1)`` float32 draws shaped like each weight.

    One generator per member (one in all without ``trial_dim``); per member, layers in order —
    so member k of an ensemble draws what the single network k would draw.
    """
    def draws(g: torch.Generator, ws: Sequence[Tensor]) -> list[Tensor]:
        return [torch.rand(w.shape, generator=g, device=w.device, dtype=torch.float32) for w in ws]

    if not trial_dim:
        return draws(generators[0], weights)
    per = [draws(g, [w[j] for w in weights]) for j, g in enumerate(generators)]
    return [torch.stack([member[i] for member in per]) for i in range(len(weights))]


@dataclass(frozen=True)
class ScoreRule:
    """One pruning method: its scores, and how a fixed level reads them.

    Attributes:
        scores: ``(weights, generators, trial_dim) -> scores`` shaped like the weights.
        removes_level: whether a score equal to a fixed level is removed (magnitude: ``|w| <= τ``)
            or kept (random: removed when ``u < p``, so with probability exactly p).
        needs_generator: whether ``scores`` draws random numbers.
        reports_threshold: whether :class:`LayerStats` reports a threshold (the level, or the
            largest removed score) — a random score has none worth reporting.
    """

    scores: Callable[[Sequence[Tensor], Sequence[torch.Generator], bool], list[Tensor]]
    removes_level: bool
    needs_generator: bool
    reports_threshold: bool


SCORES: Mapping[str, ScoreRule] = {
    "magnitude": ScoreRule(magnitude_scores, removes_level=True, needs_generator=False, reports_threshold=True),
    "random": ScoreRule(random_scores, removes_level=False, needs_generator=True, reports_threshold=False),
}


def _at_level(scores: Sequence[Tensor], levels: Sequence[float], rule: ScoreRule,
              prior: Sequence[Tensor | None]) -> _Selection:
    """Keep-masks of a fixed level per layer (``threshold``, ``ρ·a_i`` or ``p``)."""
    keeps = [s > t if rule.removes_level else s >= t for s, t in zip(scores, levels)]
    masks = [keep if pm is None else keep & pm for keep, pm in zip(keeps, prior)]
    return _Selection(masks, None, [float(t) for t in levels] if rule.reports_threshold else None)


def magnitude_mask(
    w: Tensor,
    *,
    threshold: float | None = None,
    prune_fraction: float | None = None,
    prior: Tensor | None = None,
) -> Tensor:
    """Keep-mask of the magnitude rule on one tensor (the path :func:`prune` runs).

    Exactly one of ``threshold`` (remove ``|w| <= threshold``) and ``prune_fraction`` (remove
    exactly ``round(prune_fraction·n)`` smallest ``|w|``) is given.

    >>> magnitude_mask(torch.tensor([0.1, -0.5, 0.3]), threshold=0.3).tolist()
    [False, True, False]
    """
    if (threshold is None) == (prune_fraction is None):
        raise ProbPruneError(f"threshold={threshold!r}, prune_fraction={prune_fraction!r}: give exactly one")
    scores = magnitude_scores([w], [], False)
    if prune_fraction is not None:
        return _select(scores, prune_fraction, "layerwise", [prior], False).masks[0]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise ProbPruneError(f"threshold={threshold!r}: must be a finite number >= 0")
    return _at_level(scores, [threshold], SCORES["magnitude"], [prior]).masks[0]


def random_mask(
    w: Tensor,
    generator: torch.Generator,
    *,
    p: float | None = None,
    prune_fraction: float | None = None,
    prior: Tensor | None = None,
) -> Tensor:
    """Keep-mask of the random rule on one tensor (the path :func:`prune` runs).

    Exactly one of ``p`` (each entry removed independently with probability p) and
    ``prune_fraction`` (exactly ``round(prune_fraction·n)`` entries removed, uniformly at random:
    random scores ranked like magnitudes) is given. Scores are float32 draws, as in :func:`prune`.

    >>> int((~random_mask(torch.ones(10), torch.Generator().manual_seed(0), prune_fraction=0.3)).sum())
    3
    """
    if (p is None) == (prune_fraction is None):
        raise ProbPruneError(f"p={p!r}, prune_fraction={prune_fraction!r}: give exactly one")
    scores = random_scores([w], [generator], False)
    if prune_fraction is not None:
        return _select(scores, prune_fraction, "layerwise", [prior], False).masks[0]
    _check_level("p", p)  # type: ignore[arg-type]
    return _at_level(scores, [p], SCORES["random"], [prior]).masks[0]  # type: ignore[list-item]


def apply_mask(w: Tensor, mask: Tensor, scale: float = 1.0) -> Tensor:
    """``w`` with removed entries set to 0 and survivors multiplied by ``scale`` (a new tensor)."""
    if mask.shape != w.shape:
        raise ProbPruneError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(w.shape)}")
    out = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return out * scale if scale != 1.0 else out


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class LayerStats:
    """Per-layer pruning outcome (counts summed over ensemble members)."""

    name: str
    size: int
    pruned: int
    threshold: float | None

    @property
    def sparsity(self) -> float:
        """Share removed."""
        return self.pruned / self.size if self.size else 0.0

    @property
    def density(self) -> float:
        """Share kept."""
        return 1.0 - self.sparsity


@dataclass(frozen=True)
class MaskStats:
    """Pruning report: per-layer counts and totals. ``sparsity`` = share removed."""

    layers: tuple[LayerStats, ...]

    @property
    def size(self) -> int:
        """Total prunable weights."""
        return sum(s.size for s in self.layers)

    @property
    def pruned(self) -> int:
        """Total removed."""
        return sum(s.pruned for s in self.layers)

    @property
    def sparsity(self) -> float:
        """Share removed over all pruned layers."""
        return self.pruned / self.size if self.size else 0.0

    @property
    def density(self) -> float:
        """Share kept."""
        return 1.0 - self.sparsity

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "layers": [
                {"name": s.name, "size": s.size, "pruned": s.pruned, "sparsity": s.sparsity,
                 "density": s.density, "threshold": s.threshold}
                for s in self.layers
            ],
            "total": {"size": self.size, "pruned": self.pruned, "sparsity": self.sparsity,
                      "density": self.density},
        }


@dataclass(frozen=True, eq=False)
class PruneResult:
    """What :func:`prune` returns: the pruned copy, the keep-masks by parameter name, the stats."""

    model: Any
    masks: dict[str, Tensor]
    stats: MaskStats


# --------------------------------------------------------------------------- network level


def _as_spec(spec: PruneSpec) -> PruneSpec:
    """``spec`` itself, checked to be a :class:`PruneSpec` (the one way to say a pruning rule)."""
    if not isinstance(spec, PruneSpec):
        hint = f' (write PruneSpec(method={spec!r}, …))' if isinstance(spec, str) else ""
        raise ProbPruneError(f"prune: spec must be a PruneSpec, got {type(spec).__name__}{hint}")
    return spec


def _torch_pruned(mod: nn.Module) -> list[str]:
    """Tensor names of ``mod`` re-parametrised by ``torch.nn.utils.prune`` (``<name>_orig`` × ``<name>_mask``)."""
    return [h._tensor_name for h in mod._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)]


def _weights_of(model: Net | nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Prunable weights by parameter name, and the keep-masks of ``torch.nn.utils.prune`` found on them.

    A weight pruned with ``torch.nn.utils.prune`` is read as the network computes it,
    ``weight_orig · weight_mask``; its mask is a prior.
    """
    if isinstance(model, Net):
        return dict(zip(model.names, model.weights)), {}
    if not isinstance(model, nn.Module):
        raise ProbPruneError(f"model: expected a probprune Net or an nn.Module, got {type(model).__name__}")
    out: dict[str, Tensor] = {}
    torch_masks: dict[str, Tensor] = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            name = f"{mname}.weight" if mname else "weight"
            if "weight" in _torch_pruned(mod):
                mask = mod.get_buffer("weight_mask").detach()
                out[name] = mod.get_parameter("weight_orig").detach() * mask
                torch_masks[name] = mask != 0
            else:
                out[name] = mod.weight.detach()
    if not out:
        raise ProbPruneError(f"model {type(model).__name__}: has no prunable layer (nn.Linear or nn.Conv2d)")
    for name, w in out.items():
        if not torch.isfinite(w).all():
            raise ProbPruneError(f"weights {name}: contains non-finite values")
    return out, torch_masks


def _chosen(weights: Mapping[str, Tensor], layers: Sequence[str] | None) -> list[str]:
    """The names to prune: ``layers``, checked against the prunable weights (default: all of them)."""
    names = list(weights) if layers is None else list(layers)
    for n in names:
        if n not in weights:
            raise ProbPruneError(f"layers: {n!r} is not a prunable weight (known: {', '.join(weights)})")
    if not names:
        raise ProbPruneError("layers: empty, nothing to prune")
    return names


def _both(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """The keep-mask of two priors (either may be absent)."""
    return b if a is None else a if b is None else a & b


def _generators(spec: PruneSpec, generator: torch.Generator | Sequence[torch.Generator] | None,
                n_trials: int | None) -> list[torch.Generator]:
    """The generators the method's scores draw from: one, or one per ensemble member."""
    if not SCORES[spec.method].needs_generator:
        return []
    if generator is None:
        raise ProbPruneError(f"generator: {spec.method} pruning needs a torch.Generator")
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != (n_trials or 1):
        raise ProbPruneError(f"generator: {len(gens)} given, need {n_trials or 1} (one per member)")
    return gens


def _levels(spec: PruneSpec, weights: Sequence[Tensor], law: LawSpec | None, trial: bool) -> list[float]:
    """The fixed level per layer: ``threshold``, ``ρ·a_i`` (a_i from the law) or ``p``."""
    if spec.relative_threshold is not None:
        if law is None:
            raise ProbPruneError(f"relative_threshold={spec.relative_threshold!r}: needs the law "
                                 "(a_i = K/sqrt(max fan))")
        return [spec.relative_threshold * layer_scale(w.shape[1:] if trial else w.shape, law.scale)
                for w in weights]
    return [spec.threshold if spec.threshold is not None else spec.p] * len(weights)  # type: ignore[list-item]


def _stats(names: Sequence[str], scores: Sequence[Tensor], sel: _Selection, rule: ScoreRule) -> MaskStats:
    """Counts per layer, and thresholds for a rule that reports them, in one host synchronisation.

    A threshold not known from the selection is the largest removed score (``None``: none removed).
    """
    n_removed, thresholds = sel.n_removed, sel.thresholds
    largest = rule.reports_threshold and thresholds is None
    if n_removed is None:
        rows = [torch.stack([(m.numel() - count_true(m.reshape(-1))).to(torch.float64)]
                            + ([s.masked_fill(m, -1.0).amax().to(torch.float64)] if largest else []))
                for s, m in zip(scores, sel.masks)]
        read = torch.stack(rows).tolist()
        n_removed = [int(r[0]) for r in read]
        thresholds = [None if r[1] < 0 else r[1] for r in read] if largest else thresholds
    if not rule.reports_threshold or thresholds is None:
        thresholds = [None] * len(names)
    return MaskStats(tuple(LayerStats(n, int(m.numel()), c, t)
                           for n, m, c, t in zip(names, sel.masks, n_removed, thresholds)))


def _plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``torch.nn.utils.prune`` re-parametrisation made permanent.

    ``weight = weight_orig · weight_mask`` becomes an ordinary parameter and the forward pre-hook
    is removed (``torch.nn.utils.prune.remove``), so the copy computes what the model computes.
    """
    pruned = [(mod, name) for mod in model.modules() for name in _torch_pruned(mod)]
    # the re-parametrised tensor is a non-leaf (orig × mask), which deepcopy refuses; remove()
    # recomputes it in the copy from the copy's own orig and mask
    memo: dict[int, Any] = {id(getattr(mod, name)): None for mod, name in pruned}
    out = copy.deepcopy(model, memo)
    for mod in out.modules():
        for name in _torch_pruned(mod):
            torch_prune.remove(mod, name)
    return out


def _apply(model: Net | nn.Module, masks: Mapping[str, Tensor], scale: float) -> Net | nn.Module:
    """A copy of ``model`` with ``masks`` applied (survivors × ``scale``)."""
    if isinstance(model, Net):
        return model.with_weights([apply_mask(w, masks[n], scale) if n in masks else w
                                   for n, w in zip(model.names, model.weights)])
    pruned = _plain_copy(model)
    params = dict(pruned.named_parameters())
    with torch.no_grad():
        for n, keep in masks.items():
            params[n].copy_(apply_mask(params[n], keep, scale))
    return pruned


def prune(
    model: Net | nn.Module,
    spec: PruneSpec,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    law: LawSpec | None = None,
    prior: Mapping[str, Tensor] | None = None,
    layers: Sequence[str] | None = None,
) -> PruneResult:
    """Prune a ``Net`` (single or ensemble) or any ``nn.Module`` by ``spec``; the input is never modified.

    Scores (:data:`SCORES`: ``|w|`` or random draws) → keep-masks (by rank with
    :func:`mask_from_scores` for ``prune_fraction``, else at the fixed level) → :func:`apply_mask`.
    Every ``nn.Linear``/``nn.Conv2d`` weight (or every layer of a ``Net``) is prunable; biases are
    never pruned. A module already pruned with ``torch.nn.utils.prune`` is accepted: its
    ``weight_mask`` is a prior, and the result is a plain module (``weight_orig``, the masks and
    the hooks gone, as after ``torch.nn.utils.prune.remove``).

    Args:
        model: a :class:`~probprune.nets.Net` (optionally with a trial dim: every member is
            pruned separately) or an ``nn.Module``.
        spec: the rule (:class:`~probprune.config.PruneSpec`: method, scope, one level of
            ``prune_fraction`` / ``threshold`` / ``relative_threshold`` / ``p``, ``rescale``).
        generator: required for random pruning; one per member for an ensemble.
        law: required for ``relative_threshold`` (``a_i = K/sqrt(max fan)``).
        prior: earlier keep-masks by name; removed entries stay removed and count towards
            ``prune_fraction`` of the full tensor.
        layers: parameter names to prune (default: all prunable weights).

    Returns:
        :class:`PruneResult` (pruned copy, keep-masks by parameter name, :class:`MaskStats`).

    >>> from probprune.config import NetSpec
    >>> net = Net.from_weights(NetSpec(widths=(2, 2)), [torch.tensor([[1., -3.], [0.5, 2.]])])
    >>> res = prune(net, PruneSpec(prune_fraction=0.5))
    >>> res.model.weights[0].tolist(), res.stats.sparsity
    ([[0.0, -3.0], [0.0, 2.0]], 0.5)
    """
    spec = _as_spec(spec)
    if spec.level_name is None:
        raise ProbPruneError("prune: give one level: prune_fraction, threshold, relative_threshold or p")
    if isinstance(model, Net):
        check_finite(model)
    all_w, torch_masks = _weights_of(model)
    names = _chosen(all_w, layers)
    n_trials = model.n_trials if isinstance(model, Net) else None
    trial = n_trials is not None
    ws = [all_w[n] for n in names]
    pri = [_both(None if prior is None else prior.get(n), torch_masks.get(n)) for n in names]
    rule = SCORES[spec.method]
    scores = rule.scores(ws, _generators(spec, generator, n_trials), trial)
    sel = _select(scores, spec.prune_fraction, spec.scope, pri, trial) if spec.prune_fraction is not None \
        else _at_level(scores, _levels(spec, ws, law, trial), rule, pri)
    level = spec.p if spec.p is not None else spec.prune_fraction
    scale = 1.0 / (1.0 - level) if (spec.rescale and level is not None and level < 1.0) else 1.0
    masks = dict(zip(names, sel.masks))
    return PruneResult(_apply(model, masks, scale), masks, _stats(names, scores, sel, rule))
