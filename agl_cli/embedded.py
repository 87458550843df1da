"""`AgentLightningServer`: agl embedded in a training script's own event loop.

A drop-in for `agentlightning.server.AgentLightningServer` 0.3.0: same constructor, same
`endpoint`, same async methods with the same meaning, so a script switches by changing
its import. Underneath it is the daemon's own app and store, not a second server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from pydantic_core import to_jsonable_python

from agl_cli.daemon_config import DEFAULTS
from agl_cli.models import Mode, Rollout
from agl_cli.net import is_loopback
from agl_cli.server.app import ServerOptions, create_app
from agl_cli.server.broker import Broker
from agl_cli.server.protocol import uvicorn_options
from agl_cli.server.runner import bind
from agl_cli.store import MemoryStore, SQLiteStore, Store, TaskSpec

log = logging.getLogger("agl.embedded")

STARTUP_TIMEOUT = 30.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves the host program's signal handlers alone: Ctrl-C stays the script's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _jsonable(value: Any) -> Any:
    """`value` as pydantic writes it, with an integer beyond 64 bits, which the store's JSON
    writer does not take, as the nearest float (none past a float's range): as agl reads
    one wherever it reads JSON."""
    jsonable = to_jsonable_python(value)
    try:
        orjson.dumps(jsonable)
    except orjson.JSONEncodeError:
        return _with_floats_for_long_integers(jsonable)
    return jsonable


def _with_floats_for_long_integers(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _with_floats_for_long_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_floats_for_long_integers(item) for item in value]
    if type(value) is int and not -(2**63) <= value < 2**64:
        try:
            return float(value)
        except OverflowError:
            return None
    return value


class AgentLightningServer:
    """The legacy server's API over agl's broker and store.

    `store` chooses where state lives: `None` keeps it in memory (as 0.3.0 does), a path
    opens (or creates) a durable SQLite database there, and a `Store` is used as given
    (with its own settings: the keywords below apply only to a store made here). Stopping
    closes the store; a `start()` after `stop()` opens a store made here again (in memory:
    a new, empty one), and refuses to serve a given one, closed.
    `rollout_retention` is `agl serve --rollout-retention`: seconds a result is kept;
    `forget_tasks` is `--forget-tasks`: tasks go with what retention deletes.
    `max_body_size` is `--max-body-size`: the largest request body taken, in bytes (0.3.0
    takes any); `token` guards the `/v1` management API (the worker routes stay open, as in 0.3.0);
    served beyond loopback without one, it gets a random token of its own (`self.token`),
    as `agl serve` will not open that API to a network.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        task_timeout_seconds: float = 300.0,
        *,
        store: Store | str | Path | None = None,
        max_attempts: int | None = None,
        rollout_retention: float | None = None,
        forget_tasks: bool = False,
        token: str | None = None,
        log_level: str = "warning",
        max_body_size: int = DEFAULTS.max_body_size,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint = f"http://{host}:{port}"
        self._task_timeout_seconds = task_timeout_seconds
        settings: dict[str, Any] = {
            "task_timeout": task_timeout_seconds,
            "max_claims": max_attempts,
            "rollout_retention": rollout_retention,
            "forget_tasks": forget_tasks,
        }
        self._make_store: Callable[[], Store] | None = None  # None: the store was given
        if store is None:
            self._make_store = functools.partial(MemoryStore, **settings)
        elif isinstance(store, (str, Path)):
            self._make_store = functools.partial(SQLiteStore, store, **settings)
        self._store: Store | None = store if isinstance(store, Store) else self._make()
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(32)
        self._log_level = log_level
        self._max_body_size = max_body_size
        self._server: _EmbeddedServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._broker: Broker | None = None
        # As in 0.3.0, for programs that serve on a thread of their own and hand coroutines
        # over with `run_coroutine_threadsafe` (its VERL trainer in "v0" mode): the loop it
        # serves on, and an event set while it serves.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.startup_event = threading.Event()

    def _make(self) -> Store:
        if self._make_store is None:
            raise RuntimeError(
                "The store given to this server was closed when it stopped; start a new server with a new store."
            )
        return self._make_store()

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("The server is not running; call `await server.start()` first.")
        return self._broker

    # life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving in the background; return once the server answers requests."""
        if self._serving is not None:
            return
        if self._store is None:
            self._store = self._make()
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        options = ServerOptions(token=self.token, max_body_bytes=self._max_body_size, address=self.endpoint)
        app = create_app(self._store, options)
        self._broker = app.state.broker
        app.state.request_shutdown = self._request_exit  # `POST /v1/shutdown` stops it too
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                log_level=self._log_level,
                access_log=False,
                **uvicorn_options(DEFAULTS.request_timeout),
            )
        )
        self._serving = asyncio.create_task(self._serve(sock), name="agl-embedded-server")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if self._serving.done():  # what stopped it is raised; a later `start()` begins anew
                serving = self._serving
                self._serving = self._server = self._broker = self._store = None
                serving.result()
                raise RuntimeError("The server stopped while starting.")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server did not start within {STARTUP_TIMEOUT:g} s.")
            await asyncio.sleep(0.005)
        self.loop = asyncio.get_running_loop()
        self.startup_event.set()
        log.info("agl serving at %s", self.endpoint)

    async def _serve(self, sock: Any) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn's, when the app cannot start: not the host program's exit
            raise RuntimeError("The server could not start; its log says why.") from exc
        finally:
            sock.close()
            self.startup_event.clear()
            self.loop = None

    async def stop(self) -> None:
        """Stop gracefully: long polls are answered, in-flight requests finish, the store closes."""
        if self._server is None or self._serving is None:
            return
        self._request_exit()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        finally:
            self._server = self._serving = self._broker = self._store = None  # the app closed the store

    def _request_exit(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._broker is not None:
            self._broker.begin_shutdown()

    async def run_forever(self) -> None:
        """Serve until `stop()` is called (from another task). Cancelled, it stops waiting
        and the server goes on, as in 0.3.0: `stop()` stops it."""
        await self.start()
        assert self._serving is not None
        await asyncio.shield(self._serving)

    # tasks and resources -----------------------------------------------------------------

    async def queue_task(
        self,
        sample: Any,
        mode: Mode | None = None,
        resources_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Queue one task and return its rollout id. The sample and metadata reach the
        worker as pydantic writes them, as in 0.3.0 (a model, a set, bytes, a `Decimal`, a
        `Path`, a dict with int keys); what pydantic cannot write is a `PydanticSerializationError`."""
        spec = TaskSpec(
            input=_jsonable(sample),
            mode=mode,
            resources_id=resources_id,
            metadata=_jsonable(metadata) if metadata else {},
        )
        return (await self.broker.queue_tasks([spec]))[0]

    async def update_resources(self, resources: Mapping[str, Any]) -> str:
        """Publish a bundle (dicts or pydantic models, agentlightning's own included) as the latest."""
        return (await self.broker.publish(resources)).resources_id

    # completed rollouts ------------------------------------------------------------------

    async def get_completed_rollout(self, rollout_id: str) -> Rollout | None:
        """Return the rollout for `rollout_id` and consume it, or None if there is none (yet)."""
        return await self.broker.consume_rollout(rollout_id)

    async def poll_completed_rollout(self, rollout_id: str, timeout: float | None = None) -> Rollout | None:
        """Wait for the rollout of `rollout_id` (forever if `timeout` is None, or 0, as 0.3.0
        waits: a program written for it may give 0 for "no limit"); consume it."""
        return await self.broker.wait_to_consume(rollout_id, timeout or None)

    async def retrieve_completed_rollouts(self) -> list[Rollout]:
        """Return every rollout not yet consumed, oldest first, and consume them."""
        return await self.broker.consume_all()
