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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from agl_cli.models import ResourcesUpdate, Rollout, Task, TaskStatus
from agl_cli.store.base import (
    Claim,
    Commit,
    ReportOutcome,
    Store,
    StoreCounts,
    StoredRollout,
    StoreError,
    TaskRecord,
    TaskSpec,
    UnknownBatchError,
    UnknownTaskError,
    check_cancellable,
    check_resources_id,
    new_batch_id,
    new_resources_id,
    new_rollout_ids,
    outcome_of_report,
    status_after_timeout,
    validate_resources,
)

APPLICATION_ID = 0x41474C31  # "AGL1"
SCHEMA_VERSION = 3
EXPIRE_BATCH = 500
DRAIN_CHUNK = 1_000  # staged tasks moved into place per step: ~5 ms of writing
CLAIM_DRAIN = 64  # moved at once when a claim reaches a batch's tasks before the steps do
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

SCHEMA = """
CREATE TABLE tasks (
    id              INTEGER PRIMARY KEY,
    rollout_id      TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    queue_pos       INTEGER,
    deadline        REAL,
    input           TEXT NOT NULL,
    mode            TEXT,
    resources_id    TEXT,
    metadata        TEXT NOT NULL,
    create_time     REAL NOT NULL,
    last_claim_time REAL,
    num_claims      INTEGER NOT NULL DEFAULT 0,
    completed_time  REAL,
    duplicates      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_queue ON tasks(queue_pos) WHERE status = 'queued';
CREATE INDEX tasks_deadline ON tasks(deadline) WHERE status = 'claimed';
CREATE INDEX tasks_status ON tasks(status, id);

CREATE TABLE rollouts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id    TEXT NOT NULL UNIQUE,
    received_time REAL NOT NULL,
    attempt       INTEGER,
    unsolicited   INTEGER NOT NULL,
    consumed      INTEGER NOT NULL DEFAULT 0,
    body          TEXT NOT NULL
);
CREATE INDEX rollouts_unconsumed ON rollouts(seq) WHERE consumed = 0;

CREATE TABLE resources (
    resources_id TEXT PRIMARY KEY,
    publish_seq  INTEGER NOT NULL UNIQUE,
    create_time  REAL NOT NULL,
    update_time  REAL NOT NULL,
    version      INTEGER NOT NULL,
    body         TEXT NOT NULL
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters VALUES ('duplicates', 0);
"""

# MIGRATIONS[v] takes a database from schema v - 1 to v; a new file starts at 1.
MIGRATIONS = {
    2: """
CREATE TABLE batches (
    id           INTEGER PRIMARY KEY,
    batch_id     TEXT NOT NULL UNIQUE,
    created_time REAL NOT NULL,
    staged       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE staging (
    batch        INTEGER NOT NULL,
    pos          INTEGER NOT NULL,
    rollout_id   TEXT NOT NULL,
    input        TEXT NOT NULL,
    mode         TEXT,
    resources_id TEXT,
    metadata     TEXT NOT NULL,
    PRIMARY KEY (batch, pos)
) WITHOUT ROWID;
CREATE INDEX rollouts_unsolicited ON rollouts(seq) WHERE unsolicited = 1;
""",
    3: """
ALTER TABLE batches ADD COLUMN committed_time REAL;
ALTER TABLE batches ADD COLUMN base_pos INTEGER;
""",
}


class NotAglDatabaseError(StoreError):
    pass


def open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating if new) an agl database, refusing files that are not agl's."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"Cannot open the database {path}: {exc}.") from None
    try:
        _prepare(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise NotAglDatabaseError(f"{path} is not an agl database ({exc}).") from None
        raise StoreError(f"Cannot use the database {path}: {exc}.") from None
    except StoreError:
        conn.close()
        raise
    return conn


def open_memory_connection() -> sqlite3.Connection:
    """An agl database that lives in memory, gone with its connection."""
    conn = _connect(":memory:")
    _prepare(conn, Path(":memory:"))
    return conn


def _connect(path: Path | str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    if has_tables and app_id != APPLICATION_ID:
        raise NotAglDatabaseError(f"{path} is not an agl database; refusing to use it.")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable writes sync the WAL themselves
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    if not has_tables:
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{SCHEMA}\n"
            f"PRAGMA application_id={APPLICATION_ID};\nPRAGMA user_version=1;\nCOMMIT;"
        )
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer agl (schema {version}); upgrade agl to use it.")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[target]}\nPRAGMA user_version={target};\nCOMMIT;")


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
                "SELECT max((SELECT coalesce(max(id), 0) FROM tasks), (SELECT coalesce(max(queue_pos), 0) FROM tasks),"
                " (SELECT coalesce(max(base_pos + staged), 0) FROM batches))"
            ).fetchone()
        self._queue_pos: int = last  # the last place in the queue handed out (and the last id)

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
            conn = self._readers.conn = _connect(self.path)
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

    # claims ------------------------------------------------------------------------------

    def claim_next(self) -> Task | None:
        claim = self.claim()
        return None if claim is None else Task.model_validate_json(claim.wire)

    def claim(self) -> Claim | None:
        with self._write(durable=False) as conn:
            self._expire(conn)
            if self._draining:
                self._move_head_of_queue(conn)
            values = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks INDEXED BY tasks_queue WHERE status = 'queued'"
                " ORDER BY queue_pos LIMIT 1"
            ).fetchone()
            if values is None:
                return None
            row = _TaskRow._make(values)
            now = self.clock()
            deadline = now + self.task_timeout
            conn.execute(
                "UPDATE tasks SET status = 'claimed', queue_pos = NULL, num_claims = num_claims + 1,"
                " last_claim_time = ?, deadline = ? WHERE rollout_id = ?",
                (now, deadline, row.rollout_id),
            )
            self._earliest_deadline = min(self._earliest_deadline, deadline)
        claimed = row._replace(num_claims=row.num_claims + 1, last_claim_time=now)
        return Claim(row.rollout_id, claimed.num_claims, _wire_task(claimed))

    def expire_claims(self) -> int:
        with self._write(durable=False) as conn:
            return self._expire(conn)

    def _expire(self, conn: sqlite3.Connection) -> int:
        """Put back (or fail) up to `EXPIRE_BATCH` claims whose deadline has passed.

        The earliest deadline is remembered, so that a claim costs no look for expired
        ones until that time; it is a lower bound (a reported task's deadline may linger
        there), so at worst one look finds nothing and learns the true earliest one.
        """
        now = self.clock()
        if self._earliest_deadline and now < self._earliest_deadline:
            return 0
        expired = conn.execute(
            "SELECT rollout_id, num_claims FROM tasks INDEXED BY tasks_deadline"
            " WHERE status = 'claimed' AND deadline <= ?"
            " ORDER BY deadline LIMIT ?",
            (now, EXPIRE_BATCH),
        ).fetchall()
        for rollout_id, num_claims in expired:
            status = status_after_timeout(num_claims, self.max_claims)
            position = None
            if status is TaskStatus.QUEUED:
                self._queue_pos += 1
                position = self._queue_pos
            conn.execute(
                "UPDATE tasks SET status = ?, queue_pos = ?, deadline = NULL WHERE rollout_id = ?",
                (status.value, position, rollout_id),
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
            rows = self._read(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE rollout_id = ?", (rollout_id,))
            if not rows:
                rows = self._read(
                    f"SELECT {_TASK_COLUMNS} FROM ({_STAGED_TASKS}) WHERE rollout_id = ?", (rollout_id,)
                )
        return _record_from_row(_TaskRow._make(rows[0])) if rows else None

    def list_tasks(
        self, status: TaskStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[TaskRecord]:
        where, params = ("", []) if status is None else (" WHERE status = ?", [status.value])
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks{where} ORDER BY id LIMIT ? OFFSET ?"
        with self.snapshot():
            if status in (None, TaskStatus.QUEUED) and self._read(
                "SELECT 1 FROM batches WHERE committed_time IS NOT NULL LIMIT 1"
            ):
                sql = (
                    f"SELECT {_TASK_COLUMNS} FROM (SELECT id, {_TASK_COLUMNS} FROM tasks{where}"
                    f" UNION ALL {_STAGED_TASKS}) ORDER BY id LIMIT ? OFFSET ?"
                )
            rows = self._read(sql, [*params, limit, offset])
        return [_record_from_row(_TaskRow._make(values)) for values in rows]

    def cancel_task(self, rollout_id: str) -> TaskRecord:
        with self._write() as conn:
            values = self._task_row(conn, _TASK_COLUMNS, rollout_id)
            if values is None:
                raise UnknownTaskError(rollout_id)
            row = _TaskRow._make(values)
            check_cancellable(rollout_id, TaskStatus(row.status))
            conn.execute(
                "UPDATE tasks SET status = 'cancelled', queue_pos = NULL, deadline = NULL WHERE rollout_id = ?",
                (rollout_id,),
            )
        record = _record_from_row(row)
        return TaskRecord(record.task, TaskStatus.CANCELLED, None, None, record.duplicates)

    # rollouts ----------------------------------------------------------------------------

    def record_rollout(self, rollout: Rollout, body: bytes | None = None) -> ReportOutcome:
        text = rollout.model_dump_json() if body is None else body.decode()
        rollout_id = rollout.rollout_id
        with self._write() as conn:
            task = self._task_row(conn, "status, num_claims", rollout_id)
            status, attempt = task if task else (None, None)
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
            if task:
                conn.execute(
                    "UPDATE tasks SET status = 'completed', queue_pos = NULL, deadline = NULL,"
                    " completed_time = ? WHERE rollout_id = ?",
                    (now, rollout_id),
                )
            conn.execute(
                "INSERT INTO rollouts (rollout_id, received_time, attempt, unsolicited, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (rollout_id, now, attempt, int(task is None), text),
            )
        return outcome

    def rollouts_after(self, seq: int, limit: int = 100) -> list[StoredRollout]:
        rows = self._read(
            f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [_stored_from_row(_RolloutRow._make(values)) for values in rows]

    def get_rollout(self, rollout_id: str) -> StoredRollout | None:
        rows = self._read(f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        return _stored_from_row(_RolloutRow._make(rows[0])) if rows else None

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
                "INSERT OR REPLACE INTO resources (resources_id, publish_seq, create_time, update_time, version, body)"
                " VALUES (?, (SELECT coalesce(max(publish_seq), 0) + 1 FROM resources), ?, ?, ?, ?)",
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
            f"SELECT {_RESOURCES_COLUMNS} FROM resources WHERE resources_id = ?", (resources_id,)
        )
        return _resources_from_row(_ResourcesRow._make(rows[0])) if rows else None

    def latest_resources(self) -> ResourcesUpdate | None:
        rows = self._read(f"SELECT {_RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq DESC LIMIT 1")
        return _resources_from_row(_ResourcesRow._make(rows[0])) if rows else None

    def list_resources(self) -> list[ResourcesUpdate]:
        rows = self._read(f"SELECT {_RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq")
        return [_resources_from_row(_ResourcesRow._make(values)) for values in rows]

    def counts(self) -> StoreCounts:
        with self.snapshot():
            return self._counts()

    def _counts(self) -> StoreCounts:
        counts = StoreCounts()
        for status, number in self._read("SELECT status, count(*) FROM tasks GROUP BY status"):
            counts.tasks[TaskStatus(status)] = number
        [(staged,)] = self._read(f"SELECT count(*) FROM ({_STAGED_TASKS})")
        counts.tasks[TaskStatus.QUEUED] += staged
        [(counts.rollouts, counts.unsolicited, counts.duplicates, counts.resources)] = self._read(
            "SELECT (SELECT count(*) FROM rollouts),"
            " (SELECT count(*) FROM rollouts INDEXED BY rollouts_unsolicited WHERE unsolicited = 1),"
            " (SELECT value FROM counters WHERE name = 'duplicates'),"
            " (SELECT count(*) FROM resources)"
        )
        return counts

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


# Rows as read by the queries that select `_X_COLUMNS`, which are made from these fields.


class _TaskRow(NamedTuple):
    rollout_id: str
    status: str
    deadline: float | None
    input: str
    mode: str | None
    resources_id: str | None
    metadata: str
    create_time: float
    last_claim_time: float | None
    num_claims: int
    completed_time: float | None
    duplicates: int


class _RolloutRow(NamedTuple):
    seq: int
    body: str
    received_time: float
    attempt: int | None
    unsolicited: int
    consumed: int


class _ResourcesRow(NamedTuple):
    resources_id: str
    create_time: float
    update_time: float
    version: int
    body: str


_TASK_COLUMNS = ", ".join(_TaskRow._fields)
# Tasks of committed batches still in `staging`, as rows of `tasks` will hold them (with `id`).
_STAGED_TASKS = (
    "SELECT b.base_pos + s.pos AS id, s.rollout_id AS rollout_id, 'queued' AS status, NULL AS deadline,"
    " s.input AS input, s.mode AS mode, s.resources_id AS resources_id, s.metadata AS metadata,"
    " b.committed_time AS create_time, NULL AS last_claim_time, 0 AS num_claims, NULL AS completed_time,"
    " 0 AS duplicates FROM staging s JOIN batches b ON b.id = s.batch WHERE b.committed_time IS NOT NULL"
)
MAX_POS = 2**62
_ROLLOUT_COLUMNS = ", ".join(_RolloutRow._fields)
_RESOURCES_COLUMNS = ", ".join(_ResourcesRow._fields)


def _task_from_row(row: _TaskRow) -> Task:
    return Task.model_construct(  # the row was valid when it was written
        rollout_id=row.rollout_id,
        input=orjson.loads(row.input),
        mode=row.mode,
        resources_id=row.resources_id,
        metadata=orjson.loads(row.metadata),
        create_time=row.create_time,
        last_claim_time=row.last_claim_time,
        num_claims=row.num_claims,
    )


def _wire_task(row: _TaskRow) -> bytes:
    """The task as `Task` dumps it, with input and metadata spliced in as they are stored
    (`tests/test_store.py` holds the two shapes together)."""
    return orjson.dumps(
        {
            "rollout_id": row.rollout_id,
            "input": orjson.Fragment(row.input),
            "mode": row.mode,
            "resources_id": row.resources_id,
            "create_time": row.create_time,
            "last_claim_time": row.last_claim_time,
            "num_claims": row.num_claims,
            "metadata": orjson.Fragment(row.metadata),
        }
    )


def _record_from_row(row: _TaskRow) -> TaskRecord:
    return TaskRecord(
        _task_from_row(row), TaskStatus(row.status), row.deadline, row.completed_time, row.duplicates
    )


def _stored_from_row(row: _RolloutRow) -> StoredRollout:
    return StoredRollout(
        seq=row.seq,
        rollout=Rollout.model_validate_json(row.body),
        received_time=row.received_time,
        attempt=row.attempt,
        unsolicited=bool(row.unsolicited),
        consumed=bool(row.consumed),
    )


def _resources_from_row(row: _ResourcesRow) -> ResourcesUpdate:
    return ResourcesUpdate(
        resources_id=row.resources_id,
        create_time=row.create_time,
        update_time=row.update_time,
        version=row.version,
        resources=orjson.loads(row.body)["resources"],
    )
