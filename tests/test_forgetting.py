"""`--forget-tasks`: with `--rollout-retention`, what retention deletes takes its task along
(a completed task with its result, a failed or cancelled one with its spans), attempts and
all, so that a store that runs for weeks stops growing. Tasks still in play, and young
ones, stay; a report for a forgotten task is a new, unsolicited result; and the place of
a forgotten task is never handed out again, even after a restart."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runner import agl, assert_one_line_error
from conftest import FakeClock, StoreFactory, database_of_schema
from daemon import Daemon, wait_until
from test_retention import kept, reported, running_with_a_span, span_ids
from test_store_rollouts import enqueue, paged

from agl_cli.embedded import AgentLightningServer
from agl_cli.models import Rollout, TaskStatus
from agl_cli.store import MemoryStore, Report, ReportOutcome, SQLiteStore, Store, TaskSpec, UnknownTaskError
from agl_cli.store_models import AttemptQuery


def forgotten(store: Store, rollout_id: str) -> bool:
    """Whether nothing of the task is left: not the task, its attempts or its spans."""
    return (
        store.get_task(rollout_id) is None
        and store.latest_attempt(rollout_id) is None
        and paged(store.query_attempts(rollout_id, AttemptQuery()))["total"] == 0
        and span_ids(store, rollout_id) == []
    )


def test_a_completed_task_goes_with_its_result(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(rollout_retention=60, forget_tasks=True)
    old = reported(store, 0.1)
    clock.advance(30)
    young = reported(store, 0.2)
    clock.advance(31)
    assert store.prune_rollouts(100) == 1
    assert forgotten(store, old)
    record = store.get_task(young)
    assert record is not None and record.status is TaskStatus.COMPLETED
    assert kept(store) == [young]
    counts = store.counts()
    assert (counts.tasks[TaskStatus.COMPLETED], counts.rollouts) == (1, 1)


def test_a_report_for_a_forgotten_task_is_a_new_unsolicited_result(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=60, forget_tasks=True)
    rollout_id = reported(store, 1.0)
    clock.advance(61)
    assert store.prune_rollouts(100) == 1
    late = store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=2.0))
    assert late is ReportOutcome.UNSOLICITED
    [stored] = store.rollouts_after(0)
    assert (stored.rollout.rollout_id, stored.seq, stored.unsolicited) == (rollout_id, 2, True)
    assert store.counts().duplicates == 0


def test_a_failed_or_cancelled_task_goes_once_it_ended_that_long_ago(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=60, forget_tasks=True)
    failed, cancelled, young = running_with_a_span(store, "failed", "cancelled", "young")
    store.update_rollout(failed, {"status": "failed"})
    store.update_rollout(cancelled, {"status": "cancelled"})
    clock.advance(30)
    store.update_rollout(young, {"status": "failed"})
    clock.advance(31)
    assert store.prune_ended(100) == 2
    assert forgotten(store, failed) and forgotten(store, cancelled)
    assert span_ids(store, young) == ["s-young"]
    with pytest.raises(UnknownTaskError, match=failed):
        store.retry_tasks([failed])
    assert store.counts().tasks[TaskStatus.FAILED] == 1
    assert store.prune_rollouts(100) == 0  # none of them had a result


def test_tasks_in_play_and_tasks_retried_since_they_ended_stay(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=60, forget_tasks=True)
    retried, cancelled, claimed = running_with_a_span(store, "retried", "cancelled", "claimed")
    [queued] = enqueue(store, "queued")
    store.update_rollout(retried, {"status": "failed"})
    store.update_rollout(cancelled, {"status": "cancelled"})
    store.retry_tasks([retried, cancelled])  # both back in the queue: listed as ended, no longer so
    clock.advance(3600)
    assert (store.prune_ended(100), store.prune_rollouts(100)) == (2, 0)
    statuses = {
        rollout_id: store.get_task(rollout_id) for rollout_id in (retried, cancelled, claimed, queued)
    }
    assert {rollout_id: record and record.status for rollout_id, record in statuses.items()} == {
        retried: TaskStatus.QUEUED, cancelled: TaskStatus.QUEUED, claimed: TaskStatus.CLAIMED,
        queued: TaskStatus.QUEUED,
    }  # fmt: skip
    assert [span_ids(store, rollout_id) for rollout_id in (retried, claimed)] == [
        ["s-retried"],
        ["s-claimed"],
    ]


def test_a_task_that_failed_again_after_a_retry_stays_until_its_last_end_is_that_long_ago(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=60, forget_tasks=True)
    [rollout_id] = running_with_a_span(store, "again")
    store.update_rollout(rollout_id, {"status": "failed"})
    clock.advance(40)
    store.retry_tasks([rollout_id])
    assert store.dequeue_rollouts(1, "worker-1")
    store.update_rollout(rollout_id, {"status": "failed"})
    clock.advance(21)  # 61 s since it first failed, 21 since it failed again
    assert store.prune_ended(100) == 1
    assert store.get_task(rollout_id) is not None and span_ids(store, rollout_id) == ["s-again"]
    clock.advance(40)
    assert store.prune_ended(100) == 1
    assert forgotten(store, rollout_id)


def test_tasks_that_failed_or_were_cancelled_in_a_schema_3_file_are_forgotten_in_time_too(
    tmp_path: Path, clock: FakeClock
) -> None:
    """agl before schema 4 kept no end for them; the upgrade takes their last claim (or
    their creation) as their end, the time they were listed by for retention."""
    path = tmp_path / "agl.db"
    old = database_of_schema(path, 3)
    old.executemany(
        "INSERT INTO tasks (id, rollout_id, status, input, metadata, create_time, last_claim_time,"
        " num_claims) VALUES (?, ?, ?, '1', '{}', ?, ?, ?)",
        [(1, "rollout-failed", "failed", clock.now, clock.now + 10, 3), (2, "rollout-cancelled", "cancelled",
         clock.now + 20, None, 0)],
    )  # fmt: skip
    old.close()
    store = SQLiteStore(path, clock=clock, rollout_retention=60, forget_tasks=True)
    assert [store.get_rollout_shape(i)["end_time"] for i in ("rollout-failed", "rollout-cancelled")] == [
        clock.now + 10, clock.now + 20,
    ]  # fmt: skip
    clock.advance(75)
    assert store.prune_ended(100) == 1 and forgotten(store, "rollout-failed")
    assert store.get_task("rollout-cancelled") is not None
    clock.advance(10)
    assert store.prune_ended(100) == 1 and forgotten(store, "rollout-cancelled")
    store.close()


def test_once_every_task_is_forgotten_the_database_holds_no_row_of_them(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock, rollout_retention=60, forget_tasks=True)
    succeeded, failed, cancelled = running_with_a_span(store, "succeeded", "failed", "cancelled")
    store.update_rollout(succeeded, {"status": "succeeded"})
    store.update_rollout(failed, {"status": "failed"})
    store.update_rollout(cancelled, {"status": "cancelled"})
    reported(store, 1.0)
    clock.advance(61)
    assert (store.prune_rollouts(100), store.prune_ended(100)) == (2, 2)
    store.close()
    tables = ("tasks", "attempts", "spans", "span_sequences", "rollouts", "ended_without_result")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
        rows = {table: database.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}
    assert rows == dict.fromkeys(tables, 0)


def test_a_long_run_stops_growing_once_tasks_are_forgotten_as_fast_as_they_come(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Rounds of 500 tasks queued, claimed and reported, each round 30 s after the last
    with a retention of 60 s: the file grows round after round while tasks are kept, and
    stays as it is from the third round on when they are forgotten (freed pages are used
    again)."""
    sizes: dict[bool, list[int]] = {}
    for forget in (False, True):
        store = SQLiteStore(
            tmp_path / f"forget-{forget}.db", clock=clock, rollout_retention=60, forget_tasks=forget
        )
        sizes[forget] = []
        for _ in range(12):
            store.queue_tasks([TaskSpec(input={"question": "x" * 200}) for _ in range(500)])
            with store.transaction():
                claims = store.claim_many(500)
                store.record_reports(
                    [Report.of(Rollout(rollout_id=c.rollout_id, final_reward=1.0)) for c in claims]
                )
            clock.advance(30)
            while store.prune_rollouts(100) or store.prune_ended(100):
                pass
            sizes[forget].append(store.space().size)
        store.close()
    keeping, forgetting = sizes[False], sizes[True]
    assert all(later > earlier for earlier, later in itertools.pairwise(keeping[2:])), keeping
    assert forgetting[-1] <= 1.05 * forgetting[2], forgetting


def test_forgetting_finds_every_row_through_an_index(tmp_path: Path, clock: FakeClock) -> None:
    """Only the walks of results and of ended rollouts, oldest first, read their lists in
    order (a limit at a time); tasks, attempts and spans are found by their keys (the walk
    for tasks left behind, by a span of ids), never among every task of a status, by
    `EXPLAIN QUERY PLAN`."""
    store = SQLiteStore(tmp_path / "agl.db", clock=clock, rollout_retention=60, forget_tasks=True)
    succeeded, failed = running_with_a_span(store, "succeeded", "failed")
    store.update_rollout(succeeded, {"status": "succeeded"})
    store.update_rollout(failed, {"status": "failed"})
    clock.advance(61)
    ran: list[str] = []
    store._conn.set_trace_callback(ran.append)
    assert (store.prune_rollouts(100), store.prune_ended(100), store.forget_leftovers(0, 100)) == (1, 1, 0)
    store._conn.set_trace_callback(None)
    walks = {"rollouts", "ended_without_result", "json_each"}
    keys = {
        "tasks": (
            "(rowid=?)",
            "(rollout_id=?)",
            "(rowid>? AND rowid<?)",
            "id>? AND id<?)",
        ),  # or a span of ids
        "attempts": ("(task=?)",),
        "spans": ("(rollout_id=?)",),
        "span_sequences": ("(rollout_id=?)",),
    }
    statements = [sql for sql in ran if sql.startswith(("SELECT", "DELETE", "INSERT"))]
    assert len(statements) >= 10, ran
    for sql in statements:
        for step in [step for *_, step in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}")]:
            table = step.split()[1]
            assert not step.startswith("SCAN") or table in walks, (sql, step)
            assert table not in keys or any(key in step for key in keys[table]), (sql, step)
    store.close()


def test_the_place_of_a_forgotten_task_is_not_handed_out_again_after_a_restart(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock, rollout_retention=60, forget_tasks=True)
    reported(store, 0.1)
    reported(store, 0.2)  # the newest task: its place is the last handed out
    place = store.last_queue_place()
    clock.advance(61)
    assert store.prune_rollouts(100) == 2
    store.close()
    store = SQLiteStore(path, clock=clock, rollout_retention=60, forget_tasks=True)
    assert store.last_queue_place() == place
    reported(store, 0.3)
    assert store.last_queue_place() == place + 1
    store.close()


def test_the_count_of_forgotten_tasks_is_kept_for_the_store_s_life(tmp_path: Path, clock: FakeClock) -> None:
    """The counts per status go down as tasks are forgotten: how many went is counted
    beside them, in the same writes, and survives a restart (without the setting too)."""
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock, rollout_retention=60, forget_tasks=True)
    reported(store, 0.1)
    [failed] = running_with_a_span(store, "failed")
    store.update_rollout(failed, {"status": "failed"})
    assert store.counts().forgotten == 0
    clock.advance(61)
    reported(store, 0.2)
    assert (store.prune_rollouts(100), store.counts().forgotten) == (1, 1)
    assert (store.prune_ended(100), store.counts().forgotten) == (1, 2)
    store.close()
    store = SQLiteStore(path, clock=clock, rollout_retention=60)
    counts = store.counts()
    assert (counts.forgotten, counts.tasks[TaskStatus.COMPLETED]) == (2, 1)
    store.close()


def test_a_task_that_ended_twice_within_one_sweep_is_counted_once(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Cancelled, retried and cancelled again, it is listed twice among the ended rollouts
    that one sweep sees to (found by the model test)."""
    store = make_store(rollout_retention=60, forget_tasks=True)
    [rollout_id] = enqueue(store, "twice")
    store.cancel_tasks([rollout_id])
    clock.advance(1)  # listed by (end, id): a second end is a second listing
    store.retry_tasks([rollout_id])
    store.cancel_tasks([rollout_id])
    clock.advance(61)
    assert (store.prune_ended(100), store.counts().forgotten) == (2, 1)
    assert forgotten(store, rollout_id)


def test_tasks_left_behind_before_forgetting_was_on_go_once_it_is(tmp_path: Path, clock: FakeClock) -> None:
    """Retention without `forget_tasks` kept the tasks of what it deleted; a store opened
    with it then forgets them as it walks its ids, a span of them at a time."""
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock, rollout_retention=60)
    completed = reported(store, 0.1)
    failed, cancelled = running_with_a_span(store, "failed", "cancelled")
    store.update_rollout(failed, {"status": "failed"})
    store.update_rollout(cancelled, {"status": "cancelled"})
    clock.advance(61)
    young = reported(store, 0.2)
    [queued] = enqueue(store, "queued")
    assert (store.prune_rollouts(100), store.prune_ended(100), store.forget_leftovers(0, 100)) == (1, 2, 0)
    store.close()
    store = SQLiteStore(path, clock=clock, rollout_retention=60, forget_tasks=True)
    last = store.last_queue_place()
    assert [store.forget_leftovers(after, 2) for after in range(0, last, 2)] == [2, 1, 0]
    assert all(forgotten(store, rollout_id) for rollout_id in (completed, failed, cancelled))
    assert [store.get_task(rollout_id) is not None for rollout_id in (young, queued)] == [True, True]
    assert kept(store) == [young]
    store.close()


def test_a_restarted_daemon_that_now_forgets_forgets_what_retention_left_behind(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--rollout-retention", "0.2")
    [completed, cancelled] = daemon.queue("done", "dropped")
    assert daemon.claim() is not None
    daemon.report(completed, final_reward=1.0)
    assert daemon.api("POST", f"/v1/tasks/{cancelled}/cancel").status_code == 200
    wait_until(lambda: daemon.metric("agl_rollouts_pruned_total") == 1, "the result to be deleted", 30)
    assert daemon.status()["tasks"] == {
        "queued": 0,
        "claimed": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 1,
    }
    assert daemon.terminate() == 0
    daemon.args.append("--forget-tasks")
    daemon.start()
    wait_until(lambda: sum(daemon.status()["tasks"].values()) == 0, "both tasks to be forgotten", 30)


def test_forgetting_tasks_needs_a_retention_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="forget_tasks needs a rollout_retention"):
        MemoryStore(forget_tasks=True)
    with pytest.raises(ValueError, match="forget_tasks needs a rollout_retention"):
        AgentLightningServer(store=tmp_path / "run.db", forget_tasks=True)
    assert not (tmp_path / "run.db").exists()


def test_the_daemon_forgets_tasks_as_they_come_of_age(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--rollout-retention", "0.2", "--forget-tasks")
    [completed, cancelled] = daemon.queue("done", "dropped")
    assert daemon.claim() is not None
    daemon.report(completed, final_reward=1.0)
    cancel = daemon.api("POST", f"/v1/tasks/{cancelled}/cancel")
    assert cancel.status_code == 200, cancel.text
    wait_until(lambda: sum(daemon.status()["tasks"].values()) == 0, "both tasks to be forgotten", 30)
    hint = "(this daemon forgets a task once it ended longer than --rollout-retention ago)."
    for rollout_id in (completed, cancelled):
        assert daemon.api("GET", f"/v1/tasks/{rollout_id}").status_code == 404
        assert_one_line_error(
            agl("tasks", "show", rollout_id, daemon=daemon), f"No task with id '{rollout_id}' {hint}"
        )
    assert_one_line_error(
        agl("rollouts", "show", completed, daemon=daemon), f"No rollout with id '{completed}' {hint}"
    )
    assert_one_line_error(
        agl("tasks", "retry", cancelled, daemon=daemon), f"No task with id '{cancelled}' {hint}"
    )
    status = daemon.status()
    assert (status["forget_tasks"], status["forgotten"]) == (True, 2)
    assert (status["rollouts"], status["last_seq"]) == (0, 1)
    assert daemon.metric("agl_tasks_forgotten_total") == 2
    shown = agl("status", daemon=daemon).stdout
    assert "completed 0  failed 0  cancelled 0  (forgotten 2)" in shown
    assert "rollouts kept 0.2 s, with their tasks" in shown
