"""What one large store-API enqueue does to the runners dequeueing beside it, agl and 0.3.0.

What it measures
    agl (durable default) and agentlightning 0.3.0's own store server (in memory, from the
    compat environment) run side by side. On each in turn, with 1,000 rollouts queued, one
    client dequeues a rollout at a time in a loop while another sends a single
    `POST /queues/rollouts/enqueue` of `--rollouts` rollouts (100,000 by default, about
    5 MB of JSON: `enqueue_many_rollouts` of a dataset). It prints, per server, how long
    the enqueue took and the dequeues answered while it was under way: how many, and
    their p50, p99 and longest wait. There is no target: it shows whether a large enqueue
    holds up the queue's other users. The dequeuing client is Python (httpx), which is
    fine for latencies of one request at a time.

How to run (after `bash bench/setup.sh`, from the repository root)
    python bench/large_enqueue.py
    python bench/large_enqueue.py --agl-tree ../other-checkout   # agl from another tree
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import find_legacy_python, log
from store_api import AGL, StoreServer, enqueue, free_port, servers

JSON_TYPE = {"Content-Type": "application/json"}


def dequeues_during_enqueue(server: StoreServer, rollouts: int) -> tuple[float, list[float]]:
    """The enqueue's wall time, and the wait of every dequeue answered while it ran (ms)."""
    enqueue(server, 1_000)
    # Written beforehand and its answer left unread: this process's own JSON work would
    # hold the dequeuing thread up as much as the server does.
    body = orjson.dumps({"rollouts": [{"input": {"n": n}, "mode": "train"} for n in range(rollouts)]})
    waits: list[float] = []
    sending = threading.Event()
    done = threading.Event()

    def dequeue() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            while not done.is_set():
                began = time.perf_counter()
                client.post(f"{AGL}/queues/rollouts/dequeue", json={"limit": 1}).raise_for_status()
                if sending.is_set() and not done.is_set():
                    waits.append((time.perf_counter() - began) * 1000)

    worker = threading.Thread(target=dequeue)
    worker.start()
    try:
        sending.set()
        began = time.perf_counter()
        answer = httpx.post(
            f"{server.url}{AGL}/queues/rollouts/enqueue", content=body, headers=JSON_TYPE, timeout=600
        )
        took = time.perf_counter() - began
    finally:
        done.set()
        worker.join()
    if answer.status_code != 201:
        raise RuntimeError(f"{server.name}: the enqueue gave {answer.status_code}: {answer.text[:300]}")
    return took, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=100_000, help="rollouts in the one enqueue")
    parser.add_argument("--agl-tree", type=Path, default=None, help="run agl from this checkout")
    parser.add_argument("--legacy-python", default=None, help="a Python with agentlightning 0.3.0")
    parser.add_argument("--no-legacy", action="store_true", help="agl alone (a smoke run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agl-enqueue-bench-") as tmp:
        workdir = Path(tmp)
        legacy_python, how = find_legacy_python(argparse.Namespace(quick=False, **vars(args)))
        if legacy_python is None and not args.no_legacy:
            raise SystemExit(f"0.3.0's store server is needed beside agl: {how}")
        wanted = {"agl (durable)"} | (set() if args.no_legacy else {"0.3.0 store"})
        chosen = [s for s in servers(workdir, legacy_python or "") if s.name in wanted]
        if args.agl_tree is not None:
            chosen[0].env = chosen[0].env | {"PYTHONPATH": str(args.agl_tree.resolve())}
        print(f"\n  one enqueue of {args.rollouts:,} rollouts, a runner dequeueing one at a time beside it")
        print(f"  {'server':<15} {'enqueue s':>10} {'dequeues':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for server in chosen:
            server.start(workdir, free_port())
            try:
                took, waits = dequeues_during_enqueue(server, args.rollouts)
            finally:
                server.stop()
            log(f"[{server.name}] enqueue took {took:.2f} s")
            waits.sort()
            p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else float("nan")
            middle = statistics.median(waits) if waits else float("nan")
            print(
                f"  {server.name:<15} {took:>10.2f} {len(waits):>9} {middle:>8.1f} {p99:>8.1f}"
                f" {max(waits, default=float('nan')):>8.1f}"
            )
    print(f"(on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
