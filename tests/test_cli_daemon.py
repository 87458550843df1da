"""Finding the daemon, asking its status, starting it in the background and stopping it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import Lines, agl, assert_one_line_error, popen_agl
from conftest import database_of_schema, schema_5_file
from daemon import Daemon, env_without_agl, wait_until

from agl_cli import __version__, pidfile
from agl_cli.cli.context import DEFAULT_URL, Globals, Target, resolve
from agl_cli.cli.detach import start_detached
from agl_cli.cli.errors import CLIError
from agl_cli.daemon_config import DaemonConfig
from agl_cli.store.schema import SCHEMA_VERSION

DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_status_tells_what_the_daemon_is_and_what_it_holds(daemon: Daemon) -> None:
    daemon.queue(1, 2)
    current = json.loads(agl("status", "--json", daemon=daemon).stdout)
    assert current["tasks"]["queued"] == 2
    assert current["address"] == daemon.url
    assert current["state_dir"] == str(daemon.state_dir)
    assert daemon.proc is not None and current["pid"] == daemon.proc.pid
    human = agl("status", daemon=daemon)
    assert human.returncode == 0, human.stderr
    assert "queued 2" in human.stdout and daemon.url in human.stdout
    assert "request bodies up to 33.6 MB" in human.stdout  # the default --max-body-size, 32 MiB
    assert "forgotten" not in human.stdout  # said only by a daemon that forgets tasks
    rates = re.search(r"rollouts/s \(last (\d+) s\)", human.stdout)
    assert rates is not None and int(rates[1]) < 60  # the rates are over its uptime so far


def test_status_watch_refreshes_every_second_until_ctrl_c(daemon: Daemon) -> None:
    watcher = popen_agl("status", "--watch", "--json", daemon=daemon)
    assert watcher.stdout is not None and watcher.stderr is not None
    assert json.loads(watcher.stdout.readline())["tasks"]["queued"] == 0
    daemon.queue(1)
    counts = [json.loads(watcher.stdout.readline())["tasks"]["queued"] for _ in range(2)]
    assert counts[-1] == 1
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(10) in (0, 130)
    assert "Traceback" not in watcher.stderr.read()


def test_status_watch_in_json_goes_on_through_a_restart(make_daemon: Callable[..., Daemon]) -> None:
    """As the view for people does: a monitor fed by it must not die with the daemon."""
    daemon = make_daemon()
    watcher = popen_agl("status", "--watch", "--json", daemon=daemon)
    assert watcher.stdout is not None and watcher.stderr is not None
    assert json.loads(watcher.stdout.readline())["tasks"]["queued"] == 0
    daemon.kill()
    daemon.start()
    daemon.queue(1)
    lines = (json.loads(watcher.stdout.readline() or "null") for _ in range(30))  # a second apart
    assert any(line is not None and line["tasks"]["queued"] == 1 for line in lines)
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(10) in (0, 130)
    said = watcher.stderr.read()
    assert "Retrying every second" in said and "The daemon answers again." in said and "Traceback" not in said


def test_status_watch_into_a_pipe_prints_each_refresh_as_it_comes(daemon: Daemon) -> None:
    """Nothing can be redrawn in a pipe or a file: each refresh is the table again, flushed
    at once, so that `agl status --watch | head -1` gets its line and ends."""
    with Lines(popen_agl("status", "--watch", daemon=daemon)) as watcher:
        assert watcher.line().startswith("daemon ")
        daemon.queue(1)
        wait_until(lambda: "queued 1" in watcher.line(), "a refresh that counts the task queued", 30)
        code, said = watcher.stop()
    assert code in (0, 130) and "Traceback" not in said


def test_status_watch_follows_a_restart_that_made_a_new_token(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    with Lines(popen_agl("status", "--watch", "--json", daemon=daemon)) as watcher:
        assert watcher.take(1)[0]["tasks"]["queued"] == 0
        daemon.kill()
        (daemon.state_dir / "token").unlink()
        daemon.start()
        daemon.queue(1)
        wait_until(
            lambda: json.loads(watcher.line())["tasks"]["queued"] == 1, "a refresh from the new daemon", 60
        )
        code, said = watcher.stop()
    assert code in (0, 130) and "Traceback" not in said


def test_a_relocated_target_reads_the_token_again_unless_it_was_given(daemon: Daemon) -> None:
    from agl_cli.client import Address

    found = resolve(Globals(state_dir=daemon.state_dir))
    (daemon.state_dir / "token").write_text("rotated\n")
    assert found.relocate() == Address(daemon.url, "rotated")
    given = resolve(Globals(token="given", state_dir=daemon.state_dir))
    assert given.relocate() == Address(daemon.url, "given")


def test_an_address_file_left_by_a_dead_daemon_is_exit_3_naming_it(tmp_path: Path) -> None:
    (tmp_path / "address").write_text(DEAD_URL + "\n")
    assert_one_line_error(
        agl("status", state_dir=tmp_path),
        f"agl: agl is not running in {tmp_path}; no agl daemon answers at {DEAD_URL}.",
        code=3,
    )


def test_with_no_daemon_in_the_state_directory_every_command_says_where_it_looked(
    daemon: Daemon,
) -> None:
    """The state directory is named first: the default address tried for want of its
    daemon is rarely where the user thought agl was."""
    daemon.terminate()
    for args in (("status",), ("tasks", "list"), ("dashboard", "--print"), ("resources", "list")):
        result = agl(*args, daemon=daemon)
        assert_one_line_error(
            result, f"agl is not running in {daemon.state_dir}; no agl daemon answers at", 3
        )


def test_url_and_agl_url_take_precedence_over_the_address_file(daemon: Daemon) -> None:
    assert_one_line_error(agl("--url", DEAD_URL, "status", daemon=daemon), DEAD_URL, code=3)
    result = agl("status", daemon=daemon, env={"AGL_URL": DEAD_URL})
    assert_one_line_error(result, DEAD_URL, code=3)


@pytest.mark.parametrize(
    "url", ["ftp://host", "http://", "http://127.0.0.1:99999", "http://[::1", "http://h:0"]
)
def test_a_url_that_cannot_be_a_daemon_s_address_is_a_usage_error(tmp_path: Path, url: str) -> None:
    expected = (
        f"--url (or AGL_URL) must be an http:// or https:// address such as {DEFAULT_URL}, not '{url}'."
    )
    assert_one_line_error(agl("--url", url, "status", state_dir=tmp_path), expected, code=2)
    assert_one_line_error(agl("tasks", "list", state_dir=tmp_path, env={"AGL_URL": url}), expected, code=2)


def test_an_empty_state_dir_is_a_usage_error_and_the_current_directory_is_left_alone(tmp_path: Path) -> None:
    """`--state-dir "$UNSET"` would name the current directory: `agl serve` would fill it and
    make it its owner's alone."""
    tmp_path.chmod(0o755)
    for command in (
        ["--state-dir", "", "status"],
        ["serve", "--state-dir", " "],
        ["compact", "--state-dir", ""],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "agl_cli", *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env_without_agl(),
            timeout=60,
            check=False,
        )
        assert_one_line_error(
            result,
            "Invalid value for '--state-dir' (env var: 'AGL_STATE_DIR'): it is empty: name a directory",
            code=2,
        )
    assert list(tmp_path.iterdir()) == [] and tmp_path.stat().st_mode & 0o777 == 0o755


def test_a_url_with_a_query_or_a_fragment_is_a_usage_error(tmp_path: Path) -> None:
    """httpx would put the route after the query: agl would ask `/?x=1/v1/status`."""
    for url in ("http://127.0.0.1:8000?x=1", "http://127.0.0.1:8000/#top"):
        assert_one_line_error(
            agl("--url", url, "status", state_dir=tmp_path),
            f"--url (or AGL_URL) must be an address without a query or fragment, such as {DEFAULT_URL},",
            code=2,
        )


def test_a_url_that_names_no_host_a_url_can_name_is_a_usage_error(tmp_path: Path) -> None:
    """It was looked up as a host name, and said to be a daemon that does not answer (exit 3)."""
    for url in ("not a url", "http://a b:8000", "http://{host}"):
        assert_one_line_error(
            agl("--url", url, "status", state_dir=tmp_path),
            f"--url (or AGL_URL) must be an http:// or https:// address such as {DEFAULT_URL}, not '{url}'.",
            code=2,
        )


def test_a_url_with_a_password_is_a_usage_error_that_never_shows_it(tmp_path: Path) -> None:
    """httpx would send them as Basic credentials in place of the token."""
    for url in ("http://user:s3cret@127.0.0.1:8000", "http://user:s3cret@[::1"):
        result = agl("tasks", "list", state_dir=tmp_path, env={"AGL_URL": url})
        assert_one_line_error(
            result,
            "--url (or AGL_URL) must not hold a user name or password: give the token with --token or AGL_TOKEN.",
            code=2,
        )
        assert "s3cret" not in result.stderr


class LandingPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>Welcome</html>")


@pytest.mark.parametrize("server", [LandingPage, http.server.SimpleHTTPRequestHandler], ids=["page", "files"])
def test_a_server_that_is_not_agl_is_exit_3_in_one_sentence(
    tmp_path: Path, server: type[http.server.BaseHTTPRequestHandler]
) -> None:
    """A page where a daemon's JSON, event stream or database was expected (a proxy's landing
    page, another server on the port), or its refusal (a file server's 404, its 501 to a POST)."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), server) as page:
        thread = threading.Thread(target=page.serve_forever)
        thread.start()
        address = f"http://127.0.0.1:{page.server_address[1]}"
        try:
            results = {
                command: agl("--url", address, *command.split(), state_dir=tmp_path)
                for command in (
                    "status",
                    "tasks list",
                    "rollouts watch",
                    f"backup {tmp_path / 'copy.db'}",
                    "pause",
                )
            }
        finally:
            page.shutdown()
            thread.join(30)
    for command, result in results.items():
        method = "POST" if command == "pause" else "GET"
        assert_one_line_error(
            result, f"What answers at {address} is not an agl daemon: its answer to {method} /v1/", code=3
        )
        assert "is not agl's." in result.stderr, command
    assert not (tmp_path / "copy.db").exists()


def test_a_url_without_a_scheme_or_with_a_trailing_slash_is_taken_as_meant(daemon: Daemon) -> None:
    for url in (daemon.url.removeprefix("http://"), daemon.url + "/"):
        assert agl("--url", url, "status", daemon=daemon).returncode == 0


def test_a_wrong_token_is_exit_4(daemon: Daemon) -> None:
    result = agl("--token", "wrong", "status", daemon=daemon)
    assert_one_line_error(
        result, "refused the request: the bearer token is not valid (give the token with --token", code=4
    )


@pytest.mark.parametrize("token", ["\u2018pasted\u2019", "t\u00f8ken", "a\nb", "a\x01b", "a b"])
def test_a_token_no_daemon_could_have_written_is_a_usage_error_that_does_not_show_it(
    shared_daemon: Daemon, token: str
) -> None:
    for given in (["--token", token], []):
        result = agl(*given, "status", daemon=shared_daemon, env={} if given else {"AGL_TOKEN": token})
        assert_one_line_error(result, "The token in --token (or AGL_TOKEN) has a character no token", code=2)
        assert token not in result.stderr


def test_a_state_directory_file_that_is_not_text_is_said_to_be_so(tmp_path: Path) -> None:
    for name in ("token", "address"):
        (tmp_path / name).write_bytes(b"tok\xffen")
        result = agl(*(["--url", DEAD_URL] if name == "token" else []), "status", state_dir=tmp_path)
        assert_one_line_error(result, f"{tmp_path / name} is not a file agl wrote: it is not UTF-8 text.")
        (tmp_path / name).unlink()


@pytest.mark.parametrize(
    "args",
    [
        ["tasks", "show", "x\udcff"],  # the byte 0xff, as Python hands it over (and back)
        ["tasks", "cancel", "x\udcff"],
        ["queue", "--metadata", "k=x\udcff", "--dry-run", "-"],
        ["--url", "http://127.0.0.1:1/x\udcff", "status"],
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """Ids, names and values go into JSON and URLs, which carry only text."""
    result = agl(*args, state_dir=tmp_path, stdin="{}")
    assert_one_line_error(result, "Arguments must be UTF-8 text, and '", code=2)
    assert "x\\xff' is not." in result.stderr


def test_a_relative_state_directory_is_shown_as_the_one_it_names_from_anywhere(tmp_path: Path) -> None:
    serve = [sys.executable, "-m", "agl_cli", "--state-dir", "rel", "serve", "--detach", "--port", "0"]
    started = subprocess.run(
        serve, cwd=tmp_path, env=env_without_agl(), capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 0, started.stderr
    try:
        status = json.loads(agl("status", "--json", state_dir=tmp_path / "rel").stdout)
        assert status["state_dir"] == str(tmp_path / "rel")
    finally:
        assert agl("stop", state_dir=tmp_path / "rel").returncode == 0


@pytest.mark.parametrize("given", ["environment", "option"])
def test_a_state_directory_given_as_home_relative_is_under_home(tmp_path: Path, given: str) -> None:
    """`~` where no shell expands it: systemd's Environment=, a Docker ENV, `--state-dir=~/x`."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "address").write_text(DEAD_URL + "\n")  # left by a daemon that crashed
    env = {"HOME": str(tmp_path)}
    if given == "environment":
        result = agl("stop", env={**env, "AGL_STATE_DIR": "~/state"})
    else:
        result = agl("--state-dir=~/state", "stop", env=env)
    assert_one_line_error(
        result,
        f"agl is not running: there is no pidfile in {tmp_path}/state and no daemon answers at {DEAD_URL}.",
        code=3,
    )


def test_stop_at_a_given_address_that_nothing_answers_says_only_that(tmp_path: Path) -> None:
    """No pidfile is looked for when the address is given, so none is blamed."""
    result = agl("--url", DEAD_URL, "stop", state_dir=tmp_path)
    assert_one_line_error(result, f"No agl daemon answers at {DEAD_URL}.", code=3)


def test_a_state_directory_named_in_the_environment_must_be_utf8_too(tmp_path: Path) -> None:
    result = agl("serve", "--detach", "--port", "0", env={"AGL_STATE_DIR": f"{tmp_path}/x\udcff"})
    assert_one_line_error(
        result, f"AGL_STATE_DIR must be UTF-8 text, and '{tmp_path}/x\\xff' is not.", code=2
    )
    assert list(tmp_path.iterdir()) == []


def test_no_token_at_all_is_exit_4_and_agl_token_supplies_one(daemon: Daemon, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    result = agl("--url", daemon.url, "status", state_dir=elsewhere)
    assert_one_line_error(result, "a bearer token is required", code=4)
    result = agl("--url", daemon.url, "status", state_dir=elsewhere, env={"AGL_TOKEN": daemon.token})
    assert result.returncode == 0, result.stderr


def test_the_token_file_is_never_sent_to_a_host_the_user_named(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("local-secret\n")
    assert resolve(Globals(url="http://127.0.0.1:8123", state_dir=tmp_path)).token == "local-secret"
    assert resolve(Globals(url="https://agl.example.com", state_dir=tmp_path)).token is None
    assert resolve(Globals(url="https://agl.example.com", token="t", state_dir=tmp_path)).token == "t"


def test_the_token_file_goes_to_the_address_file_only_while_its_daemon_holds_the_state_directory(
    tmp_path: Path,
) -> None:
    """Stopped, the default address may be another user's; crashed, the address it left
    may be by now: the token goes to neither."""
    (tmp_path / "token").write_text("local-secret\n")
    assert resolve(Globals(state_dir=tmp_path)) == Target(DEFAULT_URL, None, tmp_path, url_given=False)
    (tmp_path / "address").write_text(DEAD_URL + "\n")
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    (tmp_path / "agl.pid").write_text(f"{ended.pid}\n")  # left by a crash
    assert resolve(Globals(state_dir=tmp_path)) == Target(DEAD_URL, None, tmp_path, url_given=False)
    pidfile.acquire(tmp_path / "agl.pid")  # held (here, by this process)
    try:
        assert resolve(Globals(state_dir=tmp_path)).token == "local-secret"
    finally:
        pidfile.release(tmp_path / "agl.pid")


def test_a_daemon_on_this_machine_is_reached_directly_never_through_a_proxy(daemon: Daemon) -> None:
    """A proxy is another host: it would be sent the token in clear, and dial its own loopback."""
    heard: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            heard.append(self.path)
            self.send_response(502)
            self.end_headers()

    with http.server.HTTPServer(("127.0.0.1", 0), Proxy) as proxy:
        thread = threading.Thread(target=proxy.serve_forever)
        thread.start()
        try:
            address = f"http://127.0.0.1:{proxy.server_address[1]}"
            result = agl(
                "status", "--json", daemon=daemon, env={"HTTP_PROXY": address, "http_proxy": address}
            )
        finally:
            proxy.shutdown()
            thread.join(30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["address"] == daemon.url and heard == []


def test_a_crashed_daemon_s_port_taken_by_another_gets_no_token(daemon: Daemon) -> None:
    daemon.kill()  # its address file stays
    heard: list[str | None] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            heard.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

    port = int(daemon.url.rsplit(":", 1)[1])
    with http.server.HTTPServer(("127.0.0.1", port), Listener) as listener:
        thread = threading.Thread(target=listener.handle_request)
        thread.start()
        result = agl("status", daemon=daemon)
        thread.join(30)
    assert result.returncode != 0 and heard == [None]


def test_help_and_status_load_neither_the_server_nor_the_store(daemon: Daemon) -> None:
    probe = (
        "import sys\n"
        "from agl_cli.cli.main import main\n"
        "sys.argv = ['agl', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('uvicorn', 'starlette', 'agl_cli.server', 'agl_cli.store', 'sqlite3')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)), file=sys.stderr)\n"
    )
    for args in (["--help"], ["--state-dir", str(daemon.state_dir), "status"]):
        result = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=env_without_agl(),
            check=False,
        )
        assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_serve_detach_returns_once_ready_and_stop_ends_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = agl("serve", "--detach", "--port", "0", state_dir=state)
    assert started.returncode == 0, started.stderr
    match = re.match(
        r"agl is running in the background at http://127\.0\.0\.1:\d+ \(pid (\d+)\)", started.stdout
    )
    assert match, started.stdout
    pid = int(match.group(1))
    try:
        assert (state / "agl.log").exists()
        assert json.loads(agl("status", "--json", state_dir=state).stdout)["pid"] == pid

        again = agl("serve", "--detach", "--port", "0", state_dir=state)
        assert_one_line_error(again, "already running")

        stopped = agl("stop", state_dir=state)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"Stopped agl (pid {pid})."
        assert not _running(pid)
        assert not (state / "agl.pid").exists()
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_detached_start_never_takes_the_address_another_daemon_logged_for_its_own(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `agl serve --detach` at once share the state directory's log: the one whose
    daemon lost found the winner's address logged after its own start, and said it had
    started, naming its own daemon, which had exited already. Here the winner's line
    comes into the log as the loser's daemon starts."""
    spawn = subprocess.Popen

    def spawned_as_the_winner_logs_its_address(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started = spawn(*args, **kwargs)
        with (daemon.state_dir / "agl.log").open("a") as log:
            log.write(f"agl {__version__} listening on {daemon.url} (store: {daemon.state_dir / 'agl.db'})\n")
        return started

    monkeypatch.setattr(subprocess, "Popen", spawned_as_the_winner_logs_its_address)
    with pytest.raises(CLIError) as refused:
        start_detached(DaemonConfig(state_dir=daemon.state_dir, port=0))
    assert daemon.proc is not None
    assert str(refused.value) == f"agl is already running (pid {daemon.proc.pid})."


def test_serve_detach_runs_the_agl_installed_whatever_directory_it_is_started_in(tmp_path: Path) -> None:
    """`python -m agl_cli` looks in the working directory first: a checkout of another agl
    there ran in its place, with this one's environment."""
    impostor = tmp_path / "agl_cli"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("")
    (impostor / "__main__.py").write_text("import sys\nprint('not this agl')\nsys.exit(1)\n")
    # As the `agl` script starts: agl_cli from where it is installed, not the directory.
    command = [sys.executable, "-I", "-c", "from agl_cli.cli.main import main; main()"]
    state = tmp_path / "state"
    started = subprocess.run(
        [*command, "serve", "--detach", "--port", "0", "--state-dir", str(state)],
        cwd=tmp_path, env=env_without_agl(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        assert "not this agl" not in (state / "agl.log").read_text()
    finally:
        agl("stop", state_dir=state)


@pytest.mark.parametrize("logging", [[], ["--log-json"]], ids=["plain log", "JSON log"])
def test_serve_detach_passes_on_what_the_daemon_noted_as_it_started(
    tmp_path: Path, logging: list[str]
) -> None:
    state = tmp_path / "state"
    first = agl("serve", "--detach", "--port", "0", *logging, state_dir=state)
    assert (first.returncode, first.stderr) == (0, ""), first.stderr
    agl("pause", state_dir=state)
    agl("stop", state_dir=state)
    again = agl("serve", "--detach", "--port", "0", *logging, state_dir=state)
    try:
        assert again.returncode == 0, again.stderr
        assert again.stderr.splitlines() == [
            "agl: the queue is paused, as it was left: workers get no tasks until agl resume."
        ]
    finally:
        agl("stop", state_dir=state)


def test_serve_detach_waits_past_its_timeout_while_an_older_file_is_brought_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon says before it upgrades the file, which it does before it listens; the
    detached start says so too and waits for it, however long the timeout."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    schema_5_file(state / "agl.db", 100_000)  # an upgrade of half a second or more
    timeout = 5.0
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            began = time.monotonic()
            detached = pool.submit(start_detached, DaemonConfig(state_dir=state, port=0), timeout)
            wait_until(lambda: "agl: bringing" in _text(state / "agl.log"), "the upgrade to begin", 30)
            daemon = int((state / "agl.pid").read_text().split()[0])
            os.kill(daemon, signal.SIGSTOP)  # the upgrade, held until the timeout has passed
            time.sleep(max(began + timeout + 1 - time.monotonic(), 0))
            os.kill(daemon, signal.SIGCONT)
            detached.result(60)
        assert time.monotonic() - began > timeout
        printed = capsys.readouterr().out.splitlines()
        upgrading = f"bringing {state / 'agl.db'} from schema 5 up to {SCHEMA_VERSION}"
        assert printed[0] == f"agl is {upgrading} first; waiting for it."
        assert re.match(r"agl is running in the background at http://\S+ \(pid \d+\)", printed[1]), printed
        assert (
            f"agl: {upgrading} (a few seconds for each million attempts it holds)"
            in (state / "agl.log").read_text()
        )
        assert agl("stop", state_dir=state).returncode == 0
    finally:
        pidfile = state / "agl.pid"
        if pidfile.exists() and _running(pid := int(pidfile.read_text().split()[0])):
            os.kill(pid, signal.SIGKILL)


def test_an_upgrade_whose_time_does_not_grow_with_the_file_says_no_cost(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    database_of_schema(state / "agl.db", 6).close()  # 7 replaces a trigger; 8 lists failed tasks, not all
    daemon = make_daemon(state_dir=state)
    [line] = [line for line in daemon.said() if "bringing" in line]
    assert line == f"agl: bringing {state / 'agl.db'} from schema 6 up to {SCHEMA_VERSION}"


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["status", "--bogus"], "No such option: --bogus (see agl status --help)."),
        (["status", "--state-dir", "/x"], "--state-dir is an option of agl itself: give it before the command (agl --state-dir ... status)."),
        (["tasks", "list", "--url=http://x"], "--url is an option of agl itself: give it before the command (agl --url ... tasks list)."),
        (["queue"], "Missing argument 'FILE' (see agl queue --help)."),
        (["tasks", "list", "--limit", "0"], "Invalid value for '--limit': Input should be greater than or equal to 1 (see agl tasks list --help)."),
        (["bogus"], "No such command 'bogus' (see agl --help)."),
        (["serve", "--task-timeout", "nan"], "Invalid value for '--task-timeout': nan is not a finite number of seconds (see agl serve --help)."),
        (["serve", "--request-timeout", "0"], "Invalid value for '--request-timeout': 0 is out of range (0.001 to 315360000) (see agl serve --help)."),
        (["queue", "--wait", "--timeout", "-inf", "f.json"], "Invalid value for '--timeout': -inf is not a finite number of seconds (see agl queue --help)."),
        (["stop", "--timeout", "soon"], "Invalid value for '--timeout': 'soon' is not a number of seconds (see agl stop --help)."),
        (["serve", "--log-level", "loud"], "Invalid value for '--log-level': 'loud' is not one of 'critical', 'error', 'warning', 'info', 'debug' (see agl serve --help)."),
    ],
)  # fmt: skip
def test_a_command_line_the_parser_refuses_is_one_line_too(
    tmp_path: Path, args: list[str], sentence: str
) -> None:
    assert_one_line_error(agl(*args, state_dir=tmp_path), sentence, code=2)


def test_agl_alone_shows_its_help_and_exits_2(tmp_path: Path) -> None:
    result = agl(state_dir=None)
    assert (result.returncode, result.stderr) == (2, "")
    assert "Usage: agl [OPTIONS] COMMAND [ARGS]..." in result.stdout


def test_serve_detach_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = agl("serve", "--detach", "--port", str(port), state_dir=tmp_path / "s")
    assert_one_line_error(result, f"Port {port} on 127.0.0.1 is already in use")


def test_serve_detach_with_a_directory_where_its_log_goes_names_the_log(tmp_path: Path) -> None:
    (tmp_path / "s" / "agl.log").mkdir(parents=True)
    result = agl("serve", "--detach", "--port", "0", state_dir=tmp_path / "s")
    assert_one_line_error(result, f"The log {tmp_path}/s/agl.log is a directory, not a file.")


def test_serve_detach_whose_python_cannot_be_run_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "python"  # as when the Python agl runs under is another user's
    monkeypatch.setattr(sys, "executable", str(gone))
    with pytest.raises(CLIError) as refused:
        start_detached(DaemonConfig(state_dir=tmp_path / "s", port=0))
    assert str(refused.value) == f"Cannot start the daemon with {gone} (No such file or directory)."


def test_stop_over_http_when_given_a_url(daemon: Daemon) -> None:
    result = agl("--url", daemon.url, "stop", daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Stopped agl at {daemon.url}")
    assert daemon.proc is not None and daemon.proc.wait(10) == 0


@pytest.mark.parametrize(("content", "code"), [(b"my team token\n", 2), (b"tok\xffen\n", 1)])
def test_stop_by_pid_reads_no_token_but_stop_over_http_needs_one(
    daemon: Daemon, content: bytes, code: int
) -> None:
    """A token file spoilt while the daemon runs stops only what needs it: a request."""
    (daemon.state_dir / "token").write_bytes(content)
    over_http = agl("--url", daemon.url, "stop", daemon=daemon)
    assert_one_line_error(over_http, str(daemon.state_dir / "token"), code=code)
    result = agl("stop", daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert daemon.proc is not None and result.stdout.strip() == f"Stopped agl (pid {daemon.proc.pid})."
    assert daemon.proc.wait(10) == 0


def test_stop_when_nothing_runs_is_exit_3(tmp_path: Path) -> None:
    (tmp_path / "address").write_text(DEAD_URL)
    assert_one_line_error(agl("stop", state_dir=tmp_path), "agl is not running: there is no pidfile", code=3)


def test_stop_removes_a_stale_pidfile_and_says_so(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pidfile = tmp_path / "agl.pid"
    pidfile.write_text(f"{gone.pid}\n")
    result = agl("stop", state_dir=tmp_path)
    assert_one_line_error(
        result, f"named pid {gone.pid}, which is not a running agl daemon, so it was removed", code=3
    )
    assert not pidfile.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"0\n",  # os.kill(0, ...) signals one's own process group
        b"1\n",  # init
        b"99999999999999999999\n",  # beyond any pid
        b"\xff\xfe pid\n",
    ],
)
def test_stop_signals_no_process_a_pidfile_cannot_name(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "agl.pid").write_bytes(content)
    result = agl("stop", state_dir=tmp_path)
    assert_one_line_error(
        result, "named no pid, which is not a running agl daemon, so it was removed", code=3
    )


def test_stop_leaves_alone_a_process_whose_command_line_only_mentions_agl(tmp_path: Path) -> None:
    """After a kill -9 the pid may be reused: by an editor open on notes-on-agl.txt, say."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "notes-on-agl.txt"])
    try:
        (tmp_path / "agl.pid").write_text(f"{other.pid}\n")
        result = agl("stop", state_dir=tmp_path)
        assert_one_line_error(result, f"named pid {other.pid}, which is not a running agl", code=3)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@contextlib.contextmanager
def a_stranger_to(directory: Path) -> Iterator[list[str]]:
    """A command prefix under which `directory` cannot be read, as a service's directory
    cannot by anyone but its user: root without its power to read any file, the directory
    another user's; anyone else, with the directory closed for the while."""
    if os.geteuid() != 0:
        directory.chmod(0o000)
        try:
            yield []
        finally:
            directory.chmod(0o700)
        return
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    os.chown(directory, 65534, 65534)
    yield ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_a_state_directory_this_user_cannot_read_is_said_so_not_taken_for_no_daemon(daemon: Daemon) -> None:
    """A user running `agl status` with a service's AGL_STATE_DIR was told that no daemon
    ran there (and `agl stop` died in a traceback)."""
    state = daemon.state_dir
    cases = [
        (["status"], "address", "--url and --token"),
        (["tasks", "list"], "address", "--url and --token"),
        (["stop"], "agl.pid", "--url and --token"),
        (["--url", daemon.url, "status"], "token", "--token"),
    ]
    with a_stranger_to(state) as stranger:
        for args, file, instead in cases:
            result = subprocess.run(
                [*stranger, sys.executable, "-m", "agl_cli", "--state-dir", str(state), *args],
                capture_output=True, text=True, env=env_without_agl(), timeout=60, check=False,
            )  # fmt: skip
            assert_one_line_error(
                result,
                f"Cannot read {state / file} (Permission denied): run agl as the daemon's user, or give its {instead}.",
            )
        detached = subprocess.run(
            [*stranger, sys.executable, "-m", "agl_cli", "serve", "--state-dir", str(state), "--port", "0", "--detach"],
            capture_output=True, text=True, env=env_without_agl(), timeout=60, check=False,
        )  # fmt: skip
        assert_one_line_error(detached, f"The state directory {state} is not writable (Permission denied).")
    assert daemon.status()["pid"] == daemon.proc.pid  # and nothing was stopped


def stale_to_stop_and_to_serve(pid: int, state: Path, make_daemon: Callable[..., Daemon]) -> None:
    """A pidfile in a new `state` naming `pid`, alive but not this directory's daemon:
    `agl stop` removes it, and `agl serve` takes it over."""
    state.mkdir(mode=0o700)
    (state / "agl.pid").write_text(f"{pid}\n")
    result = agl("stop", state_dir=state)
    assert_one_line_error(result, f"named pid {pid}, which is not a running agl daemon", code=3)
    (state / "agl.pid").write_text(f"{pid}\n")
    started = make_daemon(state_dir=state)
    assert (state / "agl.pid").read_text() == f"{started.proc.pid}\n"  # type: ignore[union-attr]


def test_a_pidfile_naming_another_agl_command_is_stale_to_stop_and_to_serve(
    daemon: Daemon, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """After a crash the pid may be reused by `agl rollouts watch`, say: agl, but no daemon,
    as it holds no pidfile's lock."""
    watcher = popen_agl("rollouts", "watch", daemon=daemon)  # returns once it runs agl
    try:
        stale_to_stop_and_to_serve(watcher.pid, tmp_path / "crashed", make_daemon)
        assert watcher.poll() is None  # never signalled
    finally:
        watcher.kill()
        watcher.wait()


def test_a_pidfile_naming_another_directorys_daemon_is_stale_to_stop_and_to_serve(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """After a crash and a reboot the pid may be another directory's daemon's: `agl stop`
    signalled that one, and this directory's daemon would not start."""
    other = tmp_path / "other"
    started = agl("serve", "--detach", "--port", "0", state_dir=other)  # `agl serve` on its command line
    assert started.returncode == 0, started.stderr
    pid = int((other / "agl.pid").read_text())
    try:
        stale_to_stop_and_to_serve(pid, tmp_path / "crashed", make_daemon)
        assert _running(pid)  # never signalled
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_says_so_when_the_pidfile_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "agl.pid").mkdir()
    result = agl("stop", state_dir=tmp_path)
    assert_one_line_error(
        result, "agl.pid names no pid, and it could not be removed (Is a directory)", code=3
    )


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_need_no_daemon(args: list[str]) -> None:
    result = agl(*args)
    assert result.returncode == 0 and result.stdout
