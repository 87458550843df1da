"""`--rollout-retention`: results older than the setting are deleted, oldest first, with the
spans of their rollouts, and so are the spans of rollouts that ended without a result that
long ago; their tasks stay, so nothing comes back as a new result, and the reward chart and
the sequence numbers keep what was deleted. Without the setting nothing is ever deleted."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_store_api as store_api
from cli_runner import agl, assert_one_line_error
from conftest import FakeClock, StoreFactory
from daemon import Daemon, wait_until
from test_store_rollouts import enqueue, paged, plain, span

from agl_cli.embedded import AgentLightningServer
from agl_cli.models import Rollout, TaskStatus
from agl_cli.store import ReportOutcome, SQLiteStore, Store, TaskSpec
from agl_cli.store_models import AttemptQuery, SpanQuery


def reported(store: Store, reward: float, **fields: Any) -> str:
    """A task queued, claimed and reported with `reward` (and any other `fields`)."""
    [rollout_id] = store.queue_tasks([TaskSpec(input=reward, mode="train")])
    assert store.claim() is not None
    rollout = Rollout(rollout_id=rollout_id, final_reward=reward, **fields)
    assert store.record_rollout(rollout) is ReportOutcome.STORED
    return rollout_id


def kept(store: Store) -> list[str]:
    return [stored.rollout.rollout_id for stored in store.rollouts_after(0, 1000)]


def span_ids(store: Store, rollout_id: str) -> list[str]:
    return [item["span_id"] for item in paged(store.query_spans(SpanQuery(rollout_id=rollout_id)))["items"]]


def test_without_a_setting_no_result_is_ever_deleted(store: Store, clock: FakeClock) -> None:
    rollout_id = reported(store, 1.0)
    clock.advance(10 * 365 * 86400)
    assert store.prune_rollouts(100) == 0
    assert kept(store) == [rollout_id]


def test_results_older_than_the_setting_go_oldest_first(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(rollout_retention=60)
    first = reported(store, 0.1)
    clock.advance(10)
    second = reported(store, 0.2)
    clock.advance(10)
    third = reported(store, 0.3)
    last_seq = store.last_seq()
    clock.advance(45)  # the first two are 65 and 55 s old: only the first is past 60
    assert store.prune_rollouts(100) == 1
    assert kept(store) == [second, third]
    clock.advance(20)  # now both are
    assert store.prune_rollouts(1) == 1  # at most as many as asked, oldest first
    assert kept(store) == [second, third][1:]
    assert store.prune_rollouts(100) == 1
    assert (kept(store), store.prune_rollouts(100)) == ([], 0)
    assert store.get_rollout(first) is None and store.consume_rollout(first) is None
    assert store.last_seq() == last_seq  # what was given out is never given out again
    fourth = reported(store, 0.4)
    [stored] = store.rollouts_after(0)
    assert (stored.rollout.rollout_id, stored.seq) == (fourth, last_seq + 1)
    counts = store.counts()
    assert (counts.rollouts, counts.tasks[TaskStatus.COMPLETED]) == (1, 4)


def test_a_deleted_results_task_stays_and_a_late_report_is_still_a_duplicate(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=1)
    rollout_id = reported(store, 1.0)
    clock.advance(2)
    assert store.prune_rollouts(100) == 1
    record = store.get_task(rollout_id)
    assert record is not None and record.status is TaskStatus.COMPLETED
    again = store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=5.0))
    assert again is ReportOutcome.DUPLICATE
    assert kept(store) == [] and store.counts().duplicates == 1


def running_with_a_span(store: Store, *inputs: str) -> list[str]:
    """Store-API rollouts handed out, each with a span `s-<input>`."""
    rollout_ids = enqueue(store, *inputs)
    for shape, name in zip(store.dequeue_rollouts(len(inputs), "worker-1"), inputs, strict=True):
        attempt_id = str(plain(shape)["attempt"]["attempt_id"])
        store.add_spans([span(str(shape["rollout_id"]), attempt_id, f"s-{name}")])
    return rollout_ids


def test_the_spans_of_a_deleted_result_go_with_it(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(rollout_retention=60)
    old, young = running_with_a_span(store, "old", "young")
    store.update_rollout(old, {"status": "succeeded"})
    clock.advance(61)
    store.update_rollout(young, {"status": "succeeded"})
    assert store.prune_rollouts(100) == 1
    assert kept(store) == [young]
    assert (span_ids(store, old), span_ids(store, young)) == ([], ["s-young"])


def test_the_spans_of_a_rollout_that_ended_without_a_result_go_once_it_ended_that_long_ago(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=60)
    failed, cancelled, young = running_with_a_span(store, "failed", "cancelled", "young")
    store.update_rollout(failed, {"status": "failed"})
    store.update_rollout(cancelled, {"status": "cancelled"})
    clock.advance(30)
    store.update_rollout(young, {"status": "failed"})
    clock.advance(31)  # 61 s since the first two ended, 31 since the young one did
    assert store.prune_ended(1) == 1  # at most as many as asked, earliest end first
    assert store.prune_ended(100) == 1
    assert [span_ids(store, rollout_id) for rollout_id in (failed, cancelled, young)] == [[], [], ["s-young"]]
    assert [plain(store.get_rollout_shape(rollout_id))["status"] for rollout_id in (failed, cancelled)] == [
        "failed", "cancelled"
    ]  # fmt: skip
    assert (
        paged(store.query_attempts(failed, AttemptQuery()))["total"] == 1
    )  # the rollout stays, attempts and all
    clock.advance(30)
    assert (store.prune_ended(100), span_ids(store, young), store.prune_ended(100)) == (1, [], 0)
    assert store.prune_rollouts(100) == 0  # none of them had a result


def test_a_rollout_revived_after_it_failed_keeps_its_spans_until_it_ends_again_that_long_ago(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(rollout_retention=60)
    [rollout_id] = running_with_a_span(store, "revived")
    store.update_rollout(rollout_id, {"status": "failed"})
    store.update_attempt(rollout_id, "latest", {"status": "running"})  # revived, as 0.3.0 allows
    clock.advance(61)
    assert store.prune_ended(100) == 1  # seen to, and kept: it has not ended
    assert span_ids(store, rollout_id) == ["s-revived"]
    store.update_rollout(rollout_id, {"status": "failed"})
    clock.advance(59)
    assert (store.prune_ended(100), span_ids(store, rollout_id)) == (0, ["s-revived"])
    clock.advance(2)
    assert (store.prune_ended(100), span_ids(store, rollout_id)) == (1, [])


def test_a_rollout_that_failed_before_the_upgrade_to_schema_8_loses_its_spans_in_time_too(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock)
    [rollout_id] = running_with_a_span(store, "failed")
    store.update_rollout(rollout_id, {"status": "failed"})
    store.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as older:  # as schema 7 had it
        older.executescript(
            "DROP TRIGGER ended_without_result_kept; DROP TABLE ended_without_result; DROP TABLE staging;"
            " CREATE TABLE staging (batch INTEGER NOT NULL, pos INTEGER NOT NULL, rollout_id TEXT NOT NULL,"
            " input TEXT NOT NULL, mode TEXT, resources_id TEXT, metadata TEXT NOT NULL,"
            " PRIMARY KEY (batch, pos)) WITHOUT ROWID; PRAGMA user_version = 7;"
        )
    store = SQLiteStore(path, clock=clock, rollout_retention=60)
    clock.advance(61)
    assert (store.prune_ended(100), span_ids(store, rollout_id)) == (1, [])
    store.close()


def test_without_a_setting_no_span_is_ever_deleted(store: Store, clock: FakeClock) -> None:
    [rollout_id] = running_with_a_span(store, "failed")
    store.update_rollout(rollout_id, {"status": "failed"})
    clock.advance(10 * 365 * 86400)
    assert (store.prune_ended(100), span_ids(store, rollout_id)) == (0, ["s-failed"])


def test_the_reward_chart_keeps_the_deleted_results(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(rollout_retention=60)
    reported(store, 0.2)
    clock.advance(100)
    reported(store, 0.6)
    before = store.reward_series(240)
    assert store.prune_rollouts(100) == 1
    after = store.reward_series(240)
    assert after == before
    assert [(point.rollouts, point.mean) for point in after.points] == [(1, 0.2), (1, 0.6)]


def test_the_daemon_deletes_results_as_they_come_of_age(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--rollout-retention", "0.2")
    [rollout_id] = daemon.queue("x")
    assert daemon.claim() is not None
    daemon.report(rollout_id, final_reward=1.0)
    wait_until(lambda: daemon.metric("agl_rollouts_pruned_total") == 1, "the result to be deleted", 30)
    assert daemon.rollouts() == []
    shown = agl("rollouts", "show", rollout_id, daemon=daemon)
    assert_one_line_error(shown, f"Rollout '{rollout_id}' has no result any more: it was deleted once older")
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "completed"
    daemon.report(rollout_id, final_reward=2.0)  # a late repeat: answered, not a new result
    status = daemon.status()
    assert (status["rollouts"], status["duplicates"], status["last_seq"]) == (0, 1, 1)
    assert status["rollout_retention"] == 0.2
    shown = agl("status", daemon=daemon)
    assert "rollouts kept 0.2 s" in shown.stdout


def test_the_daemon_deletes_the_spans_of_a_failed_rollout_as_it_comes_of_age(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--rollout-retention", "0.2")
    store_api.enqueue(daemon, "x")
    handed = store_api.dequeue(daemon)
    rollout_id, attempt_id = handed["rollout_id"], handed["attempt"]["attempt_id"]
    added = daemon.post(
        f"{store_api.AGL}/spans", json=span(rollout_id, attempt_id, "s-x").model_dump(mode="json")
    )
    assert added.status_code == 201, added.text
    assert daemon.post(f"{store_api.AGL}/rollouts/{rollout_id}", json={"status": "failed"}).status_code == 200
    wait_until(lambda: store_api.spans_of(daemon, rollout_id) == [], "the spans to be deleted", 30)
    assert daemon.get(f"{store_api.AGL}/rollouts/{rollout_id}").json()["status"] == "failed"


def test_a_store_full_of_old_results_takes_reports_again_once_they_are_deleted(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--max-db-size", "400000", "--rollout-retention", "3")
    ids = daemon.queue(*range(100))
    for rollout_id in ids:  # far more than fits
        assert daemon.claim() is not None
        refused = daemon.post("/rollout", json={"rollout_id": rollout_id, "metadata": {"big": "x" * 20_000}})
        if refused.status_code != 200:
            break
    assert refused.status_code == 507
    stored = daemon.status()["last_seq"]
    wait_until(
        lambda: daemon.metric("agl_rollouts_pruned_total") == stored, "the old results to be deleted", 60
    )
    daemon.report(rollout_id, metadata={"big": "x" * 20_000})  # the one refused: room for it now
    assert [rollout["rollout_id"] for rollout in daemon.rollouts()] == [rollout_id]


@pytest.mark.parametrize("durable", [False, True], ids=["in memory", "on a file"])
async def test_the_embedded_server_takes_the_setting_as_a_keyword(durable: bool, tmp_path: Path) -> None:
    server = AgentLightningServer(
        port=0, store=tmp_path / "run.db" if durable else None, rollout_retention=0.2
    )
    await server.start()
    try:
        rollout_id = await server.queue_task("x")
        async with httpx.AsyncClient(base_url=server.endpoint) as http:
            assert (await http.get("/task")).json()["is_available"]
            report = {"rollout_id": rollout_id, "final_reward": 1.0}
            assert (await http.post("/rollout", json=report)).status_code == 200
        deadline = time.monotonic() + 30
        while server.broker.stats.pruned == 0:  # the sweeper has no signal to wait on
            assert time.monotonic() < deadline, "timed out waiting for the result to be deleted"
            await asyncio.sleep(0.05)
        assert await server.get_completed_rollout(rollout_id) is None
        assert server.broker.rollout_retention == 0.2
    finally:
        await server.stop()
