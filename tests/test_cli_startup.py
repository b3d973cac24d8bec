"""``probprune --help`` must not pay for torch, scipy, matplotlib or ray (issue 17): not a timing test.

``python -X importtime -c "import probprune.cli"`` lists every module imported, children before their
parent with deeper indentation; from it we find which module first pulled in each heavy package.
"""

import re
import subprocess
import sys

HEAVY = ("torch", "scipy", "matplotlib", "ray")
#: the CLI modules whose own imports must stay light (the command modules of H11's brief)
LIGHT = ("probprune.cli", "probprune.cli.app", "probprune.cli.verify", "probprune.cli.report",
         "probprune.cli.bound", "probprune.cli.certificate")
_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)")


def import_tree(stmt: str) -> list[tuple[int, str]]:
    """``(depth, module)`` for every module ``stmt`` imports, in ``-X importtime`` order (children first)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], capture_output=True, text=True,
                         timeout=300, check=True)
    out = []
    for line in res.stderr.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((len(m.group(1)) // 2, m.group(2)))
    return out


def ancestors(tree: list[tuple[int, str]], i: int) -> list[str]:
    """The modules whose import imported ``tree[i]``, nearest first (a parent follows its children)."""
    depth, out = tree[i][0], []
    for d, name in tree[i + 1:]:
        if d < depth:
            out.append(name)
            depth = d
    return out


def culprits(stmt: str) -> dict[str, list[str]]:
    """For each heavy package ``stmt`` loads: the chain of modules that imported it."""
    tree = import_tree(stmt)
    return {name: ancestors(tree, i) for i, (_, name) in enumerate(tree) if name in HEAVY}


def test_ancestors_reads_the_importtime_tree() -> None:
    assert culprits("import json") == {}
    assert "probprune.masks" in culprits("import probprune.masks")["torch"]
    tree = import_tree("import json")
    i = next(k for k, (_, n) in enumerate(tree) if n == "json.decoder")
    assert ancestors(tree, i)[-1] == "json"


def test_light_cli_modules_import_no_heavy_package() -> None:
    """None of torch/scipy/matplotlib/ray is pulled in by the CLI modules listed in LIGHT themselves."""
    found = culprits("import probprune.cli")
    bad = {}
    for pkg, chain in found.items():
        # the nearest probprune.cli.* ancestor is the command module that imported it at start-up
        # (a chain through the package ``probprune`` itself is its __init__'s doing, not the CLI's)
        cli = [m for m in chain if m.startswith("probprune.cli") or m == "probprune"]
        if cli and cli[0] in LIGHT:
            bad[pkg] = chain
    assert not bad, bad


def test_import_cli_loads_no_heavy_package() -> None:
    assert culprits("import probprune.cli") == {}


def _help_imports(*argv: str) -> set[str]:
    """Every module ``python -m probprune ARGV`` imports (the command must exit 0)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "probprune", *argv], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return {m.group(2) for m in map(_LINE.match, res.stderr.splitlines()) if m}


def test_sub_command_help_builds_no_pydantic_adapter() -> None:
    """``probprune <cmd> --help`` imports no more than ``probprune --help`` does of pydantic (issue 17: the
    groups' ``--help``/``--version`` flags used to build a pydantic TypeAdapter before the help was printed),
    nor any heavy package."""
    top = _help_imports("--help")
    for argv in (("bound", "--help"), ("certificate", "--help"), ("certificate", "check", "--help"),
                 ("data", "info", "--help")):
        mods = _help_imports(*argv)
        assert not {m for m in mods if m.split(".")[0] == "pydantic"} - top, argv
        assert not {m.split(".")[0] for m in mods} & set(HEAVY), argv
