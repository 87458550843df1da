"""Task files for `agl queue`: JSON Lines, a JSON array of tasks, or JSON object(s).

A file is read as a stream, one task at a time, so a million-line file never sits in
memory whole. Each task comes out as its own raw JSON bytes and the line it starts on,
checked by the daemon's rules, and goes into an upload as it is (or with the command line's
defaults filled in).

Which format: `.jsonl`/`.ndjson` files are JSON Lines; otherwise a file that starts with
`[` is an array, one whose first line is a whole JSON value is JSON Lines, and anything
else (a pretty-printed object, say) is read as a sequence of JSON values.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
from pydantic import ValidationError

from agl_cli.api_limits import FLOAT_DIGITS, MAX_DEPTH, too_deep
from agl_cli.models import TaskSpec, plain_task

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
READ_SIZE = 1 << 20
MAX_TASK_CHARS = 64 << 20
TASK_FIELDS = "input, mode, resources_id and metadata"
BOM = b"\xef\xbb\xbf"
_WHITESPACE = " \t\r\n"
_BODY_LEVELS = 2  # above each task in a request: the body's object and its list of tasks


class TaskFileError(Exception):
    """A file that cannot be queued: `name:line: reason`, or `name: reason`."""

    def __init__(self, name: str, reason: str, line: int | None = None) -> None:
        super().__init__(f"{name}:{line}: {reason}" if line is not None else f"{name}: {reason}")


@dataclass(frozen=True)
class TaskFile:
    name: str  # as the user wrote it; `<stdin>` for `-`
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class Defaults:
    """What the command line fills in for a task that leaves it out."""

    mode: str | None = None
    resources_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.mode is None and self.resources_id is None and not self.metadata

    def apply(self, task: dict[str, Any]) -> dict[str, Any]:
        """The full spec, as the daemon will queue it."""
        return {
            "input": task.get("input"),
            "mode": task.get("mode") if task.get("mode") is not None else self.mode,
            "resources_id": task.get("resources_id")
            if task.get("resources_id") is not None
            else self.resources_id,
            "metadata": {**self.metadata, **(task.get("metadata") or {})},
        }


def open_task_files(names: list[str], spool: Callable[[], IO[bytes]]) -> list[TaskFile]:
    """The files to read. Standard input (`-`), and any file that is not a regular one (a
    pipe: `<(...)`, a FIFO), is copied to a spool file, which gives it a size for the
    progress bar and lets it be read again to place a task the daemon refused."""
    files = []
    if names.count("-") > 1:
        raise TaskFileError(
            "<stdin>", "'-' is given more than once, and standard input can be read only once."
        )
    for name in names:
        if name == "-":
            files.append(TaskFile("<stdin>", _copied("<stdin>", sys.stdin.buffer, spool)))
            continue
        path = Path(name)
        if path.is_dir():
            raise TaskFileError(name, "is a directory, not a file of tasks.")
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise TaskFileError(name, f"cannot be read ({exc.strerror or exc}).") from None
        with handle:  # opened once: a pipe's writer may write only once
            regular = stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
            files.append(TaskFile(name, path if regular else _copied(name, handle, spool)))
    return files


def _copied(name: str, source: IO[bytes], spool: Callable[[], IO[bytes]]) -> Path:
    """Where `source`, which can be read only once, was copied to."""
    handle = spool()
    try:
        shutil.copyfileobj(source, handle, READ_SIZE)
        handle.flush()
    except OSError as exc:  # no room in the temporary directory, most likely
        with contextlib.suppress(OSError):  # and what it kept is dropped, not tried again
            handle.close()
        raise TaskFileError(
            name,
            f"cannot be copied to a temporary file in {tempfile.gettempdir()} ({exc.strerror or exc}).",
        ) from None
    return Path(handle.name) if isinstance(handle.name, str) else Path(f"{OWN_FILES}/{handle.name}")


OWN_FILES = "/proc/self/fd"  # where Linux names the files a process has open, named or not


def spool_file() -> IO[bytes]:
    """Where standard input is copied: a file with no name where it can be opened again
    by its descriptor, so that `agl queue -` killed leaves no copy of its input behind."""
    if os.path.isdir(OWN_FILES):
        return tempfile.TemporaryFile(prefix="agl-queue-", suffix=".json")
    return tempfile.NamedTemporaryFile(prefix="agl-queue-", suffix=".json")


# --- reading ----------------------------------------------------------------------------


def iter_tasks(
    task_file: TaskFile, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Each task of the file as (line it starts on, its raw JSON), in order."""
    with task_file.path.open("rb") as handle:
        if _format_of(task_file, handle) == "lines":
            yield from _iter_lines(handle, progress)
        else:
            yield from _iter_values(task_file.name, handle, progress)


def _format_of(task_file: TaskFile, handle: IO[bytes]) -> str:
    if task_file.path.suffix.lower() in JSON_LINES_SUFFIXES and task_file.name != "<stdin>":
        return "lines"
    first = b""
    for line in handle:
        first = line.strip().removeprefix(BOM).strip()
        if first:
            break
    handle.seek(0)
    if first.startswith(b"["):
        return "values"
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return "values"
    return "lines"


def _iter_lines(handle: IO[bytes], progress: Callable[[int], None] | None) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(handle, 1):
        task = line.strip()
        if number == 1:
            task = task.removeprefix(BOM)
        if task:
            yield number, task
        if progress is not None and number % 8192 == 0:
            progress(handle.tell())
    if progress is not None:
        progress(handle.tell())


class _TextStream:
    """A window on a text stream that knows the line and column of every position in it."""

    def __init__(self, name: str, handle: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self.name = name
        self.raw = handle
        self.reader = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="strict")
        self.progress = progress
        self.buffer = ""
        self.pos = 0
        self.eof = False
        self.line_base = 1  # line of buffer[0]
        self.column_base = 0  # characters before buffer[0] on its line

    def fill(self, size: int = READ_SIZE) -> bool:
        """Read more; False at the end of the file."""
        if self.eof:
            return False
        try:
            chunk = self.reader.read(size)
        except UnicodeDecodeError as exc:
            raise self.error(f"not UTF-8 text ({exc.reason}).", len(self.buffer)) from None
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        if self.progress is not None:
            self.progress(self.raw.tell())
        return True

    def compact(self) -> None:
        """Forget what has been read, keeping line and column counts right."""
        done = self.buffer[: self.pos]
        newlines = done.count("\n")
        if newlines:
            self.line_base += newlines
            self.column_base = len(done) - done.rfind("\n") - 1
        else:
            self.column_base += len(done)
        self.buffer = self.buffer[self.pos :]
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not white space ('' at the end), without taking it."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            self.compact()
            if not self.fill():
                return ""

    def line_of(self, pos: int) -> int:
        return self.line_base + self.buffer.count("\n", 0, pos)

    def column_of(self, pos: int) -> int:
        newline = self.buffer.rfind("\n", 0, pos)
        return self.column_base + pos + 1 if newline < 0 else pos - newline

    def error(self, reason: str, pos: int) -> TaskFileError:
        return TaskFileError(self.name, reason, self.line_of(pos))

    def _maybe_cut_short(self, exc: json.JSONDecodeError) -> bool:
        """Whether the value may just go on past what has been read (then read on, up to
        a limit far beyond what the daemon accepts in one request)."""
        if len(self.buffer) - self.pos > MAX_TASK_CHARS:
            return False
        return exc.pos >= len(self.buffer) - 5 or exc.msg.startswith(("Unterminated string", "Invalid \\u"))

    def value(self, decoder: json.JSONDecoder) -> tuple[int, bytes]:
        """The JSON value that starts here, whole, reading on as far as it needs."""
        self.compact()
        size = READ_SIZE
        while True:
            try:
                _, end = decoder.raw_decode(self.buffer, self.pos)
            except _NotJSON as exc:
                raise self.error(f"invalid JSON: {exc}.", self.pos) from None
            except RecursionError:  # far deeper than the daemon takes (pydantic stops at 255)
                raise self.error("invalid JSON: recursion limit exceeded.", self.pos) from None
            except json.JSONDecodeError as exc:
                if self._maybe_cut_short(exc) and self.fill(size):
                    size *= 2
                    continue
                if not self.buffer[exc.pos :].strip():  # at its line, not the file's last one
                    raise self.error(
                        "invalid JSON: the file ends in the middle of this task.", self.pos
                    ) from None
                raise self.error(
                    f"invalid JSON: {exc.msg} (column {self.column_of(exc.pos)}).", exc.pos
                ) from None
            if end == len(self.buffer) and self.fill(size):  # a number may go on
                size *= 2
                continue
            line = self.line_of(self.pos)
            raw = self.buffer[self.pos : end].encode()
            self.pos = end
            return line, raw


class _NotJSON(ValueError):
    """What Python's JSON reader takes and the daemon's does not: `NaN`, `Infinity` and
    `-Infinity`, and numbers beyond a float's range (`1e999`, which it reads as infinity)."""


def _not_json(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _NotJSON(f"the number {text} is beyond a float's range")
    return number


def _whole(text: str) -> int:
    """An integer as the daemon reads one: with more digits than a float's range has, it
    is refused (and Python's own reader would stop past 4,300 digits with a ValueError)."""
    if len(text.lstrip("-")) > FLOAT_DIGITS:
        raise _NotJSON(f"the number {text[:20]}… ({len(text):,} digits) is beyond a float's range")
    return int(text)


def _iter_values(
    name: str, handle: IO[bytes], progress: Callable[[int], None] | None
) -> Iterator[tuple[int, bytes]]:
    stream = _TextStream(name, handle, progress)
    decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite, parse_int=_whole)
    if stream.peek() != "[":
        while stream.peek():
            yield stream.value(decoder)
        return
    stream.pos += 1
    if stream.peek() == "]":
        stream.pos += 1
    else:
        while True:
            yield stream.value(decoder)
            after = stream.peek()
            if after == ",":
                stream.pos += 1
                if stream.peek() == "]":
                    raise stream.error("invalid JSON: a trailing comma ends the array.", stream.pos)
                continue
            if after == "]":
                stream.pos += 1
                break
            if not after:
                raise stream.error("invalid JSON: the array is never closed with ']'.", stream.pos)
            raise stream.error(
                f"invalid JSON: expected ',' or ']' after a task (column {stream.column_of(stream.pos)}).",
                stream.pos,
            )
    if stream.peek():
        raise stream.error("invalid JSON: there is more after the array.", stream.pos)


# --- checking ---------------------------------------------------------------------------


_JSON_POSITION = re.compile(r" at line \d+ column (\d+)$")
# pydantic's reader's words for a \u escape of half a UTF-16 pair alone, said plainly.
_LONE_SURROGATE = "a \\u escape is half of a UTF-16 surrogate pair, without its other half"
_PLAIN_WORDS = {
    "unexpected end of hex escape": _LONE_SURROGATE,
    "lone leading surrogate in hex escape": _LONE_SURROGATE,
}
_KINDS = {"[": "an array", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}


def json_kind(raw: bytes) -> str:
    """What the JSON value `raw` (no object) is, as JSON names it: read off its first character."""
    return _KINDS.get(raw.lstrip()[:1].decode(errors="replace"), "a number")


def judged(raw: bytes) -> tuple[Any, str | None]:
    """The task as read, and why it cannot be queued (None if it can).

    The daemon's own rules, so that a dry run's verdict holds: its JSON reader (orjson,
    which refuses `NaN` and `1e999`), its depth limit for the task inside a request body,
    then `plain_task` or else `TaskSpec`, whose errors say what is wrong.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, _json_problem(raw) or f"invalid JSON: {exc.msg}."
    # a task nesting that deeply has as many brackets: counting them costs less than a dump
    if raw.count(b"[") + raw.count(b"{") >= MAX_DEPTH - _BODY_LEVELS and too_deep([[value]]):
        return (
            value,
            f"nested more than {MAX_DEPTH - _BODY_LEVELS} levels deep, deeper than the daemon keeps.",
        )
    if plain_task(value) is None:
        try:
            TaskSpec.model_validate(value)
        except ValidationError as exc:
            return value, _describe(exc, raw)
    return value, None


def _json_problem(raw: bytes) -> str | None:
    """pydantic's account of JSON that orjson refused, which gives its column; None where
    pydantic's reader takes what orjson's does not (`NaN`, `1e999`)."""
    try:
        TaskSpec.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors(include_url=False)[0]["type"] == "json_invalid":
            return _describe(exc, raw)
    return None


def _describe(exc: ValidationError, raw: bytes) -> str:
    first = exc.errors(include_url=False)[0]
    kind, loc, message = first["type"], first["loc"], first["msg"]
    if kind == "json_invalid":
        error = str(first.get("ctx", {}).get("error", message))
        words, position = _JSON_POSITION.sub("", error), _JSON_POSITION.search(error)
        column = f" (column {position[1]})" if position else ""
        return f"invalid JSON: {_PLAIN_WORDS.get(words, words)}{column}."
    if kind == "model_type" and not loc:
        return f"a task must be a JSON object, not {json_kind(raw)}."
    if kind == "missing" and loc == ("input",):
        return f"a task needs an 'input' field (a task has {TASK_FIELDS})."
    if kind == "extra_forbidden":
        return f"unknown field '{loc[0]}' (a task has {TASK_FIELDS})."
    if loc == ("mode",):
        return f"mode must be 'train', 'val', 'test' or null, not {json.dumps(first['input'])}."
    if loc == ("metadata",):
        return "metadata must be a JSON object."
    if kind == "value_error":
        message = str(first.get("ctx", {}).get("error", message))
    where = ".".join(str(part) for part in loc)
    return f"{where}: {message[:1].lower()}{message[1:]}." if where else f"{message}."


class CheckedTask(NamedTuple):
    """A task that can be queued, where it is, and as it was read to check it."""

    file: str
    line: int
    raw: bytes  # its JSON as the file has it
    value: Any  # that JSON read, to fill in the command line's defaults without reading it again


def checked_tasks(
    files: list[TaskFile], progress: Callable[[int], None] | None = None
) -> Iterator[CheckedTask]:
    """Every task of the files in order; raises at the first task that cannot be queued.
    `progress` is told the bytes read across all the files."""
    done = 0
    for task_file in files:
        report = None if progress is None else _offset(progress, done)
        found = False
        for line, raw in iter_tasks(task_file, report):
            value, reason = judged(raw)
            if reason is not None:
                raise TaskFileError(task_file.name, reason, line)
            found = True
            yield CheckedTask(task_file.name, line, raw, value)
        if not found:  # most likely a file not written yet, or the wrong one
            raise TaskFileError(task_file.name, "there are no tasks in it.")
        done += task_file.size


def _offset(progress: Callable[[int], None], done: int) -> Callable[[int], None]:
    return lambda position: progress(done + position)


# --- encoding ---------------------------------------------------------------------------


@dataclass
class Chunk:
    """Tasks ready to upload: a JSON array, and what is needed to report on them."""

    body: bytes
    lines: list[tuple[str, int]]  # (file, line) of each task, to place the daemon's complaints
    specs: list[dict[str, Any]] | None  # the full specs, when the caller needs them


def chunks(
    tasks: Iterable[CheckedTask],
    defaults: Defaults,
    max_tasks: int,
    max_bytes: int,
    keep_specs: bool,
    most: int | None = None,
) -> Iterator[Chunk]:
    """The tasks cut into uploads of at most `max_tasks` tasks, each a JSON array of at
    most `max_bytes` unless it holds one larger task; none past `most` bytes, the most one
    request may carry (a task too large for that is refused at its line)."""
    decode = keep_specs or not defaults.empty
    cut = max_bytes if most is None else min(max_bytes, most)
    parts: list[bytes] = []
    lines: list[tuple[str, int]] = []
    specs: list[dict[str, Any]] = []
    size = 1  # of the array: its brackets, and each task with a comma (one bracket for the last)
    for name, line, raw, value in tasks:
        spec = None
        if decode:
            spec = defaults.apply(value)
            raw = orjson.dumps(spec)
        cost = len(raw) + 1
        if parts and size + cost > cut:
            yield Chunk(b"[" + b",".join(parts) + b"]", lines, specs if keep_specs else None)
            parts, lines, specs, size = [], [], [], 1
        if most is not None and size + cost > most:  # alone in its chunk
            raise TaskFileError(
                name,
                f"this task is {len(raw):,} bytes, more than one request to the daemon may carry"
                " (agl serve --max-body-size).",
                line,
            )
        parts.append(raw)
        lines.append((name, line))
        if spec is not None:
            specs.append(spec)
        size += cost
        if len(parts) >= max_tasks:
            yield Chunk(b"[" + b",".join(parts) + b"]", lines, specs if keep_specs else None)
            parts, lines, specs, size = [], [], [], 1
    if parts:
        yield Chunk(b"[" + b",".join(parts) + b"]", lines, specs if keep_specs else None)
