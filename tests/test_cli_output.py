"""What every command's output does where it goes: a pipe closed early, a full disk."""

from __future__ import annotations

import array
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
from pathlib import Path

import httpx
import pytest
from cli_runner import agl, agl_into, as_on_a_terminal, on_a_terminal, popen_agl, post_rollout
from daemon import Daemon, env_without_agl, wait_until

from agl_cli.cli.errors import ExitCode


def reader_gone(
    *args: str, daemon: Daemon, once_full: bool = False, environment: dict[str, str] | None = None
) -> tuple[int, str]:
    """`agl ARGS` into a pipe whose reader reads nothing and leaves at once, or once the pipe
    is full: the exit status and everything said on stderr."""
    process = popen_agl(*args, daemon=daemon, environment=environment)
    assert process.stdout is not None and process.stderr is not None
    try:
        if once_full:
            pipe = process.stdout.fileno()
            size = fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ)
            wait_until(lambda: waiting_in(pipe) == size or process.poll() is not None, "the pipe to fill")
        process.stdout.close()
        return process.wait(30), process.stderr.read()
    finally:
        process.kill()  # a watch that never noticed would go on for ever


def waiting_in(pipe: int) -> int:
    """How many bytes wait to be read in `pipe`."""
    waiting = array.array("i", [0])
    fcntl.ioctl(pipe, termios.FIONREAD, waiting)
    return waiting[0]


def test_a_command_whose_reader_goes_away_ends_quietly_as_sigpipe_would(daemon: Daemon) -> None:
    """Whatever the command, and whether the output is a table or JSON, one document or a
    stream: exit 141, as a Unix tool killed by SIGPIPE, and not a word on stderr. (Like
    such a tool, one whose whole output fit in the pipe before its reader left ends with 0.)"""
    daemon.queue(*range(2000))
    with httpx.Client(base_url=daemon.url, timeout=30) as client:  # more than a pipe holds
        for number in range(50):
            rollout = {"rollout_id": f"r{number}", "final_reward": 1.0, "logs": ["x" * 2000]}
            client.post("/rollout", json=rollout).raise_for_status()
    for command in (
        ["rollouts", "watch", "--since", "all"],
        ["rollouts", "list", "--all", "--json"],
        ["tasks", "list", "--limit", "2000"],
        ["tasks", "list", "--limit", "2000", "--json"],
        ["status", "--watch"],
        ["status", "--watch", "--json"],
    ):
        assert reader_gone(*command, daemon=daemon) == (ExitCode.READER_GONE, ""), command


def test_help_and_the_version_whose_reader_goes_away_end_quietly_too(tmp_path: Path) -> None:
    """`agl --version` is answered before the command line is read; help screens are drawn by
    Typer's own console, which rich would end with 1."""
    for command in (["--version"], ["--help"], ["queue", "--help"], ["tasks"]):
        process = subprocess.Popen(
            [sys.executable, "-m", "agl_cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_without_agl() | {"AGL_STATE_DIR": str(tmp_path)},
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        assert (process.wait(30), process.stderr.read()) == (ExitCode.READER_GONE, b""), command


# `agl ARGS` that says when it starts loading its commands, then loads them only once
# interrupted (standard input is never closed).
LOADING_UNTIL_INTERRUPTED = """
import sys

class Interruptible:
    def find_spec(self, name, path=None, target=None):
        if name == "agl_cli.cli.app":
            print("loading", flush=True)
            sys.stdin.read()
        return None

sys.meta_path.insert(0, Interruptible())
sys.argv = ["agl", *sys.argv[1:]]
from agl_cli.cli.main import main
main()
"""


def test_ctrl_c_while_a_command_is_still_loading_ends_it_quietly(tmp_path: Path) -> None:
    """Ctrl-C during the first few tenths of a second, as Typer and the commands load, ends
    `agl` as it does later on: exit 130 and nothing on stderr, not a traceback."""
    process = subprocess.Popen(
        [sys.executable, "-c", LOADING_UNTIL_INTERRUPTED, "status"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_without_agl() | {"AGL_STATE_DIR": str(tmp_path)},
        preexec_fn=as_on_a_terminal,
    )
    try:
        assert process.stdout is not None
        assert select.select([process.stdout], [], [], 30)[0], "agl never began to load its commands"
        assert process.stdout.readline() == "loading\n"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (process.returncode, out, err) == (ExitCode.INTERRUPTED, "", "")


def started_without(stream: int, *args: str, daemon: Daemon) -> subprocess.CompletedProcess[bytes]:
    """`agl ARGS` started with standard stream number `stream` closed (`<&-`, `>&-`)."""
    return subprocess.run(
        [sys.executable, "-m", "agl_cli", "--state-dir", str(daemon.state_dir), *args],
        stdout=subprocess.DEVNULL if stream != 1 else None,
        stderr=subprocess.PIPE,
        env=env_without_agl(),
        preexec_fn=lambda: os.close(stream),
        timeout=60,
        check=False,
    )


def test_a_command_started_without_stdin_or_stdout_reads_nothing_and_writes_nowhere(daemon: Daemon) -> None:
    """As from /dev/null: Python would leave the stream as None, which every read and write
    trips over with a traceback."""
    without_stdin = started_without(0, "queue", "-", daemon=daemon)
    assert (without_stdin.returncode, without_stdin.stderr) == (
        1,
        b"agl: <stdin>: there are no tasks in it.\n",
    )
    for command in (["--version"], ["tasks", "list", "--json"], ["status"]):
        without_stdout = started_without(1, *command, daemon=daemon)
        assert (without_stdout.returncode, without_stdout.stderr) == (0, b""), command
    assert daemon.status()["tasks"]["queued"] == 0


def python_env(unbuffered: bool) -> dict[str, str]:
    """The suite's environment, with Python's stdout unbuffered (PYTHONUNBUFFERED, as many
    container images set it) or buffered as by default."""
    env = {k: v for k, v in env_without_agl().items() if k != "PYTHONUNBUFFERED"}
    return env | {"PYTHONUNBUFFERED": "1"} if unbuffered else env


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_output_onto_a_full_disk_is_one_line_whatever_the_command(daemon: Daemon, unbuffered: bool) -> None:
    daemon.queue(*range(10))
    for command in (["backup", "-"], ["tasks", "list", "--json"], ["tasks", "list"], ["--version"]):
        result = agl_into(Path("/dev/full"), *command, daemon=daemon, environment=python_env(unbuffered))
        assert (result.returncode, result.stderr.decode()) == (
            ExitCode.ERROR,
            "agl: Cannot write to stdout: No space left on device.\n",
        ), command


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_change_made_before_its_output_failed_is_said_to_be_made(
    daemon: Daemon, tmp_path: Path, unbuffered: bool
) -> None:
    """A script told only that stdout failed would queue the tasks again."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"input": 1}\n{"input": 2}\n')
    one = tmp_path / "one.jsonl"
    one.write_text('{"input": 3}\n')
    said = {
        ("queue", str(tasks)): "the 2 tasks were queued",
        ("queue", str(one)): "the task was queued",
        ("tasks", "cancel", "--queued"): "3 queued tasks were cancelled",
    }
    for command, done in said.items():
        result = agl_into(Path("/dev/full"), *command, daemon=daemon, environment=python_env(unbuffered))
        assert (result.returncode, result.stderr.decode()) == (
            ExitCode.ERROR,
            f"agl: Cannot write to stdout: No space left on device; {done} all the same.\n",
        ), command
    assert daemon.status()["tasks"]["cancelled"] == 3


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_reader_gone_half_way_through_a_write_ends_it_as_sigpipe_would(
    daemon: Daemon, unbuffered: bool
) -> None:
    """The output, larger than a pipe holds, is written at once; its reader leaves once the
    pipe is full. Unbuffered, Python took the write the kernel cut short as done and agl
    exited 0, the rest of its output lost."""
    daemon.queue(*range(2000))
    for command in (["tasks", "list", "--limit", "2000"], ["tasks", "list", "--limit", "2000", "--json"]):
        ended = reader_gone(*command, daemon=daemon, once_full=True, environment=python_env(unbuffered))
        assert ended == (ExitCode.READER_GONE, ""), command


def test_backup_to_a_pipe_closed_early_ends_quietly(daemon: Daemon) -> None:
    daemon.queue(*range(2000))  # a copy larger than a pipe holds
    command = [sys.executable, "-m", "agl_cli", "--state-dir", str(daemon.state_dir), "backup", "-"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_without_agl())
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(100)
    process.stdout.close()
    assert (process.wait(30), process.stderr.read()) == (ExitCode.READER_GONE, b"")


def test_a_table_on_a_narrow_terminal_keeps_ids_whole_and_words_unbroken(daemon: Daemon) -> None:
    """A narrow screen goes without the columns that matter least (input, dates first):
    every row stays on one line, its id whole, never a word of it broken."""
    ids = daemon.queue(
        {"question": "What is the capital of France, and why that city?"}, "short", mode="train"
    )
    claimed = daemon.claim()
    assert claimed is not None
    post_rollout(daemon, claimed["rollout_id"])
    post_rollout(daemon, "a-rollout-no-task-asked-for")
    rollout_ids = [ids[0], "a-rollout-no-task-asked-for"]
    for columns in (40, 80):
        tasks = on_a_terminal("tasks", "list", daemon=daemon, columns=columns)
        assert [line.split()[0] for line in tasks] == ["rollout", *ids], tasks  # one line each
        rollouts = on_a_terminal("rollouts", "list", daemon=daemon, columns=columns)
        assert (
            len(rollouts) == 3 and [rollout_ids[n] in rollouts[n + 1].split() for n in (0, 1)] == [True] * 2
        )
        assert "…" not in "".join(tasks + rollouts)
    assert tasks[0].split()[:2] == ["rollout", "status"] and tasks[1].split()[1] == "completed"
    assert "unsolicited" in rollouts[2].split()


def test_tables_and_records_into_a_pipe_end_each_line_at_its_last_character(daemon: Daemon) -> None:
    """Into a pipe, a line of a table or of a record view is as long as what it says: the
    padding that lines up a screen's last column would only trouble grep, awk or a diff."""
    ids = daemon.queue({"question": "a question longer than the other one"}, "short")
    outputs = {
        "status": agl("status", daemon=daemon),
        "tasks list": agl("tasks", "list", daemon=daemon),
        "tasks show": agl("tasks", "show", ids[0], daemon=daemon),
    }
    for name, result in outputs.items():
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) > 2 and not [line for line in lines if line != line.rstrip()], (name, lines)
    listed = outputs["tasks list"].stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["rollout", *ids]
    assert listed[2].endswith("short") and len(listed[2]) < len(listed[1])  # its own length, not the widest
