"""Group commit: concurrent writes share one transaction and one sync, and none of them is
answered before its commit is on disk."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon import Daemon

from agl_cli import AgentLightningServer
from agl_cli.models import Rollout, TaskStatus
from agl_cli.server.writer import CHECKPOINT_EVERY, SINCE_THE_LAST_GOOD_SYNC, Batched, GroupCommitThreads
from agl_cli.store import MemoryStore, Report, SQLiteStore, StorageError, TaskSpec, UnknownTaskError
from agl_cli.store.database import LOG_OPEN_TRIES
from agl_cli.store_models import EnqueueRequest

WAIT = 10.0  # seconds any single step may take before the test gives up


class GatedStore(SQLiteStore):
    """A SQLite store whose syncs can be held back, to see who waits for them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.syncing = threading.Event()
        self.may_sync = threading.Event()
        self.may_sync.set()
        self.drained = threading.Event()

    def sync(self) -> None:
        self.syncing.set()
        assert self.may_sync.wait(WAIT)
        super().sync()

    def drain_step(self) -> bool:
        more = super().drain_step()
        if not more:
            self.drained.set()
        return more


@pytest.fixture
async def threads(tmp_path: Path) -> AsyncIterator[GroupCommitThreads]:
    threads = GroupCommitThreads(GatedStore(tmp_path / "agl.db"))
    threads.start()
    yield threads
    threads.store.sync = lambda: None  # type: ignore[method-assign]
    await threads.close()


async def held_write(threads: GroupCommitThreads) -> tuple[asyncio.Future[None], threading.Event]:
    """A write that keeps the writer busy until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        assert release.wait(WAIT)

    future = threads.write(hold)
    assert await asyncio.to_thread(started.wait, WAIT), "the writer never took the first write"
    return future, release


def queue(store: Any, value: object) -> Callable[[], list[str]]:
    return lambda: store.queue_tasks([TaskSpec(input=value)])


async def test_writes_that_wait_together_share_one_commit(threads: GroupCommitThreads) -> None:
    first, release = await held_write(threads)
    waiting = [threads.write(queue(threads.store, n)) for n in range(9)]
    release.set()
    await first
    ids = [ids for [ids] in await asyncio.gather(*waiting)]
    assert (
        threads.stats.group_sizes.count,
        threads.stats.group_sizes.total,
        threads.stats.group_sizes.largest,
    ) == (2, 10, 9)
    store = threads.store
    assert [record.task.input for record in store.list_tasks()] == list(range(9))
    assert [record.rollout_id for record in store.list_tasks()] == ids


async def test_a_failing_write_fails_alone_and_the_rest_of_its_group_commits(
    threads: GroupCommitThreads,
) -> None:
    store = threads.store
    first, release = await held_write(threads)
    before = threads.write(queue(store, "before"))
    failing = threads.write(lambda: store.cancel_task("rollout-unknown"))
    after = threads.write(queue(store, "after"))
    release.set()
    await first
    with pytest.raises(UnknownTaskError):
        await failing
    assert [len(await before), len(await after)] == [1, 1]
    assert threads.stats.group_sizes.largest == 3
    assert [record.task.input for record in store.list_tasks()] == ["before", "after"]


async def test_writes_of_a_batched_kind_are_made_together_unless_a_write_of_their_group_fails_then_alone(
    threads: GroupCommitThreads,
) -> None:
    store = threads.store
    made: list[list[str]] = []

    def many(values: list[str]) -> list[str]:
        made.append(values)
        if "bad" in values:
            raise ValueError("bad")
        return store.queue_tasks([TaskSpec(input=value) for value in values])

    kind = Batched(many)
    answered = []
    for failing in False, True:
        first, release = await held_write(threads)
        writes = [threads.write_batched(kind, f"{failing}-{n}") for n in range(3)]
        if failing:
            refused = threads.write(lambda: store.cancel_task("rollout-unknown"))
        release.set()
        await first
        answered += await asyncio.gather(*writes)
    with pytest.raises(UnknownTaskError):
        await refused
    first, release = await held_write(threads)
    writes = [threads.write_batched(kind, value) for value in ("ok-0", "bad", "ok-1")]
    release.set()
    await first
    with pytest.raises(ValueError):
        await writes[1]
    answered += [await writes[0], await writes[2]]
    # together; then, once a write failed and undid their group, each on its own in the retry
    assert made == [
        ["False-0", "False-1", "False-2"], ["True-0"], ["True-1"], ["True-2"],
        ["ok-0", "bad", "ok-1"], ["ok-0"], ["bad"], ["ok-1"],
    ]  # fmt: skip
    tasks = store.list_tasks()
    assert [record.task.input for record in tasks] == [
        "False-0", "False-1", "False-2", "True-0", "True-1", "True-2", "ok-0", "ok-1"
    ]  # fmt: skip
    assert answered == [record.rollout_id for record in tasks]  # each write got its own result


async def test_no_write_is_answered_before_its_commit_is_synced(threads: GroupCommitThreads) -> None:
    store = threads.store
    assert isinstance(store, GatedStore)
    store.may_sync.clear()
    write = threads.write(queue(store, "durable"))
    # Answers reach the loop in the order they were sent, and one sent before the sync
    # began would have been sent before the sync's signal that brought us back here.
    assert await asyncio.to_thread(store.syncing.wait, WAIT)
    assert not write.done()
    store.may_sync.set()
    assert len(await asyncio.wait_for(write, WAIT)) == 1


async def test_a_claim_is_answered_once_committed_while_its_group_waits_for_the_sync(
    threads: GroupCommitThreads,
) -> None:
    store = threads.store
    assert isinstance(store, GatedStore)
    [queued] = await threads.write(queue(store, "to claim"))
    store.syncing.clear()  # set again when the shared group's sync begins
    store.may_sync.clear()
    first, release = await held_write(threads)
    durable = threads.write(queue(store, "durable"))
    claim = threads.write(store.claim)
    release.set()
    claimed = await asyncio.wait_for(claim, WAIT)
    assert claimed is not None and claimed.rollout_id == queued
    assert threads.stats.group_sizes.largest == 2, "the claim and the durable write shared one commit"
    assert await asyncio.to_thread(store.syncing.wait, WAIT)
    assert not durable.done()
    store.may_sync.set()
    assert len(await asyncio.wait_for(durable, WAIT)) == 1
    await first


async def commit_a_batch(threads: GroupCommitThreads, size: int) -> tuple[GatedStore, list[str]]:
    """Stage `size` tasks and commit them through the writer; the store and their ids."""
    store = threads.store
    assert isinstance(store, GatedStore)
    batch_id = await threads.write(store.create_batch)
    staged = await threads.write(
        lambda: store.stage_tasks(batch_id, [TaskSpec(input=n) for n in range(size)])
    )
    store.drained.clear()  # set again once the writer has moved the whole batch
    assert await threads.write(lambda: store.commit_batch(batch_id)) == size
    return store, staged


async def test_the_writer_moves_a_committed_batch_into_place_when_it_has_nothing_else_to_do(
    threads: GroupCommitThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agl_cli.store.batches.DRAIN_CHUNK", 7)
    store, staged = await commit_a_batch(threads, 50)
    assert await asyncio.to_thread(store.drained.wait, WAIT)
    assert store._read("SELECT count(*) FROM staging") == [(0,)]
    assert [record.rollout_id for record in store.list_tasks(limit=100)] == staged


async def test_reads_see_a_batch_whole_while_the_writer_moves_it_into_place(
    threads: GroupCommitThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agl_cli.store.batches.DRAIN_CHUNK", 1)
    store, staged = await commit_a_batch(threads, 500)
    reads = 0
    while not store.drained.is_set() or not reads:
        counts, last = await asyncio.gather(
            threads.read(store.counts), threads.read(lambda: store.get_task(staged[-1]))
        )
        assert counts.tasks[TaskStatus.QUEUED] == 500
        assert last is not None and last.status is TaskStatus.QUEUED
        reads += 1


class RefusedCheckpoints(SQLiteStore):
    """A SQLite store on a disk that refuses every checkpoint."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.tried = threading.Event()

    def checkpoint(self) -> None:
        self.tried.set()
        raise StorageError("The store could not be written (disk I/O error)")


async def test_a_checkpoint_the_disk_refuses_is_one_line_in_the_log_and_writes_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusedCheckpoints(tmp_path / "agl.db")
    threads = GroupCommitThreads(store)
    threads.start()
    for n in range(CHECKPOINT_EVERY):
        await threads.write(queue(store, n))
    assert await asyncio.to_thread(store.tried.wait, WAIT)
    assert len(await threads.write(queue(store, "after"))) == 1
    await threads.close()  # the checkpointer has logged by the time it is joined
    [record] = [r for r in caplog.records if r.name == "agl.writer"]
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
    assert record.getMessage() == (
        "checkpointing the write-ahead log failed: The store could not be written (disk I/O error)"
    )


class OneFailedSync(SQLiteStore):
    """A SQLite store whose next sync, once asked, fails as a dying disk's would; the
    syncs after it succeed, as they do once the kernel has forgotten the error."""

    fail_next = False

    def sync(self) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StorageError("The store could not be synced to disk (Input/output error)", undone=False)
        super().sync()


async def test_after_a_failed_sync_no_write_is_answered_with_success_again_and_it_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = OneFailedSync(tmp_path / "agl.db")
    threads = GroupCommitThreads(store)
    told: list[StorageError | None] = []  # what `lost` said each time `on_lost` was called
    threads.on_lost = lambda: told.append(threads.lost)
    threads.start()
    [kept] = await threads.write(queue(store, "synced"))
    store.fail_next = True
    with pytest.raises(StorageError) as failed:
        await asyncio.wait_for(threads.write(queue(store, "unsynced")), WAIT)
    assert failed.value is threads.lost
    for later in (queue(store, "after"), store.claim):  # the next sync would succeed: too late
        with pytest.raises(StorageError) as refused:
            await asyncio.wait_for(threads.write(later), WAIT)
        assert refused.value is threads.lost
    assert threads.lost is not None and told == [threads.lost]
    assert str(threads.lost) == (
        f"The store could not be synced to disk (Input/output error): {SINCE_THE_LAST_GOOD_SYNC}."
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [str(threads.lost)]
    await threads.close()
    reopened = SQLiteStore(tmp_path / "agl.db")
    assert reopened.get_task(kept) is not None  # what was answered with success is there
    reopened.close()


async def test_the_embedded_server_after_a_failed_sync_refuses_writes_and_is_not_ready(
    tmp_path: Path,
) -> None:
    store = OneFailedSync(tmp_path / "agl.db")
    server = AgentLightningServer(port=0, store=store)
    await server.start()
    try:
        await server.queue_task("synced")
        store.fail_next = True
        with pytest.raises(StorageError) as lost:
            await server.queue_task("not known to be synced")
        async with httpx.AsyncClient(base_url=server.endpoint) as client:
            answers = [await client.get("/ready"), await client.get("/task")]
        assert [(r.status_code, r.json()["detail"]) for r in answers] == [(503, str(lost.value))] * 2
    finally:
        await server.stop()


async def test_writes_and_reads_run_off_the_event_loop(threads: GroupCommitThreads) -> None:
    loop_thread = threading.get_ident()
    writer = await threads.write(threading.get_ident)
    reader = await threads.read(threading.get_ident)
    assert loop_thread not in (writer, reader)


@pytest.fixture
async def memory_threads() -> AsyncIterator[GroupCommitThreads]:
    threads = GroupCommitThreads(MemoryStore())
    threads.start()
    yield threads
    await threads.close()


async def test_the_memory_store_is_called_by_the_writer_alone_reads_included() -> None:
    before = set(threading.enumerate())
    threads = GroupCommitThreads(MemoryStore())
    threads.start()
    try:
        started = {thread.name for thread in set(threading.enumerate()) - before}
        names = await asyncio.gather(
            threads.write(lambda: threading.current_thread().name),
            threads.read(lambda: threading.current_thread().name),
        )
    finally:
        await threads.close()
    # the writer and nothing else of agl's: no syncer, no checkpointer
    assert {name for name in started if name.startswith("agl-")} == {"agl-writer"}
    assert names == ["agl-writer", "agl-writer"]


async def test_a_memory_store_read_waits_for_the_group_being_written_and_sees_it_whole(
    memory_threads: GroupCommitThreads,
) -> None:
    threads, store = memory_threads, memory_threads.store
    started, release = threading.Event(), threading.Event()

    def queue_two_then_hold() -> None:
        store.queue_tasks([TaskSpec(input="first")])
        started.set()
        assert release.wait(WAIT)
        store.queue_tasks([TaskSpec(input="second")])

    def read_tasks() -> tuple[str, list[Any]]:
        return threading.current_thread().name, [record.task.input for record in store.list_tasks()]

    group = threads.write(queue_two_then_hold)
    assert await asyncio.to_thread(started.wait, WAIT)
    read = asyncio.ensure_future(threads.read(read_tasks))
    release.set()
    await group
    # made by the thread that was busy with the group, so not before the group was whole
    assert await asyncio.wait_for(read, WAIT) == ("agl-writer", ["first", "second"])


async def test_a_memory_store_read_that_fails_fails_alone_and_its_group_commits_once(
    memory_threads: GroupCommitThreads,
) -> None:
    threads, store = memory_threads, memory_threads.store

    def failing_read() -> None:
        raise LookupError("nothing there")

    first, release = await held_write(threads)
    write = threads.write(queue(store, "kept"))
    failing = asyncio.ensure_future(threads.read(failing_read))
    release.set()
    await first
    with pytest.raises(LookupError):
        await failing
    assert len(await write) == 1
    sizes = threads.stats.group_sizes
    assert (sizes.count, sizes.total) == (2, 2), "the read is in no group's count, and nothing ran twice"
    assert [record.task.input for record in store.list_tasks()] == ["kept"]


async def test_a_memory_store_write_is_answered_at_its_commit_with_nothing_to_sync(
    memory_threads: GroupCommitThreads,
) -> None:
    threads = memory_threads
    assert len(await asyncio.wait_for(threads.write(queue(threads.store, "durable")), WAIT)) == 1
    assert threads.stats.commit_seconds.count == 1 and threads.stats.sync_seconds.count == 0


# --- against the daemon ---------------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def test_every_rollout_answered_under_concurrent_load_survives_kill_9(
    make_daemon: Callable[..., Daemon], tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    daemon = make_daemon(state_dir=tmp_path / "state")
    ids = daemon.queue(*range(4000))
    acked: list[str] = []
    enough = threading.Event()

    def worker() -> None:
        with httpx.Client(base_url=daemon.url, timeout=10) as client:
            while True:
                try:
                    task = client.get("/task").json()["task"]
                    if task is None:
                        return
                    body = {"rollout_id": task["rollout_id"], "final_reward": 1.0}
                    if client.post("/rollout", json=body).status_code == 200:
                        acked.append(task["rollout_id"])
                except httpx.TransportError:
                    return  # the daemon is gone
                if len(acked) >= 300:
                    enough.set()

    workers = [pool.submit(worker) for _ in range(16)]
    assert enough.wait(60), "the workers never got going"
    daemon.kill()
    for future in workers:
        future.result(timeout=30)
    daemon.start()

    stored = {rollout["rollout_id"] for rollout in daemon.rollouts()}
    assert set(acked) <= stored
    assert stored <= set(ids)


PAGE = 4096  # SQLite's page: every commit adds at least one to the write-ahead log


def test_the_write_ahead_log_starts_over_as_workers_report_while_a_watcher_follows(
    daemon: Daemon, pool: ThreadPoolExecutor
) -> None:
    """The log is copied into the database and begun again as a run goes on, so it stays
    small however long the run is, also while a stream of the rollouts is open."""
    log = daemon.state_dir / "agl.db-wal"
    following = threading.Event()

    def watch() -> int:
        seen = 0
        headers = {"Authorization": f"Bearer {daemon.token}"}
        with httpx.stream("GET", daemon.url + "/v1/rollouts/stream", headers=headers, timeout=60) as stream:
            following.set()
            for line in stream.iter_lines():
                seen += line.startswith("id:")
                if seen == 3_000:
                    return seen
        return seen

    watched = pool.submit(watch)
    assert following.wait(WAIT)
    largest = 0
    with httpx.Client(base_url=daemon.url, timeout=WAIT) as worker:
        for _ in range(6):
            daemon.queue(*range(500))
            for _task in range(500):
                task = worker.get("/task").json()["task"]
                report = {"rollout_id": task["rollout_id"], "metadata": {"notes": "x" * 2_000}}
                assert worker.post("/rollout", json=report).status_code == 200
            largest = max(largest, log.stat().st_size)
    assert watched.result(timeout=60) == 3_000
    written = int(daemon.metric("agl_commit_seconds_count")) * PAGE
    assert written > 16 * 1024 * 1024, "too short a run to tell"
    assert largest < written / 4, (largest, written)


async def answered_only_once_synced(
    threads: GroupCommitThreads, write: Callable[[], asyncio.Future[Any]]
) -> Any:
    """Run `write` while the sync is held back: it must not be answered until it is let go."""
    store = threads.store
    assert isinstance(store, GatedStore)
    store.syncing.clear()
    store.may_sync.clear()
    answer = asyncio.ensure_future(write())
    assert await asyncio.to_thread(store.syncing.wait, WAIT), "the write was never synced"
    assert not answer.done(), "answered before its commit was on disk"
    store.may_sync.set()
    return await asyncio.wait_for(answer, WAIT)


async def test_a_workers_report_is_answered_only_once_its_commit_is_synced(
    threads: GroupCommitThreads,
) -> None:
    store = threads.store
    [rollout_id] = await threads.write(queue(store, "x"))
    assert (await threads.write(store.claim)).rollout_id == rollout_id
    reports = Batched(store.record_reports)  # as the broker makes a group's reports
    report = Report.of(Rollout(rollout_id=rollout_id, final_reward=1.0))
    await answered_only_once_synced(threads, lambda: threads.write_batched(reports, report))


async def test_a_published_bundle_is_answered_only_once_its_commit_is_synced(
    threads: GroupCommitThreads,
) -> None:
    store = threads.store
    bundle = {"prompt": {"resource_type": "prompt_template", "template": "{x}", "engine": "f-string"}}
    await answered_only_once_synced(threads, lambda: threads.write(lambda: store.publish_resources(bundle)))


async def test_a_store_api_enqueue_is_answered_only_once_its_commit_is_synced(
    threads: GroupCommitThreads,
) -> None:
    store = threads.store
    request = EnqueueRequest(input={"x": 1})
    await answered_only_once_synced(threads, lambda: threads.write(lambda: store.enqueue_rollouts([request])))


@pytest.mark.parametrize("free_after", [3, None], ids=["freed", "never-freed"])
def test_a_sync_with_no_descriptor_free_waits_for_one_and_never_passes_for_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_after: int | None
) -> None:
    """Connections may take every descriptor: opening the log to sync it waits for one
    to come free, and, if none does, fails as a sync does (it never counts as synced)."""
    store = SQLiteStore(tmp_path / "agl.db")
    opening, refused = os.open, []

    def crowded(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("-wal") and (free_after is None or len(refused) < free_after):
            refused.append(path)
            raise OSError(errno.EMFILE, "Too many open files")
        return opening(path, flags, *args)

    monkeypatch.setattr(os, "open", crowded)
    monkeypatch.setattr("agl_cli.store.database.LOG_OPEN_PAUSE", 0.001)
    if free_after is None:
        with pytest.raises(OSError, match="Too many open files"):
            store.queue_tasks([TaskSpec(input="x")])
        assert len(refused) == LOG_OPEN_TRIES
    else:
        store.queue_tasks([TaskSpec(input="x")])
        assert len(refused) == free_after
    store.close()
