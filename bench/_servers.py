"""What the side-by-side bench shares between its own process and the servers it starts.

Imported by `side_by_side.py`, `ceiling_app.py` and `legacy_server.py` (the last one runs
under another Python, with agentlightning 0.3.0), so it needs nothing but the standard
library: the shape of the tasks every server hands out, how a server announces itself,
and the child processes the bench starts, which are all stopped when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
LISTENING = re.compile(r"listening on (http://[^\s]+)")
"""Every server the bench starts writes `listening on http://HOST:PORT` once it can be reached."""


def task_input(i: int) -> dict[str, Any]:
    """The input of task `i`: small, like a typical question-answer sample."""
    return {"question": f"What is {i} + {i}?", "answer": 2 * i, "id": i}


def task_spec(i: int) -> dict[str, Any]:
    """Task `i` as it is queued on every server: input, mode and metadata."""
    return {"input": task_input(i), "mode": "train", "metadata": {"source": "bench", "shard": i % 16}}


# child processes ---------------------------------------------------------------------------

_children: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def kill_children() -> None:
    """Kill whatever the bench started and did not stop (each in its own process group)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        _children.pop(pid, None)


class Child:
    """A process started by the bench, with its stdout and stderr in one log file.

    It runs in a process group of its own (a terminal's Ctrl-C reaches only the bench,
    which stops it), so that stopping it also stops anything it started in turn.
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        _children[self.proc.pid] = self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """Wait until the log matches `pattern`; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not get ready within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask politely (close stdin, SIGINT), then kill its group; returns the exit status."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Still running, so its id is still its group's: kill the group, children included.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        _children.pop(self.proc.pid, None)
        return self.proc.returncode
