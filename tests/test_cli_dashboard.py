"""`agl dashboard`: the page opened signed in, or its address printed where no browser is."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cli_runner import agl, assert_one_line_error
from daemon import Daemon

from agl_cli.server.sign_in import SIGN_IN_PATH

NO_DISPLAY = {"DISPLAY": "", "WAYLAND_DISPLAY": "", "BROWSER": ""}


def fake_browser(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A `BROWSER` that writes down the address it was asked to open."""
    opened = tmp_path / "opened.txt"
    script = tmp_path / "browser"
    script.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    script.chmod(0o755)
    return {**NO_DISPLAY, "BROWSER": str(script)}, opened


def test_the_browser_opens_the_page_with_a_code_good_once_for_the_token_never_the_token(
    daemon: Daemon, tmp_path: Path
) -> None:
    env, opened = fake_browser(tmp_path)
    result = agl("dashboard", daemon=daemon, env=env)
    assert result.returncode == 0, result.stderr
    address = opened.read_text()
    assert address.startswith(f"{daemon.url}/#code=") and daemon.token not in address
    assert result.stdout == ""
    code = address.split("#code=", 1)[1]
    traded = [daemon.post(SIGN_IN_PATH, json={"code": code}) for _ in range(2)]
    assert [(r.status_code, r.json().get("token")) for r in traded] == [(200, daemon.token), (401, None)]


def test_without_a_browser_the_address_is_printed_with_how_to_forward_the_port(daemon: Daemon) -> None:
    result = agl("dashboard", daemon=daemon, env=NO_DISPLAY)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url == f"{daemon.url}/#token={daemon.token}"
    port = urlsplit(daemon.url).port
    assert f"ssh -N -L {port}:127.0.0.1:{port}" in result.stderr
    assert "No browser could be opened here" in result.stderr
    page = daemon.get(urlsplit(url).path)  # what the browser fetches: the fragment stays behind
    assert page.status_code == 200 and "<title>agl dashboard</title>" in page.text


def test_print_shows_the_address_even_where_a_browser_could_open(daemon: Daemon, tmp_path: Path) -> None:
    env, opened = fake_browser(tmp_path)
    result = agl("dashboard", "--print", daemon=daemon, env=env)
    assert (result.returncode, result.stdout.strip()) == (0, f"{daemon.url}/#token={daemon.token}")
    assert not opened.exists()


def test_a_rollout_named_rides_in_the_address_and_an_unknown_one_is_one_line(
    daemon: Daemon, tmp_path: Path
) -> None:
    odd = "a b&c=d#e"  # what a parameter of the fragment must escape
    daemon.report(odd, final_reward=0.5)  # unsolicited: no task is needed
    printed = agl("dashboard", "--print", "--rollout", odd, daemon=daemon, env=NO_DISPLAY)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == f"{daemon.url}/#token={daemon.token}&rollout=a+b%26c%3Dd%23e"
    env, opened = fake_browser(tmp_path)
    assert agl("dashboard", "--rollout", odd, daemon=daemon, env=env).returncode == 0
    assert re.fullmatch(rf"{re.escape(daemon.url)}/#code=[^&]+&rollout=a\+b%26c%3Dd%23e", opened.read_text())
    unknown = agl("dashboard", "--print", "--rollout", "nope", daemon=daemon, env=NO_DISPLAY)
    assert_one_line_error(unknown, "No rollout or task with id 'nope'.")
    assert unknown.stdout == ""


def test_no_daemon_or_a_wrong_token_is_one_line_and_its_exit_code(daemon: Daemon, tmp_path: Path) -> None:
    assert_one_line_error(
        agl("--url", "http://127.0.0.1:9", "dashboard", state_dir=tmp_path, env=NO_DISPLAY),
        "No agl daemon answers at http://127.0.0.1:9.",
        code=3,
    )
    assert_one_line_error(
        agl("--token", "wrong", "dashboard", daemon=daemon, env=NO_DISPLAY),
        "the bearer token is not valid",
        code=4,
    )


OLDER_TASK = {
    "rollout_id": "rollout-1", "input": 1, "mode": None, "resources_id": None, "create_time": 1.0,
    "last_claim_time": None, "num_claims": 0, "metadata": {}, "status": "queued", "deadline": None,
    "completed_time": None, "duplicates": 0,
}  # fmt: skip


class OlderDaemon(BaseHTTPRequestHandler):
    """A daemon of an agl from before sign-in codes, as it answers: its status, lists
    without the counts a later agl gives with them, and 404s."""

    def do_GET(self) -> None:
        answers: dict[str, object] = {
            "/v1/status": {"version": "0.0.9"},
            "/v1/tasks": {"tasks": [OLDER_TASK]},
            "/v1/resources": {"resources": [], "latest_id": None},
        }
        path = urlsplit(self.path).path
        if path in answers:
            self.answer(200, answers[path])
        else:
            self.do_POST()

    def do_POST(self) -> None:
        self.answer(404, {"detail": "Not Found"})

    def answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def older_daemon() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OlderDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_daemon_started_before_an_upgrade_is_named_with_what_to_do(
    older_daemon: str, tmp_path: Path
) -> None:
    env, opened = fake_browser(tmp_path)
    result = agl("--url", older_daemon, "--token", "t", "dashboard", state_dir=tmp_path, env=env)
    assert_one_line_error(
        result, f"The daemon at {older_daemon} runs agl 0.0.9, which cannot sign a browser in: restart it"
    )
    assert not opened.exists()
    printed = agl("--url", older_daemon, "--token", "t", "dashboard", "--print", state_dir=tmp_path, env=env)
    assert (printed.returncode, printed.stdout.strip()) == (0, f"{older_daemon}/#token=t")


def test_an_older_daemon_lists_without_saying_how_many_and_that_is_all(
    older_daemon: str, tmp_path: Path
) -> None:
    tasks = agl("--url", older_daemon, "--token", "t", "tasks", "list", "--limit", "1", state_dir=tmp_path)
    assert (tasks.returncode, tasks.stderr) == (0, "") and "rollout-1" in tasks.stdout
    bundles = agl("--url", older_daemon, "--token", "t", "resources", "list", state_dir=tmp_path)
    assert (bundles.returncode, bundles.stderr) == (0, "")


def test_a_command_an_older_daemon_has_no_route_for_is_told_so(older_daemon: str, tmp_path: Path) -> None:
    result = agl("--url", older_daemon, "--token", "t", "pause", state_dir=tmp_path)
    assert_one_line_error(
        result,
        f"The daemon at {older_daemon} has no route POST /v1/queue/pause: is it an agl older than this one?",
    )
