"""A database's files on disk: the two SQLite keeps beside it in WAL mode, and writing a
file so that it, and its name, survive a power cut."""

from __future__ import annotations

import io
import os
from pathlib import Path

LOG_SUFFIXES = ("-wal", "-shm")  # beside `agl.db`: its write-ahead log, and the log's index
# Beside a database SQLite writes outside WAL mode (the copy `VACUUM INTO` makes): its
# rollback journal, left behind if the writer is killed.
JOURNAL_SUFFIX = "-journal"


def beside(database: Path, suffix: str) -> Path:
    """The file named as `database` with `suffix` after it, in its directory: where agl and
    SQLite keep what goes with a database (`agl.db-wal`, `agl.db.compacting`)."""
    return database.with_name(database.name + suffix)


def log_of(database: Path) -> Path:
    """The write-ahead log of `database`."""
    return beside(database, LOG_SUFFIXES[0])


def open_private(path: Path) -> io.BufferedWriter:
    """A new file for writing that only its owner may read (a database holds the run).
    Whatever has the name already (a copy cut short) is removed, not written through: it
    may have another mode, or be a link to another file. Buffered, as a write the disk
    takes only part of must be finished or fail: a raw file's `write` says how much it
    took, and a copy that does not ask is cut short."""
    path.unlink(missing_ok=True)
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")


def sync_to_disk(path: Path) -> None:
    """Make `path` durable: a file's contents, or the names in a directory (a file renamed
    into it, say)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
