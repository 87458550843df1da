"""The bodies of the management API, as pydantic models.

Requests are validated with these models, and `GET /v1/openapi.json` is generated from
them, so the published description and what the server checks cannot drift apart.
Responses are built by the routes as plain dicts for speed; the tests check that every
one of them validates against its model here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from agl_cli.api_limits import MAX_PER_REQUEST
from agl_cli.models import NamedResources, ResourcesUpdate, Rollout, Task, TaskStatus
from agl_cli.store import TaskSpec
from agl_cli.store_models import Attempt, Worker


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -----------------------------------------------------------------------------


class QueueRequest(_Body):
    """Tasks to queue (or stage) in one request; all of them or none."""

    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_PER_REQUEST)


class TaskIds(_Body):
    """Tasks to cancel, or to retry, in one request: all of them, or none if any cannot be."""

    rollout_ids: list[str] = Field(min_length=1, max_length=MAX_PER_REQUEST)


class PublishRequest(_Body):
    """A resource bundle to publish; naming an existing id publishes a new version of it."""

    resources: NamedResources = Field(min_length=1)
    resources_id: str | None = None


class PublishBody(_Body):
    """`PublishRequest` as first read: the resources are checked by the store afterwards,
    so that a bad one is refused with one sentence instead of pydantic's list."""

    resources: dict[str, Any] = Field(min_length=1)
    resources_id: str | None = None


class SignInRequest(_Body):
    """A sign-in code, traded once for the token (`POST /dashboard/sign-in`)."""

    code: str = Field(max_length=100)


# --- responses ----------------------------------------------------------------------------


class TaskRecord(Task):
    """A task with its place in the life cycle."""

    create_time: float
    num_claims: int = Field(description="Times it was handed out (0 while queued for the first time).")
    status: TaskStatus
    deadline: float | None = Field(description="When the current claim runs out (epoch s), if claimed.")
    completed_time: float | None = Field(description="When its first rollout arrived (epoch s).")
    duplicates: int = Field(description="Rollouts received after the first, counted and not kept.")


class RolloutRecord(Rollout):
    """A kept rollout: the worker's fields (unknown ones included) plus its place in the order."""

    seq: int = Field(description="Arrival order: strictly increasing, never reused.")
    received_time: float
    attempt: int | None = Field(description="The task's `num_claims` when it arrived; null if unsolicited.")
    unsolicited: bool = Field(description="True for a rollout whose id agl never issued.")


class RolloutIds(BaseModel):
    rollout_ids: list[str]


class BatchCreated(BaseModel):
    batch_id: str


class Staged(BaseModel):
    rollout_ids: list[str]
    staged: int = Field(description="Tasks in the batch so far, this request's included.")


class Committed(BaseModel):
    queued: int


class Discarded(BaseModel):
    discarded: int


class Cancelled(BaseModel):
    cancelled: int


class Retried(BaseModel):
    retried: int


class QueueState(BaseModel):
    paused: bool = Field(description="true: claims and dequeues get nothing until the queue is resumed.")


class TaskList(BaseModel):
    tasks: list[TaskRecord]


class TaskPage(TaskList):
    total: int = Field(
        description="How many tasks there are (in `status`, if one is given), as of this page."
    )


class ResourcesList(BaseModel):
    resources: list[ResourcesUpdate]
    latest_id: str | None
    total: int = Field(description="How many bundles there are, as of this list.")


class RolloutList(BaseModel):
    rollouts: list[RolloutRecord]
    last_seq: int = Field(description="The highest sequence number given out.")


class Rates(BaseModel):
    claims_per_second: float
    rollouts_per_second: float
    seconds: float = Field(
        description="What the rates are means over: the last 60 s, or the uptime if shorter."
    )


class DatabaseSpace(BaseModel):
    """The room the store takes and has, in bytes."""

    bytes: int = Field(description="The database: its pages, in use or free.")
    free_bytes: int = Field(
        description="Of those, the pages that deletions freed, used again before the file grows"
        " (`agl compact` gives them back to the disk)."
    )
    log_bytes: int = Field(description="The write-ahead log beside the database.")
    max_bytes: int | None = Field(description="`--max-db-size`; null: no limit.")
    disk_free_bytes: int | None = Field(description="Free on the database's file system; null in memory.")


class Status(BaseModel):
    """Everything about the daemon a user wants at a glance."""

    version: str
    pid: int
    started_time: float
    uptime: float
    address: str | None
    state_dir: str | None
    store: str = Field(description="`sqlite` or `memory`.")
    task_timeout: float
    max_attempts: int | None
    rollout_retention: float | None = Field(description="Seconds a result is kept; null: for good.")
    forget_tasks: bool = Field(
        description="Whether retention deletes tasks too (`agl serve --forget-tasks`)."
    )
    max_body_size: int = Field(
        description="The largest request body taken, in bytes (`agl serve --max-body-size`); 413 beyond."
    )
    tasks: dict[str, int] = Field(description="Tasks per status.")
    forgotten: int = Field(
        description="Tasks deleted with their results (`--forget-tasks`) over the store's life: not in `tasks`."
    )
    rollouts: int
    unsolicited: int
    duplicates: int
    resources: int
    last_seq: int
    latest_resources_id: str | None
    paused: bool = Field(description="Whether the queue is paused (`POST /v1/queue/pause`).")
    database: DatabaseSpace
    rates: Rates


# --- the dashboard ------------------------------------------------------------------------


class RewardLine(BaseModel):
    """One mode's rewards over time, a point per bucket that received rollouts (columns)."""

    mode: str | None = Field(description="null for rollouts of tasks without a mode.")
    times: list[float] = Field(description="Each bucket's start (epoch s).")
    means: list[float | None] = Field(description="The mean reward in each bucket (null: no rewards).")
    rollouts: list[int] = Field(description="Rollouts received in each bucket.")
    rewarded: list[int] = Field(description="Of those, the ones with a reward: the weight of each mean.")


class RewardChart(BaseModel):
    width: int = Field(description="Seconds each bucket spans: the run fits in a few hundred of them.")
    lines: list[RewardLine]


class DashboardSummary(BaseModel):
    """What the dashboard shows at the top, read from counters: as cheap at a million tasks as at ten."""

    time: float = Field(description="The daemon's clock (epoch s), to show ages without the browser's.")
    status: Status
    rewards: RewardChart


class RolloutLine(BaseModel):
    """A kept rollout in one line."""

    seq: int
    rollout_id: str
    mode: str | None = Field(description="The mode it ran in: the rollout's task's, or its own task's.")
    reward: float | None
    attempt: int | None
    unsolicited: bool
    received_time: float
    duration: float | None = Field(
        description="From the start of the attempt that sent it to its arrival (s)."
    )


class RolloutLines(BaseModel):
    rollouts: list[RolloutLine]
    last_seq: int = Field(description="The highest sequence number given out.")


class DashboardEvent(RootModel[DashboardSummary | RolloutLines]):
    """The data of an event of the dashboard's stream: a `summary` event carries a
    DashboardSummary, a `rollouts` event RolloutLines."""


class TripletLine(BaseModel):
    """A triplet without its bulk: token counts where the prompt or response has token ids."""

    reward: float | None
    prompt_tokens: int | None
    response_tokens: int | None
    prompt: str = Field(description="The start of the prompt, as text.")
    response: str = Field(description="The start of the response, as text.")


class SpanLine(BaseModel):
    """A span of a rollout's trace: enough to draw a waterfall."""

    name: str
    span_id: str | None
    parent_id: str | None
    attempt_id: str | None
    start_time: float | None
    end_time: float | None
    status: str | None


class TaskHistory(BaseModel):
    """A task and every attempt at it, oldest first."""

    task: TaskRecord
    attempts: list[Attempt]


class RolloutResult(BaseModel):
    """What a worker reported, its bulk summarised (the whole is at `/v1/rollouts/{id}`)."""

    seq: int
    received_time: float
    attempt: int | None
    unsolicited: bool
    final_reward: float | None
    metadata: dict[str, Any]
    triplets: list[TripletLine]
    triplets_total: int
    logs: list[str] = Field(description="The last lines of its logs.")
    logs_total: int


class RolloutDetail(BaseModel):
    """All there is about one rollout id: its task and attempts, its result, its spans."""

    rollout_id: str
    mode: str | None
    input: Any = None
    task: TaskHistory | None = Field(description="null for an unsolicited rollout.")
    result: RolloutResult | None = Field(description="null until a result has arrived.")
    spans: list[SpanLine] = Field(description="The spans its attempts sent, else its legacy trace's.")
    spans_total: int


class FailureList(BaseModel):
    """Tasks that failed or needed more than one attempt, latest claim first."""

    tasks: list[TaskHistory]
    has_more: bool


class WorkerList(BaseModel):
    """The workers the store API has heard of, latest heartbeat first."""

    workers: list[Worker]
    total: int


class ResourcesPage(BaseModel):
    resources: list[ResourcesUpdate]
    total: int
    latest_id: str | None


class SignInCode(BaseModel):
    code: str = Field(description="Traded once for the token at POST /dashboard/sign-in.")
    expires_in: float = Field(description="Seconds the code stays good for.")


class Stopping(BaseModel):
    status: str = "stopping"


class ErrorMessage(BaseModel):
    """A refusal, with its reason in one sentence."""

    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ValidationErrors(BaseModel):
    """A body that is not JSON or does not validate: every problem found."""

    detail: list[ValidationIssue]
