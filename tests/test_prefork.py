"""A process the suite forks from its pre-fork server cannot be told from a new interpreter.

Each comparison runs the same `python -m agl_cli ...` both ways in one test: forked
(`prefork.start`, `prefork.run`) and as the suite ran everything before, a new
interpreter from `subprocess`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import prefork
import pytest
from daemon import READY_LINE, Daemon, env_without_agl, fetch

from agl_cli.pidfile import is_agl_process

pytestmark = pytest.mark.skipif(os.environ.get("NO_PREFORK") == "1", reason="NO_PREFORK=1: nothing is forked")


def serve(state_dir: Path, log: Path, *, forked: bool) -> prefork.Process:
    """A daemon reading /dev/null (not the suite's stdin: a terminal under `pytest -s`)."""
    args = ["serve", "--port", "0", "--state-dir", str(state_dir), "--log-level", "warning"]
    with log.open("wb") as out, open(os.devnull, "rb") as nothing:
        if forked:
            return prefork.start(
                args, env=os.environ, stdin=nothing.fileno(), stdout=out.fileno(), stderr=out.fileno()
            )
        return subprocess.Popen(
            [sys.executable, "-m", "agl_cli", *args], stdin=nothing, stdout=out, stderr=out
        )


def ready(process: prefork.Process, log: Path) -> None:
    """Once the daemon answers /ready: serving, its signal handlers set."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        match = READY_LINE.search(log.read_text())
        if match and fetch("GET", match.group(1) + "/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"the daemon never became ready: {log.read_text()}")


def what_the_kernel_shows(pid: int, where: Path) -> dict[str, object]:
    """Signal dispositions, threads, limits, working directory, every open descriptor by
    number and kind (its files named inside `where`), and whether agl's own check of a pid
    (`agl stop`, the pidfile) takes it for agl."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    descriptors = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed as we looked: /ready's connection
            target = os.readlink(entry).replace(str(where), "HERE")
            descriptors[int(entry.name)] = re.sub(r":\[\d+\]$", "", target)  # socket:[123] -> socket
    return {
        "signals": {name: status[name] for name in ("SigBlk", "SigIgn", "SigCgt")},
        "threads": status["Threads"],
        "limits": Path(f"/proc/{pid}/limits").read_text(),
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "descriptors": descriptors,
        "runs agl": is_agl_process(pid),
    }


def test_a_forked_daemon_shows_the_kernel_what_a_new_one_does(tmp_path: Path) -> None:
    places = {"forked": tmp_path / "forked", "new": tmp_path / "new"}
    processes = {}
    try:
        for name, where in places.items():
            where.mkdir()
            processes[name] = serve(where / "state", where / "log", forked=name == "forked")
            ready(processes[name], where / "log")
        # each closes /ready's connection when it gets to it: compare until that is done, or differ
        deadline = time.monotonic() + 10
        while True:
            shown = {name: what_the_kernel_shows(processes[name].pid, places[name]) for name in places}
            if shown["forked"] == shown["new"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for process in processes.values():
            process.kill()
            process.wait(10)
    assert "HERE/state/agl.db" in shown["new"]["descriptors"].values()  # type: ignore[attr-defined]
    assert shown["forked"] == shown["new"]


def test_a_forked_daemon_ends_as_a_child_does_and_its_status_says_how(tmp_path: Path) -> None:
    stopped = serve(tmp_path / "a", tmp_path / "a.log", forked=True)
    killed = serve(tmp_path / "b", tmp_path / "b.log", forked=True)
    assert isinstance(stopped, prefork.Forked) and isinstance(killed, prefork.Forked)
    ready(stopped, tmp_path / "a.log")
    ready(killed, tmp_path / "b.log")
    with pytest.raises(subprocess.TimeoutExpired):
        stopped.wait(0.1)
    stopped.terminate()
    killed.kill()
    assert (stopped.wait(30), killed.wait(30)) == (0, -signal.SIGKILL)
    assert (stopped.poll(), killed.poll()) == (0, -signal.SIGKILL)
    killed.kill()  # a reaped pid is never signalled again: it may be someone else's by now


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["--help"], None),
        (["resources", "--help"], None),
        (["queue", "-"], '{"input": 1}\n{"input": 2}\n'),
        (["queue", "-"], "not json\r\n"),
        (["tasks", "list", "--bogus"], None),
        (["--url", "http://127.0.0.1:9", "status"], None),
    ],
)
def test_a_forked_command_prints_and_ends_as_a_new_one_does(
    shared_daemon: Daemon, args: list[str], stdin: str | None
) -> None:
    env = env_without_agl()
    full = ["--state-dir", str(shared_daemon.state_dir), *args]
    forked = prefork.run(full, env=env, input=stdin, timeout=60, new_session=True)
    new = subprocess.run(
        [sys.executable, "-m", "agl_cli", *full],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env=env,
        check=False,
        start_new_session=True,
    )
    ids = re.compile(r"rollout-[0-9a-f-]+")  # the one thing that differs from one call to the next
    assert (forked.returncode, ids.sub("", forked.stdout), ids.sub("", forked.stderr)) == (
        new.returncode,
        ids.sub("", new.stdout),
        ids.sub("", new.stderr),
    )


def test_a_forked_command_past_its_timeout_is_killed_and_said_to_have_timed_out(
    shared_daemon: Daemon,
) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        prefork.run(
            ["--state-dir", str(shared_daemon.state_dir), "rollouts", "watch"],
            env=env_without_agl(),
            timeout=1,
        )
    assert timed_out.value.timeout == 1


def test_what_could_tell_a_fork_from_a_new_interpreter_gets_a_new_interpreter(tmp_path: Path) -> None:
    base = env_without_agl()
    log = tmp_path / "log"
    with log.open("wb") as out, open(os.devnull, "rb") as nothing:
        fds = (nothing.fileno(), out.fileno(), out.fileno())
        leader, terminal = os.openpty()
        try:
            assert prefork.FORKER.can_fork(base, fds)
            assert not prefork.FORKER.can_fork({**base, "NO_COLOR": "1"}, fds)  # read on import by some
            assert not prefork.FORKER.can_fork(base, (0, terminal, out.fileno()))  # buffered by line
        finally:
            os.close(leader)
            os.close(terminal)
