"""`agl queue`: queue task files as one batch, all or nothing.

Up to one request's worth goes up in a single `POST /v1/tasks`; more goes through the
batch protocol in chunks, committed at the end and discarded on any error or Ctrl-C, so a
failure anywhere leaves nothing queued. The files are read once: each chunk is checked
while the daemon stages the one before, so a large file costs the daemon's time, not the
sum of reading and staging.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NoReturn

import typer

from agl_cli.cli import output
from agl_cli.cli.context import connect, target_of
from agl_cli.cli.errors import ExitCode, fail, said_of_a_change
from agl_cli.cli.seconds import seconds_option

if TYPE_CHECKING:
    from agl_cli.cli.taskfile import Chunk, Defaults, TaskFile
    from agl_cli.client import AglClient, Refused

# Tasks per request (the API takes up to 10,000): at 5,000 the daemon's peak memory while
# it takes a million tasks is about 20 MB lower than at 10,000, at no cost in time.
CHUNK_TASKS = 5_000
CHUNK_BYTES = 8 << 20  # well under the daemon's default body limit of 32 MiB (smaller for a smaller one)
# What `agl queue` prints is kept in memory up to this size, more than one chunk's worth,
# then on disk: a batch of one chunk, queued in one request, never needs the disk after it.
PRINTED_IN_MEMORY = 2 * CHUNK_BYTES


class ModeChoice(str, enum.Enum):
    train = "train"
    val = "val"
    test = "test"


def queue(
    ctx: typer.Context,
    files: list[str] = typer.Argument(
        ...,
        metavar="FILE",
        help="Task files: a JSON object, an array of them, or JSON Lines; '-' reads standard input.",
        show_default=False,
    ),
    mode: ModeChoice | None = typer.Option(None, "--mode", help="Mode of tasks that do not give one."),
    resources_id: str | None = typer.Option(
        None, "--resources-id", metavar="ID", help="Resources of tasks that do not name any."
    ),
    latest: bool = typer.Option(
        False, "--latest", help="Use the latest resources (resolved now) for tasks that do not name any."
    ),
    metadata: list[str] = typer.Option(
        [], "--metadata", metavar="KEY=VALUE", help="Metadata for every task (its own keys win); repeatable."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Wait for every task's rollout, then print the rollouts and a summary."
    ),
    timeout: float | None = seconds_option(
        None, "--timeout", least=0.0, help="With --wait: give up after S seconds (exit 5)."
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help="One JSON object per task (its rollout id and spec), or per rollout with --wait.",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the files and count the tasks; queue nothing. The daemon is not asked, so its body"
        " limit and the resources ids are checked only when queuing.",
    ),
) -> None:
    """Queue tasks from files: all of them, or none if any is bad.

    Prints the rollout ids, one per line, in file order.
    """
    if resources_id is not None and latest:
        fail("Give --resources-id or --latest, not both.", ExitCode.USAGE)
    if resources_id == "latest":  # the tasks would name no bundle, and a worker keeps the first it fetches so
        fail(
            "--resources-id latest names no bundle: give --latest for the one that is latest now.",
            ExitCode.USAGE,
        )
    if timeout is not None and not wait:
        fail("--timeout only makes sense with --wait.", ExitCode.USAGE)
    extra = parse_metadata(metadata)

    from agl_cli.cli import taskfile

    show_progress = output.stderr_is_terminal() and not json_output
    with contextlib.ExitStack() as stack:
        try:
            task_files = taskfile.open_task_files(files, lambda: stack.enter_context(taskfile.spool_file()))
            if dry_run:
                _report_dry_run(_count(task_files, show_progress), json_output)
                return
        except taskfile.TaskFileError as exc:
            fail(str(exc))
        with connect(ctx) as client:
            defaults = taskfile.Defaults(
                mode=mode.value if mode else None,
                resources_id=_resources_id(client, resources_id, latest),
                metadata=extra,
            )
            since = client.last_seq() if wait else None
            sink = stack.enter_context(_Sink(json_output, keep_ids=wait))
            try:
                with _stopped_as_by_ctrl_c():
                    queued = _upload(client, task_files, defaults, sink, show_progress)
            except taskfile.TaskFileError as exc:
                fail(str(exc))
            except _MaybeCommitted as exc:
                if exc.queued is None and exc.first_id is None:
                    typer.echo(
                        "agl: Interrupted again before the daemon answered; the tasks may have been"
                        " queued all the same (agl tasks list shows the queue).",
                        err=True,
                    )
                    raise typer.Exit(ExitCode.INTERRUPTED) from None
                if exc.queued is None:
                    typer.echo(
                        f"agl: Interrupted while the daemon committed the tasks; agl tasks show {exc.first_id} "
                        "tells whether it did (all of them or none).",
                        err=True,
                    )
                    raise typer.Exit(ExitCode.INTERRUPTED) from None
                _interrupted_after_queuing(exc.queued)
            except KeyboardInterrupt:
                typer.echo("agl: Interrupted; nothing was queued.", err=True)
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            try:
                with said_of_a_change(output.were(queued, "task", "queued", the=True)):
                    _after_queuing(ctx, client, sink, queued, since, timeout, show_progress)
            except KeyboardInterrupt:
                _interrupted_after_queuing(queued)


def _interrupted_after_queuing(queued: int) -> NoReturn:
    typer.echo(
        f"agl: Interrupted; {output.were(queued, 'task', 'queued', the=True)} all the same"
        f" (agl tasks list shows {'it' if queued == 1 else 'them'}).",
        err=True,
    )
    raise typer.Exit(ExitCode.INTERRUPTED)


class _MaybeCommitted(KeyboardInterrupt):
    """Interrupted while the daemon committed the tasks: it did (`queued` tasks), or it
    could not be asked (None) whether the task `first_id` (None: not known) is queued."""

    def __init__(self, queued: int | None, first_id: str | None) -> None:
        super().__init__()
        self.queued = queued
        self.first_id = first_id


@contextlib.contextmanager
def _stopped_as_by_ctrl_c() -> Iterator[None]:
    """While the upload goes on, SIGTERM (a cancelled CI job, `timeout`) and SIGHUP (the
    terminal closed) discard the staged batch as Ctrl-C does: killed outright, agl would
    leave it on the daemon's disk, unseen, for an hour. A signal ignored (`nohup`) stays so."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with _handled((signal.SIGTERM, signal.SIGHUP), interrupt):
        yield


@contextlib.contextmanager
def _handled(signals: tuple[signal.Signals, ...], handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for those of `signals` that are not ignored, for the block."""
    before = {signum: signal.getsignal(signum) for signum in signals}
    taken = {
        signum: previous for signum, previous in before.items() if previous not in (signal.SIG_IGN, None)
    }
    for signum in taken:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in taken.items():
            signal.signal(signum, previous)


class _Held:
    signalled = False


@contextlib.contextmanager
def _held_until_answered() -> Iterator[_Held]:
    """While one request queues the tasks, a first Ctrl-C (or SIGTERM, SIGHUP) waits for
    its answer, which says whether they were queued; the request carries no id to ask about
    afterwards. A second one stops the wait."""
    held = _Held()

    def hold(signum: int, frame: object) -> None:
        if held.signalled:
            raise KeyboardInterrupt
        held.signalled = True
        with contextlib.suppress(OSError):
            typer.echo(
                "agl: Waiting for the daemon to say whether it queued the tasks (again to stop).", err=True
            )

    with _handled((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), hold):
        yield held


def _after_queuing(
    ctx: typer.Context,
    client: AglClient,
    sink: _Sink,
    queued: int,
    waiting_since: int | None,
    timeout: float | None,
    show_progress: bool,
) -> None:
    """Print the queued tasks' ids, or (with --wait, from `waiting_since`) their rollouts."""
    if waiting_since is None:
        sink.print()
        output.aside(f"Queued {queued} tasks.")
        return
    from agl_cli.cli import waiting

    if show_progress:
        output.note(f"Queued {queued} tasks.")
    outcome = waiting.wait_for_rollouts(
        client, target_of(ctx), sink.expected, waiting_since, timeout, show_progress
    )
    waiting.report(sink.expected, outcome, json_output=sink.json_output, timeout=timeout)


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--metadata takes KEY=VALUE, not '{pair}'.", ExitCode.USAGE)
        metadata[key] = value
    return metadata


def _resources_id(client: AglClient, resources_id: str | None, latest: bool) -> str | None:
    """The id to fill in, checked now so that a typo fails before anything is queued."""
    if latest:
        return client.get_resources("latest")["resources_id"]
    if resources_id is not None:
        client.get_resources(resources_id)
    return resources_id


def _count(task_files: list[TaskFile], show_progress: bool) -> int:
    from agl_cli.cli.taskfile import checked_tasks

    with output.progress_bar(show_progress, "Checking", _size(task_files), bytes_=True) as update:
        return sum(1 for _ in checked_tasks(task_files, update))


def _size(task_files: list[TaskFile]) -> int:
    return sum(f.size for f in task_files)


def _upload(
    client: AglClient,
    task_files: list[TaskFile],
    defaults: Defaults,
    sink: _Sink,
    show_progress: bool,
) -> int:
    """Queue every task of the files; returns how many."""
    from agl_cli.cli.taskfile import checked_tasks, chunks
    from agl_cli.client import DaemonUnreachable

    batch_id, committing = None, 0  # committing: the tasks the commit was asked for
    try:
        with output.progress_bar(show_progress, "Queuing", _size(task_files), bytes_=True) as update:
            tasks = checked_tasks(task_files, update)
            most = _most_per_request(client)
            pieces = chunks(tasks, defaults, CHUNK_TASKS, CHUNK_BYTES, sink.keep_specs, most)
            first = next(pieces)  # there is one: a file without tasks is refused
            second = next(pieces, None)
            if second is None:
                with _held_until_answered() as held:
                    try:
                        ids = _send(lambda body: client.queue(body), first)
                    except KeyboardInterrupt:
                        raise _MaybeCommitted(None, None) from None
                sink.add(ids, first)
                if held.signalled:
                    raise _MaybeCommitted(len(ids), None)
                return len(first.lines)
            batch_id = client.create_batch()
            queued = _stage_in_turn(client, batch_id, itertools.chain([first, second], pieces), sink)
        with _spinner(show_progress, f"Committing {queued} tasks"):
            committing = queued
            try:
                client.commit_batch(batch_id)
            except DaemonUnreachable as exc:  # it may have committed first: all of them, or none
                raise DaemonUnreachable(
                    exc.url,
                    f"The agl daemon at {exc.url} stopped answering as it committed the tasks;"
                    f" agl tasks show {sink.first_id} tells whether it did (all of them or none).",
                ) from None
    except KeyboardInterrupt:
        if batch_id is not None and not _discarded(client, batch_id) and committing and sink.first_id:
            anyway = _queued_anyway(client, sink.first_id, committing)
            if anyway != 0:
                raise _MaybeCommitted(anyway, sink.first_id) from None
        raise
    except BaseException:
        if batch_id is not None:
            _discarded(client, batch_id)
        raise
    return queued


def _discarded(client: AglClient, batch_id: str) -> bool:
    with contextlib.suppress(Exception):
        client.discard_batch(batch_id)
        return True
    return False


def _queued_anyway(client: AglClient, first_id: str, queued: int) -> int | None:
    """A batch that could not be discarded was committed, if its first task is visible
    (staged ones are not): `queued`, 0 if not, None if the daemon cannot say."""
    from agl_cli.client import AglClientError, NotFound

    try:
        client.get_task(first_id)
    except NotFound:
        return 0
    except AglClientError:
        return None
    return queued


def _most_per_request(client: AglClient) -> int | None:
    """How many bytes of tasks one request may carry, by the daemon's body limit (which
    `agl serve --max-body-size` may have set below a chunk's size)."""
    from agl_cli.client import TASKS_BODY_OVERHEAD

    limit = client.status().get("max_body_size")
    return None if limit is None else limit - TASKS_BODY_OVERHEAD


def _stage_in_turn(client: AglClient, batch_id: str, pieces: Iterator[Chunk], sink: _Sink) -> int:
    """Stage the chunks in order, one request at a time, reading and checking the next
    chunk here while the daemon stages the last on another thread."""

    def stage(body: bytes) -> list[str]:
        return client.stage(batch_id, body)["rollout_ids"]

    queued = 0
    in_flight: tuple[Future[list[str]], Chunk] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="agl-stage") as uploader:  # waits for it on errors
        for chunk in pieces:
            if in_flight is not None:
                queued += _staged(in_flight, sink)
            in_flight = uploader.submit(_send, stage, chunk), chunk
        if in_flight is not None:
            queued += _staged(in_flight, sink)
    return queued


def _staged(in_flight: tuple[Future[list[str]], Chunk], sink: _Sink) -> int:
    future, chunk = in_flight
    ids = future.result()
    sink.add(ids, chunk)
    return len(ids)


def _send(call: Callable[[bytes], list[str]], chunk: Chunk) -> list[str]:
    """Upload one chunk; a task the daemon refuses is reported at its file and line."""
    from agl_cli.cli.taskfile import TaskFileError
    from agl_cli.client import Refused

    try:
        return call(chunk.body)
    except Refused as exc:
        where = _refused_task(exc, chunk)
        if where is None:
            raise
        raise TaskFileError(where[0], f"the daemon refused this task: {exc.detail}", where[1]) from None


def _refused_task(exc: Refused, chunk: Chunk) -> tuple[str, int] | None:
    for error in exc.errors[:1]:
        loc = [part for part in error.get("loc", []) if part != "body"]
        if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int) and loc[1] < len(chunk.lines):
            return chunk.lines[loc[1]]
    return None


class _Sink:
    """Where rollout ids go until the batch is committed: a spool file, so that a million
    of them cost no memory, and, for --wait, the ids and modes to wait for.

    What the spool cannot write (a full temporary directory) stops the queuing while the
    batch is only staged: each chunk's ids are written through as they come."""

    def __init__(self, json_output: bool, keep_ids: bool) -> None:
        self.json_output = json_output
        self.keep_ids = keep_ids
        self.keep_specs = json_output or keep_ids
        self.first_id: str | None = None  # of the batch: visible once it is committed
        self.expected: dict[str, str | None] = {}
        self._spool = tempfile.SpooledTemporaryFile(PRINTED_IN_MEMORY, "w+", encoding="utf-8")  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._spool.close()

    def add(self, ids: list[str], chunk: Chunk) -> None:
        if self.first_id is None and ids:
            self.first_id = ids[0]
        specs = chunk.specs or []
        if self.keep_ids:
            for rollout_id, spec in zip(ids, specs, strict=True):
                self.expected[rollout_id] = spec.get("mode")
            return
        lines = (
            (
                output.json_text({"rollout_id": rollout_id, **spec}) + "\n"
                for rollout_id, spec in zip(ids, specs, strict=True)
            )
            if self.json_output
            else (rollout_id + "\n" for rollout_id in ids)
        )
        try:
            self._spool.writelines(lines)
            self._spool.flush()
        except OSError as exc:  # the batch is discarded on the way out (`_upload`)
            with contextlib.suppress(OSError):  # and what the spool kept is dropped, not tried again
                self._spool.close()
            where = tempfile.gettempdir()
            fail(
                f"The rollout ids could not be kept in a temporary file in {where} ({exc.strerror or exc});"
                " nothing was queued."
            )

    def print(self) -> None:
        import sys

        self._spool.seek(0)
        shutil.copyfileobj(self._spool, sys.stdout)
        sys.stdout.flush()


def _report_dry_run(count: int, json_output: bool) -> None:
    if json_output:
        output.print_json_line({"tasks": count, "queued": 0})
    else:
        verb = "is" if count == 1 else "are"
        output.write_line(f"{output.count(count, 'task')} {verb} valid; nothing was queued (--dry-run).")


@contextlib.contextmanager
def _spinner(show: bool, label: str) -> Iterator[None]:
    if not show:
        yield
        return
    with output.err().status(label):
        yield
