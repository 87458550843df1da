"""The default store: one SQLite file, so that a `kill -9` loses nothing answered.

PRAGMA choices and why:
- `journal_mode=WAL`: readers never block the writer, and a commit is one append.
- `synchronous=NORMAL`, and for writes that a caller is told succeeded with data it
  cannot recreate (queued tasks, rollouts, resources, cancels) an fsync of the WAL after
  the commit and before the answer: what `synchronous=FULL` does at every commit, but
  done once for a whole group of writes (below), so they survive even a power cut. A
  group of claims only is not synced: it survives a crash of the daemon, and losing it
  to a power cut only means a task is handed out once more, which at-least-once allows.
- `wal_autocheckpoint` stays at its default (1,000 pages), so the log starts over once
  it is copied; but the server also runs `checkpoint()` on a thread of its own, which
  copies pages into the database while the writer goes on, so the checkpoint a commit
  runs when it crosses the threshold only has the last few pages to copy and does not
  hold up that commit and every write grouped with it.
- `journal_size_limit`: a commit of a large batch grows the WAL by its size; the limit
  truncates it again after the next checkpoint instead of keeping the space forever.
- Reads run on connections of their own (one per reading thread), so they never wait
  for a commit and a commit never waits for them.
- `application_id` marks the file as agl's, so `agl serve` refuses a database it did
  not make instead of writing into it; `user_version` numbers the schema, and
  `MIGRATIONS` brings an older file up to date when it is opened.

`transaction()` groups several writes into one commit (the server's group commit), each
in a savepoint or, on the server's fast path, none (then a failure undoes them all), and
the WAL is synced once after the commit if any write in the group needs it.

Batches are staged in their own table. Committing one is a single small transaction that
marks it committed and reserves its places in the queue (`base_pos + pos`), so a million
staged tasks become queued at once, or not at all, without holding up other writes.
They are then moved into `tasks` a chunk at a time (`drain_step`, which the server runs
when it has had no write for a moment); until a task is moved, every read sees it where it will be (claims move the head of the
queue first, lookups by id look in `staging` too, counts and listings add the rest).
Staging writes are not synced: an uncommitted batch does not survive a restart anyway,
and the commit's sync covers what was staged before it. A task's `id` is its first place
in the queue, so that listings keep queue order with a batch's tasks in the middle.

Every statement on the request path is an index probe: the queue is read through a
partial index of queued tasks, and expired claims through a partial index of claim
deadlines, so the cost of a claim does not grow with the work in flight. Those queries
name their index (`INDEXED BY`): without statistics SQLite's planner prefers the status
index and sorts every queued task on each claim.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from agl_cli.models import ResourcesUpdate, Rollout, Task, TaskStatus
from agl_cli.store.base import (
    Claim,
    Commit,
    ReportOutcome,
    SpansAdded,
    Store,
    StoreCounts,
    StoredRollout,
    TaskRecord,
    TaskSpec,
    UnknownAttemptError,
    UnknownBatchError,
    UnknownRolloutError,
    UnknownTaskError,
    check_cancellable,
    check_resources_id,
    new_attempt_id,
    new_batch_id,
    new_resources_id,
    new_rollout_ids,
    new_store_rollout_id,
    outcome_of_report,
    validate_resources,
)
from agl_cli.store.lifecycle import (
    ATTEMPT_ACTIVE,
    ATTEMPT_ENDED,
    FINISHED,
    ROLLOUT_WOKEN_BY_HEARTBEAT,
    TASK_STATUS,
    WOKEN_BY_HEARTBEAT,
    attempt_deadline,
    legacy_config,
    rollout_status_after,
    verdict,
    worker_status_after,
)
from agl_cli.store.paging import Where, order_by, page
from agl_cli.store.rows import (
    ATTEMPT_COLUMNS,
    ATTEMPT_SORT_COLUMNS,
    MAX_POS,
    RESOURCES_COLUMNS,
    RESOURCES_SORT_COLUMNS,
    REWARD_PATH,
    ROLLOUT_COLUMNS,
    ROLLOUT_SORT_COLUMNS,
    SPAN_SORT_COLUMNS,
    STAGED_TASKS,
    TASK_COLUMNS,
    WORKER_COLUMNS,
    WORKER_SORT_COLUMNS,
    AttemptRow,
    ResourcesRow,
    RolloutRow,
    TaskRow,
    WorkerRow,
    attempt_shape,
    record_from_row,
    resources_from_row,
    resources_shape,
    rollout_shape,
    stored_from_row,
    wire_task,
    worker_shape,
)
from agl_cli.store.schema import connect, open_connection
from agl_cli.store_models import (
    AttemptQuery,
    EnqueueRequest,
    PageQuery,
    ResourcesQuery,
    RolloutConfig,
    RolloutQuery,
    RolloutStatus,
    Span,
    SpanQuery,
    StartRolloutBody,
    WorkerQuery,
)

EXPIRE_BATCH = 500
DRAIN_CHUNK = 1_000  # staged tasks moved into place per step: ~5 ms of writing
CLAIM_DRAIN = 64  # moved at once when a claim reaches a batch's tasks before the steps do


class SQLiteStore(Store):
    """All of agl's state in one SQLite file: one write connection, a read connection per
    reading thread."""

    kind = "sqlite"
    blocking = True

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path).absolute()  # connections opened later must find the same file
        self._conn = self._open()
        self._lock = threading.RLock()  # the write connection is used by one thread at a time
        self._group: _Group | None = None  # the open `transaction()`, if any
        self._readers = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._wal = f"{self.path}-wal"
        # What the writer keeps in memory beside the database; `_relearn` after a rollback.
        self._earliest_deadline = 0.0  # no claim expires before this; 0: look in the database
        self._draining: list[_Drain] = []  # committed batches not yet moved into `tasks`, oldest first
        with self._write(durable=False) as conn:  # uncommitted batches never outlive the daemon
            if conn.execute("SELECT 1 FROM batches WHERE committed_time IS NOT NULL LIMIT 1").fetchone():
                conn.execute(
                    "DELETE FROM staging WHERE batch IN (SELECT id FROM batches WHERE committed_time IS NULL)"
                )
            else:  # without a WHERE, SQLite drops the table's pages at once instead of row by row
                conn.execute("DELETE FROM staging")
            conn.execute("DELETE FROM batches WHERE committed_time IS NULL")
            self._relearn()
            [last] = conn.execute(
                "SELECT max((SELECT coalesce(max(id), 0) FROM tasks),"
                " (SELECT coalesce(max(queue_pos), 0) FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'),"
                " (SELECT coalesce(max(base_pos + staged), 0) FROM batches))"
            ).fetchone()
        self._queue_pos: int = last  # the last place in the queue handed out (and the last id)
        self._opened = self.clock()
        self._legacy_config = legacy_config(self.task_timeout, self.max_claims)
        self._legacy_config_json = self._legacy_config.model_dump_json()

    def _open(self) -> sqlite3.Connection:
        """The write connection."""
        return open_connection(self.path)

    # transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self, isolate_writes: bool = True, sync: bool = True) -> Iterator[Commit]:
        """One commit for every write made inside; synced if any of them needs it.

        With `isolate_writes`, each write runs in a savepoint, so one that fails is undone
        alone. Without, a failing write leaves the transaction half-done: the caller must
        let the exception end it (everything is rolled back) and may then try again.
        """
        with self._lock:
            if self._group is not None:
                raise RuntimeError("transactions do not nest")
            self._conn.execute("BEGIN IMMEDIATE")
            group = self._group = _Group(threading.get_ident(), isolate_writes)
            commit = Commit()
            try:
                yield commit
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._relearn()
                raise
            finally:
                self._group = None
            if group.durable and sync:
                self.sync()
            commit.needs_sync = group.durable and not sync

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write: a savepoint inside an open `transaction()`, else a transaction of its
        own. `durable` writes are on disk before the transaction that holds them returns."""
        with self._lock:
            group = self._group
            if group is None:
                with self.transaction():
                    assert self._group is not None
                    self._group.durable = durable
                    yield self._conn
                return
            group.durable = group.durable or durable
            if not group.isolate_writes:
                yield self._conn
                return
            self._conn.execute("SAVEPOINT write")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK TO write")
                self._conn.execute("RELEASE write")
                self._relearn()
                raise
            self._conn.execute("RELEASE write")

    def _relearn(self) -> None:
        """Forget what undone writes taught the writer: read the batches still to move
        again, and look for the earliest claim deadline at the next claim. (The last queue
        place handed out only grows; places an undone write took are simply left unused.)"""
        self._earliest_deadline = 0.0
        self._draining = [
            _Drain(*row)
            for row in self._conn.execute(
                "SELECT id, base_pos, committed_time FROM batches WHERE committed_time IS NOT NULL ORDER BY base_pos"
            ).fetchall()
        ]

    def sync(self) -> None:
        """fsync the WAL: every commit written to it so far is then on disk. Safe to run on
        another thread while the next transaction writes (it only flushes more)."""
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: it is all in the synced database
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def checkpoint(self) -> None:
        # PASSIVE: copies what no reader still needs, without waiting for readers or writers.
        self._reader().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction on this thread's read connection: in WAL mode, every read
        inside sees the same commit, whatever the writer does meanwhile."""
        group = self._group
        if group is not None and group.owner == threading.get_ident():
            yield  # the write transaction this thread holds is consistent already
            return
        conn = self._reader()
        if conn.in_transaction:
            yield  # a snapshot already
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a query on this thread's read connection; inside a transaction, on the write
        connection, so that the transaction sees its own writes."""
        group = self._group
        if group is not None and group.owner == threading.get_ident():
            return self._conn.execute(sql, params).fetchall()
        return self._reader().execute(sql, params).fetchall()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._readers.conn = connect(self.path)
            conn.execute("PRAGMA query_only=1")
            with self._lock:
                self._read_conns.append(conn)
        return conn

    # tasks -------------------------------------------------------------------------------

    def queue_tasks(self, specs: Sequence[TaskSpec]) -> list[str]:
        now = self.clock()
        ids = new_rollout_ids(len(specs))
        with self._write() as conn:
            first = self._queue_pos + 1
            conn.executemany(
                "INSERT INTO tasks (id, rollout_id, status, queue_pos, input, mode, resources_id, metadata,"
                " create_time) VALUES (?1, ?2, 'queued', ?1, ?3, ?4, ?5, ?6, ?7)",
                (
                    (
                        first + index,
                        rollout_id,
                        orjson.dumps(spec.input).decode(),
                        spec.mode,
                        spec.resources_id,
                        orjson.dumps(spec.metadata).decode(),
                        now,
                    )
                    for index, (rollout_id, spec) in enumerate(zip(ids, specs, strict=True))
                ),
            )
            self._queue_pos = first + len(ids) - 1
        return ids

    # batches -----------------------------------------------------------------------------

    def create_batch(self) -> str:
        batch_id = new_batch_id()
        with self._write(durable=False) as conn:
            conn.execute(
                "INSERT INTO batches (batch_id, created_time) VALUES (?, ?)", (batch_id, self.clock())
            )
        return batch_id

    def stage_tasks(self, batch_id: str, specs: Sequence[TaskSpec]) -> list[str]:
        ids = new_rollout_ids(len(specs))
        rows = [
            (
                rollout_id,
                orjson.dumps(spec.input).decode(),
                spec.mode,
                spec.resources_id,
                orjson.dumps(spec.metadata).decode(),
            )
            for rollout_id, spec in zip(ids, specs, strict=True)
        ]
        with self._write(durable=False) as conn:
            key, staged = self._batch(conn, batch_id)
            conn.executemany(
                "INSERT INTO staging (batch, pos, rollout_id, input, mode, resources_id, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((key, staged + index + 1, *row) for index, row in enumerate(rows)),
            )
            conn.execute("UPDATE batches SET staged = staged + ? WHERE id = ?", (len(rows), key))
        return ids

    def batch_size(self, batch_id: str) -> int:
        with self._lock:
            return self._batch(self._conn, batch_id)[1]

    def commit_batch(self, batch_id: str) -> int:
        with self._write() as conn:
            key, staged = self._batch(conn, batch_id)
            if not staged:
                self._drop_batch(conn, key)
                return 0
            drain = _Drain(key, self._queue_pos, self.clock())
            conn.execute(
                "UPDATE batches SET committed_time = ?, base_pos = ? WHERE id = ?",
                (drain.committed_time, drain.base_pos, key),
            )
            self._queue_pos += staged
            self._draining.append(drain)
        return staged

    def drain_step(self) -> bool:
        if self._draining:
            with self._write(durable=False) as conn:
                self._move_staged(conn, self._draining[0], DRAIN_CHUNK)
        return bool(self._draining)

    def _move_staged(self, conn: sqlite3.Connection, drain: _Drain, count: int) -> None:
        """Move the next `count` staged tasks of a committed batch into their places."""
        last = conn.execute(
            "SELECT pos FROM staging WHERE batch = ? ORDER BY pos LIMIT 1 OFFSET ?", (drain.key, count - 1)
        ).fetchone()
        self._move_positions(conn, drain, 0, last[0] if last else MAX_POS)
        if last is None:
            conn.execute("DELETE FROM batches WHERE id = ?", (drain.key,))
            self._draining.remove(drain)

    def _move_staged_task(self, conn: sqlite3.Connection, rollout_id: str) -> bool:
        """Move one committed task into place ahead of its batch, if it is still staged;
        True if it was.

        Only needed by a write that names a task fresh from a large batch; without an
        index on staged ids (which would make staging four times slower) it reads
        through the staged tasks."""
        found = conn.execute("SELECT batch, pos FROM staging WHERE rollout_id = ?", (rollout_id,)).fetchone()
        for drain in self._draining:
            if found is not None and drain.key == found[0]:
                self._move_positions(conn, drain, found[1], found[1])
                return True
        return False

    def _move_positions(self, conn: sqlite3.Connection, drain: _Drain, low: int, high: int) -> None:
        """Move a committed batch's staged tasks from `low` to `high` (in staging order)
        into `tasks`, each at the place the commit reserved for it."""
        conn.execute(
            "INSERT INTO tasks (id, rollout_id, status, queue_pos, input, mode, resources_id, metadata, create_time)"
            " SELECT ?1 + pos, rollout_id, 'queued', ?1 + pos, input, mode, resources_id, metadata, ?2"
            " FROM staging WHERE batch = ?3 AND pos BETWEEN ?4 AND ?5 ORDER BY pos",
            (drain.base_pos, drain.committed_time, drain.key, low, high),
        )
        conn.execute("DELETE FROM staging WHERE batch = ? AND pos BETWEEN ? AND ?", (drain.key, low, high))

    def _task_row(self, conn: sqlite3.Connection, columns: str, rollout_id: str) -> Any:
        """`columns` of a task by id, moved out of `staging` first if a committed batch
        still holds it there; None for an unknown id."""
        sql = f"SELECT {columns} FROM tasks WHERE rollout_id = ?"
        found = conn.execute(sql, (rollout_id,)).fetchone()
        if found is None and self._draining and self._move_staged_task(conn, rollout_id):
            found = conn.execute(sql, (rollout_id,)).fetchone()
        return found

    def _move_head_of_queue(self, conn: sqlite3.Connection) -> None:
        """Before a claim: if the next place in the queue belongs to a staged task, move it
        (and some after it). A batch with nothing left in `staging` is done with."""
        while self._draining:
            drain = self._draining[0]
            [first] = conn.execute("SELECT min(pos) FROM staging WHERE batch = ?", (drain.key,)).fetchone()
            if first is None:
                self._move_staged(conn, drain, CLAIM_DRAIN)  # ends the batch
                continue
            [head] = conn.execute(
                "SELECT min(queue_pos) FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'"
            ).fetchone()
            if head is None or drain.base_pos + first < head:
                self._move_staged(conn, drain, CLAIM_DRAIN)
            return

    def discard_batch(self, batch_id: str) -> int:
        with self._write(durable=False) as conn:
            key, staged = self._batch(conn, batch_id)
            self._drop_batch(conn, key)
        return staged

    def _batch(self, conn: sqlite3.Connection, batch_id: str) -> tuple[int, int]:
        row = conn.execute(
            "SELECT id, staged FROM batches WHERE batch_id = ? AND committed_time IS NULL", (batch_id,)
        ).fetchone()
        if row is None:
            raise UnknownBatchError(batch_id)
        key, staged = row
        return int(key), int(staged)

    def _drop_batch(self, conn: sqlite3.Connection, key: int) -> None:
        others = conn.execute("SELECT 1 FROM batches WHERE id != ? LIMIT 1", (key,)).fetchone()
        if others:
            conn.execute("DELETE FROM staging WHERE batch = ?", (key,))
        else:  # without a WHERE, SQLite drops the table's pages at once instead of row by row
            conn.execute("DELETE FROM staging")
        conn.execute("DELETE FROM batches WHERE id = ?", (key,))

    # claims: the queue's head handed out, through either door, as a new attempt -----------

    def claim_next(self) -> Task | None:
        claim = self.claim()
        return None if claim is None else Task.model_validate_json(claim.wire)

    def claim(self) -> Claim | None:
        with self._write(durable=False) as conn:
            claimed = self._claim_head(conn, None)
        if claimed is None:
            return None
        row, _ = claimed
        return Claim(row.rollout_id, row.num_claims, wire_task(row))

    def _claim_head(
        self, conn: sqlite3.Connection, worker_id: str | None
    ) -> tuple[TaskRow, AttemptRow] | None:
        """Put back expired claims, then hand out the head of the queue; the task as it
        is now and its new attempt, or None if the queue is empty."""
        self._expire(conn)
        if self._draining:
            self._move_head_of_queue(conn)
        values = conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'"
            " ORDER BY queue_pos LIMIT 1"
        ).fetchone()
        if values is None:
            return None
        return self._start_attempt(conn, TaskRow._make(values), worker_id, self.clock())

    def _start_attempt(
        self, conn: sqlite3.Connection, row: TaskRow, worker_id: str | None, now: float
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
        deadline = (
            now + self.task_timeout
            if row.config is None
            else attempt_deadline(self._config(row.config), now, None)
        )
        conn.execute(
            "UPDATE tasks SET status = 'claimed', phase = 'preparing', queue_pos = NULL, num_claims = ?,"
            " last_claim_time = ?, deadline = ? WHERE rollout_id = ?",
            (attempt.sequence_id, now, deadline, row.rollout_id),
        )
        conn.execute(
            "INSERT INTO attempts (rollout_id, sequence_id, attempt_id, start_time, status, worker_id)"
            " VALUES (?, ?, ?, ?, 'preparing', ?)",
            (row.rollout_id, attempt.sequence_id, attempt.attempt_id, now, worker_id),
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

    def expire_claims(self) -> int:
        with self._write(durable=False) as conn:
            return self._expire(conn)

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
        return len(expired)

    def next_deadline(self) -> float | None:
        [(deadline,)] = self._read(
            "SELECT min(deadline) FROM tasks INDEXED BY tasks_deadline WHERE status = 'claimed'"
        )
        return deadline  # type: ignore[no-any-return]

    def get_task(self, rollout_id: str) -> TaskRecord | None:
        with self.snapshot():  # a task moved out of `staging` meanwhile is found in `tasks`
            rows = self._read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE rollout_id = ?", (rollout_id,))
            if not rows:
                rows = self._read(
                    f"SELECT {TASK_COLUMNS} FROM ({STAGED_TASKS}) WHERE rollout_id = ?", (rollout_id,)
                )
        return record_from_row(TaskRow._make(rows[0])) if rows else None

    def list_tasks(
        self, status: TaskStatus | None = None, limit: int = 100, offset: int = 0
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
            rows = self._read(sql, [*params, limit, offset])
        return [record_from_row(TaskRow._make(values)) for values in rows]

    def cancel_task(self, rollout_id: str) -> TaskRecord:
        with self._write() as conn:
            values = self._task_row(conn, TASK_COLUMNS, rollout_id)
            if values is None:
                raise UnknownTaskError(rollout_id)
            row = TaskRow._make(values)
            check_cancellable(rollout_id, TaskStatus(row.status))
            self._set_phase(conn, row, "cancelled", self.clock())
        record = record_from_row(row)
        return TaskRecord(record.task, TaskStatus.CANCELLED, None, None, record.duplicates)

    # rollouts ----------------------------------------------------------------------------

    def record_rollout(self, rollout: Rollout, body: bytes | None = None) -> ReportOutcome:
        text = rollout.model_dump_json() if body is None else body.decode()
        rollout_id = rollout.rollout_id
        with self._write() as conn:
            found = self._task_row(conn, "status, num_claims", rollout_id)
            status, attempt = found if found else (None, None)
            outcome = outcome_of_report(TaskStatus(status) if status else None)
            if (
                outcome is ReportOutcome.UNSOLICITED
                and conn.execute("SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
            ):
                outcome = ReportOutcome.DUPLICATE
            if outcome is ReportOutcome.DUPLICATE:
                conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'duplicates'")
                conn.execute(
                    "UPDATE tasks SET duplicates = duplicates + 1 WHERE rollout_id = ?", (rollout_id,)
                )
                return outcome
            now = self.clock()
            if found:
                self._report_success(conn, rollout_id, found[1], now)
            conn.execute(
                "INSERT INTO rollouts (rollout_id, received_time, attempt, unsolicited, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (rollout_id, now, attempt, int(not found), text),
            )
        return outcome

    def _report_success(
        self, conn: sqlite3.Connection, rollout_id: str, sequence_id: int, now: float
    ) -> None:
        """A worker's report: the latest attempt (whoever made it) succeeded, and with it the
        task. `_set_phase` and `_change_attempt` in three statements, for the hot path."""
        ended = conn.execute(
            "UPDATE attempts SET status = 'succeeded', end_time = ? WHERE rollout_id = ? AND sequence_id = ?"
            " RETURNING worker_id",
            (now, rollout_id, sequence_id),
        ).fetchone()
        if ended is not None and ended[0]:
            attempt = self._attempt(conn, rollout_id, sequence_id)
            assert attempt is not None
            self._sync_worker(conn, attempt, now)
        conn.execute(
            "UPDATE tasks SET status = ?, phase = 'succeeded', queue_pos = NULL, deadline = NULL,"
            " completed_time = ?2, end_time = ?2 WHERE rollout_id = ?3",
            (TASK_STATUS["succeeded"].value, now, rollout_id),
        )

    def rollouts_after(self, seq: int, limit: int = 100) -> list[StoredRollout]:
        rows = self._read(
            f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [stored_from_row(RolloutRow._make(values)) for values in rows]

    def get_rollout(self, rollout_id: str) -> StoredRollout | None:
        rows = self._read(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        return stored_from_row(RolloutRow._make(rows[0])) if rows else None

    def consume_rollout(self, rollout_id: str) -> Rollout | None:
        with self._write() as conn:
            found = conn.execute(
                "SELECT seq, body FROM rollouts WHERE rollout_id = ? AND consumed = 0", (rollout_id,)
            ).fetchone()
            if found is None:
                return None
            seq, body = found
            conn.execute("UPDATE rollouts SET consumed = 1 WHERE seq = ?", (seq,))
        return Rollout.model_validate_json(body)

    def consume_all(self) -> list[Rollout]:
        with self._write() as conn:
            rows = conn.execute("SELECT body FROM rollouts WHERE consumed = 0 ORDER BY seq").fetchall()
            conn.execute("UPDATE rollouts SET consumed = 1 WHERE consumed = 0")
        return [Rollout.model_validate_json(body) for (body,) in rows]

    def last_seq(self) -> int:
        [(seq,)] = self._read("SELECT coalesce(max(seq), 0) FROM rollouts")
        return int(seq)

    # resources ---------------------------------------------------------------------------

    def publish_resources(
        self, resources: Mapping[str, Any], resources_id: str | None = None
    ) -> ResourcesUpdate:
        checked = validate_resources(resources)
        if resources_id is not None:
            check_resources_id(resources_id)
        now = self.clock()
        with self._write() as conn:
            previous = (  # (create_time, version)
                conn.execute(
                    "SELECT create_time, version FROM resources WHERE resources_id = ?", (resources_id,)
                ).fetchone()
                if resources_id
                else None
            )
            update = ResourcesUpdate(
                resources_id=resources_id or new_resources_id(),
                create_time=previous[0] if previous else now,
                update_time=now,
                version=previous[1] + 1 if previous else 1,
                resources=checked,
            )
            conn.execute(
                "INSERT INTO resources (resources_id, publish_seq, create_time, update_time, version, body)"
                " VALUES (?1, (SELECT coalesce(max(publish_seq), 0) + 1 FROM resources), ?2, ?3, ?4, ?5)"
                " ON CONFLICT (resources_id) DO UPDATE SET publish_seq = excluded.publish_seq,"
                " update_time = ?3, version = ?4, body = ?5",
                (
                    update.resources_id,
                    update.create_time,
                    update.update_time,
                    update.version,
                    update.model_dump_json(include={"resources"}),
                ),
            )
        return update

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        rows = self._read(
            f"SELECT {RESOURCES_COLUMNS} FROM resources WHERE resources_id = ?", (resources_id,)
        )
        return resources_from_row(ResourcesRow._make(rows[0])) if rows else None

    def latest_resources(self) -> ResourcesUpdate | None:
        rows = self._read(f"SELECT {RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq DESC LIMIT 1")
        return resources_from_row(ResourcesRow._make(rows[0])) if rows else None

    def list_resources(self) -> list[ResourcesUpdate]:
        rows = self._read(f"SELECT {RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq")
        return [resources_from_row(ResourcesRow._make(values)) for values in rows]

    def counts(self) -> StoreCounts:
        with self.snapshot():
            return self._counts()

    def _counts(self) -> StoreCounts:
        counts = StoreCounts()
        for status, number in self._read("SELECT status, count(*) FROM tasks GROUP BY status"):
            counts.tasks[TaskStatus(status)] = number
        [(staged,)] = self._read(f"SELECT count(*) FROM ({STAGED_TASKS})")
        counts.tasks[TaskStatus.QUEUED] += staged
        [(counts.rollouts, counts.unsolicited, counts.duplicates, counts.resources)] = self._read(
            "SELECT (SELECT count(*) FROM rollouts),"
            " (SELECT count(*) FROM rollouts INDEXED BY rollouts_unsolicited WHERE unsolicited = 1),"
            " (SELECT value FROM counters WHERE name = 'duplicates'),"
            " (SELECT count(*) FROM resources)"
        )
        return counts

    # the life cycle of a rollout and its attempts (the rules: store/lifecycle.py) -----------

    def _config(self, text: str | None) -> RolloutConfig:
        return self._legacy_config if text is None else RolloutConfig.model_validate_json(text)

    def _attempt(self, conn: sqlite3.Connection, rollout_id: str, sequence_id: int) -> AttemptRow | None:
        values = conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? AND sequence_id = ?",
            (rollout_id, sequence_id),
        ).fetchone()
        return AttemptRow._make(values) if values else None

    def _write_attempt(self, conn: sqlite3.Connection, attempt: AttemptRow) -> None:
        conn.execute(
            "UPDATE attempts SET end_time = ?, status = ?, worker_id = ?, last_heartbeat_time = ?, metadata = ?"
            " WHERE rollout_id = ? AND sequence_id = ?",
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
        """When the claim of a task whose latest attempt this is runs out, if ever."""
        if attempt is None or attempt.status not in ATTEMPT_ACTIVE:
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
            "UPDATE tasks SET phase = ?1, status = ?2, queue_pos = CASE WHEN ?2 = 'queued' THEN coalesce(queue_pos, ?3)"
            " END, deadline = ?4, end_time = ?5, completed_time = ?6 WHERE rollout_id = ?7",
            (phase, status.value, position, deadline, end_time, completed_time, row.rollout_id),
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
        legacy worker's report would (once: a second success is not a second result)."""
        attempt = self._attempt(conn, row.rollout_id, row.num_claims)
        reward = None
        if attempt is not None:
            found = conn.execute(
                "SELECT reward FROM (SELECT id, sequence_id, json_extract(body, ?) AS reward FROM spans"
                " WHERE rollout_id = ? AND attempt_id = ?) WHERE reward IS NOT NULL"
                " ORDER BY sequence_id DESC, id DESC LIMIT 1",
                (REWARD_PATH, row.rollout_id, attempt.attempt_id),
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
                "metadata": orjson.Fragment(row.metadata if row.metadata != "null" else "{}"),
            }
        ).decode()
        conn.execute(
            "INSERT OR IGNORE INTO rollouts (rollout_id, received_time, attempt, unsolicited, body)"
            " VALUES (?, ?, ?, 0, ?)",
            (row.rollout_id, now, row.num_claims, body),
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
        phase = rollout_status_after(attempt.status, attempt.sequence_id, self._config(row.config))  # type: ignore[arg-type]
        if phase != row.phase:
            self._set_phase(conn, row, phase, now, attempt)
        elif row.status == "claimed":
            deadline = self._deadline(row, attempt)
            if deadline != row.deadline:
                conn.execute("UPDATE tasks SET deadline = ? WHERE rollout_id = ?", (deadline, row.rollout_id))
                if deadline is not None:
                    self._earliest_deadline = min(self._earliest_deadline, deadline)

    def _heartbeat(self, conn: sqlite3.Connection, row: TaskRow, attempt: AttemptRow, now: float) -> None:
        """A sign of life from an attempt (a span arrived): it is running, and so is its
        rollout if it was still preparing (or waiting to be retried) for it."""
        status = "running" if attempt.status in WOKEN_BY_HEARTBEAT else attempt.status
        attempt = attempt._replace(last_heartbeat_time=now, status=status)
        self._write_attempt(conn, attempt)
        if attempt.sequence_id != row.num_claims:
            return
        if row.phase in ROLLOUT_WOKEN_BY_HEARTBEAT:
            self._set_phase(conn, row, "running", now, attempt)
        elif row.status == "claimed":
            self._follow_latest_attempt(conn, row, attempt, now)

    def _sync_worker(
        self, conn: sqlite3.Connection, attempt: AttemptRow, now: float, dequeued: bool = False
    ) -> None:
        """The worker of an attempt is busy with it while it is active, idle once it ended,
        and unknown once it timed out or went quiet. (An attempt without a worker: nothing.)"""
        if not attempt.worker_id:
            return
        status = worker_status_after(attempt.status)  # type: ignore[arg-type]
        busy = status == "busy"
        conn.execute(
            "INSERT INTO workers (worker_id) VALUES (?) ON CONFLICT (worker_id) DO NOTHING",
            (attempt.worker_id,),
        )
        conn.execute(
            "UPDATE workers SET status = ?, current_rollout_id = ?, current_attempt_id = ?,"
            " last_busy_time = CASE WHEN ?4 THEN ?5 ELSE last_busy_time END,"
            " last_idle_time = CASE WHEN ?4 THEN last_idle_time ELSE ?5 END,"
            " last_dequeue_time = CASE WHEN ?6 THEN ?5 ELSE last_dequeue_time END WHERE worker_id = ?7",
            (
                status,
                attempt.rollout_id if busy else None,
                attempt.attempt_id if busy else None,
                busy,
                now,
                dequeued,
                attempt.worker_id,
            ),
        )

    def _next_pos(self) -> int:
        self._queue_pos += 1
        return self._queue_pos

    # the store API: rollouts ---------------------------------------------------------------

    def enqueue_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[dict[str, object]]:
        now = self.clock()
        with self._write() as conn:
            latest = self._latest_resources_id(conn)
            rows = [self._new_rollout_row(request, latest, now) for request in requests]
            first = self._queue_pos + 1
            conn.executemany(
                "INSERT INTO tasks (id, rollout_id, status, phase, queue_pos, input, mode, resources_id, metadata,"
                " create_time, config) VALUES (?1, ?2, 'queued', 'queuing', ?1, ?3, ?4, ?5, ?6, ?7, ?8)",
                (
                    (first + index, r.rollout_id, r.input, r.mode, r.resources_id, r.metadata, now, r.config)
                    for index, r in enumerate(rows)
                ),
            )
            self._queue_pos = first + len(rows) - 1
        return [rollout_shape(row, self._legacy_config_json) for row in rows]

    def start_rollout(self, request: StartRolloutBody) -> dict[str, object]:
        """A rollout that starts at once, outside the queue, with its first attempt."""
        now = self.clock()
        with self._write() as conn:
            row = self._new_rollout_row(request, self._latest_resources_id(conn), now)
            conn.execute(
                "INSERT INTO tasks (id, rollout_id, status, phase, input, mode, resources_id, metadata,"
                " create_time, config) VALUES (?, ?, 'claimed', 'preparing', ?, ?, ?, ?, ?, ?)",
                (
                    self._next_pos(),
                    row.rollout_id,
                    row.input,
                    row.mode,
                    row.resources_id,
                    row.metadata,
                    now,
                    row.config,
                ),
            )
            row, attempt = self._start_attempt(conn, row, request.worker_id, now)
            self._sync_worker(conn, attempt, now)
        return self._attempted_shape(row, attempt)

    def _new_rollout_row(
        self, request: EnqueueRequest, latest_resources_id: str | None, now: float
    ) -> TaskRow:
        """A new store-API rollout, queuing: its resources default to the latest, its config
        to the store API's default (no timeouts, one attempt)."""
        return TaskRow(
            rollout_id=new_store_rollout_id(),
            status="queued",
            deadline=None,
            input=orjson.dumps(request.input).decode(),
            mode=request.mode,
            resources_id=request.resources_id if request.resources_id is not None else latest_resources_id,
            metadata=orjson.dumps(request.metadata or {}).decode(),
            create_time=now,
            last_claim_time=None,
            num_claims=0,
            completed_time=None,
            duplicates=0,
            phase="queuing",
            config=(request.config or RolloutConfig()).model_dump_json(),
            end_time=None,
        )

    def _latest_resources_id(self, conn: sqlite3.Connection) -> str | None:
        found = conn.execute(
            "SELECT resources_id FROM resources ORDER BY publish_seq DESC LIMIT 1"
        ).fetchone()
        return found[0] if found else None

    def dequeue_rollouts(self, limit: int, worker_id: str | None) -> list[dict[str, object]]:
        """Hand out up to `limit` rollouts from the head of the queue, each as a new attempt."""
        handed: list[dict[str, object]] = []
        with self._write(durable=False) as conn:
            now = self.clock()
            attempt = None
            while len(handed) < limit:
                claimed = self._claim_head(conn, worker_id)
                if claimed is None:
                    break
                row, attempt = claimed
                handed.append(self._attempted_shape(row, attempt))
            if attempt is not None:
                self._sync_worker(conn, attempt, now, dequeued=True)
            elif worker_id:
                self._worker_found_nothing(conn, worker_id, now)
        return handed

    def _worker_found_nothing(self, conn: sqlite3.Connection, worker_id: str, now: float) -> None:
        conn.execute(
            "INSERT INTO workers (worker_id, status, last_idle_time, last_dequeue_time) VALUES (?1, 'idle', ?2, ?2)"
            " ON CONFLICT (worker_id) DO UPDATE SET last_dequeue_time = ?2,"
            " last_idle_time = CASE WHEN status = 'idle' THEN last_idle_time ELSE ?2 END, status = 'idle'",
            (worker_id, now),
        )

    def start_attempt(self, rollout_id: str, worker_id: str | None) -> dict[str, object]:
        """A new attempt at a rollout, whatever its state (the caller's decision, as in 0.3.0)."""
        now = self.clock()
        with self._write() as conn:
            row = self._rollout_row(conn, rollout_id)
            row, attempt = self._start_attempt(conn, row, worker_id, now)
            self._sync_worker(conn, attempt, now)
        return self._attempted_shape(row, attempt)

    def update_rollout(self, rollout_id: str, changes: Mapping[str, Any]) -> dict[str, object]:
        """Change the fields given; a new status takes the rollout there (a queuing one goes
        to the end of the queue, a finished one ends), with nothing checked, as in 0.3.0."""
        now = self.clock()
        with self._write() as conn:
            row = self._rollout_row(conn, rollout_id)
            fields: dict[str, Any] = {}
            for name in ("input", "metadata"):
                if name in changes:
                    fields[name] = orjson.dumps(changes[name]).decode()
            for name in ("mode", "resources_id"):
                if name in changes:
                    fields[name] = changes[name]
            if "config" in changes:
                fields["config"] = RolloutConfig.model_validate(changes["config"]).model_dump_json()
            if fields:
                assignments = ", ".join(f"{name} = ?" for name in fields)
                conn.execute(
                    f"UPDATE tasks SET {assignments} WHERE rollout_id = ?", (*fields.values(), rollout_id)
                )
                row = row._replace(**fields)
            if "status" in changes:
                attempt = self._attempt(conn, rollout_id, row.num_claims)
                row = self._set_phase(conn, row, changes["status"], now, attempt)
            elif "config" in changes and row.status == "claimed":
                self._follow_latest_attempt(conn, row, self._latest_attempt_of(conn, row), now)
        return rollout_shape(row, self._legacy_config_json)

    def update_attempt(
        self, rollout_id: str, attempt_id: str, changes: Mapping[str, Any]
    ) -> dict[str, object]:
        """Change an attempt (`latest` names the latest); see `_change_attempt`."""
        now = self.clock()
        with self._write() as conn:
            row = self._rollout_row(conn, rollout_id)
            attempt = self._named_attempt(conn, row, attempt_id)
            attempt = self._change_attempt(conn, row, attempt, changes, now)
        return attempt_shape(attempt)

    def _rollout_row(self, conn: sqlite3.Connection, rollout_id: str) -> TaskRow:
        values = self._task_row(conn, TASK_COLUMNS, rollout_id)
        if values is None:
            raise UnknownRolloutError(rollout_id)
        return TaskRow._make(values)

    def _latest_attempt_of(self, conn: sqlite3.Connection, row: TaskRow) -> AttemptRow:
        attempt = self._attempt(conn, row.rollout_id, row.num_claims)
        if attempt is None:
            raise UnknownAttemptError(row.rollout_id, None)
        return attempt

    def _named_attempt(self, conn: sqlite3.Connection, row: TaskRow, attempt_id: str) -> AttemptRow:
        """The attempt of that id, or the latest for `latest`; a rollout without attempts has neither."""
        latest = self._latest_attempt_of(conn, row)
        if attempt_id in ("latest", latest.attempt_id):
            return latest
        return self._attempt_by_id(conn, row, attempt_id)

    def _attempt_by_id(self, conn: sqlite3.Connection, row: TaskRow, attempt_id: str) -> AttemptRow:
        values = conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
            (row.rollout_id, attempt_id),
        ).fetchone()
        if values is None:
            raise UnknownAttemptError(row.rollout_id, attempt_id)
        return AttemptRow._make(values)

    def _attempted_shape(self, row: TaskRow, attempt: AttemptRow | None) -> dict[str, object]:
        shape = rollout_shape(row, self._legacy_config_json)
        if attempt is not None:
            shape["attempt"] = attempt_shape(attempt)
        return shape

    def get_rollout_shape(self, rollout_id: str) -> dict[str, object] | None:
        """A rollout with its latest attempt (if it has one), or None."""
        with self.snapshot():
            rows = self._read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE rollout_id = ?", (rollout_id,))
            if not rows:
                rows = self._read(
                    f"SELECT {TASK_COLUMNS} FROM ({STAGED_TASKS}) WHERE rollout_id = ?", (rollout_id,)
                )
            if not rows:
                return None
            row = TaskRow._make(rows[0])
            found = self._read(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? AND sequence_id = ?",
                (rollout_id, row.num_claims),
            )
        return self._attempted_shape(row, AttemptRow._make(found[0]) if found else None)

    def finished_rollouts(self, rollout_ids: Sequence[str]) -> tuple[list[dict[str, object]], int]:
        """Those of the rollouts that have finished, in the order asked (an id asked twice
        answers twice, as in 0.3.0), and how many known ones have not."""
        unique = list(dict.fromkeys(rollout_ids))
        found: dict[str, dict[str, object]] = {}
        unfinished = 0
        with self.snapshot():
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for values in self._read(
                    f"SELECT {TASK_COLUMNS} FROM tasks WHERE rollout_id IN ({marks})", chunk
                ):
                    row = TaskRow._make(values)
                    if row.phase in FINISHED:
                        found[row.rollout_id] = rollout_shape(row, self._legacy_config_json)
                    else:
                        unfinished += 1
        return [found[rollout_id] for rollout_id in rollout_ids if rollout_id in found], unfinished

    def query_rollouts(self, query: RolloutQuery) -> dict[str, object]:
        where = Where(query.filter_logic).within("t.phase", query.status_in)
        where.within("t.rollout_id", query.rollout_id_in).contains("t.rollout_id", query.rollout_id_contains)
        clause, params = where.sql()
        order = order_by(query.sort_by, query.sort_order, ROLLOUT_SORT_COLUMNS, "t.id")
        limit, limit_params = page(query.limit, query.offset)
        with self.snapshot():
            source = "tasks"
            if self._read("SELECT 1 FROM batches WHERE committed_time IS NOT NULL LIMIT 1"):
                source = f"(SELECT id, {TASK_COLUMNS} FROM tasks UNION ALL {STAGED_TASKS})"
            [(total,)] = self._read(f"SELECT count(*) FROM {source} t{clause}", params)
            found = self._read(
                f"SELECT {_prefixed('t', TaskRow)}, {_prefixed('a', AttemptRow)} FROM {source} t"
                " LEFT JOIN attempts a ON a.rollout_id = t.rollout_id AND a.sequence_id = t.num_claims"
                f"{clause}{order}{limit}",
                [*params, *limit_params],
            )
        width = len(TaskRow._fields)
        items = [
            self._attempted_shape(
                TaskRow._make(values[:width]),
                AttemptRow._make(values[width:]) if values[width] is not None else None,
            )
            for values in found
        ]
        return {"items": items, "limit": query.limit, "offset": query.offset, "total": total}

    def query_attempts(self, rollout_id: str, query: AttemptQuery) -> dict[str, object]:
        where = Where().require("rollout_id = ?", rollout_id)
        return self._page(
            "attempts", ATTEMPT_COLUMNS, where, query, ATTEMPT_SORT_COLUMNS, "sequence_id",
            lambda values: attempt_shape(AttemptRow._make(values)),
        )  # fmt: skip

    def latest_attempt(self, rollout_id: str) -> dict[str, object] | None:
        found = self._read(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? ORDER BY sequence_id DESC LIMIT 1",
            (rollout_id,),
        )
        return attempt_shape(AttemptRow._make(found[0])) if found else None

    def _page(
        self,
        table: str,
        columns: str,
        where: Where,
        query: PageQuery,
        sort_columns: Mapping[str, str],
        insertion: str,
        shape: Callable[[Any], object],
    ) -> dict[str, object]:
        """One page of a table's rows that match, with the count of all that do."""
        clause, params = where.sql()
        order = order_by(query.sort_by, query.sort_order, sort_columns, insertion)
        limit, limit_params = page(query.limit, query.offset)
        with self.snapshot():
            [(total,)] = self._read(f"SELECT count(*) FROM {table}{clause}", params)
            found = self._read(
                f"SELECT {columns} FROM {table}{clause}{order}{limit}", [*params, *limit_params]
            )
        return {
            "items": [shape(values) for values in found],
            "limit": query.limit,
            "offset": query.offset,
            "total": total,
        }

    # the store API: spans -------------------------------------------------------------------

    def next_span_sequence_ids(self, rollout_ids: Sequence[str]) -> list[int]:
        """Fresh sequence numbers, one per id asked, counting up per rollout (any id: 0.3.0
        checks none)."""
        with self._write() as conn:
            return self._issue_sequence_ids(conn, rollout_ids)

    def _issue_sequence_ids(self, conn: sqlite3.Connection, rollout_ids: Sequence[str]) -> list[int]:
        wanted: dict[str, int] = {}
        for rollout_id in rollout_ids:
            wanted[rollout_id] = wanted.get(rollout_id, 0) + 1
        after: dict[str, int] = {}
        for rollout_id, count in wanted.items():
            [(last,)] = conn.execute(
                "INSERT INTO span_sequences VALUES (?1, ?2) ON CONFLICT (rollout_id) DO UPDATE SET last = last + ?2"
                " RETURNING last",
                (rollout_id, count),
            ).fetchall()
            after[rollout_id] = last - count
        issued = []
        for rollout_id in rollout_ids:
            after[rollout_id] += 1
            issued.append(after[rollout_id])
        return issued

    def add_spans(self, spans: Sequence[Span], from_otlp: bool = False) -> SpansAdded:
        """Keep spans (one already kept for its rollout, attempt and span id is not kept
        again: its place in the answer is None). Each one is a sign of life from its attempt.

        From an OTLP export, a span numbered below 0 gets the next sequence number of its
        rollout, and spans of an unknown rollout or attempt are refused and counted (the
        others are kept); otherwise one of those fails the whole call.
        """
        now = self.clock()
        added = SpansAdded()
        with self._write() as conn:
            if from_otlp:
                unnumbered = [span for span in spans if span.sequence_id < 0]
                for span, number in zip(
                    unnumbered,
                    self._issue_sequence_ids(conn, [s.rollout_id for s in unnumbered]),
                    strict=True,
                ):
                    span.sequence_id = number
            groups: dict[tuple[str, str], list[Span]] = {}
            for span in spans:
                groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
            kept: dict[int, Span | None] = {}
            for (rollout_id, attempt_id), group in groups.items():
                conn.execute(
                    "INSERT INTO span_sequences VALUES (?1, ?2) ON CONFLICT (rollout_id)"
                    " DO UPDATE SET last = max(last, ?2)",
                    (rollout_id, max(span.sequence_id for span in group)),
                )
                try:
                    row = self._rollout_row(conn, rollout_id)
                    attempt = self._attempt_by_id(conn, row, attempt_id)
                except (UnknownRolloutError, UnknownAttemptError) as exc:
                    if not from_otlp:
                        raise
                    added.rejected += len(group)
                    added.reason = str(exc)
                    continue
                any_kept = False
                for span in group:
                    inserted = conn.execute(
                        "INSERT INTO spans (rollout_id, attempt_id, span_id, sequence_id, trace_id, parent_id, name,"
                        " start_time, end_time, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (rollout_id, attempt_id, span_id) DO NOTHING",
                        (
                            rollout_id,
                            attempt_id,
                            span.span_id,
                            span.sequence_id,
                            span.trace_id,
                            span.parent_id,
                            span.name,
                            span.start_time,
                            span.end_time,
                            span.model_dump_json(),
                        ),
                    ).rowcount
                    kept[id(span)] = span if inserted else None
                    any_kept = any_kept or bool(inserted)
                if any_kept:
                    self._heartbeat(conn, row, attempt, now)
        added.spans = [kept.get(id(span)) for span in spans]
        return added

    def query_spans(self, query: SpanQuery) -> dict[str, object]:
        where = Where(query.filter_logic).require("rollout_id = ?", query.rollout_id)
        if query.attempt_id == "latest":
            latest = self.latest_attempt(query.rollout_id)
            if latest is None:
                return {"items": [], "limit": query.limit, "offset": query.offset, "total": 0}
            where.require("attempt_id = ?", latest["attempt_id"])
        elif query.attempt_id is not None:
            where.require("attempt_id = ?", query.attempt_id)
        for column in ("trace_id", "span_id", "parent_id", "name"):
            where.equals(column, getattr(query, column)).contains(
                column, getattr(query, f"{column}_contains")
            )
        return self._page(
            "spans", "body", where, query, SPAN_SORT_COLUMNS, "id", lambda values: orjson.Fragment(values[0])
        )

    # the store API: workers and the whole ---------------------------------------------------

    def heartbeat_worker(self, worker_id: str, stats: Mapping[str, Any] | None = None) -> dict[str, object]:
        """A worker says it is alive (with what it says about itself, if anything)."""
        now = self.clock()
        stats_json = None if stats is None else orjson.dumps(stats).decode()
        with self._write(durable=False) as conn:
            conn.execute(
                "INSERT INTO workers (worker_id, last_heartbeat_time, heartbeat_stats) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (worker_id) DO UPDATE SET last_heartbeat_time = ?2,"
                " heartbeat_stats = coalesce(?3, heartbeat_stats)",
                (worker_id, now, stats_json),
            )
            values = conn.execute(
                f"SELECT {WORKER_COLUMNS} FROM workers WHERE worker_id = ?", (worker_id,)
            ).fetchone()
        return worker_shape(WorkerRow._make(values))

    def get_worker(self, worker_id: str) -> dict[str, object] | None:
        found = self._read(f"SELECT {WORKER_COLUMNS} FROM workers WHERE worker_id = ?", (worker_id,))
        return worker_shape(WorkerRow._make(found[0])) if found else None

    def query_workers(self, query: WorkerQuery) -> dict[str, object]:
        where = Where(query.filter_logic).within("status", query.status_in)
        where.contains("worker_id", query.worker_id_contains)
        return self._page(
            "workers", WORKER_COLUMNS, where, query, WORKER_SORT_COLUMNS, "id",
            lambda values: worker_shape(WorkerRow._make(values)),
        )  # fmt: skip

    def query_resources(self, query: ResourcesQuery) -> dict[str, object]:
        where = Where().equals("resources_id", query.resources_id)
        where.contains("resources_id", query.resources_id_contains)
        return self._page(
            "resources", RESOURCES_COLUMNS, where, query, RESOURCES_SORT_COLUMNS, "rowid",
            lambda values: resources_shape(ResourcesRow._make(values)),
        )  # fmt: skip

    def statistics(self) -> dict[str, object]:
        with self.snapshot():
            [(rollouts, attempts, spans, resources, workers)] = self._read(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM attempts), (SELECT count(*) FROM spans),"
                " (SELECT count(*) FROM resources), (SELECT count(*) FROM workers)"
            )
            [(staged,)] = self._read(f"SELECT count(*) FROM ({STAGED_TASKS})")
        return {
            "name": type(self).__name__,
            "total_rollouts": rollouts + staged,
            "total_attempts": attempts,
            "total_spans": spans,
            "total_resources": resources,
            "total_workers": workers,
            "uptime": self.clock() - self._opened,
        }

    def close(self) -> None:
        with self._lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
            self._conn.execute("PRAGMA optimize")
            self._conn.close()


class _Drain(NamedTuple):
    """A committed batch being moved into `tasks`: its tasks' places start after `base_pos`."""

    key: int
    base_pos: int
    committed_time: float


class _Group:
    """The open transaction: the thread that holds it, whether each write runs in a
    savepoint, and whether its commit must be synced."""

    __slots__ = ("durable", "isolate_writes", "owner")

    def __init__(self, owner: int, isolate_writes: bool) -> None:
        self.owner = owner
        self.isolate_writes = isolate_writes
        self.durable = False


def _prefixed(alias: str, row: type[tuple[Any, ...]]) -> str:
    """The columns of a row type, each named through a table alias."""
    return ", ".join(f"{alias}.{name}" for name in row._fields)  # type: ignore[attr-defined]
