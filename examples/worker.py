"""Workers for `examples/embedded_server.py`, or for any agl: agentlightning 0.3.0's own
`Trainer.fit_v0`, unchanged. Each answers a task `{"x": N}` with the reward N / 10.

    python examples/worker.py http://127.0.0.1:8000 --workers 2 --tasks-per-worker 4

It needs agentlightning 0.3.0 (`pip install agentlightning==0.3.0`). A 0.3.0 worker
stops after its number of tasks, and waits for more until then.
"""

from __future__ import annotations

import os

# Before agentlightning is imported: litellm, which it imports, otherwise fetches its
# model price list from the internet, and waits for it where there is none.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import multiprocessing
from typing import Any

from agentlightning import LitAgent, Trainer
from agentlightning.client import AgentLightningClient


class Divide(LitAgent[Any]):
    """The agent: a sync `rollout` serves train, val and test tasks alike."""

    def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        return float(task["x"]) / 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the server's address, as embedded_server.py prints it")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks-per-worker", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between asks when idle")
    args = parser.parse_args()
    # 0.3.0's Trainer was written for forked workers; Python 3.14 defaults to forkserver.
    multiprocessing.set_start_method("fork", force=True)
    client = AgentLightningClient(endpoint=args.url, poll_interval=args.poll_interval)
    Trainer(n_workers=args.workers, max_tasks=args.tasks_per_worker).fit_v0(Divide(), client)


if __name__ == "__main__":
    main()
