"""The `agl` entry point.

`agl --version` is answered here, before Typer and the command modules are imported,
so that it costs little more than starting Python; everything else goes to the Typer
application in `agl_cli.cli.app`, imported on demand.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from agl_cli import __version__

if TYPE_CHECKING:
    from agl_cli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Run `agl` on `sys.argv`; a `CLIError` ends as one line on stderr and its exit code."""
    _reopen_closed_streams()
    try:
        _run()
    except KeyboardInterrupt:  # while Typer and the commands load: quietly, as Typer ends one running
        from agl_cli.cli.errors import ExitCode  # without Typer: quick

        raise SystemExit(ExitCode.INTERRUPTED) from None


def _run() -> None:
    if sys.argv[1:] == ["--version"]:
        try:
            sys.stdout.write(f"agl {__version__}\n")
            sys.stdout.flush()
        except BrokenPipeError:
            from agl_cli.cli.errors import reader_gone

            reader_gone()
        return
    import typer

    from agl_cli.cli.app import app
    from agl_cli.cli.errors import CLIError, ExitCode, reader_gone, report, usage_error

    try:
        code = app(prog_name="agl", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe is found here rather than as Python exits
    except BrokenPipeError:
        reader_gone()
    except CLIError as exc:
        report(exc)
    except typer.TyperException as exc:  # the parser's: a wrong command line
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help is shown already, as Typer does
            raise SystemExit(ExitCode.USAGE) from None
        report(usage_error(exc))
    raise SystemExit(code if isinstance(code, int) else ExitCode.OK)


def _reopen_closed_streams() -> None:
    """A stream agl was started without (`<&-`, `>&-`, as some supervisors start programs)
    reads nothing and takes what is written, as /dev/null does: Python leaves it None, which
    every read and write would trip over. Opened in the order of their numbers, each gets
    its own (a new file takes the lowest free number)."""
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))  # noqa: SIM115 (it lives as long as the process)


def __getattr__(name: str) -> Any:
    """`agl_cli.cli.main.app` still names the application, imported on first use."""
    if name == "app":
        from agl_cli.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
