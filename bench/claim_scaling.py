"""How fast `GET /task` hands out tasks while claimed-but-unreported tasks pile up.

What it measures
    For each level L of claimed-but-unreported tasks (default 0, 1,000, 10,000, 100,000),
    the throughput of `GET /task` (the legacy worker protocol's claim) over `--requests`
    requests issued by `--concurrency` concurrent keep-alive clients. Every measured
    request claims a task too, so during the measurement at level L the claimed count
    grows from L (plus a warm-up, below) to L + requests; nothing is ever reported.

    It runs the real `agl serve` daemon in a subprocess, once per store (SQLite, the
    default, and `--memory`), and, if `--legacy-python` names a Python with
    agentlightning 0.3.0 installed, 0.3.0's legacy `AgentLightningServer` for comparison.
    0.3.0 copies and scans its whole dict of claimed tasks on every `GET /task` (to find
    timed-out ones), so its throughput is expected to fall as the level grows; agl finds
    expired claims through an index / a heap, so it should stay flat.

How levels are reached
    agl: by claiming through `GET /task` over HTTP (`--fill-concurrency` connections of the
    minimal HTTP/1.1 client described below), so the claim rate while filling is reported
    too. 0.3.0: its server has no HTTP route for queueing, so a small inline script queues
    the tasks in-process; it also reaches each level in-process (its store's
    `get_next_task`, the same call `GET /task` makes, minus the scan being measured),
    because claiming 100,000 tasks over HTTP would take minutes of the very slowdown being
    measured. 0.3.0 logs every request through uvicorn's access log at its hard-wired log
    level "info"; the bench turns that logger off (agl runs with `--log-level warning`,
    which has no access log), so both servers are compared without logging costs.

    A measurement stops early after `--max-seconds` (flagged "capped" in the output).
    Each level starts with `--concurrency` untimed warm-up claims. Tasks are queued up
    front: max(levels) + (requests + concurrency) x number of levels.

    Client and servers share the machine: the client is one asyncio process (httpx), each
    server its own process. The "srv CPU us/req" column (server CPU time per request, from
    /proc) shows the server's cost independently of the client; "cli CPU" near 100% means
    the client, not the server, limited the throughput. httpx (the default `--client`)
    costs more CPU per request than agl does, so on 2 cores it caps every server near
    1,000 req/s and flattens the differences; `--client raw` times the same requests with a
    minimal keep-alive HTTP/1.1 client so that the servers set the pace.

How to run (from the repository root; needs agl_cli installed, and httpx)
    python bench/claim_scaling.py --legacy-python /path/to/venv-with-agentlightning/bin/python
    python bench/claim_scaling.py --client raw --legacy-python ...   # server-bound figures
    python bench/claim_scaling.py --quick                      # smoke run, agl only
    python bench/claim_scaling.py --stores memory --levels 0,5000 --requests 1000 --json -
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

DEFAULT_LEVELS = (0, 1_000, 10_000, 100_000)
QUICK_LEVELS = (0, 100, 1_000)
QUEUE_BATCH = 10_000
STARTUP_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
LEGACY_NAME = "agentlightning 0.3.0"

# Every child process we started and have not reaped yet: killed at exit whatever happens.
_children: dict[int, asyncio.subprocess.Process] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid, proc in list(_children.items()):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# measurement ------------------------------------------------------------------------------


@dataclass
class ClaimRun:
    """The outcome of a batch of `GET /task` requests."""

    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    capped: bool = False
    latencies: list[float] | None = None
    first_error: str | None = None


Fetch = Callable[[], Awaitable[tuple[int, bytes]]]
"""One `GET /task` on one client connection: (status, body)."""


class RawConnection:
    """A keep-alive HTTP/1.1 connection that only sends `GET /task`: a client costing almost nothing.

    httpx spends several times the server's CPU time per request, so on a small machine it,
    not the server, sets the pace; this client leaves the CPU to the server.
    """

    def __init__(self, url: str) -> None:
        self.url = httpx.URL(url)
        self.request = f"GET /task HTTP/1.1\r\nHost: {self.url.host}:{self.url.port}\r\n\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get_task(self) -> tuple[int, bytes]:
        try:
            if self.reader is None or self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.url.host, self.url.port)
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if match is None:
                raise ValueError(f"an answer without Content-Length: {head[:200]!r}")
            return int(head.split(b" ", 2)[1]), await self.reader.readexactly(int(match.group(1)))
        except BaseException:
            await self.close()  # the connection's state is unknown: start afresh next time
            raise

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def connections(url: str, client: str, concurrency: int) -> AsyncIterator[list[Fetch]]:
    """`concurrency` ways to claim, each on its own connection, opened before this yields."""
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as pool:
            # Open the pool without claiming anything (404 on both servers).
            await asyncio.gather(*(pool.get("/resources/latest") for _ in range(concurrency)))

            async def fetch() -> tuple[int, bytes]:
                response = await pool.get("/task")
                return response.status_code, response.content

            yield [fetch] * concurrency
    else:
        raws = [RawConnection(url) for _ in range(concurrency)]
        try:
            for raw in raws:
                raw.reader, raw.writer = await asyncio.open_connection(raw.url.host, raw.url.port)
            yield [raw.get_task for raw in raws]
        finally:
            for raw in raws:
                await raw.close()


async def claim_many(
    fetchers: list[Fetch],
    count: int,
    seen: set[str],
    max_seconds: float | None = None,
    keep_latencies: bool = False,
) -> ClaimRun:
    """Issue `count` claims, one worker per fetcher; every answer must hand out a new task."""
    run = ClaimRun(latencies=[] if keep_latencies else None)
    issued = 0
    start = time.perf_counter()
    deadline = start + max_seconds if max_seconds else None

    async def worker(fetch: Fetch) -> None:
        nonlocal issued
        while issued < count:
            if deadline is not None and time.perf_counter() >= deadline:
                run.capped = True
                return
            issued += 1
            sent = time.perf_counter()
            problem: str | None = None
            try:
                status, content = await fetch()
                if status != 200:
                    problem = f"HTTP {status}: {content[:200]!r}"
                else:
                    body = json.loads(content)
                    if not body.get("is_available"):
                        problem = "is_available is false (queue ran dry?)"
                    else:
                        rollout_id = body["task"]["rollout_id"]
                        if rollout_id in seen:
                            problem = f"task {rollout_id} handed out twice"
                        seen.add(rollout_id)
            except (
                httpx.HTTPError,
                OSError,
                asyncio.IncompleteReadError,
                ValueError,
                KeyError,
                TypeError,
            ) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if run.latencies is not None:
                run.latencies.append(time.perf_counter() - sent)
            if problem is None:
                run.ok += 1
            else:
                run.errors += 1
                run.first_error = run.first_error or problem

    await asyncio.gather(*(worker(fetch) for fetch in fetchers))
    run.seconds = time.perf_counter() - start
    return run


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    server: str
    level: int
    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    ratio_vs_level_0: float | None
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_request: float | None
    client_cpu_share: float
    capped: bool
    fill_claims_per_second: float | None
    fill_note: str


# servers ----------------------------------------------------------------------------------


class Server(ABC):
    """A server under test, running in its own process."""

    name: str
    url: str
    proc: asyncio.subprocess.Process | None = None
    stderr_path: Path | None = None

    def stderr_tail(self, chars: int = 3000) -> str:
        """The end of what the server wrote to stderr."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-chars:]

    @abstractmethod
    async def start(self, tasks: int) -> None:
        """Start the server with `tasks` tasks queued."""

    @abstractmethod
    async def fill(self, count: int, seen: set[str]) -> tuple[float | None, str]:
        """Claim `count` more tasks without reporting them; return (claims/s, how)."""

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        for stop_signal in (signal.SIGINT, signal.SIGKILL):
            if proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(stop_signal)
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.returncode is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        # The exit status is in; let asyncio close the pipes (bounded, in case one stays open).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 2)
        _children.pop(proc.pid, None)
        self.proc = None

    async def _spawn(
        self, *argv: str, stderr_path: Path, env: dict[str, str] | None = None, control: bool = False
    ) -> None:
        """Start `argv` with its output in `stderr_path`; a `control`led one talks on stdin/stdout."""
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as output:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if control else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if control else output,
                stderr=output,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; we stop it
            )
        _children[self.proc.pid] = self.proc


class AglServer(Server):
    def __init__(self, store: str, workdir: Path, command: list[str], fill_concurrency: int) -> None:
        self.store = store
        self.command = command
        self.fill_concurrency = fill_concurrency
        self.name = f"agl ({store})"
        self.state_dir = workdir / f"agl-{store}"
        self.token = ""

    async def start(self, tasks: int) -> None:
        argv = [*self.command, "serve", "--port", "0", "--state-dir", str(self.state_dir)]
        argv += ["--task-timeout", "3600", "--log-level", "warning"]
        if self.store == "memory":
            argv.append("--memory")
        stderr_path = self.state_dir.with_suffix(".stderr")
        self.state_dir.mkdir(parents=True)
        await self._spawn(*argv, stderr_path=stderr_path)
        self.url = await self._wait_for_address(stderr_path)
        self.token = (self.state_dir / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120) as client:
            for first in range(0, tasks, QUEUE_BATCH):
                batch = [
                    {"input": {"prompt": f"task {i}"}} for i in range(first, min(first + QUEUE_BATCH, tasks))
                ]
                response = await client.post("/v1/tasks", json={"tasks": batch})
                if response.status_code != 201:
                    raise RuntimeError(
                        f"queueing tasks failed: HTTP {response.status_code} {response.text[:300]}"
                    )

    async def _wait_for_address(self, stderr_path: Path) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            text = stderr_path.read_text(errors="replace")
            match = re.search(r"listening on (http://\S+)", text)
            if match:
                return match.group(1)
            if self.proc.returncode is not None:
                raise RuntimeError(f"agl serve exited with {self.proc.returncode}:\n{text}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"agl serve did not start within {STARTUP_TIMEOUT:.0f}s")

    async def fill(self, count: int, seen: set[str]) -> tuple[float | None, str]:
        async with connections(self.url, "raw", self.fill_concurrency) as fetchers:
            run = await claim_many(fetchers, count, seen)
        if run.errors:
            raise RuntimeError(f"{run.errors} claims failed while filling; first: {run.first_error}")
        return run.ok / run.seconds, "HTTP"


# The 0.3.0 side: queue in-process, print READY <port>, then obey "claim N" lines on stdin.
LEGACY_SCRIPT = r"""
import asyncio, logging, sys, time, warnings
warnings.simplefilter("ignore")
from agentlightning.server import AgentLightningServer

async def main() -> None:
    tasks = int(sys.argv[1])
    server = AgentLightningServer("127.0.0.1", 0, task_timeout_seconds=3600)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("agentlightning").setLevel(logging.WARNING)
    await server.start()
    if not server._uvicorn_server.started:
        raise SystemExit("the 0.3.0 server did not start")
    port = server._uvicorn_server.servers[0].sockets[0].getsockname()[1]
    for i in range(tasks):
        await server.queue_task({"prompt": f"task {i}"})
    print(f"READY {port}", flush=True)
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin)
    while line := await reader.readline():  # EOF: the bench is gone, so stop
        command, count = line.split()
        assert command == b"claim"
        start = time.perf_counter()
        for _ in range(int(count)):
            if await server._store.get_next_task() is None:
                raise SystemExit("queue ran dry while filling")
        print(f"CLAIMED {int(count)} {time.perf_counter() - start:.6f}", flush=True)
    await server.stop()

asyncio.run(main())
"""


class LegacyServer(Server):
    name = LEGACY_NAME

    def __init__(self, python: str, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir

    async def start(self, tasks: int) -> None:
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
        stderr_path = self.workdir / "legacy.stderr"
        await self._spawn(
            self.python, "-c", LEGACY_SCRIPT, str(tasks), stderr_path=stderr_path, env=env, control=True
        )
        words = await self._read_line(STARTUP_TIMEOUT)
        if words[0] != "READY":
            raise RuntimeError(f"unexpected line from the 0.3.0 server: {' '.join(words)}")
        self.url = f"http://127.0.0.1:{words[1]}"

    async def fill(self, count: int, seen: set[str]) -> tuple[float | None, str]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"claim {count}\n".encode())
        await self.proc.stdin.drain()
        words = await self._read_line(STARTUP_TIMEOUT)
        if words[0] != "CLAIMED":
            raise RuntimeError(f"unexpected line from the 0.3.0 server: {' '.join(words)}")
        return None, "in-process"

    async def _read_line(self, timeout: float) -> list[str]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"the 0.3.0 server did not answer within {timeout:.0f}s") from None
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"the 0.3.0 server exited with {self.proc.returncode}:\n{self.stderr_tail()}")
        return line.decode().split()


def legacy_available(python: str) -> str | None:
    """None if `python` can import agentlightning 0.3.0's legacy server, else why not."""
    import subprocess

    if not shutil.which(python) and not Path(python).is_file():
        return f"{python} not found"
    probe = "import agentlightning, agentlightning.server; print(agentlightning.__version__)"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    try:
        done = subprocess.run(
            [python, "-W", "ignore", "-c", probe], capture_output=True, text=True, timeout=120, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}"
    if done.returncode != 0:
        return f"agentlightning is not importable in {python}"
    version = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"
    if version != "0.3.0":
        log(f"note: {python} has agentlightning {version}, not 0.3.0")
    return None


# the bench --------------------------------------------------------------------------------


async def measure(server: Server, level: int, seen: set[str], args: argparse.Namespace) -> tuple[Result, int]:
    """Time `args.requests` claims at the current level, on fresh connections.

    Returns the result and how many tasks were claimed in all (the warm-up included).
    """
    assert server.proc is not None
    async with connections(server.url, args.client, args.concurrency) as fetchers:
        warm = await claim_many(fetchers, args.concurrency, seen)
        if warm.errors:
            raise RuntimeError(f"warm-up claims failed; first: {warm.first_error}")
        cpu_before = process_cpu_seconds(server.proc.pid)
        client_cpu_before = time.process_time()
        run = await claim_many(fetchers, args.requests, seen, args.max_seconds, keep_latencies=True)
        client_cpu = time.process_time() - client_cpu_before
        cpu_after = process_cpu_seconds(server.proc.pid)
    done = run.ok + run.errors
    if run.errors:
        log(f"[{server.name}] {run.errors} errors at level {level:,}; first: {run.first_error}")
    latencies = sorted(run.latencies or [0.0])
    server_cpu = None
    if cpu_before is not None and cpu_after is not None and done:
        server_cpu = (cpu_after - cpu_before) / done * 1e6
    result = Result(
        server=server.name,
        level=level,
        requests=done,
        errors=run.errors,
        seconds=run.seconds,
        requests_per_second=run.ok / run.seconds,
        ratio_vs_level_0=None,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        server_cpu_us_per_request=server_cpu,
        client_cpu_share=client_cpu / run.seconds,
        capped=run.capped,
        fill_claims_per_second=None,
        fill_note="-",
    )
    return result, warm.ok + run.ok


async def bench_server(server: Server, levels: list[int], args: argparse.Namespace) -> list[Result]:
    tasks = max(levels) + (args.requests + args.concurrency) * len(levels)
    log(f"[{server.name}] starting, queueing {tasks:,} tasks ...")
    started = time.perf_counter()
    results: list[Result] = []
    try:
        await server.start(tasks)
        log(f"[{server.name}] ready at {server.url} after {time.perf_counter() - started:.1f}s")
        seen: set[str] = set()  # rollout ids handed out over HTTP, to catch a task handed out twice
        claimed = 0
        for level in levels:
            fill_rate: float | None = None
            how = "-"
            if level > claimed:
                fill_start = time.perf_counter()
                fill_rate, how = await server.fill(level - claimed, seen)
                log(
                    f"[{server.name}] filled {claimed:,} -> {level:,} claimed ({how}) in "
                    f"{time.perf_counter() - fill_start:.1f}s"
                    + (f", {fill_rate:,.0f} claims/s" if fill_rate else "")
                )
                claimed = level
            result, measured = await measure(server, level, seen, args)
            claimed += measured
            result.fill_claims_per_second, result.fill_note = fill_rate, how
            results.append(result)
            log(
                f"[{server.name}] level {level:,}: {result.requests_per_second:,.0f} req/s"
                f" over {result.requests:,} requests"
                + (" (capped by --max-seconds)" if result.capped else "")
            )
    except Exception:
        tail = server.stderr_tail()
        log(f"[{server.name}] failed; the end of its stderr:\n{tail}" if tail else f"[{server.name}] failed")
        raise
    finally:
        await server.stop()
    base = next((r.requests_per_second for r in results if r.level == levels[0]), None)
    for result in results:
        result.ratio_vs_level_0 = result.requests_per_second / base if base else None
    return results


def print_table(results: list[Result], args: argparse.Namespace, notes: list[str]) -> None:
    header = (
        f"{'server':<22} {'claimed':>8} {'requests':>8} {'req/s':>8} {'vs L0':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'srv CPU us/req':>14} {'cli CPU':>7} {'fill claims/s':>13}"
    )
    print(
        f"GET /task throughput vs claimed-but-unreported tasks "
        f"({args.client} client, concurrency {args.concurrency}, up to {args.requests:,} requests per level, {os.cpu_count()} CPUs)"
    )
    print(header)
    print("-" * len(header))
    previous = None
    for r in results:
        if previous is not None and r.server != previous:
            print()
        previous = r.server
        ratio = f"{r.ratio_vs_level_0:.2f}" if r.ratio_vs_level_0 is not None else "-"
        cpu = f"{r.server_cpu_us_per_request:,.0f}" if r.server_cpu_us_per_request is not None else "-"
        fill = f"{r.fill_claims_per_second:,.0f}" if r.fill_claims_per_second else r.fill_note
        requests = f"{r.requests:,}" + ("*" if r.capped else "")
        errors = f"  ({r.errors} errors)" if r.errors else ""
        print(
            f"{r.server:<22} {r.level:>8,} {requests:>8} {r.requests_per_second:>8,.0f} {ratio:>6} "
            f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {cpu:>14} {r.client_cpu_share:>7.0%} {fill:>13}{errors}"
        )
    print()
    print(
        "claimed: claimed-but-unreported tasks before the level's untimed warm-up of "
        f"{args.concurrency} claims; the timed requests then run from claimed + {args.concurrency} upwards."
    )
    print(
        "fill claims/s: GET /task rate while filling up to this level, with a plain keep-alive HTTP/1.1 "
        "client (0.3.0 fills in-process)."
    )
    print("srv CPU us/req: CPU time of the server process per timed request, from /proc.")
    print("cli CPU: share of one core the bench client used while timing (near 100%: client-bound).")
    if any(r.capped for r in results):
        print(f"*: measurement stopped at --max-seconds {args.max_seconds:g} before all requests were made.")
    for note in notes:
        print(note)


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not levels or levels[0] < 0:
        raise argparse.ArgumentTypeError("levels must be non-negative integers")
    return levels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GET /task throughput as claimed-but-unreported tasks grow, agl vs agentlightning 0.3.0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--levels", type=parse_levels, default=list(DEFAULT_LEVELS), help="claimed levels, e.g. 0,1000"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: levels {QUICK_LEVELS}, 300 requests"
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured GET /task requests per level")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients while measuring")
    parser.add_argument(
        "--client",
        choices=("httpx", "raw"),
        default="httpx",
        help="client that times GET /task: httpx, or a minimal HTTP/1.1 one that leaves the CPU to the server",
    )
    parser.add_argument(
        "--fill-concurrency", type=int, default=16, help="concurrent connections while filling (agl)"
    )
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop a measurement after this long")
    parser.add_argument(
        "--stores", default="sqlite,memory", help="agl stores to bench: sqlite, memory, or none"
    )
    parser.add_argument(
        "--legacy-python", help="a Python with agentlightning 0.3.0, to bench its legacy server"
    )
    parser.add_argument(
        "--agl-command",
        type=shlex.split,
        default=[sys.executable, "-m", "agl_cli"],
        help="how to run agl (its `serve` subcommand is appended)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout only)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        if args.levels == list(DEFAULT_LEVELS):
            args.levels = list(QUICK_LEVELS)
        if args.requests == 2000:
            args.requests = 300
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip() and s.strip() != "none"]
    for store in args.stores:
        if store not in ("sqlite", "memory"):
            parser.error(f"unknown store {store!r}; use sqlite, memory or none")
    if args.requests < 1 or args.concurrency < 1 or args.fill_concurrency < 1:
        parser.error("--requests, --concurrency and --fill-concurrency must be at least 1")
    return args


async def run_all(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], list[str]]:
    main_task = asyncio.current_task()
    assert main_task is not None
    with contextlib.suppress(NotImplementedError):  # SIGTERM stops us like Ctrl-C does
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    servers: list[Server] = [
        AglServer(store, workdir, args.agl_command, args.fill_concurrency) for store in args.stores
    ]
    notes: list[str] = []
    if args.legacy_python:
        why_not = legacy_available(args.legacy_python)
        if why_not:
            notes.append(f"{LEGACY_NAME}: skipped ({why_not}).")
        else:
            servers.append(LegacyServer(args.legacy_python, workdir))
            notes.append(
                f"{LEGACY_NAME}: reached each level in-process (no HTTP route for queueing; 100,000 "
                "claims over HTTP would take minutes), uvicorn access log turned off."
            )
    else:
        notes.append(f"{LEGACY_NAME}: skipped (give --legacy-python PATH to bench it).")
    for note in notes:
        log(note)
    results: list[Result] = []
    for server in servers:
        results += await bench_server(server, args.levels, args)
    return results, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agl-claim-bench-"))
    try:
        results, notes = asyncio.run(run_all(args, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; servers stopped")
        return 130
    finally:
        _kill_leftovers()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json == "-":
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    print_table(results, args, notes)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
