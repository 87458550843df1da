"""Where agl keeps its state: one interface, a durable SQLite store and an in-memory one."""

from __future__ import annotations

from agl_cli.store.base import (
    Claim,
    InvalidTransitionError,
    ReportOutcome,
    StorageError,
    StorageFullError,
    Store,
    StoreCounts,
    StoredRollout,
    StoreError,
    TaskRecord,
    TaskSpec,
    UnknownAttemptError,
    UnknownBatchError,
    UnknownResourcesError,
    UnknownRolloutError,
    UnknownTaskError,
)
from agl_cli.store.memory import MemoryStore
from agl_cli.store.schema import NotAglDatabaseError
from agl_cli.store.sqlite import SQLiteStore

__all__ = [
    "Claim",
    "InvalidTransitionError",
    "MemoryStore",
    "NotAglDatabaseError",
    "ReportOutcome",
    "SQLiteStore",
    "StorageError",
    "StorageFullError",
    "Store",
    "StoreCounts",
    "StoreError",
    "StoredRollout",
    "TaskRecord",
    "TaskSpec",
    "UnknownAttemptError",
    "UnknownBatchError",
    "UnknownResourcesError",
    "UnknownRolloutError",
    "UnknownTaskError",
]
