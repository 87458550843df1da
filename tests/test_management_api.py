"""The management API under /v1, against a real `agl serve`: every route, every refusal."""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import psutil
import pytest
from calls import count_calls
from daemon import Daemon, env_without_agl, fetch, wait_until
from httpx_sse import ServerSentEvent, connect_sse

from agl_cli.api_limits import MAX_LIST_LIMIT, MAX_PER_REQUEST
from agl_cli.client import AglClient, DaemonUnreachable, ResponseError
from agl_cli.embedded import AgentLightningServer
from agl_cli.models import ResourcesUpdate
from agl_cli.server import schemas
from agl_cli.server.app import create_app
from agl_cli.store import MemoryStore

LLM = {"resource_type": "llm", "endpoint": "http://llm:8000/v1", "model": "qwen", "api_key": "sk-secret"}
PROXY = {**LLM, "resource_type": "proxy_llm", "api_key": "sk-proxy"}
PROMPT = {"resource_type": "prompt_template", "template": "Solve {q}", "engine": "f-string"}


def detail(response: httpx.Response) -> Any:
    return response.json()["detail"]


def queued_count(daemon: Daemon) -> int:
    count: int = daemon.status()["tasks"]["queued"]
    return count


def complete(daemon: Daemon, *rewards: float) -> list[str]:
    """Queue, claim and report one task per reward; their rollout ids."""
    ids = daemon.queue(*range(len(rewards)))
    for reward in rewards:
        task = daemon.claim()
        assert task is not None
        daemon.report(task["rollout_id"], final_reward=reward)
    return ids


# --- tasks ---------------------------------------------------------------------------------


def test_queued_tasks_are_listed_in_order_with_their_life_cycle(daemon: Daemon) -> None:
    response = daemon.api(
        "POST",
        "/v1/tasks",
        json={"tasks": [{"input": {"q": 1}, "mode": "train", "metadata": {"k": "v"}}, {"input": None}]},
    )
    assert response.status_code == 201
    ids = response.json()["rollout_ids"]
    assert len(ids) == 2 and all(rollout_id.startswith("rollout-") for rollout_id in ids)
    claimed = daemon.claim()
    assert claimed is not None and claimed["rollout_id"] == ids[0]

    tasks = daemon.api("GET", "/v1/tasks").json()["tasks"]
    assert [t["rollout_id"] for t in tasks] == ids
    first, second = (schemas.TaskRecord.model_validate(t) for t in tasks)
    assert set(tasks[0]) == {
        "rollout_id", "input", "mode", "resources_id", "create_time", "last_claim_time", "num_claims",
        "metadata", "status", "deadline", "completed_time", "duplicates",
    }  # fmt: skip
    assert (first.status.value, first.input, first.mode, first.metadata, first.num_claims) == (
        "claimed", {"q": 1}, "train", {"k": "v"}, 1,
    )  # fmt: skip
    assert first.deadline is not None and first.last_claim_time is not None
    assert abs(first.deadline - first.last_claim_time - 300) < 1
    assert (second.status.value, second.input, second.deadline, second.num_claims) == (
        "queued",
        None,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"tasks": [{"input": 1}, {"input": 2, "colour": "red"}]}, "extra_forbidden"),
        ({"tasks": [{"input": 1}, {"input": 2, "mode": "training"}]}, "literal_error"),
        ({"tasks": [{"input": 1}, {"mode": "train"}]}, "missing"),
        ({"tasks": [{"input": 1, "resources_id": "  "}]}, "value_error"),
        ({"tasks": [{"input": 1, "metadata": [1]}]}, "dict_type"),
        ({"tasks": []}, "too_short"),
        ({"tasks": [{"input": i} for i in range(10_001)]}, "too_long"),
        ({"task": [{"input": 1}]}, "missing"),
        ([{"input": 1}], "model_attributes_type"),
    ],
    ids=[
        "unknown field",
        "bad mode",
        "no input",
        "blank resources_id",
        "list metadata",
        "none",
        "10,001",
        "no tasks",
        "array",
    ],
)
def test_a_bad_batch_of_tasks_is_a_422_and_queues_nothing(
    shared_daemon: Daemon, body: Any, error_type: str
) -> None:
    response = shared_daemon.api("POST", "/v1/tasks", json=body)
    assert response.status_code == 422
    assert error_type in [issue["type"] for issue in detail(response)]
    schemas.ValidationErrors.model_validate(response.json())
    assert queued_count(shared_daemon) == 0


def test_a_body_that_is_not_json_is_a_422(daemon: Daemon) -> None:
    response = daemon.api(
        "POST", "/v1/tasks", content=b'{"tasks": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert detail(response)[0]["type"] == "json_invalid"


def test_the_client_says_why_the_daemon_could_not_read_a_body(daemon: Daemon) -> None:
    """Not where in the body it stopped (a number the user never saw), but its reason."""
    with AglClient(daemon.url, daemon.token) as client, pytest.raises(ResponseError) as refused:
        client.queue(b'[{"input": [1, NaN]}]')
    assert str(refused.value) == (
        "The daemon could not read the request as JSON (unexpected character, expected a JSON value)."
    )


def test_a_change_unanswered_in_time_may_have_been_made_and_the_client_says_so(daemon: Daemon) -> None:
    """The daemon took the request, then did not answer (stopped, here, by SIGSTOP)."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{daemon.proc.pid}/stat")
    wait_until(lambda: stat.read_text().rpartition(")")[2].split()[0] == "T", "the daemon to stop", 30)
    try:
        with AglClient(daemon.url, daemon.token, timeout=1.0) as client:
            with pytest.raises(DaemonUnreachable) as unanswered:
                client.pause()
            assert str(unanswered.value) == (
                f"The agl daemon at {daemon.url} did not answer in time; it may have made the change all the same."
            )
            with pytest.raises(DaemonUnreachable) as unanswered:
                client.status()
            assert str(unanswered.value) == f"The agl daemon at {daemon.url} did not answer in time."
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: daemon.status()["paused"], "the pause it had taken to be made", 30)  # it was


def _received_unread(port: int) -> bool:
    """Whether a connection to `port` on this machine holds bytes its server has not read."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _, state, queues = line.split()[1:5]
            if int(local.rpartition(":")[2], 16) == port and state == "01" and int(queues.split(":")[1], 16):
                return True
    return False


def test_a_change_whose_daemon_died_before_answering_may_have_been_made_and_the_client_says_so(
    daemon: Daemon,
) -> None:
    """The connection broke, not refused: the daemon had the request (here, in its socket,
    stopped by SIGSTOP, then killed), so it may have made the change before it went."""
    assert daemon.proc is not None
    port = int(daemon.url.rpartition(":")[2])
    with AglClient(daemon.url, daemon.token, timeout=30.0) as client:
        client.status()  # the connection the change goes on, open while the daemon runs
        daemon.proc.send_signal(signal.SIGSTOP)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pausing = pool.submit(client.pause)
            wait_until(lambda: _received_unread(port), "the request to reach the daemon's socket", 30)
            daemon.proc.kill()
            with pytest.raises(DaemonUnreachable) as unanswered:
                pausing.result(30)
    assert str(unanswered.value) == (
        f"The connection to the agl daemon at {daemon.url} broke; it may have made the change all the same."
    )


def test_tasks_are_listed_by_status_and_in_pages_with_how_many_there_are(daemon: Daemon) -> None:
    ids = daemon.queue("a", "b", "c", "d")
    daemon.claim()
    assert daemon.api("POST", f"/v1/tasks/{ids[3]}/cancel").status_code == 200
    in_all = {None: 4, "queued": 2, "claimed": 1, "cancelled": 1, "completed": 0}

    def listed(**params: Any) -> list[str]:
        response = daemon.api("GET", "/v1/tasks", params=params)
        assert response.status_code == 200
        assert response.json()["total"] == in_all[params.get("status")]  # whatever the page
        return [task["rollout_id"] for task in response.json()["tasks"]]

    assert listed() == ids
    assert listed(status="queued") == ids[1:3]
    assert listed(status="claimed") == ids[:1]
    assert listed(status="cancelled") == ids[3:]
    assert listed(status="completed") == []
    assert listed(limit=2) == ids[:2]
    assert listed(limit=2, offset=3) == ids[3:]
    assert listed(status="queued", offset=1) == ids[2:3]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"status": "done"},
            "Query parameter 'status' must be one of: queued, claimed, completed, failed, cancelled; not 'done'.",
        ),
        ({"limit": "0"}, "Query parameter 'limit' must be between 1 and 10000."),
        ({"limit": "10001"}, "Query parameter 'limit' must be between 1 and 10000."),
        ({"limit": "many"}, "Query parameter 'limit' must be a whole number, not 'many'."),
        ({"limit": "1_0"}, "Query parameter 'limit' must be a whole number, not '1_0'."),
        ({"limit": " 7 "}, "Query parameter 'limit' must be a whole number, not ' 7 '."),
        ({"limit": "٣"}, "Query parameter 'limit' must be a whole number, not '٣'."),
        ({"offset": "-1"}, "Query parameter 'offset' must be between 0 and 4611686018427387904."),
    ],
)
def test_a_bad_task_listing_is_a_422_that_says_why(
    shared_daemon: Daemon, params: dict[str, str], message: str
) -> None:
    response = shared_daemon.api("GET", "/v1/tasks", params=params)
    assert (response.status_code, detail(response)) == (422, message)


def test_a_task_is_shown_by_its_id(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue({"q": 2}, mode="val")
    response = daemon.api("GET", f"/v1/tasks/{rollout_id}")
    assert response.status_code == 200
    record = schemas.TaskRecord.model_validate(response.json())
    assert (record.rollout_id, record.input, record.mode, record.status.value) == (
        rollout_id, {"q": 2}, "val", "queued",
    )  # fmt: skip
    missing = daemon.api("GET", "/v1/tasks/rollout-nope")
    assert (missing.status_code, missing.json()) == (404, {"detail": "No task with id 'rollout-nope'."})


def test_a_completed_task_shows_its_completion_and_duplicates(daemon: Daemon) -> None:
    [rollout_id] = complete(daemon, 1.0)
    daemon.report(rollout_id, final_reward=2.0)
    record = daemon.api("GET", f"/v1/tasks/{rollout_id}").json()
    assert (record["status"], record["duplicates"], record["deadline"]) == ("completed", 1, None)
    assert record["completed_time"] >= record["last_claim_time"]


def test_a_cancelled_task_is_never_handed_out(daemon: Daemon) -> None:
    [cancelled, kept] = daemon.queue("x", "y")
    response = daemon.api("POST", f"/v1/tasks/{cancelled}/cancel")
    assert response.status_code == 200
    assert (response.json()["rollout_id"], response.json()["status"]) == (cancelled, "cancelled")
    task = daemon.claim()
    assert task is not None and task["rollout_id"] == kept
    assert daemon.claim() is None
    again = daemon.api("POST", f"/v1/tasks/{cancelled}/cancel")
    assert (again.status_code, detail(again)) == (
        409,
        f"Task '{cancelled}' is cancelled and cannot be cancelled.",
    )


def refused_whole(
    daemon: Daemon, path: str, untouched: tuple[str, str], refusals: list[tuple[list[str], int, str]]
) -> None:
    """Each request of `refusals` (the ids, then the status and the sentence it gets) is
    refused at `path` as a whole: the task `untouched` names keeps its status."""
    rollout_id, status = untouched
    for ids, code, sentence in refusals:
        refused = daemon.api("POST", path, json={"rollout_ids": ids})
        assert (refused.status_code, detail(refused)) == (code, sentence)
        assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == status


def test_tasks_are_cancelled_several_at_once_all_or_none(daemon: Daemon) -> None:
    done, claimed, kept = daemon.queue("x", "y", "z")
    for _ in range(2):
        daemon.claim()
    daemon.report(done)
    refused_whole(daemon, "/v1/tasks/cancel", (claimed, "claimed"), [
        ([claimed, "rollout-nope"], 404, "No task with id 'rollout-nope'."),
        ([claimed, done], 409, f"Task '{done}' is completed and cannot be cancelled."),
    ])  # fmt: skip
    response = daemon.api("POST", "/v1/tasks/cancel", json={"rollout_ids": [kept, claimed]})
    assert response.status_code == 200
    records = schemas.TaskList.model_validate(response.json()).tasks
    assert [(r.rollout_id, r.status) for r in records] == [(kept, "cancelled"), (claimed, "cancelled")]
    assert daemon.claim() is None


def test_cancelling_the_queue_leaves_claimed_tasks_to_finish(daemon: Daemon) -> None:
    claimed, *_ = daemon.queue(*range(5))
    daemon.claim()
    response = daemon.api("POST", "/v1/queue/cancel")
    assert response.status_code == 200
    assert schemas.Cancelled.model_validate(response.json()).cancelled == 4
    assert daemon.claim() is None
    assert daemon.status()["tasks"] == {
        "queued": 0,
        "claimed": 1,
        "completed": 0,
        "failed": 0,
        "cancelled": 4,
    }
    daemon.report(claimed, final_reward=1.0)
    assert daemon.api("GET", f"/v1/tasks/{claimed}").json()["status"] == "completed"
    assert daemon.api("POST", "/v1/queue/cancel").json() == {"cancelled": 0}


def fail_claims(daemon: Daemon, count: int) -> list[str]:
    """Queue `count` tasks, claim them through the store API and fail every attempt."""
    ids = daemon.queue(*range(count))
    daemon.post("/v1/agl/queues/rollouts/dequeue", json={"limit": count}).raise_for_status()
    for rollout_id in ids:
        daemon.fail_attempt(rollout_id)
    return ids


def test_tasks_are_retried_several_at_once_all_or_none(daemon: Daemon) -> None:
    [failed] = fail_claims(daemon, 1)
    cancelled, queued = daemon.queue("x", "y")
    daemon.api("POST", f"/v1/tasks/{cancelled}/cancel").raise_for_status()
    refused_whole(daemon, "/v1/tasks/retry", (failed, "failed"), [
        ([failed, "rollout-nope"], 404, "No task with id 'rollout-nope'."),
        ([failed, queued], 409, f"Task '{queued}' is queued and cannot be retried: only failed or cancelled tasks can."),
    ])  # fmt: skip
    response = daemon.api("POST", "/v1/tasks/retry", json={"rollout_ids": [cancelled, failed]})
    assert response.status_code == 200
    records = schemas.TaskList.model_validate(response.json()).tasks
    assert [(r.rollout_id, r.status) for r in records] == [(cancelled, "queued"), (failed, "queued")]
    assert [daemon.claim()["rollout_id"] for _ in range(3)] == [queued, cancelled, failed]  # type: ignore[index]


def test_retrying_every_failed_task_takes_them_all_in_queue_order(daemon: Daemon) -> None:
    ids = fail_claims(daemon, 150)  # more than one write's worth
    response = daemon.api("POST", "/v1/tasks/retry-failed")
    assert response.status_code == 200
    assert schemas.Retried.model_validate(response.json()).retried == 150
    assert daemon.status()["tasks"]["queued"] == 150
    assert [daemon.claim()["rollout_id"] for _ in range(3)] == ids[:3]  # type: ignore[index]
    assert daemon.api("POST", "/v1/tasks/retry-failed").json() == {"retried": 0}


@pytest.mark.parametrize("path", ["/v1/tasks/retry", "/v1/tasks/retry-failed"])
def test_a_retry_wakes_a_waiting_worker(daemon: Daemon, path: str) -> None:
    [rollout_id] = fail_claims(daemon, 1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        polling = pool.submit(daemon.get, "/task", params={"wait": 20})
        wait_until(lambda: daemon.requests_in_flight() == 1, "the worker to wait")
        assert daemon.api("POST", path, json={"rollout_ids": [rollout_id]}).status_code == 200
        task = polling.result(timeout=10).json()["task"]
    assert (task["rollout_id"], task["num_claims"]) == (rollout_id, 2)


def test_a_paused_queue_hands_out_nothing_through_either_door_until_resumed(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("waits")
    response = daemon.api("POST", "/v1/queue/pause")
    assert (response.status_code, schemas.QueueState.model_validate(response.json()).paused) == (200, True)
    assert daemon.get("/task").json() == {"is_available": False, "task": None}
    assert daemon.post("/v1/agl/queues/rollouts/dequeue", json={"limit": 5}).json() == []
    assert (daemon.status()["paused"], daemon.metric("agl_queue_paused")) == (True, 1)
    daemon.queue("queued meanwhile")  # queueing goes on
    assert daemon.api("POST", "/v1/queue/resume").json() == {"paused": False}
    assert (daemon.status()["paused"], daemon.metric("agl_queue_paused")) == (False, 0)
    assert daemon.claim()["rollout_id"] == rollout_id  # type: ignore[index]


def test_resuming_the_queue_wakes_a_waiting_worker(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("waits")
    daemon.api("POST", "/v1/queue/pause").raise_for_status()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        polling = pool.submit(daemon.get, "/task", params={"wait": 20})
        wait_until(lambda: daemon.requests_in_flight() == 1, "the worker to wait")
        daemon.api("POST", "/v1/queue/resume").raise_for_status()
        task = polling.result(timeout=10).json()["task"]
    assert task["rollout_id"] == rollout_id


def test_a_claimed_task_can_be_cancelled_but_a_completed_one_cannot(daemon: Daemon) -> None:
    [claimed] = daemon.queue("x")
    daemon.claim()
    assert daemon.api("POST", f"/v1/tasks/{claimed}/cancel").json()["status"] == "cancelled"
    [done] = complete(daemon, 0.5)
    response = daemon.api("POST", f"/v1/tasks/{done}/cancel")
    assert (response.status_code, detail(response)) == (
        409,
        f"Task '{done}' is completed and cannot be cancelled.",
    )
    assert daemon.api("GET", f"/v1/tasks/{done}").json()["status"] == "completed"
    unknown = daemon.api("POST", "/v1/tasks/rollout-nope/cancel")
    assert (unknown.status_code, detail(unknown)) == (404, "No task with id 'rollout-nope'.")


# --- batches -------------------------------------------------------------------------------


def new_batch(daemon: Daemon) -> str:
    response = daemon.api("POST", "/v1/batches")
    assert response.status_code == 201
    batch_id: str = schemas.BatchCreated.model_validate(response.json()).batch_id
    assert batch_id.startswith("batch-")
    return batch_id


def stage(daemon: Daemon, batch_id: str, *inputs: Any) -> httpx.Response:
    return daemon.api("POST", f"/v1/batches/{batch_id}/tasks", json={"tasks": [{"input": i} for i in inputs]})


def test_a_batch_staged_in_parts_is_queued_at_once_on_commit(daemon: Daemon) -> None:
    batch_id = new_batch(daemon)
    first = stage(daemon, batch_id, "a", "b")
    assert first.status_code == 200
    assert first.json()["staged"] == 2 and len(first.json()["rollout_ids"]) == 2
    second = stage(daemon, batch_id, "c")
    assert second.json()["staged"] == 3
    assert daemon.api("GET", "/v1/tasks").json()["tasks"] == []
    assert daemon.claim() is None

    committed = daemon.api("POST", f"/v1/batches/{batch_id}/commit")
    assert (committed.status_code, committed.json()) == (200, {"queued": 3})
    ids = first.json()["rollout_ids"] + second.json()["rollout_ids"]
    assert [t["rollout_id"] for t in daemon.api("GET", "/v1/tasks").json()["tasks"]] == ids
    assert [daemon.claim()["input"] for _ in ids] == ["a", "b", "c"]  # type: ignore[index]


def test_a_commit_wakes_a_waiting_worker(daemon: Daemon) -> None:
    batch_id = new_batch(daemon)
    stage(daemon, batch_id, "late")
    timer = threading.Timer(0.5, daemon.api, args=("POST", f"/v1/batches/{batch_id}/commit"))
    timer.start()
    started = time.monotonic()
    body = daemon.get("/task", params={"wait": 20}).json()
    timer.join()
    assert body["task"]["input"] == "late"
    assert time.monotonic() - started < 10


def test_a_bad_part_is_refused_and_leaves_the_batch_as_it_was(daemon: Daemon) -> None:
    batch_id = new_batch(daemon)
    good = stage(daemon, batch_id, 1, 2).json()["rollout_ids"]
    bad = daemon.api(
        "POST", f"/v1/batches/{batch_id}/tasks", json={"tasks": [{"input": 3}, {"input": 4, "mode": "x"}]}
    )
    assert bad.status_code == 422
    assert detail(bad)[0]["loc"] == ["body", "tasks", 1, "mode"]
    assert daemon.api("POST", f"/v1/batches/{batch_id}/commit").json() == {"queued": 2}
    assert [t["rollout_id"] for t in daemon.api("GET", "/v1/tasks").json()["tasks"]] == good


def test_a_discarded_batch_queues_nothing(daemon: Daemon) -> None:
    batch_id = new_batch(daemon)
    stage(daemon, batch_id, 1, 2, 3)
    response = daemon.api("DELETE", f"/v1/batches/{batch_id}")
    assert (response.status_code, response.json()) == (200, {"discarded": 3})
    assert daemon.api("POST", f"/v1/batches/{batch_id}/commit").status_code == 404
    assert daemon.status()["tasks"]["queued"] == 0


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", "/tasks"), ("POST", "/commit"), ("DELETE", "")],
    ids=["stage", "commit", "discard"],
)
def test_an_unknown_or_finished_batch_is_a_404(daemon: Daemon, method: str, suffix: str) -> None:
    finished = new_batch(daemon)
    daemon.api("POST", f"/v1/batches/{finished}/commit")
    for batch_id in ("batch-nope", finished):
        response = daemon.api(method, f"/v1/batches/{batch_id}{suffix}", json={"tasks": [{"input": 1}]})
        assert (response.status_code, response.json()) == (404, {"detail": f"No batch with id '{batch_id}'."})
    assert queued_count(daemon) == 0


def test_a_batch_not_committed_before_a_restart_is_gone(daemon: Daemon) -> None:
    batch_id = new_batch(daemon)
    stage(daemon, batch_id, *range(50))
    daemon.kill()
    daemon.start()
    assert daemon.api("POST", f"/v1/batches/{batch_id}/commit").status_code == 404
    assert daemon.api("GET", "/v1/tasks").json()["tasks"] == []


# --- resources -----------------------------------------------------------------------------


def test_api_keys_are_hidden_from_people_unless_revealed(daemon: Daemon) -> None:
    bundle = {"main": LLM, "proxy": PROXY, "keyless": {**LLM, "api_key": None}, "prompt": PROMPT}
    published = daemon.publish(bundle)
    resources_id = published["resources_id"]
    hidden = {"main": "***", "proxy": "***", "keyless": None}
    shown = {"main": "sk-secret", "proxy": "sk-proxy", "keyless": None}

    def keys(update: dict[str, Any]) -> dict[str, Any]:
        ResourcesUpdate.model_validate(update)
        return {name: r["api_key"] for name, r in update["resources"].items() if "api_key" in r}

    assert keys(published) == hidden
    assert keys(daemon.api("GET", f"/v1/resources/{resources_id}").json()) == hidden
    assert keys(daemon.api("GET", "/v1/resources/latest").json()) == hidden
    assert keys(daemon.api("GET", "/v1/resources").json()["resources"][0]) == hidden
    assert keys(daemon.api("GET", f"/v1/resources/{resources_id}", params={"reveal": "true"}).json()) == shown
    assert keys(daemon.api("GET", "/v1/resources", params={"reveal": "true"}).json()["resources"][0]) == shown
    assert keys(daemon.get("/resources/latest").json()) == shown  # workers need the real key
    assert keys(daemon.get(f"/resources/{resources_id}").json()) == shown


def test_resources_are_listed_in_publish_order_and_a_named_id_gets_versions(daemon: Daemon) -> None:
    first = daemon.publish({"prompt": PROMPT})
    named = daemon.publish({"prompt": PROMPT}, resources_id="prod")
    assert (named["resources_id"], named["version"]) == ("prod", 1)
    again = daemon.publish({"prompt": {**PROMPT, "template": "v2 {q}"}}, resources_id="prod")
    assert again["version"] == 2 and again["create_time"] == named["create_time"]

    listing = daemon.api("GET", "/v1/resources").json()
    schemas.ResourcesList.model_validate(listing)
    assert [r["resources_id"] for r in listing["resources"]] == [first["resources_id"], "prod"]
    assert listing["latest_id"] == "prod"
    assert daemon.api("GET", "/v1/resources/latest").json() == again
    assert daemon.api("GET", "/v1/resources/prod").json()["resources"]["prompt"]["template"] == "v2 {q}"
    assert daemon.get("/resources/latest").json()["version"] == 2


def test_a_listing_of_resources_can_keep_to_those_published_last(daemon: Daemon) -> None:
    """A run that publishes a bundle a training step soon has thousands: `last` keeps the
    listing to the newest, still oldest first, and says how many there are; a bundle
    published again counts from then, and once."""
    first, second, third = (daemon.publish({"prompt": PROMPT})["resources_id"] for _ in range(3))
    daemon.publish({"prompt": PROMPT}, resources_id=first)

    def listed(**params: str) -> list[str]:
        listing = daemon.api("GET", "/v1/resources", params=params).json()
        assert (listing["latest_id"], listing["total"]) == (first, 3)
        return [bundle["resources_id"] for bundle in listing["resources"]]

    assert listed(last="2") == [third, first]
    assert listed(last="10") == listed() == [second, third, first]


def test_no_resources_at_all_is_an_empty_list_and_a_404_for_latest(daemon: Daemon) -> None:
    assert daemon.api("GET", "/v1/resources").json() == {"resources": [], "latest_id": None, "total": 0}
    latest = daemon.api("GET", "/v1/resources/latest")
    assert (latest.status_code, latest.json()) == (404, {"detail": "No resources have been published yet."})
    unknown = daemon.api("GET", "/v1/resources/res-nope")
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "No resources with id 'res-nope'."})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"resources": {"good": PROMPT, "x": {"resource_type": "tool"}}},
            "Resource 'x' has unknown resource_type 'tool'; expected one of: llm, proxy_llm, prompt_template.",
        ),
        (
            {"resources": {"x": {"endpoint": "e"}}},
            "Resource 'x' has no resource_type; expected one of: llm, proxy_llm, prompt_template.",
        ),
        (
            {"resources": {"x": {"resource_type": "llm", "model": "m"}}},
            "Resource field 'x.endpoint': Field required.",
        ),
        (
            {"resources": {"p": PROMPT}, "resources_id": "latest"},
            "'latest' is reserved and cannot be used as a resources id.",
        ),
        (
            {"resources": {"p": PROMPT}, "resources_id": "a/b"},
            "A resources id must be at most 200 characters, without '/', '?', '#' or '%' (0.3.0's workers put it in a URL as it is).",
        ),
        (
            {"resources": {"p": PROMPT}, "resources_id": "v1\nv2"},
            "A resources id must not contain control characters (a newline, NUL, a tab).",
        ),
        (
            {"resources": {"p": PROMPT}, "resources_id": "v1\u0000"},
            "A resources id must not contain control characters (a newline, NUL, a tab).",
        ),
    ],
    ids=[
        "unknown type",
        "no type",
        "missing field",
        "reserved id",
        "slash in id",
        "newline in id",
        "NUL in id",
    ],
)
def test_a_bad_bundle_is_a_422_in_one_sentence_and_publishes_nothing(
    shared_daemon: Daemon, body: dict[str, Any], message: str
) -> None:
    response = shared_daemon.api("POST", "/v1/resources", json=body)
    assert (response.status_code, response.json()) == (422, {"detail": message})
    assert shared_daemon.api("GET", "/v1/resources").json()["resources"] == []
    assert shared_daemon.get("/resources/latest").status_code == 404


@pytest.mark.parametrize("body", [{"resources": {}}, {"resources": {"p": PROMPT}, "extra": 1}, {}])
def test_a_publish_body_of_the_wrong_shape_is_a_422(shared_daemon: Daemon, body: dict[str, Any]) -> None:
    response = shared_daemon.api("POST", "/v1/resources", json=body)
    assert response.status_code == 422
    schemas.ValidationErrors.model_validate(response.json())


def test_a_bad_reveal_is_a_422(daemon: Daemon) -> None:
    response = daemon.api("GET", "/v1/resources", params={"reveal": "please"})
    assert (response.status_code, detail(response)) == (
        422,
        "Query parameter 'reveal' must be true or false, not 'please'.",
    )


# --- rollouts ------------------------------------------------------------------------------


def test_rollouts_are_listed_from_a_sequence_number_with_the_last_one(daemon: Daemon) -> None:
    assert daemon.api("GET", "/v1/rollouts").json() == {"rollouts": [], "last_seq": 0}
    ids = complete(daemon, 0.1, 0.2, 0.3)
    daemon.report("elsewhere", final_reward=9.0, novel=[1])
    listing = daemon.api("GET", "/v1/rollouts").json()
    schemas.RolloutList.model_validate(listing)
    rollouts = listing["rollouts"]
    assert [r["rollout_id"] for r in rollouts] == [*ids, "elsewhere"]
    assert [r["seq"] for r in rollouts] == [1, 2, 3, 4] and listing["last_seq"] == 4
    assert [r["attempt"] for r in rollouts] == [1, 1, 1, None]
    assert [r["unsolicited"] for r in rollouts] == [False, False, False, True]
    assert rollouts[3]["novel"] == [1]
    page = daemon.api("GET", "/v1/rollouts", params={"since": 1, "limit": 2}).json()
    assert [r["seq"] for r in page["rollouts"]] == [2, 3] and page["last_seq"] == 4
    assert daemon.api("GET", "/v1/rollouts", params={"since": 4}).json() == {"rollouts": [], "last_seq": 4}


def test_a_rollout_is_shown_by_its_id(daemon: Daemon) -> None:
    [rollout_id] = complete(daemon, 0.75)
    response = daemon.api("GET", f"/v1/rollouts/{rollout_id}")
    assert response.status_code == 200
    record = schemas.RolloutRecord.model_validate(response.json())
    assert (record.rollout_id, record.final_reward, record.seq, record.attempt) == (rollout_id, 0.75, 1, 1)
    missing = daemon.api("GET", "/v1/rollouts/rollout-nope")
    assert (missing.status_code, missing.json()) == (404, {"detail": "No rollout with id 'rollout-nope'."})


@pytest.mark.parametrize("odd_id", ["runs/8/b", "a b\nc", "tab\there", "\u2067rtl"])
def test_any_id_a_worker_reported_can_be_looked_up(daemon: Daemon, odd_id: str) -> None:
    daemon.report(odd_id, final_reward=0.5)
    for path in ("/v1/rollouts/", "/v1/dashboard/rollouts/", "/v1/dashboard/rollout?rollout_id="):
        response = daemon.api("GET", path + quote(odd_id, safe=""))
        assert (response.status_code, response.json()["rollout_id"]) == (200, odd_id), path


def test_a_task_without_a_result_is_a_404_that_says_where_the_task_is(daemon: Daemon) -> None:
    [failed] = daemon.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 0}]}).json()
    assert daemon.post("/v1/agl/queues/rollouts/dequeue", json={}).json()
    daemon.post(f"/v1/agl/rollouts/{failed['rollout_id']}/attempts/latest", json={"status": "failed"})
    claimed, queued, cancelled = daemon.queue(1, 2, 3)
    assert daemon.claim() is not None
    assert daemon.api("POST", f"/v1/tasks/{cancelled}/cancel").status_code == 200
    answers = {
        rollout_id: daemon.api("GET", f"/v1/rollouts/{rollout_id}")
        for rollout_id in (failed["rollout_id"], claimed, queued, cancelled)
    }
    assert {rollout_id: (r.status_code, detail(r)) for rollout_id, r in answers.items()} == {
        failed["rollout_id"]: (404, f"Rollout '{failed['rollout_id']}' has no result: its task failed."),
        claimed: (404, f"Rollout '{claimed}' has no result yet: its task is claimed."),
        queued: (404, f"Rollout '{queued}' has no result yet: its task is queued."),
        cancelled: (404, f"Rollout '{cancelled}' has no result: its task was cancelled."),
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "-1"}, "Query parameter 'since' must be between 0 and 4611686018427387904."),
        ({"since": "now"}, "Query parameter 'since' must be a whole number, not 'now'."),
        ({"limit": "0"}, "Query parameter 'limit' must be between 1 and 10000."),
    ],
)
def test_a_bad_rollout_listing_is_a_422(shared_daemon: Daemon, params: dict[str, str], message: str) -> None:
    response = shared_daemon.api("GET", "/v1/rollouts", params=params)
    assert (response.status_code, detail(response)) == (422, message)


# --- the stream ----------------------------------------------------------------------------


class Stream:
    """Reads `GET /v1/rollouts/stream` on a thread, so a test can act while it is open."""

    def __init__(
        self, daemon: Daemon, params: dict[str, Any] | None = None, last_event_id: str | None = None
    ):
        self.events: list[ServerSentEvent] = []
        self.started = threading.Event()  # the answer's head came: the daemon knows where it starts
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.status_code = 0
        self._arrived = threading.Condition()
        headers = {"Authorization": f"Bearer {daemon.token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(base_url=daemon.url, headers=headers, timeout=httpx.Timeout(30, read=60))
        self._thread = threading.Thread(target=self._read, args=(params or {},), daemon=True)
        self._thread.start()

    def _read(self, params: dict[str, Any]) -> None:
        try:
            with connect_sse(self._client, "GET", "/v1/rollouts/stream", params=params) as source:
                self.status_code = source.response.status_code
                self.started.set()
                for event in source.iter_sse():
                    with self._arrived:
                        self.events.append(event)
                        self._arrived.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()
            with self._arrived:
                self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 15) -> list[ServerSentEvent]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.events) >= count or self.ended.is_set(), timeout)
        assert len(self.events) >= count, (self.events, self.error)
        return self.events[:count]

    def close(self) -> None:
        """Leave a stream that is still open to end with its daemon (a read cannot be interrupted)."""
        if self.ended.is_set():
            self._client.close()


@pytest.fixture
def open_stream(daemon: Daemon) -> Iterator[Callable[..., Stream]]:
    streams: list[Stream] = []

    def open_(params: dict[str, Any] | None = None, last_event_id: str | None = None) -> Stream:
        streams.append(Stream(daemon, params, last_event_id))
        return streams[-1]

    yield open_
    for stream in streams:
        stream.close()


def seqs(events: list[ServerSentEvent]) -> list[int]:
    return [int(event.id) for event in events]


def test_the_stream_replays_stored_rollouts_then_follows_new_ones(
    daemon: Daemon, open_stream: Callable[..., Stream]
) -> None:
    ids = complete(daemon, 0.1, 0.2)
    stream = open_stream()
    replayed = stream.wait_for(2)
    assert [event.event for event in replayed] == ["rollout", "rollout"]
    assert seqs(replayed) == [1, 2]
    records = [schemas.RolloutRecord.model_validate(event.json()) for event in replayed]
    assert [(r.rollout_id, r.final_reward, r.seq) for r in records] == [(ids[0], 0.1, 1), (ids[1], 0.2, 2)]

    [live] = complete(daemon, 0.3)
    event = stream.wait_for(3)[2]
    assert (event.id, event.json()["rollout_id"], event.json()["final_reward"]) == ("3", live, 0.3)
    daemon.report(live, final_reward=1.0)  # a duplicate: counted, not streamed
    daemon.report("elsewhere")
    assert stream.wait_for(4)[3].json() == {**stream.events[3].json(), "rollout_id": "elsewhere", "seq": 4}
    assert len(stream.events) == 4


def test_the_stream_resumes_after_since(daemon: Daemon, open_stream: Callable[..., Stream]) -> None:
    complete(daemon, 0.1, 0.2, 0.3)
    stream = open_stream({"since": 2})
    assert seqs(stream.wait_for(1)) == [3]
    complete(daemon, 0.4)
    assert seqs(stream.wait_for(2)) == [3, 4]


def test_last_event_id_wins_over_since(daemon: Daemon, open_stream: Callable[..., Stream]) -> None:
    complete(daemon, 0.1, 0.2, 0.3)
    stream = open_stream({"since": 0}, last_event_id="1")
    assert seqs(stream.wait_for(2)) == [2, 3]
    now = open_stream({"since": "now"}, last_event_id="2")
    assert seqs(now.wait_for(1)) == [3]


def test_since_now_skips_what_is_stored(daemon: Daemon, open_stream: Callable[..., Stream]) -> None:
    complete(daemon, 0.1, 0.2)
    stream = open_stream({"since": "now"})
    assert stream.started.wait(15), stream.error
    assert stream.events == []
    complete(daemon, 0.3)
    [event] = stream.wait_for(1)
    assert (event.id, event.json()["final_reward"]) == ("3", 0.3)


def test_many_stored_rollouts_are_replayed_in_order(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--memory")  # the same stream; no disk sync per rollout, so quicker to fill
    with httpx.Client(base_url=daemon.url) as worker:
        for index in range(450):  # more than two pages of the store
            worker.post(
                "/rollout", json={"rollout_id": f"r{index}", "final_reward": index}
            ).raise_for_status()
    stream = Stream(daemon, {"since": 10})
    try:
        events = stream.wait_for(440)
    finally:
        stream.close()
    assert seqs(events) == list(range(11, 451))
    assert events[-1].json()["rollout_id"] == "r449"


@pytest.mark.parametrize(
    ("params", "last_event_id", "message"),
    [
        (
            {"since": "later"},
            None,
            f"Query parameter 'since' must be a whole number up to {2**62} or 'now', not 'later'.",
        ),
        (
            {"since": "-3"},
            None,
            f"Query parameter 'since' must be a whole number up to {2**62} or 'now', not '-3'.",
        ),
        (
            {"since": str(2**62 + 1)},
            None,
            f"Query parameter 'since' must be a whole number up to {2**62} or 'now', not '{2**62 + 1}'.",
        ),
        ({}, "abc", f"The Last-Event-ID header must be a whole number up to {2**62}, not 'abc'."),
    ],
)
def test_a_bad_stream_position_is_a_422(
    shared_daemon: Daemon, params: dict[str, str], last_event_id: str | None, message: str
) -> None:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = shared_daemon.api("GET", "/v1/rollouts/stream", params=params, headers=headers)
    assert (response.status_code, detail(response)) == (422, message)


def test_an_open_stream_ends_when_the_daemon_stops_and_does_not_hold_it_up(
    daemon: Daemon, open_stream: Callable[..., Stream]
) -> None:
    complete(daemon, 0.1)
    stream = open_stream()
    stream.wait_for(1)
    started = time.monotonic()
    assert daemon.terminate(timeout=20) == 0
    assert time.monotonic() - started < 5
    assert stream.ended.wait(10)


def test_a_stream_nobody_reads_any_more_does_not_hold_up_the_stop_nor_log_an_error(daemon: Daemon) -> None:
    """Its answer waits for a reader that never comes: it is cut off, not waited for."""
    for index in range(150):  # 4.5 MB to replay: far more than the sockets' buffers hold
        daemon.report(f"r{index}", logs=["x" * 30_000])
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(
            b"GET /v1/rollouts/stream?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {daemon.token}\r\n\r\n".encode()
        )
        assert select.select([reader], [], [], 10)[0]  # the replay began, and is never read
        started = time.monotonic()
        assert daemon.terminate(timeout=30) == 0
        assert time.monotonic() - started < 10  # uvicorn would wait out its 30 s
    assert not [line for line in daemon.said() if "ERROR" in line or "Traceback" in line]


def replaying(reader: socket.socket) -> bool:
    return b"event: rollout" in reader.recv(4096, socket.MSG_PEEK)


def test_streams_nobody_reads_hold_little_of_what_they_replay(daemon: Daemon) -> None:
    """A replay waits in the daemon while its reader does not read (`agl rollouts watch
    --since all | a stalled pipe`): as text, a little at a time, not as pages of parsed
    rollouts, each several times the size of its JSON with its token ids."""
    triplet = {"prompt": {"token_ids": list(range(3000))}, "response": {"token_ids": list(range(3000))}}
    for index in range(300):  # 30 KB of JSON each, 9 MB in all
        daemon.report(f"r{index}", triplets=[triplet])
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)
    before = process.memory_info().rss
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    readers = [socket.create_connection((host, int(port)), timeout=10) for _ in range(10)]
    try:
        for reader in readers:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.sendall(
                b"GET /v1/rollouts/stream?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: Bearer {daemon.token}\r\n\r\n".encode()
            )
        for reader in readers:  # its replay began, and is never read
            wait_until(partial(replaying, reader), "the replay")
        grown = process.memory_info().rss - before
    finally:
        for reader in readers:
            reader.close()
    assert grown < 60 << 20, f"10 streams nobody reads took {grown >> 20} MB"  # 400 MB as pages


async def test_streams_at_the_same_place_share_each_read_and_what_it_sends() -> None:
    """Every open stream wakes when a rollout is stored: were each to read the page and make
    its JSON itself, what a report costs would grow with the dashboards and watches open."""
    store = MemoryStore()
    reads = count_calls(store, "rollouts_after", "rollout_summaries")
    streams = 20
    server = AgentLightningServer(port=0, store=store)
    await server.start()
    seen = [0] * (2 * streams)
    everyone_has = anyio.Event()

    async def follow(index: int, path: str) -> None:
        nonlocal everyone_has
        async with client.stream("GET", path) as events:
            async for line in events.aiter_lines():
                if line == "event: rollout" or line.startswith('data: {"rollouts"'):
                    seen[index] += max(line.count('"rollout_id"'), 1)
                    if min(seen) == max(seen):
                        everyone_has.set()
                        everyone_has = anyio.Event()

    async def report_and_wait(index: int) -> None:
        waiting = everyone_has
        (
            await client.post("/rollout", json={"rollout_id": f"r{index}", "final_reward": 0.5})
        ).raise_for_status()
        with anyio.fail_after(30):
            await waiting.wait()

    try:
        async with (
            httpx.AsyncClient(base_url=server.endpoint, timeout=60) as client,
            anyio.create_task_group() as tasks,
        ):
            for index in range(streams):
                tasks.start_soon(follow, 2 * index, "/v1/rollouts/stream?since=0")
                tasks.start_soon(follow, 2 * index + 1, "/v1/dashboard/stream?since=0")
            await report_and_wait(0)  # every stream is under way
            before = reads.copy()
            for index in range(1, 4):
                await report_and_wait(index)
            tasks.cancel_scope.cancel()
    finally:
        await server.stop()
    assert seen == [4] * (2 * streams)
    made = {name: reads[name] - before[name] for name in ("rollouts_after", "rollout_summaries")}
    # About a read of the page and one of the tail a report (were each stream to read for
    # itself, it would be 20 of each): 138 and 60 reads before they were shared.
    assert max(made.values()) <= 3 * 4, made


# --- the daemon ----------------------------------------------------------------------------


def test_status_tells_everything_at_a_glance(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "30", "--max-attempts", "3")
    resources = daemon.publish({"prompt": PROMPT})
    complete(daemon, 0.5, 0.6)
    daemon.queue("waiting")
    daemon.report("elsewhere")
    [done] = daemon.api("GET", "/v1/tasks", params={"status": "completed", "limit": 1}).json()["tasks"]
    daemon.report(done["rollout_id"])  # a duplicate

    status = daemon.status()
    schemas.Status.model_validate(status)
    assert daemon.proc is not None
    assert (status["pid"], status["address"], status["state_dir"]) == (
        daemon.proc.pid, daemon.url, str(daemon.state_dir),
    )  # fmt: skip
    assert (status["store"], status["task_timeout"], status["max_attempts"]) == ("sqlite", 30.0, 3)
    assert status["tasks"] == {"queued": 1, "claimed": 0, "completed": 2, "failed": 0, "cancelled": 0}
    assert (status["rollouts"], status["unsolicited"], status["duplicates"]) == (3, 1, 1)
    assert (status["forget_tasks"], status["forgotten"]) == (False, 0)
    assert (status["resources"], status["latest_resources_id"], status["last_seq"]) == (
        1, resources["resources_id"], 3,
    )  # fmt: skip
    assert status["version"] and 0 <= status["uptime"] < 120
    assert abs(status["started_time"] + status["uptime"] - time.time()) < 5
    # 2 claims and 3 kept rollouts within the first seconds: the rate is over the time since start
    rates = status["rates"]
    assert 1 <= rates["seconds"] < 60
    assert round(rates["claims_per_second"] * rates["seconds"]) == 2
    assert round(rates["rollouts_per_second"] * rates["seconds"]) == 3


def test_status_names_the_memory_store(make_daemon: Callable[..., Daemon]) -> None:
    status = make_daemon("--memory").status()
    assert (status["store"], status["max_attempts"], status["task_timeout"]) == ("memory", None, 300.0)


def test_shutdown_stops_the_daemon_gracefully_with_status_0(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue("kept")
    assert daemon.claim() is not None
    assert (daemon.state_dir / "agl.pid").read_text().strip() == str(daemon.proc.pid)  # type: ignore[union-attr]
    answers: list[dict[str, Any]] = []
    poll = threading.Thread(target=lambda: answers.append(daemon.get("/task", params={"wait": 60}).json()))
    poll.start()
    wait_until(lambda: daemon.requests_in_flight() == 1, "the long poll to wait")
    started = time.monotonic()
    response = daemon.api("POST", "/v1/shutdown")
    assert (response.status_code, response.json()) == (202, {"status": "stopping"})
    assert daemon.wait(20) == 0
    assert time.monotonic() - started < 5
    poll.join(5)
    assert answers == [{"is_available": False, "task": None}]
    assert not (daemon.state_dir / "agl.pid").exists()
    assert not (daemon.state_dir / "address").exists()
    daemon.start()
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "claimed"


# --- the pidfile ---------------------------------------------------------------------------


def serve(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_without_agl(),
        check=False,
    )


def test_a_second_daemon_on_the_same_state_dir_is_refused(daemon: Daemon) -> None:
    assert daemon.proc is not None
    result = serve(daemon.state_dir)
    assert result.returncode == 1
    assert result.stderr.strip() == f"agl: agl is already running (pid {daemon.proc.pid})."
    assert (daemon.state_dir / "agl.pid").read_text().strip() == str(daemon.proc.pid)
    assert daemon.get("/ready").status_code == 200


def test_a_state_dir_whose_pidfile_is_locked_is_refused_whatever_pid_it_holds(tmp_path: Path) -> None:
    """A daemon starting locks its pidfile before it writes its pid: one started at the
    same moment must not take the file for stale meanwhile (it holds no agl's pid yet)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with open(state / "agl.pid", "w") as held:
        held.write(f"{os.getpid()}\n")  # this test's own: alive, but not agl
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        result = serve(state)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"agl: agl is already running (pid {os.getpid()}).",
    )


def test_a_pidfile_left_by_a_crash_is_taken_over(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    first = make_daemon(state_dir=tmp_path / "state")
    assert first.proc is not None
    dead_pid = first.proc.pid
    first.kill()
    assert (tmp_path / "state" / "agl.pid").read_text().strip() == str(dead_pid)
    first.start()
    assert first.proc.pid != dead_pid
    assert (tmp_path / "state" / "agl.pid").read_text().strip() == str(first.proc.pid)


def test_a_pidfile_naming_a_live_process_that_is_not_agl_is_taken_over(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (state / "agl.pid").write_text(f"{other.pid}\n")
        daemon = make_daemon(state_dir=state)
        assert (state / "agl.pid").read_text().strip() == str(daemon.proc.pid)  # type: ignore[union-attr]
    finally:
        other.kill()
        other.wait()


# --- the description and the token ---------------------------------------------------------

EXPECTED_OPERATIONS = {
    ("post", "/v1/tasks"), ("get", "/v1/tasks"), ("get", "/v1/tasks/{rollout_id}"),
    ("post", "/v1/tasks/{rollout_id}/cancel"), ("post", "/v1/tasks/cancel"), ("post", "/v1/queue/cancel"),
    ("post", "/v1/tasks/retry"), ("post", "/v1/tasks/retry-failed"), ("post", "/v1/queue/pause"),
    ("post", "/v1/queue/resume"),
    ("post", "/v1/batches"),
    ("post", "/v1/batches/{batch_id}/tasks"), ("post", "/v1/batches/{batch_id}/commit"),
    ("delete", "/v1/batches/{batch_id}"), ("post", "/v1/resources"), ("get", "/v1/resources"),
    ("get", "/v1/resources/{resources_id}"), ("get", "/v1/rollouts"), ("get", "/v1/rollouts/stream"),
    ("get", "/v1/rollouts/{rollout_id}"), ("get", "/v1/status"), ("post", "/v1/shutdown"), ("get", "/v1/backup"),
    ("get", "/v1/openapi.json"), ("get", "/v1/dashboard"), ("get", "/v1/dashboard/stream"),
    ("get", "/v1/dashboard/rollouts"), ("get", "/v1/dashboard/rollouts/{rollout_id}"), ("get", "/v1/dashboard/rollout"),
    ("get", "/v1/dashboard/failures"), ("get", "/v1/dashboard/workers"), ("get", "/v1/dashboard/resources"),
    ("post", "/v1/dashboard/sign-in-codes"),
}  # fmt: skip


def test_the_openapi_document_describes_every_route_with_generated_schemas(daemon: Daemon) -> None:
    response = daemon.api("GET", "/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert operations == EXPECTED_OPERATIONS
    components = document["components"]["schemas"]
    for name in ("TaskSpec", "TaskRecord", "RolloutRecord", "ResourcesUpdate", "Status", "ErrorMessage"):
        assert name in components
    assert components["TaskSpec"] == schemas.TaskSpec.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    assert set(components["TaskRecord"]["properties"]) >= {"rollout_id", "status", "deadline", "duplicates"}
    queue = document["paths"]["/v1/tasks"]["post"]
    assert queue["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/QueueRequest"
    }
    assert set(queue["responses"]) == {
        "201",
        "401",
        "403",
        "415",
        "422",
    }  # every route asks for the token (401),
    # refuses what a browser sends for another site (403), and a body of another type (415)

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED_OPERATIONS))
def test_every_management_route_needs_the_token(shared_daemon: Daemon, method: str, path: str) -> None:
    concrete = path.format(rollout_id="r", batch_id="b", resources_id="latest")
    response = fetch(method, shared_daemon.url + concrete, timeout=10)
    assert (response.status_code, response.json()) == (401, {"detail": "A bearer token is required."})


def test_the_token_is_taken_after_bearer_in_any_case_and_nothing_else(daemon: Daemon) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert fetch(
            "GET", daemon.url + "/v1/status", headers={"Authorization": f"{scheme} {daemon.token}"}
        ).is_success
    for wrong in (
        f"Basic {daemon.token}",
        daemon.token,
        f"Bearer  {daemon.token}",
        "Bearer",
    ):
        response = fetch("GET", daemon.url + "/v1/status", headers={"Authorization": wrong})
        assert (response.status_code, response.json()) == (
            401,
            {"detail": "The bearer token is not valid."},
        ), wrong


def test_the_daemon_stops_on_sigterm_with_status_0(daemon: Daemon) -> None:
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert not (daemon.state_dir / "agl.pid").exists()


ODD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/tasks", {"json": {"tasks": [{"input": 2**64 + 1, "metadata": {"deep": [[[[[]]]]]}}]}}),
    ("POST", "/v1/tasks", {"content": b"[" * 5000, "headers": {"content-type": "application/json"}}),
    ("POST", "/v1/tasks", {"content": b'{"tasks": [{"input": "\\ud800"}]}'}),
    ("POST", "/v1/tasks", {"content": b"\xff\xfe"}),
    ("POST", "/v1/tasks", {"json": {"tasks": "many"}}),
    ("GET", "/v1/tasks", {"params": {"offset": str(2**62), "limit": "10000"}}),
    ("GET", "/v1/tasks", {"params": {"limit": "1e3"}}),
    ("GET", "/v1/tasks", {"params": {"status": ""}}),
    ("GET", "/v1/tasks/%00", {}),
    ("POST", "/v1/tasks/%20/cancel", {}),
    ("POST", "/v1/tasks/cancel", {"json": {"rollout_ids": ["x"] * 10_001}}),
    ("POST", "/v1/tasks/cancel", {"json": {"rollout_ids": [None]}}),
    ("POST", "/v1/batches/%2e%2e/tasks", {"json": {"tasks": [{}]}}),
    ("POST", "/v1/resources", {"json": {"resources": {"x": 5}}}),
    ("POST", "/v1/resources", {"json": {"resources": {"x": {"resource_type": None}}}}),
    ("POST", "/v1/resources", {"json": {"resources": {"x": PROMPT}, "resources_id": ""}}),
    ("POST", "/v1/resources", {"json": {"resources": {"x": PROMPT}, "resources_id": 7}}),
    ("GET", "/v1/resources/%20", {}),
    ("GET", "/v1/rollouts", {"params": {"since": str(2**70)}}),
    ("GET", "/v1/rollouts/stream", {"params": {"since": "9" * 40}}),
    ("GET", "/v1/rollouts/stream", {"headers": {"Last-Event-ID": "-1"}}),
    ("PUT", "/v1/tasks", {}),
    ("GET", "/v1/nothing-here", {}),
]


def test_odd_requests_get_a_4xx_and_never_a_500(daemon: Daemon) -> None:
    for method, path, kwargs in ODD_REQUESTS:
        response = daemon.api(method, path, **kwargs)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        assert response.status_code < 300 or "detail" in response.json()
    assert daemon.status()["tasks"]["queued"] == 1  # only the first, which is valid


def test_an_embedded_server_cannot_be_stopped_over_http() -> None:
    async def shutdown() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(MemoryStore()))
        async with httpx.AsyncClient(transport=transport, base_url="http://agl") as client:
            return await client.post("/v1/shutdown")

    response = anyio.run(shutdown)
    assert (response.status_code, response.json()) == (
        501,
        {"detail": "This server runs inside another program; stop it from there."},
    )


async def test_an_embedded_server_open_to_the_network_keeps_its_management_api_closed() -> None:
    server = AgentLightningServer(host="0.0.0.0", port=0)  # no token given, as 0.3.0 scripts give none
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/task")).status_code == 200  # the workers' routes stay open
            assert (await client.post("/v1/shutdown")).status_code == 401
            assert (await client.post("/v1/tasks/cancel", json={"queued": True})).status_code == 401
            assert server.token is not None
            listed = await client.get("/v1/tasks", headers={"Authorization": f"Bearer {server.token}"})
            assert listed.status_code == 200
    finally:
        await server.stop()
    assert AgentLightningServer(host="127.0.0.1", port=0).token is None  # on loopback it stays open


def test_the_document_states_the_largest_sequence_number_the_routes_accept(daemon: Daemon) -> None:
    paths = daemon.api("GET", "/v1/openapi.json").json()["paths"]
    since = {p["name"]: p["schema"] for p in paths["/v1/rollouts"]["get"]["parameters"]}["since"]
    assert since["maximum"] == 2**62
    assert daemon.api("GET", "/v1/rollouts", params={"since": str(2**62)}).status_code == 200
    assert daemon.api("GET", "/v1/rollouts", params={"since": str(2**62 + 1)}).status_code == 422


def test_a_method_a_path_lacks_is_a_405_that_names_every_method_it_has(daemon: Daemon) -> None:
    for path in ("/v1/tasks", "/v1/resources", "/v1/agl/rollouts", "/v1/agl/spans"):
        refused = daemon.api("PUT", path)
        allowed = {method.strip() for method in refused.headers["allow"].split(",")}
        assert (refused.status_code, allowed) == (405, {"GET", "HEAD", "POST"}), path
    assert daemon.status()["tasks"]["queued"] == 0


def test_the_api_reference_gives_the_limits_the_daemon_enforces() -> None:
    reference = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    assert set(re.findall(r"\(1 to ([\d,]+)\)", reference)) == {f"{MAX_PER_REQUEST:,}"}
    [tasks_listed] = [line for line in reference.splitlines() if line.startswith("| `GET /v1/tasks?")]
    assert f"limit 1..{MAX_LIST_LIMIT:,}," in tasks_listed
