"""Serving, once `runner` has checked what it can and listens: the store opened (brought
up to date first if it is older), the app made, and uvicorn run on the fastest loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from agl_cli import __version__, paths
from agl_cli.daemon_config import DaemonConfig
from agl_cli.server import logs
from agl_cli.server.app import ServerOptions, create_app
from agl_cli.server.broker import Broker
from agl_cli.server.protocol import uvicorn_options
from agl_cli.server.runner import StartupError, StoppedError, keep_private, load_or_create_token
from agl_cli.store import MemoryStore, SQLiteStore, StorageError, Store, StoreError, schema
from agl_cli.store.files import LOG_SUFFIXES, beside

SWITCH_INTERVAL = 0.001
YOUNG_OBJECTS = 20_000  # see `_collect_garbage_rarely`
MAX_OPEN_FILES = 1 << 20


def open_store(config: DaemonConfig, state_dir: Path) -> Store:
    options: dict[str, Any] = {
        "task_timeout": config.task_timeout,
        "max_claims": config.max_attempts,
        "rollout_retention": config.rollout_retention,
        "forget_tasks": config.forget_tasks,
        "max_size": config.max_db_size,
    }
    if config.memory:
        return MemoryStore(**options)
    database = state_dir / paths.DATABASE_NAME
    version = schema.version_of(database)
    if version is not None and version < schema.SCHEMA_VERSION:  # `agl serve --detach` waits for this
        costs = [cost for step, cost in schema.MIGRATION_COSTS.items() if version < step]
        logs.announce(
            f"agl: bringing {database} from schema {version} up to {schema.SCHEMA_VERSION}"
            + (f" ({'; '.join(costs)})" if costs else ""),
            config.log_json,
        )
    if database.exists() and not os.access(database, os.W_OK):  # its start writes nothing to tell
        raise StartupError(
            f"{database}: The store could not be written (the file is read-only for this user)."
        )
    try:
        return SQLiteStore(database, **options)
    except StorageError as exc:  # a file agl may not write: read-only, locked, on a failing disk
        raise StartupError(f"{database}: {exc.reason}.") from None
    except StoreError as exc:
        raise StartupError(str(exc)) from None


class _Server(uvicorn.Server):
    """uvicorn, told to answer long polls at once when asked to stop, and to exit 0
    after a graceful stop instead of re-raising the signal that asked for it. A closed
    terminal's SIGHUP stops it as gracefully, unless it was started to ignore that (nohup)."""

    broker: Broker | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            stops.append(signal.SIGHUP)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.broker is not None:
            self.broker.begin_shutdown()

    def request_exit(self) -> None:
        """Stop as on SIGTERM, for `POST /v1/shutdown`."""
        self.should_exit = True
        if self.broker is not None:
            self.broker.begin_shutdown()


def _collect_garbage_rarely() -> None:
    """Keep the modules, the app and the store out of every garbage collection from now
    on, and collect the young objects only once `YOUNG_OBJECTS` more are alive.

    A full collection walks every object the process holds; with the libraries agl runs
    on, that is a pause of 20-50 ms, often enough under load to set the p99 latency.
    Frozen, those objects are never walked again, and a full collection only looks at
    what was made since. Python collects the youngest objects whenever 700 more exist
    than before: a 42 KB rollout parses into about a thousand lists and dicts, so with a
    few dozen in flight there always are, and collections took 11 % of the event loop's
    time (470 a second, each walking every request's body). Nearly all of those objects
    are freed by their reference counts once answered; collections are for cycles.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, older, oldest)


def _open_as_many_files_as_allowed() -> None:
    """Every connection is an open file. Under systemd's default soft limit (1,024) a
    thousand idle connections left no descriptor to accept a worker's, and the accept loop
    logged an error for every try: a daemon may raise its soft limit to the hard one, so it
    does (up to a million)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _hand_the_gil_back_sooner() -> None:
    """The writer thread gives up the GIL at every SQLite statement, and under load the
    event loop then keeps it until Python's switch interval (5 ms) makes it let go: with
    a few statements per write, most of a commit's time was that wait. At 1 ms the small
    claim + report cycle runs 10-15 % faster (bench/side_by_side.py); lower gains nothing."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def _run_on_fastest_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (uvicorn[standard] brings it), as `uvicorn.run`
    would: it answers a request in about half the time of asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:  # pragma: no cover - Python 3.10 has no Runner
        uvloop.install()
        asyncio.run(main)


def _private(config: DaemonConfig, state_dir: Path) -> list[tuple[Path, int, str]]:
    """The files only their owner may read, with their mode: the token, and the run (an
    older agl made its database as any new file, which the umask may leave readable)."""
    private = [(state_dir, 0o700, "state directory"), (state_dir / paths.TOKEN_NAME, 0o600, "token file")]
    if not config.memory:
        database = state_dir / paths.DATABASE_NAME
        private.append((database, 0o600, "database"))
        private += [(beside(database, suffix), 0o600, f"database's {suffix} file") for suffix in LOG_SUFFIXES]
    return private


def _announce(
    config: DaemonConfig, state_dir: Path, address: str, tightened: list[str | None], *, paused: bool
) -> Path:
    """Leave the address for the CLI and say that agl listens (the line scripts wait for);
    returns the address file, which the daemon removes when it stops."""
    address_file = state_dir / paths.ADDRESS_NAME
    try:
        address_file.write_text(address + "\n")
    except OSError as exc:  # a full disk: serve all the same (reads go on, writes get a 507)
        with contextlib.suppress(OSError):
            address_file.unlink(missing_ok=True)
        logs.announce(
            f"agl: cannot write {address_file} ({exc.strerror or exc}); give the CLI --url {address}.",
            config.log_json,
        )
    where = "in memory" if config.memory else str(state_dir / paths.DATABASE_NAME)
    logs.announce(
        f"agl {__version__} listening on {address} (store: {where})",
        config.log_json,
        version=__version__,
        address=address,
        store=where,
    )
    for note in filter(None, tightened):
        logs.announce(f"agl: {note}", config.log_json)
    if paused:  # kept from before a restart: say so, or idle workers would be a riddle
        logs.announce(
            "agl: the queue is paused, as it was left: workers get no tasks until agl resume.",
            config.log_json,
        )
    return address_file


def serve(config: DaemonConfig, state_dir: Path, sock: socket.socket) -> None:
    """Open the store and serve on `sock` (listening already) until told to stop."""
    _open_as_many_files_as_allowed()
    # A token file that cannot be served from refuses the start before a database is made or upgraded.
    token = load_or_create_token(state_dir) if not config.no_auth else None
    # Before the store opens, so that the log SQLite makes beside the database takes its mode.
    tightened = [
        keep_private(path, mode, what) for path, mode, what in _private(config, state_dir) if path.exists()
    ]
    store = open_store(config, state_dir)
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    address = f"http://{host}:{port}"
    app = create_app(
        store,
        ServerOptions(
            token=token,
            max_body_bytes=config.max_body_size,
            max_requests=config.max_requests,
            address=address,
            # As text JSON can carry: a byte of the name that is not UTF-8 shows as U+FFFD.
            state_dir=os.fsencode(state_dir).decode(errors="replace"),
            allowed_hosts=config.allowed_host,
        ),
    )
    server = _Server(
        uvicorn.Config(
            app,
            log_config=logs.log_config(config.log_level, config.log_json),
            log_level=config.log_level,
            access_log=config.log_level == "debug",
            **uvicorn_options(config.request_timeout),
        )
    )
    logs.capture_warnings(config.log_json)
    broker: Broker = app.state.broker
    server.broker = broker
    broker.on_lost(server.request_exit)  # no write can be made: stop, and say why (below)
    app.state.request_shutdown = server.request_exit
    # From the first sign that it listens, a stop signal stops it as gracefully as later:
    # with the default action in place, a SIGTERM sent on that sign ended it abruptly.
    with server.capture_signals():
        address_file = _announce(config, state_dir, address, tightened, paused=broker.paused)
        _collect_garbage_rarely()
        _hand_the_gil_back_sooner()
        try:
            _run_on_fastest_loop(server.serve(sockets=[sock]))
        finally:
            with contextlib.suppress(OSError):  # a file system gone read-only: the next start replaces it
                address_file.unlink(missing_ok=True)
    if broker.lost is not None:
        orphaned = store.orphaned_log if isinstance(store, SQLiteStore) else None
        kept = f" Its write-ahead log, which the next database there must not read, is kept as {orphaned}."
        raise StoppedError(str(broker.lost) + (kept if orphaned else ""))
