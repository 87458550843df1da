"""Giving a database's free pages back to the file system (`agl compact`).

SQLite reuses the pages that deletions free (results past the retention setting, a
batch that was dropped), so a file stops growing once as much goes as comes, but it
never shrinks by itself. Compacting writes a copy of what the file holds, page after
page, next to it (`VACUUM INTO`: the temporary directory, which may be a small tmpfs,
is not used), syncs it and puts it in the file's place. Nothing else may have the file
open meanwhile: the caller makes sure no daemon runs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agl_cli.store.errors import StoreError
from agl_cli.store.files import JOURNAL_SUFFIX, LOG_SUFFIXES, beside, log_of, owned_as, sync_to_disk
from agl_cli.store.schema import APPLICATION_ID, NotAglDatabaseError, connect

SUFFIX = ".compacting"  # the copy being written, beside the file
PROGRESS_EVERY = 100_000  # SQLite steps between two looks at how far the copy is


@dataclass(frozen=True)
class Compacted:
    before: int  # bytes, the file and its write-ahead log
    after: int


def compact(path: Path, progress: Callable[[int, int], None] = lambda done, total: None) -> Compacted:
    """Compact the agl database at `path` in place; `progress(bytes written, bytes to write)`
    is called now and then. Whatever goes wrong, the file is left as it was."""
    if not path.is_file():
        raise StoreError(f"There is no database at {path}: nothing to compact.")
    before = _size(path)
    copy = beside(path, SUFFIX)
    for leftover in (copy, beside(copy, JOURNAL_SUFFIX)):  # left by a compaction that was stopped
        leftover.unlink(missing_ok=True)
    conn = connect(path)
    try:
        [(app_id,)] = conn.execute("PRAGMA application_id").fetchall()
        if app_id != APPLICATION_ID:
            raise NotAglDatabaseError(f"{path} is not an agl database; refusing to compact it.")
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        [(free,)] = conn.execute("PRAGMA freelist_count").fetchall()
        [(page_size,)] = conn.execute("PRAGMA page_size").fetchall()
        total = (pages - free) * page_size

        def look() -> int:
            with contextlib.suppress(FileNotFoundError):
                progress(min(copy.stat().st_size, total), total)
            return 0  # go on

        conn.set_progress_handler(look, PROGRESS_EVERY)
        conn.execute("VACUUM INTO ?", (str(copy),))
        conn.set_progress_handler(None, 0)
    except sqlite3.DatabaseError as exc:
        copy.unlink(missing_ok=True)
        if str(exc) == "interrupted":  # Ctrl-C, which stopped the copy at the next look
            raise KeyboardInterrupt from None
        if "full" in str(exc):
            raise StoreError(
                f"Not enough free space beside {path} for its compacted copy (up to {before / 1e6:,.1f} MB)."
            ) from None
        raise StoreError(f"Cannot compact {path}: {exc}.") from None
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    finally:
        conn.close()  # the last connection: SQLite folds its write-ahead log into the file
    _replace(path, copy)
    progress(total, total)
    return Compacted(before, _size(path))


def _replace(path: Path, copy: Path) -> None:
    """Put the synced copy in the file's place, once no log of the old file is left to
    be read into the new one."""
    log = log_of(path)
    if log.exists() and log.stat().st_size > 0:
        copy.unlink(missing_ok=True)
        raise StoreError(f"{path} is in use by another process (its log {log} is not empty).")
    try:
        sync_to_disk(copy)
        os.chmod(copy, stat.S_IMODE(path.stat().st_mode))  # SQLite made it as any new file
        owned_as(copy, path)
        os.replace(copy, path)
        sync_to_disk(path.parent)
    except OSError as exc:
        copy.unlink(missing_ok=True)
        raise StoreError(
            f"Cannot put the compacted copy in place of {path}: {exc.strerror or exc}."
        ) from None
    for suffix in LOG_SUFFIXES:
        beside(path, suffix).unlink(missing_ok=True)


def _size(path: Path) -> int:
    log = log_of(path)
    return path.stat().st_size + (log.stat().st_size if log.exists() else 0)
