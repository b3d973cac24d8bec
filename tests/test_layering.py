"""Enforce DESIGN.md's "may import" column: data flows one way."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "probprune"
CORE = {"config", "rng", "nets", "sampling", "masks", "gap", "bounds"}
ALLOWED = {
    "config": set(),
    "rng": {"config"},
    "nets": {"config"},
    "sampling": {"config", "rng", "nets"},
    "masks": {"config", "nets"},
    "graphmasks": {"config", "nets", "masks"},
    "gap": {"config", "nets"},
    "bounds": {"config", "nets"},
    "montecarlo": {"config", "rng", "nets", "sampling", "masks", "gap", "bounds"},
    "data": {"config", "nets", "masks", "gap"},
    "store": {"config"},
    "runner": {"config", "rng", "nets", "sampling", "masks", "gap", "bounds", "montecarlo", "data", "store"},
    "report": {"config", "store"},
    "cli": {"config", "store", "runner", "report"},
}


def _component(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for n in names:
            parts = n.split(".")
            if parts[0] == "probprune" and len(parts) > 1:
                found.add(parts[1])
    return found


FILES = [p for p in SRC.rglob("*.py") if _component(p) not in ("__init__", "__main__")]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_only_lower_layers(path: Path) -> None:
    comp = _component(path)
    assert comp in ALLOWED, f"{comp} is not in DESIGN.md's layer table"
    bad = _imports(path) - ALLOWED[comp] - {comp}
    assert not bad, f"{path.name} ({comp}) imports {sorted(bad)}"


# finer rules for single modules inside a component (issue 15's graph modules)
MODULE_ALLOWED = {
    "nets/graph.py": {"probprune.config"},
    "nets/fx.py": {"probprune.config", "probprune.nets.graph"},
    "nets/onnx_graph.py": {"probprune.config", "probprune.nets.graph", "probprune.nets.fx", "probprune.nets.onnx"},
    "bounds/graph.py": {"probprune.config", "probprune.nets.graph", "probprune.bounds.norms"},
}


@pytest.mark.parametrize("rel", sorted(MODULE_ALLOWED))
def test_graph_modules_import_only_what_they_may(rel: str) -> None:
    path = SRC / rel
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("probprune")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("probprune"):
            found.add(node.module or "")
    assert found <= MODULE_ALLOWED[rel], f"{rel} imports {sorted(found - MODULE_ALLOWED[rel])}"
