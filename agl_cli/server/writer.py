"""Group commit: one thread writes to the store, and concurrent writes share each commit.

A request that writes hands its write to the writer thread and awaits the result. The
writer takes every write that is waiting and runs them in one transaction; a syncer
thread makes that commit durable (one fsync) while the writer goes on with the next
group, and only then are the group's durable writes answered, in order. Writes that
need no sync (claims: a claim lost to a power cut is handed out again) are answered as
soon as their group is committed. Claims and reports, nearly every write under load, are
made a kind at a time (`Batched`): a group's claims in two statements, its reports in
four, instead of a few statements each. Should one write fail, the whole transaction is
undone and the group is run again with each write in a savepoint of its own, so that
only the failing one fails. Claims go through the same writer, so they fall in line
with every other write: after every group before theirs, before every group after it.
Reads run on a small pool of threads with connections of their own, so nothing that
can wait on the disk runs on the event loop. `docs/performance.md` tells what this buys.

A sync that fails ends all writing: the commits since the last good sync may not be on
disk, and a later sync that succeeds could not tell (after a failed fsync the kernel
forgets the error), so answering any write with success again could be a lie. Every
write from then on is refused, and whoever runs the daemon is told (`on_lost`) so that
it can stop; a restart recovers what is on disk.

A store that never waits on a disk (the memory store) has only the writer, which makes
its reads too (`GroupCommitThreads`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agl_cli.store import StorageError, Store

log = logging.getLogger("agl.writer")

T = TypeVar("T")
Item = TypeVar("Item")

READ_THREADS = 2
# Said, after why a sync failed, to every write from then on (see the docstring above).
SINCE_THE_LAST_GOOD_SYNC = "a write since the last good sync may not survive a restart, and agl takes no more writes until it is restarted"
# Commits between two checkpoints of the write-ahead log by the checkpointer thread: often
# enough that the commit which crosses SQLite's own threshold (1,000 pages) finds little
# left to copy, even when each commit carries a dozen 42 KB rollouts (~140 pages); else
# that commit copies the log itself and holds up its group (docs/performance.md).
CHECKPOINT_EVERY = 4
# The writer counts as idle (and moves committed batches into place) after this long
# without a write: under load it never is, so that work never holds up a claim.
IDLE_AFTER = 0.005
# Groups are counted by size in power-of-two buckets: 1, 2, 3-4, 5-8, ... (up to 16,384).
GROUP_SIZES = tuple(1 << bucket for bucket in range(15))
# How long a group's transaction, or a sync, took: a local disk syncs in a fraction of a
# millisecond, a network one may take tens.
DURATIONS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


@dataclass
class Tally:
    """Observations counted per bucket, read as a Prometheus histogram when scraped: the
    thread that adds to it never takes a lock for that."""

    bounds: tuple[float, ...]
    count: int = 0
    total: float = 0
    largest: float = 0
    buckets: list[int] = field(init=False)  # one per bound, then one for anything larger

    def __post_init__(self) -> None:
        self.buckets = [0] * (len(self.bounds) + 1)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.largest = max(self.largest, value)
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1


@dataclass
class CommitStats:
    """How writes shared commits, and what commits and syncs took: for the metrics and
    the performance docs."""

    group_sizes: Tally = field(default_factory=lambda: Tally(GROUP_SIZES))
    commit_seconds: Tally = field(default_factory=lambda: Tally(DURATIONS))
    sync_seconds: Tally = field(default_factory=lambda: Tally(DURATIONS))


@dataclass(frozen=True, eq=False)
class Batched(Generic[Item, T]):
    """A kind of write that the writer makes for all of a group's writes of the kind at
    once (a group's claims, its reports): `many` takes their items in order and returns
    one result for each. A single item (for a store called inline, and for the retry in
    which each write has a savepoint of its own) is `many` of a list of one."""

    many: Callable[[list[Item]], list[T]]

    def one(self, item: Item) -> T:
        [result] = self.many([item])
        return result


@dataclass(frozen=True, slots=True)
class _Item(Generic[Item, T]):
    """A write of a `Batched` kind; called, it is made on its own."""

    kind: Batched[Item, T]
    item: Item

    def __call__(self) -> T:
        return self.kind.one(self.item)


@dataclass(frozen=True, slots=True)
class _Read(Generic[T]):
    """A read of a store whose reads go through the writer (see `GroupCommitThreads.read`)."""

    call: Callable[[], T]

    def __call__(self) -> T:
        return self.call()


_STOP = object()
_Job = tuple[Callable[[], Any], "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class GroupCommitThreads:
    """A writer thread that commits every waiting write together, a syncer thread that
    makes each commit durable while the writer goes on with the next group, a thread that
    checkpoints the store's log now and then, and reader threads.

    A store that never waits on a disk (not `blocking`: the memory store) has one
    connection for everything and nothing to sync or checkpoint: only the writer runs,
    a group's writes are answered at its commit, and reads go to the writer too, each
    made between two groups. It still gains from the writer: SQLite works beside the
    event loop, and a group's claims and reports are made a kind at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = CommitStats()
        # Set for good once a sync fails: the answer to every write from then on.
        self.lost: StorageError | None = None
        # Called on the event loop, once, when a sync fails (`lost` says why); the daemon stops.
        self.on_lost: Callable[[], None] = lambda: None
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._committed: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._readers = (
            ThreadPoolExecutor(READ_THREADS, thread_name_prefix="agl-read") if store.blocking else None
        )
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commits = 0
        self._checkpoint_due = threading.Event()
        self._stopping = False

    def start(self) -> None:
        """Begin taking calls (the event loop is running)."""
        self._loop = asyncio.get_running_loop()
        work = {"agl-writer": self._write_forever}
        if self.store.blocking:
            work |= {"agl-syncer": self._sync_forever, "agl-checkpointer": self._checkpoint_forever}
        self._threads = [threading.Thread(target=run, name=name, daemon=True) for name, run in work.items()]
        for thread in self._threads:
            thread.start()

    def write(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Take a write now (writes are made in the order they are taken); await its result."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.put((call, future))
        return future

    def write_batched(self, kind: Batched[Item, T], item: Item) -> asyncio.Future[T]:
        """Take a write of a kind that is made a group at a time; await its result."""
        return self.write(_Item(kind, item))

    def read(self, call: Callable[[], T]) -> Awaitable[T]:
        assert self._loop is not None, "start() first"
        if self._readers is None:  # one connection: the writer's, between two groups
            return self.write(_Read(call))
        return self._loop.run_in_executor(self._readers, call)

    async def close(self) -> None:
        """Finish every write taken, then close the store."""
        if self._threads:
            self._pending.put(_STOP)  # the writer passes it on to the syncer, if there is one
            self._stopping = True
            self._checkpoint_due.set()
            for thread in self._threads:
                await asyncio.to_thread(thread.join)
            self._threads = []
        if self._readers is not None:
            self._readers.shutdown(wait=False)
        await asyncio.to_thread(self.store.close)

    # the writer --------------------------------------------------------------------------

    def _write_forever(self) -> None:
        on_disk = self.store.blocking  # else: reads come here too, and nothing is synced
        for group, stop in _batches(self._pending, self._idle):
            if group and not on_disk:
                group = self._read(group)
            if group and self.lost is not None:
                self._answer([(future, False, self.lost) for _, future in group])
            elif group:
                answer_now, after_sync = self._commit(group)
                if not on_disk:
                    answer_now, after_sync = answer_now + after_sync, []
                self._answer(answer_now)
                if after_sync:
                    self._committed.put(after_sync)
                self._commits += 1
                if self._commits % CHECKPOINT_EVERY == 0:
                    self._checkpoint_due.set()
            if stop:
                if on_disk:
                    self._committed.put(_STOP)  # the syncer's turn to stop
                return

    def _read(self, group: list[_Job]) -> list[_Job]:
        """Make and answer the group's reads, before its writes; return the writes. Nothing
        of the group has been answered, so this is an order they might have come in."""
        reads = [(call, future) for call, future in group if type(call) is _Read]
        if not reads:
            return group
        outcomes: list[_Outcome] = []
        for call, future in reads:
            try:
                outcomes.append((future, True, call()))
            except Exception as exc:
                outcomes.append((future, False, exc))
        self._answer(outcomes)
        return [(call, future) for call, future in group if type(call) is not _Read]

    def _idle(self) -> bool:
        """Nothing to write for a while: do a step of what the store left for later (a
        committed batch to move into place); True if there is more. Should it fail, the
        batch's tasks are queued all the same; the next idle moment retries."""
        if self.lost is not None:
            return False
        with failure_logged("moving a committed batch into place"):
            return self.store.drain_step()
        return False

    def _commit(self, group: list[_Job]) -> tuple[list[_Outcome], list[_Outcome]]:
        """Commit the group. Its outcomes in two lists: those that may be answered now
        (claims, failures), and those to answer once a sync has made them durable.

        First the fast way, without savepoints; should a write fail, that undoes the
        whole group, which then runs again with each write in a savepoint of its own, so
        that only the failing one fails."""
        self.stats.group_sizes.add(len(group))
        started = time.perf_counter()
        try:
            return self._run(group, isolate_writes=False)
        except Exception:  # some write failed, and all of them were undone
            try:
                return self._run(group, isolate_writes=True)
            except Exception as exc:  # the commit itself failed: nothing of the group is kept
                return [(future, False, exc) for _, future in group], []
        finally:
            self.stats.commit_seconds.add(time.perf_counter() - started)

    def _run(self, group: list[_Job], isolate_writes: bool) -> tuple[list[_Outcome], list[_Outcome]]:
        """The group in one transaction; a write that fails fails alone if `isolate_writes`,
        else it ends the transaction (everything is undone) and is raised.

        Writes of a `Batched` kind are made after the others, each kind at once (unless
        `isolate_writes`): a group's writes are all in flight together, none answered, so
        any order is one they might have come in."""
        answer_now: list[_Outcome] = []
        after_sync: list[_Outcome] = []
        with self.store.transaction(isolate_writes=isolate_writes, sync=False) as commit:
            batches: dict[Batched[Any, Any], list[tuple[Any, asyncio.Future[Any]]]] = {}
            for call, future in group:
                if type(call) is _Item and not isolate_writes:
                    batches.setdefault(call.kind, []).append((call.item, future))
                    continue
                durable = commit.durable_writes
                try:
                    value = call()
                except Exception as exc:
                    if not isolate_writes:
                        raise
                    answer_now.append((future, False, exc))
                    continue
                (after_sync if commit.durable_writes > durable else answer_now).append((future, True, value))
            for kind, jobs in batches.items():
                durable = commit.durable_writes
                values = kind.many([item for item, _ in jobs])
                (after_sync if commit.durable_writes > durable else answer_now).extend(
                    (future, True, value) for (_, future), value in zip(jobs, values, strict=True)
                )
        return answer_now, after_sync

    def _answer(self, outcomes: list[_Outcome]) -> None:
        if outcomes:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_settle, outcomes)

    # the syncer --------------------------------------------------------------------------

    def _sync_forever(self) -> None:
        """Answer the durable writes of committed groups, in order, after one sync for all."""
        for committed, stop in _batches(self._committed):
            outcomes = [outcome for group in committed for outcome in group]
            if outcomes and self.lost is None:
                started = time.perf_counter()
                try:
                    self.store.sync()
                    self.stats.sync_seconds.add(time.perf_counter() - started)
                except Exception as exc:  # not known to be on disk: not a success, nor anything after
                    self._lose(exc)
            if outcomes and self.lost is not None:
                outcomes = [(future, False, self.lost) for future, _, _ in outcomes]
            self._answer(outcomes)
            if stop:
                return

    def _lose(self, exc: Exception) -> None:
        """A sync failed: refuse every write from now on, say so once, and tell `on_lost`."""
        reason = exc.reason if isinstance(exc, StorageError) else str(exc)
        self.lost = StorageError(f"{reason}: {SINCE_THE_LAST_GOOD_SYNC}", undone=False)
        log.error("%s", self.lost)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.on_lost)

    # the checkpointer ---------------------------------------------------------------------

    def _checkpoint_forever(self) -> None:
        """Copy the log into the database beside the writer, so that the checkpoint a commit
        runs itself now and then has little left to do."""
        while True:
            self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            if self._stopping:
                return
            with failure_logged("checkpointing the write-ahead log"):  # the next one retries
                self.store.checkpoint()


@contextmanager
def failure_logged(what: str) -> Iterator[None]:
    """Log a failure of background work and go on: a disk that said no is worth a line,
    anything else its traceback."""
    try:
        yield
    except StorageError as exc:
        log.warning("%s failed: %s", what, exc.reason)
    except Exception:
        log.exception("%s failed", what)


def _next(source: queue.SimpleQueue[Any], idle: Callable[[], bool] | None) -> Any:
    if idle is not None:
        while True:
            try:
                return source.get(timeout=IDLE_AFTER)
            except queue.Empty:
                if not idle():
                    break
    return source.get()


def _batches(
    source: queue.SimpleQueue[Any], idle: Callable[[], bool] | None = None
) -> Iterator[tuple[list[Any], bool]]:
    """Everything waiting in `source` at once, and whether the stop marker was among it.
    Whenever nothing has come for `IDLE_AFTER` seconds, `idle()` does a step of its work,
    until it says there is no more."""
    while True:
        items = [_next(source, idle)]
        while not source.empty():
            items.append(source.get_nowait())
        stop = _STOP in items
        yield [item for item in items if item is not _STOP], stop
        if stop:
            return


def _settle(outcomes: list[_Outcome]) -> None:
    """Answer the group's writers on the event loop (a writer that gave up is skipped)."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
