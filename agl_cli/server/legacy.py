"""The four worker routes of the Agent Lightning legacy protocol, wire-compatible with 0.3.0.

Every worker claims and reports through them, so they are the hot path of a run, and
are served by `WorkerRoutes` in front of the Starlette app, two ways:

- directly: the requests workers send all the time, `GET /task` and `POST /rollout`
  with a body of declared length, are handed over by the HTTP protocol
  (`protocol.Protocol`) once they have arrived, and answered when the store's future is
  done: no ASGI task, scope or messages (a third of the event loop's time went there);
- as plain ASGI, everything else on these paths (a long poll, a chunked body, the
  resources): no routing table, no middleware stack, no `Request` object.

Either way they keep what the stack would give them: the body size limit (413), the
limit on requests in flight (503), 405 for another method, a 500 for an unexpected
error, and a latency observation under the route's template; and both answer with the
same bytes. Every other path goes on to the app.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
from pydantic import Field
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from agl_cli.models import GenericResponse, ResourcesUpdate, Rollout, TaskIfAny
from agl_cli.server.broker import Broker, ClaimMade
from agl_cli.server.browsers import BROWSER_AGENT
from agl_cli.server.hangups import hang_up_heard
from agl_cli.server.limits import InFlightLimit, declared_too_large, read_body, too_large
from agl_cli.server.metrics import Metrics
from agl_cli.server.openapi import Endpoint, Param
from agl_cli.server.protocol import Answer, DirectRoute, Headers, Respond
from agl_cli.server.reports import read_report
from agl_cli.server.requests import BadRequest, number_param
from agl_cli.server.responses import ORJSONResponse, error, storage_failure
from agl_cli.store import Claim, Report, ReportOutcome, StorageError

log = logging.getLogger("uvicorn.error")  # where uvicorn logs an app's exceptions

MAX_WAIT_SECONDS = 600.0
_Wait = Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)]
NO_TASK = orjson.dumps({"is_available": False, "task": None})
NO_RESOURCES = "No resources have been set on the server."
RESOURCES_PREFIX = "/resources/"
CLAIM_PATH = "/task"
REPORT_PATH = "/rollout"
_CLAIM_URL = CLAIM_PATH.encode()
_REPORT_URL = REPORT_PATH.encode()

JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)
INTERNAL_ERROR: Answer = (500, b"Internal Server Error", ((b"content-type", b"text/plain; charset=utf-8"),))
Handler = Callable[["WorkerRoutes", Scope, Receive], Awaitable[Answer]]
T = TypeVar("T")


class _Disconnected(Exception):
    """The client went away while sending its body: there is no one to answer."""


class WorkerRoutes:
    """Answers `GET /task`, `POST /rollout` and `GET /resources/{latest,<id>}` itself."""

    def __init__(
        self,
        app: ASGIApp,
        broker: Broker,
        metrics: Metrics,
        max_body_bytes: int,
        limit: InFlightLimit,
        serves_host: Callable[[bytes], bool] = lambda host: True,
    ) -> None:
        """`serves_host`: whether a request addressed to a host is served (`browsers`); one
        that is not is for the ASGI way to refuse."""
        self.app = app
        self.serves_host = serves_host
        self.broker = broker
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.limit = limit

    # directly ----------------------------------------------------------------------------

    def direct(self, method: bytes, url: bytes, headers: Headers) -> DirectRoute | None:
        """How to answer this request directly, once its body is in: for `GET /task`
        without a body, and `POST /rollout` with one of declared length within the limit.
        None for anything else, which goes the ASGI way."""
        length = _plain_length(headers, self.serves_host)
        if url == _CLAIM_URL:
            return self._claim if method == b"GET" and length == 0 else None
        if url == _REPORT_URL and method == b"POST" and length is not None and length <= self.max_body_bytes:
            return self._report
        return None

    def _claim(self, body: bytes, respond: Respond) -> None:
        self._serve(CLAIM_PATH, "GET", respond, lambda: (self.broker.claim_soon(), self._claimed))

    def _claimed(self, made: ClaimMade) -> Answer:
        return _claim_answer(self.broker.claimed(made))

    def _report(self, body: bytes, respond: Respond) -> None:
        def start() -> tuple[asyncio.Future[ReportOutcome], Callable[[ReportOutcome], Answer]]:
            report = _read_report(body)
            return self.broker.report_soon(report), functools.partial(self._reported, report)

        self._serve(REPORT_PATH, "POST", respond, start)

    def _reported(self, report: Report, outcome: ReportOutcome) -> Answer:
        self.broker.reported(outcome, report.rollout_id)
        return _report_answer(report)

    def _serve(
        self,
        template: str,
        method: str,
        respond: Respond,
        start: Callable[[], tuple[asyncio.Future[T], Callable[[T], Answer]]],
    ) -> None:
        """Start the request's work (`start` gives its future, and what makes the answer of
        its result) and answer when it is done, or at once if it cannot start."""
        started = time.perf_counter()
        refusal = self.limit.enter()
        if refusal is not None:
            self._answer(template, method, respond, started, _answer_of(refusal))
            return
        try:
            future, finish = start()
        except Exception as exc:
            self.limit.leave()
            self._answer(template, method, respond, started, _failure(exc))
            return

        def done(future: asyncio.Future[T]) -> None:
            self.limit.leave()
            try:
                answer = finish(future.result())
            except Exception as exc:
                answer = _failure(exc)
            self._answer(template, method, respond, started, answer)

        future.add_done_callback(done)

    def _answer(self, template: str, method: str, respond: Respond, started: float, answer: Answer) -> None:
        respond(answer)
        self.metrics.observe_route(template, method, answer[0], time.perf_counter() - started)

    # the ASGI way ------------------------------------------------------------------------

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
                answer = _answer_of(_method_not_allowed(method))
            else:
                try:
                    answer = await handler(self, scope, receive)
                except _Disconnected:
                    status = 499  # nginx's name for it; nothing is sent
                    return
                except (BadRequest, StorageError) as exc:
                    answer = _failure(exc)
                except Exception:  # answered as Starlette would, then raised for uvicorn to log
                    await _send_answer(send, INTERNAL_ERROR)
                    raise
            status = answer[0]
            await _send_answer(send, answer)
        finally:
            self.metrics.observe_route(template, scope["method"], status, time.perf_counter() - started)

    # the routes --------------------------------------------------------------------------

    async def next_task(self, scope: Scope, receive: Receive) -> Answer:
        """`GET /task[?wait=S]`: the next task, or `is_available: false` (after waiting up to S)."""
        wait = 0.0
        if scope["query_string"]:
            wait = number_param(QueryParams(scope["query_string"]), "wait", 0.0, 0.0, MAX_WAIT_SECONDS, float)
        if not wait:
            return _claim_answer(await self.broker.claim())
        async with hang_up_heard(receive) as gone:
            return _claim_answer(await self.broker.claim(wait, gone))

    async def post_rollout(self, scope: Scope, receive: Receive) -> Answer:
        try:
            body = await self._read_body(scope, receive)
        except BadRequest as refused:  # over the size limit: the only way here for such a report
            _log_refused(refused)
            raise
        report = _read_report(body)
        await self.broker.report(report)
        return _report_answer(report)

    async def latest_resources(self, scope: Scope, receive: Receive) -> Answer:
        update = self.broker.latest_resources()
        if update is None:
            raise BadRequest(error(404, NO_RESOURCES))
        return 200, orjson.dumps(update.model_dump(mode="json")), JSON_HEADERS

    async def resources_by_id(self, scope: Scope, receive: Receive) -> Answer:
        resources_id = scope["path"][len(RESOURCES_PREFIX) :]
        update = await self.broker.get_resources(resources_id)
        if update is None:
            raise BadRequest(error(404, f"Resource ID '{resources_id}' not found."))
        return 200, orjson.dumps(update.model_dump(mode="json")), JSON_HEADERS

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        if declared_too_large(scope, self.max_body_bytes):
            raise BadRequest(too_large(self.max_body_bytes))
        read = await read_body(receive, self.max_body_bytes)
        if read is None:
            raise _Disconnected
        body, _ = read
        if len(body) > self.max_body_bytes:  # it stopped once past the limit
            raise BadRequest(too_large(self.max_body_bytes))
        return body


ENDPOINTS = [
    Endpoint(
        "GET", CLAIM_PATH, WorkerRoutes.next_task, "Claim the next task", {200: TaskIfAny, 422: None},
        params=(Param("wait", _Wait, "Seconds to wait for a task when none is queued (a long poll)."),),
    ),
    Endpoint(
        "POST", REPORT_PATH, WorkerRoutes.post_rollout, "Report a rollout",
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


_NOT_PLAIN = frozenset({b"transfer-encoding", b"sec-fetch-site", b"origin"})


def _plain_length(headers: Headers, serves_host: Callable[[bytes], bool]) -> int | None:
    """The body's length as its headers give it (0 without one), or None where the
    request is not plainly a worker's: a chunked body, a length that is not a number, a
    body typed other than `application/json` to the letter (or not typed), a browser's
    request or a page's (`Origin`), or one addressed to a host the daemon does not serve. Those go the ASGI
    way, which judges them (see `browsers`)."""
    length = 0
    typed = False
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"content-type":
            if value != b"application/json":
                return None
            typed = True
        elif (
            name in _NOT_PLAIN
            or (name == b"host" and not serves_host(value))
            or (name == b"user-agent" and value.startswith(BROWSER_AGENT))  # `browsers` judges it
        ):
            return None
    return length if typed or length == 0 else None


def _claim_answer(claim: Claim | None) -> Answer:
    if claim is None:
        return 200, NO_TASK, JSON_HEADERS
    return 200, b'{"is_available":true,"task":' + claim.wire + b"}", JSON_HEADERS


def _report_answer(report: Report) -> Answer:
    message = f"Rollout {report.rollout_id} received and stored."
    return 200, orjson.dumps({"status": "ok", "message": message, "data": None}), JSON_HEADERS


def _answer_of(response: ORJSONResponse) -> Answer:
    headers = [header for header in response.raw_headers if header[0] != b"content-length"]
    return response.status_code, bytes(response.body), headers


def _read_report(body: bytes) -> Report:
    """The report in `body`, or `BadRequest`; a refusal is logged, as a result lost: the
    0.3.0 worker notes it only at debug level, and its task runs again once it times out."""
    try:
        return read_report(body)
    except BadRequest as refused:
        _log_refused(refused)
        raise


def _log_refused(refused: BadRequest) -> None:
    log.warning("A worker's report was refused (%s): %s", refused.response.status_code, _reason(refused))


def _reason(refused: BadRequest) -> str:
    """The first problem of a refusal: for FastAPI's list, where (a field, or a byte of
    JSON that cannot be read) and what."""
    detail = orjson.loads(refused.response.body)["detail"]
    if isinstance(detail, str):
        return detail
    first = detail[0]
    unreadable = first["type"] == "json_invalid"
    where = f"byte {first['loc'][-1]}" if unreadable else ".".join(map(str, first["loc"]))
    why = f"{first['msg']} ({first['ctx']['error']})" if unreadable else first["msg"]
    return f"{where}: {why}"


def _failure(exc: Exception) -> Answer:
    """The answer to a request that failed: the 4xx it was refused with, the 503 or 507
    of a store that said no, or else a 500 (logged, as uvicorn logs an app's exception)."""
    if isinstance(exc, BadRequest):
        return _answer_of(exc.response)
    if isinstance(exc, StorageError):  # the disk said no: the answer says so, and the daemon goes on
        return _answer_of(storage_failure(exc))
    log.error("Exception in ASGI application", exc_info=exc)
    return INTERNAL_ERROR


async def _send_answer(send: Send, answer: Answer) -> None:
    status, body, headers = answer
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
