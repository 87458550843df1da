"""Connections a worker does not make cannot crowd out the ones it does."""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
from daemon import Daemon

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
            answer = httpx.get(f"{daemon.url}/task", timeout=10).json()
        assert answer["task"]["rollout_id"] == rollout_id
        assert "Too many open files" not in daemon.log_path.read_text()
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
            b"POST /rollout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        answer = httpx.get(f"{daemon.url}/task", timeout=10).json()
    assert answer["task"]["rollout_id"] == rollout_id
