"""The management API under `/v1`: what the CLI and scripts use to drive the daemon.

`docs/api.md` is the contract. Every route is one `Endpoint` in `ENDPOINTS`, from which
both the Starlette routes and the OpenAPI document are made.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any, BinaryIO

from pydantic import Field
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agl_cli import __version__
from agl_cli.api_limits import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_SEQ
from agl_cli.models import NewTask, ResourcesUpdate, TaskStatus
from agl_cli.server import dashboard, schemas, sign_in, task_bodies
from agl_cli.server.broker import broker_of
from agl_cli.server.openapi import EVENT_STREAM, SQLITE, Endpoint, Param, build_document, routes_of
from agl_cli.server.requests import bool_param, choice_param, int_param, read_model
from agl_cli.server.responses import ORJSONResponse, error
from agl_cli.server.shapes import resources_json, status_json, task_json
from agl_cli.server.stream import position_params, rollout_json, stream_rollouts
from agl_cli.store import (
    InvalidResourcesError,
    InvalidTransitionError,
    TaskRecord,
    UnknownBatchError,
    UnknownTaskError,
    quoted,
)

STATUSES = tuple(status.value for status in TaskStatus)
BACKUP_CHUNK = 1 << 20  # bytes of a backup read and sent at a time

# --- tasks ---------------------------------------------------------------------------------


async def queue_tasks(request: Request) -> Response:
    """Queue tasks in one transaction: all of them, in order, or none."""
    ids = await broker_of(request).queue_tasks(await read_tasks(request))
    return ORJSONResponse({"rollout_ids": ids}, status_code=201)


async def read_tasks(request: Request) -> Sequence[NewTask]:
    return task_bodies.read_tasks(await request.body())


async def list_tasks(request: Request) -> Response:
    """Tasks in the order they were queued, optionally only those in one status, and how
    many there are."""
    status = choice_param(request, "status", STATUSES)
    limit = int_param(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    offset = int_param(request, "offset", 0, 0, MAX_SEQ)
    records, total = await broker_of(request).list_tasks(
        TaskStatus(status) if status else None, limit, offset
    )
    return ORJSONResponse({"tasks": [task_json(record) for record in records], "total": total})


async def show_task(request: Request) -> Response:
    """One task and where it is in its life cycle."""
    rollout_id = request.path_params["rollout_id"]
    record = await broker_of(request).get_task(rollout_id)
    if record is None:
        return _unknown(request, str(UnknownTaskError(rollout_id)))
    return ORJSONResponse(task_json(record))


async def cancel_task(request: Request) -> Response:
    """Take a queued or claimed task out of play; a rollout that still comes is kept."""
    rollout_ids = [request.path_params["rollout_id"]]
    return await _change(
        request, broker_of(request).cancel, rollout_ids, lambda records: task_json(records[0])
    )


async def cancel_tasks(request: Request) -> Response:
    """`cancel_task` for several at once: all of them, or none."""
    body = await read_model(request, schemas.TaskIds)
    return await _change(request, broker_of(request).cancel, body.rollout_ids, _task_list)


async def retry_tasks(request: Request) -> Response:
    """Queue failed or cancelled tasks again, at the back of the queue: all of them, or none."""
    body = await read_model(request, schemas.TaskIds)
    return await _change(request, broker_of(request).retry, body.rollout_ids, _task_list)


def _task_list(records: list[TaskRecord]) -> object:
    return {"tasks": [task_json(record) for record in records]}


async def _change(
    request: Request,
    change: Callable[[list[str]], Awaitable[list[TaskRecord]]],
    rollout_ids: list[str],
    answer: Callable[[list[TaskRecord]], object],
) -> Response:
    try:
        records = await change(rollout_ids)
    except UnknownTaskError as exc:
        return _unknown(request, str(exc))
    except InvalidTransitionError as exc:
        return error(409, str(exc))
    return ORJSONResponse(answer(records))


def _unknown(request: Request, message: str) -> Response:
    """404 for an id with no task, which on a daemon that forgets tasks may have had one."""
    if broker_of(request).forget_tasks:
        forgets = "this daemon forgets a task once it ended longer than --rollout-retention ago"
        message = f"{message.removesuffix('.')} ({forgets})."
    return error(404, message)


async def cancel_queued(request: Request) -> Response:
    """Cancel every task queued when the request came; claimed ones run on."""
    return ORJSONResponse({"cancelled": await broker_of(request).cancel_queued()})


async def pause_queue(request: Request) -> Response:
    """Hand out no tasks until the queue is resumed; claims already made run on."""
    return await _set_paused(request, True)


async def resume_queue(request: Request) -> Response:
    """Hand out tasks again."""
    return await _set_paused(request, False)


async def _set_paused(request: Request, paused: bool) -> Response:
    broker = broker_of(request)
    await broker.set_paused(paused)
    return ORJSONResponse({"paused": broker.paused})


async def retry_failed(request: Request) -> Response:
    """Queue every failed task again, oldest first."""
    return ORJSONResponse({"retried": await broker_of(request).retry_failed()})


# --- batches -------------------------------------------------------------------------------


async def create_batch(request: Request) -> Response:
    """Open a batch: tasks staged into it are queued together when it is committed."""
    return ORJSONResponse({"batch_id": await broker_of(request).create_batch()}, status_code=201)


async def stage_tasks(request: Request) -> Response:
    """Add tasks to a batch; they stay invisible until the batch is committed."""
    batch_id = request.path_params["batch_id"]
    tasks = await read_tasks(request)
    try:
        ids, staged = await broker_of(request).stage_tasks(batch_id, tasks)
    except UnknownBatchError as exc:
        return error(404, str(exc))
    return ORJSONResponse({"rollout_ids": ids, "staged": staged})


async def commit_batch(request: Request) -> Response:
    """Queue every staged task of a batch in one transaction, in staging order."""
    try:
        queued = await broker_of(request).commit_batch(request.path_params["batch_id"])
    except UnknownBatchError as exc:
        return error(404, str(exc))
    return ORJSONResponse({"queued": queued})


async def discard_batch(request: Request) -> Response:
    """Drop a batch and everything staged in it; nothing is queued."""
    try:
        discarded = await broker_of(request).discard_batch(request.path_params["batch_id"])
    except UnknownBatchError as exc:
        return error(404, str(exc))
    return ORJSONResponse({"discarded": discarded})


# --- resources -----------------------------------------------------------------------------


async def publish_resources(request: Request) -> Response:
    """Publish a bundle; it becomes the latest, and an existing id gets a new version."""
    body = await read_model(request, schemas.PublishBody)
    reveal = bool_param(request, "reveal")
    try:
        update = await broker_of(request).publish(body.resources, body.resources_id)
    except InvalidResourcesError as exc:
        return error(422, str(exc))
    return ORJSONResponse(resources_json(update, reveal), status_code=201)


async def list_resources(request: Request) -> Response:
    """Every published bundle, or the `last` published, oldest publish first, which one is
    the latest, and how many there are."""
    reveal = bool_param(request, "reveal")
    last = int_param(request, "last", 0, 1, MAX_LIST_LIMIT) or None  # absent: every bundle
    broker = broker_of(request)
    updates, total = await broker.list_resources(last)
    latest = broker.latest_resources()
    return ORJSONResponse(
        {
            "resources": [resources_json(update, reveal) for update in updates],
            "latest_id": latest.resources_id if latest else None,
            "total": total,
        }
    )


async def show_resources(request: Request) -> Response:
    """One bundle by id, or the latest one."""
    reveal = bool_param(request, "reveal")
    resources_id = request.path_params["resources_id"]
    broker = broker_of(request)
    if resources_id == "latest":
        update = broker.latest_resources()
        if update is None:
            return error(404, "No resources have been published yet.")
    else:
        update = await broker.get_resources(resources_id)
        if update is None:
            return error(404, f"No resources with id {quoted(resources_id)}.")
    return ORJSONResponse(resources_json(update, reveal))


# --- rollouts ------------------------------------------------------------------------------


async def list_rollouts(request: Request) -> Response:
    """Kept rollouts with a sequence number above `since`, oldest first."""
    since = int_param(request, "since", 0, 0, MAX_SEQ)
    limit = int_param(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    broker = broker_of(request)
    rollouts = await broker.rollouts_after(since, limit)
    last_seq = await broker.last_seq()
    return ORJSONResponse({"rollouts": [rollout_json(r) for r in rollouts], "last_seq": last_seq})


async def show_rollout(request: Request) -> Response:
    """One kept rollout by its id; for a task without one, where that task is."""
    return await _show_rollout(request, request.path_params["rollout_id"])


async def stream_or_show_rollout(request: Request) -> Response:
    """The stream of rollouts; asked for JSON and not for events (as agl's own client asks
    for everything), the rollout whose id is `stream`, which a worker may have chosen."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept and EVENT_STREAM not in accept:
        return await _show_rollout(request, "stream")
    return await stream_rollouts(request)


async def _show_rollout(request: Request, rollout_id: str) -> Response:
    broker = broker_of(request)
    # The task first, then its rollout: a task that finishes between the two reads is
    # shown with its result, never as unfinished.
    record = await broker.get_task(rollout_id)
    stored = await broker.get_rollout(rollout_id)
    if stored is None:
        if record is None:
            return _unknown(request, f"No rollout with id {quoted(rollout_id)}.")
        return error(404, f"Rollout {quoted(rollout_id)} {_WHY_NO_RESULT[record.status]}.")
    return ORJSONResponse(rollout_json(stored))


_WHY_NO_RESULT = {
    TaskStatus.QUEUED: "has no result yet: its task is queued",
    TaskStatus.CLAIMED: "has no result yet: its task is claimed",
    # a task completes in the transaction that stores its result: only retention takes it
    TaskStatus.COMPLETED: "has no result any more: it was deleted once older than --rollout-retention",
    TaskStatus.FAILED: "has no result: its task failed",
    TaskStatus.CANCELLED: "has no result: its task was cancelled",
}


# --- the daemon ----------------------------------------------------------------------------


async def status(request: Request) -> Response:
    """Version, address, counts per task status, and claim and rollout rates."""
    snapshot = await broker_of(request).snapshot()
    return ORJSONResponse(status_json(request, snapshot))


async def shutdown(request: Request) -> Response:
    """Stop the daemon gracefully, as SIGTERM does, once this answer has gone out."""
    stop = request.app.state.request_shutdown
    if stop is None:
        return error(501, "This server runs inside another program; stop it from there.")
    return ORJSONResponse({"status": "stopping"}, status_code=202, background=BackgroundTask(stop))


async def backup(request: Request) -> Response:
    """The whole store as one SQLite file, as of this request (every write answered before
    it is in it): a daemon can be started on it. Workers are served meanwhile."""
    copy = await broker_of(request).backup()
    size = os.fstat(copy.fileno()).st_size
    return StreamingResponse(
        _read_out(copy),
        media_type=SQLITE,
        headers={"Content-Length": str(size), "Content-Disposition": 'attachment; filename="agl.db"'},
    )


async def _read_out(copy: BinaryIO) -> AsyncIterator[bytes]:
    with copy:  # closed, and so gone, even if the client leaves half-way
        while chunk := await asyncio.to_thread(copy.read, BACKUP_CHUNK):
            yield chunk


async def openapi_document(request: Request) -> Response:
    """This API described as OpenAPI 3.1, generated from the models it validates with."""
    return ORJSONResponse(management_openapi())


@functools.cache
def management_openapi() -> dict[str, Any]:
    return build_document(ENDPOINTS, title="agl management API", version=__version__)


# --- the route table -----------------------------------------------------------------------

_Limit = Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT)]
_Count = Annotated[int, Field(ge=0, le=MAX_SEQ)]
_LIMIT = Param("limit", _Limit, f"How many at most (default {DEFAULT_LIST_LIMIT}).")
_REVEAL = Param("reveal", bool, "Show API keys instead of `***`.")
_GONE = {404: None}
_INVALID = {422: None}
# What a change of tasks named in the body answers: all of them, or the first it cannot make.
_TASKS_CHANGED = {200: schemas.TaskList, **_GONE, 409: None, **_INVALID}

ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST", "/v1/tasks", queue_tasks, "Queue tasks",
        {201: schemas.RolloutIds, **_INVALID}, body=schemas.QueueRequest,
    ),
    Endpoint(
        "GET", "/v1/tasks", list_tasks, "List tasks", {200: schemas.TaskPage, **_INVALID},
        params=(
            Param("status", TaskStatus, "Only tasks in this status."),
            _LIMIT,
            Param("offset", _Count, "How many matching tasks to skip."),
        ),
    ),
    Endpoint("GET", "/v1/tasks/{rollout_id:rest}", show_task, "Show a task", {200: schemas.TaskRecord, **_GONE}),
    Endpoint(
        "POST", "/v1/tasks/{rollout_id:rest}/cancel", cancel_task, "Cancel a task",
        {200: schemas.TaskRecord, **_GONE, 409: None},
    ),
    Endpoint(
        "POST", "/v1/tasks/cancel", cancel_tasks, "Cancel tasks (all or none)",
        _TASKS_CHANGED, body=schemas.TaskIds,
    ),
    Endpoint(
        "POST", "/v1/queue/cancel", cancel_queued, "Cancel every queued task",
        {200: schemas.Cancelled},
    ),
    Endpoint(
        "POST", "/v1/queue/pause", pause_queue, "Pause the queue: hand out no tasks",
        {200: schemas.QueueState},
    ),
    Endpoint(
        "POST", "/v1/queue/resume", resume_queue, "Resume the queue",
        {200: schemas.QueueState},
    ),
    Endpoint(
        "POST", "/v1/tasks/retry", retry_tasks, "Retry failed or cancelled tasks (all or none)",
        _TASKS_CHANGED, body=schemas.TaskIds,
    ),
    Endpoint(
        "POST", "/v1/tasks/retry-failed", retry_failed, "Retry every failed task",
        {200: schemas.Retried},
    ),
    Endpoint("POST", "/v1/batches", create_batch, "Open a batch", {201: schemas.BatchCreated}),
    Endpoint(
        "POST", "/v1/batches/{batch_id}/tasks", stage_tasks, "Stage tasks in a batch",
        {200: schemas.Staged, **_GONE, **_INVALID}, body=schemas.QueueRequest,
    ),
    Endpoint(
        "POST", "/v1/batches/{batch_id}/commit", commit_batch, "Queue a batch",
        {200: schemas.Committed, **_GONE},
    ),
    Endpoint(
        "DELETE", "/v1/batches/{batch_id}", discard_batch, "Discard a batch",
        {200: schemas.Discarded, **_GONE},
    ),
    Endpoint(
        "POST", "/v1/resources", publish_resources, "Publish resources",
        {201: ResourcesUpdate, **_INVALID}, body=schemas.PublishRequest, params=(_REVEAL,),
    ),
    Endpoint(
        "GET", "/v1/resources", list_resources, "List resources",
        {200: schemas.ResourcesList, **_INVALID},
        params=(_REVEAL, Param("last", _Limit, "Only the N published last (default: every bundle).")),
    ),
    Endpoint(
        "GET", "/v1/resources/{resources_id:rest}", show_resources, "Show resources (an id, or `latest`)",
        {200: ResourcesUpdate, **_GONE, **_INVALID}, params=(_REVEAL,),
    ),
    Endpoint(
        "GET", "/v1/rollouts", list_rollouts, "List rollouts",
        {200: schemas.RolloutList, **_INVALID},
        params=(Param("since", _Count, "Only rollouts with a greater sequence number."), _LIMIT),
    ),
    Endpoint(  # before /v1/rollouts/{rollout_id}, which would take "stream" for an id
        "GET", "/v1/rollouts/stream", stream_or_show_rollout, "Follow rollouts as they arrive",
        {200: schemas.RolloutRecord, **_INVALID},
        params=position_params("Start after this sequence number, or after the last one."),
        media_type=EVENT_STREAM,
    ),
    Endpoint(
        "GET", "/v1/rollouts/{rollout_id:rest}", show_rollout, "Show a rollout",
        {200: schemas.RolloutRecord, **_GONE},
    ),
    Endpoint("GET", "/v1/status", status, "The daemon's status", {200: schemas.Status}),
    Endpoint("POST", "/v1/shutdown", shutdown, "Stop the daemon", {202: schemas.Stopping, 501: None}),
    Endpoint(
        "GET", "/v1/backup", backup, "A copy of the whole store",
        {200: None, 503: None, 507: None}, media_type=SQLITE,
    ),
    Endpoint("GET", "/v1/openapi.json", openapi_document, "This document", {200: None}),
    *dashboard.ENDPOINTS,
    *sign_in.ENDPOINTS,
]  # fmt: skip

routes = routes_of(ENDPOINTS)
