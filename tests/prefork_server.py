"""The pre-fork server of `prefork.py`, run as a script: `python prefork_server.py FD PACKAGE
MODULE...` imports the modules, then forks a child for every request that comes on the
socket FD, until that socket closes; each child runs `python -m PACKAGE ARGS`.

A request is a JSON object (the arguments, environment, working directory and what the
child asks of its process) with four descriptors: the child's stdin, stdout and stderr,
and a pipe on which the server writes the child's wait status when it reaps it. Importing
this module does nothing: the client takes its constants and `hang_up_and_limit` from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import runpy
import selectors
import signal
import socket
import struct
import sys
from collections.abc import Sequence

STATUS = struct.Struct("i")  # a child's wait status, as the server writes it when it reaps the child


def hang_up_and_limit(ignore_sighup: bool | None, open_files: Sequence[int] | None) -> None:
    """What a daemon asks of its process before agl runs: SIGHUP ignored or not (None: as the
    suite has it, as `subprocess` leaves it), and a soft and hard limit on open files."""
    if ignore_sighup is not None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_sighup else signal.SIG_DFL)
    if open_files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files[0], open_files[1]))


def _serve(control: socket.socket) -> dict[str, object]:
    """Fork a child for every request until the client goes away; in a child, return its request."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop through the pipe
    statuses: dict[int, int] = {}  # a living child's pid -> the write end of its status pipe
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is not control:
                os.read(wake_read, 4096)
                _reap(statuses)
                continue
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
            if not message:  # the test process is ending
                _reap(statuses)  # those that have ended; any other is left to init, as it would be
                sys.exit(0)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                selector.close()
                control.close()
                for fd in (wake_read, wake_write, *statuses.values()):
                    os.close(fd)
                _become_child(request, fds)
                return dict(request)
            statuses[pid] = fds[3]
            for fd in fds[:3]:
                os.close(fd)
            control.send(json.dumps({"pid": pid}).encode())


def _reap(statuses: dict[int, int]) -> None:
    while statuses:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        fd = statuses.pop(pid)
        with contextlib.suppress(BrokenPipeError):  # nobody waits for it any more
            os.write(fd, STATUS.pack(status))
        os.close(fd)


def _become_child(request: dict[str, object], fds: list[int]) -> None:
    """Everything a new interpreter started by `subprocess.Popen` would have differently."""
    os.close(fds[3])
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    hang_up_and_limit(request["ignore_sighup"], request["open_files"])  # type: ignore[arg-type]
    os.chdir(str(request["cwd"]))
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[arg-type]
    sys.path[0] = os.getcwd()  # as `python -m` puts it


if __name__ == "__main__":
    fd, package, *preload = sys.argv[1:]
    for module in preload:
        __import__(module)
    child = _serve(socket.socket(fileno=int(fd)))
    sys.argv = [package, *child["args"]]  # type: ignore[list-item]
    runpy.run_module(package, run_name="__main__", alter_sys=True)
