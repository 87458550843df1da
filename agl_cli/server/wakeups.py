"""The wake-ups the broker hands out: what long polls, store-API waits and streams sleep
on, so that a change wakes whoever waits for it, and nobody polls.

- `Signal`: a broadcast, for whoever follows every change (streams, the dashboard);
- `Handout`: claimers in line, one woken per task that appeared;
- `RolloutWaits`: waits keyed by the rollouts they wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable


class Signal:
    """A broadcast wake-up: `notify()` sets the event that `watch()` handed out, and every
    waiter on it returns. Watch before reading what you wait on, so that a change made
    between the read and the wait is not missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._watched = False  # nobody holds the current event: a notify has nothing to do

    def watch(self) -> asyncio.Event:
        self._watched = True
        return self._event

    def notify(self) -> None:
        if self._watched:
            self._event.set()
            self._event = asyncio.Event()
            self._watched = False


class StoppingError(Exception):
    """A wait the daemon's stop cut short: the waiter must ask again once it is back."""


class Handout:
    """Claimers waiting for a task, each with an event of its own, woken first come first
    served, as many as tasks appeared: a task queued wakes one of a thousand long polls,
    not all of them (each one woken makes a claim, and all but one would find nothing).

    A waiter woken that leaves without claiming hands its wake-up on (`leave`), so that
    no task sits queued while others wait for it."""

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Event, None] = {}  # in the order they came

    def watch(self) -> asyncio.Event:
        """A place in the line; `drop` or `leave` it once done with it."""
        turn = asyncio.Event()
        self._waiting[turn] = None
        return turn

    def wake(self, count: int | None = None) -> None:
        """Wake the first `count` waiters (None: all of them)."""
        while self._waiting and (count is None or count > 0):
            turn = next(iter(self._waiting))
            del self._waiting[turn]
            turn.set()
            if count is not None:
                count -= 1

    def drop(self, turn: asyncio.Event) -> None:
        """Out of the line: its wake-up, if it had one, is about to be used by a claim."""
        self._waiting.pop(turn, None)

    def leave(self, turn: asyncio.Event) -> None:
        """Out of the line for good: a wake-up it got goes on to the next waiter."""
        self.drop(turn)
        if turn.is_set():
            self.wake(1)


class RolloutWaits:
    """Waits for rollouts to end, each woken by a change to one of its own rollouts, not
    to any: a result stored wakes the waits for it, not a hundred others (each woken one
    reads its rollouts again). A change whose rollouts are not known wakes them all."""

    def __init__(self) -> None:
        self._by_rollout: dict[str, set[asyncio.Event]] = {}

    def watch(self, rollout_ids: Collection[str]) -> asyncio.Event:
        """The event a change to one of `rollout_ids` sets; `drop` it once done with it."""
        event = asyncio.Event()
        for rollout_id in rollout_ids:
            self._by_rollout.setdefault(rollout_id, set()).add(event)
        return event

    def drop(self, event: asyncio.Event, rollout_ids: Collection[str]) -> None:
        for rollout_id in rollout_ids:
            waits = self._by_rollout.get(rollout_id)
            if waits is not None:
                waits.discard(event)
                if not waits:
                    del self._by_rollout[rollout_id]

    def wake(self, rollout_ids: Iterable[str] | None = None) -> None:
        """Wake the waits for `rollout_ids` (None: every one)."""
        if not self._by_rollout:
            return
        if rollout_ids is None:
            waits = [event for events in self._by_rollout.values() for event in events]
        else:
            waits = [event for rollout_id in rollout_ids for event in self._by_rollout.get(rollout_id, ())]
        for event in waits:
            event.set()


async def wait_for(event: asyncio.Event, timeout: float, unless: asyncio.Event | None = None) -> bool:
    """Wait up to `timeout` seconds for `event`, or until `unless` is set; True if `event` was."""
    if unless is None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(unless.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    return event.is_set()
