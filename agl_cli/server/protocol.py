"""The HTTP protocol agl serves with: uvicorn's, with one send per response and the
limits slow clients need.

Without them, enough clients that open a connection and send nothing, or send a request
a byte at a time, hold the daemon's connections and files for as long as they like.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from agl_cli.daemon_config import DEFAULTS

Headers = Sequence[tuple[bytes, bytes]]
# An answer: its status, its body, and its headers but for `content-length`, which goes
# first, whoever writes it.
Answer = tuple[int, bytes, Headers]
Respond = Callable[[Answer], None]
# What answers a request directly: given its body, and what writes the answer.
DirectRoute = Callable[[bytes, Respond], None]

IDLE_CONNECTION_SECONDS = 5  # uvicorn's default: a connection quiet this long is closed
# A request's line and headers, 431 beyond: httptools, which keeps them until they are
# whole, sets no limit (h11, uvicorn's other parser, 16 KB).
MAX_HEAD_BYTES = 64 * 1024
# A request still coming after this many seconds must have come at this many bytes a
# second or more, 408 else: one that trickles in holds one of the requests served at once
# (`--max-requests`), and enough of them would turn every worker away for the whole
# `--request-timeout`. A worker's 40 KB rollout comes in milliseconds.
PACE_GRACE_SECONDS = 5.0
MIN_BYTES_PER_SECOND = 240
_TIMER_SLACK = 0.01  # the loop may run a timer this much before its time
# At shutdown, uvicorn waits this long for requests to end, then cancels their tasks; a
# response still being sent a little before is cut off (see `Protocol.shutdown`).
GRACEFUL_SHUTDOWN_SECONDS = 30
SHUTDOWN_SENDING_SECONDS = GRACEFUL_SHUTDOWN_SECONDS - 5
CUT_OFF_LOOKS_SECONDS = 0.25  # how often a response being sent at shutdown is looked at
# Requests a client sends ahead of its answers (pipelining) are parsed and wait, each a
# few KB of Python objects; past this many, what it sends is kept unread until they are
# answered. uvicorn reads on after every answer, so a client that pipelines without
# reading made it hold gigabytes. agl's clients send a request at a time.
MAX_PIPELINED = 16
PARSED_AT_ONCE = 64 * 1024  # of a read, so that few go past MAX_PIPELINED (and a 42 KB report goes at once)


class Protocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, writing each response in one send, answering the worker
    routes' everyday requests directly, and with the limits it lacks (without them,
    enough slow or silent clients exhaust the daemon):

    - a connection that sends nothing at all after it opens is closed after
      `timeout_keep_alive` seconds, as uvicorn closes one quiet after a response;
    - a request must arrive in full, headers and body, within `request_timeout` seconds
      of its first byte, or it is answered 408 and the connection closed;
    - its line and headers may take `MAX_HEAD_BYTES` (and the bytes that came with its
      first), or it is answered 431 and the connection closed;
    - one still coming after `PACE_GRACE_SECONDS` must have come at
      `MIN_BYTES_PER_SECOND` or more over the last two grace periods, or it is answered
      408 (checked every grace period; not while agl itself is not reading it);
    - past `MAX_PIPELINED` requests waiting their turn on a connection, or while its
      answers wait for the client to read them, the connection is not read.

    A request the app can answer directly (it says so in `direct`, see
    `legacy.WorkerRoutes`) is handed to it once it has arrived, instead of starting an
    ASGI task for it; uvicorn goes on parsing, and pipelining after it, as for any
    other. Only a plain HTTP/1.1 request is: an upgrade, `Expect: 100-continue`, another
    request still being answered on the connection, or the access log (which only
    uvicorn writes) send it the usual way.
    """

    request_timeout: float = DEFAULTS.request_timeout
    _request_timer: asyncio.TimerHandle | None = None
    _request_begun = False  # a request's first byte has come, and not yet its last
    _request_started = 0.0  # when its first byte came (the loop's clock)
    _request_bytes = 0  # received since (and a little before, in the read that began it)
    _paced_from: tuple[float, int] = (0.0, 0)  # (elapsed, bytes) at the check before the last
    _paced_last: tuple[float, int] = (0.0, 0)  # (elapsed, bytes) at the last check
    _in_head = False  # a request's first byte has come, and not yet the end of its headers
    _heads = 0  # requests begun on the connection
    _head_bytes = 0  # received in later reads than the one that began the head
    _refused = False  # answered with a refusal, and closing
    _cut_off_at = 0.0  # at shutdown, when a response still being sent is cut off (the loop's clock)
    _unread: bytes = b""  # received behind `MAX_PIPELINED` waiting requests, parsed once they go
    _paused_for_answers = False  # not read while its answers wait to be sent
    _direct: Callable[[bytes, bytes, Headers], DirectRoute | None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.writes = CoalescedWrites(transport, self.loop)
        super().connection_made(self.writes)  # type: ignore[arg-type]
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        if not self.access_log and self.limit_concurrency is None:
            self._direct = getattr(self.app, "direct", None)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if (
            self._direct is not None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.expect_100_continue
            and self.parser.get_http_version() == "1.1"
            and not self.parser.should_upgrade()
        ):
            route = self._direct(self.parser.get_method(), self.url, self.headers)
            if route is not None:
                self.cycle = DirectCycle(self, route, self.parser.should_keep_alive())  # type: ignore[assignment]
                return
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # nothing more of it is read
        if self._unread:
            self._unread += data
            return
        for start in range(0, len(data), PARSED_AT_ONCE):
            if len(self.pipeline) >= MAX_PIPELINED:
                self._unread = data[start:]
                self.flow.pause_reading()
                return
            self._parse(data[start : start + PARSED_AT_ONCE] if len(data) > PARSED_AT_ONCE else data)
            if self._refused:
                return

    def _parse(self, data: bytes) -> None:
        heads = self._heads
        super().data_received(data)
        if self._in_head and self._heads == heads:  # the same head, still not whole
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    "431 Request Header Fields Too Large",
                    f"The request's line and headers are larger than {MAX_HEAD_BYTES} bytes.",
                )
                return
        self._request_bytes += len(data)
        if self._request_begun and self._request_timer is None:
            self._time_request(self._request_bytes)

    def on_message_begin(self) -> None:  # the request's first byte (pipelined ones too)
        super().on_message_begin()
        self._request_begun = self._in_head = True
        self._heads += 1
        self._head_bytes = self._request_bytes = 0

    def on_message_complete(self) -> None:
        self._request_begun = False
        self._stop_request_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_request_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """A whole response goes out now, not at the next turn of the loop: a long poll's
        claim is answered as soon as it has looked for a hang-up, not after every other
        answer made in the same turn (hundreds, when a batch wakes as many polls), by
        which time its client may have gone, and the task with it until it times out."""
        self.writes.flush()
        super().on_response_complete()
        if self._unread:
            self.flow.pause_reading()
            if len(self.pipeline) < MAX_PIPELINED:  # at the next turn: an answer may come at once
                self.loop.call_soon(self._parse_unread)
        elif self.flow.write_paused and not self.flow.read_paused:
            self.flow.pause_reading()
            self._paused_for_answers = True

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._paused_for_answers:
            self._paused_for_answers = False
            self.flow.resume_reading()

    def _parse_unread(self) -> None:
        unread, self._unread = self._unread, b""
        if unread and not self.transport.is_closing():
            self.data_received(unread)
            if not self._unread:
                self.flow.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's, and a response still being sent is cut off once it cannot end well:
        as soon as its client is seen to have stopped reading (what waits to be sent
        did not shrink between two looks: a stream nobody reads, which would hold the
        stop up for good), else shortly before uvicorn's graceful shutdown runs out (a
        big page to a client that reads slowly). Its task then ends as for any hang-up,
        not by a cancellation that uvicorn logs as an error in the app."""
        super().shutdown()
        if self.cycle is not None and not self.cycle.response_complete:
            self._cut_off_at = self.loop.time() + SHUTDOWN_SENDING_SECONDS
            self._cut_off_sending(math.inf)

    def _cut_off_sending(self, waiting_before: float) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.disconnected:
            return  # answered in full, or the client is gone
        waiting = self.transport.get_write_buffer_size()
        if cycle.response_started and (
            0 < waiting >= waiting_before
            or self.transport.is_closing()
            or self.loop.time() >= self._cut_off_at
        ):
            self.transport.abort()
            return
        self.loop.call_later(CUT_OFF_LOOKS_SECONDS, self._cut_off_sending, waiting)

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _time_request(self, received: int) -> None:
        """Time the request from now, `received` bytes of it in: looked at again after a
        grace period, or at the end of its time if that comes first."""
        self._request_started, self._request_bytes = self.loop.time(), received
        self._paced_from = self._paced_last = (0.0, 0)
        self._request_timer = self.loop.call_later(
            min(PACE_GRACE_SECONDS, self.request_timeout), self._request_too_slow
        )

    def _request_too_slow(self) -> None:
        """A request still coming: refused if its time is up, or if it comes too slowly;
        else looked at again later."""
        self._request_timer = None
        if self.transport.is_closing() or (self.cycle is not None and self.cycle.response_started):
            return  # answered already (a 413 before the body, say): the response ends it
        if self.pipeline or self.flow.read_paused:
            # agl is not reading it (it waits behind an earlier request on the connection,
            # or for the app to take its body): that time is not the client's.
            self._time_request(0)
            return
        elapsed = self.loop.time() - self._request_started
        if elapsed >= self.request_timeout - _TIMER_SLACK:
            self._refuse(
                "408 Request Timeout",
                f"The request did not arrive in full within {self.request_timeout:g} s (agl serve --request-timeout).",
            )
        elif elapsed >= PACE_GRACE_SECONDS - _TIMER_SLACK and self._too_slow_lately(elapsed):
            self._refuse(
                "408 Request Timeout",
                f"The request came at fewer than {MIN_BYTES_PER_SECOND} bytes a second; send it whole.",
            )
        else:
            self._request_timer = self.loop.call_later(
                min(PACE_GRACE_SECONDS, self.request_timeout - elapsed), self._request_too_slow
            )

    def _too_slow_lately(self, elapsed: float) -> bool:
        """Whether the request came at fewer than `MIN_BYTES_PER_SECOND` over the last two
        checks (up to 2 grace periods), not since its first byte: a burst at the start
        would else buy the whole `request_timeout` (15 KB for 60 s). A stall of up to one
        grace period (a lost packet's retransmissions) is still forgiven."""
        since, before = self._paced_from
        self._paced_from, self._paced_last = self._paced_last, (elapsed, self._request_bytes)
        return self._request_bytes - before < MIN_BYTES_PER_SECOND * (elapsed - since)

    def _refuse(self, status: str, detail: str) -> None:
        """Answer `status` and close the connection (a handler waiting for the rest of the
        body hears a disconnect)."""
        self._refused = True
        body = orjson.dumps({"detail": detail})
        head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
        self.transport.write(head.encode() + body)
        self.transport.close()


class DirectCycle:
    """A request answered directly: it stands in for uvicorn's request-response cycle on
    the connection, with what uvicorn's parser callbacks and shutdown use of one, and
    hands the request to its route once the body is in."""

    def __init__(self, protocol: Protocol, route: DirectRoute, keep_alive: bool) -> None:
        self.protocol = protocol
        self.route = route
        self.keep_alive = keep_alive  # shutdown turns it off: the answer then closes
        self.body = bytearray()
        self.more_body = True
        self.response_started = self.response_complete = False
        self.disconnected = False

    @property
    def message_event(self) -> DirectCycle:
        """What uvicorn tells of each part of the body, its end, and a disconnect: the
        cycle itself (`set`). Not kept in an attribute, which would make each cycle a
        reference cycle, left to the garbage collector instead of freed once answered."""
        return self

    def set(self) -> None:
        """More of the request came, all of it, or the client left."""
        if self.disconnected or self.response_started:
            return
        if self.more_body:  # uvicorn pauses reading past 64 KB; a route's body is capped
            self.protocol.flow.resume_reading()
            return
        self.response_started = True  # taken: whatever happens next, the route answers
        self.route(bytes(self.body), self.respond)

    def respond(self, answer: Answer) -> None:
        """Write the answer as uvicorn would: the same status line and headers."""
        self.response_complete = True
        protocol = self.protocol
        writes = protocol.writes
        if self.disconnected or writes.is_closing():
            return
        status, body, headers = answer
        content = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        content += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        writes.write_whole(b"".join(content))
        if not self.keep_alive:
            writes.close()
        protocol.on_response_complete()


class CoalescedWrites:
    """A transport whose writes made in one turn of the loop go out in one send, made
    with the GIL released.

    uvicorn writes a response's head and its body apart, and uvloop holds the GIL
    through each send: on a small answer that is most of the event loop's time, in which
    the writer thread cannot run. So the parts are joined, and while the transport has
    nothing of its own left to send (its buffer empty, so no order to keep) the socket
    is written directly; what the socket does not take goes through the transport."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        sock = transport.get_extra_info("socket")
        self._fd: int | None = None if sock is None else sock.fileno()

    def write(self, data: bytes) -> None:
        data = data if type(data) is bytes else bytes(data)  # a buffer may change before the send
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def write_whole(self, data: bytes) -> None:
        """Write what is already one whole response: at once, unless parts are pending."""
        if self._pending is None:
            if not self._transport.is_closing():
                self._send(data)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        """Send what is pending now (one send), not when the loop comes round to it."""
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if not pending or self._transport.is_closing():
            return
        self._send(b"".join(pending))

    def _send(self, data: bytes) -> None:
        if self._fd is not None and not self._transport.get_write_buffer_size():
            try:
                sent = os.write(self._fd, data)
            except OSError:  # full (the transport waits for room), or broken (it closes)
                sent = 0
            data = data[sent:]
            if not data:
                return
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_with(request_timeout: float) -> type[Protocol]:
    """The protocol class uvicorn is given (it makes one per connection, taking no options)."""
    return type("Protocol", (Protocol,), {"request_timeout": request_timeout})


def uvicorn_options(request_timeout: float) -> dict[str, Any]:
    """What every uvicorn server of agl's is configured with (the daemon, the embedded one).

    No proxy headers: agl reads no client address, and the middleware that rewrites it
    from `X-Forwarded-For` would cost every request a call."""
    return {
        "http": protocol_with(request_timeout),
        "timeout_keep_alive": IDLE_CONNECTION_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "proxy_headers": False,
        "lifespan": "on",
    }
