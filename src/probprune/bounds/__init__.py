"""Bounds on the gap: operator norms, the certified layerwise bound, probabilistic bounds.

Issue 3 (certified side): :mod:`probprune.bounds.norms`, :mod:`probprune.bounds.certified`.
Issue 4 (probabilistic side) adds its re-exports in the marked block below.
"""

from probprune.bounds.certified import (
    CertifiedBound,
    LayerTerm,
    certified_gap_bound,
    lower_at,
)
from probprune.bounds.differential import (
    AgreementResult,
    DifferentialBound,
    GapWitness,
    certified_agreement,
    differential_bound,
    gap_search,
)
from probprune.bounds.norms import (
    NormMethod,
    NormValue,
    abs_operator_norm_bound,
    conv_norm,
    matrix_norm_bound,
    operator_norm,
    power_lower,
    vector_norm_bound,
)

__all__ = [
    "AgreementResult",
    "CertifiedBound",
    "DifferentialBound",
    "GapWitness",
    "LayerTerm",
    "NormMethod",
    "NormValue",
    "abs_operator_norm_bound",
    "certified_agreement",
    "certified_gap_bound",
    "conv_norm",
    "differential_bound",
    "gap_search",
    "lower_at",
    "matrix_norm_bound",
    "operator_norm",
    "power_lower",
    "vector_norm_bound",
]

# ---- probabilistic bounds (issue 4): add imports and extend __all__ below this line ----
from probprune.bounds.paper import (
    GapFit,
    PaperConstants,
    fit_gap_exponent,
    implied_constants,
    paper_min_width,
)
from probprune.bounds.probabilistic import (
    Bound,
    BoundTerm,
    probabilistic_bound,
    solve_max_prune,
    solve_min_width,
    theory_exponent,
)

__all__ += [
    "Bound",
    "BoundTerm",
    "GapFit",
    "PaperConstants",
    "fit_gap_exponent",
    "implied_constants",
    "paper_min_width",
    "probabilistic_bound",
    "solve_max_prune",
    "solve_min_width",
    "theory_exponent",
]
