"""One SQLite file and its connections: a write connection used by one thread at a time, a
read connection per reading thread, and `transaction()`, the group commit's door.

PRAGMA choices and why:
- `journal_mode=WAL`: readers never block the writer, and a commit is one append.
- `synchronous=NORMAL`, and for writes that a caller is told succeeded with data it
  cannot recreate (queued tasks, rollouts, resources, cancels) an fsync of the WAL after
  the commit and before the answer: what `synchronous=FULL` does at every commit, but
  done once for a whole group of writes (below), so they survive even a power cut. A
  group of claims only is not synced: it survives a crash of the daemon, and losing it
  to a power cut only means a task is handed out once more, which at-least-once allows.
- `wal_autocheckpoint` stays at its default (1,000 pages), so the log starts over once
  it is copied; but the server also runs `checkpoint()` on a thread of its own, which
  copies pages into the database while the writer goes on, so the checkpoint a commit
  runs when it crosses the threshold only has the last few pages to copy and does not
  hold up that commit and every write grouped with it.
- `journal_size_limit`: a commit of a large batch grows the WAL by its size; the limit
  truncates it again after the next checkpoint instead of keeping the space forever.
- `secure_delete=FAST`: what is deleted is wiped where that costs no extra write, and a
  freed page is left as it is until it is used again. Some builds of SQLite (Debian's)
  wipe every freed page, which made deleting 100 rollouts of 48 KB take 23 ms instead of
  2, the zeroed pages going through the log and its sync.
- Reads run on connections of their own (one per reading thread), so they never wait
  for a commit and a commit never waits for them.
- `application_id` marks the file as agl's, so `agl serve` refuses a database it did
  not make instead of writing into it; `user_version` numbers the schema, and
  `MIGRATIONS` brings an older file up to date when it is opened.

`transaction()` groups several writes into one commit (the server's group commit), each
in a savepoint or, on the server's fast path, none (then a failure undoes them all), and
the WAL is synced once after the commit if any write in the group needs it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from agl_cli.store.backups import RESTORING
from agl_cli.store.base import Store
from agl_cli.store.compaction import SUFFIX as COMPACTING
from agl_cli.store.errors import StorageError, StorageFullError
from agl_cli.store.files import JOURNAL_SUFFIX, LOG_SUFFIXES, beside, hold, log_of, put_aside
from agl_cli.store.records import Commit, Space
from agl_cli.store.schema import connect, open_connection

LOG_OPEN_TRIES = 500  # while no descriptor is free, the log is opened again every 10 ms, for 5 s
LOG_OPEN_PAUSE = 0.01
BACKUP_INFIX = ".backup-"  # a backup being made is `agl.db.backup-XXXXXXXX`, beside the database


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names (its device and inode), None if none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


class Database(Store):
    """One SQLite file: its write connection, a read connection per reading thread, and
    the transactions that group writes."""

    def __init__(self, path: str | Path, *, max_size: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path).absolute()  # connections opened later must find the same file
        self._holder: int | None = None  # the descriptor whose lock says the file is this store's
        self._conn = self._open()
        self._file = _identity(self.path)  # the file this connection writes, whatever its name comes to
        self._logs = {suffix: _identity(beside(self.path, suffix)) for suffix in LOG_SUFFIXES}
        self.orphaned_log: Path | None = None  # where the log of a database gone was put
        self._aside_lock = threading.Lock()
        self._delete_leftovers()
        self.max_size = max_size
        if max_size is not None:  # writes that would grow the file beyond it fail as a full disk does
            [(page_size,)] = self._conn.execute("PRAGMA page_size").fetchall()
            self._conn.execute(f"PRAGMA max_page_count = {max(1, max_size // page_size)}")
        self._lock = threading.RLock()  # the write connection is used by one thread at a time
        self._bare_write = contextlib.nullcontext(self._conn)
        self._group: _Group | None = None  # the open `transaction()`, if any
        self._readers = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._wal = log_of(self.path)
        self._log_lock = threading.Lock()
        self._log_fd: int | None = None  # the log, once a sync has opened it

    def _open(self) -> sqlite3.Connection:
        """The write connection, once the file is this store's alone (`files.hold`)."""
        self._holder = hold(self.path)
        try:
            return open_connection(self.path)
        except BaseException:
            os.close(self._holder)
            raise

    # transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self, isolate_writes: bool = True, sync: bool = True) -> Iterator[Commit]:
        """One commit for every write made inside; synced if any of them needs it.

        With `isolate_writes`, each write runs in a savepoint, so one that fails is undone
        alone. Without, a failing write leaves the transaction half-done: the caller must
        let the exception end it (everything is rolled back) and may then try again.
        """
        with self._lock:
            if self._group is not None:
                raise RuntimeError("transactions do not nest")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise storage_error(exc) from exc
            commit = Commit()
            group = self._group = _Group(threading.get_ident(), isolate_writes, commit)
            try:
                yield commit
                if not self._conn.in_transaction:  # SQLite undid all of it after an error (a full disk)
                    raise group.lost or StorageError("The store undid a transaction")
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the rollback of a failed commit may fail too
                        self._conn.execute("ROLLBACK")
                self._relearn()
                raise storage_error(exc) from exc
            finally:
                self._group = None
            if commit.durable_writes and sync:
                self.sync()

    def _write(self, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """One write: a savepoint inside an open `transaction()`, else a transaction of its
        own. `durable` writes are on disk before the transaction that holds them returns."""
        group = self._group
        if group is not None and not group.isolate_writes and group.owner == threading.get_ident():
            group.commit.durable_writes += durable  # the writer's group: the hot path, kept bare
            return self._bare_write
        return self._write_alone_or_isolated(durable)

    @contextmanager
    def _write_alone_or_isolated(self, durable: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            group = self._group
            if group is None:
                with self.transaction() as commit:
                    commit.durable_writes += durable
                    yield self._conn
                return
            group.commit.durable_writes += durable
            if not group.isolate_writes:
                yield self._conn
                return
            self._conn.execute("SAVEPOINT write")
            try:
                yield self._conn
            except BaseException as exc:
                failure = storage_error(exc)
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK TO write")
                    self._conn.execute("RELEASE write")
                else:  # SQLite rolled back the whole transaction: the other writes are gone too
                    group.lost = failure
                self._relearn()
                raise failure from exc
            self._conn.execute("RELEASE write")

    def _relearn(self) -> None:
        """Forget what undone writes taught whoever keeps state beside the database."""

    def sync(self) -> None:
        """fsync the WAL: every commit written to it so far is then on disk. Safe to run on
        another thread while the next transaction writes (it only flushes more)."""
        self._still_in_place()  # else its writes went to a file no restart finds
        fd = self._log()
        if fd is None:
            self._log_deleted()
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(
                f"The store could not be synced to disk ({exc.strerror or exc})", undone=False
            ) from exc

    def _still_in_place(self) -> None:
        """Refuse to go on once the database's name leads to another file or none, and move
        its log away from that name then, not at the stop that follows: a `kill -9` meanwhile
        would leave it there."""
        if _identity(self.path) != self._file:
            self._put_log_aside()
            raise StorageError(
                f"The database {self.path} was deleted, moved or replaced while agl ran", undone=False
            )

    def _log(self) -> int | None:
        """The write-ahead log, kept open (None if it was deleted): opened for each sync, a
        sync needed a free descriptor, and connections may take every one the daemon may
        have; the open failed then, and was taken for a failed sync, which stops it. An
        open that finds none free is tried again for a while: the writes wait for it."""
        with self._log_lock:
            if self._log_fd is not None and os.fstat(self._log_fd).st_nlink == 0:
                os.close(self._log_fd)
                self._log_fd = None
                return None
            tries = 0
            while self._log_fd is None:
                try:
                    self._log_fd = os.open(self._wal, os.O_RDONLY)
                    found = os.fstat(self._log_fd)
                    self._logs[LOG_SUFFIXES[0]] = found.st_dev, found.st_ino
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    tries += 1
                    if exc.errno not in (errno.EMFILE, errno.ENFILE) or tries >= LOG_OPEN_TRIES:
                        raise  # not synced: the writer takes it for a failed sync
                    time.sleep(LOG_OPEN_PAUSE)
            return self._log_fd

    def _log_deleted(self) -> NoReturn:
        """The log is gone from its name while the store is open: deleted by hand (SQLite
        removes it only once its last connection closes). SQLite goes on writing the file
        it holds open, which no restart finds: every commit since the last checkpoint,
        answered or not, would be lost to a crash. They are copied into the database
        through the write connection, which still holds the log, and writing stops."""
        with self._lock:  # the writer's group ends first; a new connection would make a new log
            try:
                [(busy, frames, copied)] = self._conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
            except sqlite3.Error:
                busy, frames, copied = 1, 0, -1
        outcome = (
            "what it held was copied into the database first"
            if not busy and copied == frames
            else "what it held since the last checkpoint could not be copied into the database"
        )
        raise StorageError(
            f"The write-ahead log {self._wal} was deleted while agl ran; {outcome}", undone=False
        )

    def checkpoint(self) -> None:
        # PASSIVE: copies what no reader still needs, without waiting for readers or writers.
        try:
            self._reader().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc

    def space(self) -> Space:
        [(pages, free, page_size)] = (
            self._reader()
            .execute(
                "SELECT page_count, freelist_count, page_size FROM pragma_page_count, pragma_freelist_count,"
                " pragma_page_size"
            )
            .fetchall()
        )
        return Space(pages * page_size, free * page_size, self._log_size(), self.max_size, self._disk_free())

    def _log_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except FileNotFoundError:  # checkpointed and removed
            return 0

    def _disk_free(self) -> int | None:
        return shutil.disk_usage(self.path.parent).free

    def backup(self) -> BinaryIO:
        """Copy every page in one step of SQLite's backup API: one read transaction, so
        the copy is of one commit while the writer goes on (the log keeps what it writes
        until the copy is done). The copy is written beside the database, not in a
        temporary directory that may be a small tmpfs, without a journal or a sync: it is
        a scratch file, read back and gone once it has been sent."""
        directory, prefix = self._backup_place()
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=directory)
            os.close(fd)  # an empty file is an empty database
        except OSError as exc:
            raise StorageError(
                f"No copy of the database can be made in {directory} ({exc.strerror})", undone=False
            ) from None
        try:
            target = sqlite3.connect(name)
            try:
                target.execute("PRAGMA journal_mode = OFF")
                target.execute("PRAGMA synchronous = OFF")
                self._reader().backup(target)
                target.execute("PRAGMA journal_mode = DELETE")  # a file alone: no log beside it
            finally:
                target.close()
            return open(name, "rb")
        except sqlite3.Error as exc:
            if isinstance(storage_error(exc), StorageFullError):
                raise StorageFullError(
                    f"No room in {directory} for a copy of the database", undone=False
                ) from None
            raise StorageError(f"The database could not be copied ({exc})", undone=False) from None
        finally:
            os.unlink(name)

    def _backup_place(self) -> tuple[Path, str]:
        """Where backups are made, and the start of their file names."""
        return self.path.parent, f"{self.path.name}{BACKUP_INFIX}"

    def _delete_leftovers(self) -> None:
        """The copies that a daemon stopped in the middle of a backup, or a stopped `agl
        compact` or `agl restore`, left beside the database: nothing reads them."""
        directory, prefix = self._backup_place()
        ours = (
            beside(self.path, copy + journal)
            for copy in (COMPACTING, RESTORING)
            for journal in ("", JOURNAL_SUFFIX)
        )
        for leftover in (*directory.glob(f"{glob.escape(prefix)}*"), *ours):
            leftover.unlink(missing_ok=True)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction on this thread's read connection: in WAL mode, every read
        inside sees the same commit, whatever the writer does meanwhile."""
        group = self._group
        if group is not None and group.owner == threading.get_ident():
            yield  # the write transaction this thread holds is consistent already
            return
        conn = self._reader()
        if conn.in_transaction:
            yield  # a snapshot already
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a query on this thread's read connection; inside a transaction, on the write
        connection, so that the transaction sees its own writes."""
        return self._rows(sql, params).fetchall()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """`_read`'s rows as they come: fetch them before the snapshot ends."""
        group = self._group
        if group is not None and group.owner == threading.get_ident():
            return self._conn.execute(sql, params)
        return self._reader().execute(sql, params)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            # A new connection would open the file put in its place, read this one's log
            # into it, or make an empty database where it was deleted (and drop that log).
            self._still_in_place()
            conn = self._readers.conn = connect(self.path)
            conn.execute("PRAGMA query_only=1")
            with self._lock:
                self._read_conns.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
            # On a disk gone read-only this fails, and only a hint for the planner is lost.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            self._conn.close()
        with self._log_lock:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
        if _identity(self.path) != self._file:  # unnoticed until now: no write since
            self._put_log_aside()
        if self._holder is not None:  # last, after every connection (`hold`)
            os.close(self._holder)
            self._holder = None

    def _put_log_aside(self) -> None:
        """Move the log of a database that was deleted, moved or replaced while open away
        from its name. SQLite could not copy it into its file (gone from here) and leaves it
        there, where it would read its pages into whatever database takes the name next (a
        restore, a file moved in) and corrupt it. Only the files this store opened move;
        SQLite goes on writing the log through the descriptors it holds."""
        with self._aside_lock:  # the writer, the syncer and readers may each notice
            ours = [
                suffix
                for suffix, known in self._logs.items()
                if known is not None and _identity(beside(self.path, suffix)) == known
            ]
            if not ours:
                return
            aside = put_aside(self.path, "orphaned")
            with contextlib.suppress(OSError):  # a directory gone read-only: nothing more can be done here
                for suffix in ours:
                    os.replace(beside(self.path, suffix), beside(aside, suffix))
                self.orphaned_log = log_of(aside)


def storage_error(exc: BaseException) -> BaseException:
    """What a failed write is to agl's callers: SQLite's complaints about the file itself
    (full, locked by another program, unwritable, damaged) as a `StorageError`; anything
    else as it is."""
    if not isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    ):
        return exc
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or "database or disk is full" in str(exc):
        return StorageFullError("The store is full (no space left on its disk, or its --max-db-size reached)")
    if name.startswith("SQLITE_BUSY") or "database is locked" in str(exc):
        return StorageError("The store's database is locked by another program")
    if name.startswith(
        ("SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN")
    ) or ("disk I/O error" in str(exc) or "readonly database" in str(exc) or "malformed" in str(exc)):
        return StorageError(f"The store could not be written ({exc})")
    return exc


class _Group:
    """The open transaction: the thread that holds it, whether each write runs in a
    savepoint, and its `Commit` (which counts the writes that must be synced)."""

    __slots__ = ("commit", "isolate_writes", "lost", "owner")

    def __init__(self, owner: int, isolate_writes: bool, commit: Commit) -> None:
        self.owner = owner
        self.isolate_writes = isolate_writes
        self.commit = commit
        self.lost: BaseException | None = None  # why SQLite undid the whole transaction, if it did
