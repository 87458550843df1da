"""`agl tasks`: list, inspect, cancel and retry tasks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import typer
from rich.text import Text

from agl_cli.api_limits import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_PER_REQUEST, MAX_SEQ
from agl_cli.cli import output
from agl_cli.cli.context import connect
from agl_cli.cli.errors import ExitCode, fail, said_of_a_change
from agl_cli.task_status import TaskStatus

if TYPE_CHECKING:
    from agl_cli.client import AglClient, Attempt, TaskRecord

SHOWN_ATTEMPTS = 20  # `agl tasks show` lists a task's latest attempts, at most this many

app = typer.Typer(
    help="Tasks: list them, show one, cancel or retry them.", no_args_is_help=True, add_completion=False
)


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    status: TaskStatus | None = typer.Option(None, "--status", help="Only tasks in this state."),
    limit: int = typer.Option(
        DEFAULT_LIST_LIMIT, "--limit", min=1, max=MAX_LIST_LIMIT, metavar="N", help="At most N tasks."
    ),
    offset: int = typer.Option(0, "--offset", min=0, max=MAX_SEQ, metavar="M", help="Skip the first M."),
    json_output: bool = typer.Option(False, "--json", help="Machine output: a JSON array."),
) -> None:
    """List tasks in the order they were queued."""
    with connect(ctx) as client:
        tasks, total = client.tasks_and_total(status.value if status else None, limit, offset)
    if json_output:
        output.print_json(tasks)
        return
    grid = output.table(
        "rollout", "status", "mode", "claims", "created", "input",
        drop=("input", "created", "claims", "mode", "status"), shrink="input",
    )  # fmt: skip
    for task in tasks:
        grid.add_row(
            task["rollout_id"],
            task["status"],
            task.get("mode") or "-",
            str(task.get("num_claims") or 0),
            output.ago(task.get("create_time")),
            output.brief(task.get("input")),
        )
    output.out().print(grid)
    shown_to = offset + len(tasks)
    if tasks and total is not None and shown_to < total:
        which = f"{status.value} tasks" if status else "tasks"
        output.aside(
            f"{which.capitalize()} {offset + 1:,} to {shown_to:,} of {total:,} shown;"
            f" --offset {shown_to} shows the next."
        )


@app.command()
def show(
    ctx: typer.Context,
    rollout_id: str = typer.Argument(..., metavar="ID", help="The task's rollout id.", show_default=False),
    json_output: bool = typer.Option(
        False, "--json", help="Machine output: the task as JSON, its latest attempts under `attempts`."
    ),
) -> None:
    """Show one task and where it is in its life, with its latest attempts."""
    with connect(ctx) as client:
        task = client.get_task(rollout_id)
        attempts, total = client.attempts(rollout_id, SHOWN_ATTEMPTS)
    if json_output:
        output.print_json({**task, "attempts": attempts})
        return
    output.show_record(task)
    if attempts:
        _show_attempts(attempts, total)


def _show_attempts(attempts: list[Attempt], total: int) -> None:
    grid = output.table(
        "#", "attempt", "status", "worker", "started", "took", drop=("started", "worker", "took", "status")
    )
    for attempt in attempts:
        end = attempt["end_time"]
        grid.add_row(
            str(attempt["sequence_id"]),
            attempt["attempt_id"],
            attempt["status"],
            attempt["worker_id"] or "-",
            output.timestamp(attempt["start_time"]),
            "-" if end is None else output.duration(end - attempt["start_time"]),
        )
    shown = "" if total == len(attempts) else f" (the last {len(attempts)} of {total})"
    output.out().print(Text(f"\nattempts{shown}", style="bold"))
    output.out().print(grid)


class _Change(NamedTuple):
    """What `agl tasks cancel` and `agl tasks retry` do, named tasks or every one of a kind."""

    verb: str
    done: str  # the verb as it reads once done: what is printed, and the key of the count
    flag: str  # the option that takes every task of `kind`
    kind: str
    of_ids: Callable[[AglClient, list[str]], list[TaskRecord]]
    of_every: Callable[[AglClient], int]


def _change(
    ctx: typer.Context, change: _Change, rollout_ids: list[str], every: bool, json_output: bool
) -> None:
    if every and rollout_ids:
        fail(f"Name the tasks to {change.verb} or give {change.flag}, not both.", ExitCode.USAGE)
    if not every and not rollout_ids:
        fail(f"Name the tasks to {change.verb}, or give {change.flag}.", ExitCode.USAGE)
    if len(rollout_ids or ()) > MAX_PER_REQUEST:
        fail(
            f"Name at most {MAX_PER_REQUEST:,} tasks at once (not {len(rollout_ids):,}): they are"
            f" {change.done.lower()} all together or not at all.",
            ExitCode.USAGE,
        )
    if every:
        with connect(ctx) as client:
            count = change.of_every(client)
        with said_of_a_change(output.were(count, f"{change.kind} task", change.done.lower())):
            if json_output:
                output.print_json({change.done.lower(): count})
            else:
                output.write_line(f"{change.done} {count} {change.kind} task{'' if count == 1 else 's'}.")
        return
    with connect(ctx) as client:
        tasks = change.of_ids(client, rollout_ids)
    with said_of_a_change(output.were(len(tasks), "task", change.done.lower(), the=True)):
        if json_output:
            output.print_json_lines(tasks)
        else:
            for task in tasks:
                output.write_line(f"{change.done} {task['rollout_id']}.")


_IDS_HELP = "The tasks' rollout ids."
_CANCEL = _Change(
    "cancel", "Cancelled", "--queued", "queued",
    lambda client, ids: client.cancel_tasks(ids), lambda client: client.cancel_queued(),
)  # fmt: skip
_RETRY = _Change(
    "retry", "Retried", "--failed", "failed",
    lambda client, ids: client.retry_tasks(ids), lambda client: client.retry_failed(),
)  # fmt: skip


@app.command()
def cancel(
    ctx: typer.Context,
    rollout_ids: list[str] = typer.Argument(None, metavar="ID", help=_IDS_HELP, show_default=False),
    queued: bool = typer.Option(
        False, "--queued", help="Cancel every task queued now instead; claimed ones run on."
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help='Machine output: each cancelled task as JSON, one per line; with --queued, {"cancelled": N}.',
    ),
) -> None:
    """Cancel queued or claimed tasks, all of them or none: they are not handed out again."""
    _change(ctx, _CANCEL, rollout_ids, queued, json_output)


@app.command()
def retry(
    ctx: typer.Context,
    rollout_ids: list[str] = typer.Argument(None, metavar="ID", help=_IDS_HELP, show_default=False),
    failed: bool = typer.Option(False, "--failed", help="Retry every failed task instead."),
    json_output: bool = typer.Option(
        False,
        "--json",
        help='Machine output: each retried task as JSON, one per line; with --failed, {"retried": N}.',
    ),
) -> None:
    """Queue failed or cancelled tasks again at the back of the queue, all of them or none.

    Each keeps its claims, so its attempt limit gives it what it had left, and at least one.
    """
    _change(ctx, _RETRY, rollout_ids, failed, json_output)
