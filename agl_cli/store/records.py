"""What a store hands back: tasks, rollouts, claims and counts as plain values."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agl_cli.models import Rollout, Task, TaskStatus


class ReportOutcome(str, enum.Enum):
    """What happened to a reported rollout."""

    STORED = "stored"  # the first result for a task agl handed out
    DUPLICATE = "duplicate"  # the task already has a result: counted, not stored
    UNSOLICITED = "unsolicited"  # an id agl never issued: stored, marked as such


class Report(NamedTuple):
    """A worker's report as a store takes it: the fields agl reads of it, and its JSON to
    keep (as it came, or as the server's lean reader wrote back what it read)."""

    rollout_id: str
    mode: str | None  # the mode its task says it ran in, if it says
    final_reward: float | None
    body: str

    @classmethod
    def of(cls, rollout: Rollout, body: bytes | None = None) -> Report:
        """`rollout`'s report, as `body` if that is the JSON it was validated from."""
        return cls(
            rollout.rollout_id,
            rollout.task.mode if rollout.task is not None else None,
            kept_reward(rollout.final_reward),
            rollout.model_dump_json() if body is None else body.decode(),
        )


def kept_reward(reward: float | None) -> float | None:
    """A report's reward as its result is charted and summed: none unless finite. The
    strings "NaN" and "-Infinity" read as such floats, and are read back as null, as JSON
    writes them: a chart that counted them would count what no reader is shown."""
    return reward if reward is not None and math.isfinite(reward) else None


@dataclass(frozen=True)
class TaskRecord:
    """A task as the management side sees it: the wire task plus its life-cycle state."""

    task: Task
    status: TaskStatus
    deadline: float | None = None
    completed_time: float | None = None
    duplicates: int = 0

    @property
    def rollout_id(self) -> str:
        return self.task.rollout_id


@dataclass(frozen=True)
class StoredRollout:
    """A kept rollout with its place in the arrival order, and agl's task for it (None
    for an unsolicited one). `rollout` is kept as the worker sent it."""

    seq: int
    rollout: Rollout
    received_time: float
    attempt: int | None
    unsolicited: bool
    consumed: bool = False
    task: Task | None = None

    def completed(self) -> Rollout:
        """The rollout with what its worker left out taken from its task (the whole task,
        or its `mode` and `input`), so that every reader sees the mode it ran in: legacy
        workers usually send no task at all."""
        task = self.task
        if task is None:
            return self.rollout
        sent = self.rollout.task
        if sent is None:
            return self.rollout.model_copy(update={"task": task})
        missing = {name: getattr(task, name) for name in ("mode", "input") if getattr(sent, name) is None}
        if not missing:
            return self.rollout
        return self.rollout.model_copy(update={"task": sent.model_copy(update=missing)})


@dataclass(frozen=True)
class Claim:
    """A task just handed out, as `GET /task` sends it to the worker."""

    rollout_id: str
    num_claims: int
    wire: bytes  # the task as JSON


@dataclass
class SpansAdded:
    """What became of spans sent to the store: each kept one, or None where it was kept
    before; and how many were refused (an unknown rollout or attempt), with why."""

    spans: list[Any] = field(default_factory=list)
    rejected: int = 0
    reason: str | None = None


@dataclass
class Commit:
    """What a transaction holds: how many writes inside must be on disk before they are
    answered, counted as they are made. Without any, the commit needs no `Store.sync()`;
    and the writer answers the others (claims) as soon as the commit is made."""

    durable_writes: int = 0


class RolloutSummary(NamedTuple):
    """A kept rollout in one line, without its body: what a list of many shows."""

    seq: int
    rollout_id: str
    mode: str | None
    reward: float | None
    attempt: int | None
    unsolicited: bool
    received_time: float
    started_time: float | None  # when the attempt that sent it began (None: unsolicited)


class RewardPoint(NamedTuple):
    """The rollouts of one mode that arrived in one bucket of time, and their rewards."""

    mode: str | None
    time: float  # the bucket's start, epoch s
    rollouts: int
    rewarded: int  # how many of them had a reward
    mean: float | None


# The most buckets per mode in the dashboard's reward chart. The store keeps the rewards
# summed per second only while a chart of the run can still read them (`thin_rewards`).
CHART_POINTS = 240


@dataclass(frozen=True)
class RewardSeries:
    """Rewards over the whole run, in at most a few hundred buckets `width` seconds wide."""

    width: int
    points: list[RewardPoint]


class SpanSummary(NamedTuple):
    """A span without its attributes: enough to draw a waterfall."""

    attempt_id: str | None
    sequence_id: int | None
    span_id: str | None
    parent_id: str | None
    name: str
    start_time: float | None
    end_time: float | None
    status: str | None


@dataclass(frozen=True)
class TaskHistory:
    """A task and every attempt at it, oldest first (store-API `Attempt` shapes)."""

    record: TaskRecord
    attempts: list[dict[str, object]]


@dataclass(frozen=True)
class RolloutDetail:
    """Everything kept about one rollout id: its task and attempts, its result if one
    came, and the first of the spans its attempts sent."""

    history: TaskHistory | None
    stored: StoredRollout | None
    spans: list[SpanSummary]
    spans_total: int


@dataclass
class StoreCounts:
    tasks: dict[TaskStatus, int] = field(default_factory=lambda: dict.fromkeys(TaskStatus, 0))
    rollouts: int = 0
    unsolicited: int = 0
    duplicates: int = 0
    forgotten: int = 0  # tasks `forget_tasks` deleted, over the store's life
    resources: int = 0


@dataclass(frozen=True)
class Space:
    """The room the store takes and has, in bytes."""

    size: int  # the database: its pages, in use or free
    free: int  # of those, the pages deletions freed: used again before the file grows
    log: int  # the write-ahead log beside it
    limit: int | None  # `--max-db-size`
    disk_free: int | None  # on the database's file system; None in memory


@dataclass(frozen=True)
class QueryPage:
    """A page of a store-API query: how many match in all, and the page's items, read a
    chunk at a time inside the snapshot the page was opened in (so a page of millions is
    never whole in memory). Iterate `chunks` before leaving that snapshot."""

    limit: int
    offset: int
    total: int
    chunks: Iterable[list[object]]

    def about(self) -> dict[str, int]:
        """What the wire shape holds beside the items."""
        return {"limit": self.limit, "offset": self.offset, "total": self.total}

    def whole(self) -> dict[str, object]:
        """The page in the wire shape, every item at once: for pages known to be small."""
        return {"items": [item for chunk in self.chunks for item in chunk], **self.about()}
