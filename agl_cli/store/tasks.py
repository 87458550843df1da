"""The queue of tasks on SQLite, and the life cycle of every claim as an attempt (the rules
are in `lifecycle.py`; this records them): queueing, claims, time-outs, cancels and
retries, and the counts. The queue's places and its batches are `batches.py`'s layer,
below this one; legacy reports (`results.py`) and retention (`retention.py`) are above.

Every statement on the request path is an index probe: the queue is read through a
partial index of queued tasks, and expired claims through a partial index of claim
deadlines, so the cost of a claim does not grow with the work in flight. Those queries
name their index (`INDEXED BY`): without statistics SQLite's planner prefers the status
index and sorts every queued task on each claim.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from agl_cli.models import Task, TaskStatus
from agl_cli.store.base import NewTask
from agl_cli.store.batches import FORGOTTEN, task_columns
from agl_cli.store.clock import SteadyClock
from agl_cli.store.errors import UnknownTaskError
from agl_cli.store.ids import new_attempt_id, new_rollout_ids
from agl_cli.store.lifecycle import (
    ATTEMPT_ENDED,
    FINISHED,
    ROLLOUT_WOKEN_BY_HEARTBEAT,
    TASK_STATUS,
    WOKEN_BY_HEARTBEAT,
    attempt_deadline,
    check_cancellable,
    check_retryable,
    legacy_config,
    rollout_status_after,
    verdict,
    worker_status_after,
)
from agl_cli.store.records import Claim, StoreCounts, TaskRecord
from agl_cli.store.resources import Resources
from agl_cli.store.rows import (
    ATTEMPT_COLUMNS,
    REWARD_PATH,
    STAGED_COUNT,
    STAGED_TASKS,
    TASK_COLUMNS,
    TASK_ID,
    TASK_INPUT,
    TASK_METADATA,
    AttemptRow,
    TaskRow,
    legacy_metadata,
    record_from_row,
    wire_task,
)
from agl_cli.store_models import (
    RolloutConfig,
    RolloutStatus,
)

EXPIRE_BATCH = 500
INSERT_ROWS = 500  # rows of one multi-row INSERT: 7 values each, well within SQLite's 32,766
CLOCK_APART = "clock_apart_ms"  # a row of `counters`: how far the clock was behind the wall clock


class TaskStore(Resources):
    """The queue and its claims, and the life cycle of each attempt."""

    def __init__(self, path: str | Path, **options: Any) -> None:
        # What the writer keeps in memory beside the database; `_relearn` after a rollback.
        self._earliest_deadline = 0.0  # no claim expires before this; 0: look in the database
        self._paused = False  # the queue hands out nothing (`set_paused`)
        super().__init__(path, **options)
        if isinstance(self.clock, SteadyClock):  # before anything is stamped
            kept = self._conn.execute("SELECT value FROM counters WHERE name = ?", (CLOCK_APART,)).fetchone()
            self.clock.resume(kept[0] / 1000 if kept else 0.0)
        self._relearn()
        self._opened = self.clock()
        self._legacy_config = legacy_config(self.task_timeout, self.max_claims)
        self._legacy_config_json = self._legacy_config.model_dump_json()

    def _relearn(self) -> None:
        """Forget what undone writes taught the writer: the batches (`Batches._relearn`)
        and whether the queue is paused are read again, and the earliest claim deadline
        is looked for at the next claim."""
        super()._relearn()
        self._earliest_deadline = 0.0
        paused = self._conn.execute("SELECT value FROM counters WHERE name = 'paused'").fetchone()
        self._paused = bool(paused and paused[0])

    # tasks -------------------------------------------------------------------------------

    def queue_tasks(self, specs: Sequence[NewTask]) -> list[str]:
        now = self.clock()
        ids = new_rollout_ids(len(specs))
        with self._write() as conn:
            first = self._queue_pos + 1
            conn.executemany(
                "INSERT INTO tasks (id, rollout_id, status, queue_pos, input, mode, resources_id, metadata,"
                " create_time) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    (first + index, rollout_id, first + index, *task_columns(spec), now)
                    for index, (rollout_id, spec) in enumerate(zip(ids, specs, strict=True))
                ),
            )
            self._queue_pos = first + len(ids) - 1
        return ids

    # claims: the queue's head handed out, through either door, as a new attempt -----------

    def claim_next(self) -> Task | None:
        claim = self.claim()
        return None if claim is None else Task.model_validate_json(claim.wire)

    def claim(self) -> Claim | None:
        with self._write(durable=False) as conn:
            claimed = self._claim_head(conn, None, legacy=True)
        if claimed is None:
            return None
        row, _ = claimed
        return Claim(row.rollout_id, row.num_claims, wire_task(row))

    def claim_many(self, count: int) -> list[Claim]:
        """The head of the queue claimed in two statements, not three per claim: one
        `UPDATE ... RETURNING` of the tasks, one `INSERT` of their attempts (the writer
        makes a group's claims so, see docs/performance.md). In no particular order.
        While a committed batch is being moved into place, one by one as `claim` does."""
        if self._draining or self._paused:
            return super().claim_many(count)
        with self._write(durable=False) as conn:
            self._expire(conn)
            now = self.clock()
            claimed = conn.execute(
                "UPDATE tasks SET status = 'claimed', phase = 'preparing', queue_pos = NULL,"
                " num_claims = num_claims + 1, last_claim_time = ?, deadline = ? WHERE id IN"
                " (SELECT id FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'"
                f" ORDER BY queue_pos LIMIT ?) RETURNING id, {TASK_COLUMNS}",
                (now, now + self.task_timeout, count),
            ).fetchall()
            claims, attempts = [], []
            for task, *values in claimed:
                row = TaskRow._make(values)
                if row.config is not None:  # a store-API rollout: its config sets the deadline
                    row = row._replace(deadline=self._attempt_deadline(row, now, legacy=True))
                    conn.execute("UPDATE tasks SET deadline = ? WHERE id = ?", (row.deadline, task))
                if row.deadline is not None:
                    self._earliest_deadline = min(self._earliest_deadline, row.deadline)
                attempts.append((task, row.rollout_id, row.num_claims, new_attempt_id()))
                claims.append(Claim(row.rollout_id, row.num_claims, wire_task(row)))
            if attempts:
                conn.execute(
                    "INSERT INTO attempts (task, rollout_id, sequence_id, attempt_id, start_time, status)"
                    " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?, 'preparing' FROM json_each(?)",
                    (now, orjson.dumps(attempts).decode()),
                )
        return claims

    def _claim_head(
        self, conn: sqlite3.Connection, worker_id: str | None, legacy: bool = False
    ) -> tuple[TaskRow, AttemptRow] | None:
        """Put back expired claims, then hand out the head of the queue (to a legacy worker,
        `GET /task`, or through the store API); the task as it is now and its new attempt,
        or None if the queue is empty or paused."""
        self._expire(conn)
        if self._paused:
            return None
        if self._draining:
            self._move_head_of_queue(conn)
        values = conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'"
            " ORDER BY queue_pos LIMIT 1"
        ).fetchone()
        if values is None:
            return None
        return self._start_attempt(conn, TaskRow._make(values), worker_id, self.clock(), legacy)

    def _start_attempt(
        self, conn: sqlite3.Connection, row: TaskRow, worker_id: str | None, now: float, legacy: bool = False
    ) -> tuple[TaskRow, AttemptRow]:
        """A new attempt at the task: it leaves the queue, preparing, claimed until the
        attempt's deadline (a legacy task's: the claim timeout)."""
        attempt = AttemptRow(
            row.rollout_id,
            new_attempt_id(),
            row.num_claims + 1,
            now,
            None,
            "preparing",
            worker_id,
            None,
            None,
        )
        deadline = self._attempt_deadline(row, now, legacy)
        conn.execute(
            "UPDATE tasks SET status = 'claimed', phase = 'preparing', queue_pos = NULL, num_claims = ?,"
            " last_claim_time = ?, deadline = ? WHERE rollout_id = ?",
            (attempt.sequence_id, now, deadline, row.rollout_id),
        )
        conn.execute(
            "INSERT INTO attempts (task, rollout_id, sequence_id, attempt_id, start_time, status, worker_id)"
            " SELECT id, rollout_id, ?, ?, ?, 'preparing', ? FROM tasks WHERE rollout_id = ?",
            (attempt.sequence_id, attempt.attempt_id, now, worker_id, row.rollout_id),
        )
        if deadline is not None:
            self._earliest_deadline = min(self._earliest_deadline, deadline)
        claimed = row._replace(
            status="claimed",
            phase="preparing",
            num_claims=attempt.sequence_id,
            last_claim_time=now,
            deadline=deadline,
        )
        return claimed, attempt

    def _attempt_deadline(self, row: TaskRow, now: float, legacy: bool) -> float | None:
        """When an attempt started now at the task runs out: a legacy task's after the
        claim timeout, a store-API rollout's as its config says, and when that is never
        but a legacy worker has it, after the claim timeout too: it sends no heartbeat, and
        could die holding the rollout for good."""
        if row.config is None:
            return now + self.task_timeout
        deadline = attempt_deadline(self._config(row.config), now, None)
        return now + self.task_timeout if deadline is None and legacy else deadline

    def expire_claims(self) -> int:
        with self._write(durable=False) as conn:
            return self._expire(conn)

    def abandon_claim(self, rollout_id: str, num_claims: int) -> bool:
        with self._write(durable=False) as conn:
            now = self.clock()
            changed = conn.execute(
                "UPDATE tasks SET deadline = ? WHERE rollout_id = ? AND status = 'claimed' AND num_claims = ?",
                (now, rollout_id, num_claims),
            ).rowcount
            if changed:
                self._earliest_deadline = now
                self._expire(conn)
            return bool(changed)

    def _expire(self, conn: sqlite3.Connection) -> int:
        """End up to `EXPIRE_BATCH` attempts whose deadline has passed (timed out, or
        unresponsive), which puts their tasks back in the queue or fails them.

        The earliest deadline is remembered, so that a claim costs no look for expired
        ones until that time; it is a lower bound (a reported task's deadline may linger
        there), so at worst one look finds nothing and learns the true earliest one.
        """
        now = self.clock()
        if self._earliest_deadline and now < self._earliest_deadline:
            return 0
        expired = conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_deadline"
            " WHERE status = 'claimed' AND deadline <= ? ORDER BY deadline LIMIT ?",
            (now, EXPIRE_BATCH),
        ).fetchall()
        for values in expired:
            row = TaskRow._make(values)
            attempt = self._attempt(conn, row.rollout_id, row.num_claims)
            config = self._config(row.config)
            if attempt is None:  # a claim without an attempt: only what a damaged file holds
                self._set_phase(conn, row, rollout_status_after("timeout", row.num_claims, config), now)
                continue
            self._change_attempt(
                conn, row, attempt, {"status": verdict(config, attempt.start_time, now)}, now
            )
        self._earliest_deadline = self.next_deadline() or float("inf")
        self.expirations += len(expired)
        return len(expired)

    def next_deadline(self) -> float | None:
        [(deadline,)] = self._read(
            "SELECT min(deadline) FROM tasks INDEXED BY tasks_deadline WHERE status = 'claimed'"
        )
        return float(deadline) if deadline is not None else None

    def get_task(self, rollout_id: str) -> TaskRecord | None:
        with self.snapshot():  # a task moved out of `staging` meanwhile is found in `tasks`
            rows = self._read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE rollout_id = ?", (rollout_id,))
            if not rows:
                rows = self._read(
                    f"SELECT {TASK_COLUMNS} FROM ({STAGED_TASKS}) WHERE rollout_id = ?", (rollout_id,)
                )
        return record_from_row(TaskRow._make(rows[0])) if rows else None

    def list_tasks(
        self,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        max_bytes: int | None = None,
    ) -> list[TaskRecord]:
        where, params = ("", []) if status is None else (" WHERE status = ?", [status.value])
        sql = f"SELECT {TASK_COLUMNS} FROM tasks{where} ORDER BY id LIMIT ? OFFSET ?"
        with self.snapshot():
            if status in (None, TaskStatus.QUEUED) and self._read(
                "SELECT 1 FROM batches WHERE committed_time IS NOT NULL LIMIT 1"
            ):
                sql = (
                    f"SELECT {TASK_COLUMNS} FROM (SELECT id, {TASK_COLUMNS} FROM tasks{where}"
                    f" UNION ALL {STAGED_TASKS}) ORDER BY id LIMIT ? OFFSET ?"
                )
            rows = self._rows_holding(
                sql,
                [*params, limit, offset],
                max_bytes,
                lambda values: len(values[TASK_INPUT]) + len(values[TASK_METADATA]),
            )
        return [record_from_row(TaskRow._make(values)) for values in rows]

    def cancel_tasks(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        return self._move_each(rollout_ids, check_cancellable, lambda row: "cancelled")

    def retry_tasks(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        return self._move_each(rollout_ids, check_retryable, _queued_again)

    def _move_each(
        self,
        rollout_ids: Sequence[str],
        check: Callable[[str, TaskStatus], None],
        phase_of: Callable[[TaskRow], RolloutStatus],
    ) -> list[TaskRecord]:
        """Move each task named (once) to the phase `phase_of` gives it, in one write
        that `check` undoes if it refuses any of them."""
        rows: list[TaskRow] = []
        with self._write() as conn:
            now = self.clock()
            for rollout_id in dict.fromkeys(rollout_ids):
                values = self._task_row(conn, TASK_COLUMNS, rollout_id)
                if values is None:
                    raise UnknownTaskError(rollout_id)
                row = TaskRow._make(values)
                check(rollout_id, TaskStatus(row.status))
                rows.append(self._set_phase(conn, row, phase_of(row), now))
        return [record_from_row(row) for row in rows]

    def retry_failed(self, after: int, limit: int) -> tuple[int, int]:
        with self._write() as conn:
            now = self.clock()
            failed = conn.execute(
                f"SELECT id, {TASK_COLUMNS} FROM tasks INDEXED BY tasks_status"
                " WHERE status = 'failed' AND id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
            for _, *values in failed:
                row = TaskRow._make(values)
                self._set_phase(conn, row, _queued_again(row), now)
        return len(failed), failed[-1][0] if failed else after

    @property
    def paused(self) -> bool:
        return self._paused

    def set_paused(self, paused: bool) -> None:
        with self._write() as conn:  # a flag beside the counters: no schema change for one bit
            conn.execute(
                "INSERT INTO counters VALUES ('paused', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (int(paused),),
            )
            self._paused = paused

    def keep_clock_apart(self, apart: float) -> None:
        with self._write(durable=False) as conn:  # a power cut costs a step at the next start
            conn.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (CLOCK_APART, round(apart * 1000)),
            )

    def last_queue_place(self) -> int:
        return self._queue_pos

    def cancel_queued(self, last_place: int, limit: int) -> int:
        with self._write() as conn:
            while self._draining and self._draining[0].base_pos < last_place:
                drain = self._draining[0]
                self._move_staged(conn, drain, limit)
                if self._draining and self._draining[0] is drain:
                    break  # it holds more: the queue's first `limit` places are all in `tasks` now
            # `_set_phase(row, "cancelled")` for many queued tasks in one statement, four
            # times as fast (a test holds the two to the same rows)
            cancelled: int = conn.execute(
                "UPDATE tasks SET phase = 'cancelled', status = 'cancelled', queue_pos = NULL, end_time = ?"
                " WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_queue"
                " WHERE status = 'queued' AND queue_pos <= ? ORDER BY queue_pos LIMIT ?)",
                (self.clock(), last_place, limit),
            ).rowcount
        return cancelled

    def _rows_holding(
        self, sql: str, params: Sequence[Any], max_bytes: int | None, size: Callable[[Sequence[Any]], int]
    ) -> list[Any]:
        """`sql`'s rows, no more once their `size`s add up to `max_bytes` (after the first):
        a page of big tasks or results stops short. Its read ends there (the cursor is closed)."""
        found: list[Any] = []
        held = 0
        with contextlib.closing(self._rows(sql, params)) as rows:
            for values in rows:
                found.append(values)
                held += size(values)
                if max_bytes is not None and held >= max_bytes:
                    break
        return found

    def counts(self) -> StoreCounts:
        with self.snapshot():
            return self._counts()

    def _counts(self) -> StoreCounts:
        """Read from what the schema's triggers keep (`task_counts`, `counters`), and from
        the batches still being moved into `tasks` (their tasks are queued already)."""
        counts = StoreCounts()
        for status, number in self._read("SELECT status, tasks FROM task_counts"):
            counts.tasks[TaskStatus(status)] = number
        [
            (
                staged,
                counts.rollouts,
                counts.unsolicited,
                counts.duplicates,
                counts.forgotten,
                counts.resources,
            )
        ] = self._read(
            f"SELECT ({STAGED_COUNT}), (SELECT value FROM counters WHERE name = 'rollouts'),"
            " (SELECT value FROM counters WHERE name = 'unsolicited'),"
            " (SELECT value FROM counters WHERE name = 'duplicates'),"
            f" (SELECT coalesce(max(value), 0) FROM counters WHERE name = '{FORGOTTEN}'),"
            " (SELECT count(*) FROM resources)"
        )
        counts.tasks[TaskStatus.QUEUED] += staged
        return counts

    # the life cycle of a rollout and its attempts (the rules: store/lifecycle.py) -----------

    def _config(self, text: str | None) -> RolloutConfig:
        return self._legacy_config if text is None else RolloutConfig.model_validate_json(text)

    def _attempt(self, conn: sqlite3.Connection, rollout_id: str, sequence_id: int) -> AttemptRow | None:
        values = conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task = {TASK_ID} AND sequence_id = ?",
            (rollout_id, sequence_id),
        ).fetchone()
        return AttemptRow._make(values) if values else None

    def _write_attempt(self, conn: sqlite3.Connection, attempt: AttemptRow) -> None:
        conn.execute(
            "UPDATE attempts SET end_time = ?, status = ?, worker_id = ?, last_heartbeat_time = ?, metadata = ?"
            f" WHERE task = {TASK_ID} AND sequence_id = ?",
            (
                attempt.end_time,
                attempt.status,
                attempt.worker_id,
                attempt.last_heartbeat_time,
                attempt.metadata,
                attempt.rollout_id,
                attempt.sequence_id,
            ),
        )

    def _deadline(self, row: TaskRow, attempt: AttemptRow | None) -> float | None:
        """When the claim of a task whose latest attempt this is runs out, if ever: even
        one that ended, for a rollout running again after it (a span that came late, a new
        status set by hand) is timed by that attempt, as 0.3.0 times it."""
        if attempt is None:
            return None
        return attempt_deadline(self._config(row.config), attempt.start_time, attempt.last_heartbeat_time)

    def _set_phase(
        self,
        conn: sqlite3.Connection,
        row: TaskRow,
        phase: RolloutStatus,
        now: float,
        attempt: AttemptRow | None = None,
        record: bool = True,
    ) -> TaskRow:
        """Move a task to `phase` with all that follows: its coarse status, its place at the
        end of the queue (kept if it is queued already), its claim deadline, its end; and
        on success, its result in the sequence of rollouts (unless the caller stores one)."""
        status = TASK_STATUS[phase]
        position = self._next_pos() if status is TaskStatus.QUEUED and row.status != "queued" else None
        deadline = self._deadline(row, attempt) if status is TaskStatus.CLAIMED else None
        end_time = now if phase in FINISHED else row.end_time
        completed_time = row.completed_time or (now if phase == "succeeded" else None)
        conn.execute(
            "UPDATE tasks SET phase = ?, status = ?, queue_pos = CASE WHEN ? = 'queued' THEN coalesce(queue_pos, ?)"
            " END, deadline = ?, end_time = ?, completed_time = ? WHERE rollout_id = ?",
            (phase, status.value, status.value, position, deadline, end_time, completed_time, row.rollout_id),
        )
        if deadline is not None:
            self._earliest_deadline = min(self._earliest_deadline, deadline)
        changed = row._replace(
            phase=phase,
            status=status.value,
            deadline=deadline,
            end_time=end_time,
            completed_time=completed_time,
        )
        if phase == "succeeded" and record:
            self._record_result(conn, changed, now)
        return changed

    def _record_result(self, conn: sqlite3.Connection, row: TaskRow, now: float) -> None:
        """A rollout that succeeded through the store API joins the sequence of results, as a
        legacy worker's report would (once: a second success is not a second result). Its
        reward is its attempt's latest reward span's, if that is a number: a span's
        attribute may hold anything (a string, a list, "NaN" for a NaN), a result's reward
        only a number, as a legacy report's."""
        attempt = self._attempt(conn, row.rollout_id, row.num_claims)
        reward = None
        if attempt is not None:
            found = conn.execute(
                "SELECT CASE WHEN kind IN ('integer', 'real') THEN reward END FROM (SELECT id, sequence_id,"
                " json_extract(body, ?) AS reward, json_type(body, ?) AS kind FROM spans"
                " WHERE rollout_id = ? AND attempt_id = ?) WHERE reward IS NOT NULL"
                " ORDER BY sequence_id DESC, id DESC LIMIT 1",
                (REWARD_PATH, REWARD_PATH, row.rollout_id, attempt.attempt_id),
            ).fetchone()
            reward = found[0] if found else None
        body = orjson.dumps(
            {
                "rollout_id": row.rollout_id,
                "task": orjson.Fragment(wire_task(row)),
                "final_reward": reward,
                "triplets": None,
                "trace": None,
                "logs": None,
                "metadata": legacy_metadata(row),
            }
        ).decode()
        conn.execute(
            "INSERT OR IGNORE INTO rollouts (rollout_id, received_time, attempt, unsolicited, body, mode, reward)"
            " VALUES (?, ?, ?, 0, ?, ?, ?)",
            (row.rollout_id, now, row.num_claims, body, row.mode, reward),
        )

    def _change_attempt(
        self,
        conn: sqlite3.Connection,
        row: TaskRow,
        attempt: AttemptRow,
        changes: Mapping[str, Any],
        now: float,
    ) -> AttemptRow:
        """Apply `changes` to an attempt; the latest attempt's status decides its rollout's,
        and the worker running it follows."""
        if "worker_id" in changes:
            attempt = attempt._replace(worker_id=changes["worker_id"])
        if "status" in changes:
            attempt = attempt._replace(status=changes["status"])
            if changes["status"] in ATTEMPT_ENDED:
                attempt = attempt._replace(end_time=now)
        if "last_heartbeat_time" in changes:
            attempt = attempt._replace(last_heartbeat_time=changes["last_heartbeat_time"])
        if "metadata" in changes:
            attempt = attempt._replace(metadata=orjson.dumps(changes["metadata"]).decode())
        self._write_attempt(conn, attempt)
        if attempt.sequence_id == row.num_claims:
            self._follow_latest_attempt(conn, row, attempt, now)
        if changes.get("worker_id") or ("status" in changes and attempt.worker_id):
            self._sync_worker(conn, attempt, now)
        return attempt

    def _follow_latest_attempt(
        self, conn: sqlite3.Connection, row: TaskRow, attempt: AttemptRow, now: float
    ) -> None:
        phase = rollout_status_after(attempt.status, attempt.sequence_id, self._config(row.config))
        if phase != row.phase:
            self._set_phase(conn, row, phase, now, attempt)
        elif row.status == "claimed":
            self._refresh_deadline(conn, row, attempt)

    def _refresh_deadline(self, conn: sqlite3.Connection, row: TaskRow, attempt: AttemptRow | None) -> None:
        """A claimed task's deadline, again from its latest attempt (if any) and its config."""
        deadline = self._deadline(row, attempt)
        if deadline != row.deadline:
            conn.execute("UPDATE tasks SET deadline = ? WHERE rollout_id = ?", (deadline, row.rollout_id))
            if deadline is not None:
                self._earliest_deadline = min(self._earliest_deadline, deadline)

    def _heartbeat(self, conn: sqlite3.Connection, row: TaskRow, attempt: AttemptRow, now: float) -> None:
        """A sign of life from an attempt (a span arrived): it is running, and so is its
        rollout if it was still preparing (or waiting to be retried) for it. A rollout in
        any other status keeps it, as in 0.3.0, whatever its attempt's: only its deadline
        moves (one marked running by hand over an ended attempt is not retried by a span)."""
        status = "running" if attempt.status in WOKEN_BY_HEARTBEAT else attempt.status
        attempt = attempt._replace(last_heartbeat_time=now, status=status)
        self._write_attempt(conn, attempt)
        if attempt.sequence_id != row.num_claims:
            return
        if row.phase in ROLLOUT_WOKEN_BY_HEARTBEAT:
            self._set_phase(conn, row, "running", now, attempt)
        elif row.status == "claimed":
            self._refresh_deadline(conn, row, attempt)

    def _sync_worker(
        self, conn: sqlite3.Connection, attempt: AttemptRow, now: float, dequeued: bool = False
    ) -> None:
        """The worker of an attempt is busy with it while it is active, idle once it ended,
        and unknown once it timed out or went quiet. (An attempt without a worker: nothing.)"""
        if not attempt.worker_id:
            return
        status = worker_status_after(attempt.status)
        busy = status == "busy"
        conn.execute(
            "INSERT INTO workers (worker_id) VALUES (?) ON CONFLICT (worker_id) DO NOTHING",
            (attempt.worker_id,),
        )
        conn.execute(
            "UPDATE workers SET status = :status, current_rollout_id = :rollout_id, current_attempt_id = :attempt_id,"
            " last_busy_time = CASE WHEN :busy THEN :now ELSE last_busy_time END,"
            " last_idle_time = CASE WHEN :busy THEN last_idle_time ELSE :now END,"
            " last_dequeue_time = CASE WHEN :dequeued THEN :now ELSE last_dequeue_time END WHERE worker_id = :worker_id",
            {
                "status": status,
                "rollout_id": attempt.rollout_id if busy else None,
                "attempt_id": attempt.attempt_id if busy else None,
                "busy": busy,
                "now": now,
                "dequeued": dequeued,
                "worker_id": attempt.worker_id,
            },
        )


def _queued_again(row: TaskRow) -> RolloutStatus:
    """A retried task waits in the queue as one never tried, or as one tried before."""
    return "requeuing" if row.num_claims else "queuing"
