"""Where agl keeps its state: one interface, a durable SQLite store and an in-memory one."""

from __future__ import annotations

from agl_cli.store.base import NewTask, Store, TaskSpec
from agl_cli.store.errors import (
    InvalidResourcesError,
    InvalidTransitionError,
    StorageError,
    StorageFullError,
    StoreError,
    UnknownAttemptError,
    UnknownBatchError,
    UnknownRolloutError,
    UnknownTaskError,
    quoted,
)
from agl_cli.store.memory import MemoryStore
from agl_cli.store.records import (
    CHART_POINTS,
    Claim,
    QueryPage,
    Report,
    ReportOutcome,
    RewardPoint,
    RewardSeries,
    RolloutDetail,
    RolloutSummary,
    Space,
    SpanSummary,
    StoreCounts,
    StoredRollout,
    TaskHistory,
    TaskRecord,
)
from agl_cli.store.schema import NotAglDatabaseError
from agl_cli.store.sqlite import SQLiteStore

__all__ = [
    "CHART_POINTS",
    "Claim",
    "InvalidResourcesError",
    "InvalidTransitionError",
    "MemoryStore",
    "NewTask",
    "NotAglDatabaseError",
    "QueryPage",
    "Report",
    "ReportOutcome",
    "RewardPoint",
    "RewardSeries",
    "RolloutDetail",
    "RolloutSummary",
    "SQLiteStore",
    "Space",
    "SpanSummary",
    "StorageError",
    "StorageFullError",
    "Store",
    "StoreCounts",
    "StoreError",
    "StoredRollout",
    "TaskHistory",
    "TaskRecord",
    "TaskSpec",
    "UnknownAttemptError",
    "UnknownBatchError",
    "UnknownRolloutError",
    "UnknownTaskError",
    "quoted",
]
