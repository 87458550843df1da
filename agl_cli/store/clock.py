"""The clock a store reads: the wall clock, but never a step of it.

What a store decides by time (a claim's time-out, an attempt's, a heartbeat's age,
retention) rests on the times it records. Read straight from the wall clock, a step of it
while the daemon runs (NTP correcting a bad source, `date -s`, a VM's clock set after a
pause) would time out every claimed task at once, or hold a dead worker's claim for as
long as a step back. `SteadyClock` goes on by the time that passes instead, and catches
up with a stepped wall clock gradually (`CATCH_UP`), the way NTP slews: time-outs then
run a little fast or slow for a while, and the times recorded come back to the wall
clock's. A store keeps how far behind the wall clock it is (`keep_clock_apart`), so that
its next start goes on from there (`resume`) instead of stepping.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

Clock = Callable[[], float]  # epoch seconds

# The time that has passed, whatever the wall clock does: on Linux counting a suspend too,
# as the wall clock does; elsewhere the monotonic clock.
elapsed: Clock = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else time.monotonic
)
# How fast the clock closes a gap with the wall clock, as a share of the time that passes:
# 6 s a minute, an hour's step in ten hours.
CATCH_UP = 0.1
STEP = 1.0  # a jump of the wall clock against the time passed that counts as a step, in seconds


class Steps(NamedTuple):
    """Of the wall clock, in seconds, positive when it is ahead."""

    stepped: float  # since the steps were last taken
    apart: float  # from the store's clock now


class SteadyClock:
    """Epoch seconds that never jump: the time passed, plus an offset that follows the
    wall clock's at most `CATCH_UP` seconds per second (so it never goes back either)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # read by the event loop, the writer and the readers
        self._read = elapsed()
        self._offset = self._wall_offset = time.time() - self._read
        self._stepped = 0.0  # steps of the wall clock since `take_steps`

    def __call__(self) -> float:
        with self._lock:
            now = elapsed()
            wall_offset = time.time() - now
            if abs(wall_offset - self._wall_offset) >= STEP:
                self._stepped += wall_offset - self._wall_offset
            self._wall_offset = wall_offset
            most = (now - self._read) * CATCH_UP
            self._offset += min(max(wall_offset - self._offset, -most), most)
            self._read = now
            return self._offset + now

    def resume(self, apart: float) -> None:
        """Go on `apart` seconds behind the wall clock (ahead if negative), where an earlier
        process of the same store was in catching up: else a restart would step the times
        recorded, and every deadline kept since the wall clock stepped would move by what
        was left of the step."""
        with self._lock:
            self._read = elapsed()
            self._wall_offset = time.time() - self._read
            self._offset = self._wall_offset - apart

    def take_steps(self) -> Steps:
        """How far the wall clock stepped since the last call, and how far it is now from
        this clock."""
        now = self()
        with self._lock:
            stepped, self._stepped = self._stepped, 0.0
        return Steps(stepped, time.time() - now)
