"""Whatever was answered with success survives `kill -9` of the daemon and a restart."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import prefork
import pytest
from conftest import schema_5_file
from daemon import Daemon, env_without_agl, free_port, wait_until

from agl_cli import paths
from agl_cli.server import hangups
from agl_cli.store import schema


def test_queued_tasks_rollouts_and_resources_survive_kill_9(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon("--task-timeout", "1.5", state_dir=tmp_path / "state")
    ids = daemon.queue(*range(20), mode="train")
    resources = daemon.publish(
        {"prompt": {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}}
    )
    claimed = [daemon.claim() for _ in range(6)]
    reported = [task["rollout_id"] for task in claimed[:4] if task]
    for index, rollout_id in enumerate(reported):
        body = {
            "rollout_id": rollout_id,
            "final_reward": index / 10,
            "triplets": [{"prompt": "p", "response": index}],
        }
        assert daemon.post("/rollout", json=body).status_code == 200
    before = daemon.rollouts()

    daemon.kill()
    daemon.start()

    assert daemon.rollouts() == before
    assert [r["rollout_id"] for r in before] == reported
    assert daemon.get("/resources/latest").json() == resources
    status = daemon.status()
    assert status["tasks"] == {"queued": 14, "claimed": 2, "completed": 4, "failed": 0, "cancelled": 0}

    # Everything not yet reported is handed out again: the queue first, then the two
    # claims that were never reported, once their timeout has passed, as second claims.
    handed_out = [daemon.get("/task", params={"wait": 10}).json()["task"] for _ in range(16)]
    assert sorted(t["rollout_id"] for t in handed_out) == sorted(set(ids) - set(reported))
    reclaimed = {t["rollout_id"]: t["num_claims"] for t in handed_out if t["num_claims"] > 1}
    assert reclaimed == {claimed[4]["rollout_id"]: 2, claimed[5]["rollout_id"]: 2}  # type: ignore[index]


def test_cancels_survive_kill_9(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    by_id, *queued = daemon.queue(*range(600))  # the queue is cancelled 250 to a write
    assert daemon.api("POST", "/v1/tasks/cancel", json={"rollout_ids": [by_id]}).status_code == 200
    assert daemon.api("POST", "/v1/queue/cancel").json() == {"cancelled": len(queued)}

    daemon.kill()
    daemon.start()

    assert daemon.status()["tasks"] == {
        "queued": 0,
        "claimed": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 600,
    }
    assert daemon.claim() is None


def test_retries_survive_kill_9(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    ids = daemon.queue(*range(300))
    assert daemon.api("POST", "/v1/queue/cancel").json() == {"cancelled": 300}
    assert daemon.api("POST", "/v1/tasks/retry", json={"rollout_ids": ids}).status_code == 200

    daemon.kill()
    daemon.start()

    assert daemon.status()["tasks"]["queued"] == 300
    assert [daemon.claim()["rollout_id"] for _ in range(3)] == ids[:3]  # type: ignore[index]


def test_a_pause_survives_kill_9(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    daemon.queue("waits")
    assert daemon.api("POST", "/v1/queue/pause").json() == {"paused": True}

    daemon.kill()
    daemon.start()

    assert daemon.status()["paused"] and daemon.claim() is None
    said = "agl: the queue is paused, as it was left: workers get no tasks until agl resume."
    assert said in daemon.said()


def test_rollouts_answered_while_under_load_all_survive_kill_9(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    ids = daemon.queue(*range(400))
    acknowledged: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=daemon.url, timeout=5) as client:
            while True:
                try:
                    task = client.get("/task").json()["task"]
                    if task is None:
                        return
                    reply = client.post(
                        "/rollout", json={"rollout_id": task["rollout_id"], "final_reward": 1.0}
                    )
                except httpx.TransportError:
                    return  # the daemon was killed under us
                if reply.status_code == 200:
                    with lock:
                        acknowledged.append(task["rollout_id"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 100, "100 reports answered", timeout=60)
    daemon.kill()
    for thread in threads:
        thread.join()

    database = sqlite3.connect(tmp_path / "state" / "agl.db")
    kept = {row[0] for row in database.execute("SELECT rollout_id FROM rollouts")}
    database.close()
    assert set(acknowledged) <= kept
    assert kept <= set(ids)
    daemon.start()
    assert {r["rollout_id"] for r in daemon.rollouts()} == kept


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_a_closed_terminal_answers_a_waiting_long_poll_and_exits_cleanly(
    daemon: Daemon, stop: signal.Signals
) -> None:
    answers: list[httpx.Response] = []
    poller = threading.Thread(target=lambda: answers.append(daemon.get("/task", params={"wait": 60})))
    poller.start()
    wait_until(lambda: daemon.requests_in_flight() == 1, "the long poll to wait")
    started = time.monotonic()
    assert daemon.proc is not None
    daemon.proc.send_signal(stop)
    assert daemon.wait() == 0
    poller.join(10)
    assert time.monotonic() - started < 10
    assert [a.json() for a in answers] == [{"is_available": False, "task": None}]
    database = sqlite3.connect(daemon.state_dir / "agl.db")
    assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    database.close()


def test_a_sigterm_sent_as_soon_as_agl_says_it_listens_stops_it_as_gracefully(tmp_path: Path) -> None:
    """The daemon is held on that line, its log a full pipe that nobody reads yet, when
    the signal is sent: its stop is a clean one, not the default action's abrupt end."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(write, bytes(65536))
    os.set_blocking(write, True)
    state = tmp_path / "state"
    try:
        args = ["serve", "--port", "0", "--state-dir", str(state)]
        proc = prefork.start(args, env=env_without_agl(), stdin=0, stdout=write, stderr=write)
    finally:
        os.close(write)
    try:
        # Left just before the line is written, which blocks: the signal lands on the line.
        wait_until(lambda: (state / paths.ADDRESS_NAME).exists() or proc.poll() is not None, "the address")
        proc.send_signal(signal.SIGTERM)
        with os.fdopen(read, "rb") as log:
            said = log.read()  # to the end, once the daemon has exited
        assert proc.wait(30) == 0, said[filled:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert b"listening on" in said[filled:]
    assert not (state / paths.PIDFILE_NAME).exists() and not (state / paths.ADDRESS_NAME).exists()


def test_a_daemon_started_under_nohup_outlives_its_terminal(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", under_nohup=True).start()  # serving: past setting its handlers
    try:
        assert daemon.proc is not None
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        [ignored] = [line for line in status.splitlines() if line.startswith("SigIgn:")]
        assert int(ignored.split()[1], 16) & (1 << (signal.SIGHUP - 1))  # as nohup left it
    finally:
        daemon.close()


def test_a_long_poll_whose_worker_hung_up_before_it_was_answered_leaves_the_task_queued(
    daemon: Daemon,
) -> None:
    """Its answer would go to nobody, and the task would wait out the task timeout: it
    claims nothing, or hands back at once what it claimed as the hang-up was heard."""
    [rollout_id] = daemon.queue("for a worker that is there")
    assert daemon.proc is not None
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    daemon.proc.send_signal(signal.SIGSTOP)  # the request and the hang-up, heard together
    try:
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"GET /task?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: daemon.requests_in_flight() == 0, "the long poll to end")
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "queued"


def version_and_attempts(path: Path) -> tuple[int, int]:
    check = sqlite3.connect(path)
    try:
        [(version,)] = check.execute("PRAGMA user_version").fetchall()
        [(attempts,)] = check.execute("SELECT count(*) FROM attempts").fetchall()
    finally:
        check.close()
    return version, attempts


def test_a_crash_while_an_older_file_is_brought_up_to_date_loses_nothing(tmp_path: Path) -> None:
    """Schema 6 rebuilds the attempts table in one transaction: killed halfway, the file is
    as it was, and the next start brings it up to date with every attempt."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ids = schema_5_file(state / "agl.db", 150_000)
    wal = state / "agl.db-wal"
    daemon = Daemon(state)
    try:
        daemon.spawn()
        wait_until(
            lambda: wal.exists() and wal.stat().st_size > 4_000_000, "the upgrade to write its log", 60
        )
        daemon.kill()
        assert version_and_attempts(state / "agl.db") == (5, 150_000)  # killed before it committed

        daemon.start(timeout=60)
        assert version_and_attempts(state / "agl.db") == (schema.SCHEMA_VERSION, 150_000)
        latest = daemon.api("GET", f"/v1/agl/rollouts/{ids[123_456]}/attempts/latest").json()
        assert (latest["attempt_id"], latest["status"]) == ("at-123456", "succeeded")
    finally:
        daemon.close()


def test_a_client_that_comes_back_while_the_daemon_restarts_is_kept_waiting_not_refused(
    tmp_path: Path,
) -> None:
    """The daemon listens before it loads its server and store: agentlightning 0.3.0's
    store client gives a restarting server less than a second before it gives up. Here
    the start is a long one, bringing an older file up to date."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    schema_5_file(state / "agl.db", 150_000)
    port = free_port()
    daemon = Daemon(state, "--port", str(port))
    try:
        daemon.spawn()
        wait_until(lambda: "bringing" in daemon.log_path.read_text(), "the upgrade to begin", 60)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as early:
            assert "listening on" not in daemon.log_path.read_text()  # taken while still upgrading
            early.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            early.settimeout(60)
            assert early.recv(100).startswith(b"HTTP/1.1 200 ")  # answered once it serves
    finally:
        daemon.close()


@pytest.mark.parametrize(
    ("ending", "gone"),
    [("none", False), ("another request", False), ("a close", True), ("a reset", True)],
)
def test_a_hang_up_is_heard_from_the_socket_before_uvicorn_hears_it(ending: str, gone: bool) -> None:
    """What a long poll asks before its claim is answered: a close or a reset is a hang-up
    (as to uvicorn), a request sent behind it is not, and asking reads nothing."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=10)
        served, _ = server.accept()
        with served:
            if ending == "another request":
                client.sendall(b"GET /task HTTP/1.1\r\n\r\n")
            elif ending == "a reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if ending in ("a close", "a reset"):
                client.close()
            if ending != "none":  # what the client did has reached the served end
                assert select.select([served], [], [], 10)[0]
            assert hangups._closed_by_peer(served.fileno()) is gone
            assert served.fileno() >= 0  # still open: asking closed nothing
            if ending == "another request":
                assert served.recv(100) == b"GET /task HTTP/1.1\r\n\r\n"  # and read nothing
        client.close()
