"""A store-API query's page as its JSON answer, written on the thread that reads it.

An unpaged query over a big queue (0.3.0's `FastAlgorithm` sends one each polling
interval) is hundreds of thousands of items. Made whole, as objects then as one JSON
document, it took the daemon past half a gigabyte for 300,000 and held every claim while
the objects were built and freed. Here the reading thread turns the page into JSON a
chunk of items at a time, into a spool that stays in memory while small and goes to an
unnamed temporary file beyond `IN_MEMORY`; the answer then streams from the file, with
its length known. The read holds its snapshot only while it writes, never while a slow
client reads.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator

import anyio.to_thread
import orjson
from starlette.responses import Response, StreamingResponse

from agl_cli.store import QueryPage, StorageError

IN_MEMORY = 1 << 20  # a page's JSON up to this size is answered from memory
PIECE = 1 << 18  # what a spooled answer reads and sends at a time
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
        except OSError as exc:  # the temporary directory's disk is full or failing
            with contextlib.suppress(OSError):
                self._spool.close()
            reason = f"The page could not be written to a temporary file ({exc.strerror})"
            raise StorageError(reason, undone=False) from None
        except BaseException:
            self._spool.close()
            raise

    def response(self) -> Response:
        if self.size <= IN_MEMORY:
            with self._spool:
                return Response(self._spool.read(), media_type=MEDIA_TYPE)
        headers = {"content-length": str(self.size)}
        return StreamingResponse(self._pieces(), media_type=MEDIA_TYPE, headers=headers)

    async def _pieces(self) -> AsyncIterator[bytes]:
        with self._spool:
            while piece := await anyio.to_thread.run_sync(self._spool.read, PIECE):
                yield piece
