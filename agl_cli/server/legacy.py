"""The four worker routes of the Agent Lightning legacy protocol, wire-compatible with 0.3.0."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.models import Rollout
from agl_cli.server.broker import broker_of
from agl_cli.server.requests import float_param, read_model
from agl_cli.server.responses import ORJSONResponse, error

MAX_WAIT_SECONDS = 600.0


async def next_task(request: Request) -> Response:
    """`GET /task[?wait=S]`: the next task, or `is_available: false` (after waiting up to S)."""
    wait = float_param(request, "wait", 0.0, 0.0, MAX_WAIT_SECONDS)
    task = await broker_of(request).claim(wait)
    if task is None:
        return ORJSONResponse({"is_available": False, "task": None})
    return ORJSONResponse({"is_available": True, "task": task.model_dump(mode="json")})


async def latest_resources(request: Request) -> Response:
    update = broker_of(request).latest_resources()
    if update is None:
        return error(404, "No resources have been set on the server.")
    return ORJSONResponse(update.model_dump(mode="json"))


async def resources_by_id(request: Request) -> Response:
    resources_id = request.path_params["resources_id"]
    update = await broker_of(request).get_resources(resources_id)
    if update is None:
        return error(404, f"Resource ID '{resources_id}' not found.")
    return ORJSONResponse(update.model_dump(mode="json"))


async def post_rollout(request: Request) -> Response:
    rollout = await read_model(request, Rollout)
    await broker_of(request).report(rollout)
    return ORJSONResponse(
        {"status": "ok", "message": f"Rollout {rollout.rollout_id} received and stored.", "data": None}
    )


routes = [
    Route("/task", next_task, methods=["GET"]),
    Route("/resources/latest", latest_resources, methods=["GET"]),
    Route("/resources/{resources_id}", resources_by_id, methods=["GET"]),
    Route("/rollout", post_rollout, methods=["POST"]),
]
