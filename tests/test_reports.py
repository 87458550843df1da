"""A worker's report is read the lean way (msgspec, its token ids only scanned) whenever
that way can vouch for it, and then as pydantic reads it: the same reports accepted, the
same fields read, the same rollout read back from what is kept, the same 422 for the
rest. What is kept is always readable, also when a key is given twice."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import pytest
from daemon import Daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_values import JSON, SPLICES, repeats_a_key, spliced
from pydantic import BaseModel

from agl_cli.api_limits import MAX_DEPTH
from agl_cli.models import Rollout
from agl_cli.server.reports import LEAN_FROM, MIRRORS, read_lean, read_report
from agl_cli.server.requests import BadRequest, parse_model, with_numbers_tamed
from agl_cli.store import Report
from agl_cli.store.rows import rollout_from_body

JSON_TYPE = {"Content-Type": "application/json"}  # what every worker's report is typed

# A report as it is read: the fields agl reads, and the rollout read back from what is kept.
Read = tuple[str, str | None, float | None, Rollout]


def read_back(report: Report) -> Read:
    return report.rollout_id, report.mode, report.final_reward, rollout_from_body(report.body)


def pydantic_read(body: bytes) -> Read | bytes:
    """What the report route reads without the lean way: pydantic's reading of the body, or
    of the body with the numbers JSON cannot carry made null; or the body of its 422."""
    try:
        return read_back(Report.of(parse_model(body, Rollout), body))
    except BadRequest as refused:
        tamed = with_numbers_tamed(body, "null")
        return bytes(refused.response.body) if tamed is None else pydantic_read(tamed)


def route_read(body: bytes) -> Read | bytes:
    try:
        return read_back(read_report(body))
    except BadRequest as refused:
        return bytes(refused.response.body)


def lean_read(body: bytes) -> Read | None:
    report = read_lean(body)
    return None if report is None else read_back(report)


def worker_report(rollout_id: str = "rollout-1", seed: int = 3) -> dict[str, Any]:
    """A report as a worker of an RL run sends it: turns of token ids, and trace spans."""
    rng = random.Random(seed)
    return {
        "rollout_id": rollout_id,
        "task": {"rollout_id": rollout_id, "input": {"q": "2+2?"}, "mode": "train", "resources_id": "res-1",
                 "create_time": 1750000000.25, "last_claim_time": 1750000001.5, "num_claims": 1, "metadata": {}},
        "final_reward": 1.0,
        "triplets": [
            {
                "prompt": {"token_ids": [rng.randrange(151_000) for _ in range(300)]},
                "response": {"token_ids": [rng.randrange(151_000) for _ in range(60)]},
                "reward": 1.0 if turn == 2 else None,
                "metadata": {"response_id": f"chatcmpl-{turn}"},
            }
            for turn in range(3)
        ],
        "trace": [
            {"name": "openai.chat.completion", "span_id": f"0x{rng.getrandbits(64):016x}", "start_time": 1750000000.5 + i,
             "attributes": {"gen_ai.usage.prompt_tokens": 300, "gen_ai.request.temperature": 0.7}}
            for i in range(6)
        ],
        "logs": ["turn 1", "turn 2"],
        "metadata": {"agent": "solver"},
    }  # fmt: skip


def as_body(report: Any) -> bytes:
    return json.dumps(report).encode()


REQUIRED = "required"


def mirrored_fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """Each field of a struct of the lean way, with its default (or REQUIRED)."""
    fields = {}
    for field in msgspec.structs.fields(struct):
        if field.default is not msgspec.NODEFAULT:
            fields[field.name] = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            fields[field.name] = field.default_factory()
        else:
            fields[field.name] = REQUIRED
    return fields


@pytest.mark.parametrize("model", MIRRORS, ids=lambda model: model.__name__)
def test_the_lean_way_knows_every_field_of_the_wire_models_and_its_default(model: type[BaseModel]) -> None:
    assert mirrored_fields(MIRRORS[model]) == {
        name: REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
    }


def test_a_workers_everyday_report_is_read_the_lean_way_as_pydantic_reads_it() -> None:
    sent = worker_report()
    body = as_body(sent)
    lean = lean_read(body)
    assert lean is not None
    assert lean == pydantic_read(body)
    assert lean[:3] == ("rollout-1", "train", 1.0)
    assert lean[3].model_dump(mode="json") == sent


def test_a_report_without_a_task_or_with_nothing_but_its_id_is_read_the_lean_way() -> None:
    for report in ({"rollout_id": "r"}, {"rollout_id": "r", "task": None, "final_reward": 2}):
        body = as_body(report)
        assert lean_read(body) == pydantic_read(body)
        assert lean_read(body) is not None


def with_prompt(text: bytes) -> bytes:
    """A worker's report whose first prompt is `text`, spliced in as it is."""
    report = worker_report()
    report["triplets"][0]["prompt"] = "@PROMPT@"
    return as_body(report).replace(b'"@PROMPT@"', text)


BEYOND_THE_LEAN_WAY = {
    # refused by pydantic, for what the lean way only scans
    "a number past a float's range in a prompt": with_prompt(b"[1, 2e999]"),
    "a 400-digit number in a prompt": with_prompt(b"[" + b"9" * 400 + b"]"),
    "a prompt nested too deeply": with_prompt(b"[" * (MAX_DEPTH - 3) + b"]" * (MAX_DEPTH - 3)),
    "bytes that are not UTF-8 in a prompt": with_prompt(b'"caf\xe9"'),
    # refused by pydantic, for what the lean way builds
    "a 400-digit number in the trace": as_body({"rollout_id": "r", "trace": [{"n": "@N@"}]}).replace(
        b'"@N@"', b"9" * 400
    ),
    "metadata nested too deeply": as_body({"rollout_id": "r", "metadata": {"x": "@D@"}}).replace(
        b'"@D@"', b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    ),
    "an unknown mode": as_body({"rollout_id": "r", "task": {"rollout_id": "r", "mode": "eval"}}),
    "a triplet without a response": as_body({"rollout_id": "r", "triplets": [{"prompt": 1}]}),
    "a rollout id that is a number": as_body({"rollout_id": 7}),
    # accepted by pydantic, which coerces or keeps what the lean way does not know
    "a reward as a string": as_body({"rollout_id": "r", "final_reward": "0.5"}),
    "a claim count as a float": as_body({"rollout_id": "r", "task": {"rollout_id": "r", "num_claims": 2.0}}),
    "a field a newer worker sends": as_body({"rollout_id": "r", "novel": [1]}),
    "a prompt with an exponent": with_prompt(b"[1e3]"),
    "an integer of more than 64 bits in metadata": as_body({"rollout_id": "r", "metadata": {"n": 2**70}}),
    "a prompt of more lists than it may nest": with_prompt(b"[" + b"[1]," * MAX_DEPTH + b"[1]]"),
}


@pytest.mark.parametrize("body", BEYOND_THE_LEAN_WAY.values(), ids=BEYOND_THE_LEAN_WAY.keys())
def test_what_the_lean_way_cannot_vouch_for_is_read_by_pydantic(body: bytes) -> None:
    assert read_lean(body) is None
    assert route_read(body) == pydantic_read(body)


def test_the_lean_way_takes_a_prompt_nested_as_deeply_as_allowed() -> None:
    # under the report, its triplets and the triplet, with the number inside: MAX_DEPTH levels
    body = with_prompt(b"[" * (MAX_DEPTH - 4) + b"]" * (MAX_DEPTH - 4))
    assert lean_read(body) is not None
    assert lean_read(body) == pydantic_read(body)


# --- anything at all: the two ways never differ -------------------------------------------


def _fields(shape: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of `shape`'s fields, each either of its kind or any JSON, and
    now and then a field `shape` does not have."""
    return st.fixed_dictionaries(
        {}, optional={name: strategy | JSON for name, strategy in shape.items()} | {"extra": JSON}
    )


_TASK = _fields(
    {
        "rollout_id": st.text(max_size=6),
        "input": JSON,
        "mode": st.sampled_from(["train", "val", "test"]),
        "num_claims": st.integers(0, 3),
        "create_time": st.floats(0, 2e9),
        "metadata": st.dictionaries(st.text(max_size=4), JSON, max_size=3),
    }
)
_TRIPLET = _fields(
    {
        "prompt": st.fixed_dictionaries({"token_ids": st.lists(st.integers(0, 151_000), max_size=8)}) | JSON,
        "response": JSON,
        "reward": st.floats(allow_nan=False, allow_infinity=False) | st.none(),
        "metadata": st.dictionaries(st.text(max_size=4), JSON, max_size=3),
    }
)
_REPORT = _fields(
    {
        "rollout_id": st.text(max_size=8),
        "task": _TASK | st.none(),
        "final_reward": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-5, 5) | st.none(),
        "triplets": st.lists(_TRIPLET, max_size=3) | st.none(),
        "trace": st.lists(st.dictionaries(st.text(max_size=5), JSON, max_size=4), max_size=3) | st.none(),
        "logs": st.lists(st.text(max_size=5), max_size=3) | st.none(),
        "metadata": st.dictionaries(st.text(max_size=4), JSON, max_size=3),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report=_REPORT, ascii_only=st.booleans())
def test_any_report_is_read_the_same_either_way(report: dict[str, Any], ascii_only: bool) -> None:
    body = json.dumps(report, ensure_ascii=ascii_only).encode()
    _the_same_either_way(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report=_REPORT, splice=SPLICES, where=st.floats(0, 1), cut=st.integers(0, 3))
def test_any_mangled_report_is_read_the_same_either_way(
    report: dict[str, Any], splice: bytes, where: float, cut: int
) -> None:
    _the_same_either_way(spliced(json.dumps(report).encode(), splice, where, cut))


def _the_same_either_way(body: bytes) -> None:
    lean = lean_read(body)
    before = pydantic_read(body)
    if lean is not None and not repeats_a_key(body):
        assert lean == before
    assert route_read(body) in (before, lean)  # the lean way is taken for larger reports only


# --- a key given twice: its last value counts, and the earlier one is not kept -------------


def with_first(old: bytes, new: bytes) -> bytes:
    """A worker's report with the first `old` in it made `new`."""
    body = as_body(worker_report())
    assert old in body
    return body.replace(old, new, 1)


REPEATED = {
    "a prompt": with_first(b'"prompt": ', b'"prompt": [1e999], "prompt": '),
    "the triplets": with_first(b"{", b'{"triplets": [{"prompt": [1e999], "response": 2}], '),
    "the metadata": with_first(b"{", b'{"metadata": {"n": ' + b"9" * 400 + b"}, "),
}


@pytest.mark.parametrize("body", REPEATED.values(), ids=REPEATED.keys())
def test_a_value_a_repeated_key_overrides_is_not_kept(body: bytes) -> None:
    report = read_report(body)
    assert rollout_from_body(report.body) == Rollout.model_validate(json.loads(body))
    assert b"1e999" not in report.body.encode() and b"9" * 400 not in report.body.encode()


def test_a_repeated_key_whose_last_value_is_bad_is_refused() -> None:
    body = with_first(b'"prompt": {"token_ids": [', b'"prompt": [1], "prompt": {"token_ids": ["\\ud800", ')
    assert read_lean(body) is None
    assert route_read(body) == pydantic_read(body)
    assert isinstance(pydantic_read(body), bytes)


# --- through a daemon -----------------------------------------------------------------------


def test_a_workers_report_is_kept_and_read_back_as_it_was_sent(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("2+2?")
    assert daemon.claim() is not None
    sent = worker_report(rollout_id)
    body = as_body(sent)
    assert len(body) >= LEAN_FROM  # read the lean way
    assert daemon.post("/rollout", content=body, headers=JSON_TYPE).json()["status"] == "ok"
    stored = daemon.api("GET", f"/v1/rollouts/{rollout_id}").json()
    assert {field: stored[field] for field in sent} == sent


def test_a_report_repeating_a_key_keeps_its_last_value_only(daemon: Daemon) -> None:
    body = REPEATED["a prompt"]
    assert daemon.post("/rollout", content=body, headers=JSON_TYPE).status_code == 200
    [stored] = daemon.rollouts()
    assert stored["triplets"][0]["prompt"] == worker_report()["triplets"][0]["prompt"]


# --- numbers JSON cannot carry: null, as JSON writers write them ------------------------------

TAMED = {
    "NaN": (b'{"r": NaN}', b'{"r":null}'),
    "Infinity and -Infinity": (b"[Infinity, -Infinity, 1.5]", b"[null,null,1.5]"),
    "numbers beyond a float's range": (b'{"r": 1e999, "s": [-2E400, 0.25]}', b'{"r":null,"s":[null,0.25]}'),
    "NaN beside integers of 64 bits and more": (
        b"[NaN, 18446744073709551615, -9223372036854775808, 18446744073709551616, -1" + b"0" * 30 + b"]",
        b"[null,18446744073709551615,-9223372036854775808,1.8446744073709552e+19,-1e+30]",
    ),
    "an integer beyond a float's range": (b'{"r": 1' + b"0" * 400 + b"}", b'{"r":null}'),
}
NAMES = {  # the same, with names, as OTLP's JSON writes them
    b'{"r": NaN}': (b'"NaN"',),
    b"[Infinity, -Infinity, 1.5]": (b'"Infinity"', b'"-Infinity"'),
    b'{"r": 1e999, "s": [-2E400, 0.25]}': (b'"Infinity"', b'"-Infinity"'),
    TAMED["NaN beside integers of 64 bits and more"][0]: (b'"NaN"',),
    TAMED["an integer beyond a float's range"][0]: (b'"Infinity"',),
}


@pytest.mark.parametrize(("body", "tamed"), TAMED.values(), ids=TAMED.keys())
def test_numbers_json_cannot_carry_are_made_null_or_their_names(body: bytes, tamed: bytes) -> None:
    assert with_numbers_tamed(body, "null") == tamed
    names = tamed.replace(b"null", b"%s")
    assert with_numbers_tamed(body, "names") == names % NAMES[body]


UNTAMED = {
    "nothing to tame": b'{"r": 1.5, "s": "NaN"}',
    "not JSON even so": b'{"r": NaN',
    "a lone surrogate": b'["\\ud800", NaN]',
    "a byte order mark": b"\xef\xbb\xbf[NaN]",
    "nested too deeply to write": b"[" * 300 + b"NaN" + b"]" * 300,
    "nested too deeply to read": b"[" * 100_000 + b"NaN" + b"]" * 100_000,
}


@pytest.mark.parametrize("body", UNTAMED.values(), ids=UNTAMED.keys())
def test_a_body_is_tamed_only_if_such_numbers_are_all_that_is_wrong(body: bytes) -> None:
    assert with_numbers_tamed(body, "null") is None
