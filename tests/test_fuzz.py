"""Every route of every protocol, fuzzed from the OpenAPI document the daemon serves for
it: whatever schemathesis sends, valid or not, no answer is a 5xx, and every answer is
one the document describes (its status code, content type and schema).

The suite runs `FUZZ_EXAMPLES` (default 10) requests per route and mode; a longer run:
`FUZZ_EXAMPLES=500 python -m pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from daemon import Daemon, fetch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import UndefinedStatusCode
from schemathesis.schemas import APIOperation

from agl_cli.server.app import worker_openapi
from agl_cli.server.management import management_openapi

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
NOT_FUZZED = {
    "POST /v1/shutdown": "stops the daemon (tests/test_cli_daemon.py)",
    "GET /v1/rollouts/stream": "never ends (tests/test_cli_rollouts.py follows it)",
    "GET /v1/dashboard/stream": "never ends (the dashboard's tests follow it)",
}
LONGEST_WAIT = 0.2  # seconds: a long poll may wait as long as it is asked to; the fuzz does not
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
# Invalid input must be refused (4xx), never crash; its refusal need not match a schema.
NEGATIVE_CHECKS = [checks.not_a_server_error, checks.status_code_conformance]

DOCUMENTS = {"workers": worker_openapi(), "management": management_openapi()}


def _operations() -> Iterator[Any]:
    """(document, operation, mode) for every route; invalid input only where a route
    takes some (a body, or query parameters or headers)."""
    for name, document in DOCUMENTS.items():
        for result in schemathesis.openapi.from_dict(document).get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            if label in NOT_FUZZED:
                continue
            yield pytest.param(name, operation, GenerationMode.POSITIVE, id=f"{label} valid")
            described = document["paths"][operation.path][operation.method]
            takes = "requestBody" in described or any(p["in"] != "path" for p in described["parameters"])
            if takes:
                yield pytest.param(name, operation, GenerationMode.NEGATIVE, id=f"{label} invalid")


OPERATIONS = list(_operations())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the whole fuzz: what earlier requests left behind makes later ones
    meet real rollouts, attempts and resources."""
    daemon = Daemon(tmp_path_factory.mktemp("fuzz") / "state").start()
    yield daemon
    daemon.close()


def test_the_served_documents_are_the_ones_fuzzed(fuzzed: Daemon) -> None:
    assert fuzzed.get("/openapi.json").json() == DOCUMENTS["workers"]
    assert fuzzed.api("GET", "/v1/openapi.json").json() == DOCUMENTS["management"]


def test_every_route_but_the_endless_ones_is_fuzzed() -> None:
    labels = {str(param.id).rsplit(" ", 1)[0] for param in OPERATIONS}
    every = {
        f"{method.upper()} {path}"
        for document in DOCUMENTS.values()
        for path, item in document["paths"].items()
        for method in item
    }
    assert labels == every - NOT_FUZZED.keys()
    assert {"GET /task", "POST /rollout", "POST /v1/agl/spans", "POST /v1/tasks"} <= labels


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_operation_has_an_id_of_its_own(document: str) -> None:
    """Client generators make methods of them: two alike would make one method vanish."""
    ids = [op["operationId"] for item in DOCUMENTS[document]["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert "query_rollouts" in ids or "list_tasks" in ids


@pytest.mark.parametrize(("document", "operation", "mode"), OPERATIONS)
def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    fuzzed: Daemon, document: str, operation: APIOperation, mode: GenerationMode
) -> None:
    headers = {"Authorization": f"Bearer {fuzzed.token}"} if document == "management" else {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        _shorten_waits(case)
        response = case.call(base_url=fuzzed.url, headers=headers, timeout=30)
        case.validate_response(
            response, checks=CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS, headers=headers
        )

    fuzz()


@pytest.mark.parametrize("document", DOCUMENTS)
def test_sequences_that_use_what_earlier_answers_returned_get_no_server_error(
    document: str, tmp_path: Path
) -> None:
    """Stateful: schemathesis links answers to later requests by the names in the document
    (an enqueued rollout's id to its attempts, a span's attempt to the next span, ...).
    Each sequence gets a daemon of its own, so that a sequence replayed meets the same
    answers (hypothesis requires it)."""
    workflow = schemathesis.openapi.from_dict(DOCUMENTS[document]).as_state_machine()
    sequences = itertools.count()

    class Workflow(workflow):  # type: ignore[misc,valid-type]
        def setup(self) -> None:
            self.daemon = Daemon(tmp_path / f"state{next(sequences)}", "--memory").start()
            self.headers = (
                {"Authorization": f"Bearer {self.daemon.token}"} if document == "management" else {}
            )

        def teardown(self) -> None:
            self.daemon.close()

        def before_call(self, case: Any) -> None:
            _shorten_waits(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": self.daemon.url, "headers": self.headers, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, headers=self.headers)

    run_state_machine_as_test(
        Workflow,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=10,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )


def _shorten_waits(case: Any) -> None:
    """Long polls wait at most `LONGEST_WAIT`, so that the fuzz ends."""
    if case.path == "/task" and isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = LONGEST_WAIT
    if case.path == "/v1/agl/waits/rollouts" and isinstance(case.body, dict):
        case.body["timeout"] = LONGEST_WAIT


@settings(max_examples=EXAMPLES * 5, deadline=None, database=None, derandomize=True)
@given(body=st.binary(max_size=4096))
def test_an_otlp_export_that_is_not_protobuf_gets_400_never_a_server_error(
    fuzzed: Daemon, body: bytes
) -> None:
    response = fetch(
        "POST",
        f"{fuzzed.url}/v1/traces",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code in (200, 400), response.text
    assert response.headers["content-type"] == "application/x-protobuf"


def test_fuzzing_fails_on_a_route_that_answers_outside_its_document(fuzzed: Daemon) -> None:
    """The checks bite: against a document that promises only a 422 for `GET /task`,
    the daemon's 200 is a failure."""
    get_task = DOCUMENTS["workers"]["paths"]["/task"]["get"]
    narrowed = {**get_task, "responses": {"422": get_task["responses"]["422"]}}
    schema = schemathesis.openapi.from_dict({**DOCUMENTS["workers"], "paths": {"/task": {"get": narrowed}}})
    [result] = schema.get_all_operations()
    case = result.ok().Case(query={})
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(case.call(base_url=fuzzed.url, timeout=30), checks=CHECKS)
    assert [type(failure) for failure in caught.value.exceptions] == [UndefinedStatusCode]
