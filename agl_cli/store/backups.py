"""Backups as files: what one holds, checked page by page before it is trusted (`agl
backup` checks what it saved), and putting one in a database's place (`agl restore`).

A backup is a database file of its own, with no log beside it (the daemon makes it so).
Putting one in place must not leave the old database's write-ahead log beside it: SQLite
would read the old log's pages into the new file. So the log is first folded into the old
file, which is then linked aside, and the copy takes its place in one rename.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agl_cli.store.errors import StoreError
from agl_cli.store.files import LOG_SUFFIXES, beside, open_private, owned_as, sync_to_disk
from agl_cli.store.schema import APPLICATION_ID, SCHEMA_VERSION, NotAglDatabaseError

RESTORING = ".restoring"  # the copy being put in place, beside the database
COPY_CHUNK = 1 << 20
SQLITE_HEADER = b"SQLite format 3\x00"  # how every SQLite database file begins
# The tasks of committed batches not yet moved into `tasks` (queued all the same), in
# files of the schema that added commits (3) or later: an uncommitted batch has all its
# tasks staged, and whatever else is staged is committed.
STAGED = (
    "SELECT (SELECT count(*) FROM staging)"
    " - (SELECT coalesce(sum(staged), 0) FROM batches WHERE committed_time IS NULL)"
)
COMMITTED_BATCHES = 3


@dataclass(frozen=True)
class Contents:
    tasks: int
    rollouts: int  # kept results
    resources: int  # bundles
    size: int  # bytes


def check(path: Path) -> Contents:
    """What the agl database at `path` holds, once SQLite has read every page of it and
    found each whole; `StoreError` (one sentence) if it is damaged, not agl's, or from a
    newer agl. The file is only read."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a backup.")
    if not path.exists():
        raise StoreError(f"There is no file {path}.")
    if not path.is_file():
        raise StoreError(f"{path} is not a regular file (a device or a pipe), not a backup.")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open {path}: {exc}.") from None
    try:
        try:
            [(app_id,)] = conn.execute("PRAGMA application_id").fetchall()
        except sqlite3.DatabaseError as exc:
            if _starts_as_a_database(path):  # a database, cut short or damaged
                raise StoreError(f"{path} is damaged ({exc}).") from None
            raise NotAglDatabaseError(f"{path} is not an agl database ({exc}).") from None
        if app_id != APPLICATION_ID:
            raise NotAglDatabaseError(f"{path} is not an agl database.")
        [(version,)] = conn.execute("PRAGMA user_version").fetchall()
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} was written by a newer agl (schema {version}); upgrade agl to use it.")
        found = [line for (text,) in conn.execute("PRAGMA quick_check") for line in text.splitlines()]
        if found != ["ok"]:  # the first problem, not the headings ("*** in database main ***")
            first = next(line for line in found if not line.startswith("***"))
            raise StoreError(f"{path} is damaged ({first.rstrip('.')}).")
        staged = STAGED if version >= COMMITTED_BATCHES else "SELECT 0"
        [(tasks, rollouts, resources)] = conn.execute(
            f"SELECT (SELECT count(*) FROM tasks) + ({staged}),"
            " (SELECT count(*) FROM rollouts), (SELECT count(*) FROM resources)"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is damaged ({exc}).") from None
    finally:
        conn.close()
    return Contents(tasks, rollouts, resources, path.stat().st_size)


def _starts_as_a_database(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def restore(backup: Path, database: Path, aside: Path) -> Contents:
    """Put a copy of `backup` in `database`'s place; the database it replaces, if any, is
    kept at `aside` (a name nothing has), and so is a log left there without its database
    (one deleted while a daemon ran on it). Nothing may have the database open. Stopped at
    any point, it leaves the old database whole at its place, or the new one.

    Results go on being numbered after the replaced database's last one: a client that
    follows them from a number (`agl rollouts watch`) misses none stored after the restore."""
    contents = check(backup)
    copy = beside(database, RESTORING)
    try:
        with backup.open("rb") as source, open_private(copy) as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)
            target.flush()
            os.fsync(target.fileno())
        if copy.stat().st_size != contents.size:
            raise StoreError(f"Cannot restore {backup} into {database}: the copy came out cut short.")
        owned_as(copy, database if database.exists() else database.parent)
        if database.exists():
            _number_results_after(copy, _fold_log(database))
        for suffix in LOG_SUFFIXES:  # left if the old file could not be read, or is gone without them
            if beside(database, suffix).exists():
                os.replace(beside(database, suffix), beside(aside, suffix))
        if database.exists():
            os.link(database, aside)  # the old file keeps its place until the new one takes it
        os.replace(copy, database)
        sync_to_disk(database.parent)
    except (OSError, sqlite3.Error) as exc:
        copy.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) else None
        raise StoreError(f"Cannot restore {backup} into {database}: {reason or exc}.") from None
    except StoreError:
        copy.unlink(missing_ok=True)
        raise
    return contents


def _number_results_after(copy: Path, last: int) -> None:
    """Make `copy` number its next result after `last`, if it would not already."""
    if last <= 0:
        return
    conn = sqlite3.connect(copy)
    try:
        with conn:
            conn.execute("INSERT OR IGNORE INTO sqlite_sequence (name, seq) VALUES ('rollouts', 0)")
            conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'rollouts'", (last,))
    finally:
        conn.close()  # the last connection: its log is folded into the copy and deleted
    sync_to_disk(copy)


def _fold_log(database: Path) -> int:
    """Copy what the database's write-ahead log holds into it: SQLite does that, and
    deletes the log, when the last connection to it closes. A file too damaged to open
    keeps its log (the caller moves both aside). The last sequence number it gave a
    result, 0 if it cannot be read."""
    try:
        conn = sqlite3.connect(database)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rollouts'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(found[0]) if found else 0
