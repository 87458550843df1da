"""The store API, agl beside agentlightning 0.3.0's own server: the same calls of the
unmodified 0.3.0 client give the same answers, errors and state transitions (ids and
times aside), for every client method. One history runs through the module, in order,
on both servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.types import LLM, EnqueueRolloutRequest, PromptTemplate, RolloutConfig
from opentelemetry.sdk.trace import TracerProvider
from store_pair import CLIENT_METHODS, Pair, span, start_agl, start_reference

from agl_cli.server.query_pages import IN_MEMORY

pytestmark = pytest.mark.timeout(120)
PROMPT = PromptTemplate(template="Say {x}", engine="f-string")
RETRY_TWICE = RolloutConfig(max_attempts=2, retry_condition=["failed", "timeout"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    reference = start_reference()
    for daemon in start_agl(Path(tmp_path_factory.mktemp("agl")) / "state"):
        yield Pair(daemon.url, reference.url)


async def test_resources_are_added_updated_and_found(pair: Pair) -> None:
    assert await pair.same(lambda c: c.get_latest_resources()) is None
    added = await pair.same(lambda c: c.add_resources({"prompt": PROMPT}))
    assert added["version"] == 1 and added["resources_id"] == "<rs-1>"
    await pair.same(lambda c: c.update_resources(pair.real(c, "<rs-1>"), {"prompt": PROMPT}))
    updated = await pair.same(
        lambda c: c.update_resources("default", {"llm": LLM(endpoint="http://x/v1", model="m")})
    )
    assert updated["version"] == 1
    again = await pair.same(lambda c: c.update_resources("default", {"prompt": PROMPT}))
    assert (again["version"], again["resources_id"]) == (2, "default")
    assert (await pair.same(lambda c: c.get_latest_resources()))["resources_id"] == "default"
    await pair.same(lambda c: c.get_resources_by_id("default"))
    assert await pair.same(lambda c: c.get_resources_by_id("nothing-here")) is None
    page = await pair.same(lambda c: c.query_resources())
    assert page["total"] == 2
    await pair.same(lambda c: c.query_resources(sort_by="version", sort_order="desc", limit=1, offset=1))
    await pair.same(lambda c: c.query_resources(resources_id_contains="efau"))
    await pair.same(lambda c: c.query_resources(resources_id="default"))


async def test_rollouts_are_queued_and_handed_out_in_order_as_attempts(pair: Pair) -> None:
    first = await pair.same(lambda c: c.enqueue_rollout(input={"x": 1}, mode="train"))
    assert first["status"] == "queuing" and first["resources_id"] == "default"  # the latest
    many = await pair.same(
        lambda c: c.enqueue_many_rollouts(
            [
                EnqueueRolloutRequest(input=2, mode="val", metadata={"k": "v"}),
                EnqueueRolloutRequest(input=3, resources_id="pinned", config=RETRY_TWICE),
            ]
        )
    )
    assert [r["input"] for r in many] == [2, 3]
    handed = await pair.same(lambda c: c.dequeue_rollout(worker_id="w-1"))
    assert handed["rollout_id"] == first["rollout_id"] and handed["attempt"]["sequence_id"] == 1
    two = await pair.same(lambda c: c.dequeue_many_rollouts(limit=5, worker_id="w-2"))
    assert [r["input"] for r in two] == [2, 3]
    assert await pair.same(lambda c: c.dequeue_rollout(worker_id="w-3")) is None
    assert await pair.same(lambda c: c.dequeue_many_rollouts(limit=2)) == []
    workers = await pair.same(lambda c: c.query_workers())
    assert [(w["worker_id"], w["status"]) for w in workers["items"]] == [
        ("w-1", "busy"), ("w-2", "busy"), ("w-3", "idle"),
    ]  # fmt: skip
    await pair.same(lambda c: c.get_worker_by_id("w-2"))
    assert await pair.same(lambda c: c.get_worker_by_id("nobody")) is None


async def test_a_failed_attempt_is_retried_while_the_config_allows_then_fails(pair: Pair) -> None:
    rollouts = await pair.same(lambda c: c.query_rollouts(rollout_id_contains="ro-", sort_by="start_time"))
    retried = rollouts["items"][2]
    assert retried["config"]["max_attempts"] == 2

    def real_id(client: LightningStoreClient) -> str:
        return pair.real(client, retried["rollout_id"])

    attempt = await pair.same(lambda c: c.update_attempt(real_id(c), "latest", status="failed"))
    assert attempt["status"] == "failed" and attempt["end_time"] == "<t>"
    assert (await pair.same(lambda c: c.get_rollout_by_id(real_id(c))))["status"] == "requeuing"
    again = await pair.same(lambda c: c.dequeue_rollout(worker_id="w-1"))
    assert again["attempt"]["sequence_id"] == 2
    await pair.same(lambda c: c.update_attempt(real_id(c), "latest", status="failed"))
    failed = await pair.same(lambda c: c.get_rollout_by_id(real_id(c)))
    assert (failed["status"], failed["end_time"]) == ("failed", "<t>")
    attempts = await pair.same(lambda c: c.query_attempts(real_id(c)))
    assert [a["status"] for a in attempts["items"]] == ["failed", "failed"]
    await pair.same(lambda c: c.query_attempts(real_id(c), sort_by="sequence_id", sort_order="desc", limit=1))
    await pair.same(lambda c: c.get_latest_attempt(real_id(c)))
    assert await pair.same(lambda c: c.get_latest_attempt("ro-000000000000")) is None
    assert (await pair.same(lambda c: c.wait_for_rollouts(rollout_ids=[real_id(c)], timeout=0)))[0][
        "status"
    ] == "failed"


async def test_spans_wake_an_attempt_and_are_numbered_per_rollout(pair: Pair) -> None:
    started = await pair.same(lambda c: c.start_rollout(input="direct", worker_id="w-9"))
    assert (started["status"], started["attempt"]["status"]) == ("preparing", "preparing")
    ids: dict[str, tuple[str, str]] = {}

    async def start(c: LightningStoreClient) -> Any:
        rollout = await c.start_rollout(input="spans")
        ids[c.server_address_root] = (rollout.rollout_id, rollout.attempt.attempt_id)
        return rollout

    await pair.same(start)
    rid = lambda c: ids[c.server_address_root][0]  # noqa: E731
    aid = lambda c: ids[c.server_address_root][1]  # noqa: E731
    assert await pair.same(lambda c: c.get_next_span_sequence_id(rid(c), aid(c))) == 1
    assert await pair.same(lambda c: c.get_many_span_sequence_ids([(rid(c), aid(c)), (rid(c), aid(c))])) == [
        2,
        3,
    ]
    kept = await pair.same(lambda c: c.add_span(span(rid(c), aid(c), 10, "00f067aa0ba902b7", "first", k=1)))
    assert kept["sequence_id"] == 10
    assert (
        await pair.same(lambda c: c.add_span(span(rid(c), aid(c), 11, "00f067aa0ba902b7", "first"))) is None
    )
    running = await pair.same(lambda c: c.get_rollout_by_id(rid(c)))
    assert (running["status"], running["attempt"]["status"]) == ("running", "running")
    # The duplicate still raised the count to its number (11), as in 0.3.0.
    assert await pair.same(lambda c: c.get_next_span_sequence_id(rid(c), aid(c))) == 12
    await pair.same(
        lambda c: c.add_many_spans(
            [
                span(rid(c), aid(c), 12, "00f067aa0ba902b8", "second"),
                span(rid(c), aid(c), 13, "00f067aa0ba902b9", "third"),
            ]
        )
    )
    tracer = TracerProvider().get_tracer("differential")
    readable = tracer.start_span("otel", attributes={"answer": 42})
    readable.end()
    otel = await pair.same(lambda c: c.add_otel_span(rid(c), aid(c), readable))
    assert (otel["name"], otel["sequence_id"], otel["attributes"]) == ("otel", 14, {"answer": 42})
    everything = await pair.same(lambda c: c.query_spans(rid(c)))
    assert [s["name"] for s in everything["items"]] == ["first", "second", "third", "otel"]
    await pair.same(
        lambda c: c.query_spans(rid(c), "latest", name_contains="i", sort_by="name", sort_order="desc")
    )
    await pair.same(lambda c: c.query_spans(rid(c), aid(c), span_id="00f067aa0ba902b8", limit=1))
    assert (await pair.same(lambda c: c.query_spans("ro-000000000000")))["total"] == 0
    await pair.refused(lambda c: c.add_span(span("ro-000000000000", aid(c), 1, "00f067aa0ba902ba", "lost")))
    await pair.refused(lambda c: c.add_span(span(rid(c), "at-00000000", 1, "00f067aa0ba902ba", "lost")))
    done = await pair.same(
        lambda c: c.update_attempt(rid(c), aid(c), status="succeeded", metadata={"ok": True})
    )
    assert done["metadata"] == {"ok": True}
    finished = await pair.same(
        lambda c: c.wait_for_rollouts(rollout_ids=[rid(c), "ro-000000000000", rid(c)], timeout=0)
    )
    assert [r["status"] for r in finished] == ["succeeded", "succeeded"]


async def test_a_rollout_is_changed_cancelled_and_requeued_by_hand(pair: Pair) -> None:
    ids: dict[str, str] = {}

    async def enqueue(c: LightningStoreClient) -> Any:
        rollout = await c.enqueue_rollout(input="by hand")
        ids[c.server_address_root] = rollout.rollout_id
        return rollout

    await pair.same(enqueue)
    rid = lambda c: ids[c.server_address_root]  # noqa: E731
    changed = await pair.same(
        lambda c: c.update_rollout(rid(c), mode="test", metadata={"a": 1}, input="changed")
    )
    assert (changed["mode"], changed["input"]) == ("test", "changed")
    cancelled = await pair.same(lambda c: c.update_rollout(rid(c), status="cancelled"))
    assert (cancelled["status"], cancelled["end_time"]) == ("cancelled", "<t>")
    assert await pair.same(lambda c: c.dequeue_rollout()) is None  # a cancelled rollout is not handed out
    await pair.same(lambda c: c.update_rollout(rid(c), status="requeuing", config=RETRY_TWICE))
    back = await pair.same(lambda c: c.dequeue_rollout(worker_id="w-4"))
    assert (back["input"], back["attempt"]["sequence_id"]) == ("changed", 1)
    extra = await pair.same(lambda c: c.start_attempt(rid(c), worker_id="w-5"))
    assert extra["attempt"]["sequence_id"] == 2
    await pair.same(lambda c: c.update_attempt(rid(c), "latest", worker_id="w-6", last_heartbeat_time=5.0))
    await pair.refused(lambda c: c.update_rollout("ro-000000000000", status="failed"))
    await pair.refused(lambda c: c.update_attempt(rid(c), "at-00000000", status="failed"))
    await pair.refused(lambda c: c.update_attempt("ro-000000000000", "latest", status="failed"))
    await pair.refused(lambda c: c.start_attempt("ro-000000000000"))


async def test_a_status_set_by_hand_outlasts_a_new_config(pair: Pair) -> None:
    ids: dict[str, tuple[str, str]] = {}

    async def start_two(c: LightningStoreClient) -> Any:
        done = await c.start_rollout(input="done")
        bare = await c.enqueue_rollout(input="bare")
        ids[c.server_address_root] = (done.rollout_id, bare.rollout_id)
        return done, bare

    await pair.same(start_two)
    done = lambda c: ids[c.server_address_root][0]  # noqa: E731
    bare = lambda c: ids[c.server_address_root][1]  # noqa: E731
    await pair.same(lambda c: c.update_attempt(done(c), "latest", status="succeeded"))
    for rollout in (done, bare):
        await pair.same(lambda c, rollout=rollout: c.update_rollout(rollout(c), status="running"))
        kept = await pair.same(lambda c, rollout=rollout: c.update_rollout(rollout(c), config=RETRY_TWICE))
        assert kept["status"] == "running"


async def test_a_span_on_an_ended_attempt_leaves_a_rollout_marked_running_by_hand_running(
    pair: Pair,
) -> None:
    """A span is a heartbeat: it wakes a rollout preparing or waiting to be retried, and
    leaves any other as it is, rather than work out its status again from the attempt."""
    ids: dict[str, tuple[str, str]] = {}

    async def start(c: LightningStoreClient) -> Any:
        rollout = await c.start_rollout(input="by hand", config=RETRY_TWICE)
        ids[c.server_address_root] = (rollout.rollout_id, rollout.attempt.attempt_id)
        return rollout

    await pair.same(start)
    rid = lambda c: ids[c.server_address_root][0]  # noqa: E731
    aid = lambda c: ids[c.server_address_root][1]  # noqa: E731
    for ending in ("failed", "succeeded"):
        await pair.same(lambda c, ending=ending: c.update_attempt(rid(c), aid(c), status=ending))
        await pair.same(lambda c: c.update_rollout(rid(c), status="running"))
        await pair.same(lambda c: c.add_span(span(rid(c), aid(c), 1, "00f067aa0ba902c1", "late")))
        assert (await pair.same(lambda c: c.get_rollout_by_id(rid(c))))["status"] == "running"
    assert await pair.same(lambda c: c.dequeue_rollout()) is None  # not handed out again


async def test_an_attempt_that_runs_too_long_times_out_and_is_retried(pair: Pair) -> None:
    ids: dict[str, str] = {}
    config = RolloutConfig(timeout_seconds=0.3, max_attempts=2, retry_condition=["timeout"])

    async def enqueue(c: LightningStoreClient) -> Any:
        rollout = await c.enqueue_rollout(input="slow", config=config)
        ids[c.server_address_root] = rollout.rollout_id
        return rollout

    await pair.same(enqueue)
    rid = lambda c: ids[c.server_address_root]  # noqa: E731
    first = await pair.same(lambda c: c.dequeue_rollout(worker_id="w-7"))
    assert first["attempt"]["sequence_id"] == 1
    for _ in range(2):  # the first attempt times out and is retried; the second fails it
        statuses = await both_until(pair, lambda c: c.get_rollout_by_id(rid(c)), ("requeuing", "failed"))
        if statuses == "failed":
            break
        await pair.same(lambda c: c.dequeue_rollout(worker_id="w-7"))
    rollout = await pair.same(lambda c: c.get_rollout_by_id(rid(c)))
    assert (rollout["status"], rollout["attempt"]["sequence_id"], rollout["attempt"]["status"]) == (
        "failed",
        2,
        "timeout",
    )
    worker = await pair.same(lambda c: c.get_worker_by_id("w-7"))
    assert worker["status"] == "unknown"


async def both_until(pair: Pair, read: Any, statuses: tuple[str, ...], timeout: float = 10.0) -> str:
    """Read on each server until the rollout reaches one of `statuses` (its deadline has to
    pass first: time, not an event, is what this waits for); then compare the two."""
    for client in pair.clients():
        deadline = time.monotonic() + timeout
        try:
            while (await read(client)).status not in statuses:
                assert time.monotonic() < deadline, f"{client.server_address} never reached {statuses}"
                await asyncio.sleep(0.05)
        finally:
            await client.close()
    return str((await pair.same(read))["status"])


async def test_workers_heartbeat_with_their_stats(pair: Pair) -> None:
    beat = await pair.same(lambda c: c.update_worker("w-10", heartbeat_stats={"cpu": 0.5}))
    assert (beat["status"], beat["heartbeat_stats"], beat["last_heartbeat_time"]) == (
        "unknown",
        {"cpu": 0.5},
        "<t>",
    )
    await pair.same(lambda c: c.update_worker("w-10"))
    await pair.same(lambda c: c.query_workers(status_in=["idle", "unknown"], worker_id_contains="w-1"))
    await pair.same(lambda c: c.query_workers(sort_by="worker_id", sort_order="desc", filter_logic="or"))


async def test_a_batch_is_listed_newest_first_with_its_last_rollout_first(pair: Pair) -> None:
    await pair.same(lambda c: c.enqueue_many_rollouts([EnqueueRolloutRequest(input=n) for n in range(3)]))
    newest = await pair.same(lambda c: c.query_rollouts(sort_by="start_time", sort_order="desc", limit=3))
    assert [r["input"] for r in newest["items"]] == [2, 1, 0]


async def test_a_batch_too_large_to_write_at_once_is_queued_and_listed_alike(pair: Pair) -> None:
    """agl stages an enqueue of more than 1,000 rollouts a part at a time (docs/store-api.md)."""
    requests = [EnqueueRolloutRequest(input=n, mode="train", config=RETRY_TWICE) for n in range(2_500)]
    queued = await pair.same(lambda c: c.enqueue_many_rollouts(requests))
    assert [r["input"] for r in queued] == list(range(2_500))
    newest = await pair.same(lambda c: c.query_rollouts(sort_by="start_time", sort_order="desc", limit=3))
    assert [r["input"] for r in newest["items"]] == [2_499, 2_498, 2_497]
    handed = await pair.same(lambda c: c.dequeue_many_rollouts(limit=3, worker_id="w-1"))
    assert [r["input"] for r in handed] == [0, 1, 2]


async def test_queries_filter_sort_and_page_alike(pair: Pair) -> None:
    await pair.same(lambda c: c.query_rollouts())
    await pair.same(lambda c: c.query_rollouts(status_in=["failed", "succeeded"], sort_by="status"))
    await pair.same(
        lambda c: c.query_rollouts(status_in=["queuing"], rollout_id_contains="ro-", filter_logic="or")
    )
    await pair.same(lambda c: c.query_rollouts(sort_by="end_time", sort_order="desc", limit=3, offset=1))
    await pair.same(lambda c: c.query_rollouts(status_in=[]))


@pytest.mark.parametrize(
    "inputs", [[3, 10, 1, -1, 2.5, 11, 0, True], ["b", "a\tb", "a\\b", "é", "Z", ""]], ids=["numbers", "text"]
)
async def test_rollouts_sorted_by_an_input_of_numbers_or_of_text_are_in_its_values_order(
    pair: Pair, inputs: list[Any]
) -> None:
    """By the value, not its JSON text: 10 after 3, a tab before a backslash."""
    queued = await pair.same(
        lambda c: c.enqueue_many_rollouts([EnqueueRolloutRequest(input=x) for x in inputs])
    )
    names = [rollout["rollout_id"] for rollout in queued]
    for order in ("asc", "desc"):
        page = await pair.same(
            lambda c, order=order: c.query_rollouts(
                rollout_id_in=[pair.real(c, name) for name in names], sort_by="input", sort_order=order
            )
        )
        assert [rollout["input"] for rollout in page["items"]] == sorted(inputs, reverse=order == "desc")


async def test_the_statistics_count_the_same_things(pair: Pair) -> None:
    ours, theirs = [await _statistics(client) for client in pair.clients()]
    counted = ("total_rollouts", "total_attempts", "total_spans", "total_resources", "total_workers")
    assert {k: ours[k] for k in counted} == {k: theirs[k] for k in counted}
    pair.called.add("statistics")


async def _statistics(client: LightningStoreClient) -> dict[str, Any]:
    try:
        return dict(await client.statistics())
    finally:
        await client.close()


async def test_a_page_too_big_for_memory_is_the_same_page(pair: Pair) -> None:
    """agl writes such a page to a temporary file before it sends it (docs/store-api.md)."""
    inputs = [f"{n:04d}" + "x" * 2_000 for n in range(600)]
    await pair.same(lambda c: c.enqueue_many_rollouts([EnqueueRolloutRequest(input=i) for i in inputs]))
    page = await pair.same(lambda c: c.query_rollouts(status_in=["queuing"]))
    assert len(json.dumps(page)) > IN_MEMORY
    assert [r["input"] for r in page["items"]][-600:] == inputs


BAD_REQUESTS = {
    "a mode no rollout has": (
        "/v1/agl/queues/rollouts/enqueue",
        {"rollouts": [{"input": 1, "mode": "sideways"}]},
    ),
    "no attempts at all": (
        "/v1/agl/queues/rollouts/enqueue",
        {"rollouts": [{"input": 1, "config": {"max_attempts": 0}}]},
    ),
    "a status no rollout has": ("/v1/agl/rollouts/search", {"status_in": ["bogus"]}),
    "a sort order neither way": ("/v1/agl/rollouts/search", {"sort_order": "sideways"}),
    "a resource of no known type": ("/v1/agl/resources", {"x": {"resource_type": "nope"}}),
    "an array for a body": ("/v1/agl/queues/rollouts/enqueue", [1]),
    "an array for a rollout": ("/v1/agl/queues/rollouts/enqueue", {"rollouts": [[1]]}),
    "spans of no rollout named": ("/v1/agl/spans", None),  # a GET: a query parameter missing
}


@pytest.mark.parametrize(("path", "body"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_is_the_same_422_word_for_word(pair: Pair, path: str, body: Any) -> None:
    """What a field may be, or its bound, included (FastAPI's `ctx`)."""
    ours, theirs = (
        httpx.get(url + path, timeout=30) if body is None else httpx.post(url + path, json=body, timeout=30)
        for url in pair.urls
    )
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
    assert ours.status_code == 422


def test_every_client_method_was_compared(pair: Pair) -> None:
    assert CLIENT_METHODS - pair.called == set()
