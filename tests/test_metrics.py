"""`GET /metrics` against a real `agl serve`: Prometheus text that tells the truth."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from daemon import Daemon, wait_until
from prometheus_client.parser import text_string_to_metric_families

from agl_cli.server.app import create_app
from agl_cli.store import MemoryStore

Labels = frozenset[tuple[str, str]]
LATENCY = "agl_http_request_duration_seconds"


def scrape(daemon: Daemon) -> dict[str, dict[Labels, float]]:
    """Every sample of `/metrics`, by sample name, then by its labels."""
    response = daemon.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    return samples[name][frozenset(labels.items())]


def task_gauges(daemon: Daemon) -> dict[str, float]:
    return {dict(labels)["status"]: number for labels, number in scrape(daemon)["agl_tasks"].items()}


def latency_count(samples: dict[str, dict[Labels, float]], route: str, method: str, status: str) -> float:
    return samples[f"{LATENCY}_count"].get(
        frozenset({("route", route), ("method", method), ("status", status)}), 0
    )


def test_metrics_need_no_token_and_parse_as_prometheus_text(daemon: Daemon) -> None:
    assert daemon.get("/v1/status").status_code == 401  # the token is required elsewhere
    samples = scrape(daemon)
    for name in (
        "agl_claims_total",
        "agl_reclaims_total",
        "agl_rollouts_stored_total",
        "agl_rollouts_duplicate_total",
        "agl_rollouts_unsolicited_total",
    ):
        assert value(samples, name) == 0, name
    assert "process_resident_memory_bytes" in samples or "python_info" in samples


def test_every_metric_of_agls_own_is_in_the_readmes_table(daemon: Daemon) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented = set(re.findall(r"^\| `(agl_\w+)", readme, flags=re.MULTILINE))
    response = daemon.get("/metrics")
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(response.text)
        if family.name.startswith("agl_") and not family.name.endswith("_created")  # a counter's start
    }
    assert len(served) >= 20
    assert served - documented == set()


def test_queue_depth_per_status_follows_the_tasks(daemon: Daemon) -> None:
    assert task_gauges(daemon) == dict.fromkeys(("queued", "claimed", "completed", "failed", "cancelled"), 0)
    ids = daemon.queue("a", "b", "c", "d")
    assert task_gauges(daemon)["queued"] == 4
    first, second = daemon.claim(), daemon.claim()
    assert first is not None and second is not None
    daemon.report(first["rollout_id"], final_reward=1.0)
    assert daemon.api("POST", f"/v1/tasks/{ids[3]}/cancel").status_code == 200
    assert task_gauges(daemon) == {"queued": 1, "claimed": 1, "completed": 1, "failed": 0, "cancelled": 1}


def test_claims_reclaims_and_rollout_outcomes_are_counted(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "0.3")
    [rollout_id] = daemon.queue("x")
    assert daemon.claim() is not None
    again = daemon.get("/task", params={"wait": 10}).json()["task"]  # once the first claim timed out
    assert (again["rollout_id"], again["num_claims"]) == (rollout_id, 2)
    daemon.report(rollout_id, final_reward=1.0)
    daemon.report(rollout_id, final_reward=2.0)  # a duplicate: answered, counted, not stored
    daemon.report("never-issued", final_reward=0.0)
    samples = scrape(daemon)
    assert value(samples, "agl_claims_total") == 2
    assert value(samples, "agl_reclaims_total") == 1
    assert value(samples, "agl_rollouts_stored_total") == 2  # the first result, and the unsolicited one
    assert value(samples, "agl_rollouts_duplicate_total") == 1
    assert value(samples, "agl_rollouts_unsolicited_total") == 1
    assert task_gauges(daemon)["completed"] == 1


def test_the_store_apis_handouts_and_results_are_counted_as_the_workers_are(daemon: Daemon) -> None:
    agl = "/v1/agl"
    config = {"max_attempts": 2, "retry_condition": ["failed"]}
    [queued] = daemon.post(
        f"{agl}/queues/rollouts/enqueue", json={"rollouts": [{"input": "x", "config": config}]}
    ).json()
    rollout_id = queued["rollout_id"]

    def dequeue_and_end(status: str) -> None:
        [handed] = daemon.post(f"{agl}/queues/rollouts/dequeue", json={"limit": 1}).json()
        attempt_id = handed["attempt"]["attempt_id"]
        daemon.post(
            f"{agl}/rollouts/{rollout_id}/attempts/{attempt_id}", json={"status": status}
        ).raise_for_status()

    dequeue_and_end("failed")  # handed out again, as its config says
    dequeue_and_end("succeeded")
    samples = scrape(daemon)
    assert (value(samples, "agl_claims_total"), value(samples, "agl_reclaims_total")) == (2, 1)
    assert value(samples, "agl_rollouts_stored_total") == 1
    [stored] = daemon.api("GET", "/v1/rollouts").json()["rollouts"]
    assert stored["rollout_id"] == rollout_id


def test_rollouts_and_attempts_a_runner_starts_itself_are_counted_as_claims(daemon: Daemon) -> None:
    agl = "/v1/agl"
    started = daemon.post(f"{agl}/rollouts", json={"input": "x"}).json()
    daemon.post(f"{agl}/rollouts/{started['rollout_id']}/attempts", json={}).raise_for_status()
    samples = scrape(daemon)
    assert (value(samples, "agl_claims_total"), value(samples, "agl_reclaims_total")) == (2, 1)
    assert daemon.status()["rates"]["claims_per_second"] > 0


def test_commits_and_the_syncs_that_made_writes_durable_are_timed(make_daemon: Callable[..., Daemon]) -> None:
    timed = ("agl_commit_seconds", "agl_sync_seconds")
    for daemon, on_disk in (make_daemon(), True), (make_daemon("--memory"), False):
        before = scrape(daemon)
        daemon.queue("a")  # a durable write: synced before it is answered
        claimed = daemon.claim()  # a write that needs no sync
        assert claimed is not None
        daemon.report(claimed["rollout_id"], final_reward=1.0)  # durable again
        after = scrape(daemon)
        grew = {
            f"{name}_{part}": value(after, f"{name}_{part}") - value(before, f"{name}_{part}")
            for name in timed
            for part in ("count", "sum")
        }
        for name in timed:
            assert value(after, f"{name}_bucket", le="+Inf") == value(after, f"{name}_count")
        assert grew["agl_commit_seconds_count"] >= 3  # the sweeper may commit too
        assert grew["agl_commit_seconds_sum"] > 0
        if on_disk:
            assert grew["agl_sync_seconds_count"] == 2
            assert grew["agl_sync_seconds_sum"] > 0
        else:  # the memory store commits its groups too, but has nothing to sync
            assert grew["agl_sync_seconds_count"] == grew["agl_sync_seconds_sum"] == 0


def test_a_task_out_of_attempts_shows_as_failed(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--task-timeout", "0.2", "--max-attempts", "1")
    daemon.queue("x")
    assert daemon.claim() is not None
    wait_until(lambda: task_gauges(daemon)["failed"] == 1, "the sweeper to mark the task failed", 10)
    assert task_gauges(daemon)["claimed"] == 0


def test_latency_is_labelled_by_route_template_and_counts_every_request(daemon: Daemon) -> None:
    assert daemon.get("/resources/some-bundle").status_code == 404
    assert daemon.get("/resources/another-bundle").status_code == 404
    before = scrape(daemon)
    assert latency_count(before, "/resources/{resources_id}", "GET", "404") == 2
    routes = {dict(labels)["route"] for labels in before[f"{LATENCY}_count"]}
    assert not any("bundle" in route for route in routes), routes
    for _ in range(5):
        daemon.get("/task")
    after = scrape(daemon)
    assert latency_count(after, "/task", "GET", "200") == latency_count(before, "/task", "GET", "200") + 5
    buckets = after[f"{LATENCY}_bucket"]
    inf = frozenset({("route", "/task"), ("method", "GET"), ("status", "200"), ("le", "+Inf")})
    assert buckets[inf] == latency_count(after, "/task", "GET", "200")


def test_refused_and_unknown_requests_do_not_add_a_series_per_path(daemon: Daemon) -> None:
    assert daemon.get("/v1/tasks/abc").status_code == 401
    for path in ("/no/such/path", "/another/one"):
        daemon.get(path)
    samples = scrape(daemon)
    assert latency_count(samples, "/v1/tasks/{rollout_id}", "GET", "401") == 1
    routes = {dict(labels)["route"] for labels in samples[f"{LATENCY}_count"]}
    assert not routes & {"/no/such/path", "/another/one", "/v1/tasks/abc"}


def test_each_app_has_its_own_registry() -> None:
    first, second = create_app(MemoryStore()), create_app(MemoryStore())
    assert first.state.metrics.registry is not second.state.metrics.registry


def young_collections(daemon: Daemon) -> float:
    return value(scrape(daemon), "python_gc_collections_total", generation="0")


def test_large_rollouts_set_off_no_garbage_collections(daemon: Daemon) -> None:
    """Each body parses into some 2,000 lists and dicts, freed once it is answered:
    Python's default would collect a few times per report, walking all of them."""
    ids = daemon.queue(*range(20))
    before = young_collections(daemon)
    for _ in ids:
        task = daemon.get("/task").json()["task"]
        metadata = {"steps": [{"step": n, "tokens": [n, n + 1]} for n in range(1_000)]}
        report = {"rollout_id": task["rollout_id"], "final_reward": 1.0, "metadata": metadata}
        assert daemon.post("/rollout", json=report).status_code == 200
    assert young_collections(daemon) - before <= 1
