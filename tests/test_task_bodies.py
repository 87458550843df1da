"""The daemon's queue and stage routes read their tasks the quick ways when they can
(`agl queue` sends a million tasks, 5,000 a request) and take exactly what `TaskSpec`
takes, leaving the rest to it, which says why (tests/test_management_api.py has those
422s): `plain_task` reads a task from parsed JSON without a pydantic model, and
`scanned_tasks` reads a body without parsing inputs and metadata, kept as they came.
`agl queue` checks each task of a file by the same rules before it goes up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_values import SPLICES, repeats_a_key, spliced
from pydantic import ValidationError

from agl_cli.api_limits import MAX_DEPTH, MAX_PER_REQUEST
from agl_cli.cli.taskfile import judged
from agl_cli.models import NewTask, PlainTask, TaskSpec, input_and_metadata_json, plain_task
from agl_cli.server.requests import BadRequest
from agl_cli.server.task_bodies import parsed_tasks, read_tasks, scanned_tasks

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
TASKS = st.fixed_dictionaries(
    {},
    optional={
        "input": JSON,
        "mode": st.sampled_from([None, "train", "val", "test", "training", "", 1, True, ["train"]]),
        "resources_id": st.sampled_from([None, "rs-1", "", "  ", "\t", 1, False, {}]) | st.text(max_size=3),
        "metadata": st.dictionaries(st.text(max_size=3), JSON, max_size=3) | JSON,
        "colour": JSON,
    },
)


def spec_of(value: Any) -> TaskSpec | None:
    try:
        return TaskSpec.model_validate(value)
    except ValidationError:
        return None


@given(TASKS | JSON)
def test_a_plain_task_is_exactly_a_task_the_model_takes_with_the_same_fields(value: Any) -> None:
    plain, spec = plain_task(value), spec_of(value)
    assert (plain is None) == (spec is None)
    if plain is not None and spec is not None:
        assert plain == PlainTask(spec.input, spec.mode, spec.resources_id, spec.metadata)


def test_the_everyday_task_is_plain() -> None:
    assert plain_task({"input": {"q": "1 + 1?"}, "mode": "train", "metadata": {"shard": 3}}) == PlainTask(
        {"q": "1 + 1?"}, "train", None, {"shard": 3}
    )
    assert plain_task({"input": None, "resources_id": "rs-7"}) == PlainTask(None, None, "rs-7", {})


# --- whole bodies, inputs and metadata only scanned ---------------------------------------

Stored = tuple[Any, str | None, str | None, Any]  # input, mode, resources id, metadata


def stored(tasks: Sequence[NewTask]) -> list[Stored]:
    """What the store keeps of each task, read back as the store reads it (orjson)."""
    texts = [input_and_metadata_json(t) for t in tasks]
    return [
        (orjson.loads(input_json), t.mode, t.resources_id, orjson.loads(metadata_json))
        for t, (input_json, metadata_json) in zip(tasks, texts, strict=True)
    ]


def parsed(body: bytes) -> list[Stored] | None:
    try:
        return stored(parsed_tasks(body))
    except BadRequest:
        return None


def body_of(*tasks: Any, text: bytes = b"") -> bytes:
    """A request body of `tasks`, with the placeholder "@" in it replaced by `text`."""
    return json.dumps({"tasks": list(tasks)}).encode().replace(b'"@"', text)


def test_agl_queues_everyday_tasks_are_scanned_as_they_came() -> None:
    line = (
        b'{"input": {"question": "What is 2 + 2?", "answer": 4}, "mode": "train", "metadata": {"shard": 3}}'
    )
    body = b'{"tasks": [' + b",".join([line] * 3) + b"]}"
    tasks = scanned_tasks(body)
    assert tasks is not None
    assert [t.input_json for t in tasks] == ['{"question": "What is 2 + 2?", "answer": 4}'] * 3
    assert stored(tasks) == parsed(body)


def test_a_task_of_input_alone_gets_empty_metadata() -> None:
    tasks = scanned_tasks(b'{"tasks": [{"input": null, "resources_id": "rs-7"}]}')
    assert tasks is not None and stored(tasks) == [(None, None, "rs-7", {})]


BEYOND_THE_SCAN = {
    # refused by the model, for what the scan does not check
    "a number past a float's range": body_of({"input": "@"}, text=b"[1, 2e999]"),
    "a 400-digit number": body_of({"input": "@"}, text=b"9" * 400),
    "bytes that are not UTF-8": body_of({"input": "@"}, text=b'"caf\xe9"'),
    "input nested too deeply": body_of({"input": "@"}, text=b"[" * (MAX_DEPTH - 3) + b"]" * (MAX_DEPTH - 3)),
    "metadata nested too deeply": body_of(
        {"input": 1, "metadata": {"x": "@"}}, text=b"[" * (MAX_DEPTH - 4) + b"]" * (MAX_DEPTH - 4)
    ),
    # refused by the model, for what the mirror checks
    "metadata that is not an object": body_of({"input": 1, "metadata": [1]}),
    "a blank resources id": body_of({"input": 1, "resources_id": " "}),
    "an unknown mode": body_of({"input": 1, "mode": "eval"}),
    "a task without an input": body_of({"mode": "val"}),
    "a field a task does not have": body_of({"input": 1, "colour": "red"}),
    "a field a body does not have": body_of({"input": 1})[:-1] + b', "more": 1}',
    "no tasks": body_of(),
    "too many tasks": body_of(*[{"input": 1}] * (MAX_PER_REQUEST + 1)),
    # taken by the model, which the scan does not vouch for
    "an exponent": body_of({"input": "@"}, text=b"[1e3]"),
    "a list of more lists than it may nest": body_of(
        {"input": "@"}, text=b"[" + b"[1]," * MAX_DEPTH + b"[1]]"
    ),
}


@pytest.mark.parametrize("body", BEYOND_THE_SCAN.values(), ids=BEYOND_THE_SCAN.keys())
def test_what_the_scan_cannot_vouch_for_is_parsed(body: bytes) -> None:
    assert scanned_tasks(body) is None
    try:
        tasks = read_tasks(body)
    except BadRequest:
        assert parsed(body) is None
    else:
        assert stored(tasks) == parsed(body)


def test_an_input_nested_as_deeply_as_allowed_is_scanned() -> None:
    # under the body, its tasks and the task, with the number inside: MAX_DEPTH levels
    body = body_of({"input": "@"}, text=b"[" * (MAX_DEPTH - 4) + b"1" + b"]" * (MAX_DEPTH - 4))
    tasks = scanned_tasks(body)
    assert tasks is not None and stored(tasks) == parsed(body)


_BODY_TASKS = st.lists(TASKS, min_size=1, max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=_BODY_TASKS, indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans())
def test_any_body_is_read_the_same_either_way(tasks: list[Any], indent: int | None, ascii_only: bool) -> None:
    _the_same_either_way(json.dumps({"tasks": tasks}, indent=indent, ensure_ascii=ascii_only).encode())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=_BODY_TASKS, splice=SPLICES, where=st.floats(0, 1), cut=st.integers(0, 3))
def test_any_mangled_body_is_read_the_same_either_way(
    tasks: list[Any], splice: bytes, where: float, cut: int
) -> None:
    _the_same_either_way(spliced(json.dumps({"tasks": tasks}).encode(), splice, where, cut))


def _the_same_either_way(body: bytes) -> None:
    scanned = scanned_tasks(body)
    if scanned is not None:
        kept = stored(scanned)  # always readable, whatever the body repeats
        if not repeats_a_key(body):
            assert kept == parsed(body)


# --- a key given twice in an input: kept as it came, and read back as its last value -------


def test_an_input_that_repeats_a_key_is_read_back_with_its_last_value() -> None:
    body = body_of({"input": "@"}, text=b'{"a": 2, "a": 1}')
    tasks = scanned_tasks(body)
    assert tasks is not None and stored(tasks) == parsed(body) == [({"a": 1}, None, None, {})]


@pytest.mark.parametrize(
    "earlier", [b'"\\ud800"', b"1e999", b"9" * 400, b'"\xff"', b'"\xed\xa0\x80"', b'"\\u00zz"', b"01"]
)
def test_an_input_whose_repeated_key_was_first_given_what_no_reader_keeps_is_parsed(earlier: bytes) -> None:
    """Kept as it came, such an input could never be read back: it goes the parsed way,
    which refuses the body."""
    body = body_of({"input": "@"}, text=b'{"a": ' + earlier + b', "a": 1}')
    assert scanned_tasks(body) is None
    assert parsed(body) is None


# --- agl queue's check of a task: the daemon's verdict on it -------------------------------


def daemon_takes(line: bytes) -> bool:
    """Whether the daemon queues the task `line` on its own, as `agl queue` sends it."""
    try:
        tasks = read_tasks(b'{"tasks":[' + line + b"]}")
    except BadRequest:
        return False
    return len(tasks) == 1  # a mangled line may read as two tasks in a body, not in a file


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=TASKS | JSON, splice=SPLICES, where=st.floats(0, 1), cut=st.integers(0, 3), mangle=st.booleans())
def test_agl_queue_passes_a_task_exactly_when_the_daemon_takes_it(
    task: Any, splice: bytes, where: float, cut: int, mangle: bool
) -> None:
    line = json.dumps(task).encode()
    if mangle:
        line = spliced(line, splice, where, cut)
    _, problem = judged(line)
    assert (problem is None) == daemon_takes(line), line


@pytest.mark.parametrize("depth", range(MAX_DEPTH - 6, MAX_DEPTH))
@pytest.mark.parametrize("innermost", [b"", b"1", b'"x"', b"{}"])
def test_agl_queue_passes_nesting_exactly_as_deep_as_the_daemon_takes(depth: int, innermost: bytes) -> None:
    for line in (
        b'{"input": ' + b"[" * depth + innermost + b"]" * depth + b"}",
        b'{"input": 1, "metadata": {"k": ' + b"[" * depth + innermost + b"]" * depth + b"}}",
    ):
        _, problem = judged(line)
        assert (problem is None) == daemon_takes(line), line
