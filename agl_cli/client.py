"""A typed, synchronous client of agl's management API (docs/api.md).

It imports httpx, httpx-sse, orjson and the API's limits only, never the server or the
store, so the CLI starts fast and a script on another machine can drive a daemon with
nothing else.
Every failure is one of the exception classes below, with a one-sentence message.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Literal, NamedTuple, TypedDict, cast
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import SSEError, connect_sse

from agl_cli.api_limits import DEFAULT_LIST_LIMIT, MAX_SEQ, STREAM_READ_TIMEOUT
from agl_cli.net import is_loopback

DEFAULT_TIMEOUT = 30.0
# What the daemon answers for a path none of its routes takes (its own 404s are sentences):
# an older daemon's answer to a newer client's call.
NO_ROUTE = "Not Found"
# How long the calls that answer only once much is done may take: a batch's commit,
# cancelling or retrying a whole queue, a backup the daemon copies before it sends it.
LONG_CALL_TIMEOUT = 600.0

TaskStatus = Literal["queued", "claimed", "completed", "failed", "cancelled"]
Mode = Literal["train", "val", "test"]


# --- shapes of the API (docs/api.md) ------------------------------------------------------


class TaskRecord(TypedDict):
    rollout_id: str
    input: Any
    mode: Mode | None
    resources_id: str | None
    create_time: float
    last_claim_time: float | None
    num_claims: int
    metadata: dict[str, Any]
    status: TaskStatus
    deadline: float | None
    completed_time: float | None
    duplicates: int


class TaskPage(TypedDict):
    tasks: list[TaskRecord]
    total: int


AttemptStatus = Literal["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]


class Attempt(TypedDict):
    """One claim of a task, by either door: the store API's `Attempt`."""

    rollout_id: str
    attempt_id: str
    sequence_id: int
    start_time: float
    end_time: float | None
    status: AttemptStatus
    worker_id: str | None
    last_heartbeat_time: float | None
    metadata: dict[str, Any] | None


class RolloutRecord(TypedDict, total=False):
    """A rollout as its worker sent it (unknown fields included) plus agl's bookkeeping."""

    rollout_id: str
    task: dict[str, Any] | None
    final_reward: float | None
    triplets: list[dict[str, Any]] | None
    trace: list[dict[str, Any]] | None
    logs: list[str] | None
    metadata: dict[str, Any]
    seq: int
    received_time: float
    attempt: int | None
    unsolicited: bool


class RolloutList(TypedDict):
    rollouts: list[RolloutRecord]
    last_seq: int


class ResourcesUpdate(TypedDict):
    resources_id: str
    create_time: float
    update_time: float
    version: int
    resources: dict[str, dict[str, Any]]


class ResourcesList(TypedDict):
    resources: list[ResourcesUpdate]
    latest_id: str | None
    total: int


class Staged(TypedDict):
    rollout_ids: list[str]
    staged: int


class Rates(TypedDict):
    claims_per_second: float
    rollouts_per_second: float
    seconds: float


class DatabaseSpace(TypedDict):
    bytes: int
    free_bytes: int
    log_bytes: int
    max_bytes: int | None
    disk_free_bytes: int | None


class Status(TypedDict, total=False):
    version: str
    pid: int
    started_time: float
    uptime: float
    address: str | None
    state_dir: str | None
    store: str
    task_timeout: float
    max_attempts: int | None
    rollout_retention: float | None
    forget_tasks: bool
    max_body_size: int
    tasks: dict[str, int]
    forgotten: int
    rollouts: int
    unsolicited: int
    duplicates: int
    resources: int
    last_seq: int
    latest_resources_id: str | None
    paused: bool
    database: DatabaseSpace
    rates: Rates


# --- errors -----------------------------------------------------------------------------


class AglClientError(Exception):
    """Anything that went wrong talking to the daemon; `str()` is one sentence."""


class DaemonUnreachable(AglClientError):
    """Nothing answers at the address (refused, timed out, or the connection dropped)."""

    def __init__(self, url: str, reason: str | None = None) -> None:
        super().__init__(f"No agl daemon answers at {url}." if reason is None else reason)
        self.url = url


class ResponseError(AglClientError):
    """The daemon answered, and said no; `detail` is its own words."""

    def __init__(
        self, message: str, status_code: int, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.errors = errors or []  # a 422's list of {type, loc, msg, input, ctx?}


class AuthRefused(ResponseError):
    """401: no token, or not the daemon's token."""


class NotFound(ResponseError):
    """404: no such task, rollout, resources or batch."""


class Refused(ResponseError):
    """Any other 4xx: bad input, a conflict, a body too large."""


class DaemonFailed(ResponseError):
    """5xx: the daemon could not carry out a valid request."""


# --- the client -------------------------------------------------------------------------


TaskList = Sequence[Mapping[str, Any]] | bytes


class Address(NamedTuple):
    """Where a daemon is, and the token it takes there."""

    url: str
    token: str | None


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class AglClient:
    """One daemon's management API. Use it as a context manager, or call `close()`."""

    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        parts = httpx.URL(url)
        # Plain HTTP to this machine goes through no TLS, and no proxy: its TLS settings are
        # not built (loading the certificate store costs about a tenth of a command's time).
        self._plain = parts.scheme == "http" and is_loopback(parts.host)
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=_bearer(token),
            timeout=httpx.Timeout(timeout, connect=5.0),
            # A proxy ($HTTP_PROXY) is another host: it would be sent the token in clear, and
            # would dial its own loopback, not this machine's.
            trust_env=not is_loopback(parts.host),
            verify=not self._plain,
        )

    @property
    def url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    @url.setter
    def url(self, value: str) -> None:
        url = httpx.URL(value.rstrip("/"))
        if self._plain and url.scheme != "http":
            raise ValueError(f"A client made for plain HTTP cannot move to {value}.")
        self._http.base_url = url

    def move_to(self, address: Address | None) -> None:
        """Talk to the daemon at `address` from now on: one that restarted on another port,
        or with another token. None keeps the last one known."""
        if address is None:
            return
        self.url = address.url
        self._http.headers.pop("Authorization", None)
        self._http.headers.update(_bearer(address.token))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AglClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # tasks ------------------------------------------------------------------------------

    def queue(self, tasks: TaskList) -> list[str]:
        """Queue 1 to 10,000 tasks at once, all or none; their rollout ids, in order.

        `tasks` may also be an already encoded JSON array of task objects, so a large file
        need not be decoded and encoded again on its way up.
        """
        body = self._call("POST", "/v1/tasks", content=_tasks_body(tasks))
        return cast(list[str], body["rollout_ids"])

    def create_batch(self) -> str:
        """Open a batch: tasks staged in it stay invisible until `commit_batch`."""
        return cast(str, self._call("POST", "/v1/batches")["batch_id"])

    def stage(self, batch_id: str, tasks: TaskList) -> Staged:
        return cast(
            Staged,
            self._call("POST", f"/v1/batches/{_segment(batch_id)}/tasks", content=_tasks_body(tasks)),
        )

    def commit_batch(self, batch_id: str, timeout: float = LONG_CALL_TIMEOUT) -> int:
        """Queue every staged task in one transaction; a million takes a while, hence the timeout."""
        return cast(
            int, self._call("POST", f"/v1/batches/{_segment(batch_id)}/commit", timeout=timeout)["queued"]
        )

    def discard_batch(self, batch_id: str) -> int:
        return cast(int, self._call("DELETE", f"/v1/batches/{_segment(batch_id)}")["discarded"])

    def list_tasks(
        self, status: TaskStatus | None = None, limit: int = DEFAULT_LIST_LIMIT, offset: int = 0
    ) -> list[TaskRecord]:
        """Up to `limit` tasks from `offset` on, asked for a page at a time: a page of big
        tasks comes short."""
        return self.tasks_and_total(status, limit, offset)[0]

    def tasks_and_total(
        self, status: TaskStatus | None = None, limit: int = DEFAULT_LIST_LIMIT, offset: int = 0
    ) -> tuple[list[TaskRecord], int | None]:
        """`list_tasks`, and how many tasks there are (in `status`) as of its last page: None
        from a daemon older than that count."""
        found: list[TaskRecord] = []
        total = None
        while len(found) < limit:
            params: dict[str, Any] = {"limit": limit - len(found), "offset": offset + len(found)}
            if status is not None:
                params["status"] = status
            page = cast(TaskPage, self._call("GET", "/v1/tasks", params=params))
            total = page.get("total")
            if not page["tasks"]:
                break
            found += page["tasks"]
        return found, total

    def get_task(self, rollout_id: str) -> TaskRecord:
        return cast(TaskRecord, self._call("GET", f"/v1/tasks/{_segment(rollout_id)}"))

    def attempts(self, rollout_id: str, last: int = 20) -> tuple[list[Attempt], int]:
        """A task's latest `last` attempts, oldest first, and how many it has had in all."""
        page = self._call(
            "GET",
            f"/v1/agl/rollouts/{_segment(rollout_id)}/attempts",
            params={"sort_by": "sequence_id", "sort_order": "desc", "limit": last},
        )
        return cast(list[Attempt], page["items"][::-1]), cast(int, page["total"])

    def cancel_task(self, rollout_id: str) -> TaskRecord:
        return cast(TaskRecord, self._call("POST", f"/v1/tasks/{_segment(rollout_id)}/cancel"))

    def cancel_tasks(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """Cancel them all, or none if any is unknown or has ended."""
        return self._change_tasks("/v1/tasks/cancel", rollout_ids)

    def cancel_queued(self, timeout: float = LONG_CALL_TIMEOUT) -> int:
        """Cancel every task queued now (claimed ones run on); a million takes a while."""
        return cast(int, self._call("POST", "/v1/queue/cancel", timeout=timeout)["cancelled"])

    def pause(self) -> bool:
        """Pause the queue: workers get no tasks until `resume`. True (it is paused)."""
        return cast(bool, self._call("POST", "/v1/queue/pause")["paused"])

    def resume(self) -> bool:
        """Resume the queue, and the workers waiting for tasks get them. False (not paused)."""
        return cast(bool, self._call("POST", "/v1/queue/resume")["paused"])

    def retry_tasks(self, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """Queue failed or cancelled tasks again, or none if any is unknown or in another
        state; each keeps its claims, so its attempt limit leaves it at least one more."""
        return self._change_tasks("/v1/tasks/retry", rollout_ids)

    def _change_tasks(self, path: str, rollout_ids: Sequence[str]) -> list[TaskRecord]:
        """A change of the tasks named, made by the route at `path`: the tasks as they are now."""
        body = orjson.dumps({"rollout_ids": list(rollout_ids)})
        return cast(list[TaskRecord], self._call("POST", path, content=body)["tasks"])

    def retry_failed(self, timeout: float = LONG_CALL_TIMEOUT) -> int:
        """Queue every failed task again, oldest first; how many were."""
        return cast(int, self._call("POST", "/v1/tasks/retry-failed", timeout=timeout)["retried"])

    # resources --------------------------------------------------------------------------

    def push_resources(
        self, resources: Mapping[str, Any], resources_id: str | None = None
    ) -> ResourcesUpdate:
        """Publish a bundle; it becomes the latest (an existing id gets a new version)."""
        body: dict[str, Any] = {"resources": dict(resources)}
        if resources_id is not None:
            body["resources_id"] = resources_id
        return cast(ResourcesUpdate, self._call("POST", "/v1/resources", content=orjson.dumps(body)))

    def list_resources(self, reveal: bool = False, last: int | None = None) -> ResourcesList:
        """Every bundle, or the `last` published, oldest publish first."""
        params = _reveal(reveal) | ({} if last is None else {"last": str(last)})
        return cast(ResourcesList, self._call("GET", "/v1/resources", params=params))

    def get_resources(self, resources_id: str = "latest", reveal: bool = False) -> ResourcesUpdate:
        return cast(
            ResourcesUpdate,
            self._call("GET", f"/v1/resources/{_segment(resources_id)}", params=_reveal(reveal)),
        )

    # rollouts ---------------------------------------------------------------------------

    def list_rollouts(self, since: int = 0, limit: int = DEFAULT_LIST_LIMIT) -> RolloutList:
        return cast(RolloutList, self._call("GET", "/v1/rollouts", params={"since": since, "limit": limit}))

    def all_rollouts(self, since: int = 0, page: int = 1000) -> Iterator[RolloutRecord]:
        """Every rollout stored after `since` as of this call, oldest first, read a page at
        a time; those stored meanwhile are left for `watch_rollouts(since=...)`."""
        first = self.list_rollouts(since, page)
        last, rollouts = first["last_seq"], first["rollouts"]
        while rollouts:
            for record in rollouts:
                if record["seq"] > last:
                    return
                yield record
            since = rollouts[-1]["seq"]
            rollouts = self.list_rollouts(since, page)["rollouts"] if since < last else []

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        return cast(RolloutRecord, self._call("GET", f"/v1/rollouts/{_segment(rollout_id)}"))

    def spans(self, rollout_id: str) -> list[dict[str, Any]]:
        """The spans of a rollout, every attempt's, in sequence order (through the store API)."""
        body = orjson.dumps({"rollout_id": rollout_id})
        page = self._call("POST", "/v1/agl/spans/search", content=body)
        return cast(list[dict[str, Any]], page["items"])

    def last_seq(self) -> int:
        """The sequence number of the newest stored rollout (0 when there is none)."""
        return self.list_rollouts(since=MAX_SEQ, limit=1)["last_seq"]

    def watch_rollouts(
        self,
        since: int | Literal["now"] = 0,
        *,
        relocate: Callable[[], Address | None] | None = None,
        on_disconnect: Callable[[AglClientError], None] | None = None,
        on_reconnect: Callable[[int], None] | None = None,
        max_delay: float = 2.0,
    ) -> Iterator[RolloutRecord]:
        """Every rollout with a sequence number after `since`, oldest first, then live.

        When the connection drops (the daemon restarted, the network failed) it reconnects,
        with a growing pause, and resumes after the last sequence number it yielded:
        nothing is missed, nothing comes twice. A store that is not the one it followed (a
        `--memory` daemon restarted, which numbers its results from 1 again) is followed
        from its first result. `relocate` gives the address again before each reconnect,
        for a daemon that may come back on another port or with another token (None keeps
        the last one known); `on_disconnect` and `on_reconnect` are told when an outage
        starts and when it ends (with the sequence number it resumes after). An unreachable daemon
        at the start, or a refusal (401, 4xx) at any time, is raised.
        """
        last = self.last_seq() if since == "now" else since
        connected_once = False
        outage: AglClientError | None = None
        delay = 0.1
        known: Status | None = None  # the status of the daemon last connected to
        while True:
            try:
                try:
                    current: Status | None = self.status()
                except DaemonFailed:  # busy (503): the stream below says when to come back
                    current = None
                if current is not None:
                    if known is not None and _started_over(known, current):
                        # Its store numbers results from 1 again (a --memory daemon restarted,
                        # or another store): resuming "after #last" would skip its first
                        # `last` results without a word. (`agl restore` numbers on.)
                        last = 0
                    known = current
                with contextlib.closing(self._stream_rollouts(last)) as stream:
                    for record in stream:
                        if record is None:  # connected: the stream answered 200
                            connected_once = True
                            if outage is not None and on_reconnect is not None:
                                on_reconnect(last)
                            outage, delay = None, 0.1
                            continue
                        if record["seq"] <= last:
                            continue
                        last = record["seq"]
                        yield record
                error: AglClientError = DaemonUnreachable(
                    self.url, f"The agl daemon at {self.url} closed the rollout stream."
                )
            except DaemonUnreachable as exc:
                error = exc
            if not connected_once:
                raise error
            if outage is None and on_disconnect is not None:
                on_disconnect(error)
            outage = error
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
            if relocate is not None:
                self.move_to(relocate())

    def _stream_rollouts(self, after: int) -> Generator[RolloutRecord | None, None, None]:
        """One connection to the stream: None once it is open, then its rollouts."""
        timeout = httpx.Timeout(self.timeout, connect=5.0, read=STREAM_READ_TIMEOUT)
        headers = {"Last-Event-ID": str(after)}
        try:
            with connect_sse(
                self._http,
                "GET",
                "/v1/rollouts/stream",
                params={"since": after},
                headers=headers,
                timeout=timeout,
            ) as source:
                response = source.response
                if response.status_code in (502, 503, 504):  # starting or stopping: come back later
                    raise DaemonUnreachable(self.url, f"The agl daemon at {self.url} is not ready.")
                if response.status_code != 200:
                    response.read()
                    self._raise_for(response)
                yield None
                for event in source.iter_sse():
                    if event.event == "rollout":
                        yield cast(RolloutRecord, orjson.loads(event.data))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except SSEError:  # no event stream: not agl's
            raise self._not_agl(response) from None

    # the daemon -------------------------------------------------------------------------

    def status(self) -> Status:
        return cast(Status, self._call("GET", "/v1/status"))

    def backup(
        self,
        into: BinaryIO,
        progress: Callable[[int, int], None] = lambda done, total: None,
        timeout: float = LONG_CALL_TIMEOUT,
    ) -> int:
        """Write a copy of the daemon's whole store, an SQLite file a daemon can be started
        on, to `into`; return its size. `progress(bytes written, bytes in all)` is called as
        it comes. The daemon copies it before it sends the first byte, hence the timeout."""
        done = 0
        try:
            with self._http.stream(
                "GET", "/v1/backup", timeout=httpx.Timeout(timeout, connect=5.0)
            ) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for(response)
                if "Content-Length" not in response.headers:
                    raise self._not_agl(response)
                total = int(response.headers["Content-Length"])
                for chunk in response.iter_bytes():
                    into.write(chunk)
                    done += len(chunk)
                    progress(done, total)
        except httpx.TransportError as exc:  # a short body too: the daemon stopped half-way
            raise self._unreachable(exc) from None
        return done

    def sign_in_code(self) -> str:
        """A code that signs the dashboard in once, within a minute, in place of the token."""
        return cast(str, self._call("POST", "/v1/dashboard/sign-in-codes")["code"])

    def shown_rollout(self, rollout_id: str) -> dict[str, Any]:
        """A rollout (or a task without one yet) as the dashboard's dialog shows it."""
        return self._call("GET", "/v1/dashboard/rollout", params={"rollout_id": rollout_id})

    def shutdown(self) -> None:
        """Ask the daemon to stop gracefully, as SIGTERM would; returns before it has."""
        self._call("POST", "/v1/shutdown")

    def alive(self) -> bool:
        """Whether anything answers `/health` (the process is up, ready or not)."""
        try:
            self._http.get("/health", timeout=2.0)
        except httpx.TransportError:
            return False
        return True

    def ready(self) -> bool:
        """Whether the daemon answers `/ready` with 200 (it is open, not starting or stopping)."""
        try:
            return self._http.get("/ready", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    # plumbing ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}  # `/v1/rollouts/stream` is then a rollout's id
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                content=content,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=5.0) if timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc, changing=method != "GET") from None
        except httpx.InvalidURL as exc:  # an id of 64 KB, say
            too_long = "too long" in str(exc)
            why = "its URL would be too long (an id or a value of 64 KB or more)" if too_long else str(exc)
            raise AglClientError(f"The request cannot be sent: {why.rstrip('.')}.") from None
        if response.status_code >= 300:
            self._raise_for(response)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise self._not_agl(response)
        return body

    def _not_agl(self, response: httpx.Response) -> DaemonUnreachable:
        """Something answered, with what no agl daemon answers (a web page, another server's)."""
        request = f"{response.request.method} {response.request.url.path}"
        return DaemonUnreachable(
            self.url,
            f"What answers at {self.url} is not an agl daemon: its answer to {request} is not agl's.",
        )

    def _unreachable(self, exc: httpx.TransportError, changing: bool = False) -> DaemonUnreachable:
        """`changing`: the request asked for a change, which a daemon that took it and did
        not answer (in time, or at all: it died) may have made; a script that tries again
        must look first."""
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):  # nothing was sent
            return DaemonUnreachable(self.url)
        maybe = "; it may have made the change all the same" if changing else ""
        if isinstance(exc, httpx.ReadTimeout):
            return DaemonUnreachable(self.url, f"The agl daemon at {self.url} did not answer in time{maybe}.")
        return DaemonUnreachable(self.url, f"The connection to the agl daemon at {self.url} broke{maybe}.")

    def _raise_for(self, response: httpx.Response) -> None:
        code = response.status_code
        said, errors = _detail(response)
        if said is None and (400 <= code < 500 or code == 501) and code != 401:
            raise self._not_agl(response)  # a web server's 404 page: agl's say why in `detail`
        detail = said or f"HTTP {code} {response.reason_phrase}".strip()  # a proxy's 502, say
        if code == 401:
            raise AuthRefused(
                f"The daemon at {self.url} refused the request: {_lower_first(detail).removesuffix('.')} "
                "(give the token with --token or AGL_TOKEN).",
                code,
                detail,
            )
        if code == 404 and detail == NO_ROUTE:
            request = response.request
            raise NotFound(
                f"The daemon at {self.url} has no route {request.method}"
                f" {str(request.url).removeprefix(self.url)}: is it an agl older than this one?",
                code,
                detail,
            )
        if code == 404:
            raise NotFound(_sentence(detail), code, detail)
        if code < 500:
            raise Refused(_sentence(detail), code, detail, errors)
        raise DaemonFailed(f"The daemon failed ({code}): {_lower_first(detail)}", code, detail)


_TASKS_OPEN, _TASKS_CLOSE = b'{"tasks":', b"}"
TASKS_BODY_OVERHEAD = len(_TASKS_OPEN) + len(_TASKS_CLOSE)
"""What a request to queue or stage tasks adds around their encoded JSON array."""


def _tasks_body(tasks: TaskList) -> bytes:
    if isinstance(tasks, bytes):
        return _TASKS_OPEN + tasks + _TASKS_CLOSE
    return orjson.dumps({"tasks": list(tasks)})


def _segment(value: str) -> str:
    """An id as one path segment: resources ids are the publisher's choice, '?' included,
    and a worker chooses an unsolicited rollout's, '.' and '..' included, which a URL would
    take as steps of its path unless written as escapes (the daemon decodes them)."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _reveal(reveal: bool) -> dict[str, str]:
    return {"reveal": "true"} if reveal else {}


def _detail(response: httpx.Response) -> tuple[str | None, list[dict[str, Any]]]:
    """The daemon's reason: its `detail` sentence, or the first complaint of a 422 list;
    None if the answer has neither, as no answer of agl's."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None, []
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail, []
    if isinstance(detail, list) and detail and all(isinstance(item, dict) for item in detail):
        first = detail[0]
        if first.get("type") == "json_invalid":  # its `loc` is a position in the body the client sent
            reason = (first.get("ctx") or {}).get("error", "")
            return f"The daemon could not read the request as JSON ({reason or 'invalid'})", detail
        where = ".".join(str(part) for part in first.get("loc", []) if part != "body")
        message = str(first.get("msg", "invalid"))
        return (f"{where}: {message}" if where else message), detail
    return None, []


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _started_over(before: Status, now: Status) -> bool:
    """Whether the daemon's store is not the one seen before: a restarted --memory daemon
    starts empty, and no store's last sequence number ever goes down."""
    restarted = now.get("started_time") != before.get("started_time")
    return (restarted and now.get("store") == "memory") or now.get("last_seq", 0) < before.get("last_seq", 0)


def _lower_first(text: str) -> str:
    """'The token is not valid.' reads on after a colon as 'the token is not valid.'."""
    text = _sentence(text)
    if text[1:2].isupper():  # an acronym or a name: leave it
        return text
    return text[:1].lower() + text[1:]
