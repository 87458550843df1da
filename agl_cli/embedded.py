"""`AgentLightningServer`: agl embedded in a training script's own event loop.

A drop-in for `agentlightning.server.AgentLightningServer` 0.3.0: same constructor, same
`endpoint`, same async methods with the same meaning, so a script switches by changing
its import. Underneath it is the daemon's own app and store, not a second server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from agl_cli.daemon_config import DEFAULTS
from agl_cli.models import Mode, Rollout
from agl_cli.net import is_loopback
from agl_cli.server.app import ServerOptions, create_app
from agl_cli.server.broker import Broker, wait_for
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


class AgentLightningServer:
    """The legacy server's API over agl's broker and store.

    `store` chooses where state lives: `None` keeps it in memory (as 0.3.0 does), a path
    opens (or creates) a durable SQLite database there, and a `Store` is used as given
    (with its own settings: the keywords below apply only to a store made here).
    `rollout_retention` is `agl serve --rollout-retention`: seconds a result is kept;
    `forget_tasks` is `--forget-tasks`: tasks go with what retention deletes.
    `token` guards the `/v1` management API (the worker routes stay open, as in 0.3.0);
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
        if store is None:
            store = MemoryStore(**settings)
        elif isinstance(store, (str, Path)):
            store = SQLiteStore(store, **settings)
        self._store = store
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(32)
        self._log_level = log_level
        self._server: _EmbeddedServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._broker: Broker | None = None
        # As in 0.3.0, for programs that serve on a thread of their own and hand coroutines
        # over with `run_coroutine_threadsafe` (its VERL trainer in "v0" mode): the loop it
        # serves on, and an event set while it serves.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.startup_event = threading.Event()

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
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        app = create_app(self._store, ServerOptions(token=self.token, address=self.endpoint))
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
            if self._serving.done():
                self._serving.result()  # raises what stopped it
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
        finally:
            sock.close()
            self.startup_event.clear()
            self.loop = None

    async def stop(self) -> None:
        """Stop gracefully: long polls are answered, in-flight requests finish, the store closes."""
        if self._server is None or self._serving is None:
            return
        self._request_exit()
        with contextlib.suppress(asyncio.CancelledError):
            await self._serving
        self._server = self._serving = self._broker = None

    def _request_exit(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._broker is not None:
            self._broker.begin_shutdown()

    async def run_forever(self) -> None:
        """Serve until `stop()` is called (from another task) or the task is cancelled."""
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
        """Queue one task and return its rollout id."""
        spec = TaskSpec(input=sample, mode=mode, resources_id=resources_id, metadata=metadata or {})
        return (await self.broker.queue_tasks([spec]))[0]

    async def update_resources(self, resources: Mapping[str, Any]) -> str:
        """Publish a bundle (dicts or pydantic models, agentlightning's own included) as the latest."""
        return (await self.broker.publish(resources)).resources_id

    # completed rollouts ------------------------------------------------------------------

    async def get_completed_rollout(self, rollout_id: str) -> Rollout | None:
        """Return the rollout for `rollout_id` and consume it, or None if there is none (yet)."""
        return await self.broker.consume_rollout(rollout_id)

    async def poll_completed_rollout(self, rollout_id: str, timeout: float | None = None) -> Rollout | None:
        """Wait for the rollout of `rollout_id` (forever if `timeout` is None); consume it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            changed = self.broker.watch_rollouts()
            rollout = await self.get_completed_rollout(rollout_id)
            if rollout is not None:
                return rollout
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0 or self.broker.closing:
                return None
            await wait_for(changed, remaining)

    async def retrieve_completed_rollouts(self) -> list[Rollout]:
        """Return every rollout not yet consumed, oldest first, and consume them."""
        return await self.broker.consume_all()
