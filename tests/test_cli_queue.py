"""`agl queue`: files in, rollout ids out; a bad file queues nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_runner import Worker, agl, assert_one_line_error, popen_agl, post_rollout, write
from daemon import Daemon, env_without_agl, wait_until
from typer.testing import CliRunner, Result

from agl_cli.cli.app import app
from agl_cli.cli.errors import CLIError
from agl_cli.cli.taskfile import CheckedTask, Chunk, Defaults, TaskFileError, chunks
from agl_cli.client import AglClient, Staged, TaskList
from agl_cli.store.schema import PLACES_PER_BATCH


def tasks_of(daemon: Daemon) -> list[dict[str, object]]:
    """Every task in queue order, a page at a time (a page of big ones comes short)."""
    tasks: list[dict[str, object]] = []
    while True:
        response = daemon.api("GET", "/v1/tasks", params={"limit": 10_000, "offset": len(tasks)})
        response.raise_for_status()
        page: list[dict[str, object]] = response.json()["tasks"]
        if not page:
            return tasks
        tasks += page


def queued_count(daemon: Daemon) -> int:
    counts: dict[str, int] = daemon.status()["tasks"]
    return counts["queued"]


def staged_uncommitted(daemon: Daemon) -> int:
    """Tasks staged in batches not committed (yet), read from the daemon's file."""
    with sqlite3.connect(daemon.state_dir / "agl.db") as db:
        [(count,)] = db.execute(
            "SELECT count(*) FROM staging JOIN batches ON batches.id = staging.place / ?"
            " WHERE batches.committed_time IS NULL",
            (PLACES_PER_BATCH,),
        )
    return int(count)


def numbered_tasks(path: Path, count: int, then: str = "") -> str:
    """`count` good tasks in JSON Lines, then the line `then`, if any."""
    path.write_text("".join(f'{{"input": {i}}}\n' for i in range(count)) + then)
    return str(path)


def test_json_lines_are_queued_in_order_and_their_ids_printed_one_per_line(
    daemon: Daemon, tmp_path: Path
) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n\n{"input": {"q": 2}, "mode": "val"}\n{"input": 3}\n')
    result = agl("queue", file, daemon=daemon)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 3 and all(i.startswith("rollout-") for i in ids)
    tasks = {t["rollout_id"]: t for t in tasks_of(daemon)}
    assert [tasks[i]["input"] for i in ids] == [1, {"q": 2}, 3]
    assert tasks[ids[1]]["mode"] == "val"


def test_an_array_a_pretty_object_and_stdin_are_all_task_files(daemon: Daemon, tmp_path: Path) -> None:
    array = write(tmp_path / "a.json", '[\n  {"input": "a"},\n  {"input": "b"}\n]\n')
    single = write(tmp_path / "o.json", '{\n  "input": "c",\n  "metadata": {"k": "v"}\n}\n')
    result = agl("queue", array, single, "-", daemon=daemon, stdin='{"input": "d"}\n')
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 4
    assert sorted(str(t["input"]) for t in tasks_of(daemon)) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_pipe_is_a_task_file_too(daemon: Daemon, tmp_path: Path, dry_run: bool) -> None:
    """`agl queue <(make-tasks)`, or a FIFO: read once, as it is written."""
    fifo = tmp_path / "tasks"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(b'[\n  {"input": "p"},\n  {"input": "q"}\n]\n',))
    writer.start()
    result = agl("queue", str(fifo), *(["--dry-run"] if dry_run else []), daemon=daemon)
    writer.join()
    assert result.returncode == 0, result.stderr
    assert sorted(str(t["input"]) for t in tasks_of(daemon)) == ([] if dry_run else ["p", "q"])


def test_json_output_gives_each_rollout_id_with_the_spec_the_options_filled_in(
    daemon: Daemon, tmp_path: Path
) -> None:
    file = write(
        tmp_path / "t.jsonl", '{"input": 1}\n{"input": 2, "mode": "test", "metadata": {"a": "own"}}\n'
    )
    result = agl(
        "queue", file, "--mode", "train", "--metadata", "a=cli", "--metadata", "b=2", "--json", daemon=daemon
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["rollout_id"].startswith("rollout-")
    assert first == {**first, "input": 1, "mode": "train", "metadata": {"a": "cli", "b": "2"}}
    assert second == {**second, "input": 2, "mode": "test", "metadata": {"a": "own", "b": "2"}}
    stored = daemon.api("GET", f"/v1/tasks/{first['rollout_id']}").json()
    assert stored["mode"] == "train" and stored["metadata"] == {"a": "cli", "b": "2"}


def test_latest_pins_the_resources_published_at_queue_time(daemon: Daemon, tmp_path: Path) -> None:
    published = daemon.publish(
        {"p": {"resource_type": "prompt_template", "template": "x", "engine": "f-string"}}
    )
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n{"input": 2, "resources_id": "own"}\n')
    result = agl("queue", file, "--latest", "--json", daemon=daemon)
    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["resources_id"] for line in result.stdout.splitlines()]
    assert ids == [published["resources_id"], "own"]


def test_latest_without_any_resources_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n')
    assert_one_line_error(
        agl("queue", file, "--latest", daemon=daemon), "No resources have been published yet."
    )
    assert queued_count(daemon) == 0


def test_an_unknown_resources_id_is_refused_before_anything_is_queued(daemon: Daemon, tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n')
    result = agl("queue", file, "--resources-id", "nope", daemon=daemon)
    assert_one_line_error(result, "No resources with id 'nope'.")
    assert queued_count(daemon) == 0


HALF_A_PAIR = "a \\u escape is half of a UTF-16 surrogate pair, without its other half (column"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "t.jsonl",
            '{"input": 1}\n{"input": 2}\n{"input": 3\n',
            "t.jsonl:3: invalid JSON: EOF while parsing",
        ),
        ("t.jsonl", '{"input": 1}\n{"input": 2, "colour": "red"}\n', "t.jsonl:2: unknown field 'colour'"),
        (  # quoted with its escape sequences written out, not sent to the terminal
            "t.jsonl",
            '{"input": 1, "\\u001b]52;c;aGk=\\u0007\\u202e": 2}\n',
            "t.jsonl:1: unknown field '\\x1b]52;c;aGk=\\x07\\u202e'",
        ),
        ("t.jsonl", '{"input": 1}\n[1, 2]\n', "t.jsonl:2: a task must be a JSON object, not an array."),
        (
            "t.jsonl",
            '{"input": 1, "mode": "training"}\n',
            "t.jsonl:1: mode must be 'train', 'val', 'test' or null",
        ),
        ("t.jsonl", '{"mode": "train"}\n', "t.jsonl:1: a task needs an 'input' field"),
        ("t.jsonl", '{"input": 1, "metadata": [1]}\n', "t.jsonl:1: metadata must be a JSON object."),
        ("t.json", '[\n  {"input": 1},\n  {"input": 2,}\n]\n', "t.json:3: invalid JSON:"),
        (
            "t.json",
            '[\n  {"input": 1},\n  {"input": 2}\n',
            "t.json:4: invalid JSON: the array is never closed",
        ),
        ("t.json", '[\n  {"input": 1},\n  7\n]\n', "t.json:3: a task must be a JSON object, not a number."),
        (
            "t.json",
            '[\n  {"input": 1},\n  {"input":\n\n',
            "t.json:3: invalid JSON: the file ends in the middle of this task.",
        ),
        ("t.json", '{"input":\n', "t.json:1: invalid JSON: the file ends in the middle of this task."),
        ("t.jsonl", "\n\n", "t.jsonl: there are no tasks in it."),
        # what Python's and pydantic's readers take and the daemon's does not
        ("t.jsonl", '{"input": 1}\n{"input": [1, NaN]}\n', "t.jsonl:2: invalid JSON: unexpected character"),
        ("t.jsonl", '{"input": 1}\n{"input": 1e999}\n', "t.jsonl:2: invalid JSON: number is infinity"),
        ("t.json", '[{"input": 1},\n -Infinity]', "t.json:2: invalid JSON: -Infinity is not a JSON value"),
        ("t.json", '[{"input": 1},\n {"input": NaN}]', "t.json:2: invalid JSON: NaN is not a JSON value"),
        *(  # half of a UTF-16 pair alone: Python's reader takes it, the daemon's does not
            (name, '{"input": 1}\n{"input": "\\u' + half + 'x"}\n', f"{name}:2: invalid JSON: {HALF_A_PAIR}")
            for name in ("t.jsonl", "t.json")
            for half in ("d800", "dc00")
        ),
        (
            "t.json",
            '{"input": 1e999}\n',
            "t.json:1: invalid JSON: the number 1e999 is beyond a float's range.",
        ),
        (  # Python's reader stops past 4,300 digits, with a ValueError of its own
            "t.json",
            '[{"input": 1},\n {"input": ' + "9" * 5000 + "}]",
            "t.json:2: invalid JSON: the number 99999999999999999999… (5,000 digits) is beyond a float's range.",
        ),
        (
            "t.json",
            '{"input": ' + "[" * 5000 + "]" * 5000 + "}",
            "t.json:1: invalid JSON: recursion limit exceeded",  # Python 3.13's reader also gives the column
        ),
        (
            "t.jsonl",
            '{"input": ' + "[" * 5000 + "]" * 5000 + "}",
            "t.jsonl:1: invalid JSON: recursion limit exceeded",
        ),
        # readable, but deeper than the daemon keeps (200 levels in a request)
        (
            "t.jsonl",
            '{"input": 1}\n{"input": ' + "[" * 250 + "]" * 250 + "}\n",
            "t.jsonl:2: nested more than 198 levels deep, deeper than the daemon keeps.",
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["queue", "dry-run"])
def test_a_bad_file_is_reported_at_its_line_and_nothing_is_queued(
    shared_daemon: Daemon, tmp_path: Path, name: str, content: str, expected: str, dry_run: bool
) -> None:
    """A dry run finds what the upload would: the same sentence, before anything goes up."""
    good = write(tmp_path / "good.jsonl", '{"input": "fine"}\n')
    options = ["--dry-run"] if dry_run else []
    result = agl("queue", *options, good, write(tmp_path / name, content), daemon=shared_daemon)
    assert_one_line_error(result, str(tmp_path / expected))
    assert result.stdout == ""
    assert queued_count(shared_daemon) == 0


def test_a_dry_run_takes_exactly_the_nesting_the_daemon_takes(daemon: Daemon, tmp_path: Path) -> None:
    """Around the daemon's depth limit, each task on its own: what the dry run calls valid
    is queued, and what it refuses the daemon refuses too when sent past the check."""
    verdicts = []
    for depth in range(190, 200):
        task = {"input": json.loads("[" * depth + "]" * depth)}
        dry = agl("queue", "--dry-run", write(tmp_path / f"{depth}.jsonl", json.dumps(task)), daemon=daemon)
        sent = daemon.api("POST", "/v1/tasks", json={"tasks": [task]})
        assert (dry.returncode == 0) == sent.is_success, (depth, dry.stderr, sent.text)
        verdicts.append(sent.status_code)
    assert 201 in verdicts and 422 in verdicts  # the limit lies inside the range tried


@pytest.mark.parametrize("options", [["--metadata", "k=v"], ["--json"], ["--mode", "val", "--wait"]])
def test_a_task_the_daemon_cannot_read_is_refused_at_its_line_when_the_command_fills_it_in(
    shared_daemon: Daemon, tmp_path: Path, options: list[str]
) -> None:
    """Options that fill in fields make the command read each task again, with the
    daemon's reader; a NaN that pydantic's took is refused there, in one sentence."""
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n{"input": [1, NaN]}\n')
    result = agl("queue", file, *options, daemon=shared_daemon)
    assert_one_line_error(result, f"{file}:2: invalid JSON: unexpected character")
    assert result.stdout == ""
    assert queued_count(shared_daemon) == 0


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = agl("queue", str(tmp_path / "nope.jsonl"), state_dir=tmp_path)
    assert_one_line_error(result, f"{tmp_path / 'nope.jsonl'}: cannot be read (No such file or directory).")


def test_dry_run_counts_the_tasks_and_queues_nothing_without_a_daemon(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", "".join(f'{{"input": {i}}}\n' for i in range(5)))
    result = agl("queue", "--dry-run", file, state_dir=tmp_path / "no-daemon")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("5 tasks are valid")
    one = agl(
        "queue",
        "--dry-run",
        write(tmp_path / "one.jsonl", '{"input": 1}\n'),
        state_dir=tmp_path / "no-daemon",
    )
    assert one.stdout == "1 task is valid; nothing was queued (--dry-run).\n"


def test_conflicting_options_are_usage_errors(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n')
    assert agl("queue", file, "--latest", "--resources-id", "x").returncode == 2
    assert agl("queue", file, "--timeout", "3").returncode == 2
    assert_one_line_error(agl("queue", file, "--metadata", "novalue"), "--metadata takes KEY=VALUE", code=2)
    assert_one_line_error(  # its tasks would name no bundle, and 0.3.0's workers keep the first fetched so
        agl("queue", file, "--resources-id", "latest"),
        "--resources-id latest names no bundle: give --latest for the one that is latest now.",
        code=2,
    )


def test_a_large_file_goes_up_in_chunks_and_is_queued_whole(daemon: Daemon, tmp_path: Path) -> None:
    count = 25_000
    file = tmp_path / "big.jsonl"
    file.write_text("".join(f'{{"input": {i}}}\n' for i in range(count)))
    result = agl("queue", str(file), daemon=daemon)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == len(set(ids)) == count
    assert queued_count(daemon) == count
    first = daemon.api("GET", f"/v1/tasks/{ids[0]}").json()
    last = daemon.api("GET", f"/v1/tasks/{ids[-1]}").json()
    assert (first["input"], last["input"]) == (0, count - 1)


def test_a_task_larger_than_a_request_may_carry_is_refused_at_its_line_and_nothing_is_queued(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon("--max-body-size", "2000000")
    file = tmp_path / "big.jsonl"
    lines = [f'{{"input": {i}}}\n' for i in range(12_000)]
    lines[11_000] = json.dumps({"input": "x" * 3_000_000}) + "\n"  # valid, but over the body limit
    file.write_text("".join(lines))
    result = agl("queue", str(file), daemon=daemon)
    assert_one_line_error(
        result,
        f"{file}:11001: this task is {len(lines[11_000]) - 1:,} bytes, more than one request to the daemon"
        " may carry (agl serve --max-body-size).",
    )
    assert result.stdout == ""
    assert queued_count(daemon) == 0
    assert staged_uncommitted(daemon) == 0


def checked(file: str, line: int, raw: bytes) -> CheckedTask:
    return CheckedTask(file, line, raw, json.loads(raw))


def test_a_chunk_never_carries_more_than_a_request_may() -> None:
    most = 1_000
    tasks = [checked("t.jsonl", i + 1, json.dumps({"input": "x" * (i % 90)}).encode()) for i in range(2_000)]
    pieces = list(chunks(tasks, Defaults(), 5_000, 8 << 20, keep_specs=False, most=most))
    assert max(len(piece.body) for piece in pieces) <= most
    assert [task for piece in pieces for task in json.loads(piece.body)] == [task.value for task in tasks]

    def alone(size: int) -> list[Chunk]:  # a task of `size` bytes, between two small ones
        task = json.dumps({"input": "y" * (size - len('{"input": ""}'))}).encode()
        assert len(task) == size
        return list(
            chunks(
                [checked("t", 1, b"1"), checked("t", 2, task), checked("t", 3, b"2")],
                Defaults(),
                10,
                most,
                False,
                most,
            )
        )

    assert [piece.body[:2] for piece in alone(most - 2)] == [b"[1", b"[{", b"[2"]  # "[task]" fills it
    with pytest.raises(TaskFileError, match=f"^t:2: this task is {most - 1:,} bytes, more than one request"):
        alone(most - 1)


@pytest.mark.parametrize("options", [[], ["--metadata", "source=a-longer-value-for-every-task"]])
def test_a_daemon_that_takes_small_bodies_gets_chunks_that_fit(
    make_daemon: Callable[..., Daemon], tmp_path: Path, options: list[str]
) -> None:
    """`agl serve --max-body-size` may be set below a chunk's usual size; `agl queue` sizes
    its requests by it (with the options' fields filled in), and a task that just fits goes
    up alone."""
    limit = 100_000
    daemon = make_daemon("--max-body-size", str(limit))
    lines = [json.dumps({"input": f"task {i}"}) + "\n" for i in range(20_000)]
    lines[7_000] = json.dumps({"input": "x" * (limit - 200)}) + "\n"
    file = write(tmp_path / "tasks.jsonl", "".join(lines))
    result = agl("queue", file, *options, daemon=daemon)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == len(set(ids)) == len(lines) == queued_count(daemon)
    inputs = [daemon.api("GET", f"/v1/tasks/{ids[i]}").json()["input"] for i in (0, 6_999, 7_001, -1)]
    assert inputs == ["task 0", "task 6999", "task 7001", "task 19999"]


def test_a_bad_task_after_chunks_already_staged_is_reported_at_its_line_and_they_are_discarded(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Each chunk is checked while the daemon stages the one before: a bad task far down a
    large file is found once earlier chunks are staged, and they go with the batch."""
    file = numbered_tasks(tmp_path / "big.jsonl", 25_000, '{"input": 1, "colour": "red"}\n')
    result = agl("queue", file, daemon=daemon)
    assert_one_line_error(result, f"{file}:25001: unknown field 'colour'")
    assert result.stdout == ""
    assert queued_count(daemon) == 0
    assert staged_uncommitted(daemon) == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_while_chunks_go_up_queues_nothing(
    daemon: Daemon, tmp_path: Path, stop: signal.Signals
) -> None:
    """So do a cancelled job's SIGTERM and a closed terminal's SIGHUP: nothing is left staged."""
    file = numbered_tasks(tmp_path / "big.jsonl", 400_000)
    queueing = popen_agl("queue", file, daemon=daemon)
    try:
        wait_until(lambda: staged_uncommitted(daemon) > 0, "a chunk to be staged")
        queueing.send_signal(stop)
        stdout, stderr = queueing.communicate(timeout=60)
    finally:
        queueing.kill()
    assert (queueing.returncode, stdout, stderr) == (130, "", "agl: Interrupted; nothing was queued.\n")
    assert queued_count(daemon) == 0
    assert staged_uncommitted(daemon) == 0


def test_standard_input_named_twice_is_refused_rather_than_read_as_empty(daemon: Daemon) -> None:
    result = agl("queue", "-", "-", daemon=daemon, stdin='{"input": 1}\n')
    assert_one_line_error(
        result, "<stdin>: '-' is given more than once, and standard input can be read only once."
    )
    assert queued_count(daemon) == 0


def test_ctrl_c_once_the_tasks_are_queued_says_they_are(daemon: Daemon, tmp_path: Path) -> None:
    """Here while their ids are printed: more than a pipe holds, so agl waits on the reader."""
    file = numbered_tasks(tmp_path / "big.jsonl", 20_000)
    queueing = popen_agl("queue", file, daemon=daemon)
    try:
        wait_until(lambda: queued_count(daemon) == 20_000, "the batch to be committed")
        queueing.send_signal(signal.SIGINT)
        _, stderr = queueing.communicate(timeout=60)
    finally:
        queueing.kill()
    said = "agl: Interrupted; the 20,000 tasks were queued all the same (agl tasks list shows them).\n"
    assert (queueing.returncode, stderr) == (130, said)
    assert queued_count(daemon) == 20_000


def queued_in_process(daemon: Daemon, file: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    """`agl queue FILE` run in this process, so that a test may interrupt it where it likes."""
    for name in ("AGL_URL", "AGL_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner().invoke(app, ["--state-dir", str(daemon.state_dir), "queue", file])


def test_ctrl_c_after_the_daemon_committed_but_before_its_answer_came_says_the_tasks_were_queued(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch can no longer be discarded, and its first task is visible: agl asks."""
    file = numbered_tasks(tmp_path / "big.jsonl", 20_000)  # more than one request: a batch
    commit = AglClient.commit_batch

    def committed_then_interrupted(client: AglClient, batch_id: str, timeout: float = 600.0) -> int:
        commit(client, batch_id, timeout)
        raise KeyboardInterrupt  # Ctrl-C as the answer was on its way

    monkeypatch.setattr(AglClient, "commit_batch", committed_then_interrupted)
    result = queued_in_process(daemon, file, monkeypatch)
    assert (result.exit_code, result.stderr) == (
        130,
        "agl: Interrupted; the 20,000 tasks were queued all the same (agl tasks list shows them).\n",
    )
    assert queued_count(daemon) == 20_000


def test_ctrl_c_as_the_daemon_committed_and_went_away_says_how_to_find_out(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = numbered_tasks(tmp_path / "big.jsonl", 20_000)
    commit = AglClient.commit_batch

    def committed_then_crashed(client: AglClient, batch_id: str, timeout: float = 600.0) -> int:
        commit(client, batch_id, timeout)
        daemon.kill()
        raise KeyboardInterrupt

    monkeypatch.setattr(AglClient, "commit_batch", committed_then_crashed)
    result = queued_in_process(daemon, file, monkeypatch)
    said = re.fullmatch(
        r"agl: Interrupted while the daemon committed the tasks; agl tasks show (\S+) tells whether it did"
        r" \(all of them or none\)\.\n",
        result.stderr,
    )
    assert result.exit_code == 130 and said is not None, result.stderr
    daemon.start()
    assert daemon.api("GET", f"/v1/tasks/{said[1]}").json()["status"] == "queued"
    assert queued_count(daemon) == 20_000


@pytest.fixture
def ctrl_c_heard() -> Iterator[None]:
    """SIGINT as a terminal's Ctrl-C reaches Python: a suite started in the background by a
    shell runs with it ignored, and a command then never hears it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_heard")
def test_ctrl_c_while_one_request_queues_the_tasks_waits_for_its_answer_to_say_what_it_did(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that goes in one request has no id to ask about afterwards: agl said nothing
    was queued, while the daemon had queued every task."""
    file = numbered_tasks(tmp_path / "small.jsonl", 3)
    queue = AglClient.queue

    def interrupted_as_it_queues(client: AglClient, tasks: TaskList) -> list[str]:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C with the request on its way
        return queue(client, tasks)

    monkeypatch.setattr(AglClient, "queue", interrupted_as_it_queues)
    result = queued_in_process(daemon, file, monkeypatch)
    assert (result.exit_code, result.stderr) == (
        130,
        "agl: Waiting for the daemon to say whether it queued the tasks (again to stop).\n"
        "agl: Interrupted; the 3 tasks were queued all the same (agl tasks list shows them).\n",
    )
    assert queued_count(daemon) == 3


@pytest.mark.usefixtures("ctrl_c_heard")
def test_ctrl_c_twice_while_one_request_queues_the_tasks_says_they_may_have_been_queued(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = numbered_tasks(tmp_path / "small.jsonl", 3)

    def interrupted_twice(client: AglClient, tasks: TaskList) -> list[str]:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the second Ctrl-C stops the wait")

    monkeypatch.setattr(AglClient, "queue", interrupted_twice)
    result = queued_in_process(daemon, file, monkeypatch)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        130,
        "agl: Interrupted again before the daemon answered; the tasks may have been queued all the same"
        " (agl tasks list shows the queue).",
    )


def test_a_daemon_gone_as_it_committed_is_said_to_have_maybe_queued_them_not_to_be_unreachable(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its commit, before its answer left: the tasks are queued, and a user
    told only that no daemon answered would queue them again."""
    file = numbered_tasks(tmp_path / "big.jsonl", 20_000)
    commit = AglClient.commit_batch

    def committed_then_crashed(client: AglClient, batch_id: str, timeout: float = 600.0) -> int:
        commit(client, batch_id, timeout)
        daemon.kill()
        return commit(client, batch_id, timeout)  # the answer that never came

    monkeypatch.setattr(AglClient, "commit_batch", committed_then_crashed)
    failure = queued_in_process(daemon, file, monkeypatch).exception
    assert isinstance(failure, CLIError) and failure.code == 3, failure
    said = re.fullmatch(  # after "agl is not running in DIR; ", as it is not now
        rf".*; the agl daemon at {re.escape(daemon.url)} stopped answering as it committed the tasks;"
        r" agl tasks show (\S+) tells whether it did \(all of them or none\)\.",
        str(failure),
    )
    assert said is not None, failure
    daemon.start()
    assert daemon.api("GET", f"/v1/tasks/{said[1]}").json()["status"] == "queued"
    assert queued_count(daemon) == 20_000


def test_ctrl_c_while_staging_with_the_daemon_gone_says_nothing_was_queued(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit was never asked for: whatever the daemon can say, nothing was queued."""
    file = numbered_tasks(tmp_path / "big.jsonl", 20_000)
    stage, calls = AglClient.stage, []

    def staged_then_crashed(client: AglClient, batch_id: str, tasks: TaskList) -> Staged:
        staged = stage(client, batch_id, tasks)
        calls.append(batch_id)
        if len(calls) == 1:  # the first chunk's ids are taken in; the daemon dies with the second
            return staged
        daemon.kill()
        raise KeyboardInterrupt

    monkeypatch.setattr(AglClient, "stage", staged_then_crashed)
    result = queued_in_process(daemon, file, monkeypatch)
    assert (result.exit_code, result.stderr) == (130, "agl: Interrupted; nothing was queued.\n")
    daemon.start()
    assert queued_count(daemon) == 0


def test_a_daemon_that_is_not_running_is_exit_3(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n')
    result = agl("--url", "http://127.0.0.1:9", "queue", file)
    assert_one_line_error(result, "No agl daemon answers at http://127.0.0.1:9.", code=3)


def test_wait_prints_every_rollout_in_queue_order_and_a_summary(daemon: Daemon, tmp_path: Path) -> None:
    sent = [(1.0, "train"), (0.0, "train"), (0.5, "val"), (1e300, "test")]
    tasks = [{"input": {"reward": r}, "mode": m} for r, m in sent]
    file = write(tmp_path / "t.jsonl", "".join(json.dumps(t) + "\n" for t in tasks))
    worker = Worker(daemon)
    worker.start()
    try:
        result = agl("queue", file, "--wait", "--timeout", "30", "--json", daemon=daemon)
    finally:
        worker.stop()
    assert result.returncode == 0, result.stderr
    rollouts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["final_reward"] for r in rollouts] == [1.0, 0.0, 0.5, 1e300]
    assert all(isinstance(r["seq"], int) for r in rollouts)
    # A mean of a size no table shows in full is written as the tables write it.
    assert (
        "4 of 4 rollouts; mean reward: test 1e+300 (n=1), train 0.500 (n=2), val 0.500 (n=1)."
        in result.stderr
    )


def test_wait_gives_up_at_the_timeout_with_exit_5(daemon: Daemon, tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n{"input": 2}\n')
    result = agl("queue", file, "--wait", "--timeout", "0.5", daemon=daemon)
    assert result.returncode == 5, result.stderr
    assert "agl: 0 of 2 rollouts arrived before the timeout of 0.5 s." in result.stderr
    assert "Traceback" not in result.stderr


def test_wait_counts_tasks_that_ended_without_a_rollout_and_exits_1(daemon: Daemon, tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n{"input": 2}\n')
    waiting = popen_agl("queue", file, "--wait", "--timeout", "60", daemon=daemon)
    try:
        wait_until(lambda: queued_count(daemon) == 2, "the tasks to be queued")
        cancelled, reported = (t["rollout_id"] for t in daemon.api("GET", "/v1/tasks").json()["tasks"])
        daemon.api("POST", f"/v1/tasks/{cancelled}/cancel").raise_for_status()
        daemon.claim()
        post_rollout(daemon, reported)
        stdout, stderr = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    assert stdout.strip().endswith("1 of 2 rollouts; mean reward: no mode 0.500 (n=1).")
    assert (
        stderr.strip()
        == "agl: 1 task ended without a rollout (1 cancelled); agl tasks retry queues it again."
    )


def test_wait_counts_tasks_the_daemon_no_longer_has_as_lost_and_exits_1(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A --memory daemon that restarts has lost its tasks: no rollout will come for them,
    and --json names them where their rollouts would have been."""
    daemon = make_daemon("--memory", "--log-level", "debug")  # debug: its access lines
    file = write(tmp_path / "t.jsonl", '{"input": 1}\n{"input": 2}\n')
    waiting = popen_agl("queue", file, "--wait", "--timeout", "60", "--json", daemon=daemon)
    try:
        wait_until(
            lambda: any("/v1/rollouts/stream" in line for line in daemon.said()),
            "the wait to follow the rollout stream",
        )
        ids = [task["rollout_id"] for task in daemon.api("GET", "/v1/tasks").json()["tasks"]]
        daemon.kill()
        daemon.start()
        stdout, stderr = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    assert [json.loads(line) for line in stdout.splitlines()] == [
        {"rollout_id": rollout_id, "status": "lost"} for rollout_id in ids
    ]
    assert stderr.strip().splitlines()[-1] == (
        "agl: 2 tasks ended without a rollout (2 lost: the daemon no longer has them)."
    )


def test_the_sentence_for_tasks_that_ended_offers_retry_for_those_the_daemon_still_has() -> None:
    from agl_cli.cli.waiting import ended_sentence

    assert ended_sentence({"a": "cancelled", "b": "lost", "c": "lost"}) == (
        "3 tasks ended without a rollout (1 cancelled and 2 lost: the daemon no longer has them);"
        " agl tasks retry queues the other again."
    )
    assert ended_sentence({"a": "failed", "b": "failed"}) == (
        "2 tasks ended without a rollout (2 failed); agl tasks retry queues them again."
    )


def test_queue_killed_while_it_copies_standard_input_leaves_no_copy_of_it_behind(
    daemon: Daemon, tmp_path: Path
) -> None:
    """It copies a pipe to a temporary file before it reads it; a named one stayed, as large
    as the input, in the temporary directory for good."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    queuing = subprocess.Popen(
        [sys.executable, "-m", "agl_cli", "--state-dir", str(daemon.state_dir), "queue", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**env_without_agl(), "TMPDIR": str(temporary)},
    )
    assert queuing.stdin is not None
    # A pipe holds 64 KB: once 1 MB has gone in, agl is copying it, and waits for more.
    queuing.stdin.write(b'{"input": 1}\n' * 80_000)
    queuing.stdin.flush()
    queuing.kill()
    queuing.wait()
    queuing.stdin.close()
    assert list(temporary.iterdir()) == []
    assert daemon.status()["tasks"]["queued"] == 0
