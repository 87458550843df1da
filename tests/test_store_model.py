"""Random runs of the store against a small model of its rules (hypothesis stateful testing).

Choices among ids go by their place (insertion order), never by the ids themselves:
they are random, and a run must draw the same way when hypothesis replays it.

Each run queues, stages and commits batches, claims through both doors, lets time pass
beyond the claim timeout, reports (late, twice, for ids never issued), ends attempts
through the store API, cancels (several at once, and the whole queue a write at a time),
retries (several at once, and every failed task a write at a time), pauses and resumes
the queue, consumes, deletes results and the spans of ended rollouts past the retention
setting (forgetting their tasks too, when the store is opened so), reopens the store, and
backs it up and goes back to a backup, on every store; after each step the store must
agree with the model: task states, attempts, the sequence of results, counts. The clock
is fake: nothing sleeps.
`HYPOTHESIS_PROFILE=long` runs many more.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from copy import deepcopy as copy_of
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agl_cli.models import Rollout, TaskStatus
from agl_cli.store import (
    InvalidTransitionError,
    MemoryStore,
    ReportOutcome,
    SQLiteStore,
    Store,
    TaskRecord,
    TaskSpec,
    UnknownAttemptError,
    UnknownTaskError,
    backups,
)

TIMEOUT = 10.0
MAX_CLAIMS = 2
RETENTION = 20.0
settings.register_profile("suite", max_examples=150, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
settings.register_profile("long", max_examples=2_000, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@dataclass
class Task:
    status: TaskStatus = TaskStatus.QUEUED
    claims: int = 0
    deadline: float | None = None
    ended: float | None = None  # when it last failed or was cancelled
    forgotten: bool = False  # deleted by retention (`forget_tasks`): kept here for its place


@dataclass
class Model:
    """What the store should hold, by the rules of docs/api.md and docs/store-api.md."""

    tasks: dict[str, Task] = field(default_factory=dict)
    queue: list[str] = field(default_factory=list)  # claim order
    results: list[str] = field(default_factory=list)  # arrival order, those still kept
    arrived: list[float] = field(default_factory=list)  # when each of `results` did
    given: int = 0  # sequence numbers given out
    consumed: set[str] = field(default_factory=set)
    duplicates: int = 0
    batches: dict[str, list[str]] = field(default_factory=dict)  # open batches: their staged ids
    # while the queue is being cancelled: the place it began at, and the tasks still to
    # cancel (queued then, and not handed out since)
    cancelling: tuple[int, set[str]] | None = None
    # while every failed task is being retried: where the store's last write stopped, as
    # the store and as this model count (a place in `tasks`)
    retrying: tuple[int, int] | None = None
    paused: bool = False
    # rollouts that failed or were cancelled, as (when, rollout id): what `prune_ended` walks
    ended: set[tuple[float, str]] = field(default_factory=set)

    def live(self, rollout_id: str) -> Task | None:
        task = self.tasks.get(rollout_id)
        return None if task is None or task.forgotten else task

    def expire(self, now: float) -> None:
        """Claims whose deadline has passed go to the back of the queue (earliest first), or
        fail after the last allowed claim."""
        expired = sorted(
            (t.deadline, rid) for rid, t in self.tasks.items() if t.deadline is not None and t.deadline <= now
        )
        for _, rollout_id in expired:
            task = self.tasks[rollout_id]
            task.deadline = None
            if task.claims >= MAX_CLAIMS:
                self.end(rollout_id, TaskStatus.FAILED, now)
            else:
                task.status = TaskStatus.QUEUED
                self.queue.append(rollout_id)

    def claim(self, now: float) -> str | None:
        self.expire(now)
        if self.paused or not self.queue:
            return None
        rollout_id = self.queue.pop(0)
        if self.cancelling is not None:
            self.cancelling[1].discard(rollout_id)  # queued again later, after the place it began at
        task = self.tasks[rollout_id]
        task.status, task.claims, task.deadline = TaskStatus.CLAIMED, task.claims + 1, now + TIMEOUT
        return rollout_id

    def retry(self, rollout_id: str) -> None:
        """Back to the end of the queue, with the claims it had."""
        self.tasks[rollout_id].status = TaskStatus.QUEUED
        self.queue.append(rollout_id)
        if self.cancelling is not None:
            self.cancelling[1].discard(rollout_id)  # queued again later, after the place it began at

    def result(self, rollout_id: str, now: float) -> None:
        self.results.append(rollout_id)
        self.arrived.append(now)
        self.given += 1

    def prune(self, now: float, limit: int, forget: bool) -> int:
        """Results older than the retention go, oldest first, up to `limit` of them; with
        `forget`, their completed tasks too."""
        old = sum(1 for arrived in self.arrived[:limit] if arrived < now - RETENTION)
        for rollout_id in self.results[:old]:
            self.consumed.discard(rollout_id)  # one reported again is a new result
            task = self.live(rollout_id)
            if forget and task is not None and task.status is TaskStatus.COMPLETED:
                task.forgotten = True
        del self.results[:old], self.arrived[:old]
        return old

    def prune_ended(self, now: float, forget: bool) -> int:
        """Rollouts that ended without a result longer ago than the retention are seen to;
        with `forget`, the tasks among them that have not been retried since go."""
        cutoff = now - RETENTION
        seen = [listed for listed in self.ended if listed[0] < cutoff]
        for _, rollout_id in seen:
            task = self.live(rollout_id)
            if forget and task and task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                task.forgotten = task.ended is not None and task.ended < cutoff  # not if it ended again since
        self.ended -= set(seen)
        return len(seen)

    def forget_leftovers(self, now: float) -> int:
        """The tasks retention left behind while the store did not forget: completed ones
        whose result is gone, failed or cancelled ones that ended longer ago than it."""
        cutoff = now - RETENTION
        left = [
            task
            for rollout_id, task in self.tasks.items()
            if not task.forgotten
            and (
                (task.status is TaskStatus.COMPLETED and rollout_id not in self.results)
                or (
                    task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
                    and task.ended is not None
                    and task.ended < cutoff
                )
            )
        ]
        for task in left:
            task.forgotten = True
        return len(left)

    def end(self, rollout_id: str, status: TaskStatus, now: float) -> None:
        task = self.tasks[rollout_id]
        task.status, task.deadline = status, None
        if status is not TaskStatus.COMPLETED:
            task.ended = now
            self.ended.add((now, rollout_id))
        if rollout_id in self.queue:
            self.queue.remove(rollout_id)


class StoreMachine(RuleBasedStateMachine):
    kind = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.directory = tempfile.TemporaryDirectory()
        self.database = Path(self.directory.name) / "agl.db"
        self.forget = False  # whether the store is opened with `forget_tasks`
        self.store = self.open()
        self.model = Model()
        self.saved: tuple[Path, Model] | None = None  # the last backup, and the model as of it
        self.restores = 0

    def open(self) -> Store:
        options = {
            "task_timeout": TIMEOUT, "max_claims": MAX_CLAIMS, "rollout_retention": RETENTION,
            "forget_tasks": self.forget, "clock": self.clock,
        }  # fmt: skip
        if self.kind == "memory":
            return MemoryStore(**options)
        return SQLiteStore(self.database, **options)

    def teardown(self) -> None:
        self.store.close()
        self.directory.cleanup()

    @initialize(forget=st.booleans())
    def forget_tasks_or_not(self, forget: bool) -> None:
        """Half the runs forget what retention deletes (`agl serve --forget-tasks`)."""
        if forget:
            self.store.close()
            self.forget = True
            self.store = self.open()

    # queueing --------------------------------------------------------------------------------

    @rule(count=st.integers(1, 3))
    def queue(self, count: int) -> None:
        ids = self.store.queue_tasks([TaskSpec(input=i) for i in range(count)])
        for rollout_id in ids:
            self.model.tasks[rollout_id] = Task()
        self.model.queue += ids

    @rule()
    def open_batch(self) -> None:
        self.model.batches[self.store.create_batch()] = []

    @precondition(lambda self: self.model.batches)
    @rule(data=st.data(), count=st.integers(1, 3))
    def stage(self, data: st.DataObject, count: int) -> None:
        batch_id = data.draw(st.sampled_from(list(self.model.batches)))
        self.model.batches[batch_id] += self.store.stage_tasks(
            batch_id, [TaskSpec(input=i) for i in range(count)]
        )

    @precondition(lambda self: self.model.batches)
    @rule(data=st.data(), commit=st.booleans())
    def end_batch(self, data: st.DataObject, commit: bool) -> None:
        batch_id = data.draw(st.sampled_from(list(self.model.batches)))
        staged = self.model.batches.pop(batch_id)
        if not commit:
            assert self.store.discard_batch(batch_id) == len(staged)
            return
        assert self.store.commit_batch(batch_id) == len(staged)
        for rollout_id in staged:
            self.model.tasks[rollout_id] = Task()
        self.model.queue += staged

    @rule()
    def move_a_committed_batch_along(self) -> None:
        self.store.drain_step()  # what the server's writer does when it is idle

    # claims, through either door, and time --------------------------------------------------

    @rule(door=st.sampled_from(["legacy", "store api"]))
    def claim(self, door: str) -> None:
        self.clock.advance(0.001)  # distinct deadlines: expiry order is then the model's
        expected = self.model.claim(self.clock.now)
        if door == "legacy":
            claim = self.store.claim()
            got = None if claim is None else claim.rollout_id
        else:
            handed = self.store.dequeue_rollouts(1, "w-1")
            got = str(handed[0]["rollout_id"]) if handed else None
        assert got == expected
        if got is not None:
            record = self.store.get_task(got)
            assert record is not None and record.task.num_claims == self.model.tasks[got].claims

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        self.store.set_paused(paused)
        self.model.paused = paused

    @rule(seconds=st.sampled_from([1.0, 4.0, TIMEOUT, TIMEOUT + 3, RETENTION + 1]), limit=st.integers(1, 3))
    def time_passes(self, seconds: float, limit: int) -> None:
        """Time passes, and the daemon's sweep deletes what came of age: up to `limit`
        results, then the spans of every rollout that ended without one (with their tasks,
        if so opened). Those go all at once: several end at the same moment (a cancel of
        several), and which of them a smaller limit takes first goes by their random ids."""
        self.clock.advance(seconds)
        assert self.store.prune_rollouts(limit) == self.model.prune(self.clock.now, limit, self.forget)
        assert self.store.prune_ended(100) == self.model.prune_ended(self.clock.now, self.forget)

    @rule()
    def expire(self) -> None:
        self.store.expire_claims()
        self.model.expire(self.clock.now)

    # results ---------------------------------------------------------------------------------

    @rule(data=st.data(), stranger=st.booleans())
    def report(self, data: st.DataObject, stranger: bool) -> None:
        known = list(self.model.tasks)
        if stranger or not known:
            rollout_id = data.draw(st.sampled_from(["stranger-1", "stranger-2"]))
        else:
            rollout_id = data.draw(st.sampled_from(known))
        outcome = self.store.record_rollout(Rollout(rollout_id=rollout_id, final_reward=1.0))
        task = self.model.live(rollout_id)
        if (task is not None and task.status is TaskStatus.COMPLETED) or (
            task is None and rollout_id in self.model.results
        ):
            expected = ReportOutcome.DUPLICATE
            self.model.duplicates += 1
        else:
            expected = ReportOutcome.UNSOLICITED if task is None else ReportOutcome.STORED
            self.model.result(rollout_id, self.clock.now)
            if task is not None:
                self.model.end(rollout_id, TaskStatus.COMPLETED, self.clock.now)
        assert outcome is expected

    @precondition(lambda self: any(t.status is TaskStatus.CLAIMED for t in self.model.tasks.values()))
    @rule(data=st.data(), status=st.sampled_from(["succeeded", "failed"]))
    def end_attempt(self, data: st.DataObject, status: str) -> None:
        """The store API's end of an attempt; a legacy task's config retries only time-outs."""
        claimed = [rid for rid, t in self.model.tasks.items() if t.status is TaskStatus.CLAIMED]
        rollout_id = data.draw(st.sampled_from(claimed))
        self.store.update_attempt(rollout_id, "latest", {"status": status})
        if status == "succeeded":
            self.model.result(rollout_id, self.clock.now)
            self.model.end(rollout_id, TaskStatus.COMPLETED, self.clock.now)
        else:
            self.model.end(rollout_id, TaskStatus.FAILED, self.clock.now)

    @precondition(lambda self: any(t.claims == 0 and not t.forgotten for t in self.model.tasks.values()))
    @rule(data=st.data())
    def end_an_attempt_never_made(self, data: st.DataObject) -> None:
        never = [r for r, t in self.model.tasks.items() if t.claims == 0 and not t.forgotten]
        rollout_id = data.draw(st.sampled_from(never))
        with pytest.raises(UnknownAttemptError):
            self.store.update_attempt(rollout_id, "latest", {"status": "succeeded"})

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data(), stranger=st.booleans(), any_state=st.booleans())
    def cancel(self, data: st.DataObject, stranger: bool, any_state: bool) -> None:
        self._change_several(
            data, stranger, any_state, (TaskStatus.QUEUED, TaskStatus.CLAIMED),
            lambda ids: self.store.cancel_tasks(ids),
            lambda rollout_id: self.model.end(rollout_id, TaskStatus.CANCELLED, self.clock.now),
        )  # fmt: skip

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data(), stranger=st.booleans(), any_state=st.booleans())
    def retry(self, data: st.DataObject, stranger: bool, any_state: bool) -> None:
        self._change_several(
            data, stranger, any_state, (TaskStatus.FAILED, TaskStatus.CANCELLED),
            lambda ids: self.store.retry_tasks(ids), self.model.retry,
        )  # fmt: skip

    def _change_several(
        self,
        data: st.DataObject,
        stranger: bool,
        any_state: bool,
        allowed: tuple[TaskStatus, ...],
        change: Callable[[list[str]], list[TaskRecord]],
        follow: Callable[[str], None],
    ) -> None:
        """Change one to three tasks (some perhaps twice, or a stranger) at once: all of
        them, or none if one is unknown or not in an `allowed` state. Half the time they
        are drawn among the tasks in an allowed state, if there are any."""
        fit = [rid for rid, task in self.model.tasks.items() if task.status in allowed and not task.forgotten]
        known = st.sampled_from(fit if fit and not any_state else list(self.model.tasks))
        ids = data.draw(st.lists(known, min_size=1, max_size=3))
        if stranger:
            ids.insert(data.draw(st.integers(0, len(ids))), "stranger-3")
        first_bad = next((rid for rid in ids if rid not in fit), None)
        if first_bad is None:
            records = change(ids)
            assert [r.rollout_id for r in records] == list(dict.fromkeys(ids))
            for rollout_id in dict.fromkeys(ids):
                follow(rollout_id)
            return
        error = InvalidTransitionError if self.model.live(first_bad) else UnknownTaskError
        with pytest.raises(error, match=first_bad):
            change(ids)

    @rule(limit=st.sampled_from([1, 2, 100]))
    def retry_the_failed_a_write_at_a_time(self, limit: int) -> None:
        """A write of `POST /v1/tasks/retry-failed`, which other steps may come between."""
        after, place = self.model.retrying or (0, -1)
        ids = list(self.model.tasks)
        expected = [
            i
            for i, rid in enumerate(ids)
            if i > place
            and self.model.tasks[rid].status is TaskStatus.FAILED
            and not self.model.tasks[rid].forgotten
        ][:limit]
        count, last = self.store.retry_failed(after, limit)
        assert count == len(expected)
        for i in expected:
            self.model.retry(ids[i])
        self.model.retrying = (last, expected[-1]) if expected else None

    @rule(limit=st.sampled_from([1, 2, 100]))
    def cancel_the_queue_a_write_at_a_time(self, limit: int) -> None:
        """A write of `POST /v1/queue/cancel`, which other steps may come between."""
        if self.model.cancelling is None:
            self.model.cancelling = (self.store.last_queue_place(), set(self.model.queue))
        last_place, to_cancel = self.model.cancelling
        expected = [rollout_id for rollout_id in self.model.queue if rollout_id in to_cancel][:limit]
        assert self.store.cancel_queued(last_place, limit) == len(expected)
        for rollout_id in expected:
            self.model.end(rollout_id, TaskStatus.CANCELLED, self.clock.now)
        if not expected:
            self.model.cancelling = None

    @precondition(lambda self: self.model.results)
    @rule(data=st.data(), everything=st.booleans())
    def consume(self, data: st.DataObject, everything: bool) -> None:
        if everything:
            taken = [r.rollout_id for r in self.store.consume_all()]
            assert taken == [rid for rid in self.model.results if rid not in self.model.consumed]
            self.model.consumed |= set(taken)
            return
        rollout_id = data.draw(st.sampled_from(self.model.results))
        got = self.store.consume_rollout(rollout_id)
        assert (got is not None) == (rollout_id not in self.model.consumed)
        self.model.consumed.add(rollout_id)

    @rule(forget=st.booleans())
    def reopen(self, forget: bool) -> None:
        """Close and open the store again (the daemon restarting, perhaps told otherwise
        whether to forget tasks); a batch not committed does not outlive it. The memory
        store has nothing to reopen."""
        if self.kind == "memory":
            return
        self.store.close()
        self.forget = forget
        self.store = self.open()
        self.walk_leftovers()
        self.forget_what_a_restart_forgets()

    @precondition(lambda self: self.kind == "sqlite" and not self.forget)
    @rule()
    def start_forgetting(self) -> None:
        """A restart with `--forget-tasks` after running without: what retention left
        behind meanwhile goes too."""
        self.reopen(forget=True)

    def walk_leftovers(self) -> None:
        """What a daemon that forgets tasks does once a start: it walks the ids given out,
        two at a time here, forgetting what retention left behind before."""
        if self.forget:
            last = self.store.last_queue_place()
            walked = sum(self.store.forget_leftovers(after, 2) for after in range(0, last, 2))
            assert walked == self.model.forget_leftovers(self.clock.now)

    def forget_what_a_restart_forgets(self) -> None:
        self.model.batches.clear()
        self.model.cancelling = None  # the request that was cancelling the queue is gone
        self.model.retrying = None  # as is one retrying the failed tasks

    @rule()
    def back_up(self) -> None:
        """A backup (`agl backup`): the store as of now, to go back to later."""
        saved = Path(self.directory.name) / "backup.db"
        with self.store.backup() as copy:
            saved.write_bytes(copy.read())
        self.saved = (saved, copy_of(self.model))

    @precondition(lambda self: self.saved is not None)
    @rule()
    def restore(self) -> None:
        """Go back to the last backup (`agl restore`, then a restart): the store is as it
        was then, whatever came since, but for the numbers of results, which go on after
        the replaced database's. A memory store's backup carries on as a file."""
        assert self.saved is not None
        saved, model = self.saved
        self.store.close()
        replaced = self.database.with_name(f"replaced-{self.restores}.db")
        given = self.model.given if self.database.exists() else 0  # a memory store has no file
        self.restores += 1
        backups.restore(saved, self.database, replaced)
        self.kind = "sqlite"
        self.store = self.open()
        self.model = copy_of(model)
        self.model.given = max(self.model.given, given)
        self.forget_what_a_restart_forgets()
        self.walk_leftovers()

    # what must hold after every step --------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        counts = self.store.counts()
        expected = dict.fromkeys(TaskStatus, 0)
        for task in self.model.tasks.values():
            expected[task.status] += not task.forgotten
        assert counts.tasks == expected
        assert counts.rollouts == len(self.model.results)
        assert counts.duplicates == self.model.duplicates
        assert counts.forgotten == sum(task.forgotten for task in self.model.tasks.values())

    @invariant()
    def results_come_in_order_once_each(self) -> None:
        stored = self.store.rollouts_after(0, limit=10_000)
        assert [r.rollout.rollout_id for r in stored] == self.model.results
        assert [r.seq for r in stored] == sorted({r.seq for r in stored})
        assert self.store.last_seq() == self.model.given  # deleted results' numbers included

    @invariant()
    def every_claim_is_an_attempt(self) -> None:
        for rollout_id, task in self.model.tasks.items():
            latest = self.store.latest_attempt(rollout_id)
            if task.forgotten:
                assert latest is None and self.store.get_task(rollout_id) is None
                continue
            assert (latest["sequence_id"] if latest else 0) == task.claims  # type: ignore[index]


class MemoryStoreMachine(StoreMachine):
    kind = "memory"


settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
TestTheSQLiteStoreFollowsTheModel = StoreMachine.TestCase
TestTheMemoryStoreFollowsTheModel = MemoryStoreMachine.TestCase
