"""What the dashboard reads from the store: counts kept by triggers that agree with a real
count through every change, rewards summed per mode and bucket, pages newest first."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from conftest import FakeClock, StoreFactory, database_of_schema, vm_steps

from agl_cli.models import Rollout, Task, TaskSpec, TaskStatus
from agl_cli.store import CHART_POINTS, MemoryStore, SQLiteStore, Store
from agl_cli.store.schema import SCHEMA_VERSION


def counted(store: Store) -> dict[TaskStatus, int]:
    """Tasks per status, counted row by row (what the counters must agree with)."""
    found = dict.fromkeys(TaskStatus, 0)
    for record in store.list_tasks(limit=100_000):
        found[record.status] += 1
    return found


def report(store: Store, reward: float | None, mode: str | None = None) -> str:
    claimed = store.claim_next()
    assert claimed is not None
    task = Task(rollout_id=claimed.rollout_id, mode=mode) if mode else None
    store.record_rollout(Rollout(rollout_id=claimed.rollout_id, final_reward=reward, task=task))
    return claimed.rollout_id


def test_the_counts_agree_with_the_tasks_through_every_change(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(max_claims=1)
    ids = store.queue_tasks([TaskSpec(input=i) for i in range(6)])
    report(store, 1.0)
    store.claim_next()
    clock.advance(11)
    store.expire_claims()  # one attempt allowed: it fails
    store.cancel_task(ids[5])
    batch = store.create_batch()
    store.stage_tasks(batch, [TaskSpec(input=i) for i in range(2500)])
    store.commit_batch(batch)
    store.drain_step()  # part of the batch moved, the rest still staged: both are queued
    store.record_rollout(Rollout(rollout_id="rollout-never-issued"))
    counts = store.counts()
    assert counts.tasks == counted(store)
    assert counts.tasks[TaskStatus.QUEUED] == 3 + 2500
    assert (counts.rollouts, counts.unsolicited) == (2, 1)
    while store.drain_step():
        pass
    assert store.counts().tasks == counted(store)


def test_rewards_are_summed_per_mode_and_bucket_and_the_buckets_widen_with_the_run(
    store: Store, clock: FakeClock
) -> None:
    store.queue_tasks([TaskSpec(input=i, mode="train") for i in range(3)] + [TaskSpec(input=9)])
    report(store, 0.2)
    report(store, 0.4)
    clock.advance(2)
    report(store, None)  # no reward: counted as a rollout, not in the mean
    report(store, 1.0, mode="val")  # the worker's own task says val: it wins
    series = store.reward_series(240)
    assert series.width == 1
    points = [(p.mode, p.time - series.points[0].time, p.rollouts, p.rewarded, p.mean) for p in series.points]
    assert sorted(points, key=str) == sorted(
        [("train", 0.0, 2, 2, 0.30000000000000004), ("train", 2.0, 1, 0, None), ("val", 2.0, 1, 1, 1.0)],
        key=str,
    )
    clock.advance(3 * 3600)  # a run of three hours fits in 240 buckets of a minute
    store.queue_tasks([TaskSpec(input=0, mode="train")])
    report(store, 0.6)
    wide = store.reward_series(240)
    assert wide.width == 60 and len(wide.points) == 3
    assert all(point.time % 60 == 0 for point in wide.points)


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (1_000_004, 1_199),  # 1,199 s: under 240 buckets of 5 s, but the run touches 241 of them
        (1_000_000, 300 * 86_400),  # 300 days: more than 240 of the widest fixed width, a day
        (1_000_000, 10 * 365 * 86_400),
    ],
)
def test_a_run_of_any_length_touches_at_most_the_chart_s_buckets(
    store: Store, clock: FakeClock, start: float, length: int
) -> None:
    """The buckets start at multiples of their width: a result in the run's first second and
    one in its last are in the first and the last bucket the chart has."""
    store.queue_tasks([TaskSpec(input=i, mode="train") for i in range(2)])
    clock.now = start
    report(store, 0.0)
    clock.advance(length - 1)
    report(store, 1.0)

    series = store.reward_series(CHART_POINTS)

    first, last = series.points
    assert (first.rollouts, last.rollouts) == (1, 1)
    assert (last.time - first.time) / series.width + 1 <= CHART_POINTS
    assert first.time <= start < first.time + series.width


def test_sums_of_rewards_no_chart_reads_any_more_are_deleted_and_the_chart_is_as_before(
    store: Store, clock: FakeClock
) -> None:
    """A run only grows longer: once its chart sums minutes, the sums per second are never
    read again, but for the run's first and last second, which give its length."""
    store.queue_tasks([TaskSpec(input=i, mode="train") for i in range(40)])
    for i in range(20):  # twenty seconds of results: the chart reads every second
        report(store, i / 20)
        clock.advance(1)
    assert store.thin_rewards(10_000) == 0
    clock.advance(3 * 3600)
    for i in range(20):
        report(store, i / 20)
        clock.advance(1)
    before = store.reward_series(CHART_POINTS)
    assert before.width == 60
    assert [store.thin_rewards(15), store.thin_rewards(15), store.thin_rewards(15)] == [15, 15, 8]
    assert store.reward_series(CHART_POINTS) == before
    widest = store.reward_series(1)  # the run in one bucket of six hours, summed from the hours: kept too
    assert (widest.width, sum(point.rollouts for point in widest.points)) == (21600, 40)


def test_recent_rollouts_page_back_from_the_newest(store: Store) -> None:
    store.queue_tasks([TaskSpec(input=i, mode="test") for i in range(5)])
    ids = [report(store, i / 10) for i in range(5)]
    newest = store.recent_rollouts(None, 2)
    assert [line.rollout_id for line in newest] == ids[::-1][:2]
    assert [line.rollout_id for line in store.recent_rollouts(newest[-1].seq, 10)] == ids[::-1][2:]
    assert [line.mode for line in store.rollout_summaries(0, 10)] == ["test"] * 5
    stored = store.get_rollout(ids[0])
    assert stored is not None and stored.rollout.task is None  # kept as the worker sent it
    assert stored.completed().task is not None and stored.completed().task.mode == "test"


def test_a_schema_4_database_gets_its_counts_and_rewards_from_what_it_holds(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "agl.db"
    old = database_of_schema(path, 4)
    old.executemany(
        "INSERT INTO tasks (id, rollout_id, status, queue_pos, input, mode, metadata, create_time, num_claims, phase)"
        " VALUES (?, ?, ?, ?, '1', ?, '{}', 1.0, ?, ?)",
        [
            (1, "rollout-a", "completed", None, "train", 1, "succeeded"),
            (2, "rollout-b", "queued", 2, "val", 0, "queuing"),
            (3, "rollout-c", "failed", None, None, 2, "failed"),
        ],
    )
    old.executemany(
        "INSERT INTO rollouts (rollout_id, received_time, attempt, unsolicited, body) VALUES (?, ?, ?, ?, ?)",
        [
            ("rollout-a", 100.5, 1, 0, '{"rollout_id": "rollout-a", "final_reward": 0.5}'),
            ("rollout-x", 101.0, None, 1, '{"rollout_id": "rollout-x", "task": {"rollout_id": "rollout-x", "mode": "val"}}'),
        ],
    )  # fmt: skip
    old.close()
    upgraded = SQLiteStore(path, clock=clock)
    assert upgraded._read("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    counts = upgraded.counts()
    assert counts.tasks == counted(upgraded)
    assert (counts.rollouts, counts.unsolicited) == (2, 1)
    points = {(p.mode, p.rollouts, p.mean) for p in upgraded.reward_series(240).points}
    assert points == {("train", 1, 0.5), ("val", 1, None)}
    assert [t.record.rollout_id for t in upgraded.troubled_tasks(10, 0)] == ["rollout-c"]
    upgraded.close()


def test_the_chart_of_a_dense_run_reads_no_more_than_that_of_a_sparse_one(clock: FakeClock) -> None:
    """A rollout every second or one every 100 s over the same hours: the chart's buckets
    are as wide either way, and finding where the run starts and ends reads the ends of
    the rewards' index, not every second of the run."""
    costs = []
    for every, rollouts in ((1, 20_000), (100, 200)):
        store = MemoryStore(clock=clock)
        store.queue_tasks([TaskSpec(input=i, mode="train") for i in range(rollouts)])
        for claim in store.claim_many(rollouts):
            store.record_rollout(Rollout(rollout_id=claim.rollout_id, final_reward=0.5))
            clock.advance(every)
        series = store.reward_series(240)
        assert series.width == 120 and sum(point.rollouts for point in series.points) == rollouts
        costs.append(vm_steps(store, partial(store.reward_series, 240)))
        store.close()
    dense, sparse = costs
    assert dense <= 2 * sparse + 5, costs


def test_a_result_stamped_ahead_of_the_clock_leaves_the_chart_and_its_sums_alone(
    store: Store, clock: FakeClock
) -> None:
    """A rollout that came while the clock was a year ahead (a daemon that ran so, restarted
    once the clock was set right) is left out of the chart until its time: counted, it would
    widen the run to a year of one-day buckets, and the tidying would delete the finer sums."""
    a_year = 365 * 86_400.0
    store.queue_tasks([TaskSpec(input=i, mode="train") for i in range(3)])
    first, ahead, last = store.claim_many(3)
    store.record_rollout(Rollout(rollout_id=first.rollout_id, final_reward=0.5))
    clock.advance(a_year)
    store.record_rollout(Rollout(rollout_id=ahead.rollout_id, final_reward=0.5))
    clock.advance(10 - a_year)
    store.record_rollout(Rollout(rollout_id=last.rollout_id, final_reward=0.5))

    series = store.reward_series(CHART_POINTS)

    assert series.width == 1 and sum(point.rollouts for point in series.points) == 2
    store.thin_rewards(10_000)
    assert store.reward_series(CHART_POINTS) == series
