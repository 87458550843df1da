"""Run a real agentlightning 0.3.0 ``Trainer`` whose store is a ``LightningStoreClient``.

Run with the compat venv's python (see ``tests/compat_env.py``)::

    python store_trainer_run.py http://127.0.0.1:PORT --samples N --runners R [--direct]

The one line a 0.3.0 user changes is the store: ``Trainer(store=LightningStoreClient(url))``.
By default the Trainer relays it through a store server of its own (at
``AGL_SERVER_PORT``, which the test sets to a free port); with ``--direct`` its runners
talk to ``url`` themselves (``managed_store=False``).

The agent emits one OpenTelemetry span and returns ``input["x"] / 10`` as its reward. The
algorithm publishes a prompt, enqueues every sample (retried on failure, timeout or
silence), waits until all have finished and reads their spans. The tracer exports to
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (recent exporters ignore 0.3.0's own endpoint
override), which the test points at ``url/v1/traces``. ``HEALTH_RETRY_DELAYS`` (seconds,
comma-separated) gives the client the patience docs/store-api.md advises for a daemon that
a supervisor restarts after a pause. The last stdout line is one JSON object describing
every rollout as the algorithm saw it.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import json
import time
import warnings
from typing import Any

import opentelemetry.trace as trace_api
from agentlightning import Algorithm, PromptTemplate, Trainer, rollout
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.tracer.otel import OtelTracer
from agentlightning.types import EnqueueRolloutRequest, RolloutConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)
PATIENCE = float(os.environ.get("ROLLOUT_PATIENCE", "20"))  # seconds before an attempt is given up
POLL = float(os.environ.get("ALGORITHM_POLL", "0.2"))  # seconds between the algorithm's looks
RETRIED = RolloutConfig(
    timeout_seconds=PATIENCE,
    unresponsive_seconds=PATIENCE,
    max_attempts=5,
    retry_condition=["failed", "timeout", "unresponsive"],
)


@rollout
def agent(task: dict[str, Any], prompt_template: PromptTemplate) -> float:
    with trace_api.get_tracer("store-trainer-run").start_as_current_span("work", attributes={"x": task["x"]}):
        time.sleep(float(os.environ.get("AGENT_SECONDS", "0.05")))
    return float(task["x"]) / 10


class EnqueueAndWait(Algorithm):
    """Enqueue the dataset, wait for every rollout to finish, read what each produced."""

    def __init__(self) -> None:
        super().__init__()
        self.summary: dict[str, Any] = {}

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        store = self.get_store()
        await store.update_resources(
            "main", {"prompt_template": PromptTemplate(template="{x}", engine="f-string")}
        )
        queued = await store.enqueue_many_rollouts(
            [EnqueueRolloutRequest(input=sample, mode="train", config=RETRIED) for sample in train_dataset]
        )
        ids = [r.rollout_id for r in queued]
        while len(finished := await store.wait_for_rollouts(rollout_ids=ids, timeout=0)) < len(ids):
            await asyncio.sleep(POLL)
        rollouts = {}
        for done in finished:
            spans = await store.query_spans(done.rollout_id, "latest")
            rollouts[done.rollout_id] = {
                "status": done.status,
                "input": done.input,
                "span_names": sorted(span.name for span in spans),
                "rewards": [
                    span.attributes.get("agentlightning.reward.0.value")
                    for span in spans
                    if "agentlightning.reward.0.value" in span.attributes
                ],
            }
        self.summary = {"ids": ids, "rollouts": rollouts}


def patience() -> dict[str, Any]:
    delays = os.environ.get("HEALTH_RETRY_DELAYS")
    return {"health_retry_delays": [float(d) for d in delays.split(",")]} if delays else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--direct", action="store_true")
    args = parser.parse_args()

    algorithm = EnqueueAndWait()
    strategy: dict[str, Any] = {"type": "cs", "n_runners": args.runners}
    if args.direct:
        strategy["managed_store"] = False
    trainer = Trainer(
        store=LightningStoreClient(args.url, **patience()),
        n_runners=args.runners,
        algorithm=algorithm,
        tracer=OtelTracer(),
        strategy=strategy,
    )
    trainer.fit(agent, train_dataset=[{"x": k} for k in range(args.samples)])
    print(json.dumps({"ok": True, **algorithm.summary}))


if __name__ == "__main__":
    main()
