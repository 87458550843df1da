"""OTLP/HTTP trace export at `/v1/traces`: how agentlightning 0.3.0's tracer and LLM
proxy send spans to the store, in protobuf, as any OpenTelemetry exporter sends them.

A span names its rollout and attempt with the attributes `agentlightning.rollout_id`
and `agentlightning.attempt_id` (its own, else its resource's), and may carry
`agentlightning.span_sequence_id`; one without gets the next number of its rollout.
Where 0.3.0 drops a span it cannot place without a word, or fails a whole export (after
keeping part of it) over one bad span, agl keeps every span it can and reports the rest
as rejected in the answer's `partial_success`, as OTLP provides.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.server.broker import broker_of
from agl_cli.server.limits import too_large_message
from agl_cli.server.requests import non_finite_name
from agl_cli.store_models import Span

PROTOBUF = "application/x-protobuf"
ROLLOUT_ID = "agentlightning.rollout_id"
ATTEMPT_ID = "agentlightning.attempt_id"
SEQUENCE_ID = "agentlightning.span_sequence_id"
UNNUMBERED = -1  # the store numbers these (store.add_spans)
# What one export may hold: OpenTelemetry's exporters send batches of 512 spans. Past it, a
# body of a few megabytes of empty spans (2 bytes each) would take gigabytes to convert.
MAX_SPANS_PER_EXPORT = 65_536
MAX_GZIP_MEMBERS = 64  # exporters send one; each costs a pass of its own
_GZIP_SLICE = 1 << 16  # fed to the inflater at a time, so that what it leaves over stays small
# A code beyond these (a newer OTLP's) is read as unset, as 0.3.0 reads it.
_STATUS_CODES = {ProtoStatus.STATUS_CODE_OK: "OK", ProtoStatus.STATUS_CODE_ERROR: "ERROR"}


async def export_traces(request: Request) -> Response:
    """Keep the spans of an OTLP export; those that cannot be kept are counted as rejected."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != PROTOBUF:
        return _bad_request(f"Unsupported Content-Type '{content_type}', expected '{PROTOBUF}'")
    body = await request.body()
    max_bytes: int = request.app.state.options.max_body_bytes
    gzipped = bool(body) and request.headers.get("content-encoding", "").lower() == "gzip"  # empty: no spans
    # Unzipping, parsing and converting take CPU in proportion to the body: off the event loop.
    read = await asyncio.to_thread(_read_export, body, gzipped, max_bytes)
    if isinstance(read, Response):
        return read
    spans, rejected, reason = read
    if spans:
        added = await broker_of(request).add_spans(spans, from_otlp=True)
        rejected += added.rejected
        reason = added.reason or reason
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=reason)
        )
    return Response(answer.SerializeToString(), media_type=PROTOBUF)


def _read_export(body: bytes, gzipped: bool, max_bytes: int) -> Response | tuple[list[Span], int, str]:
    try:
        if gzipped:
            body = gunzip(body, max_bytes)
        export = ExportTraceServiceRequest.FromString(body)
    except UnzippedTooLarge:
        return _refusal(413, too_large_message(max_bytes, unzipped=True))
    except (OSError, EOFError, zlib.error, DecodeError) as exc:
        return _bad_request(f"Unable to parse OTLP traces payload: {exc}")
    if _more_spans_than(export, MAX_SPANS_PER_EXPORT):
        return _refusal(
            413,
            f"An export may hold at most {MAX_SPANS_PER_EXPORT} spans (or groups of them); send them in batches.",
        )
    return spans_of(export)


def _more_spans_than(export: ExportTraceServiceRequest, limit: int) -> bool:
    """Whether the export holds more than `limit` spans, or groups of them (empty groups
    cost as much to read): counted with `len`, stopping as soon as either is over."""
    spans = groups = 0
    for resource_spans in export.resource_spans:
        groups += 1 + len(resource_spans.scope_spans)
        if groups > limit:
            return True
        spans += sum(len(scope_spans.spans) for scope_spans in resource_spans.scope_spans)
        if spans > limit:
            return True
    return False


async def not_implemented(request: Request) -> Response:
    """Metrics, logs and profiles are not kept (0.3.0 answers the same)."""
    return Response(status_code=501)


def spans_of(export: ExportTraceServiceRequest) -> tuple[list[Span], int, str]:
    """The export's spans as the store keeps them; how many cannot be, and why (the last reason)."""
    spans: list[Span] = []
    rejected, reason = 0, ""
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for proto in scope_spans.spans:
                attributes = _attributes(proto.attributes)
                rollout_id = attributes.get(ROLLOUT_ID, resource.get(ROLLOUT_ID))
                attempt_id = attributes.get(ATTEMPT_ID, resource.get(ATTEMPT_ID))
                if rollout_id is None or attempt_id is None:
                    rejected += 1
                    reason = f"A span names no {ROLLOUT_ID} or {ATTEMPT_ID}."
                    continue
                try:
                    spans.append(
                        Span.model_validate(
                            _span(
                                proto, attributes, resource, resource_spans.schema_url, rollout_id, attempt_id
                            )
                        )
                    )
                except ValidationError as exc:
                    rejected += 1
                    reason = _why_not(exc)
    return spans, rejected, reason


def _span(
    proto: ProtoSpan,
    attributes: dict[str, Any],
    resource: dict[str, Any],
    schema_url: str,
    rollout_id: Any,
    attempt_id: Any,
) -> dict[str, Any]:
    trace_id, span_id = _hex(proto.trace_id, 32), _hex(proto.span_id, 16)
    return {
        "rollout_id": str(rollout_id),
        "attempt_id": str(attempt_id),
        "sequence_id": _sequence_id(attributes.get(SEQUENCE_ID, resource.get(SEQUENCE_ID))),
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": _hex(proto.parent_span_id, 16) if proto.parent_span_id else None,
        "name": proto.name,
        "status": {
            "status_code": _STATUS_CODES.get(proto.status.code, "UNSET"),
            "description": proto.status.message or None,
        },
        "attributes": attributes,
        "events": [
            {
                "name": event.name,
                "attributes": _attributes(event.attributes),
                "timestamp": _seconds(event.time_unix_nano),
            }
            for event in proto.events
        ],
        "links": [
            {
                "context": _context(_hex(link.trace_id, 32), _hex(link.span_id, 16)),
                "attributes": _attributes(link.attributes) or None,
            }
            for link in proto.links
        ],
        "start_time": _seconds(proto.start_time_unix_nano),
        "end_time": _seconds(proto.end_time_unix_nano),
        "context": _context(trace_id, span_id),
        "parent": None,
        "resource": {"attributes": resource, "schema_url": schema_url},
    }


def _why_not(refused: ValidationError) -> str:
    """Why a span cannot be kept, naming what in it: an attribute's value that is a map,
    nothing, or a list of mixed kinds is the likely cause (0.3.0 fails on those too)."""
    error = refused.errors(include_url=False)[0]
    where = [str(part) for part in error["loc"]]
    if "attributes" in where[:-1]:
        at = where.index("attributes")
        holder = f" (of its {'.'.join(where[:at])})" if at else ""
        return (
            f"A span cannot be kept: its attribute '{where[at + 1]}'{holder} holds no string, number"
            " or boolean, nor a list of one kind of them."
        )
    return f"A span cannot be kept: {'.'.join(where)}: {error['msg']}."


def _context(trace_id: str, span_id: str) -> dict[str, Any]:
    return {"trace_id": trace_id, "span_id": span_id, "is_remote": False, "trace_state": {}}


def _hex(raw: bytes, width: int) -> str:
    return raw.hex().rjust(width, "0")


def _seconds(nanoseconds: int) -> float | None:
    if not nanoseconds:
        return None
    return nanoseconds / 1e9 if nanoseconds > 1e12 else float(nanoseconds)


def _sequence_id(value: Any) -> int:
    try:
        number = int(str(value))
    except ValueError:
        return UNNUMBERED
    return number if number >= 0 else UNNUMBERED


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "double_value" and not math.isfinite(value.double_value):
        return non_finite_name(value.double_value)  # null would not be an attribute's value
    return getattr(value, kind)


class UnzippedTooLarge(Exception):
    pass


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """A gzip body unzipped, member by member, never to more than `max_bytes`: a few
    kilobytes of zeros unzip to gigabytes, so the body limit holds for what is unzipped.
    The body is fed in slices: given all of it, zlib copies what follows a member's end
    (`unused_data`) at every member, which for many small members is quadratic."""
    unzipped = bytearray()
    view = memoryview(body)
    at = members = 0
    while at < len(body):
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise EOFError(f"the gzip body has more than {MAX_GZIP_MEMBERS} members")
        inflater = zlib.decompressobj(wbits=31)  # a gzip header and trailer
        while not inflater.eof:
            if at >= len(body):
                raise EOFError("the gzip stream ends before its end-of-stream marker")
            piece = view[at : at + _GZIP_SLICE]
            unzipped += inflater.decompress(piece, max_bytes + 1 - len(unzipped))
            if len(unzipped) > max_bytes:
                raise UnzippedTooLarge
            at += len(piece) - len(inflater.unused_data) - len(inflater.unconsumed_tail)
    return bytes(unzipped)


def _bad_request(message: str) -> Response:
    return _refusal(400, message)


def _refusal(status_code: int, message: str) -> Response:
    """An OTLP error: a `google.rpc.Status` in protobuf (3, INVALID_ARGUMENT)."""
    return Response(
        Status(code=3, message=message).SerializeToString(), status_code=status_code, media_type=PROTOBUF
    )


routes = [
    Route("/v1/traces", export_traces, methods=["POST"]),
    Route("/v1/metrics", not_implemented, methods=["POST"]),
    Route("/v1/logs", not_implemented, methods=["POST"]),
    Route("/v1/development/profiles", not_implemented, methods=["POST"]),
]
PATHS = frozenset(route.path for route in routes)  # their bodies are protobuf, not JSON
