"""The reads open streams share: one under way serves every caller with its key."""

from __future__ import annotations

import asyncio

import pytest

from agl_cli.server.shared_reads import SharedReads


class Reads:
    """A read that counts how often it ran, and finishes when told to."""

    def __init__(self) -> None:
        self.made = 0
        self.go = asyncio.Event()

    async def __call__(self) -> str:
        self.made += 1
        await self.go.wait()
        return f"page {self.made}"


async def test_callers_with_the_same_key_share_one_read_and_other_keys_have_their_own() -> None:
    shared: SharedReads[str] = SharedReads()
    read = Reads()
    callers = [asyncio.ensure_future(shared.get(key, read)) for key in ("a", "a", "a", "b")]
    await asyncio.sleep(0)  # every caller has asked
    read.go.set()
    assert await asyncio.gather(*callers) == ["page 1", "page 1", "page 1", "page 2"]
    assert await shared.get("a", read) == "page 3"  # done, and no `max_age`: read again


async def test_a_caller_that_goes_leaves_the_read_to_the_others() -> None:
    shared: SharedReads[str] = SharedReads()
    read = Reads()
    first, second = (asyncio.ensure_future(shared.get("a", read)) for _ in range(2))
    await asyncio.sleep(0)
    first.cancel()  # its client hung up
    read.go.set()
    assert await second == "page 1"
    assert first.cancelled()


async def test_a_read_that_fails_fails_its_callers_and_is_not_kept() -> None:
    shared: SharedReads[str] = SharedReads(max_age=60)
    made = 0

    async def failing() -> str:
        nonlocal made
        made += 1
        raise OSError("disk gone")

    for _ in range(2):
        with pytest.raises(OSError, match="disk gone"):
            await shared.get("a", failing)
    assert made == 2


async def test_a_read_done_serves_its_key_for_max_age_seconds() -> None:
    shared: SharedReads[str] = SharedReads(max_age=60)
    read = Reads()
    read.go.set()
    assert [await shared.get("a", read) for _ in range(3)] == ["page 1"] * 3
