"""The store interface: what the server needs from any place that keeps agl's state.

The life cycle is decided once, in `lifecycle.py`; each implementation only records the
outcome in its own data structures. What a store hands back is in `records.py`, what it
refuses in `errors.py`.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, ClassVar

import orjson

# Tasks to queue live with the wire types; `NewTask` and `TaskSpec` are re-exported here.
from agl_cli.models import NewTask as NewTask
from agl_cli.models import ResourcesUpdate, Rollout, Task, TaskStatus
from agl_cli.models import TaskSpec as TaskSpec
from agl_cli.store.clock import Clock, SteadyClock
from agl_cli.store.records import (
    Claim,
    Commit,
    QueryPage,
    Report,
    ReportOutcome,
    RewardSeries,
    RolloutDetail,
    RolloutSummary,
    Space,
    SpansAdded,
    StoreCounts,
    StoredRollout,
    TaskHistory,
    TaskRecord,
)
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

# --- the interface ------------------------------------------------------------------------


class Store(abc.ABC):
    """Durable (or not) home of tasks, resources and rollouts.

    Methods are synchronous and touch a bounded number of rows (a store may queue a whole
    staged batch in `commit_batch`, or mark it and move it later in `drain_step`). The
    server calls a store from threads, never from its event loop: its writes from one
    writer thread, grouped by `transaction()` into one commit. A `blocking` store may wait
    on the disk: its reads come from threads of their own, and each commit is synced
    before its writes are answered. Any other store's reads come from the writer thread
    too. `max_claims` bounds attempts per task; `rollout_retention` is how many seconds a
    result is kept after it arrives (None: for good). With `forget_tasks`, what retention
    deletes takes its task along (see `prune_rollouts`, `prune_ended`, and
    `forget_leftovers` for what it left behind before), so that a store that runs for
    weeks stops growing.
    """

    kind: ClassVar[str] = "custom"  # how `agl status` names the store
    blocking: ClassVar[bool] = False

    def __init__(
        self,
        *,
        task_timeout: float = 300.0,
        max_claims: int | None = None,
        rollout_retention: float | None = None,
        forget_tasks: bool = False,
        clock: Clock | None = None,  # a `SteadyClock` of its own if None
    ):
        if not 0 < task_timeout < math.inf:  # not NaN either
            raise ValueError("task_timeout must be a positive, finite number of seconds")
        if max_claims is not None and max_claims < 1:
            raise ValueError("max_claims must be at least 1")
        if rollout_retention is not None and not 0 < rollout_retention < math.inf:
            raise ValueError(
                "rollout_retention must be a positive, finite number of seconds (None: for good)"
            )
        if forget_tasks and rollout_retention is None:
            raise ValueError("forget_tasks needs a rollout_retention")
        self.task_timeout = task_timeout
        self.max_claims = max_claims
        self.rollout_retention = rollout_retention
        self.forget_tasks = forget_tasks
        self.clock: Clock = SteadyClock() if clock is None else clock
        # Claims found run out so far, by any write (a claim looks before the sweep does):
        # a change says that tasks went back to the queue or rollouts ended.
        self.expirations = 0

    def transaction(self, isolate_writes: bool = True, sync: bool = True) -> AbstractContextManager[Commit]:
        """Make every write inside one commit (and one sync, if any write needs one).

        With `isolate_writes`, a failing write inside is undone alone and the others still
        commit; without, it leaves the transaction half-done, and the exception must end it
        (everything inside is undone). Without `sync`, the commit is not synced: the
        `Commit` tells which writes need `sync()` to run before they are durable (the
        writer syncs one group while it commits the next). Stores that have nothing to sync
        need nothing here.
        """
        return contextlib.nullcontext(Commit())

    def snapshot(self) -> AbstractContextManager[None]:
        """Make every read inside see the store as of one moment, even while the writer
        goes on: a read of several parts (counts, a lookup in two places) stays whole."""
        return contextlib.nullcontext()

    def sync(self) -> None:  # noqa: B027 - nothing to do for stores that keep nothing on disk
        """Make every write committed so far durable."""

    def checkpoint(self) -> None:  # noqa: B027 - nothing to do without a log
        """Copy what the write-ahead log holds into the database, so the log can start over.
        Safe to run beside reads and writes; it waits for neither."""

    @abc.abstractmethod
    def space(self) -> Space:
        """How large the store is, and how much room it has left."""

    @abc.abstractmethod
    def backup(self) -> BinaryIO:
        """A copy of the whole store as of one commit, in agl's file format (a daemon can
        be started on it), open for reading from its start; the file has no name left, so
        it goes when it is closed. It is a read: a `blocking` store's writes go on meanwhile."""

    # tasks
    @abc.abstractmethod
    def queue_tasks(self, specs: Sequence[NewTask]) -> list[str]:
        """Queue all of `specs` or none of them; return their rollout ids in order."""

    # batches: a large submission uploaded in parts, then queued all at once or not at all.
    # Staged tasks are invisible until their batch is committed; a commit queues them in
    # staging order with the commit time as their `create_time`, and ends the batch. A
    # batch that is never committed does not outlive the store: reopening drops it, and so
    # does `discard_idle_batches` once nothing has been staged to it for a while.
    @abc.abstractmethod
    def create_batch(self) -> str:
        """Open an empty batch and return its id."""

    @abc.abstractmethod
    def stage_tasks(self, batch_id: str, specs: Sequence[NewTask]) -> list[str]:
        """Add tasks to a batch (all of `specs` or none); return their future rollout ids."""

    @abc.abstractmethod
    def batch_size(self, batch_id: str) -> int:
        """How many tasks the batch holds so far."""

    @abc.abstractmethod
    def commit_batch(self, batch_id: str) -> int:
        """Queue every staged task of the batch in one step; return how many."""

    @abc.abstractmethod
    def discard_batch(self, batch_id: str) -> int:
        """Drop the batch and what it staged; return how many tasks were dropped."""

    @abc.abstractmethod
    def discard_idle_batches(self, idle_seconds: float) -> int:
        """Drop the batches nothing was staged to for `idle_seconds` (their client is gone:
        killed in the middle of an upload); return how many."""

    def drain_step(self) -> bool:
        """Do a bounded part of the work a commit left to do; True if some is left.

        A store may commit a batch by marking it, and move its tasks into place later,
        a step at a time (the server's writer calls this when it has nothing else to do).
        Its tasks are queued from the commit on, whatever is left to do.
        """
        return False

    @abc.abstractmethod
    def claim_next(self) -> Task | None:
        """Return the oldest queued task, now claimed, after putting back expired claims."""

    def claim(self) -> Claim | None:
        """`claim_next`, with the task as the JSON a worker receives (a store that keeps
        tasks as JSON makes it without building a `Task` only to dump it again)."""
        task = self.claim_next()
        if task is None:
            return None
        return Claim(task.rollout_id, task.num_claims or 0, orjson.dumps(task.model_dump(mode="json")))

    def claim_many(self, count: int) -> list[Claim]:
        """Up to `count` claims at once, fewer if the queue runs dry: the claims of one
        group commit. A store may make them together, cheaper than one by one."""
        claims: list[Claim] = []
        while len(claims) < count and (claim := self.claim()) is not None:
            claims.append(claim)
        return claims

    @abc.abstractmethod
    def expire_claims(self) -> int:
        """Requeue (or fail) claims whose deadline has passed; return how many changed."""

    @abc.abstractmethod
    def abandon_claim(self, rollout_id: str, num_claims: int) -> bool:
        """End now, as one that timed out, a claim whose worker hung up as it was made
        (nobody works on it); whether it was still that claim."""

    @abc.abstractmethod
    def next_deadline(self) -> float | None:
        """The earliest claim deadline, so a waiter knows when a task may come back."""

    @abc.abstractmethod
    def get_task(self, rollout_id: str) -> TaskRecord | None: ...

    @abc.abstractmethod
    def list_tasks(
        self,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        max_bytes: int | None = None,
    ) -> list[TaskRecord]:
        """Tasks in queue order; with `max_bytes`, no more once their inputs and metadata
        hold that much (after the first)."""

    def cancel_task(self, rollout_id: str) -> TaskRecord:
        [record] = self.cancel_tasks([rollout_id])
        return record

    @abc.abstractmethod
    def cancel_tasks(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """Cancel every one of them (each once, in the order given) or, if any is unknown
        or has ended, none."""

    @property
    @abc.abstractmethod
    def paused(self) -> bool:
        """Whether the queue is paused: claims and dequeues get nothing (claims still run
        out as usual), until it is resumed. It stays so across a restart."""

    @abc.abstractmethod
    def set_paused(self, paused: bool) -> None:
        """Pause the queue, or resume it."""

    @abc.abstractmethod
    def retry_tasks(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """Queue every one of them again, at the end of the queue (each once, in the order
        given), or, if any is unknown or did not end without a result, none. A task keeps
        its claims and attempts: it gets what its attempt limit leaves, and at least one."""

    @abc.abstractmethod
    def retry_failed(self, after: int, limit: int) -> tuple[int, int]:
        """`retry_tasks` for up to `limit` failed tasks, those after the task `after` (0:
        from the first) in the order they were queued: how many were, and the last one's
        place in that order (`after` once none are left)."""

    @abc.abstractmethod
    def last_queue_place(self) -> int:
        """The last place in the queue given out so far: every task queued (or handed
        back) from now on is queued after it."""

    @abc.abstractmethod
    def cancel_queued(self, last_place: int, limit: int) -> int:
        """Cancel up to `limit` of the tasks queued at places up to `last_place`, from the
        head of the queue (a committed batch's are moved into place first); how many were.
        None left to cancel once it answers 0."""

    # rollouts
    @abc.abstractmethod
    def record_report(self, report: Report) -> ReportOutcome:
        """Keep the first result for a task; count, but do not keep, any later one."""

    def record_reports(self, reports: Sequence[Report]) -> list[ReportOutcome]:
        """The outcome of `record_report` for each report, in order: the reports of one
        group commit. A store may make them together, cheaper than one by one (and keep
        them in another order of arrival: they came in together)."""
        return [self.record_report(report) for report in reports]

    def record_rollout(self, rollout: Rollout, body: bytes | None = None) -> ReportOutcome:
        """`record_report` of a validated rollout; `body` is the JSON it was validated
        from, if the caller has it, kept instead of the model dumped again."""
        return self.record_report(Report.of(rollout, body))

    @abc.abstractmethod
    def rollouts_after(self, seq: int, limit: int = 100, max_bytes: int | None = None) -> list[StoredRollout]:
        """Kept rollouts with a sequence number greater than `seq`, oldest first; with
        `max_bytes`, no more once their bodies hold that much (after the first)."""

    @abc.abstractmethod
    def get_rollout(self, rollout_id: str) -> StoredRollout | None: ...

    @abc.abstractmethod
    def consume_rollout(self, rollout_id: str) -> Rollout | None:
        """Return a rollout not yet consumed and mark it consumed (the Python API's get)."""

    @abc.abstractmethod
    def consume_all(self) -> list[Rollout]: ...

    @abc.abstractmethod
    def last_seq(self) -> int: ...

    @abc.abstractmethod
    def prune_rollouts(self, limit: int) -> int:
        """Delete up to `limit` of the oldest results older than `rollout_retention`, and
        the spans of their rollouts; how many went. Their tasks stay, so a late report for
        one is still known for a duplicate, unless `forget_tasks`: then a completed task
        goes with its result, attempts included, and a late report for it is a new,
        unsolicited result. Sequence numbers and task places are never given out again."""

    @abc.abstractmethod
    def prune_ended(self, limit: int) -> int:
        """Delete the spans of up to `limit` of the rollouts that ended without a result
        (failed, cancelled) longer than `rollout_retention` ago, oldest end first; how many
        such rollouts were seen to. The rollouts and their attempts stay, unless
        `forget_tasks`: then they go too."""

    @abc.abstractmethod
    def forget_leftovers(self, after: int, span: int) -> int:
        """With `forget_tasks`, forget the tasks among ids `after + 1` to `after + span`
        that retention left behind while the store was opened without it; how many."""

    # resources
    @abc.abstractmethod
    def publish_resources(
        self, resources: Mapping[str, Any], resources_id: str | None = None
    ) -> ResourcesUpdate:
        """Publish a bundle as the latest; an existing id gets a new version of it."""

    @abc.abstractmethod
    def get_resources(self, resources_id: str) -> ResourcesUpdate | None: ...

    @abc.abstractmethod
    def latest_resources(self) -> ResourcesUpdate | None: ...

    @abc.abstractmethod
    def list_resources(self, last: int | None = None) -> list[ResourcesUpdate]:
        """Every bundle, or the `last` published, oldest publish first (a bundle published
        again counts from then): a long run publishes one a training step."""

    # the store API (agentlightning 0.3.0's LightningStore): the same tasks seen as
    # rollouts, each claim an attempt; shapes are JSON-ready dicts of `agl_cli.store_models`
    @abc.abstractmethod
    def enqueue_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[dict[str, object]]:
        """Queue all of them or none; they are tasks like any other."""

    @abc.abstractmethod
    def stage_rollouts(
        self, batch_id: str, requests: Sequence[EnqueueRequest], after: float | None
    ) -> list[dict[str, object]]:
        """Stage rollouts in a batch, started after `after`; `commit_batch` queues them."""

    @abc.abstractmethod
    def start_rollout(self, request: StartRolloutBody) -> dict[str, object]: ...

    @abc.abstractmethod
    def dequeue_rollouts(self, limit: int, worker_id: str | None) -> list[dict[str, object]]:
        """Claim up to `limit` tasks for a worker, each as a new attempt."""

    @abc.abstractmethod
    def start_attempt(self, rollout_id: str, worker_id: str | None) -> dict[str, object]: ...

    @abc.abstractmethod
    def update_rollout(self, rollout_id: str, changes: Mapping[str, Any]) -> dict[str, object]: ...

    @abc.abstractmethod
    def update_attempt(
        self, rollout_id: str, attempt_id: str, changes: Mapping[str, Any]
    ) -> dict[str, object]: ...

    @abc.abstractmethod
    def get_rollout_shape(self, rollout_id: str) -> dict[str, object] | None: ...

    @abc.abstractmethod
    def finished_rollouts(self, rollout_ids: Sequence[str]) -> tuple[list[dict[str, object]], int]:
        """The finished ones (in the order asked), and how many known ones are not."""

    @abc.abstractmethod
    def query_rollouts(self, query: RolloutQuery) -> AbstractContextManager[QueryPage]: ...

    @abc.abstractmethod
    def query_attempts(self, rollout_id: str, query: AttemptQuery) -> AbstractContextManager[QueryPage]: ...

    @abc.abstractmethod
    def latest_attempt(self, rollout_id: str) -> dict[str, object] | None: ...

    @abc.abstractmethod
    def next_span_sequence_ids(self, rollout_ids: Sequence[str]) -> list[int]: ...

    @abc.abstractmethod
    def add_spans(self, spans: Sequence[Span], from_otlp: bool = False) -> SpansAdded: ...

    @abc.abstractmethod
    def query_spans(self, query: SpanQuery) -> AbstractContextManager[QueryPage]: ...

    @abc.abstractmethod
    def heartbeat_worker(
        self, worker_id: str, stats: Mapping[str, Any] | None = None
    ) -> dict[str, object]: ...

    @abc.abstractmethod
    def get_worker(self, worker_id: str) -> dict[str, object] | None: ...

    @abc.abstractmethod
    def query_workers(self, query: WorkerQuery) -> AbstractContextManager[QueryPage]: ...

    @abc.abstractmethod
    def query_resources(self, query: ResourcesQuery) -> AbstractContextManager[QueryPage]: ...

    @abc.abstractmethod
    def statistics(self) -> dict[str, object]: ...

    # what people look at: pages newest first, and aggregates kept as rows change, so
    # that each read costs the same with a million tasks as with ten
    @abc.abstractmethod
    def rollout_summaries(self, after: int, limit: int) -> list[RolloutSummary]:
        """Kept rollouts with a sequence number above `after`, oldest first, in one line each."""

    @abc.abstractmethod
    def recent_rollouts(self, before: int | None, limit: int) -> list[RolloutSummary]:
        """Kept rollouts with a sequence number below `before` (None: any), newest first."""

    @abc.abstractmethod
    def reward_series(self, max_points: int) -> RewardSeries:
        """Rewards per mode over the whole run, in at most `max_points` buckets per mode."""

    @abc.abstractmethod
    def thin_rewards(self, limit: int) -> int:
        """Delete up to `limit` sums of rewards that no chart of `CHART_POINTS` buckets can
        read any more, as the run grew longer; how many went."""

    @abc.abstractmethod
    def troubled_tasks(self, limit: int, offset: int) -> list[TaskHistory]:
        """Tasks that failed or were handed out more than once, latest claim first."""

    @abc.abstractmethod
    def recent_resources(self, limit: int, offset: int) -> tuple[list[ResourcesUpdate], int]:
        """Bundles, latest publish first, and how many there are."""

    @abc.abstractmethod
    def rollout_detail(self, rollout_id: str, max_spans: int) -> RolloutDetail | None:
        """All there is about a rollout id, or None if agl knows nothing of it."""

    # the rest
    @abc.abstractmethod
    def counts(self) -> StoreCounts:
        """Tasks per status and the other totals, read from counters, not counted."""

    def keep_clock_apart(self, apart: float) -> None:  # noqa: B027 - only a file has a next start
        """Keep how far the store's clock is behind the wall clock (`SteadyClock.resume`)."""

    def close(self) -> None:  # noqa: B027 - optional for stores that hold nothing open
        """Release what the store holds open."""
