"""Wire types of the Agent Lightning store API (agentlightning 0.3.0's `LightningStoreServer`).

Field names, order, defaults and optionality are what 0.3.0's `LightningStoreClient`
sends and expects, so that a body produced by either side validates on the other. The
rollout and attempt life cycle these name is decided in `agl_cli.store.lifecycle`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agl_cli.models import Mode

RolloutStatus = Literal["queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"]
AttemptStatus = Literal["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]
WorkerStatus = Literal["idle", "busy", "unknown"]
SortOrder = Literal["asc", "desc"]
FilterLogic = Literal["and", "or"]
# What an SQLite integer holds: a larger number in a body is refused, not stored and then lost.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
# A span's number leaves room above it for as many numbers again, which the store issues
# (one more than the rollout's highest) and an SQLite integer must hold.
MAX_SEQUENCE_ID = 2**62
SpanNumber = Annotated[int, Field(ge=-(2**63), le=MAX_SEQUENCE_ID)]
Item = TypeVar("Item")


class RolloutConfig(BaseModel):
    """How long an attempt may take, and which failures are tried again."""

    timeout_seconds: float | None = None
    unresponsive_seconds: float | None = None
    max_attempts: int = Field(default=1, ge=1, le=2**63 - 1)
    retry_condition: list[AttemptStatus] = Field(default_factory=list)


class Rollout(BaseModel):
    rollout_id: str
    input: Any
    start_time: float
    end_time: float | None = None
    mode: Mode | None = None
    resources_id: str | None = None
    status: RolloutStatus = "queuing"
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, Any] | None = None


class Attempt(BaseModel):
    rollout_id: str
    attempt_id: str
    sequence_id: int
    start_time: float
    end_time: float | None = None
    status: AttemptStatus = "preparing"
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] | None = None


class AttemptedRollout(Rollout):
    attempt: Attempt


class Worker(BaseModel):
    worker_id: str
    status: WorkerStatus = "unknown"
    heartbeat_stats: dict[str, Any] | None = None
    last_heartbeat_time: float | None = None
    last_dequeue_time: float | None = None
    last_busy_time: float | None = None
    last_idle_time: float | None = None
    current_rollout_id: str | None = None
    current_attempt_id: str | None = None


# --- spans (OpenTelemetry, as 0.3.0 models them) -------------------------------------------

AttributeValue = Union[str, bool, int, float, Sequence[str], Sequence[bool], Sequence[int], Sequence[float]]  # noqa: UP007
Attributes = dict[str, AttributeValue]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenTelemetry may add fields; keep them


class SpanContext(_Open):
    trace_id: str
    span_id: str
    is_remote: bool
    trace_state: dict[str, str]


class TraceStatus(_Open):
    status_code: Literal["UNSET", "OK", "ERROR"]
    description: str | None = None


class Event(_Open):
    name: str
    attributes: Attributes
    timestamp: float | None = None


class Link(_Open):
    context: SpanContext
    attributes: Attributes | None = None


class OtelResource(BaseModel):
    attributes: Attributes
    schema_url: str


class Span(_Open):
    rollout_id: str
    attempt_id: str
    sequence_id: SpanNumber
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    status: TraceStatus
    attributes: Attributes
    events: list[Event]
    links: list[Link]
    start_time: float | None
    end_time: float | None
    context: SpanContext | None
    parent: SpanContext | None
    resource: OtelResource


# --- request bodies -------------------------------------------------------------------------


class EnqueueRequest(BaseModel):
    input: Any
    mode: Mode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


class EnqueueBody(BaseModel):
    rollouts: list[EnqueueRequest]


class DequeueBody(BaseModel):
    limit: Int64 = 1
    worker_id: str | None = None


class StartRolloutBody(EnqueueRequest):
    worker_id: str | None = None


class StartAttemptBody(BaseModel):
    worker_id: str | None = None


class PageQuery(BaseModel):
    limit: Int64 = -1
    offset: Int64 = 0
    sort_by: str | None = None
    sort_order: SortOrder = "asc"


class RolloutQuery(PageQuery):
    status_in: list[RolloutStatus] | None = None
    rollout_id_in: list[str] | None = None
    rollout_id_contains: str | None = None
    filter_logic: FilterLogic = "and"


class AttemptQuery(PageQuery):
    sort_by: str | None = "sequence_id"


class ResourcesQuery(PageQuery):
    resources_id: str | None = None
    resources_id_contains: str | None = None


class WorkerQuery(PageQuery):
    status_in: list[WorkerStatus] | None = None
    worker_id_contains: str | None = None
    filter_logic: FilterLogic = "and"


class SpanQuery(PageQuery):
    rollout_id: str
    attempt_id: str | None = None
    trace_id: str | None = None
    trace_id_contains: str | None = None
    span_id: str | None = None
    span_id_contains: str | None = None
    parent_id: str | None = None
    parent_id_contains: str | None = None
    name: str | None = None
    name_contains: str | None = None
    filter_logic: FilterLogic = "and"
    sort_by: str | None = "sequence_id"


class RolloutChanges(BaseModel):
    """`POST /rollouts/{id}`: only the fields present change (`status` and `config` may not be null)."""

    input: Any = None
    mode: Mode | None = None
    resources_id: str | None = None
    status: RolloutStatus | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


class AttemptChanges(BaseModel):
    """`POST /rollouts/{id}/attempts/{attempt_id}`: only the fields present change, none null."""

    status: AttemptStatus | None = None
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] | None = None


class WorkerChanges(BaseModel):
    heartbeat_stats: dict[str, Any] | None = None


class NextSequenceBody(BaseModel):
    rollout_id: str
    attempt_id: str


def _not_nan(seconds: float | None) -> float | None:
    if seconds is not None and math.isnan(seconds):
        raise ValueError("a timeout is a number of seconds, or null for none, not NaN")
    return seconds


class WaitBody(BaseModel):
    rollout_ids: list[str]
    timeout: Annotated[float | None, AfterValidator(_not_nan)] = None  # Infinity: no limit, as null


# --- answers (those that are not one of the records above) --------------------------------------


class Page(BaseModel, Generic[Item]):
    """A page of a query: `limit` and `offset` as asked, `total` of all that match."""

    items: list[Item]
    limit: int
    offset: int
    total: int


class Health(BaseModel):
    status: Literal["ok"]


class SequenceId(BaseModel):
    sequence_id: int


class Statistics(BaseModel):
    name: str
    total_rollouts: int
    total_attempts: int
    total_spans: int
    total_resources: int
    total_workers: int
    uptime: float
