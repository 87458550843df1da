"""`agl serve` and its one-line refusals."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import typer
from cli_runner import assert_one_line_error
from daemon import Daemon, env_without_agl, fetch
from typer.core import TyperCommand, TyperGroup

from agl_cli.cli.app import app as cli_app
from agl_cli.daemon_config import DEFAULTS, DaemonConfig
from agl_cli.server.runner import keep_private
from agl_cli.store import SQLiteStore, StoreError
from agl_cli.store.schema import SCHEMA_VERSION


def agl(*args: str, timeout: float = 30, run_as: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`agl` with `args`; `run_as` is a command to run it through (another user's, say)."""
    return subprocess.run(
        [*run_as, sys.executable, "-m", "agl_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_without_agl(),
        check=False,
    )


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = agl("serve", "--port", str(port), "--state-dir", str(tmp_path / "s"))
    assert_one_line_error(result, f"Port {port} on 127.0.0.1 is already in use")
    assert not (tmp_path / "s").exists()  # made for the daemon, and taken away again


@pytest.mark.parametrize("detach", [[], ["--detach"]])
def test_an_empty_host_is_refused_rather_than_taken_for_every_address(
    tmp_path: Path, detach: list[str]
) -> None:
    result = agl("serve", *detach, "--port", "0", "--host", "", "--state-dir", str(tmp_path / "s"))
    sentence = "--host cannot be empty: give 0.0.0.0 (or ::) to listen on every address."
    assert_one_line_error(result, sentence, code=2)
    assert not (tmp_path / "s").exists()  # a usage error, refused before anything is made


@pytest.mark.parametrize(
    "command", [["serve", "--port", "0"], ["serve", "--detach", "--port", "0"], ["restore"]]
)
def test_a_file_in_the_way_of_the_state_dir_is_named_in_one_line(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    if command == ["restore"]:
        command = ["restore", str(tmp_path / "backup.db")]  # not read: the state dir comes first
    result = agl("--state-dir", str(blocker), *command)
    assert_one_line_error(result, f"The state directory {blocker} is a file, not a directory.")
    result = agl("--state-dir", str(blocker / "state"), *command)
    assert_one_line_error(
        result,
        f"The state directory {blocker / 'state'} cannot be made: {blocker} is a file, not a directory.",
    )
    assert [path.name for path in tmp_path.iterdir()] == ["file"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own are private to this one)."""
    path = Path(tempfile.mkdtemp(prefix="agl-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def agl_as_another_user(*args: str) -> subprocess.CompletedProcess[str]:
    """`agl` run by a user who owns nothing here: as root (for whom no directory is
    read-only), as `nobody`; otherwise as this user."""
    if os.geteuid() != 0:
        return agl(*args)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*nobody, sys.executable, "-c", "import agl_cli"], capture_output=True, check=False
    )
    if probe.returncode != 0:  # an interpreter or checkout under a directory private to root
        pytest.skip(f"nobody cannot run this Python: {probe.stderr.decode().strip()}")
    return agl(*args, run_as=nobody)


def test_a_read_only_state_dir_is_one_line_and_left_alone(shared_dir: Path) -> None:
    state = shared_dir / "state"
    state.mkdir(mode=0o555 if os.geteuid() != 0 else 0o755)  # not writable by whoever runs agl
    result = agl_as_another_user("serve", "--port", "0", "--state-dir", str(state))
    assert_one_line_error(result, f"The state directory {state} is not writable (Permission denied)")
    assert list(state.iterdir()) == []


def test_a_read_only_database_is_one_line_and_left_alone(shared_dir: Path) -> None:
    state = shared_dir / "state"
    SQLiteStore(state / "agl.db").close()
    state.chmod(0o777)  # the directory is writable, the database file is not
    (state / "agl.db").chmod(0o444)
    before = (state / "agl.db").read_bytes()
    result = agl_as_another_user("serve", "--port", "0", "--state-dir", str(state))
    assert_one_line_error(
        result, "agl.db: The store could not be written (the file is read-only for this user)."
    )
    assert (state / "agl.db").read_bytes() == before


def _a_directory(token: Path) -> None:
    token.mkdir()


def _not_utf8(token: Path) -> None:
    token.write_bytes(b"\xff\xfe")


def _unreadable(token: Path) -> None:
    token.write_text("t" * 43)
    token.chmod(0)


@pytest.mark.parametrize(
    ("spoil", "fault"),
    [
        (_a_directory, "cannot be read (Is a directory)."),
        (_not_utf8, "is not UTF-8 text."),
        (_unreadable, "cannot be read (Permission denied)."),
    ],
)
def test_a_token_file_that_cannot_be_read_is_named_in_one_line_before_a_database_is_made(
    shared_dir: Path, spoil: Callable[[Path], None], fault: str
) -> None:
    state = shared_dir / "state"
    state.mkdir()
    state.chmod(0o777)  # another user's to write in; the token file stays this one's
    spoil(state / "token")
    result = agl_as_another_user("serve", "--port", "0", "--state-dir", str(state))
    assert_one_line_error(result, f"The token file {state / 'token'} {fault}")
    assert not (state / "agl.db").exists()


@pytest.mark.parametrize("spoil", [_a_directory, _not_utf8])
def test_serve_detach_says_in_one_line_that_the_token_file_cannot_be_read(
    tmp_path: Path, spoil: Callable[[Path], None]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    spoil(state / "token")
    result = agl("serve", "--detach", "--port", "0", "--state-dir", str(state))
    assert_one_line_error(result, f"The token file {state / 'token'} ")


@pytest.mark.parametrize("detach", [[], ["--detach"]])
@pytest.mark.parametrize("token", ["my team token", "jeton-d\u00e9t\u00e9"])
def test_a_token_file_no_command_could_send_refuses_the_start_in_one_line(
    tmp_path: Path, detach: list[str], token: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "token").write_text(token + "\n")
    result = agl("serve", *detach, "--port", "0", "--state-dir", str(state))
    assert_one_line_error(
        result, f"The token in {state / 'token'} has a character no token of agl's may have"
    )
    assert token not in result.stderr
    assert not (state / "agl.db").exists()


def test_a_database_that_is_not_agls_is_refused_and_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    foreign = sqlite3.connect(state / "agl.db")
    foreign.execute("CREATE TABLE invoices (id INTEGER)")
    foreign.commit()
    foreign.close()
    result = agl("serve", "--port", "0", "--state-dir", str(state))
    assert_one_line_error(result, "is not an agl database")
    check = sqlite3.connect(state / "agl.db")
    assert [row[0] for row in check.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    check.close()


def test_a_database_locked_by_another_process_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    SQLiteStore(state / "agl.db").close()  # agl's own, then held by someone else
    holder = sqlite3.connect(state / "agl.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = agl("serve", "--port", "0", "--state-dir", str(state))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_one_line_error(result, "The store's database is locked by another program")


def test_a_database_another_agl_has_open_is_refused_whichever_way_it_is_reached(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The pidfile keeps a second daemon off a state directory; the database's own lock
    keeps off one that reaches the file by a link, and a program that embeds agl's server."""
    daemon = make_daemon(state_dir=tmp_path / "state")
    database = daemon.state_dir / "agl.db"
    daemon.queue("a task")
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    (linked / "agl.db").symlink_to(database)
    held = "open (a daemon, or a program that embeds agl's server): one agl at a time may use it."
    result = agl("serve", "--port", "0", "--state-dir", str(linked))
    assert_one_line_error(result, f"Another agl has the database {linked / 'agl.db'} {held}")
    with pytest.raises(StoreError, match=r"^Another agl has the database .* may use it[.]$"):
        SQLiteStore(database)
    assert daemon.terminate() == 0
    embedded = SQLiteStore(database)  # a training script's, once the daemon stopped
    try:
        for command in ("compact", "restore"):
            result = agl(command, *([str(tmp_path / "copy.db")] if command == "restore" else []),
                         "--state-dir", str(daemon.state_dir))  # fmt: skip
            assert_one_line_error(result, f"Another agl has the database {database} {held}")
    finally:
        embedded.close()
    assert daemon.start().status()["tasks"]["queued"] == 1


def test_a_database_from_a_newer_agl_is_refused_and_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    SQLiteStore(state / "agl.db").close()
    newer = sqlite3.connect(state / "agl.db")
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    before = (state / "agl.db").read_bytes()
    result = agl("serve", "--port", "0", "--state-dir", str(state))
    assert_one_line_error(
        result, f"was written by a newer agl (schema {SCHEMA_VERSION + 1}); upgrade agl to use it."
    )
    assert (state / "agl.db").read_bytes() == before


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "agl.db").write_bytes(b"hello, this is plain text and rather long " * 100)
    assert_one_line_error(agl("serve", "--port", "0", "--state-dir", str(state)), "is not an agl database")


def test_listening_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    result = agl("serve", "--host", "0.0.0.0", "--no-auth", "--port", "0", "--state-dir", str(tmp_path / "s"))
    assert_one_line_error(result, "Refusing to listen on 0.0.0.0 without a token", code=2)


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--allowed-host", "agl.example.com", "--no-auth"],
         "Refusing to serve a proxy's names without a token: remove --no-auth or --allowed-host."),
        (["--allowed-host", "agl.example.com:443"],
         "--allowed-host takes a host name as a Host header gives it, without a port, not 'agl.example.com:443'."),
        (["--allowed-host", "https://agl.example.com"],
         "--allowed-host takes a host name as a Host header gives it, without a port, not 'https://agl.example.com'."),
    ],
)  # fmt: skip
def test_names_for_a_proxy_are_refused_without_a_token_or_with_a_port(
    tmp_path: Path, args: list[str], sentence: str
) -> None:
    result = agl("serve", *args, "--port", "0", "--state-dir", str(tmp_path / "s"))
    assert_one_line_error(result, sentence, code=2)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--log-level", "loud"], "'loud' is not one of 'critical'"),
        (["--task-timeout", "0"], "--task-timeout"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--rollout-retention", "0"], "--rollout-retention"),
        (["--task-timeout", "inf"], "--task-timeout"),  # a claim that never runs out: null in status
        (["--task-timeout", "nan"], "--task-timeout"),
        (["--rollout-retention", "inf"], "--rollout-retention"),
        (["--request-timeout", "1e10"], "--request-timeout"),
        (["--forget-tasks"], "--forget-tasks needs --rollout-retention"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = agl("serve", "--state-dir", str(tmp_path / "s"), *args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_a_state_directory_and_token_others_could_read_are_made_private_and_said_so(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "token").write_text("a-token\n")
    (state / "token").chmod(0o644)
    daemon = make_daemon(state_dir=state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "token").stat().st_mode) == 0o600
    log = daemon.log_path.read_text()
    assert f"agl: The state directory {state} could be read by others (mode 755); it is now 700." in log
    assert f"agl: The token file {state / 'token'} could be read by others (mode 644); it is now 600." in log
    assert daemon.token == "a-token"


def test_the_database_and_its_log_are_readable_by_their_owner_only(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    fresh = make_daemon()
    fresh.queue("x")
    for name in ("agl.db", "agl.db-wal", "agl.db-shm"):
        assert stat.S_IMODE((fresh.state_dir / name).stat().st_mode) == 0o600, name

    state = tmp_path / "older"
    daemon = make_daemon(state_dir=state)
    assert daemon.terminate() == 0
    (state / "agl.db").chmod(0o644)  # as an older agl left it: made as any new file
    daemon.start()
    daemon.queue("y")
    for name in ("agl.db", "agl.db-wal", "agl.db-shm"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    log = daemon.log_path.read_text()
    assert f"agl: The database {state / 'agl.db'} could be read by others (mode 644); it is now 600." in log


def test_a_state_directory_another_user_owns_is_served_from_with_a_word_on_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a file's owner may change its mode: a shared directory stays as it is."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)

    def not_the_owner(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", not_the_owner)
    said = keep_private(shared, 0o700, "state directory")
    assert (
        said
        == f"The state directory {shared} can be read by others (mode 777), and only its owner can change that."
    )


def test_the_token_is_created_once_and_readable_by_its_owner_only(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    token_file = daemon.state_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    first = daemon.token
    daemon.terminate()
    daemon.start()
    assert daemon.token == first and len(first) >= 32


def test_the_memory_store_leaves_no_database(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--memory")
    daemon.queue(1)
    assert daemon.claim() is not None
    assert not (daemon.state_dir / "agl.db").exists()


def test_agentlightning_commands_say_plainly_when_it_is_missing() -> None:
    if importlib.util.find_spec("agentlightning") is not None:
        pytest.skip("agentlightning is installed here; the compat suite covers forwarding")
    for command in ("vllm", "store", "prometheus", "agentops"):
        result = agl(command, "--help")
        assert_one_line_error(
            result, f"'agl {command}' is a command of agentlightning, which is not installed"
        )


def test_version_and_help_work() -> None:
    from agl_cli import __version__

    assert agl("--version").stdout.strip() == f"agl {__version__}"
    help_text = agl("--help").stdout
    for command in ("serve", "vllm", "store", "prometheus", "agentops"):
        assert command in help_text


def _serve_command() -> TyperCommand:
    group = typer.main.get_command(cli_app)
    assert isinstance(group, TyperGroup)
    command = group.commands["serve"]
    assert isinstance(command, TyperCommand)
    return command


def test_every_serve_option_is_a_daemon_setting_with_the_same_default() -> None:
    options = {param.name: param.default for param in _serve_command().params if param.name != "detach"}
    assert options == {field.name: field.default for field in dataclasses.fields(DaemonConfig)}


def test_every_setting_survives_the_trip_through_detach(tmp_path: Path) -> None:
    unusual = {
        "host": "127.0.0.2",
        "port": 9,
        "state_dir": tmp_path,
        "memory": True,
        "task_timeout": 0.1,
        "max_attempts": 3,
        "log_level": "debug",
        "log_json": True,
        "no_auth": True,
        "max_body_size": 1234,
        "max_db_size": 10_000_000,
        "max_requests": 64,
        "rollout_retention": 60.0,
        "forget_tasks": True,
        "request_timeout": 2.5,
        "allowed_host": ("agl.example.com", "[2001:db8::1]"),
    }  # a new setting fails this test until it has a value here
    assert set(unusual) == {field.name for field in dataclasses.fields(DaemonConfig)}
    config = DaemonConfig(**unusual)
    assert [name for name, value in unusual.items() if getattr(DEFAULTS, name) == value] == []
    parsed = _serve_command().make_context("serve", config.argv()).params
    assert DaemonConfig.from_options(parsed) == config


def test_a_detached_daemon_runs_with_the_options_it_was_given(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = agl_in(state, "serve", "--detach", "--port", "0", "--memory", "--task-timeout", "7.5",
                     "--max-attempts", "2", "--max-body-size", "5000", "--no-auth")  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        url = json.loads(agl_in(state, "status", "--json").stdout)["address"]
        status = fetch("GET", f"{url}/v1/status").json()  # --no-auth: no token needed
        assert (status["store"], status["task_timeout"], status["max_attempts"]) == ("memory", 7.5, 2)
        too_large = fetch(
            "POST", f"{url}/rollout", content=b"x" * 5001, headers={"Content-Type": "application/json"}
        )
        assert too_large.status_code == 413
    finally:
        assert agl_in(state, "stop").returncode == 0


def agl_in(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agl_cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_without_agl() | {"AGL_STATE_DIR": str(state_dir)},
        check=False,
    )
