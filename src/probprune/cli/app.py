"""The typer app and what every command shares: config resolution, output, errors.

No maths here: commands resolve a config, call ``runner``/``report``, print results.
"""

from __future__ import annotations

import inspect
import io
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from probprune.config import ProbPruneError, config_hash, json_safe, package_version

__all__ = [
    "TERMS",
    "ProgressLog",
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
    "print_table",
    "stats_table",
    "takes_prune_setting",
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
    rich_markup_mode=None,
)

#: ``--verbose``: print the full resolved config after the one-line header.
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Also print the full resolved config.")]



def _plain(cell: Any) -> Text:
    """A table cell or header as :class:`~rich.text.Text` (markup in a string is rendered, not shown)."""
    if isinstance(cell, Text):
        return cell
    if isinstance(cell, str):
        return Text.from_markup(cell)
    return Text(str(cell))


def table_width(table: Table) -> int:
    """The width in cells of ``table`` printed whole (no column shrunk, wrapped or cut)."""
    for col in table.columns:
        col.no_wrap = True
        col.overflow = "fold"  # never an ellipsis, whatever happens
    buf = io.StringIO()
    Console(file=buf, width=100_000, color_system=None, force_terminal=False, highlight=False,
            legacy_windows=False).print(table)
    return max((cell_len(line.rstrip()) for line in buf.getvalue().splitlines()), default=0)


def _stacked(table: Table) -> list[Text]:
    """``table`` as records: one ``column: value`` line per cell, a blank line between rows."""
    heads = [_plain(c.header).plain for c in table.columns]
    pad = max((cell_len(h) for h in heads), default=0)
    lines: list[Text] = []
    if table.title is not None:
        lines.append(_plain(table.title))
    cols = [list(c.cells) for c in table.columns]
    for i in range(table.row_count):
        lines.append(Text(""))
        for head, cells in zip(heads, cols):
            lines.append(Text(head.rjust(pad) + ": ") + _plain(cells[i] if i < len(cells) else ""))
    if table.caption is not None:
        lines += [Text(""), _plain(table.caption)]
    return lines


def print_table(table: Table, target: Console | None = None) -> str:
    """Print a results table so that no cell is ever cut: the one printer of every command's tables.

    * stdout (``target``) is **not a terminal** (piped, redirected, a test): the table is printed at its
      full natural width, whatever ``$COLUMNS`` says, without colour — every row one line, easy to
      ``grep``/``awk``;
    * a **terminal** wide enough for the table: the table as it is;
    * a terminal **narrower** than the table: stacked records, one ``column: value`` line per cell
      and a blank line between rows (a long value then wraps at the terminal's edge but is never cut).

    Every column is set ``no_wrap`` with ``overflow="fold"``, so no ellipsis can appear.

    Args:
        table: the rich table.
        target: the console to print on (default :data:`console`).

    Returns:
        The layout used: ``"wide"``, ``"table"`` or ``"stacked"``.
    """
    c = console if target is None else target
    width = table_width(table)
    if not c.is_terminal:
        wide = Console(file=c.file, width=max(width, 1), color_system=None, force_terminal=False,
                       highlight=False, legacy_windows=False, soft_wrap=False)
        Console.print(wide, table, crop=False)
        return "wide"
    if width <= c.width:
        Console.print(c, table)
        return "table"
    for line in _stacked(table):
        Console.print(c, line, soft_wrap=True)
    return "stacked"


class _TableConsole(Console):
    """A console whose ``print`` of one :class:`~rich.table.Table` goes through :func:`print_table`.

    Every command prints its results with ``console.print(table)``; routing that call here makes
    :func:`print_table` the one printer of every table without each command having to know it.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Print as :meth:`rich.console.Console.print`; a lone table goes through :func:`print_table`."""
        if len(objects) == 1 and isinstance(objects[0], Table) and not kwargs:
            print_table(objects[0], self)
            return
        super().print(*objects, **kwargs)


console: Console = _TableConsole(highlight=False)
err_console: Console = _TableConsole(stderr=True, highlight=False)


def fail(message: str) -> None:
    """Raise the project's error (the entry point prints one line and exits 2)."""
    raise ProbPruneError(message)


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


def header_line(config: dict[str, Any], out: str | None, spec: Any = None) -> str:
    """The one line every command prints first: command, config hash, output.

    The hash is :func:`probprune.config.config_hash` — of ``spec`` (the command's resolved section) when
    given, else of ``config`` itself under the command's name; a ``hash`` entry (``verify``) is used as it is.
    """
    h = config.get("hash")
    if not isinstance(h, str):
        h = config_hash(spec) if spec is not None else config_hash(config, kind=_command_path())
    return f"{_command_path()} | config {h} | output: {out if out else '(none)'}"


def print_header(config: dict[str, Any], out: str | None, as_json: bool, verbose: bool = False,
                 spec: Any = None) -> None:
    """Print one line (command, config hash, output) and, with ``--verbose``, the resolved config.

    Nothing under ``--json``: stdout then holds only the JSON document and stderr stays empty on
    success (and holds only the error line on failure).
    """
    if as_json:
        return
    console.print(header_line(config, out, spec), markup=False, soft_wrap=True)
    if verbose:
        console.print("[bold]resolved config[/bold]")
        console.print(json.dumps(config, indent=2, sort_keys=True, default=str), markup=False)


def progress_bar(*, transient: bool, disable: bool) -> Any:
    """The live progress bar of long commands on stderr (description, bar, done/total, elapsed).

    ``rich.progress`` is imported here, not at the top: every ``--help`` would pay for it (issue 17)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=transient, disable=disable)


class ProgressLog:
    """Progress as plain lines for a log (stdout/stderr not a terminal, where a live bar shows nothing).

    ``update(done, total, what)`` prints ``progress: <what> <done>/<total> (<pct> %), <elapsed> elapsed,
    ETA <eta>`` for the first update, then at most once every ``interval_s`` seconds, and always when
    ``done`` reaches ``total`` — so a redirected long run writes a line every few seconds.

    Args:
        target: the console to print on (commands use :data:`err_console`: stdout keeps the results).
        interval_s: the least time between two lines.
        clock: the time source (seconds; a test passes its own).
    """

    def __init__(self, target: Console, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target, self.interval_s, self.clock = target, float(interval_s), clock
        self.t0 = clock()
        self.last: float | None = None
        self.last_done: int | None = None
        self.lines = 0

    @staticmethod
    def _duration(s: float) -> str:
        s = max(0.0, s)
        if s < 60:
            return f"{s:.0f} s"
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"

    def update(self, done: int, total: int | None, what: str = "") -> None:
        """Report ``done`` of ``total`` units (a line when due, see the class)."""
        now = self.clock()
        final = total is not None and done >= total
        if final and done == self.last_done:
            return  # the final line once
        if not final and self.last is not None and now - self.last < self.interval_s:
            return
        elapsed = now - self.t0
        if total:
            pct = 100.0 * done / total
            eta = "-" if done == 0 else self._duration(elapsed * (total - done) / done)
            text = f"{done}/{total} ({pct:.0f} %), {self._duration(elapsed)} elapsed, ETA {eta}"
        else:
            text = f"{done} done, {self._duration(elapsed)} elapsed"
        Console.print(self.target, f"progress: {what + ' ' if what else ''}{text}", markup=False, soft_wrap=True)
        self.last, self.last_done, self.lines = now, done, self.lines + 1


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


#: Parameters that set a pruning rule: a command with one of them gets :data:`TERMS` in its help.
PRUNE_PARAMS = frozenset({"prune_fraction", "prune_fractions", "threshold", "relative_threshold", "p", "method",
                          "methods", "density"})


def takes_prune_setting(callback: Any) -> bool:
    """Whether a command function takes a pruning setting (one of :data:`PRUNE_PARAMS`)."""
    if callback is None:
        return False
    return bool(PRUNE_PARAMS & set(inspect.signature(callback).parameters))


def add_terms_to_help(typer_app: typer.Typer) -> None:
    """Append :data:`TERMS` to the help of every command that takes a pruning setting (recursively).

    Those commands' ``--help`` then say what prune_fraction, sparsity and density mean; commands and
    groups without a pruning setting (``data info``, ``config show``, ``report`` …) are left alone.
    """
    for cmd in typer_app.registered_commands:
        if not takes_prune_setting(cmd.callback):
            continue
        text = cmd.help or (cmd.callback.__doc__ if cmd.callback is not None else None) or ""
        if "REMOVED" not in text:
            cmd.help = (text.strip() + " " + TERMS).strip()
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            add_terms_to_help(group.typer_instance)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"probprune {package_version('probprune')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                      callback=_print_version, is_eager=True),
) -> None:
    """Provable pruning: prune, measure the gap, bound it, verify the theory."""
