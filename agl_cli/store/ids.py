"""New ids, in the shapes 0.3.0 makes them and agl's own."""

from __future__ import annotations

import os
import uuid


def new_rollout_ids(count: int) -> list[str]:
    """`count` fresh `rollout-<uuid4>` ids, in ascending order.

    Sorted so that SQLite adds a batch to its index of ids in one sweep instead of at
    random places (a third faster for large batches); built from one `os.urandom` call
    because `uuid.uuid4()` per id costs more than the rest of queueing a task.
    """
    raw = os.urandom(16 * count).hex()
    ids = []
    for start in range(0, 32 * count, 32):
        h = raw[start : start + 32]
        variant = "89ab"[int(h[16], 16) & 3]  # RFC 4122 variant bits 10xx
        ids.append(f"rollout-{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    ids.sort()
    return ids


def new_store_rollout_id() -> str:
    """A rollout id as 0.3.0's store API makes them: `ro-` and 12 hex digits."""
    return f"ro-{os.urandom(6).hex()}"


def new_attempt_id() -> str:
    return f"at-{os.urandom(4).hex()}"


def new_store_resources_id() -> str:
    return f"rs-{os.urandom(6).hex()}"


def new_resources_id() -> str:
    return f"res-{uuid.uuid4()}"


def new_batch_id() -> str:
    return f"batch-{uuid.uuid4()}"
