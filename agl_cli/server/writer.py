"""Group commit: one thread writes to the store, and concurrent writes share each commit.

A request that writes hands its write to the writer thread and awaits the result. The
writer takes every write that is waiting, runs them in one transaction, commits and
syncs once, and only then are their requests answered. Should one of them fail, the
whole transaction is undone and the group is run again with each write in a savepoint
of its own, so that only the failing one fails. Under load, one fsync serves a whole group of
reports, and claims are ordered with every other write by the one thread that makes
them. Reads run on a small pool of threads with connections of their own, so nothing
that can wait on the disk runs on the event loop.

A store that never waits on a disk (the memory store) is called inline instead.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agl_cli.store import Store

T = TypeVar("T")

READ_THREADS = 2
# Groups are counted by size in power-of-two buckets: 1, 2, 3-4, 5-8, ... (see `GroupSizes`).
SIZE_BUCKETS = 16


@dataclass
class GroupSizes:
    """How many writes each commit carried, for the metrics and the performance docs."""

    groups: int = 0
    writes: int = 0
    largest: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * SIZE_BUCKETS)

    def add(self, size: int) -> None:
        self.groups += 1
        self.writes += size
        self.largest = max(self.largest, size)
        self.buckets[min((size - 1).bit_length(), SIZE_BUCKETS - 1)] += 1

    @staticmethod
    def bound(bucket: int) -> int:
        """The largest group size counted in `bucket`."""
        return 1 << bucket


class StoreThreads:
    """Runs the store's calls where they belong: here, inline on the event loop."""

    sizes: GroupSizes

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sizes = GroupSizes()

    def start(self) -> None:
        """Begin taking calls (the event loop is running)."""

    async def write(self, call: Callable[[], T]) -> T:
        result = call()
        self.sizes.add(1)
        return result

    async def read(self, call: Callable[[], T]) -> T:
        return call()

    async def close(self) -> None:
        """Finish every write taken, then close the store."""
        self.store.close()


_STOP = object()


class GroupCommitThreads(StoreThreads):
    """One writer thread that commits every waiting write together, and reader threads."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="agl-read")
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_forever, name="agl-writer", daemon=True)
        self._writer.start()

    async def write(self, call: Callable[[], T]) -> T:
        assert self._loop is not None, "start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.put((call, future))
        return await future

    async def read(self, call: Callable[[], T]) -> T:
        assert self._loop is not None, "start() first"
        return await self._loop.run_in_executor(self._readers, call)

    async def close(self) -> None:
        if self._writer is not None:
            self._pending.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=False)
        await asyncio.to_thread(self.store.close)

    def _write_forever(self) -> None:
        while True:
            first = self._pending.get()
            group = []
            stop = first is _STOP
            if not stop:
                group.append(first)
            while not self._pending.empty():  # everything that queued up while we committed
                job = self._pending.get_nowait()
                if job is _STOP:
                    stop = True
                else:
                    group.append(job)
            if group:
                self._commit(group)
            if stop:
                return

    def _commit(self, group: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> None:
        try:
            outcomes = self._commit_all(group)
        except Exception:  # some write failed: undo all, then commit the others without it
            outcomes = self._commit_each(group)
        self.sizes.add(len(group))
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle, outcomes)

    def _commit_all(self, group: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> list[_Outcome]:
        """The fast way: no savepoints, so any failure undoes the whole group."""
        with self.store.transaction(isolate_writes=False):
            return [(future, True, call()) for call, future in group]

    def _commit_each(self, group: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> list[_Outcome]:
        """Each write in a savepoint of its own: a failing one is undone alone."""
        outcomes: list[_Outcome] = []
        try:
            with self.store.transaction(isolate_writes=True):
                for call, future in group:
                    try:
                        outcomes.append((future, True, call()))
                    except Exception as exc:
                        outcomes.append((future, False, exc))
        except Exception as exc:  # the commit itself failed: nothing of the group is kept
            outcomes = [(future, False, exc) for _, future in group]
        return outcomes


_Outcome = tuple["asyncio.Future[Any]", bool, Any]


def _settle(outcomes: list[_Outcome]) -> None:
    """Answer the group's writers on the event loop (a writer that gave up is skipped)."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def threads_for(store: Store) -> StoreThreads:
    return GroupCommitThreads(store) if store.blocking else StoreThreads(store)
