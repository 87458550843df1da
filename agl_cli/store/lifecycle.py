"""The life cycle of a rollout and its attempts, decided once, as agentlightning 0.3.0's
store decides it (docs/store-api.md).

A legacy task and a store-API rollout are one thing. Its fine-grained status (the store
API's `RolloutStatus`) is kept beside the coarse `TaskStatus` the legacy side and the
CLI speak, and the coarse one is always derived from it by `TASK_STATUS`. Every claim,
by either door, is an attempt. A legacy task carries no `RolloutConfig`; it follows the
daemon's policy (`legacy_config`): handed out again when its claim times out, failed
after `max_attempts` claims if that is set.
"""

from __future__ import annotations

from agl_cli.store.errors import InvalidTransitionError, quoted
from agl_cli.store.records import ReportOutcome
from agl_cli.store_models import AttemptStatus, RolloutConfig, RolloutStatus, WorkerStatus
from agl_cli.task_status import ENDED_WITHOUT_RESULT, TaskStatus

UNLIMITED_ATTEMPTS = 2**31 - 1  # how "no limit" reads where the store API needs a number

TASK_STATUS: dict[RolloutStatus, TaskStatus] = {
    "queuing": TaskStatus.QUEUED,
    "requeuing": TaskStatus.QUEUED,
    "preparing": TaskStatus.CLAIMED,
    "running": TaskStatus.CLAIMED,
    "succeeded": TaskStatus.COMPLETED,
    "failed": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
}
FINISHED: frozenset[RolloutStatus] = frozenset({"succeeded", "failed", "cancelled"})
ATTEMPT_ENDED: frozenset[AttemptStatus] = frozenset({"succeeded", "failed"})  # these set `end_time`
ATTEMPT_ACTIVE: frozenset[AttemptStatus] = frozenset({"preparing", "running"})
# A span (or any sign of life) wakes an attempt from these, and its rollout from those.
WOKEN_BY_HEARTBEAT: frozenset[AttemptStatus] = frozenset({"preparing", "unresponsive"})
ROLLOUT_WOKEN_BY_HEARTBEAT: frozenset[RolloutStatus] = frozenset({"preparing", "requeuing"})


def legacy_config(task_timeout: float, max_claims: int | None) -> RolloutConfig:
    """The config a legacy task behaves by: the daemon's claim timeout and attempt limit."""
    return RolloutConfig(
        timeout_seconds=task_timeout,
        max_attempts=max_claims or UNLIMITED_ATTEMPTS,
        retry_condition=["timeout", "unresponsive"],
    )


# An attempt in these states gives its rollout the same one.
_CARRIED: dict[AttemptStatus, RolloutStatus] = {
    "preparing": "preparing",
    "running": "running",
    "succeeded": "succeeded",
}


def rollout_status_after(status: AttemptStatus, sequence_id: int, config: RolloutConfig) -> RolloutStatus:
    """What the latest attempt's status makes of its rollout: a failure is tried again
    while the config allows it, else the rollout has failed."""
    carried = _CARRIED.get(status)
    if carried is not None:
        return carried
    if status in config.retry_condition and sequence_id < config.max_attempts:
        return "requeuing"
    return "failed"


def attempt_deadline(config: RolloutConfig, start_time: float, last_heartbeat: float | None) -> float | None:
    """When an active attempt stops being healthy, if ever: it ran too long, or it went
    quiet for too long (since its last heartbeat, or its start if it never sent one)."""
    deadlines = []
    if config.timeout_seconds is not None:
        deadlines.append(start_time + config.timeout_seconds)
    if config.unresponsive_seconds is not None:
        deadlines.append((last_heartbeat or start_time) + config.unresponsive_seconds)
    return min(deadlines, default=None)


def verdict(config: RolloutConfig, start_time: float, now: float) -> AttemptStatus:
    """Why an attempt whose deadline has passed is no longer healthy."""
    if config.timeout_seconds is not None and now >= start_time + config.timeout_seconds:
        return "timeout"
    return "unresponsive"


def worker_status_after(status: AttemptStatus) -> WorkerStatus:
    """Where an attempt's status leaves the worker that runs it."""
    if status in ATTEMPT_ENDED:
        return "idle"
    if status in ATTEMPT_ACTIVE:
        return "busy"
    return "unknown"  # timed out or unresponsive: nobody knows what the worker does


def outcome_of_report(status: TaskStatus | None) -> ReportOutcome:
    """The first result for a task wins, whatever state the task was in when it came."""
    if status is None:
        return ReportOutcome.UNSOLICITED
    if status is TaskStatus.COMPLETED:
        return ReportOutcome.DUPLICATE
    return ReportOutcome.STORED


CANCELLABLE = frozenset({TaskStatus.QUEUED, TaskStatus.CLAIMED})
RETRYABLE = ENDED_WITHOUT_RESULT


def check_cancellable(rollout_id: str, status: TaskStatus) -> None:
    if status not in CANCELLABLE:
        raise InvalidTransitionError(f"Task {quoted(rollout_id)} is {status.value} and cannot be cancelled.")


def check_retryable(rollout_id: str, status: TaskStatus) -> None:
    if status not in RETRYABLE:
        raise InvalidTransitionError(
            f"Task {quoted(rollout_id)} is {status.value} and cannot be retried: only failed or cancelled tasks can."
        )
