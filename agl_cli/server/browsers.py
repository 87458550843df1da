"""What agl refuses of web pages: the requests a browser sends for them.

The worker routes and the store API are open, as 0.3.0's are (its clients send no
credentials). A web page cannot read their answers, but it can have the browser send
them requests: a link or an image GETs `/task` and claims a task, and a script may POST
a body it declares `text/plain` without asking the server first. Any page open on the
machine could then report results, enqueue rollouts, or point the workers' LLM at a
server of its own. agl's clients are programs, never pages, so four rules close that
without touching them:

- a request the browser marks as sent for another origin (`Sec-Fetch-Site` but
  `same-origin` or `none`: `same-site` is a page on another port of this host) is
  refused with 403, but for opening the dashboard from a link; on the routes no page of
  agl's calls, so is a browser's that carries no mark (plain http to a name other than
  localhost, where browsers send none), told by its `User-Agent`;
- a request with no such mark whose `Origin` is not the daemon's (what it was addressed
  to, or a name it was given) is refused with 403: a browser sends `Origin` with every
  POST a page makes, a form's too, so this closes a page posting to `http://0.0.0.0:8000`
  (unmarked) on a daemon without a token. A marked request is judged by its mark: behind
  a proxy that forwards `Host: 127.0.0.1:8000`, the daemon's own page has another origin
  than that, and the browser marks its requests `same-origin`;
- a body that is not declared as JSON is refused with 415, as 0.3.0's server refuses it
  on a current FastAPI (with a 422), but on the routes that take another type (OTLP's
  protobuf), which a page cannot send without asking first. A body with no type at all
  (a page's `fetch` of a `Blob`) is refused too;
- a daemon listening on loopback answers only requests addressed to a loopback name
  (`localhost`, `127.0.0.1`, `[::1]`), or to a name it was given (`--allowed-host`: a
  proxy's); one listening beyond loopback that was given names, only those and
  addresses. A page whose own name it has made resolve to 127.0.0.1 (DNS rebinding) is
  of the daemon's origin in the browser's eyes, and could read every answer, an LLM's
  API key included; its requests still name it (`Host`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from agl_cli.net import is_loopback
from agl_cli.server.limits import declares_body
from agl_cli.server.responses import ORJSONResponse, error

DASHBOARD_PAGE = "/"
BODILESS = frozenset({"GET", "HEAD"})  # no route of agl's reads a body of these
# What a browser marks a request for this very origin (or typed by its user) with. `same-site`
# is not enough: a page on http://localhost:3000 is the same site as agl on localhost:8000.
OWN_SITE = frozenset({b"same-origin", b"none"})
# The routes no page of agl's calls (the workers' and the store API): a browser has no
# business there, and over plain http to a name that is not localhost (or to 0.0.0.0) it
# sends no Sec-Fetch-Site at all, so its User-Agent is what tells it. agentlightning's
# clients (aiohttp, requests, OpenTelemetry's exporter) never call themselves Mozilla.
WORKER_PREFIXES = ("/task", "/resources", "/rollout", "/v1/agl", "/v1/traces")
BROWSER_AGENT = b"Mozilla/"  # how every browser's User-Agent begins


@dataclass(frozen=True)
class PageGuard:
    not_json: frozenset[str]  # the paths whose bodies are of another type, which their routes check
    loopback: bool  # the daemon listens on a loopback address only
    allowed: frozenset[bytes] = frozenset()  # other names it answers to then, lower case, no port

    def refusal(
        self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> ORJSONResponse | None:
        """The answer to a request a web page may have made, or None to serve it."""
        site = mode = content_type = host = origin = None
        has_body = browser = False
        for name, value in headers:  # of a header given twice, the one refused counts
            if name == b"user-agent":
                browser = browser or value.startswith(BROWSER_AGENT)
            elif name == b"host":
                host = value if host is None or self.serves_host(host) else host
            elif name == b"sec-fetch-site":
                site = value
            elif name == b"sec-fetch-mode":
                mode = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value if content_type is None or is_json(content_type) else content_type
            elif declares_body(name, value):
                has_body = True
        if host is not None and not self.serves_host(host):
            return error(403, self._answers_only() + f", not to '{host.decode('latin-1')}'.")
        if (
            site is not None
            and site not in OWN_SITE
            and not (method in BODILESS and path == DASHBOARD_PAGE and mode == b"navigate")
        ):
            return error(
                403,
                "agl does not serve requests a browser sends for another origin"
                f" (Sec-Fetch-Site: {site.decode('latin-1')}).",
            )
        if site is None and origin is not None and not self._own_origin(origin, host):
            return error(
                403,
                f"agl does not serve requests a web page of another origin sends (Origin: {origin.decode('latin-1')}).",
            )
        if browser and site not in OWN_SITE and _is_worker_route(path):
            return error(403, "agl does not serve a browser's requests on the worker and store routes.")
        if not has_body or method in BODILESS or path in self.not_json:
            return None  # an empty body typed otherwise is nothing to read: aiohttp's `json=None`
        if content_type is None:
            return error(
                415, "The body must be JSON (Content-Type: application/json); the request gives no type."
            )
        if not is_json(content_type):
            declared = content_type.decode("latin-1")
            return error(415, f"The body must be JSON (Content-Type: application/json), not '{declared}'.")
        return None

    def serves_host(self, host: bytes) -> bool:
        """Whether a request addressed to `host` (a `Host` header) is served: a loopback
        name, or one the daemon was given; beyond loopback also any address, and if it
        was given no name, any name (which of them reach it, agl cannot know)."""
        if names_loopback(host) or (self.allowed and without_port(host).lower().rstrip(b".") in self.allowed):
            return True
        return not self.loopback and (not self.allowed or names_an_address(host))

    def _own_origin(self, origin: bytes, host: bytes | None) -> bool:
        """Whether a page of `origin` is the daemon's own: the one its request is addressed
        to (`host`), or, behind a proxy that may send another `Host`, a name it was given."""
        scheme, _, address = origin.lower().partition(b"://")
        if not address or scheme not in _DEFAULT_PORTS:  # `null`: a sandboxed page, a file's
            return False
        default = _DEFAULT_PORTS[scheme]
        if host is not None and address.removesuffix(default) == host.lower().removesuffix(default):
            return True
        return without_port(address).rstrip(b".") in self.allowed

    def _answers_only(self) -> str:
        if self.loopback:
            return (
                "This agl daemon listens on loopback and answers only requests addressed to"
                " localhost, 127.0.0.1 or [::1] (or a name given with --allowed-host)"
            )
        return "This agl daemon answers only requests addressed to an IP address or a name given with --allowed-host"


def _is_worker_route(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in WORKER_PREFIXES)


@functools.lru_cache(maxsize=64)  # a daemon is named a few ways; a worker's request asks each time
def names_loopback(host: bytes) -> bool:
    """Whether a `Host` header names a loopback address, with or without a port (or the
    unspecified one, which a client on this machine may dial to reach it)."""
    name = without_port(host).rstrip(b".")  # `localhost.`, as a fully qualified name
    return name in _UNSPECIFIED or is_loopback(name.decode("latin-1").lower())


@functools.lru_cache(maxsize=64)
def names_an_address(host: bytes) -> bool:
    """Whether a `Host` header names an IP address (no name a page could rebind)."""
    try:
        ipaddress.ip_address(without_port(host).strip(b"[]").decode("latin-1"))
    except ValueError:
        return False
    return True


def without_port(host: bytes) -> bytes:
    """The name of a `Host` header (`[::1]:8000` is `[::1]`)."""
    return host.rpartition(b":")[0] if host.rfind(b":") > host.rfind(b"]") else host


_UNSPECIFIED = frozenset({b"0.0.0.0", b"[::]"})
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}  # what an `Origin` or a `Host` may leave out


def is_json(content_type: bytes) -> bool:
    """Whether a Content-Type says JSON, as FastAPI reads it: `application/json`, or
    `application/...+json`, with any parameters."""
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
