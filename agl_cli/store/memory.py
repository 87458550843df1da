"""The in-memory store, for tests and throwaway runs: the SQLite store on a database that
lives in memory, so both behave alike by construction and nothing is kept.

Nothing here waits on a disk (it is not `blocking`): one connection serves reads and
writes, all made by the server's writer thread, each read between two groups of writes,
so a read sees the store as of one moment; there is nothing to sync or checkpoint. A
backup is such a read too (writes wait for it), made in the temporary directory.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agl_cli.store.schema import open_memory_connection
from agl_cli.store.sqlite import SQLiteStore


class MemoryStore(SQLiteStore):
    kind = "memory"
    blocking = False

    def __init__(self, **options: Any) -> None:
        super().__init__(":memory:", **options)  # a name only: `_open` makes no file

    def _open(self) -> sqlite3.Connection:
        return open_memory_connection()

    def _reader(self) -> sqlite3.Connection:
        return self._conn

    def sync(self) -> None:
        pass

    def checkpoint(self) -> None:
        pass

    def _log_size(self) -> int:
        return 0

    def _disk_free(self) -> int | None:
        return None

    def _backup_place(self) -> tuple[Path, str]:
        return Path(tempfile.gettempdir()), "agl-memory.backup-"

    def _delete_leftovers(self) -> None:
        pass  # nothing beside it; and the temporary directory is shared: another daemon's may be under way

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        yield
