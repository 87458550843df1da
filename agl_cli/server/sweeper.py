"""What the daemon does every second on its own, through the writer like any write: claims
whose time ran out handed back, results past the retention setting deleted, the store's
clock kept beside the wall clock, and now and then a tidying up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from agl_cli.server.stats import Stats
from agl_cli.server.writer import GroupCommitThreads, failure_logged
from agl_cli.store import Store
from agl_cli.store.clock import CATCH_UP, SteadyClock

log = logging.getLogger("agl.sweeper")

SWEEP_INTERVAL = 1.0
CLOCK_APART_KEPT = 1.0  # a change of the clock's distance from the wall clock worth a write, in seconds
# Every minute, the sums of rewards no chart reads any more are deleted, this many at most
# (a run adds 60 a minute for each mode; a first pass over an older file catches up), and
# so are the uncommitted batches nothing was staged to for an hour: the client that staged
# them is gone (`agl queue` killed), and what they hold fills the disk unseen.
TIDY_EVERY = 60.0
THIN_REWARDS_LIMIT = 10_000
BATCH_IDLE_SECONDS = 3600.0
# Results past the retention setting (then the spans of rollouts that ended without one)
# are deleted this many at a time (a write of about 2 ms with 48 KB rollouts, so claims
# and reports between two are not held up for long), for up to this long a sweep, so
# that expired claims are still looked for every 1.5 s (`bench/retention.py`: 20,000
# went in 2.7 s, claims meanwhile at a p99 of 5 ms).
PRUNE_CHUNK = 100
PRUNE_SECONDS_PER_SWEEP = 0.5
# With --forget-tasks, the tasks retention left behind before (while the daemon did not
# forget) are looked for once a start, among this many ids a write: at most as many
# tasks forgotten in one write as the chunks above delete.
LEFTOVER_SPAN = 100


class Sweeper:
    """The broker's task that sweeps: `claims_ran_out` is told how many claims it handed
    back, so that as many waiting workers are woken."""

    def __init__(
        self, store: Store, threads: GroupCommitThreads, stats: Stats, claims_ran_out: Callable[[int], None]
    ) -> None:
        self._store = store
        self._threads = threads
        self._stats = stats
        self._claims_ran_out = claims_ran_out
        self._task: asyncio.Task[None] | None = None
        self._next_tidying = 0.0  # time.monotonic() of the next `thin_rewards` and `discard_idle_batches`
        self._clock_apart = 0.0  # what the store last kept of it (`_follow_clock`)
        self._leftovers: tuple[int, int] | None = None  # the walk of `forget_leftovers`: next id, end

    async def start(self) -> None:
        if self._store.forget_tasks:
            self._leftovers = (0, await self._threads.write(self._store.last_queue_place))
        clock = self._store.clock
        if isinstance(clock, SteadyClock):  # where the last start left it (`clock.py`)
            self._clock_apart = clock.take_steps().apart
            if abs(self._clock_apart) >= CLOCK_APART_KEPT:
                log.warning(
                    "agl's clock goes on %.1f s %s the wall clock, where it was catching up with a step"
                    " of it before this start (at %d s a minute).",
                    abs(self._clock_apart), "behind" if self._clock_apart > 0 else "ahead of", CATCH_UP * 60,
                )  # fmt: skip
        self._task = asyncio.create_task(self._sweep_forever(), name="agl-sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sweep_forever(self) -> None:
        """Move expired claims on even when no worker asks, so states stay truthful, delete
        the results past the retention setting, and tidy up (see `TIDY_EVERY`)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self._threads.lost is not None:
                continue  # no write can be made (the writer has said why)
            with failure_logged("expiring claims"):  # keep sweeping: the next sweep retries
                if ran_out := await self._threads.write(self._store.expire_claims):
                    self._claims_ran_out(ran_out)
            with failure_logged("keeping the clock's distance from the wall clock"):
                await self._follow_clock()
            if self._store.rollout_retention is not None:
                with failure_logged("deleting old rollouts"):
                    await self._prune()
            if time.monotonic() >= self._next_tidying:
                self._next_tidying = time.monotonic() + TIDY_EVERY
                with failure_logged("thinning the sums of rewards"):
                    await self._threads.write(lambda: self._store.thin_rewards(THIN_REWARDS_LIMIT))
                with failure_logged("discarding batches left idle"):
                    await self._threads.write(lambda: self._store.discard_idle_batches(BATCH_IDLE_SECONDS))

    async def _follow_clock(self) -> None:
        """Keep how far the store's clock is behind a stepped wall clock, for the next start,
        and tell whoever runs the daemon of each step (`clock.py`)."""
        clock = self._store.clock
        if not isinstance(clock, SteadyClock):
            return
        stepped, apart = clock.take_steps()
        if abs(apart - self._clock_apart) >= CLOCK_APART_KEPT:
            await self._threads.write(lambda: self._store.keep_clock_apart(apart))
            self._clock_apart = apart
        if stepped:
            log.warning(
                "The wall clock stepped by %+.1f s. agl's clock, which times claims, goes on by the"
                " time that passes and catches up with it at %d s a minute (%+.1f s to go).",
                stepped, CATCH_UP * 60, apart,
            )  # fmt: skip

    async def _prune(self) -> None:
        """Results first, then the spans of rollouts that ended without one, then the tasks
        retention left behind before this start, a chunk to a write, for as long as the
        sweep may take; each goes on while its last chunk was full."""
        until = time.monotonic() + PRUNE_SECONDS_PER_SWEEP
        for step in (self._prune_results, self._prune_ended, self._forget_leftovers):
            while time.monotonic() < until and await step():
                pass

    async def _prune_results(self) -> bool:
        pruned = await self._threads.write(lambda: self._store.prune_rollouts(PRUNE_CHUNK))
        self._stats.pruned += pruned
        return pruned == PRUNE_CHUNK

    async def _prune_ended(self) -> bool:
        return await self._threads.write(lambda: self._store.prune_ended(PRUNE_CHUNK)) == PRUNE_CHUNK

    async def _forget_leftovers(self) -> bool:
        if self._leftovers is None:
            return False
        after, end = self._leftovers
        await self._threads.write(lambda: self._store.forget_leftovers(after, LEFTOVER_SPAN))
        after += LEFTOVER_SPAN
        self._leftovers = (after, end) if after < end else None
        return self._leftovers is not None
