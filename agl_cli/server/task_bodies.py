"""Reading the tasks of a request to queue or stage them (`QueueRequest`).

The daemon keeps a task's input and metadata as JSON text, and `agl queue` sends a
million tasks, 5,000 a request. Parsing each input into Python objects, only to write
it out again, was most of the daemon's work on them. So msgspec first reads a body
against a mirror of `QueueRequest` in which inputs and metadata are only scanned, and
each is kept as the JSON it came in (`ScannedTask`).

msgspec's scan checks JSON as strictly as orjson reads it but for UTF-8, numbers out of a
float's range and nesting (`requests.plain_scanned`). UTF-8 is checked here on the whole
body at once, numbers too, and on each part only where the body's look does not clear
them; a part too short to nest too deeply needs no look for nesting. Whatever this way
cannot vouch for is parsed (`parsed_tasks`): plain tasks are read from the parsed JSON
(`models.plain_task`), and any other body is validated by the model, which gives the
422. `tests/test_task_bodies.py` holds the two ways to the same tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from agl_cli.api_limits import MAX_DEPTH, MAX_PER_REQUEST
from agl_cli.models import Mode, NewTask, ScannedTask, blank, plain_task
from agl_cli.server import schemas
from agl_cli.server.requests import parse_json, plain_scanned, validated, without_numbers


class _Task(msgspec.Struct, forbid_unknown_fields=True):
    input: msgspec.Raw
    mode: Mode | None = None
    resources_id: str | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    tasks: list[_Task]


_DECODER: msgspec.json.Decoder[_Body] = msgspec.json.Decoder(_Body)
# Where a task's input and metadata begin: the body, its list of tasks, the task.
_SCANNED_LEVEL = 3
# A part shorter than this cannot nest deeper than allowed: each level takes two brackets.
_SHALLOW = 2 * (MAX_DEPTH - _SCANNED_LEVEL)


def read_tasks(body: bytes) -> Sequence[NewTask]:
    """The tasks of a `QueueRequest` body, or `BadRequest` with the 422."""
    return scanned_tasks(body) or parsed_tasks(body)


def scanned_tasks(body: bytes) -> list[ScannedTask] | None:
    """The tasks, their inputs and metadata kept as they came, if the model would surely
    take the same; else None."""
    try:
        given = _DECODER.decode(body).tasks
        body.decode()  # the scanned parts' UTF-8, checked at once
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    if not 0 < len(given) <= MAX_PER_REQUEST:
        return None
    numbers_cleared = without_numbers(body)
    tasks = []
    for task in given:
        input_, metadata = bytes(task.input), bytes(task.metadata)
        if (
            metadata[:1] != b"{"
            or (task.resources_id is not None and blank(task.resources_id))
            or not _plain(input_, numbers_cleared)
            or not _plain(metadata, numbers_cleared)
        ):
            return None
        tasks.append(ScannedTask(input_.decode(), task.mode, task.resources_id, metadata.decode()))
    return tasks


def _plain(part: bytes, numbers_cleared: bool) -> bool:
    if numbers_cleared and len(part) < _SHALLOW:
        return True
    return plain_scanned(part, _SCANNED_LEVEL)


def parsed_tasks(body: bytes) -> Sequence[NewTask]:
    """The tasks, parsed: plain ones read without a pydantic model each, any other body
    checked against the model, which gives the 422."""
    payload = parse_json(body)
    given = payload.get("tasks") if type(payload) is dict and len(payload) == 1 else None
    if type(given) is list and 0 < len(given) <= MAX_PER_REQUEST:
        tasks = []
        for value in given:
            task = plain_task(value)
            if task is None:
                break
            tasks.append(task)
        else:
            return tasks
    return validated(payload, schemas.QueueRequest).tasks
