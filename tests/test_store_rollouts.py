"""Rollouts, attempts, spans and workers (the store API's view), on both stores with a fake
clock: one queue for both doors, every claim an attempt, the life cycle of
store/lifecycle.py, and results that are never lost or doubled."""

from __future__ import annotations

import contextlib
import sqlite3
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, StoreFactory, vm_steps

from agl_cli.models import Rollout, TaskStatus
from agl_cli.store import (
    MemoryStore,
    QueryPage,
    Report,
    SQLiteStore,
    Store,
    TaskSpec,
    UnknownAttemptError,
    UnknownRolloutError,
)
from agl_cli.store.lifecycle import UNLIMITED_ATTEMPTS
from agl_cli.store.sqlite import QUERY_CHUNK
from agl_cli.store_models import (
    AttemptQuery,
    EnqueueRequest,
    RolloutConfig,
    RolloutQuery,
    Span,
    SpanQuery,
    StartRolloutBody,
    WorkerQuery,
)

RETRY = RolloutConfig(timeout_seconds=5, max_attempts=2, retry_condition=["timeout", "failed"])


def enqueue(store: Store, *inputs: Any, config: RolloutConfig | None = None) -> list[str]:
    shapes = store.enqueue_rollouts([EnqueueRequest(input=value, config=config) for value in inputs])
    return [str(shape["rollout_id"]) for shape in shapes]


def rollout(store: Store, rollout_id: str) -> dict[str, Any]:
    shape = store.get_rollout_shape(rollout_id)
    assert shape is not None
    return plain(shape)


def plain(value: Any) -> Any:
    """A shape with its stored JSON read back (shapes hold `orjson.Fragment`s)."""
    import orjson

    return orjson.loads(orjson.dumps(value))


def paged(opened: AbstractContextManager[QueryPage]) -> Any:
    """A store-API query's page, whole, in plain values."""
    with opened as page:
        return plain(page.whole())


def span(rollout_id: str, attempt_id: str, span_id: str, sequence_id: int = 1, **attributes: Any) -> Span:
    return Span.model_validate(
        {
            "rollout_id": rollout_id, "attempt_id": attempt_id, "sequence_id": sequence_id,
            "trace_id": "0" * 32, "span_id": span_id, "parent_id": None, "name": "step",
            "status": {"status_code": "OK"}, "attributes": attributes, "events": [], "links": [],
            "start_time": 1.0, "end_time": 2.0, "context": None, "parent": None,
            "resource": {"attributes": {}, "schema_url": ""},
        }
    )  # fmt: skip


def test_a_legacy_claim_is_an_attempt_under_the_daemons_policy(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(max_claims=3)
    [rollout_id] = store.queue_tasks([TaskSpec(input="legacy")])
    assert rollout(store, rollout_id)["status"] == "queuing"
    store.claim()
    shape = rollout(store, rollout_id)
    assert shape["status"] == "preparing"
    assert shape["attempt"] | {"attempt_id": "-"} == {
        "rollout_id": rollout_id, "attempt_id": "-", "sequence_id": 1, "start_time": clock.now, "end_time": None,
        "status": "preparing", "worker_id": None, "last_heartbeat_time": None, "metadata": None,
    }  # fmt: skip
    assert shape["config"] == {
        "timeout_seconds": 10.0, "unresponsive_seconds": None, "max_attempts": 3,
        "retry_condition": ["timeout", "unresponsive"],
    }  # fmt: skip


def test_unlimited_legacy_attempts_read_as_the_largest_number(store: Store) -> None:
    [rollout_id] = store.queue_tasks([TaskSpec(input=1)])
    assert rollout(store, rollout_id)["config"]["max_attempts"] == UNLIMITED_ATTEMPTS


def test_a_legacy_report_ends_the_attempt_and_the_rollout(store: Store, clock: FakeClock) -> None:
    [rollout_id] = store.queue_tasks([TaskSpec(input=1)])
    store.dequeue_rollouts(1, "w-1")
    clock.advance(2)
    store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=0.5))
    shape = rollout(store, rollout_id)
    assert (shape["status"], shape["end_time"]) == ("succeeded", clock.now)
    assert (shape["attempt"]["status"], shape["attempt"]["end_time"]) == ("succeeded", clock.now)
    assert plain(store.get_worker("w-1"))["status"] == "idle"
    finished, unfinished = store.finished_rollouts([rollout_id])
    assert [r["rollout_id"] for r in finished] == [rollout_id] and unfinished == 0


def test_a_store_api_rollout_is_handed_to_a_legacy_worker_and_reported_once(store: Store) -> None:
    [rollout_id] = enqueue(store, {"x": 1})
    claim = store.claim()
    assert claim is not None and claim.rollout_id == rollout_id
    task = _plain_wire(claim.wire)
    assert (task["input"], task["num_claims"], task["metadata"]) == ({"x": 1}, 1, {})
    store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=1.0))
    store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=2.0))  # a late second result
    assert [(r.rollout.rollout_id, r.rollout.final_reward) for r in store.rollouts_after(0)] == [
        (rollout_id, 1.0)
    ]
    assert store.counts().duplicates == 1


def _plain_wire(wire: bytes) -> dict[str, Any]:
    import orjson

    parsed: dict[str, Any] = orjson.loads(wire)
    return parsed


def test_a_success_through_the_store_api_joins_the_results_with_its_reward_once(store: Store) -> None:
    [rollout_id] = store.queue_tasks([TaskSpec(input=1, mode="train")])
    [handed] = store.dequeue_rollouts(1, "w-1")
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    store.add_spans([span(rollout_id, attempt_id, "a1", 1, **{"agentlightning.reward.0.value": 0.75})])
    store.update_attempt(rollout_id, attempt_id, {"status": "succeeded"})
    store.update_attempt(rollout_id, "latest", {"status": "running"})  # revived, as 0.3.0 allows ...
    store.update_attempt(rollout_id, "latest", {"status": "succeeded"})  # ... and done again
    [result] = store.rollouts_after(0)
    assert (result.rollout.rollout_id, result.rollout.final_reward, result.attempt) == (rollout_id, 0.75, 1)
    assert result.rollout.task is not None and result.rollout.task.mode == "train"
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.COMPLETED


@pytest.mark.parametrize("value", ["0.5 points", [1, 2], True, "NaN"])
def test_a_reward_span_whose_value_is_no_number_gives_a_result_without_a_reward(
    store: Store, value: Any
) -> None:
    """A span's attribute may hold anything (0.3.0's client writes a NaN as "NaN"); a
    result's reward is a number or none, and the reward chart counts the result as such."""
    [rollout_id] = store.queue_tasks([TaskSpec(input=1, mode="train")])
    [handed] = store.dequeue_rollouts(1, "w-1")
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    store.add_spans([span(rollout_id, attempt_id, "a1", 1, **{"agentlightning.reward.0.value": 0.75})])
    store.add_spans([span(rollout_id, attempt_id, "a2", 2, **{"agentlightning.reward.0.value": value})])
    store.update_attempt(rollout_id, attempt_id, {"status": "succeeded"})
    [result] = store.rollouts_after(0)
    assert (result.rollout.rollout_id, result.rollout.final_reward) == (rollout_id, None)
    [point] = store.reward_series(240).points
    assert (point.rollouts, point.mean) == (1, None)


def test_a_result_an_older_agl_kept_with_a_reward_that_is_no_number_reads_as_without_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = SQLiteStore(tmp_path / "agl.db", clock=clock)
    [rollout_id] = store.queue_tasks([TaskSpec(input=1)])
    [handed] = store.dequeue_rollouts(1, "w-1")
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    store.update_attempt(rollout_id, attempt_id, {"status": "succeeded"})
    store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "agl.db")) as older, older:
        older.execute("UPDATE rollouts SET body = json_set(body, '$.final_reward', 'not a number')")
    store = SQLiteStore(tmp_path / "agl.db", clock=clock)
    [result] = store.rollouts_after(0)
    stored = store.get_rollout(rollout_id)
    assert (result.rollout.final_reward, stored and stored.rollout.final_reward) == (None, None)
    store.close()


def test_a_failed_attempt_is_retried_while_the_config_allows(store: Store) -> None:
    [rollout_id] = enqueue(store, "x", config=RETRY)
    store.dequeue_rollouts(1, None)
    store.update_attempt(rollout_id, "latest", {"status": "failed"})
    assert rollout(store, rollout_id)["status"] == "requeuing"
    assert store.counts().tasks[TaskStatus.QUEUED] == 1
    [again] = store.dequeue_rollouts(1, None)
    assert plain(again)["attempt"]["sequence_id"] == 2
    store.update_attempt(rollout_id, "latest", {"status": "failed"})
    assert rollout(store, rollout_id)["status"] == "failed"
    assert store.dequeue_rollouts(1, None) == []


@pytest.mark.parametrize("claims", ["one", "many"])
def test_a_rollout_without_time_limits_a_legacy_worker_claimed_runs_out_after_the_claim_timeout(
    store: Store, clock: FakeClock, claims: str
) -> None:
    """A legacy worker sends no heartbeat: one that dies must not hold the rollout for good.
    Its config then decides, as for any attempt gone quiet (the default: one attempt)."""
    [held, dequeued] = enqueue(store, "legacy", "runner")
    [claim] = [store.claim()] if claims == "one" else store.claim_many(1)
    assert claim is not None and claim.rollout_id == held
    store.dequeue_rollouts(1, "w-1")
    assert store.next_deadline() == clock.now + 10  # the claim timeout; the dequeue has none
    clock.advance(10)
    assert store.expire_claims() == 1
    shape = rollout(store, held)
    assert (shape["status"], shape["attempt"]["status"]) == ("failed", "unresponsive")
    assert rollout(store, dequeued)["status"] == "preparing"
    assert store.next_deadline() is None


def test_an_attempt_that_runs_too_long_times_out_promptly(store: Store, clock: FakeClock) -> None:
    [rollout_id] = enqueue(store, "x", config=RETRY)
    store.dequeue_rollouts(1, "w-1")
    assert store.next_deadline() == clock.now + 5
    clock.advance(5)
    assert store.expire_claims() == 1
    shape = rollout(store, rollout_id)
    assert (shape["status"], shape["attempt"]["status"], shape["attempt"]["end_time"]) == (
        "requeuing",
        "timeout",
        None,
    )
    assert plain(store.get_worker("w-1"))["status"] == "unknown"
    store.dequeue_rollouts(1, "w-1")
    clock.advance(5)
    store.expire_claims()
    assert rollout(store, rollout_id)["status"] == "failed"


@pytest.mark.parametrize("ended", ["timeout", "failed"])
def test_a_rollout_running_again_after_its_attempt_ended_is_timed_by_that_attempt(
    store: Store, clock: FakeClock, ended: str
) -> None:
    """A span that comes after its attempt ended (a slow runner, a tracer's late batch)
    brings the rollout back to running; 0.3.0 then times it out by that attempt and hands
    it out again, and so does agl, where it stayed running, never handed out nor ended."""
    [rollout_id] = enqueue(store, "x", config=RETRY)
    [handed] = store.dequeue_rollouts(1, "w-1")
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    if ended == "timeout":
        clock.advance(5)
        assert store.expire_claims() == 1
    else:
        store.update_attempt(rollout_id, attempt_id, {"status": "failed"})
    assert rollout(store, rollout_id)["status"] == "requeuing"
    clock.advance(1)
    store.add_spans([span(rollout_id, attempt_id, "late")])
    assert (rollout(store, rollout_id)["status"], rollout(store, rollout_id)["attempt"]["status"]) == (
        "running",
        ended,
    )
    clock.advance(5)
    assert store.expire_claims() == 1
    shape = rollout(store, rollout_id)
    assert (shape["status"], shape["attempt"]["status"]) == ("requeuing", "timeout")
    [again] = store.dequeue_rollouts(1, "w-2")
    assert plain(again)["attempt"]["sequence_id"] == 2


def test_a_quiet_attempt_is_unresponsive_and_each_span_pushes_that_back(
    store: Store, clock: FakeClock
) -> None:
    [rollout_id] = enqueue(store, "x", config=RolloutConfig(unresponsive_seconds=5))
    [handed] = store.dequeue_rollouts(1, None)
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    clock.advance(4)
    store.add_spans([span(rollout_id, attempt_id, "s1")])
    shape = rollout(store, rollout_id)
    assert (shape["status"], shape["attempt"]["status"], shape["attempt"]["last_heartbeat_time"]) == (
        "running", "running", clock.now,
    )  # fmt: skip
    clock.advance(4)
    assert store.expire_claims() == 0  # 8 s since the start, 4 since the span
    clock.advance(1)
    assert store.expire_claims() == 1
    shape = rollout(store, rollout_id)
    assert (shape["status"], shape["attempt"]["status"]) == ("failed", "unresponsive")  # no retry configured


def test_a_legacy_task_taken_through_the_store_api_keeps_the_claim_timeout(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(max_claims=2)
    [rollout_id] = store.queue_tasks([TaskSpec(input=1)])
    store.dequeue_rollouts(1, "w-1")
    clock.advance(10)
    store.expire_claims()
    record = store.get_task(rollout_id)
    assert record is not None and (record.status, record.task.num_claims) == (TaskStatus.QUEUED, 1)
    claim = store.claim()  # the second attempt, by a legacy worker
    assert claim is not None and claim.num_claims == 2
    clock.advance(10)
    store.expire_claims()
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.FAILED
    assert rollout(store, rollout_id)["status"] == "failed"


def test_a_rollout_set_queuing_by_hand_goes_to_the_back_and_a_cancelled_one_is_not_handed_out(
    store: Store,
) -> None:
    first, second = enqueue(store, "first", "second")
    store.update_rollout(first, {"status": "cancelled"})
    [handed] = store.dequeue_rollouts(1, None)
    assert plain(handed)["rollout_id"] == second
    store.update_rollout(first, {"status": "requeuing", "metadata": {"why": "again"}})
    [handed] = store.dequeue_rollouts(1, None)
    assert (plain(handed)["rollout_id"], plain(handed)["metadata"]) == (first, {"why": "again"})


def test_a_new_config_moves_the_claims_deadline_and_leaves_the_status_as_it_is(
    store: Store, clock: FakeClock
) -> None:
    [timed] = enqueue(store, "timed")
    store.dequeue_rollouts(1, "w-1")
    assert store.next_deadline() is None  # the store API's default: no timeout
    store.update_rollout(timed, {"config": RolloutConfig(timeout_seconds=5).model_dump()})
    assert store.next_deadline() == clock.now + 5
    store.update_attempt(timed, "latest", {"status": "succeeded"})
    store.update_rollout(timed, {"status": "running"})  # by hand, over its attempt's success
    store.update_rollout(timed, {"config": RETRY.model_dump()})
    [bare] = enqueue(store, "no attempt")
    store.update_rollout(bare, {"status": "running"})
    store.update_rollout(bare, {"config": RETRY.model_dump()})
    assert (rollout(store, timed)["status"], rollout(store, bare)["status"]) == ("running", "running")
    assert rollout(store, bare)["config"] == RETRY.model_dump()


def test_a_paused_queue_still_starts_what_is_named_directly(store: Store) -> None:
    [queued] = enqueue(store, "waits")
    store.set_paused(True)
    assert store.dequeue_rollouts(1, "w-1") == []
    started = plain(store.start_rollout(StartRolloutBody(input="now", worker_id="w-1")))
    attempt = plain(store.start_attempt(queued, "w-2"))
    assert (started["status"], attempt["attempt"]["sequence_id"]) == ("preparing", 1)


def test_a_rollout_started_directly_is_outside_the_queue(store: Store) -> None:
    shape = plain(store.start_rollout(StartRolloutBody(input="now", worker_id="w-1")))
    assert (shape["status"], shape["attempt"]["sequence_id"], shape["attempt"]["worker_id"]) == (
        "preparing",
        1,
        "w-1",
    )
    assert store.dequeue_rollouts(1, None) == []
    assert plain(store.get_worker("w-1"))["current_rollout_id"] == shape["rollout_id"]


def test_unknown_rollouts_and_attempts_are_refused(store: Store) -> None:
    [rollout_id] = enqueue(store, "x")
    with pytest.raises(UnknownRolloutError):
        store.update_rollout("ro-nope", {"status": "failed"})
    with pytest.raises(UnknownAttemptError):
        store.update_attempt(rollout_id, "latest", {"status": "failed"})  # no attempt yet
    store.dequeue_rollouts(1, None)
    with pytest.raises(UnknownAttemptError):
        store.update_attempt(rollout_id, "at-nope", {"status": "failed"})
    with pytest.raises(UnknownRolloutError):
        store.add_spans([span("ro-nope", "at-nope", "s")])
    assert store.get_rollout_shape("ro-nope") is None


def test_spans_are_kept_once_and_numbered_per_rollout(store: Store) -> None:
    [rollout_id] = enqueue(store, "x")
    [handed] = store.dequeue_rollouts(1, None)
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    assert store.next_span_sequence_ids([rollout_id, rollout_id]) == [1, 2]
    added = store.add_spans([span(rollout_id, attempt_id, "a", 7), span(rollout_id, attempt_id, "a", 8)])
    assert [s is not None for s in added.spans] == [True, False]
    assert store.next_span_sequence_ids([rollout_id]) == [9]  # raised to the highest number sent
    unnumbered = span(rollout_id, attempt_id, "b", -1)
    lost = span("ro-nope", attempt_id, "c", -1)
    added = store.add_spans([unnumbered, lost], from_otlp=True)
    assert (added.spans[0].sequence_id, added.spans[1], added.rejected) == (10, None, 1)
    page = paged(store.query_spans(SpanQuery(rollout_id=rollout_id, attempt_id="latest")))
    assert ([s["span_id"] for s in page["items"]], page["total"]) == (["a", "b"], 2)


def test_queries_filter_sort_and_page_with_the_total_of_all_matches(store: Store, clock: FakeClock) -> None:
    ids = enqueue(store, "a", "b", "c", "d")
    store.dequeue_rollouts(1, "w-1")
    store.update_attempt(ids[0], "latest", {"status": "succeeded"})
    page = paged(store.query_rollouts(RolloutQuery(status_in=["queuing"], limit=2, offset=1)))
    assert ([r["rollout_id"] for r in page["items"]], page["total"]) == (ids[2:4], 3)
    ended_first = paged(store.query_rollouts(RolloutQuery(sort_by="end_time")))
    assert ended_first["items"][0]["rollout_id"] == ids[0]  # a missing time sorts last
    assert "attempt" in ended_first["items"][0] and "attempt" not in ended_first["items"][1]
    either = paged(
        store.query_rollouts(RolloutQuery(rollout_id_in=[ids[1]], status_in=["succeeded"], filter_logic="or"))
    )
    assert sorted(r["rollout_id"] for r in either["items"]) == sorted([ids[0], ids[1]])
    assert paged(store.query_attempts(ids[0], AttemptQuery()))["total"] == 1
    assert paged(store.query_workers(WorkerQuery(status_in=["idle"])))["total"] == 1


def test_a_page_left_before_its_end_holds_no_snapshot(tmp_path: Path) -> None:
    """Its JSON could not be written, say: the log can still be checkpointed whole."""
    store = SQLiteStore(tmp_path / "agl.db")
    store.queue_tasks([TaskSpec(input=i) for i in range(2_000)])
    with store.query_rollouts(RolloutQuery()) as page:
        first = next(iter(page.chunks))
    store.queue_tasks([TaskSpec(input="after")])
    [(busy, _, _)] = store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # type: ignore[attr-defined]
    assert (len(first), busy) == (QUERY_CHUNK, 0)  # a chunk read, and then no reader in the way
    store.close()


def test_a_status_filter_reads_the_tasks_of_that_status_only(clock: FakeClock) -> None:
    """What an algorithm polls for (the rollouts running, or still queued) costs as much
    beside 20,000 queued tasks as beside 20: the filter reads the status index."""
    costs = []
    for queued in (20, 20_000):
        store = MemoryStore(clock=clock)
        store.queue_tasks([TaskSpec(input=i) for i in range(queued)])
        store.claim_many(3)
        query = RolloutQuery(status_in=["preparing", "running"], limit=10)
        assert paged(store.query_rollouts(query))["total"] == 3
        costs.append(vm_steps(store, partial(paged, store.query_rollouts(query))))
        store.close()
    few, many = costs
    assert many <= 2 * few + 5, costs


def test_a_batch_is_listed_newest_first_with_its_last_rollout_first(store: Store, clock: FakeClock) -> None:
    """Each rollout of a batch starts after the one before, also when the clock stands still
    (as the fake one does), so newest-first is the batch's order reversed."""
    ids = enqueue(store, "a", "b", "c")
    newest = paged(store.query_rollouts(RolloutQuery(sort_by="start_time", sort_order="desc")))
    assert [r["rollout_id"] for r in newest["items"]] == ids[::-1]
    times = [r["start_time"] for r in newest["items"]]
    assert times[0] > times[1] > times[2] == clock.now


def test_a_committed_batch_is_seen_and_changed_through_the_store_api_before_it_is_moved(store: Store) -> None:
    batch = store.create_batch()
    [first, second] = store.stage_tasks(batch, [TaskSpec(input=1), TaskSpec(input=2)])
    store.commit_batch(batch)
    assert rollout(store, second)["status"] == "queuing"
    assert paged(store.query_rollouts(RolloutQuery()))["total"] == 2
    store.update_rollout(second, {"status": "cancelled"})
    assert [r["rollout_id"] for r in map(plain, store.dequeue_rollouts(5, None))] == [first]


def test_everything_of_a_run_survives_reopening(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock)
    [rollout_id] = enqueue(store, "kept", config=RETRY)
    [handed] = store.dequeue_rollouts(1, "w-1")
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    store.add_spans([span(rollout_id, attempt_id, "s")])
    store.heartbeat_worker("w-1", {"cpu": 1})
    store.close()

    reopened = SQLiteStore(path, clock=clock)
    shape = rollout(reopened, rollout_id)
    assert (shape["status"], shape["config"]["max_attempts"], shape["attempt"]["attempt_id"]) == (
        "running", 2, attempt_id,
    )  # fmt: skip
    assert paged(reopened.query_spans(SpanQuery(rollout_id=rollout_id)))["total"] == 1
    assert plain(reopened.get_worker("w-1"))["heartbeat_stats"] == {"cpu": 1}
    clock.advance(5)
    assert reopened.expire_claims() == 1  # its deadline survived too
    reopened.close()


def test_every_statement_on_attempts_finds_them_through_their_tasks_key(
    store: Store, clock: FakeClock
) -> None:
    """Attempts are kept in the order of their tasks (schema 6), so that a group's claims add
    theirs to a page or two: a statement that looked them up by rollout id alone would read
    the whole table. Every path that touches them, by `EXPLAIN QUERY PLAN`."""
    ran: list[str] = []
    conns = {id(conn): conn for conn in (store._conn, store._reader())}
    for conn in conns.values():
        conn.set_trace_callback(ran.append)
    [legacy, api, dequeued] = store.queue_tasks([TaskSpec(input=1)]) + enqueue(store, 2, 3, config=RETRY)
    with store.transaction(isolate_writes=False):
        store.claim_many(2)
    with store.transaction(isolate_writes=False):
        store.record_reports([Report.of(Rollout(rollout_id=legacy, final_reward=1.0))])
    store.update_attempt(api, "latest", {"status": "failed"})
    [handed] = store.dequeue_rollouts(1, "w-1")
    attempt_id = str(plain(handed)["attempt"]["attempt_id"])
    store.add_spans([span(dequeued, attempt_id, "s1")])
    store.update_attempt(dequeued, attempt_id, {"status": "running"})
    store.start_attempt(api, "w-2")
    clock.advance(5)
    store.expire_claims()
    store.start_rollout(StartRolloutBody(input="now", worker_id="w-3"))
    store.record_report(Report.of(Rollout(rollout_id=api, final_reward=0.5)))
    paged(store.query_attempts(api, AttemptQuery()))
    store.latest_attempt(api)
    store.get_rollout_shape(api)
    paged(store.query_rollouts(RolloutQuery()))
    store.troubled_tasks(10, 0)
    store.rollout_detail(api, 10)
    store.rollout_summaries(0, 10)
    for conn in conns.values():
        conn.set_trace_callback(None)

    touching = sorted({sql for sql in ran if "attempts" in sql})
    assert len(touching) >= 12, touching
    for sql in touching:
        plan = [step for *_, step in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        whole = [step for step in plan if step.startswith("SCAN") and step.split()[1] in ("attempts", "a")]
        assert whole == [], (sql, plan)


@pytest.mark.parametrize("late", ["failed", "succeeded"])
def test_a_late_word_from_an_earlier_attempt_leaves_the_rollout_to_its_latest_attempt(
    store: Store, clock: FakeClock, late: str
) -> None:
    """As 0.3.0: only the latest attempt's status is the rollout's. A runner whose attempt
    timed out and reports late must not end a rollout another runner now works on."""
    [rollout_id] = enqueue(store, "x", config=RETRY)
    [first] = store.dequeue_rollouts(1, "w-1")
    clock.advance(5)
    assert store.expire_claims() == 1  # the first attempt timed out: the rollout is queued again
    [second] = store.dequeue_rollouts(1, "w-2")
    assert plain(second)["attempt"]["sequence_id"] == 2
    store.update_attempt(rollout_id, plain(first)["attempt"]["attempt_id"], {"status": late})
    shape = rollout(store, rollout_id)
    assert (shape["status"], shape["attempt"]["attempt_id"]) == (
        "preparing",
        plain(second)["attempt"]["attempt_id"],
    )
    assert store.dequeue_rollouts(1, "w-3") == []
