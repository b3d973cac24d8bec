"""Enforce DESIGN.md's "may import" column: data flows one way."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "probprune"
CORE = {"config", "rng", "nets", "search", "sampling", "masks", "gap", "bounds"}
ALLOWED = {
    "config": set(),
    "files": set(),  # atomic file writes that follow the umask: stdlib only
    "records": {"config"},
    "rng": {"config"},
    "nets": {"config", "files"},
    "sampling": {"config", "rng", "nets"},
    "search": {"config"},
    "masks": {"config", "nets"},
    "graphmasks": {"config", "nets", "masks"},
    "gap": {"config", "nets", "search"},
    "bounds": {"config", "nets", "search"},
    "montecarlo": {"config", "records", "rng", "nets", "sampling", "masks", "gap", "bounds"},
    "data": {"config", "files", "nets", "masks", "gap"},
    "store": {"config", "files", "records"},
    "runner": {"config", "files", "records", "rng", "nets", "sampling", "masks", "graphmasks", "gap", "bounds",
               "montecarlo", "data", "store"},
    "report": {"config", "records", "store"},
    "cli": {"config", "records", "store", "runner", "report"},
}


def _component(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path, package: tuple[str, ...] = ("probprune",)) -> set[str]:
    """The modules right below ``package`` that ``path`` imports (absolute imports)."""
    found = set()
    n_pkg = len(package)
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and tuple((node.module or "").split(".")) == package:
            names = [f"{node.module}.{a.name}" for a in node.names]  # ``from package import module``
        for n in names:
            parts = n.split(".")
            if tuple(parts[:n_pkg]) == package and len(parts) > n_pkg:
                found.add(parts[n_pkg])
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
    # from_module = the fx reader then compile_chain (imported inside the functions: nets/fx imports nets)
    "nets/__init__.py": {"probprune.config", "probprune.nets.chain", "probprune.nets.fx", "probprune.nets.graph"},
    "nets/graph.py": {"probprune.config"},
    "nets/chain.py": {"probprune.config", "probprune.nets", "probprune.nets.graph"},
    "nets/fx.py": {"probprune.config", "probprune.nets", "probprune.nets.graph"},
    "nets/onnx_graph.py": {"probprune.config", "probprune.nets.graph", "probprune.nets.fx", "probprune.nets.onnx"},
    "bounds/graph.py": {"probprune.config", "probprune.nets.graph", "probprune.bounds.norms", "probprune.search"},
    "runner/graph.py": {"probprune.config", "probprune.rng", "probprune.graphmasks", "probprune.nets.graph",
                        "probprune.nets.onnx_graph", "probprune.bounds.graph", "probprune.masks",
                        "probprune.runner.execution"},
    "runner/certificate_graph.py": {"probprune.config", "probprune.rng", "probprune.nets.graph",
                                    "probprune.nets.onnx_graph", "probprune.bounds.graph", "probprune.store",
                                    "probprune.runner.certificate", "probprune.runner.graph",
                                    "probprune.runner.execution"},
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


# inside `bounds`: one module per job, each importing only the jobs below it
BOUNDS = {
    "norms": set(),
    "certified": {"norms"},
    "signs": {"norms"},  # issue 16: the sign relaxation of the first layer on ℓ2 balls (used by differential)
    "differential": {"norms", "certified", "signs"},
    "entries": set(),
    "concentration": {"entries"},
    "theorems": {"entries", "concentration"},
    "probabilistic": {"entries", "concentration", "theorems"},
    "paper": {"entries", "concentration", "theorems", "probabilistic"},
    "graph": {"norms"},  # issue 15's graph bound (branch h-graph)
    "differential_graph": {"norms", "differential", "graph", "signs"},  # issue 16: the differential bound on graphs
    "differential_split": {"differential"},  # issue 16: branch and bound on the differential bound
}
BOUNDS_FILES = sorted(p for p in (SRC / "bounds").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", BOUNDS_FILES, ids=lambda p: p.name)
def test_bounds_module_imports_only_lower_jobs(path: Path) -> None:
    mod = path.stem
    assert mod in BOUNDS, f"bounds/{path.name} is not in the bounds table of this test"
    bad = _imports(path, ("probprune", "bounds")) - BOUNDS[mod]
    assert not bad, f"bounds/{path.name} imports {sorted(bad)}"
