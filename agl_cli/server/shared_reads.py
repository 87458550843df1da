"""One read for many readers: streams that want the same thing at the same moment share it.

Every open stream wakes when a rollout is stored, and those following the run live are
all at the same position: each reading the same page, and making the same JSON of it,
cost a report about a third of a millisecond of CPU per stream. A read under way is handed
to every caller that asks with the same key instead, and kept for `max_age` seconds
once done. What it gives must not be changed by its callers: they all hold the same one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedReads(Generic[T]):
    """Reads by key: `get` starts one only when none with that key is under way or fresh.

    A key must name everything the result depends on, and what makes it stale: a stream
    keys its page by its position and the `Signal` event it watches, which a new rollout
    replaces, so a read never answers a caller who came after what it could not see.
    """

    def __init__(self, max_age: float = 0.0) -> None:
        self._max_age = max_age
        self._reads: dict[Hashable, asyncio.Future[T]] = {}

    async def get(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        shared = self._reads.get(key)
        if shared is None:
            shared = self._reads[key] = asyncio.ensure_future(read())
            shared.add_done_callback(lambda done: self._done(key, done))
        # A caller that goes (its client hung up) leaves the read to the others.
        return await asyncio.shield(shared)

    def _done(self, key: Hashable, done: asyncio.Future[T]) -> None:
        failed = done.cancelled() or done.exception() is not None  # retrieved: nobody may be left to
        if failed or self._max_age <= 0:
            self._forget(key, done)
        else:
            asyncio.get_running_loop().call_later(self._max_age, self._forget, key, done)

    def _forget(self, key: Hashable, done: asyncio.Future[T]) -> None:
        if self._reads.get(key) is done:
            del self._reads[key]
