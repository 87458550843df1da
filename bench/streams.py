"""What open streams cost the daemon: CPU per rollout reported, and CPU while idle.

    python bench/streams.py [--streams 1,100,300] [--reports 50] [--kb 14] [--idle 5]

For each count of streams, a fresh `agl serve` (durable default, in a temporary
directory) gets that many readers of `GET /v1/rollouts/stream?since=now` and as many of
`GET /v1/dashboard/stream?since=now`, each on a connection of its own, read as fast as
they come by this process. The daemon's CPU time is then
taken (from /proc) over `--idle` seconds with nothing happening, and over `--reports` rollouts of about
`--kb` KB reported one after another through the worker routes, up to the moment every
reader has seen the last one. It prints CPU milliseconds per report and per idle second
for each count. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import HOST, LISTENING, Child, task_spec

ROUTES = ("/v1/rollouts/stream?since=now", "/v1/dashboard/stream?since=now")


class Readers:
    """Stream readers on an event loop of their own, counting the rollouts each has seen."""

    def __init__(self, host: str, port: int, token: str, count: int) -> None:
        self.seen: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []  # the loop holds its tasks only weakly
        self._host, self._port, self._token, self._count = host, port, token, count
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def open(self, timeout: float) -> None:
        """Open every stream, and return once each has had its answer's head."""
        asyncio.run_coroutine_threadsafe(self._open_all(), self._loop).result(timeout)

    def total(self) -> int:
        return sum(self.seen)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._hang_up(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _hang_up(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _open_all(self) -> None:
        heads = [self._loop.create_future() for _ in range(self._count * len(ROUTES))]
        for index, head in enumerate(heads):
            self.seen.append(0)
            self._tasks.append(self._loop.create_task(self._read(index, ROUTES[index % len(ROUTES)], head)))
        await asyncio.gather(*heads)

    async def _read(self, index: int, route: str, head: asyncio.Future[None]) -> None:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        writer.write(
            f"GET {route} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {self._token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        head.set_result(None)
        while line := await reader.readline():
            if line.rstrip() == b"event: rollout":  # the rollout stream: one rollout an event
                self.seen[index] += 1
            elif line.startswith(b'data: {"rollouts"'):  # the dashboard's: a line each
                self.seen[index] += line.count(b'"rollout_id"')


def cpu_seconds(pid: int) -> float:
    """The CPU time of every thread of `pid`, to the nanosecond (/proc's ticks are 10 ms)."""
    return (
        sum(int(stat.read_text().split()[0]) for stat in Path(f"/proc/{pid}/task").glob("*/schedstat")) / 1e9
    )


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.005)


def measure(streams: int, reports: int, kb: int, idle: float, scratch: Path) -> tuple[float, float]:
    """CPU ms a report and CPU ms an idle second, with `streams` streams of each kind open."""
    state = scratch / f"state-{streams}"
    state.mkdir()
    daemon = Child(
        [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state),
         "--log-level", "warning"],
        scratch / f"agl-{streams}.log",
    )  # fmt: skip
    url = daemon.wait_for(LISTENING, 60, "agl serve").group(1).replace("0.0.0.0", HOST)
    port = int(url.rsplit(":", 1)[1])
    ids = ",".join(["12345"] * (kb * 1024 // 6))
    token = (state / "token").read_text().strip()
    readers = Readers(HOST, port, token, streams)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            client.post(
                "/v1/tasks", json={"tasks": [task_spec(i) for i in range(reports)]}
            ).raise_for_status()
            readers.open(60)
            started = cpu_seconds(daemon.pid)
            time.sleep(idle)  # the measured span itself: nothing happens in it
            idle_ms = (cpu_seconds(daemon.pid) - started) * 1000 / idle
            started = cpu_seconds(daemon.pid)
            for _ in range(reports):
                task = client.get("/task").json()["task"]
                body = (
                    f'{{"rollout_id": "{task["rollout_id"]}", "final_reward": 0.5, '
                    f'"triplets": [{{"prompt": {{"token_ids": [{ids}]}}, "response": {{}}, "reward": 0.5}}]}}'
                )
                client.post(
                    "/rollout", content=body, headers={"content-type": "application/json"}
                ).raise_for_status()
            expected = reports * streams * len(ROUTES)
            wait_until(
                lambda: readers.total() >= expected,
                120,
                f"every reader seeing every rollout ({readers.seen})",
            )
            report_ms = (cpu_seconds(daemon.pid) - started) * 1000 / reports
    finally:
        readers.close()
        daemon.stop()
    return report_ms, idle_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams", default="1,100,300", help="counts of streams of each kind, comma-separated"
    )
    parser.add_argument("--reports", type=int, default=50)
    parser.add_argument("--kb", type=int, default=14, help="the size of each rollout, about")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU to measure")
    args = parser.parse_args()
    print(f"{'streams of each kind':>22}  {'CPU ms a report':>16}  {'CPU ms an idle second':>22}")
    with tempfile.TemporaryDirectory(prefix="agl-streams-") as scratch:
        for streams in (int(count) for count in args.streams.split(",")):
            report_ms, idle_ms = measure(streams, args.reports, args.kb, args.idle, Path(scratch))
            print(f"{streams:>22,}  {report_ms:>16.1f}  {idle_ms:>22.1f}", flush=True)


if __name__ == "__main__":
    main()
