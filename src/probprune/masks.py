"""Pruning masks: magnitude and random rules, layerwise or global, for ``Net`` and any ``nn.Module``.

A mask is a ``bool`` tensor shaped like its weight, **True = kept**. ``prune_fraction``
(and the measured ``sparsity``) is the share of weights **removed**; ``density`` is the
share kept. One selection routine serves every rule: random pruning by fraction is
magnitude pruning with random scores.

Selection by fraction removes exactly ``round(prune_fraction · n)`` entries per scope,
the smallest scores first, ties broken by flat index (lowest first). On tensors without
ties this equals ``torch.nn.utils.prune.l1_unstructured`` (layerwise) and
``global_unstructured(..., L1Unstructured)`` (global).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from probprune.config import LawSpec, ProbPruneError, PruneSpec, layer_scale
from probprune.nets import Net, check_finite

__all__ = [
    "LayerStats",
    "MaskStats",
    "PruneResult",
    "apply_mask",
    "count_true",
    "magnitude_mask",
    "mask_from_scores",
    "n_to_prune",
    "prune",
    "random_mask",
]

Scope = Literal["layerwise", "global"]


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ProbPruneError(f"{name}={value!r}: must be a number in [0, 1] (share of weights removed)")


def n_to_prune(prune_fraction: float, n: int) -> int:
    """Entries removed for ``prune_fraction`` of ``n``: ``round(prune_fraction·n)`` as torch does.

    >>> n_to_prune(0.5, 5), n_to_prune(0.3, 10)
    (2, 3)
    """
    _check_fraction("prune_fraction", prune_fraction)
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


def _select_smallest(scores: Tensor, k: Tensor | int) -> Tensor:
    """Keep-mask over the last dim of ``scores`` ``[..., n]`` removing the ``k`` smallest.

    Ties at the k-th value are removed lowest flat index first. O(n) per row.
    """
    return _select_smallest_kth(scores, k)[0]


def _select_smallest_kth(scores: Tensor, k: Tensor | int) -> tuple[Tensor, Tensor]:
    """:func:`_select_smallest` and the k-th smallest value per row ``[..., 1]`` (k ≥ 1; undefined for k = 0)."""
    keep, kth, surplus = _select_smallest_deferred(scores, k)
    if bool((surplus > 0).any()):
        keep = _fix_ties(scores, keep, kth, surplus)
    return keep, kth


def _select_smallest_deferred(scores: Tensor, k: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
    """The first, synchronisation-free half of :func:`_select_smallest_kth`.

    Returns ``(keep, kth, surplus)``: ``keep`` = scores above the k-th smallest value, and per
    row (flattened) how many entries tied with that value are removed beyond the ``k`` asked
    for. Where a surplus is positive the caller must pass all three to :func:`_fix_ties`; doing
    that check later lets a caller read every layer's surplus back in one host synchronisation.
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


def mask_from_scores(
    scores: Sequence[Tensor],
    prune_fraction: float,
    scope: Scope = "layerwise",
    prior: Sequence[Tensor | None] | None = None,
    trial_dim: bool = False,
) -> list[Tensor]:
    """Keep-masks removing the lowest-scoring ``prune_fraction`` of entries per scope.

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
    _check_fraction("prune_fraction", prune_fraction)
    if scope not in ("layerwise", "global"):
        raise ProbPruneError(f"scope={scope!r}: must be layerwise or global")
    if not scores:
        raise ProbPruneError("scores: no layers to prune")
    prior_l = list(prior) if prior is not None else [None] * len(scores)
    lead = 1 if trial_dim else 0
    flats: list[Tensor] = []
    for s, pm in zip(scores, prior_l):
        f = s.reshape(*s.shape[:lead], -1)
        if pm is not None:
            if pm.shape != s.shape:
                raise ProbPruneError(f"prior mask shape {tuple(pm.shape)} differs from scores {tuple(s.shape)}")
            f = torch.where(pm.reshape(f.shape), f, torch.full_like(f, -math.inf))
        flats.append(f)

    def one_scope(f: Tensor) -> Tensor:
        n = f.shape[-1]
        k = n_to_prune(prune_fraction, n)
        if prior is None:
            return _select_smallest(f, k)
        n_prior = count_true(f == -math.inf)
        return _select_smallest(f, torch.maximum(n_prior, torch.as_tensor(k, device=f.device)))

    if scope == "layerwise":
        keeps = [one_scope(f) for f in flats]
    else:
        cat = torch.cat(flats, dim=-1)
        keep_all = one_scope(cat)
        keeps = list(torch.split(keep_all, [f.shape[-1] for f in flats], dim=-1))
    return [k.reshape(s.shape) for k, s in zip(keeps, scores)]


def magnitude_mask(
    w: Tensor,
    threshold: float | None = None,
    fraction: float | None = None,
    prior: Tensor | None = None,
) -> Tensor:
    """Keep-mask of the magnitude rule on one tensor.

    Exactly one of ``threshold`` (remove ``|w| <= threshold``) and ``fraction`` (remove exactly
    ``round(fraction·n)`` smallest ``|w|``) is given.

    >>> magnitude_mask(torch.tensor([0.1, -0.5, 0.3]), threshold=0.3).tolist()
    [False, True, False]
    """
    if (threshold is None) == (fraction is None):
        raise ProbPruneError(f"threshold={threshold!r}, fraction={fraction!r}: give exactly one")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not math.isfinite(threshold) or threshold < 0:
            raise ProbPruneError(f"threshold={threshold!r}: must be a finite number >= 0")
        keep = w.abs() > threshold
        return keep if prior is None else keep & prior
    return mask_from_scores([w.abs()], fraction, "layerwise", [prior])[0]  # type: ignore[arg-type]


def random_mask(
    w: Tensor,
    p: float,
    generator: torch.Generator,
    exact: bool = False,
    prior: Tensor | None = None,
) -> Tensor:
    """Keep-mask of the random rule: each entry removed independently with probability ``p``.

    With ``exact=True`` exactly ``round(p·n)`` entries are removed, uniformly at random
    (random scores ranked like magnitudes).
    """
    _check_fraction("p", p)
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=torch.float32 if
                   w.dtype not in (torch.float64,) else torch.float64)
    if exact:
        return mask_from_scores([u], p, "layerwise", [prior])[0]
    keep = u >= p
    return keep if prior is None else keep & prior


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


def _weights_of(model: Net | nn.Module) -> dict[str, Tensor]:
    if isinstance(model, Net):
        return dict(zip(model.names, model.weights))
    if isinstance(model, nn.Module):
        out: dict[str, Tensor] = {}
        for mname, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                out[f"{mname}.weight" if mname else "weight"] = mod.weight.detach()
        if not out:
            raise ProbPruneError(f"model {type(model).__name__}: has no prunable layer (nn.Linear or nn.Conv2d)")
        return out
    raise ProbPruneError(f"model: expected a probprune Net or an nn.Module, got {type(model).__name__}")


def _law_scale_of(name: str, w: Tensor, law: LawSpec, trial: bool) -> float:
    return layer_scale(w.shape[1:] if trial else w.shape, law.scale)


def prune(
    model: Net | nn.Module,
    method: Literal["magnitude", "random"] = "magnitude",
    *,
    prune_fraction: float | None = None,
    threshold: float | None = None,
    relative_threshold: float | None = None,
    p: float | None = None,
    scope: Scope = "layerwise",
    rescale: bool = False,
    layers: Sequence[str] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    law: LawSpec | None = None,
    prior: Mapping[str, Tensor] | None = None,
) -> PruneResult:
    """Prune a ``Net`` (single or ensemble) or any ``nn.Module``; the input is never modified.

    Every ``nn.Linear``/``nn.Conv2d`` weight (or every layer of a ``Net``) is prunable; biases
    are never pruned. Give exactly one level:

    * ``prune_fraction`` — share **removed** (density = 1 − prune_fraction), exact count per
      scope; magnitude ranks ``|w|``, random ranks uniform random scores.
    * ``threshold`` — magnitude: remove ``|w| <= threshold``.
    * ``relative_threshold`` ρ — magnitude: remove ``|w| <= ρ·a_i`` with a_i from ``law``.
    * ``p`` — random: remove each weight independently with probability p.

    Args:
        model: a :class:`~probprune.nets.Net` (optionally with a trial dim: every member is
            pruned separately) or an ``nn.Module``.
        method: ``magnitude`` or ``random``.
        scope: ``layerwise`` or ``global`` (one ranking over all pruned layers, per member).
        rescale: random only — survivors × 1/(1 − level).
        layers: parameter names to prune (default: all prunable weights).
        generator: required for random pruning; one per member for an ensemble.
        law: required for ``relative_threshold``.
        prior: earlier keep-masks by name; removed entries stay removed.

    Returns:
        :class:`PruneResult` (pruned copy, keep-masks by parameter name, :class:`MaskStats`).

    >>> from probprune.config import NetSpec
    >>> net = Net.from_weights(NetSpec(widths=(2, 2)), [torch.tensor([[1., -3.], [0.5, 2.]])])
    >>> res = prune(net, "magnitude", prune_fraction=0.5)
    >>> res.model.weights[0].tolist(), res.stats.sparsity
    ([[0.0, -3.0], [0.0, 2.0]], 0.5)
    """
    spec = PruneSpec(method=method, scope=scope, prune_fraction=prune_fraction, threshold=threshold,
                     relative_threshold=relative_threshold, p=p, rescale=rescale)
    if spec.level_name is None:
        raise ProbPruneError("prune: give one level: prune_fraction, threshold, relative_threshold or p")
    if relative_threshold is not None and law is None:
        raise ProbPruneError(f"relative_threshold={relative_threshold!r}: needs the law (a_i = K/sqrt(max fan))")
    all_w = _weights_of(model)
    trial = isinstance(model, Net) and model.n_trials is not None
    if isinstance(model, Net):
        check_finite(model)
    else:
        for name, w in all_w.items():
            if not torch.isfinite(w).all():
                raise ProbPruneError(f"weights {name}: contains non-finite values")
    names = list(all_w) if layers is None else list(layers)
    for n in names:
        if n not in all_w:
            raise ProbPruneError(f"layers: {n!r} is not a prunable weight (known: {', '.join(all_w)})")
    if not names:
        raise ProbPruneError("layers: empty, nothing to prune")
    ws = [all_w[n] for n in names]
    pri = [None if prior is None else prior.get(n) for n in names]

    gens: list[torch.Generator] = []
    if method == "random":
        if generator is None:
            raise ProbPruneError("generator: random pruning needs a torch.Generator")
        gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
        k = model.n_trials if trial else None  # type: ignore[union-attr]
        if (k is None and len(gens) != 1) or (k is not None and len(gens) != k):
            raise ProbPruneError(f"generator: {len(gens)} given, need {1 if k is None else k} (one per member)")

    thresholds: list[float | None] = [None] * len(ws)
    largest_removed: list[Tensor] | None = None
    deferred: list[tuple[Tensor, Tensor, Tensor, Tensor, int]] = []  # (scores, keep, kth, surplus, k) per layer
    if method == "magnitude" and spec.level_name in ("threshold", "relative_threshold"):
        keeps = []
        for i, (n, w) in enumerate(zip(names, ws)):
            tau = threshold if threshold is not None else \
                relative_threshold * _law_scale_of(n, w, law, trial)  # type: ignore[operator, arg-type]
            thresholds[i] = float(tau)  # type: ignore[arg-type]
            keep = w.abs() > tau
            pm = pri[i]
            keeps.append(keep if pm is None else keep & pm)
    elif method == "magnitude":
        mags = [w.abs() for w in ws]
        # largest removed |w| per layer (max over members of an ensemble; −1 when nothing was
        # removed → None), kept on the device and read back once with the counts below
        if scope == "layerwise" and all(pm is None for pm in pri):
            # the k-th smallest |w| is the largest removed one: no extra pass over the weights
            # ties at the k-th value are checked in the one read-back below (they almost never occur)
            keeps, largest_removed = [], []
            for mag in mags:
                f = mag.reshape(*mag.shape[:1 if trial else 0], -1)
                k = n_to_prune(prune_fraction, f.shape[-1])  # type: ignore[arg-type]
                keep, kth, surplus = _select_smallest_deferred(f, k)
                keeps.append(keep.reshape(mag.shape))
                deferred.append((f, keep, kth, surplus, k))
                largest_removed.append(kth.amax() if k > 0 else torch.full((), -1.0, device=mag.device))
        else:
            keeps = mask_from_scores(mags, prune_fraction, scope, pri, trial_dim=trial)  # type: ignore[arg-type]
            largest_removed = [mag.masked_fill(keep, -1.0).amax() for mag, keep in zip(mags, keeps)]
    else:
        # one generator per member; per member, layers in order
        def scores_for(g: torch.Generator, shapes_ws: list[Tensor]) -> list[Tensor]:
            return [torch.rand(w.shape, generator=g, device=w.device, dtype=torch.float32) for w in shapes_ws]

        if trial:
            per = [scores_for(g, [w[j] for w in ws]) for j, g in enumerate(gens)]
            scores = [torch.stack([per[j][i] for j in range(len(gens))]) for i in range(len(ws))]
        else:
            scores = scores_for(gens[0], ws)
        if p is not None:
            keeps = [s >= p if pm is None else (s >= p) & pm for s, pm in zip(scores, pri)]
        else:
            keeps = mask_from_scores(scores, prune_fraction, scope, pri, trial_dim=trial)  # type: ignore[arg-type]
    level = p if p is not None else prune_fraction
    scale = 1.0 / (1.0 - level) if (rescale and level is not None and level < 1.0) else 1.0

    # one host synchronisation for every count (and the magnitude thresholds)
    if deferred:
        # exact-count layerwise ranking: each row removed k, plus its tie surplus
        read = torch.stack([torch.stack([d[3].amax().to(torch.float64), t.to(torch.float64)])
                            for d, t in zip(deferred, largest_removed or [])]).tolist()
        for i, (f, keep, kth, surplus, _) in enumerate(deferred):
            if read[i][0] > 0:  # rare: resolve the ties (lowest flat index removed first)
                keeps[i] = _fix_ties(f, keep, kth, surplus).reshape(keeps[i].shape)
        n_removed = [k * (int(f.numel()) // max(1, int(f.shape[-1]))) for f, _, _, _, k in deferred]
        thresholds = [None if r[1] < 0 else float(r[1]) for r in read]
    elif largest_removed is not None:
        counts = [k.numel() - count_true(k.reshape(-1)) for k in keeps]
        read = torch.stack([torch.stack([c.to(torch.float64), t.to(torch.float64)])
                            for c, t in zip(counts, largest_removed)]).tolist()
        n_removed = [int(r[0]) for r in read]
        thresholds = [None if r[1] < 0 else float(r[1]) for r in read]
    else:
        counts = [k.numel() - count_true(k.reshape(-1)) for k in keeps]
        n_removed = [int(v) for v in torch.stack(counts).tolist()]
    masks = dict(zip(names, keeps))
    stats = MaskStats(tuple(
        LayerStats(n, int(k.numel()), n_removed[i], thresholds[i])
        for i, (n, k) in enumerate(zip(names, keeps))
    ))
    if isinstance(model, Net):
        new_w = [apply_mask(w, masks[n], scale) if n in masks else w for n, w in zip(model.names, model.weights)]
        return PruneResult(model.with_weights(new_w), masks, stats)
    pruned = copy.deepcopy(model)
    params = dict(pruned.named_parameters())
    with torch.no_grad():
        for n, keep in masks.items():
            params[n].copy_(apply_mask(params[n], keep, scale))
    return PruneResult(pruned, masks, stats)
