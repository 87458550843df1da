"""A database's files on disk: the two SQLite keeps beside it in WAL mode, and writing a
file so that it, and its name, survive a power cut."""

from __future__ import annotations

import fcntl
import io
import os
import time
from pathlib import Path

from agl_cli.store.errors import StoreError

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


def hold(database: Path) -> int:
    """A descriptor of the database file (made if need be, its owner's alone, as its logs
    will be) that holds a lock on it (`flock`,
    apart from SQLite's own locks) until it is closed or the process ends. Two agl on one
    file would each count the queue's places on their own, and the second's tasks collide
    with the first's. The state directory's pidfile keeps two daemons apart; this also keeps
    apart a program that embeds agl's server, and a daemon reaching the file by another
    name (a link). Close it only after every connection: closing a file drops the locks the
    process holds on it, SQLite's too."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(database, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"Cannot open the database {database}: {exc.strerror or exc}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"Another agl has the database {database} open (a daemon, or a program that embeds"
            " agl's server): one agl at a time may use it."
        ) from None
    except OSError:  # a file system that has no such locks (some network ones): the pidfile alone
        pass
    return fd


def put_aside(database: Path, why: str) -> Path:
    """A name beside `database` for a file (and its log) kept aside, that nothing has yet:
    `agl.db.WHY-TIME`, or `-2`, `-3`, ... after it, so that nothing put aside in the same
    second goes over another."""
    name = beside(database, f".{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    candidate, number = name, 1
    while any(beside(candidate, suffix).exists() for suffix in ("", *LOG_SUFFIXES)):
        number += 1
        candidate = name.with_name(f"{name.name}-{number}")
    return candidate


def open_private(path: Path) -> io.BufferedWriter:
    """A new file for writing that only its owner may read (a database holds the run).
    Whatever has the name already (a copy cut short) is removed, not written through: it
    may have another mode, or be a link to another file. Buffered, as a write the disk
    takes only part of must be finished or fail: a raw file's `write` says how much it
    took, and a copy that does not ask is cut short."""
    path.unlink(missing_ok=True)
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")


def owned_as(path: Path, model: Path) -> None:
    """Give the new file `path` the owner and group of `model` (the file it replaces, else
    its directory), where they differ and this process may: root running `agl compact` or
    `agl restore` on a service's state directory would otherwise leave a database the
    service's own user cannot open."""
    made, wanted = path.stat(), model.stat()
    if (made.st_uid, made.st_gid) != (wanted.st_uid, wanted.st_gid) and os.geteuid() == 0:
        os.chown(path, wanted.st_uid, wanted.st_gid)


def sync_to_disk(path: Path) -> None:
    """Make `path` durable: a file's contents, or the names in a directory (a file renamed
    into it, say)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
