"""The management API under `/v1`: what the CLI and scripts use to drive the daemon."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.server.broker import broker_of
from agl_cli.server.requests import read_model
from agl_cli.server.responses import ORJSONResponse
from agl_cli.store import TaskSpec


class QueueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1)


async def queue_tasks(request: Request) -> Response:
    """`POST /v1/tasks`: queue a batch of tasks, all or none."""
    batch = await read_model(request, QueueRequest)
    ids = broker_of(request).queue_tasks(batch.tasks)
    return ORJSONResponse({"rollout_ids": ids}, status_code=201)


routes = [
    Route("/v1/tasks", queue_tasks, methods=["POST"]),
]
