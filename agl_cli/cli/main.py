"""The `agl` entry point.

`agl --version` is answered here, before Typer and the command modules are imported,
so that it costs little more than starting Python; everything else goes to the Typer
application in `agl_cli.cli.app`, imported on demand.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from agl_cli import __version__

if TYPE_CHECKING:
    from agl_cli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Run `agl` on `sys.argv`; a `CLIError` ends as one line on stderr and its exit code."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"agl {__version__}\n")
        return
    from agl_cli.cli.app import app
    from agl_cli.cli.errors import CLIError, report

    try:
        app()
    except CLIError as exc:
        report(exc)


def __getattr__(name: str) -> Any:
    """`agl_cli.cli.main.app` still names the application, imported on first use."""
    if name == "app":
        from agl_cli.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
