"""When the disk says no: a full store refuses writes with a 507 that says so, keeps
serving reads, keeps nothing half-written, and takes writes again once there is room; a
failing disk's writes are a 503; a failed sync stops the daemon, to be restarted; `agl
queue` without room for its temporary files says so and queues nothing."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest.mock import ANY

import httpx
import orjson
import pytest
from cli_runner import agl, assert_one_line_error, write
from daemon import Daemon
from failing_disk import faulty_daemon
from test_backup import ONLY_THE_COPYS_TASKS, copied_then_changed

from agl_cli.server.writer import SINCE_THE_LAST_GOOD_SYNC

LIMIT = 400_000  # bytes of database: a few hundred large tasks
BIG = "x" * 20_000
FULL = "The store is full (no space left on its disk, or its --max-db-size reached); nothing was written."


def test_a_full_store_refuses_writes_with_a_507_serves_reads_and_recovers(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    daemon = make_daemon("--max-db-size", str(LIMIT), state_dir=state)
    accepted = 0
    for size in (5, 1):  # fill it: five tasks at a time, then the room left one at a time
        for _ in range(200):  # far more than fits
            response = daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": BIG} for _ in range(size)]})
            if response.status_code != 201:
                break
            accepted += size
        assert (response.status_code, response.json()) == (507, {"detail": FULL})
    assert accepted > 0

    # Every door's writes are refused the same way, and the daemon goes on.
    publish = daemon.api("POST", "/v1/resources", json={"resources": {"p": {
        "resource_type": "prompt_template", "template": BIG * 3, "engine": "jinja"}}})  # fmt: skip
    report = daemon.post("/rollout", json={"rollout_id": "late", "metadata": {"big": BIG * 3}})
    enqueue = daemon.post(
        "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": BIG} for _ in range(5)]}
    )
    assert [(r.status_code, r.json()["detail"]) for r in (publish, report, enqueue)] == [(507, FULL)] * 3
    status = daemon.status()  # reads go on, and show nothing half-written
    assert (status["tasks"]["queued"], status["rollouts"], status["resources"]) == (accepted, 0, 0)

    daemon.close()  # room again: the same state directory without the limit
    roomy = make_daemon(state_dir=state)
    assert roomy.api("POST", "/v1/tasks", json={"tasks": [{"input": BIG}]}).status_code == 201
    assert roomy.status()["tasks"]["queued"] == accepted + 1


PROMPT = {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}
WRITE_FAILED = "The store could not be written (disk I/O error); nothing was written."
LOST = f"The store could not be synced to disk (Input/output error): {SINCE_THE_LAST_GOOD_SYNC}."


def test_a_disk_that_fails_writes_gets_a_503_keeps_nothing_half_written_and_recovers(
    make_daemon: Callable[..., Daemon], tmp_path: Path, failing_writes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = tmp_path / "the disk fails"
    state = tmp_path / "state"
    daemon = faulty_daemon(make_daemon, failing_writes, monkeypatch, state, AGL_FAIL_WRITES=trigger)
    [claimed] = daemon.queue("claimed before")
    assert daemon.get("/task").json()["task"]["rollout_id"] == claimed
    before = daemon.status()

    def writes() -> list[httpx.Response]:
        return [
            daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "queued"}]}),
            daemon.api("POST", "/v1/resources", json={"resources": {"p": PROMPT}}),
            daemon.post("/rollout", json={"rollout_id": claimed, "final_reward": 1.0}),
            daemon.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": "enqueued"}]}),
        ]

    trigger.touch()
    refused = writes()
    assert [(r.status_code, r.json(), r.headers.get("Retry-After")) for r in refused] == [
        (503, {"detail": WRITE_FAILED}, "5")
    ] * 4
    # reads go on; nothing half-written (the database's pages are as they were; its log may not be)
    assert daemon.status() == {
        **before,
        "uptime": ANY,
        "rates": ANY,
        "database": {**before["database"], "log_bytes": ANY, "disk_free_bytes": ANY},
    }
    assert "Traceback" not in daemon.log_path.read_text()

    trigger.unlink()  # the disk recovers: the same writes are taken
    assert [r.status_code for r in writes()] == [201, 201, 200, 201]
    after = daemon.status()
    assert (after["tasks"]["queued"], after["rollouts"], after["resources"]) == (2, 1, 1)

    daemon.kill()  # and what was answered with success is what is on disk
    again = make_daemon(state_dir=state)
    assert again.status() == {
        **after,
        "pid": ANY,
        "started_time": ANY,
        "uptime": ANY,
        "rates": ANY,
        "database": ANY,
        "address": ANY,
    }
    with sqlite3.connect(state / "agl.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_daemon_restarted_on_a_full_disk_serves_reads_and_refuses_writes_with_a_507(
    make_daemon: Callable[..., Daemon], tmp_path: Path, failing_writes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash or a reboot while the disk is full: the daemon must come back for reads."""
    state = tmp_path / "state"
    first = make_daemon(state_dir=state)
    [kept] = first.queue("kept")
    first.kill()
    full = tmp_path / "the disk is full"
    full.touch()
    daemon = faulty_daemon(make_daemon, failing_writes, monkeypatch, state, AGL_DISK_FULL=full)
    assert daemon.api("GET", f"/v1/tasks/{kept}").json()["status"] == "queued"
    refused = daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "more"}]})
    assert (refused.status_code, refused.json()) == (507, {"detail": FULL})
    full.unlink()  # room again
    assert daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "more"}]}).status_code == 201
    assert "Traceback" not in daemon.log_path.read_text()


def test_a_failed_sync_is_a_503_and_the_daemon_stops_so_that_no_later_write_is_answered_with_success(
    make_daemon: Callable[..., Daemon], tmp_path: Path, failing_writes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync the kernel forgets the error, and a later sync that succeeds
    says nothing of the pages the failed one lost: no success can be promised again
    until a restart has recovered what is on disk."""
    trigger = tmp_path / "syncs fail"
    state = tmp_path / "state"
    daemon = faulty_daemon(make_daemon, failing_writes, monkeypatch, state, AGL_FAIL_SYNCS=trigger)
    [kept] = daemon.queue("synced")

    trigger.touch()
    failed = daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "not known to be synced"}]})
    assert (failed.status_code, failed.json(), failed.headers.get("Retry-After")) == (
        503,
        {"detail": LOST},
        "5",
    )
    trigger.unlink()  # syncs succeed again, which proves nothing about the one that failed
    assert daemon.wait() == 1  # it stopped by itself, to be restarted
    log = daemon.log_path.read_text()
    assert f"agl: {LOST}" in log and "Traceback" not in log

    again = make_daemon(state_dir=state)  # the restart recovers what is on disk
    assert again.api("GET", f"/v1/tasks/{kept}").status_code == 200
    with sqlite3.connect(state / "agl.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("gone", ["deleted", "moved"])
def test_a_state_directory_deleted_or_moved_under_the_daemon_stops_it_before_a_write_is_answered(
    make_daemon: Callable[..., Daemon], tmp_path: Path, gone: str
) -> None:
    """Its writes would go on into a file no restart finds (or none at all, once deleted)."""
    state = tmp_path / "state"
    daemon = make_daemon(state_dir=state)
    [rollout_id] = daemon.queue("kept")
    assert daemon.claim() is not None
    if gone == "deleted":
        shutil.rmtree(state)
    else:
        state.rename(tmp_path / "elsewhere")
    refused = daemon.post("/rollout", json={"rollout_id": rollout_id, "final_reward": 1.0})
    said = f"The database {state / 'agl.db'} was deleted, moved or replaced while agl ran: {SINCE_THE_LAST_GOOD_SYNC}."
    assert (refused.status_code, refused.json()) == (503, {"detail": said})
    assert daemon.wait() == 1
    log = daemon.log_path.read_text()
    assert f"agl: {said}" in log and "Traceback" not in log


@pytest.mark.parametrize(
    "deleted", [["agl.db-wal"], ["agl.db-wal", "agl.db-shm"]], ids=["log", "log and index"]
)
def test_a_log_deleted_under_the_daemon_is_copied_into_the_database_before_it_stops(
    make_daemon: Callable[..., Daemon], tmp_path: Path, deleted: list[str]
) -> None:
    """SQLite goes on writing the log it holds open, which no restart finds: the writes
    answered since the last checkpoint, and those after, were lost to the next kill."""
    state = tmp_path / "state"
    daemon = make_daemon(state_dir=state)
    kept = daemon.queue(*(f"task {index}" for index in range(100)))
    for name in deleted:
        (state / name).unlink()
    refused = daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "after"}]})
    said = (
        f"The write-ahead log {state / 'agl.db-wal'} was deleted while agl ran; what it held was copied"
        f" into the database first: {SINCE_THE_LAST_GOOD_SYNC}."
    )
    assert (refused.status_code, refused.json()) == (503, {"detail": said})
    daemon.kill()  # whether or not it has stopped by itself yet
    again = make_daemon(state_dir=state)
    listed = again.api("GET", "/v1/tasks", params={"limit": 1000}).json()["tasks"]
    assert set(kept) <= {task["rollout_id"] for task in listed}
    with sqlite3.connect(state / "agl.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize(
    "then", ["replaced", "replaced, the daemon killed at the 503", "deleted, then restored"]
)
def test_the_log_of_a_database_replaced_or_deleted_under_the_daemon_is_kept_where_no_database_reads_it(
    make_daemon: Callable[..., Daemon], tmp_path: Path, then: str
) -> None:
    """SQLite could not fold the log into a file gone from its name, and would read it into
    the database put there next (a copy moved in, a restore), corrupting it. It is moved
    away as the daemon notices, before it answers: a kill then does not leave it."""
    daemon, copy = copied_then_changed(make_daemon, tmp_path)
    state = daemon.state_dir
    database = state / "agl.db"
    if then.startswith("replaced"):
        shutil.copy(copy, tmp_path / "moved in")
        (tmp_path / "moved in").replace(database)
    else:
        database.unlink()

    assert daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "refused"}]}).status_code == 503
    if then.endswith("killed at the 503"):
        daemon.kill()
    else:
        assert daemon.wait() == 1
    [log] = state.glob("agl.db.orphaned-*-wal")
    said = f"while agl ran: {SINCE_THE_LAST_GOOD_SYNC}. Its write-ahead log, which the next database there"
    assert (
        then.endswith("killed at the 503")
        or f"{said} must not read, is kept as {log}." in daemon.log_path.read_text()
    )
    if then.startswith("deleted"):
        assert agl("restore", str(copy), daemon=daemon).returncode == 0
    assert daemon.start().status()["tasks"] == ONLY_THE_COPYS_TASKS
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.parametrize(
    ("fault", "answer"),
    [
        ("AGL_FAIL_WRITES", (503, "The database could not be copied (disk I/O error).")),
        ("AGL_DISK_FULL", (507, "No room in {state} for a copy of the database.")),
    ],
)
def test_a_backup_the_disk_cannot_take_is_refused_with_the_reason_and_leaves_nothing(
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    failing_writes: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    answer: tuple[int, str],
) -> None:
    trigger = tmp_path / "the disk fails"
    state = tmp_path / "state"
    daemon = faulty_daemon(make_daemon, failing_writes, monkeypatch, state, **{fault: trigger})
    daemon.queue(*range(100))

    trigger.touch()
    failed = daemon.api("GET", "/v1/backup")

    code, detail = answer
    assert (failed.status_code, failed.json()) == (code, {"detail": detail.format(state=state)})
    assert sorted(path.name for path in state.iterdir() if "backup" in path.name) == []
    assert daemon.status()["tasks"]["queued"] == 100  # reads go on
    trigger.unlink()
    assert daemon.api("GET", "/v1/backup").status_code == 200
    assert "Traceback" not in daemon.log_path.read_text()


def test_a_big_page_the_temporary_directory_cannot_take_is_a_503_with_the_reason(
    make_daemon: Callable[..., Daemon], tmp_path: Path, failing_writes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = tmp_path / "no room for temporary files"
    daemon = faulty_daemon(
        make_daemon, failing_writes, monkeypatch, tmp_path / "state", AGL_TEMP_FULL=trigger
    )
    rollouts = [{"input": "x" * 2_000} for _ in range(600)]  # more JSON than a page keeps in memory
    assert daemon.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": rollouts}).status_code == 201

    trigger.touch()
    refused = daemon.get("/v1/agl/rollouts")
    detail = "The page could not be written to a temporary file (No space left on device)."
    assert (refused.status_code, refused.json()) == (503, {"detail": detail})
    assert refused.headers["retry-after"] == "5"
    small = daemon.get("/v1/agl/rollouts", params={"limit": 10})  # kept in memory: it still comes
    assert (small.status_code, small.json()["total"]) == (200, 600)
    trigger.unlink()
    assert daemon.get("/v1/agl/rollouts").json()["total"] == 600
    assert "Traceback" not in daemon.log_path.read_text()


def test_agl_queue_with_no_room_for_temporary_files_says_so_and_queues_nothing(
    daemon: Daemon, tmp_path: Path, failing_writes: Path
) -> None:
    """`agl queue` keeps what it will print, past one request's worth, and a copy of its
    standard input in temporary files: without room for them it ends with one line and
    discards the staged batch. One request's worth is kept in memory, and goes through."""
    trigger = tmp_path / "no room for temporary files"
    trigger.touch()
    full = {"LD_PRELOAD": str(failing_writes), "AGL_TEMP_FULL": str(trigger)}
    large = "".join(orjson.dumps({"input": "x" * 4_000}).decode() + "\n" for _ in range(6_000))  # 24 MB
    printed = agl("queue", "--json", write(tmp_path / "large.jsonl", large), daemon=daemon, env=full)
    assert_one_line_error(
        printed, f"The rollout ids could not be kept in a temporary file in {tempfile.gettempdir()}"
    )
    assert printed.stderr.endswith(" (No space left on device); nothing was queued.\n")
    copied = agl("queue", "-", stdin='{"input": 1}\n', daemon=daemon, env=full)
    assert_one_line_error(copied, "<stdin>: cannot be copied to a temporary file in ")
    assert daemon.status()["tasks"]["queued"] == 0
    database = sqlite3.connect(daemon.state_dir / "agl.db")
    assert database.execute("SELECT count(*) FROM batches").fetchone() == (0,)  # discarded, not left staged
    database.close()

    few = agl("queue", write(tmp_path / "few.jsonl", '{"input": 1}\n' * 10), daemon=daemon, env=full)
    assert few.returncode == 0 and len(few.stdout.split()) == 10, few.stderr
    assert daemon.status()["tasks"]["queued"] == 10
