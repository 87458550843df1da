"""`agl rollouts`: tail completed rollouts as they arrive, list them, show one.

Reading never consumes: any number of watchers and listings see the same rollouts.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from agl_cli.api_limits import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_SEQ, is_seq
from agl_cli.cli import output
from agl_cli.cli.context import connect, refuse_beside_all, target_of
from agl_cli.cli.errors import ExitCode, fail
from agl_cli.cli.reader_watch import end_when_reader_goes

if TYPE_CHECKING:
    from collections.abc import Mapping

app = typer.Typer(
    help="Completed rollouts: watch them arrive, list them, show one.",
    no_args_is_help=True,
    add_completion=False,
)

JSON_HELP = "Machine output: JSON Lines (also what a pipe gets)."


def parse_since(value: str) -> int | str:
    if value in ("all", "now"):
        return 0 if value == "all" else "now"
    if is_seq(value):
        return int(value)
    fail(f"--since takes all, now or a sequence number up to {MAX_SEQ}, not '{value}'.", ExitCode.USAGE)


@app.command()
def watch(
    ctx: typer.Context,
    since: str = typer.Option(
        "now",
        "--since",
        metavar="all|now|SEQ",
        help="Start after this sequence number; all = from the first.",
    ),
    count: int | None = typer.Option(None, "--count", min=1, metavar="N", help="Exit after N rollouts."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print rollouts as they complete, one per line, until Ctrl-C or --count.

    Survives a daemon restart: it reconnects and resumes after the last rollout it printed, so nothing is missed and nothing comes twice.
    """
    start = parse_since(since)
    machine = json_output or not output.stdout_is_terminal()
    target = target_of(ctx)
    end_when_reader_goes()

    def lost(error: Exception) -> None:
        output.note(f"{error} Retrying until it is back…")

    def back(after: int) -> None:
        output.note(
            f"Reconnected; resuming after rollout #{after}."
            if after
            else "Reconnected; from the first rollout."
        )

    printed = 0
    with connect(ctx) as client:
        stream = client.watch_rollouts(
            start if isinstance(start, int) else "now",
            relocate=target.relocate,
            on_disconnect=lost,
            on_reconnect=back,
        )
        for record in stream:
            print_rollout(record, machine)
            printed += 1
            if count is not None and printed >= count:
                break


@app.command("list")
def list_rollouts(
    ctx: typer.Context,
    since: int = typer.Option(
        0, "--since", min=0, max=MAX_SEQ, metavar="SEQ", help="Only rollouts after this sequence number."
    ),
    limit: int = typer.Option(
        DEFAULT_LIST_LIMIT, "--limit", min=1, max=MAX_LIST_LIMIT, metavar="N", help="At most N rollouts."
    ),
    every: bool = typer.Option(
        False, "--all", help="Every rollout stored (after --since), however many: with --json, an export."
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine output: a JSON array."),
) -> None:
    """List stored rollouts, oldest first."""
    refuse_beside_all(ctx, "--limit", every, "rollout")
    if every and json_output:
        with connect(ctx) as client:  # streamed as it is read, a page at a time
            output.print_json_array(client.all_rollouts(since))
        return
    with connect(ctx) as client:  # a page of big results comes short: the rest are asked for
        rollouts = list(
            client.all_rollouts(since)
            if every
            else itertools.islice(client.all_rollouts(since, limit), limit)
        )
        more = (  # asked only where it would be said
            len(rollouts) == limit
            and not every
            and not json_output
            and output.stderr_is_terminal()
            and bool(client.list_rollouts(rollouts[-1]["seq"], 1)["rollouts"])
        )
    if json_output:
        output.print_json(rollouts)
        return
    grid = output.table(
        "seq", "rollout", "mode", "reward", "triplets", "attempt", "received",
        drop=("received", "triplets", "attempt", "mode", "seq", "reward"),
    )  # fmt: skip
    for record in rollouts:
        grid.add_row(
            str(record.get("seq", "")),
            record.get("rollout_id", ""),
            mode_of(record) or "-",
            output.reward(record.get("final_reward")),
            str(len(record.get("triplets") or [])),
            _attempt(record),
            output.timestamp(record.get("received_time")),
        )
    output.out().print(grid)
    if more:
        output.note(f"More rollouts follow; --since {rollouts[-1]['seq']} shows the next, --all every one.")


@app.command()
def show(
    ctx: typer.Context,
    rollout_id: str = typer.Argument(..., metavar="ID", help="A rollout id.", show_default=False),
    json_output: bool = typer.Option(False, "--json", help="Machine output: the rollout as JSON."),
) -> None:
    """Show one rollout, all of it, and the spans its attempts sent (under `spans` in JSON)."""
    with connect(ctx) as client:
        record = dict(client.get_rollout(rollout_id))
        spans = client.spans(rollout_id)
    if json_output:
        output.print_json({**record, "spans": spans})
        return
    output.show_record(record)
    if spans:
        output.out().print(spans_table(spans))


def spans_table(spans: list[dict[str, Any]]) -> Table:
    """One line per span: its place, its attempt, what it was, how long it took."""
    grid = output.table(
        "seq", "attempt", "name", "status", "duration", "span",
        drop=("attempt", "status", "duration", "name"), shrink="name",
    )  # fmt: skip
    for span in spans:
        start, end = span.get("start_time"), span.get("end_time")
        took = (
            f"{(end - start) * 1000:.1f} ms" if isinstance(start, float) and isinstance(end, float) else "-"
        )
        status = (span.get("status") or {}).get("status_code", "-")
        grid.add_row(
            str(span.get("sequence_id")), str(span.get("attempt_id")), str(span.get("name")), status, took,
            str(span.get("span_id")),
        )  # fmt: skip
    return grid


def mode_of(record: Mapping[str, Any]) -> str | None:
    task = record.get("task")
    mode = task.get("mode") if isinstance(task, dict) else None
    return mode if isinstance(mode, str) else None


def _attempt(record: Mapping[str, Any]) -> str:
    if record.get("unsolicited"):
        return "unsolicited"
    attempt = record.get("attempt")
    return "-" if attempt is None else str(attempt)


def print_rollout(record: Mapping[str, Any], machine: bool, mode: str | None = None) -> None:
    """One rollout on one line: JSON for programs, a styled summary for people."""
    if machine:
        output.print_json_line(record)
        return
    triplets = len(record.get("triplets") or [])
    line = Text.assemble(
        (f"#{record.get('seq', '?'):<6} ", "dim"),
        (output.shown(str(record.get("rollout_id", ""))), "bold"),
        "  ",
        (f"{mode_of(record) or mode or '-':<5}", "cyan"),
        "  reward ",
        (output.reward(record.get("final_reward")), "green"),
        f"  {output.count(triplets, 'triplet')}",
        "  unsolicited" if record.get("unsolicited") else f"  attempt {_attempt(record)}",
    )
    output.out().print(line)
