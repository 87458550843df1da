"""The management API under `/v1`: what the CLI and scripts use to drive the daemon."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.server.broker import broker_of
from agl_cli.server.requests import int_param, read_model
from agl_cli.server.responses import ORJSONResponse, error
from agl_cli.store import StoredRollout, StoreError, TaskSpec


class QueueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1)


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resources: dict[str, Any] = Field(min_length=1)
    resources_id: str | None = None


async def queue_tasks(request: Request) -> Response:
    """`POST /v1/tasks`: queue a batch of tasks, all or none."""
    batch = await read_model(request, QueueRequest)
    ids = broker_of(request).queue_tasks(batch.tasks)
    return ORJSONResponse({"rollout_ids": ids}, status_code=201)


async def publish_resources(request: Request) -> Response:
    """`POST /v1/resources`: publish a bundle; it becomes the latest."""
    body = await read_model(request, PublishRequest)
    try:
        update = broker_of(request).publish(body.resources, body.resources_id)
    except StoreError as exc:
        return error(422, str(exc))
    return ORJSONResponse(update.model_dump(mode="json"), status_code=201)


async def list_rollouts(request: Request) -> Response:
    """`GET /v1/rollouts?since=SEQ&limit=N`: kept rollouts after SEQ, oldest first."""
    since = int_param(request, "since", 0, 0, 2**62)
    limit = int_param(request, "limit", 100, 1, 10_000)
    rollouts = broker_of(request).store.rollouts_after(since, limit)
    return ORJSONResponse({"rollouts": [rollout_json(r) for r in rollouts]})


async def status(request: Request) -> Response:
    """`GET /v1/status`: counts per task status and of rollouts."""
    broker = broker_of(request)
    counts = broker.store.counts()
    return ORJSONResponse(
        {
            "tasks": {status.value: number for status, number in counts.tasks.items()},
            "rollouts": counts.rollouts,
            "unsolicited": counts.unsolicited,
            "duplicates": counts.duplicates,
            "resources": counts.resources,
            "last_seq": broker.store.last_seq(),
        }
    )


def rollout_json(stored: StoredRollout) -> dict[str, Any]:
    """A kept rollout with its own fields first, then agl's bookkeeping."""
    return {
        **stored.rollout.model_dump(mode="json"),
        "seq": stored.seq,
        "received_time": stored.received_time,
        "attempt": stored.attempt,
        "unsolicited": stored.unsolicited,
    }


routes = [
    Route("/v1/tasks", queue_tasks, methods=["POST"]),
    Route("/v1/resources", publish_resources, methods=["POST"]),
    Route("/v1/rollouts", list_rollouts, methods=["GET"]),
    Route("/v1/status", status, methods=["GET"]),
]
