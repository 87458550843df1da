"""Running the real `agl` command line against a real daemon, as a user would."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import prefork
from daemon import Daemon, env_without_agl, fetch


def agl(
    *args: str,
    daemon: Daemon | None = None,
    state_dir: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`python -m agl_cli [--state-dir D] ARGS`, so URL and token are found as a user's would be
    (forked from the pre-fork server of `prefork.py` where it can be); in a session of its own,
    so that a signal it sent its process group would not reach the tests."""
    where = daemon.state_dir if daemon is not None else state_dir
    before = ["--state-dir", str(where)] if where is not None else []
    return prefork.run(
        [*before, *args],
        env={**env_without_agl(), **(env or {})},
        input=stdin,
        timeout=timeout,
        new_session=True,
    )


def agl_into(
    out: Path, *args: str, daemon: Daemon, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`agl ARGS` with its stdout going to the file `out`, as `agl ARGS > out` (binary output);
    `environment` is the whole of it (by default the suite's without agl's variables)."""
    with out.open("wb") as stdout:
        return subprocess.run(
            [sys.executable, "-m", "agl_cli", "--state-dir", str(daemon.state_dir), *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
            env=environment or env_without_agl(),
            check=False,
        )


def popen_agl(*args: str, daemon: Daemon, environment: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`agl` in the background, taking signals as from a terminal (`as_on_a_terminal`);
    `environment` as for `agl_into`."""
    command = [sys.executable, "-m", "agl_cli", "--state-dir", str(daemon.state_dir), *args]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment or env_without_agl(),
        preexec_fn=as_on_a_terminal,
    )


class Lines:
    """The stdout of a running command, line by line, readable with a timeout; as a
    context manager, what a failing test left running is killed at its end."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in stdout], daemon=True)
        self.reader.start()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def line(self, timeout: float = 20.0) -> str:
        """The next line, without its end."""
        try:
            return self.lines.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no line came in {timeout:g} s") from None

    def take(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The next `count` lines, each a JSON document."""
        deadline = time.monotonic() + timeout
        taken = []
        while len(taken) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(taken)} of {count} lines came: {taken}"
            taken.append(json.loads(self.lines.get(timeout=remaining)))
        return taken

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, then everything it printed on stderr."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(10)
        self.reader.join(10)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


def as_on_a_terminal() -> None:
    """Ctrl-C (SIGINT) and a closed terminal's SIGHUP do what they do to a command run on
    a terminal, even where the suite itself runs in the background (`nohup`, `&`), which
    starts everything with them ignored."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def on_a_terminal(*args: str, daemon: Daemon, columns: int, stderr_too: bool = False) -> list[str]:
    """What `agl ARGS` shows on a terminal `columns` wide, line by line, without its styles:
    its stdout, and its stderr too if `stderr_too` (else that goes to a pipe)."""
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "agl_cli", "--state-dir", str(daemon.state_dir), *args]
    env = {**env_without_agl(), "COLUMNS": str(columns), "LINES": "50"}
    stderr = follower if stderr_too else subprocess.PIPE
    process = subprocess.Popen(command, stdout=follower, stderr=stderr, env=env)
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 60
    while select.select([leader], [], [], max(deadline - time.monotonic(), 0))[0]:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors or shown
    return re.sub(r"\x1b\[[0-9;]*m", "", shown.decode()).splitlines()


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str, code: int = 1) -> None:
    """Exit `code`, and stderr is exactly `agl: <expected...>` on one line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agl: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class Worker(threading.Thread):
    """A worker of the legacy protocol: claims tasks and reports a rollout for each,
    rewarding it with `input["reward"]` when the input says so."""

    def __init__(self, daemon: Daemon, limit: int | None = None, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.daemon_ = daemon
        self.limit = limit
        self.pause = pause
        self.done = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and (self.limit is None or self.done < self.limit):
            try:
                answer = fetch("GET", self.daemon_.url + "/task", params={"wait": 0.2}, timeout=5)
                task = answer.json()["task"]
                if task is None:
                    continue
                self.report(task)
            except httpx.HTTPError:
                time.sleep(0.05)  # the daemon is restarting; its url may change under us
                continue
            self.done += 1
            time.sleep(self.pause)

    def report(self, task: dict[str, Any]) -> None:
        data = task["input"]
        reward = data.get("reward", 1.0) if isinstance(data, dict) else 1.0
        rollout = {
            "rollout_id": task["rollout_id"],
            "task": task,
            "final_reward": reward,
            "triplets": [{"prompt": "p", "response": "r", "reward": reward}],
        }
        fetch("POST", self.daemon_.url + "/rollout", json=rollout, timeout=5).raise_for_status()

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def post_rollout(daemon: Daemon, rollout_id: str, reward: float = 0.5) -> None:
    body = {"rollout_id": rollout_id, "final_reward": reward}
    fetch("POST", daemon.url + "/rollout", json=body, timeout=10).raise_for_status()
