"""Workers' everyday requests, `GET /task` and `POST /rollout` with a declared length, are
answered directly by the HTTP protocol instead of through an ASGI task: with the same
bytes as the ASGI way, in order among pipelined requests, and whatever the client does
meanwhile. Everything else on those routes goes the ASGI way."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon import Daemon, connect, wait_until
from failing_disk import with_syncs_held

from agl_cli.embedded import AgentLightningServer
from agl_cli.server.protocol import DirectCycle, Protocol

REPORT = b'{"rollout_id":"rollout-same","final_reward":0.5}'


def request(head: str, body: bytes = b"") -> bytes:
    """One raw request; `head` is its request line and any headers, one per line."""
    lines = [line.strip() for line in head.strip().splitlines()]
    return ("\r\n".join([*lines, "Host: localhost", "", ""])).encode() + body


def report(body: bytes = REPORT, *headers: str) -> bytes:
    return request(
        "\n".join(
            [
                "POST /rollout HTTP/1.1",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                *headers,
            ]
        ),
        body,
    )


def chunked(body: bytes) -> bytes:
    return request(
        "POST /rollout HTTP/1.1\nContent-Type: application/json\nTransfer-Encoding: chunked",
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
    )


class Answers:
    """HTTP/1.1 answers read off a raw connection, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        assert chunk, f"the connection closed; unread: {self.buffer!r}"
        self.buffer += chunk

    def next(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """The next answer's status, its headers but `date` (which moves), and its body
        (an interim `100 Continue` is passed over)."""
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode().split("\r\n")
        if status_line.startswith("HTTP/1.1 100 "):
            return self.next()
        headers = [(name.lower(), value) for name, value in (line.split(": ", 1) for line in lines)]
        length = int(dict(headers)["content-length"])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), [h for h in headers if h[0] != "date"], body

    def closed(self) -> bool:
        return self.buffer == b"" and self.sock.recv(1) == b""


@pytest.fixture
def direct_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The request line's method and target of each request answered directly."""
    seen: list[bytes] = []
    start = DirectCycle.__init__

    def watched(self: DirectCycle, protocol: Protocol, *args: Any) -> None:
        seen.append(protocol.parser.get_method() + b" " + protocol.url)
        start(self, protocol, *args)

    monkeypatch.setattr(DirectCycle, "__init__", watched)
    yield seen


async def test_the_everyday_requests_go_directly_and_are_answered_with_the_bytes_of_the_asgi_way(
    direct_requests: list[bytes],
) -> None:
    server = AgentLightningServer(port=0)
    await server.start()
    try:

        def exchange(*requests: bytes) -> list[tuple[int, list[tuple[str, str]], bytes]]:
            with connect(server.endpoint) as sock:
                answers = Answers(sock)
                result = []
                for raw in requests:
                    sock.sendall(raw)
                    result.append(answers.next())
                return result

        direct_claim, asgi_claim, direct_report, asgi_report, continued, old = await asyncio.to_thread(
            exchange,
            request("GET /task HTTP/1.1"),
            request("GET /task?wait=0 HTTP/1.1"),
            report(),
            chunked(REPORT),
            report(REPORT, "Expect: 100-continue"),
            request("GET /task HTTP/1.0"),
        )
    finally:
        await server.stop()
    assert direct_requests == [b"GET /task", b"POST /rollout"]
    assert direct_claim == asgi_claim
    # HTTP/1.0 goes the ASGI way, to the same answer (newer uvicorns add `connection: close`).
    assert (old[0], [h for h in old[1] if h != ("connection", "close")], old[2]) == direct_claim
    assert direct_claim[0] == 200 and direct_claim[2] == b'{"is_available":false,"task":null}'
    assert direct_report == asgi_report == continued
    assert direct_report[0] == 200 and b"Rollout rollout-same received and stored." in direct_report[2]
    assert [name for name, _ in direct_report[1]] == ["server", "content-length", "content-type"]


def test_pipelined_requests_are_answered_in_order_whichever_way_each_goes(daemon: Daemon) -> None:
    daemon.queue("first", "second")
    with connect(daemon.url) as sock:
        sock.sendall(
            request("GET /task HTTP/1.1")
            + request("GET /task?wait=0 HTTP/1.1")
            + report(b'{"rollout_id":"never-issued"}')
            + request("GET /health HTTP/1.1")
            + request("GET /task HTTP/1.1")
            + request("PUT /task HTTP/1.1")
        )
        answers = Answers(sock)
        statuses_and_bodies = [answers.next()[::2] for _ in range(6)]
    inputs = [body for _, body in statuses_and_bodies[:2]]
    assert [b'"input":"first"' in inputs[0], b'"input":"second"' in inputs[1]] == [True, True]
    report_answer, health, dry_claim, wrong_method = statuses_and_bodies[2:]
    assert report_answer == (
        200,
        b'{"status":"ok","message":"Rollout never-issued received and stored.","data":null}',
    )
    assert (health[0], health[1].startswith(b'{"status":"ok","version":')) == (200, True)
    assert [dry_claim, wrong_method] == [
        (200, b'{"is_available":false,"task":null}'),
        (405, b'{"detail":"Method Not Allowed"}'),
    ]


def test_hundreds_of_pipelined_claims_each_get_their_own_task_in_order(daemon: Daemon) -> None:
    """Past `MAX_PIPELINED` waiting, the rest are read as the first are answered."""
    daemon.queue(*(f"task {index}" for index in range(300)))
    with connect(daemon.url) as sock:
        sock.sendall(request("GET /task HTTP/1.1") * 300 + request("GET /health HTTP/1.1"))
        answers = Answers(sock)
        claims = [answers.next() for _ in range(300)]
        health = answers.next()
    assert [json.loads(body)["task"]["input"] for _, _, body in claims] == [f"task {i}" for i in range(300)]
    assert health[0] == 200
    assert daemon.status()["tasks"]["claimed"] == 300


def test_a_client_that_pipelines_requests_without_reading_answers_is_left_unread(daemon: Daemon) -> None:
    """uvicorn read on after every answer, parsing thousands of waiting requests at a
    time: 40 MB of pipelined claims, never read, took the daemon past 1.6 GB. Now it
    stops reading, and the client's sends block."""
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)
    before = process.memory_info().rss
    with connect(daemon.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        sent, burst = 0, request("GET /task HTTP/1.1") * 2000
        with contextlib.suppress(TimeoutError):  # the daemon reads no more of it
            while sent < 40 << 20:
                sent += sock.send(burst)
        grown = process.memory_info().rss - before
    assert sent < 20 << 20, f"the daemon read {sent >> 20} MB of requests it had not answered"
    assert grown < 60 << 20, f"the daemon grew by {grown >> 20} MB"


def test_a_report_far_larger_than_the_read_buffer_is_taken_in_full(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("big")
    assert daemon.claim() is not None
    body = b'{"rollout_id":"%s","metadata":{"pad":"%s"}}' % (rollout_id.encode(), b"x" * 600_000)
    with connect(daemon.url) as sock:
        sock.sendall(report(body))
        status, _, answer = Answers(sock).next()
    assert (status, answer.startswith(b'{"status":"ok"')) == (200, True)
    [stored] = daemon.rollouts()
    assert stored["rollout_id"] == rollout_id


def test_connection_close_is_honoured(daemon: Daemon) -> None:
    with connect(daemon.url) as sock:
        sock.sendall(request("GET /task HTTP/1.1\nConnection: close"))
        answers = Answers(sock)
        status, headers, _ = answers.next()
        assert (status, ("connection", "close") in headers, answers.closed()) == (200, True, True)


def test_clients_that_leave_before_their_answer_are_not_left_counted_in_flight(daemon: Daemon) -> None:
    daemon.queue("task")
    for leaving in (request("GET /task HTTP/1.1"), report()[:-5], report()):
        with connect(daemon.url) as sock:
            sock.sendall(leaving)

    def claimed_and_reported() -> bool:
        status = daemon.status()
        return (status["tasks"]["claimed"], status["rollouts"]) == (1, 1)

    wait_until(claimed_and_reported, "the claim and the whole report to be made")
    wait_until(lambda: daemon.requests_in_flight() == 0, "the requests to leave the count")
    assert daemon.get("/task").json() == {"is_available": False, "task": None}
    assert [r["rollout_id"] for r in daemon.rollouts()] == ["rollout-same"]  # not the half one


def test_a_long_poll_whose_client_left_ends_and_claims_nothing(daemon: Daemon) -> None:
    """Its answer would reach nobody: a task it claimed would wait out --task-timeout."""
    with connect(daemon.url) as sock:
        sock.sendall(request("GET /task?wait=60 HTTP/1.1"))
        wait_until(lambda: daemon.requests_in_flight() == 1, "the long poll to wait")
    wait_until(lambda: daemon.requests_in_flight() == 0, "the long poll to end with its client", timeout=15)
    [rollout_id] = daemon.queue("for a worker still here")
    assert daemon.get("/task").json()["task"]["rollout_id"] == rollout_id
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["num_claims"] == 1


def test_a_worker_route_a_busy_daemon_turns_away_is_counted_as_such(
    make_daemon: Callable[..., Daemon], tmp_path: Path, failing_writes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, syncs_held = with_syncs_held(
        make_daemon, failing_writes, monkeypatch, tmp_path, "--max-requests", "1"
    )
    with connect(daemon.url) as held:  # a request served, its answer waiting for its sync
        body = b'{"rollouts": [{"input": 1}]}'
        held.sendall(
            request(
                "POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\nContent-Type: application/json\n"
                f"Content-Length: {len(body)}",
                body,
            )
        )
        wait_until(lambda: daemon.requests_in_flight() == 1, "the request to be served")
        with connect(daemon.url) as sock:
            sock.sendall(request("GET /task HTTP/1.1") + report())
            answers = Answers(sock)
            refused = [answers.next() for _ in range(2)]
        syncs_held.unlink()
    assert [(status, ("retry-after", "1") in headers) for status, headers, _ in refused] == [(503, True)] * 2
    metrics = daemon.get("/metrics").text
    for route in ("/task", "/rollout"):
        pattern = rf'^agl_http_request_duration_seconds_count{{.*route="{route}".*status="503".*}} 1\.0$'
        assert re.search(pattern, metrics, re.M), route


async def test_an_unexpected_error_is_a_logged_500_and_the_request_leaves_the_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    server = AgentLightningServer(port=0)
    await server.start()
    uvicorn_errors = logging.getLogger("uvicorn.error")  # which uvicorn keeps from the root logger
    uvicorn_errors.addHandler(caplog.handler)
    try:
        monkeypatch.setattr(server.broker, "claim_soon", broken)
        failed = server.broker.stats.claims
        failing_later: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failing_later.set_exception(RuntimeError("a bug, later"))
        monkeypatch.setattr(server.broker, "report_soon", lambda *args: failing_later)

        def exchange() -> list[tuple[int, list[tuple[str, str]], bytes]]:
            with connect(server.endpoint) as sock:
                sock.sendall(request("GET /task HTTP/1.1") + report())
                answers = Answers(sock)
                return [answers.next() for _ in range(2)]

        answers = await asyncio.to_thread(exchange)
        assert (server.broker.stats.in_flight, server.broker.stats.claims) == (0, failed)
    finally:
        uvicorn_errors.removeHandler(caplog.handler)
        await server.stop()
    assert [(status, body) for status, _, body in answers] == [(500, b"Internal Server Error")] * 2
    logged = [r.exc_info for r in caplog.records if r.getMessage() == "Exception in ASGI application"]
    assert [str(exc_info[1]) for exc_info in logged if exc_info] == ["a bug", "a bug, later"]


async def test_an_answered_request_is_freed_at_once_not_left_to_the_garbage_collector() -> None:
    gc.disable()  # what is left for it stays countable
    server = AgentLightningServer(port=0)
    await server.start()
    try:

        def exchange() -> None:
            with connect(server.endpoint) as sock:
                answers = Answers(sock)
                for _ in range(20):
                    sock.sendall(request("GET /task HTTP/1.1") + report())
                    answers.next(), answers.next()

        await asyncio.to_thread(exchange)
        alive = [o for o in gc.get_objects() if isinstance(o, DirectCycle)]
        assert len(alive) <= 1, "only the connection's last request may still be held"
    finally:
        gc.enable()
        await server.stop()
