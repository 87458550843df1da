"""Hearing a client hang up while its request waits (a long poll, a wait for rollouts).

A wait answers nobody once its client is gone, yet it holds one of the requests served
at once (`agl serve --max-requests`) until it ends, and a claim it makes hands a task
to nobody. So a long wait listens for the disconnect and ends at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from starlette.types import Receive


class HangUp(asyncio.Event):
    """Set once the client has gone. Where `receive` is uvicorn's own, `is_set` also asks
    the socket itself, which knows of a close before uvicorn has heard of it, and uvicorn
    before the listener has run: a claim made in between would be answered to nobody and
    its task held until it timed out, where it can be handed back at once."""

    def __init__(self, receive: Receive) -> None:
        super().__init__()
        self._cycle = getattr(receive, "__self__", None)  # uvicorn's request-response cycle
        self._transport = getattr(self._cycle, "transport", None)
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        self._fd: int = sock.fileno() if sock is not None else -1

    def is_set(self) -> bool:
        if super().is_set() or getattr(self._cycle, "disconnected", False) is True:
            return True
        if self._fd < 0 or self._transport is None:
            return False
        # A closing connection answers nobody, and its descriptor may soon be another's.
        return self._transport.is_closing() or _closed_by_peer(self._fd)


def _closed_by_peer(fd: int) -> bool:
    """Whether the client closed or reset the connection on socket `fd`, as uvicorn would
    hear at its next read (an end of the stream is a hang-up to it too), without reading."""
    probe = socket.socket(fileno=fd)
    try:
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing more sent
    except OSError:
        return True  # reset
    finally:
        probe.detach()


@contextlib.asynccontextmanager
async def hang_up_heard(receive: Receive) -> AsyncIterator[asyncio.Event]:
    """An event set once the client has gone; the request's body must be read already."""
    gone = HangUp(receive)

    async def listen() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # the rest of a body nobody reads
        gone.set()

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)  # a client gone before its request was served is heard at once
    try:
        yield gone
    finally:
        listener.cancel()
