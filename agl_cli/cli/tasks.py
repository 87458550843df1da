"""`agl tasks`: list, inspect and cancel queued tasks."""

from __future__ import annotations

import typer

from agl_cli.cli import output
from agl_cli.cli.context import connect
from agl_cli.cli.errors import ExitCode, fail
from agl_cli.task_status import TaskStatus

app = typer.Typer(help="Tasks: list them, show one, cancel them.", no_args_is_help=True, add_completion=False)


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    status: TaskStatus | None = typer.Option(None, "--status", help="Only tasks in this state."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, metavar="N", help="At most N tasks."),
    offset: int = typer.Option(0, "--offset", min=0, metavar="M", help="Skip the first M."),
    json_output: bool = typer.Option(False, "--json", help="Machine output: a JSON array."),
) -> None:
    """List tasks in the order they were queued."""
    with connect(ctx) as client:
        tasks = client.list_tasks(status.value if status else None, limit, offset)
    if json_output:
        output.print_json(tasks)
        return
    grid = output.table("rollout", "status", "mode", "claims", "created", "input")
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


@app.command()
def show(
    ctx: typer.Context,
    rollout_id: str = typer.Argument(..., metavar="ID", help="The task's rollout id.", show_default=False),
    json_output: bool = typer.Option(False, "--json", help="Machine output: the task as JSON."),
) -> None:
    """Show one task and where it is in its life."""
    with connect(ctx) as client:
        task = client.get_task(rollout_id)
    if json_output:
        output.print_json(task)
    else:
        output.show_record(task)


@app.command()
def cancel(
    ctx: typer.Context,
    rollout_ids: list[str] = typer.Argument(
        None, metavar="ID", help="The tasks' rollout ids.", show_default=False
    ),
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
    if queued == bool(rollout_ids):
        fail("Name the tasks to cancel, or give --queued.", ExitCode.USAGE)
    if queued:
        with connect(ctx) as client:
            count = client.cancel_queued()
        if json_output:
            output.print_json({"cancelled": count})
        else:
            output.write_line(f"Cancelled {count} queued task{'' if count == 1 else 's'}.")
        return
    with connect(ctx) as client:
        tasks = client.cancel_tasks(rollout_ids)
    if json_output:
        output.print_json_lines(tasks)
    else:
        for task in tasks:
            output.write_line(f"Cancelled {task['rollout_id']}.")
