"""Workflows: load or sample networks, prune, measure, sweep; files via ``store``."""

from probprune.runner.gap import GapJob, GapOutcome, gap_sandwich, run_gap
from probprune.runner.prune import PruneJob, PruneOutcome, load_net, run_prune, save_net

__all__ = [
    "GapJob",
    "GapOutcome",
    "PruneJob",
    "PruneOutcome",
    "gap_sandwich",
    "load_net",
    "run_gap",
    "run_prune",
    "save_net",
]
