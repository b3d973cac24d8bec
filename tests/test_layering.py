"""Enforce DESIGN.md's "may import" column: data flows one way."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "probprune"
CORE = {"config", "rng", "nets", "sampling", "masks", "gap", "bounds"}
ALLOWED = {
    "config": set(),
    "files": set(),  # atomic file writes that follow the umask: stdlib only
    "rng": {"config"},
    "nets": {"config", "files"},
    "sampling": {"config", "rng", "nets"},
    "masks": {"config", "nets"},
    "gap": {"config", "nets"},
    "bounds": {"config", "nets"},
    "montecarlo": {"config", "rng", "nets", "sampling", "masks", "gap", "bounds"},
    "data": {"config", "files", "nets", "masks", "gap"},
    "store": {"config", "files"},
    "runner": {"config", "files", "rng", "nets", "sampling", "masks", "gap", "bounds", "montecarlo", "data",
               "store"},
    "report": {"config", "store"},
    "cli": {"config", "store", "runner", "report"},
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


# inside `bounds`: one module per job, each importing only the jobs below it
BOUNDS = {
    "norms": set(),
    "certified": {"norms"},
    "differential": {"norms", "certified"},
    "entries": set(),
    "concentration": {"entries"},
    "theorems": {"entries", "concentration"},
    "probabilistic": {"entries", "concentration", "theorems"},
    "paper": {"entries", "concentration", "theorems", "probabilistic"},
    "graph": {"norms"},  # issue 15's graph bound (branch h-graph)
}
BOUNDS_FILES = sorted(p for p in (SRC / "bounds").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", BOUNDS_FILES, ids=lambda p: p.name)
def test_bounds_module_imports_only_lower_jobs(path: Path) -> None:
    mod = path.stem
    assert mod in BOUNDS, f"bounds/{path.name} is not in the bounds table of this test"
    bad = _imports(path, ("probprune", "bounds")) - BOUNDS[mod]
    assert not bad, f"bounds/{path.name} imports {sorted(bad)}"
