"""The task life cycle, as both stores must implement it (one suite, two stores: the
`store` and `make_store` fixtures of conftest.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from conftest import FakeClock, StoreFactory, database_of_schema

from agl_cli.models import Rollout, Task, TaskStatus
from agl_cli.store import (
    InvalidTransitionError,
    MemoryStore,
    Report,
    ReportOutcome,
    SQLiteStore,
    Store,
    StoreError,
    TaskSpec,
    UnknownBatchError,
    UnknownTaskError,
    schema,
)
from agl_cli.store_models import AttemptQuery


def queue(store: Store, *inputs: object) -> list[str]:
    return store.queue_tasks([TaskSpec(input=value) for value in inputs])


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("inf"), float("nan")])
def test_a_store_s_durations_are_positive_and_finite(seconds: float) -> None:
    with pytest.raises(ValueError, match="task_timeout must be a positive, finite number of seconds"):
        MemoryStore(task_timeout=seconds)
    with pytest.raises(ValueError, match="rollout_retention must be a positive, finite number of seconds"):
        MemoryStore(rollout_retention=seconds)


def test_tasks_are_handed_out_oldest_first(store: Store) -> None:
    ids = queue(store, "a", "b", "c")
    claimed = [store.claim_next() for _ in ids]
    assert [task.rollout_id for task in claimed if task] == ids
    assert [task.input for task in claimed if task] == ["a", "b", "c"]
    assert store.claim_next() is None


def test_a_claim_counts_itself_and_records_its_time(store: Store, clock: FakeClock) -> None:
    [rollout_id] = store.queue_tasks(
        [TaskSpec(input={"x": 1}, mode="train", resources_id="res-1", metadata={"k": "v"})]
    )
    clock.advance(5)
    task = store.claim_next()
    assert task is not None
    assert task.rollout_id == rollout_id and rollout_id.startswith("rollout-")
    assert (task.input, task.mode, task.resources_id, task.metadata) == (
        {"x": 1},
        "train",
        "res-1",
        {"k": "v"},
    )
    assert task.num_claims == 1
    assert task.last_claim_time == clock.now
    assert task.create_time == clock.now - 5
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.CLAIMED


def test_a_claim_is_sent_exactly_as_the_task_model_dumps_it(store: Store, clock: FakeClock) -> None:
    value = {"text": "naïve ☃", "numbers": [1, 2.5, -3e-7, 10**18], "nested": {"ok": True, "none": None}}
    [rollout_id] = store.queue_tasks([TaskSpec(input=value, mode="val", metadata={"k": [1.0]})])
    claim = store.claim()
    assert claim is not None
    task = Task.model_validate_json(claim.wire)
    assert claim.wire == orjson.dumps(task.model_dump(mode="json"))
    assert (task.rollout_id, task.input, task.mode, task.metadata) == (rollout_id, value, "val", {"k": [1.0]})
    assert (claim.rollout_id, claim.num_claims, task.num_claims) == (rollout_id, 1, 1)
    assert task.last_claim_time == clock.now


def test_resources_id_is_never_filled_in(store: Store) -> None:
    store.publish_resources({"p": {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}})
    queue(store, 1)
    task = store.claim_next()
    assert task is not None and task.resources_id is None


def test_an_expired_claim_is_handed_out_again_with_one_more_claim(store: Store, clock: FakeClock) -> None:
    [rollout_id] = queue(store, "slow")
    first = store.claim_next()
    assert first is not None
    clock.advance(9.9)
    assert store.claim_next() is None
    clock.advance(0.2)
    again = store.claim_next()
    assert again is not None and again.rollout_id == rollout_id
    assert again.num_claims == 2
    assert again.last_claim_time is not None and first.last_claim_time is not None
    assert again.last_claim_time > first.last_claim_time


def test_a_claim_whose_worker_hung_up_ends_at_once_as_one_that_timed_out(
    store: Store, clock: FakeClock
) -> None:
    [rollout_id] = queue(store, "handed to nobody")
    first = store.claim_next()
    assert first is not None
    assert store.abandon_claim(rollout_id, first.num_claims - 1) is False  # not that claim
    assert store.abandon_claim(rollout_id, first.num_claims) is True
    assert store.abandon_claim(rollout_id, first.num_claims) is False  # ended already
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.QUEUED
    again = store.claim_next()  # before the task timeout has passed
    assert again is not None and (again.rollout_id, again.num_claims) == (rollout_id, 2)


def test_a_requeued_task_goes_to_the_back_of_the_queue(store: Store, clock: FakeClock) -> None:
    [first_id] = queue(store, "first")
    store.claim_next()
    [second_id] = queue(store, "second")
    clock.advance(11)
    store.expire_claims()
    order = [store.claim_next(), store.claim_next()]
    assert [task.rollout_id for task in order if task] == [second_id, first_id]


def test_a_task_that_times_out_max_claims_times_is_failed(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(max_claims=2)
    [rollout_id] = queue(store, "doomed")
    for _ in range(2):
        assert store.claim_next() is not None
        clock.advance(11)
    assert store.claim_next() is None
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.FAILED
    assert [r.rollout_id for r in store.list_tasks(TaskStatus.FAILED)] == [rollout_id]
    assert store.counts().tasks[TaskStatus.FAILED] == 1


def test_next_deadline_tells_when_a_claim_expires(store: Store, clock: FakeClock) -> None:
    assert store.next_deadline() is None
    queue(store, 1)
    store.claim_next()
    assert store.next_deadline() == clock.now + 10


def test_a_rollout_completes_its_task(store: Store) -> None:
    [rollout_id] = queue(store, 1)
    store.claim_next()
    outcome = store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=0.5))
    assert outcome is ReportOutcome.STORED
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.COMPLETED
    [stored] = store.rollouts_after(0)
    assert (stored.rollout.final_reward, stored.attempt, stored.unsolicited) == (0.5, 1, False)


def test_a_rollout_reported_with_its_json_reads_back_as_the_same_rollout(store: Store) -> None:
    [rollout_id] = queue(store, 1)
    store.claim_next()
    body = orjson.dumps(
        {
            "rollout_id": rollout_id,
            "final_reward": 1,
            "triplets": [{"prompt": [1], "response": "r"}],
            "extra": [None],
        }
    )
    rollout = Rollout.model_validate_json(body)
    assert store.record_rollout(rollout, body) is ReportOutcome.STORED
    [stored] = store.rollouts_after(0)
    assert stored.rollout == rollout and stored.rollout.final_reward == 1.0
    assert stored.rollout.model_extra == {"extra": [None]}


def test_a_late_rollout_for_a_requeued_task_takes_it_out_of_the_queue(store: Store, clock: FakeClock) -> None:
    [rollout_id] = queue(store, 1)
    store.claim_next()
    clock.advance(11)
    store.expire_claims()
    assert store.record_rollout(Rollout(rollout_id=rollout_id)) is ReportOutcome.STORED
    assert store.claim_next() is None


@pytest.mark.parametrize("consume_first", [False, True])
def test_a_second_rollout_for_a_task_is_counted_not_stored(
    store: Store, clock: FakeClock, consume_first: bool
) -> None:
    [rollout_id] = queue(store, 1)
    store.claim_next()
    clock.advance(11)
    store.claim_next()  # the re-claim: two workers now hold the task
    assert store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=1.0)) is ReportOutcome.STORED
    if consume_first:
        assert store.consume_rollout(rollout_id) is not None
    assert store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=2.0)) is ReportOutcome.DUPLICATE
    assert [r.rollout.final_reward for r in store.rollouts_after(0)] == [1.0]
    if consume_first:
        assert store.consume_rollout(rollout_id) is None
    else:
        assert [r.final_reward for r in store.consume_all()] == [1.0]
    counts = store.counts()
    assert (counts.rollouts, counts.duplicates) == (1, 1)
    record = store.get_task(rollout_id)
    assert record is not None and record.duplicates == 1


@pytest.mark.parametrize("reclaimed", [True, False], ids=["claimed again", "still queued"])
@pytest.mark.parametrize("in_a_group", [True, False], ids=["in a group", "alone"])
def test_a_task_brought_back_after_its_result_is_ended_by_its_next_report_keeping_the_first(
    store: Store, reclaimed: bool, in_a_group: bool
) -> None:
    [rollout_id] = queue(store, 1)
    store.claim_next()
    assert store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=1.0)) is ReportOutcome.STORED
    store.update_rollout(rollout_id, {"status": "cancelled"})  # the store API may, as 0.3.0's does
    store.retry_tasks([rollout_id])
    if reclaimed:
        store.claim_next()
    again = Rollout(rollout_id=rollout_id, final_reward=2.0)
    outcome = store.record_reports([Report.of(again)])[0] if in_a_group else store.record_rollout(again)
    assert outcome is ReportOutcome.DUPLICATE
    record = store.get_task(rollout_id)
    assert record is not None and (record.status, record.duplicates) == (TaskStatus.COMPLETED, 1)
    assert [r.rollout.final_reward for r in store.rollouts_after(0)] == [1.0]
    assert store.claim_next() is None


def test_a_rollout_for_an_unknown_id_is_kept_as_unsolicited(store: Store) -> None:
    assert store.record_rollout(Rollout(rollout_id="made-up", final_reward=3.0)) is ReportOutcome.UNSOLICITED
    assert store.record_rollout(Rollout(rollout_id="made-up")) is ReportOutcome.DUPLICATE
    [stored] = store.rollouts_after(0)
    assert stored.unsolicited and stored.attempt is None
    assert store.counts().unsolicited == 1


def test_rollouts_keep_arrival_order_and_resume_from_a_sequence_number(store: Store) -> None:
    ids = queue(store, 1, 2, 3)
    for rollout_id in reversed(ids):
        store.record_rollout(Rollout(rollout_id=rollout_id))
    everything = store.rollouts_after(0)
    assert [r.rollout.rollout_id for r in everything] == list(reversed(ids))
    assert [r.seq for r in everything] == sorted(r.seq for r in everything)
    assert [r.rollout.rollout_id for r in store.rollouts_after(everything[0].seq)] == list(reversed(ids))[1:]
    assert store.rollouts_after(0, limit=1)[0].seq == everything[0].seq
    assert store.last_seq() == everything[-1].seq


def test_a_page_of_rollouts_ends_once_its_bodies_hold_max_bytes_after_the_first(store: Store) -> None:
    for number in range(4):
        store.record_rollout(Rollout(rollout_id=f"r{number}", logs=["x" * 1_000]))
    size = len(store.rollouts_after(0, limit=1)[0].rollout.model_dump_json())
    assert [len(store.rollouts_after(0, max_bytes=cap)) for cap in (1, size, size + 1, 2 * size + 1)] == [
        1,
        1,
        2,
        3,
    ]
    assert len(store.rollouts_after(0, limit=2, max_bytes=10**9)) == 2


def test_unknown_rollout_fields_are_kept(store: Store) -> None:
    store.record_rollout(Rollout.model_validate({"rollout_id": "x", "future_field": [1, 2]}))
    stored = store.get_rollout("x")
    assert stored is not None and stored.rollout.model_dump()["future_field"] == [1, 2]


def test_reading_does_not_consume_but_consuming_is_once(store: Store) -> None:
    ids = queue(store, 1, 2)
    for rollout_id in ids:
        store.record_rollout(Rollout(rollout_id=rollout_id))
    assert len(store.rollouts_after(0)) == 2
    first = store.consume_rollout(ids[0])
    assert first is not None and first.rollout_id == ids[0]
    assert store.consume_rollout(ids[0]) is None
    assert [r.rollout_id for r in store.consume_all()] == [ids[1]]
    assert store.consume_all() == []
    assert len(store.rollouts_after(0)) == 2


def test_cancel_takes_a_task_out_of_the_queue(store: Store) -> None:
    [rollout_id] = queue(store, 1)
    assert store.cancel_task(rollout_id).status is TaskStatus.CANCELLED
    assert store.claim_next() is None
    with pytest.raises(InvalidTransitionError, match="cancelled and cannot be cancelled"):
        store.cancel_task(rollout_id)
    with pytest.raises(UnknownTaskError, match="No task with id 'nope'"):
        store.cancel_task("nope")


def test_cancelling_several_tasks_is_all_or_nothing(store: Store) -> None:
    queued, claimed, done = queue(store, 1, 2, 3)
    for _ in range(3):
        store.claim_next()
    store.record_rollout(Rollout(rollout_id=done))
    with pytest.raises(UnknownTaskError, match="No task with id 'nope'"):
        store.cancel_tasks([queued, "nope"])
    with pytest.raises(InvalidTransitionError, match=f"'{done}' is completed"):
        store.cancel_tasks([claimed, done])
    assert store.counts().tasks[TaskStatus.CANCELLED] == 0
    records = store.cancel_tasks([claimed, queued, claimed])
    assert [(r.rollout_id, r.status) for r in records] == [
        (claimed, TaskStatus.CANCELLED),
        (queued, TaskStatus.CANCELLED),
    ]
    assert [r.status for r in store.list_tasks()] == [TaskStatus.CANCELLED] * 2 + [TaskStatus.COMPLETED]


@pytest.mark.usefixtures("small_drain_steps")
def test_cancelling_the_queue_takes_what_was_queued_and_leaves_the_rest(
    store: Store, clock: FakeClock
) -> None:
    first, timed_out, second = queue(store, "first", "timed out", "second")
    claimed = store.claim_next()
    assert claimed is not None and claimed.rollout_id == first
    store.claim_next()
    batch_id = store.create_batch()
    staged = stage(store, batch_id, *range(5))
    store.commit_batch(batch_id)  # still in `staging`: moved into place two at a time
    last_place = store.last_queue_place()
    clock.advance(11)  # past the 10 s task timeout: both claims are handed back, after `last_place`
    [after] = queue(store, "after")
    assert store.expire_claims() == 2
    cancelled = []
    while count := store.cancel_queued(last_place, 2):
        cancelled.append(count)
    assert sum(cancelled) == 6 and max(cancelled) == 2  # at most `limit` a write
    statuses = {r.rollout_id: r.status for r in store.list_tasks()}
    assert [statuses[i] for i in (second, *staged)] == [TaskStatus.CANCELLED] * 6
    assert [statuses[i] for i in (first, timed_out, after)] == [TaskStatus.QUEUED] * 3
    assert store.counts().tasks[TaskStatus.CANCELLED] == 6 and not store.drain_step()


def test_cancelling_the_queue_goes_in_queue_order_past_a_batch_emptied_by_hand(store: Store) -> None:
    """A committed batch whose tasks were all moved out of `staging` by name (cancelled, say)
    must not hide the batch after it: each write cancels the queue's first tasks."""
    emptied, later = store.create_batch(), store.create_batch()
    [by_hand] = stage(store, emptied, "cancelled by hand")
    store.commit_batch(emptied)
    [next_in_line] = stage(store, later, "next in line")
    store.commit_batch(later)
    [last] = queue(store, "last")
    store.cancel_task(by_hand)
    assert store.cancel_queued(store.last_queue_place(), 1) == 1
    statuses = {r.rollout_id: r.status for r in store.list_tasks()}
    assert (statuses[next_in_line], statuses[last]) == (TaskStatus.CANCELLED, TaskStatus.QUEUED)


def test_cancelling_the_whole_queue_leaves_no_batch_behind_one_emptied_by_hand(store: Store) -> None:
    """Its first write used to find nothing to cancel there, and so end the whole cancel."""
    emptied, later = store.create_batch(), store.create_batch()
    [by_hand] = stage(store, emptied, "cancelled by hand")
    store.commit_batch(emptied)
    stage(store, later, "one", "two")
    store.commit_batch(later)
    store.cancel_task(by_hand)
    last_place = store.last_queue_place()
    while store.cancel_queued(last_place, 1_000):
        pass
    assert store.counts().tasks[TaskStatus.QUEUED] == 0


def test_a_task_cancelled_with_the_queue_is_as_one_cancelled_by_id(store: Store, clock: FakeClock) -> None:
    by_id, _ = queue(store, "same", "same")
    clock.advance(1)
    store.cancel_task(by_id)
    assert store.cancel_queued(store.last_queue_place(), 10) == 1
    assert isinstance(store, SQLiteStore)
    names = [column for _, column, *_ in store._read("PRAGMA table_info(tasks)")]
    rows = [dict(zip(names, row, strict=True)) for row in store._read("SELECT * FROM tasks ORDER BY id")]
    for row in rows:
        del row["id"], row["rollout_id"]
    assert rows[0] == rows[1] and rows[0]["end_time"] == clock.now


def test_retrying_queues_failed_and_cancelled_tasks_again_at_the_back_all_or_none(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(max_claims=1)
    failed, cancelled, completed, claimed = queue(store, "failed", "cancelled", "completed", "claimed")
    store.claim_next()
    clock.advance(11)  # past the timeout: its one claim ran out
    store.cancel_task(cancelled)
    assert store.claim_next().rollout_id == completed  # type: ignore[union-attr]
    store.record_rollout(Rollout(rollout_id=completed))
    assert store.claim_next().rollout_id == claimed  # type: ignore[union-attr]
    [queued] = queue(store, "queued")
    with pytest.raises(UnknownTaskError, match="No task with id 'nope'"):
        store.retry_tasks([failed, "nope"])
    for state, rollout_id in (("queued", queued), ("claimed", claimed), ("completed", completed)):
        with pytest.raises(InvalidTransitionError, match=f"'{rollout_id}' is {state} and cannot be retried"):
            store.retry_tasks([cancelled, rollout_id])
    assert store.counts().tasks[TaskStatus.QUEUED] == 1
    records = store.retry_tasks([cancelled, failed, cancelled])
    assert [(r.rollout_id, r.status) for r in records] == [
        (cancelled, TaskStatus.QUEUED),
        (failed, TaskStatus.QUEUED),
    ]
    claims = [store.claim_next() for _ in range(3)]
    assert [(c.rollout_id, c.num_claims) for c in claims if c] == [(queued, 1), (cancelled, 1), (failed, 2)]


def test_a_retried_task_keeps_its_claims_so_its_limit_leaves_it_at_least_one(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(max_claims=2)
    [used_up] = queue(store, "used up")
    for _ in range(2):
        store.claim_next()
        clock.advance(11)
    [used_once] = queue(store, "used once")
    store.claim_next()  # finds used_up's second claim ran out, and makes used_once's first
    store.cancel_task(used_once)
    store.retry_tasks([used_up, used_once])
    for rollout_id, claims in ((used_up, 3), (used_once, 2)):
        claim = store.claim_next()
        assert claim is not None and (claim.rollout_id, claim.num_claims) == (rollout_id, claims)
    clock.advance(11)
    assert store.expire_claims() == 2
    assert [r.status for r in store.list_tasks()] == [TaskStatus.FAILED] * 2


def test_a_retried_rollout_waits_in_the_queue_as_the_store_api_tells_it(store: Store) -> None:
    tried, untried = queue(store, "tried", "untried")
    store.claim_next()
    store.update_attempt(tried, "latest", {"status": "failed"})
    store.cancel_task(untried)
    store.retry_tasks([tried, untried])
    statuses = [store.get_rollout_shape(rollout_id)["status"] for rollout_id in (tried, untried)]  # type: ignore[index]
    assert statuses == ["requeuing", "queuing"]


def test_retrying_every_failed_task_goes_a_write_at_a_time_in_queue_order(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(max_claims=1)
    ids = queue(store, *range(6))
    for _ in ids:
        store.claim_next()
    store.cancel_task(ids[2])
    clock.advance(11)
    assert store.expire_claims() == 5
    counts, after = [], 0
    while True:
        count, after = store.retry_failed(after, 2)
        if not count:
            break
        counts.append(count)
    assert counts == [2, 2, 1]  # at most `limit` a write
    claims = [store.claim_next() for _ in range(6)]
    assert [c.rollout_id for c in claims if c] == [ids[i] for i in (0, 1, 3, 4, 5)]
    assert store.get_task(ids[2]).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_a_paused_queue_hands_out_nothing_while_claims_still_run_out(store: Store, clock: FakeClock) -> None:
    first, second = queue(store, "first", "second")
    store.claim_next()
    store.set_paused(True)
    assert store.paused
    assert (store.claim(), store.claim_many(5), store.dequeue_rollouts(5, "w-1")) == (None, [], [])
    clock.advance(11)  # past the timeout: the claim made before the pause runs out all the same
    assert store.expire_claims() == 1
    assert store.claim() is None
    store.set_paused(False)
    claims = store.claim_many(5)
    assert sorted((c.rollout_id, c.num_claims) for c in claims) == sorted([(second, 1), (first, 2)])


def test_a_paused_queue_stays_paused_across_reopening(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock)
    queue(store, "waits")
    store.set_paused(True)
    store.close()
    reopened = SQLiteStore(path, clock=clock)
    assert reopened.paused and reopened.claim() is None
    reopened.set_paused(False)
    assert reopened.claim() is not None
    reopened.close()


def test_a_pause_that_is_rolled_back_leaves_the_queue_running(tmp_path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(tmp_path / "agl.db", clock=clock)
    queue(store, "runs")
    with pytest.raises(UnknownTaskError), store.transaction(isolate_writes=False):
        store.set_paused(True)
        store.cancel_task("rollout-unknown")  # fails, and with it the whole transaction
    assert not store.paused and store.claim() is not None
    store.close()


def test_list_tasks_filters_by_status_in_queue_order(store: Store) -> None:
    ids = queue(store, 1, 2, 3)
    store.claim_next()
    assert [r.rollout_id for r in store.list_tasks(TaskStatus.QUEUED)] == ids[1:]
    assert [r.rollout_id for r in store.list_tasks()] == ids
    assert [r.rollout_id for r in store.list_tasks(limit=1, offset=1)] == [ids[1]]


def test_resources_get_versions_and_the_latest_wins(store: Store, clock: FakeClock) -> None:
    llm = {"resource_type": "llm", "endpoint": "http://e", "model": "m"}
    first = store.publish_resources({"main": llm})
    assert first.resources_id.startswith("res-") and first.version == 1
    clock.advance(1)
    named = store.publish_resources({"main": llm}, resources_id="prod")
    clock.advance(1)
    again = store.publish_resources({"main": {**llm, "model": "m2"}}, resources_id="prod")
    assert (again.version, again.create_time, again.update_time) == (2, named.create_time, clock.now)
    latest = store.latest_resources()
    assert latest is not None and latest.resources_id == "prod" and latest.version == 2
    fetched = store.get_resources(first.resources_id)
    assert fetched == first
    assert [r.resources_id for r in store.list_resources()] == [first.resources_id, "prod"]
    assert [r.resources_id for r in store.list_resources(last=1)] == ["prod"]
    assert [r.resources_id for r in store.list_resources(last=3)] == [first.resources_id, "prod"]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"x": {"resource_type": "tool"}}, "unknown resource_type 'tool'"),
        ({"x": {"endpoint": "e"}}, "has no resource_type"),
        ({"x": {"resource_type": "llm", "model": "m"}}, "'x.endpoint': Field required"),
        ({"x": {"resource_type": "prompt_template", "template": "t", "engine": "mustache"}}, "x.engine"),
    ],
)
def test_unknown_or_incomplete_resources_are_refused(
    store: Store, resources: dict[str, object], message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        store.publish_resources(resources)
    assert store.latest_resources() is None


def test_latest_is_not_a_name_a_bundle_can_take(store: Store) -> None:
    with pytest.raises(StoreError, match="reserved"):
        store.publish_resources(
            {"p": {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}}, "latest"
        )


def test_a_sqlite_store_keeps_everything_across_reopening(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock, task_timeout=10)
    ids = queue(store, "a", "b")
    store.claim_next()
    store.record_rollout(Rollout(rollout_id=ids[0], final_reward=1.0))
    update = store.publish_resources(
        {"p": {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}}
    )
    store.close()

    reopened = SQLiteStore(path, clock=clock, task_timeout=10)
    assert reopened.latest_resources() == update
    assert [r.rollout.rollout_id for r in reopened.rollouts_after(0)] == [ids[0]]
    task = reopened.claim_next()
    assert task is not None and task.rollout_id == ids[1]
    [more] = queue(reopened, "c")
    assert reopened.list_tasks(TaskStatus.QUEUED)[0].rollout_id == more
    reopened.close()


def stage(store: Store, batch_id: str, *inputs: object) -> list[str]:
    return store.stage_tasks(batch_id, [TaskSpec(input=value) for value in inputs])


def test_staged_tasks_are_invisible_until_their_batch_is_committed(store: Store) -> None:
    batch_id = store.create_batch()
    assert batch_id.startswith("batch-")
    staged = stage(store, batch_id, "a", "b")
    assert store.batch_size(batch_id) == 2
    assert store.claim_next() is None
    assert store.list_tasks() == []
    assert store.get_task(staged[0]) is None
    assert store.counts().tasks[TaskStatus.QUEUED] == 0


def test_a_committed_batch_is_queued_in_staging_order_at_the_commit_time(
    store: Store, clock: FakeClock
) -> None:
    [earlier] = queue(store, "earlier")
    batch_id = store.create_batch()
    first = stage(store, batch_id, "a", "b")
    second = store.stage_tasks(batch_id, [TaskSpec(input="c", mode="val", metadata={"k": 1})])
    assert store.batch_size(batch_id) == 3
    clock.advance(5)
    assert store.commit_batch(batch_id) == 3
    assert [r.rollout_id for r in store.list_tasks()] == [earlier, *first, *second]
    claimed = [store.claim_next() for _ in range(4)]
    assert [task.input for task in claimed if task] == ["earlier", "a", "b", "c"]
    record = store.get_task(second[0])
    assert record is not None
    assert (record.task.mode, record.task.metadata, record.task.create_time) == ("val", {"k": 1}, clock.now)
    assert store.counts().tasks[TaskStatus.CLAIMED] == 4


def test_a_committed_batch_queues_behind_a_task_requeued_before_it(store: Store, clock: FakeClock) -> None:
    [slow] = queue(store, "slow")
    store.claim_next()
    batch_id = store.create_batch()
    [staged] = stage(store, batch_id, "new")
    clock.advance(11)
    store.expire_claims()
    store.commit_batch(batch_id)
    order = [store.claim_next(), store.claim_next()]
    assert [task.rollout_id for task in order if task] == [slow, staged]


def test_a_discarded_batch_queues_nothing(store: Store) -> None:
    batch_id = store.create_batch()
    stage(store, batch_id, 1, 2, 3)
    assert store.discard_batch(batch_id) == 3
    assert store.claim_next() is None
    assert store.list_tasks() == []


def test_a_batch_nothing_was_staged_to_for_a_while_is_discarded_as_its_client_is_gone(
    store: Store, clock: FakeClock
) -> None:
    idle, busy, committed = store.create_batch(), store.create_batch(), store.create_batch()
    stage(store, idle, 1, 2)
    [queued] = stage(store, committed, 3)
    store.commit_batch(committed)
    clock.advance(30)
    stage(store, busy, 4)  # staged to since: not idle
    clock.advance(30)
    assert store.discard_idle_batches(60) == 0  # not idle for over a minute yet
    clock.advance(0.5)
    assert store.discard_idle_batches(60) == 1
    with pytest.raises(UnknownBatchError):
        stage(store, idle, 5)
    assert store.batch_size(busy) == 1
    assert [r.rollout_id for r in store.list_tasks()] == [queued]
    clock.advance(60)
    assert store.discard_idle_batches(60) == 1
    assert store.discard_idle_batches(60) == 0


def test_a_batch_ends_when_committed_or_discarded(store: Store) -> None:
    committed, discarded = store.create_batch(), store.create_batch()
    store.commit_batch(committed)
    store.discard_batch(discarded)
    for batch_id in (committed, discarded, "batch-nope"):
        with pytest.raises(UnknownBatchError, match=f"No batch with id '{batch_id}'"):
            stage(store, batch_id, 1)
        with pytest.raises(UnknownBatchError):
            store.commit_batch(batch_id)
        with pytest.raises(UnknownBatchError):
            store.discard_batch(batch_id)
        with pytest.raises(UnknownBatchError):
            store.batch_size(batch_id)
    assert store.list_tasks() == []


def test_batches_staged_side_by_side_stay_apart(store: Store) -> None:
    one, two = store.create_batch(), store.create_batch()
    ones = stage(store, one, "1a")
    twos = stage(store, two, "2a")
    ones += stage(store, one, "1b")
    assert store.discard_batch(two) == 1
    assert store.commit_batch(one) == 2
    assert [r.rollout_id for r in store.list_tasks()] == ones
    assert not set(twos) & {r.rollout_id for r in store.list_tasks()}


def test_an_empty_batch_commits_nothing(store: Store) -> None:
    assert store.commit_batch(store.create_batch()) == 0
    assert store.list_tasks() == []


def test_rollout_ids_are_unique_uuid4s(store: Store) -> None:
    ids = queue(store, *range(500)) + stage(store, store.create_batch(), *range(500))
    assert len(set(ids)) == 1000
    for rollout_id in ids:
        assert rollout_id.startswith("rollout-")
        parsed = uuid.UUID(rollout_id.removeprefix("rollout-"))
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, rollout_id[8:])


def test_a_store_says_what_kind_it_is(store: Store) -> None:
    assert store.kind in ("memory", "sqlite")


def test_a_sqlite_store_drops_uncommitted_batches_when_reopened(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock)
    batch_id = store.create_batch()
    stage(store, batch_id, *range(10))
    store.close()

    reopened = SQLiteStore(path, clock=clock)
    with pytest.raises(UnknownBatchError):
        reopened.commit_batch(batch_id)
    assert reopened.list_tasks() == []
    assert reopened._read("SELECT count(*) FROM staging") == [(0,)]
    reopened.close()


def test_a_sqlite_store_of_schema_1_is_brought_up_to_date(tmp_path: Path, clock: FakeClock) -> None:
    """A file from the first agl keeps its tasks, rollouts and resources, and a task it
    had handed out gets its attempt."""
    path = tmp_path / "agl.db"
    old = database_of_schema(path, 1)
    task = (
        "INSERT INTO tasks (id, rollout_id, status, queue_pos, deadline, input, mode, resources_id, metadata,"
    )
    task += " create_time, last_claim_time, num_claims, completed_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    old.executemany(
        task,
        [
            (1, "rollout-q", "queued", 1, None, "1", "train", None, "{}", 10.0, None, 0, None),
            (2, "rollout-c", "claimed", None, 900.0, "2", None, None, '{"m": 1}', 11.0, 12.0, 1, None),
            (3, "rollout-d", "completed", None, None, "3", None, "res-1", "{}", 13.0, 14.0, 2, 15.0),
        ],
    )
    old.execute(
        "INSERT INTO rollouts (rollout_id, received_time, attempt, unsolicited, body) VALUES (?, ?, ?, ?, ?)",
        ("rollout-d", 15.0, 2, 0, '{"rollout_id": "rollout-d", "final_reward": 1.0}'),
    )
    old.commit()
    old.close()

    upgraded = SQLiteStore(path, clock=clock)
    assert upgraded._read("PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    assert [(r.rollout_id, r.status) for r in upgraded.list_tasks()] == [
        ("rollout-q", TaskStatus.QUEUED), ("rollout-c", TaskStatus.CLAIMED), ("rollout-d", TaskStatus.COMPLETED),
    ]  # fmt: skip
    assert upgraded._read("SELECT rollout_id, phase FROM tasks ORDER BY id") == [
        ("rollout-q", "queuing"), ("rollout-c", "preparing"), ("rollout-d", "succeeded"),
    ]  # fmt: skip
    assert upgraded._read("SELECT rollout_id, sequence_id, start_time, status FROM attempts ORDER BY 1") == [
        ("rollout-c", 1, 12.0, "preparing"), ("rollout-d", 2, 14.0, "succeeded"),
    ]  # fmt: skip
    stored = upgraded.get_rollout("rollout-d")
    assert stored is not None and stored.rollout.final_reward == 1.0
    batch_id = upgraded.create_batch()
    stage(upgraded, batch_id, "new")
    assert upgraded.commit_batch(batch_id) == 1
    upgraded.close()


def test_a_schema_5_store_keeps_every_attempt_once_they_are_kept_in_task_order(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Schema 6 keys attempts by their task's id: each attempt of a file from before is
    still found by its rollout id, and a new one joins them."""
    path = tmp_path / "agl.db"
    old = database_of_schema(path, 5)
    old.executemany(
        "INSERT INTO tasks (id, rollout_id, status, input, metadata, create_time, num_claims, phase)"
        " VALUES (?, ?, ?, '1', '{}', 1.0, ?, ?)",
        [(7, "rollout-b", "claimed", 2, "preparing"), (3, "rollout-a", "completed", 1, "succeeded")],
    )
    old.executemany(
        "INSERT INTO attempts (rollout_id, sequence_id, attempt_id, start_time, end_time, status)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            ("rollout-b", 1, "at-b1", 2.0, None, "timeout"),
            ("rollout-a", 1, "at-a1", 3.0, 4.0, "succeeded"),
            ("rollout-b", 2, "at-b2", 5.0, None, "preparing"),
        ],
    )
    old.close()

    upgraded = SQLiteStore(path, clock=clock)
    assert upgraded._read("SELECT task, rollout_id, sequence_id, attempt_id FROM attempts") == [
        (3, "rollout-a", 1, "at-a1"), (7, "rollout-b", 1, "at-b1"), (7, "rollout-b", 2, "at-b2"),
    ]  # fmt: skip
    assert upgraded.latest_attempt("rollout-b") == upgraded.get_rollout_shape("rollout-b")["attempt"]
    upgraded.start_attempt("rollout-b", "w-1")
    with upgraded.query_attempts("rollout-b", AttemptQuery()) as opened:
        page = opened.whole()
    assert [a["attempt_id"] for a in page["items"]][:2] == ["at-b1", "at-b2"]
    assert [a["sequence_id"] for a in page["items"]] == [1, 2, 3]
    upgraded.close()


def test_a_schema_8_store_keeps_its_staged_tasks_in_their_places(tmp_path: Path, clock: FakeClock) -> None:
    """Schema 9 keeps staged tasks in a rowid table: a committed batch not yet moved into
    `tasks` keeps its order and places in the queue; an uncommitted one is dropped, as at
    any start."""
    path = tmp_path / "agl.db"
    old = database_of_schema(path, 8)
    old.execute(
        "INSERT INTO tasks (id, rollout_id, status, queue_pos, input, metadata, create_time)"
        " VALUES (10, 'rollout-before', 'queued', 10, '0', '{}', 1.0)"
    )
    old.executemany(
        "INSERT INTO batches (id, batch_id, created_time, staged, committed_time, base_pos, moved)"
        " VALUES (?, ?, 2.0, ?, ?, ?, ?)",
        [(1, "batch-committed", 3, 3.0, 10, 1), (2, "batch-open", 2, None, None, 0)],
    )
    old.executemany(
        "INSERT INTO staging (batch, pos, rollout_id, input, mode, resources_id, metadata)"
        " VALUES (?, ?, ?, ?, NULL, NULL, '{}')",
        [
            (1, 2, "rollout-second", "2"),
            (1, 3, "rollout-third", "3"),
            (2, 1, "rollout-x", "9"),
            (2, 2, "rollout-y", "9"),
        ],
    )
    old.close()

    upgraded = SQLiteStore(path, clock=clock)
    assert upgraded._read("SELECT place, rollout_id FROM staging ORDER BY place") == [
        (schema.PLACES_PER_BATCH + 2, "rollout-second"), (schema.PLACES_PER_BATCH + 3, "rollout-third"),
    ]  # fmt: skip
    assert [(r.rollout_id, r.status) for r in upgraded.list_tasks()] == [
        ("rollout-before", TaskStatus.QUEUED), ("rollout-second", TaskStatus.QUEUED),
        ("rollout-third", TaskStatus.QUEUED),
    ]  # fmt: skip
    claimed = [upgraded.claim_next() for _ in range(4)]
    assert [task and (task.rollout_id, task.input) for task in claimed] == [
        ("rollout-before", 0), ("rollout-second", 2), ("rollout-third", 3), None,
    ]  # fmt: skip
    assert upgraded._read("SELECT count(*) FROM staging") == [(0,)]
    upgraded.close()


def test_tasks_of_a_kilobyte_or_so_take_about_their_size_while_staged(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Staged tasks used to be kept WITHOUT ROWID, where SQLite puts each row of more than
    about 1 KB partly on a page of its own: 1.2 KB tasks took 4.6 KB each."""
    store = SQLiteStore(tmp_path / "agl.db", clock=clock)
    [(before,)] = store._read("PRAGMA page_count")
    stage(store, store.create_batch(), *["x" * 1200] * 1000)
    [(after,)] = store._read("PRAGMA page_count")
    [(page_size,)] = store._read("PRAGMA page_size")
    assert (after - before) * page_size < 1.5 * 1000 * 1200
    store.close()


@pytest.fixture
def small_drain_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Committed batches move into place two tasks per step, so a test sees them halfway."""
    monkeypatch.setattr("agl_cli.store.batches.DRAIN_CHUNK", 2)
    monkeypatch.setattr("agl_cli.store.batches.CLAIM_DRAIN", 1)


@pytest.mark.usefixtures("small_drain_steps")
def test_a_committed_batch_is_all_there_while_it_moves_into_place(store: Store, clock: FakeClock) -> None:
    [before] = queue(store, "before")
    batch_id = store.create_batch()
    staged = stage(store, batch_id, *range(7))
    clock.advance(5)
    store.commit_batch(batch_id)
    [after] = queue(store, "after")
    expected = [before, *staged, after]
    for _ in range(3):  # partway through moving the batch, and once it is done
        assert [r.rollout_id for r in store.list_tasks()] == expected
        assert [r.rollout_id for r in store.list_tasks(TaskStatus.QUEUED, limit=3, offset=2)] == expected[2:5]
        assert store.counts().tasks[TaskStatus.QUEUED] == 9
        record = store.get_task(staged[6])
        assert record is not None and (record.status, record.task.create_time) == (
            TaskStatus.QUEUED,
            clock.now,
        )
        store.drain_step()
    while store.drain_step():
        pass
    claimed = [store.claim_next() for _ in expected]
    assert [task.rollout_id for task in claimed if task] == expected


@pytest.mark.usefixtures("small_drain_steps")
def test_claims_take_a_committed_batch_in_order_before_it_has_moved(store: Store) -> None:
    batch_id = store.create_batch()
    staged = stage(store, batch_id, *range(5))
    store.commit_batch(batch_id)
    [after] = queue(store, "after")
    claimed = [store.claim_next() for _ in range(6)]
    assert [task.rollout_id for task in claimed if task] == [*staged, after]
    assert store.counts().tasks[TaskStatus.CLAIMED] == 6 and not store.drain_step()


@pytest.mark.usefixtures("small_drain_steps")
def test_a_task_of_a_batch_still_moving_can_be_cancelled_or_completed(store: Store) -> None:
    batch_id = store.create_batch()
    staged = stage(store, batch_id, *range(6))
    store.commit_batch(batch_id)
    assert store.cancel_task(staged[4]).status is TaskStatus.CANCELLED
    assert store.record_rollout(Rollout(rollout_id=staged[5], final_reward=1.0)) is ReportOutcome.STORED
    while store.drain_step():
        pass
    statuses = [r.status for r in store.list_tasks()]
    assert statuses == [TaskStatus.QUEUED] * 4 + [TaskStatus.CANCELLED, TaskStatus.COMPLETED]
    assert len([store.claim_next() for _ in range(4)]) == 4 and store.claim_next() is None


@pytest.mark.usefixtures("small_drain_steps")
def test_a_committed_batch_survives_reopening_before_it_has_moved(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock)
    batch_id = store.create_batch()
    staged = stage(store, batch_id, *range(5))
    store.commit_batch(batch_id)
    store.drain_step()
    store.close()

    reopened = SQLiteStore(path, clock=clock)
    [after] = queue(reopened, "after")
    assert [r.rollout_id for r in reopened.list_tasks()] == [*staged, after]
    while reopened.drain_step():
        pass
    claimed = [reopened.claim_next() for _ in range(6)]
    assert [task.rollout_id for task in claimed if task] == [*staged, after]
    reopened.close()


def test_a_batch_commit_that_is_rolled_back_leaves_the_batch_as_it_was(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = SQLiteStore(tmp_path / "agl.db", clock=clock)
    batch_id = store.create_batch()
    staged = stage(store, batch_id, *range(5))
    with pytest.raises(UnknownTaskError), store.transaction(isolate_writes=False):
        store.commit_batch(batch_id)
        store.cancel_task("rollout-unknown")  # fails, and with it the whole transaction
    assert store.counts().tasks[TaskStatus.QUEUED] == 0
    clock.advance(5)
    assert store.commit_batch(batch_id) == 5
    [after] = queue(store, "after")
    claimed = [store.claim_next() for _ in range(6)]
    assert [task.rollout_id for task in claimed if task] == [*staged, after]
    assert {task.create_time for task in claimed[:5] if task} == {clock.now}
    store.close()


@pytest.mark.usefixtures("small_drain_steps")
def test_batches_committed_one_after_another_are_handed_out_in_commit_order(store: Store) -> None:
    first, second = store.create_batch(), store.create_batch()
    seconds = stage(store, second, "2a", "2b", "2c")
    firsts = stage(store, first, "1a", "1b")
    store.commit_batch(first)
    store.commit_batch(second)
    [after] = queue(store, "after")
    claimed = [store.claim_next() for _ in range(6)]
    assert [task.rollout_id for task in claimed if task] == [*firsts, *seconds, after]
    assert store.claim_next() is None
