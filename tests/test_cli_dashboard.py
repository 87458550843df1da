"""`agl dashboard`: the page opened signed in, or its address printed where no browser is."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

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
