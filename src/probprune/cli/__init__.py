"""``probprune`` command line. Errors: one line ``error: …`` on stderr, exit code 2."""

from __future__ import annotations

import sys

from probprune.cli import bound as _bound  # noqa: F401
from probprune.cli import certificate as _certificate  # noqa: F401
from probprune.cli import data as _data  # noqa: F401
from probprune.cli import experiment as _experiment  # noqa: F401
from probprune.cli import gap as _gap  # noqa: F401
from probprune.cli import prune as _prune  # noqa: F401  (registers the command)
from probprune.cli import report as _report  # noqa: F401
from probprune.cli import verify as _verify  # noqa: F401
from probprune.cli.app import add_terms_to_help, app, err_console
from probprune.config import ProbPruneError

add_terms_to_help(app)

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning ``ProbPruneError`` into ``error: …`` and exit code 2.

    Usage errors (unknown options, wrong types) are typer's own: also exit code 2.
    """
    try:
        app(args=argv, prog_name="probprune")
    except ProbPruneError as e:
        err_console.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
