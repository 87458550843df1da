"""Counting what a store is asked: how the tests tell a read or a write shared, or not made."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any


def count_calls(target: object, *names: str) -> Counter[str]:
    """Count the calls of each method `names` of `target` from now on, by name."""
    counts: Counter[str] = Counter()
    for name in names:
        method = getattr(target, name)

        def counted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(target, name, counted)
    return counts


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for `condition`, looked at every 10 ms, failing with `what` after `timeout` s."""
    give_up = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < give_up, f"{what} did not happen"
        await asyncio.sleep(0.01)


async def still_after(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition` still holds `seconds` later (looked at every 10 ms)."""
    give_up = asyncio.get_running_loop().time() + seconds
    while condition() and asyncio.get_running_loop().time() < give_up:
        await asyncio.sleep(0.01)
    return condition()
