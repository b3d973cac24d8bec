"""The public API: every exported name resolves to the object of its own module, and nothing else is exported."""

from __future__ import annotations

import importlib

import probprune as pp
import probprune.bounds as ppb

# the one place each public name lives (docs/architecture.md "The public API")
HOMES = {
    "Net": "probprune.nets", "from_module": "probprune.nets", "to_module": "probprune.nets",
    "load_onnx": "probprune.nets.onnx", "save_onnx": "probprune.nets.onnx", "Graph": "probprune.nets.graph",
    "graph_from_module": "probprune.nets.fx", "load_onnx_graph": "probprune.nets.onnx_graph",
    "save_onnx_graph": "probprune.nets.onnx_graph", "prune_graph": "probprune.graphmasks",
    "sample_net": "probprune.sampling", "prune": "probprune.masks", "sup_gap": "probprune.gap",
    "certified_gap_bound": "probprune.bounds.certified", "probabilistic_bound": "probprune.bounds.probabilistic",
    "certify": "probprune.runner.certify",
    "make_local_certificate": "probprune.runner.certificate_local",
    "check_local_certificate": "probprune.runner.certificate_local",
}


def test_every_top_level_name_resolves_to_its_home() -> None:
    for name in pp.__all__:
        obj = getattr(pp, name)
        assert obj is not None, name
        if name in HOMES:
            assert obj is getattr(importlib.import_module(HOMES[name]), name), name
    assert pp.verify is importlib.import_module("probprune.runner.verify").run_verify
    assert set(HOMES) | {"verify", "__version__"} <= set(pp.__all__)
    assert sorted(dir(pp)) == sorted(pp.__all__)


def test_the_bounds_package_exports_one_bound_of_each_kind_and_its_result() -> None:
    from probprune.bounds import differential_graph, differential_split, graph

    assert ppb.graph_differential_bound is differential_graph.graph_differential_bound
    assert ppb.graph_certified_agreement is differential_graph.graph_certified_agreement
    assert ppb.certified_graph_gap is graph.certified_graph_gap and ppb.GraphBound is graph.GraphBound
    assert ppb.split_differential_bound is differential_split.split_differential_bound
    assert ppb.split_certified_agreement is differential_split.split_certified_agreement
    for name in ppb.__all__:
        assert getattr(ppb, name) is not None, name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        pp.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("pp.no_such_thing resolved")
