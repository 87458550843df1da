"""More requests than the daemon takes at once: the rest are answered 503 with
`Retry-After` at once, what was accepted is answered in full, and probes always pass.
Requests that wait (long polls, waits, streams) are limited apart, so that idle workers
never turn away the reports and the queueing they wait for; a request whose body is
still coming is not counted yet."""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from daemon import Daemon, fetch, wait_until
from failing_disk import with_syncs_held

ENQUEUE = json.dumps({"rollouts": [{"input": "slow"}]}).encode()


def enqueue(daemon: Daemon, sent: int = len(ENQUEUE)) -> socket.socket:
    """A store-API enqueue with the first `sent` bytes of its body sent."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(ENQUEUE)}\r\n\r\n".encode()
        + ENQUEUE[:sent]
    )
    return sock


def test_beyond_max_requests_a_request_is_a_503_with_retry_after_and_the_accepted_ones_are_answered(
    make_daemon: Callable[..., Daemon], tmp_path: Path, failing_writes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, syncs_held = with_syncs_held(
        make_daemon, failing_writes, monkeypatch, tmp_path, "--max-requests", "2"
    )
    with ExitStack() as held:
        served = [held.enter_context(enqueue(daemon)) for _ in range(2)]  # each waits for its sync
        wait_until(lambda: daemon.requests_in_flight() == 2, "both requests to be served")
        refused = fetch("GET", f"{daemon.url}/task", timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["detail"].startswith("agl is serving as many requests as it takes at once (2)")
        assert daemon.get("/health").status_code == 200  # probes always pass
        syncs_held.unlink()
        answers = [sock.recv(4096) for sock in served]
    assert [answer.split(b" ", 2)[:2] for answer in answers] == [[b"HTTP/1.1", b"201"]] * 2
    wait_until(lambda: daemon.requests_in_flight() == 0, "the requests to end")
    assert fetch("GET", f"{daemon.url}/task", timeout=10).status_code == 200
    assert re.search(r"^agl_requests_turned_away_total 1\.0$", daemon.get("/metrics").text, re.M)


def test_requests_whose_bodies_are_still_coming_take_no_place_from_the_workers(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Else bodies trickling in at the pace the daemon allows (240 bytes a second each)
    held every place, and every worker was turned away."""
    daemon = make_daemon("--max-requests", "3")
    [rollout_id] = daemon.queue("work")
    with ExitStack() as held:
        trickling = [
            held.enter_context(enqueue(daemon, sent=1)) for _ in range(3)
        ]  # as many as there are places
        assert fetch("GET", f"{daemon.url}/task", timeout=10).json()["task"]["rollout_id"] == rollout_id
        assert daemon.api("POST", "/v1/tasks", json={"tasks": [{"input": "more"}]}).status_code == 201
        for sock in trickling:
            sock.sendall(ENQUEUE[1:])
        answers = [sock.recv(4096) for sock in trickling]
    assert [answer.split(b" ", 2)[:2] for answer in answers] == [[b"HTTP/1.1", b"201"]] * 3


def test_a_wait_written_as_routing_reads_it_takes_no_place_kept_for_quick_requests(
    make_daemon: Callable[..., Daemon],
) -> None:
    """`%77ait=` is `wait=` once decoded, and a route's `$` matches before a path's final line
    break: both wait as long as asked, so they must count against the waits' own limit."""
    daemon = make_daemon("--max-requests", "2")
    rollout = daemon.post("/v1/agl/rollouts", json={"input": 1}).json()  # running: a wait for it waits
    body = json.dumps({"rollout_ids": [rollout["rollout_id"]], "timeout": 30}).encode()
    requests = [
        b"GET /task?%77ait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /v1/agl/waits/rollouts%0A HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    ]
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with ExitStack() as held:
        for request in requests:
            held.enter_context(socket.create_connection((host, int(port)), timeout=30)).sendall(request)
        wait_until(lambda: daemon.requests_in_flight() == 2, "both waits to be waiting")
        assert daemon.status()["tasks"]["queued"] == 0  # quick requests still have both places
        assert (
            daemon.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 2}]}).status_code
            == 201
        )


def test_waiting_workers_have_a_limit_of_their_own_and_turn_away_no_report_or_queueing(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--max-requests", "2")
    [first] = daemon.queue("first")
    assert daemon.claim() is not None
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        polls = [
            pool.submit(httpx.get, f"{daemon.url}/task", params={"wait": 30}, timeout=60) for _ in range(2)
        ]
        wait_until(lambda: daemon.requests_in_flight() == 2, "both long polls to be waiting")
        refused = fetch("GET", f"{daemon.url}/task", params={"wait": 30}, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["detail"].startswith(
            "agl is serving as many waiting requests (long polls, waits, streams) as it takes at once (2)"
        )
        daemon.report(first, final_reward=1.0)  # what the waiting workers wait for goes on
        assert daemon.status()["tasks"]["completed"] == 1
        second, third = daemon.queue("second", "third")
        handed = [poll.result(timeout=30).json()["task"]["rollout_id"] for poll in polls]
    assert sorted(handed) == sorted([second, third])
