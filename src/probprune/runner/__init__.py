"""Workflows: load or sample networks, prune, measure, sweep; files via ``store``.

The names below are served lazily (PEP 562): importing one ``probprune.runner.X`` module (as the CLI does) does not
import every workflow and torch with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probprune.runner.gap import GapOutcome, gap_sandwich, run_gap
    from probprune.runner.prune import PruneOutcome, load_net, run_prune, save_net

_LAZY = {
    **dict.fromkeys(("GapOutcome", "gap_sandwich", "run_gap"), "probprune.runner.gap"),
    **dict.fromkeys(("PruneOutcome", "load_net", "run_prune", "save_net"), "probprune.runner.prune"),
}

__all__ = [
    "GapOutcome",
    "PruneOutcome",
    "gap_sandwich",
    "load_net",
    "run_gap",
    "run_prune",
    "save_net",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probprune.runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
