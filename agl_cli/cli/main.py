"""The `agl` Typer application: global options and the command table."""

from __future__ import annotations

import typer

from agl_cli import __version__
from agl_cli.cli import serve as serve_module
from agl_cli.cli.errors import EXIT_CODES_HELP, CLIError, report
from agl_cli.cli.forward import AGENTLIGHTNING_COMMANDS, forward

app = typer.Typer(
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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """A durable, fast daemon for the Agent Lightning task protocol."""


app.command("serve")(serve_module.serve)


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


def main() -> None:
    try:
        app()
    except CLIError as exc:
        report(exc)
