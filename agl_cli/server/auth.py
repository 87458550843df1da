"""Bearer-token check for the management API; the worker routes and the dashboard's page
(which holds no data) stay open."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from agl_cli.server.page import OPEN_PATHS
from agl_cli.server.responses import error

# The legacy worker routes, probes, the workers' OpenAPI document, and what
# agentlightning 0.3.0's store clients and OpenTelemetry exporters send to (they send no
# credentials).
OPEN_PREFIXES = (
    "/task", "/resources", "/rollout", "/health", "/ready", "/metrics", "/openapi.json",
    "/v1/agl", "/v1/traces", "/v1/metrics", "/v1/logs", "/v1/development",
)  # fmt: skip


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on every path of `routes` outside
    `OPEN_PREFIXES`. A path of none is the router's 404, token or not: a worker sent to a
    wrong address (`/api/task`) was told a token was missing."""

    def __init__(self, app: ASGIApp, token: str | None, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.expected = token.encode() if token else None
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.expected is None or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")  # the scheme in any case (RFC 9110)
        refused = scheme.lower() != b"bearer" or not hmac.compare_digest(credentials, self.expected)
        # Looked up only for a request refused: a path of no route is then the router's 404.
        if refused and any(route.matches(scope)[0] != Match.NONE for route in self.routes):
            reason = "A bearer token is required." if not given else "The bearer token is not valid."
            response = error(401, reason)
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_open(path: str) -> bool:
    """Below an open prefix, or exactly the dashboard's page or one of its assets."""
    return path in OPEN_PATHS or any(
        path == prefix or path.startswith(prefix + "/") for prefix in OPEN_PREFIXES
    )
