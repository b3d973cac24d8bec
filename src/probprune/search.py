"""One search engine for empirical sups: batched projected ascent over a ball, a sphere or a box ∩ ball.

Every lower bound of probprune (the gap around 0 of :func:`probprune.gap.sup_gap`, the local gap of
:func:`probprune.bounds.differential.gap_search`, the agreement attack, the graph gap of
:func:`probprune.bounds.graph.search_graph_gap`) maximises some ``objective(x)`` over a set of inputs. This module
does that once, for many balls (one per centre, or one per ensemble member) and many restarts at a time:

* **the region** (:class:`Region`): ``{x : ‖x − c‖ ≤ r} ∩ box`` for ℓ2 or ℓ∞, or the sphere ``‖x − c‖₂ = r``
  (used for positively homogeneous nets around 0, where the sup over the ball is r × the sup over the unit sphere);
* **starts**: given points (data points, a previous best, the best of a sampling phase), the centre, points near the
  centre, and random points (ℓ2: uniform on the sphere; ℓ∞: random vertices and uniform in the box) — drawn once as
  offsets shared by every ball, so a batch of balls gives the results of one ball at a time;
* **two phases**: all ``n_screen·n_restarts`` starts take ``screen_steps`` short steps; the ``n_restarts`` best
  trajectories (per ball) continue from their best point for ``n_steps`` steps with a fresh step-size schedule (a
  warm restart of the cosine schedule) — many cheap starts find the good basins, few long ones climb them;
* **steps**: heavy-ball momentum on the *normalised* gradient (ℓ2, sphere: ``g/‖g‖₂``, step along ``m/‖m‖₂``; ℓ∞:
  ``g/‖g‖₁``, step along ``sign(m)``), step size ``step_size·r`` decayed by a cosine to 0, then projection;
  normalised steps make the search invariant to the objective's scale, which on real nets spans many decades;
* **the witness**: the best point is kept only if a float64 check says it lies in the closed region (with a margin
  for the check's own rounding), so every value returned is attained at a returned point of the region.

Pure: tensors, a callable and an explicit ``torch.Generator`` in, new tensors out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from probprune.config import ProbPruneError

__all__ = ["Budget", "Objective", "Region", "SearchResult", "maximise"]

Objective = Callable[[Tensor], Tensor]
"""Maps points ``[R, B, d]`` (R restarts of B balls) to values ``[R, B]`` to maximise (differentiable)."""

_U64 = 2.0 ** -53
# share of the random starts placed near the centre (radius ≤ _NEAR·r) instead of on the sphere / at vertices
_NEAR = 0.1


def _unit(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2.0


@dataclass(frozen=True, eq=False)
class Region:
    """The set searched, one per ball: ``{x : ‖x − c_b‖ ≤ r} ∩ box`` (or the sphere ``‖x − c_b‖₂ = r``).

    Attributes:
        centres: ``[B, d]`` float64 centres c_b.
        radius: r > 0; for ``norm="linf"`` also a ``[B, d]`` float64 tensor of per-coordinate half-widths ≥ 0
            (ball b is the box ``c_b ± h_b``, how VNN-COMP states its properties).
        norm: ``"l2"`` or ``"linf"``.
        box: ``(lo, hi)`` every coordinate lies in, or ``None``; each centre must lie in it.
        sphere: search the ℓ2 sphere of radius r (points on it up to a rounding margin inside) instead of the
            ball; only with ``norm="l2"`` and no box.
        strict: points are provably inside (a rounding margin in :meth:`project`, a float64 check in
            :meth:`inside`). ``False`` (for callers that re-project the witness in float64 themselves, as
            :func:`probprune.bounds.certified.lower_at` does for :func:`probprune.gap.sup_gap`): ℓ2 points are
            scaled to r exactly in float64 and rounded to their dtype, so they may lie one rounding outside;
            :meth:`inside` then allows that rounding.
    """

    centres: Tensor
    radius: float | Tensor
    norm: Literal["l2", "linf"] = "l2"
    box: tuple[float, float] | None = None
    sphere: bool = False
    strict: bool = True

    def __post_init__(self) -> None:
        c = self.centres
        if not isinstance(c, Tensor) or c.dim() != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ProbPruneError(f"centres: shape {shape}, expected [B, d] with B, d >= 1")
        if c.dtype != torch.float64 or not bool(torch.isfinite(c).all()):
            raise ProbPruneError("centres: must be finite float64")
        r = self.radius
        if isinstance(r, Tensor):
            if self.norm != "linf" or r.shape != c.shape or r.dtype != torch.float64 \
                    or not bool((torch.isfinite(r) & (r >= 0)).all()):
                raise ProbPruneError(f"radius: a tensor of half-widths must be finite float64 >= 0 of the centres' "
                                     f"shape {tuple(c.shape)}, for norm='linf' (got {tuple(r.shape)}, {self.norm})")
        elif isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ProbPruneError(f"radius={r!r}: must be a finite number > 0")
        if self.norm not in ("l2", "linf"):
            raise ProbPruneError(f"norm={self.norm!r}: must be one of l2, linf")
        if self.sphere and (self.norm != "l2" or self.box is not None):
            raise ProbPruneError("sphere=True: only for an l2 region without a box")
        if self.box is not None and not bool(((c >= self.box[0]) & (c <= self.box[1])).all()):
            raise ProbPruneError(f"centres: some centre lies outside the box {self.box}")

    def inside(self, x: Tensor) -> Tensor:
        """Whether each point ``x`` ``[..., B, d]`` provably lies in the closed region (float64 check, margin).

        The ℓ2 check multiplies the computed norm by ``1 + 2(d + 4)u`` (u = 2⁻⁵³), which covers the rounding of
        the subtraction, the squares, the sum and the square root; the ℓ∞ check by ``1 + 4u``. Sphere points
        count as inside when they are in the closed ball (the sphere is searched only where the sup over the ball
        is attained on it).
        """
        dtype = x.dtype
        x = x.double()
        v = x - self.centres
        d = x.shape[-1]
        if self.norm == "linf":
            ok = (v.abs() * (1.0 + 4.0 * _U64) <= self.radius).all(-1)
        elif self.strict:
            ok = v.norm(dim=-1) * (1.0 + 2.0 * (d + 4) * _U64) <= self.radius
        else:  # the projection's float64 rounding and one rounding of every coordinate to the points' dtype
            slack = 2.0 * _unit(dtype) * (self.centres.norm(dim=-1) + self.radius)
            ok = v.norm(dim=-1) <= self.radius * (1.0 + 4.0 * (d + 6) * _U64) + slack
        if self.box is not None:
            ok = ok & ((x >= self.box[0]) & (x <= self.box[1])).all(-1)
        return ok & torch.isfinite(x).all(-1)

    def project(self, x: Tensor) -> Tensor:
        """Map points ``[R, B, d]`` (any float dtype) into the region, kept in that dtype.

        ℓ∞: clamp to ``[c − r', c + r'] ∩ box`` (``r' = r − 8u(|c| + r)`` per coordinate) with bounds rounded
        inward in x's dtype; ℓ2: clamp to the box, then
        scale towards the centre to radius ``r'`` (a convex combination of a box point and the centre stays in the
        box); the sphere: scale to ``r'``. ``r' < r`` by a margin that covers the rounding of x to its dtype and of
        the float64 check, so projected points pass :meth:`inside`.
        """
        dt = x.dtype
        u = _unit(dt)
        c = self.centres
        d = c.shape[1]
        r = self.radius
        if self.norm == "linf":
            # fl(c ± rr) is off by ≤ u(|c| + r): the margin is relative to the coordinates, not to r alone
            rr = (r - 8.0 * _U64 * (c.abs() + r)).clamp_min(0.0)
            lo, hi = c - rr, c + rr
            if self.box is not None:
                lo, hi = lo.clamp_min(self.box[0]), hi.clamp_max(self.box[1])
            lo_d, hi_d = _inward(lo, hi, dt)
            return torch.minimum(torch.maximum(x, lo_d), hi_d)
        if self.box is not None:
            x = x.clamp(self.box[0], self.box[1])
        x64 = x.double()
        v = x64 - c
        nrm = v.norm(dim=-1, keepdim=True)
        # ‖cast error‖ ≤ u‖x‖ ≤ u(‖c‖ + r); the float64 check's factor 1 + 2(d+4)u64 plus this projection's rounding
        margin = 4.0 * u * (c.norm(dim=-1, keepdim=True) + r) + r * 4.0 * (d + 6) * _U64
        rr = (r - margin).clamp_min(0.0) if self.strict else torch.full_like(margin, float(r))
        scale = rr / nrm.clamp_min(1e-300)
        if not self.sphere:
            scale = torch.where(nrm > rr, scale, torch.ones_like(scale))
        out = c + v * scale
        if self.box is not None:  # the combination is in the box in exact arithmetic; rounding may leave it
            out = out.clamp(self.box[0], self.box[1])
        return out.to(dt)

    def random_starts(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """``[n, B, d]`` random points of the region, the same offsets from every centre (then projected).

        Sphere: uniform on the sphere. ℓ2 ball: ``n − n//8`` uniform on the sphere, ``n//8`` near the centre
        (radius ≤ r/10). ℓ∞: half random vertices ``c ± r``, the rest uniform in the cube, ``n//8`` of them in the
        cube of half-width r/10.
        """
        b, d = self.centres.shape
        dev = self.centres.device
        n_near = 0 if self.sphere else n // 8
        if self.norm == "linf":
            u = torch.rand(n, d, generator=generator, dtype=torch.float64, device=dev) * 2.0 - 1.0
            n_vert = (n - n_near) // 2
            u[:n_vert] = torch.where(u[:n_vert] >= 0, 1.0, -1.0)
            off = u
        else:
            z = torch.randn(n, d, generator=generator, dtype=torch.float64, device=dev)
            off = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        if n_near:
            off[n - n_near:] = off[n - n_near:] * _NEAR
        pts = self.centres.unsqueeze(0) + self.radius * off.unsqueeze(1)
        return self.project(pts.to(dtype))

    def scaled(self, factor: float, dtype: torch.dtype) -> float | Tensor:
        """``factor · r`` (a scalar, or the half-widths ``[B, d]`` in ``dtype``): a step length per coordinate."""
        return factor * self.radius if not isinstance(self.radius, Tensor) else (factor * self.radius).to(dtype)


def _inward(lo: Tensor, hi: Tensor, dt: torch.dtype) -> tuple[Tensor, Tensor]:
    """``lo``, ``hi`` (float64) as ``dt`` values rounded towards the inside of ``[lo, hi]``."""
    lo_d, hi_d = lo.to(dt), hi.to(dt)
    if dt == torch.float64:
        return lo_d, hi_d
    lo_d = torch.where(lo_d.double() < lo, torch.nextafter(lo_d, torch.full_like(lo_d, math.inf)), lo_d)
    hi_d = torch.where(hi_d.double() > hi, torch.nextafter(hi_d, torch.full_like(hi_d, -math.inf)), hi_d)
    return lo_d, torch.maximum(hi_d, lo_d)


@dataclass(frozen=True)
class Budget:
    """How hard :func:`maximise` searches (per ball).

    Args:
        n_restarts: trajectories of the second phase (R ≥ 0; 0 = only evaluate the starts).
        n_steps: steps of the second phase (≥ 0; 0 = only evaluate the starts).
        step_size: first step as a fraction of r (> 0), decayed by a cosine to 0 in each phase.
        n_screen: the first phase runs ``n_screen·n_restarts`` starts (≥ 1; 1 = no screening).
        screen_steps: steps of the first phase (≥ 0; 0 = no screening: the first R starts go on).
        momentum: heavy-ball factor β ∈ [0, 1).
        screen_step_size: first step of the first phase as a fraction of r (``None``: ``step_size``); larger
            steps explore more basins in few steps.
        power: in the second phase, also try the Frank–Wolfe point ``argmax_{y ∈ ball} ⟨∇, y⟩`` at every step
            (ℓ2: ``c + r·∇/‖∇‖``, the power-method step, exact for one linear layer; ℓ∞: the vertex
            ``c + r·sign(∇)``) and take it where it beats the current point (one more evaluation per step).
    """

    n_restarts: int = 8
    n_steps: int = 100
    step_size: float = 0.25
    n_screen: int = 8
    screen_steps: int = 25
    momentum: float = 0.8
    screen_step_size: float | None = None
    power: bool = True

    def __post_init__(self) -> None:
        for name, lo in (("n_restarts", 0), ("n_steps", 0), ("n_screen", 1), ("screen_steps", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ProbPruneError(f"{name}={v!r}: must be an integer >= {lo}")
        for name in ("step_size", "screen_step_size"):
            s = getattr(self, name)
            if s is None and name == "screen_step_size":
                continue
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise ProbPruneError(f"{name}={s!r}: must be a finite number > 0")
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise ProbPruneError(f"momentum={m!r}: must be a number in [0, 1)")

    @property
    def n_evals(self) -> int:
        """Objective evaluations per ball of :func:`maximise` without given starts (with them: ``SearchResult``)."""
        if self.n_restarts == 0 or self.n_steps == 0:  # the starts are only evaluated
            return max(self.n_screen * self.n_restarts, self.n_restarts, 1)
        screen = self.n_screen * self.n_restarts * self.screen_steps if self.n_screen > 1 else 0
        return screen + self.n_restarts * self.n_steps * (2 if self.power else 1)


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The best point found per ball.

    Attributes:
        value: ``[B]`` objective at ``x`` (the dtype of the search); ``-inf`` where no point of the region was
            evaluated to a number.
        x: ``[B, d]`` best points, each checked by :meth:`Region.inside` (the centre where ``value`` is ``-inf``).
        n_evals: objective evaluations per ball (each with a gradient, except the final evaluation of starts
            when nothing is climbed).
    """

    value: Tensor
    x: Tensor
    n_evals: int


class _Best:
    """Running best feasible point per ball."""

    def __init__(self, region: Region, dtype: torch.dtype) -> None:
        self.region = region
        self.value = torch.full(region.centres.shape[:1], -math.inf, dtype=dtype, device=region.centres.device)
        self.x = region.centres.to(dtype).clone()

    def offer(self, x: Tensor, val: Tensor) -> None:
        ok = self.region.inside(x) & ~torch.isnan(val)
        vv = torch.where(ok, val, torch.full_like(val, -math.inf))
        top, idx = vv.max(0)
        better = top > self.value
        pick = x[idx, torch.arange(idx.shape[0], device=x.device)]
        self.x = torch.where(better.unsqueeze(-1), pick, self.x)
        self.value = torch.where(better, top, self.value)


def _cosine(step_size: float, t: int, n: int) -> float:
    return step_size * 0.5 * (1.0 + math.cos(math.pi * t / n))


def _direction(grad: Tensor, mom: Tensor, beta: float, norm: str) -> tuple[Tensor, Tensor]:
    """Heavy-ball update on the normalised gradient; returns (new momentum, step direction)."""
    tiny = torch.finfo(grad.dtype).tiny
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if norm == "linf":
        mom = beta * mom + grad / grad.abs().sum(-1, keepdim=True).clamp_min(tiny)
        return mom, mom.sign()
    mom = beta * mom + grad / grad.norm(dim=-1, keepdim=True).clamp_min(tiny)
    return mom, mom / mom.norm(dim=-1, keepdim=True).clamp_min(tiny)


def _climb(objective: Objective, region: Region, x: Tensor, n_steps: int, step_size: float, budget: Budget,
           best: _Best, power: bool = False) -> tuple[Tensor, Tensor]:
    """``n_steps`` gradient evaluations from ``x`` ``[P, B, d]``, a projected momentum step after each but the last.

    With ``power``, every step also tries the Frank–Wolfe point, and the point after the last step is evaluated
    too (``2·n_steps`` evaluations per trajectory in all; ``n_steps`` without). Returns each trajectory's best
    (value, x).
    """
    traj_v = torch.full(x.shape[:2], -math.inf, dtype=x.dtype, device=x.device)
    traj_x = x.clone()
    mom = torch.zeros_like(x)

    def record(pt: Tensor, val: Tensor) -> None:
        nonlocal traj_v, traj_x
        best.offer(pt, val)
        better = val > traj_v  # NaN never better
        traj_v = torch.where(better, val, traj_v)
        traj_x = torch.where(better.unsqueeze(-1), pt, traj_x)

    for t in range(n_steps):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            val = objective(xr)
            (grad,) = torch.autograd.grad(val.sum(), xr)
        with torch.no_grad():
            val = val.detach()
            record(xr.detach(), val)
            if t == n_steps - 1 and not power:
                break
            mom, dirn = _direction(grad, mom, budget.momentum, region.norm)
            x = region.project(x + region.scaled(_cosine(step_size, t, n_steps), x.dtype) * dirn)
            if power and t < n_steps - 1:
                x = _power_step(objective, region, xr.detach(), val, grad, x, best)
    if power and n_steps:
        with torch.no_grad():  # the last step's point
            record(x, objective(x))
    return traj_v, traj_x


def _power_step(objective: Objective, region: Region, x0: Tensor, v0: Tensor, grad: Tensor, x: Tensor,
                best: _Best) -> Tensor:
    """The Frank–Wolfe point of ``x0`` where it beats ``v0`` (the value at ``x0``), else ``x`` (the momentum step)."""
    g = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    c = region.centres.to(g.dtype)
    if region.norm == "linf":
        y = c + region.scaled(1.0, g.dtype) * g.sign()
    else:
        y = c + region.scaled(1.0, g.dtype) * g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    y = region.project(y)
    vy = objective(y)
    best.offer(y, vy)
    return torch.where((vy > v0).unsqueeze(-1), y, x)


def maximise(objective: Objective, region: Region, budget: Budget, generator: torch.Generator, *,
             starts: Tensor | None = None, dtype: torch.dtype = torch.float64,
             centre_start: bool = True) -> SearchResult:
    """Maximise ``objective`` over ``region`` for every ball at once (projected momentum ascent, two phases).

    Args:
        objective: points ``[R, B, d]`` → values ``[R, B]``, differentiable in the points (module docstring).
        region: the B balls (or spheres).
        budget: restarts, steps, schedule (:class:`Budget`).
        generator: the only randomness (the random starts).
        starts: ``[S, B, d]`` (per ball) or ``[S, d]`` (shared) points to start from before the random ones (data
            points, a previous best, the best of a sampling phase); projected into the region first.
        dtype: dtype of the points given to ``objective`` (the nets' dtype; witnesses are checked in float64).
        centre_start: start at the centre too (ignored on a sphere).

    Returns:
        :class:`SearchResult`: per ball the best value found at a point of the region, and that point.

    >>> w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    >>> reg = Region(torch.zeros(1, 2, dtype=torch.float64), 2.0)
    >>> res = maximise(lambda x: (x @ w.T).squeeze(-1), reg, Budget(n_restarts=2, n_steps=20),
    ...                torch.Generator().manual_seed(0))
    >>> round(float(res.value[0]), 6)   # r·‖w‖₂ = 2·5
    10.0
    """
    if not isinstance(region, Region):
        raise ProbPruneError(f"region: expected a Region, got {type(region).__name__}")
    if not isinstance(budget, Budget):
        raise ProbPruneError(f"budget: expected a Budget, got {type(budget).__name__}")
    if not isinstance(generator, torch.Generator):
        raise ProbPruneError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    pool = _pool(region, budget, generator, starts, dtype, centre_start)
    best = _Best(region, dtype)
    r = budget.n_restarts
    if r == 0 or budget.n_steps == 0:
        with torch.no_grad():
            best.offer(pool, objective(pool))
        return SearchResult(best.value, best.x, pool.shape[0])
    n_evals = 0
    if budget.n_screen > 1 and budget.screen_steps > 0 and pool.shape[0] > r:
        first = budget.step_size if budget.screen_step_size is None else budget.screen_step_size
        tv, tx = _climb(objective, region, pool, budget.screen_steps, first, budget, best)
        n_evals += pool.shape[0] * budget.screen_steps
        idx = tv.nan_to_num(-math.inf).topk(r, dim=0).indices  # [R, B]
        x = tx.gather(0, idx.unsqueeze(-1).expand(-1, -1, tx.shape[-1]))
    else:
        x = pool[:r]
    _climb(objective, region, x, budget.n_steps, budget.step_size, budget, best, budget.power)
    n_evals += x.shape[0] * budget.n_steps * (2 if budget.power else 1)
    return SearchResult(best.value, best.x, n_evals)


def _pool(region: Region, budget: Budget, generator: torch.Generator, starts: Tensor | None,
          dtype: torch.dtype, centre_start: bool) -> Tensor:
    """All starting points ``[P, B, d]``: given starts, the centre, then random points up to ``n_screen·R``."""
    b, d = region.centres.shape
    parts: list[Tensor] = []
    if starts is not None:
        if not isinstance(starts, Tensor) or starts.dim() not in (2, 3) or starts.shape[-1] != d \
                or (starts.dim() == 3 and starts.shape[1] != b):
            shape = tuple(starts.shape) if isinstance(starts, Tensor) else type(starts).__name__
            raise ProbPruneError(f"starts: shape {shape}, expected [S, {d}] or [S, {b}, {d}]")
        s = starts.detach().to(device=region.centres.device, dtype=dtype)
        if s.dim() == 2:
            s = s.unsqueeze(1).expand(-1, b, -1)
        if not bool(torch.isfinite(s).all()):
            raise ProbPruneError("starts: must be finite")
        parts.append(region.project(s))
    if centre_start and not region.sphere:
        parts.append(region.centres.to(dtype).unsqueeze(0))
    have = sum(p.shape[0] for p in parts)
    want = max(budget.n_screen * budget.n_restarts, budget.n_restarts, 1)
    n_rand = max(want - have, 0 if have else 1)
    if n_rand:
        parts.append(region.random_starts(n_rand, generator, dtype))
    return torch.cat(parts)
