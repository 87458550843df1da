"""Random histories of 0.3.0 client calls, made on agl and on 0.3.0's own server in turn:
after every call the two answers agree (ids and times aside), or both servers refused.

The differential module walks every method through one planned history; these find the
orders nobody planned (a status set by hand, then a new config; a batch listed newest
first). A failure names the seed and the calls that led to it. No call sets a timeout,
so the servers' clocks cannot decide an answer. In the crash histories agl is killed
(`kill -9`) and restarted between calls now and then, and must answer after each restart
as 0.3.0's server, which never stopped, does: whatever it answered is on disk. The suite
runs a few histories; to search wider, set AGL_HISTORIES (say, 200).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.types import (
    LLM,
    AttemptStatus,
    EnqueueRolloutRequest,
    PromptTemplate,
    RolloutConfig,
    RolloutStatus,
)
from daemon import Daemon
from histories import play
from store_pair import Pair, span, start_agl, start_reference

pytestmark = pytest.mark.timeout(180)
STEPS = 300
HISTORIES = int(os.environ.get("AGL_HISTORIES", "5"))
CRASH_HISTORIES = int(os.environ.get("AGL_HISTORIES", "1"))
CRASHES_PER_CALL = 0.05
INPUTS: list[Any] = [1, "x", {"k": [1, 2]}, None, [None]]
MODES = [None, "train", "val", "test"]
WORKERS = ["w-1", "w-2", "w-3", None]
# Every status 0.3.0 defines, one it does not and, for attempts, one only rollouts have.
ROLLOUT_STATUSES = [*get_args(RolloutStatus), "unheard-of"]
ATTEMPT_STATUSES = [*get_args(AttemptStatus), "unheard-of", "requeuing"]
SPAN_IDS = ["00f067aa0ba902b7", "00f067aa0ba902b8", "00f067aa0ba902b9"]


@pytest.fixture
def daemon_and_pair(tmp_path: Path) -> Iterator[tuple[Daemon, Pair]]:
    """A fresh pair for each history, so that a seed replays alone."""
    reference = start_reference()
    for daemon in start_agl(tmp_path / "state"):
        yield daemon, Pair(daemon.url, reference.url)


@pytest.fixture
def pair(daemon_and_pair: tuple[Daemon, Pair]) -> Pair:
    return daemon_and_pair[1]


class History:
    """One random history on a pair: the calls made so far, and what the next can name.

    Ids are passed by the names the pair gives them (`<ro-3>`); each side gets its own id.
    An argument that holds ids inside (a span) is passed as a function of the translation."""

    def __init__(self, pair: Pair, seed: int, crash: Callable[[], str] | None = None) -> None:
        self.pair = pair
        self.random = random.Random(seed)
        self.calls: list[str] = []
        self.crash = crash  # kills agl and starts it again; its new address

    def name(self, kind: str, *strangers: str) -> str:
        """An id of that kind (`ro`, `at`, `rs`) among the last few handed out, so that calls
        meet on the same ones, or one of `strangers`."""
        seen = [name for name in self.pair.names[0].seen.values() if name.startswith(f"<{kind}-")]
        return self.random.choice([*seen[-4:], *strangers])

    def some(self, **options: list[Any]) -> dict[str, Any]:
        """Each option with one of its values, or left out (half the time)."""
        return {
            key: self.random.choice(values) for key, values in options.items() if self.random.random() < 0.5
        }

    def config(self) -> RolloutConfig | None:
        retry_on = self.random.sample(["failed", "timeout", "unresponsive"], self.random.randint(0, 2))
        return self.random.choice(
            [None, RolloutConfig(max_attempts=self.random.randint(1, 3), retry_condition=retry_on)]
        )

    async def call(self, method: str, *args: Any, only_kind: bool = False, **kwargs: Any) -> Any:
        """`method` on both servers, each with its own ids; the answers (or only their
        types) must agree."""
        self.calls.append(f"{method}{args}{kwargs}")

        async def on(client: LightningStoreClient) -> Any:
            def real(value: Any) -> Any:
                if isinstance(value, str) and value.startswith("<"):
                    return self.pair.real(client, value)
                if isinstance(value, list):
                    return [real(item) for item in value]
                return value(real) if callable(value) else value

            answer = await getattr(client, method)(
                *map(real, args), **{k: real(v) for k, v in kwargs.items()}
            )
            return type(answer).__name__ if only_kind else answer

        return await self.pair.same(on)

    async def out_of_queue(self, rollout: str) -> bool:
        """Whether a rollout is out of the queue (or unknown), so that a change by hand cannot
        take it out. 0.3.0 keeps a place in its queue for a rollout taken out by hand until a
        dequeue passes it, and hands it out from there if it is queued again before then;
        agl queues it at the end (docs/store-api.md)."""
        found = await self.call("get_rollout_by_id", rollout)
        return not found or found["status"] not in ("queuing", "requeuing")

    async def step(self) -> None:
        r = self.random
        rollout, attempt = self.name("ro", "ro-000000000000"), self.name("at", "at-00000000", "latest")
        resources = self.name("rs", "default", "unpublished")
        if self.crash is not None and r.random() < CRASHES_PER_CALL:
            self.calls.append("kill -9, then a restart")
            self.pair.urls = (self.crash(), self.pair.urls[1])
            return
        match r.randrange(22):
            case 0:
                await self.call(
                    "enqueue_rollout",
                    r.choice(INPUTS),
                    r.choice(MODES),
                    resources,
                    self.config(),
                    r.choice([None, {"m": 1}]),
                )
            case 1:
                batch = [
                    (r.choice(INPUTS), r.choice(MODES), self.name("rs", "default"))
                    for _ in range(r.randint(0, 3))
                ]
                await self.call(
                    "enqueue_many_rollouts",
                    lambda real: [
                        EnqueueRolloutRequest(input=i, mode=m, resources_id=real(s)) for i, m, s in batch
                    ],
                )
            case 2:
                await self.call("dequeue_rollout", worker_id=r.choice(WORKERS))
            case 3:
                await self.call("dequeue_many_rollouts", limit=r.randint(0, 3), worker_id=r.choice(WORKERS))
            case 4:
                await self.call(
                    "start_rollout",
                    r.choice(INPUTS),
                    r.choice(MODES),
                    resources,
                    self.config(),
                    worker_id=r.choice(WORKERS),
                )
            case 5:
                if await self.out_of_queue(rollout):
                    await self.call("start_attempt", rollout, worker_id=r.choice(WORKERS))
            case 6:
                changes = self.some(
                    status=ROLLOUT_STATUSES, mode=MODES, metadata=[{"z": 2}], config=[self.config() or RolloutConfig()],
                    input=INPUTS, resources_id=[resources],
                )  # fmt: skip
                if "status" in changes and not await self.out_of_queue(rollout):
                    del changes["status"]
                await self.call("update_rollout", rollout, **changes)
            case 7:
                changes = self.some(
                    status=ATTEMPT_STATUSES,
                    worker_id=["w-1", "w-9"],
                    metadata=[{"q": 1}],
                    last_heartbeat_time=[5.0],
                )
                if await self.out_of_queue(rollout):  # any change of its latest attempt sets its status
                    await self.call("update_attempt", rollout, attempt, **changes)
            case 8:
                await self.call(
                    "add_resources",
                    {"p": PromptTemplate(template=f"say {r.randrange(9)}", engine="f-string")},
                )
            case 9:
                await self.call(
                    "update_resources", resources, {"llm": LLM(endpoint="http://x/v1", model="m")}
                )
            case 10:
                await self.call(r.choice(["get_rollout_by_id", "get_latest_attempt"]), rollout)
            case 11:
                page = self.some(sort_by=["sequence_id", "start_time", "status"], sort_order=["asc", "desc"])
                await self.call(
                    "query_attempts",
                    rollout,
                    limit=r.choice([-1, 0, 1, 5]),
                    offset=r.choice([0, 1, 3]),
                    **page,
                )
            case 12:
                # Neither sorted by an id nor searched within one: ids are random on each side.
                query = self.some(
                    status_in=[r.sample(ROLLOUT_STATUSES[:-1], r.randint(0, 3))], rollout_id_contains=["ro-", "zz"],
                    sort_by=["status", "start_time", "end_time", "mode"], sort_order=["asc", "desc"],
                    filter_logic=["and", "or"], limit=[-1, 2, 10], offset=[0, 1],
                )  # fmt: skip
                await self.call("query_rollouts", **query)
            case 13:
                query = self.some(
                    status_in=[r.sample(["idle", "busy", "unknown"], r.randint(0, 2))], sort_by=["status"]
                )
                await self.call("query_workers", **query)
            case 14:
                await self.call(
                    "update_worker", r.choice(WORKERS[:2]), heartbeat_stats=r.choice([None, {"cpu": 1}])
                )
            case 15:
                number, span_id = r.choice([1, 2, 5, 100]), r.choice(SPAN_IDS)
                await self.call(
                    "add_span", lambda real: span(real(rollout), real(attempt), number, span_id, "step")
                )
            case 16:
                numbers = [r.choice([1, 3, 7]) for _ in range(r.randint(0, 3))]
                await self.call(
                    "add_many_spans",
                    lambda real: [
                        span(real(rollout), real(attempt), n, f"00f067aa0ba902c{n}", f"n{n}") for n in numbers
                    ],
                )
            case 17:
                # Whether a number comes, not which: 0.3.0 raises the count for a span it then
                # refuses, where agl's refusal changes nothing (docs/store-api.md).
                await self.call("get_next_span_sequence_id", rollout, attempt, only_kind=True)
            case 18:
                waited = [self.name("ro", "ro-000000000000") for _ in range(r.randint(0, 3))]
                await self.call("wait_for_rollouts", rollout_ids=waited, timeout=0)
            case 19:
                await self.call(
                    "query_resources", **self.some(sort_by=["version", "create_time"], limit=[-1, 3])
                )
            case 20:
                await self.call("get_resources_by_id", resources)
            case _:
                query = self.some(
                    sort_by=["sequence_id", "name", "start_time"],
                    sort_order=["desc"],
                    limit=[0, 1, 2],
                    span_id=SPAN_IDS,
                )
                await self.call("query_spans", rollout, r.choice([None, "latest", attempt]), **query)


@pytest.mark.parametrize("seed", range(HISTORIES))
async def test_random_calls_get_the_same_answers_from_both_servers(pair: Pair, seed: int) -> None:
    await play(History(pair, seed), seed, STEPS)


@pytest.mark.parametrize("seed", range(1000, 1000 + CRASH_HISTORIES))
async def test_answers_stay_the_same_across_crashes_of_agl(
    daemon_and_pair: tuple[Daemon, Pair], seed: int
) -> None:
    daemon, pair = daemon_and_pair

    def crash() -> str:
        daemon.kill()
        return daemon.start().url

    history = History(pair, seed, crash)
    await play(history, seed, STEPS)
    assert daemon.starts > 1, "no crash in the whole history"
