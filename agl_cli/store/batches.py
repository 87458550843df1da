"""The queue's places, and batches of tasks staged apart that take a run of them at once.

Every task has a place in the queue, handed out in order and never twice (a task's `id`
is its first place, so listings keep queue order with a batch's tasks in the middle).
A batch is staged in its own table. Committing one is a single small transaction that
marks it committed and reserves its run of places (`base_pos + pos`), so a million
staged tasks become queued at once, or not at all, without holding up other writes.
They are then moved into `tasks` a chunk at a time (`drain_step`, which the server runs
when it has had no write for a moment); until a task is moved, every read sees it where
it will be (claims move the head of the queue first, lookups by id look in `staging`
too, counts and listings add the rest). Staging writes are not synced: an uncommitted
batch does not survive a restart anyway, and the commit's sync covers what was staged
before it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from agl_cli.models import input_and_metadata_json
from agl_cli.store.base import NewTask
from agl_cli.store.database import Database
from agl_cli.store.errors import UnknownBatchError
from agl_cli.store.ids import new_batch_id, new_rollout_ids
from agl_cli.store.schema import PLACES_PER_BATCH

DRAIN_CHUNK = 1_000  # staged tasks moved into place per step: ~5 ms of writing
CLAIM_DRAIN = 64  # moved at once when a claim reaches a batch's tasks before the steps do
LAST_FORGOTTEN = "last_forgotten_task"  # a row of `counters`: the largest id retention deleted
FORGOTTEN = "forgotten_tasks"  # a row of `counters`: how many tasks retention deleted, ever

# A task of `agl queue` leaves `config` and `create_time` to their defaults (NULL): binding
# them costs as much as a short text each, a fifth of staging a task.
_STAGE_QUEUED = (
    "INSERT INTO staging (place, rollout_id, input, mode, resources_id, metadata) VALUES (?, ?, ?, ?, ?, ?)"
)
_STAGE_ENQUEUED = (
    "INSERT INTO staging (place, rollout_id, input, mode, resources_id, metadata, config, create_time)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class Batches(Database):
    """The last place in the queue handed out, and the batches staged, committed and being
    moved into place."""

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(path, **options)  # `max_size`: see Database
        # What the writer keeps in memory beside the database; `_relearn` after a rollback.
        self._draining: list[_Drain] = []  # committed batches not yet moved into `tasks`, oldest first
        self._batches_touched: dict[int, float] = {}  # uncommitted batches: when last staged to
        with self._write(durable=False) as conn:  # uncommitted batches never outlive the daemon
            # Dropped one by one, so nothing is written when there are none: a daemon restarted
            # on a full disk must start, serve reads and answer writes with 507, and even an
            # empty DELETE writes a page.
            for (key,) in conn.execute("SELECT id FROM batches WHERE committed_time IS NULL").fetchall():
                self._drop_batch(conn, key)
            [last] = conn.execute(
                "SELECT max((SELECT coalesce(max(id), 0) FROM tasks),"
                " (SELECT coalesce(max(queue_pos), 0) FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'),"
                " (SELECT coalesce(max(base_pos + staged), 0) FROM batches),"
                f" (SELECT coalesce(max(value), 0) FROM counters WHERE name = '{LAST_FORGOTTEN}'))"
            ).fetchone()
        self._queue_pos: int = last  # the last place in the queue handed out (and the last id)

    def _relearn(self) -> None:
        """Read the batches still to move and those still open again. (The last queue place
        handed out only grows; places an undone write took are simply left unused.)"""
        self._draining = [
            _Drain(*row)
            for row in self._conn.execute(
                "SELECT id, base_pos, committed_time FROM batches WHERE committed_time IS NOT NULL ORDER BY base_pos"
            ).fetchall()
        ]
        open_batches = {
            key for (key,) in self._conn.execute("SELECT id FROM batches WHERE committed_time IS NULL")
        }
        now = self.clock()
        self._batches_touched = {key: self._batches_touched.get(key, now) for key in open_batches}

    def create_batch(self) -> str:
        batch_id = new_batch_id()
        with self._write(durable=False) as conn:
            now = self.clock()
            key = conn.execute(
                "INSERT INTO batches (batch_id, created_time) VALUES (?, ?)", (batch_id, now)
            ).lastrowid
            self._batches_touched[int(key or 0)] = now
        return batch_id

    def stage_tasks(self, batch_id: str, specs: Sequence[NewTask]) -> list[str]:
        ids = new_rollout_ids(len(specs))
        with self._write(durable=False) as conn:
            first = self._make_room(conn, batch_id, len(specs))
            conn.executemany(
                _STAGE_QUEUED,
                [
                    (place, rollout_id, *task_columns(spec))
                    for place, (rollout_id, spec) in enumerate(zip(ids, specs, strict=True), first)
                ],
            )
        return ids

    def _stage(self, conn: sqlite3.Connection, batch_id: str, rows: Sequence[StagedRow]) -> None:
        """Add `rows` to the end of an open batch, inside a write."""
        first = self._make_room(conn, batch_id, len(rows))
        conn.executemany(_STAGE_ENQUEUED, [(place, *row) for place, row in enumerate(rows, first)])

    def _make_room(self, conn: sqlite3.Connection, batch_id: str, count: int) -> int:
        """Count `count` more tasks in an open batch, inside a write; the place of the first."""
        key, staged = self._batch(conn, batch_id)
        conn.execute("UPDATE batches SET staged = staged + ? WHERE id = ?", (count, key))
        self._batches_touched[key] = self.clock()
        return _places(key)[0] + staged + 1

    def batch_size(self, batch_id: str) -> int:
        with self._lock:
            return self._batch(self._conn, batch_id)[1]

    def commit_batch(self, batch_id: str) -> int:
        with self._write() as conn:
            key, staged = self._batch(conn, batch_id)
            self._batches_touched.pop(key, None)
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
        first, end = _places(drain.key)
        last = conn.execute(
            "SELECT place FROM staging WHERE place BETWEEN ? AND ? ORDER BY place LIMIT 1 OFFSET ?",
            (first, end, count - 1),
        ).fetchone()
        self._move_places(conn, drain, first, last[0] if last else end)
        if last is None:
            conn.execute("DELETE FROM batches WHERE id = ?", (drain.key,))
            self._draining.remove(drain)

    def _move_staged_task(self, conn: sqlite3.Connection, rollout_id: str) -> bool:
        """Move one committed task into place ahead of its batch, if it is still staged;
        True if it was.

        Only needed by a write that names a task fresh from a large batch; without an
        index on staged ids (which would make staging four times slower) it reads
        through the staged tasks."""
        found = conn.execute("SELECT place FROM staging WHERE rollout_id = ?", (rollout_id,)).fetchone()
        for drain in self._draining:
            if found is not None and found[0] // PLACES_PER_BATCH == drain.key:
                self._move_places(conn, drain, found[0], found[0])
                return True
        return False

    def _move_places(self, conn: sqlite3.Connection, drain: _Drain, low: int, high: int) -> None:
        """Move a committed batch's staged tasks from place `low` to `high` (in staging
        order) into `tasks`, each at the place in the queue the commit reserved for it."""
        shift = drain.base_pos - _places(drain.key)[0]  # from a place in `staging` to one in the queue
        moved = conn.execute(
            "INSERT INTO tasks"
            " (id, rollout_id, status, queue_pos, input, mode, resources_id, metadata, create_time, config)"
            " SELECT ? + place, rollout_id, 'queued', ? + place, input, mode, resources_id, metadata,"
            " coalesce(create_time, ?), config FROM staging WHERE place BETWEEN ? AND ? ORDER BY place",
            (shift, shift, drain.committed_time, low, high),
        ).rowcount
        conn.execute("UPDATE batches SET moved = moved + ? WHERE id = ?", (moved, drain.key))
        conn.execute("DELETE FROM staging WHERE place BETWEEN ? AND ?", (low, high))

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
            low, high = _places(drain.key)
            [first] = conn.execute(
                "SELECT min(place) - ? FROM staging WHERE place BETWEEN ? AND ?", (low, low, high)
            ).fetchone()
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
            self._batches_touched.pop(key, None)
        return staged

    def discard_idle_batches(self, idle_seconds: float) -> int:
        cutoff = self.clock() - idle_seconds
        idle = [key for key, touched in self._batches_touched.items() if touched < cutoff]
        if idle:
            with self._write(durable=False) as conn:
                for key in idle:
                    self._drop_batch(conn, key)
                    del self._batches_touched[key]
        return len(idle)

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
            conn.execute("DELETE FROM staging WHERE place BETWEEN ? AND ?", _places(key))
        else:  # without a WHERE, SQLite drops the table's pages at once instead of row by row
            conn.execute("DELETE FROM staging")
        conn.execute("DELETE FROM batches WHERE id = ?", (key,))

    def _next_pos(self) -> int:
        self._queue_pos += 1
        return self._queue_pos


def _places(key: int) -> tuple[int, int]:
    """The first and last place in `staging` of the batch whose key is `key`."""
    first = key * PLACES_PER_BATCH
    return first, first + PLACES_PER_BATCH - 1


class StagedRow(NamedTuple):
    """A task as `staging` holds it until its batch is moved into `tasks`."""

    rollout_id: str
    input: str
    mode: str | None
    resources_id: str | None
    metadata: str
    config: str | None = None  # None: the daemon's legacy policy
    create_time: float | None = None  # None: the batch's commit time


class _Drain(NamedTuple):
    """A committed batch being moved into `tasks`: its tasks' places start after `base_pos`."""

    key: int
    base_pos: int
    committed_time: float


def task_columns(spec: NewTask) -> tuple[str, str | None, str | None, str]:
    """A new task's columns `input`, `mode`, `resources_id` and `metadata`."""
    input_json, metadata_json = input_and_metadata_json(spec)
    return input_json, spec.mode, spec.resources_id, metadata_json
