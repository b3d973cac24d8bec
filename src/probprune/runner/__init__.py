"""Workflows: load or sample networks, prune, measure, sweep; files via ``store``."""

from probprune.runner.prune import PruneJob, PruneOutcome, load_net, run_prune, save_net

__all__ = ["PruneJob", "PruneOutcome", "load_net", "run_prune", "save_net"]
