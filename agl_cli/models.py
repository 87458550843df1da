"""Wire types of the Agent Lightning legacy protocol, and agl's own task states.

Field names, defaults and optionality follow what agentlightning 0.3.0 workers send and
expect, so that a payload produced by either side validates on the other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, TypeAlias, Union, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agl_cli.task_status import TaskStatus as TaskStatus  # re-exported: part of the models

Mode = Literal["train", "val", "test"]


class Task(BaseModel):
    """A unit of work handed to a worker, as `GET /task` returns it."""

    rollout_id: str
    input: Any = None
    mode: Mode | None = None
    resources_id: str | None = None
    create_time: float | None = None
    last_claim_time: float | None = None
    num_claims: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(BaseModel):
    """What a submitter says about a new task; the daemon fills in the rest.

    Shared by the server, which validates with it, and `agl queue`, which checks each task
    of a file before uploading it.
    """

    model_config = ConfigDict(extra="forbid")

    input: Any  # required, though it may be null: a task without one is a mistake
    mode: Mode | None = None
    resources_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("resources_id")
    @classmethod
    def _non_empty_id(cls, value: str | None) -> str | None:
        if value is not None and blank(value):
            raise ValueError("resources_id must not be empty")
        return value


def blank(resources_id: str) -> bool:
    """A resources id `TaskSpec` refuses: empty, or nothing but white space."""
    return not resources_id.strip()


class PlainTask(NamedTuple):
    """A task given as parsed JSON that `TaskSpec` would take exactly as it is (see
    `plain_task`), with `TaskSpec`'s fields: for the store, as good as one."""

    input: Any
    mode: Mode | None
    resources_id: str | None
    metadata: dict[str, Any]


class ScannedTask(NamedTuple):
    """A task whose input and metadata were checked as `TaskSpec` checks them but kept as
    the JSON text they came in (`server/task_bodies.py`), which the store keeps as it is."""

    input_json: str
    mode: Mode | None
    resources_id: str | None
    metadata_json: str


NewTask: TypeAlias = TaskSpec | PlainTask | ScannedTask  # a task to queue, as the store takes it


def input_and_metadata_json(task: NewTask) -> tuple[str, str]:
    """A task's input and metadata as the JSON text the store keeps."""
    if isinstance(task, ScannedTask):
        return task.input_json, task.metadata_json
    return orjson.dumps(task.input).decode(), orjson.dumps(task.metadata).decode()


_TASK_FIELDS = frozenset(TaskSpec.model_fields)
_MODES = (None, *get_args(Mode))


def plain_task(value: Any) -> PlainTask | None:
    """`value` (parsed JSON) as a task, if it is one `TaskSpec` takes as it is; else None,
    which means "ask `TaskSpec`" (for its reasons), not "bad". In a fraction of pydantic's
    time, for the daemon, which reads `agl queue`'s million tasks 5,000 a request, and for
    `agl queue`, which checks each task by the daemon's rules before it goes up."""
    if type(value) is not dict or "input" not in value or not _TASK_FIELDS.issuperset(value):
        return None
    mode, resources_id = value.get("mode"), value.get("resources_id")
    metadata = value.get("metadata", {})
    if (
        mode not in _MODES
        or (resources_id is not None and (type(resources_id) is not str or blank(resources_id)))
        or type(metadata) is not dict
    ):
        return None
    return PlainTask(value["input"], mode, resources_id, metadata)


class TaskIfAny(BaseModel):
    is_available: bool
    task: Task | None = None


class Triplet(BaseModel):
    prompt: Any
    response: Any
    reward: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Rollout(BaseModel):
    """A worker's report for one task (agentlightning's `RolloutLegacy`).

    Unknown fields are kept: newer workers may send more than this server knows.
    """

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    task: Task | None = None
    final_reward: float | None = None
    triplets: list[Triplet] | None = None
    trace: list[dict[str, Any]] | None = None
    logs: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class _LLMEndpoint(BaseModel):
    endpoint: str
    model: str
    api_key: str | None = None
    sampling_parameters: dict[str, Any] = Field(default_factory=dict)


class LLM(_LLMEndpoint):
    resource_type: Literal["llm"] = "llm"


class ProxyLLM(_LLMEndpoint):
    resource_type: Literal["proxy_llm"] = "proxy_llm"


class PromptTemplate(BaseModel):
    resource_type: Literal["prompt_template"] = "prompt_template"
    template: str
    engine: Literal["jinja", "f-string", "poml"]


Resource = Annotated[Union[LLM, ProxyLLM, PromptTemplate], Field(discriminator="resource_type")]  # noqa: UP007
NamedResources = dict[str, Resource]


class ResourcesUpdate(BaseModel):
    """A published resource bundle, as `GET /resources/...` returns it."""

    resources_id: str
    create_time: float
    update_time: float
    version: int
    resources: NamedResources


class GenericResponse(BaseModel):
    status: str
    message: str | None = None
    data: Any = None
