"""What is done to a daemon's state directory while no daemon runs on it: compacting its
database (`agl compact`), putting a backup in its place (`agl restore`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agl_cli import paths, pidfile
from agl_cli.store import StoreError, backups
from agl_cli.store.compaction import Compacted, compact
from agl_cli.store.files import hold, log_of, put_aside


class MaintenanceError(Exception):
    """The work could not be done; the message says why in one sentence."""


def compact_state_dir(state_dir: Path, progress: Callable[[int, int], None]) -> Compacted:
    """Compact the database in `state_dir`; refused while a daemon runs on it."""
    if not state_dir.is_dir():
        raise MaintenanceError(
            paths.file_in_the_way(state_dir)
            or f"There is no state directory {state_dir}: nothing to compact."
        )
    database = state_dir / paths.DATABASE_NAME
    with _alone(state_dir, "compact", f"Cannot compact {database}"):
        return compact(database, progress)


@dataclass(frozen=True)
class Restored:
    contents: backups.Contents
    replaced: Path | None  # where the database it replaced is kept
    orphaned_log: Path | None  # where a log left without its database is kept


def restore_state_dir(state_dir: Path, backup: Path) -> Restored:
    """Put a copy of `backup` in place of the database in `state_dir` (made if need be),
    keeping the one it replaces beside it; refused while a daemon runs on it."""
    database = state_dir / paths.DATABASE_NAME
    with _alone(state_dir, "restore", f"Cannot restore {backup}"):
        aside = put_aside(database, "before-restore")
        had_one, had_log = database.exists(), log_of(database).exists()
        contents = backups.restore(backup, database, aside)
        return Restored(
            contents, aside if had_one else None, log_of(aside) if had_log and not had_one else None
        )


@contextmanager
def _alone(state_dir: Path, verb: str, cannot: str) -> Iterator[None]:
    """Hold the state directory's pidfile (made if need be), so that no daemon starts
    meanwhile; refused while one runs. Failures become `MaintenanceError`s."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise MaintenanceError(paths.unusable(state_dir, exc)) from None
    pid_path = state_dir / paths.PIDFILE_NAME
    try:
        pidfile.acquire(pid_path)
    except pidfile.AlreadyRunningError as exc:
        raise MaintenanceError(
            f"agl is running (pid {exc.pid}) on {state_dir}: stop it first (agl stop), then {verb}."
        ) from None
    except pidfile.UnwritableError as exc:
        raise MaintenanceError(str(exc)) from None
    try:
        # A crashed daemon's address: the CLI, seeing the directory held, would send the
        # token to whatever has taken its port since.
        (state_dir / paths.ADDRESS_NAME).unlink(missing_ok=True)
        database = state_dir / paths.DATABASE_NAME
        holder = hold(database) if database.exists() else None  # nor a program embedding agl's server
        try:
            yield
        finally:
            if holder is not None:
                os.close(holder)
    except StoreError as exc:
        raise MaintenanceError(str(exc)) from None
    except OSError as exc:
        raise MaintenanceError(f"{cannot}: {exc.strerror or exc}.") from None
    finally:
        pidfile.release(pid_path)
