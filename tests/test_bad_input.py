"""Bad input gets a 4xx that says why, on a connection that stays usable, and changes
nothing: one door after another (docs/reliability.md lists the cases)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon import Daemon, fetch

DEEP = "@DEEP@"


def nested(levels: int) -> Any:
    """A value `levels` lists deep."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def with_nesting(body: Any, levels: int) -> bytes:
    """`body` as JSON with `DEEP` replaced by a list `levels` deep (deeper than any
    Python JSON writer goes, so it is spliced in as text)."""
    return json.dumps(body).replace(f'"{DEEP}"', "[" * levels + "1" + "]" * levels).encode()


def prompt_free_llm(sampling: Any) -> dict[str, Any]:
    return {
        "p": {
            "resource_type": "llm",
            "endpoint": "http://x/v1",
            "model": "m",
            "sampling_parameters": sampling,
        }
    }


@pytest.mark.parametrize("levels", [256, 1_024])
@pytest.mark.parametrize(
    ("where", "method", "path", "body"),
    [
        ("a rollout's metadata", "POST", "/rollout", lambda deep: {"rollout_id": "r-1", "metadata": {"x": deep}}),
        ("a task's input", "POST", "/v1/tasks", lambda deep: {"tasks": [{"input": deep}]}),
        ("an LLM's sampling parameters", "POST", "/v1/resources", lambda deep: {"resources": prompt_free_llm({"x": deep})}),
        ("a store-API rollout's input", "POST", "/v1/agl/queues/rollouts/enqueue", lambda deep: {"rollouts": [{"input": deep}]}),
        ("a store-API bundle", "POST", "/v1/agl/resources", lambda deep: prompt_free_llm({"x": deep})),
    ],
)  # fmt: skip
def test_json_nested_too_deeply_to_answer_with_is_a_422_and_the_connection_goes_on(
    shared_daemon: Daemon, levels: int, where: str, method: str, path: str, body: Any
) -> None:
    headers = {"Authorization": f"Bearer {shared_daemon.token}"}
    with httpx.Client(base_url=shared_daemon.url, headers=headers, timeout=30) as client:
        content = with_nesting(body(DEEP), levels)
        refused = client.request(method, path, content=content, headers={"Content-Type": "application/json"})
        assert refused.status_code == 422, where
        assert refused.json()["detail"][0]["type"] == "json_invalid"
        after = client.get("/v1/status")  # the same connection
    assert after.status_code == 200
    status = after.json()
    assert (status["tasks"]["queued"], status["rollouts"], status["resources"], status["unsolicited"]) == (
        0,
        0,
        0,
        0,
    )


def test_json_nested_as_deeply_as_allowed_is_kept_and_answered_with(daemon: Daemon) -> None:
    deep = nested(190)
    [rollout_id] = daemon.queue(deep)
    claimed = daemon.get("/task").json()["task"]
    assert (claimed["rollout_id"], claimed["input"]) == (rollout_id, deep)
    daemon.report(rollout_id, metadata={"x": deep})
    assert daemon.rollouts()[0]["metadata"] == {"x": deep}


# --- the catalogue (docs/reliability.md): one row per kind of bad input, at every door ---------

JSON_TYPE = {"Content-Type": "application/json"}
PROMPT = {"resource_type": "prompt_template", "template": "t", "engine": "jinja"}
BEYOND_LIMIT = 33 * 1024 * 1024  # the default --max-body-size is 32 MiB


def raw(text: bytes) -> dict[str, Any]:
    return {"content": text, "headers": JSON_TYPE}


NOT_JSON = "The body must be JSON (Content-Type: application/json), not '{}'."
REBOUND = (
    "This agl daemon listens on loopback and answers only requests addressed to localhost, 127.0.0.1 or [::1]"
    " (or a name given with --allowed-host), not to 'evil.test'."
)
CROSS_SITE = "agl does not serve requests a browser sends for another origin (Sec-Fetch-Site: cross-site)."
ANOTHER_ORIGIN = "agl does not serve requests a web page of another origin sends (Origin: {})."


def cross_site(mode: str) -> dict[str, str]:
    """The headers a browser adds to a request a page of another site makes (`mode`: a
    script's `fetch`, an image's, or following a link)."""
    return {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": mode}


def published(resources_id: str) -> dict[str, Any]:
    return {"json": {"resources": {"p": PROMPT}, "resources_id": resources_id}}


@dataclass(frozen=True)
class Row:
    """A bad request; what it must be answered: the status, and the `detail` sentence, or
    the type of the first problem in FastAPI's list, or the start of a protobuf body."""

    name: str
    method: str
    path: str
    request: dict[str, Any]
    status: int
    answer: str | bytes | None = None
    token: bool | None = True  # None: no Authorization header at all


CATALOGUE = [
    Row("rollout: not JSON", "POST", "/rollout", raw(b"hello"), 422, "json_invalid"),
    Row("rollout: truncated JSON", "POST", "/rollout", raw(b'{"rollout_id": "r'), 422, "json_invalid"),
    Row("rollout: empty body", "POST", "/rollout", raw(b""), 422, "missing"),
    Row("rollout: rollout_id a number", "POST", "/rollout", {"json": {"rollout_id": 5}}, 422, "string_type"),
    Row("rollout: no rollout_id", "POST", "/rollout", {"json": {"final_reward": 1}}, 422, "missing"),
    Row("rollout: reward NaN, and truncated", "POST", "/rollout", raw(b'{"rollout_id": "r", "final_reward": NaN'), 422,
        "json_invalid"),
    Row("rollout: reward a string", "POST", "/rollout", {"json": {"rollout_id": "r", "final_reward": "high"}}, 422,
        "float_parsing"),
    Row("rollout: triplets not a list", "POST", "/rollout", {"json": {"rollout_id": "r", "triplets": {"a": 1}}}, 422,
        "list_type"),
    Row("rollout: over the body limit", "POST", "/rollout", raw(b"x" * BEYOND_LIMIT), 413,
        "The request body is larger than the limit of 33554432 bytes (agl serve --max-body-size)."),
    Row("rollout: 10,000 levels deep", "POST", "/rollout",
        raw(b'{"rollout_id": "r", "metadata": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"), 422, "json_invalid"),
    Row("task: wait not a number", "GET", "/task", {"params": {"wait": "soon"}}, 422,
        "Query parameter 'wait' must be a number, not 'soon'."),
    Row("task: wait written as no decimal number is", "GET", "/task", {"params": {"wait": "1_0"}}, 422,
        "Query parameter 'wait' must be a number, not '1_0'."),
    Row("task: wait negative", "GET", "/task", {"params": {"wait": "-1"}}, 422,
        "Query parameter 'wait' must be between 0 and 600."),
    Row("task: wait out of range", "GET", "/task", {"params": {"wait": "1e9"}}, 422,
        "Query parameter 'wait' must be between 0 and 600."),
    Row("task: HEAD (it would claim)", "HEAD", "/task", {}, 405),
    Row("task: an unknown query parameter", "GET", "/task", {"params": {"colour": "red"}}, 200),
    Row("task: wait given twice, the last not a number", "GET", "/task", {"params": [("wait", "0"), ("wait", "soon")]},
        422, "Query parameter 'wait' must be a number, not 'soon'."),
    Row("worker resources: '..' and '/' in the id", "GET", "/resources/..%2F..", {}, 404, "Not Found"),
    Row("worker resources: NUL in the id", "GET", "/resources/a%00b", {}, 404, "Resource ID 'a\x00b' not found."),
    Row("worker resources: a 10 KB id", "GET", "/resources/" + "a" * 10_240, {}, 404, f"Resource ID '{'a' * 10_240}' not found."),
    Row("api: no token", "POST", "/v1/tasks", {"json": {"tasks": [{"input": 1}]}}, 401, "A bearer token is required.",
        token=None),
    Row("api: a wrong token", "POST", "/v1/tasks", {"json": {"tasks": [{"input": 1}]}}, 401,
        "The bearer token is not valid.", token=False),
    Row("api: a malformed Authorization header", "POST", "/v1/tasks",
        {"json": {"tasks": [{"input": 1}]}, "headers": {"Authorization": "Token x y"}}, 401,
        "The bearer token is not valid.", token=None),
    Row("api: whether an id exists, without a token", "GET", "/v1/tasks/rollout-nope", {}, 401,
        "A bearer token is required.", token=None),
    Row("a path that is no route, without a token (a worker sent to a wrong address)", "GET", "/api/task", {},
        404, "Not Found", token=None),
    Row("tasks: no input", "POST", "/v1/tasks", {"json": {"tasks": [{"mode": "train"}]}}, 422, "missing"),
    Row("tasks: an unknown mode", "POST", "/v1/tasks", {"json": {"tasks": [{"input": 1, "mode": "eval"}]}}, 422,
        "literal_error"),
    Row("tasks: an unknown field", "POST", "/v1/tasks", {"json": {"tasks": [{"input": 1, "prio": 9}]}}, 422,
        "extra_forbidden"),
    Row("tasks: a 50 MB string", "POST", "/v1/tasks",
        raw(b'{"tasks": [{"input": "' + b"x" * (50 * 1024 * 1024) + b'"}]}'), 413,
        "The request body is larger than the limit of 33554432 bytes (agl serve --max-body-size)."),
    Row("tasks: limit 0", "GET", "/v1/tasks", {"params": {"limit": "0"}}, 422,
        "Query parameter 'limit' must be between 1 and 10000."),
    Row("tasks: a negative offset", "GET", "/v1/tasks", {"params": {"offset": "-1"}}, 422,
        "Query parameter 'offset' must be between 0 and 4611686018427387904."),
    Row("tasks: an unknown status", "GET", "/v1/tasks", {"params": {"status": "lost"}}, 422,
        "Query parameter 'status' must be one of: queued, claimed, completed, failed, cancelled; not 'lost'."),
    Row("tasks: a status given twice", "GET", "/v1/tasks", {"params": [("status", "queued"), ("status", "failed")]},
        422, "Query parameter 'status' is given more than once."),
    Row("tasks: an unknown id", "GET", "/v1/tasks/rollout-nope", {}, 404, "No task with id 'rollout-nope'."),
    Row("tasks: cancel none", "POST", "/v1/tasks/cancel", {"json": {"rollout_ids": []}}, 422, "too_short"),
    Row("tasks: cancel an unknown id", "POST", "/v1/tasks/cancel", {"json": {"rollout_ids": ["rollout-nope"]}}, 404,
        "No task with id 'rollout-nope'."),
    Row("tasks: retry none", "POST", "/v1/tasks/retry", {"json": {"rollout_ids": []}}, 422, "too_short"),
    Row("tasks: retry an unknown id", "POST", "/v1/tasks/retry", {"json": {"rollout_ids": ["rollout-nope"]}}, 404,
        "No task with id 'rollout-nope'."),
    Row("rollouts: a negative since", "GET", "/v1/rollouts", {"params": {"since": "-5"}}, 422,
        "Query parameter 'since' must be between 0 and 4611686018427387904."),
    Row("resources: list the last 0", "GET", "/v1/resources", {"params": {"last": "0"}}, 422,
        "Query parameter 'last' must be between 1 and 10000."),
    Row("resources: list the last few", "GET", "/v1/resources", {"params": {"last": "few"}}, 422,
        "Query parameter 'last' must be a whole number, not 'few'."),
    Row("resources: an unknown resource type", "POST", "/v1/resources",
        {"json": {"resources": {"x": {"resource_type": "tool"}}}}, 422,
        "Resource 'x' has unknown resource_type 'tool'; expected one of: llm, proxy_llm, prompt_template."),
    Row("resources: '/' in the id", "POST", "/v1/resources", published("a/b"), 422,
        "A resources id must be at most 200 characters, without '/', '?', '#' or '%' (0.3.0's workers put it in a URL as it is)."),
    Row("resources: '?' in the id (0.3.0's workers would fetch 'a')", "POST", "/v1/resources", published("a?b"), 422,
        "A resources id must be at most 200 characters, without '/', '?', '#' or '%' (0.3.0's workers put it in a URL as it is)."),
    Row("resources: NUL in the id", "POST", "/v1/resources", published("a\x00b"), 422,
        "A resources id must not contain control characters (a newline, NUL, a tab)."),
    Row("resources: a newline in the id", "POST", "/v1/resources", published("a\nb"), 422,
        "A resources id must not contain control characters (a newline, NUL, a tab)."),
    Row("resources: a 10 KB id", "POST", "/v1/resources", published("a" * 10_240), 422,
        "A resources id must be at most 200 characters, without '/', '?', '#' or '%' (0.3.0's workers put it in a URL as it is)."),
    Row("resources: the id '..'", "POST", "/v1/resources", published(".."), 422,
        "'..' cannot be a resources id: no URL can name it."),
    Row("resources: reveal not a boolean", "GET", "/v1/resources", {"params": {"reveal": "please"}}, 422,
        "Query parameter 'reveal' must be true or false, not 'please'."),
    Row("store: enqueue, not JSON", "POST", "/v1/agl/queues/rollouts/enqueue", raw(b"{"), 422, "json_invalid"),
    Row("store: enqueue without input", "POST", "/v1/agl/queues/rollouts/enqueue",
        {"json": {"rollouts": [{"mode": "train"}]}}, 422, "missing"),
    Row("store: max_attempts 0", "POST", "/v1/agl/queues/rollouts/enqueue",
        {"json": {"rollouts": [{"input": 1, "config": {"max_attempts": 0}}]}}, 422, "greater_than_equal"),
    Row("store: a dequeue limit that is not a number", "POST", "/v1/agl/queues/rollouts/dequeue",
        {"json": {"limit": "all"}}, 422, "int_parsing"),
    Row("store: limit 0", "GET", "/v1/agl/rollouts", {"params": {"limit": "0"}}, 400,
        "Limit must be greater than 0 or -1 for no limit"),
    Row("store: sort by an unknown field", "GET", "/v1/agl/rollouts", {"params": {"sort_by": "speed"}}, 400,
        "Invalid sort_by: speed, allowed fields are: rollout_id, input, start_time, end_time, mode, resources_id,"
        " status, config, metadata"),
    Row("store: a null status", "POST", "/v1/agl/rollouts/ro-000000000000", {"json": {"status": None}}, 400,
        "status is invalid; it cannot be a null value."),
    Row("store: an unknown rollout", "POST", "/v1/agl/rollouts/ro-000000000000", {"json": {"status": "failed"}}, 404,
        "No rollout with id 'ro-000000000000'."),
    Row("store: a span attribute that is an object", "POST", "/v1/agl/spans", {"json": {
        "rollout_id": "ro-x", "attempt_id": "at-x", "sequence_id": 1, "trace_id": "0", "span_id": "1",
        "parent_id": None, "name": "n", "status": {"status_code": "OK"}, "attributes": {"a": {"b": 1}}, "events": [],
        "links": [], "start_time": None, "end_time": None, "context": None, "parent": None,
        "resource": {"attributes": {}, "schema_url": ""}}}, 422, "string_type"),
    Row("store: resources of an unknown type", "POST", "/v1/agl/resources", {"json": {"x": {"resource_type": "tool"}}},
        422, "union_tag_invalid"),
    Row("store: the resources id 'latest'", "POST", "/v1/agl/resources/latest", {"json": {}}, 400,
        "'latest' is reserved and cannot be used as a resources id."),
    Row("a page: a report sent as text/plain", "POST", "/rollout",
        {"content": b'{"rollout_id": "r", "final_reward": 1}', "headers": {"Content-Type": "text/plain"}}, 415,
        NOT_JSON.format("text/plain")),
    Row("a page: store-API resources sent as a form", "POST", "/v1/agl/resources",
        {"content": b'{"llm": {"resource_type": "prompt_template", "template": "x"}}',
         "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
        NOT_JSON.format("application/x-www-form-urlencoded")),
    Row("a page: tasks queued as text/plain", "POST", "/v1/tasks",
        {"content": b'{"tasks": [{"input": 1}]}', "headers": {"Content-Type": "text/plain;charset=UTF-8"}}, 415,
        NOT_JSON.format("text/plain;charset=UTF-8")),
    Row("a page: a report with no type (a Blob)", "POST", "/rollout",
        {"content": b'{"rollout_id": "r", "final_reward": 1}'}, 415,
        "The body must be JSON (Content-Type: application/json); the request gives no type."),
    Row("another site: a report", "POST", "/rollout",
        {"json": {"rollout_id": "r", "final_reward": 1}, "headers": cross_site("cors")}, 403, CROSS_SITE),
    Row("another site: a claim", "GET", "/task", {"headers": cross_site("no-cors")}, 403, CROSS_SITE),
    Row("another site: a link to /task", "GET", "/task", {"headers": cross_site("navigate")}, 403, CROSS_SITE),
    Row("another site: store-API resources", "POST", "/v1/agl/resources",
        {"json": {"llm": {"resource_type": "prompt_template", "template": "x"}}, "headers": cross_site("cors")}, 403,
        CROSS_SITE),
    Row("another origin: a form's cancel of the queue (no Sec-Fetch-Site, as to 0.0.0.0)", "POST",
        "/v1/queue/cancel", {"headers": {"Origin": "http://evil.test:8000", "Content-Type": "text/plain"}}, 403,
        ANOTHER_ORIGIN.format("http://evil.test:8000")),
    Row("another origin: another port of this host", "POST", "/v1/queue/pause",
        {"headers": {"Origin": "http://127.0.0.1:3000"}}, 403, ANOTHER_ORIGIN.format("http://127.0.0.1:3000")),
    Row("another origin: a report", "POST", "/rollout",
        {"json": {"rollout_id": "r", "final_reward": 1}, "headers": {"Origin": "https://evil.test"}}, 403,
        ANOTHER_ORIGIN.format("https://evil.test")),
    Row("another origin: a sandboxed page's claim", "GET", "/task", {"headers": {"Origin": "null"}}, 403,
        ANOTHER_ORIGIN.format("null")),
    Row("a rebound name: the latest resources, API key and all", "GET", "/resources/latest",
        {"headers": {"Host": "evil.test"}}, 403, REBOUND),
    Row("a rebound name: a report", "POST", "/rollout",
        {"json": {"rollout_id": "r", "final_reward": 1}, "headers": {"Host": "evil.test"}}, 403, REBOUND),
    Row("a rebound name: a claim", "GET", "/task", {"headers": {"Host": "evil.test:8000"}}, 403,
        REBOUND.replace("evil.test", "evil.test:8000")),
    Row("otlp: JSON instead of protobuf", "POST", "/v1/traces", raw(b"{}"), 400,
        b"\x08\x03\x12NUnsupported Content-Type 'application/json', expected 'application/x-protobuf'"),
    Row("otlp: not protobuf", "POST", "/v1/traces", {"content": b"\xff\x00garbage",
        "headers": {"Content-Type": "application/x-protobuf"}}, 400, b"\x08\x03\x12"),
]  # fmt: skip


def state_of(daemon: Daemon) -> tuple[Any, ...]:
    status = daemon.status()
    statistics = daemon.get("/v1/agl/statistics").json()
    counted = ("total_rollouts", "total_attempts", "total_spans", "total_resources", "total_workers")
    return (status["tasks"], status["rollouts"], status["resources"], status["duplicates"],
            status["unsolicited"], status["last_seq"], *(statistics[key] for key in counted))  # fmt: skip


@pytest.mark.parametrize("row", CATALOGUE, ids=[row.name for row in CATALOGUE])
def test_each_bad_input_is_refused_with_its_reason_and_changes_nothing(
    shared_daemon: Daemon, row: Row
) -> None:
    before = state_of(shared_daemon)
    request = dict(row.request)
    headers = dict(request.pop("headers", {}))
    if row.token is not None:
        headers["Authorization"] = f"Bearer {shared_daemon.token if row.token else 'not-the-token'}"
    response = fetch(row.method, shared_daemon.url + row.path, headers=headers, timeout=60, **request)
    assert response.status_code == row.status
    if isinstance(row.answer, bytes):
        assert response.content.startswith(row.answer)
    elif row.answer is not None:
        detail = response.json()["detail"]
        assert (detail if isinstance(detail, str) else detail[0]["type"]) == row.answer
    assert state_of(shared_daemon) == before


def test_the_catalogue_has_the_forty_rows_the_docs_promise() -> None:
    assert len(CATALOGUE) >= 40
    assert len({row.name for row in CATALOGUE}) == len(CATALOGUE)


def test_docs_reliability_lists_every_row_of_the_catalogue_with_its_answer() -> None:
    """Each row of the docs' table names the status its case is answered, and its sentence,
    word for word (JSON-escaped, `<...>` standing for a part too long to quote; a remark may
    follow), or says it is the row above's."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    said = {
        line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[-1] for line in doc.splitlines() if line[:2] == "| "
    }
    assert [row.name for row in CATALOGUE if row.name not in said] == []
    wrong, above = [], None
    for row in CATALOGUE:
        answer = said[row.name]
        quoted = re.match(rf"{row.status} `([^`]*)`", answer)
        if isinstance(row.answer, str) and " " in row.answer:  # a sentence, not a type in FastAPI's list
            sentence = json.dumps(row.answer)[1:-1]
            if quoted:
                pattern = ".+".join(re.escape(part) for part in re.split(r"<[^>]+>", quoted[1]))
                right = re.fullmatch(pattern, sentence) is not None
            else:
                right = answer == f"{row.status}, the same sentence |" and row.answer == above
        else:
            right = answer.startswith(str(row.status))
        if not right:
            wrong.append((row.name, answer))
        above = row.answer
    assert wrong == []


def test_an_api_key_never_reaches_the_log_an_error_or_the_metrics(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--log-level", "debug")
    secret = "sk-never-to-be-seen-0123456789"
    llm = {"resource_type": "llm", "endpoint": "http://x/v1", "model": "m", "api_key": secret}
    daemon.publish({"llm": llm})
    assert daemon.post("/v1/agl/resources", json={"llm": llm}).status_code == 201
    errors = [
        daemon.post("/v1/agl/resources", json={"llm": {**llm, "model": 5}}),  # FastAPI's 422 echoes the input
        daemon.post(
            "/v1/agl/queues/rollouts/enqueue",
            json={"rollouts": [{"input": 1, "config": {"max_attempts": llm}}]},
        ),
        daemon.api("POST", "/v1/resources", json={"resources": {"llm": {**llm, "endpoint": None}}}),
        daemon.post("/rollout", json={"rollout_id": 1, "metadata": {"llm": llm}}),
    ]
    assert all(response.status_code == 422 for response in errors)
    seen = [r.text for r in errors] + [daemon.get("/metrics").text, daemon.api("GET", "/v1/resources").text]
    daemon.terminate()
    seen.append(daemon.log_path.read_text())
    assert [text for text in seen if secret in text] == []
