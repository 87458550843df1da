"""agl's store API beside agentlightning 0.3.0's own `LightningStoreServer`, with wrk, in one run.

What it measures
    Three servers run side by side on this machine: `agl serve` (durable default), `agl
    serve --memory`, and 0.3.0's store server over its in-memory store (`agl store` of
    agentlightning, from the compat environment tests/compat_env.py builds). Each is driven
    by the same load from wrk (one thread, 32 connections, the Lua scripts in bench/wrk),
    scenario by scenario, every server in turn, after an untimed warm-up:

    cycle    a runner's round trip per rollout: `POST /queues/rollouts/dequeue` for a
             worker, then `POST /rollouts/{id}/attempts/{attempt}` with `succeeded`
             (the rollouts are enqueued beforehand);
    enqueue  `POST /queues/rollouts/enqueue` with one rollout, as `enqueue_rollout` sends it;
    spans    `POST /spans` with one span, as `add_span` sends it, over 100 running rollouts;
    otlp     `POST /v1/traces` with one span per export in protobuf, as 0.3.0's tracer
             sends them (one export per ended span), over the same rollouts.

    It prints one table, with each figure of agl (durable) as a ratio to 0.3.0's from this
    run (the machine is shared and noisy: only ratios from one run mean anything). The
    target is agl durable at least twice 0.3.0 in memory, for each scenario.

How to run (after `bash bench/setup.sh`, from the repository root)
    python bench/store_api.py                 # 10 s per scenario and server
    python bench/store_api.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import Child, task_input
from side_by_side import BENCH, REPO, RESULT_LINE, WRK_TIMEOUT, find_legacy_python, log

AGL = "/v1/agl"
SCENARIOS = ("cycle", "enqueue", "spans", "otlp")
ROLLOUTS_FOR_SPANS = 100
RATE_CAP = 12_000  # more of anything a second than any server here answers


@dataclass
class StoreServer:
    name: str
    argv: list[str]
    env: dict[str, str]
    child: Child | None = None
    url: str = ""
    ready_after: float = 0.0  # seconds from the process's start to its first answer
    # one client for the setup's requests: httpx.post() would build TLS settings for each
    # (about 40 ms of CPU), which for a hundred rollouts took longer than the measured run
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=600))

    def start(self, workdir: Path, port: int) -> None:
        began = time.monotonic()
        argv = [*self.argv, "--port", str(port)]
        self.child = Child(argv, workdir / f"{self.name.replace(' ', '-')}.log", env=self.env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.http.get(f"{self.url}{AGL}/health", timeout=2).status_code == 200:
                    self.ready_after = time.monotonic() - began
                    return
            if self.child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.child.tail()}")
            time.sleep(0.05)

    def post(self, path: str, body: Any, expect: int = 200) -> Any:
        response = self.http.post(f"{self.url}{path}", json=body)
        if response.status_code != expect:
            raise RuntimeError(f"{self.name}: POST {path} gave {response.status_code}: {response.text[:300]}")
        return response.json()

    def stop(self) -> None:
        self.http.close()
        if self.child is not None:
            self.child.stop()


def servers(workdir: Path, legacy_python: str) -> list[StoreServer]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    agl = [sys.executable, "-m", "agl_cli", "serve", "--no-auth", "--log-level", "warning"]
    return [
        StoreServer("agl (durable)", [*agl, "--state-dir", str(workdir / "durable")], env),
        StoreServer("agl (memory)", [*agl, "--state-dir", str(workdir / "memory"), "--memory"], env),
        StoreServer(
            "0.3.0 store",
            [
                legacy_python,
                "-m",
                "agentlightning.cli.store",
                "--host",
                "127.0.0.1",
                "--log-level",
                "WARNING",
            ],
            env | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        ),
    ]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# what each scenario sends ----------------------------------------------------------------------


def enqueue(server: StoreServer, count: int) -> None:
    for first in range(0, count, 1_000):
        rollouts = [
            {"input": task_input(i), "mode": "train"} for i in range(first, min(count, first + 1_000))
        ]
        server.post(f"{AGL}/queues/rollouts/enqueue", {"rollouts": rollouts}, expect=201)


def running_rollouts(server: StoreServer) -> list[tuple[str, str]]:
    started = [server.post(f"{AGL}/rollouts", {"input": i}, expect=201) for i in range(ROLLOUTS_FOR_SPANS)]
    return [(r["rollout_id"], r["attempt"]["attempt_id"]) for r in started]


def span_json(rollout: tuple[str, str], number: int) -> bytes:
    span_id = f"{number:016x}"
    return orjson.dumps(
        {
            "rollout_id": rollout[0], "attempt_id": rollout[1], "sequence_id": number, "trace_id": f"{number:032x}",
            "span_id": span_id, "parent_id": None, "name": "llm.call",
            "status": {"status_code": "OK", "description": None},
            "attributes": {"gen_ai.usage.prompt_tokens": 120, "gen_ai.request.model": "bench-model"},
            "events": [], "links": [], "start_time": 1.7e9, "end_time": 1.7e9 + 0.25,
            "context": {"trace_id": f"{number:032x}", "span_id": span_id, "is_remote": False, "trace_state": {}},
            "parent": None, "resource": {"attributes": {"service.name": "bench"}, "schema_url": ""},
        }
    )  # fmt: skip


def otlp_export(rollout: tuple[str, str], number: int) -> bytes:
    def attribute(key: str, value: str | int) -> KeyValue:
        any_value = AnyValue(string_value=value) if isinstance(value, str) else AnyValue(int_value=value)
        return KeyValue(key=key, value=any_value)

    span = Span(
        trace_id=number.to_bytes(16, "big"), span_id=number.to_bytes(8, "big"), name="llm.call",
        start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_250_000_000,
        attributes=[attribute("gen_ai.usage.prompt_tokens", 120), attribute("gen_ai.request.model", "bench-model")],
    )  # fmt: skip
    group = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    group.resource.attributes.extend(
        [
            attribute("agentlightning.rollout_id", rollout[0]),
            attribute("agentlightning.attempt_id", rollout[1]),
        ]
    )
    return bytes(ExportTraceServiceRequest(resource_spans=[group]).SerializeToString())


def body_file(path: Path, bodies: Iterator[bytes]) -> Path:
    with path.open("wb") as file:
        for body in bodies:
            file.write(f"{len(body):08d}".encode() + body)
    return path


def run_wrk(url: str, script: str, seconds: int, args: list[str], log_path: Path) -> dict[str, Any]:
    """One wrk run (`-t1 -c32`) with a script of bench/wrk; what its `done()` printed."""
    argv = [
        "wrk",
        "-t1",
        "-c32",
        f"-d{seconds}s",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        str(BENCH / "wrk" / script),
        url,
    ]
    child = Child([*argv, "--", *args] if args else argv, log_path)
    child.proc.wait(seconds + 120)
    line = next((x for x in child.output().splitlines() if x.startswith(RESULT_LINE)), None)
    if line is None:
        raise RuntimeError(f"wrk reported nothing:\n{child.tail()}")
    result: dict[str, Any] = orjson.loads(line[len(RESULT_LINE) :])
    return result


# the run ------------------------------------------------------------------------------------


@dataclass
class Figure:
    scenario: str
    server: str
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def measure(server: StoreServer, scenario: str, seconds: int, warmup: int, workdir: Path) -> Figure:
    total = RATE_CAP * (seconds + warmup)
    if scenario == "cycle":
        enqueue(server, total)
        script, path, args = "store_cycle.lua", f"{AGL}/queues/rollouts/dequeue", []
    elif scenario == "enqueue":
        bodies = (orjson.dumps({"rollouts": [{"input": task_input(i), "mode": "train"}]}) for i in range(100))
        args = [str(body_file(workdir / "enqueue.bin", bodies)), "application/json"]
        script, path = "store_post.lua", f"{AGL}/queues/rollouts/enqueue"
    else:
        rollouts = running_rollouts(server)
        make = span_json if scenario == "spans" else otlp_export
        bodies = (make(rollouts[i % len(rollouts)], i + 1) for i in range(total))
        kind = "application/json" if scenario == "spans" else "application/x-protobuf"
        args = [str(body_file(workdir / f"{scenario}.bin", bodies)), kind]
        script, path = "store_post.lua", f"{AGL}/spans" if scenario == "spans" else "/v1/traces"
    if warmup:
        run_wrk(server.url + path, script, warmup, args, workdir / f"wrk-{scenario}-warmup.log")
    result = run_wrk(server.url + path, script, seconds, args, workdir / f"wrk-{scenario}.log")
    errors = (
        int(result["non2xx"]) + int(sum(result["socket_errors"].values())) + int(result.get("unexpected", 0))
    )
    latency = result["latency_us"]
    return Figure(
        scenario, server.name, result["count"] / (result["duration_us"] / 1e6), latency["p50"] / 1000,
        latency["p99"] / 1000, errors,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per scenario and server")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of untimed warm-up before each (default 2)"
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"scenarios to run, of: {','.join(SCENARIOS)}"
    )
    parser.add_argument("--legacy-python", default=None, help="a Python with agentlightning 0.3.0")
    args = parser.parse_args()
    seconds, warmup = (1, 0) if args.quick else (args.duration, args.warmup)
    scenarios = [s for s in args.only.split(",") if s]
    began = time.monotonic()
    figures: list[Figure] = []
    started: list[StoreServer] = []
    with tempfile.TemporaryDirectory(prefix="agl-store-bench-") as tmp:
        workdir = Path(tmp)
        legacy_python, how = find_legacy_python(argparse.Namespace(no_legacy=False, **vars(args)))
        if legacy_python is None:
            raise SystemExit(f"0.3.0's store server is needed beside agl: {how}")
        started += servers(workdir, legacy_python)
        try:
            for server in started:
                server.start(workdir, free_port())
                log(f"[{server.name}] ready at {server.url}")
            for scenario in scenarios:
                for server in started:
                    figure = measure(server, scenario, seconds, warmup, workdir)
                    log(f"[{server.name}] {scenario}: {figure.per_second:,.0f}/s, p99 {figure.p99_ms:.2f} ms")
                    figures.append(figure)
        finally:
            for server in started:
                server.stop()
    report(figures, scenarios, started, time.monotonic() - began)


def report(figures: list[Figure], scenarios: list[str], started: list[StoreServer], took: float) -> None:
    print(f"\n  {'scenario':<9} {'server':<15} {'per second':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for figure in figures:
        print(
            f"  {figure.scenario:<9} {figure.server:<15} {figure.per_second:>11,.0f} {figure.p50_ms:>8.2f}"
            f" {figure.p99_ms:>8.2f} {figure.errors:>7}"
        )
    print("\nFigures (every ratio from this run; target >= 2)")
    by = {(f.scenario, f.server): f for f in figures}
    for scenario in scenarios:
        ours, theirs = by[(scenario, "agl (durable)")], by[(scenario, "0.3.0 store")]
        if not theirs.per_second:
            print(f"  {scenario:<9} agl (durable) / 0.3.0 in memory  no figure: 0.3.0 finished nothing")
            continue
        ratio = ours.per_second / theirs.per_second
        print(
            f"  {scenario:<9} agl (durable) / 0.3.0 in memory  {ratio:6.2f}  {'met' if ratio >= 2 else 'missed'}"
        )
    ready = ", ".join(f"{server.name} {server.ready_after:.2f} s" for server in started)
    print(f"  start to first answer (a restart after a crash is as quick): {ready}")
    print(f"(the whole run took {took:.0f} s; wrk: -t1 -c32; bench files in {BENCH.relative_to(REPO)})")


if __name__ == "__main__":
    main()
