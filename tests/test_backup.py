"""`agl backup` and `agl restore`: a copy of a run, made while the daemon serves, holds
every write it had answered; a daemon starts on it; putting it back keeps the database it
replaces; and a copy that is not whole never takes a file's name."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_runner import agl, agl_into, assert_one_line_error
from daemon import Daemon, env_without_agl, free_port
from test_compact import kill_while_it_writes, popen_agl_in

from agl_cli.cli import output
from agl_cli.models import TaskStatus
from agl_cli.store import SQLiteStore, Store, TaskSpec, backups, maintenance
from agl_cli.store.backups import RESTORING
from agl_cli.store.compaction import SUFFIX as COMPACTING
from agl_cli.store.database import BACKUP_INFIX

PROMPT = {"resource_type": "prompt_template", "template": "Answer {q}", "engine": "f-string"}


def a_run(daemon: Daemon) -> None:
    """Tasks in every state, results, a bundle and a paused queue."""
    ids = daemon.queue(*range(6), mode="train")
    for rollout_id in ids[:3]:
        assert (daemon.claim() or {}).get("rollout_id") == rollout_id
    daemon.report(ids[0], final_reward=1.0)
    daemon.report(ids[1], final_reward=0.25)
    daemon.api("POST", "/v1/tasks/cancel", json={"rollout_ids": [ids[5]]}).raise_for_status()
    daemon.publish({"prompt": PROMPT})
    daemon.api("POST", "/v1/queue/pause").raise_for_status()


def seen(daemon: Daemon) -> dict[str, Any]:
    """Everything a user sees of a run, to compare two daemons by."""
    status = daemon.status()
    return {
        "tasks": daemon.api("GET", "/v1/tasks", params={"limit": 1000}).json()["tasks"],
        "rollouts": daemon.rollouts(),
        "resources": daemon.api("GET", "/v1/resources").json(),
        **{key: status[key] for key in ("tasks", "rollouts", "last_seq", "resources", "paused")},
    }


@pytest.mark.parametrize("store", ["durable", "memory"])
def test_a_backup_holds_every_answered_write_and_a_daemon_starts_on_it(
    make_daemon: Callable[..., Daemon], tmp_path: Path, store: str
) -> None:
    daemon = make_daemon(*(["--memory"] if store == "memory" else []))
    a_run(daemon)
    before = seen(daemon)
    copy = tmp_path / "run.db"

    saved = agl("backup", str(copy), daemon=daemon)

    assert saved.returncode == 0, saved.stderr
    assert saved.stdout == (
        f"Saved a copy of the daemon's store to {copy}: 6 tasks, 2 rollouts and 1 resource"
        f" bundle ({output.size(copy.stat().st_size)}).\n"
    )
    assert oct(copy.stat().st_mode & 0o777) == oct(0o600)  # a run is its owner's
    assert copy.read_bytes()[18:20] == b"\x01\x01"  # one file: SQLite's format without a log
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("run")] == ["run.db"]
    daemon.queue("after the copy")  # not in it
    restored = agl("restore", str(copy), state_dir=tmp_path / "elsewhere")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"Restored {copy} into {tmp_path / 'elsewhere' / 'agl.db'}: 6 tasks")
    assert "replaced" not in restored.stdout  # there was none
    assert seen(make_daemon(state_dir=tmp_path / "elsewhere")) == before


def test_a_backup_leaves_no_file_behind_in_the_daemon_and_sends_a_database(daemon: Daemon) -> None:
    daemon.queue(*range(3))
    refused = daemon.get("/v1/backup")
    assert (refused.status_code, refused.json()) == (401, {"detail": "A bearer token is required."})

    response = daemon.api("GET", "/v1/backup")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.sqlite3"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content.startswith(b"SQLite format 3\x00")
    assert sorted(path.name for path in daemon.state_dir.iterdir() if BACKUP_INFIX in path.name) == []


def test_copies_left_half_made_beside_the_database_are_deleted_when_the_store_opens(tmp_path: Path) -> None:
    journal = f"{COMPACTING}-journal"  # SQLite's, beside the copy a killed VACUUM INTO was writing
    copies = (f"{BACKUP_INFIX}k2j4h5", RESTORING, COMPACTING, journal)
    left = [tmp_path / f"agl.db{suffix}" for suffix in copies]
    others = [tmp_path / f"other.db{BACKUP_INFIX}k2j4h5", tmp_path / "agl.db.before-restore-20261129-101010"]
    for path in left + others:  # a stopped backup, restore, compaction; another database's; a kept one
        path.write_bytes(b"half a copy")
    SQLiteStore(tmp_path / "agl.db").close()
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "agl.db") == sorted(
        path.name for path in others
    )


def test_a_copy_has_no_name_left_and_holds_what_was_there_when_it_was_made(
    tmp_path: Path, make_store: Callable[..., Store]
) -> None:
    store = make_store()
    store.queue_tasks([TaskSpec(input=n) for n in range(100)])
    with store.backup() as copy:
        assert os.fstat(copy.fileno()).st_nlink == 0  # gone once closed, whatever happens
        store.queue_tasks([TaskSpec(input="after")])
        (tmp_path / "copy.db").write_bytes(copy.read())
    assert backups.check(tmp_path / "copy.db").tasks == 100
    reopened = SQLiteStore(tmp_path / "copy.db")
    assert reopened.counts().tasks[TaskStatus.QUEUED] == 100
    reopened.close()


def test_a_copy_holds_a_committed_batch_still_being_moved_into_the_queue(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "agl.db")
    batch = store.create_batch()
    store.stage_tasks(batch, [TaskSpec(input=n) for n in range(5000)])
    store.stage_tasks(store.create_batch(), [TaskSpec(input="never committed")])
    assert store.commit_batch(batch) == 5000
    assert store.drain_step()  # a first part moved, the rest still staged
    with store.backup() as copy:
        (tmp_path / "copy.db").write_bytes(copy.read())
    store.close()

    assert backups.check(tmp_path / "copy.db").tasks == 5000
    restored = SQLiteStore(tmp_path / "copy.db")
    while restored.drain_step():
        pass
    queued = restored.list_tasks(TaskStatus.QUEUED, 10_000, 0)
    assert [record.task.input for record in queued] == list(range(5000))
    restored.close()


def test_backup_to_stdout_pipes_the_same_database(daemon: Daemon, tmp_path: Path) -> None:
    a_run(daemon)
    piped = tmp_path / "piped.db"
    result = agl_into(piped, "backup", "-", daemon=daemon)
    assert result.returncode == 0, result.stderr
    contents = backups.check(piped)
    assert (contents.tasks, contents.rollouts, contents.resources) == (6, 2, 1)
    both = agl_into(tmp_path / "both.db", "backup", "-", "--json", daemon=daemon)
    assert (both.returncode, both.stderr.decode()) == (
        2,
        "agl: Give - or --json, not both: with -, the copy itself goes to stdout.\n",
    )


def test_backup_replaces_no_file_unless_told_and_never_the_daemons_own_database(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.queue("a task")
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"someone's file")
    assert_one_line_error(
        agl("backup", str(taken), daemon=daemon), f"{taken} exists: give --force to replace it."
    )
    assert taken.read_bytes() == b"someone's file"
    own = daemon.state_dir / "agl.db"
    assert_one_line_error(
        agl("backup", str(own), "--force", daemon=daemon),
        f"{own} is the daemon's own database: save the copy to another file.",
    )
    for name in ("agl.db-wal", "agl.db-shm", "token", "agl.pid", "address"):  # its log above all
        theirs = daemon.state_dir / name
        held = theirs.stat().st_ino  # a copy would have taken its name
        assert_one_line_error(
            agl("backup", str(theirs), "--force", daemon=daemon),
            f"{theirs} is one of the daemon's own files: save the copy to another file.",
        )
        assert theirs.stat().st_ino == held
    assert_one_line_error(
        agl("backup", str(tmp_path), daemon=daemon), f"{tmp_path} is a directory: give the copy a file name."
    )
    assert_one_line_error(
        agl("backup", "", daemon=daemon),
        "FILE is empty: give the copy a file name (or - for stdout).",
        code=2,
    )
    for parent, within in ((tmp_path / "no such dir", "does not exist"), (taken, "is not a directory")):
        assert_one_line_error(
            agl("backup", str(parent / "x.db"), daemon=daemon),
            f"Cannot write {parent / 'x.db'}: {parent} {within}.",
        )
    replaced = agl("backup", str(taken), "--force", "--json", daemon=daemon)
    assert replaced.returncode == 0, replaced.stderr
    assert orjson.loads(replaced.stdout) == {
        "file": str(taken), "tasks": 1, "rollouts": 0, "resources": 0, "bytes": taken.stat().st_size,
    }  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("state")) == [
        "taken.db"
    ]


def test_backup_never_replaces_a_link_a_device_or_a_pipe_even_when_told(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Renamed over a device node, the copy would take its place (as root, `/dev/null`'s)."""
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"someone's file")
    link = tmp_path / "link.db"
    link.symlink_to(kept)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for path in (link, pipe):
        assert_one_line_error(
            agl("backup", str(path), "--force", daemon=daemon),
            f"{path} is not a regular file (a link, a device or a pipe): give the copy a file name, or - for stdout.",
        )
    assert link.is_symlink() and kept.read_bytes() == b"someone's file"
    assert stat.S_ISFIFO(pipe.stat().st_mode)


def test_backup_writes_its_copy_afresh_whatever_a_copy_cut_short_left(daemon: Daemon, tmp_path: Path) -> None:
    """A file left under the copy's temporary name is removed, never written through: it may
    be readable by others, or a link to another file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"someone's file")
    readable, linked = tmp_path / "readable.db", tmp_path / "linked.db"
    (tmp_path / ".readable.db.partial").write_bytes(b"old")
    (tmp_path / ".readable.db.partial").chmod(0o644)
    (tmp_path / ".linked.db.partial").symlink_to(elsewhere)

    for target in (readable, linked):
        result = agl("backup", str(target), daemon=daemon)
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(target.stat().st_mode) == 0o600 and not target.is_symlink()
    assert elsewhere.read_bytes() == b"someone's file"
    assert not any(path.name.endswith(".partial") for path in tmp_path.iterdir())


def test_backup_from_a_daemon_without_the_route_says_it_may_be_older(daemon: Daemon, tmp_path: Path) -> None:
    elsewhere = f"{daemon.url}/old"  # a 404 for the route, as an agl before backups gives
    result = agl("--url", elsewhere, "--token", daemon.token, "backup", str(tmp_path / "x.db"))
    assert_one_line_error(
        result,
        f"The daemon at {elsewhere} has no route GET /v1/backup: is it an agl older than this one?",
    )
    assert [path.name for path in tmp_path.iterdir() if "x.db" in path.name] == []  # nor a part of it


def test_backup_with_no_daemon_says_so(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = agl("--url", url, "backup", str(tmp_path / "x.db"))
    assert_one_line_error(result, f"No agl daemon answers at {url}.", code=3)
    assert list(tmp_path.iterdir()) == []


# --- a copy that is not whole ---------------------------------------------------------------


@pytest.fixture
def bad_daemon() -> Iterator[Callable[[bytes, int], str]]:
    """A stand-in for a daemon that goes wrong while it sends a backup: it answers one
    request with `body` under a Content-Length of `length`, then closes the connection."""
    servers: list[socket.socket] = []

    def serve(body: bytes, length: int) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                head = f"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.sqlite3\r\ncontent-length: {length}\r\n\r\n"
                connection.sendall(head.encode() + body)

        threading.Thread(target=answer, daemon=True).start()
        return f"http://127.0.0.1:{server.getsockname()[1]}"

    yield serve
    for server in servers:
        server.close()


def test_a_copy_cut_short_or_damaged_never_takes_the_files_name(
    bad_daemon: Callable[[bytes, int], str], tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "agl.db")
    store.queue_tasks([TaskSpec(input="x" * 100) for _ in range(3000)])
    store.close()
    whole = (tmp_path / "agl.db").read_bytes()
    damaged = whole[: 4096 * 20] + b"\xff" * 4096 + whole[4096 * 21 :]
    target = tmp_path / "copy.db"

    cut = agl("--url", bad_daemon(whole[:100_000], len(whole)), "backup", str(target), state_dir=tmp_path)
    assert_one_line_error(cut, "The connection to the agl daemon at http://127.0.0.1:", code=3)
    bad = agl("--url", bad_daemon(damaged, len(damaged)), "backup", str(target), state_dir=tmp_path)
    assert_one_line_error(
        bad, f"The copy the daemon sent failed its check, so {target} was not written: ", code=1
    )
    assert "is damaged" in bad.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["agl.db"]


# --- restore --------------------------------------------------------------------------------


def test_restore_keeps_the_database_it_replaces_whole_even_after_a_crash(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    daemon = make_daemon(state_dir=state)
    [kept] = daemon.queue("in the copy")
    copy = tmp_path / "copy.db"
    assert agl("backup", str(copy), daemon=daemon).returncode == 0
    [later] = daemon.queue("after the copy")
    daemon.kill()  # its last writes are in its log only
    assert (state / "agl.db-wal").stat().st_size > 0

    result = agl("restore", str(copy), daemon=daemon)

    assert result.returncode == 0, result.stderr
    [aside] = state.glob("agl.db.before-restore-*")
    assert result.stdout.startswith(
        f"Restored {copy} into {state / 'agl.db'}: 1 task, 0 rollouts and 0 resource"
    )
    assert result.stdout.endswith(
        f"). The database it replaced is kept as {aside}. Start the daemon (agl serve) to use it.\n"
    )
    assert sorted(path.name for path in state.iterdir() if path.name.startswith("agl.db")) == [
        "agl.db", aside.name,
    ]  # fmt: skip
    assert [task["rollout_id"] for task in daemon.start().api("GET", "/v1/tasks").json()["tasks"]] == [kept]
    old = SQLiteStore(aside)  # the old log folded into it: nothing it had answered for is lost
    assert [record.rollout_id for record in old.list_tasks(None, 10, 0)] == [kept, later]
    old.close()


SERVICE_USER = 65534  # nobody, as a service's own user


def owner(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_uid, found.st_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes files another user owns")
def test_compact_and_restore_run_by_root_leave_the_database_to_the_state_directorys_owner(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A service's daemon runs as its own user; root compacting or restoring its directory
    must not leave it a database that user cannot open."""
    daemon = make_daemon(state_dir=tmp_path / "state")
    daemon.queue(1, 2)
    copy = tmp_path / "copy.db"
    assert agl("backup", str(copy), daemon=daemon).returncode == 0
    assert daemon.terminate() == 0
    fresh = tmp_path / "fresh"  # a service's directory, its database not yet restored
    fresh.mkdir(mode=0o700)
    for path in [daemon.state_dir, *daemon.state_dir.iterdir(), fresh]:
        os.chown(path, SERVICE_USER, SERVICE_USER)
    database = daemon.state_dir / "agl.db"

    assert agl("compact", daemon=daemon).returncode == 0
    assert owner(database) == (SERVICE_USER, SERVICE_USER)
    assert agl("restore", str(copy), daemon=daemon).returncode == 0
    assert owner(database) == (SERVICE_USER, SERVICE_USER)
    assert agl("--state-dir", str(fresh), "restore", str(copy)).returncode == 0
    assert owner(fresh / "agl.db") == (SERVICE_USER, SERVICE_USER)
    assert stat.S_IMODE((fresh / "agl.db").stat().st_mode) == 0o600
    assert owner(copy) == (0, 0)  # what it copied from is left as it was


ONLY_THE_COPYS_TASKS = {"queued": 20, "claimed": 0, "completed": 0, "failed": 0, "cancelled": 0}


def copied_then_changed(make_daemon: Callable[..., Daemon], tmp_path: Path) -> tuple[Daemon, Path]:
    """A daemon on `tmp_path / "state"` with a copy of its 20 tasks at `tmp_path / "copy.db"`
    (`ONLY_THE_COPYS_TASKS`), and a task queued and claimed since, in its log."""
    daemon = make_daemon(state_dir=tmp_path / "state")
    daemon.queue(*range(20))
    copy = tmp_path / "copy.db"
    assert agl("backup", str(copy), daemon=daemon).returncode == 0
    daemon.queue("after the copy")
    assert daemon.claim() is not None
    return daemon, copy


def test_restore_where_a_database_was_deleted_without_its_log_keeps_that_log_out_of_the_copy(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """SQLite reads a log beside a database into it, whichever database it came from."""
    daemon, copy = copied_then_changed(make_daemon, tmp_path)
    state = daemon.state_dir
    daemon.kill()  # its last writes are in its log only
    (state / "agl.db").unlink()

    result = agl("restore", str(copy), daemon=daemon)

    assert result.returncode == 0, result.stderr
    [log] = state.glob("agl.db.before-restore-*-wal")
    assert result.stdout.endswith(
        f"). A write-ahead log left there without its database is kept as {log}."
        " Start the daemon (agl serve) to use it.\n"
    )
    assert daemon.start().status()["tasks"] == ONLY_THE_COPYS_TASKS
    with sqlite3.connect(state / "agl.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_restore_refuses_while_the_daemon_runs_and_what_is_not_a_whole_agl_database(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.queue("a task")
    copy = tmp_path / "copy.db"
    assert agl("backup", str(copy), daemon=daemon).returncode == 0
    assert daemon.proc is not None
    assert_one_line_error(
        agl("restore", str(copy), daemon=daemon),
        f"agl is running (pid {daemon.proc.pid}) on {daemon.state_dir}: stop it first (agl stop), then restore.",
    )
    assert daemon.terminate() == 0
    database = daemon.state_dir / "agl.db"
    as_it_was = database.read_bytes()
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all" * 100)
    whole = copy.read_bytes()
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(whole[:4096] + b"\xff" * 4096 + whole[8192:])
    cut = tmp_path / "cut.db"
    cut.write_bytes(whole[:40960])
    newer = tmp_path / "newer.db"
    newer.write_bytes(whole)
    with sqlite3.connect(newer) as connection:
        connection.execute("PRAGMA user_version = 99")
    refusals = {
        tmp_path / "missing.db": f"There is no file {tmp_path / 'missing.db'}.",
        tmp_path: f"{tmp_path} is a directory, not a backup.",
        text: f"{text} is not an agl database (file is not a database).",
        damaged: f"{damaged} is damaged (",
        cut: f"{cut} is damaged (",
        newer: f"{newer} was written by a newer agl (schema 99); upgrade agl to use it.",
        Path("/dev/null"): "/dev/null is not a regular file (a device or a pipe), not a backup.",
    }
    for path, refusal in refusals.items():
        assert_one_line_error(agl("restore", str(path), daemon=daemon), refusal)
    assert_one_line_error(
        agl("restore", "", daemon=daemon),
        "FILE is empty: give the file of the copy agl backup saved.",
        code=2,
    )
    assert database.read_bytes() == as_it_was
    assert sorted(path.name for path in daemon.state_dir.iterdir() if path.name.startswith("agl.db")) == [
        "agl.db"
    ]


def test_a_restore_the_disk_cannot_hold_fails_and_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    big = tmp_path / "big.db"
    store = SQLiteStore(big)
    store.queue_tasks([TaskSpec(input="x" * 1000 + str(n)) for n in range(1200)])  # under 2 MB: two chunks
    store.close()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    before = SQLiteStore(state / "agl.db")
    before.queue_tasks([TaskSpec(input="the run before")])
    before.close()
    as_it_was = (state / "agl.db").read_bytes()

    def room_for_1_5_mb() -> None:  # a write past it is cut short, the next refused: a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    result = subprocess.run(
        [sys.executable, "-m", "agl_cli", "--state-dir", str(state), "restore", str(big)],
        capture_output=True, text=True, env=env_without_agl(), timeout=60, preexec_fn=room_for_1_5_mb,
    )  # fmt: skip
    assert_one_line_error(result, f"Cannot restore {big} into {state / 'agl.db'}: File too large.")
    assert (state / "agl.db").read_bytes() == as_it_was
    assert sorted(path.name for path in state.iterdir() if path.name.startswith("agl.db")) == ["agl.db"]


def test_restores_in_the_same_second_keep_every_database_they_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "strftime", lambda _: "20261130-120000")
    state = tmp_path / "state"
    copies: dict[Path, list[str]] = {}
    for name in ("first", "second", "third"):
        store = SQLiteStore(tmp_path / f"{name}.db")
        copies[tmp_path / f"{name}.db"] = store.queue_tasks([TaskSpec(input=name)])
        store.close()
    replaced = [maintenance.restore_state_dir(state, copy).replaced for copy in copies]
    assert [path.name if path else None for path in replaced] == [
        None, "agl.db.before-restore-20261130-120000", "agl.db.before-restore-20261130-120000-2",
    ]  # fmt: skip
    for path, held in zip(replaced[1:], list(copies.values())[:2], strict=True):
        assert path is not None
        kept = SQLiteStore(path)
        assert [record.rollout_id for record in kept.list_tasks(None, 10, 0)] == held
        kept.close()


def test_results_stored_after_a_restore_are_numbered_after_the_replaced_databases(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """So a watch that resumes after the last number it saw misses none of them."""
    daemon = make_daemon()
    ids = daemon.queue("a", "b", "c", "d")
    for _ in ids:
        assert daemon.claim() is not None
    daemon.report(ids[0], final_reward=1.0)
    copy = tmp_path / "copy.db"
    assert agl("backup", str(copy), daemon=daemon).returncode == 0  # its last result: number 1
    daemon.report(ids[1], final_reward=1.0)
    daemon.report(ids[2], final_reward=1.0)  # number 3
    assert daemon.terminate() == 0
    restored = agl("restore", str(copy), daemon=daemon)
    assert restored.returncode == 0, restored.stderr
    daemon.start()
    assert daemon.status()["last_seq"] == 3
    daemon.report(ids[3], final_reward=0.5)  # claimed in the copy too
    assert [(r["rollout_id"], r["seq"]) for r in daemon.rollouts()] == [(ids[0], 1), (ids[3], 4)]


def test_a_restore_killed_midway_leaves_the_database_as_it_was(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    big = tmp_path / "big.db"
    store = SQLiteStore(big)
    store.queue_tasks([TaskSpec(input="x" * 100_000 + str(n)) for n in range(400)])  # 40 MB to copy
    store.close()
    state = tmp_path / "state"
    daemon = make_daemon(state_dir=state)
    [kept] = daemon.queue("the run before")
    assert daemon.terminate() == 0
    copy = state / f"agl.db{backups.RESTORING}"
    kill_while_it_writes(popen_agl_in(state, "restore", str(big)), copy)
    tasks = daemon.start().api("GET", "/v1/tasks").json()["tasks"]  # takes over the pidfile it left
    assert [task["rollout_id"] for task in tasks] == [kept]
    assert not copy.exists()  # the half-made copy is gone
    assert daemon.terminate() == 0
    again = agl("restore", str(big), daemon=daemon)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("command", [["restore", "copy.db"], ["compact"], ["serve", "--port", "0"]])
def test_a_state_directory_whose_pidfile_cannot_be_written_says_so(
    tmp_path: Path, command: list[str]
) -> None:
    """Not the backup's fault, nor the database's: the pidfile is where it fails."""
    state = tmp_path / "state"
    (state / "agl.pid").mkdir(parents=True)  # what a root-owned, read-only directory does to a user
    (state / "agl.db").write_bytes(b"")
    (tmp_path / "copy.db").write_bytes(b"")
    result = agl(*[str(tmp_path / arg) if arg.endswith(".db") else arg for arg in command], state_dir=state)
    assert_one_line_error(result, f"Cannot write the pidfile {state / 'agl.pid'} (Is a directory).")
