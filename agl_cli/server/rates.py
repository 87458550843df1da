"""Events per second over a sliding window, counted in O(1) per event."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateWindow:
    """One counter per second of the last `span` seconds, in a ring.

    Adding an event touches one slot, so the hot paths that count (claims, rollouts) pay
    next to nothing; reading the rate sums the ring.
    """

    def __init__(self, span: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.span = span
        self._clock = clock
        self._started = clock()
        self._seconds = [-1] * span
        self._counts = [0] * span

    def add(self, count: int = 1) -> None:
        second = int(self._clock())
        slot = second % self.span
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = 0
        self._counts[slot] += count

    def per_second(self) -> float:
        """The mean rate over `seconds()`."""
        now = self._clock()
        second = int(now)
        total = sum(
            count
            for seen, count in zip(self._seconds, self._counts, strict=True)
            if second - self.span < seen <= second
        )
        return total / self.seconds(now)

    def seconds(self, now: float | None = None) -> float:
        """What the rate is a mean over: the window, or the time since start if that is
        shorter (at least a second)."""
        elapsed = (self._clock() if now is None else now) - self._started
        return min(float(self.span), max(elapsed, 1.0))
