"""Exercise every call of the real ``agentlightning`` 0.3.0 legacy client against a server.

Run with the compat venv's python (see ``tests/compat_env.py``)::

    python client_calls.py [--sync http://127.0.0.1:PORT] [--async http://127.0.0.1:PORT]

The sync methods against one server, then the *_async ones against another, in one
process (importing agentlightning is most of its time). Each server must have
resources published and at least one task queued (the poll blocks until one shows up).
The last stdout line is one JSON object with what the client observed in each flavour,
so a pytest test can assert on it without importing agentlightning itself.
"""

from __future__ import annotations

import os

# Must run before agentlightning is imported: importing it imports litellm, which
# otherwise fetches its model price map from GitHub (about 7 s of retries offline).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import faulthandler
import json
import warnings
from typing import Any

from agentlightning.client import AgentLightningClient
from agentlightning.types import ResourcesUpdate, RolloutLegacy, Task, Triplet

warnings.filterwarnings("ignore", category=DeprecationWarning)

MISSING_ID = "res-does-not-exist"


def dump_resources(update: ResourcesUpdate | None) -> dict[str, Any] | None:
    """Serialise a bundle and keep each value's class name, which JSON alone would lose."""
    if update is None:
        return None
    data: dict[str, Any] = update.model_dump(mode="json")
    data["resource_classes"] = {name: type(res).__name__ for name, res in update.resources.items()}
    return data


def make_rollout(task: Task) -> RolloutLegacy:
    """A rollout that fills every optional field the legacy server accepts."""
    return RolloutLegacy(
        rollout_id=task.rollout_id,
        task=task,
        final_reward=0.75,
        triplets=[
            Triplet(prompt={"text": "ping"}, response={"text": "pong"}, reward=0.75, metadata={"step": 0}),
        ],
        logs=["first log line", "second log line"],
        metadata={"worker": "client_calls"},
    )


def run_sync(url: str) -> dict[str, Any]:
    client = AgentLightningClient(endpoint=url, poll_interval=0.2, timeout=10)
    latest = client.get_latest_resources()
    # A fresh client, because the first one cached the bundle under its id and
    # would answer from memory without sending GET /resources/{id}.
    fresh = AgentLightningClient(endpoint=url, poll_interval=0.2, timeout=10)
    by_id = fresh.get_resources_by_id(latest.resources_id) if latest else None
    missing = fresh.get_resources_by_id(MISSING_ID)
    task = client.poll_next_task()
    assert task is not None  # the legacy client only returns once a task arrives
    rollout = make_rollout(task)
    posted = client.post_rollout(rollout)
    return report(latest, by_id, missing, task, rollout, posted)


async def run_async(url: str) -> dict[str, Any]:
    client = AgentLightningClient(endpoint=url, poll_interval=0.2, timeout=10)
    latest = await client.get_latest_resources_async()
    fresh = AgentLightningClient(endpoint=url, poll_interval=0.2, timeout=10)
    by_id = await fresh.get_resources_by_id_async(latest.resources_id) if latest else None
    missing = await fresh.get_resources_by_id_async(MISSING_ID)
    task = await client.poll_next_task_async()
    assert task is not None
    rollout = make_rollout(task)
    posted = await client.post_rollout_async(rollout)
    return report(latest, by_id, missing, task, rollout, posted)


def report(
    latest: ResourcesUpdate | None,
    by_id: ResourcesUpdate | None,
    missing: ResourcesUpdate | None,
    task: Task,
    rollout: RolloutLegacy,
    posted: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "latest": dump_resources(latest),
        "by_id": dump_resources(by_id),
        "missing": dump_resources(missing),
        "task": task.model_dump(mode="json"),
        "posted_rollout": rollout.model_dump(mode="json"),
        "post_response": posted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", dest="sync_url", help="the server to use the sync methods on")
    parser.add_argument("--async", dest="async_url", help="the server to use the *_async methods on")
    parser.add_argument("--deadline", type=float, default=60.0, help="dump stacks and exit after N seconds")
    args = parser.parse_args()
    # poll_next_task never gives up on its own; make a hang fail loudly instead.
    faulthandler.dump_traceback_later(args.deadline, exit=True)
    seen = {}
    if args.sync_url:
        seen["sync"] = run_sync(args.sync_url)
    if args.async_url:
        seen["async"] = asyncio.run(run_async(args.async_url))
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
