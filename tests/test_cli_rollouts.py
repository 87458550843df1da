"""`agl rollouts`: watch them arrive (across daemon restarts), list them, show one."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from cli_runner import Lines, agl, assert_one_line_error, on_a_terminal, popen_agl, post_rollout
from daemon import Daemon, env_without_agl

from agl_cli.api_limits import PAGE_BYTES
from agl_cli.cli.context import Globals, resolve
from agl_cli.cli.rollouts import print_rollout
from agl_cli.client import AglClient, RolloutRecord

if TYPE_CHECKING:
    from agl_cli.client import Address


@pytest.fixture
def watch() -> Iterator[Callable[[Daemon], Lines]]:
    """Start `agl rollouts watch --since all` on a daemon; whatever a failing test left
    running is killed at its end."""
    started: list[Lines] = []

    def start(daemon: Daemon) -> Lines:
        started.append(Lines(popen_agl("rollouts", "watch", "--since", "all", daemon=daemon)))
        return started[-1]

    yield start
    for lines in started:
        if lines.process.poll() is None:
            lines.process.kill()
            lines.process.wait(10)


def test_list_gives_rollouts_oldest_first_after_a_sequence_number(daemon: Daemon) -> None:
    ids = daemon.queue(1, 2, 3)
    for rollout_id in ids:
        post_rollout(daemon, rollout_id)
    listed = json.loads(agl("rollouts", "list", "--json", daemon=daemon).stdout)
    assert [r["rollout_id"] for r in listed] == ids
    assert [r["seq"] for r in listed] == sorted(r["seq"] for r in listed)
    later = json.loads(
        agl(
            "rollouts", "list", "--since", str(listed[0]["seq"]), "--limit", "1", "--json", daemon=daemon
        ).stdout
    )
    assert [r["rollout_id"] for r in later] == ids[1:2]
    table = agl("rollouts", "list", daemon=daemon)
    assert table.returncode == 0 and all(rollout_id in table.stdout for rollout_id in ids)


def test_a_list_cut_short_says_on_a_terminal_where_the_next_rollouts_begin(daemon: Daemon) -> None:
    for rollout_id in daemon.queue(1, 2, 3):
        post_rollout(daemon, rollout_id)
    first, second, _ = (r["seq"] for r in json.loads(agl("rollouts", "list", "--json", daemon=daemon).stdout))

    def note(*options: str) -> str:
        return on_a_terminal("rollouts", "list", *options, daemon=daemon, columns=200, stderr_too=True)[-1]

    assert note("--limit", "2") == f"More rollouts follow; --since {second} shows the next, --all every one."
    assert "follow" not in note("--since", str(first), "--limit", "2")  # exactly the rest
    assert "follow" not in note("--limit", "3")
    piped = agl("rollouts", "list", "--limit", "2", daemon=daemon)
    assert (piped.returncode, piped.stderr) == (0, "")


def test_list_all_exports_every_rollout_however_many_as_one_json_array(daemon: Daemon) -> None:
    ids = daemon.queue(*range(250))
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for rollout_id in ids:
            client.post("/rollout", json={"rollout_id": rollout_id, "final_reward": 0.5}).raise_for_status()
    exported = agl("rollouts", "list", "--all", "--json", daemon=daemon)
    assert exported.returncode == 0, exported.stderr
    assert [r["rollout_id"] for r in json.loads(exported.stdout)] == ids  # past the default limit of 100
    rest = json.loads(agl("rollouts", "list", "--all", "--since", "200", "--json", daemon=daemon).stdout)
    assert [r["seq"] for r in rest] == list(range(201, 251))
    table = agl("rollouts", "list", "--all", daemon=daemon).stdout
    assert ids[0] in table and ids[-1] in table

    with AglClient(daemon.url, daemon.token) as api:  # a page at a time, up to what was there
        pages = api.all_rollouts(since=0, page=100)
        first = [next(pages)["rollout_id"] for _ in range(100)]
        [later] = daemon.queue("reported while the export runs")
        post_rollout(daemon, later)
        assert first + [r["rollout_id"] for r in pages] == ids


def test_a_page_of_big_results_comes_short_and_every_listing_asks_on_for_the_rest(daemon: Daemon) -> None:
    """Results with token ids are often a megabyte each; made whole as objects, a page of a
    thousand of them would take the daemon some ten gigabytes."""
    big = "x" * 1_000_000
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for number in range(10):
            body = {"rollout_id": f"big-{number}", "final_reward": 0.5, "logs": [big]}
            client.post("/rollout", json=body).raise_for_status()
    page = daemon.api("GET", "/v1/rollouts", params={"limit": 10}).json()
    assert 1 <= len(page["rollouts"]) < 10 and page["last_seq"] == 10
    assert sum(len(r["logs"][0]) for r in page["rollouts"]) >= PAGE_BYTES - 1_000_000

    everything = [f"big-{number}" for number in range(10)]
    for command in (("list", "--limit", "10", "--json"), ("list", "--all", "--json")):
        listed = json.loads(agl("rollouts", *command, daemon=daemon).stdout)
        assert [r["rollout_id"] for r in listed] == everything, command
    watched = agl("rollouts", "watch", "--since", "all", "--count", "10", daemon=daemon)
    assert [json.loads(line)["rollout_id"] for line in watched.stdout.splitlines()] == everything


def test_list_takes_a_limit_or_all_not_both(daemon: Daemon) -> None:
    result = agl("rollouts", "list", "--all", "--limit", "5", daemon=daemon)
    assert_one_line_error(result, "Give --limit or --all, not both: --all lists every rollout.", code=2)


def test_a_watched_reward_too_large_for_three_decimals_is_shown_in_three_digits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for reward, shown in (
        (0.5, "0.500"),
        (-123456.0, "-123456.000"),
        (1e300, "1e+300"),
        (-2.5e6, "-2.5e+06"),
    ):
        print_rollout({"seq": 1, "rollout_id": "r", "final_reward": reward}, machine=False)
        assert f" {shown} " in capsys.readouterr().out + " "


def test_list_all_of_nothing_is_an_empty_array(daemon: Daemon) -> None:
    assert agl("rollouts", "list", "--all", "--json", daemon=daemon).stdout == "[]\n"


def test_list_shows_the_mode_of_the_task_when_the_worker_sent_no_task(daemon: Daemon) -> None:
    ids = daemon.queue(1, mode="val") + daemon.queue(2)
    for rollout_id in ids:
        post_rollout(daemon, rollout_id)  # a legacy worker's report: no task in the body
    table = agl("rollouts", "list", daemon=daemon).stdout
    modes = {line.split()[1]: line.split()[2] for line in table.splitlines() if "rollout-" in line}
    assert [modes[rollout_id] for rollout_id in ids] == ["val", "-"]
    listed = json.loads(agl("rollouts", "list", "--json", daemon=daemon).stdout)
    assert [(r["task"]["mode"], r["task"]["input"]) for r in listed] == [("val", 1), (None, 2)]


def test_show_gives_the_whole_rollout_and_an_unknown_or_unfinished_one_is_one_line(daemon: Daemon) -> None:
    rollout_id, unfinished = daemon.queue(1, 2)
    post_rollout(daemon, rollout_id, reward=0.25)
    shown = json.loads(agl("rollouts", "show", rollout_id, "--json", daemon=daemon).stdout)
    assert (shown["rollout_id"], shown["final_reward"]) == (rollout_id, 0.25)
    human = agl("rollouts", "show", rollout_id, daemon=daemon)
    assert human.returncode == 0
    assert '"input": 1,' in [line.strip() for line in human.stdout.splitlines()]  # the task: JSON lines
    assert "\\x0a" not in human.stdout
    assert_one_line_error(
        agl("rollouts", "show", "rollout-nope", daemon=daemon), "No rollout with id 'rollout-nope'."
    )
    assert_one_line_error(
        agl("rollouts", "show", unfinished, daemon=daemon),
        f"Rollout '{unfinished}' has no result yet: its task is queued.",
    )


def test_any_rollout_id_a_worker_chose_is_shown_and_an_empty_one_is_unknown(daemon: Daemon) -> None:
    """An unsolicited rollout keeps the id its worker sent, '/' and all: what the list
    shows, show finds (the id is one segment of the URL, however it is spelled, '.' and
    '..' too, which a URL would otherwise take for steps of its path)."""
    chosen = ["runs/7/a", "a b?c=d#e", "100%", "../status", "/lead", "trail/", ".", ".."]
    for rollout_id in chosen:
        post_rollout(daemon, rollout_id, reward=0.5)
    for rollout_id in chosen:
        shown = agl("rollouts", "show", rollout_id, "--json", daemon=daemon)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["rollout_id"] == rollout_id
        assert_one_line_error(
            agl("tasks", "show", rollout_id, daemon=daemon), f"No task with id '{rollout_id}'."
        )
    for dots in (".", ".."):  # neither the list of tasks nor that of bundles
        for command in (["tasks", "show", "--json"], ["resources", "show"]):
            assert_one_line_error(agl(*command, dots, daemon=daemon), f" with id '{dots}'.")
    for command in (["rollouts", "show"], ["tasks", "show"], ["tasks", "cancel"]):
        assert_one_line_error(agl(*command, "", daemon=daemon), "with id ''.")


def test_a_rollout_a_worker_named_stream_is_shown_and_the_stream_still_streams(daemon: Daemon) -> None:
    """`/v1/rollouts/stream` is the stream's path; asked for JSON, it is that rollout's."""
    post_rollout(daemon, "stream", reward=0.25)
    shown = agl("rollouts", "show", "stream", "--json", daemon=daemon, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["rollout_id"], json.loads(shown.stdout)["final_reward"]) == (
        "stream",
        0.25,
    )
    watched = agl("rollouts", "watch", "--since", "all", "--count", "1", daemon=daemon, timeout=30)
    assert json.loads(watched.stdout)["rollout_id"] == "stream"


def test_what_a_worker_put_in_an_id_is_shown_as_written_never_as_markup_or_terminal_codes(
    daemon: Daemon,
) -> None:
    """Anyone who can reach the worker routes chooses an unsolicited rollout's id: rich
    markup in it is shown as typed (a stray closing tag used to crash the list), and an
    escape sequence is written out rather than sent to the terminal."""
    markup, escape, bidi = "[/oops] [bold]loud", "clear\x1b[2J\x1b]0;title\x07", "abc\u202edef"
    for rollout_id in (markup, escape, bidi):
        post_rollout(daemon, rollout_id)
    seen = "clear\\x1b[2J\\x1b]0;title\\x07"  # as printed: backslash, x, 1, b
    for command in (["rollouts", "list"], ["rollouts", "show", escape]):
        result = agl(*command, daemon=daemon)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert seen in result.stdout
        assert command[1] == "show" or (markup in result.stdout and "abc\\u202edef" in result.stdout)
        assert "\u202e" not in result.stdout  # a right-to-left override reorders nothing after it
    [task_id] = daemon.queue("red \x1b[31mtext")
    listed = agl("tasks", "list", daemon=daemon)
    assert "red \\x1b[31mtext" in listed.stdout and "\x1b" not in listed.stdout
    assert task_id in listed.stdout


def test_a_watched_rollout_s_line_writes_out_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    print_rollout({"seq": 1, "rollout_id": "[/x] a\x1b[2Jb", "unsolicited": True}, machine=False)
    line = capsys.readouterr().out
    assert "[/x] a\\x1b[2Jb" in line and "\x1b" not in line


def test_show_lists_the_spans_a_store_api_rollout_sent_and_the_list_its_mode(daemon: Daemon) -> None:
    [queued] = daemon.post(
        "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 1, "mode": "val"}]}
    ).json()
    [handed] = daemon.post("/v1/agl/queues/rollouts/dequeue", json={}).json()
    ids = {"rollout_id": handed["rollout_id"], "attempt_id": handed["attempt"]["attempt_id"]}
    for number, name in enumerate(["plan", "act"], start=1):
        span = {
            **ids, "sequence_id": number, "trace_id": "0" * 32, "span_id": f"{number:016x}", "parent_id": None,
            "name": name, "status": {"status_code": "OK"}, "attributes": {}, "events": [], "links": [],
            "start_time": 1.0, "end_time": 1.25, "context": None, "parent": None,
            "resource": {"attributes": {}, "schema_url": ""},
        }  # fmt: skip
        assert daemon.post("/v1/agl/spans", json=span).status_code == 201
    daemon.post(f"/v1/agl/rollouts/{queued['rollout_id']}/attempts/latest", json={"status": "succeeded"})

    shown = json.loads(agl("rollouts", "show", queued["rollout_id"], "--json", daemon=daemon).stdout)
    assert [(s["sequence_id"], s["name"]) for s in shown["spans"]] == [(1, "plan"), (2, "act")]
    human = agl("rollouts", "show", queued["rollout_id"], daemon=daemon).stdout
    assert "plan" in human and "act" in human and "250.0 ms" in human
    listed = agl("rollouts", "list", daemon=daemon).stdout
    assert queued["rollout_id"] in listed and " val " in listed


def test_watch_since_all_prints_json_lines_and_stops_after_count(daemon: Daemon) -> None:
    ids = daemon.queue(1, 2, 3)
    for rollout_id in ids:
        post_rollout(daemon, rollout_id)
    result = agl("rollouts", "watch", "--since", "all", "--count", "2", daemon=daemon)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rollout_id"] for r in records] == ids[:2]
    assert all("seq" in r and "final_reward" in r for r in records)


def test_watch_ends_as_soon_as_what_reads_it_is_gone_not_at_the_next_rollout(daemon: Daemon) -> None:
    """`agl rollouts watch | head -1` learnt that `head` was gone only when it wrote the
    next rollout: on an idle run, never."""
    [rollout_id] = daemon.queue("only")
    post_rollout(daemon, rollout_id)
    read, written = os.pipe()
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agl_cli",
            "--state-dir",
            str(daemon.state_dir),
            "rollouts",
            "watch",
            "--since",
            "all",
        ],
        stdout=written,
        stderr=subprocess.PIPE,
        env=env_without_agl(),
    )
    os.close(written)
    with os.fdopen(read, "rb") as head:
        assert json.loads(head.readline())["rollout_id"] == rollout_id
    _, stderr = watcher.communicate(timeout=15)  # the deadline: without it, it waits for good
    assert (watcher.returncode, stderr) == (141, b"")


def test_watch_since_now_skips_what_was_there_before(daemon: Daemon) -> None:
    ids = daemon.queue(*range(12))
    for rollout_id in ids[:2]:
        post_rollout(daemon, rollout_id)
    watcher = popen_agl("rollouts", "watch", "--since", "now", "--count", "1", "--json", daemon=daemon)
    for rollout_id in ids[2:]:  # keep them coming until the watcher, once started, sees one
        post_rollout(daemon, rollout_id)
        try:
            watcher.wait(0.4)
            break
        except subprocess.TimeoutExpired:
            continue
    stdout, _ = watcher.communicate(timeout=10)
    (record,) = (json.loads(line) for line in stdout.splitlines())
    assert record["rollout_id"] not in ids[:2]


def test_watch_survives_a_crash_and_restart_missing_nothing_and_repeating_nothing(
    make_daemon: Callable[..., Daemon], watch: Callable[[Daemon], Lines]
) -> None:
    daemon = make_daemon()
    ids = daemon.queue(*range(30))
    watcher = watch(daemon)
    for rollout_id in ids[:10]:
        post_rollout(daemon, rollout_id)
    seen = watcher.take(10)

    daemon.kill()  # kill -9: no goodbye on the stream
    daemon.start()  # same state directory, another port: the watcher finds it again
    for rollout_id in ids[10:20]:  # stored while the watcher may still be reconnecting
        post_rollout(daemon, rollout_id)
    seen += watcher.take(10)
    for rollout_id in ids[20:]:
        post_rollout(daemon, rollout_id)
    seen += watcher.take(10)

    code, stderr = watcher.stop()
    assert [r["rollout_id"] for r in seen] == ids
    seqs = [r["seq"] for r in seen]
    assert seqs == sorted(set(seqs))
    assert watcher.lines.empty()
    assert code in (0, 130) and "Traceback" not in stderr
    assert "Reconnected; resuming after rollout" in stderr


def test_watch_follows_a_restart_that_made_a_new_token(
    make_daemon: Callable[..., Daemon], watch: Callable[[Daemon], Lines]
) -> None:
    """A token read from the state directory is read again with the address: the one it
    started with would be refused by a daemon that made a new one (its file removed)."""
    daemon = make_daemon()
    first, second = daemon.queue(1, 2)
    watcher = watch(daemon)
    post_rollout(daemon, first)
    seen = watcher.take(1)
    old_token = daemon.token
    daemon.kill()
    (daemon.state_dir / "token").unlink()
    daemon.start()
    assert daemon.token != old_token
    post_rollout(daemon, second)
    seen += watcher.take(1)
    code, stderr = watcher.stop()
    assert [r["rollout_id"] for r in seen] == [first, second]
    assert code in (0, 130) and "Traceback" not in stderr


def test_watch_follows_a_restarted_memory_daemon_from_its_first_result(
    make_daemon: Callable[..., Daemon], watch: Callable[[Daemon], Lines]
) -> None:
    """Its new store numbers results from 1 again: resuming after the last number seen
    would skip as many of them, without a word."""
    daemon = make_daemon("--memory")
    first, second = daemon.queue(1, 2)
    watcher = watch(daemon)
    for rollout_id in (first, second):
        post_rollout(daemon, rollout_id)
    seen = watcher.take(2)
    daemon.kill()
    daemon.start()
    ids = daemon.queue(3, 4, 5)
    for rollout_id in ids:
        post_rollout(daemon, rollout_id)
    seen += watcher.take(3)
    code, stderr = watcher.stop()
    assert [(r["rollout_id"], r["seq"]) for r in seen] == [
        (first, 1), (second, 2), (ids[0], 1), (ids[1], 2), (ids[2], 3),
    ]  # fmt: skip
    assert watcher.lines.empty() and code in (0, 130)
    assert "Reconnected; from the first rollout." in stderr


def test_watch_keeps_the_last_address_while_the_state_directory_names_none(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A daemon stopped gracefully takes its address file with it: the watch keeps trying
    the address it knew, never the default port, where another daemon may listen and would
    be sent this run's token, until the state directory names the new one."""
    daemon = make_daemon()
    first, second = daemon.queue(1, 2)
    post_rollout(daemon, first)
    target = resolve(Globals(state_dir=daemon.state_dir))
    tried: list[str] = []  # the address of each attempt to reconnect
    outage_seen, halt = threading.Event(), threading.Event()
    arrived: queue.Queue[RolloutRecord | Exception] = queue.Queue()

    def relocate() -> Address | None:
        if halt.is_set():
            raise RuntimeError("the test is over")
        tried.append(api.url)
        if len(tried) == 4:
            outage_seen.set()
        return target.relocate()

    def follow() -> None:
        try:
            for record in api.watch_rollouts(0, relocate=relocate, max_delay=0.2):
                arrived.put(record)
        except Exception as exc:
            arrived.put(exc)

    def next_id() -> str:
        record = arrived.get(timeout=20)
        assert not isinstance(record, Exception), record
        return record["rollout_id"]

    with AglClient(target.url, target.token) as api:
        threading.Thread(target=follow, daemon=True).start()
        assert next_id() == first
        old = daemon.url
        daemon.terminate()
        assert target.relocate() is None
        assert outage_seen.wait(20)
        assert tried[:4] == [old] * 4
        daemon.start()  # on another port, written in the state directory
        post_rollout(daemon, second)
        assert next_id() == second
        halt.set()


def test_watch_of_a_daemon_that_is_not_running_is_exit_3() -> None:
    result = agl("--url", "http://127.0.0.1:9", "rollouts", "watch")
    assert_one_line_error(result, "No agl daemon answers at http://127.0.0.1:9.", code=3)


def test_a_bad_since_is_a_usage_error(daemon: Daemon) -> None:
    for since in (
        "yesterday",
        "²",
        str(2**62 + 1),
        "9" * 5000,
    ):  # the last: int() alone would raise  # not the header's name the daemon would give
        result = agl("rollouts", "watch", "--since", since, daemon=daemon)
        assert_one_line_error(
            result, f"--since takes all, now or a sequence number up to {2**62}, not '{since}'.", code=2
        )
    for command in (["rollouts", "list", "--since"], ["tasks", "list", "--offset"]):
        result = agl(*command, str(2**62 + 1), daemon=daemon)
        assert result.returncode == 2, result.stderr
        assert command[-1] in result.stderr and str(2**62) in result.stderr
