"""Every code block of the README runs, so that it cannot go stale.

Python blocks run as they are (in a fresh temporary folder). Bash blocks: every ``probprune …`` line runs through
the entry point in the same folder, in order, so that later lines see the files earlier ones wrote; a Python block
whose first line is :data:`FEEDS_COMMANDS` (it writes a model file the commands after it read) runs there, in its
place in that order, instead of in a folder of its own. The long jobs
(``verify``, ``experiment``, ``data prepare``) run with ``--dry-run`` — that resolves their whole config and output
folder, which is what can go stale — and lines that name a placeholder (``<hash>``) or hardware this machine lacks
(``--device cuda`` without CUDA) are listed as skipped with the reason. ``make`` lines are the CI's own commands.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import torch

from cliharness import run

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = README.parent
LONG = ("verify", "experiment", "data prepare")
#: The first line of a Python block that writes files the bash commands after it use.
FEEDS_COMMANDS = "# the commands below use the files this block writes"


def _sequence() -> list[tuple[str, str]]:
    """Every ``python`` and ``bash`` block, (language, text), in the README's order."""
    return re.findall(r"```(python|bash)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _blocks(lang: str) -> list[str]:
    return [text for kind, text in _sequence() if kind == lang]


def _feeds(block: str) -> bool:
    return block.startswith(FEEDS_COMMANDS + "\n")


def _commands(blocks: list[str] | None = None) -> list[str]:
    """``probprune`` command lines of the bash blocks (continuations joined, comments and ``&&`` split off)."""
    lines: list[str] = []
    for block in _blocks("bash") if blocks is None else blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("probprune "):
                    lines.append(part)
    return lines


def _skip_reason(cmd: str) -> str | None:
    if "--data mnist" in cmd and os.environ.get("CI") != "true":
        from probprune.data import dataset_status

        if not dataset_status("mnist")["ready"]:
            return "needs MNIST (probprune data prepare mnist); under CI it must be there"
    if "<" in cmd:
        return "names a placeholder"
    if "--device cuda" in cmd and not torch.cuda.is_available():
        return "needs CUDA"
    if "--executor ray" in cmd:
        try:
            import ray  # noqa: F401
        except ImportError:
            return "needs the ray extra"
    return None


def test_the_readme_has_code_to_run() -> None:
    assert len(_blocks("python")) >= 1
    assert len(_commands()) >= 10


def _run_python(index: int) -> None:
    code = _blocks("python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("index", [i for i, b in enumerate(_blocks("python")) if not _feeds(b)])
def test_python_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run_python(index)


def _in_order() -> list[tuple[str, str | int]]:
    """What the bash test runs, in order: ("python", block index) for a block that feeds commands, ("cmd", line)."""
    out: list[tuple[str, str | int]] = []
    n_python = 0
    for kind, text in _sequence():
        if kind == "python":
            if _feeds(text):
                out.append(("python", n_python))
            n_python += 1
        else:
            out += [("cmd", c) for c in _commands([text])]
    return out


def test_blocks_that_feed_commands_run_before_them() -> None:
    """A feeding block is run by the bash test, before a command that reads what it writes (the README's residual
    CNN: ``resnet.onnx``)."""
    steps = _in_order()
    feeding = [i for i, (kind, _) in enumerate(steps) if kind == "python"]
    assert feeding, "the README's residual CNN block writes resnet.onnx for the commands after it"
    for i in feeding:
        code = _blocks("python")[int(steps[i][1])]
        written = re.findall(r'"([\w.-]+\.onnx)"\)\s*$', code, flags=re.M)
        assert written and any(w in str(c) for kind, c in steps[i + 1:] if kind == "cmd" for w in written)


def test_bash_commands_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the README's commands run from the repository root
    ran = 0
    for kind, step in _in_order():
        if kind == "python":
            _run_python(int(step))
            capsys.readouterr()
            continue
        cmd = str(step)
        if _skip_reason(cmd) is not None:
            continue
        args = shlex.split(cmd)[1:]
        args = [a for a in args if not (a.startswith("[") or a.endswith("]"))]  # optional parts shown as [...]
        if any(" ".join(args).startswith(long) for long in LONG):
            args.append("--dry-run")
        code, out, err = run(args, capsys)
        assert code == 0, f"README command failed: {cmd}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
        ran += 1
    assert ran >= 8
