"""`agl compact`: the database file shrinks to what it holds, everything in it is kept, and
it runs only while no daemon does."""

from __future__ import annotations

import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cli_runner import agl, as_on_a_terminal, assert_one_line_error
from conftest import FakeClock
from daemon import Daemon, env_without_agl, wait_until
from test_retention import reported

from agl_cli.cli import output
from agl_cli.cli.context import Globals, Target, resolve
from agl_cli.models import TaskStatus
from agl_cli.store import SQLiteStore
from agl_cli.store.compaction import SUFFIX, compact
from agl_cli.store.maintenance import compact_state_dir

BIG = "x" * 100_000


def popen_agl_in(state_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agl_cli", "--state-dir", str(state_dir), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env_without_agl(),
    )


def kill_while_it_writes(command: subprocess.Popen[bytes], copy: Path) -> None:
    """`kill -9` the command as soon as it begins writing `copy`, before it is done."""
    deadline = time.monotonic() + 30
    while not copy.exists():  # looked at without a pause: the copy takes a fraction of a second
        assert command.poll() is None and time.monotonic() < deadline, "the copy was never begun"
    command.kill()
    command.wait(10)
    assert command.returncode == -signal.SIGKILL  # not done: killed while copying


def test_a_compacted_file_holds_all_it_held_in_the_space_it_needs(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "agl.db"
    store = SQLiteStore(path, clock=clock, rollout_retention=60)
    for n in range(40):
        reported(store, float(n), metadata={"big": BIG})
    clock.advance(61)
    kept = reported(store, 1.0)
    assert store.prune_rollouts(100) == 40
    store.close()
    path.chmod(0o600)
    seen: list[tuple[int, int]] = []
    compacted = compact(path, progress=lambda written, total: seen.append((written, total)))
    assert compacted.before > 4_000_000 and compacted.after < 500_000
    assert (path.stat().st_size, stat.S_IMODE(path.stat().st_mode)) == (compacted.after, 0o600)
    assert seen[-1][0] == seen[-1][1] > 0
    assert not path.with_name(path.name + SUFFIX).exists()
    reopened = SQLiteStore(path, clock=clock, rollout_retention=60)
    counts = reopened.counts()
    assert (counts.rollouts, counts.tasks[TaskStatus.COMPLETED], reopened.last_seq()) == (1, 41, 41)
    assert [stored.rollout.rollout_id for stored in reopened.rollouts_after(0)] == [kept]
    reopened.close()


def test_compact_waits_for_the_daemon_to_stop_then_shrinks_its_file(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--rollout-retention", "0.5")
    ids = daemon.queue(*range(30))
    for rollout_id in ids:
        assert daemon.claim() is not None
        daemon.report(rollout_id, metadata={"big": BIG})
    wait_until(lambda: daemon.metric("agl_rollouts_pruned_total") == 30, "the results to be deleted", 30)
    database = daemon.state_dir / "agl.db"
    assert daemon.proc is not None
    refused = agl("compact", daemon=daemon)
    assert_one_line_error(
        refused, f"agl is running (pid {daemon.proc.pid}) on {daemon.state_dir}: stop it first"
    )
    assert daemon.terminate() == 0
    before = database.stat().st_size
    result = agl("compact", daemon=daemon)
    assert result.returncode == 0, result.stderr
    after = database.stat().st_size
    assert after < before / 4
    shown = f"Compacted {database}: {output.size(before)} to {output.size(after)} ({output.size(before - after)} given back).\n"
    assert result.stdout == shown
    assert not (daemon.state_dir / "agl.pid").exists()
    daemon.start()  # and everything is as it was
    status = daemon.status()
    assert (status["tasks"]["completed"], status["rollouts"], status["last_seq"]) == (30, 0, 30)


def test_a_crashed_daemon_s_address_gets_no_token_while_its_directory_is_compacted(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The compaction holds the state directory as a daemon does; the address the crashed
    daemon left may be another program's by now."""
    daemon = make_daemon()
    daemon.queue("x")
    daemon.kill()  # its address file stays
    meanwhile: list[Target] = []
    compact_state_dir(
        daemon.state_dir, lambda done, total: meanwhile.append(resolve(Globals(state_dir=daemon.state_dir)))
    )
    assert meanwhile and all(target.token is None for target in meanwhile)


def test_nothing_to_compact_or_not_an_agl_database_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        agl("compact", state_dir=tmp_path / "none"), f"There is no state directory {tmp_path / 'none'}"
    )
    (tmp_path / "a-file").write_text("notes")
    assert_one_line_error(
        agl("compact", state_dir=tmp_path / "a-file"),
        f"The state directory {tmp_path / 'a-file'} is a file, not a directory.",
    )
    assert_one_line_error(
        agl("compact", state_dir=tmp_path),
        f"There is no database at {tmp_path / 'agl.db'}: nothing to compact.",
    )
    (tmp_path / "agl.db").write_bytes(b"not a database at all" * 100)
    refused = agl("compact", state_dir=tmp_path)
    assert_one_line_error(refused, "Cannot compact")
    assert refused.stderr.strip() == f"agl: Cannot compact {tmp_path / 'agl.db'}: file is not a database."
    assert (tmp_path / "agl.db").read_bytes() == b"not a database at all" * 100


def test_a_compaction_killed_midway_leaves_the_file_as_it_was(
    make_daemon: Callable[..., Daemon], tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "state" / "agl.db"
    path.parent.mkdir(mode=0o700)
    store = SQLiteStore(path, clock=clock)
    ids = [reported(store, float(n), metadata={"big": BIG + str(n)}) for n in range(400)]  # 40 MB to copy
    store.close()
    copy = path.with_name(path.name + SUFFIX)
    journal = copy.with_name(copy.name + "-journal")  # SQLite's, beside the copy it writes
    kill_while_it_writes(popen_agl_in(path.parent, "compact"), journal)
    daemon = make_daemon(state_dir=path.parent)  # takes over the pidfile it left; the copy is not read
    assert not copy.exists() and not journal.exists()
    kept = daemon.rollouts()
    assert [rollout["rollout_id"] for rollout in kept] == ids
    assert daemon.terminate() == 0
    result = agl("compact", state_dir=path.parent)  # the next compaction starts afresh
    assert result.returncode == 0, result.stderr
    assert not copy.exists()


def test_a_compaction_stopped_by_ctrl_c_says_so_and_leaves_the_file_as_it_was(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "state" / "agl.db"
    path.parent.mkdir(mode=0o700)
    store = SQLiteStore(path, clock=clock)
    for n in range(400):  # 40 MB to copy
        reported(store, float(n), metadata={"big": BIG + str(n)})
    store.close()
    before = path.read_bytes()
    copy = path.with_name(path.name + SUFFIX)
    command = subprocess.Popen(
        [sys.executable, "-m", "agl_cli", "--state-dir", str(path.parent), "compact"],
        stderr=subprocess.PIPE,
        env=env_without_agl(),
        preexec_fn=as_on_a_terminal,
    )
    deadline = time.monotonic() + 30
    while not copy.with_name(copy.name + "-journal").exists():  # as it begins writing its copy
        assert command.poll() is None and time.monotonic() < deadline, "the copy was never begun"
    command.send_signal(signal.SIGINT)
    _, stderr = command.communicate(timeout=30)
    assert (command.returncode, stderr) == (130, b"agl: Interrupted; the database is as it was.\n")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["agl.db"]


def test_status_and_metrics_say_how_large_the_database_is_and_what_compact_would_give_back(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--rollout-retention", "0.5", "--max-db-size", "50000000")
    empty = daemon.status()["database"]
    for rollout_id in daemon.queue(*range(30)):
        assert daemon.claim() is not None
        daemon.report(rollout_id, metadata={"big": BIG})
    wait_until(lambda: daemon.metric("agl_rollouts_pruned_total") == 30, "the results to be deleted", 30)

    before = daemon.status()["database"]
    scraped = {name: daemon.metric(f"agl_{name}") for name in ("database_bytes", "database_free_bytes")}
    after = daemon.status()["database"]

    assert before["bytes"] > empty["bytes"] + 1_000_000  # 30 results of 100 KB made it grow
    assert before["free_bytes"] > 1_000_000  # and their pages are free inside once deleted
    assert (before["max_bytes"], daemon.metric("agl_database_max_bytes")) == (50_000_000, 50_000_000)
    # a database never shrinks by itself: the scrape's size is between the two reads around it
    assert before["bytes"] <= scraped["database_bytes"] <= after["bytes"]
    assert 0.9 < before["disk_free_bytes"] / shutil.disk_usage(daemon.state_dir).free < 1.1
    shown = " ".join(agl("status", daemon=daemon).stdout.split())  # as one line, however it wraps
    assert "free inside: agl compact gives it back), log " in shown and " free on disk" in shown
    assert f"of at most 50.0 MB ({output.size(before['free_bytes'])} free inside" in shown

    assert daemon.terminate() == 0
    assert agl("compact", daemon=daemon).returncode == 0
    compacted = daemon.start().status()["database"]
    assert compacted["free_bytes"] == 0  # given back: the file is smaller by about as much
    assert compacted["bytes"] < before["bytes"] - before["free_bytes"] * 0.9


def test_status_mentions_no_free_space_inside_a_new_database(daemon: Daemon) -> None:
    assert daemon.status()["database"]["free_bytes"] < 1_000_000
    shown = " ".join(agl("status", daemon=daemon).stdout.split())
    assert "free inside" not in shown and " free on disk" in shown


def test_a_memory_daemon_has_no_log_and_no_disk(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--memory")
    daemon.queue(*range(10))
    space = daemon.status()["database"]
    assert space["bytes"] > 0 and (space["log_bytes"], space["disk_free_bytes"]) == (0, None)
    assert daemon.metric("agl_database_bytes") == space["bytes"]
    assert "agl_disk_free_bytes" not in daemon.get("/metrics").text
    shown = " ".join(agl("status", daemon=daemon).stdout.split())
    assert f"database {output.size(space['bytes'])}, in memory" in shown


def test_compacting_a_file_with_nothing_free_says_so(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    assert daemon.terminate() == 0
    assert agl("compact", daemon=daemon).returncode == 0  # whatever the new file had free
    result = agl("compact", daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(" (it had no free space to give back).\n"), result.stdout
