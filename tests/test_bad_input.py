"""Bad input gets a 4xx that says why, on a connection that stays usable, and changes
nothing: one door after another (docs/reliability.md lists the cases)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from daemon import Daemon

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
    daemon: Daemon, levels: int, where: str, method: str, path: str, body: Any
) -> None:
    headers = {"Authorization": f"Bearer {daemon.token}"}
    with httpx.Client(base_url=daemon.url, headers=headers, timeout=30) as client:
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
