"""probprune — provable pruning of neural networks.

Random and magnitude pruning of fully-connected and convolutional networks, with the gap
``sup_{‖x‖≤r} ‖f(x) − F(x)‖`` between pruned network f and target F pinned from both
sides (empirical lower bound, certified upper bound) and the probabilistic bounds of
Qian & Klabjan (ICML 2021) with explicit constants (``docs/theory.md``).

The top level is small on purpose: the specs (settings), the network types (``Net``, the chain the batched engine
runs; ``Graph``, what any traced module or ONNX model is read into) and their readers/writers, and one function
per job. Everything else is importable from its own module (``docs/architecture.md`` says where each
concept lives).

>>> import probprune as pp
>>> sorted(set(pp.__all__) - {"__version__"})[:3]
['BallSpec', 'BoundSpec', 'ConvSpec']
"""

import importlib
from typing import TYPE_CHECKING, Any

from probprune.config import (
    BallSpec,
    BoundSpec,
    ConvSpec,
    ExecutionPolicy,
    ExperimentSpec,
    GapSpec,
    LawSpec,
    MCSpec,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    RunConfig,
    TrainSpec,
    package_version,
)

if TYPE_CHECKING:
    from probprune.bounds.certified import certified_gap_bound
    from probprune.bounds.probabilistic import probabilistic_bound
    from probprune.gap import sup_gap
    from probprune.graphmasks import prune_graph
    from probprune.masks import prune
    from probprune.nets import Net, from_module, to_module
    from probprune.nets.fx import graph_from_module
    from probprune.nets.graph import Graph
    from probprune.nets.onnx import load_onnx, save_onnx
    from probprune.nets.onnx_graph import load_onnx_graph, save_onnx_graph
    from probprune.runner.certificate_local import check_local_certificate, make_local_certificate
    from probprune.runner.certify import certify
    from probprune.runner.verify import run_verify as verify
    from probprune.sampling import sample_net

#: names served lazily (PEP 562), as (module, attribute): ``import probprune`` (and so the CLI's --help) does not
#: import torch until one of them is used; the config names above are stdlib-only and eager
_LAZY: dict[str, tuple[str, str]] = {
    "Net": ("probprune.nets", "Net"),
    "from_module": ("probprune.nets", "from_module"),
    "to_module": ("probprune.nets", "to_module"),
    "load_onnx": ("probprune.nets.onnx", "load_onnx"),
    "save_onnx": ("probprune.nets.onnx", "save_onnx"),
    "Graph": ("probprune.nets.graph", "Graph"),
    "graph_from_module": ("probprune.nets.fx", "graph_from_module"),
    "load_onnx_graph": ("probprune.nets.onnx_graph", "load_onnx_graph"),
    "save_onnx_graph": ("probprune.nets.onnx_graph", "save_onnx_graph"),
    "prune_graph": ("probprune.graphmasks", "prune_graph"),
    "sample_net": ("probprune.sampling", "sample_net"),
    "prune": ("probprune.masks", "prune"),
    "sup_gap": ("probprune.gap", "sup_gap"),
    "certified_gap_bound": ("probprune.bounds.certified", "certified_gap_bound"),
    "probabilistic_bound": ("probprune.bounds.probabilistic", "probabilistic_bound"),
    "verify": ("probprune.runner.verify", "run_verify"),
    "certify": ("probprune.runner.certify", "certify"),
    "make_local_certificate": ("probprune.runner.certificate_local", "make_local_certificate"),
    "check_local_certificate": ("probprune.runner.certificate_local", "check_local_certificate"),
}

__all__ = [
    "BallSpec",
    "BoundSpec",
    "ConvSpec",
    "ExecutionPolicy",
    "ExperimentSpec",
    "GapSpec",
    "Graph",
    "LawSpec",
    "MCSpec",
    "Net",
    "NetSpec",
    "ProbPruneError",
    "PruneSpec",
    "RunConfig",
    "TrainSpec",
    "__version__",
    "certified_gap_bound",
    "certify",
    "check_local_certificate",
    "from_module",
    "graph_from_module",
    "load_onnx",
    "load_onnx_graph",
    "make_local_certificate",
    "probabilistic_bound",
    "prune",
    "prune_graph",
    "sample_net",
    "save_onnx",
    "save_onnx_graph",
    "sup_gap",
    "to_module",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: importlib.metadata costs ~50 ms of every `--help`
        globals()[name] = version = package_version("probprune")
        return version
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'probprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
