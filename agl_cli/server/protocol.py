"""The HTTP protocol agl serves with: uvicorn's, with the limits slow clients need.

Without them, enough clients that open a connection and send nothing, or send a request
a byte at a time, hold the daemon's connections and files for as long as they like.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agl_cli.daemon_config import DEFAULTS

IDLE_CONNECTION_SECONDS = 5  # uvicorn's default: a connection quiet this long is closed


class Protocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with two limits it lacks (without them, enough slow or
    silent clients exhaust the daemon):

    - a connection that sends nothing at all after it opens is closed after
      `timeout_keep_alive` seconds, as uvicorn closes one quiet after a response;
    - a request must arrive in full, headers and body, within `request_timeout` seconds
      of its first byte, or it is answered 408 and the connection closed.
    """

    request_timeout: float = DEFAULTS.request_timeout
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def on_message_begin(self) -> None:  # the request's first byte (pipelined ones too)
        super().on_message_begin()
        self._stop_request_timer()
        self._request_timer = self.loop.call_later(self.request_timeout, self._request_too_slow)

    def on_message_complete(self) -> None:
        self._stop_request_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_request_timer()
        super().connection_lost(exc)

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_too_slow(self) -> None:
        self._request_timer = None
        if self.transport.is_closing() or (self.cycle is not None and self.cycle.response_started):
            return  # answered already (a 413 before the body, say): the response ends it
        body = orjson.dumps(
            {
                "detail": f"The request did not arrive in full within {self.request_timeout:g} s "
                "(agl serve --request-timeout)."
            }
        )
        head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
        self.transport.write(head.encode() + body)
        self.transport.close()  # the handler waiting for the rest of the body hears a disconnect


def protocol_with(request_timeout: float) -> type[Protocol]:
    """The protocol class uvicorn is given (it makes one per connection, taking no options)."""
    return type("Protocol", (Protocol,), {"request_timeout": request_timeout})
