"""The store API under `/v1/agl`: what agentlightning 0.3.0's `LightningStoreClient`, its
runners and its algorithms speak to `LightningStoreServer` (docs/store-api.md).

Shapes, status codes and error bodies are 0.3.0's: bodies and queries that do not
validate get FastAPI's 422 list, a bad page or sort its 400 sentence, a lookup of
something unknown `null` or an empty page. Where 0.3.0 answers an unknown rollout or
attempt in an update with a 500 (which its client retries for 8 s before it raises),
agl answers 404 at once. These routes are open, as 0.3.0's are: its client sends no
credentials.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from agl_cli.models import NamedResources, ResourcesUpdate
from agl_cli.server.broker import broker_of
from agl_cli.server.hangups import hang_up_heard
from agl_cli.server.openapi import Endpoint, Param, routes_of
from agl_cli.server.query_pages import PageBody
from agl_cli.server.requests import BadRequest, parse_json, parse_model, validated
from agl_cli.server.responses import ORJSONResponse, error, validation_error
from agl_cli.server.wakeups import StoppingError
from agl_cli.store import InvalidResourcesError, StoreError, UnknownAttemptError, UnknownRolloutError
from agl_cli.store_models import (
    Attempt,
    AttemptChanges,
    AttemptedRollout,
    AttemptQuery,
    DequeueBody,
    EnqueueBody,
    EnqueueRequest,
    Health,
    NextSequenceBody,
    Page,
    PageQuery,
    ResourcesQuery,
    Rollout,
    RolloutChanges,
    RolloutQuery,
    SequenceId,
    Span,
    SpanQuery,
    StartAttemptBody,
    StartRolloutBody,
    Statistics,
    WaitBody,
    Worker,
    WorkerChanges,
    WorkerQuery,
)

PREFIX = "/v1/agl"
MAX_DEQUEUE = 1_000  # "up to `limit`": a runner asking for a million gets them a thousand at a time
CHECKED_AT_ONCE = 1_000  # rollouts of an enqueue checked in one turn of the event loop (about 12 ms)
_ROLLOUTS = TypeAdapter(list[EnqueueRequest])
M = TypeVar("M", bound=BaseModel)


# --- reading requests -------------------------------------------------------------------------


async def _body(request: Request, model: type[M], optional: bool = False) -> tuple[M, set[str]]:
    """The body as `model`, and the fields it named (an update changes only those). An
    optional body may be absent or `null`."""
    raw = await request.body()
    if optional and (not raw.strip() or raw.strip() == b"null"):
        return model(), set()
    parsed = parse_model(raw, model, tame="names")  # 0.3.0's client writes a NaN as NaN
    return parsed, set(parsed.model_fields_set)


def _query(request: Request, model: type[M]) -> M:
    """Query parameters as `model`: a list field takes every value given for its name."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        given = request.query_params.getlist(name)
        if given:
            values[name] = given if _is_list(field.annotation) else given[-1]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise BadRequest(validation_error(exc, prefix="query")) from None


def _is_list(annotation: Any) -> bool:
    """Whether a field holds a list (`list[X]`, or `list[X] | None`)."""
    return typing.get_origin(annotation) is list or any(_is_list(arg) for arg in typing.get_args(annotation))


def _check_page(query: PageQuery, target: type[BaseModel]) -> None:
    """0.3.0's checks of a page and its sort, with its sentences."""
    if query.sort_by is not None and query.sort_by not in target.model_fields:
        allowed = ", ".join(target.model_fields)
        raise BadRequest(error(400, f"Invalid sort_by: {query.sort_by}, allowed fields are: {allowed}"))
    if query.limit == 0 or query.limit < -1:
        raise BadRequest(error(400, "Limit must be greater than 0 or -1 for no limit"))
    if query.offset < 0:
        raise BadRequest(error(400, "Offset must be greater than or equal to 0"))


def _changes(parsed: BaseModel, named: set[str], not_null: tuple[str, ...]) -> dict[str, Any]:
    """The fields an update named, refusing null where 0.3.0 does."""
    changes = {name: getattr(parsed, name) for name in named}
    for name in not_null:
        if name in changes and changes[name] is None:
            raise BadRequest(error(400, f"{name} is invalid; it cannot be a null value."))
    return {
        name: value.model_dump() if isinstance(value, BaseModel) else value for name, value in changes.items()
    }


def _not_found(exc: StoreError) -> Response:
    return error(404, str(exc))


Query = TypeVar("Query", bound=PageQuery)
Handler = Callable[[Request], Awaitable[Response]]


def _paged(
    name: str,
    model: type[Query],
    target: type[BaseModel],
    fetch: Callable[[Request, Query], Awaitable[PageBody]],
) -> tuple[Handler, Handler]:
    """A query's two routes, as 0.3.0 has them: `GET` with query parameters, and `POST
    .../search` with the same fields in a JSON body; both check the page and the sort.
    `name` names them (`query_<name>`, `search_<name>`) in the OpenAPI document."""

    async def by_parameters(request: Request) -> Response:
        query = _query(request, model)
        _check_page(query, target)
        return (await fetch(request, query)).response()

    async def by_body(request: Request) -> Response:
        query, _ = await _body(request, model)
        _check_page(query, target)
        return (await fetch(request, query)).response()

    by_parameters.__name__, by_body.__name__ = f"query_{name}", f"search_{name}"
    return by_parameters, by_body


# --- rollouts and the queue --------------------------------------------------------------------


async def health(request: Request) -> Response:
    return ORJSONResponse({"status": "ok"})


async def enqueue(request: Request) -> Response:
    payload = parse_json(await request.body(), tame="names")
    given = payload.get("rollouts") if isinstance(payload, dict) else None
    if isinstance(given, list) and len(given) > CHECKED_AT_ONCE:
        rollouts = await _checked_in_parts(payload, given)
    else:
        rollouts = validated(payload, EnqueueBody).rollouts
    return ORJSONResponse(await broker_of(request).enqueue_rollouts(rollouts), status_code=201)


async def _checked_in_parts(payload: Any, given: list[Any]) -> list[EnqueueRequest]:
    """A large enqueue's rollouts checked a part at a time, with a turn of the event loop
    for other requests between two parts: 100,000 of them take pydantic about a second.
    A part that fails is told as the whole body's check tells it."""
    checked: list[EnqueueRequest] = []
    for start in range(0, len(given), CHECKED_AT_ONCE):
        try:
            checked += _ROLLOUTS.validate_python(given[start : start + CHECKED_AT_ONCE])
        except ValidationError:
            return validated(payload, EnqueueBody).rollouts
        await asyncio.sleep(0)
    return checked


async def dequeue(request: Request) -> Response:
    """Up to `limit` rollouts, each with its new attempt (at most `MAX_DEQUEUE` at once)."""
    body, _ = await _body(request, DequeueBody, optional=True)
    if body.limit <= 0:
        return ORJSONResponse([])
    return ORJSONResponse(
        await broker_of(request).dequeue_rollouts(min(body.limit, MAX_DEQUEUE), body.worker_id)
    )


async def start_rollout(request: Request) -> Response:
    body, _ = await _body(request, StartRolloutBody)
    return ORJSONResponse(await broker_of(request).start_rollout(body), status_code=201)


rollout_queries = _paged(
    "rollouts", RolloutQuery, Rollout, lambda request, query: broker_of(request).query_rollouts(query)
)


async def get_rollout(request: Request) -> Response:
    """A rollout with its latest attempt; `null` for an unknown id (0.3.0 fails with a 500)."""
    return ORJSONResponse(await broker_of(request).get_rollout_shape(request.path_params["rollout_id"]))


async def update_rollout(request: Request) -> Response:
    body, named = await _body(request, RolloutChanges)
    changes = _changes(body, named, not_null=("status", "config"))
    try:
        return ORJSONResponse(
            await broker_of(request).update_rollout(request.path_params["rollout_id"], changes)
        )
    except UnknownRolloutError as exc:
        return _not_found(exc)


async def start_attempt(request: Request) -> Response:
    body, _ = await _body(request, StartAttemptBody, optional=True)
    try:
        shape = await broker_of(request).start_attempt(request.path_params["rollout_id"], body.worker_id)
    except UnknownRolloutError as exc:
        return _not_found(exc)
    return ORJSONResponse(shape, status_code=201)


attempt_queries = _paged(
    "attempts",
    AttemptQuery,
    Attempt,
    lambda request, query: broker_of(request).query_attempts(request.path_params["rollout_id"], query),
)


async def latest_attempt(request: Request) -> Response:
    return ORJSONResponse(await broker_of(request).latest_attempt(request.path_params["rollout_id"]))


async def update_attempt(request: Request) -> Response:
    body, named = await _body(request, AttemptChanges)
    changes = _changes(body, named, not_null=("status", "worker_id", "last_heartbeat_time", "metadata"))
    params = request.path_params
    try:
        return ORJSONResponse(
            await broker_of(request).update_attempt(params["rollout_id"], params["attempt_id"], changes)
        )
    except (UnknownRolloutError, UnknownAttemptError) as exc:
        return _not_found(exc)


async def wait_for_rollouts(request: Request) -> Response:
    """The finished rollouts among those named, once all are finished or the time is up."""
    body, _ = await _body(request, WaitBody)
    async with hang_up_heard(request.receive) as gone:
        try:
            finished = await broker_of(request).wait_for_rollouts(body.rollout_ids, body.timeout, gone)
        except StoppingError as exc:  # 0.3.0's client asks again, once /health answers
            response = error(503, f"{exc}; ask again once it is back.")
            response.headers["Retry-After"] = "5"
            return response
    return ORJSONResponse(finished)


# --- workers, resources, spans, the whole ------------------------------------------------------


worker_queries = _paged(
    "workers", WorkerQuery, Worker, lambda request, query: broker_of(request).query_workers(query)
)


async def get_worker(request: Request) -> Response:
    return ORJSONResponse(await broker_of(request).get_worker(request.path_params["worker_id"]))


async def update_worker(request: Request) -> Response:
    """A worker's heartbeat, with what it says about itself."""
    body, named = await _body(request, WorkerChanges, optional=True)
    changes = _changes(body, named, not_null=("heartbeat_stats",))
    stats: Mapping[str, Any] | None = changes.get("heartbeat_stats")
    return ORJSONResponse(await broker_of(request).heartbeat_worker(request.path_params["worker_id"], stats))


async def statistics(request: Request) -> Response:
    return ORJSONResponse(await broker_of(request).statistics())


resources_queries = _paged(
    "resources",
    ResourcesQuery,
    ResourcesUpdate,
    lambda request, query: broker_of(request).query_resources(query),
)


async def add_resources(request: Request) -> Response:
    return await _publish(request, None, status_code=201)


async def update_resources(request: Request) -> Response:
    """A new version of the bundle of that id (the first, if there is none yet)."""
    return await _publish(request, request.path_params["resources_id"], status_code=200)


async def _publish(request: Request, resources_id: str | None, status_code: int) -> Response:
    payload = parse_json(await request.body(), tame="names")
    try:
        resources = _RESOURCES.validate_python(payload)
    except ValidationError as exc:
        return validation_error(exc)
    try:
        update = await broker_of(request).publish_store_resources(resources, resources_id)
    except InvalidResourcesError as exc:  # an id agl cannot serve back (`latest`, too long)
        return error(400, str(exc))
    return ORJSONResponse(update.model_dump(mode="json"), status_code=status_code)


_RESOURCES: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)


async def get_latest_resources(request: Request) -> Response:
    update = broker_of(request).latest_resources()
    return ORJSONResponse(None if update is None else update.model_dump(mode="json"))


async def get_resources(request: Request) -> Response:
    update = await broker_of(request).get_resources(request.path_params["resources_id"])
    return ORJSONResponse(None if update is None else update.model_dump(mode="json"))


async def add_span(request: Request) -> Response:
    """Keep a span; `null` if one with its rollout, attempt and span id is kept already."""
    span, _ = await _body(request, Span)
    try:
        added = await broker_of(request).add_spans([span])
    except (UnknownRolloutError, UnknownAttemptError) as exc:
        return _not_found(exc)
    kept = added.spans[0]
    return ORJSONResponse(None if kept is None else orjson.Fragment(kept.model_dump_json()), status_code=201)


span_queries = _paged("spans", SpanQuery, Span, lambda request, query: broker_of(request).query_spans(query))


async def next_span_sequence_id(request: Request) -> Response:
    body, _ = await _body(request, NextSequenceBody)
    [number] = await broker_of(request).next_span_sequence_ids([body.rollout_id])
    return ORJSONResponse({"sequence_id": number})


# --- the route table ---------------------------------------------------------------------------


def _query_params(model: type[PageQuery]) -> tuple[Param, ...]:
    """A query model's fields as the query parameters of its `GET` route."""
    return tuple(
        Param(
            name,
            field.annotation,
            f"As `{name}` in the body of `POST .../search`.",
            required=field.is_required(),
        )
        for name, field in model.model_fields.items()
    )


_REFUSED = {400: None, 422: None}
_UNKNOWN = {404: None, 422: None}


def _query_routes(
    path: str, summary: str, handlers: tuple[Handler, Handler], model: type[PageQuery], items: Any
) -> list[Endpoint]:
    """A query's `GET` (its fields as query parameters) and its `POST .../search` (the
    same fields as a body), both answering a page of `items`."""
    by_parameters, by_body = handlers
    answers = {200: Page[items], **_REFUSED}
    return [
        Endpoint("GET", path, by_parameters, summary, answers, params=_query_params(model)),
        Endpoint("POST", f"{path}/search", by_body, summary, answers, body=model),
    ]


# Order matters where a path could be taken for an id: `search` and `latest` first.
ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", f"{PREFIX}/health", health, "The store answers", {200: Health}),
    Endpoint("GET", f"{PREFIX}/statistics", statistics, "Counts of everything kept", {200: Statistics}),
    Endpoint(
        "POST", f"{PREFIX}/queues/rollouts/enqueue", enqueue, "Queue rollouts",
        {201: list[Rollout], 422: None}, body=EnqueueBody,
    ),
    Endpoint(
        "POST", f"{PREFIX}/queues/rollouts/dequeue", dequeue, "Take queued rollouts",
        {200: list[AttemptedRollout], 422: None}, body=DequeueBody,
    ),
    Endpoint(
        "POST", f"{PREFIX}/rollouts", start_rollout, "Start a rollout at once",
        {201: AttemptedRollout, 422: None}, body=StartRolloutBody,
    ),
    *_query_routes(
        f"{PREFIX}/rollouts", "Query rollouts", rollout_queries, RolloutQuery, AttemptedRollout | Rollout
    ),
    Endpoint(
        "GET", f"{PREFIX}/rollouts/{{rollout_id}}", get_rollout, "A rollout",
        {200: AttemptedRollout | Rollout | None},
    ),
    Endpoint(
        "POST", f"{PREFIX}/rollouts/{{rollout_id}}", update_rollout, "Change a rollout",
        {200: AttemptedRollout | Rollout, 400: None, **_UNKNOWN}, body=RolloutChanges,
    ),
    Endpoint(
        "POST", f"{PREFIX}/rollouts/{{rollout_id}}/attempts", start_attempt, "Start an attempt",
        {201: AttemptedRollout, **_UNKNOWN}, body=StartAttemptBody,
    ),
    *_query_routes(
        f"{PREFIX}/rollouts/{{rollout_id}}/attempts", "Query a rollout's attempts", attempt_queries,
        AttemptQuery, Attempt,
    ),
    Endpoint(
        "GET", f"{PREFIX}/rollouts/{{rollout_id}}/attempts/latest", latest_attempt,
        "A rollout's latest attempt", {200: Attempt | None},
    ),
    Endpoint(
        "POST", f"{PREFIX}/rollouts/{{rollout_id}}/attempts/{{attempt_id}}", update_attempt,
        "Change an attempt", {200: Attempt, 400: None, **_UNKNOWN}, body=AttemptChanges,
    ),
    *_query_routes(f"{PREFIX}/workers", "Query workers", worker_queries, WorkerQuery, Worker),
    Endpoint("GET", f"{PREFIX}/workers/{{worker_id}}", get_worker, "A worker", {200: Worker | None}),
    Endpoint(
        "POST", f"{PREFIX}/workers/{{worker_id}}", update_worker, "A worker's heartbeat",
        {200: Worker, 400: None, 422: None}, body=WorkerChanges,
    ),
    *_query_routes(
        f"{PREFIX}/resources", "Query resources", resources_queries, ResourcesQuery, ResourcesUpdate
    )[:1],  # 0.3.0 has no `POST /resources/search`
    Endpoint(
        "POST", f"{PREFIX}/resources", add_resources, "Publish resources under a new id",
        {201: ResourcesUpdate, **_REFUSED}, body=NamedResources,
    ),
    Endpoint(
        "GET", f"{PREFIX}/resources/latest", get_latest_resources, "The latest resources",
        {200: ResourcesUpdate | None},
    ),
    Endpoint(
        "GET", f"{PREFIX}/resources/{{resources_id}}", get_resources, "Resources by id",
        {200: ResourcesUpdate | None},
    ),
    Endpoint(
        "POST", f"{PREFIX}/resources/{{resources_id}}", update_resources, "Publish resources under an id",
        {200: ResourcesUpdate, **_REFUSED}, body=NamedResources,
    ),
    Endpoint(
        "POST", f"{PREFIX}/spans", add_span, "Keep a span", {201: Span | None, **_UNKNOWN}, body=Span
    ),
    *_query_routes(f"{PREFIX}/spans", "Query spans", span_queries, SpanQuery, Span),
    Endpoint(
        "POST", f"{PREFIX}/spans/next", next_span_sequence_id, "The next sequence id of a rollout's spans",
        {200: SequenceId, 422: None}, body=NextSequenceBody,
    ),
    Endpoint(
        "POST", f"{PREFIX}/waits/rollouts", wait_for_rollouts, "Wait for rollouts to finish",
        {200: list[AttemptedRollout | Rollout], 422: None}, body=WaitBody,
    ),
]  # fmt: skip

routes = routes_of(ENDPOINTS)
