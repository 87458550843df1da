"""The one door into the store, and the wake-ups (`wakeups`) that long polls and watchers wait on.

Every route, the stream, the metrics and the embedded Python API go through one
`Broker`: writes to the writer thread (group commit), reads to the reader threads (the
memory store's to the writer as well), and the broker knows what changed, so a task
queued by any of them wakes a worker that is long-polling, and a rollout stored by a
worker wakes whoever waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, NamedTuple, TypeVar, cast

from starlette.requests import Request

from agl_cli.api_limits import PAGE_BYTES
from agl_cli.models import ResourcesUpdate, Rollout, TaskStatus
from agl_cli.server.query_pages import PageBody, Spools
from agl_cli.server.stats import Stats
from agl_cli.server.sweeper import Sweeper
from agl_cli.server.wakeups import Handout, RolloutWaits, Signal, StoppingError, wait_for
from agl_cli.server.writer import Batched, CommitStats, GroupCommitThreads
from agl_cli.store import (
    Claim,
    NewTask,
    Report,
    ReportOutcome,
    RewardSeries,
    RolloutDetail,
    RolloutSummary,
    Space,
    StorageError,
    Store,
    StoreCounts,
    StoredRollout,
    TaskHistory,
    TaskRecord,
)
from agl_cli.store.ids import new_store_resources_id
from agl_cli.store.records import QueryPage, SpansAdded
from agl_cli.store_models import (
    AttemptQuery,
    EnqueueRequest,
    ResourcesQuery,
    RolloutQuery,
    Span,
    SpanQuery,
    StartRolloutBody,
    WorkerQuery,
)

CANCEL_CHUNK = 250  # queued tasks cancelled in one write (a claim beside it waits for one)
RETRY_CHUNK = 100  # failed tasks queued again in one write: an UPDATE each, so fewer than CANCEL_CHUNK
ENQUEUE_AT_ONCE = 1_000  # store-API rollouts written in one write (about 10 ms)
WAIT_SLICE = 60.0  # a wait without a limit still looks again this often
T = TypeVar("T")


class ClaimMade(NamedTuple):
    """What the writer made of a claim: the claim (None if the queue was empty), when a
    claim may next run out (if it was), and whether it found claims run out meanwhile."""

    claim: Claim | None
    next_expiry: float | None
    ran_out: int  # claims found run out


@dataclass(frozen=True)
class Snapshot:
    """What `agl status` shows of the store, read together."""

    counts: StoreCounts
    last_seq: int
    latest_resources_id: str | None
    space: Space


class Broker:
    """The one way into the store for the server's routes and the embedded API."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._threads = GroupCommitThreads(store)
        self.stats = Stats(started=store.clock())
        self._claimers = Handout()
        self._spools = Spools()  # the temporary files of the store-API pages being sent
        self._rollouts_changed = Signal()  # any rollout stored or ended: streams, dashboards
        self._rollout_waits = RolloutWaits()  # the store API's waits, by the rollouts they wait for
        self._sweeper = Sweeper(store, self._threads, self.stats, self._claims_ran_out)
        self._latest: ResourcesUpdate | None = None  # every publish comes through here
        self.closing = False
        # The writer makes a group's claims, and its reports, each in a few statements.
        self._claims = Batched(self._claims_or_next_deadline)
        self._reports: Batched[Report, ReportOutcome] = Batched(store.record_reports)

    # what the store was opened with ------------------------------------------------------

    @property
    def store_kind(self) -> str:
        return self._store.kind

    def now(self) -> float:
        """The store's clock (epoch seconds): what the times it records are read against."""
        return self._store.clock()

    @property
    def task_timeout(self) -> float:
        return self._store.task_timeout

    @property
    def max_attempts(self) -> int | None:
        return self._store.max_claims

    @property
    def rollout_retention(self) -> float | None:
        return self._store.rollout_retention

    @property
    def forget_tasks(self) -> bool:
        return self._store.forget_tasks

    @property
    def commit_stats(self) -> CommitStats:
        return self._threads.stats

    @property
    def lost(self) -> StorageError | None:
        """Why no write can be made any more (a sync failed), or None."""
        return self._threads.lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Have `callback` called on the event loop, once, if a sync fails (`lost` says why)."""
        self._threads.on_lost = callback

    # life --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._threads.start()
        self._latest = await self._threads.read(self._store.latest_resources)
        await self._sweeper.start()

    def begin_shutdown(self) -> None:
        """Answer every long poll now, so that shutdown does not wait out their timeouts."""
        self.closing = True
        self._claimers.wake()
        self._rollouts_ended()

    async def stop(self) -> None:
        """Stop sweeping, answer the waiters, finish the writes taken, close the store."""
        await self._sweeper.stop()
        self.begin_shutdown()
        await self._threads.close()

    # tasks -------------------------------------------------------------------------------

    async def queue_tasks(self, specs: Sequence[NewTask]) -> list[str]:
        queued = self._threads.write(lambda: self._store.queue_tasks(specs))
        # Waiting workers may claim right away: their claims are taken after this write,
        # so they see its tasks. A claim is answered at its commit, which may come before
        # this write's sync: were the power to fail between the two, the tasks' sender
        # was never answered, and the worker's report for one comes back unsolicited.
        self._claimers.wake(len(specs))
        return await queued

    async def claim(self, wait: float = 0.0, gone: asyncio.Event | None = None) -> Claim | None:
        """Hand out the next task, waiting up to `wait` seconds for one to appear, unless
        the claimer is `gone` first (a task is then handed to nobody; one claimed as it
        hung up is handed back at once)."""
        deadline = time.monotonic() + wait
        turn: asyncio.Event | None = None
        try:
            while not (gone is not None and gone.is_set()):
                if turn is not None:
                    self._claimers.drop(turn)  # this claim takes its wake-up, if any
                turn = self._claimers.watch()
                made = await self.claim_soon()
                claim = self.claimed(made)
                if claim is not None:
                    if gone is not None and gone.is_set():  # heard while the claim was made
                        await self._abandon(claim)
                        return None
                    return claim
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closing or (gone is not None and gone.is_set()):
                    return None
                if made.next_expiry is not None:
                    remaining = min(remaining, max(made.next_expiry - self.now(), 0.0) + 0.001)
                await wait_for(turn, remaining, unless=gone)  # a hang-up meanwhile ends it at the top
            return None
        finally:
            if turn is not None:
                self._claimers.leave(turn)

    async def _abandon(self, claim: Claim) -> None:
        ran_out = await self._threads.write(
            lambda: self._watching_expiry(
                lambda: self._store.abandon_claim(claim.rollout_id, claim.num_claims)
            )[1]
        )
        if ran_out:
            self._claims_ran_out(ran_out)

    def claim_soon(self) -> asyncio.Future[ClaimMade]:
        """A claim of the next task, without waiting for one. Pass what it made to `claimed`."""
        return self._threads.write_batched(self._claims, None)

    def claimed(self, made: ClaimMade) -> Claim | None:
        """Count a claim that `claim_soon` made (None if the queue was empty), and wake the
        waits if it found claims run out."""
        if made.ran_out:
            self._claims_ran_out(made.ran_out)
        claim = made.claim
        if claim is None:
            return None
        self._count_claim(claim.num_claims)
        return claim

    def _count_claim(self, sequence_id: int) -> None:
        """A task handed out, as its `sequence_id`th claim (or attempt)."""
        self.stats.claims += 1
        self.stats.claim_rate.add()
        if sequence_id > 1:
            self.stats.reclaims += 1

    def _claims_or_next_deadline(self, waiting: list[None]) -> list[ClaimMade]:
        """A claim for each of a group's claimers, or, once the queue runs dry, when a
        claim may next expire (for the rest to wait until)."""
        claims, ran_out = self._watching_expiry(lambda: self._store.claim_many(len(waiting)))
        made = [ClaimMade(claim, None, ran_out) for claim in claims]
        if len(made) < len(waiting):
            made += [ClaimMade(None, self._store.next_deadline(), ran_out)] * (len(waiting) - len(made))
        return made

    def _watching_expiry(self, claim: Callable[[], T]) -> tuple[T, int]:
        """Make a claim (on the writer thread), and say how many claims it found run out:
        the sweep will not find those any more, so its caller must wake the waits, once
        the claim is committed."""
        before = self._store.expirations
        return claim(), self._store.expirations - before

    def _claims_ran_out(self, count: int) -> None:
        """`count` claims ran out: their tasks may be queued again, for as many claimers."""
        self._claimers.wake(count)
        self._rollouts_ended()  # an attempt that ran out may have failed its rollout

    async def cancel(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """Cancel tasks (all or none), and wake whoever waits for their rollouts to finish."""
        records = await self._threads.write(lambda: self._store.cancel_tasks(rollout_ids))
        self._rollouts_ended(rollout_ids)
        return records

    async def cancel_queued(self) -> int:
        """Cancel every task queued now, a chunk to a write, so that claims and reports are
        made between two; a task queued or handed back meanwhile is left. How many were."""
        last_place = await self._threads.write(self._store.last_queue_place)
        cancelled = 0
        while count := await self._threads.write(lambda: self._store.cancel_queued(last_place, CANCEL_CHUNK)):
            cancelled += count
            self._rollouts_ended()
        return cancelled

    @property
    def paused(self) -> bool:
        return self._store.paused

    async def set_paused(self, paused: bool) -> None:
        """Pause the queue (claims get nothing), or resume it and wake the waiting workers."""
        await self._threads.write(lambda: self._store.set_paused(paused))
        if not paused:
            self._claimers.wake()

    async def retry(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """Queue failed or cancelled tasks again (all or none), for waiting workers to claim."""
        retried = self._threads.write(lambda: self._store.retry_tasks(rollout_ids))
        self._claimers.wake(len(rollout_ids))  # as for `queue_tasks`
        return await retried

    async def retry_failed(self) -> int:
        """Queue every failed task again, a chunk to a write, oldest first; how many were.
        One that fails again meanwhile is not retried twice: each write starts after the last."""
        retried, after = 0, 0
        while True:
            count, after = await self._threads.write(partial(self._store.retry_failed, after, RETRY_CHUNK))
            if not count:
                return retried
            retried += count
            self._claimers.wake(count)

    async def get_task(self, rollout_id: str) -> TaskRecord | None:
        return await self._threads.read(lambda: self._store.get_task(rollout_id))

    async def list_tasks(
        self, status: TaskStatus | None, limit: int, offset: int
    ) -> tuple[list[TaskRecord], int]:
        """Up to `limit` tasks from `offset` on, fewer once they hold `PAGE_BYTES`, and how
        many there are (in `status`), read together."""

        def read() -> tuple[list[TaskRecord], int]:
            with self._store.snapshot():
                counts = self._store.counts().tasks
                total = counts[status] if status is not None else sum(counts.values())
                return self._store.list_tasks(status, limit, offset, PAGE_BYTES), total

        return await self._threads.read(read)

    # batches -----------------------------------------------------------------------------

    async def create_batch(self) -> str:
        return await self._threads.write(self._store.create_batch)

    async def stage_tasks(self, batch_id: str, specs: Sequence[NewTask]) -> tuple[list[str], int]:
        """Stage tasks in a batch; their future ids, and how many the batch holds now."""

        def stage() -> tuple[list[str], int]:
            return self._store.stage_tasks(batch_id, specs), self._store.batch_size(batch_id)

        return await self._threads.write(stage)

    async def commit_batch(self, batch_id: str) -> int:
        """Queue a staged batch at once, and wake the workers waiting for tasks."""
        queued = await self._threads.write(lambda: self._store.commit_batch(batch_id))
        self._claimers.wake(queued)
        return queued

    async def discard_batch(self, batch_id: str) -> int:
        return await self._threads.write(lambda: self._store.discard_batch(batch_id))

    # rollouts ----------------------------------------------------------------------------

    async def report(self, report: Report) -> ReportOutcome:
        """Store a worker's report."""
        return self.reported(await self.report_soon(report), report.rollout_id)

    def report_soon(self, report: Report) -> asyncio.Future[ReportOutcome]:
        """`report`, in two halves: the write, whose outcome goes to `reported`."""
        return self._threads.write_batched(self._reports, report)

    def reported(self, outcome: ReportOutcome, rollout_id: str) -> ReportOutcome:
        """Count a report's outcome (for `rollout_id`) and wake whoever waits for it."""
        self.stats.reports[outcome] += 1
        if outcome is not ReportOutcome.DUPLICATE:
            self.stats.results += 1
            self.stats.rollout_rate.add()
        # even a duplicate may end a task: one the store API brought back after its result
        self._rollouts_ended((rollout_id,))
        return outcome

    def _rollouts_ended(self, rollout_ids: Iterable[str] | None = None) -> None:
        """Rollouts may have been stored or ended (`rollout_ids`, None if not known which):
        wake the streams, and the waits for them."""
        self._rollouts_changed.notify()
        self._rollout_waits.wake(rollout_ids)

    def watch_rollouts(self) -> asyncio.Event:
        """The event set when the next rollout is stored (see `Signal`)."""
        return self._rollouts_changed.watch()

    async def rollouts_after(self, seq: int, limit: int, max_bytes: int = PAGE_BYTES) -> list[StoredRollout]:
        """Up to `limit` kept rollouts after `seq`, fewer once they hold `max_bytes`."""
        return await self._threads.read(lambda: self._store.rollouts_after(seq, limit, max_bytes))

    async def get_rollout(self, rollout_id: str) -> StoredRollout | None:
        return await self._threads.read(lambda: self._store.get_rollout(rollout_id))

    async def last_seq(self) -> int:
        return await self._threads.read(self._store.last_seq)

    async def consume_rollout(self, rollout_id: str) -> Rollout | None:
        return await self._threads.write(lambda: self._store.consume_rollout(rollout_id))

    async def wait_to_consume(self, rollout_id: str, timeout: float | None) -> Rollout | None:
        """The rollout of `rollout_id`, consumed once it comes; None once `timeout` seconds
        have passed (None: no limit) or the daemon stops. Woken by a result for it, not by
        every result: each wake is a write, and a program may poll for many at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        named = (rollout_id,)
        while True:
            changed = self._rollout_waits.watch(named)
            try:
                rollout = await self.consume_rollout(rollout_id)
                remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if rollout is not None or remaining <= 0 or self.closing:
                    return rollout
                await wait_for(changed, min(remaining, WAIT_SLICE))
            finally:
                self._rollout_waits.drop(changed, named)

    async def consume_all(self) -> list[Rollout]:
        return await self._threads.write(self._store.consume_all)

    # resources ---------------------------------------------------------------------------

    async def publish(self, resources: Mapping[str, Any], resources_id: str | None = None) -> ResourcesUpdate:
        update = await self._threads.write(lambda: self._store.publish_resources(resources, resources_id))
        self._latest = update
        return update

    def latest_resources(self) -> ResourcesUpdate | None:
        """The latest bundle, known without asking the store: every publish comes through here."""
        return self._latest

    async def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        latest = self._latest
        if latest is not None and latest.resources_id == resources_id:
            return latest
        return await self._threads.read(lambda: self._store.get_resources(resources_id))

    async def list_resources(self, last: int | None = None) -> tuple[list[ResourcesUpdate], int]:
        """Every bundle, or the `last` published, and how many there are, read together."""

        def read() -> tuple[list[ResourcesUpdate], int]:
            with self._store.snapshot():
                return self._store.list_resources(last), self._store.counts().resources

        return await self._threads.read(read)

    # the store API (agentlightning 0.3.0's LightningStore) ----------------------------------

    async def enqueue_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[dict[str, object]]:
        """Queue all of them or none. More than `ENQUEUE_AT_ONCE` are staged as a batch, a
        part a write, then queued at once by its commit, as `agl queue` does: written in
        one, 100,000 held every claim for about 1.3 s."""
        if len(requests) > ENQUEUE_AT_ONCE:
            return await self._enqueue_staged(requests)
        queued = self._threads.write(lambda: self._store.enqueue_rollouts(requests))
        self._claimers.wake(len(requests))  # as for `queue_tasks`
        return await queued

    async def _enqueue_staged(self, requests: Sequence[EnqueueRequest]) -> list[dict[str, object]]:
        batch_id = await self.create_batch()
        try:
            shapes: list[dict[str, object]] = []
            for start in range(0, len(requests), ENQUEUE_AT_ONCE):
                part = requests[start : start + ENQUEUE_AT_ONCE]
                after = cast(float, shapes[-1]["start_time"]) if shapes else None
                shapes += await self._threads.write(
                    partial(self._store.stage_rollouts, batch_id, part, after)
                )
            await self.commit_batch(batch_id)
        except BaseException:
            with contextlib.suppress(Exception):  # else dropped as idle, or at the next start
                await self.discard_batch(batch_id)
            raise
        return shapes

    async def start_rollout(self, request: StartRolloutBody) -> dict[str, object]:
        return self._counted(await self._threads.write(lambda: self._store.start_rollout(request)))

    async def dequeue_rollouts(self, limit: int, worker_id: str | None) -> list[dict[str, object]]:
        handed, ran_out = await self._threads.write(
            lambda: self._watching_expiry(lambda: self._store.dequeue_rollouts(limit, worker_id))
        )
        if ran_out:
            self._claims_ran_out(ran_out)
        return [self._counted(shape) for shape in handed]

    async def start_attempt(self, rollout_id: str, worker_id: str | None) -> dict[str, object]:
        return self._counted(
            await self._threads.write(lambda: self._store.start_attempt(rollout_id, worker_id))
        )

    def _counted(self, attempted: dict[str, object]) -> dict[str, object]:
        """An attempted rollout, its attempt counted as a claim: dequeued, or started by
        the runner itself, it is a task being worked on all the same."""
        attempt = attempted["attempt"]
        assert isinstance(attempt, dict)
        self._count_claim(attempt["sequence_id"])
        return attempted

    async def update_rollout(self, rollout_id: str, changes: Mapping[str, Any]) -> dict[str, object]:
        return await self._changed(rollout_id, lambda: self._store.update_rollout(rollout_id, changes))

    async def update_attempt(
        self, rollout_id: str, attempt_id: str, changes: Mapping[str, Any]
    ) -> dict[str, object]:
        return await self._changed(
            rollout_id, lambda: self._store.update_attempt(rollout_id, attempt_id, changes)
        )

    async def _changed(self, rollout_id: str, change: Callable[[], T]) -> T:
        """A write that may have requeued or finished rollout `rollout_id` (and stored its
        result): wake whoever waits on either, and count the result."""

        def write() -> tuple[T, int, int]:
            results, places = self._store.last_seq(), self._store.last_queue_place()
            changed = change()
            return changed, self._store.last_seq() - results, self._store.last_queue_place() - places

        result, results, requeued = await self._threads.write(write)
        if results:
            self.stats.results += results
            self.stats.rollout_rate.add(results)
        self._claimers.wake(requeued)
        self._rollouts_ended((rollout_id,))
        return result

    async def get_rollout_shape(self, rollout_id: str) -> dict[str, object] | None:
        return await self._threads.read(lambda: self._store.get_rollout_shape(rollout_id))

    async def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None, gone: asyncio.Event | None = None
    ) -> list[dict[str, object]]:
        """The finished ones among `rollout_ids`, once every known one has finished or
        `timeout` seconds have passed (None: no limit), or the waiter is `gone`. Woken by
        each change, not polled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        named = frozenset(rollout_ids)
        while True:
            changed = self._rollout_waits.watch(named)
            try:
                finished, unfinished = await self._threads.read(
                    lambda: self._store.finished_rollouts(rollout_ids)
                )
                remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if not unfinished or remaining <= 0 or (gone is not None and gone.is_set()):
                    return finished
                if self.closing:  # answered as if in time, the waiter would take them for ended
                    raise StoppingError("agl is stopping before the rollouts waited for have finished")
                await wait_for(changed, min(remaining, WAIT_SLICE), unless=gone)
            finally:
                self._rollout_waits.drop(changed, named)

    async def _page(
        self, opened: Callable[[], AbstractContextManager[QueryPage]], made: Callable[[QueryPage], T]
    ) -> T:
        """A store-API page, `made` into its answer (`PageBody`: its JSON) on the reading
        thread, within the page's snapshot."""

        def read() -> T:
            with opened() as page:
                return made(page)

        return await self._threads.read(read)

    async def _page_body(self, opened: Callable[[], AbstractContextManager[QueryPage]]) -> PageBody:
        """A store-API page as its JSON answer, its temporary file (if any) counted
        among those being sent: beyond the files allowed at once, refused."""
        body = await self._page(opened, PageBody)
        self._spools.take(body)
        return body

    async def query_rollouts(self, query: RolloutQuery) -> PageBody:
        return await self._page_body(lambda: self._store.query_rollouts(query))

    async def query_attempts(self, rollout_id: str, query: AttemptQuery) -> PageBody:
        return await self._page_body(lambda: self._store.query_attempts(rollout_id, query))

    async def latest_attempt(self, rollout_id: str) -> dict[str, object] | None:
        return await self._threads.read(lambda: self._store.latest_attempt(rollout_id))

    async def add_spans(self, spans: Sequence[Span], from_otlp: bool = False) -> SpansAdded:
        return await self._threads.write(lambda: self._store.add_spans(spans, from_otlp))

    async def next_span_sequence_ids(self, rollout_ids: Sequence[str]) -> list[int]:
        return await self._threads.write(lambda: self._store.next_span_sequence_ids(rollout_ids))

    async def query_spans(self, query: SpanQuery) -> PageBody:
        return await self._page_body(lambda: self._store.query_spans(query))

    async def heartbeat_worker(self, worker_id: str, stats: Mapping[str, Any] | None) -> dict[str, object]:
        return await self._threads.write(lambda: self._store.heartbeat_worker(worker_id, stats))

    async def get_worker(self, worker_id: str) -> dict[str, object] | None:
        return await self._threads.read(lambda: self._store.get_worker(worker_id))

    async def query_workers(self, query: WorkerQuery) -> PageBody:
        return await self._page_body(lambda: self._store.query_workers(query))

    async def workers(self, query: WorkerQuery) -> dict[str, object]:
        """A page of workers, whole: for the dashboard, whose pages are small."""
        return await self._page(lambda: self._store.query_workers(query), QueryPage.whole)

    async def query_resources(self, query: ResourcesQuery) -> PageBody:
        return await self._page_body(lambda: self._store.query_resources(query))

    async def publish_store_resources(
        self, resources: Mapping[str, Any], resources_id: str | None
    ) -> ResourcesUpdate:
        """Publish as the store API does: a new bundle gets an `rs-` id."""
        return await self.publish(resources, resources_id or new_store_resources_id())

    async def statistics(self) -> dict[str, object]:
        return await self._threads.read(self._store.statistics)

    # the whole -----------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        def read() -> Snapshot:
            with self._store.snapshot():
                return self._snapshot()

        return await self._threads.read(read)

    def _snapshot(self) -> Snapshot:
        store = self._store
        return Snapshot(store.counts(), store.last_seq(), self._latest_id(), store.space())

    async def backup(self) -> BinaryIO:
        """A copy of the store as of now (`Store.backup`): every write answered before
        this was called is in it."""
        return await self._threads.read(self._store.backup)

    # what people look at (the dashboard) ----------------------------------------------------

    async def overview(self, max_points: int) -> tuple[Snapshot, RewardSeries]:
        """The counts and the rewards of the whole run, read together."""

        def read() -> tuple[Snapshot, RewardSeries]:
            with self._store.snapshot():
                return self._snapshot(), self._store.reward_series(max_points)

        return await self._threads.read(read)

    async def rollout_summaries(self, after: int, limit: int) -> list[RolloutSummary]:
        return await self._threads.read(lambda: self._store.rollout_summaries(after, limit))

    async def recent_rollouts(self, before: int | None, limit: int) -> tuple[list[RolloutSummary], int]:
        """A page of rollouts newest first, and the last sequence number as of that page."""

        def read() -> tuple[list[RolloutSummary], int]:
            with self._store.snapshot():
                return self._store.recent_rollouts(before, limit), self._store.last_seq()

        return await self._threads.read(read)

    async def troubled_tasks(self, limit: int, offset: int) -> list[TaskHistory]:
        return await self._threads.read(lambda: self._store.troubled_tasks(limit, offset))

    async def recent_resources(self, limit: int, offset: int) -> tuple[list[ResourcesUpdate], int]:
        return await self._threads.read(lambda: self._store.recent_resources(limit, offset))

    async def rollout_detail(self, rollout_id: str, max_spans: int) -> RolloutDetail | None:
        return await self._threads.read(lambda: self._store.rollout_detail(rollout_id, max_spans))

    def _latest_id(self) -> str | None:
        return self._latest.resources_id if self._latest else None


def broker_of(request: Request) -> Broker:
    """The broker of the app that is serving `request`."""
    broker: Broker = request.app.state.broker
    return broker
