"""Retention: results, and rollouts that ended without one, deleted once older than
`rollout_retention`, oldest first and a batch at a time, with their spans, and with their
tasks too when the store forgets tasks (`forget_tasks`). None of it is synced: a prune that
a crash undoes is made again."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from agl_cli.store.batches import FORGOTTEN, LAST_FORGOTTEN
from agl_cli.store.results import Results


class Retention(Results):
    """What the retention setting deletes, and when."""

    def prune_rollouts(self, limit: int) -> int:
        """Results go oldest first, by sequence number, until the first one still young
        enough (not synced: a prune a crash undoes is made again)."""
        if self.rollout_retention is None:
            return 0
        cutoff = self.clock() - self.rollout_retention
        with self._write(durable=False) as conn:
            old = _oldest_before(conn, "SELECT seq, received_time FROM rollouts ORDER BY seq", limit, cutoff)
            if old:
                pruned = {"first": old[0][0], "last": old[-1][0]}
                in_range = "SELECT rollout_id FROM rollouts WHERE seq BETWEEN :first AND :last"
                conn.execute(f"DELETE FROM spans WHERE rollout_id IN ({in_range})", pruned)
                if self.forget_tasks:
                    _forget(
                        conn,
                        conn.execute(
                            # each task found by its rollout id (CROSS JOIN: not among every completed one)
                            "SELECT tasks.id, tasks.rollout_id FROM rollouts CROSS JOIN tasks"
                            " ON tasks.rollout_id = rollouts.rollout_id"
                            " WHERE rollouts.seq BETWEEN :first AND :last AND tasks.status = 'completed'",
                            pruned,
                        ).fetchall(),
                    )
                conn.execute("DELETE FROM rollouts WHERE seq BETWEEN :first AND :last", pruned)
        return len(old)

    def prune_ended(self, limit: int) -> int:
        """Rollouts that ended without a result go by end time, as results go by sequence
        number. One revived since it was listed (0.3.0 lets an attempt update do that)
        keeps its spans: if it succeeds, they go with its result; if it ends so again, it
        is listed again, with its new end."""
        if self.rollout_retention is None:
            return 0
        cutoff = self.clock() - self.rollout_retention
        with self._write(durable=False) as conn:
            ended = _oldest_before(
                conn,
                "SELECT rollout_id, end_time FROM ended_without_result ORDER BY end_time, rollout_id",
                limit,
                cutoff,
            )
            if ended:
                still = conn.execute(
                    # each task found by its id (CROSS JOIN: not by its status, among every failed one)
                    "SELECT tasks.id, tasks.rollout_id FROM json_each(?)"
                    " CROSS JOIN tasks ON tasks.rollout_id = json_each.value"
                    " WHERE tasks.status IN ('failed', 'cancelled') AND tasks.end_time < ?",
                    (orjson.dumps([rollout_id for rollout_id, _ in ended]).decode(), cutoff),
                ).fetchall()
                _delete_spans(conn, still)
                if self.forget_tasks:
                    _forget(conn, still)
                last_id, last_end = ended[-1]
                conn.execute(
                    "DELETE FROM ended_without_result WHERE (end_time, rollout_id) <= (?, ?)",
                    (last_end, last_id),
                )
        return len(ended)

    def forget_leftovers(self, after: int, span: int) -> int:
        """Forget the tasks with ids `after + 1` to `after + span` that retention would have
        taken with it, had it forgotten tasks when it deleted their results or spans (the
        store was opened without `forget_tasks` then): completed ones whose result is gone,
        failed or cancelled ones that ended longer than `rollout_retention` ago. How many;
        the caller walks on from `after + span`, up to the last place given out."""
        if not self.forget_tasks or self.rollout_retention is None:
            return 0
        with self._write(durable=False) as conn:
            leftovers = conn.execute(
                "SELECT id, rollout_id FROM tasks WHERE id > :after AND id <= :after + :span AND ("
                " (status = 'completed'"
                " AND NOT EXISTS (SELECT 1 FROM rollouts WHERE rollouts.rollout_id = tasks.rollout_id))"
                " OR (status IN ('failed', 'cancelled')"
                " AND coalesce(end_time, completed_time, last_claim_time, create_time) < :cutoff))",
                {"after": after, "span": span, "cutoff": self.clock() - self.rollout_retention},
            ).fetchall()
            if leftovers:
                _delete_spans(conn, leftovers)
                _forget(conn, leftovers)
        return len(leftovers)


def _delete_spans(conn: sqlite3.Connection, tasks: Sequence[tuple[int, str]]) -> None:
    """Delete the spans of these tasks (their ids and rollout ids)."""
    conn.execute(
        "DELETE FROM spans WHERE rollout_id IN (SELECT value FROM json_each(?))",
        (orjson.dumps([rollout_id for _, rollout_id in tasks]).decode(),),
    )


def _forget(conn: sqlite3.Connection, tasks: Sequence[tuple[int, str]]) -> None:
    """Delete these tasks (their ids and rollout ids) with their attempts and span
    numbering; their spans and result are the caller's. The largest id is written down,
    so that a restart does not hand out the place of a task forgotten last."""
    if not tasks:
        return
    ids = orjson.dumps([task_id for task_id, _ in tasks]).decode()
    conn.execute("DELETE FROM attempts WHERE task IN (SELECT value FROM json_each(?))", (ids,))
    conn.execute(
        "DELETE FROM span_sequences WHERE rollout_id IN (SELECT value FROM json_each(?))",
        (orjson.dumps([rollout_id for _, rollout_id in tasks]).decode(),),
    )
    # the rows deleted, not `len(tasks)`: a task cancelled twice is listed twice by the sweep
    deleted = conn.execute("DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?))", (ids,)).rowcount
    conn.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        (LAST_FORGOTTEN, max(task_id for task_id, _ in tasks)),
    )
    conn.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (FORGOTTEN, deleted),
    )


def _oldest_before(conn: sqlite3.Connection, oldest_first: str, limit: int, cutoff: float) -> list[Any]:
    """The first `limit` rows of `oldest_first`, whose last column is the time each is aged
    from, up to the first one not older than `cutoff`: what the retention setting deletes."""
    rows = conn.execute(f"{oldest_first} LIMIT ?", (limit,)).fetchall()
    return list(itertools.takewhile(lambda row: row[-1] < cutoff, rows))
