"""A store-API query's page as its JSON answer, written on the thread that reads it.

An unpaged query over a big queue (0.3.0's `FastAlgorithm` sends one each polling
interval) is hundreds of thousands of items. Made whole, as objects then as one JSON
document, it took the daemon past half a gigabyte for 300,000 and held every claim while
the objects were built and freed. Here the reading thread turns the page into JSON a
chunk of items at a time, into a spool that stays in memory while small and goes to an
unnamed temporary file beyond `IN_MEMORY`; the answer then streams from the file, with
its length known. The read holds its snapshot only while it writes, never while a slow
client reads. A client reads at its own pace, holding its file meanwhile, and the routes
are open: the files of the pages being sent hold `SPOOLED_AT_ONCE` at most (`Spools`), or
enough slow readers would fill the disk the store writes to.
"""

from __future__ import annotations

import contextlib
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio.to_thread
import orjson
from starlette.responses import Response, StreamingResponse

from agl_cli.store import QueryPage, StorageError

IN_MEMORY = 1 << 20  # a page's JSON up to this size is answered from memory
PIECE = 1 << 18  # what a spooled answer reads and sends at a time
SPOOLED_AT_ONCE = 1 << 30  # the bytes of temporary files the pages being sent may hold
MEDIA_TYPE = "application/json"


class PageBody:
    """A page's JSON, whole in memory or spooled to a temporary file."""

    def __init__(self, page: QueryPage) -> None:
        """Write `page` (on the thread whose snapshot reads it)."""
        self._spool = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)  # noqa: SIM115 (the answer closes it)
        try:
            self._spool.write(b'{"items":[')
            separator = b""
            for chunk in page.chunks:
                self._spool.write(separator + orjson.dumps(chunk)[1:-1])
                separator = b","
            self._spool.write(b"]," + orjson.dumps(page.about())[1:])
            self.size = self._spool.tell()
            self._spool.seek(0)
            # Closed once sent, or once let go unsent, and then `when_closed` is told.
            self._on_close: list[Callable[[], object]] = []
            self.close = weakref.finalize(self, _close, self._spool, self._on_close)
        except OSError as exc:  # the temporary directory's disk is full or failing
            with contextlib.suppress(OSError):
                self._spool.close()
            reason = f"The page could not be written to a temporary file ({exc.strerror})"
            raise StorageError(reason, undone=False) from None
        except BaseException:
            self._spool.close()
            raise

    def when_closed(self, call: Callable[[], object]) -> None:
        self._on_close.append(call)

    @property
    def spooled(self) -> bool:
        """Whether it is in a temporary file, not in memory."""
        return self.size > IN_MEMORY

    def response(self) -> Response:
        if not self.spooled:
            try:
                return Response(self._spool.read(), media_type=MEDIA_TYPE)
            finally:
                self.close()
        headers = {"content-length": str(self.size)}
        return StreamingResponse(self._pieces(), media_type=MEDIA_TYPE, headers=headers)

    async def _pieces(self) -> AsyncIterator[bytes]:
        try:
            while piece := await anyio.to_thread.run_sync(self._spool.read, PIECE):
                yield piece
        finally:
            self.close()


class Spools:
    """The temporary files of the pages being sent, `limit` bytes of them at most: a
    page beyond is refused (503, try again) and its file let go at once."""

    def __init__(self) -> None:
        self.limit = SPOOLED_AT_ONCE
        self.held = 0

    def take(self, body: PageBody) -> None:
        """Count `body`'s file until it is closed; a `StorageError` beyond the limit."""
        if not body.spooled:
            return
        if self.held + body.size > self.limit:
            body.close()
            raise StorageError(
                f"The answers being sent hold {self.held:,} bytes of temporary files already"
                f" (at most {self.limit:,}), and this one would take {body.size:,} more; try again shortly",
                undone=False,
            )
        self.held += body.size
        body.when_closed(partial(self._give_back, body.size))

    def _give_back(self, size: int) -> None:
        self.held -= size


def _close(spool: tempfile.SpooledTemporaryFile[bytes], on_close: list[Callable[[], object]]) -> None:
    spool.close()
    for call in on_close:
        call()
