"""The `agl` Typer application: global options and the command table.

Command modules import only typer, rich and agl's own light modules at the top; the
HTTP client, orjson and, for `serve`, the server are imported when a command runs, so
`agl --help` and `agl status` start fast. `agl_cli.cli.main` is the entry point that
imports this module; `scripts/generate_docs.py` reads the man pages and shell completions
off `app`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from agl_cli import __version__, paths
from agl_cli.cli import backup as backup_module
from agl_cli.cli import compact as compact_module
from agl_cli.cli import dashboard as dashboard_module
from agl_cli.cli import pausing, resources, rollouts, tasks
from agl_cli.cli import queue as queue_module
from agl_cli.cli import serve as serve_module
from agl_cli.cli import status as status_module
from agl_cli.cli import stop as stop_module
from agl_cli.cli.context import DEFAULT_URL, Globals, state_dir_named
from agl_cli.cli.errors import EXIT_CODES_HELP, ExitCode, fail, reader_gone
from agl_cli.cli.forward import AGENTLIGHTNING_COMMANDS, forward
from agl_cli.cli.help_screens import use_plain_labels

use_plain_labels()


class _Commands(TyperGroup):
    """agl's commands: one whose stdout's reader went away ends as `reader_gone` says,
    whichever it is (Typer would end it with exit 1)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            reader_gone()


app = typer.Typer(
    cls=_Commands,
    name="agl",
    help=f"A durable, fast daemon for the Agent Lightning task protocol.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None,
        "--url",
        envvar="AGL_URL",
        metavar="URL",
        help=f"The daemon's address (default: STATE_DIR/address, else {DEFAULT_URL}).",
        show_default=False,
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="AGL_TOKEN",
        metavar="TOKEN",
        help="The management API's token (default: STATE_DIR/token).",
        show_default=False,
    ),
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        envvar="AGL_STATE_DIR",
        parser=state_dir_named,
        metavar="STATE_DIR",
        help=f"The daemon's state directory (default: {paths.DEFAULT_STATE_DIR_WORDS}).",
        show_default=False,
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """A durable, fast daemon for the Agent Lightning task protocol."""
    if ctx.invoked_subcommand not in AGENTLIGHTNING_COMMANDS:  # theirs take what they take
        _refuse_undecodable("Arguments", sys.argv[1:])
        for name in ("AGL_URL", "AGL_TOKEN", "AGL_STATE_DIR"):
            _refuse_undecodable(name, [os.environ.get(name, "")])
    ctx.obj = Globals(  # a `~` no shell expanded (a unit's Environment=, `--state-dir=~/x`) is home
        url=url or None, token=token or None, state_dir=state_dir.expanduser() if state_dir else None
    )


def _refuse_undecodable(what: str, values: list[str]) -> None:
    """Every argument is UTF-8 text: ids, names, values and paths go into JSON and URLs,
    which carry nothing else (Python hands over other bytes as lone surrogates)."""
    for value in values:
        try:
            value.encode()
        except UnicodeEncodeError:
            shown = value.encode(errors="surrogateescape").decode("ascii", errors="backslashreplace")
            fail(f"{what} must be UTF-8 text, and '{shown}' is not.", ExitCode.USAGE)


DAEMON = "Daemon"
WORK = "Work"
app.command("serve", rich_help_panel=DAEMON)(serve_module.serve)
app.command("stop", rich_help_panel=DAEMON)(stop_module.stop)
app.command("status", rich_help_panel=DAEMON)(status_module.status)
app.command("dashboard", rich_help_panel=DAEMON)(dashboard_module.dashboard)
app.command("backup", rich_help_panel=DAEMON)(backup_module.backup)
app.command("restore", rich_help_panel=DAEMON)(backup_module.restore)
app.command("compact", rich_help_panel=DAEMON)(compact_module.compact)
app.command("queue", rich_help_panel=WORK)(queue_module.queue)
app.add_typer(tasks.app, name="tasks", rich_help_panel=WORK)
app.command("pause", rich_help_panel=WORK)(pausing.pause)
app.command("resume", rich_help_panel=WORK)(pausing.resume)
app.add_typer(resources.app, name="resources", rich_help_panel=WORK)
app.add_typer(rollouts.app, name="rollouts", rich_help_panel=WORK)


def _add_forwarder(name: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        raise typer.Exit(forward(name, list(ctx.args)))

    command.__doc__ = f"{summary} Needs agentlightning; arguments are passed on as given."
    app.command(
        name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
        rich_help_panel="agentlightning",
    )(command)


for _name, _summary in AGENTLIGHTNING_COMMANDS.items():
    _add_forwarder(_name, _summary)
