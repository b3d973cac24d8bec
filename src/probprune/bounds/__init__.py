"""Bounds on the gap, one module per job (``docs/architecture.md``).

- :mod:`~probprune.bounds.norms` — operator norms: exact, certified upper values, FFT for convolutions;
- :mod:`~probprune.bounds.certified` — the layerwise certified bound over ``‖x‖₂ ≤ r`` with its float margin;
- :mod:`~probprune.bounds.differential` — joint bounds on the difference of the two networks over any ball,
  certified agreement, the witness search; :mod:`~probprune.bounds.differential_split` — the same tightened by
  branch and bound (sign splits of unstable neurons);
- :mod:`~probprune.bounds.entries`, :mod:`~probprune.bounds.concentration`, :mod:`~probprune.bounds.theorems` —
  entry statistics, concentration lemmas, the paper's theorems;
- :mod:`~probprune.bounds.probabilistic` — the public ε(δ) bound and its inverse solvers;
  :mod:`~probprune.bounds.paper` — the paper's form and the fitted gap exponent;
- :mod:`~probprune.bounds.graph` — the layerwise certified bound on graphs;
  :mod:`~probprune.bounds.differential_graph` — the differential bound and certified agreement on graphs.

Re-exported here: the bound of each kind and its result type. Everything else is imported from its module.
"""

from probprune.bounds.certified import CertifiedBound, certified_gap_bound
from probprune.bounds.differential import AgreementResult, DifferentialBound, certified_agreement, differential_bound
from probprune.bounds.differential_graph import graph_certified_agreement, graph_differential_bound
from probprune.bounds.differential_split import split_certified_agreement, split_differential_bound
from probprune.bounds.graph import GraphBound, certified_graph_gap
from probprune.bounds.probabilistic import Bound, probabilistic_bound, solve_max_prune, solve_min_width

__all__ = [
    "AgreementResult",
    "Bound",
    "CertifiedBound",
    "DifferentialBound",
    "GraphBound",
    "certified_agreement",
    "certified_gap_bound",
    "certified_graph_gap",
    "differential_bound",
    "graph_certified_agreement",
    "graph_differential_bound",
    "probabilistic_bound",
    "solve_max_prune",
    "solve_min_width",
    "split_certified_agreement",
    "split_differential_bound",
]
