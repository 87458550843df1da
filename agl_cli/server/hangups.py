"""Hearing a client hang up while its request waits (a long poll, a wait for rollouts).

A wait answers nobody once its client is gone, yet it holds one of the requests served
at once (`agl serve --max-requests`) until it ends, and a claim it makes hands a task
to nobody. So a long wait listens for the disconnect and ends at it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.types import Receive


@contextlib.asynccontextmanager
async def hang_up_heard(receive: Receive) -> AsyncIterator[asyncio.Event]:
    """An event set once the client has gone; the request's body must be read already."""
    gone = asyncio.Event()

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
