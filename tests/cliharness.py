"""Run the ``probprune`` CLI in-process for tests: (exit code, stdout, stderr)."""

from __future__ import annotations

import pytest

from probprune.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``main(args)``; a ``SystemExit`` becomes its exit code, output comes from ``capsys``."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
