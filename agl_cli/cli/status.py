"""`agl status`: everything about the daemon at a glance, once or live."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from agl_cli.cli import output
from agl_cli.cli.context import connect, target_of
from agl_cli.task_status import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from agl_cli.client import Address, AglClient, AglClientError, DatabaseSpace, Status

TASK_STATES = tuple(status.value for status in TaskStatus)
WORTH_COMPACTING = 1_000_000  # bytes that deletions freed inside the database, worth a mention


def status(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every second until Ctrl-C."),
    json_output: bool = typer.Option(False, "--json", help="Machine output: JSON (JSON Lines with --watch)."),
) -> None:
    """Show the daemon's version, uptime, address, task counts, rates, resources and database size."""
    with connect(ctx) as client:
        current = client.status()  # no daemon at the start is an error, watched or not
        if not watch:
            if json_output:
                output.print_json(current)
            else:
                output.out().print(render(current))
            return
        updates = _every_second(client, target_of(ctx).relocate)
        if json_output:
            _follow(current, updates, output.print_json_line)
        elif not output.stdout_is_terminal():  # rich's Live draws nothing there until it ends
            _follow(current, updates, _print_plain)
        else:
            _redraw(current, updates)


def _follow(
    current: Status, updates: Iterator[Status | AglClientError], show: Callable[[Status], None]
) -> None:
    """Each refresh `show`n as it comes, for a pipe or a file; why one is missing on stderr,
    once an outage."""
    show(current)
    down = False
    for update in updates:
        if isinstance(update, Exception):
            if not down:
                output.note(f"{update} Retrying every second…")
            down = True
            continue
        if down:
            output.note("The daemon answers again.")
        down = False
        show(update)


def _print_plain(current: Status) -> None:
    """The table, then a blank line that parts it from the next refresh."""
    output.out().print(render(current))
    output.out().line()


def _redraw(current: Status, updates: Iterator[Status | AglClientError]) -> None:
    """The table redrawn in place on the terminal, or why there is none this second."""
    from rich.live import Live

    with Live(render(current), console=output.out(), auto_refresh=False) as live:
        for update in updates:
            view = (
                Text(f"{update} Retrying every second…", style="yellow")
                if isinstance(update, Exception)
                else render(update)
            )
            live.update(view, refresh=True)


def _every_second(
    client: AglClient, relocate: Callable[[], Address | None]
) -> Iterator[Status | AglClientError]:
    """The status once a second, or why there is none this time: a watch goes on while
    the daemon restarts (found again at its new address, with its new token) or is busy (503)."""
    from agl_cli.client import DaemonFailed, DaemonUnreachable

    while True:
        time.sleep(1.0)
        try:
            yield client.status()
        except (DaemonUnreachable, DaemonFailed) as exc:
            client.move_to(relocate())
            yield exc


def render(current: Status) -> Table:
    """The status as a two-column table."""
    grid = output.grid()
    header = f"agl {current.get('version', '?')}"
    if "pid" in current:
        header += f" (pid {current['pid']})"
    if "uptime" in current:
        header += f", up {output.duration(current['uptime'])}"
    grid.add_row("daemon", header)
    grid.add_row("address", str(current.get("address", "-")))
    grid.add_row("state dir", f"{current.get('state_dir', '-')} ({current.get('store', '?')} store)")
    if "paused" in current:
        grid.add_row(
            "queue", "paused: workers get no tasks until agl resume" if current["paused"] else "running"
        )
    counts = current.get("tasks", {})
    tasks = "  ".join(f"{state} {counts.get(state, 0)}" for state in TASK_STATES)
    if current.get("forget_tasks") or current.get("forgotten"):  # why the counts went down
        tasks += f"  (forgotten {current.get('forgotten', 0)})"
    grid.add_row("tasks", Text(tasks))
    grid.add_row(
        "rollouts",
        f"{current.get('rollouts', 0)} stored (last seq {current.get('last_seq', 0)}), "
        f"{current.get('unsolicited', 0)} unsolicited,"
        f" {output.count(current.get('duplicates', 0), 'duplicate')} ignored",
    )
    rates = current.get("rates")
    if rates:
        window = f" (last {rates['seconds']:.0f} s)" if "seconds" in rates else ""  # an older agl: none
        grid.add_row(
            "rates",
            f"{rates.get('claims_per_second', 0):.2f} claims/s, "
            f"{rates.get('rollouts_per_second', 0):.2f} rollouts/s{window}",
        )
    if "database" in current:
        grid.add_row("database", _space(current["database"], current.get("store")))
    grid.add_row(
        "resources",
        f"{output.count(current.get('resources', 0), 'bundle')}, latest {current.get('latest_resources_id') or '-'}",
    )
    limits = []
    if "task_timeout" in current:
        limits.append(f"task timeout {current['task_timeout']:g} s")
    if "max_attempts" in current:
        limits.append(f"max attempts {current['max_attempts'] or 'unlimited'}")
    if "rollout_retention" in current:
        retention = current["rollout_retention"]
        kept = "for good" if retention is None else f"{retention:g} s"
        limits.append(f"rollouts kept {kept}{', with their tasks' if current.get('forget_tasks') else ''}")
    if "max_body_size" in current:
        limits.append(f"request bodies up to {output.size(current['max_body_size'])}")
    if limits:
        grid.add_row("limits", ", ".join(limits))
    return grid


def _space(space: DatabaseSpace, store: str | None) -> str:
    """`181.2 MB of at most 1.0 GB (12.0 MB free inside: agl compact gives it back), log
    4.1 MB, 20.3 GB free on disk`; the free part from `WORTH_COMPACTING` on."""
    text = output.size(space["bytes"])
    if space["max_bytes"] is not None:
        text += f" of at most {output.size(space['max_bytes'])}"
    if store == "memory":
        return f"{text}, in memory"
    if space["free_bytes"] >= WORTH_COMPACTING:
        text += f" ({output.size(space['free_bytes'])} free inside: agl compact gives it back)"
    text += f", log {output.size(space['log_bytes'])}"
    if space["disk_free_bytes"] is not None:
        text += f", {output.size(space['disk_free_bytes'])} free on disk"
    return text
