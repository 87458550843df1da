"""The store plus the wake-ups that long polls and rollout watchers wait on.

Every route and the embedded Python API go through one `Broker`, so a task queued by
any of them wakes a worker that is long-polling, and a rollout stored by a worker wakes
whoever waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from agl_cli.models import ResourcesUpdate, Rollout, Task
from agl_cli.server.rates import RateWindow
from agl_cli.store import ReportOutcome, Store, TaskSpec

log = logging.getLogger("agl.broker")

SWEEP_INTERVAL = 1.0


class Signal:
    """A broadcast wake-up: every waiter present at `notify()` returns from `wait()`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True if notified."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


@dataclass
class Stats:
    """Counts since start-up, for status and metrics."""

    started: float = field(default_factory=time.time)
    claims: int = 0
    reclaims: int = 0
    reports: dict[ReportOutcome, int] = field(default_factory=lambda: dict.fromkeys(ReportOutcome, 0))
    claim_rate: RateWindow = field(default_factory=RateWindow)
    rollout_rate: RateWindow = field(default_factory=RateWindow)


class Broker:
    """The one way into the store for the server's routes and the embedded API."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = Stats()
        self._tasks_changed = Signal()
        self._rollouts_changed = Signal()
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False

    # life --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="agl-sweeper")

    def begin_shutdown(self) -> None:
        """Answer every long poll now, so that shutdown does not wait out their timeouts."""
        self.closing = True
        self._tasks_changed.notify()
        self._rollouts_changed.notify()

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.begin_shutdown()

    async def _sweep_forever(self) -> None:
        """Move expired claims on even when no worker asks, so states stay truthful."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                if self.store.expire_claims():
                    self._tasks_changed.notify()
            except Exception:  # keep sweeping; the error is logged, the next sweep retries
                log.exception("expiring claims failed")

    # tasks -------------------------------------------------------------------------------

    def queue_tasks(self, specs: Sequence[TaskSpec]) -> list[str]:
        ids = self.store.queue_tasks(specs)
        if ids:
            self._tasks_changed.notify()
        return ids

    def commit_batch(self, batch_id: str) -> int:
        """Queue a staged batch at once, and wake the workers waiting for tasks."""
        queued = self.store.commit_batch(batch_id)
        if queued:
            self._tasks_changed.notify()
        return queued

    async def claim(self, wait: float = 0.0) -> Task | None:
        """Hand out the next task, waiting up to `wait` seconds for one to appear."""
        deadline = time.monotonic() + wait
        while True:
            task = self.store.claim_next()
            if task is not None:
                self.stats.claims += 1
                self.stats.claim_rate.add()
                if (task.num_claims or 0) > 1:
                    self.stats.reclaims += 1
                return task
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closing:
                return None
            next_expiry = self.store.next_deadline()
            if next_expiry is not None:
                remaining = min(remaining, max(next_expiry - self.store.clock(), 0.0) + 0.001)
            await self._tasks_changed.wait(remaining)

    # rollouts ----------------------------------------------------------------------------

    def report(self, rollout: Rollout) -> ReportOutcome:
        outcome = self.store.record_rollout(rollout)
        self.stats.reports[outcome] += 1
        if outcome is not ReportOutcome.DUPLICATE:
            self.stats.rollout_rate.add()
            self._rollouts_changed.notify()
        return outcome

    async def wait_for_rollouts(self, timeout: float) -> bool:
        """Wait until a rollout is stored or `timeout` passes; True if one was."""
        return await self._rollouts_changed.wait(timeout)

    # resources ---------------------------------------------------------------------------

    def publish(self, resources: Mapping[str, Any], resources_id: str | None = None) -> ResourcesUpdate:
        return self.store.publish_resources(resources, resources_id)


def broker_of(request: Request) -> Broker:
    """The broker of the app that is serving `request`."""
    broker: Broker = request.app.state.broker
    return broker
