from __future__ import annotations

import compileall
import importlib.util
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from compat_env import ensure_compat_python
from daemon import Daemon
from failing_disk import build_library

import agl_cli
from agl_cli.store import MemoryStore, SQLiteStore, Store, schema

# tests/beside_agentlightning/ imports agentlightning 0.3.0: tests/test_compat.py runs it in
# the environment that has it; here it is not collected at all (rather than skipped).
collect_ignore = [] if importlib.util.find_spec("agentlightning") else ["beside_agentlightning"]


def pytest_configure(config: pytest.Config) -> None:
    """Compile agl's modules once, before any test process starts: the suite starts about
    a thousand daemons and commands that import them from this checkout, and where
    PYTHONDONTWRITEBYTECODE is set, each of them would compile them all again."""
    if not hasattr(config, "workerinput"):  # the controller, not each xdist worker
        compileall.compile_dir(Path(agl_cli.__file__).parent, quiet=1)


@pytest.fixture(scope="session")
def failing_writes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The preload library that makes the database's writes fail on demand (`failing_disk`)."""
    return build_library(tmp_path_factory.mktemp("faults"))


@pytest.fixture(autouse=True)
def _no_user_agl_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGL_URL", "AGL_TOKEN", "AGL_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons with extra `agl serve` arguments; all are killed at the end."""
    started: list[Daemon] = []

    def make(*args: str, state_dir: Path | None = None) -> Daemon:
        daemon = Daemon(state_dir or tmp_path / f"state{len(started)}", *args)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.close()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon on a fresh SQLite state directory."""
    return make_daemon()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests of a module that only read, or send what must be refused
    (each of those checks that nothing changed): a daemon per case would cost more than
    the cases."""
    daemon = Daemon(tmp_path_factory.mktemp("shared") / "state").start()
    yield daemon
    daemon.close()


@pytest.fixture(scope="session")
def compat_python() -> Path:
    """The python of the environment with the real agentlightning 0.3.0 (built once)."""
    return ensure_compat_python()


# --- stores, for the tests that hold both to the same rules -----------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StoreFactory = Callable[..., Store]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[StoreFactory]:
    opened: list[Store] = []

    def make(**options: object) -> Store:
        options = {"task_timeout": 10.0, "clock": clock, **options}
        store: Store
        if request.param == "memory":
            store = MemoryStore(**options)
        else:
            store = SQLiteStore(tmp_path / f"agl{len(opened)}.db", **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


def database_of_schema(path: Path, version: int) -> sqlite3.Connection:
    """A new agl database at `path` as an agl of schema `version` made it, open (in
    autocommit) for the test to fill."""
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        schema.SCHEMA + "".join(schema.MIGRATIONS[step] for step in range(2, version + 1))
        + f"PRAGMA application_id={schema.APPLICATION_ID}; PRAGMA user_version={version};"
    )  # fmt: skip
    return old


def schema_5_file(path: Path, tasks: int) -> list[str]:
    """A database as agl of schema 5 left it: `tasks` completed tasks, one attempt each
    (kept by rollout id, which orders them at random); their ids."""
    ids = [f"rollout-{uuid.uuid4()}" for _ in range(tasks)]
    old = database_of_schema(path, 5)
    old.execute("BEGIN")
    old.executemany(
        "INSERT INTO tasks (id, rollout_id, status, input, metadata, create_time, num_claims, phase)"
        " VALUES (?, ?, 'completed', '1', '{}', 1.0, 1, 'succeeded')",
        enumerate(ids, start=1),
    )
    old.executemany(
        "INSERT INTO attempts (rollout_id, sequence_id, attempt_id, start_time, end_time, status)"
        " VALUES (?, 1, 'at-' || ?, 2.0, 3.0, 'succeeded')",
        ((rollout_id, index) for index, rollout_id in enumerate(ids)),
    )
    old.execute("COMMIT")
    old.close()
    return ids


def vm_steps(store: Store, work: Callable[[], object]) -> int:
    """How much SQLite work `work` made on the store's write connection (the memory store's
    only one): a count every 100 of its virtual machine's instructions (not time, so the
    same on any machine)."""
    count = 0

    def step() -> int:
        nonlocal count
        count += 1
        return 0  # go on

    store._conn.set_progress_handler(step, 100)  # type: ignore[attr-defined]
    try:
        work()
    finally:
        store._conn.set_progress_handler(None, 100)  # type: ignore[attr-defined]
    return count
