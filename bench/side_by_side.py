"""agl beside a bare Starlette ceiling and agentlightning 0.3.0, in one run, with one table.

What runs
    Four servers, one at a time (start, measure, stop, so that they never compete for the
    CPU), all on 127.0.0.1 with ephemeral ports:
      agl (durable)   `agl serve` on its default SQLite store
      agl (memory)    `agl serve --memory`
      ceiling         `bench/ceiling_app.py`: the legacy routes answered with canned JSON by
                      a bare Starlette app on the same uvicorn, the best this stack can do
      0.3.0           agentlightning 0.3.0's legacy `AgentLightningServer`, run by
                      `bench/legacy_server.py` under the compat venv's Python, uvicorn's
                      access log turned off (agl runs with --log-level warning)
    Both agl servers and 0.3.0 run with a one-hour task timeout, so that nothing is
    re-queued during a run. The load comes from wrk with one thread (`-t1`) and the Lua
    scripts in `bench/wrk/`; ratios are taken between figures of this one run only.

Scenarios (`--only` picks some)
    small      Claim + report cycles (`GET /task`, then `POST /rollout` for a claimed id) on
               32 connections, with a small report body; every server.
    realistic  The same with a ~40 KB report: 4 triplets of ~1,200 token ids and 24
               OpenTelemetry-style trace spans; every server.
    flat       `GET /task` only on agl (durable), never reporting, past 100,000
               claimed-but-unreported tasks: throughput after 100,000 vs at the start.
               Each round runs it on a fresh store; the round with the median ratio
               stands for the scenario (a run is a few seconds at each end, so one slow
               second of the machine would otherwise decide it).
    longpoll   A worker waits on `GET /task?wait=30`; one task is queued through
               `POST /v1/tasks`; the time from sending the POST to the worker having the
               task, repeated (agl durable).
    commit     `GET /task` latency while a 1,000,000-task batch commits (agl durable); the
               commit starts 2 s into the wrk run, which goes on after the commit request
               returns until claims are back to at least half their rate before it (any
               background work for the batch falls in the window).
    queue      `agl queue` of 1,000,000 tasks from JSON Lines, run by
               `bench/queue_million.py`: seconds and the daemon's peak RSS.

    Before a measured cycle run each server gets twice as many queued tasks as its warm-up
    rate would claim in the run (at least 10,000 a second): agl through `POST /v1/tasks`,
    0.3.0 in-process (it has no route for queueing; `legacy_server.py` does it on request).
    A run that did run dry is flagged. Latencies come from wrk and cover every request of a
    run, claims and reports alike.

How to run (from the repository root; needs agl installed with its test extras, for httpx
and psutil, and wrk, which `bench/setup.sh` installs)
    python bench/side_by_side.py                   # everything; about 4 minutes on 2 cores
    python bench/side_by_side.py --quick           # smoke run, well under a minute
    python bench/side_by_side.py --only small,realistic --duration 5 --json out.json

    Without `--legacy-python`, 0.3.0 runs from the compat venv of `tests/compat_env.py`,
    which a full run builds if needed (1-2 minutes); `--quick` skips 0.3.0 instead and
    says so. Nothing is asserted: the bench prints figures and whether each target is met.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from _servers import LISTENING, Child, kill_children, task_spec  # noqa: E402
from claim_scaling import process_cpu_seconds  # noqa: E402
from queue_million import TARGET_RSS_MB, TARGET_SECONDS  # noqa: E402

SCENARIOS = ("small", "realistic", "flat", "longpoll", "commit", "queue")
AGL_DURABLE, AGL_MEMORY, CEILING, LEGACY = "agl (durable)", "agl (memory)", "ceiling", "0.3.0 legacy"
COMPAT_PYTHON = REPO / ".agl-test" / "compat-venv" / "bin" / "python"
COMPAT_READY = REPO / ".agl-test" / "compat-venv" / ".agl-compat-ready"

TASK_TIMEOUT = 3600
QUEUE_CHUNK = 10_000
CYCLE_RATE_CAP = 15_000
"""Tasks queued per second of a warm-up (or of a run without one): more cycles than any
server here makes (the ceiling, ~10,000 a second on 2 cores), so that none runs dry."""
STARTUP_TIMEOUT = 180.0
WRK_TIMEOUT = "60s"  # wrk's per-request timeout: a slow answer is measured, not dropped
RESULT_LINE = "AGL_WRK_RESULT "
STOP_LINE = "AGL_WRK_STOP"


@dataclass
class Plan:
    """How much of everything a run does; `--quick` shrinks it.

    In the commit scenario wrk claims for `commit_lead` seconds before the commit request,
    and after it returns until a whole second has had at least half the claims of a second
    before it (at least `commit_settle`, at most `commit_max_settle` seconds), so that the
    window also covers any work the daemon goes on doing for the batch in the background.
    `commit_ordinary_tasks` are queued beforehand so that claims find tasks until the batch
    is in, and run out soon after, so that the window also has claims of the batch's own
    tasks: agl hands out 20,000-35,000 a second here.
    """

    duration: int
    warmup: int
    rounds: int
    connections: int
    flat_claims: int
    flat_after: int
    flat_mark_every: int
    flat_warmup: float
    flat_base_seconds: float
    pickups: int
    batch_tasks: int
    commit_ordinary_tasks: int
    queue_tasks: int
    max_wrk_seconds: int
    commit_lead: float
    commit_settle: float
    commit_max_settle: float


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(
            duration=1,
            warmup=0,
            rounds=1,
            connections=args.connections,
            flat_claims=3_000,
            flat_after=3_000,
            flat_mark_every=100,
            flat_warmup=0.2,
            flat_base_seconds=0.5,
            pickups=20,
            batch_tasks=20_000,
            commit_ordinary_tasks=60_000,
            queue_tasks=20_000,
            max_wrk_seconds=30,
            commit_lead=2.0,
            commit_settle=1.0,
            commit_max_settle=10.0,
        )
    else:
        plan = Plan(
            duration=10,
            warmup=2,
            rounds=3,
            connections=args.connections,
            flat_claims=100_000,
            flat_after=50_000,
            flat_mark_every=1_000,
            flat_warmup=1.0,
            flat_base_seconds=5.0,
            pickups=200,
            batch_tasks=1_000_000,
            commit_ordinary_tasks=90_000,
            queue_tasks=1_000_000,
            max_wrk_seconds=600,
            commit_lead=2.0,
            commit_settle=6.0,
            commit_max_settle=120.0,
        )
    if args.duration is not None:
        plan.duration = args.duration
    if args.warmup is not None:
        plan.warmup = args.warmup
    if args.rounds is not None:
        plan.rounds = args.rounds
    return plan


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# the servers ------------------------------------------------------------------------------


class Server:
    """A server under test in its own process; `start` returns once it answers."""

    name: str
    child: Child | None = None
    url: str = ""

    def start(self, tasks: int) -> None:
        raise NotImplementedError

    def queue(self, count: int) -> None:
        """Queue `count` more tasks (a no-op where tasks are queued at start or canned)."""

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def wait_until_answering(self, path: str) -> None:
        """Wait until an HTTP request is answered at all (whatever the status)."""
        assert self.child is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                httpx.get(self.url + path, timeout=5)
                return
            except httpx.TransportError:
                if self.child.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} does not answer:\n{self.child.tail()}") from None
                time.sleep(0.05)


class AglServer(Server):
    """`agl serve`: the one installed here, or the one in the source tree `source`."""

    def __init__(self, memory: bool, workdir: Path, source: Path | None = None, name: str = "") -> None:
        self.memory = memory
        self.name = name or (AGL_MEMORY if memory else AGL_DURABLE)
        self.workdir = workdir
        self.source = source
        self.client: httpx.Client | None = None
        self.queued = 0
        self.state_dir = Path()

    def start(self, tasks: int = 0) -> None:
        state_dir = self.state_dir = Path(tempfile.mkdtemp(prefix="agl-", dir=self.workdir))
        argv = [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state_dir)]
        argv += ["--task-timeout", str(TASK_TIMEOUT), "--log-level", "warning"]
        if self.memory:
            argv.append("--memory")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
        if self.source is not None:  # run from the tree, its `agl_cli` comes first on the path
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        self.child = Child(argv, state_dir.with_suffix(".log"), env=env, cwd=self.source)
        self.url = self.child.wait_for(LISTENING, STARTUP_TIMEOUT, self.name).group(1)
        token = (state_dir / "token").read_text().strip()
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=600
        )
        self.wait_until_answering("/health")
        self.queue(tasks)

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        assert self.client is not None
        response = self.client.request(method, path, json=body)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    def queue(self, count: int) -> None:
        """Queue tasks through `POST /v1/tasks`, 10,000 a request."""
        for first in range(self.queued, self.queued + count, QUEUE_CHUNK):
            last = min(first + QUEUE_CHUNK, self.queued + count)
            self.call("POST", "/v1/tasks", {"tasks": [task_spec(i) for i in range(first, last)]}, 201)
        self.queued += count

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        super().stop()


class CeilingServer(Server):
    name = CEILING

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self, tasks: int = 0) -> None:
        argv = [sys.executable, str(BENCH / "ceiling_app.py")]
        self.child = Child(argv, self.workdir / "ceiling.log")
        self.url = self.child.wait_for(LISTENING, STARTUP_TIMEOUT, self.name).group(1)
        self.wait_until_answering("/resources/latest")


class LegacyServer(Server):
    name = LEGACY

    def __init__(self, python: str, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self.queued = 0

    def start(self, tasks: int = 0) -> None:
        argv = [self.python, str(BENCH / "legacy_server.py"), "--tasks", str(tasks)]
        argv += ["--task-timeout", str(TASK_TIMEOUT), "--control"]
        self.child = Child(argv, self.workdir / "legacy.log", stdin_pipe=True)
        ready = re.compile(r"legacy ready: .* listening on (http://\S+)")
        self.url = self.child.wait_for(ready, STARTUP_TIMEOUT, self.name).group(1)
        self.queued = tasks
        self.wait_until_answering("/resources/latest")

    def queue(self, count: int) -> None:
        """Queue tasks in-process: the 0.3.0 server has no route for it (legacy_server.py does it)."""
        assert self.child is not None and self.child.proc.stdin is not None
        self.queued += count
        self.child.proc.stdin.write(f"queue {count}\n".encode())
        self.child.proc.stdin.flush()
        done = re.compile(rf"legacy queued {count}, {self.queued} in all")
        self.child.wait_for(done, STARTUP_TIMEOUT, f"{self.name} queueing")


@contextlib.contextmanager
def running(server: Server, tasks: int = 0) -> Iterator[Server]:
    began = time.perf_counter()
    log(f"[{server.name}] starting" + (f" with {tasks:,} tasks to queue" if tasks else ""))
    try:
        server.start(tasks)
        log(f"[{server.name}] ready at {server.url} after {time.perf_counter() - began:.1f} s")
        yield server
    except BaseException:
        if server.child is not None:
            log(f"[{server.name}] the end of its output:\n{server.child.tail(2000)}")
        raise
    finally:
        server.stop()


# wrk ----------------------------------------------------------------------------------------


@dataclass
class WrkRun:
    """What one wrk run reported, plus the CPU both sides used meanwhile."""

    result: dict[str, Any]
    seconds: float
    server_cpu: float | None  # share of one core
    wrk_cpu: float

    @property
    def latency_ms(self) -> dict[str, float]:
        return {key: value / 1000 for key, value in self.result["latency_us"].items()}


class Wrk:
    """One wrk process: `-t1`, a Lua script from bench/wrk, output in a file."""

    def __init__(
        self,
        server: Server,
        path: str,
        script: str,
        seconds: int,
        connections: int,
        script_args: Sequence[str],
        log_path: Path,
    ) -> None:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT]
        argv += ["-s", str(BENCH / "wrk" / script), server.url + path]
        if script_args:
            argv += ["--", *script_args]
        self.server_pid = server.pid
        self.cpu_before = process_cpu_seconds(server.pid)
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.began = time.perf_counter()
        self.child = Child(argv, log_path)

    def wait_for_stop_line(self, timeout: float) -> bool:
        """Wait until the script says it has claimed enough (or wrk ends, or time runs out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.child.proc.poll() is None:
            if STOP_LINE in self.child.output():
                return True
            time.sleep(0.05)
        return False

    def interrupt(self) -> None:
        """End the run now; wrk still reports what it measured."""
        self.child.signal(signal.SIGINT)

    def finish(self, timeout: float) -> WrkRun:
        try:
            self.child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.interrupt()
            self.child.proc.wait(15)
        seconds = time.perf_counter() - self.began
        cpu_after = process_cpu_seconds(self.server_pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.child.stop()
        wrk_cpu = (children.ru_utime + children.ru_stime) - (
            self.children_before.ru_utime + self.children_before.ru_stime
        )
        output = self.child.output()
        line = next((x for x in output.splitlines() if x.startswith(RESULT_LINE)), None)
        if line is None:
            raise RuntimeError(f"wrk reported nothing (exit {self.child.proc.returncode}):\n{output[-3000:]}")
        result: dict[str, Any] = json.loads(line[len(RESULT_LINE) :])
        server_cpu = None
        if self.cpu_before is not None and cpu_after is not None:
            server_cpu = (cpu_after - self.cpu_before) / seconds
        return WrkRun(result, seconds, server_cpu, wrk_cpu / seconds)


# scenario: claim + report cycles --------------------------------------------------------------


@dataclass
class CycleFigures:
    server: str
    round: int  # 1, 2, ...; 0: the median of every round's figures
    cycles_per_second: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cycles: int
    requests: int
    non2xx: int
    socket_errors: int
    ran_dry: int  # claims answered "no task available"
    server_cpu: float | None
    wrk_cpu: float
    commits: CommitGroups | None = None  # agl (durable): how its writes shared commits


@dataclass
class CommitGroups:
    """From agl's `agl_commit_group_size`, `agl_commit_seconds` and `agl_sync_seconds`
    histograms, over one run."""

    commits: int
    writes: int
    share_over_4: float  # of commits, those that carried more than 4 writes
    wal_mb: float  # the write-ahead log's size at the end of the run
    commit_seconds: float = 0.0  # all the commits' transactions together
    syncs: int = 0
    sync_seconds: float = 0.0

    @property
    def mean(self) -> float:
        return self.writes / self.commits if self.commits else 0.0

    @property
    def mean_commit_ms(self) -> float:
        return 1000 * self.commit_seconds / self.commits if self.commits else 0.0

    @property
    def mean_sync_ms(self) -> float:
        return 1000 * self.sync_seconds / self.syncs if self.syncs else 0.0


COMMIT_SAMPLES = (
    "agl_commit_group_size_count",
    "agl_commit_group_size_sum",
    "agl_commit_group_size_bucket le=4",
    "agl_commit_seconds_sum",
    "agl_sync_seconds_count",
    "agl_sync_seconds_sum",
)


def commit_groups(server: Server) -> list[float] | None:
    """The `COMMIT_SAMPLES` so far, or None for a server without them."""
    if not isinstance(server, AglServer) or server.memory:
        return None
    assert server.client is not None
    text = server.client.get("/metrics").text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            le = sample.labels.get("le")
            values[sample.name if le is None else f"{sample.name} le={float(le):g}"] = sample.value
    return [values[name] for name in COMMIT_SAMPLES]


def commit_groups_between(
    before: list[float] | None, after: list[float] | None, wal_mb: float
) -> CommitGroups | None:
    if before is None or after is None:
        return None
    commits, writes, small, commit_seconds, syncs, sync_seconds = (
        b - a for a, b in zip(before, after, strict=True)
    )
    return CommitGroups(
        int(commits),
        int(writes),
        1 - small / commits if commits else 0.0,
        wal_mb,
        commit_seconds,
        int(syncs),
        sync_seconds,
    )


def combined(groups: list[CommitGroups]) -> CommitGroups:
    """The commit groups of several runs together (the write-ahead log as after the last)."""
    total_commits = sum(g.commits for g in groups)
    return CommitGroups(
        commits=total_commits,
        writes=sum(g.writes for g in groups),
        share_over_4=sum(g.share_over_4 * g.commits for g in groups) / max(total_commits, 1),
        wal_mb=groups[-1].wal_mb,
        commit_seconds=sum(g.commit_seconds for g in groups),
        syncs=sum(g.syncs for g in groups),
        sync_seconds=sum(g.sync_seconds for g in groups),
    )


def wal_mb(server: Server) -> float:
    """The size of agl's write-ahead log now (0 for other servers)."""
    wal = server.state_dir / "agl.db-wal" if isinstance(server, AglServer) else None
    return wal.stat().st_size / 1e6 if wal is not None and wal.exists() else 0.0


def cycle_run(server: Server, body: Path | None, seconds: int, plan: Plan, workdir: Path) -> WrkRun:
    wrk = Wrk(
        server,
        "",
        "cycle.lua",
        seconds,
        plan.connections,
        [str(body)] if body else [],
        workdir / f"wrk-{len(list(workdir.glob('wrk-*')))}.log",
    )
    return wrk.finish(seconds + 60)


def bench_cycles(
    servers: list[Server],
    bodies: dict[str, Path | None],
    plan: Plan,
    workdir: Path,
    report_bytes: dict[str, int],
) -> dict[str, list[CycleFigures]]:
    """Each server in turn: start it, run every cycle scenario (warm-up first), stop it;
    `plan.rounds` times, the order turned by one each round, so that the machine's drift
    over the run falls on every server alike (`median_cycles` sums the rounds up).

    `report_bytes` gets the size of each scenario's report body, as wrk sent it."""
    results: dict[str, list[CycleFigures]] = {scenario: [] for scenario in bodies}
    failed: set[str] = set()
    for number in range(1, plan.rounds + 1):
        turn = (number - 1) % len(servers)
        for server in servers[turn:] + servers[:turn]:
            if server.name not in failed and not run_cycles(
                server, number, bodies, plan, workdir, report_bytes, results
            ):
                failed.add(server.name)
    return results


def run_cycles(
    server: Server,
    number: int,
    bodies: dict[str, Path | None],
    plan: Plan,
    workdir: Path,
    report_bytes: dict[str, int],
    results: dict[str, list[CycleFigures]],
) -> bool:
    """One round of every cycle scenario on `server`; False if 0.3.0 failed to run (it is
    then left out of the rest; a failure of anything else ends the bench)."""
    try:
        with running(server):
            for scenario, body in bodies.items():
                server.queue(tasks_for_run(server, body, plan, workdir))
                groups_before = commit_groups(server)
                run = cycle_run(server, body, plan.duration, plan, workdir)
                figures = cycle_figures(server.name, number, run)
                figures.commits = commit_groups_between(groups_before, commit_groups(server), wal_mb(server))
                report_bytes[scenario] = int(run.result["report_body_bytes"])
                results[scenario].append(figures)
                log(
                    f"[{server.name}] round {number}, {scenario}: "
                    f"{figures.cycles_per_second:,.0f} cycles/s, p99 {figures.p99_ms:.2f} ms"
                )
    except RuntimeError as exc:
        if not isinstance(server, LegacyServer):
            raise
        log(f"[{server.name}] failed, left out: {exc}")
        return False
    return True


def median_cycles(rounds: list[CycleFigures]) -> CycleFigures:
    """One server's rounds of one scenario summed up: the median of each rate and latency,
    the totals of each count, and the commit groups of every round together."""
    if len(rounds) == 1:
        return replace(rounds[0], round=0)
    mid = statistics.median
    cpus = [r.server_cpu for r in rounds if r.server_cpu is not None]
    groups = [r.commits for r in rounds if r.commits is not None]
    commits = combined(groups) if groups else None
    return CycleFigures(
        server=rounds[0].server,
        round=0,
        cycles_per_second=mid([r.cycles_per_second for r in rounds]),
        requests_per_second=mid([r.requests_per_second for r in rounds]),
        p50_ms=mid([r.p50_ms for r in rounds]),
        p99_ms=mid([r.p99_ms for r in rounds]),
        max_ms=max(r.max_ms for r in rounds),
        cycles=sum(r.cycles for r in rounds),
        requests=sum(r.requests for r in rounds),
        non2xx=sum(r.non2xx for r in rounds),
        socket_errors=sum(r.socket_errors for r in rounds),
        ran_dry=sum(r.ran_dry for r in rounds),
        server_cpu=mid(cpus) if cpus else None,
        wrk_cpu=mid([r.wrk_cpu for r in rounds]),
        commits=commits,
    )


def tasks_for_run(server: Server, body: Path | None, plan: Plan, workdir: Path) -> int:
    """Run the warm-up, and size the queue for the measured run from its rate.

    Twice the warm-up's rate times the run's duration, and at least 10,000 a second: enough
    not to run dry, but no more than that, because a server holding its queue in memory
    (0.3.0, agl --memory) pays for a bigger heap in garbage collection pauses.
    """
    if not plan.warmup:
        return CYCLE_RATE_CAP * plan.duration
    server.queue(CYCLE_RATE_CAP * plan.warmup)
    warm = cycle_run(server, body, plan.warmup, plan, workdir)
    warm_rate = float(warm.result["cycles"]) / float(warm.result["duration_us"]) * 1e6
    return max(10_000 * plan.duration, math.ceil(2 * warm_rate * plan.duration))


def cycle_figures(name: str, number: int, run: WrkRun) -> CycleFigures:
    result, seconds = run.result, run.result["duration_us"] / 1e6
    return CycleFigures(
        server=name,
        round=number,
        cycles_per_second=result["cycles"] / seconds,
        requests_per_second=result["requests"] / seconds,
        p50_ms=run.latency_ms["p50"],
        p99_ms=run.latency_ms["p99"],
        max_ms=run.latency_ms["max"],
        cycles=int(result["cycles"]),
        requests=int(result["requests"]),
        non2xx=int(result["non2xx"]),
        socket_errors=int(sum(result["socket_errors"].values())),
        ran_dry=int(result["empty"]),
        server_cpu=run.server_cpu,
        wrk_cpu=run.wrk_cpu,
    )


def realistic_report(seed: int = 7) -> dict[str, Any]:
    """A report as a worker of an RL run sends it: 4 turns of token ids and 24 trace spans."""
    rng = random.Random(seed)

    def token_ids(count: int) -> list[int]:
        # skewed towards small ids, as a tokenizer's frequent tokens are; a 151,000-token vocabulary
        return [min(150_999, int(rng.expovariate(1 / 15_000))) for _ in range(count)]

    def hex_id(digits: int) -> str:
        return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(digits))

    triplets = [
        {
            "prompt": {"token_ids": token_ids(1_000)},
            "response": {"token_ids": token_ids(200)},
            "reward": 1.0 if turn == 3 else None,
            "metadata": {"response_id": f"chatcmpl-{rng.getrandbits(64):016x}", "agent_name": "solver"},
        }
        for turn in range(4)
    ]
    trace_id = hex_id(32)
    root = hex_id(16)
    start = 1_750_000_000.0
    kinds = [
        ("agent.run", "SpanKind.INTERNAL"),
        ("openai.chat.completion", "SpanKind.CLIENT"),
        ("tool.call", "SpanKind.INTERNAL"),
        ("reward", "SpanKind.INTERNAL"),
    ]
    spans: list[dict[str, Any]] = []
    for i in range(24):
        name, kind = kinds[0] if i == 0 else kinds[1 + (i - 1) % 3]
        began = start + i * 0.347
        attributes: dict[str, Any] = {"agentlightning.span_sequence_id": i, "agent.name": "solver"}
        if name == "openai.chat.completion":
            attributes |= {
                "gen_ai.system": "openai",
                "gen_ai.request.model": "Qwen/Qwen2.5-1.5B-Instruct",
                "gen_ai.request.temperature": 0.7,
                "gen_ai.usage.prompt_tokens": 1_000,
                "gen_ai.usage.completion_tokens": 200,
                "gen_ai.response.finish_reasons": ["stop"],
            }
        elif name == "tool.call":
            attributes |= {"tool.name": "calculator", "tool.parameters": '{"expression": "17 * 23 + 4"}'}
        elif name == "reward":
            attributes |= {"reward": 1.0 if i == 23 else 0.0}
        spans.append(
            {
                "name": name,
                "context": {
                    "trace_id": trace_id,
                    "span_id": root if i == 0 else hex_id(16),
                    "trace_state": "[]",
                },
                "kind": kind,
                "parent_id": None if i == 0 else root,
                "start_time": iso_time(began),
                "end_time": iso_time(began + 0.3 - 0.01 * (i % 7)),
                "status": {"status_code": "UNSET"},
                "attributes": attributes,
                "events": [],
                "links": [],
                "resource": {
                    "attributes": {"service.name": "agent-worker", "telemetry.sdk.language": "python"},
                    "schema_url": "",
                },
            }
        )
    return {
        "rollout_id": "@ROLLOUT_ID@",
        "final_reward": 1.0,
        "triplets": triplets,
        "trace": spans,
        "logs": [],
        "metadata": {"worker_id": "worker-0", "attempt": 1},
    }


def iso_time(seconds: float) -> str:
    """A UTC time as OpenTelemetry's span JSON writes it, with microseconds."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{round((seconds - whole) * 1e6):06d}Z"


def write_report_template(path: Path) -> None:
    """Write the realistic report body for cycle.lua, in which @ROLLOUT_ID@ stands for the id."""
    path.write_text(json.dumps(realistic_report(), separators=(",", ":")))


# scenario: flat under load --------------------------------------------------------------------


@dataclass
class FlatFigures:
    threshold: int
    claims: int
    seconds: float
    base_claims_per_second: float
    base_window: str
    after_claims_per_second: float
    after_window: str
    ratio: float
    per_second: list[tuple[int, int]]  # (claimed before that second, claims in it), full seconds only
    p99_ms: float
    non2xx: int
    socket_errors: int
    ran_dry: int
    server_cpu: float | None
    wrk_cpu: float


def rate(marks: list[tuple[int, float]], first: int, last: int) -> float:
    (n0, t0), (n1, t1) = marks[first], marks[last]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else math.nan


def claims_by_second(pairs: list[list[float]]) -> list[tuple[int, int]]:
    """(epoch second, claims) for every second from the first to the last, quiet ones included."""
    counts = {int(second): int(claims) for second, claims in pairs}
    if not counts:
        return []
    return [(second, counts.get(second, 0)) for second in range(min(counts), max(counts) + 1)]


def flat_figures(run: WrkRun, plan: Plan) -> FlatFigures:
    """Claims/s near the start (after a warm-up) vs after `flat_claims` claimed, from the marks."""
    marks = [(int(n), float(t)) for n, t in run.result["marks"]]
    if len(marks) < 4:
        raise RuntimeError(f"too few claims to compare: {run.result['claims']}")
    last = len(marks) - 1
    start = next((i for i, (_, t) in enumerate(marks) if t >= plan.flat_warmup), 0)
    start = min(start, last - 3)
    base_end = start + 1
    for i in range(start + 1, last):
        n, t = marks[i]
        if t - marks[start][1] > plan.flat_base_seconds or n > plan.flat_claims:
            break
        base_end = i
    after = next((i for i, (n, _) in enumerate(marks) if n >= plan.flat_claims), last - 1)
    after = max(min(after, last - 1), base_end)
    base, later = rate(marks, start, base_end), rate(marks, after, last)
    seconds = claims_by_second(run.result["per_second"])
    per_second, claimed = [], 0
    for i, (_, count) in enumerate(seconds):
        if 0 < i < len(seconds) - 1:  # the first and last seconds are partial
            per_second.append((claimed, count))
        claimed += count

    def window(a: int, b: int) -> str:
        return f"claims {marks[a][0]:,}-{marks[b][0]:,}, {marks[a][1]:.1f}-{marks[b][1]:.1f} s"

    return FlatFigures(
        threshold=plan.flat_claims,
        claims=int(run.result["claims"]),
        seconds=run.result["duration_us"] / 1e6,
        base_claims_per_second=base,
        base_window=window(start, base_end),
        after_claims_per_second=later,
        after_window=window(after, last),
        ratio=later / base,
        per_second=per_second,
        p99_ms=run.latency_ms["p99"],
        non2xx=int(run.result["non2xx"]),
        socket_errors=int(sum(run.result["socket_errors"].values())),
        ran_dry=int(run.result["empty"]),
        server_cpu=run.server_cpu,
        wrk_cpu=run.wrk_cpu,
    )


def bench_flat(workdir: Path, plan: Plan) -> FlatFigures:
    stop_after = plan.flat_claims + plan.flat_after
    server = AglServer(False, workdir)
    with running(server, stop_after + 10_000):
        wrk = Wrk(
            server,
            "/task",
            "claim.lua",
            plan.max_wrk_seconds,
            plan.connections,
            [f"stop_after={stop_after}", f"mark_every={plan.flat_mark_every}"],
            workdir / "wrk-flat.log",
        )
        if wrk.wait_for_stop_line(plan.max_wrk_seconds + 30):
            wrk.interrupt()
        figures = flat_figures(wrk.finish(60), plan)
    log(f"[flat] {figures.base_claims_per_second:,.0f} -> {figures.after_claims_per_second:,.0f} claims/s")
    return figures


# scenario: long-poll pickup -------------------------------------------------------------------


class RawHTTP:
    """One keep-alive HTTP/1.1 connection, for requests whose exact timing matters."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parsed = httpx.URL(url)
        self.host = f"{parsed.host}:{parsed.port}"
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock = socket.create_connection((parsed.host, parsed.port or 80), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, method: str, path: str, body: bytes = b"") -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}"
        if body or method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)

    def take(self) -> tuple[int, bytes] | None:
        """A whole response from what has arrived so far, if there is one."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end].decode("latin-1")
        match = re.search(r"(?im)^content-length: *(\d+)", head)
        if match is None:
            raise RuntimeError(f"an answer without Content-Length: {head[:300]}")
        total = end + 4 + int(match.group(1))
        if len(self.buffer) < total:
            return None
        body, self.buffer = self.buffer[end + 4 : total], self.buffer[total:]
        return int(head.split(" ", 2)[1]), body

    def receive(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data

    def response(self) -> tuple[int, bytes]:
        while (answer := self.take()) is None:
            self.receive()
        return answer

    def close(self) -> None:
        self.sock.close()


@dataclass
class PickupFigures:
    pickups: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mismatched: int


def bench_longpoll(workdir: Path, plan: Plan) -> PickupFigures:
    """Queue one task while a worker long-polls; time until the worker has it, many times."""
    server = AglServer(False, workdir)
    with running(server):
        assert server.client is not None
        token = server.client.headers["Authorization"]
        worker = RawHTTP(server.url)
        api = RawHTTP(server.url, {"Authorization": token})
        times: list[float] = []
        mismatched = 0
        try:
            for round_ in range(plan.pickups + 3):  # the first 3 warm up
                worker.send("GET", "/task?wait=30")
                time.sleep(0.02)  # let the server park the request
                body = json.dumps({"tasks": [task_spec(round_)]}).encode()
                sent = time.perf_counter()
                api.send("POST", "/v1/tasks", body)
                arrived = sent
                task_answer: tuple[int, bytes] | None = None
                queue_answer: tuple[int, bytes] | None = None
                deadline = sent + 30
                while task_answer is None and time.perf_counter() < deadline:
                    readable, _, _ = select.select([worker.sock, api.sock], [], [], 1.0)
                    if worker.sock in readable:
                        worker.receive()
                        task_answer = worker.take()
                        if task_answer is not None:
                            arrived = time.perf_counter()
                    if api.sock in readable and queue_answer is None:
                        api.receive()
                        queue_answer = api.take()
                if task_answer is None:
                    raise RuntimeError("the long-polling worker got nothing within 30 s")
                queue_answer = queue_answer or api.response()
                if task_answer[0] != 200 or queue_answer[0] != 201:
                    raise RuntimeError(
                        f"HTTP {task_answer[0]} / {queue_answer[0]}: {queue_answer[1][:300]!r}"
                    )
                handed = json.loads(task_answer[1]).get("task") or {}
                if handed.get("rollout_id") != json.loads(queue_answer[1])["rollout_ids"][0]:
                    mismatched += 1
                if round_ >= 3:
                    times.append(arrived - sent)
        finally:
            worker.close()
            api.close()
    times.sort()
    figures = PickupFigures(
        pickups=len(times),
        p50_ms=statistics.median(times) * 1000,
        p99_ms=percentile(times, 99) * 1000,
        max_ms=times[-1] * 1000,
        mismatched=mismatched,
    )
    log(f"[longpoll] p50 {figures.p50_ms:.2f} ms, p99 {figures.p99_ms:.2f} ms")
    return figures


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(len(sorted_values) * pct / 100))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# scenario: claims during a big batch commit ----------------------------------------------------


@dataclass
class CommitFigures:
    batch_tasks: int
    stage_seconds: float
    commit_seconds: float
    commit_started_at: float  # seconds into the wrk run
    window_seconds: float
    claims: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    min_claims_per_second_after_commit: int | None  # in a whole second from the commit's start on
    recovered_after: float | None  # seconds after the commit request returned; None: not in the window
    per_second: list[tuple[int, bool]]  # claims in each wall-clock second; from the commit on?
    health_checks: int
    health_p99_ms: float | None
    non2xx: int
    socket_errors: int
    ran_dry: int
    server_cpu: float | None
    wrk_cpu: float


class HealthPoller(threading.Thread):
    """`GET /health` every 10 ms on one connection, timing each answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.times: list[float] = []
        self.halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        connection = RawHTTP(self.url)
        try:
            while not self.halt.is_set():
                began = time.perf_counter()
                connection.send("GET", "/health")
                status, _ = connection.response()
                self.times.append(time.perf_counter() - began)
                if status != 200:
                    self.error = f"/health answered {status}"
                self.halt.wait(0.01)
        except (OSError, RuntimeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    def stop(self) -> list[float]:
        self.halt.set()
        self.join(70)
        return sorted(self.times)


def wait_for_claims_to_recover(
    wrk: Wrk, commit_wall: float, returned_wall: float, plan: Plan
) -> float | None:
    """Seconds from the commit request's return to the end of the first whole second after
    it with at least half the claims of the busiest whole second before the commit; None if
    none came within `commit_max_settle` seconds. Waits at least `commit_settle` seconds."""
    line = re.compile(r"AGL_WRK_SECOND (\d+) (\d+)")
    while True:
        counts = {int(m.group(1)): int(m.group(2)) for m in line.finditer(wrk.child.output())}
        before = max((n for second, n in counts.items() if second + 1 <= commit_wall), default=0)
        recovered = sorted(s for s, n in counts.items() if s >= returned_wall and n >= before / 2 and before)
        waited = time.time() - returned_wall
        if recovered and waited >= plan.commit_settle:
            return recovered[0] + 1 - returned_wall
        if waited >= plan.commit_max_settle or wrk.child.proc.poll() is not None:
            return None
        time.sleep(0.1)


def bench_commit(workdir: Path, plan: Plan) -> CommitFigures:
    server = AglServer(False, workdir)
    with running(server):
        began = time.perf_counter()
        batch_id = server.call("POST", "/v1/batches", expect=201)["batch_id"]
        for first in range(0, plan.batch_tasks, QUEUE_CHUNK):
            specs = [task_spec(i) for i in range(first, min(first + QUEUE_CHUNK, plan.batch_tasks))]
            server.call("POST", f"/v1/batches/{batch_id}/tasks", {"tasks": specs})
        stage_seconds = time.perf_counter() - began
        log(f"[commit] staged {plan.batch_tasks:,} tasks in {stage_seconds:.1f} s")
        server.queue(plan.commit_ordinary_tasks)
        health = HealthPoller(server.url)
        wrk = Wrk(
            server,
            "/task",
            "claim.lua",
            plan.max_wrk_seconds,
            plan.connections,
            ["live=1"],
            workdir / "wrk-commit.log",
        )
        health.start()
        time.sleep(plan.commit_lead)
        commit_wall = time.time()
        commit_started_at = time.perf_counter() - wrk.began
        committed = time.perf_counter()
        queued = server.call("POST", f"/v1/batches/{batch_id}/commit")["queued"]
        commit_seconds = time.perf_counter() - committed
        recovered_after = wait_for_claims_to_recover(wrk, commit_wall, time.time(), plan)
        wrk.interrupt()
        run = wrk.finish(60)
        health_times = health.stop()
    if queued != plan.batch_tasks:
        raise RuntimeError(f"the commit queued {queued:,} tasks, not {plan.batch_tasks:,}")
    if health.error:
        log(f"[commit] /health: {health.error}")
    seconds = claims_by_second(run.result["per_second"])
    # whole seconds from the commit's start to the end of the run (the last one is partial)
    after = [count for second, count in seconds[:-1] if second >= commit_wall]
    per_second = [(count, second + 1 > commit_wall) for second, count in seconds]
    figures = CommitFigures(
        batch_tasks=plan.batch_tasks,
        stage_seconds=stage_seconds,
        commit_seconds=commit_seconds,
        commit_started_at=commit_started_at,
        window_seconds=run.result["duration_us"] / 1e6,
        claims=int(run.result["claims"]),
        p50_ms=run.latency_ms["p50"],
        p99_ms=run.latency_ms["p99"],
        max_ms=run.latency_ms["max"],
        min_claims_per_second_after_commit=min(after) if after else None,
        recovered_after=recovered_after,
        per_second=per_second,
        health_checks=len(health_times),
        health_p99_ms=percentile(health_times, 99) * 1000 if health_times else None,
        non2xx=int(run.result["non2xx"]),
        socket_errors=int(sum(run.result["socket_errors"].values())),
        ran_dry=int(run.result["empty"]),
        server_cpu=run.server_cpu,
        wrk_cpu=run.wrk_cpu,
    )
    log(f"[commit] commit {commit_seconds:.2f} s, claim p99 {figures.p99_ms:.1f} ms")
    return figures


# scenario: agl queue ----------------------------------------------------------------------------


def bench_queue(workdir: Path, plan: Plan) -> dict[str, Any]:
    """`bench/queue_million.py` in a subprocess; its JSON figures."""
    out = workdir / "queue.json"
    argv = [
        sys.executable,
        str(BENCH / "queue_million.py"),
        "--tasks",
        str(plan.queue_tasks),
        "--json",
        str(out),
    ]
    log(f"[queue] agl queue of {plan.queue_tasks:,} tasks ...")
    child = Child(argv, workdir / "queue.log")
    try:
        child.proc.wait(600 if plan.queue_tasks > 100_000 else 120)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"queue_million.py did not finish:\n{child.tail()}") from None
    finally:
        child.stop()
    if child.proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"queue_million.py failed ({child.proc.returncode}):\n{child.tail()}")
    figures: dict[str, Any] = json.loads(out.read_text())
    log(f"[queue] {figures['queue_seconds']} s, daemon peak RSS {figures['daemon_peak_rss_mb']} MB")
    return figures


# figures and the table ------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    target: float
    higher_is_better: bool
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def target_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}{self.unit}"


@dataclass
class Results:
    plan: Plan
    machine: dict[str, Any]
    cycles: dict[str, list[CycleFigures]] = field(default_factory=dict)
    report_bytes: dict[str, int] = field(default_factory=dict)
    flats: list[FlatFigures] = field(default_factory=list)  # one per round
    longpoll: PickupFigures | None = None
    commit: CommitFigures | None = None
    queue: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    legacy: str = ""

    @property
    def flat(self) -> FlatFigures | None:
        """The flat round with the median ratio (the lower middle one of an even count)."""
        if not self.flats:
            return None
        return sorted(self.flats, key=lambda f: f.ratio)[(len(self.flats) - 1) // 2]

    def cycle(self, scenario: str, server: str) -> CycleFigures | None:
        """The server's figures in the scenario: the median of its rounds."""
        return next((c for c in self.medians(scenario) if c.server == server), None)

    def medians(self, scenario: str) -> list[CycleFigures]:
        """Every server's figures in the scenario, the median of its rounds, in the order
        the servers first ran."""
        names = dict.fromkeys(c.server for c in self.cycles.get(scenario, []))
        return [median_cycles([c for c in self.cycles[scenario] if c.server == name]) for name in names]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def figures_of(results: Results) -> list[Figure]:
    plan = results.plan
    small_agl, small_ceiling = results.cycle("small", AGL_DURABLE), results.cycle("small", CEILING)
    small_legacy = results.cycle("small", LEGACY)
    real_agl, real_legacy = results.cycle("realistic", AGL_DURABLE), results.cycle("realistic", LEGACY)

    def cps(c: CycleFigures | None) -> float | None:
        return c.cycles_per_second if c else None

    def p99(c: CycleFigures | None) -> float | None:
        return c.p99_ms if c else None

    kb = results.report_bytes.get("realistic", 40_000) / 1000
    batch = plan.batch_tasks
    return [
        Figure(
            "small_cycle_agl_vs_ceiling",
            f"claim+report cycles/s, small body, {plan.connections} conns: agl (durable) / ceiling",
            ratio(cps(small_agl), cps(small_ceiling)),
            0.80,
            True,
        ),
        Figure(
            "small_cycle_agl_vs_legacy",
            "the same: agl (durable) / 0.3.0 legacy",
            ratio(cps(small_agl), cps(small_legacy)),
            4,
            True,
        ),
        Figure(
            "realistic_cycle_agl_vs_legacy",
            f"cycles/s with a realistic {kb:.0f} KB rollout: agl (durable) / 0.3.0 legacy",
            ratio(cps(real_agl), cps(real_legacy)),
            3,
            True,
        ),
        Figure(
            "small_cycle_p99_agl_vs_ceiling",
            "p99 latency of the small cycle: agl (durable) / ceiling",
            ratio(p99(small_agl), p99(small_ceiling)),
            2,
            False,
        ),
        Figure(
            "claims_after_threshold_vs_start",
            f"GET /task claims/s after {plan.flat_claims:,} claimed-unreported / at 0 (agl durable)",
            results.flat.ratio if results.flat else None,
            0.90,
            True,
        ),
        Figure(
            "longpoll_pickup_p50_ms",
            "long-poll pickup, POST /v1/tasks -> waiting GET /task?wait=30 has it: p50",
            results.longpoll.p50_ms if results.longpoll else None,
            2,
            False,
            " ms",
        ),
        Figure(
            "longpoll_pickup_p99_ms",
            "long-poll pickup: p99",
            results.longpoll.p99_ms if results.longpoll else None,
            10,
            False,
            " ms",
        ),
        Figure(
            "claim_p99_during_commit_ms",
            f"GET /task p99 while a {batch:,}-task batch commits (agl durable)",
            results.commit.p99_ms if results.commit else None,
            100,
            False,
            " ms",
        ),
        Figure(
            "queue_seconds",
            f"agl queue of {plan.queue_tasks:,} tasks from JSON Lines: wall time",
            float(results.queue["queue_seconds"]) if results.queue else None,
            TARGET_SECONDS,
            False,
            " s",
        ),
        Figure(
            "queue_daemon_peak_rss_mb",
            "the same: daemon peak RSS",
            float(results.queue["daemon_peak_rss_mb"]) if results.queue else None,
            TARGET_RSS_MB,
            False,
            " MB",
        ),
    ]


def share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"


def print_report(results: Results, figures: list[Figure], ran: set[str]) -> None:
    plan = results.plan
    machine = results.machine
    print()
    print(
        f"agl side by side on {machine['cpus']} CPUs ({machine['system']}, Python {machine['python']}); "
        f"{machine['wrk']}, -t1, {plan.connections} connections"
    )
    print(
        f"each cycle run: {plan.duration} s after a {plan.warmup} s warm-up; servers run one at a time, "
        f"in {plan.rounds} round{'s' if plan.rounds > 1 else ''} (the order turned by one each round)"
    )
    titles = {
        "small": f"Claim + report cycle, small report ({results.report_bytes.get('small', 0):,} B)",
        "realistic": f"Claim + report cycle, realistic report ({results.report_bytes.get('realistic', 0):,} B)",
    }
    for scenario, rows in results.cycles.items():
        print()
        print(titles[scenario])
        header = (
            f"  {'server':<15} {'round':>6} {'cycles/s':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'non-2xx':>7} {'dry':>5} {'srv CPU':>7} {'wrk CPU':>7}"
        )
        print(header)
        shown = sorted(rows, key=lambda row: (row.server, row.round))
        medians = results.medians(scenario)
        if plan.rounds > 1:
            shown = medians + shown
        for row in shown:
            problems = row.non2xx + row.socket_errors
            number = "median" if row.round == 0 else str(row.round)
            print(
                f"  {row.server:<15} {number:>6} {row.cycles_per_second:>9,.0f} {row.requests_per_second:>9,.0f} "
                f"{row.p50_ms:>8.2f} {row.p99_ms:>8.2f} {row.max_ms:>8.1f} {problems:>7} {row.ran_dry:>5} "
                f"{share(row.server_cpu):>7} {share(row.wrk_cpu):>7}"
            )
        for summed in medians:
            groups = summed.commits
            if groups is not None:
                print(
                    f"  {summed.server}: {groups.writes:,} writes in {groups.commits:,} commits, "
                    f"{groups.mean:.1f} writes per commit on average; "
                    f"{groups.share_over_4:.0%} of commits carried more than 4; "
                    f"a commit took {groups.mean_commit_ms:.2f} ms on average, "
                    f"a sync {groups.mean_sync_ms:.2f} ms ({groups.syncs:,} syncs); "
                    f"write-ahead log {groups.wal_mb:.1f} MB at the end"
                )
    for flat_round, flat in enumerate(results.flats, 1):
        median = " (the median round)" if len(results.flats) > 1 and flat is results.flat else ""
        print()
        print(
            f"GET /task only, never reported (agl durable), round {flat_round}{median}: "
            f"{flat.claims:,} claims in {flat.seconds:.1f} s, ratio {flat.ratio:.2f}"
        )
        print(
            f"  at the start:                {flat.base_claims_per_second:>9,.0f} claims/s  ({flat.base_window})"
        )
        print(
            f"  after {flat.threshold:,} claimed: {flat.after_claims_per_second:>9,.0f} claims/s  ({flat.after_window})"
        )
        steps = "  ".join(f"{claimed // 1000}k:{count:,}" for claimed, count in flat.per_second)
        print(f"  claims/s by wall-clock second (claimed before it: claims in it): {steps or '-'}")
        print(
            f"  p99 {flat.p99_ms:.2f} ms, non-2xx {flat.non2xx + flat.socket_errors}, ran dry {flat.ran_dry}, "
            f"srv CPU {share(flat.server_cpu)}, wrk CPU {share(flat.wrk_cpu)}"
        )
    if results.longpoll:
        lp = results.longpoll
        print()
        print(
            f"Long-poll pickup (agl durable), {lp.pickups} pickups: p50 {lp.p50_ms:.2f} ms, "
            f"p99 {lp.p99_ms:.2f} ms, max {lp.max_ms:.2f} ms"
            + (f"; {lp.mismatched} handed another task" if lp.mismatched else "")
        )
    if results.commit:
        cm = results.commit
        print()
        print(
            f"GET /task while a {cm.batch_tasks:,}-task batch commits (agl durable): staged in "
            f"{cm.stage_seconds:.1f} s (untimed); the commit request took {cm.commit_seconds:.2f} s, from "
            f"{cm.commit_started_at:.1f} s into a {cm.window_seconds:.1f} s wrk run"
        )
        fewest = cm.min_claims_per_second_after_commit
        print(
            f"  {cm.claims:,} claims: p50 {cm.p50_ms:.2f} ms, p99 {cm.p99_ms:.2f} ms, max {cm.max_ms:.1f} ms; "
            f"fewest claims in a whole second from the commit on: {f'{fewest:,}' if fewest is not None else '-'}"
        )
        steps = "  ".join(f"{count:,}{'*' if overlaps else ''}" for count, overlaps in cm.per_second)
        print(f"  claims per wall-clock second (*: from the commit's start on): {steps}")
        if cm.recovered_after is not None:
            print(
                f"  claims were back to at least half their earlier rate {cm.recovered_after:.1f} s after the "
                "commit request returned; wrk stopped then"
            )
        health = f"{cm.health_p99_ms:.2f} ms" if cm.health_p99_ms is not None else "-"
        print(
            f"  /health p99 {health} over {cm.health_checks} checks; non-2xx {cm.non2xx + cm.socket_errors}, "
            f"ran dry {cm.ran_dry}, srv CPU {share(cm.server_cpu)}, wrk CPU {share(cm.wrk_cpu)}"
        )
    if results.queue:
        q = results.queue
        print()
        print(
            f"agl queue of {q['tasks']:,} tasks ({q['file_mb']} MB of JSON Lines): {q['queue_seconds']} s "
            f"({q['tasks_per_second']:,}/s); daemon RSS {q['daemon_idle_rss_mb']} MB idle, "
            f"{q['daemon_peak_rss_mb']} MB peak; {q['queued_reported_by_daemon']:,} queued"
        )
    print()
    print("Figures (every ratio from this run)")
    width = max(len(figure.label) for figure in figures)
    print(f"  {'figure':<{width}} {'value':>12}  {'target':<10} result")
    for figure in figures:
        value = "-" if figure.value is None else f"{figure.value:,.2f}{figure.unit}"
        verdict = {True: "met", False: "missed", None: "not run"}[figure.met]
        if figure.met is None and "legacy" in figure.key and results.cycles:
            verdict = "no 0.3.0 run"
        print(f"  {figure.label:<{width}} {value:>12}  {figure.target_text():<10} {verdict}")
    print()
    print(
        "srv CPU / wrk CPU: share of one core used by the server / by wrk during the run "
        "(wrk near 100%: the client, not the server, set the pace)."
    )
    print("non-2xx: answers other than 2xx plus socket errors (should be 0); dry: claims that found no task.")
    for note in results.notes:
        print(f"note: {note}")
    if plan.duration < 5 or plan.batch_tasks < 1_000_000:
        print(
            "note: a short or scaled-down run (--quick, --duration): figures are not comparable to the targets."
        )
    skipped = [s for s in SCENARIOS if s not in ran]
    if skipped:
        print(f"note: not run: {', '.join(skipped)}")


def warn_about_problems(results: Results) -> None:
    """Errors and dry queues make figures meaningless; say so loudly."""
    rows: list[tuple[str, int, int]] = [
        (f"{scenario} / {c.server}", c.non2xx + c.socket_errors, c.ran_dry)
        for scenario, cycles in results.cycles.items()
        for c in cycles
    ]
    for number, flat in enumerate(results.flats, 1):
        rows.append((f"flat / round {number}", flat.non2xx + flat.socket_errors, flat.ran_dry))
        if flat.claims < flat.threshold:
            results.notes.append(
                f"WARNING: flat round {number}: only {flat.claims:,} claims, short of {flat.threshold:,}; "
                "its ratio compares two early windows"
            )
    if results.commit:
        rows.append(("commit", results.commit.non2xx + results.commit.socket_errors, results.commit.ran_dry))
        if results.commit.recovered_after is None:
            results.notes.append(
                "WARNING: commit: claims were not back to half their rate before the commit when the "
                f"window closed, {results.plan.commit_max_settle:g} s after the commit request returned"
            )
    for name, errors, dry in rows:
        if errors:
            results.notes.append(f"WARNING: {name}: {errors} non-2xx answers or socket errors")
        if dry:
            results.notes.append(f"WARNING: {name}: the queue ran dry ({dry} claims found no task)")
    if results.longpoll and results.longpoll.mismatched:
        results.notes.append(f"WARNING: longpoll: {results.longpoll.mismatched} pickups got another task")


# the run ----------------------------------------------------------------------------------------


def find_legacy_python(args: argparse.Namespace) -> tuple[str | None, str]:
    """The Python to run 0.3.0 with, or None and why not."""
    if args.no_legacy:
        return None, "skipped (--no-legacy)"
    if args.legacy_python:
        return args.legacy_python, f"run with {args.legacy_python}"
    if COMPAT_PYTHON.exists() and COMPAT_READY.exists():
        return str(COMPAT_PYTHON), "run from the compat venv"
    if args.quick:
        return None, "skipped: the compat venv is not built yet (bench/setup.sh, or a full run, builds it)"
    log("building the compat venv with agentlightning 0.3.0 (1-2 minutes) ...")
    sys.path.insert(0, str(REPO / "tests"))
    try:
        compat_env = importlib.import_module("compat_env")
        return str(compat_env.ensure_compat_python()), "run from the compat venv (built by this run)"
    except Exception as exc:
        return None, f"skipped: the compat venv could not be built ({exc})"


def machine_info() -> dict[str, Any]:
    try:
        first = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        wrk = first[0].split(" [")[0] if first else "wrk"
    except OSError:
        wrk = "wrk"
    return {
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "wrk": wrk,
    }


def run(args: argparse.Namespace, workdir: Path) -> Results:
    plan = make_plan(args)
    results = Results(plan=plan, machine=machine_info())
    only = set(args.only)
    cycle_scenarios = [s for s in ("small", "realistic") if s in only]
    if cycle_scenarios:
        bodies: dict[str, Path | None] = {}
        for scenario in cycle_scenarios:
            if scenario == "small":
                bodies["small"] = None
            else:
                template = workdir / "report-realistic.json"
                write_report_template(template)
                bodies["realistic"] = template
        servers: list[Server] = [AglServer(False, workdir), AglServer(True, workdir), CeilingServer(workdir)]
        legacy_python, results.legacy = find_legacy_python(args)
        results.notes.append(f"0.3.0 legacy server: {results.legacy}")
        if legacy_python:
            servers.append(LegacyServer(legacy_python, workdir))
        results.cycles = bench_cycles(servers, bodies, plan, workdir, results.report_bytes)
        if legacy_python and not any(c.server == LEGACY for rows in results.cycles.values() for c in rows):
            results.legacy = "failed to run (see the log above)"
            results.notes.append("0.3.0 legacy server failed to run; its figures are missing")
    if "flat" in only:
        for number in range(1, plan.rounds + 1):
            log(f"[flat] round {number} of {plan.rounds}")
            results.flats.append(bench_flat(workdir, plan))
    if "longpoll" in only:
        results.longpoll = bench_longpoll(workdir, plan)
    if "commit" in only:
        results.commit = bench_commit(workdir, plan)
    if "queue" in only:
        results.queue = bench_queue(workdir, plan)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="agl beside a bare Starlette ceiling and agentlightning 0.3.0, with wrk, in one run."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, small counts")
    parser.add_argument("--duration", type=int, help="seconds per measured wrk cycle run (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of untimed warm-up before each (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="times each server runs the cycle scenarios, and agl the flat one; figures are medians (default 3)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--only",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(SCENARIOS),
        help=f"comma-separated scenarios to run, of: {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--legacy-python", help="a Python with agentlightning 0.3.0 (default: the compat venv)"
    )
    parser.add_argument("--no-legacy", action="store_true", help="leave agentlightning 0.3.0 out")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    args = parser.parse_args(argv)
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; pick from {', '.join(SCENARIOS)}")
    if args.duration is not None and args.duration < 1:
        parser.error("--duration must be at least 1 (wrk counts whole seconds)")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    return args


def to_json(results: Results, figures: list[Figure]) -> dict[str, Any]:
    return {
        "machine": results.machine,
        "plan": asdict(results.plan),
        "legacy": results.legacy,
        "legacy_ran": any(c.server == LEGACY for rows in results.cycles.values() for c in rows),
        "figures": [
            {
                "key": f.key,
                "label": f.label,
                "value": None if f.value is None or math.isnan(f.value) else round(f.value, 4),
                "unit": f.unit.strip(),
                "target": f.target_text(),
                "met": f.met,
                "requires_legacy": "legacy" in f.key,
            }
            for f in figures
        ],
        "cycles": {scenario: [asdict(c) for c in rows] for scenario, rows in results.cycles.items()},
        "cycle_medians": {
            scenario: [asdict(c) for c in results.medians(scenario)] for scenario in results.cycles
        },
        "report_bytes": results.report_bytes,
        "flat": asdict(results.flat) if results.flat else None,
        "flat_rounds": [asdict(f) for f in results.flats],
        "longpoll": asdict(results.longpoll) if results.longpoll else None,
        "commit": asdict(results.commit) if results.commit else None,
        "queue": results.queue,
        "notes": results.notes,
    }


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`, stopping the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed (bench/setup.sh installs it)")
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="agl-side-by-side-"))
    began = time.perf_counter()
    try:
        results = run(args, workdir)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    finally:
        kill_children()
        shutil.rmtree(workdir, ignore_errors=True)
    warn_about_problems(results)
    figures = figures_of(results)
    print_report(results, figures, set(args.only))
    print(f"(the whole run took {time.perf_counter() - began:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results, figures), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
