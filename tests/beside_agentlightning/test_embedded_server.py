"""`agl_cli.AgentLightningServer` used as 0.3.0 scripts use the legacy server, with the real
0.3.0 client on the other side."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from agentlightning import LLM, PromptTemplate, ProxyLLM
from agentlightning.client import AgentLightningClient
from agentlightning.types import RolloutLegacy, Triplet
from pydantic import BaseModel

from agl_cli import AgentLightningServer
from agl_cli.store import MemoryStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")


@pytest.fixture
async def server() -> AsyncIterator[AgentLightningServer]:
    server = AgentLightningServer(port=0, task_timeout_seconds=0.5)
    await server.start()
    yield server
    await server.stop()


def client_for(server: AgentLightningServer) -> AgentLightningClient:
    return AgentLightningClient(endpoint=server.endpoint, poll_interval=0.05, timeout=5)


def rollout_for(rollout_id: str, reward: float) -> RolloutLegacy:
    return RolloutLegacy(
        rollout_id=rollout_id,
        final_reward=reward,
        triplets=[Triplet(prompt={"q": 1}, response=f"answer {reward}", reward=reward)],
        metadata={"worker": "w1"},
    )


async def test_an_async_lifecycle_runs_as_with_the_legacy_server(server: AgentLightningServer) -> None:
    client = client_for(server)
    resources_id = await server.update_resources(
        {"prompt": PromptTemplate(template="t {x}", engine="f-string")}
    )
    rollout_id = await server.queue_task({"x": 1}, mode="train", resources_id=resources_id, metadata={"m": 1})
    task = await client.poll_next_task_async()
    assert task is not None
    assert (task.rollout_id, task.input, task.mode, task.resources_id, task.metadata) == (
        rollout_id, {"x": 1}, "train", resources_id, {"m": 1},
    )  # fmt: skip
    assert task.num_claims == 1
    assert await server.get_completed_rollout(rollout_id) is None
    await client.post_rollout_async(rollout_for(rollout_id, 0.5))
    rollout = await server.poll_completed_rollout(rollout_id, timeout=5)
    assert rollout is not None
    assert rollout.final_reward == 0.5
    assert rollout.triplets is not None and rollout.triplets[0].response == "answer 0.5"
    assert rollout.metadata == {"worker": "w1"}


async def test_a_sync_client_in_a_thread_works_against_the_embedded_server(
    server: AgentLightningServer,
) -> None:
    client = client_for(server)
    ids = [await server.queue_task(k) for k in range(3)]
    for _ in ids:
        task = await asyncio.to_thread(client.poll_next_task)
        assert task is not None
        await asyncio.to_thread(client.post_rollout, rollout_for(task.rollout_id, float(task.input)))
    rollouts = await server.retrieve_completed_rollouts()
    assert [(r.rollout_id, r.final_reward) for r in rollouts] == [(i, float(k)) for k, i in enumerate(ids)]


async def test_a_nan_reward_from_a_worker_comes_back_as_no_reward(server: AgentLightningServer) -> None:
    """The 0.3.0 client writes a NaN reward as `NaN`, which is not JSON; refused, the report
    would be lost (the client drops it with a debug line). It is kept, as null."""
    rollout_id = await server.queue_task("nan")
    await client_for(server).post_rollout_async(rollout_for(rollout_id, math.nan))
    rollout = await server.poll_completed_rollout(rollout_id, timeout=5)
    assert rollout is not None and rollout.final_reward is None
    assert rollout.triplets is not None and rollout.triplets[0].reward is None


async def test_agentlightning_resource_objects_come_back_identical(server: AgentLightningServer) -> None:
    bundle = {
        "main_llm": LLM(
            endpoint="http://llm/v1", model="qwen", api_key="k", sampling_parameters={"temperature": 0.7}
        ),
        "proxy": ProxyLLM(endpoint="http://proxy/v1", model="qwen"),
        "prompt": PromptTemplate(template="Hello {name}", engine="f-string"),
    }
    resources_id = await server.update_resources(bundle)
    client = client_for(server)
    latest = await client.get_latest_resources_async()
    by_id = await asyncio.to_thread(client.get_resources_by_id, resources_id)
    for update in (latest, by_id):
        assert update is not None and update.resources_id == resources_id
        assert update.resources == bundle
        assert type(update.resources["proxy"]) is ProxyLLM


async def test_a_task_not_reported_in_time_is_handed_out_again(server: AgentLightningServer) -> None:
    client = client_for(server)
    rollout_id = await server.queue_task("slow")
    first = await client.poll_next_task_async()
    second = await client.poll_next_task_async()  # polls until the claim times out
    assert first is not None and second is not None
    assert second.rollout_id == rollout_id and second.num_claims == 2
    assert second.last_claim_time is not None and first.last_claim_time is not None
    assert second.last_claim_time > first.last_claim_time


async def test_the_404s_read_as_the_legacy_server_wrote_them(server: AgentLightningServer) -> None:
    async with httpx.AsyncClient(base_url=server.endpoint) as http:
        latest = await http.get("/resources/latest")
        unknown = await http.get("/resources/res-x")
    assert (latest.status_code, latest.json()) == (
        404,
        {"detail": "No resources have been set on the server."},
    )
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Resource ID 'res-x' not found."})
    assert await client_for(server).get_latest_resources_async() is None


async def test_a_rollout_is_consumed_once(server: AgentLightningServer) -> None:
    client = client_for(server)
    ids = [await server.queue_task(k) for k in range(3)]
    for rollout_id in ids:
        await client.post_rollout_async(rollout_for(rollout_id, 1.0))
    assert (await server.get_completed_rollout(ids[0])) is not None
    assert (await server.get_completed_rollout(ids[0])) is None
    assert [r.rollout_id for r in await server.retrieve_completed_rollouts()] == ids[1:]
    assert await server.retrieve_completed_rollouts() == []
    assert await server.poll_completed_rollout(ids[1], timeout=0.2) is None


async def test_a_poll_with_a_timeout_of_0_waits_for_the_rollout_as_0_3_0s_does(
    server: AgentLightningServer,
) -> None:
    """0.3.0 takes a timeout of 0 for none (a program may give 0 for "no limit")."""
    [rollout_id] = [await server.queue_task("q")]
    polling = asyncio.ensure_future(server.poll_completed_rollout(rollout_id, timeout=0))
    with pytest.raises(asyncio.TimeoutError):  # still waiting: it gave up at once, with None
        await asyncio.wait_for(asyncio.shield(polling), 0.5)
    await client_for(server).post_rollout_async(rollout_for(rollout_id, 1.0))
    rollout = await asyncio.wait_for(polling, 30)
    assert rollout is not None and rollout.rollout_id == rollout_id


async def test_samples_reach_the_worker_as_pydantic_writes_them_as_with_the_legacy_server(
    server: AgentLightningServer,
) -> None:
    class Question(BaseModel):
        text: str
        answer: int

    samples = [
        Question(text="1 + 1", answer=2),
        {3},
        b"raw",
        Decimal("1.50"),
        Path("data/x.json"),
        {0: "zero"},
        {"seed": 2**64, "beyond": 10**400},  # a TypeError of the store's JSON writer, it was
    ]
    ids = [await server.queue_task(sample, metadata={"tags": {"a"}}) for sample in samples]
    client = client_for(server)
    tasks = [await client.poll_next_task_async() for _ in samples]
    assert [(t.rollout_id, t.input, t.metadata) for t in tasks if t] == [
        (rollout_id, written, {"tags": ["a"]})
        for rollout_id, written in zip(
            ids,
            # an integer beyond 64 bits as agl reads one everywhere: the nearest float (none past its range)
            [
                {"text": "1 + 1", "answer": 2},
                [3],
                "raw",
                "1.50",
                "data/x.json",
                {"0": "zero"},
                {"seed": 2.0**64, "beyond": None},
            ],
            strict=True,
        )
    ]


async def test_a_server_started_again_after_stop_serves_again() -> None:
    """Stopping closes the store: one made in memory is made anew (empty, as a new 0.3.0
    server), a database is opened again, and a store given by the caller is refused."""
    in_memory = AgentLightningServer(port=0)
    await in_memory.start()
    await in_memory.queue_task("before")
    await in_memory.stop()
    await in_memory.start()
    again = await in_memory.queue_task("after")
    task = await client_for(in_memory).poll_next_task_async()
    await in_memory.stop()
    assert task is not None and (task.rollout_id, task.input) == (again, "after")


async def test_a_database_server_started_again_after_stop_has_what_it_had(tmp_path: Path) -> None:
    on_disk = AgentLightningServer(port=0, store=tmp_path / "run.db")
    await on_disk.start()
    before = await on_disk.queue_task("before")
    await on_disk.stop()
    await on_disk.start()
    task = await client_for(on_disk).poll_next_task_async()
    await on_disk.stop()
    assert task is not None and task.rollout_id == before


async def test_a_store_given_to_a_stopped_server_is_not_served_closed() -> None:
    given = AgentLightningServer(port=0, store=MemoryStore())
    await given.start()
    await given.stop()
    with pytest.raises(RuntimeError, match="The store given to this server was closed when it stopped"):
        await given.start()


async def test_the_body_limit_is_set_by_a_keyword() -> None:
    server = AgentLightningServer(port=0, max_body_size=4096)
    await server.start()
    rollout_id = await server.queue_task("big")
    async with httpx.AsyncClient(base_url=server.endpoint) as http:
        refused = await http.post(
            "/rollout", json={"rollout_id": rollout_id, "metadata": {"text": "x" * 8192}}
        )
        taken = await http.post("/rollout", json={"rollout_id": rollout_id, "metadata": {"text": "x" * 2048}})
    await server.stop()
    assert (refused.status_code, taken.status_code) == (413, 200)


async def test_a_late_second_result_is_not_returned_twice(server: AgentLightningServer) -> None:
    client = client_for(server)
    rollout_id = await server.queue_task("contested")
    slow = await client.poll_next_task_async()
    fast = await client.poll_next_task_async()
    assert slow is not None and fast is not None and fast.num_claims == 2
    await client.post_rollout_async(rollout_for(rollout_id, 2.0))
    first = await server.get_completed_rollout(rollout_id)
    await client.post_rollout_async(rollout_for(rollout_id, 1.0))
    assert first is not None and first.final_reward == 2.0
    assert await server.retrieve_completed_rollouts() == []


async def test_many_concurrent_workers_lose_nothing_and_duplicate_nothing() -> None:
    server = AgentLightningServer(port=0, task_timeout_seconds=60)
    await server.start()
    try:
        ids = {await server.queue_task({"k": k}) for k in range(300)}
        seen: list[str] = []

        async def worker() -> None:
            client = client_for(server)
            while True:
                async with httpx.AsyncClient(base_url=server.endpoint) as http:
                    body = (await http.get("/task")).json()
                if not body["is_available"]:
                    return
                seen.append(body["task"]["rollout_id"])
                await client.post_rollout_async(rollout_for(body["task"]["rollout_id"], 1.0))

        await asyncio.gather(*(worker() for _ in range(24)))
        rollouts = await server.retrieve_completed_rollouts()
        assert len(seen) == len(set(seen)) == 300
        assert {r.rollout_id for r in rollouts} == ids and len(rollouts) == 300
    finally:
        await server.stop()


def test_the_migration_example_runs_with_its_example_workers_real_fit_v0_ones(tmp_path: Path) -> None:
    example = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "embedded_server.py"), "--port", "0", "--tasks", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert example.stdout is not None
        match = re.search(r"serving at (\S+)", example.stdout.readline())
        assert match, "the example did not print its endpoint"
        worker = subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "worker.py"),
                match.group(1),
                "--tasks-per-worker",
                "4",
                "--workers",
                "2",
                "--poll-interval",
                "0.1",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,  # agentlightning's tracer writes files to the cwd
            check=False,
        )
        assert worker.returncode == 0, worker.stderr[-3000:]
        output, _ = example.communicate(timeout=60)
    finally:
        example.kill()
    assert example.returncode == 0, output
    assert "8 rollouts, mean reward 0.350" in output


async def test_run_forever_ends_when_the_management_api_asks_it_to_stop() -> None:
    server = AgentLightningServer(port=0, token="secret")
    await server.start()
    serving = asyncio.create_task(server.run_forever())
    async with httpx.AsyncClient(base_url=server.endpoint) as http:
        refused = await http.post("/v1/shutdown")
        accepted = await http.post("/v1/shutdown", headers={"Authorization": "Bearer secret"})
    assert (refused.status_code, accepted.status_code) == (401, 202)
    await asyncio.wait_for(serving, 10)


def test_a_server_on_its_own_thread_is_driven_as_the_verl_v0_trainer_drives_it() -> None:
    """0.3.0's VERL trainer ("v0" mode): `asyncio.run(server.run_forever())` on a thread,
    `startup_event` to know it serves, coroutines handed to `server.loop` from outside."""
    server = AgentLightningServer(port=0, task_timeout_seconds=30)
    assert server.loop is None and not server.startup_event.is_set()
    thread = threading.Thread(target=lambda: asyncio.run(server.run_forever()), daemon=True)
    thread.start()
    assert server.startup_event.wait(timeout=20)

    def on_server_loop(coroutine: Coroutine[Any, Any, T]) -> T:
        assert server.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, server.loop).result(timeout=10)

    resources_id = on_server_loop(server.update_resources({"llm": LLM(endpoint="http://x", model="m")}))
    ids = [
        on_server_loop(server.queue_task({"k": k}, mode="train", resources_id=resources_id)) for k in range(3)
    ]
    client = client_for(server)
    for _ in ids:
        task = client.poll_next_task()
        assert task is not None and task.resources_id == resources_id
        client.post_rollout(rollout_for(task.rollout_id, float(task.input["k"])))
    rollouts = on_server_loop(server.retrieve_completed_rollouts())
    assert sorted((r.rollout_id, r.final_reward) for r in rollouts) == sorted(
        zip(ids, [0.0, 1.0, 2.0], strict=True)
    )

    on_server_loop(server.stop())
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert server.loop is None and not server.startup_event.is_set()


@pytest.mark.parametrize(
    "bundle",
    [{"llm": {"resource_type": "bogus"}}, {"llm": {"resource_type": "llm", "model": "m"}}],
    ids=["unknown-type", "no-endpoint"],
)
async def test_a_bundle_workers_could_not_read_is_a_value_error_as_from_the_legacy_server(
    server: AgentLightningServer, bundle: dict[str, Any]
) -> None:
    from agentlightning.server import AgentLightningServer as Reference
    from daemon import free_port

    reference = Reference(host="127.0.0.1", port=free_port())
    await reference.start()
    try:
        with pytest.raises(ValueError):
            await reference.update_resources(bundle)
    finally:
        await reference.stop()
    with pytest.raises(ValueError, match="'llm"):
        await server.update_resources(bundle)
    async with httpx.AsyncClient(base_url=server.endpoint) as http:
        assert (await http.get("/resources/latest")).status_code == 404  # nothing was published
