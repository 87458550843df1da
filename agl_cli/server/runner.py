"""Run the daemon in the foreground: check everything that can fail, then serve.

Everything a user can get wrong (a port in use, an unwritable state directory, a file
that is not agl's database) is found before serving, here and in `serving` (the store),
and raised as `StartupError` with one sentence the CLI prints as it is.

The port is listened on as soon as the state directory is known to be this daemon's,
before the server and the store are loaded (`serving`): a client that comes back while
the daemon restarts finds its connection taken and answered once the daemon serves,
instead of refused. agentlightning 0.3.0's store client gives a restarting server less
than a second before it gives up for good.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
from pathlib import Path

from agl_cli import paths, pidfile, tokens
from agl_cli.daemon_config import DaemonConfig
from agl_cli.store.files import sync_to_disk


class StartupError(Exception):
    """The daemon cannot start; the message says why in one sentence."""


class StoppedError(Exception):
    """The daemon had to stop (its store can take no more writes); the message says why."""


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".agl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(paths.unusable(path, exc)) from None


def keep_private(path: Path, mode: int, what: str) -> str | None:
    """The token and the data are the owner's alone: a looser mode found is tightened, and
    the sentence that says so returned, for the log (a user who loosened it learns why)."""
    found = stat.S_IMODE(path.stat().st_mode)
    if not found & 0o077:
        return None
    try:
        os.chmod(path, mode)
    except PermissionError:  # another user's (a shared directory, say): serve, and say so
        return (
            f"The {what} {path} can be read by others (mode {found:o}), and only its owner can change that."
        )
    return f"The {what} {path} could be read by others (mode {found:o}); it is now {mode:o}."


def load_or_create_token(state_dir: Path) -> str:
    """The management API's token: made once, readable by its owner only (mode 0600), and
    synced before it is used: after a power cut, a token lost would be made anew, and
    every client holding the old one refused."""
    token_path = state_dir / paths.TOKEN_NAME
    token = _read_token(token_path)
    if token:
        sentence = tokens.problem(token, str(token_path))
        if sentence is not None:  # served, no command of agl's could send it
            raise StartupError(sentence)
        return token
    token = secrets.token_urlsafe(32)
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(token_path, 0o600)
    sync_to_disk(state_dir)  # its name
    return token


def _read_token(path: Path) -> str:
    """The token in `path` ("" if there is none). One that cannot be read refuses the start
    rather than being replaced: its clients may hold it already."""
    try:
        return path.read_bytes().decode().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise StartupError(f"The token file {path} cannot be read ({exc.strerror or exc}).") from None
    except UnicodeDecodeError:
        raise StartupError(f"The token file {path} is not UTF-8 text.") from None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A streamed response goes out in several sends; without TCP_NODELAY (which accepted
    # connections inherit) each after the first waits ~40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"Port {port} on {host} is already in use; is agl already running?") from None
        raise StartupError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}).") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(config: DaemonConfig) -> None:
    """Serve until SIGINT/SIGTERM or `POST /v1/shutdown`; in-flight requests finish, then
    the store closes. The pidfile marks the state directory as taken meanwhile."""
    problem = config.problem()
    if problem is not None:
        raise StartupError(problem)
    # Absolute, as `agl status` shows it: a relative one would mean nothing from elsewhere.
    state_dir = (config.state_dir or paths.default_state_dir()).absolute()
    made = not state_dir.exists()
    prepare_state_dir(state_dir)
    pid_path = state_dir / paths.PIDFILE_NAME
    try:
        pidfile.acquire(pid_path)
    except pidfile.AlreadyRunningError as exc:
        raise StartupError(str(exc)) from None
    except pidfile.UnwritableError as exc:
        raise StartupError(str(exc)) from None
    try:
        try:
            with bind(config.host, config.port) as sock:
                from agl_cli.server.serving import serve

                serve(config, state_dir, sock)
        finally:
            pidfile.release(pid_path)
    except StartupError:
        if made:  # a daemon that never served leaves no empty directory behind
            with contextlib.suppress(OSError):
                state_dir.rmdir()
        raise
