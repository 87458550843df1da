"""Rows as the store's queries read them, and what they become: the named tuples name
the columns each query selects (`X_COLUMNS` is made from their fields), and the functions
turn a row into the wire shape of the legacy protocol or of the store API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from agl_cli.models import ResourcesUpdate, Rollout, Task, TaskStatus
from agl_cli.store.records import StoredRollout, TaskRecord, kept_reward
from agl_cli.store.schema import PLACES_PER_BATCH
from agl_cli.store_models import AttemptStatus, RolloutStatus


class TaskRow(NamedTuple):
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
    phase: RolloutStatus  # `status` is derived from it (lifecycle.TASK_STATUS)
    config: str | None  # RolloutConfig JSON; None: the daemon's legacy policy
    end_time: float | None


class RolloutRow(NamedTuple):
    seq: int
    body: str
    received_time: float
    attempt: int | None
    unsolicited: int
    consumed: int


class ResourcesRow(NamedTuple):
    resources_id: str
    create_time: float
    update_time: float
    version: int
    body: str


TASK_COLUMNS = ", ".join(TaskRow._fields)
TASK_INPUT, TASK_METADATA = TaskRow._fields.index("input"), TaskRow._fields.index("metadata")
# Tasks of committed batches still in `staging`, as rows of `tasks` will hold them (with `id`).
STAGED_TASKS = (
    f"SELECT b.base_pos + s.place - b.id * {PLACES_PER_BATCH} AS id, s.rollout_id AS rollout_id,"
    " 'queued' AS status, NULL AS deadline, s.input AS input, s.mode AS mode, s.resources_id AS resources_id,"
    " s.metadata AS metadata, coalesce(s.create_time, b.committed_time) AS create_time,"
    " NULL AS last_claim_time, 0 AS num_claims, NULL AS completed_time, 0 AS duplicates, 'queuing' AS phase,"
    " s.config AS config, NULL AS end_time"
    f" FROM staging s JOIN batches b ON b.id = s.place / {PLACES_PER_BATCH}"
    " WHERE b.committed_time IS NOT NULL"
)
# How many tasks of committed batches are still in `staging`, without counting them.
STAGED_COUNT = "SELECT coalesce(sum(staged - moved), 0) FROM batches WHERE committed_time IS NOT NULL"
RESOURCES_COLUMNS = ", ".join(ResourcesRow._fields)


class AttemptRow(NamedTuple):
    rollout_id: str
    attempt_id: str
    sequence_id: int
    start_time: float
    end_time: float | None
    status: AttemptStatus
    worker_id: str | None
    last_heartbeat_time: float | None
    metadata: str | None


class WorkerRow(NamedTuple):
    worker_id: str
    status: str
    heartbeat_stats: str | None
    last_heartbeat_time: float | None
    last_dequeue_time: float | None
    last_busy_time: float | None
    last_idle_time: float | None
    current_rollout_id: str | None
    current_attempt_id: str | None


ATTEMPT_COLUMNS = ", ".join(AttemptRow._fields)
# `attempts` is keyed by (task, sequence_id), `task` being the task's `tasks.id` (schema 6):
# a rollout id (the parameter) finds its attempts through this.
TASK_ID = "(SELECT id FROM tasks WHERE rollout_id = ?)"
WORKER_COLUMNS = ", ".join(WorkerRow._fields)


def prefixed(alias: str, row: type[tuple[Any, ...]]) -> str:
    """The columns of a row type, each named through a table alias."""
    return ", ".join(f"{alias}.{name}" for name in row._fields)  # type: ignore[attr-defined]


# A kept rollout and its task (NULLs for an unsolicited one): what `stored_from_row` reads.
ROLLOUT_WITH_TASK = (
    f"SELECT {prefixed('r', RolloutRow)}, {prefixed('t', TaskRow)}"
    " FROM rollouts r LEFT JOIN tasks t ON t.rollout_id = r.rollout_id"
)
_ROLLOUT_WIDTH = len(RolloutRow._fields)
ROLLOUT_BODY = RolloutRow._fields.index("body")  # where a row of `ROLLOUT_WITH_TASK` has it
# A kept rollout in one line (`RolloutSummary`), with the start of the attempt that sent it.
ROLLOUT_SUMMARIES = (
    "SELECT r.seq, r.rollout_id, r.mode, r.reward, r.attempt, r.unsolicited, r.received_time, a.start_time"
    " FROM rollouts r LEFT JOIN tasks t ON t.rollout_id = r.rollout_id"
    " LEFT JOIN attempts a ON a.task = t.id AND a.sequence_id = r.attempt"
)

# What a store-API query may sort by (the model's fields), as the SQL that reads each. An
# input by its value, as 0.3.0 sorts one (numbers as numbers, text unescaped); an object by
# its JSON text, where 0.3.0 fails.
ROLLOUT_SORT_COLUMNS = {
    "rollout_id": "t.rollout_id",
    "input": "json_extract(t.input, '$')",
    "start_time": "t.create_time",
    "end_time": "t.end_time",
    "mode": "t.mode",
    "resources_id": "t.resources_id",
    "status": "t.phase",
    "config": "t.config",
    "metadata": "t.metadata",
}
ATTEMPT_SORT_COLUMNS = {name: name for name in AttemptRow._fields}
WORKER_SORT_COLUMNS = {name: name for name in WorkerRow._fields}
RESOURCES_SORT_COLUMNS = {name: name for name in ResourcesRow._fields if name != "body"} | {
    "resources": "body"
}
_SPAN_COLUMNS = ("rollout_id", "attempt_id", "sequence_id", "trace_id", "span_id", "parent_id", "name")
SPAN_SORT_COLUMNS = {name: name for name in (*_SPAN_COLUMNS, "start_time", "end_time")} | {
    name: f"json_extract(body, '$.{name}')"
    for name in ("status", "attributes", "events", "links", "context", "parent", "resource")
}
# Where a span keeps its primary reward (0.3.0's `emit_reward`).
REWARD_PATH = '$.attributes."agentlightning.reward.0.value"'


def task_from_row(row: TaskRow) -> Task:
    return Task.model_construct(  # the row was valid when it was written
        rollout_id=row.rollout_id,
        input=orjson.loads(row.input),
        mode=row.mode,
        resources_id=row.resources_id,
        metadata=orjson.loads(row.metadata) or {},
        create_time=row.create_time,
        last_claim_time=row.last_claim_time,
        num_claims=row.num_claims,
    )


def wire_task(row: TaskRow) -> bytes:
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
            "metadata": legacy_metadata(row),
        }
    )


def legacy_metadata(row: TaskRow) -> orjson.Fragment:
    """The task's metadata as the legacy protocol requires it, an object: the store API
    may have set it to null."""
    return orjson.Fragment(row.metadata if row.metadata != "null" else "{}")


def record_from_row(row: TaskRow) -> TaskRecord:
    return TaskRecord(
        task_from_row(row), TaskStatus(row.status), row.deadline, row.completed_time, row.duplicates
    )


def rollout_from_body(body: str) -> Rollout:
    """A kept report, read back with the parser that accepted it (orjson: an integer too
    large for 64 bits became a float then, and must not come back as one that cannot be
    written again), and its reward as it was counted when kept (`kept_reward`): a reward
    sent as `"0.25"` or `true`, which pydantic reads as a number as 0.3.0 did, is that
    number; one of `"NaN"` is none. A result of the store API kept by an older agl may hold
    a reward span's value that no reading makes a number (a word, a list): read as no
    reward, as agl now keeps it, rather than a result no read can take."""
    fields = orjson.loads(body)
    try:
        rollout = Rollout.model_validate(fields)
    except ValidationError:
        fields["final_reward"] = None
        return Rollout.model_validate(fields)
    reward = kept_reward(rollout.final_reward)
    return rollout if reward is rollout.final_reward else rollout.model_copy(update={"final_reward": reward})


def stored_from_row(values: Sequence[Any]) -> StoredRollout:
    """A row of `ROLLOUT_WITH_TASK`: the rollout, then its task's columns (NULL if none)."""
    row = RolloutRow._make(values[:_ROLLOUT_WIDTH])
    task = values[_ROLLOUT_WIDTH:]
    return StoredRollout(
        seq=row.seq,
        rollout=rollout_from_body(row.body),
        received_time=row.received_time,
        attempt=row.attempt,
        unsolicited=bool(row.unsolicited),
        consumed=bool(row.consumed),
        task=task_from_row(TaskRow._make(task)) if task[0] is not None else None,
    )


def resources_from_row(row: ResourcesRow) -> ResourcesUpdate:
    return ResourcesUpdate(
        resources_id=row.resources_id,
        create_time=row.create_time,
        update_time=row.update_time,
        version=row.version,
        resources=orjson.loads(row.body)["resources"],
    )


def _fragment(text: str | None) -> orjson.Fragment | None:
    return None if text is None else orjson.Fragment(text)


def rollout_shape(row: TaskRow, legacy_config: str) -> dict[str, object]:
    """The task as a store-API `Rollout`; `legacy_config` stands in for a missing config."""
    return {
        "rollout_id": row.rollout_id,
        "input": orjson.Fragment(row.input),
        "start_time": row.create_time,
        "end_time": row.end_time,
        "mode": row.mode,
        "resources_id": row.resources_id,
        "status": row.phase,
        "config": orjson.Fragment(row.config or legacy_config),
        "metadata": orjson.Fragment(row.metadata),
    }


def attempt_shape(row: AttemptRow) -> dict[str, object]:
    shape: dict[str, object] = row._asdict()
    shape["metadata"] = _fragment(row.metadata)
    return shape


def worker_shape(row: WorkerRow) -> dict[str, object]:
    shape: dict[str, object] = row._asdict()
    shape["heartbeat_stats"] = _fragment(row.heartbeat_stats)
    return shape


def resources_shape(row: ResourcesRow) -> dict[str, object]:
    return {
        "resources_id": row.resources_id,
        "create_time": row.create_time,
        "update_time": row.update_time,
        "version": row.version,
        "resources": orjson.loads(row.body)["resources"],
    }
