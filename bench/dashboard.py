"""How long the dashboard's reads take with a million tasks in the store.

What it measures
    A SQLite store is filled with `--tasks` tasks (default 1,000,000, queued through a
    batch as `agl queue` does), of which `--rollouts` (default 100,000) are claimed:
    nine in ten are reported with a reward in one of three modes, one in ten times out
    and fails.
    Then `agl serve` runs on it and the bench times `GET /v1/dashboard` (counts, rates and
    the reward chart), a page of recent rollouts, a page of failed and retried tasks, and
    one rollout's detail: the median and worst of `--repeat` calls each. For comparison it
    times counting the tasks per status row by row (`GROUP BY status`), what `agl status`
    did before the counts were kept by triggers.

How to run (from the repository root; needs agl installed)
    python bench/dashboard.py
    python bench/dashboard.py --tasks 100000 --rollouts 10000
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agl_cli.models import Mode, Rollout, TaskSpec
from agl_cli.paths import DATABASE_NAME
from agl_cli.store import SQLiteStore

READY = re.compile(r"listening on (http://\S+)")
MODES: tuple[Mode, ...] = ("train", "val", "test")


def fill(path: Path, tasks: int, rollouts: int) -> None:
    """Queue `tasks` through a batch, then report `rollouts` of them (every tenth one
    is left to time out and fail), as a run would leave the store."""
    clock = [time.time() - 3600.0]
    store = SQLiteStore(path, task_timeout=60.0, max_claims=1, clock=lambda: clock[0])
    batch = store.create_batch()
    for start in range(0, tasks, 10_000):
        count = min(10_000, tasks - start)
        store.stage_tasks(batch, [TaskSpec(input={"q": start + i}, mode=MODES[i % 3]) for i in range(count)])
    store.commit_batch(batch)
    while store.drain_step():
        pass
    with store.transaction():
        for index in range(rollouts):
            clock[0] += 3600.0 / rollouts
            task = store.claim_next()
            assert task is not None
            if index % 10 == 0:  # this attempt times out, and with it the task (one attempt allowed)
                continue
            reward = (index % 100) / 100
            store.record_rollout(Rollout(rollout_id=task.rollout_id, final_reward=reward))
    clock[0] += 120.0
    store.expire_claims()
    store.close()


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float]:
    """The median and worst time of `repeat` GETs of `path`, in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="agl-bench-dashboard-"))
    try:
        state = work / "state"
        state.mkdir(mode=0o700)
        started = time.perf_counter()
        fill(state / DATABASE_NAME, args.tasks, args.rollouts)
        print(
            f"filled: {args.tasks:,} tasks, {args.rollouts:,} claimed ({time.perf_counter() - started:.1f} s)"
        )
        with contextlib.closing(sqlite3.connect(state / DATABASE_NAME)) as db:
            started = time.perf_counter()
            db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
            row_by_row = (time.perf_counter() - started) * 1000
        store = SQLiteStore(state / DATABASE_NAME)
        started = time.perf_counter()
        counts = store.counts()
        kept = (time.perf_counter() - started) * 1000
        some_id = store.recent_rollouts(None, 1)[0].rollout_id
        store.close()
        print(f"tasks per status: {dict((k.value, v) for k, v in counts.tasks.items())}")
        print(f"counting them row by row: {row_by_row:.1f} ms; reading the kept counts: {kept:.2f} ms")
        serve = subprocess.Popen(
            [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert serve.stdout is not None
            url = None
            for line in serve.stdout:
                match = READY.search(line)
                if match:
                    url = match.group(1)
                    break
            assert url, "agl serve did not start"
            token = (state / "token").read_text().strip()
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client:
                for label, path in [
                    ("summary (GET /v1/dashboard)", "/v1/dashboard"),
                    ("recent rollouts, a page of 25", "/v1/dashboard/rollouts"),
                    ("failed and retried tasks, a page of 25", "/v1/dashboard/failures"),
                    ("one rollout in detail", f"/v1/dashboard/rollouts/{some_id}"),
                    ("status (GET /v1/status)", "/v1/status"),
                ]:
                    median, worst = timed(client, path, args.repeat)
                    print(f"{label:<42} median {median:6.1f} ms  worst {worst:6.1f} ms")
        finally:
            serve.terminate()
            serve.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
