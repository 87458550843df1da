"""The sequence of results: what legacy workers report (each joins the sequence once; a
second report is counted as a duplicate), read in order by watchers and consumed by
0.3.0's trainer. A store-API rollout that succeeds joins it too (`TaskStore._record_result`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from agl_cli.models import Rollout, TaskStatus
from agl_cli.store.lifecycle import TASK_STATUS, outcome_of_report
from agl_cli.store.records import Report, ReportOutcome, StoredRollout
from agl_cli.store.rows import ROLLOUT_BODY, ROLLOUT_WITH_TASK, rollout_from_body, stored_from_row
from agl_cli.store.tasks import TaskStore

INSERT_ROWS = 500  # rows of one multi-row INSERT: 7 values each, well within SQLite's 32,766


class Results(TaskStore):
    """Reports of legacy workers, and the results in the order they came."""

    def record_report(self, report: Report) -> ReportOutcome:
        rollout_id = report.rollout_id
        with self._write() as conn:
            found = self._task_row(conn, "status, num_claims, mode, id", rollout_id)
            status, attempt, task_mode, task = found if found else (None, None, None, None)
            outcome = outcome_of_report(TaskStatus(status) if status else None)
            if outcome is ReportOutcome.DUPLICATE:
                return _counted_as_duplicate(conn, rollout_id)
            now = self.clock()
            if task is not None and attempt is not None:  # both are, for a known task
                self._report_successes(conn, [(task, attempt)], now)
            # An unsolicited id reported before, or a task the store API brought back after
            # its result (0.3.0 lets an update do that): ended again, the first result kept.
            if conn.execute("SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone():
                return _counted_as_duplicate(conn, rollout_id)
            _insert_rollouts(conn, [_result_row(report, now, attempt, not found, task_mode)])
        return outcome

    def record_reports(self, reports: Sequence[Report]) -> list[ReportOutcome]:
        """The first report for each claimed task without a result (nearly every report)
        in four statements for them all, not four each; any other report after them, as
        `record_report` makes it (a second report for a task in the same group is then its
        duplicate)."""
        outcomes: list[ReportOutcome | None] = [None] * len(reports)
        with self._write() as conn:
            claimed: dict[str, tuple[int, int, str | None]] = {
                rollout_id: (task, num_claims, mode)
                for task, rollout_id, num_claims, mode in conn.execute(
                    "SELECT id, rollout_id, num_claims, mode FROM tasks WHERE +status = 'claimed'"
                    " AND rollout_id IN (SELECT value FROM json_each(?))"
                    " AND NOT EXISTS (SELECT 1 FROM rollouts WHERE rollouts.rollout_id = tasks.rollout_id)",
                    (orjson.dumps([report.rollout_id for report in reports]).decode(),),
                )
            }
            first: dict[str, int] = {}
            for index, report in enumerate(reports):
                if report.rollout_id in claimed:
                    first.setdefault(report.rollout_id, index)
            if first:
                now = self.clock()
                self._report_successes(conn, [claimed[rollout_id][:2] for rollout_id in first], now)
                rows = []
                for rollout_id, index in first.items():
                    _, sequence_id, task_mode = claimed[rollout_id]
                    rows.append(_result_row(reports[index], now, sequence_id, False, task_mode))
                    outcomes[index] = ReportOutcome.STORED
                _insert_rollouts(conn, rows)
        return [
            self.record_report(reports[index]) if outcome is None else outcome
            for index, outcome in enumerate(outcomes)
        ]

    def _report_successes(
        self, conn: sqlite3.Connection, attempts: list[tuple[int, int]], now: float
    ) -> None:
        """Workers' reports: the latest attempt at each task, (task id, sequence id),
        succeeded (whoever made it), and with it the task. `_set_phase` and
        `_change_attempt` in two statements for any number of tasks, for the hot path."""
        pairs = orjson.dumps(attempts).decode()
        ended = conn.execute(
            "UPDATE attempts SET status = 'succeeded', end_time = ? FROM (SELECT value ->> 0 AS task,"
            " value ->> 1 AS sequence_id FROM json_each(?)) AS ended WHERE attempts.task = ended.task"
            " AND attempts.sequence_id = ended.sequence_id"
            " RETURNING attempts.rollout_id, attempts.sequence_id, attempts.worker_id",
            (now, pairs),
        ).fetchall()
        for rollout_id, sequence_id, worker_id in ended:
            if worker_id:  # an attempt of a store-API runner: the worker is idle now
                attempt = self._attempt(conn, rollout_id, sequence_id)
                assert attempt is not None
                self._sync_worker(conn, attempt, now)
        conn.execute(
            "UPDATE tasks SET status = ?, phase = 'succeeded', queue_pos = NULL, deadline = NULL,"
            " completed_time = ?, end_time = ? WHERE id IN (SELECT value ->> 0 FROM json_each(?))",
            (TASK_STATUS["succeeded"].value, now, now, pairs),
        )

    def rollouts_after(self, seq: int, limit: int = 100, max_bytes: int | None = None) -> list[StoredRollout]:
        sql = f"{ROLLOUT_WITH_TASK} WHERE r.seq > ? ORDER BY r.seq LIMIT ?"
        rows = self._rows_holding(sql, (seq, limit), max_bytes, lambda values: len(values[ROLLOUT_BODY]))
        return [stored_from_row(values) for values in rows]

    def get_rollout(self, rollout_id: str) -> StoredRollout | None:
        rows = self._read(f"{ROLLOUT_WITH_TASK} WHERE r.rollout_id = ?", (rollout_id,))
        return stored_from_row(rows[0]) if rows else None

    def consume_rollout(self, rollout_id: str) -> Rollout | None:
        with self._write() as conn:
            found = conn.execute(
                "SELECT seq, body FROM rollouts WHERE rollout_id = ? AND consumed = 0", (rollout_id,)
            ).fetchone()
            if found is None:
                return None
            seq, body = found
            conn.execute("UPDATE rollouts SET consumed = 1 WHERE seq = ?", (seq,))
        return rollout_from_body(body)

    def consume_all(self) -> list[Rollout]:
        with self._write() as conn:
            rows = conn.execute("SELECT body FROM rollouts WHERE consumed = 0 ORDER BY seq").fetchall()
            conn.execute("UPDATE rollouts SET consumed = 1 WHERE consumed = 0")
        return [rollout_from_body(body) for (body,) in rows]

    def last_seq(self) -> int:
        # The largest ever given out (AUTOINCREMENT's record), kept when its rollout is not.
        [(seq,)] = self._read("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'rollouts'), 0)")
        return int(seq)


ResultRow = tuple[str, float, int | None, int, str, str | None, float | None]


def _result_row(
    report: Report, now: float, attempt: int | None, unsolicited: bool, task_mode: str | None
) -> ResultRow:
    """A report as a row of `rollouts`, with the mode it says, else its task's."""
    return (
        report.rollout_id,
        now,
        attempt,
        int(unsolicited),
        report.body,
        report.mode or task_mode,
        report.final_reward,
    )


def _counted_as_duplicate(conn: sqlite3.Connection, rollout_id: str) -> ReportOutcome:
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'duplicates'")
    conn.execute("UPDATE tasks SET duplicates = duplicates + 1 WHERE rollout_id = ?", (rollout_id,))
    return ReportOutcome.DUPLICATE


def _insert_rollouts(conn: sqlite3.Connection, rows: Sequence[ResultRow]) -> None:
    """Rows of `rollouts` in one `INSERT` per `INSERT_ROWS` of them."""
    for start in range(0, len(rows), INSERT_ROWS):
        chunk = rows[start : start + INSERT_ROWS]
        conn.execute(
            "INSERT INTO rollouts (rollout_id, received_time, attempt, unsolicited, body, mode, reward)"
            f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?)'] * len(chunk))}",
            [value for row in chunk for value in row],
        )
