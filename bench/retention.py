"""How fast `--rollout-retention` deletes a backlog, and what claims wait meanwhile.

    python bench/retention.py [--rollouts 20000] [--kb 48] [--forget-tasks]

A store in a temporary directory is filled first, in this process (no daemon): that many
tasks queued, claimed and reported with rollouts of about `--kb` KB of token ids each,
and as many tasks again left queued for the claims below. Then `agl serve` is started on
it with `--rollout-retention 1`, so that the whole backlog is due at once, and one
keep-alive client claims (`GET /task`) one task after another until the daemon's
`agl_rollouts_pruned_total` says every rollout is gone. It prints how long that took,
the rate, and the claims' latency meanwhile. With `--forget-tasks` the daemon deletes the
completed tasks too, and it prints how many are left. Nothing is asserted.
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
    parser.add_argument("--forget-tasks", action="store_true", help="serve with --forget-tasks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agl-retention-") as scratch:
        state = Path(scratch) / "state"
        state.mkdir()
        started = time.perf_counter()
        fill(state / "agl.db", args.rollouts, args.kb)
        print(
            f"filled {args.rollouts:,} rollouts of about {args.kb} KB in {time.perf_counter() - started:.1f} s"
        )
        daemon = Child(
            [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(state),
             "--rollout-retention", "1", "--log-level", "warning", *["--forget-tasks"] * args.forget_tasks],
            Path(scratch) / "agl.log",
        )  # fmt: skip
        # Its first sweep comes a second after it starts: every rollout is past the retention.
        url = daemon.wait_for(LISTENING, 60, "agl serve").group(1).replace("0.0.0.0", HOST)
        latencies: list[float] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            began = time.perf_counter()
            while metric(client, "agl_rollouts_pruned_total") < args.rollouts:
                assert time.perf_counter() - began < args.timeout, "the backlog was not deleted in time"
                sent = time.perf_counter()
                client.get("/task").raise_for_status()
                latencies.append(time.perf_counter() - sent)
            took = time.perf_counter() - began
            completed = metric(client, "agl_tasks", status="completed")
        daemon.stop()
    latencies = sorted(latencies) or [0.0]  # a small backlog may go before the first claim
    print(f"deleted {args.rollouts:,} rollouts in {took:.2f} s ({args.rollouts / took:,.0f} a second)")
    print(f"completed tasks left: {completed:,.0f}")
    print(
        f"claims meanwhile: {len(latencies):,}, p50 {latencies[len(latencies) // 2] * 1000:.2f} ms,"
        f" p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
