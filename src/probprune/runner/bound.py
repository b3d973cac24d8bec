"""The ``bound`` workflow: evaluate or invert the probabilistic gap bound (``docs/theory.md``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from probprune.bounds.paper import implied_constants, paper_min_width
from probprune.bounds.probabilistic import (
    check_assumptions,
    probabilistic_bound,
    solve_max_prune,
    solve_min_width,
    theory_exponent,
)
from probprune.config import MIN_DELTA, LawSpec, NetSpec, ProbPruneError, PruneSpec

T = TypeVar("T")

__all__ = ["BoundJob", "check_job", "run_bound"]

Solve = Literal["none", "max-prune", "min-width"]


@dataclass(frozen=True)
class BoundJob:
    """What ``probprune bound`` computes.

    Args:
        net, law, prune: the setting (``prune`` carries the level, or a schedule c·h^{−α}).
        delta: δ ∈ (0, 1).
        eps: ε* > 0 (needed by the solvers).
        solve: ``none`` (print ε(δ)), ``max-prune`` or ``min-width``.
        radius: input ball radius r.
        theorem: ``auto``, ``operator`` or ``net``.
    """

    net: NetSpec
    law: LawSpec
    prune: PruneSpec
    delta: float = 0.05
    eps: float | None = None
    solve: Solve = "none"
    radius: float = 1.0
    theorem: Literal["auto", "operator", "net"] = "auto"

    def __post_init__(self) -> None:
        if self.solve not in ("none", "max-prune", "min-width"):
            raise ProbPruneError(f"solve={self.solve!r}: must be none, max-prune or min-width")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not 0.0 < self.delta < 1.0:
            raise ProbPruneError(f"delta={self.delta!r}: must be in (0, 1)")
        if self.delta < MIN_DELTA:
            raise ProbPruneError(f"delta={self.delta!r}: must be >= {MIN_DELTA:g} (smaller values underflow)")
        if self.eps is not None and (isinstance(self.eps, bool) or not isinstance(self.eps, (int, float))
                                     or not self.eps > 0.0 or self.eps == float("inf")):
            raise ProbPruneError(f"eps={self.eps!r}: must be a finite number > 0")
        if self.solve != "none" and self.eps is None:
            raise ProbPruneError(f"eps=None: --solve {self.solve} needs --eps")
        if self.solve == "none" and self.prune.level_name is None and self.prune.schedule_c is None:
            raise ProbPruneError("prune: give one level: --relative-threshold, --threshold, --p or --prune-fraction")
        if self.solve == "min-width" and self.prune.level_name is None and self.prune.schedule_c is None:
            raise ProbPruneError("prune: --solve min-width needs a fixed level or a schedule (--c and --alpha)")


@contextmanager
def _in_range(job: BoundJob) -> Iterator[None]:
    """Turn float overflow / division by zero inside the bound into one error naming the inputs.

    The bound's formulas use powers of the law's scale (a_i⁴), of the schedule constant (c^{1/α})
    and 1/δ; inputs near the float limits leave the float64 range, and the answer would be no number.
    """
    try:
        yield
    except (OverflowError, ZeroDivisionError) as e:
        pr = job.prune
        parts = [f"law.scale={job.law.scale!r}", f"delta={job.delta!r}", f"radius={job.radius!r}"]
        if pr.schedule_c is not None:
            parts.append(f"schedule c={pr.schedule_c!r}, alpha={pr.schedule_alpha!r}")
        if job.eps is not None:
            parts.append(f"eps={job.eps!r}")
        raise ProbPruneError(f"{', '.join(parts)}: the bound leaves the float64 range ({type(e).__name__}: "
                             f"{e}); use values further from the float limits") from None


def _guarded(job: BoundJob, fn: Callable[[], T]) -> T:
    with _in_range(job):
        return fn()


def check_job(job: BoundJob) -> None:
    """Validate assumptions and levels without computing (so the CLI fails before printing anything)."""
    _guarded(job, lambda: check_assumptions(job.net, job.law, job.delta, job.radius, job.prune))
    if job.solve == "min-width" and job.net.kind != "fcn":
        raise ProbPruneError(f"arch={job.net.to_arch()!r}: min-width solves for FCN hidden widths")


def run_bound(job: BoundJob) -> dict[str, Any]:
    """Evaluate the job; returns a plain-JSON document (``bound`` plus, for solvers, the answer).

    Raises:
        ProbPruneError: bad settings, or inputs so close to the float limits that the bound overflows.
    """
    return _guarded(job, lambda: _run_bound(job))


def _run_bound(job: BoundJob) -> dict[str, Any]:
    doc: dict[str, Any] = {"solve": job.solve, "delta": job.delta, "eps_target": job.eps}
    if job.solve == "none":
        b = probabilistic_bound(job.net, job.law, job.prune, job.delta, radius=job.radius, theorem=job.theorem)
        doc["bound"] = b.to_dict()
    elif job.solve == "max-prune":
        level, b = solve_max_prune(job.net, job.law, job.prune, job.delta, job.eps,  # type: ignore[arg-type]
                                   radius=job.radius)
        doc["answer"] = {"level": level,
                         "level_name": "relative_threshold" if job.prune.method == "magnitude" else "p"}
        doc["bound"] = b.to_dict()
    else:
        h, b = solve_min_width(job.net, job.law, job.prune, job.delta, job.eps,  # type: ignore[arg-type]
                               radius=job.radius)
        doc["answer"] = {"hidden_width": h}
        doc["bound"] = b.to_dict()
        pr = job.prune
        if pr.schedule_c is not None and pr.schedule_alpha is not None:
            try:
                consts = implied_constants(job.net, job.law, pr.method, pr.schedule_c, pr.schedule_alpha,
                                           rescale=pr.rescale, radius=job.radius)
            except ProbPruneError as e:
                raise ProbPruneError(f"schedule c={pr.schedule_c!r}, alpha={pr.schedule_alpha!r}: the paper-form "
                                     f"constants leave the float64 range ({e})") from None
            doc["paper"] = {
                "constants": consts.to_dict(),
                "paper_width": paper_min_width(consts, job.eps, job.delta),  # type: ignore[arg-type]
                "theory_exponent": theory_exponent(pr.method, pr.schedule_alpha),
            }
    doc["job"] = {k: (v.to_arch() if isinstance(v, NetSpec) else v.to_text() if isinstance(v, LawSpec)
                      else dataclasses.asdict(v) if isinstance(v, PruneSpec) else v)
                  for k, v in ((f.name, getattr(job, f.name)) for f in dataclasses.fields(job))}
    return doc
