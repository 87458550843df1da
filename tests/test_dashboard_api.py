"""The dashboard's data routes and its page, against a real `agl serve`; and the promise
that every read behind them stays bounded however large the store grows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from daemon import Daemon, wait_until
from httpx_sse import ServerSentEvent, connect_sse

from agl_cli.models import Rollout, TaskSpec
from agl_cli.server import schemas
from agl_cli.server.page import CONTENT_SECURITY_POLICY
from agl_cli.server.sign_in import CODE_SECONDS, MAX_UNSPENT, REFUSED, SIGN_IN_PATH, SignInCodes
from agl_cli.store import MemoryStore

LLM = {"resource_type": "llm", "endpoint": "http://llm:8000/v1", "model": "qwen", "api_key": "sk-secret"}


JSON_TYPE = {"Content-Type": "application/json"}
DASHBOARD_AND_ROLLOUT_STREAMS = ("/v1/dashboard/stream", "/v1/rollouts/stream")


def get(daemon: Daemon, path: str, model: type[Any], **params: Any) -> Any:
    """A dashboard route's answer, checked against its published model."""
    response = daemon.api("GET", path, params=params)
    assert response.status_code == 200, response.text
    return model.model_validate(response.json())


def complete(daemon: Daemon, rewards: dict[str, list[float]]) -> list[str]:
    """One task per reward, in its mode, reported by a legacy worker that sends no task."""
    ids = []
    for mode, values in rewards.items():
        for rollout_id, reward in zip(daemon.queue(*values, mode=mode), values, strict=True):
            task = daemon.claim()
            assert task is not None and task["rollout_id"] == rollout_id
            daemon.report(rollout_id, final_reward=reward)
            ids.append(rollout_id)
    return ids


def test_the_summary_counts_tasks_and_charts_the_reward_of_each_mode(daemon: Daemon) -> None:
    complete(daemon, {"train": [0.2, 0.4], "val": [1.0]})
    [unrewarded] = daemon.queue("no reward", mode="train")
    assert daemon.claim() is not None
    daemon.report(unrewarded)
    daemon.queue("waiting")
    summary = get(daemon, "/v1/dashboard", schemas.DashboardSummary)
    assert summary.status.tasks == {"queued": 1, "claimed": 0, "completed": 4, "failed": 0, "cancelled": 0}
    assert summary.status.rollouts == 4
    lines = {line.mode: line for line in summary.rewards.lines}
    assert set(lines) == {"train", "val"}
    assert sum(lines["train"].rollouts) == 3 and sum(lines["val"].rollouts) == 1
    assert sum(lines["train"].rewarded) == 2 and sum(lines["val"].rewarded) == 1
    # Within a bucket, the mean is over the bucket's rewarded rollouts; weighted by them,
    # the whole run's average holds (the rollout without a reward counts for nothing).
    train = lines["train"]
    weighted = sum(m * n for m, n in zip(train.means, train.rewarded, strict=True) if m is not None)
    assert weighted / 2 == pytest.approx(0.3)
    assert all(t % summary.rewards.width == 0 for t in train.times)


def test_a_reward_no_reader_is_shown_is_not_charted_either(daemon: Daemon) -> None:
    """A reward of "NaN", "Infinity" or "-Infinity" as a string reads as a float that JSON
    cannot carry, and one too large for a float (1e400) as none; each rollout is read back
    with none, and so it is charted and summed: as a rollout without a reward, beside the
    one whose reward is a number."""
    rewards: list[Any] = ["NaN", "-Infinity", "Infinity", 0.5]
    *ids, last = daemon.queue(*range(len(rewards) + 1), mode="val")
    for rollout_id, reward in zip(ids, rewards, strict=True):
        assert daemon.claim() is not None
        daemon.report(rollout_id, final_reward=reward)
    assert daemon.claim() is not None
    too_large = f'{{"rollout_id": "{last}", "final_reward": 1e400}}'.encode()
    assert daemon.post("/rollout", content=too_large, headers=JSON_TYPE).status_code == 200
    read_back = daemon.api("GET", "/v1/rollouts").json()["rollouts"]
    assert [rollout["final_reward"] for rollout in read_back] == [None, None, None, 0.5, None]
    [line] = get(daemon, "/v1/dashboard", schemas.DashboardSummary).rewards.lines
    assert (sum(line.rollouts), sum(line.rewarded)) == (5, 1)
    assert [mean for mean in line.means if mean is not None] == [0.5]


def test_recent_rollouts_come_newest_first_with_their_tasks_mode_and_page_back(daemon: Daemon) -> None:
    ids = complete(daemon, {"train": [0.1, 0.2], "test": [0.3]})
    first = get(daemon, "/v1/dashboard/rollouts", schemas.RolloutLines, limit=2)
    assert [line.rollout_id for line in first.rollouts] == ids[::-1][:2]
    assert [line.mode for line in first.rollouts] == ["test", "train"]
    assert first.rollouts[0].attempt == 1 and first.rollouts[0].duration is not None
    older = get(daemon, "/v1/dashboard/rollouts", schemas.RolloutLines, before=first.rollouts[-1].seq)
    assert [line.rollout_id for line in older.rollouts] == [ids[0]]
    assert first.last_seq == older.last_seq == first.rollouts[0].seq


def test_a_store_api_rollout_shows_its_attempts_and_the_spans_they_sent(daemon: Daemon) -> None:
    [queued] = daemon.post(
        "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": {"q": 1}, "mode": "val"}]}
    ).json()
    [handed] = daemon.post("/v1/agl/queues/rollouts/dequeue", json={"worker_id": "w1"}).json()
    rollout_id, attempt_id = handed["rollout_id"], handed["attempt"]["attempt_id"]
    span = {
        "rollout_id": rollout_id, "attempt_id": attempt_id, "sequence_id": 1, "trace_id": "t1", "span_id": "s1",
        "parent_id": None, "name": "llm.call", "status": {"status_code": "OK", "description": None},
        "attributes": {"agentlightning.reward.0.value": 0.75}, "events": [], "links": [], "start_time": 10.0,
        "end_time": 12.5, "context": None, "parent": None, "resource": {"attributes": {}, "schema_url": ""},
    }  # fmt: skip
    assert daemon.post("/v1/agl/spans", json=span).status_code == 201
    daemon.post(f"/v1/agl/rollouts/{rollout_id}/attempts/{attempt_id}", json={"status": "succeeded"})
    detail = get(daemon, f"/v1/dashboard/rollouts/{rollout_id}", schemas.RolloutDetail)
    assert (detail.mode, detail.input) == ("val", {"q": 1})
    assert detail.task is not None and [a.status for a in detail.task.attempts] == ["succeeded"]
    assert detail.task.attempts[0].worker_id == "w1"
    assert [(s.name, s.start_time, s.end_time, s.status) for s in detail.spans] == [
        ("llm.call", 10.0, 12.5, "OK")
    ]
    assert detail.result is not None and detail.result.final_reward == 0.75
    assert queued["rollout_id"] == rollout_id


def test_a_task_without_a_result_has_a_detail_and_an_unknown_id_is_a_404(daemon: Daemon) -> None:
    [waiting] = daemon.queue({"q": 2}, mode="train")
    detail = get(daemon, f"/v1/dashboard/rollouts/{waiting}", schemas.RolloutDetail)
    assert detail.result is None and detail.task is not None and detail.task.task.status == "queued"
    response = daemon.api("GET", "/v1/dashboard/rollouts/rollout-nope")
    assert (response.status_code, response.json()) == (
        404,
        {"detail": "No rollout or task with id 'rollout-nope'."},
    )


def test_an_unsolicited_rollout_whose_id_has_slashes_has_a_detail(daemon: Daemon) -> None:
    daemon.report("runs/8/b", final_reward=0.5)
    detail = get(daemon, f"/v1/dashboard/rollouts/{quote('runs/8/b', safe='')}", schemas.RolloutDetail)
    assert (detail.rollout_id, detail.task, detail.result is not None) == ("runs/8/b", None, True)


def test_any_rollout_id_has_a_detail_by_query_dots_and_the_empty_one_too(daemon: Daemon) -> None:
    """A browser resolves `.` and `..` in a path, even written `%2E`: the page asks with the
    id in the query, which nothing rewrites."""
    rewards = {".": 0.1, "..": 0.2, "": 0.3, "runs/8/b?x=1&y=#z": 0.4}
    for rollout_id, reward in rewards.items():
        daemon.report(rollout_id, final_reward=reward)
    for rollout_id, reward in rewards.items():
        detail = get(daemon, "/v1/dashboard/rollout", schemas.RolloutDetail, rollout_id=rollout_id)
        assert detail.rollout_id == rollout_id
        assert detail.result is not None and detail.result.final_reward == reward
    unknown = daemon.api("GET", "/v1/dashboard/rollout", params={"rollout_id": "rollout-nope"})
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"detail": "No rollout or task with id 'rollout-nope'."},
    )
    missing = daemon.api("GET", "/v1/dashboard/rollout")
    assert (missing.status_code, missing.json()) == (
        422,
        {"detail": "Query parameter 'rollout_id' is required."},
    )


def test_failed_and_retried_tasks_are_listed_with_every_attempt(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "0.2", "--max-attempts", "2")
    lost, retried = daemon.queue("lost", "retried")
    first = [daemon.claim(), daemon.claim()]
    assert [task["rollout_id"] for task in first if task] == [lost, retried]
    again: set[str] = set()

    def claimed_again() -> bool:
        task = daemon.claim()
        if task is not None:
            again.add(task["rollout_id"])
        return len(again) == 2

    wait_until(claimed_again, "both claims to time out and be handed out again", 10)
    daemon.report(retried, final_reward=1.0)
    wait_until(lambda: daemon.status()["tasks"]["failed"] == 1, "the unreported task to fail", 10)
    page = get(daemon, "/v1/dashboard/failures", schemas.FailureList)
    by_id = {history.task.rollout_id: history for history in page.tasks}
    assert set(by_id) == {lost, retried} and not page.has_more
    assert by_id[lost].task.status == "failed"
    assert [(a.sequence_id, a.status) for a in by_id[lost].attempts] == [(1, "timeout"), (2, "timeout")]
    assert by_id[retried].task.status == "completed"
    assert [a.status for a in by_id[retried].attempts] == ["timeout", "succeeded"]
    single = get(daemon, "/v1/dashboard/failures", schemas.FailureList, limit=1)
    assert len(single.tasks) == 1 and single.has_more


def test_workers_and_resources_are_listed_with_api_keys_hidden(daemon: Daemon) -> None:
    daemon.publish({"main": LLM})
    latest = daemon.publish({"main": {**LLM, "model": "bigger"}})
    daemon.post("/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}]})
    [handed] = daemon.post("/v1/agl/queues/rollouts/dequeue", json={"worker_id": "w2"}).json()
    daemon.post("/v1/agl/workers/w2", json={})
    workers = get(daemon, "/v1/dashboard/workers", schemas.WorkerList)
    assert workers.total == 1
    [worker] = workers.workers
    assert (worker.worker_id, worker.status, worker.current_rollout_id) == (
        "w2",
        "busy",
        handed["rollout_id"],
    )
    assert worker.last_heartbeat_time is not None
    resources = get(daemon, "/v1/dashboard/resources", schemas.ResourcesPage)
    assert resources.total == 2 and resources.latest_id == latest["resources_id"]
    assert next(r.resources_id for r in resources.resources) == latest["resources_id"]
    assert all(r.resources["main"].api_key == "***" for r in resources.resources)  # type: ignore[union-attr]


def test_the_stream_sends_new_rollouts_and_the_summary_and_resumes_after_an_id(daemon: Daemon) -> None:
    [before] = complete(daemon, {"train": [0.5]})
    seen: list[ServerSentEvent] = []
    arrived = threading.Event()

    def follow(headers: dict[str, str]) -> None:
        with (
            httpx.Client(
                timeout=30, headers={"Authorization": f"Bearer {daemon.token}", **headers}
            ) as client,
            connect_sse(
                client, "GET", daemon.url + "/v1/dashboard/stream", params={"since": "now"}
            ) as source,
        ):
            for event in source.iter_sse():
                seen.append(event)
                if event.event == "rollouts":
                    arrived.set()
                    return

    reader = threading.Thread(target=follow, args=({},), daemon=True)
    reader.start()
    wait_until(lambda: any(e.event == "summary" for e in seen), "the first summary", 10)
    [after] = complete(daemon, {"val": [0.7]})
    assert arrived.wait(10)
    rollouts = schemas.RolloutLines.model_validate(seen[-1].json())
    assert [line.rollout_id for line in rollouts.rollouts] == [after]
    assert seen[-1].id == str(rollouts.last_seq)
    schemas.DashboardSummary.model_validate(seen[0].json())

    seen.clear()
    arrived.clear()
    resumed = get(daemon, "/v1/dashboard/rollouts", schemas.RolloutLines).rollouts
    first_seq = {line.rollout_id: line.seq for line in resumed}[before]
    follow({"Last-Event-ID": str(first_seq - 1)})
    replayed = schemas.RolloutLines.model_validate(next(e for e in seen if e.event == "rollouts").json())
    assert [line.rollout_id for line in replayed.rollouts][:2] == [before, after]


def test_a_daemon_stopped_ends_open_streams_cleanly_and_logs_no_error(daemon: Daemon) -> None:
    ended: dict[str, str] = {}
    chunks = dict.fromkeys(DASHBOARD_AND_ROLLOUT_STREAMS, 0)

    def follow(path: str) -> None:
        headers = {"Authorization": f"Bearer {daemon.token}"}
        try:
            with httpx.stream("GET", daemon.url + path, headers=headers, timeout=30) as response:
                for _ in response.iter_bytes():
                    chunks[path] += 1
            ended[path] = "whole"
        except httpx.HTTPError as exc:
            ended[path] = f"cut: {exc!r}"

    readers = [threading.Thread(target=follow, args=(path,)) for path in DASHBOARD_AND_ROLLOUT_STREAMS]
    for reader in readers:
        reader.start()
    # A second summary, a second after the first: the dashboard's stream is in its stride.
    wait_until(lambda: chunks["/v1/dashboard/stream"] >= 2, "the dashboard's second summary", 10)
    wait_until(lambda: daemon.requests_in_flight() == 2, "both streams to be open")
    assert daemon.api("POST", "/v1/shutdown").status_code == 202
    for reader in readers:
        reader.join(30)

    assert daemon.wait() == 0
    assert ended == dict.fromkeys(DASHBOARD_AND_ROLLOUT_STREAMS, "whole")
    assert [line for line in daemon.said() if "ERROR" in line] == []


def test_a_bad_stream_position_or_page_is_a_422(daemon: Daemon) -> None:
    for path, params in [
        ("/v1/dashboard/stream", {"since": "soon"}),
        ("/v1/dashboard/rollouts", {"limit": "0"}),
        ("/v1/dashboard/failures", {"offset": "-1"}),
        ("/v1/dashboard/workers", {"limit": "501"}),
    ]:
        response = daemon.api("GET", path, params=params)
        assert response.status_code == 422, (path, response.text)
        assert isinstance(response.json()["detail"], str)


# --- the page and the token ------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_without_the_token_and_may_reach_no_other_host(
    daemon: Daemon,
) -> None:
    page = daemon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from anywhere else
    for name, kind in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("icon.svg", "image/svg"),
    ]:
        asset = daemon.get(f"/dashboard/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
        assert "://" not in asset.text.replace("http://www.w3.org/2000/svg", ""), name


@pytest.mark.parametrize("path", ["/dashboard/secret", "/dashboard/", "/index.html", "/x", "/v1/dashboard"])
def test_nothing_else_is_open_and_data_needs_the_right_token(shared_daemon: Daemon, path: str) -> None:
    """A path that is no route serves nothing, with or without the token: a 404."""
    routed = path == "/v1/dashboard"
    assert shared_daemon.get(path).status_code == (401 if routed else 404)
    wrong = shared_daemon.get(path, headers={"Authorization": "Bearer wrong"})
    assert (wrong.status_code, wrong.json()) == (
        (401, {"detail": "The bearer token is not valid."}) if routed else (404, {"detail": "Not Found"})
    )
    if not routed:
        assert shared_daemon.api("GET", path).status_code == 404


def test_a_sign_in_code_is_issued_with_the_token_and_traded_for_it_once(daemon: Daemon) -> None:
    assert daemon.post("/v1/dashboard/sign-in-codes").status_code == 401
    issued = daemon.api("POST", "/v1/dashboard/sign-in-codes")
    assert issued.status_code == 201
    code = schemas.SignInCode.model_validate(issued.json())
    assert code.expires_in == CODE_SECONDS and len(code.code) >= 32
    traded = daemon.post(SIGN_IN_PATH, json={"code": code.code})  # no token: the page has none yet
    assert (traded.status_code, traded.json()) == (200, {"token": daemon.token})
    again = daemon.post(SIGN_IN_PATH, json={"code": code.code})
    assert (again.status_code, again.json()) == (401, {"detail": REFUSED})
    assert daemon.post(SIGN_IN_PATH, json={"code": "made-up"}).status_code == 401
    assert daemon.post(SIGN_IN_PATH, json={}).status_code == 422


def test_the_sign_in_path_is_only_posted_to_and_only_the_listed_files_are_served(daemon: Daemon) -> None:
    fetched = daemon.get(SIGN_IN_PATH)
    assert (fetched.status_code, fetched.headers["allow"]) == (405, "POST")
    for path in ("/dashboard/index.html", "/dashboard/secret", "/dashboard/dashboard.js/x"):
        assert daemon.api("GET", path).status_code == 404, path


def test_a_sign_in_code_expires_and_only_the_latest_few_are_kept() -> None:
    now = [0.0]
    codes = SignInCodes(lifetime=60.0, clock=lambda: now[0])
    used, late = codes.issue(), codes.issue()
    now[0] = 59.9
    assert codes.redeem(used) and not codes.redeem(used)
    now[0] = 60.0
    assert not codes.redeem(late)
    issued = [codes.issue() for _ in range(MAX_UNSPENT + 1)]
    assert not codes.redeem(issued[0]) and all(codes.redeem(code) for code in issued[1:])


# --- bounded reads ------------------------------------------------------------------------------

GROWING = ("tasks", "rollouts", "attempts", "spans", "staging", "rewards", "workers")


def statements(store: MemoryStore, read: Callable[[], object]) -> list[str]:
    """Every query `read` runs, as SQLite ran it (parameters filled in)."""
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    try:
        read()
    finally:
        store._conn.set_trace_callback(None)
    return [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]


def whole_table_reads(store: MemoryStore, sql: str) -> list[str]:
    """The steps of `sql`'s plan that read a growing table whole: a plain `SCAN t`, or an
    index walked in full (`SCAN t USING INDEX` is a page only when the query has a LIMIT)."""
    steps = [row[3] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return [
        step
        for step in steps
        if step.startswith("SCAN")
        and any(step.split()[1] in (table, f"{table[0]}") for table in GROWING)
        and ("USING" not in step or "LIMIT" not in sql)
    ]


def test_every_read_behind_the_dashboard_probes_keys_or_reads_one_page() -> None:
    """Counts come from counters, the chart from the rewards of at most a few thousand
    buckets, lists a page at a time: with `EXPLAIN QUERY PLAN` on each query they run."""
    store = MemoryStore(task_timeout=60.0, max_claims=1)
    ids = store.queue_tasks([TaskSpec(input=i, mode="train") for i in range(4)])
    for _ in ids[:3]:
        claimed = store.claim_next()
        assert claimed is not None
        store.record_rollout(Rollout(rollout_id=claimed.rollout_id, final_reward=0.5))
    store.publish_resources({"main": LLM})
    reads: dict[str, Callable[[], object]] = {
        "counts": store.counts,
        "chart": lambda: store.reward_series(240),
        "stream": lambda: store.rollout_summaries(1, 500),
        "recent": lambda: store.recent_rollouts(None, 25),
        "older": lambda: store.recent_rollouts(3, 25),
        "failures": lambda: store.troubled_tasks(26, 0),
        "resources": lambda: store.recent_resources(10, 0),
        "detail": lambda: store.rollout_detail(ids[0], 500),
        "last_seq": store.last_seq,
    }
    for name, read in reads.items():
        ran = statements(store, read)
        assert ran, name
        for sql in ran:
            assert whole_table_reads(store, sql) == [], (name, sql)
