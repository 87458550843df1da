"""`agl backup` and `agl restore`: a copy of a run, made while the daemon serves, and put
back in place while it is stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from agl_cli import paths
from agl_cli.cli import output
from agl_cli.cli.context import connect, state_dir_of, state_dir_option, target_of
from agl_cli.cli.errors import ExitCode, fail, stdout_failed

if TYPE_CHECKING:
    from agl_cli.store.backups import Contents

_JSON_HELP = "Machine output: what the copy holds, as JSON."


def backup(
    ctx: typer.Context,
    file: str = typer.Argument(..., metavar="FILE", help="Where to save the copy; - for stdout."),
    force: bool = typer.Option(False, "--force", help="Replace FILE if it exists."),
    json_output: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Save a copy of the daemon's whole store to FILE, while it serves.

    It holds everything the daemon had answered for when it began, checked page by page. FILE is made readable by its owner only (0600); with -, the shell makes the file (agl backup - > FILE), with the mode it gives.
    """
    from agl_cli.store import StoreError, backups
    from agl_cli.store.files import LOG_SUFFIXES, beside, open_private, sync_to_disk

    if file == "-":
        if json_output:  # stdout holds the copy
            fail("Give - or --json, not both: with -, the copy itself goes to stdout.", ExitCode.USAGE)
        _backup_to_stdout(ctx)
        return
    if not file.strip():
        fail("FILE is empty: give the copy a file name (or - for stdout).", ExitCode.USAGE)
    path = Path(file)
    state_dir = target_of(ctx).state_dir.absolute().resolve()
    own = state_dir / paths.DATABASE_NAME
    if path.absolute().resolve() == own:
        fail(f"{path} is the daemon's own database: save the copy to another file.")
    names = (paths.TOKEN_NAME, paths.PIDFILE_NAME, paths.LOGFILE_NAME, paths.ADDRESS_NAME)
    others = {state_dir / name for name in names} | {beside(own, suffix) for suffix in LOG_SUFFIXES}
    if path.absolute().resolve() in others:  # its log above all: replaced, it loses what it holds
        fail(f"{path} is one of the daemon's own files: save the copy to another file.")
    if path.is_dir():
        fail(f"{path} is a directory: give the copy a file name.")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        fail(
            f"{path} is not a regular file (a link, a device or a pipe): give the copy a file name, or - for stdout."
        )
    if path.exists() and not force:
        fail(f"{path} exists: give --force to replace it.")
    if not path.parent.is_dir():
        within = "is not a directory" if path.parent.exists() else "does not exist"
        fail(f"Cannot write {path}: {path.parent} {within}.")
    partial = path.with_name(f".{path.name}.partial")
    try:
        handle = open_private(partial)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.")
    try:
        show = output.stderr_is_terminal()
        with (
            handle,
            connect(ctx) as client,
            output.progress_bar(show, "Backing up", 1, bytes_=True) as update,
        ):
            client.backup(handle, progress=update)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            contents = backups.check(partial)
        except StoreError as exc:
            fail(f"The copy the daemon sent failed its check, so {path} was not written: {exc}")
        os.replace(partial, path)
        sync_to_disk(path.parent)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.")
    finally:
        partial.unlink(missing_ok=True)
    _say(json_output, f"Saved a copy of the daemon's store to {path}", {"file": str(path)}, contents, "")


def _backup_to_stdout(ctx: typer.Context) -> None:
    if output.stdout_is_terminal():
        fail("agl backup - writes a database file to stdout: send it to a file or a pipe.")
    try:
        with connect(ctx) as client:
            client.backup(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise  # its reader went away: ended quietly, as for every command
    except OSError as exc:  # a full disk, /dev/full
        stdout_failed(exc)


def restore(
    ctx: typer.Context,
    file: str = typer.Argument(..., metavar="FILE", help="A copy agl backup saved."),
    state_dir: Path | None = state_dir_option(),
    json_output: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Put a copy agl backup saved in place of the database; the daemon must be stopped.

    The database it replaces is kept beside it, as agl.db.before-restore-TIME.
    """
    from agl_cli.store.maintenance import MaintenanceError, restore_state_dir

    if not file.strip():
        fail("FILE is empty: give the file of the copy agl backup saved.", ExitCode.USAGE)
    directory = state_dir_of(ctx, state_dir) or paths.default_state_dir()
    try:
        restored = restore_state_dir(directory, Path(file))
    except MaintenanceError as exc:
        fail(str(exc))
    database = directory / paths.DATABASE_NAME
    replaced = restored.replaced
    kept = f" The database it replaced is kept as {replaced}." if replaced else ""
    orphaned = restored.orphaned_log
    kept += f" A write-ahead log left there without its database is kept as {orphaned}." if orphaned else ""
    kept += " Start the daemon (agl serve) to use it."
    facts = {
        "database": str(database),
        "replaced": str(replaced) if replaced else None,
        "orphaned_log": str(orphaned) if orphaned else None,
    }
    _say(json_output, f"Restored {file} into {database}", facts, restored.contents, kept)


def _say(json_output: bool, done: str, facts: dict[str, Any], contents: Contents, then: str) -> None:
    """`done: N tasks, M rollouts and K resource bundles (size).` and `then`; or JSON."""
    counts = {"tasks": contents.tasks, "rollouts": contents.rollouts, "resources": contents.resources}
    if json_output:
        output.print_json({**facts, **counts, "bytes": contents.size})
        return
    output.write_line(
        f"{done}: {output.count(contents.tasks, 'task')}, {output.count(contents.rollouts, 'rollout')}"
        f" and {output.count(contents.resources, 'resource bundle')} ({output.size(contents.size)}).{then}"
    )
