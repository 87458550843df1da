"""What agl refuses of web pages: the requests a browser sends for them.

The worker routes and the store API are open, as 0.3.0's are (its clients send no
credentials). A web page cannot read their answers, but it can have the browser send
them requests: a link or an image GETs `/task` and claims a task, and a script may POST
a body it declares `text/plain` without asking the server first. Any page open on the
machine could then report results, enqueue rollouts, or point the workers' LLM at a
server of its own. agl's clients are programs, never pages, so two rules close that
without touching them:

- a request the browser marks as sent for another site (`Sec-Fetch-Site: cross-site`)
  is refused with 403, but for opening the dashboard from a link;
- a body that is not declared as JSON is refused with 415, as 0.3.0's FastAPI refuses it
  (with a 422), but on the routes that take another type (OTLP's protobuf), which a page
  cannot send without asking first. A body with no type at all (a page's `fetch` of a
  `Blob`) is refused too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from agl_cli.server.responses import ORJSONResponse, error

DASHBOARD_PAGE = "/"
BODILESS = frozenset({"GET", "HEAD"})  # no route of agl's reads a body of these


def refusal(
    method: str, path: str, headers: Iterable[tuple[bytes, bytes]], not_json: Collection[str]
) -> ORJSONResponse | None:
    """The answer to a request a web page may have made, or None to serve it; `not_json`:
    the paths whose bodies are of another type, which their routes check."""
    site = mode = content_type = None
    has_body = False
    for name, value in headers:
        if name == b"sec-fetch-site":
            site = value
        elif name == b"sec-fetch-mode":
            mode = value
        elif name == b"content-type":
            content_type = value
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            has_body = True
    if site == b"cross-site" and not (method in BODILESS and path == DASHBOARD_PAGE and mode == b"navigate"):
        return error(
            403,
            "agl does not serve requests a browser sends for another site (Sec-Fetch-Site: cross-site).",
        )
    if not has_body or method in BODILESS or path in not_json:
        return None  # an empty body typed otherwise is nothing to read: aiohttp's `json=None`
    if content_type is None:
        return error(
            415, "The body must be JSON (Content-Type: application/json); the request gives no type."
        )
    if not is_json(content_type):
        declared = content_type.decode("latin-1")
        return error(415, f"The body must be JSON (Content-Type: application/json), not '{declared}'.")
    return None


def is_json(content_type: bytes) -> bool:
    """Whether a Content-Type says JSON, as FastAPI reads it: `application/json`, or
    `application/...+json`, with any parameters."""
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
