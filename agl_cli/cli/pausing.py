"""`agl pause` and `agl resume`: stop handing out tasks for a while, and start again."""

from __future__ import annotations

import typer

from agl_cli.cli import output
from agl_cli.cli.context import connect

_JSON_HELP = 'Machine output: {"paused": true} or {"paused": false}.'


def pause(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Pause the queue: workers get no tasks until agl resume.

    Claimed tasks run on, and tasks can still be queued. It stays paused across a restart.
    """
    with connect(ctx) as client:
        paused = client.pause()
    _say(paused, json_output)


def resume(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Resume the queue: workers get tasks again, those waiting for one at once."""
    with connect(ctx) as client:
        paused = client.resume()
    _say(paused, json_output)


def _say(paused: bool, json_output: bool) -> None:
    if json_output:
        output.print_json({"paused": paused})
    elif paused:
        output.write_line("The queue is paused: workers get no tasks until agl resume.")
    else:
        output.write_line("The queue is running: workers get tasks.")
