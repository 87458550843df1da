"""A training script written for agentlightning 0.3.0's legacy server, moved to agl.

The one line that changed is the import of `AgentLightningServer`. Run it, then start
workers against the printed endpoint (`python examples/worker.py URL`, which needs
agentlightning 0.3.0):

    python examples/embedded_server.py --port 8000 --tasks 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from agl_cli import AgentLightningServer  # was: from agentlightning.server import AgentLightningServer


async def train(port: int, tasks: int, timeout: float) -> None:
    server = AgentLightningServer(host="127.0.0.1", port=port, task_timeout_seconds=30.0)
    await server.start()
    print(f"serving at {server.endpoint}", flush=True)

    resources_id = await server.update_resources(
        {
            "main_llm": {"resource_type": "llm", "endpoint": "http://127.0.0.1:9/v1", "model": "tiny"},
            "prompt": {
                "resource_type": "prompt_template",
                "template": "What is {x} / 10?",
                "engine": "f-string",
            },
        }
    )
    rollout_ids = [
        await server.queue_task({"x": index}, mode="train", resources_id=resources_id)
        for index in range(tasks)
    ]

    rewards = []
    for rollout_id in rollout_ids:
        rollout = await server.poll_completed_rollout(rollout_id, timeout=timeout)
        if rollout is None:
            raise SystemExit(f"no result for {rollout_id} within {timeout} s")
        rewards.append(rollout.final_reward or 0.0)
    print(f"{len(rewards)} rollouts, mean reward {statistics.mean(rewards):.3f}", flush=True)
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    asyncio.run(train(args.port, args.tasks, args.timeout))


if __name__ == "__main__":
    main()
