"""`GET /`: the dashboard's page, served from the package (`static/`), with no build step
and nothing fetched from any other host.

The page and its assets hold no data, so they are served without the token: a browser
cannot send a bearer header when it navigates. The page reads the token from the URL's
fragment (`#token=...`, which browsers never send to a server nor in a `Referer`) or
from a form, keeps it in the tab's session storage, and sends it as a header on every
data request (`docs/dashboard.md` says why this is safe). The headers below forbid the
page to load or send anything anywhere but this daemon.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.server.sign_in import SIGN_IN_PATH

ASSET_PREFIX = "/dashboard/"
PAGE = "index.html"
ASSETS = {
    PAGE: "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# The exact paths served without the token: the page, its assets (nothing below them),
# and where the page trades a sign-in code for the token.
OPEN_PATHS = frozenset({"/", SIGN_IN_PATH, *(ASSET_PREFIX + name for name in ASSETS if name != PAGE)})

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@functools.cache
def asset(name: str) -> bytes:
    """A file of `static/`, read once from the installed package."""
    return (resources.files("agl_cli.server") / "static" / name).read_bytes()


async def page(request: Request) -> Response:
    """The dashboard (it asks for its token, then reads everything from `/v1/dashboard`)."""
    return _file(PAGE)


def _file(name: str) -> Response:
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


def _asset_route(name: str) -> Route:
    async def serve(request: Request) -> Response:
        return _file(name)

    return Route(ASSET_PREFIX + name, serve, methods=["GET"])


# A route per file, not one for `/dashboard/{name}`: a path beside them, such as the
# sign-in's, then answers for itself (a `GET` of it is a 405, not a missing file).
routes = [Route("/", page, methods=["GET"]), *(_asset_route(name) for name in ASSETS if name != PAGE)]
