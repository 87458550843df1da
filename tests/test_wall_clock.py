"""A step of the wall clock while the daemon runs (NTP correcting a bad source, `date -s`)
moves no time-out: a claim times out when its time has passed, not when the clock says so,
and the store's clock catches up with the wall clock gradually.

The daemons here run with a `sitecustomize` that adds to `time.time()` what a file says, as
a stepped clock would; the monotonic clocks are left alone, as a step leaves them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agl_cli.store import clock
from agl_cli.store.clock import CATCH_UP, SteadyClock
from tests.daemon import Daemon, wait_until

STEPPED_CLOCK = """
import os, time

_offset_file = os.environ["STEPPED_CLOCK_FILE"]
_wall = time.time


def _stepped() -> float:
    with open(_offset_file) as offset:
        return _wall() + float(offset.read() or 0)


time.time = _stepped
"""
AN_HOUR = 3600.0
StartDaemon = Callable[..., Daemon]


@pytest.fixture
def stepped(tmp_path: Path) -> Path:
    """The file whose number of seconds the daemon's wall clock is moved by."""
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(STEPPED_CLOCK)
    offset = tmp_path / "offset"
    offset.write_text("0")
    return offset


@pytest.fixture
def make_stepped_daemon(tmp_path: Path, stepped: Path) -> Iterator[StartDaemon]:
    """Start daemons whose wall clock `stepped` moves; all are killed at the end."""
    daemons: list[Daemon] = []

    def make(*args: str) -> Daemon:
        path = os.pathsep.join(filter(None, [str(tmp_path / "shim"), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": path, "STEPPED_CLOCK_FILE": str(stepped)}
        daemon = Daemon(tmp_path / "state", *args, env=env)
        daemons.append(daemon)
        return daemon.start()

    yield make
    for daemon in daemons:
        daemon.close()


class Machine:
    """A wall clock and the time passed, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall, self.passed = 1_000_000.0, 50.0
        monkeypatch.setattr(time, "time", lambda: self.wall)
        monkeypatch.setattr(clock, "elapsed", lambda: self.passed)

    def wait(self, seconds: float) -> None:
        self.wall += seconds
        self.passed += seconds


def test_the_steady_clock_goes_on_through_a_step_and_catches_up_gradually(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = Machine(monkeypatch)
    steady = SteadyClock()
    assert steady() == machine.wall

    machine.wall += AN_HOUR
    machine.wait(10)
    assert steady() == pytest.approx(1_000_010 + 10 * CATCH_UP)  # not an hour ahead
    stepped, apart = steady.take_steps()
    assert stepped == AN_HOUR and apart == pytest.approx(AN_HOUR - 10 * CATCH_UP)
    assert steady.take_steps()[0] == 0  # each step is told once

    machine.wait(AN_HOUR / CATCH_UP)
    assert steady() == pytest.approx(machine.wall)  # caught up


def test_the_steady_clock_never_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine(monkeypatch)
    steady = SteadyClock()
    readings = [steady()]
    machine.wall -= AN_HOUR
    for _ in range(100):
        machine.wait(1)
        readings.append(steady())
    assert readings == sorted(readings)
    assert readings[-1] - readings[0] == pytest.approx(100 * (1 - CATCH_UP))  # slower, until it has caught up


def step_said(daemon: Daemon) -> bool:
    """Whether the daemon has logged the step: a sweep has looked for expired claims since."""
    return any("The wall clock stepped" in line for line in daemon.said())


def test_a_step_forward_times_out_no_claim(make_stepped_daemon: StartDaemon, stepped: Path) -> None:
    daemon = make_stepped_daemon("--task-timeout", "60")
    [rollout_id] = daemon.queue("q")
    assert daemon.claim()["rollout_id"] == rollout_id

    stepped.write_text(str(AN_HOUR))
    wait_until(lambda: step_said(daemon), "the daemon to log the step")

    assert daemon.claim() is None  # not handed out again
    assert daemon.api("GET", f"/v1/tasks/{rollout_id}").json()["status"] == "claimed"
    assert any("+3600.0 s" in line for line in daemon.said())


def test_a_step_back_does_not_hold_a_dead_workers_claim(
    make_stepped_daemon: StartDaemon, stepped: Path
) -> None:
    daemon = make_stepped_daemon("--task-timeout", "1")
    [rollout_id] = daemon.queue("q")
    assert daemon.claim()["rollout_id"] == rollout_id  # and the worker dies

    stepped.write_text(str(-AN_HOUR))
    handed = daemon.get("/task", params={"wait": 20}).json()["task"]

    assert handed is not None and handed["rollout_id"] == rollout_id  # after its 1 s, not an hour
    assert handed["num_claims"] == 2


def test_a_restart_goes_on_catching_up_instead_of_stepping(
    make_stepped_daemon: StartDaemon, stepped: Path
) -> None:
    """The clock was an hour ahead when the daemon started, then was set right: a claim
    made since, by a worker that then died, is handed out again after its time-out, also
    when the daemon restarts before its clock has caught up with the wall clock."""
    stepped.write_text(str(AN_HOUR))
    daemon = make_stepped_daemon("--task-timeout", "1")
    stepped.write_text("0")
    wait_until(lambda: step_said(daemon), "the daemon to log the step")  # and to keep how far apart
    [rollout_id] = daemon.queue("q")
    assert daemon.claim()["rollout_id"] == rollout_id  # and the worker dies

    daemon.kill()
    daemon.start()
    handed = daemon.get("/task", params={"wait": 20}).json()["task"]

    assert handed is not None and handed["rollout_id"] == rollout_id
    assert any(
        "agl's clock goes on 35" in line and "s ahead of the wall clock" in line for line in daemon.said()
    )


def test_status_counts_uptime_in_time_passed(make_stepped_daemon: StartDaemon, stepped: Path) -> None:
    daemon = make_stepped_daemon()
    stepped.write_text(str(-AN_HOUR))
    wait_until(lambda: step_said(daemon), "the daemon to log the step")

    status = daemon.status()

    assert 0 <= status["uptime"] < AN_HOUR
