"""probprune — provable pruning of neural networks.

Random and magnitude pruning of fully-connected and convolutional networks, with the gap
``sup_{‖x‖≤r} ‖f(x) − F(x)‖`` between pruned network f and target F pinned from both
sides (empirical lower bound, certified upper bound) and the probabilistic bounds of
Qian & Klabjan (ICML 2021) with explicit constants (``docs/theory.md``).
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from probprune.config import (
    BoundSpec,
    ConvSpec,
    GapSpec,
    LawSpec,
    MCSpec,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    RunConfig,
    parse_arch,
    parse_law,
)

if TYPE_CHECKING:
    from probprune.masks import MaskStats, PruneResult, magnitude_mask, mask_from_scores, prune, random_mask
    from probprune.nets import Activation, Net, from_module, to_module
    from probprune.nets.onnx import load_onnx, save_onnx
    from probprune.rng import derive_seed, make_generator
    from probprune.sampling import sample_net

#: names served lazily (PEP 562): ``import probprune`` (and so the CLI's --help) does not import torch until one
#: of them is used; the config names above are stdlib-only and eager
_LAZY = {
    **dict.fromkeys(("MaskStats", "PruneResult", "magnitude_mask", "mask_from_scores", "prune", "random_mask"),
                    "probprune.masks"),
    **dict.fromkeys(("Activation", "Net", "from_module", "to_module"), "probprune.nets"),
    **dict.fromkeys(("load_onnx", "save_onnx"), "probprune.nets.onnx"),
    **dict.fromkeys(("derive_seed", "make_generator"), "probprune.rng"),
    "sample_net": "probprune.sampling",
}

try:
    __version__ = version("probprune")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "Activation",
    "BoundSpec",
    "ConvSpec",
    "GapSpec",
    "LawSpec",
    "MCSpec",
    "MaskStats",
    "Net",
    "NetSpec",
    "ProbPruneError",
    "PruneResult",
    "PruneSpec",
    "RunConfig",
    "__version__",
    "derive_seed",
    "from_module",
    "load_onnx",
    "magnitude_mask",
    "make_generator",
    "mask_from_scores",
    "parse_arch",
    "parse_law",
    "prune",
    "random_mask",
    "sample_net",
    "save_onnx",
    "to_module",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
