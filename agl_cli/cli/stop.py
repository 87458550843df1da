"""`agl stop`: stop the daemon gracefully and wait until it has exited.

On this machine the pidfile in the state directory names the process, and SIGTERM
stops it as Ctrl-C would. Without a pidfile (or with an explicit --url / AGL_URL, which may
be another machine) it asks over HTTP with `POST /v1/shutdown`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import typer

from agl_cli import paths
from agl_cli import pidfile as pidfiles
from agl_cli.cli import output
from agl_cli.cli.context import Target, connect, globals_of, target_of, unreadable
from agl_cli.cli.errors import ExitCode, fail
from agl_cli.cli.seconds import seconds_option


def stop(
    ctx: typer.Context,
    timeout: float = seconds_option(
        60.0, "--timeout", least=0.0, help="Seconds to wait for it to exit (exit 5 beyond)."
    ),
) -> None:
    """Stop the daemon gracefully: in-flight requests finish, then it exits."""
    options = globals_of(ctx)
    pidfile = options.state_directory / paths.PIDFILE_NAME
    try:
        signalled = not options.url and pidfile.exists()  # a signal needs no token: its file is not read
    except PermissionError as exc:
        fail(unreadable(pidfile, exc, "--url and --token"))
    if signalled:
        _stop_by_pid(pidfile, timeout)
    else:
        _stop_by_request(ctx, target_of(ctx), timeout)


def _stop_by_pid(pidfile: Path, timeout: float) -> None:
    pid = pidfiles.read_pid(pidfile)
    if pid is None or not pidfiles.held(pidfile):  # a pid reused, by another agl command even
        what = f"pid {pid}" if pid is not None else "no pid"
        try:
            pidfile.unlink(missing_ok=True)
        except OSError as exc:  # a directory, say: not agl's doing, so not agl's to clear
            fail(
                f"agl is not running: {pidfile} names {what}, and it could not be removed"
                f" ({exc.strerror or exc}).",
                ExitCode.UNREACHABLE,
            )
        fail(
            f"agl is not running: {pidfile} named {what}, which is not a running agl daemon, so it was removed.",
            ExitCode.UNREACHABLE,
        )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        fail(f"agl (pid {pid}) exited before it could be stopped.", ExitCode.UNREACHABLE)
    except PermissionError:
        fail(f"Not allowed to signal agl (pid {pid}); it belongs to another user.")
    _wait(lambda: pidfiles.is_agl_process(pid), timeout, f"agl (pid {pid})")
    with contextlib.suppress(OSError):  # the daemon removes it itself; this covers one that could not
        pidfile.unlink(missing_ok=True)  # (on a file system gone read-only, the next start takes it over)
    output.write_line(f"Stopped agl (pid {pid}).")


def _stop_by_request(ctx: typer.Context, target: Target, timeout: float) -> None:
    from agl_cli.client import DaemonUnreachable

    with connect(ctx) as client:
        try:
            pid = client.status().get("pid")
        except DaemonUnreachable as exc:
            if target.url_given:  # the address was given: no pidfile was looked for
                fail(str(exc), ExitCode.UNREACHABLE)
            fail(
                f"agl is not running: there is no pidfile in {target.state_dir} "
                f"and no daemon answers at {target.url}.",
                ExitCode.UNREACHABLE,
            )
        client.shutdown()
        _wait(client.alive, timeout, f"agl at {target.url}")
    output.write_line(f"Stopped agl at {target.url}" + (f" (pid {pid})." if pid else "."))


def _wait(running: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while running():
        if time.monotonic() > deadline:
            fail(f"{what} was asked to stop but is still running after {timeout:g} s.", ExitCode.TIMEOUT)
        time.sleep(0.05)
