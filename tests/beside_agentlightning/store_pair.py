"""agl and agentlightning 0.3.0's own `LightningStoreServer`, side by side, driven by the
unmodified 0.3.0 `LightningStoreClient` with the same calls.

`Pair.same(call)` makes the call on both and asserts that the answers agree once each
side's ids and times are replaced by names given in order of appearance (`<ro-1>`,
`<t>`), or that both refused; it returns the answer so a test can say more about it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Span, SpanContext, TraceStatus
from agentlightning.types.tracer import OtelResource
from daemon import Daemon, free_port
from histories import Names
from pydantic import BaseModel

ID = re.compile(r"^(ro|at|rs)-[0-9a-f]{6,}$")
TIME_KEYS = ("_time", "timestamp")
CLIENT_METHODS = frozenset(
    name
    for name in vars(LightningStoreClient)
    if not name.startswith("_") and name not in ("capabilities", "close", "otlp_traces_endpoint")
)


def span(
    rollout_id: str, attempt_id: str, sequence_id: int, span_id: str, name: str, **attributes: Any
) -> Span:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=None,
        name=name,
        status=TraceStatus(status_code="OK"),
        attributes=attributes,
        events=[],
        links=[],
        start_time=1.0,
        end_time=2.0,
        context=SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_state={}),
        parent=None,
        resource=OtelResource(attributes={}, schema_url=""),
    )


def normalized(value: Any, names: Names, key: str = "") -> Any:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: normalized(v, names, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalized(v, names) for v in value]
    if isinstance(value, str) and ID.match(value):
        return names.of(value)
    if key.endswith(TIME_KEYS) and isinstance(value, (int, float)):
        return "<t>"
    return value


@dataclass
class Outcome:
    value: Any = None
    refused: bool = False


class Pair:
    """One client on agl, one on 0.3.0's server, and what has been called on them."""

    def __init__(self, ours: str, theirs: str) -> None:
        self.urls = (ours, theirs)
        self.names = (Names(), Names())
        self.called: set[str] = set()

    def clients(self) -> tuple[LightningStoreClient, LightningStoreClient]:
        # No retries: 0.3.0 answers some refusals with a 500 its client retries for 8 s.
        return tuple(  # type: ignore[return-value]
            LightningStoreClient(url, retry_delays=(), health_retry_delays=()) for url in self.urls
        )

    async def same(self, call: Callable[[LightningStoreClient], Awaitable[Any]]) -> Any:
        outcomes = []
        for client, names in zip(self.clients(), self.names, strict=True):
            recorder = _Recorder(client, self.called)
            try:
                outcomes.append(Outcome(normalized(await call(recorder), names)))  # type: ignore[arg-type]
            except Exception:  # a refusal of any kind: compared below
                outcomes.append(Outcome(refused=True))
            finally:
                await client.close()
        ours, theirs = outcomes
        assert ours == theirs, f"agl: {ours}\n0.3.0: {theirs}"
        return ours.value

    def real(self, client: LightningStoreClient, name: str) -> str:
        """The id that `name` stands for on the server `client` talks to."""
        side = 0 if client.server_address_root == self.urls[0] else 1
        return self.names[side].real(name)

    async def refused(self, call: Callable[[LightningStoreClient], Awaitable[Any]]) -> None:
        for client in self.clients():
            try:
                await call(_Recorder(client, self.called))  # type: ignore[arg-type]
            except Exception:  # a refusal, as expected
                continue
            finally:
                await client.close()
            raise AssertionError(f"{client.server_address} did not refuse")


class _Recorder:
    """The client, noting which of its methods a test calls."""

    def __init__(self, client: LightningStoreClient, called: set[str]) -> None:
        self._client = client
        self._called = called

    def __getattr__(self, name: str) -> Any:
        self._called.add(name)
        return getattr(self._client, name)


@dataclass
class Reference:
    """0.3.0's server over its in-memory store, serving on a thread of this process. It
    looks for timed-out attempts on every call (0.3.0's default: every 10 s at most)."""

    url: str
    thread: threading.Thread


def start_reference() -> Reference:
    port = free_port()
    store = InMemoryLightningStore(thread_safe=True, scan_debounce_seconds=0)
    server = LightningStoreServer(store, host="127.0.0.1", port=port, launch_mode="asyncio")
    thread = threading.Thread(target=lambda: asyncio.run(server.run_forever()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url)
    return Reference(url, thread)


def wait_until_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/agl/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no store server answers at {url}")


def start_agl(state_dir: Path, *args: str) -> Iterator[Daemon]:
    daemon = Daemon(state_dir, "--no-auth", *args).start()
    try:
        yield daemon
    finally:
        daemon.close()
