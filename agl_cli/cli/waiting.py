"""`agl queue --wait`: follow the rollout stream until every queued task has its rollout.

The stream is read on a thread that feeds a queue, so the main thread stays free to keep
the deadline, draw progress, notice tasks that ended without a rollout (failed after
their last attempt, cancelled, or lost: the daemon no longer has them), and take Ctrl-C.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field

from agl_cli.cli import output
from agl_cli.cli.context import Target
from agl_cli.cli.errors import ExitCode, fail
from agl_cli.client import AglClient, AglClientError, NotFound, RolloutRecord
from agl_cli.task_status import ENDED_WITHOUT_RESULT

# How often to look for tasks that ended without a rollout, and how many at a time.
ENDED_CHECK_INTERVAL = 3.0
ENDED_CHECK_BATCH = 50
_ENDED_WITHOUT_RESULT = {status.value for status in ENDED_WITHOUT_RESULT}  # as the daemon names them
# A task the daemon no longer has (a --memory daemon restarted, --forget-tasks removed it).
LOST = "lost"


@dataclass
class Outcome:
    arrived: dict[str, RolloutRecord] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)  # rollout id -> failed / cancelled / lost
    timed_out: bool = False


def _pump(target: Target, since: int, events: queue.Queue[RolloutRecord | Exception]) -> None:
    """The thread: every rollout after `since` into `events`, or the error that stopped it."""
    try:
        with AglClient(target.url, target.token) as client:
            for record in client.watch_rollouts(
                since,
                relocate=target.relocate,
                on_disconnect=lambda error: output.note(f"{error} Waiting for it to come back…"),
                on_reconnect=lambda _: output.note("The daemon is back; following the rollouts again."),
            ):
                events.put(record)
    except Exception as exc:
        events.put(exc)


def wait_for_rollouts(
    client: AglClient,
    target: Target,
    expected: dict[str, str | None],
    since: int,
    timeout: float | None,
    show_progress: bool,
) -> Outcome:
    """Wait until each of `expected` (rollout id -> mode) has a rollout or has ended."""
    events: queue.Queue[RolloutRecord | Exception] = queue.Queue()
    threading.Thread(target=_pump, args=(target, since, events), daemon=True, name="agl-watch").start()
    outcome = Outcome()
    pending = dict.fromkeys(expected)  # ordered: the oldest tasks are checked first
    deadline = None if timeout is None else time.monotonic() + timeout
    next_check = time.monotonic() + ENDED_CHECK_INTERVAL
    with output.progress_bar(show_progress, "Waiting for rollouts", len(expected)) as update:
        while pending:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                outcome.timed_out = True
                break
            try:
                item = events.get(timeout=wait)
            except queue.Empty:
                if time.monotonic() >= next_check:
                    client.move_to(target.relocate())  # as the stream follows a restart
                    _check_ended(client, pending, outcome)
                    update(len(expected) - len(pending))
                    next_check = time.monotonic() + ENDED_CHECK_INTERVAL
                continue
            if isinstance(item, Exception):
                raise item
            rollout_id = item.get("rollout_id", "")
            if rollout_id in pending:
                del pending[rollout_id]
                outcome.arrived[rollout_id] = item
                update(len(expected) - len(pending))
                next_check = time.monotonic() + ENDED_CHECK_INTERVAL
    return outcome


def _check_ended(client: AglClient, pending: dict[str, None], outcome: Outcome) -> None:
    """Drop the oldest pending tasks that failed, were cancelled or are lost: no rollout will come."""
    for rollout_id in list(pending)[:ENDED_CHECK_BATCH]:
        with contextlib.suppress(AglClientError):  # unreachable for now: the next check will tell
            try:
                status: str = client.get_task(rollout_id)["status"]
            except NotFound:
                status = LOST
            if status in _ENDED_WITHOUT_RESULT or status == LOST:
                outcome.ended[rollout_id] = status
                del pending[rollout_id]


def report(
    expected: dict[str, str | None], outcome: Outcome, json_output: bool, timeout: float | None
) -> None:
    """The rollouts in queue order, then a summary; exit 5 on a timeout, 1 if tasks ended.
    With `json_output`, a lost task is a line `{"rollout_id": ..., "status": "lost"}` where
    its rollout would have been: its id is nowhere else to be found."""
    from agl_cli.cli.rollouts import print_rollout

    rewards: dict[str, list[float]] = {}
    for rollout_id, mode in expected.items():
        record = outcome.arrived.get(rollout_id)
        if record is None:
            if json_output and outcome.ended.get(rollout_id) == LOST:
                output.print_json_line({"rollout_id": rollout_id, "status": LOST})
            continue
        print_rollout(record, json_output, mode=mode)
        value = record.get("final_reward")
        if isinstance(value, (int, float)):
            rewards.setdefault(mode or "no mode", []).append(float(value))
    summary = _summary(len(outcome.arrived), len(expected), rewards)
    if json_output:
        output.note(summary)
    else:
        output.write_line(summary)
    if outcome.timed_out:
        fail(
            f"{len(outcome.arrived)} of {len(expected)} rollouts arrived before the timeout of {timeout:g} s.",
            ExitCode.TIMEOUT,
        )
    if outcome.ended:
        fail(ended_sentence(outcome.ended))


def ended_sentence(ended: dict[str, str]) -> str:
    """`3 tasks ended without a rollout (1 cancelled and 2 lost: the daemon no longer has
    them); agl tasks retry queues the others again.`: retry cannot bring back the lost."""
    counts: dict[str, int] = {}
    for status in ended.values():
        counts[status] = counts.get(status, 0) + 1
    what = " and ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lost = counts.get(LOST, 0)
    if lost:
        what += f": the daemon no longer has {'it' if lost == 1 else 'them'}"
    sentence = f"{len(ended)} {'task' if len(ended) == 1 else 'tasks'} ended without a rollout ({what})"
    retried = len(ended) - lost
    if not retried:
        return f"{sentence}."
    if lost:
        return f"{sentence}; agl tasks retry queues the other{'' if retried == 1 else 's'} again."
    return f"{sentence}; agl tasks retry queues {'it' if retried == 1 else 'them'} again."


def _summary(arrived: int, total: int, rewards: dict[str, list[float]]) -> str:
    means = ", ".join(
        f"{mode} {output.reward(sum(values) / len(values))} (n={len(values)})"
        for mode, values in sorted(rewards.items())
    )
    return f"{arrived} of {total} rollouts; mean reward: {means or 'none reported'}."
