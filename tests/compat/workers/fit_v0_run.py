"""Run the real ``agentlightning`` 0.3.0 ``Trainer.fit_v0`` against a legacy-protocol server.

Run with the compat venv's python (see ``tests/compat_env.py``)::

    python fit_v0_run.py [--sync URL] [--async URL] --max-tasks N --workers W [--poll-interval S]

With both, a sync agent's run against one server, then an async agent's against another,
in one process (importing agentlightning is much of its time).

What the test must arrange, learned from the 0.3.0 source:

* ``max_tasks`` is PER WORKER: each worker loops until it has handled N tasks,
  then exits. Queue exactly ``N * W`` tasks before starting; with fewer, a worker
  polls forever, with more, the extra tasks stay queued.
* Publish resources first. A worker that cannot fetch them has claimed the task
  but drops it silently (nothing is posted, nothing counted) and polls again at once.
* Worker failures do not change the exit code (fit_v0 logs them), so assert on
  the rollouts the server received, or on ``seen`` below.

The agent's reward is ``input["x"] / 10``. The last stdout line is one JSON
object, by flavour: ``{"sync": {"ok": true, "seen": [...one entry per rollout the agent ran...]}}``.
"""

from __future__ import annotations

import os

# Must run before agentlightning is imported: importing it imports litellm, which
# otherwise fetches its model price map from GitHub (about 7 s of retries offline).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The Trainer's default AgentOpsTracer sends nothing in these short runs (checked
# with strace), but keep any attempt on localhost and keep its banner quiet.
os.environ.setdefault("AGENTOPS_API_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("AGENTOPS_EXPORTER_ENDPOINT", "http://127.0.0.1:9/v1/traces")
os.environ.setdefault("AGENTOPS_LOG_LEVEL", "CRITICAL")
os.environ.setdefault("AGENTOPS_LOG_SESSION_REPLAY_URL", "false")

import argparse
import faulthandler
import json
import multiprocessing
import threading
import time
import warnings
from typing import Any

from agentlightning import LitAgent, Trainer
from agentlightning.client import AgentLightningClient

warnings.filterwarnings("ignore", category=DeprecationWarning)

# Forked workers inherit the agent and this queue without pickling; newer Pythons
# default to forkserver, which the legacy Trainer was not written for.
multiprocessing.set_start_method("fork", force=True)
SEEN: Any = multiprocessing.SimpleQueue()


def observe(task: dict[str, Any], resources: dict[str, Any], rollout: Any) -> float:
    """Reward from the input, and a note for the parent of what this worker saw."""
    reward = float(task["x"]) / 10
    SEEN.put(
        {
            "rollout_id": rollout.rollout_id,
            "pid": os.getpid(),
            "input": task,
            "reward": reward,
            "resource_classes": {name: type(res).__name__ for name, res in resources.items()},
        }
    )
    return reward


class SyncAgent(LitAgent[Any]):
    # Overriding ``rollout`` covers both train and val/test tasks.
    def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        return observe(task, resources, rollout)


class AsyncAgent(LitAgent[Any]):
    async def rollout_async(self, task: Any, resources: Any, rollout: Any) -> float:
        return observe(task, resources, rollout)


def arm_deadline(seconds: float) -> None:
    """Fail loudly instead of hanging: the workers poll forever if tasks run short."""

    def fire() -> None:
        faulthandler.dump_traceback(all_threads=True)
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", dest="sync_url", help="the server for a sync agent's run")
    parser.add_argument(
        "--async", dest="async_url", help="the server for an async agent's run (aiohttp client)"
    )
    parser.add_argument("--max-tasks", type=int, required=True, help="tasks per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="hand fit_v0 a client with this poll interval; default passes the URL (client polls every 5 s)",
    )
    parser.add_argument("--deadline", type=float, default=120.0, help="kill everything after N seconds")
    args = parser.parse_args()
    arm_deadline(args.deadline)
    runs = {"sync": (SyncAgent(), args.sync_url), "async": (AsyncAgent(), args.async_url)}
    summary = {}
    for flavour, (agent, url) in runs.items():
        if url:
            summary[flavour] = fit(agent, url, args)
    print(json.dumps(summary), flush=True)


def fit(agent: LitAgent[Any], url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One `fit_v0` run to its end, and what its workers saw."""
    backend: str | AgentLightningClient = url
    if args.poll_interval is not None:
        backend = AgentLightningClient(endpoint=url, poll_interval=args.poll_interval)
    started = time.monotonic()
    Trainer(n_workers=args.workers, max_tasks=args.max_tasks).fit_v0(agent, backend)
    elapsed = time.monotonic() - started
    seen = []
    while not SEEN.empty():
        seen.append(SEEN.get())
    return {"ok": True, "fit_seconds": round(elapsed, 3), "seen": seen}


if __name__ == "__main__":
    main()
