"""The default store: one SQLite file, so that a `kill -9` loses nothing answered.

It is made in eight layers, a module each, every one on the one before: `database.py`
(the file, its connections and transactions), `batches.py` (the queue's places, and
batches staged apart), `resources.py` (the published bundles), `tasks.py` (the queue and
the life cycle of claims and attempts), `results.py` (legacy reports and the sequence of
results), `retention.py` (what ages out), `views.py` (what the dashboard reads: pages and
aggregates) and this one, the store API's view of the same tables (rollouts, attempts,
spans, workers) and the store as a whole.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from typing import Any

import orjson

from agl_cli.store.batches import StagedRow
from agl_cli.store.errors import UnknownAttemptError, UnknownRolloutError
from agl_cli.store.ids import new_store_rollout_id
from agl_cli.store.lifecycle import FINISHED, TASK_STATUS
from agl_cli.store.paging import Where, order_by, page
from agl_cli.store.records import QueryPage, SpansAdded
from agl_cli.store.rows import (
    ATTEMPT_COLUMNS,
    ATTEMPT_SORT_COLUMNS,
    RESOURCES_COLUMNS,
    RESOURCES_SORT_COLUMNS,
    ROLLOUT_SORT_COLUMNS,
    SPAN_SORT_COLUMNS,
    STAGED_TASKS,
    TASK_COLUMNS,
    TASK_ID,
    WORKER_COLUMNS,
    WORKER_SORT_COLUMNS,
    AttemptRow,
    ResourcesRow,
    TaskRow,
    WorkerRow,
    attempt_shape,
    prefixed,
    resources_shape,
    rollout_shape,
    worker_shape,
)
from agl_cli.store.views import Views
from agl_cli.store_models import (
    AttemptQuery,
    EnqueueRequest,
    PageQuery,
    ResourcesQuery,
    RolloutConfig,
    RolloutQuery,
    Span,
    SpanQuery,
    StartRolloutBody,
    WorkerQuery,
)

QUERY_CHUNK = 500  # rows of a store-API page read and shaped at a time
TASK_WIDTH = len(TaskRow._fields)  # where a task's columns end in a row of a task and its attempt


def _shaped(rows: sqlite3.Cursor, shape: Callable[[Any], object]) -> Iterator[list[object]]:
    while found := rows.fetchmany(QUERY_CHUNK):
        yield [shape(values) for values in found]


class SQLiteStore(Views):
    """All of agl's state in one SQLite file."""

    kind = "sqlite"
    blocking = True

    # the store API: rollouts ---------------------------------------------------------------

    def enqueue_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[dict[str, object]]:
        with self._write() as conn:
            latest = self._latest_resources_id(conn)
            rows = [
                self._new_rollout_row(request, latest, now)
                for request, now in zip(requests, self._moments(len(requests)), strict=True)
            ]
            first = self._queue_pos + 1
            conn.executemany(
                "INSERT INTO tasks (id, rollout_id, status, phase, queue_pos, input, mode, resources_id, metadata,"
                " create_time, config) VALUES (?, ?, 'queued', 'queuing', ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        first + index,
                        r.rollout_id,
                        first + index,
                        r.input,
                        r.mode,
                        r.resources_id,
                        r.metadata,
                        r.create_time,
                        r.config,
                    )
                    for index, r in enumerate(rows)
                ),
            )
            self._queue_pos = first + len(rows) - 1
        return [rollout_shape(row, self._legacy_config_json) for row in rows]

    def stage_rollouts(
        self, batch_id: str, requests: Sequence[EnqueueRequest], after: float | None
    ) -> list[dict[str, object]]:
        """Stage a part of an enqueue too large to write at once (`enqueue_rollouts`, one
        transaction, holds every claim while it lasts); its rollouts start after `after`,
        the last start time of the part before."""
        with self._write(durable=False) as conn:
            latest = self._latest_resources_id(conn)
            rows = [
                self._new_rollout_row(request, latest, now)
                for request, now in zip(requests, self._moments(len(requests), after), strict=True)
            ]
            self._stage(
                conn,
                batch_id,
                [
                    StagedRow(
                        r.rollout_id, r.input, r.mode, r.resources_id, r.metadata, r.config, r.create_time
                    )
                    for r in rows
                ],
            )
        return [rollout_shape(row, self._legacy_config_json) for row in rows]

    def _moments(self, count: int, after: float | None = None) -> list[float]:
        """A start time for each rollout of a batch, each after the one before: 0.3.0 reads
        the clock as it makes each one, so its newest-first lists show a batch last first."""
        moments: list[float] = []
        last = after
        for _ in range(count):
            now = self.clock()
            last = now if last is None or now > last else math.nextafter(last, math.inf)
            moments.append(last)
        return moments

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
            "INSERT INTO workers (worker_id, status, last_idle_time, last_dequeue_time) VALUES (?, 'idle', ?, ?)"
            " ON CONFLICT (worker_id) DO UPDATE SET last_dequeue_time = excluded.last_dequeue_time,"
            " last_idle_time = CASE WHEN status = 'idle' THEN last_idle_time ELSE excluded.last_idle_time END,"
            " status = 'idle'",
            (worker_id, now, now),
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
        to the end of the queue, a finished one ends), with nothing checked, as in 0.3.0. A
        new config moves a claim's deadline and nothing else."""
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
                self._refresh_deadline(conn, row, self._attempt(conn, rollout_id, row.num_claims))
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
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task = {TASK_ID} AND attempt_id = ?",
            (row.rollout_id, attempt_id),
        ).fetchone()
        if values is None:
            raise UnknownAttemptError(row.rollout_id, attempt_id)
        return AttemptRow._make(values)

    def _attempt_known(self, conn: sqlite3.Connection, rollout_id: str, attempt_id: str) -> bool:
        try:
            self._attempt_by_id(conn, self._rollout_row(conn, rollout_id), attempt_id)
        except (UnknownRolloutError, UnknownAttemptError):
            return False
        return True

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
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task = {TASK_ID} AND sequence_id = ?",
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

    @contextmanager
    def query_rollouts(self, query: RolloutQuery) -> Iterator[QueryPage]:
        statuses = sorted({TASK_STATUS[phase].value for phase in query.status_in or ()})
        where = Where(query.filter_logic).within_implied("t.phase", query.status_in, "t.status", statuses)
        where.within("t.rollout_id", query.rollout_id_in).contains("t.rollout_id", query.rollout_id_contains)
        clause, params = where.sql()
        order = order_by(query.sort_by, query.sort_order, ROLLOUT_SORT_COLUMNS, "t.id")
        limit, limit_params = page(query.limit, query.offset)
        with self.snapshot():
            source = "tasks"
            if self._read("SELECT 1 FROM batches WHERE committed_time IS NOT NULL LIMIT 1"):
                source = f"(SELECT id, {TASK_COLUMNS} FROM tasks UNION ALL {STAGED_TASKS})"
            [(total,)] = self._read(f"SELECT count(*) FROM {source} t{clause}", params)
            found = self._rows(
                f"SELECT {prefixed('t', TaskRow)}, {prefixed('a', AttemptRow)} FROM {source} t"
                " LEFT JOIN attempts a ON a.task = t.id AND a.sequence_id = t.num_claims"
                f"{clause}{order}{limit}",
                [*params, *limit_params],
            )
            with closing(found):  # a page left before its end holds no snapshot
                yield QueryPage(query.limit, query.offset, total, _shaped(found, self._attempted_row_shape))

    def _attempted_row_shape(self, values: Sequence[Any]) -> dict[str, object]:
        """A rollout's shape from a row of its task's columns then its attempt's (NULLs if none)."""
        attempt = AttemptRow._make(values[TASK_WIDTH:]) if values[TASK_WIDTH] is not None else None
        return self._attempted_shape(TaskRow._make(values[:TASK_WIDTH]), attempt)

    def query_attempts(self, rollout_id: str, query: AttemptQuery) -> AbstractContextManager[QueryPage]:
        where = Where().require(f"task = {TASK_ID}", rollout_id)
        return self._page(
            "attempts", ATTEMPT_COLUMNS, where, query, ATTEMPT_SORT_COLUMNS, "sequence_id",
            lambda values: attempt_shape(AttemptRow._make(values)),
        )  # fmt: skip

    def latest_attempt(self, rollout_id: str) -> dict[str, object] | None:
        found = self._read(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task = {TASK_ID} ORDER BY sequence_id DESC LIMIT 1",
            (rollout_id,),
        )
        return attempt_shape(AttemptRow._make(found[0])) if found else None

    @contextmanager
    def _page(
        self,
        table: str,
        columns: str,
        where: Where,
        query: PageQuery,
        sort_columns: Mapping[str, str],
        insertion: str,
        shape: Callable[[Any], object],
    ) -> Iterator[QueryPage]:
        """One page of a table's rows that match, with the count of all that do."""
        clause, params = where.sql()
        order = order_by(query.sort_by, query.sort_order, sort_columns, insertion)
        limit, limit_params = page(query.limit, query.offset)
        with self.snapshot():
            [(total,)] = self._read(f"SELECT count(*) FROM {table}{clause}", params)
            found = self._rows(
                f"SELECT {columns} FROM {table}{clause}{order}{limit}", [*params, *limit_params]
            )
            with closing(found):
                yield QueryPage(query.limit, query.offset, total, _shaped(found, shape))

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
                "INSERT INTO span_sequences VALUES (?, ?) ON CONFLICT (rollout_id) DO UPDATE SET last = last + excluded.last"
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
        groups: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        with self._write() as conn:
            if from_otlp:  # numbered in the export's order; a refused span takes no number
                placed = {key for key in groups if self._attempt_known(conn, *key)}
                unnumbered = [
                    s for s in spans if s.sequence_id < 0 and (s.rollout_id, s.attempt_id) in placed
                ]
                for span, number in zip(
                    unnumbered,
                    self._issue_sequence_ids(conn, [s.rollout_id for s in unnumbered]),
                    strict=True,
                ):
                    span.sequence_id = number
            kept: dict[int, Span | None] = {}
            for (rollout_id, attempt_id), group in groups.items():
                try:
                    row = self._rollout_row(conn, rollout_id)
                    attempt = self._attempt_by_id(conn, row, attempt_id)
                except (UnknownRolloutError, UnknownAttemptError) as exc:
                    if not from_otlp:
                        raise
                    added.rejected += len(group)
                    added.reason = str(exc)
                    continue
                conn.execute(
                    "INSERT INTO span_sequences VALUES (?, ?) ON CONFLICT (rollout_id)"
                    " DO UPDATE SET last = max(last, excluded.last)",
                    (rollout_id, max(span.sequence_id for span in group)),
                )
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

    def query_spans(self, query: SpanQuery) -> AbstractContextManager[QueryPage]:
        where = Where(query.filter_logic).require("rollout_id = ?", query.rollout_id)
        if query.attempt_id == "latest":
            latest = self.latest_attempt(query.rollout_id)
            if latest is None:
                return nullcontext(QueryPage(query.limit, query.offset, 0, ()))
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
                "INSERT INTO workers (worker_id, last_heartbeat_time, heartbeat_stats) VALUES (?, ?, ?)"
                " ON CONFLICT (worker_id) DO UPDATE SET last_heartbeat_time = excluded.last_heartbeat_time,"
                " heartbeat_stats = coalesce(excluded.heartbeat_stats, heartbeat_stats)",
                (worker_id, now, stats_json),
            )
            values = conn.execute(
                f"SELECT {WORKER_COLUMNS} FROM workers WHERE worker_id = ?", (worker_id,)
            ).fetchone()
        return worker_shape(WorkerRow._make(values))

    def get_worker(self, worker_id: str) -> dict[str, object] | None:
        found = self._read(f"SELECT {WORKER_COLUMNS} FROM workers WHERE worker_id = ?", (worker_id,))
        return worker_shape(WorkerRow._make(found[0])) if found else None

    def query_workers(self, query: WorkerQuery) -> AbstractContextManager[QueryPage]:
        where = Where(query.filter_logic).within("status", query.status_in)
        where.contains("worker_id", query.worker_id_contains)
        return self._page(
            "workers", WORKER_COLUMNS, where, query, WORKER_SORT_COLUMNS, "id",
            lambda values: worker_shape(WorkerRow._make(values)),
        )  # fmt: skip

    def query_resources(self, query: ResourcesQuery) -> AbstractContextManager[QueryPage]:
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
