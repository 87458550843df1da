"""The limits on what a request may take: the size of its body, enforced while it
streams in (413 beyond), and the number of requests served at once (503 beyond), each
counted once its body has come (`body_first`)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl_cli.server.responses import ORJSONResponse, error
from agl_cli.server.stats import Stats


class InFlightLimit:
    """At most `limit` requests are served at once: beyond, a request is answered 503
    with `Retry-After` at once, so that overload makes the daemon answer slower, never
    run out of memory or drop what it accepted. Counted in `stats` (status, metrics)
    with those of the other limits."""

    def __init__(self, stats: Stats, limit: int, what: str = "requests") -> None:
        self.stats = stats
        self.limit = limit
        self.what = what
        self.count = 0

    def enter(self) -> ORJSONResponse | None:
        """Take a request in (None), or the answer that turns it away; one taken in must
        `leave` once answered."""
        if self.count >= self.limit:
            self.stats.turned_away += 1
            response = error(
                503,
                f"agl is serving as many {self.what} as it takes at once ({self.limit}); try again shortly.",
            )
            response.headers["Retry-After"] = "1"
            return response
        self.count += 1
        self.stats.in_flight += 1
        return None

    def leave(self) -> None:
        self.count -= 1
        self.stats.in_flight -= 1


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_too_large(scope, self.max_bytes):
            await self._refuse(scope, receive, send)
            return

        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large(self.max_bytes)(scope, receive, send)


def has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(declares_body(name, value) for name, value in headers)


def declares_body(name: bytes, value: bytes) -> bool:
    """Whether this header says a body follows."""
    return name == b"transfer-encoding" or (name == b"content-length" and value != b"0")


async def body_first(scope: Scope, receive: Receive, max_bytes: int) -> Receive | None:
    """What the app is to receive, once the request's body has come (None if the client
    left first): as it came, in one message. Once past `max_bytes` (or if it says it
    will be), the rest is left for the app, which refuses it."""
    if declared_too_large(scope, max_bytes):
        return receive
    read = await read_body(receive, max_bytes)
    return None if read is None else _replaying(*read, receive)


async def read_body(receive: Receive, max_bytes: int) -> tuple[bytes, bool] | None:
    """A request's body as it comes, until its end or once past `max_bytes` (then True:
    there is more); None if the client left first."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        seen += len(chunk)
        more = message.get("more_body", False)
        if not more or seen > max_bytes:
            return b"".join(chunks), more


def _replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """`receive` with what was read of the body given first, in one message."""
    unread: bytes | None = body

    async def replay() -> Message:
        nonlocal unread
        if unread is None:
            return await receive()  # the rest of the body, or a disconnect
        message: Message = {"type": "http.request", "body": unread, "more_body": more}
        unread = None
        return message

    return replay


def too_large(max_bytes: int) -> ORJSONResponse:
    return error(413, too_large_message(max_bytes))


def too_large_message(max_bytes: int, *, unzipped: bool = False) -> str:
    body = "The request body, unzipped," if unzipped else "The request body"
    return f"{body} is larger than the limit of {max_bytes} bytes (agl serve --max-body-size)."


def declared_too_large(scope: Scope, max_bytes: int) -> bool:
    """The request says (in `Content-Length`) that its body is over the limit."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.isdigit() and int(value) > max_bytes
    return False
