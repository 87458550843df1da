"""`GET /v1/rollouts/stream`: kept rollouts as server-sent events, resumable by sequence number.

The stream first replays what was stored after the reader's position, page by page,
then sleeps on the broker until a worker reports a rollout: no polling. Streams at the
same position share one read of each page, and its JSON (`SharedReads`). Every event's
id is the rollout's sequence number, so a client that reconnects with `Last-Event-ID`
misses nothing and sees nothing twice. When the daemon begins to shut down, the broker
wakes the stream and it ends, so an open stream never holds up a graceful stop.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from agl_cli.api_limits import MAX_SEQ, STREAM_PING_SECONDS, is_seq
from agl_cli.server.broker import Broker, broker_of
from agl_cli.server.openapi import Param
from agl_cli.server.requests import BadRequest, query_param
from agl_cli.server.responses import error
from agl_cli.server.shared_reads import SharedReads
from agl_cli.server.wakeups import wait_for
from agl_cli.store import StoredRollout

SINCE_NOW = Literal["now"]
LAST_EVENT_ID = "Last-Event-ID"
Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
PAGE = 200
# The JSON a stream reads at once: its events wait in memory while the reader takes them,
# so one that stops reading holds this much, not a whole page of `PAGE_BYTES` parsed.
STREAM_PAGE_BYTES = 512 << 10
Events = tuple[tuple[int, str], ...]  # a page as (sequence number, data) of each event
# How long a stream has to end by itself once the daemon stops (the broker wakes it at once)
# before the SSE library cuts it off, mid-event, with an error in the log.
SHUTDOWN_GRACE = 1.0
IDLE_WAKEUP = 300.0  # the broker wakes the stream; this only re-reads now and then, as a safety net


async def stream_rollouts(request: Request) -> Response:
    """Every kept rollout after the reader's position, oldest first, then live ones as they
    arrive; `Last-Event-ID` wins over `since`, and `since=now` skips what is already stored."""
    broker = broker_of(request)
    after = await start_position(request, broker)
    return event_stream(_events(broker, after))


def event_stream(events: AsyncIterator[ServerSentEvent]) -> Response:
    """`events` as server-sent events, kept open by a ping, and ended cleanly at shutdown."""
    return EventSourceResponse(events, ping=STREAM_PING_SECONDS, shutdown_grace_period=SHUTDOWN_GRACE)


async def start_position(request: Request, broker: Broker) -> int:
    """Where a stream starts: after `Last-Event-ID`, else after `since` (`now`: the last)."""
    last_event_id = request.headers.get(LAST_EVENT_ID, "").strip()
    if last_event_id:
        if not is_seq(last_event_id):
            raise BadRequest(
                error(
                    422,
                    f"The {LAST_EVENT_ID} header must be a whole number up to {MAX_SEQ}, not '{last_event_id}'.",
                )
            )
        return int(last_event_id)
    since = query_param(request, "since")
    if since is None:
        return 0
    if since == "now":
        return await broker.last_seq()
    if not is_seq(since):
        raise BadRequest(
            error(
                422,
                f"Query parameter 'since' must be a whole number up to {MAX_SEQ} or 'now', not '{since}'.",
            )
        )
    return int(since)


def position_params(since: str) -> tuple[Param, Param]:
    """How a stream's route describes where it starts (what `start_position` reads)."""
    return (
        Param("since", Seq | SINCE_NOW, since),
        Param(LAST_EVENT_ID, Seq, "Resume after this sequence number; wins over `since`.", "header"),
    )


_PAGES: SharedReads[Events] = SharedReads()


async def _events(broker: Broker, after: int) -> AsyncIterator[ServerSentEvent]:
    while not broker.closing:
        changed = broker.watch_rollouts()
        # Keyed by `changed` too: a read shared is one begun since the last rollout stored.
        events = await _PAGES.get((broker, after, changed), functools.partial(_page, broker, after))
        if not events:
            # `changed` was taken before the read, so a rollout stored since is not missed.
            await wait_for(changed, IDLE_WAKEUP)
        for after, data in events:
            yield ServerSentEvent(data=data, id=str(after), event="rollout")


async def _page(broker: Broker, after: int) -> Events:
    """A page's events as text: parsed, rollouts with their token ids take several times
    as much, held for as long as the reader does not read."""
    page = await broker.rollouts_after(after, PAGE, STREAM_PAGE_BYTES)
    return tuple((stored.seq, orjson.dumps(rollout_json(stored)).decode()) for stored in page)


def rollout_json(stored: StoredRollout) -> dict[str, Any]:
    """A kept rollout with its own fields first (what its worker left out of `task` taken
    from agl's task), then agl's bookkeeping."""
    return {
        **stored.completed().model_dump(mode="json"),
        "seq": stored.seq,
        "received_time": stored.received_time,
        "attempt": stored.attempt,
        "unsolicited": stored.unsolicited,
    }
