"""JSON responses rendered with orjson, and the error bodies agl answers with."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import JSONResponse

from agl_cli.store import StorageFullError


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status_code: int, detail: str) -> ORJSONResponse:
    """An error with a one-sentence reason, in the `{"detail": ...}` shape 0.3.0 uses."""
    return ORJSONResponse({"detail": detail}, status_code=status_code)


def validation_error(exc: ValidationError, prefix: str = "body") -> ORJSONResponse:
    """A 422 listing every problem as `{type, loc, msg, input}` and, where pydantic says
    more (the values a field may take, its bounds), `ctx`: like 0.3.0's FastAPI."""
    details = []
    for e in exc.errors(include_url=False):
        # FastAPI reads each query parameter alone: one missing was given as nothing at all.
        given = None if prefix == "query" and e["type"] == "missing" else e.get("input")
        detail = {
            "type": e["type"],
            "loc": [prefix, *e["loc"]],
            "msg": e["msg"],
            "input": _jsonable(_redacted(given)),
        }
        if "ctx" in e:
            detail["ctx"] = {key: _context(value) for key, value in e["ctx"].items()}
        details.append(detail)
    return ORJSONResponse({"detail": details}, status_code=422)


def _context(value: Any) -> Any:
    """A value of an error's `ctx` as FastAPI's encoder writes it: an exception (a
    validator's) as `{}`, what JSON cannot carry as its text."""
    if isinstance(value, BaseException):
        return {}
    try:
        orjson.dumps(value)
    except TypeError:
        return str(value)
    return value


def json_decode_error(message: str, position: int) -> ORJSONResponse:
    detail = {
        "type": "json_invalid",
        "loc": ["body", position],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": message},
    }
    return ORJSONResponse({"detail": [detail]}, status_code=422)


def missing_body_error() -> ORJSONResponse:
    detail = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    return ORJSONResponse({"detail": [detail]}, status_code=422)


SECRET_KEYS = frozenset({"api_key"})
REDACTED = "***"


def _redacted(value: Any) -> Any:
    """An echoed input with its secrets hidden: an error is no place for an API key."""
    if isinstance(value, dict):
        return {k: REDACTED if k in SECRET_KEYS and v is not None else _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def _jsonable(value: Any) -> Any:
    try:
        orjson.dumps(value)
    except TypeError:
        return repr(value)
    return value


def storage_failure(exc: Exception) -> ORJSONResponse:
    """A write the store could not make: 507 when there is no room, else 503 (the daemon
    goes on serving reads; the write may be tried again once the disk is fixed)."""
    full = isinstance(exc, StorageFullError)
    response = error(507 if full else 503, str(exc))
    if not full:
        response.headers["Retry-After"] = "5"
    return response
