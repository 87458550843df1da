"""`agl serve --detach`: the daemon in the background, in a session of its own.

It is the same `python -m agl_cli serve` a person would run, with its output appended to
STATE_DIR/agl.log. This returns once the daemon answers `/ready`, or fails with what the
daemon said, so that a script can go on to `agl queue` at once; the notes the daemon
gave as it started (a paused queue, permissions tightened) are passed on to stderr, as
plain lines whether it logs them so or as JSON (`--log-json`).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import typer

from agl_cli import paths, pidfile
from agl_cli.cli import output
from agl_cli.cli.errors import fail
from agl_cli.daemon_config import DaemonConfig

READY_LINE = re.compile(r"listening on (http://\S+)")
# Said before the daemon brings an older database up to date, which it does before it
# listens: however long that takes, the wait for it is not a failure to start.
UPGRADE_LINE = re.compile(r"agl: bringing (\S+) from schema (\d+) up to (\d+)")
START_TIMEOUT = 30.0


def start_detached(config: DaemonConfig, timeout: float = START_TIMEOUT) -> None:
    state_dir = (config.state_dir or paths.default_state_dir()).absolute()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        fail(paths.unusable(state_dir, exc))
    log_path = state_dir / paths.LOGFILE_NAME
    try:
        log = log_path.open("ab")
    except OSError as exc:
        if isinstance(exc, IsADirectoryError):  # the directory is fine: the log is in the way
            fail(f"The log {log_path} is a directory, not a file.")
        fail(paths.unusable(state_dir, exc))
    with log:
        start = log.tell()
        config = dataclasses.replace(config, state_dir=state_dir)
        command = [sys.executable, "-m", "agl_cli", "serve", *config.argv()]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # As daemons do, so as to hold no directory busy; and `-m` looks for agl_cli
                # in the working directory first, which may be a checkout of another agl.
                cwd="/",
            )
        except OSError as exc:  # this Python cannot be run (another user's, since removed)
            fail(f"Cannot start the daemon with {sys.executable} ({exc.strerror or exc}).")
    url = _wait_until_listening(process, state_dir, start, time.monotonic() + timeout)
    from agl_cli.client import AglClient

    deadline = time.monotonic() + timeout
    with AglClient(url) as client:
        while not client.ready():
            if process.poll() is not None:
                _fail_with_log(log_path, start, "The daemon stopped while starting")
            if time.monotonic() > deadline:
                _fail_with_log(log_path, start, f"The daemon did not become ready within {timeout:g} s")
            time.sleep(0.05)
    output.write_line(f"agl is running in the background at {url} (pid {process.pid}); log: {log_path}")
    for line in _log_since(log_path, start).splitlines():  # what it said at start, for who started it
        said = _message(line)
        if said.startswith("agl: ") and not UPGRADE_LINE.match(said):
            typer.echo(said, err=True)


def _message(line: str) -> str:
    """What a line of the log says: the line itself (after its time), or with `--log-json`
    its message."""
    if not line.startswith("{"):
        from agl_cli.server.logs import untimed

        return untimed(line)
    import orjson

    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    message = record.get("message") if isinstance(record, dict) else None
    return message if isinstance(message, str) else line


def _wait_until_listening(
    process: subprocess.Popen[bytes], state_dir: Path, start: int, deadline: float
) -> str:
    """The daemon's address once it listens. Should it first bring an older database up
    to date, say so, and wait for that as long as the daemon is alive.

    The log is shared: of two `agl serve --detach` at once, the one whose daemon did not
    take the state directory finds the other's address there, so an address counts only
    once the pidfile names this daemon."""
    log_path, pid_path = state_dir / paths.LOGFILE_NAME, state_dir / paths.PIDFILE_NAME
    upgrading = False
    while True:
        logged = _log_since(log_path, start)
        match = READY_LINE.search(logged)
        if match and pidfile.read_pid(pid_path) == process.pid:
            return match.group(1)
        upgrade = None if upgrading else UPGRADE_LINE.search(logged)
        if upgrade:
            database, old, new = upgrade.groups()
            output.write_line(
                f"agl is bringing {database} from schema {old} up to {new} first; waiting for it."
            )
            upgrading = True
        if process.poll() is not None:
            holder = pidfile.read_pid(pid_path)
            if holder not in (None, process.pid) and pidfile.held(pid_path):  # what its own log line says
                fail(str(pidfile.AlreadyRunningError(holder)))
            _fail_with_log(log_path, start, "The daemon exited while starting")
        if not upgrading and time.monotonic() > deadline:
            _fail_with_log(log_path, start, "The daemon did not start listening in time")
        time.sleep(0.05)


def _log_since(log_path: Path, start: int) -> str:
    with log_path.open("rb") as handle:
        handle.seek(start)
        return handle.read().decode(errors="replace")


def _fail_with_log(log_path: Path, start: int, reason: str) -> NoReturn:
    """The daemon's own one-line error if it gave one; else the end of its log, then why."""
    lines = [line for line in _log_since(log_path, start).splitlines() if line.strip()]
    last = _message(lines[-1]) if lines else ""
    if last.startswith("agl: "):
        fail(last.removeprefix("agl: "))
    for line in lines[-10:]:
        typer.echo(f"  {line}", err=True)
    fail(f"{reason}; the end of its log ({log_path}) is above." if lines else f"{reason}; its log is empty.")
