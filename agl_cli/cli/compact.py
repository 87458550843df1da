"""`agl compact`: give the space that deleted rollouts leave back to the file system.

It needs the database to itself: it runs only while no daemon does (see
`store.maintenance`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from agl_cli import paths
from agl_cli.cli import output
from agl_cli.cli.context import state_dir_of, state_dir_option
from agl_cli.cli.errors import ExitCode, fail


def compact(ctx: typer.Context, state_dir: Path | None = state_dir_option()) -> None:
    """Shrink the database file to what it holds; the daemon must be stopped."""
    from agl_cli.store.maintenance import MaintenanceError, compact_state_dir

    directory = state_dir_of(ctx, state_dir) or paths.default_state_dir()
    label = f"Compacting {directory / paths.DATABASE_NAME}"
    with output.progress_bar(output.stderr_is_terminal(), label, total=1, bytes_=True) as update:
        try:
            done = compact_state_dir(directory, progress=update)
        except MaintenanceError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("agl: Interrupted; the database is as it was.", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
    freed = done.before - done.after
    output.write_line(
        f"Compacted {directory / paths.DATABASE_NAME}: {output.size(done.before)} to {output.size(done.after)}"
        + (f" ({output.size(freed)} given back)." if freed > 0 else " (it had no free space to give back).")
    )
