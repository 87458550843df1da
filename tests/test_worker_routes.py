"""The four legacy worker routes over HTTP, against a real `agl serve`."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import httpx
import pytest
from daemon import Daemon, fetch, wait_until

from agl_cli import AgentLightningServer
from agl_cli.server import sweeper

JSON_TYPE = {"Content-Type": "application/json"}  # what every worker's report is typed

LLM = {"resource_type": "llm", "endpoint": "http://llm:8000/v1", "model": "qwen"}
PROMPT = {"resource_type": "prompt_template", "template": "Solve {q}", "engine": "f-string"}


def test_an_empty_queue_answers_no_task(daemon: Daemon) -> None:
    response = daemon.get("/task")
    assert response.status_code == 200
    assert response.json() == {"is_available": False, "task": None}


def test_a_queued_task_is_handed_out_with_every_field(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue({"q": "1+1"}, mode="train", metadata={"split": "a"})
    before = time.time()
    body = daemon.get("/task").json()
    assert body["is_available"] is True
    task = body["task"]
    assert set(task) == {
        "rollout_id", "input", "mode", "resources_id", "create_time", "last_claim_time", "num_claims", "metadata",
    }  # fmt: skip
    assert task["rollout_id"] == rollout_id
    assert (task["input"], task["mode"], task["resources_id"], task["metadata"]) == (
        {"q": "1+1"}, "train", None, {"split": "a"},
    )  # fmt: skip
    assert task["num_claims"] == 1
    assert before - 5 < task["create_time"] <= task["last_claim_time"] <= time.time()


def test_resources_are_served_latest_and_by_id(daemon: Daemon) -> None:
    assert daemon.get("/resources/latest").status_code == 404
    assert daemon.get("/resources/latest").json() == {"detail": "No resources have been set on the server."}
    first = daemon.publish({"main_llm": LLM})
    second = daemon.publish({"main_llm": LLM, "prompt": PROMPT})
    latest = daemon.get("/resources/latest").json()
    assert latest["resources_id"] == second["resources_id"]
    assert latest["resources"]["main_llm"] == {**LLM, "api_key": None, "sampling_parameters": {}}
    assert latest["resources"]["prompt"] == PROMPT
    assert latest["version"] == 1
    by_id = daemon.get(f"/resources/{first['resources_id']}").json()
    assert by_id == first  # its update_time too: when it was published, not when it is read


def test_unknown_resources_id_is_a_404_that_names_it(daemon: Daemon) -> None:
    response = daemon.get("/resources/res-nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Resource ID 'res-nope' not found."}


def test_a_rollout_is_acknowledged_like_0_3_0(daemon: Daemon) -> None:
    [rollout_id] = daemon.queue(1)
    daemon.claim()
    response = daemon.post(
        "/rollout", json={"rollout_id": rollout_id, "final_reward": 0.75, "novel": {"a": 1}}
    )
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "message": f"Rollout {rollout_id} received and stored.",
        "data": None,
    }
    [stored] = daemon.rollouts()
    assert (stored["rollout_id"], stored["final_reward"], stored["novel"]) == (rollout_id, 0.75, {"a": 1})
    assert daemon.status()["tasks"]["completed"] == 1


def test_numbers_json_cannot_carry_are_kept_as_null_as_json_writers_write_them(daemon: Daemon) -> None:
    """NaN and Infinity as Python writes them (a 0.3.0 worker's reward may be NaN; its
    server kept it), and a number beyond a float's range: the report is kept, not lost,
    an integer beyond 64 bits beside them as the nearest float, as it is without them."""
    [rollout_id] = daemon.queue(1)
    daemon.claim()
    body = (
        b'{"rollout_id": "%s", "final_reward": NaN, "triplets": [{"prompt": {"token_ids": [1]},'
        b' "response": {"token_ids": [-Infinity]}, "reward": 1e999}], "metadata": {"kept": 1.5, "seed": %d}}'
        % (rollout_id.encode(), 2**70)
    )
    response = daemon.post("/rollout", content=body, headers=JSON_TYPE)
    assert response.status_code == 200
    [stored] = daemon.rollouts()
    assert (stored["final_reward"], stored["triplets"][0]["reward"], stored["metadata"]) == (
        None,
        None,
        {"kept": 1.5, "seed": float(2**70)},
    )
    assert stored["triplets"][0]["response"] == {"token_ids": [None]}
    assert daemon.status()["tasks"]["completed"] == 1


def test_a_reward_sent_as_text_or_a_boolean_is_the_number_pydantic_reads_wherever_it_is_shown(
    daemon: Daemon,
) -> None:
    """0.3.0's server read such a reward as its model does, a number, and kept that; agl's
    reward column did too while the kept rollout read back without one."""
    rewards = {b'"0.25"': 0.25, b"true": 1.0, b'" 2 "': 2.0, b'"NaN"': None}
    daemon.queue(*range(len(rewards)))
    for sent in rewards:
        task = daemon.claim()
        assert task is not None
        body = b'{"rollout_id": "%s", "final_reward": %s}' % (task["rollout_id"].encode(), sent)
        assert daemon.post("/rollout", content=body, headers=JSON_TYPE).status_code == 200
    expected = list(rewards.values())
    assert [stored["final_reward"] for stored in daemon.rollouts()] == expected
    lines = daemon.api("GET", "/v1/dashboard/rollouts").json()["rollouts"]
    assert [line["reward"] for line in reversed(lines)] == expected


def test_bodies_that_begin_with_a_byte_order_mark_are_read_as_0_3_0_reads_them(daemon: Daemon) -> None:
    """Python's JSON reader, under 0.3.0's servers, skips the mark some writers put first."""
    mark = b"\xef\xbb\xbf"
    queued = daemon.api(
        "POST", "/v1/tasks", content=mark + b'{"tasks": [{"input": 1}, {"input": 2}]}', headers=JSON_TYPE
    )
    assert queued.status_code == 201, queued.text
    for reward, padding in ((0.5, ""), (1.0, "x" * 2_000)):  # the lean reading of a report too
        task = daemon.claim()
        assert task is not None
        body = b'{"rollout_id": "%s", "final_reward": %r, "metadata": {"pad": "%s"}}' % (
            task["rollout_id"].encode(),
            reward,
            padding.encode(),
        )
        assert daemon.post("/rollout", content=mark + body, headers=JSON_TYPE).status_code == 200
    assert [stored["final_reward"] for stored in daemon.rollouts()] == [0.5, 1.0]


BAD_ROLLOUTS: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{bad", "json_invalid"),
    ("empty body", b"", "missing"),
    ("a JSON array", b"[1, 2]", "model_attributes_type"),
    ("no rollout_id", b'{"final_reward": 1.0}', "missing"),
    ("a string reward", b'{"rollout_id": "r", "final_reward": "high"}', "float_parsing"),
    (
        "a NaN reward beside a lone surrogate",
        b'{"rollout_id": "r", "final_reward": NaN, "logs": ["\\ud800"]}',
        "json_invalid",
    ),
    ("a triplet without response", b'{"rollout_id": "r", "triplets": [{"prompt": 1}]}', "missing"),
    ("logs that are not strings", b'{"rollout_id": "r", "logs": [1]}', "string_type"),
]


@pytest.mark.parametrize(("case", "body", "error_type"), BAD_ROLLOUTS, ids=[c[0] for c in BAD_ROLLOUTS])
def test_a_bad_rollout_is_a_422_that_changes_nothing(
    shared_daemon: Daemon, case: str, body: bytes, error_type: str
) -> None:
    response = shared_daemon.post("/rollout", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, case
    details = response.json()["detail"]
    assert isinstance(details, list) and details
    assert {"type", "loc", "msg", "input"} <= set(details[0])
    assert details[0]["loc"][0] == "body"
    assert error_type in [d["type"] for d in details]
    assert shared_daemon.rollouts() == []
    assert shared_daemon.status()["rollouts"] == 0


@pytest.mark.parametrize("args", [(), ("--log-level", "debug")], ids=["direct", "the ASGI way"])
def test_a_refused_report_is_logged_with_its_reason(
    make_daemon: Callable[..., Daemon], args: tuple[str, ...]
) -> None:
    """The worker notes a refusal only at debug level, so the daemon says it: a result was lost."""
    daemon = make_daemon(*args)
    for body in (b'{"rollout_id": "r", "final_reward": "high"}', b'{"rollout_id": "r", tru'):
        assert daemon.post("/rollout", content=body, headers=JSON_TYPE).status_code == 422
    log = daemon.log_path.read_text()
    assert "A worker's report was refused (422): body.final_reward: Input should be a valid number" in log
    assert "A worker's report was refused (422): byte 20: JSON decode error (" in log


def test_a_worker_stuck_sending_bad_reports_does_not_fill_the_log(daemon: Daemon) -> None:
    for _ in range(40):
        assert daemon.post("/rollout", json={"rollout_id": "r", "final_reward": "high"}).status_code == 422
    assert daemon.log_path.read_text().count("A worker's report was refused (422)") == 10  # in a minute


def test_a_body_over_the_limit_is_a_413(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--max-body-size", "2000")
    big = {"rollout_id": "r", "logs": ["x" * 3000]}
    response = daemon.post("/rollout", json=big)
    assert response.status_code == 413
    assert "larger than the limit of 2000 bytes" in response.json()["detail"]

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming too
        yield b'{"rollout_id": "r", "logs": ["'
        for _ in range(10):
            yield b"y" * 500
        yield b'"]}'

    streamed = fetch("POST", daemon.url + "/rollout", content=chunks(), headers=JSON_TYPE, timeout=10)
    assert streamed.status_code == 413
    assert daemon.rollouts() == []
    refusal = (
        "A worker's report was refused (413):"
        " The request body is larger than the limit of 2000 bytes (agl serve --max-body-size)."
    )
    assert daemon.log_path.read_text().count(refusal) == 2  # a result lost, as for a 422


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("HEAD", "/task", "GET"),
        ("POST", "/task", "GET"),
        ("GET", "/rollout", "POST"),
        ("PUT", "/resources/x", "GET"),
    ],
)
def test_another_method_on_a_worker_route_is_a_405_that_claims_nothing(
    daemon: Daemon, method: str, path: str, allowed: str
) -> None:
    daemon.queue("kept")
    response = fetch(method, daemon.url + path, timeout=10)
    assert (response.status_code, response.headers["allow"]) == (405, allowed)
    if method != "HEAD":
        assert response.json() == {"detail": "Method Not Allowed"}
    assert daemon.status()["tasks"]["queued"] == 1


def test_a_long_poll_returns_as_soon_as_a_task_is_queued(daemon: Daemon) -> None:
    timer = threading.Timer(0.5, daemon.queue, args=("late",))
    started = time.monotonic()
    timer.start()
    body = daemon.get("/task", params={"wait": 20}).json()
    elapsed = time.monotonic() - started
    timer.join()
    assert body["is_available"] is True and body["task"]["input"] == "late"
    assert 0.4 < elapsed < 10


def test_a_long_poll_on_an_empty_queue_answers_after_the_wait(daemon: Daemon) -> None:
    started = time.monotonic()
    assert daemon.get("/task", params={"wait": 0.6}).json() == {"is_available": False, "task": None}
    assert time.monotonic() - started >= 0.55


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "100000"])
def test_a_bad_wait_is_a_422(daemon: Daemon, wait: str) -> None:
    daemon.queue(1)
    response = daemon.get("/task", params={"wait": wait})
    assert response.status_code == 422
    assert "wait" in response.json()["detail"]
    assert daemon.status()["tasks"]["queued"] == 1


def test_an_unreported_task_comes_back_after_the_timeout(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "0.5")
    [rollout_id] = daemon.queue("x")
    first = daemon.claim()
    assert first is not None and daemon.claim() is None
    again = daemon.get("/task", params={"wait": 10}).json()["task"]
    assert again["rollout_id"] == rollout_id
    assert again["num_claims"] == 2
    assert again["last_claim_time"] > first["last_claim_time"]


def test_both_attempts_report_and_exactly_one_rollout_is_kept(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "0.3")
    [rollout_id] = daemon.queue("x")
    assert daemon.claim() is not None
    assert daemon.get("/task", params={"wait": 10}).json()["task"]["num_claims"] == 2
    for reward in (1.0, 2.0):  # the slow first worker, then the second
        response = daemon.post("/rollout", json={"rollout_id": rollout_id, "final_reward": reward})
        assert response.status_code == 200
        assert response.json()["message"] == f"Rollout {rollout_id} received and stored."
    assert [r["final_reward"] for r in daemon.rollouts()] == [1.0]
    status = daemon.status()
    assert (status["rollouts"], status["duplicates"], status["tasks"]["completed"]) == (1, 1, 1)
    assert daemon.claim() is None


def test_a_task_past_max_attempts_is_failed_not_recycled(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "0.2", "--max-attempts", "2")
    daemon.queue("x")
    assert daemon.claim() is not None
    assert daemon.get("/task", params={"wait": 10}).json()["task"]["num_claims"] == 2
    assert daemon.get("/task", params={"wait": 1}).json() == {"is_available": False, "task": None}
    assert daemon.status()["tasks"]["failed"] == 1


def test_a_rollout_for_an_id_never_issued_is_kept_as_unsolicited(daemon: Daemon) -> None:
    assert daemon.post("/rollout", json={"rollout_id": "elsewhere", "final_reward": 1}).status_code == 200
    [stored] = daemon.rollouts()
    assert stored["unsolicited"] is True
    assert daemon.status()["unsolicited"] == 1


def test_a_rollout_under_the_empty_id_is_kept_as_unsolicited_and_shown_by_it(daemon: Daemon) -> None:
    daemon.queue("a task")
    assert daemon.post("/rollout", json={"rollout_id": "", "final_reward": 1}).status_code == 200
    shown = daemon.api("GET", "/v1/rollouts/")
    assert (shown.status_code, shown.json()["rollout_id"], shown.json()["unsolicited"]) == (200, "", True)
    assert daemon.api("GET", "/v1/tasks/").status_code == 404
    assert daemon.status()["tasks"]["queued"] == 1


def test_health_and_readiness_need_no_token(daemon: Daemon) -> None:
    assert daemon.get("/health").json()["status"] == "ok"
    assert daemon.get("/ready").json()["status"] == "ready"


def test_the_management_api_needs_the_token(daemon: Daemon) -> None:
    assert daemon.post("/v1/tasks", json={"tasks": [{"input": 1}]}).status_code == 401
    wrong = daemon.post("/v1/tasks", json={"tasks": [{"input": 1}]}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "The bearer token is not valid."}
    assert daemon.status()["tasks"]["queued"] == 0


@pytest.mark.parametrize("streamed", [False, True], ids=["with-a-length", "streamed"])
def test_a_report_of_exactly_the_body_limit_is_taken_and_one_byte_more_is_a_413(
    make_daemon: Callable[..., Daemon], streamed: bool
) -> None:
    daemon = make_daemon("--max-body-size", "2000")

    def body(size: int, rollout_id: str) -> bytes:
        start, end = b'{"rollout_id": "' + rollout_id.encode() + b'", "logs": ["', b'"]}'
        return start + b"y" * (size - len(start) - len(end)) + end

    def post(content: bytes) -> httpx.Response:
        def chunks() -> Iterator[bytes]:  # no Content-Length
            yield from (content[i : i + 500] for i in range(0, len(content), 500))

        sent = chunks() if streamed else content
        return fetch(
            "POST", daemon.url + "/rollout", content=sent, headers={"Content-Type": "application/json"}
        )

    assert post(body(2000, "at-the-limit")).status_code == 200
    assert post(body(2001, "beyond")).status_code == 413
    assert [r["rollout_id"] for r in daemon.rollouts()] == ["at-the-limit"]


def commits(daemon: Daemon) -> float:
    found = re.search(r"^agl_commit_group_size_count (\S+)$", daemon.get("/metrics").text, re.M)
    assert found is not None
    return float(found[1])


def test_a_long_poll_on_an_empty_queue_waits_without_claiming_over_and_over(daemon: Daemon) -> None:
    """The wake-up a queued task gave is spent once it is taken."""
    with ThreadPoolExecutor(1) as pool:
        woken = pool.submit(lambda: daemon.get("/task", params={"wait": 10}).json())
        wait_until(lambda: daemon.requests_in_flight() == 1, "the long poll to wait")
        [rollout_id] = daemon.queue("x")
        assert woken.result(timeout=10)["task"]["rollout_id"] == rollout_id
    before = commits(daemon)
    assert daemon.get("/task", params={"wait": 1}).json() == {"is_available": False, "task": None}
    # Its two claims and the sweep's writes (a few a second; two sweeps on a busy machine),
    # where a poll woken over and over would claim hundreds of times.
    assert commits(daemon) - before <= 20, "an idle long poll kept the writer busy"


def writes(daemon: Daemon) -> float:
    found = re.search(r"^agl_commit_group_size_sum (\S+)$", daemon.get("/metrics").text, re.M)
    assert found is not None
    return float(found[1])


def test_a_task_queued_wakes_one_of_many_long_polls_not_every_one(daemon: Daemon) -> None:
    """Each poll woken makes a claim: a hundred woken for one task would make a hundred,
    and the cost of every task would grow with the workers waiting."""
    polls = 100
    with ThreadPoolExecutor(polls) as pool:
        waiting = [pool.submit(daemon.get, "/task", params={"wait": 60}) for _ in range(polls)]
        wait_until(lambda: daemon.requests_in_flight() >= polls, "every long poll to wait")
        before = writes(daemon)
        [first] = daemon.queue("first")
        answered = wait(waiting, timeout=30, return_when=FIRST_COMPLETED).done
        assert [future.result().json()["task"]["rollout_id"] for future in answered] == [first]
        # the queuing, one claim, and the sweep's few writes a second
        assert writes(daemon) - before <= 20, "every long poll was woken to claim"
        rest = set(daemon.queue(*range(polls - 1)))
        handed = [future.result(timeout=30).json()["task"]["rollout_id"] for future in waiting]
    assert sorted(handed) == sorted(rest | {first})  # each task to one poll, and none left waiting


async def test_a_long_poll_gets_a_timed_out_task_at_its_deadline_not_at_the_next_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_INTERVAL", 3600.0)  # no sweep will come to the rescue
    server = AgentLightningServer(port=0, task_timeout_seconds=0.5)
    await server.start()
    try:
        rollout_id = await server.queue_task({"x": 1})
        async with httpx.AsyncClient(base_url=server.endpoint, timeout=30) as client:
            first = (await client.get("/task")).json()["task"]
            assert first["rollout_id"] == rollout_id
            again = (await client.get("/task", params={"wait": 20})).json()["task"]
    finally:
        await server.stop()
    assert again is not None and (again["rollout_id"], again["num_claims"]) == (rollout_id, 2)


def test_a_rollout_the_store_api_gave_null_metadata_reaches_a_legacy_worker_with_an_empty_object(
    daemon: Daemon,
) -> None:
    """0.3.0's `Task.metadata` is a dict: its client cannot read null."""
    [rollout] = daemon.post(
        "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": {"x": 1}}]}
    ).json()
    assert (
        daemon.post(f"/v1/agl/rollouts/{rollout['rollout_id']}", json={"metadata": None}).status_code == 200
    )
    task = daemon.get("/task").json()["task"]
    assert (task["rollout_id"], task["metadata"]) == (rollout["rollout_id"], {})
