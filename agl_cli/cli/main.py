"""The `agl` entry point.

`agl --version` is answered here, before Typer and the command modules are imported,
so that it costs little more than starting Python; everything else goes to the Typer
application in `agl_cli.cli.app`, imported on demand.
"""

from __future__ import annotations

import io
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
    _write_stdout_whole()
    try:
        _run()
    except KeyboardInterrupt:  # while Typer and the commands load: quietly, as Typer ends one running
        from agl_cli.cli.errors import ExitCode  # without Typer: quick

        raise SystemExit(ExitCode.INTERRUPTED) from None
    except OSError as exc:
        from agl_cli.cli.errors import StdoutError, reader_gone, stdout_failed

        if isinstance(exc, BrokenPipeError):
            reader_gone()
        if isinstance(exc, StdoutError):
            stdout_failed(exc)
        raise


def _run() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"agl {__version__}\n")
        sys.stdout.flush()
        return
    import typer

    from agl_cli.cli.app import app
    from agl_cli.cli.errors import CLIError, ExitCode, report, usage_error

    try:
        code = app(prog_name="agl", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe or a full disk is found here rather than as Python exits
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


class _Stdout(io.TextIOWrapper):
    """A text stream whose failures to write say they are stdout's (`StdoutError`), so that
    a full disk ends agl with one sentence rather than a traceback.

    It sits above the buffer, not below it: a Ctrl-C that lands just after a write to the
    file went out must not leave that write in the buffer, to be sent again at exit."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_error(exc) from None

    def flush(self) -> None:
        try:
            super().flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_error(exc) from None


def _stdout_error(exc: OSError) -> OSError:
    from agl_cli.cli.errors import StdoutError

    return StdoutError(exc.errno, exc.strerror)


def _write_stdout_whole() -> None:
    """Write stdout through a buffer, which goes on until all of a write is written or
    raises the error that stopped it, and through `_Stdout`.

    Under PYTHONUNBUFFERED (many container images set it) or `python -u`, Python writes
    text straight to the file and takes a write the kernel took only in part as done: on
    a full disk, or into a pipe whose reader left half-way, the rest of the output was lost
    and agl exited 0. Lines still go out as they are written where they did before."""
    stream = sys.stdout
    if stream is not sys.__stdout__ or not isinstance(stream, io.TextIOWrapper):
        return  # /dev/null in place of a closed stdout, a test's capture: left as it is
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    stream.flush()
    sys.stdout = _Stdout(
        io.BufferedWriter(io.FileIO(fd, "w", closefd=False)),
        encoding=stream.encoding,
        errors=stream.errors,
        newline="\n",
        line_buffering=stream.line_buffering or stream.write_through,
    )


def __getattr__(name: str) -> Any:
    """`agl_cli.cli.main.app` still names the application, imported on first use."""
    if name == "app":
        from agl_cli.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
