"""How fast `--rollout-retention` deletes a backlog, and what claims wait meanwhile.

    python bench/retention.py [--rollouts 20000] [--kb 48] [--forget-tasks | --left-behind]

A store in a temporary directory is filled first, in this process (no daemon): that many
tasks queued, claimed and reported with rollouts of about `--kb` KB of token ids each,
and as many tasks again left queued for the claims below. Then `agl serve` is started on
it with `--rollout-retention 1`, so that the whole backlog is due at once, and one
keep-alive client claims (`GET /task`) one task after another until the daemon's
`agl_rollouts_pruned_total` says every rollout is gone. It prints how long that took,
the rate, and the claims' latency meanwhile. With `--forget-tasks` the daemon deletes the
completed tasks too, and it prints how many are left. With `--left-behind` the results
are deleted before the daemon starts, as a daemon without `--forget-tasks` would have,
and it is the tasks left behind that the daemon (with `--forget-tasks`) deletes, found
by its walk of every task id once it starts. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import HOST, LISTENING, Child, task_spec

from agl_cli.store import Report, SQLiteStore, TaskSpec

FILL_GROUP = 500


def fill(path: Path, rollouts: int, kb: int) -> None:
    """`rollouts` tasks claimed and reported, and as many again queued."""
    ids = ",".join(["12345"] * (kb * 1024 // 12))  # a prompt's and a response's token ids
    triplet = f'{{"prompt": {{"token_ids": [{ids}]}}, "response": {{"token_ids": [{ids}]}}, "reward": 0.5}}'
    store = SQLiteStore(path)
    try:
        for start in range(0, rollouts, FILL_GROUP):
            count = min(FILL_GROUP, rollouts - start)
            store.queue_tasks([TaskSpec.model_validate(task_spec(start + i)) for i in range(count)])
            with store.transaction():
                claims = store.claim_many(count)
                store.record_reports(
                    [
                        Report(
                            claim.rollout_id,
                            "train",
                            0.5,
                            f'{{"rollout_id": "{claim.rollout_id}", "triplets": [{triplet}]}}',
                        )
                        for claim in claims
                    ]
                )
        store.queue_tasks([TaskSpec.model_validate(task_spec(i)) for i in range(rollouts)])
    finally:
        store.close()


def delete_results(path: Path) -> None:
    """What retention without --forget-tasks did before: every result gone, its task kept."""
    store = SQLiteStore(path, rollout_retention=1e-6)
    try:
        while store.prune_rollouts(1_000):
            pass
    finally:
        store.close()


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample of the daemon's metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    raise RuntimeError(f"the daemon exports no {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=20_000)
    parser.add_argument("--kb", type=int, default=48, help="the size of each rollout, about")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the deletion")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--forget-tasks", action="store_true", help="serve with --forget-tasks")
    how.add_argument(
        "--left-behind", action="store_true", help="delete the results first; serve with --forget-tasks"
    )
    args = parser.parse_args()
    forget = args.forget_tasks or args.left_behind
    with tempfile.TemporaryDirectory(prefix="agl-retention-") as scratch:
        state = Path(scratch) / "state"
        state.mkdir()
        started = time.perf_counter()
        fill(state / "agl.db", args.rollouts, args.kb)
        if args.left_behind:
            delete_results(state / "agl.db")
        print(
            f"filled {args.rollouts:,} rollouts of about {args.kb} KB in {time.perf_counter() - started:.1f} s"
            + (", then deleted them, their tasks left behind" if args.left_behind else "")
        )
        daemon = Child(
            [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state),
             "--rollout-retention", "1", "--log-level", "warning", *["--forget-tasks"] * forget],
            Path(scratch) / "agl.log",
        )  # fmt: skip
        # Its first sweep comes a second after it starts: every rollout is past the retention.
        url = daemon.wait_for(LISTENING, 60, "agl serve").group(1).replace("0.0.0.0", HOST)
        latencies: list[float] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            began = time.perf_counter()
            while (
                metric(client, "agl_tasks", status="completed") > 0
                if args.left_behind
                else metric(client, "agl_rollouts_pruned_total") < args.rollouts
            ):
                assert time.perf_counter() - began < args.timeout, "the backlog was not deleted in time"
                sent = time.perf_counter()
                client.get("/task").raise_for_status()
                latencies.append(time.perf_counter() - sent)
            took = time.perf_counter() - began
            completed = metric(client, "agl_tasks", status="completed")
        daemon.stop()
    latencies = sorted(latencies) or [0.0]  # a small backlog may go before the first claim
    what = "tasks left behind" if args.left_behind else "rollouts"
    print(f"deleted {args.rollouts:,} {what} in {took:.2f} s ({args.rollouts / took:,.0f} a second)")
    print(f"completed tasks left: {completed:,.0f}")
    print(
        f"claims meanwhile: {len(latencies):,}, p50 {latencies[len(latencies) // 2] * 1000:.2f} ms,"
        f" p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
