"""Reading a worker's report (`POST /rollout`) without building its token ids.

agl reads three fields of a report and keeps the rest. Parsing all of it into Python
objects, to validate it and free it again, was most of the event loop's work on a
realistic report: a few thousand token ids are a few thousand Python integers. So
msgspec first reads it against a mirror of `models.Rollout` in which each triplet's
`prompt` and `response`, where the token ids are, are only scanned, not built.

msgspec's scan checks their JSON as strictly as orjson reads it but for three things,
checked here after it: UTF-8, numbers out of a float's range, and nesting. Whatever this
cannot vouch for (any of those, a field the mirror does not know, a value pydantic would
coerce) goes to pydantic, which gives the 422 a bad report has always had.

A report read this way is kept as msgspec writes back what it read: the scanned parts as
they came, the rest as the values read. A key given twice keeps its last value, as in
every reader of agl's; the earlier one, which no check here saw, is not kept, so nothing
kept is ever unreadable (it is the one case where this way accepts a report pydantic's
would refuse: for a value it would not have kept either). Both ways read every other
report alike (tests/test_reports.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

from agl_cli.api_limits import too_deep
from agl_cli.models import Mode, Rollout, Task, Triplet
from agl_cli.server.requests import UTF8_BOM, BadRequest, parse_model, plain_scanned, with_numbers_tamed
from agl_cli.store import Report
from agl_cli.store.records import kept_reward


class _Task(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    rollout_id: str
    input: Any = None
    mode: Mode | None = None
    resources_id: str | None = None
    create_time: float | None = None
    last_claim_time: float | None = None
    num_claims: int | None = None
    metadata: dict[str, Any] = {}


class _Triplet(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    prompt: msgspec.Raw
    response: msgspec.Raw
    reward: float | None = None
    metadata: dict[str, Any] = {}


class _Rollout(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    rollout_id: str
    task: _Task | None = None
    final_reward: float | None = None
    triplets: list[_Triplet] | None = None
    trace: list[dict[str, Any]] | None = None
    logs: list[str] | None = None
    metadata: dict[str, Any] = {}


# The wire models the structs above mirror, field for field (tests/test_reports.py).
MIRRORS: dict[type[Any], type[msgspec.Struct]] = {Task: _Task, Triplet: _Triplet, Rollout: _Rollout}
# Bytes from which a report is read the lean way: pydantic's way is quicker for less.
LEAN_FROM = 1024
_DECODER: msgspec.json.Decoder[_Rollout] = msgspec.json.Decoder(_Rollout)
_ENCODER = msgspec.json.Encoder()
# Where a triplet's prompt and response begin: the report, its triplets, the triplet.
_SCANNED_LEVEL = 3


def read_report(body: bytes) -> Report:
    """The report in `body`, or `BadRequest` with the 422 that says what is wrong."""
    body = body.removeprefix(UTF8_BOM)  # kept as it is read: without it
    report = read_lean(body) if len(body) >= LEAN_FROM else None
    if report is not None:
        return report
    try:
        return Report.of(parse_model(body, Rollout), body)
    except BadRequest:
        tamed = with_numbers_tamed(body, "null")  # kept as read: what is kept must be JSON
        if tamed is None:
            raise
        return Report.of(parse_model(tamed, Rollout), tamed)


def read_lean(body: bytes) -> Report | None:
    """The report, read by msgspec, if pydantic would surely read the same; else None."""
    try:
        rollout = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # the last, in a string it reads
        return None
    triplets = rollout.triplets or []
    parts = (bytes(part) for triplet in triplets for part in (triplet.prompt, triplet.response))
    if not all(plain_scanned(part, _SCANNED_LEVEL) for part in parts):
        return None
    task = rollout.task
    built = {  # what msgspec built, as deep as in the report, for the nesting and the numbers
        "task": None if task is None else [task.input, task.metadata, task.num_claims],
        "triplets": [{"metadata": triplet.metadata} for triplet in triplets],
        "trace": rollout.trace,
        "metadata": rollout.metadata,
    }
    if too_deep(built):  # also when an integer needs more than 64 bits, which orjson may refuse
        return None
    try:
        kept = _ENCODER.encode(rollout).decode()  # also the scanned parts' UTF-8
    except UnicodeDecodeError:
        return None
    return Report(
        rollout.rollout_id, None if task is None else task.mode, kept_reward(rollout.final_reward), kept
    )
