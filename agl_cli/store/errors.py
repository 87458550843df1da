"""What a store refuses, and why: every message is fit to show a user."""

from __future__ import annotations

# Ids no longer than this are quoted whole in a sentence; a longer one (a URL may carry 64 KB)
# by its start and its length, so that the sentence stays one line a terminal can show.
_QUOTED_WHOLE = 100


def quoted(name: str) -> str:
    """An id as agl's sentences quote it: `'rollout-1'`, or `'rollout-1…' (70,000 characters)`."""
    if len(name) <= _QUOTED_WHOLE:
        return f"'{name}'"
    return f"'{name[: _QUOTED_WHOLE - 20]}…' ({len(name):,} characters)"


class StoreError(Exception):
    """A request the store cannot carry out; the message is fit to show a user."""


class UnknownTaskError(StoreError):
    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"No task with id {quoted(rollout_id)}.")
        self.rollout_id = rollout_id


class UnknownRolloutError(UnknownTaskError):
    """A store-API call named a rollout agl does not have."""

    def __init__(self, rollout_id: str) -> None:
        StoreError.__init__(self, f"No rollout with id {quoted(rollout_id)}.")
        self.rollout_id = rollout_id


class UnknownAttemptError(StoreError):
    def __init__(self, rollout_id: str, attempt_id: str | None) -> None:
        if attempt_id is None:
            super().__init__(f"Rollout {quoted(rollout_id)} has no attempts yet.")
        else:
            super().__init__(f"Rollout {quoted(rollout_id)} has no attempt {quoted(attempt_id)}.")
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id


class UnknownBatchError(StoreError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No batch with id {quoted(batch_id)}.")
        self.batch_id = batch_id


class StorageError(StoreError):
    """The database could not be written (an I/O error, a read-only file): the write that
    met it was undone, nothing of it kept (`undone`, which the message says). `reason` is
    the sentence without that, for where there was no write to undo (at start-up)."""

    def __init__(self, reason: str, undone: bool = True) -> None:
        super().__init__(f"{reason}; nothing was written." if undone else f"{reason}.")
        self.reason = reason


class StorageFullError(StorageError):
    """No room for the write: the disk is full, or the store reached `--max-db-size`."""


class InvalidTransitionError(StoreError):
    """The task is in a state that does not allow the requested change."""


class InvalidResourcesError(StoreError, ValueError):
    """A bundle (or its id) 0.3.0's workers could not read: a `ValueError` too, as 0.3.0's
    `update_resources` raises for one (pydantic's)."""
