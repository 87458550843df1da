"""The JSON that the management API and the dashboard answer with, made from the store's
records in one place, so that a task, a bundle or the daemon's status reads the same
wherever it is shown."""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request

from agl_cli import __version__
from agl_cli.models import ResourcesUpdate
from agl_cli.server import schemas
from agl_cli.server.broker import Snapshot, broker_of
from agl_cli.server.responses import REDACTED
from agl_cli.store import TaskRecord

SECRET_BEARING_TYPES = ("llm", "proxy_llm")


def task_json(record: TaskRecord) -> dict[str, Any]:
    return {
        **record.task.model_dump(mode="json"),
        "status": record.status.value,
        "deadline": record.deadline,
        "completed_time": record.completed_time,
        "duplicates": record.duplicates,
    }


def resources_json(update: ResourcesUpdate, reveal: bool) -> dict[str, Any]:
    """A bundle for people: API keys hidden unless asked for (workers always get them)."""
    body = update.model_dump(mode="json")
    if not reveal:
        for resource in body["resources"].values():
            if resource["resource_type"] in SECRET_BEARING_TYPES and resource.get("api_key") is not None:
                resource["api_key"] = REDACTED
    return body


def status_json(request: Request, snapshot: Snapshot) -> dict[str, Any]:
    """The daemon at a glance: what it runs with, its counts (as of `snapshot`), its rates."""
    broker = broker_of(request)
    options = request.app.state.options
    counts, space = snapshot.counts, snapshot.space
    body = schemas.Status(
        version=__version__,
        pid=os.getpid(),
        started_time=broker.stats.started,
        uptime=broker.now() - broker.stats.started,
        address=options.address,
        state_dir=options.state_dir,
        store=broker.store_kind,
        task_timeout=broker.task_timeout,
        max_attempts=broker.max_attempts,
        rollout_retention=broker.rollout_retention,
        forget_tasks=broker.forget_tasks,
        max_body_size=options.max_body_bytes,
        tasks={status.value: number for status, number in counts.tasks.items()},
        forgotten=counts.forgotten,
        rollouts=counts.rollouts,
        unsolicited=counts.unsolicited,
        duplicates=counts.duplicates,
        resources=counts.resources,
        last_seq=snapshot.last_seq,
        latest_resources_id=snapshot.latest_resources_id,
        paused=broker.paused,
        database=schemas.DatabaseSpace(
            bytes=space.size,
            free_bytes=space.free,
            log_bytes=space.log,
            max_bytes=space.limit,
            disk_free_bytes=space.disk_free,
        ),
        rates=schemas.Rates(
            claims_per_second=broker.stats.claim_rate.per_second(),
            rollouts_per_second=broker.stats.rollout_rate.per_second(),
            seconds=broker.stats.claim_rate.seconds(),
        ),
    )
    return body.model_dump(mode="json")
