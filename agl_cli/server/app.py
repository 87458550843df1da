"""The Starlette application: the worker routes (served in front of it), the probes
(`/health`, `/ready`, `/metrics`), the management API, the store API, OTLP's trace
export, the dashboard's page and its sign-in."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from agl_cli import __version__
from agl_cli.daemon_config import DEFAULTS
from agl_cli.net import is_loopback
from agl_cli.server import browsers, legacy, management, otlp, page, sign_in, store_api
from agl_cli.server.auth import BearerAuth
from agl_cli.server.broker import Broker
from agl_cli.server.legacy import WorkerRoutes
from agl_cli.server.limits import BodySizeLimit, InFlightLimit, body_first, has_body
from agl_cli.server.metrics import Metrics, RequestLatency, metrics_endpoint
from agl_cli.server.openapi import EVENT_STREAM, build_document, routes_of
from agl_cli.server.protocol import DirectRoute, Headers
from agl_cli.server.requests import BadRequest
from agl_cli.server.responses import ORJSONResponse, error, storage_failure
from agl_cli.store import StorageError, Store


@dataclass(frozen=True)
class ServerOptions:
    token: str | None = None
    max_body_bytes: int = DEFAULTS.max_body_size
    max_requests: int = DEFAULTS.max_requests
    address: str | None = None
    state_dir: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # `agl serve --allowed-host`


class AglApp(Starlette):
    """Starlette, with the worker routes answered before its middleware stack: they are
    the hot path, and need none of it (see `legacy.WorkerRoutes`). Probes (`/health`,
    `/ready`, `/metrics`) pass the limit on requests in flight; requests that wait (long
    polls, the store API's waits, streams) have a limit of their own, so that idle
    workers cannot turn away the reports and the queueing they wait for; every other
    request is counted in `limit` until its answer starts (what is left is sending it: a
    client slow to read a big store-API page holds no place). A request is counted only
    once its body has come, as on the worker routes' direct way: bodies trickling in at
    the pace the protocol allows held every place, and every worker was turned away.
    What a web page may have sent is refused first (`browsers`)."""

    worker_routes: WorkerRoutes
    max_body_bytes: int
    limit: InFlightLimit
    waits: InFlightLimit
    metrics: Metrics
    guard: browsers.PageGuard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.guard.refusal(scope["method"], scope["path"], scope["headers"])
            if refused is not None:
                started = time.perf_counter()
                await refused(scope, receive, send)
                self.metrics.observe(scope, refused.status_code, time.perf_counter() - started)
                return
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.worker_routes(scope, receive, send)
            return
        if has_body(scope["headers"]):
            whole = await body_first(scope, receive, self.max_body_bytes)
            if whole is None:
                return  # the client is gone
            receive = whole
        limit = self.waits if _waits(scope) else self.limit
        refusal = limit.enter()
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        held = True

        def leave() -> None:
            nonlocal held
            if held:
                held = False
                limit.leave()

        async def leave_once_started(message: Message) -> None:
            if message["type"] == "http.response.start":
                leave()
            await send(message)

        try:
            await self.worker_routes(scope, receive, send if limit is self.waits else leave_once_started)
        finally:
            leave()

    def direct(self, method: bytes, url: bytes, headers: Headers) -> DirectRoute | None:
        """What the HTTP protocol asks of the app it serves: how to answer a request
        directly, if it can be (see `protocol.Protocol`)."""
        return self.worker_routes.direct(method, url, headers)

    async def serve_rest(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything but the worker routes: Starlette as usual."""
        await super().__call__(scope, receive, send)


def create_app(store: Store, options: ServerOptions | None = None) -> Starlette:
    """Build the app around an open store; the app closes the store when it shuts down."""
    options = options or ServerOptions()
    broker = Broker(store)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await broker.stop()  # closes the store

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", worker_document, methods=["GET"]),
        *management.routes,
        *page.routes,
        *sign_in.routes,
        *store_api.routes,
        *otlp.routes,
    ]
    metrics = Metrics(broker, [*routes, *routes_of(legacy.ENDPOINTS)])  # the latter served in front
    app = AglApp(
        routes=routes,
        middleware=[
            Middleware(RequestLatency, metrics=metrics),
            Middleware(BodySizeLimit, max_bytes=options.max_body_bytes),
            Middleware(BearerAuth, token=options.token, routes=routes),
        ],
        exception_handlers={
            BadRequest: _bad_request,
            HTTPException: _http_exception,
            StorageError: _storage_failure,
            ClientDisconnect: _client_gone,
        },
        lifespan=lifespan,
    )
    app.max_body_bytes = options.max_body_bytes
    app.limit = InFlightLimit(broker.stats, options.max_requests)
    app.waits = InFlightLimit(
        broker.stats, options.max_requests, "waiting requests (long polls, waits, streams)"
    )
    app.metrics = metrics
    app.guard = browsers.PageGuard(
        otlp.PATHS,
        loopback=is_loopback(urlsplit(options.address or "").hostname or ""),
        allowed=frozenset(name.lower().rstrip(".").encode() for name in options.allowed_hosts),
    )
    app.worker_routes = WorkerRoutes(
        app.serve_rest, broker, metrics, options.max_body_bytes, app.limit, app.guard.serves_host
    )
    app.state.broker = broker
    app.state.metrics = metrics
    app.state.options = options
    app.state.sign_in_codes = sign_in.SignInCodes()
    app.state.ready = False
    # What `POST /v1/shutdown` calls to stop the server gracefully; whoever runs the
    # server sets it (the daemon does), and without it the route answers 501.
    app.state.request_shutdown = None
    return app


PROBES = frozenset({"/health", "/ready", "/metrics"})
WAITS = frozenset(
    endpoint.path
    for endpoint in (*management.ENDPOINTS, *store_api.ENDPOINTS)
    if endpoint.media_type == EVENT_STREAM or endpoint.handler is store_api.wait_for_rollouts
)


def _waits(scope: Scope) -> bool:
    """A request that may wait for long: a long poll (`GET /task?wait=S`; 0.3.0's workers
    poll without), a store-API wait, a stream. Read as routing reads it: the query decoded
    (`%77ait=` is `wait=`), and a path's one final line break ignored (a route's `$` matches
    before it), else such a request would wait in one of the places kept for quick ones."""
    path = scope["path"].removesuffix("\n")
    query = scope["query_string"]
    return path in WAITS or (path == "/task" and bool(query) and "wait" in QueryParams(query))


async def health(request: Request) -> Response:
    """Liveness: the process answers."""
    return ORJSONResponse({"status": "ok", "version": __version__})


async def ready(request: Request) -> Response:
    """Readiness: the store is open and takes writes, and the app is not shutting down."""
    lost = request.app.state.broker.lost
    if lost is not None:
        return error(503, str(lost))
    if not request.app.state.ready:
        return error(503, "agl is not ready.")
    return ORJSONResponse({"status": "ready", "version": __version__})


async def worker_document(request: Request) -> Response:
    """The OpenAPI document of what workers speak: the legacy routes and the store API."""
    return ORJSONResponse(worker_openapi())


@functools.cache
def worker_openapi() -> dict[str, Any]:
    return build_document(
        [*legacy.ENDPOINTS, *store_api.ENDPOINTS],
        title="agl worker protocols",
        version=__version__,
        bearer=False,
    )


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return exc.response


async def _storage_failure(request: Request, exc: Exception) -> Response:
    return storage_failure(exc)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left (or was cut off for taking too long, see `protocol.Protocol`)
    while sending its body: nothing was done, and the answer goes nowhere."""
    return Response(status_code=499)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ORJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
