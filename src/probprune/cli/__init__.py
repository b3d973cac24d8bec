"""``probprune`` command line. Errors: one line ``error: …`` on stderr, exit code 2.

Every way an input can be wrong ends the same way, handled once here in :func:`main`: click's
usage errors (unknown option, missing option, a value of the wrong type, a missing argument),
the project's :class:`~probprune.config.ProbPruneError` and operating-system errors on the
files the user named each print **one** line ``error: …`` on stderr and exit with code 2.
``--help`` and ``--version`` exit 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer

try:  # typer >= 0.2x vendors its own click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - typer built on the click package
    from click import exceptions as _click_errors  # type: ignore[no-redef]

from probprune.cli import bound as _bound  # noqa: F401
from probprune.cli import certificate as _certificate  # noqa: F401
from probprune.cli import certify as _certify  # noqa: F401
from probprune.cli import data as _data  # noqa: F401
from probprune.cli import experiment as _experiment  # noqa: F401
from probprune.cli import gap as _gap  # noqa: F401
from probprune.cli import prune as _prune  # noqa: F401  (registers the command)
from probprune.cli import report as _report  # noqa: F401
from probprune.cli import verify as _verify  # noqa: F401
from probprune.cli.app import add_terms_to_help, app, err_console
from probprune.config import ProbPruneError

add_terms_to_help(app)

__all__ = ["app", "main", "usage_error_line"]


#: click's "a group was called without a sub-command" (a ``UsageError``; older click versions: none)
_NO_ARGS: type[Exception] = getattr(_click_errors, "NoArgsIsHelpError", type("_Never", (Exception,), {}))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _given_value(param: object, argv: Sequence[str]) -> str | None:
    """The text the user gave for option ``param`` (last occurrence), or ``None``."""
    opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
    found: str | None = None
    for i, tok in enumerate(argv):
        for o in opts:
            if tok == o and i + 1 < len(argv):
                found = argv[i + 1]
            elif o.startswith("--") and tok.startswith(o + "="):
                found = tok[len(o) + 1:]
    return found


def usage_error_line(e: Exception, argv: Sequence[str] = ()) -> str:
    """The one-line message of a click usage error: the command path, what is wrong (with the value given).

    Args:
        e: a click ``ClickException`` (``UsageError``, ``BadParameter``, ``NoSuchOption`` …).
        argv: the command line, to quote the value of a bad option.

    >>> usage_error_line(typer.BadParameter("not a number"))
    'Invalid value: not a number'
    """
    msg = _one_line(e.format_message())  # type: ignore[attr-defined]
    param = getattr(e, "param", None)
    if isinstance(e, _click_errors.BadParameter) and param is not None:
        value = _given_value(param, argv)
        if value is not None and repr(value) not in msg:
            msg += f" (got {value!r})"
    ctx = getattr(e, "ctx", None)
    if ctx is None:
        return msg
    path = ctx.command_path
    return f"{path}: {msg} (see '{path} --help')"


def _fail_line(message: str, code: int = 2) -> None:
    err_console.print(f"error: {_one_line(message)}", markup=False, soft_wrap=True, highlight=False)
    sys.exit(code)


def _light_group_flags(command: Any) -> None:
    """Give the on/off flags of every command *group* (``--help``, ``--version``) a plain bool check.

    typer (>= 0.2x, on its vendored click) builds a pydantic ``TypeAdapter`` the first time a parameter's
    value is processed, even a flag left out (value ``None``); for ``probprune <cmd> --help`` the groups'
    flags are processed before the sub-command prints its help, so the import of pydantic alone (about
    0.1 s) was a fifth of that command's start-up time. A click flag's value is a bool or ``None``, which
    typer's pass-through coercion returns as it is, so nothing a user can type is checked differently.
    Typer versions without these internals are left as they are (this is start-up time only).
    """
    try:
        from typer._coercion import PassThroughRuntimeParam
    except ImportError:  # pragma: no cover - another typer layout: nothing to speed up
        return

    def plain(param: Any) -> Any:
        desc = getattr(param, "type_descriptor", None)
        if getattr(param, "_runtime_param", False) is None and getattr(param, "is_flag", False) \
                and getattr(desc, "annotation", None) is bool:
            param._runtime_param = PassThroughRuntimeParam(parameter_info=desc.parameter_info,  # type: ignore[union-attr]
                                                           annotation=bool)
        return param

    for param in getattr(command, "params", ()):
        plain(param)
    made = getattr(command, "get_help_option", None)
    if made is not None:  # the help option is made on first use, with the context: check it then
        command.get_help_option = lambda ctx: plain(made(ctx))
    for sub in (getattr(command, "commands", None) or {}).values():
        if getattr(sub, "commands", None) is not None:
            _light_group_flags(sub)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``probprune`` and ``python -m probprune``.

    Runs the click command in non-standalone mode so that every error reaches this function;
    each becomes one line ``error: …`` on stderr and exit code 2 (130 on Ctrl-C). A bare
    command group (``probprune``, ``probprune data``) prints its help on stdout, then the
    one-line error.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    _light_group_flags(command)
    try:
        rc = command.main(args=args, prog_name="probprune", standalone_mode=False)
    except _NO_ARGS as e:
        ctx: Any = getattr(e, "ctx", None)
        path = "probprune" if ctx is None else ctx.command_path
        if ctx is not None:
            sys.stdout.write(ctx.get_help() + "\n")
            sys.stdout.flush()
        _fail_line(f"{path}: missing command (choose one of those listed above)")
    except _click_errors.ClickException as e:  # UsageError, BadParameter, MissingParameter, NoSuchOption …
        _fail_line(usage_error_line(e, args), 2)
    except ProbPruneError as e:
        _fail_line(str(e))
    except typer.Abort:
        _fail_line("aborted", 130)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except OSError as e:  # a file the user named: unreadable, a directory, a full disk …
        where = e.filename if e.filename is not None else "file"
        _fail_line(f"{where}: {e.strerror or e}")
    sys.exit(rc if isinstance(rc, int) else 0)  # as click's standalone mode: always a SystemExit
