"""A group commit's claims and reports made together (`claim_many`, `record_reports`, on
both stores with a fake clock) leave the store as the same writes made one by one."""

from __future__ import annotations

from typing import Any

import orjson
from conftest import FakeClock, StoreFactory, vm_steps

from agl_cli.models import Rollout
from agl_cli.store import Claim, Report, ReportOutcome, Store, TaskSpec
from agl_cli.store_models import EnqueueRequest, RolloutConfig

TIMEOUT = RolloutConfig(timeout_seconds=5)


def twins(make_store: StoreFactory) -> list[tuple[Store, FakeClock]]:
    """Two stores, each with a clock of its own: one makes writes one by one, the other
    the same writes together, at the same times."""
    clocks = [FakeClock(), FakeClock()]
    return [(make_store(clock=clock), clock) for clock in clocks]


def fill(store: Store, clock: FakeClock) -> list[str]:
    """Six legacy tasks and a store-API rollout with a timeout of its own; the first task
    claimed, then left to time out so that it waits at the back of the queue."""
    ids = store.queue_tasks([TaskSpec(input={"n": n}, mode="train") for n in range(6)])
    [shape] = store.enqueue_rollouts([EnqueueRequest(input={"n": 6}, config=TIMEOUT)])
    ids.append(str(shape["rollout_id"]))
    assert store.claim() is not None
    clock.now += 11  # past the task timeout of 10 s: the next claim puts it back first
    return ids


def seen(store: Store, ids: list[str]) -> list[Any]:
    """All that the store tells about each id, and its counts, without the ids themselves
    and the random attempt ids."""
    told: list[Any] = []
    for rollout_id in ids:
        detail = store.rollout_detail(rollout_id, max_spans=1)
        assert detail is not None, rollout_id
        task = None
        if detail.history is not None:
            record = detail.history.record
            attempts = [
                {key: value for key, value in attempt.items() if key not in ("attempt_id", "rollout_id")}
                for attempt in detail.history.attempts
            ]
            task = (record.task.model_dump(exclude={"rollout_id"}), record.status, record.deadline,
                    record.completed_time, record.duplicates, attempts)  # fmt: skip
        stored = detail.stored
        result = None
        if stored is not None:
            result = (stored.rollout.model_dump(exclude={"rollout_id"}), stored.received_time,
                      stored.attempt, stored.unsolicited)  # fmt: skip
        shape = orjson.loads(orjson.dumps(store.get_rollout_shape(rollout_id)))  # as a client reads it
        told.append((task, result, without_ids(shape)))
    return [*told, store.counts()]


def without_ids(shape: Any) -> Any:
    """A store-API shape without its rollout and attempt ids, wherever they are."""
    if isinstance(shape, dict):
        return {
            key: without_ids(value) for key, value in shape.items() if key not in ("rollout_id", "attempt_id")
        }
    if isinstance(shape, list):
        return [without_ids(value) for value in shape]
    return shape


def handed_out(claims: list[Claim], ids: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """Which tasks the claims handed out (by place in `ids`) and as what, in queue order."""
    shown = []
    for claim in claims:
        wire = orjson.loads(claim.wire)
        shown.append((ids.index(wire.pop("rollout_id")), wire))
    return sorted(shown, key=lambda pair: pair[0])


def test_claims_made_together_take_the_head_of_the_queue_as_claims_one_by_one(
    make_store: StoreFactory,
) -> None:
    (one, one_clock), (together, together_clock) = twins(make_store)
    one_ids, together_ids = fill(one, one_clock), fill(together, together_clock)

    singly = [one.claim() for _ in range(4)]
    assert None not in singly
    grouped = together.claim_many(4)
    assert handed_out(grouped, together_ids) == handed_out(singly, one_ids)  # type: ignore[arg-type]
    assert seen(together, together_ids) == seen(one, one_ids)

    rest = [claim for claim in (one.claim() for _ in range(9)) if claim is not None]
    assert len(rest) == 3  # the queue ran dry: as many claims as tasks were left
    assert handed_out(together.claim_many(9), together_ids) == handed_out(rest, one_ids)
    assert seen(together, together_ids) == seen(one, one_ids)


def test_claims_made_together_take_a_committed_batch_still_moving_in_order(store: Store) -> None:
    batch = store.create_batch()
    ids = store.stage_tasks(batch, [TaskSpec(input=n) for n in range(5)])
    store.commit_batch(batch)
    assert [claim.rollout_id for claim in store.claim_many(3)] == ids[:3]


def reports(ids: list[str]) -> list[Report]:
    """A group of reports: first results for two claimed tasks, a second one for the
    first of them, one for a task completed before, one for a task still queued, one for
    an id never issued; some with the JSON they were read from, some without."""
    unknown = "ro-never-issued"
    group: list[Report] = []
    for n, rollout_id in enumerate([ids[1], ids[2], ids[1], ids[3], ids[0], unknown]):
        body = orjson.dumps({"rollout_id": rollout_id, "final_reward": n / 10, "metadata": {"n": n}})
        group.append(Report.of(Rollout.model_validate_json(body), body if n % 2 == 0 else None))
    return group


def test_reports_made_together_have_the_outcomes_of_reports_one_by_one(make_store: StoreFactory) -> None:
    (one, one_clock), (together, together_clock) = twins(make_store)
    outcomes, ids_of = [], {}
    for store, clock in (one, one_clock), (together, together_clock):
        ids = ids_of[store] = fill(store, clock)
        for _ in range(5):  # tasks 1 to 5: task 0 is back in the queue, behind the store-API rollout
            assert store.claim() is not None
        [handed] = store.dequeue_rollouts(1, "runner-1")  # the store-API rollout, for a runner
        assert handed["rollout_id"] == ids[6]
        assert store.record_report(reports(ids)[3]) is ReportOutcome.STORED  # task 3, before the group
        group = reports(ids)
        group.append(group.pop(3))  # ... and again in the group
        group.insert(
            0, Report.of(Rollout(rollout_id=ids[6], final_reward=1.0))
        )  # the runner's, sent the old way
        clock.now += 1
        if store is one:
            outcomes.append([store.record_report(report) for report in group])
        else:
            outcomes.append(store.record_reports(group))
    stored, duplicate = ReportOutcome.STORED, ReportOutcome.DUPLICATE
    assert outcomes[0] == [stored, stored, stored, duplicate, stored, ReportOutcome.UNSOLICITED, duplicate]
    assert outcomes[1] == outcomes[0]

    one_ids, together_ids = ids_of[one], ids_of[together]
    assert seen(together, [*together_ids, "ro-never-issued"]) == seen(one, [*one_ids, "ro-never-issued"])
    assert together.get_worker("runner-1") == one.get_worker("runner-1")  # idle again
    assert sorted(r.rollout.final_reward or 0 for r in together.rollouts_after(0)) == sorted(
        r.rollout.final_reward or 0 for r in one.rollouts_after(0)
    )


def test_a_groups_claims_and_reports_cost_the_same_however_many_tasks_are_claimed(
    make_store: StoreFactory,
) -> None:
    steps = []
    for claimed in 10, 3_000:
        store = make_store()
        store.queue_tasks([TaskSpec(input=n) for n in range(claimed + 4)])
        handed = store.claim_many(claimed + 2)
        group = [Report.of(Rollout(rollout_id=claim.rollout_id, final_reward=1.0)) for claim in handed[-2:]]

        def report_and_claim(store: Store = store, group: list[Report] = group) -> None:
            assert store.record_reports(group) == [ReportOutcome.STORED] * 2
            assert len(store.claim_many(2)) == 2

        steps.append(vm_steps(store, report_and_claim))
    assert steps[1] <= 2 * steps[0], steps
