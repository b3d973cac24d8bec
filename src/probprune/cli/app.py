"""The typer app and what every command shares: config resolution, output, errors.

No maths here: commands resolve a config, call ``runner``/``report``, print results.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from probprune.config import ProbPruneError

__all__ = [
    "TERMS",
    "VerboseOpt",
    "add_terms_to_help",
    "app",
    "console",
    "emit_json",
    "err_console",
    "fail",
    "header_line",
    "json_safe",
    "print_header",
    "stats_table",
]

TERMS = ("prune_fraction = share of weights REMOVED (in [0, 1]); density = share KEPT = 1 - sparsity; "
         "sparsity = the measured share removed.")

app = typer.Typer(
    name="probprune",
    help=("Provable pruning of neural networks (Qian & Klabjan, ICML 2021): prune FCNs/CNNs by magnitude "
          "or at random and bound how far the outputs can move. " + TERMS + " Limits: work whose estimated "
          "memory exceeds $PROBPRUNE_MEMORY_LIMIT (bytes, or e.g. 8G; default half the physical memory) or whose "
          "estimated time exceeds $PROBPRUNE_TIME_LIMIT (seconds; default 1e6) is refused before it starts. "
          "Every error is one line 'error: …' on stderr with exit code 2."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: ``--verbose``: print the full resolved config after the one-line header.
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Also print the full resolved config.")]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str) -> None:
    """Raise the project's error (the entry point prints one line and exits 2)."""
    raise ProbPruneError(message)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by a string: ``"inf"``, ``"-inf"`` or ``"nan"``.

    Strict JSON has no Infinity or NaN; a bound that is infinite (no finite certificate) is
    reported as the string ``"inf"`` so that every ``--json`` document parses everywhere.

    >>> json_safe({"upper": float("inf"), "xs": [1.0, float("nan")]})
    {'upper': 'inf', 'xs': [1.0, 'nan']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def emit_json(doc: Any) -> None:
    """Print exactly one strict JSON document on stdout (non-finite numbers as strings, see :func:`json_safe`)."""
    sys.stdout.write(json.dumps(json_safe(doc), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _command_path() -> str:
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - typer built on the click package
        from click import get_current_context  # type: ignore[no-redef]
    ctx = get_current_context(silent=True)
    return "probprune" if ctx is None else str(ctx.command_path)


def header_line(config: dict[str, Any], out: str | None) -> str:
    """The one line every command prints first: command, config hash, output.

    The hash is the run's config hash when ``config`` carries one (``verify``), else the first 16 hex
    digits of the SHA-256 of the resolved input as canonical JSON (equal inputs, equal hash).
    """
    h = config.get("hash")
    if not isinstance(h, str):
        canon = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
        h = hashlib.sha256(canon.encode()).hexdigest()[:16]
    return f"{_command_path()} | config {h} | output: {out if out else '(none)'}"


def print_header(config: dict[str, Any], out: str | None, as_json: bool, verbose: bool = False) -> None:
    """Print one line (command, config hash, output) and, with ``--verbose``, the resolved config.

    Nothing under ``--json``: stdout then holds only the JSON document and stderr stays empty on
    success (and holds only the error line on failure).
    """
    if as_json:
        return
    console.print(header_line(config, out), markup=False, soft_wrap=True)
    if verbose:
        console.print("[bold]resolved config[/bold]")
        console.print(json.dumps(config, indent=2, sort_keys=True, default=str), markup=False)


def stats_table(stats: dict[str, Any], title: str = "pruning report") -> Table:
    """A rich table of a ``MaskStats.to_dict()``."""
    t = Table(title=title + " (sparsity = share removed, density = share kept)")
    for col in ("layer", "size", "pruned", "sparsity", "density", "threshold"):
        t.add_column(col, justify="right" if col != "layer" else "left")
    for row in stats["layers"]:
        thr = row["threshold"]
        t.add_row(row["name"], str(row["size"]), str(row["pruned"]), f"{row['sparsity']:.4f}",
                  f"{row['density']:.4f}", "-" if thr is None else f"{thr:.4g}")
    tot = stats["total"]
    t.add_row("[bold]total[/bold]", str(tot["size"]), str(tot["pruned"]), f"{tot['sparsity']:.4f}",
              f"{tot['density']:.4f}", "")
    return t


def add_terms_to_help(typer_app: typer.Typer) -> None:
    """Append :data:`TERMS` to the help of every command and group that lacks it (recursively).

    Every sub-command's ``--help`` then says what prune_fraction, sparsity and density mean.
    """
    for cmd in typer_app.registered_commands:
        text = cmd.help or (cmd.callback.__doc__ if cmd.callback is not None else None) or ""
        if "REMOVED" not in text:
            cmd.help = (text.strip() + " " + TERMS).strip()
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        info = sub.info
        text = info.help if isinstance(info.help, str) else ""
        if "REMOVED" not in text:
            info.help = (text.strip() + " " + TERMS).strip()
        add_terms_to_help(sub)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("probprune")
        except PackageNotFoundError:  # pragma: no cover - source tree without install
            v = "0+unknown"
        console.print(f"probprune {v}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                      callback=_print_version, is_eager=True),
) -> None:
    """Provable pruning: prune, measure the gap, bound it, verify the theory."""
