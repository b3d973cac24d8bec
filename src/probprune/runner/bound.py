"""The ``bound`` workflow: evaluate or invert the probabilistic gap bound (``docs/theory.md``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from probprune.bounds.paper import implied_constants, paper_min_width
from probprune.bounds.probabilistic import (
    check_assumptions,
    probabilistic_bound,
    solve_max_prune,
    solve_min_width,
    theory_exponent,
)
from probprune.config import BoundJob, LawSpec, NetSpec, ProbPruneError, PruneSpec

T = TypeVar("T")

__all__ = ["check_job", "run_bound"]

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
