"""Starting `agl` processes without paying for Python's imports each time.

The suite starts about a thousand daemons and commands, and each new interpreter spends
most of a second of CPU importing agl's stack before it does anything. A pre-fork server
(`prefork_server.py`, which this module starts) imports that stack once; every process asked of it is a
`fork()` of that server that then runs `python -m agl_cli ARGS` as a new interpreter
would: its own pid, environment, working directory, standard streams and signal
dispositions, no file descriptor of the server's, and an ordinary exit. What they share is
what importing agl's modules did: Python's own start and those modules' top-level code,
run once in the server.

What could tell the two apart is left to a new interpreter (`start` falls back to
`subprocess.Popen`): an environment other than the one the server imported with (a module
may read a variable as it is imported), a terminal on a standard stream (Python buffers
lines only for one it found at its start), or `NO_PREFORK=1` for a whole run.
`tests/test_startup.py`, which is about the imports themselves, always runs new ones.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import prefork_server

PACKAGE = "agl_cli"  # what `python -m` runs; the server's command line names it, as agl's pid check asks
# What the commands and `serve` import: the server imports them before it forks anything.
PRELOAD = ("agl_cli.cli.app", "agl_cli.server.serving", "agl_cli.client")
VOLATILE = frozenset({"PYTEST_CURRENT_TEST"})  # set by pytest at every test; nothing reads it on import


class Process(Protocol):
    """What the tests use of a started process: `subprocess.Popen` and `Forked` both have it."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A process forked by the pre-fork server: its exit status arrives on a pipe of its own."""

    def __init__(self, args: Sequence[str], pid: int, status: int) -> None:
        self.args = list(args)
        self.pid = pid
        self.returncode: int | None = None
        self._status: int | None = status  # the pipe's read end; the server writes the status there

    def poll(self) -> int | None:
        if self._status is not None and _readable(self._status, 0):
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._status is not None:
            if not _readable(self._status, timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._read_status()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a pid that has been reaped (and may be reused)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read_status(self) -> None:
        assert self._status is not None
        data = os.read(self._status, prefork_server.STATUS.size)
        self._close()
        if len(data) != prefork_server.STATUS.size:
            raise RuntimeError(f"the pre-fork server ended before process {self.pid} did")
        self.returncode = os.waitstatus_to_exitcode(prefork_server.STATUS.unpack(data)[0])

    def _close(self) -> None:
        if self._status is not None:
            os.close(self._status)
            self._status = None

    __del__ = _close


def _readable(fd: int, timeout: float | None) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def _comparable(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in VOLATILE}


class Forker:
    """The client of one pre-fork server, started at its first use by this test process."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's stderr, for as long as it runs

    def can_fork(self, env: Mapping[str, str], fds: Sequence[int]) -> bool:
        return (
            os.environ.get("NO_PREFORK") != "1"
            and _comparable(env) == _comparable(self.env)
            and not any(os.isatty(fd) for fd in fds)
        )

    def fork(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        fds: tuple[int, int, int],
        new_session: bool = False,
        ignore_sighup: bool | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> Forked:
        """`python -m agl_cli ARGS` with `fds` as its stdin, stdout and stderr."""
        request = {
            "args": list(args),
            "env": dict(env),
            "cwd": os.getcwd(),
            "new_session": new_session,
            "ignore_sighup": ignore_sighup,
            "open_files": open_files,
        }
        status_read, status_write = os.pipe()
        with self._lock:
            control = self._control()
            try:
                socket.send_fds(control, [json.dumps(request).encode()], [*fds, status_write])
                reply = control.recv(256)
            except OSError:
                reply = b""
            finally:
                os.close(status_write)
        if not reply:
            os.close(status_read)
            self._log.seek(0)
            raise RuntimeError(f"the pre-fork server failed: {self._log.read().decode(errors='replace')}")
        return Forked([sys.executable, "-m", PACKAGE, *args], json.loads(reply)["pid"], status_read)

    def _control(self) -> socket.socket:
        if self._socket is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with theirs:
                self._server = subprocess.Popen(
                    [sys.executable, prefork_server.__file__, str(theirs.fileno()), PACKAGE, *PRELOAD],
                    pass_fds=[theirs.fileno()],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=self._log,
                )
            self._socket = ours
        return self._socket

    def close(self) -> None:
        """Let the server end, and wait for it: so that its CPU time, and that of every
        process it forked and reaped, counts as this test process's children's."""
        if self._socket is None or self._server is None:
            return
        self._socket.close()
        try:
            self._server.wait(30)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()


FORKER = Forker({k: v for k, v in os.environ.items() if not k.startswith("AGL_")})
atexit.register(FORKER.close)


def start(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
    new_session: bool = False,
    ignore_sighup: bool | None = None,
    open_files: tuple[int, int] | None = None,
) -> Process:
    """`python -m agl_cli ARGS`, forked from the pre-fork server where that cannot be told
    from a new interpreter, else a new interpreter; standard streams as file descriptors."""
    fds = (stdin, stdout, stderr)
    if FORKER.can_fork(env, fds):
        return FORKER.fork(
            args,
            env=env,
            fds=fds,
            new_session=new_session,
            ignore_sighup=ignore_sighup,
            open_files=open_files,
        )

    return subprocess.Popen(
        [sys.executable, "-m", PACKAGE, *args],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        start_new_session=new_session,
        preexec_fn=lambda: prefork_server.hang_up_and_limit(ignore_sighup, open_files),
    )


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    input: str | None = None,
    timeout: float,
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, -m, agl_cli, *args], capture_output=True, text=True, ...)`, forked
    from the pre-fork server where it can be; stdin is the suite's own unless `input` is given."""
    command = [sys.executable, "-m", PACKAGE, *args]
    if not FORKER.can_fork(env, (0,) if input is None else ()):
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=dict(env),
            check=False,
            start_new_session=new_session,
        )
    stdin_read, stdin_write = os.pipe() if input is not None else (0, -1)
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    try:
        process = FORKER.fork(
            args, env=env, fds=(stdin_read, stdout_write, stderr_write), new_session=new_session
        )
    finally:
        for fd in {stdin_read, stdout_write, stderr_write} - {0}:
            os.close(fd)
    deadline = time.monotonic() + timeout
    outputs = _exchange(stdin_write, (input or "").encode(), [stdout_read, stderr_read], deadline)
    stdout, stderr = (_text(output) for output in outputs)
    if outputs[0] is None or outputs[1] is None or _wait_until(process, deadline) is None:
        process.kill()
        process.wait()
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
    return subprocess.CompletedProcess(command, process.wait(), stdout, stderr)


def _exchange(to: int, data: bytes, sources: list[int], deadline: float) -> list[bytes | None]:
    """Write `data` to `to` and read every source to its end, as `Popen.communicate` does;
    a source not ended by the deadline gives None. Every descriptor is closed."""
    with selectors.DefaultSelector() as selector:
        if to >= 0:
            os.set_blocking(to, False)
            selector.register(to, selectors.EVENT_WRITE)
        read: dict[int, bytearray] = {}
        for fd in sources:
            selector.register(fd, selectors.EVENT_READ)
            read[fd] = bytearray()
        ended: set[int] = set()
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                fd = int(key.fd)
                if fd == to:
                    try:
                        data = data[os.write(fd, data[: select.PIPE_BUF]) :]
                    except BrokenPipeError:
                        data = b""  # it has stopped reading: so does Popen.communicate
                    if not data:
                        selector.unregister(fd)
                        os.close(fd)
                    continue
                chunk = os.read(fd, 1 << 16)
                read[fd] += chunk
                if not chunk:
                    selector.unregister(fd)
                    ended.add(fd)
        for key in list(selector.get_map().values()):
            os.close(int(key.fd))
    for fd in ended:
        os.close(fd)
    return [bytes(read[fd]) if fd in ended else None for fd in sources]


def _text(output: bytes | None) -> str:
    """Bytes as `text=True` decodes them: the locale's encoding, universal newlines."""
    text = (output or b"").decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _wait_until(process: Forked, deadline: float) -> int | None:
    try:
        return process.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return None
