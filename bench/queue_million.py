"""How long `agl queue` takes for a million tasks, and how much memory the daemon needs.

What it measures
    The wall time of `agl queue FILE` run as a subprocess (the real CLI: start-up, reading
    and checking the whole file, uploading it in chunks through the batch protocol, the
    commit, printing a million rollout ids), and the daemon's peak resident memory over
    that time, sampled every 20 ms with psutil. Targets: <= 15 s and <= 100 MB.

    The file has `--tasks` JSON Lines (default 1,000,000) shaped like real tasks: a small
    object input, a mode, and metadata. The daemon runs on a fresh SQLite state directory
    with `--log-level warning`. After the queue the bench checks that the daemon reports
    exactly that many queued tasks.

    With `--then-backup`, it then saves a copy (`agl backup`) while one worker claims
    and reports beside it, and prints how long that took and the worker's claim latency
    meanwhile (p50 and p99), and the same worker's alone for as long just after (no
    target). With `--then-cancel`, it then cancels the whole queue (`agl tasks cancel
    --queued`) beside such a worker, and prints the same.

How to run (from the repository root; needs agl installed, and psutil)
    python bench/queue_million.py
    python bench/queue_million.py --tasks 200000 --json -
    python bench/queue_million.py --then-backup --then-cancel
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

TARGET_SECONDS = 15.0  # also the side-by-side bench's targets for this figure
TARGET_RSS_MB = 100.0
READY = re.compile(r"listening on (http://\S+)")


def write_tasks(path: Path, count: int) -> None:
    modes = ("train", "val", "test")
    with path.open("w") as handle:
        for start in range(0, count, 10_000):
            handle.writelines(
                json.dumps(
                    {
                        "input": {"question": f"What is {i} + {i}?", "answer": 2 * i, "id": i},
                        "mode": modes[i % 3],
                        "metadata": {"source": "bench", "shard": i % 16},
                    }
                )
                + "\n"
                for i in range(start, min(start + 10_000, count))
            )


class PeakRSS(threading.Thread):
    """Samples a process's resident memory until stopped; keeps the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def stop(self) -> int:
        self.halt.set()
        self.join()
        return self.peak


def start_daemon(state_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state_dir)]
    command += ["--log-level", "warning"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = READY.search(log.read_text())
        if match:
            url = match.group(1)
            while httpx.get(url + "/ready", timeout=5).status_code != 200:
                time.sleep(0.05)
            return process, url
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"agl serve did not start:\n{log.read_text()}")


class Worker(threading.Thread):
    """Claims and reports, one after the other, until stopped; times each claim."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.claims: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(
            base_url=self.url, headers={"Content-Type": "application/json"}, timeout=60
        ) as client:
            while not self.halt.is_set():
                began = time.perf_counter()
                task = client.get("/task").json()["task"]
                self.claims.append(time.perf_counter() - began)
                if task is not None:
                    client.post("/rollout", json={"rollout_id": task["rollout_id"], "final_reward": 1.0})

    def stop(self) -> list[float]:
        self.halt.set()
        self.join()
        return sorted(self.claims)


def beside_a_worker(url: str, command: list[str], env: dict[str, str]) -> tuple[float, bytes, list[float]]:
    """Run an `agl` command while a worker claims and reports: its wall time, its output,
    and the worker's claim latencies meanwhile, sorted."""
    worker = Worker(url)
    worker.start()
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - began
    claims = worker.stop()
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[3:])} failed ({result.returncode}): {result.stderr.decode()}")
    return wall, result.stdout, claims


def latencies(claims: list[float], prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}claims": len(claims),
        f"{prefix}claim_p50_ms": round(claims[len(claims) // 2] * 1e3, 2),
        f"{prefix}claim_p99_ms": round(claims[int(len(claims) * 0.99)] * 1e3, 2),
    }


def agl_command(state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agl_cli", "--state-dir", str(state_dir), *args]


def cancel_beside_a_worker(state_dir: Path, url: str, env: dict[str, str]) -> dict[str, Any]:
    """`agl tasks cancel --queued` while a worker claims and reports."""
    wall, out, claims = beside_a_worker(
        url, agl_command(state_dir, "tasks", "cancel", "--queued", "--json"), env
    )
    return {
        "cancelled": json.loads(out)["cancelled"],
        "cancel_seconds": round(wall, 2),
        **latencies(claims, "cancel_"),
    }


def backup_beside_a_worker(state_dir: Path, url: str, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """`agl backup` while a worker claims and reports, then the worker alone for as long
    (at least a second), to compare its claims with."""
    copy = workdir / "backup.db"
    wall, out, claims = beside_a_worker(url, agl_command(state_dir, "backup", str(copy), "--json"), env)
    saved = json.loads(out)
    alone = Worker(url)
    alone.start()
    time.sleep(max(wall, 1.0))
    baseline = alone.stop()
    return {
        "backup_seconds": round(wall, 2),
        "backup_mb": round(saved["bytes"] / 1e6, 1),
        "backup_tasks": saved["tasks"],
        **latencies(baseline, "alone_"),
        **latencies(claims, "backup_"),
    }


def run(tasks: int, workdir: Path, then_cancel: bool = False, then_backup: bool = False) -> dict[str, Any]:
    file = workdir / "tasks.jsonl"
    began = time.perf_counter()
    write_tasks(file, tasks)
    generated = time.perf_counter() - began
    state_dir = workdir / "state"
    daemon, url = start_daemon(state_dir, workdir / "daemon.log")
    try:
        idle_rss = psutil.Process(daemon.pid).memory_info().rss
        sampler = PeakRSS(daemon.pid)
        sampler.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
        command = [sys.executable, "-m", "agl_cli", "--state-dir", str(state_dir), "queue", str(file)]
        began = time.perf_counter()
        with (workdir / "ids.txt").open("wb") as ids:
            result = subprocess.run(command, stdout=ids, stderr=subprocess.PIPE, env=env, check=False)
        wall = time.perf_counter() - began
        peak = sampler.stop()
        if result.returncode != 0:
            raise SystemExit(f"agl queue failed ({result.returncode}): {result.stderr.decode()}")
        token = (state_dir / "token").read_text().strip()
        status = httpx.get(
            url + "/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=60
        ).json()
        printed = sum(1 for _ in (workdir / "ids.txt").open("rb"))
        backup = backup_beside_a_worker(state_dir, url, env, workdir) if then_backup else {}
        cancel = cancel_beside_a_worker(state_dir, url, env) if then_cancel else {}
    finally:
        daemon.terminate()
        daemon.wait(60)
    return {
        "tasks": tasks,
        "file_mb": round(file.stat().st_size / 1e6, 1),
        "generate_seconds": round(generated, 2),
        "queue_seconds": round(wall, 2),
        "tasks_per_second": round(tasks / wall),
        "daemon_idle_rss_mb": round(idle_rss / 1e6, 1),
        "daemon_peak_rss_mb": round(peak / 1e6, 1),
        "queued_reported_by_daemon": status["tasks"]["queued"],
        "ids_printed": printed,
        "within_targets": wall <= TARGET_SECONDS and peak / 1e6 <= TARGET_RSS_MB,
        **backup,
        **cancel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="FILE", help="Also write the figures as JSON ('-' for stdout).")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory (file, state, logs).")
    parser.add_argument(
        "--then-backup", action="store_true", help="Then back the daemon up beside a worker, and time that."
    )
    parser.add_argument(
        "--then-cancel", action="store_true", help="Then cancel the queue beside a worker, and time that."
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agl-queue-bench-"))
    try:
        figures = run(args.tasks, workdir, args.then_cancel, args.then_backup)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"agl queue: {figures['tasks']:,} tasks ({figures['file_mb']} MB) in {figures['queue_seconds']} s "
        f"({figures['tasks_per_second']:,}/s), target <= {TARGET_SECONDS:g} s\n"
        f"daemon RSS: {figures['daemon_idle_rss_mb']} MB idle, {figures['daemon_peak_rss_mb']} MB peak, "
        f"target <= {TARGET_RSS_MB:g} MB\n"
        f"daemon reports {figures['queued_reported_by_daemon']:,} queued; {figures['ids_printed']:,} ids printed"
    )
    if args.then_backup:
        print(
            f"agl backup: {figures['backup_mb']} MB ({figures['backup_tasks']:,} tasks) in"
            f" {figures['backup_seconds']} s; a worker's claims meanwhile ({figures['backup_claims']:,}):"
            f" p50 {figures['backup_claim_p50_ms']} ms, p99 {figures['backup_claim_p99_ms']} ms;"
            f" alone for as long after it ({figures['alone_claims']:,}):"
            f" p50 {figures['alone_claim_p50_ms']} ms, p99 {figures['alone_claim_p99_ms']} ms"
        )
    if args.then_cancel:
        print(
            f"agl tasks cancel --queued: {figures['cancelled']:,} cancelled in {figures['cancel_seconds']} s; "
            f"a worker's claims meanwhile ({figures['cancel_claims']:,}): "
            f"p50 {figures['cancel_claim_p50_ms']} ms, p99 {figures['cancel_claim_p99_ms']} ms"
        )
    if args.json:
        text = json.dumps(figures, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if figures["queued_reported_by_daemon"] != figures["tasks"]:
        raise SystemExit("the daemon did not queue every task")


if __name__ == "__main__":
    main()
