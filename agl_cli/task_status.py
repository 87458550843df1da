"""The states of a task, apart from the pydantic models so the CLI can name them cheaply."""

from __future__ import annotations

import enum


class TaskStatus(str, enum.Enum):
    """Where a task is in its life: queued → claimed → completed, or failed / cancelled."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Ended with no result: none comes but a late report (`agl tasks retry` queues them again).
ENDED_WITHOUT_RESULT = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})
