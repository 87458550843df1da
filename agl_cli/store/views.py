"""What people look at (the dashboard): pages newest first and aggregates, each a bounded
read whatever the size of the store.

Every query here walks an index for one page, or reads what the schema's triggers keep
(`task_counts`, `counters`, `rewards`); none counts or sorts a table that grows with the
run. `tests/test_dashboard_api.py` holds each query they run to that with `EXPLAIN QUERY
PLAN`.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from typing import Any

from agl_cli.models import ResourcesUpdate
from agl_cli.store.records import (
    CHART_POINTS,
    RewardPoint,
    RewardSeries,
    RolloutDetail,
    RolloutSummary,
    SpanSummary,
    TaskHistory,
)
from agl_cli.store.retention import Retention
from agl_cli.store.rows import (
    ATTEMPT_COLUMNS,
    RESOURCES_COLUMNS,
    ROLLOUT_SUMMARIES,
    TASK_COLUMNS,
    AttemptRow,
    ResourcesRow,
    TaskRow,
    attempt_shape,
    record_from_row,
    resources_from_row,
)
from agl_cli.store.schema import REWARD_WIDTHS, TROUBLED

# The widths a chart's buckets may have, in seconds (then whole days): each a multiple of
# a width the `rewards` table keeps, so that a chart of a run of up to `CHART_POINTS` days
# reads at most a few thousand rows (a longer run's, its hours: 8,760 rows a year).
CHART_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
DAY = 86_400

_QUERIES = {
    "troubled": f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_troubled WHERE ({TROUBLED})"
    " ORDER BY last_claim_time DESC LIMIT ? OFFSET ?",
    "summaries_after": f"{ROLLOUT_SUMMARIES} WHERE r.seq > ? ORDER BY r.seq LIMIT ?",
    "summaries_before": f"{ROLLOUT_SUMMARIES} WHERE r.seq < ? ORDER BY r.seq DESC LIMIT ?",
    # From the rewards, which keep the rollouts the retention setting has deleted; two
    # subqueries, as SQLite reads one end of the index for a lone min() or max() only.
    # Buckets stamped after now (by a start whose clock was ahead, before a restart once it
    # was set right) are left out: one such stamp would widen the chart to days and have
    # `thin_rewards` delete the run's finer sums for good.
    "run_span": "SELECT (SELECT min(bucket) FROM rewards WHERE width = 1 AND bucket <= ?),"
    " (SELECT max(bucket) FROM rewards WHERE width = 1 AND bucket <= ?) + 1",
    "rewards": "SELECT mode, bucket / ?, sum(rollouts), sum(rewarded), sum(total) FROM rewards"
    " WHERE width = ? AND bucket >= ? AND bucket < ? GROUP BY 1, 2 ORDER BY 1, 2",
    "thin_rewards": "DELETE FROM rewards WHERE (width, bucket, mode) IN"
    " (SELECT width, bucket, mode FROM rewards WHERE width = ?"
    " AND NOT (width = 1 AND bucket IN (?, ?)) LIMIT ?)",
    "resources": f"SELECT {RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq DESC LIMIT ? OFFSET ?",
    "spans": "SELECT attempt_id, sequence_id, span_id, parent_id, name, start_time, end_time,"
    " json_extract(body, '$.status.status_code') FROM spans WHERE rollout_id = ?"
    " ORDER BY sequence_id, id LIMIT ?",
    "span_count": "SELECT count(*) FROM spans WHERE rollout_id = ?",
}


def _chart_widths(first: int, last: int, max_points: int) -> tuple[int, int]:
    """How wide a chart's buckets are for a run over the seconds `first` to `last` (not
    included), and the widest width `rewards` keeps that divides it (the one its buckets
    are summed from). The buckets start at multiples of their width, so it is the buckets
    the run touches that must number at most `max_points`, not its length over the width;
    a run longer than `max_points` days gets buckets of as many whole days as it needs."""

    def fits(width: int) -> bool:
        return (last - 1) // width - first // width < max_points

    width = next((w for w in CHART_WIDTHS if fits(w)), None)
    if width is None:
        days = max(2, -(-(last - first) // (DAY * max_points)))
        width = next(DAY * n for n in itertools.count(days) if fits(DAY * n))
    return width, max(k for k in REWARD_WIDTHS if width % k == 0)


def _mean(total: float | None, rewarded: int) -> float | None:
    """A bucket's mean reward. Rewards near 1e308 make a sum past a float's range (kept as
    an infinity): its mean is then read as the largest float of its sign, at the chart's
    edge, rather than as none. (+inf and -inf summed, which SQLite reads as NULL, give none.)"""
    if not rewarded or total is None:
        return None
    mean = total / rewarded
    return mean if math.isfinite(mean) else math.copysign(sys.float_info.max, mean)


class Views(Retention):
    """The dashboard's reads, on the tables the layers below keep."""

    def rollout_summaries(self, after: int, limit: int) -> list[RolloutSummary]:
        return [_summary(values) for values in self._read(_QUERIES["summaries_after"], (after, limit))]

    def recent_rollouts(self, before: int | None, limit: int) -> list[RolloutSummary]:
        bound = before if before is not None else 2**63 - 1
        return [_summary(values) for values in self._read(_QUERIES["summaries_before"], (bound, limit))]

    def reward_series(self, max_points: int) -> RewardSeries:
        """Buckets as wide as needed for the run to fit in `max_points`, summed from the
        widest kept width that divides them."""
        with self.snapshot():
            [(first, last)] = self._read(_QUERIES["run_span"], (int(self.clock()),) * 2)
            if first is None:
                return RewardSeries(CHART_WIDTHS[0], [])
            width, kept = _chart_widths(first, last, max_points)
            factor = width // kept
            start = int(first // width) * factor
            end = (int(last - 1) // width + 1) * factor
            rows = self._read(_QUERIES["rewards"], (factor, kept, start, end))
        points = [
            RewardPoint(
                mode or None,
                float(bucket * width),
                rollouts,
                rewarded,
                _mean(total, rewarded),
            )
            for mode, bucket, rollouts, rewarded, total in rows
            if rollouts > 0
        ]
        return RewardSeries(width, points)

    def thin_rewards(self, limit: int) -> int:
        """Once a run is long enough that its chart sums a wider kept width, the narrower
        ones are never read again (a run only grows longer): without this, the sums per
        second alone would grow by 86,400 rows a day for each mode. The run's first and
        last second stay, as they give its length."""
        deleted = 0
        with self._write(durable=False) as conn:
            [(first, last)] = conn.execute(_QUERIES["run_span"], (int(self.clock()),) * 2).fetchall()
            if first is None:
                return 0
            _, kept = _chart_widths(first, last, CHART_POINTS)
            for narrower in (width for width in REWARD_WIDTHS if width < kept):
                deleted += conn.execute(
                    _QUERIES["thin_rewards"], (narrower, first, last - 1, limit - deleted)
                ).rowcount
                if deleted >= limit:
                    break
        return deleted

    def troubled_tasks(self, limit: int, offset: int) -> list[TaskHistory]:
        with self.snapshot():
            rows = [TaskRow._make(values) for values in self._read(_QUERIES["troubled"], (limit, offset))]
            attempts = self._attempts_of([row.rollout_id for row in rows])
        return [TaskHistory(record_from_row(row), attempts.get(row.rollout_id, [])) for row in rows]

    def _attempts_of(self, rollout_ids: Sequence[str]) -> dict[str, list[dict[str, object]]]:
        """Every attempt at each of the tasks, oldest first (one probe of the key each)."""
        found: dict[str, list[dict[str, object]]] = {}
        if not rollout_ids:
            return found
        marks = ", ".join("?" * len(rollout_ids))
        for values in self._read(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task IN (SELECT id FROM tasks WHERE rollout_id IN ({marks}))"
            " ORDER BY rollout_id, sequence_id",
            list(rollout_ids),
        ):
            attempt = AttemptRow._make(values)
            found.setdefault(attempt.rollout_id, []).append(attempt_shape(attempt))
        return found

    def recent_resources(self, limit: int, offset: int) -> tuple[list[ResourcesUpdate], int]:
        with self.snapshot():
            rows = self._read(_QUERIES["resources"], (limit, offset))
            [(total,)] = self._read("SELECT count(*) FROM resources")
        return [resources_from_row(ResourcesRow._make(values)) for values in rows], int(total)

    def rollout_detail(self, rollout_id: str, max_spans: int) -> RolloutDetail | None:
        with self.snapshot():
            record = self.get_task(rollout_id)
            history = None
            if record is not None:
                history = TaskHistory(record, self._attempts_of([rollout_id]).get(rollout_id, []))
            stored = self.get_rollout(rollout_id)
            if history is None and stored is None:
                return None
            spans = [
                SpanSummary(*values) for values in self._read(_QUERIES["spans"], (rollout_id, max_spans))
            ]
            [(spans_total,)] = (
                self._read(_QUERIES["span_count"], (rollout_id,))
                if len(spans) == max_spans
                else [(len(spans),)]
            )
        return RolloutDetail(history, stored, spans, int(spans_total))


def _summary(values: Sequence[Any]) -> RolloutSummary:
    summary = RolloutSummary._make(values)
    return summary._replace(unsolicited=bool(summary.unsolicited))
