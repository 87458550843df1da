"""The four worker routes of the Agent Lightning legacy protocol, wire-compatible with 0.3.0.

Every worker claims and reports through them, so they are the hot path of a run and are
served by `WorkerRoutes`, plain ASGI in front of the Starlette app: no routing table,
no middleware stack, no `Request` object, only what the protocol needs. It keeps what
the stack would give them: the body size limit (413), 405 for another method, a 500 for
an unexpected error, and a latency observation under the route's template. Every other
path goes on to the app.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import orjson
from pydantic import Field
from starlette.datastructures import QueryParams
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agl_cli.models import GenericResponse, ResourcesUpdate, Rollout, TaskIfAny
from agl_cli.server.broker import Broker
from agl_cli.server.limits import declared_too_large, too_large
from agl_cli.server.metrics import Metrics
from agl_cli.server.openapi import Endpoint, Param
from agl_cli.server.requests import BadRequest, number_param, parse_model
from agl_cli.server.responses import ORJSONResponse, error, storage_failure
from agl_cli.store import StorageError

MAX_WAIT_SECONDS = 600.0
_Wait = Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)]
NO_TASK = orjson.dumps({"is_available": False, "task": None})
NO_RESOURCES = "No resources have been set on the server."
RESOURCES_PREFIX = "/resources/"

# (status, JSON body) of an answer
Answer = tuple[int, bytes]
Handler = Callable[["WorkerRoutes", Scope, Receive], Awaitable[Answer]]


class _Disconnected(Exception):
    """The client went away while sending its body: there is no one to answer."""


class WorkerRoutes:
    """Answers `GET /task`, `POST /rollout` and `GET /resources/{latest,<id>}` itself."""

    def __init__(self, app: ASGIApp, broker: Broker, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.broker = broker
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route_of(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        template, method, handler = route
        started = time.perf_counter()
        status = 500  # what an unexpected error is answered with (below)
        try:
            if scope["method"] != method:
                status = await _send_response(_method_not_allowed(method), scope, receive, send)
                return
            try:
                status, body = await handler(self, scope, receive)
            except BadRequest as exc:
                status = await _send_response(exc.response, scope, receive, send)
                return
            except StorageError as exc:  # the disk said no: the answer says so, and the daemon goes on
                status = await _send_response(storage_failure(exc), scope, receive, send)
                return
            except _Disconnected:
                status = 499  # nginx's name for it; nothing is sent
                return
            except Exception:  # answered as Starlette would, then raised for uvicorn to log
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
                raise
            await _send_json(send, status, body)
        finally:
            self.metrics.observe_route(template, scope["method"], status, time.perf_counter() - started)

    # the routes --------------------------------------------------------------------------

    async def next_task(self, scope: Scope, receive: Receive) -> Answer:
        """`GET /task[?wait=S]`: the next task, or `is_available: false` (after waiting up to S)."""
        wait = 0.0
        if scope["query_string"]:
            wait = number_param(QueryParams(scope["query_string"]), "wait", 0.0, 0.0, MAX_WAIT_SECONDS, float)
        claim = await self.broker.claim(wait)
        if claim is None:
            return 200, NO_TASK
        return 200, b'{"is_available":true,"task":' + claim.wire + b"}"

    async def post_rollout(self, scope: Scope, receive: Receive) -> Answer:
        body = await self._read_body(scope, receive)
        rollout = parse_model(body, Rollout)
        await self.broker.report(rollout, body)
        message = f"Rollout {rollout.rollout_id} received and stored."
        return 200, orjson.dumps({"status": "ok", "message": message, "data": None})

    async def latest_resources(self, scope: Scope, receive: Receive) -> Answer:
        update = self.broker.latest_resources()
        if update is None:
            raise BadRequest(error(404, NO_RESOURCES))
        return 200, orjson.dumps(update.model_dump(mode="json"))

    async def resources_by_id(self, scope: Scope, receive: Receive) -> Answer:
        resources_id = scope["path"][len(RESOURCES_PREFIX) :]
        update = await self.broker.get_resources(resources_id)
        if update is None:
            raise BadRequest(error(404, f"Resource ID '{resources_id}' not found."))
        return 200, orjson.dumps(update.model_dump(mode="json"))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        if declared_too_large(scope, self.max_body_bytes):
            raise BadRequest(too_large(self.max_body_bytes))
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BadRequest(too_large(self.max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


ENDPOINTS = [
    Endpoint(
        "GET", "/task", WorkerRoutes.next_task, "Claim the next task", {200: TaskIfAny, 422: None},
        params=(Param("wait", _Wait, "Seconds to wait for a task when none is queued (a long poll)."),),
    ),
    Endpoint(
        "POST", "/rollout", WorkerRoutes.post_rollout, "Report a rollout",
        {200: GenericResponse, 413: None, 422: None}, body=Rollout,
    ),
    Endpoint(
        "GET", "/resources/latest", WorkerRoutes.latest_resources, "The latest resources",
        {200: ResourcesUpdate, 404: None},
    ),
    Endpoint(
        "GET", "/resources/{resources_id}", WorkerRoutes.resources_by_id, "Resources by id",
        {200: ResourcesUpdate, 404: None},
    ),
]  # fmt: skip
_ROUTES: dict[str, tuple[str, str, Handler]] = {
    endpoint.path: (endpoint.path, endpoint.method, endpoint.handler)
    for endpoint in ENDPOINTS
    if "{" not in endpoint.path
}
[_BY_ID] = [
    (endpoint.path, endpoint.method, endpoint.handler) for endpoint in ENDPOINTS if "{" in endpoint.path
]


def _route_of(scope: Scope) -> tuple[str, str, Handler] | None:
    path: str = scope["path"]
    route = _ROUTES.get(path)
    if route is None and path.startswith(RESOURCES_PREFIX) and "/" not in path[len(RESOURCES_PREFIX) :]:
        return _BY_ID if len(path) > len(RESOURCES_PREFIX) else None
    return route


def _method_not_allowed(allowed: str) -> ORJSONResponse:
    return ORJSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allowed})


async def _send_response(response: ORJSONResponse, scope: Scope, receive: Receive, send: Send) -> int:
    await response(scope, receive, send)
    return response.status_code


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
