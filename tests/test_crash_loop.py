"""Jepsen-style: sixteen workers speaking the legacy protocol while the daemon is killed
with `kill -9` again and again, and restarted on the same state directory each time; once
also in the middle of committing a 100,000-task batch. Whatever was answered 200 is kept
exactly once, every task completes, a batch is all there or not there, and the database
passes SQLite's integrity check.

The suite runs it short; a long run is the same test with more:

    CRASH_LOOP_KILLS=50 CRASH_LOOP_TASKS=20000 python -m pytest tests/test_crash_loop.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cli_runner import agl
from daemon import Daemon, free_port, wait_until

KILLS = int(os.environ.get("CRASH_LOOP_KILLS", "5"))
TASKS = int(os.environ.get("CRASH_LOOP_TASKS", "400"))
WORKERS = 16
BATCH = 100_000
pytestmark = pytest.mark.timeout(600)


class Workers:
    """Threads that claim and report until told to stop, noting every report answered 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(WORKERS)]

    def work(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    task = client.get("/task", params={"wait": 1}).json()["task"]
                    if task is None:
                        continue
                    body = {"rollout_id": task["rollout_id"], "final_reward": 1.0}
                    if client.post("/rollout", json=body).status_code == 200:
                        with self.lock:
                            self.acked.append(task["rollout_id"])
                except (httpx.TransportError, ValueError):
                    self.stop.wait(0.05)  # the daemon is down: try again shortly

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def test_kill_9_again_and_again_loses_nothing_answered_and_doubles_nothing(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    daemon = make_daemon("--port", str(free_port()), "--task-timeout", "2", state_dir=state)
    ids = set(daemon.queue(*range(TASKS)))
    workers = Workers(daemon.url)
    for thread in workers.threads:
        thread.start()
    for kill in range(KILLS):  # each once the workers have made some progress since the last
        target = min(TASKS, workers.count() + max(10, TASKS // (KILLS + 1)))
        wait_until(lambda target=target: workers.count() >= target or daemon.status()["tasks"]["completed"] >= TASKS,
                   f"progress before kill {kill + 1}")  # fmt: skip
        daemon.kill()
        daemon.start()
    wait_until(lambda: daemon.status()["tasks"]["completed"] == TASKS, "every task to complete", timeout=300)
    workers.stop.set()
    for thread in workers.threads:
        thread.join(10)

    stored = daemon.rollouts()
    stored_ids = Counter(r["rollout_id"] for r in stored)
    acked = set(workers.acked)
    lost = acked - set(stored_ids)
    doubled = [rid for rid, times in stored_ids.items() if times > 1]
    print(f"\ncrash loop: {KILLS} kills, {len(workers.acked)} reports answered 200 ({len(acked)} rollouts), "
          f"{len(stored)} stored, lost {len(lost)}, doubled {len(doubled)}")  # fmt: skip
    assert (lost, doubled) == (set(), [])
    assert set(stored_ids) == ids  # every task completed, each with one result
    watched = agl("rollouts", "watch", "--since", "all", "--count", str(TASKS), "--json", daemon=daemon)
    assert sorted(json.loads(line)["rollout_id"] for line in watched.stdout.splitlines()) == sorted(ids)

    # A kill in the middle of committing a large batch: afterwards it is all there, or none of it.
    batch = daemon.api("POST", "/v1/batches").json()["batch_id"]
    for start in range(0, BATCH, 10_000):
        tasks = [{"input": i} for i in range(start, start + 10_000)]
        assert daemon.api("POST", f"/v1/batches/{batch}/tasks", json={"tasks": tasks}).status_code == 200
    committing = threading.Thread(target=lambda: _commit_quietly(daemon, batch))
    committing.start()
    daemon.kill()
    committing.join(30)
    daemon.start()
    queued = daemon.status()["tasks"]["queued"]
    assert queued in (0, BATCH)
    daemon.kill()  # no shutdown code runs: the file as a crash leaves it
    with sqlite3.connect(state / "agl.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _commit_quietly(daemon: Daemon, batch: str) -> None:
    """Commit; killed before it answered, the batch may be in or not, but never in part."""
    with contextlib.suppress(httpx.TransportError):
        daemon.api("POST", f"/v1/batches/{batch}/commit")
