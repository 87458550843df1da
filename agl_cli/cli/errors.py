"""Exit codes and the one-line error every command ends with when something goes wrong.

Typer is imported only to report an error: `agl` reads its exit codes before Typer loads."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import typer


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # the request could not be carried out (bad file, unknown id, ...)
    USAGE = 2  # the command line itself is wrong
    UNREACHABLE = 3  # no daemon answers at the address
    AUTH = 4  # the daemon refused the token
    TIMEOUT = 5  # a --timeout passed before the work was done
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports a command it interrupted
    READER_GONE = 141  # what reads stdout went away (`agl ... | head`): as SIGPIPE's victims exit


# What each code means, in the words of `agl --help` and the man pages (one entry per code).
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "error (bad input, unknown id, daemon refused)",
    ExitCode.USAGE: "usage",
    ExitCode.UNREACHABLE: "daemon unreachable",
    ExitCode.AUTH: "token refused",
    ExitCode.TIMEOUT: "timed out",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.READER_GONE: "what read the output went away (as head does), quietly",
}
EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{int(code)} {MEANINGS[code]}" for code in ExitCode) + "."


class CLIError(Exception):
    """A failure to report as `agl: <message>` with an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    raise CLIError(message, code)


def usage_error(exc: typer.TyperException) -> CLIError:
    """What the parser refused, as one line like every other failure, with where to read on."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message.replace(": Value error, ", ": ")  # how the parser words a choice refused
    ctx = getattr(exc, "ctx", None)
    own = _agls_own_option(exc, ctx)
    if own is not None:
        return CLIError(own, ExitCode.USAGE)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    code = ExitCode.USAGE if exc.exit_code == ExitCode.USAGE else ExitCode.ERROR
    return CLIError(f"{message}{where}.", code)


def _agls_own_option(exc: typer.TyperException, ctx: typer.Context | None) -> str | None:
    """The sentence for an option of agl itself given after a command (`agl status
    --state-dir DIR`, as `agl serve --state-dir DIR` takes one): where it goes. Not for
    `--version`, which means nothing after a command."""
    name = getattr(exc, "option_name", None)  # of an option the command does not know
    if name is None or ctx is None or ctx.parent is None:
        return None
    root = ctx.find_root()
    if not any(name in param.opts and not getattr(param, "is_flag", False) for param in root.command.params):
        return None
    command = ctx.command_path.removeprefix(root.command_path).strip()
    return f"{name} is an option of agl itself: give it before the command (agl {name} ... {command})."


def report(error: CLIError) -> NoReturn:
    import typer

    from agl_cli.cli.output import shown  # here: output imports this module

    # The message may quote what others wrote (a task file's field, a bundle's name, the
    # daemon's detail): its control characters are written out, as in every table.
    typer.echo(f"agl: {shown(str(error))}", err=True)
    raise SystemExit(int(error.code))


class StdoutError(OSError):
    """stdout refused a write for a reason of its own (a full disk, an I/O error); a reader
    gone away is a BrokenPipeError instead, which ends agl quietly."""


def reader_gone() -> NoReturn:
    """End quietly, as a Unix tool killed by SIGPIPE does, when what reads stdout went away."""
    _drop_unwritten()
    raise SystemExit(ExitCode.READER_GONE)


def stdout_failed(error: OSError, done: str = "") -> NoReturn:
    """End as any failure does, with one line, when the output could not be written; `done`
    says what was changed all the same (`the 3 tasks were queued`)."""
    _drop_unwritten()
    report(
        CLIError(
            f"Cannot write to stdout: {error.strerror or error}"
            + (f"; {done} all the same." if done else ".")
        )
    )


@contextlib.contextmanager
def said_of_a_change(done: str) -> Iterator[None]:
    """Around the output of a change already made (`done`, as `stdout_failed` takes it): a
    script told only that stdout failed would take it for undone, and make it again."""
    try:
        yield
        sys.stdout.flush()
    except StdoutError as exc:
        stdout_failed(exc, done)


def _drop_unwritten() -> None:
    """Whatever is still buffered for stdout goes to /dev/null: flushed at exit into a closed
    pipe or onto a full disk, it would make Python print "Exception ignored ..."."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
