"""What is done to a daemon's state directory while no daemon runs on it: compacting its
database (`agl compact`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agl_cli import paths
from agl_cli.server import pidfile
from agl_cli.store import StoreError
from agl_cli.store.compaction import Compacted, compact


class MaintenanceError(Exception):
    """The work could not be done; the message says why in one sentence."""


def compact_state_dir(state_dir: Path, progress: Callable[[int, int], None]) -> Compacted:
    """Compact the database in `state_dir`, holding its pidfile meanwhile so that no daemon
    starts; refused while one runs. Failures are `MaintenanceError`s."""
    if not state_dir.is_dir():
        raise MaintenanceError(f"There is no state directory {state_dir}: nothing to compact.")
    database = state_dir / paths.DATABASE_NAME
    try:
        with pidfile.held(state_dir / paths.PIDFILE_NAME):
            return compact(database, progress)
    except pidfile.AlreadyRunningError as exc:
        raise MaintenanceError(
            f"agl is running (pid {exc.pid}) on {state_dir}: stop it first (agl stop), then compact."
        ) from None
    except StoreError as exc:
        raise MaintenanceError(str(exc)) from None
    except OSError as exc:
        raise MaintenanceError(f"Cannot compact {database}: {exc.strerror or exc}.") from None
