"""`agl serve --log-json`: one JSON object per line, from start to a SIGTERM stop."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_runner import agl
from daemon import READY_LINE, Daemon, env_without_agl, fetch

from agl_cli import __version__
from agl_cli.server.logs import TIMED, JsonFormatter, Repeats

FIELDS = {"time", "level", "logger", "message"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object; fails on the first line that is not one."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict) and record.keys() >= FIELDS, line
        records.append(record)
    return records


def test_a_json_daemon_logs_only_json_from_start_to_stop(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--log-json", "--log-level", "debug")
    daemon.queue("x")
    assert daemon.claim() is not None
    assert daemon.get("/resources/missing").status_code == 404
    assert daemon.get("/metrics").status_code == 200
    assert daemon.terminate() == 0
    records = json_lines(daemon.log_path.read_text())

    started = records[0]
    assert (started["logger"], started["level"], started["address"]) == ("agl", "info", daemon.url)
    assert READY_LINE.search(started["message"])
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {
        ("POST", "/v1/tasks", 201),
        ("GET", "/task", 200),
        ("GET", "/resources/missing", 404),
        ("GET", "/metrics", 200),
    }
    messages = [r["message"] for r in records if r["logger"] == "uvicorn.error"]
    assert "Application startup complete." in messages
    assert "Application shutdown complete." in messages
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)


def test_json_logs_go_to_stderr_and_nothing_to_stdout(tmp_path: Path) -> None:
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    command = [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--state-dir", str(tmp_path / "s")]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*command, "--log-json", "--log-level", "debug"], stdout=out, stderr=err, env=env_without_agl()
        )
    try:
        deadline = time.monotonic() + 20
        while not (match := READY_LINE.search(stderr.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.02)
        url = match.group(1)
        while not _ready(url):
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.02)
        assert fetch("GET", url + "/task", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert stdout.read_text() == ""
    assert any(r["logger"] == "uvicorn.access" for r in json_lines(stderr.read_text()))


def test_without_log_json_the_output_stays_human_each_line_timed_in_a_file(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--log-level", "info")
    assert daemon.terminate() == 0
    lines = daemon.log_path.read_text().splitlines()
    assert all(TIMED.match(line) for line in lines), lines
    said = daemon.said()
    assert said[0] == f"agl {__version__} listening on {daemon.url} (store: {daemon.state_dir / 'agl.db'})"
    assert "INFO:     Application startup complete." in said


@pytest.mark.parametrize("no_color", ["", "1"], ids=["coloured", "NO_COLOR"])
def test_on_a_terminal_the_lines_are_coloured_unless_no_color_is_set(tmp_path: Path, no_color: str) -> None:
    """NO_COLOR set to anything but nothing turns colour off, as no-color.org asks."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--memory", "--log-level", "info"],
        stdout=follower, stderr=follower, env={**env_without_agl(), "NO_COLOR": no_color},
    )  # fmt: skip
    os.close(follower)
    shown, deadline = b"", time.monotonic() + 60
    try:
        while b"startup complete" not in shown:
            if not select.select([leader], [], [], max(deadline - time.monotonic(), 0))[0]:
                break
            shown += os.read(leader, 65536)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        os.close(leader)
    assert b"INFO" in shown and b"startup complete" in shown, shown
    assert (b"\x1b[" in shown) == (no_color == ""), shown


@pytest.mark.parametrize("named", ["its stderr", "another stream"])
def test_lines_to_journald_are_not_timed_as_it_times_them_and_others_are(tmp_path: Path, named: str) -> None:
    """systemd names the stream it reads in JOURNAL_STREAM; the programs a service starts
    inherit the variable, their output going elsewhere (a file, such as agl.log)."""
    reader, writer = os.pipe()
    elsewhere = tmp_path / "journal"
    elsewhere.touch()
    stream = os.fstat(writer) if named == "its stderr" else elsewhere.stat()
    journald = {**env_without_agl(), "JOURNAL_STREAM": f"{stream.st_dev}:{stream.st_ino}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl_cli", "serve", "--port", "0", "--memory"],
        stdout=subprocess.DEVNULL, stderr=writer, env=journald,
    )  # fmt: skip
    os.close(writer)
    try:
        with os.fdopen(reader) as stderr:
            first = stderr.readline()
            listening = f"agl {__version__} listening on "
            assert first.startswith(listening) if named == "its stderr" else TIMED.match(first), first
            assert listening in first
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_detached_json_daemon_is_found_and_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = agl("serve", "--detach", "--port", "0", "--log-json", state_dir=state)
    assert started.returncode == 0, started.stderr
    match = re.search(r"\(pid (\d+)\)", started.stdout)
    assert match, started.stdout
    pid = int(match.group(1))
    try:
        assert agl("stop", state_dir=state).returncode == 0
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    assert any(r["logger"] == "agl" for r in json_lines((state / "agl.log").read_text()))


def test_extra_fields_and_exceptions_become_fields() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.getLogger("agl.test").makeRecord(
            "agl.test",
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("twice",),
            sys.exc_info(),
            extra={"task": "t-1"},
        )
    body = json.loads(JsonFormatter().format(record))
    assert (body["level"], body["logger"], body["message"], body["task"]) == (
        "error",
        "agl.test",
        "failed twice",
        "t-1",
    )
    assert "ValueError: bad" in body["exception"]


def _ready(url: str) -> bool:
    try:
        return fetch("GET", url + "/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_warning_is_logged_ten_times_a_minute_then_the_rest_are_counted() -> None:
    repeats = Repeats()

    def warning(logger: str, at: float, reason: str) -> logging.LogRecord:
        fields = {"name": logger, "levelno": logging.WARNING, "levelname": "WARNING", "created": at}
        return logging.makeLogRecord({**fields, "msg": "A report was refused: %s", "args": (reason,)})

    burst = [warning("agl.legacy", i / 10, f"reason {i}") for i in range(25)]
    assert [r.getMessage() for r in burst if repeats.filter(r)] == [
        f"A report was refused: reason {i}" for i in range(10)
    ]
    theirs = [warning("uvicorn.error", i / 10, "theirs") for i in range(25)]
    assert sum(repeats.filter(record) for record in theirs) == 10  # each logger's wording apart
    late = warning("agl.legacy", 60.0, "late")
    assert repeats.filter(late)
    assert late.getMessage() == "A report was refused: late (and 15 more like it, left out of the log)"
    assert JsonFormatter().format(late).count('"left_out":15') == 1
