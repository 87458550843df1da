"""Connections a worker does not make cannot crowd out the ones it does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from daemon import Daemon, fetch

from agl_cli import AgentLightningServer
from agl_cli.server.protocol import MAX_HEAD_BYTES, MIN_BYTES_PER_SECOND, CoalescedWrites

DAEMON_OPEN_FILES = 256


def idle_connections(url: str, count: int) -> Iterator[socket.socket]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    for _ in range(count):
        yield socket.create_connection((host, int(port)), timeout=10)


def test_idle_connections_beyond_the_open_file_limit_it_started_with_do_not_stop_a_worker(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard)
    )  # for this test's own sockets
    daemon = Daemon(tmp_path / "state", open_files=DAEMON_OPEN_FILES).start()
    try:
        [rollout_id] = daemon.queue("work")
        with ExitStack() as held:
            for connection in idle_connections(daemon.url, DAEMON_OPEN_FILES + 100):
                held.enter_context(connection)
            answer = fetch("GET", f"{daemon.url}/task", timeout=10).json()
        assert answer["task"]["rollout_id"] == rollout_id
        assert "Too many open files" not in daemon.log_path.read_text()
    finally:
        daemon.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_durable_write_with_every_descriptor_taken_is_answered_and_the_daemon_goes_on(
    tmp_path: Path,
) -> None:
    """Connections may take every descriptor the daemon may have: a sync that needed one
    of its own failed, and was taken for a failed fsync, which stops the daemon."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard)
    )  # for this test's own sockets
    daemon = Daemon(tmp_path / "state", open_files=DAEMON_OPEN_FILES, open_files_hard=True).start()
    try:
        [rollout_id] = daemon.queue("work")
        with httpx.Client(base_url=daemon.url, timeout=10) as worker, ExitStack() as held:
            assert worker.get("/task").json()["task"]["rollout_id"] == rollout_id  # its connection, kept
            for connection in idle_connections(daemon.url, DAEMON_OPEN_FILES + 100):
                held.enter_context(connection)
            reported = worker.post("/rollout", json={"rollout_id": rollout_id, "final_reward": 1.0})
            assert reported.status_code == 200, reported.text
        assert daemon.status()["tasks"]["completed"] == 1
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_limit(daemon: Daemon) -> None:
    [connection] = idle_connections(daemon.url, 1)
    with connection:
        connection.settimeout(30)  # the deadline; the daemon closes it after 5 s
        assert connection.recv(1) == b""


def test_idle_connections_and_a_slowly_sent_body_do_not_hold_up_a_worker(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("work")
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with ExitStack() as held:
        for connection in idle_connections(daemon.url, 500):
            held.enter_context(connection)
        slow = held.enter_context(socket.create_connection((host, int(port)), timeout=10))
        slow.sendall(
            b"POST /rollout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        answer = fetch("GET", f"{daemon.url}/task", timeout=10).json()
    assert answer["task"]["rollout_id"] == rollout_id


SLOW_REQUESTS = {
    "a worker's report": b"POST /rollout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    "a queue request": b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n{",
    "a store API enqueue": b"POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n{",
    "headers that never end": b"GET /task HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
}


@pytest.mark.parametrize("start", SLOW_REQUESTS.values(), ids=SLOW_REQUESTS.keys())
def test_a_request_not_sent_in_full_within_the_time_limit_gets_408_and_changes_nothing(
    make_daemon: Callable[..., Daemon], start: bytes
) -> None:
    daemon = make_daemon("--request-timeout", "1")
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as slow:  # 30 s: the deadline
        slow.sendall(start.replace(b"{token}", daemon.token.encode()))
        answer = b""
        while chunk := slow.recv(4096):  # the daemon answers, then closes
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "detail": "The request did not arrive in full within 1 s (agl serve --request-timeout)."
    }
    assert daemon.api("GET", "/v1/status").json()["tasks"]["queued"] == 0
    assert daemon.get("/health").status_code == 200
    assert "Traceback" not in daemon.log_path.read_text()


async def test_the_embedded_server_closes_a_connection_that_sends_nothing_too() -> None:
    server = AgentLightningServer(port=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        assert await asyncio.wait_for(reader.read(1), timeout=30) == b""  # closed after 5 s
        writer.close()
    finally:
        await server.stop()


def test_a_pipelined_request_not_sent_in_full_gets_408_after_the_answer_before_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--request-timeout", "1")
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as client:  # 30 s: the deadline
        client.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"POST /rollout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"408"]


def test_a_request_that_trickles_in_is_refused_after_the_grace(make_daemon: Callable[..., Daemon]) -> None:
    """It holds a connection, and what it sent, for as long as it trickles: not for the
    whole --request-timeout (60 s)."""
    daemon = make_daemon("--max-requests", "1")
    [rollout_id] = daemon.queue("work")
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as slow:  # 30 s: the deadline
        slow.sendall(SLOW_REQUESTS["a store API enqueue"])
        answer = slow.recv(4096)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "detail": f"The request came at fewer than {MIN_BYTES_PER_SECOND} bytes a second; send it whole."
    }
    assert fetch("GET", f"{daemon.url}/task", timeout=10).json()["task"]["rollout_id"] == rollout_id


def test_a_burst_at_its_start_does_not_buy_a_trickling_request_the_whole_time_limit(
    daemon: Daemon,
) -> None:
    """The pace is taken over the last two checks, not since the first byte."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as slow:  # 30 s: the deadline (60 s before)
        slow.sendall(
            b"POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b" " * 15_000
        )
        answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"fewer than 240 bytes a second" in answer


def test_a_request_pipelined_behind_a_long_poll_waits_for_it_unhurried(daemon: Daemon) -> None:
    """agl reads it only once the poll is answered: that time is not the client's."""
    [rollout_id] = daemon.queue("x")
    assert daemon.claim() is not None
    body = json.dumps({"rollout_id": rollout_id, "final_reward": 1.0}).encode()
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as worker:
        worker.sendall(
            b"GET /task?wait=6 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"POST /rollout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:1]
        )
        first = worker.recv(4096)  # the poll's answer, after its 6 s: no task
        worker.sendall(body[1:])
        second = worker.recv(4096)
    assert first.startswith(b"HTTP/1.1 200 ") and b'"task":null' in first.replace(b" ", b"")
    assert second.startswith(b"HTTP/1.1 200 ")
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "completed"


def test_headers_past_the_limit_get_431_and_the_connection_closed(daemon: Daemon) -> None:
    """The parser keeps a request's headers until they are whole: without a limit, one
    connection could make the daemon hold gigabytes of them."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    line = b"X-Pad: " + b"x" * 1000 + b"\r\n"
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as client:  # 30 s: the deadline
        client.sendall(b"GET /task HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(4 * MAX_HEAD_BYTES // len(line)):  # the reads of it but the first count
                client.sendall(line * 16)
        with contextlib.suppress(ConnectionError):
            while chunk := client.recv(4096):
                answer += chunk
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 ") and b"connection: close" in status
    assert json.loads(body) == {
        "detail": f"The request's line and headers are larger than {MAX_HEAD_BYTES} bytes."
    }
    assert daemon.get("/task").json() == {"is_available": False, "task": None}


class RecordingTransport:
    """A connection's transport: what it was asked to send, send by send, and how much it
    says it still holds back (unsent)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sends: list[bytes | str] = []
        self.closing = False
        self.sock = sock
        self.held_back = 0

    def write(self, data: bytes) -> None:
        self.sends.append(data)

    def close(self) -> None:
        self.closing = True
        self.sends.append("closed")

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.held_back

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else f"the socket's {name}"


async def test_a_response_written_in_parts_goes_out_in_one_send_and_before_a_close() -> None:
    loop = asyncio.get_running_loop()
    underlying = RecordingTransport()
    transport = CoalescedWrites(underlying, loop)  # type: ignore[arg-type]
    head = bytearray(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(head)  # type: ignore[arg-type]
    head[:4] = b"XXXX"  # a buffer changed after the write is sent as it was written
    transport.write(b"{}")
    assert underlying.sends == []
    await asyncio.sleep(0)  # one turn of the loop
    assert underlying.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    transport.close()
    assert underlying.sends[1:] == [b"HTTP/1.1 408 Request Timeout\r\n\r\n", "closed"]
    await asyncio.sleep(0)
    assert len(underlying.sends) == 3, "nothing is sent twice, nor after the close"
    assert transport.get_extra_info("peername") == "the socket's peername"


async def test_a_response_completed_goes_out_at_once_not_at_the_next_turn_of_the_loop() -> None:
    """What the protocol does as each response completes: a long poll's answer leaves
    right after its last look for a hang-up, not after every other answer of the turn."""
    underlying = RecordingTransport()
    transport = CoalescedWrites(underlying, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    transport.flush()
    assert underlying.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]  # one send, now
    await asyncio.sleep(0)
    assert len(underlying.sends) == 1, "nothing is sent twice"


def received(sock: socket.socket) -> bytes:
    """Everything the other end has sent so far."""
    sock.setblocking(False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_response_is_sent_on_the_socket_itself_unless_the_transport_holds_some_back() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        transport = RecordingTransport(ours)
        coalesced = CoalescedWrites(transport, loop)  # type: ignore[arg-type]
        coalesced.write(b"head,")
        coalesced.write(b"body")
        await asyncio.sleep(0)
        assert (received(theirs), transport.sends) == (b"head,body", [])

        transport.held_back = 5  # what follows must queue behind it, in the transport
        coalesced.write(b"later")
        await asyncio.sleep(0)
        assert (received(theirs), transport.sends) == (b"", [b"later"])

        transport.held_back = 0
        big = bytes(range(256)) * 40_000  # more than a socket's buffer takes at once
        coalesced.write(big)
        await asyncio.sleep(0)
        taken = received(theirs)
        assert 0 < len(taken) < len(big)
        assert taken + transport.sends[-1] == big  # type: ignore[operator]
