"""Reading request bodies and query parameters with a clear 4xx for anything bad."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from agl_cli.api_limits import FLOAT_DIGITS, MAX_DEPTH, too_deep
from agl_cli.server.responses import (
    ORJSONResponse,
    error,
    json_decode_error,
    missing_body_error,
    validation_error,
)

M = TypeVar("M", bound=BaseModel)
# What some writers put before UTF-8 text; 0.3.0's servers, on Python's JSON reader, skip it.
UTF8_BOM = b"\xef\xbb\xbf"
Tamed = Literal["null", "names"]  # what `with_numbers_tamed` makes of NaN and infinities


class BadRequest(Exception):
    """Raised while reading a request; carries the response that explains why."""

    def __init__(self, response: ORJSONResponse) -> None:
        super().__init__(response.body)
        self.response = response


async def read_model(request: Request, model: type[M]) -> M:
    return parse_model(await request.body(), model)


# A scanned part's digits as 0, exponents as e and brackets as [, for `plain_scanned`.
_NUMBERS = bytes.maketrans(b"0123456789E{", b"0000000000e[")
_DIGIT = ord("0")
# A number with more integer digits than this may be past a float's range (orjson refuses it).
_LONG_NUMBER = b"0" * FLOAT_DIGITS


def parse_json(body: bytes, tame: Tamed | None = None) -> Any:
    """A request body as JSON, or the 422 that FastAPI would give for it; with `tame`, the
    numbers JSON cannot carry are read as that makes them (`with_numbers_tamed`)."""
    if not body.strip():
        raise BadRequest(missing_body_error())
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if body.startswith(UTF8_BOM):
            return parse_json(body.removeprefix(UTF8_BOM), tame)
        tamed = with_numbers_tamed(body, tame) if tame else None
        if tamed is None:
            raise BadRequest(json_decode_error(exc.msg, exc.pos)) from None
        parsed = orjson.loads(tamed)
    # Nesting deeper than MAX_DEPTH takes more than twice as many bytes; a shorter body
    # needs no look (and counting brackets costs as much as the look itself).
    if len(body) > 2 * MAX_DEPTH and too_deep(parsed):
        raise BadRequest(json_decode_error(f"nested more than {MAX_DEPTH} levels deep", 0))
    return parsed


def plain_scanned(part: bytes, level: int) -> bool:
    """Whether a part of a body that msgspec only scanned (`msgspec.Raw`), `level` levels
    deep, surely has no number out of a float's range (no exponent, no 309 digits in a row)
    and nests no deeper than allowed (it cannot nest deeper than it has brackets): what
    msgspec's scan leaves unchecked of what orjson refuses, but for UTF-8."""
    if part[:1] == b'"':
        return True  # a string: no number, no nesting
    numbers = part.translate(_NUMBERS)
    return (
        not _exponent_in(numbers)
        and _LONG_NUMBER not in numbers
        # levels as MAX_DEPTH counts them: those above the part, its own, the innermost value
        and level + numbers.count(b"[") + 1 <= MAX_DEPTH
    )


def without_numbers(text: bytes) -> bool:
    """Whether `text` surely has no number out of a float's range: no digit followed by an
    exponent's e, no 309 digits in a row. For text of many e's, where a search for the
    pair is quicker than `_exponent_in`'s."""
    numbers = text.translate(_NUMBERS)
    return b"0e" not in numbers and _LONG_NUMBER not in numbers


def _exponent_in(numbers: bytes) -> bool:
    """Whether an e follows a digit. Each e is found on its own (token ids have none):
    a search for the pair would stop at every digit."""
    at = numbers.find(b"e", 1)
    while at != -1:
        if numbers[at - 1] == _DIGIT:
            return True
        at = numbers.find(b"e", at + 1)
    return False


def parse_model(body: bytes, model: type[M], tame: Tamed | None = None) -> M:
    """A request body checked against `model`, or the 422 that lists what is wrong."""
    return validated(parse_json(body, tame), model)


def validated(payload: Any, model: type[M]) -> M:
    """A parsed body checked against `model`, or the 422 that lists what is wrong. As
    FastAPI checks a body (`from_attributes`, which parsed JSON has none of), so that one
    that is no object is refused in its words (`model_attributes_type`)."""
    try:
        return model.model_validate(payload, from_attributes=True)
    except ValidationError as exc:
        raise BadRequest(validation_error(exc)) from None


def with_numbers_tamed(body: bytes, tamed_as: Tamed) -> bytes | None:
    """`body` with its NaN, Infinity and numbers beyond a float's range written as null or
    as their names (`"NaN"`, `"Infinity"`, `"-Infinity"`), if it has any and is JSON but
    for them; else None.

    0.3.0's clients write JSON with Python's writer, which writes a NaN (a reward, a span's
    attribute) as `NaN`, and 0.3.0's servers read it. null is what JSON writers make of
    such a number: a worker's report takes it (a missing reward). A span's attribute
    cannot be null, so the store API keeps names, as OTLP's JSON writes them: agentlightning
    reads a reward of "NaN" back as NaN. An integer beyond 64 bits becomes the nearest
    float, as orjson reads one in a body with nothing to tame.
    """
    tamed = False

    def whole(text: str) -> int | float | str | None:  # as orjson reads one: past 64 bits, a float
        if len(text) <= 20 and -(2**63) <= (number := int(text)) < 2**64:
            return number
        return finite(text)

    def finite(text: str) -> float | str | None:
        number = float(text)
        return number if math.isfinite(number) else constant(non_finite_name(number))

    def constant(name: str) -> str | None:  # NaN, Infinity, -Infinity
        nonlocal tamed
        tamed = True
        return name if tamed_as == "names" else None

    try:
        parsed = json.loads(body.decode(), parse_float=finite, parse_int=whole, parse_constant=constant)
    except (ValueError, RecursionError):
        return None
    if not tamed:
        return None
    try:
        return orjson.dumps(parsed)
    except orjson.JSONEncodeError:  # a lone surrogate, nested too deeply
        return None


def non_finite_name(number: float) -> str:
    """How OTLP's JSON (proto3's mapping) writes a number JSON cannot carry."""
    return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"


def query_param(request: Request, name: str) -> str | None:
    """Query parameter `name` of agl's own API, or a 422 if it is given more than once: a
    second status to list, say, would otherwise be dropped without a word. (The worker
    routes and the store API take the last, or every, value, as 0.3.0's FastAPI does.)"""
    given = request.query_params.getlist(name)
    if len(given) > 1:
        raise BadRequest(error(422, f"Query parameter '{name}' is given more than once."))
    return given[0] if given else None


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = query_param(request, name)
    return number_param({} if raw is None else {name: raw}, name, default, low, high, int)


N = TypeVar("N", int, float)
_KINDS: dict[Callable[[str], Any], str] = {float: "a number", int: "a whole number"}
# What a query's number is written as: ASCII, as JSON writes one (Python's own readers also
# take `1_0`, surrounding spaces, and digits of other scripts such as `٣`).
_WRITTEN: dict[Callable[[str], Any], re.Pattern[str]] = {
    float: re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"),
    int: re.compile(r"-?[0-9]+"),
}


def number_param(
    params: Mapping[str, str], name: str, default: N, low: N, high: N, parse: Callable[[str], N]
) -> N:
    """Query parameter `name` as a number between `low` and `high`, else a 422 that says so."""
    kind = _KINDS[parse]
    raw = params.get(name)
    if raw is None:
        return default
    try:
        if not _WRITTEN[parse].fullmatch(raw):
            raise ValueError(raw)
        value = parse(raw)
    except ValueError:
        raise BadRequest(error(422, f"Query parameter '{name}' must be {kind}, not '{raw}'.")) from None
    if not low <= value <= high:  # also refuses NaN
        raise BadRequest(
            error(422, f"Query parameter '{name}' must be between {_show(low)} and {_show(high)}.")
        )
    return value


def _show(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def bool_param(request: Request, name: str, default: bool = False) -> bool:
    raw = query_param(request, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise BadRequest(error(422, f"Query parameter '{name}' must be true or false, not '{raw}'."))


def choice_param(request: Request, name: str, choices: Sequence[str]) -> str | None:
    raw = query_param(request, name)
    if raw is None or raw in choices:
        return raw
    raise BadRequest(
        error(422, f"Query parameter '{name}' must be one of: {', '.join(choices)}; not '{raw}'.")
    )
