"""The daemon's logging: uvicorn's human lines, or one JSON object per line (`--log-json`).

Human lines begin with the time when they go to a file or a pipe (`agl serve --detach`
writes `agl.log`), but not on a terminal, nor to journald, which times them itself. On a
terminal they are coloured, as uvicorn colours them, unless NO_COLOR is set.

Both are a `logging.config.dictConfig` dictionary handed to uvicorn as its `log_config`,
so that uvicorn applies it instead of its own and agl's loggers and uvicorn's (error and
access) go through the same handlers. JSON lines are for journald, Loki and the like:
every line on stderr parses, and fields a record carries (`extra=...`, the parts of an
access line) are fields of the object rather than text in the message.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

import orjson
from uvicorn.config import LOGGING_CONFIG

# What every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}
# What a human line begins with where it is timed (see the module's docstring).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIMED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
# uvicorn's access records carry these as their arguments, in this order.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, then its extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            body.update(zip(_ACCESS_FIELDS, record.args, strict=False))
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in body:
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(body, default=repr).decode()


class Repeats(logging.Filter):
    """At most `most` lines a minute of each warning or error (by its wording, its
    arguments aside): a worker stuck sending bad reports, a client sending what is not
    HTTP, or a full disk failing every checkpoint must not fill the disk with the log. The
    first line of the next minute counts those left out (`left_out` in JSON)."""

    def __init__(self, most: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.most, self.window = most, window
        self._windows: dict[tuple[str, object], tuple[float, int]] = {}  # wording: its window's start, lines
        self._left_out: collections.Counter[tuple[str, object]] = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        start, lines = self._windows.get(key, (record.created, 0))
        if record.created >= start + self.window:
            start, lines = record.created, 0
        if lines >= self.most:
            self._left_out[key] += 1
            return False
        self._windows[key] = (start, lines + 1)
        left_out = self._left_out.pop(key, 0)
        if left_out:
            record.msg = f"{record.msg} (and {left_out} more like it, left out of the log)"
            record.left_out = left_out
        return True


def log_config(level: str, json_lines: bool) -> dict[str, Any]:
    """The logging configuration for uvicorn's `log_config`, agl's loggers included."""
    level = level.upper()
    repeats = {"repeats": {"()": Repeats}}
    if not json_lines:
        # uvicorn's own configuration; agl's loggers print the way uvicorn's do.
        config = copy.deepcopy(LOGGING_CONFIG)
        timed, colourless = _timed(), bool(os.environ.get("NO_COLOR"))  # set and not empty: no-color.org
        for formatter in config["formatters"].values():
            if timed:
                formatter["fmt"] = "%(asctime)s " + formatter["fmt"]
                formatter["datefmt"] = TIME_FORMAT
            if colourless:
                formatter["use_colors"] = False
        config["filters"] = repeats
        config["handlers"]["default"]["filters"] = ["repeats"]
        config["loggers"]["agl"] = {"handlers": ["default"], "level": level, "propagate": False}
        return config
    to_stderr = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stderr",
        "filters": ["repeats"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": repeats,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": to_stderr},
        "loggers": {
            "agl": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        # Libraries' records and Python warnings (see `capture_warnings`) end up here.
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def capture_warnings(json_lines: bool) -> None:
    """In JSON mode, Python warnings become log records, so no plain line slips into stderr."""
    if json_lines:
        logging.captureWarnings(True)


def announce(message: str, json_lines: bool, **fields: Any) -> None:
    """Print a line that must appear whatever the log level (the address at start-up)."""
    if not json_lines:
        print(f"{time.strftime(TIME_FORMAT)} {message}" if _timed() else message, file=sys.stderr, flush=True)
        return
    record = logging.makeLogRecord(
        {"name": "agl", "levelno": logging.INFO, "levelname": "INFO", "msg": message, **fields}
    )
    print(JsonFormatter().format(record), file=sys.stderr, flush=True)


def _timed() -> bool:
    return not sys.stderr.isatty() and not _to_the_journal()


def _to_the_journal() -> bool:
    """Whether stderr is journald's stream, which times each line itself. systemd names
    that stream in JOURNAL_STREAM (device:inode); the variable alone says nothing, as every
    program started from a service, a detached daemon writing to agl.log too, inherits it."""
    named = os.environ.get("JOURNAL_STREAM")
    if not named:
        return False
    try:
        stream = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or replaced by an object with no file
        return False
    return named == f"{stream.st_dev}:{stream.st_ino}"


def untimed(line: str) -> str:
    """A human line without the time it may begin with."""
    return TIMED.sub("", line, count=1) if TIMED.match(line) else line
