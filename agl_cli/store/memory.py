"""An in-memory store for tests and throwaway runs: same behaviour, nothing kept."""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from agl_cli.models import ResourcesUpdate, Rollout, Task, TaskStatus
from agl_cli.store.base import (
    ReportOutcome,
    Store,
    StoreCounts,
    StoredRollout,
    TaskRecord,
    TaskSpec,
    UnknownBatchError,
    UnknownTaskError,
    check_cancellable,
    check_resources_id,
    new_batch_id,
    new_resources_id,
    new_rollout_ids,
    new_task,
    outcome_of_report,
    status_after_timeout,
    validate_resources,
)


@dataclass
class _Entry:
    task: Task
    status: TaskStatus
    deadline: float | None = None
    completed_time: float | None = None
    duplicates: int = 0

    def record(self) -> TaskRecord:
        return TaskRecord(self.task, self.status, self.deadline, self.completed_time, self.duplicates)


class MemoryStore(Store):
    """Dicts, a FIFO of queued ids and a heap of claim deadlines (stale entries skipped)."""

    kind = "memory"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.RLock()
        self._tasks: dict[str, _Entry] = {}
        self._queue: OrderedDict[str, None] = OrderedDict()
        self._deadlines: list[tuple[float, str, int]] = []  # (deadline, id, num_claims)
        self._rollouts: list[StoredRollout] = []
        self._rollout_index: dict[str, int] = {}
        self._unconsumed: OrderedDict[str, None] = OrderedDict()
        self._resources: dict[str, ResourcesUpdate] = {}
        self._latest: str | None = None
        self._duplicates = 0
        self._batches: dict[str, list[_Entry]] = {}

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._lock:
            yield

    # tasks -------------------------------------------------------------------------------

    def queue_tasks(self, specs: Sequence[TaskSpec]) -> list[str]:
        now = self.clock()
        ids = new_rollout_ids(len(specs))
        entries = [
            _Entry(new_task(i, spec, now), TaskStatus.QUEUED) for i, spec in zip(ids, specs, strict=True)
        ]
        with self._lock:
            self._enqueue(entries)
        return [entry.task.rollout_id for entry in entries]

    def _enqueue(self, entries: Sequence[_Entry]) -> None:
        for entry in entries:
            self._tasks[entry.task.rollout_id] = entry
            self._queue[entry.task.rollout_id] = None

    # batches -----------------------------------------------------------------------------

    def create_batch(self) -> str:
        batch_id = new_batch_id()
        with self._lock:
            self._batches[batch_id] = []
        return batch_id

    def stage_tasks(self, batch_id: str, specs: Sequence[TaskSpec]) -> list[str]:
        ids = new_rollout_ids(len(specs))
        entries = [
            _Entry(new_task(i, spec, None), TaskStatus.QUEUED) for i, spec in zip(ids, specs, strict=True)
        ]
        with self._lock:
            self._staged(batch_id).extend(entries)
        return [entry.task.rollout_id for entry in entries]

    def batch_size(self, batch_id: str) -> int:
        with self._lock:
            return len(self._staged(batch_id))

    def commit_batch(self, batch_id: str) -> int:
        with self._lock:
            entries = self._staged(batch_id)
            now = self.clock()
            for entry in entries:
                entry.task.create_time = now  # staged tasks are private: no copy needed
            self._enqueue(entries)
            del self._batches[batch_id]
            return len(entries)

    def discard_batch(self, batch_id: str) -> int:
        with self._lock:
            entries = self._staged(batch_id)
            del self._batches[batch_id]
            return len(entries)

    def _staged(self, batch_id: str) -> list[_Entry]:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise UnknownBatchError(batch_id) from None

    # claims ------------------------------------------------------------------------------

    def claim_next(self) -> Task | None:
        with self._lock:
            self.expire_claims()
            if not self._queue:
                return None
            rollout_id, _ = self._queue.popitem(last=False)
            entry = self._tasks[rollout_id]
            now = self.clock()
            entry.task = entry.task.model_copy(
                update={"num_claims": (entry.task.num_claims or 0) + 1, "last_claim_time": now}
            )
            entry.status = TaskStatus.CLAIMED
            entry.deadline = now + self.task_timeout
            heapq.heappush(self._deadlines, (entry.deadline, rollout_id, entry.task.num_claims or 0))
            return entry.task

    def expire_claims(self) -> int:
        now = self.clock()
        changed = 0
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, rollout_id, num_claims = heapq.heappop(self._deadlines)
                entry = self._tasks[rollout_id]
                if entry.status is not TaskStatus.CLAIMED or entry.task.num_claims != num_claims:
                    continue  # reported or cancelled since: a stale heap entry
                entry.status = status_after_timeout(num_claims, self.max_claims)
                entry.deadline = None
                if entry.status is TaskStatus.QUEUED:
                    self._queue[rollout_id] = None
                changed += 1
        return changed

    def next_deadline(self) -> float | None:
        with self._lock:
            while self._deadlines:
                deadline, rollout_id, num_claims = self._deadlines[0]
                entry = self._tasks[rollout_id]
                if entry.status is TaskStatus.CLAIMED and entry.task.num_claims == num_claims:
                    return deadline
                heapq.heappop(self._deadlines)
            return None

    def get_task(self, rollout_id: str) -> TaskRecord | None:
        with self._lock:
            entry = self._tasks.get(rollout_id)
            return entry.record() if entry else None

    def list_tasks(
        self, status: TaskStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[TaskRecord]:
        with self._lock:
            matching = (e for e in self._tasks.values() if status is None or e.status is status)
            out: list[TaskRecord] = []
            for index, entry in enumerate(matching):
                if index >= offset + limit:
                    break
                if index >= offset:
                    out.append(entry.record())
            return out

    def cancel_task(self, rollout_id: str) -> TaskRecord:
        with self._lock:
            entry = self._tasks.get(rollout_id)
            if entry is None:
                raise UnknownTaskError(rollout_id)
            check_cancellable(rollout_id, entry.status)
            self._queue.pop(rollout_id, None)
            entry.status, entry.deadline = TaskStatus.CANCELLED, None
            return entry.record()

    # rollouts ----------------------------------------------------------------------------

    def record_rollout(self, rollout: Rollout, body: bytes | None = None) -> ReportOutcome:
        with self._lock:
            entry = self._tasks.get(rollout.rollout_id)
            outcome = outcome_of_report(entry.status if entry else None)
            if outcome is ReportOutcome.UNSOLICITED and rollout.rollout_id in self._rollout_index:
                outcome = ReportOutcome.DUPLICATE
            if outcome is ReportOutcome.DUPLICATE:
                self._duplicates += 1
                if entry:
                    entry.duplicates += 1
                return outcome
            now = self.clock()
            if entry:
                self._queue.pop(rollout.rollout_id, None)
                entry.status, entry.deadline, entry.completed_time = TaskStatus.COMPLETED, None, now
            stored = StoredRollout(
                seq=len(self._rollouts) + 1,
                rollout=rollout,
                received_time=now,
                attempt=entry.task.num_claims if entry else None,
                unsolicited=outcome is ReportOutcome.UNSOLICITED,
            )
            self._rollout_index[rollout.rollout_id] = len(self._rollouts)
            self._rollouts.append(stored)
            self._unconsumed[rollout.rollout_id] = None
            return outcome

    def rollouts_after(self, seq: int, limit: int = 100) -> list[StoredRollout]:
        with self._lock:
            return self._rollouts[max(seq, 0) : max(seq, 0) + limit]

    def get_rollout(self, rollout_id: str) -> StoredRollout | None:
        with self._lock:
            index = self._rollout_index.get(rollout_id)
            return None if index is None else self._rollouts[index]

    def consume_rollout(self, rollout_id: str) -> Rollout | None:
        with self._lock:
            if rollout_id not in self._unconsumed:
                return None
            del self._unconsumed[rollout_id]
            return self._mark_consumed(rollout_id)

    def consume_all(self) -> list[Rollout]:
        with self._lock:
            ids = list(self._unconsumed)
            self._unconsumed.clear()
            return [self._mark_consumed(rollout_id) for rollout_id in ids]

    def _mark_consumed(self, rollout_id: str) -> Rollout:
        index = self._rollout_index[rollout_id]
        self._rollouts[index] = replace(self._rollouts[index], consumed=True)
        return self._rollouts[index].rollout

    def last_seq(self) -> int:
        with self._lock:
            return len(self._rollouts)

    # resources ---------------------------------------------------------------------------

    def publish_resources(
        self, resources: Mapping[str, Any], resources_id: str | None = None
    ) -> ResourcesUpdate:
        checked = validate_resources(resources)
        if resources_id is not None:
            check_resources_id(resources_id)
        now = self.clock()
        with self._lock:
            previous = self._resources.get(resources_id) if resources_id else None
            update = ResourcesUpdate(
                resources_id=resources_id or new_resources_id(),
                create_time=previous.create_time if previous else now,
                update_time=now,
                version=previous.version + 1 if previous else 1,
                resources=checked,
            )
            self._resources.pop(update.resources_id, None)  # keep dict order = publish order
            self._resources[update.resources_id] = update
            self._latest = update.resources_id
            return update

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        with self._lock:
            return self._resources.get(resources_id)

    def latest_resources(self) -> ResourcesUpdate | None:
        with self._lock:
            return self._resources[self._latest] if self._latest else None

    def list_resources(self) -> list[ResourcesUpdate]:
        with self._lock:
            return list(self._resources.values())

    def counts(self) -> StoreCounts:
        with self._lock:
            counts = StoreCounts(
                rollouts=len(self._rollouts),
                unsolicited=sum(1 for r in self._rollouts if r.unsolicited),
                duplicates=self._duplicates,
                resources=len(self._resources),
            )
            for entry in self._tasks.values():
                counts.tasks[entry.status] += 1
            return counts
