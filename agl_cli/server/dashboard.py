"""The dashboard's data under `/v1/dashboard`: a summary, a stream, and pages.

Everything here is aggregated or paged on the server, so that the page stays light with
a million tasks in the store and a hundred rollouts a second arriving: the summary reads
counters (`Store.counts`) and a reward chart of at most `CHART_POINTS` buckets per mode;
lists come a page at a time, newest first; the stream sends rollouts in one line each,
gathered for `GATHER_SECONDS`, and the summary once a second. Open streams share their
reads and the JSON made of them (`SharedReads`): a hundred dashboards cost little more
than one. A rollout's bulk (its
triplets, trace and logs) is summarised here, not shipped to the browser.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, NamedTuple

import orjson
from pydantic import Field
from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from agl_cli.api_limits import MAX_SEQ
from agl_cli.server import schemas
from agl_cli.server.broker import Broker, broker_of
from agl_cli.server.openapi import EVENT_STREAM, Endpoint, Param
from agl_cli.server.requests import int_param, query_param
from agl_cli.server.responses import ORJSONResponse, error
from agl_cli.server.shapes import resources_json, status_json, task_json
from agl_cli.server.shared_reads import SharedReads
from agl_cli.server.stream import Seq, event_stream, position_params, start_position
from agl_cli.server.wakeups import wait_for
from agl_cli.store import CHART_POINTS, RewardSeries, RolloutSummary, StoredRollout, TaskHistory, quoted
from agl_cli.store_models import WorkerQuery

MAX_PAGE = 500  # the most lines one page (or one stream event) carries
DEFAULT_PAGE = 25
MAX_SPANS = 500
MAX_TRIPLETS = 200
MAX_LOG_LINES = 200
PREVIEW_CHARS = 240
SUMMARY_SECONDS = 1.0
SUMMARY_SHARED_SECONDS = 0.25  # how old a summary the streams share may be when sent
GATHER_SECONDS = 0.25  # rollouts that arrive within this go out in one event


# --- the summary and the stream -------------------------------------------------------------


async def summary(request: Request) -> Response:
    """Counts per status, rates, and the reward of the whole run per mode over time."""
    return ORJSONResponse(await summary_json(request))


async def summary_json(request: Request) -> dict[str, Any]:
    snapshot, series = await broker_of(request).overview(CHART_POINTS)
    return {
        "time": broker_of(request).now(),
        "status": status_json(request, snapshot),
        "rewards": chart_json(series),
    }


def chart_json(series: RewardSeries) -> dict[str, Any]:
    """The reward series as one line of columns per mode (the store gives them by mode)."""
    lines: dict[str | None, dict[str, Any]] = {}
    for point in series.points:
        line = lines.setdefault(
            point.mode, {"mode": point.mode, "times": [], "means": [], "rollouts": [], "rewarded": []}
        )
        line["times"].append(point.time)
        line["means"].append(point.mean)
        line["rollouts"].append(point.rollouts)
        line["rewarded"].append(point.rewarded)
    return {"width": series.width, "lines": list(lines.values())}


async def stream_dashboard(request: Request) -> Response:
    """Server-sent events: rollouts in one line each as they arrive (`rollouts` events,
    whose data is a `RolloutLines` and whose id is its last sequence number), and the
    summary once a second (`summary` events, whose data is a `DashboardSummary`).
    `Last-Event-ID` or `since` says where the rollouts start."""
    broker = broker_of(request)
    after = await start_position(request, broker)
    return event_stream(_events(request, after))


class Lines(NamedTuple):
    """A `rollouts` event: its data, and the last sequence number in it."""

    data: str
    last_seq: int
    full: bool  # as many lines as an event holds: more may be waiting


_LINES: SharedReads[Lines | None] = SharedReads()
_SUMMARIES: SharedReads[str] = SharedReads(max_age=SUMMARY_SHARED_SECONDS)


async def _events(request: Request, after: int) -> AsyncIterator[ServerSentEvent]:
    broker = broker_of(request)
    summary_due = 0.0
    while not broker.closing:
        changed = broker.watch_rollouts()  # before the read: a rollout stored meanwhile wakes us
        # Keyed by `changed` too: a read shared is one begun since the last rollout stored.
        lines = await _LINES.get((broker, after, changed), functools.partial(_lines, broker, after))
        if lines:
            after = lines.last_seq
            yield ServerSentEvent(data=lines.data, id=str(after), event="rollouts")
        if time.monotonic() >= summary_due:
            summary = await _SUMMARIES.get(broker, functools.partial(_summary_text, request))
            yield ServerSentEvent(data=summary, event="summary")
            summary_due = time.monotonic() + SUMMARY_SECONDS
        if not (lines and lines.full):
            await wait_for(changed, max(summary_due - time.monotonic(), 0.0))
            if broker.closing:  # woken by the shutdown: end before its grace for streams runs out
                break
            await asyncio.sleep(GATHER_SECONDS)


async def _lines(broker: Broker, after: int) -> Lines | None:
    lines = await broker.rollout_summaries(after, MAX_PAGE)
    if not lines:
        return None
    body = {"rollouts": [line_json(line) for line in lines], "last_seq": lines[-1].seq}
    return Lines(orjson.dumps(body).decode(), lines[-1].seq, len(lines) == MAX_PAGE)


async def _summary_text(request: Request) -> str:
    return orjson.dumps(await summary_json(request)).decode()


# --- pages ------------------------------------------------------------------------------------


async def recent_rollouts(request: Request) -> Response:
    """Kept rollouts newest first, in one line each; `before` pages back through them."""
    before = int_param(request, "before", MAX_SEQ, 0, MAX_SEQ)
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    lines, last_seq = await broker_of(request).recent_rollouts(before, limit)
    return ORJSONResponse({"rollouts": [line_json(line) for line in lines], "last_seq": last_seq})


def line_json(line: RolloutSummary) -> dict[str, Any]:
    started = line.started_time
    return {
        "seq": line.seq,
        "rollout_id": line.rollout_id,
        "mode": line.mode,
        "reward": line.reward,
        "attempt": line.attempt,
        "unsolicited": line.unsolicited,
        "received_time": line.received_time,
        "duration": None if started is None else max(line.received_time - started, 0.0),
    }


async def failures(request: Request) -> Response:
    """Tasks that failed or needed more than one attempt, latest claim first, each with
    every attempt at it."""
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, MAX_SEQ)
    found = await broker_of(request).troubled_tasks(limit + 1, offset)
    return ORJSONResponse(
        {"tasks": [history_json(history) for history in found[:limit]], "has_more": len(found) > limit}
    )


def history_json(history: TaskHistory) -> dict[str, Any]:
    return {"task": task_json(history.record), "attempts": history.attempts}


async def workers(request: Request) -> Response:
    """The workers the store API has heard of, by id, with their last heartbeat and what
    they run now (the legacy protocol names no workers)."""
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, MAX_SEQ)
    query = WorkerQuery(sort_by="worker_id", limit=limit, offset=offset)
    page = await broker_of(request).workers(query)
    return ORJSONResponse({"workers": page["items"], "total": page["total"]})


async def resources(request: Request) -> Response:
    """Published bundles, latest publish first, API keys hidden."""
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, MAX_SEQ)
    broker = broker_of(request)
    updates, total = await broker.recent_resources(limit, offset)
    latest = broker.latest_resources()
    return ORJSONResponse(
        {
            "resources": [resources_json(update, reveal=False) for update in updates],
            "total": total,
            "latest_id": latest.resources_id if latest else None,
        }
    )


# --- one rollout --------------------------------------------------------------------------------


async def rollout_detail(request: Request) -> Response:
    """A rollout (or a task without a result yet): its task and attempts, its triplets
    and logs summarised, and the spans of its trace."""
    return await _detail(request, request.path_params["rollout_id"])


async def rollout_detail_by_query(request: Request) -> Response:
    """The same as `GET /v1/dashboard/rollouts/{rollout_id}`, for an id in the query: a
    browser takes the path segments `.` and `..` (even written `%2E`) out of a path, so
    the page asks here for any id."""
    rollout_id = query_param(request, "rollout_id")
    if rollout_id is None:
        return error(422, "Query parameter 'rollout_id' is required.")
    return await _detail(request, rollout_id)


async def _detail(request: Request, rollout_id: str) -> Response:
    detail = await broker_of(request).rollout_detail(rollout_id, MAX_SPANS)
    if detail is None:
        return error(404, f"No rollout or task with id {quoted(rollout_id)}.")
    spans = [span._asdict() for span in detail.spans]
    spans_total = detail.spans_total
    if not spans and detail.stored is not None and detail.stored.rollout.trace:
        trace = detail.stored.rollout.trace
        spans = [line for line in map(trace_span_json, trace[:MAX_SPANS]) if line is not None]
        spans_total = len(trace)
    task = detail.history.record.task if detail.history else None
    sent = detail.stored.completed().task if detail.stored else None
    known = task or sent
    return ORJSONResponse(
        {
            "rollout_id": rollout_id,
            "mode": known.mode if known else None,
            "input": known.input if known else None,
            "task": history_json(detail.history) if detail.history else None,
            "result": result_json(detail.stored) if detail.stored else None,
            "spans": spans,
            "spans_total": spans_total,
        }
    )


def result_json(stored: StoredRollout) -> dict[str, Any]:
    rollout = stored.rollout
    triplets = rollout.triplets or []
    logs = rollout.logs or []
    return {
        "seq": stored.seq,
        "received_time": stored.received_time,
        "attempt": stored.attempt,
        "unsolicited": stored.unsolicited,
        "final_reward": rollout.final_reward,
        "metadata": rollout.metadata,
        "triplets": [
            {
                "reward": triplet.reward,
                "prompt_tokens": token_count(triplet.prompt),
                "response_tokens": token_count(triplet.response),
                "prompt": preview(triplet.prompt),
                "response": preview(triplet.response),
            }
            for triplet in triplets[:MAX_TRIPLETS]
        ],
        "triplets_total": len(triplets),
        "logs": [line[:1000] for line in logs[-MAX_LOG_LINES:]],
        "logs_total": len(logs),
    }


def token_count(value: Any) -> int | None:
    """How many tokens a prompt or response holds, where it says: a list of token ids, or
    an object with one under `token_ids` (what Agent Lightning's tracers record)."""
    if isinstance(value, Mapping):
        value = value.get("token_ids")
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        return len(value)
    return None


def preview(value: Any) -> str:
    """The start of a prompt or response as text: its text if it has one, else its JSON."""
    if isinstance(value, Mapping) and isinstance(value.get("text"), str):
        value = value["text"]
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def trace_span_json(span: Any) -> dict[str, Any] | None:
    """A span of a legacy rollout's `trace` (OpenTelemetry's JSON of a span), if it is one."""
    if not isinstance(span, Mapping):
        return None
    context = _mapping(span.get("context"))
    status = _mapping(span.get("status"))
    parent = span.get("parent_id")
    if parent is None and isinstance(span.get("parent"), Mapping):
        parent = span["parent"].get("span_id")
    return {
        "name": str(span.get("name", "")),
        "span_id": _text(span.get("span_id") or context.get("span_id")),
        "parent_id": _text(parent),
        "attempt_id": None,
        "start_time": epoch_seconds(span.get("start_time")),
        "end_time": epoch_seconds(span.get("end_time")),
        "status": _text(status.get("status_code")),
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def epoch_seconds(value: Any) -> float | None:
    """A span's time as epoch seconds: from an ISO 8601 text (what OpenTelemetry writes)
    or a number in seconds, milliseconds, microseconds or nanoseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        for scale in (1e9, 1e6, 1e3):
            if number > 1e7 * scale:  # later than 1970-04 in that unit: it is that unit
                return number / scale
        return number
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.timestamp()
    return None


# --- the route table --------------------------------------------------------------------------

_Page = Annotated[int, Field(ge=1, le=MAX_PAGE)]
_LIMIT = Param("limit", _Page, f"How many at most (default {DEFAULT_PAGE}).")
_OFFSET = Param("offset", Seq, "How many to skip.")

ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/v1/dashboard", summary, "The dashboard's summary", {200: schemas.DashboardSummary}),
    Endpoint(
        "GET", "/v1/dashboard/stream", stream_dashboard, "Follow the run: rollouts and the summary",
        {200: schemas.DashboardEvent, 422: None},
        params=position_params("Send rollouts after this sequence number, or after the last one."),
        media_type=EVENT_STREAM,
    ),
    Endpoint(
        "GET", "/v1/dashboard/rollouts", recent_rollouts, "Recent rollouts, newest first",
        {200: schemas.RolloutLines, 422: None},
        params=(Param("before", Seq, "Only rollouts with a smaller sequence number."), _LIMIT),
    ),
    Endpoint(
        "GET", "/v1/dashboard/rollouts/{rollout_id:rest}", rollout_detail, "One rollout in detail",
        {200: schemas.RolloutDetail, 404: None},
    ),
    Endpoint(
        "GET", "/v1/dashboard/rollout", rollout_detail_by_query, "One rollout in detail, its id in the query",
        {200: schemas.RolloutDetail, 404: None, 422: None},
        params=(Param("rollout_id", str, "The rollout's id, whatever it is ('.', '..' or empty).", required=True),),
    ),
    Endpoint(
        "GET", "/v1/dashboard/failures", failures, "Failed and retried tasks with their attempts",
        {200: schemas.FailureList, 422: None}, params=(_LIMIT, _OFFSET),
    ),
    Endpoint(
        "GET", "/v1/dashboard/workers", workers, "Workers", {200: schemas.WorkerList, 422: None},
        params=(_LIMIT, _OFFSET),
    ),
    Endpoint(
        "GET", "/v1/dashboard/resources", resources, "Resources, latest first",
        {200: schemas.ResourcesPage, 422: None}, params=(_LIMIT, _OFFSET),
    ),
]  # fmt: skip
