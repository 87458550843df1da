"""The store API and OTLP export over HTTP, on the real daemon: what agl answers where
0.3.0's shapes leave a choice (tests/beside_agentlightning/ compares the rest with 0.3.0
itself), its refusals, and its durability: what was answered survives `kill -9`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import itertools
import json
import math
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from calls import count_calls, eventually, still_after
from daemon import Daemon, connect, fetch, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from agl_cli import AgentLightningServer
from agl_cli.server import query_pages
from agl_cli.server.protocol import GRACEFUL_SHUTDOWN_SECONDS
from agl_cli.server.query_pages import IN_MEMORY
from agl_cli.store import MemoryStore

AGL = "/v1/agl"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON_TYPE = {"Content-Type": "application/json"}


def enqueue(daemon: Daemon, *inputs: Any, **fields: Any) -> list[dict[str, Any]]:
    response = daemon.post(
        f"{AGL}/queues/rollouts/enqueue", json={"rollouts": [{"input": i, **fields} for i in inputs]}
    )
    assert response.status_code == 201, response.text
    rollouts: list[dict[str, Any]] = response.json()
    return rollouts


def dequeue(daemon: Daemon, worker_id: str = "w-1") -> dict[str, Any]:
    [handed] = daemon.post(f"{AGL}/queues/rollouts/dequeue", json={"worker_id": worker_id}).json()
    return dict(handed)


def attribute(key: str, value: str | int) -> KeyValue:
    any_value = AnyValue(string_value=value) if isinstance(value, str) else AnyValue(int_value=value)
    return KeyValue(key=key, value=any_value)


def export(*spans: Span, resource: dict[str, str] | None = None) -> bytes:
    request = ExportTraceServiceRequest()
    group = ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])
    group.resource.attributes.extend(attribute(k, v) for k, v in (resource or {}).items())
    request.resource_spans.append(group)
    return bytes(request.SerializeToString())


def proto_span(name: str, span_id: bytes, **attributes: str | int) -> Span:
    return Span(
        trace_id=bytes(range(16)), span_id=span_id, name=name, start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_001_000_000_000, attributes=[attribute(k, v) for k, v in attributes.items()],
    )  # fmt: skip


def spans_of(daemon: Daemon, rollout_id: str) -> list[dict[str, Any]]:
    page = daemon.get(f"{AGL}/spans", params={"rollout_id": rollout_id}).json()
    spans: list[dict[str, Any]] = page["items"]
    return spans


def test_otlp_spans_are_kept_with_their_ids_from_the_resource_or_the_span(daemon: Daemon) -> None:
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    ids = {
        "agentlightning.rollout_id": handed["rollout_id"],
        "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
    }
    first = proto_span("llm", b"\x01" * 8, tokens=12)
    first.status.code = Status.STATUS_CODE_ERROR
    second = proto_span("tool", b"\x02" * 8, **ids, **{"agentlightning.span_sequence_id": 40})
    second.parent_span_id, second.status.code = b"\x01\x02", 5  # a short id, and a code of a newer OTLP's
    response = daemon.post("/v1/traces", content=gzip.compress(export(first, second, resource=ids)),
                           headers={**PROTOBUF, "Content-Encoding": "gzip"})  # fmt: skip
    assert (response.status_code, response.headers["content-type"]) == (200, "application/x-protobuf")
    assert not ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    kept = spans_of(daemon, handed["rollout_id"])
    assert [(s["name"], s["sequence_id"], s["span_id"]) for s in kept] == [
        ("llm", 1, "01" * 8),
        ("tool", 40, "02" * 8),
    ]
    assert kept[0]["attributes"] == {"tokens": 12}
    assert (kept[0]["start_time"], kept[0]["trace_id"]) == (1_700_000_000.0, bytes(range(16)).hex())
    assert (kept[0]["parent_id"], kept[1]["parent_id"]) == (None, "0000000000000102")
    assert [s["status"]["status_code"] for s in kept] == ["ERROR", "UNSET"]
    assert daemon.get(f"{AGL}/rollouts/{handed['rollout_id']}").json()["status"] == "running"


def test_otlp_spans_that_cannot_be_placed_are_rejected_and_the_others_kept(daemon: Daemon) -> None:
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    good = proto_span("kept", b"\x03" * 8, **{
        "agentlightning.rollout_id": handed["rollout_id"], "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
    })  # fmt: skip
    nameless = proto_span("nowhere", b"\x04" * 8)
    stranger = proto_span("stranger", b"\x05" * 8, **{
        "agentlightning.rollout_id": "ro-000000000000", "agentlightning.attempt_id": "at-00000000",
    })  # fmt: skip
    mapped = proto_span("mapped", b"\x06" * 8, **{
        "agentlightning.rollout_id": handed["rollout_id"], "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
    })  # fmt: skip
    mapped.attributes.append(
        KeyValue(key="usage", value=AnyValue(kvlist_value=KeyValueList(values=[attribute("in", 3)])))
    )
    response = daemon.post("/v1/traces", content=export(good, nameless, stranger), headers=PROTOBUF)
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 2 and partial.error_message
    response = daemon.post("/v1/traces", content=export(mapped), headers=PROTOBUF)
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.error_message == (
        "A span cannot be kept: its attribute 'usage' holds no string, number or boolean, nor a list of one kind of them."
    )
    assert [s["name"] for s in spans_of(daemon, handed["rollout_id"])] == ["kept"]


def test_an_otlp_span_that_is_refused_takes_no_sequence_number(daemon: Daemon) -> None:
    """Its rollout's count of numbers stays as it was, as for a span refused with a 404."""
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    ids = {"rollout_id": handed["rollout_id"], "attempt_id": handed["attempt"]["attempt_id"]}
    strangers = [
        proto_span("numbered", b"\x07" * 8, **{
            "agentlightning.rollout_id": ids["rollout_id"], "agentlightning.attempt_id": "at-nope",
            "agentlightning.span_sequence_id": 50,
        }),
        proto_span("unnumbered", b"\x08" * 8, **{
            "agentlightning.rollout_id": ids["rollout_id"], "agentlightning.attempt_id": "at-nope",
        }),
    ]  # fmt: skip
    answer = daemon.post("/v1/traces", content=export(*strangers), headers=PROTOBUF)
    assert ExportTraceServiceResponse.FromString(answer.content).partial_success.rejected_spans == 2
    kept = proto_span("kept", b"\x09" * 8, **{f"agentlightning.{key}": value for key, value in ids.items()})
    assert daemon.post("/v1/traces", content=export(kept), headers=PROTOBUF).status_code == 200
    assert [span["sequence_id"] for span in spans_of(daemon, ids["rollout_id"])] == [1]
    assert daemon.post(f"{AGL}/spans/next", json=ids).json() == {"sequence_id": 2}


def test_a_span_number_must_leave_room_for_the_next_one(daemon: Daemon) -> None:
    """The next number is one more than the highest: above 2**62 it could pass what SQLite holds."""
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    ids = {"rollout_id": handed["rollout_id"], "attempt_id": handed["attempt"]["attempt_id"]}

    def span(number: int, span_id: str) -> dict[str, Any]:
        return {
            **ids, "sequence_id": number, "trace_id": "0" * 32, "span_id": span_id, "parent_id": None, "name": "s",
            "status": {"status_code": "OK"}, "attributes": {}, "events": [], "links": [], "start_time": 1.0,
            "end_time": 2.0, "context": None, "parent": None, "resource": {"attributes": {}, "schema_url": ""},
        }  # fmt: skip

    refused = daemon.post(f"{AGL}/spans", json=span(2**62 + 1, "1" * 16))
    assert (refused.status_code, refused.json()["detail"][0]["loc"]) == (422, ["body", "sequence_id"])
    beyond = proto_span("beyond", b"\x0a" * 8, **{
        "agentlightning.rollout_id": ids["rollout_id"], "agentlightning.attempt_id": ids["attempt_id"],
        "agentlightning.span_sequence_id": 2**63 - 1,
    })  # fmt: skip
    answer = daemon.post("/v1/traces", content=export(beyond), headers=PROTOBUF)
    assert ExportTraceServiceResponse.FromString(answer.content).partial_success.rejected_spans == 1
    assert daemon.post(f"{AGL}/spans", json=span(2**62, "2" * 16)).status_code == 201
    assert daemon.post(f"{AGL}/spans/next", json=ids).json() == {"sequence_id": 2**62 + 1}
    assert [span["sequence_id"] for span in spans_of(daemon, ids["rollout_id"])] == [2**62]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "application/json"}, b"{}", 400),
        (PROTOBUF, b"\xff\xff not protobuf", 400),
        ({**PROTOBUF, "Content-Encoding": "gzip"}, b"not gzip", 400),
        (PROTOBUF, b"", 200),  # an empty export
        ({**PROTOBUF, "Content-Encoding": "gzip"}, b"", 200),  # the same, as 0.3.0 takes it
    ],
)
def test_an_otlp_export_that_cannot_be_read_is_a_400(
    shared_daemon: Daemon, headers: dict[str, str], body: bytes, status: int
) -> None:
    assert shared_daemon.post("/v1/traces", content=body, headers=headers).status_code == status


def test_a_gzipped_otlp_export_is_held_to_the_body_limit_once_unzipped(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A few hundred bytes of gzip can unzip to any size: the limit is for what the daemon must hold."""
    daemon = make_daemon("--max-body-size", "100000")
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    ids = {
        "agentlightning.rollout_id": handed["rollout_id"],
        "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
    }

    def padded(name: str, size: int) -> bytes:
        return export(proto_span(name, name.encode().ljust(8, b"-"), pad="x" * size), resource=ids)

    gzipped = {**PROTOBUF, "Content-Encoding": "gzip"}
    bomb = gzip.compress(padded("bomb", 100_000))
    assert len(bomb) < 1_000
    refused = daemon.post("/v1/traces", content=bomb, headers=gzipped)
    assert (refused.status_code, refused.headers["content-type"]) == (413, "application/x-protobuf")
    assert b"unzipped, is larger than the limit of 100000 bytes" in refused.content
    assert spans_of(daemon, handed["rollout_id"]) == []
    # Two gzip members (two exports, which protobuf reads as one), within the limit together.
    members = gzip.compress(padded("first", 40_000)) + gzip.compress(padded("second", 40_000))
    assert daemon.post("/v1/traces", content=members, headers=gzipped).status_code == 200
    assert [span["name"] for span in spans_of(daemon, handed["rollout_id"])] == ["first", "second"]
    truncated = gzip.compress(padded("cut", 10))[:-8]
    assert daemon.post("/v1/traces", content=truncated, headers=gzipped).status_code == 400


def test_an_export_of_more_spans_than_exporters_send_is_refused_whole(daemon: Daemon) -> None:
    """Empty spans take two bytes each: a few megabytes of them would take gigabytes and
    minutes to convert. OpenTelemetry's exporters send 512 at a time."""
    from agl_cli.server.otlp import MAX_SPANS_PER_EXPORT

    enqueue(daemon, "x")
    handed = dequeue(daemon)
    ids = {
        "agentlightning.rollout_id": handed["rollout_id"],
        "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
    }
    many = export(*[Span()] * (MAX_SPANS_PER_EXPORT + 1), resource=ids)
    refused = daemon.post("/v1/traces", content=many, headers=PROTOBUF)
    assert (refused.status_code, refused.headers["content-type"]) == (413, "application/x-protobuf")
    assert f"at most {MAX_SPANS_PER_EXPORT} spans".encode() in refused.content
    assert spans_of(daemon, handed["rollout_id"]) == []
    most = export(*[proto_span("s", b"\x01" * 8)] * MAX_SPANS_PER_EXPORT, resource=ids)
    assert daemon.post("/v1/traces", content=most, headers=PROTOBUF).status_code == 200


def test_a_gzip_body_of_more_members_than_exporters_send_is_a_400(daemon: Daemon) -> None:
    """Exporters send one; each is unzipped on its own."""
    from agl_cli.server.otlp import MAX_GZIP_MEMBERS

    gzipped = {**PROTOBUF, "Content-Encoding": "gzip"}
    assert (
        daemon.post("/v1/traces", content=gzip.compress(b"") * MAX_GZIP_MEMBERS, headers=gzipped).status_code
        == 200
    )
    too_many = gzip.compress(b"") * (MAX_GZIP_MEMBERS + 1)
    refused = daemon.post("/v1/traces", content=too_many, headers=gzipped)
    assert refused.status_code == 400 and f"more than {MAX_GZIP_MEMBERS} members".encode() in refused.content


def test_unzipping_stops_at_the_limit_to_the_byte() -> None:
    from agl_cli.server.otlp import UnzippedTooLarge, gunzip

    body = gzip.compress(b"x" * 1000) + gzip.compress(b"y" * 24)
    assert gunzip(body, 1024) == b"x" * 1000 + b"y" * 24
    with pytest.raises(UnzippedTooLarge):
        gunzip(body, 1023)


def test_a_wait_for_rollouts_ends_when_its_client_leaves(make_daemon: Callable[..., Daemon]) -> None:
    """Else each runner killed while it waited held one of --max-requests for good."""
    daemon = make_daemon("--max-requests", "2")
    [queued] = enqueue(daemon, "x")
    body = json.dumps({"rollout_ids": [queued["rollout_id"]], "timeout": None})
    head = f"POST {AGL}/waits/rollouts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    for _ in range(2):
        with connect(daemon.url) as sock:
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode())
            wait_until(lambda: daemon.requests_in_flight() == 1, "the wait to begin")
        wait_until(lambda: daemon.requests_in_flight() == 0, "the wait to end with its client", timeout=15)
    assert daemon.get(f"{AGL}/rollouts/{queued['rollout_id']}").status_code == 200


def test_a_wait_for_rollouts_with_a_nan_timeout_is_a_422(daemon: Daemon) -> None:
    [queued] = enqueue(daemon, "x")
    for timeout in ("NaN", '"NaN"'):
        body = f'{{"rollout_ids": ["{queued["rollout_id"]}"], "timeout": {timeout}}}'
        refused = daemon.post(f"{AGL}/waits/rollouts", content=body, headers=JSON_TYPE)
        assert refused.status_code == 422 and "not NaN" in refused.text, refused.text
    finished = daemon.post(
        f"{AGL}/waits/rollouts", json={"rollout_ids": [queued["rollout_id"]], "timeout": 0}
    )
    assert finished.json() == []


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/logs"])
def test_otlp_metrics_and_logs_are_not_kept(daemon: Daemon, path: str) -> None:
    assert daemon.post(path, content=b"", headers=PROTOBUF).status_code == 501


def test_an_unknown_rollout_or_attempt_is_a_404_at_once_where_0_3_0_fails_with_a_500(daemon: Daemon) -> None:
    [queued] = enqueue(daemon, "x")
    refusals = [
        daemon.post(f"{AGL}/rollouts/ro-000000000000", json={"status": "failed"}),
        daemon.post(f"{AGL}/rollouts/{queued['rollout_id']}/attempts/latest", json={"status": "failed"}),
        daemon.post(f"{AGL}/rollouts/ro-000000000000/attempts", json={}),
    ]
    assert [(r.status_code, set(r.json())) for r in refusals] == [(404, {"detail"})] * 3
    assert daemon.get(f"{AGL}/rollouts/ro-000000000000").json() is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "Limit must be greater than 0 or -1 for no limit"),
        ({"offset": "-1"}, "Offset must be greater than or equal to 0"),
        (
            {"sort_by": "attempt"},
            "Invalid sort_by: attempt, allowed fields are: rollout_id, input, start_time,",
        ),
    ],
)
def test_a_bad_page_or_sort_is_a_400_in_0_3_0s_words(
    shared_daemon: Daemon, params: dict[str, str], message: str
) -> None:
    response = shared_daemon.get(f"{AGL}/rollouts", params=params)
    assert response.status_code == 400 and response.json()["detail"].startswith(message)


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        (f"{AGL}/queues/rollouts/enqueue", {"rollouts": [{"mode": "train"}]}, ["body", "rollouts", 0, "input"]),
        (f"{AGL}/queues/rollouts/enqueue", {"rollouts": [{"input": 1, "config": {"max_attempts": 0}}]},
         ["body", "rollouts", 0, "config", "max_attempts"]),
        (f"{AGL}/resources", {"x": {"resource_type": "bogus"}}, ["body", "x"]),
        (f"{AGL}/waits/rollouts", {"timeout": 1}, ["body", "rollout_ids"]),
    ],
)  # fmt: skip
def test_a_body_that_does_not_validate_is_fastapis_422_and_changes_nothing(
    shared_daemon: Daemon, path: str, body: Any, loc: list[Any]
) -> None:
    response = shared_daemon.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert shared_daemon.get(f"{AGL}/statistics").json()["total_rollouts"] == 0


def test_numbers_json_cannot_carry_are_kept_by_name_as_otlps_json_writes_them(daemon: Daemon) -> None:
    """0.3.0's client writes a NaN (a reward span's value, a heartbeat's figure) as Python
    does, `NaN`; 0.3.0's server read it and then failed to answer with it. A span's
    attribute cannot be null; agentlightning reads a reward of "NaN" back as NaN."""
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    span = json.dumps({
        "rollout_id": handed["rollout_id"], "attempt_id": handed["attempt"]["attempt_id"], "sequence_id": 1,
        "trace_id": "0" * 32, "span_id": "0" * 16, "parent_id": None, "name": "reward", "status": {"status_code": "OK"},
        "attributes": {"reward": math.nan, "bound": math.inf}, "events": [], "links": [], "start_time": 1.0,
        "end_time": 2.0, "context": None, "parent": None, "resource": {"attributes": {}, "schema_url": ""},
    }).encode()  # fmt: skip
    kept = daemon.post(f"{AGL}/spans", content=span, headers=JSON_TYPE)
    named = {"reward": "NaN", "bound": "Infinity"}
    assert (kept.status_code, kept.json()["attributes"]) == (201, named)
    exported = proto_span("exported", b"\x01" * 8, **{
        "agentlightning.rollout_id": handed["rollout_id"], "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
    })  # fmt: skip
    exported.attributes.append(KeyValue(key="loss", value=AnyValue(double_value=-math.inf)))
    assert daemon.post("/v1/traces", content=export(exported), headers=PROTOBUF).status_code == 200
    [first, second] = spans_of(daemon, handed["rollout_id"])
    assert (first["attributes"], second["attributes"]["loss"]) == (named, "-Infinity")
    beat = daemon.post(f"{AGL}/workers/w-1", content=b'{"heartbeat_stats": {"cpu": NaN, "io": %d}}' % 2**70,
                       headers=JSON_TYPE)  # fmt: skip
    assert (beat.status_code, beat.json()["heartbeat_stats"]) == (200, {"cpu": "NaN", "io": float(2**70)})


def test_a_traced_reward_that_is_no_number_leaves_the_result_readable_without_a_reward(
    daemon: Daemon,
) -> None:
    enqueue(daemon, "x")
    handed = dequeue(daemon)
    traced = proto_span("reward", b"\x02" * 8, **{
        "agentlightning.rollout_id": handed["rollout_id"], "agentlightning.attempt_id": handed["attempt"]["attempt_id"],
        "agentlightning.reward.0.value": "high",
    })  # fmt: skip
    assert daemon.post("/v1/traces", content=export(traced), headers=PROTOBUF).status_code == 200
    end_attempt(daemon, handed, "succeeded")
    [result] = daemon.api("GET", "/v1/rollouts").json()["rollouts"]
    assert (result["rollout_id"], result["final_reward"]) == (handed["rollout_id"], None)
    assert daemon.api("GET", f"/v1/rollouts/{handed['rollout_id']}").json()["final_reward"] is None


def test_a_null_where_0_3_0_refuses_one_is_a_400(daemon: Daemon) -> None:
    [queued] = enqueue(daemon, "x")
    response = daemon.post(f"{AGL}/rollouts/{queued['rollout_id']}", json={"status": None})
    assert response.json() == {"detail": "status is invalid; it cannot be a null value."}
    assert response.status_code == 400


@contextlib.contextmanager
def waiting_for(daemon: Daemon, rollout_id: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """A `POST /waits/rollouts` for one rollout, under way (the daemon holds it) when the
    block begins; what it yields gives the wait's answer, which must come within 10 s."""
    wait = {"rollout_ids": [rollout_id], "timeout": 60}
    with (
        httpx.Client(base_url=daemon.url, timeout=90) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        waiting = pool.submit(client.post, f"{AGL}/waits/rollouts", json=wait)
        wait_until(lambda: daemon.requests_in_flight() == 1, "the wait to begin")
        yield lambda: list(waiting.result(timeout=10).json())


def end_attempt(daemon: Daemon, handed: dict[str, Any], status: str) -> None:
    """End the attempt a dequeue handed out."""
    path = f"{AGL}/rollouts/{handed['rollout_id']}/attempts/{handed['attempt']['attempt_id']}"
    daemon.post(path, json={"status": status}).raise_for_status()


@pytest.mark.parametrize("timeout", [None, 60])
def test_a_wait_the_daemons_stop_cuts_short_is_a_503_for_0_3_0s_client_to_ask_again(
    daemon: Daemon, timeout: float | None
) -> None:
    """Answered with what finished so far, a wait with no time limit (or time left) would
    read as over: an algorithm would go on with the rollouts it waits for unfinished."""
    [queued] = enqueue(daemon, "x")
    wait = {"rollout_ids": [queued["rollout_id"]], "timeout": timeout}
    with (
        httpx.Client(base_url=daemon.url, timeout=90) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        waiting = pool.submit(client.post, f"{AGL}/waits/rollouts", json=wait)
        wait_until(lambda: daemon.requests_in_flight() == 1, "the wait to begin")
        assert daemon.terminate() == 0
        answer = waiting.result(timeout=10)
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "5")
    assert answer.json() == {
        "detail": "agl is stopping before the rollouts waited for have finished; ask again once it is back."
    }


async def test_a_rollout_that_ends_wakes_the_waits_for_it_not_every_wait() -> None:
    """Each wait woken reads its rollouts again: were every wait woken by every result,
    the cost of a result would grow with the waits open, and the route is open."""
    store = MemoryStore()
    reads = count_calls(store, "finished_rollouts")
    server = AgentLightningServer(port=0, store=store)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.endpoint, timeout=60) as client:
            enqueued = await client.post(
                f"{AGL}/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}] * 2}
            )
            awaited, other = (rollout["rollout_id"] for rollout in enqueued.json())
            await client.post(f"{AGL}/queues/rollouts/dequeue", json={"limit": 2})
            wait = {"rollout_ids": [awaited], "timeout": 60}
            waits = [asyncio.create_task(client.post(f"{AGL}/waits/rollouts", json=wait)) for _ in range(50)]
            await eventually(lambda: reads["finished_rollouts"] >= 50, "every wait reading once")
            before = reads["finished_rollouts"]
            for rollout_id in (other, awaited):
                attempt = f"{AGL}/rollouts/{rollout_id}/attempts/latest"
                (await client.post(attempt, json={"status": "succeeded"})).raise_for_status()
                if rollout_id == other:  # woken, the waits would read again within the second
                    unread = await still_after(lambda: reads["finished_rollouts"] == before, 1.0)
                    assert unread, "the waits for another rollout were woken"
            answers = await asyncio.gather(*waits)
    finally:
        await server.stop()
    assert {answer.json()[0]["status"] for answer in answers} == {"succeeded"}
    assert reads["finished_rollouts"] == before + 50  # each wait woken once, by its own rollout


async def test_an_embedded_poll_for_a_rollout_is_woken_by_its_own_result_not_every_one() -> None:
    """Each poll woken consumes again, which is a write: were every poll woken by every
    result, a program polling for many rollouts would make a write per poll per result."""
    store = MemoryStore()
    consumed = count_calls(store, "consume_rollout")
    server = AgentLightningServer(port=0, store=store)
    await server.start()
    try:
        awaited, other = [await server.queue_task(sample) for sample in ("awaited", "other")]
        polls = [asyncio.ensure_future(server.poll_completed_rollout(awaited, timeout=60)) for _ in range(20)]
        await eventually(lambda: consumed["consume_rollout"] >= 20, "every poll looking once")
        async with httpx.AsyncClient(base_url=server.endpoint, timeout=60) as client:
            (
                await client.post("/rollout", json={"rollout_id": other, "final_reward": 1.0})
            ).raise_for_status()
            # woken, they would consume within the second
            unconsumed = await still_after(lambda: consumed["consume_rollout"] == 20, 1.0)
            assert unconsumed, "the polls for another rollout were woken"
            (
                await client.post("/rollout", json={"rollout_id": awaited, "final_reward": 1.0})
            ).raise_for_status()
        done, waiting = await asyncio.wait(polls, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        [got] = [poll.result() for poll in done]
        assert got is not None and got.rollout_id == awaited
    finally:
        await server.stop()
    assert all(poll.result() is None for poll in waiting)  # the stop ended them


def test_a_wait_returns_as_soon_as_the_last_rollout_finishes(daemon: Daemon) -> None:
    [queued] = enqueue(daemon, "x")
    handed = dequeue(daemon)
    with waiting_for(daemon, queued["rollout_id"]) as answer:
        end_attempt(daemon, handed, "succeeded")
        [finished] = answer()
    assert (finished["rollout_id"], finished["status"]) == (queued["rollout_id"], "succeeded")


@pytest.mark.parametrize(
    ("path", "in_the_body"),
    [("/v1/tasks/{}/cancel", False), ("/v1/tasks/cancel", True), ("/v1/queue/cancel", False)],
)
def test_a_wait_returns_as_soon_as_its_rollout_is_cancelled_by_a_person(
    daemon: Daemon, path: str, in_the_body: bool
) -> None:
    [queued] = enqueue(daemon, "x")
    rollout_id = queued["rollout_id"]
    body = {"rollout_ids": [rollout_id]} if in_the_body else None
    with waiting_for(daemon, rollout_id) as answer:
        assert daemon.api("POST", path.format(rollout_id), json=body).status_code == 200
        [finished] = answer()
    assert (finished["rollout_id"], finished["status"]) == (rollout_id, "cancelled")


def test_a_wait_for_a_retried_rollout_waits_for_its_new_end(daemon: Daemon) -> None:
    [queued] = enqueue(daemon, "x")
    rollout_id = queued["rollout_id"]
    end_attempt(daemon, dequeue(daemon), "failed")
    daemon.api("POST", "/v1/tasks/retry", json={"rollout_ids": [rollout_id]}).raise_for_status()
    assert daemon.get(f"{AGL}/rollouts/{rollout_id}").json()["status"] == "requeuing"
    with waiting_for(daemon, rollout_id) as answer:
        handed = dequeue(daemon)
        assert handed["attempt"]["sequence_id"] == 2
        end_attempt(daemon, handed, "succeeded")
        [finished] = answer()
    assert (finished["rollout_id"], finished["status"]) == (rollout_id, "succeeded")


def test_a_legacy_report_ends_a_task_the_store_api_brought_back_after_its_result(daemon: Daemon) -> None:
    """Cancelled after it completed (0.3.0's update allows it), then retried: its next
    report keeps the first result, counts as a duplicate and ends the task (it was a 500)."""
    [rollout_id] = daemon.queue("x")
    assert daemon.claim() is not None
    daemon.report(rollout_id, final_reward=1.0)
    daemon.post(f"{AGL}/rollouts/{rollout_id}", json={"status": "cancelled"}).raise_for_status()
    daemon.api("POST", "/v1/tasks/retry", json={"rollout_ids": [rollout_id]}).raise_for_status()
    assert daemon.claim() is not None
    with waiting_for(daemon, rollout_id) as answer:
        reported = daemon.post("/rollout", json={"rollout_id": rollout_id, "final_reward": 2.0})
        assert reported.status_code == 200
        [finished] = answer()
    assert (finished["rollout_id"], finished["status"]) == (rollout_id, "succeeded")
    task = daemon.api("GET", f"/v1/tasks/{rollout_id}").json()
    assert (task["status"], task["duplicates"]) == ("completed", 1)
    assert [r["final_reward"] for r in daemon.api("GET", "/v1/rollouts").json()["rollouts"]] == [1.0]


def test_a_wait_returns_as_soon_as_a_claim_finds_its_rollout_timed_out(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A claim looks for expired claims before the sweep does: it must wake the waits too."""
    daemon = make_daemon("--task-timeout", "1", "--max-attempts", "1")
    [rollout_id] = daemon.queue("x")
    assert daemon.claim() is not None
    with (
        waiting_for(daemon, rollout_id) as answer,
        httpx.Client(base_url=daemon.url, timeout=90) as poller,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        # a long poll claims again the moment the claim runs out, a second before the sweep may
        polling = pool.submit(poller.get, "/task", params={"wait": 5})
        [finished] = answer()
        assert polling.result(timeout=10).json() == {"is_available": False, "task": None}
    assert (finished["rollout_id"], finished["status"]) == (rollout_id, "failed")


def test_a_rollout_a_legacy_worker_holds_without_time_limits_ends_when_the_claim_runs_out(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Its config sets no time limit, and the legacy worker that claimed it sends no sign
    of life: after --task-timeout it ends as its config says (one attempt: failed)."""
    daemon = make_daemon("--task-timeout", "1")
    [queued] = enqueue(daemon, "x")
    assert daemon.claim() is not None
    with waiting_for(daemon, queued["rollout_id"]) as answer:
        [finished] = answer()
    [attempt] = daemon.get(f"{AGL}/rollouts/{queued['rollout_id']}/attempts").json()["items"]
    assert (finished["status"], attempt["status"]) == ("failed", "unresponsive")


def test_everything_the_store_api_answered_survives_kill_9(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    resources = daemon.post(
        f"{AGL}/resources/main",
        json={"p": {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}},
    ).json()
    queued = enqueue(daemon, *range(5), config={"max_attempts": 3, "retry_condition": ["failed"]})
    handed = [dequeue(daemon) for _ in range(3)]
    for index, rollout in enumerate(handed):
        ids = {"rollout_id": rollout["rollout_id"], "attempt_id": rollout["attempt"]["attempt_id"]}
        span = {
            **ids, "sequence_id": 1, "trace_id": "0" * 32, "span_id": f"{index:016x}", "parent_id": None,
            "name": "step", "status": {"status_code": "OK"}, "attributes": {"i": index}, "events": [],
            "links": [], "start_time": 1.0, "end_time": 2.0, "context": None, "parent": None,
            "resource": {"attributes": {}, "schema_url": ""},
        }  # fmt: skip
        assert daemon.post(f"{AGL}/spans", json=span).status_code == 201
    outcome = {handed[0]["rollout_id"]: "succeeded", handed[1]["rollout_id"]: "failed"}
    for rollout_id, status in outcome.items():
        assert (
            daemon.post(f"{AGL}/rollouts/{rollout_id}/attempts/latest", json={"status": status}).status_code
            == 200
        )
    before = daemon.post(f"{AGL}/rollouts/search", json={}).json()
    first = {"rollout_id": handed[0]["rollout_id"], "attempt_id": handed[0]["attempt"]["attempt_id"]}
    assert daemon.post(f"{AGL}/spans/next", json=first).json() == {"sequence_id": 2}

    daemon.kill()
    daemon.start()

    assert daemon.post(f"{AGL}/rollouts/search", json={}).json() == before
    assert daemon.post(f"{AGL}/spans/next", json=first).json() == {"sequence_id": 3}
    assert [r["status"] for r in before["items"]] == [
        "succeeded",
        "requeuing",
        "running",
        "queuing",
        "queuing",
    ]
    assert daemon.get(f"{AGL}/resources/latest").json() == resources
    assert [len(spans_of(daemon, r["rollout_id"])) for r in handed] == [1, 1, 1]
    assert daemon.get(f"{AGL}/statistics").json()["total_workers"] == 1
    assert len(queued) == 5


def test_a_dequeue_hands_out_at_most_a_thousand_rollouts_at_once(daemon: Daemon) -> None:
    enqueue(daemon, *range(1_001))
    first = daemon.post(f"{AGL}/queues/rollouts/dequeue", json={"limit": 5_000}).json()
    rest = daemon.post(f"{AGL}/queues/rollouts/dequeue", json={"limit": 5_000}).json()
    assert (len(first), len(rest)) == (1_000, 1)
    assert [r["input"] for r in first + rest] == list(range(1_001))


def test_a_large_enqueue_is_queued_in_order_with_its_configs_and_start_times(daemon: Daemon) -> None:
    """Past a thousand rollouts an enqueue is staged in parts and queued by one commit: its
    answer, the rollouts as stored, and the order they are handed out are as for a small one."""
    config = {
        "timeout_seconds": 30.0,
        "unresponsive_seconds": None,
        "max_attempts": 3,
        "retry_condition": ["failed"],
    }
    answered = enqueue(daemon, *range(2_500), mode="val", config=config)

    assert [r["input"] for r in answered] == list(range(2_500))
    assert all(r["config"] == config and r["mode"] == "val" for r in answered)
    assert all(a["start_time"] < b["start_time"] for a, b in itertools.pairwise(answered))
    stored = daemon.get(f"{AGL}/rollouts", params={"limit": 3_000}).json()
    assert sorted(stored["items"], key=lambda r: r["input"]) == answered
    handed = daemon.post(f"{AGL}/queues/rollouts/dequeue", json={"limit": 1_000}).json()
    assert [r["rollout_id"] for r in handed] == [r["rollout_id"] for r in answered[:1_000]]
    assert handed[0]["config"] == config


def staged_rollouts(daemon: Daemon) -> int:
    """Rollouts staged in batches not committed (yet), read from the daemon's file."""
    with contextlib.closing(sqlite3.connect(daemon.state_dir / "agl.db")) as db:
        [(count,)] = db.execute(
            "SELECT coalesce(sum(staged), 0) FROM batches WHERE committed_time IS NULL"
        ).fetchall()
    return int(count)


def large_enqueue(
    daemon: Daemon, pool: concurrent.futures.Executor
) -> concurrent.futures.Future[httpx.Response]:
    """An enqueue of 60,000 rollouts, under way once its first part is staged."""
    body = {"rollouts": [{"input": n} for n in range(60_000)]}
    sent = pool.submit(httpx.post, f"{daemon.url}{AGL}/queues/rollouts/enqueue", json=body, timeout=120)
    wait_until(lambda: staged_rollouts(daemon) > 0 or sent.done(), "the enqueue's first part staged")
    assert not sent.done(), "the enqueue was written at once"
    return sent


def test_claims_are_answered_while_a_large_enqueue_is_written_and_it_is_queued_at_once(
    daemon: Daemon,
) -> None:
    enqueue(daemon, "first")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = large_enqueue(daemon, pool)

        claimed = fetch("GET", f"{daemon.url}/task", timeout=30).json()
        total = daemon.get(f"{AGL}/statistics").json()["total_rollouts"]
        assert not sent.done()
        answer = sent.result()

    assert claimed["is_available"] and claimed["task"]["input"] == "first"
    assert total == 1  # none of the enqueue's rollouts were seen before its commit
    assert answer.status_code == 201 and len(answer.json()) == 60_000
    assert daemon.get(f"{AGL}/statistics").json()["total_rollouts"] == 60_001


def test_a_large_enqueue_cut_short_by_kill_9_leaves_nothing(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    enqueue(daemon, "kept")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = large_enqueue(daemon, pool)
        daemon.kill()
        with pytest.raises(httpx.TransportError):
            sent.result()

    daemon.start()

    assert [r["input"] for r in daemon.get(f"{AGL}/rollouts").json()["items"]] == ["kept"]
    assert staged_rollouts(daemon) == 0


def test_a_bad_rollout_deep_in_a_large_enqueue_is_the_same_422_and_changes_nothing(daemon: Daemon) -> None:
    rollouts: list[dict[str, Any]] = [{"input": n} for n in range(2_500)]
    rollouts[1_700]["mode"] = "bogus"
    response = daemon.post(f"{AGL}/queues/rollouts/enqueue", json={"rollouts": rollouts})
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "rollouts", 1_700, "mode"]
    assert daemon.get(f"{AGL}/statistics").json()["total_rollouts"] == 0


def big_page(daemon: Daemon, rollouts: int, each: int) -> list[str]:
    """Queue `rollouts` rollouts of about `each` bytes of input; their ids in order."""
    ids = []
    for start in range(0, rollouts, 500):
        inputs = [f"{n:06d}" + "x" * each for n in range(start, min(start + 500, rollouts))]
        ids += [r["rollout_id"] for r in enqueue(daemon, *inputs)]
    return ids


def spools_open(daemon: Daemon) -> int:
    """The unnamed temporary files the daemon holds open (big pages on their way out)."""
    held = 0
    for fd in Path(f"/proc/{daemon.proc.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            held += os.readlink(fd).endswith("(deleted)")
    return held


def test_a_page_too_big_for_memory_comes_whole_with_its_length(daemon: Daemon) -> None:
    ids = big_page(daemon, 600, 2_000)
    for answer in (daemon.get(f"{AGL}/rollouts"), daemon.post(f"{AGL}/rollouts/search", json={})):
        assert answer.status_code == 200
        assert len(answer.content) > IN_MEMORY  # so it went by way of a temporary file
        assert answer.headers["content-length"] == str(len(answer.content))
        assert "transfer-encoding" not in answer.headers
        page = answer.json()
        assert (page["limit"], page["offset"], page["total"]) == (-1, 0, 600)
        halves = [daemon.get(f"{AGL}/rollouts", params={"limit": 300, "offset": o}).json() for o in (0, 300)]
        assert page["items"] == halves[0]["items"] + halves[1]["items"]
        assert [r["rollout_id"] for r in page["items"]] == ids


def stuck_on_a_big_page(url: str) -> socket.socket:
    """A client that asks for every rollout, reads the first bytes, and reads no more."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((host, int(port)))
    client.sendall(f"GET {AGL}/rollouts HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert client.recv(4096).startswith(b"HTTP/1.1 200")
    return client


def test_clients_slow_to_read_big_pages_hold_no_reader_no_place_and_leave_no_file(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A big page is written out before it is sent: the snapshot, the reading thread and
    the place among the requests served at once are free while a client reads it slowly,
    and its file goes when the client does."""
    daemon = make_daemon("--max-requests", "2")
    big_page(daemon, 2_000, 4_000)  # 8 MB: more than the kernel buffers between the two
    before = spools_open(daemon)
    slow = [stuck_on_a_big_page(daemon.url) for _ in range(3)]  # more than the readers and the places
    assert spools_open(daemon) == before + 3
    assert daemon.get(f"{AGL}/statistics").json()["total_rollouts"] == 2_000
    for client in slow:
        client.close()
    wait_until(lambda: spools_open(daemon) == before, "the pages' files to be closed", timeout=10)


async def test_the_files_of_big_pages_being_sent_are_bounded_and_a_page_beyond_is_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The routes are open: without a bound, enough clients that read slowly would fill
    the disk with the files of their pages, the disk the store writes to."""
    monkeypatch.setattr(query_pages, "SPOOLED_AT_ONCE", 20 << 20)  # two pages of 8 MB, not three
    server = AgentLightningServer(port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.endpoint, timeout=60) as client:
            for start in range(0, 2_000, 500):  # 8 MB: more than the kernel buffers between the two
                rollouts = [{"input": f"{n:06d}" + "x" * 4_000} for n in range(start, start + 500)]
                enqueued = await client.post(f"{AGL}/queues/rollouts/enqueue", json={"rollouts": rollouts})
                assert enqueued.status_code == 201
            stuck = [await asyncio.to_thread(stuck_on_a_big_page, server.endpoint) for _ in range(2)]
            refused = await client.get(f"{AGL}/rollouts")
            assert (refused.status_code, refused.headers["retry-after"]) == (503, "5")
            assert "bytes of temporary files already" in refused.json()["detail"]
            assert (await client.get(f"{AGL}/rollouts", params={"limit": 10})).status_code == 200  # small
            stuck.pop().close()
            for _ in range(200):  # until the daemon has heard it go, with a deadline
                answer = await client.get(f"{AGL}/rollouts")
                if answer.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert answer.status_code == 200 and answer.json()["total"] == 2_000
            stuck.pop().close()
    finally:
        await server.stop()


def test_a_daemon_stopped_while_a_client_is_stuck_on_a_big_page_cuts_it_off_quietly(daemon: Daemon) -> None:
    big_page(daemon, 2_000, 4_000)
    with stuck_on_a_big_page(daemon.url):
        assert daemon.terminate(timeout=GRACEFUL_SHUTDOWN_SECONDS + 10) == 0
    log = daemon.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
