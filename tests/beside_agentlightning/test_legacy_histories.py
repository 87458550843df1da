"""Random histories of the legacy protocol, made on agl's `AgentLightningServer` (over a
SQLite file) and on 0.3.0's own, in turn: the script's calls (queueing, publishing,
taking results) and the unmodified 0.3.0 client's (claims, reports, resources) must get
the same answers, ids and times aside, or both fail.

The planned tests in test_embedded_server.py walk each call once; these find the orders
nobody planned. In the restart histories agl's server is stopped and a new one started
on the same file between calls now and then, as a training script does when it is run
again: it must go on answering as 0.3.0's server, which never stopped, does. No task
times out (the timeout is an hour), so the servers' clocks cannot decide an answer, and
no task is reported twice: 0.3.0 keeps the last report, agl the first (README). To
search wider, set AGL_HISTORIES (say, 100).
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentlightning import PromptTemplate
from agentlightning.client import AgentLightningClient
from agentlightning.server import AgentLightningServer as Reference
from agentlightning.types import RolloutLegacy, Triplet
from daemon import free_port
from histories import Names, play
from pydantic import BaseModel

from agl_cli import AgentLightningServer

pytestmark = pytest.mark.timeout(180)
STEPS = 200
HISTORIES = int(os.environ.get("AGL_HISTORIES", "4"))
RESTART_HISTORIES = int(os.environ.get("AGL_HISTORIES", "2"))
RESTARTS_PER_CALL = 0.05
JSON_TYPE = {"Content-Type": "application/json"}
HOUR = 3600.0
ID = re.compile(r"\b(rollout|res)-[0-9a-f-]{36}\b")
SAMPLES: list[Any] = [1, "x", {"q": [1, None]}, None]


class Side:
    """One server, the 0.3.0 client on it, and the names its generated ids were given."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.client = AgentLightningClient(endpoint=server.endpoint, poll_interval=0.01, timeout=5)
        self.names = Names()

    def normalized(self, value: Any, key: str = "") -> Any:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(value, dict):
            return {k: self.normalized(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.normalized(v) for v in value]
        if isinstance(value, str):
            return ID.sub(lambda match: self.names.of(match.group()), value)
        if key.endswith("_time") and isinstance(value, (int, float)):
            return "<t>"
        return value


class History:
    """One random history on agl's server and 0.3.0's; `restart` replaces agl's."""

    def __init__(
        self, ours: Side, theirs: Side, seed: int, restart: Callable[[], Awaitable[Side]] | None = None
    ) -> None:
        self.sides = [ours, theirs]
        self.random = random.Random(seed)
        self.restart = restart
        self.calls: list[str] = []
        self.queued = 0  # tasks waiting: a claim is made only when one is (else it would poll forever)
        self.claimed: list[str] = []  # names of tasks handed out, reported or not
        self.reported: set[str] = set()  # names of tasks reported, and ids never issued
        self.published: list[str] = []  # names of bundles

    async def same(self, what: str, call: Callable[[Side], Awaitable[Any]]) -> Any:
        """`call` on both sides; the answers must agree (the first side's is returned)."""
        self.calls.append(what)
        answers = []
        for side in self.sides:
            try:
                answers.append(side.normalized(await call(side)))
            except Exception as exc:  # a failure of any kind: compared below
                answers.append(("failed", type(exc).__name__))
        ours, theirs = answers
        assert ours == theirs, f"agl: {ours}\n0.3.0: {theirs}"
        return ours

    async def step(self) -> None:
        r = self.random
        if self.restart is not None and r.random() < RESTARTS_PER_CALL:
            self.calls.append("a restart of agl's server on its file")
            self.sides[0] = await self.restart()
            return
        some_task = r.choice([*self.claimed[-4:], "rollout-00000000-0000-4000-8000-000000000000"])
        some_bundle = r.choice([*self.published[-3:], "res-00000000-0000-4000-8000-000000000000"])
        match r.randrange(8):
            case 0:
                sample, mode, bundle = r.choice(SAMPLES), r.choice([None, "train", "val"]), r.random() < 0.3
                metadata = r.choice([None, {}, {"m": 1}])
                queued = await self.same(
                    f"queue_task({sample!r}, {mode!r}, {bundle and some_bundle}, {metadata!r})",
                    lambda side: side.server.queue_task(
                        sample,
                        mode=mode,
                        resources_id=side.names.real(some_bundle) if bundle else None,
                        metadata=metadata,
                    ),
                )
                self.queued += isinstance(queued, str)  # not ("failed", ...)
            case 1:
                template = f"say {r.randrange(9)}"
                self.published.append(
                    await self.same(
                        f"update_resources({template!r})",
                        lambda side: side.server.update_resources(
                            {"prompt": PromptTemplate(template=template, engine="f-string")}
                        ),
                    )
                )
            case 2 if self.queued:
                task = await self.same("poll_next_task", lambda side: side.client.poll_next_task_async())
                self.queued -= 1
                self.claimed.append(task["rollout_id"])  # one is queued: both must hand it out
            case 3:
                unreported = [name for name in self.claimed if name not in self.reported]
                never_issued = f"rollout-{uuid.UUID(int=r.getrandbits(128), version=4)}"
                task = r.choice([*unreported[-3:], never_issued])
                self.reported.add(task)
                reward = r.choice([None, 0.0, 0.5, 1.0])
                await self.same(
                    f"post_rollout({task}, {reward})",
                    lambda side: side.client.post_rollout_async(
                        RolloutLegacy(
                            rollout_id=side.names.real(task),
                            final_reward=reward,
                            triplets=[Triplet(prompt={"p": 1}, response="r", reward=reward)],
                            metadata={"w": 1},
                        )
                    ),
                )
            case 4:
                await self.same(
                    f"get_completed_rollout({some_task})",
                    lambda side: side.server.get_completed_rollout(side.names.real(some_task)),
                )
            case 5:
                await self.same(
                    "retrieve_completed_rollouts", lambda side: side.server.retrieve_completed_rollouts()
                )
            case 6:
                await self.same("get_latest_resources", lambda side: side.client.get_latest_resources_async())
            case _:
                await self.same(
                    f"get_resources_by_id({some_bundle})",
                    lambda side: side.client.get_resources_by_id_async(side.names.real(some_bundle)),
                )


@pytest.fixture
async def reference() -> AsyncIterator[Side]:
    server = Reference(host="127.0.0.1", port=free_port(), task_timeout_seconds=HOUR)
    await server.start()
    yield Side(server)
    await server.stop()


async def started(path: Path) -> Side:
    server = AgentLightningServer(port=0, task_timeout_seconds=HOUR, store=path)
    await server.start()
    return Side(server)


@pytest.mark.parametrize("seed", range(HISTORIES))
async def test_random_legacy_calls_get_the_same_answers_from_both_servers(
    reference: Side, tmp_path: Path, seed: int
) -> None:
    ours = await started(tmp_path / "agl.db")
    try:
        await play(History(ours, reference, seed), seed, STEPS)
    finally:
        await ours.server.stop()


@pytest.mark.parametrize("seed", range(1000, 1000 + RESTART_HISTORIES))
async def test_legacy_answers_stay_the_same_across_restarts(
    reference: Side, tmp_path: Path, seed: int
) -> None:
    path = tmp_path / "agl.db"
    restarts = 0

    async def restart() -> Side:
        nonlocal restarts
        restarts += 1
        old = history.sides[0]
        await old.server.stop()
        new = await started(path)
        new.names = old.names  # the same ids, by the same names
        return new

    history = History(await started(path), reference, seed, restart)
    try:
        await play(history, seed, STEPS)
    finally:
        await history.sides[0].server.stop()
    assert restarts, "no restart in the whole history"


BAD_REPORTS = {
    "a JSON array": b"[1, 2]",
    "a mode no task has": b'{"rollout_id": "r", "task": {"rollout_id": "r", "input": 1, "mode": "sideways"}}',
    "a reward that is no number": b'{"rollout_id": "r", "final_reward": "high"}',
    "no rollout id": b'{"final_reward": 1.0}',
}


@pytest.mark.parametrize("body", BAD_REPORTS.values(), ids=BAD_REPORTS.keys())
async def test_a_bad_report_is_the_same_422_word_for_word(
    reference: Side, tmp_path: Path, body: bytes
) -> None:
    """Both servers run in this test's event loop: asked without blocking it."""
    ours = await started(tmp_path / "agl.db")
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            answers = [
                await http.post(f"{side.server.endpoint}/rollout", content=body, headers=JSON_TYPE)
                for side in (ours, reference)
            ]
    finally:
        await ours.server.stop()
    assert [(answer.status_code, answer.json()) for answer in answers] == [(422, answers[1].json())] * 2
