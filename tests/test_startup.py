"""`agl` starts fast: `--version` before Typer, `--help` and `status` without the server stack.

Each probe runs the real entry point in a fresh interpreter and reports what it imported;
`bench/startup.py` measures the time itself.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from daemon import env_without_agl

from agl_cli import __version__
from agl_cli.cli.app import app
from agl_cli.client import Address, AglClient

DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing answers

PROBE = """
import json, sys
from agl_cli.cli.main import main
out, sys.argv = sys.argv[1], ['agl', *sys.argv[2:]]
try:
    main()
except SystemExit:
    pass
with open(out, 'w') as handle:
    json.dump(sorted(sys.modules), handle)
"""

# The daemon's stack, and what only some commands need.
SERVER = ("uvicorn", "starlette", "sse_starlette", "agl_cli.server", "agl_cli.store", "sqlite3")
COMMAND_ONLY = ("agl_cli.client", "agl_cli.models", "httpx", "httpcore", "orjson", "agl_cli.cli.taskfile")
COMMAND_ONLY += ("agl_cli.cli.waiting", "agl_cli.cli.detach", "rich.progress", "rich.live")
HELP_SCREENS = ("typer.rich_utils", "rich.markdown", "markdown_it")  # Typer's help, in Markdown


def imported(tmp_path: Path, *args: str) -> list[str]:
    """The modules `agl ARGS` imported, run with nothing in its environment pointing at a daemon."""
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        env={**env_without_agl(), "AGL_STATE_DIR": str(tmp_path / "state")},
        timeout=60,
        check=False,
    )
    assert out.exists(), result.stderr
    modules: list[str] = json.loads(out.read_text())
    return modules


def loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [name for name in modules if name.startswith(prefixes)]


def help_paths() -> list[list[str]]:
    """Every command that has a --help of its own (agentlightning's get theirs from it)."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def visit(command: Any, ctx: Any, path: list[str]) -> None:
        if getattr(command, "add_help_option", True):
            paths.append(path)
        for name in getattr(command, "commands", {}):
            sub = command.get_command(ctx, name)
            visit(sub, typer.Context(sub, info_name=name, parent=ctx), [*path, name])

    visit(root, typer.Context(root, info_name="agl"), [])
    return paths


def test_version_is_answered_before_typer_rich_or_any_command_is_imported(tmp_path: Path) -> None:
    modules = imported(tmp_path, "--version")
    assert loaded(modules, ("agl_cli",)) == ["agl_cli", "agl_cli.cli", "agl_cli.cli.main"]
    assert loaded(modules, ("typer", "click", "rich", "pydantic", *SERVER, *COMMAND_ONLY)) == []


def test_version_says_the_same_on_the_fast_path_and_through_typer() -> None:
    fast = subprocess.run([sys.executable, "-m", "agl_cli", "--version"], capture_output=True, text=True)
    slow = subprocess.run(
        [sys.executable, "-m", "agl_cli", "--url", DEAD_URL, "--version"], capture_output=True, text=True
    )
    assert fast.returncode == slow.returncode == 0
    assert fast.stdout == slow.stdout == f"agl {__version__}\n"
    assert fast.stderr == slow.stderr == ""


@pytest.mark.parametrize("path", help_paths(), ids=lambda path: " ".join(["agl", *path, "--help"]))
def test_help_imports_neither_the_server_nor_what_only_commands_need(tmp_path: Path, path: list[str]) -> None:
    modules = imported(tmp_path, *path, "--help")
    assert "agl_cli.cli.app" in modules and "typer.rich_utils" in modules
    assert loaded(modules, SERVER + COMMAND_ONLY) == []


def test_status_imports_the_http_client_but_not_the_server_or_other_commands_needs(tmp_path: Path) -> None:
    modules = imported(tmp_path, "--url", DEAD_URL, "status")
    assert "agl_cli.client" in modules
    assert loaded(modules, SERVER) == []
    others = ("agl_cli.models", "agl_cli.cli.taskfile", "agl_cli.cli.waiting", "agl_cli.cli.detach")
    assert loaded(modules, others) == []
    assert loaded(modules, HELP_SCREENS) == []  # they come with a help screen only


@pytest.mark.parametrize(
    ("url", "reads_a_store"),
    [
        ("http://127.0.0.1:9", False),
        ("http://[::1]:9", False),
        ("https://127.0.0.1:9", True),
        ("http://agl.example:9", True),  # and one more for each proxy set in the environment
    ],
)
def test_a_client_reads_a_certificate_store_only_where_tls_or_a_proxy_may_be_met(
    monkeypatch: pytest.MonkeyPatch, url: str, reads_a_store: bool
) -> None:
    """Reading one costs about a tenth of a command's time, and plain HTTP to this machine
    needs none."""
    reads: list[object] = []
    read = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        reads.append(args)
        read(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    AglClient(url).close()
    assert bool(reads) is reads_a_store


def test_a_client_for_plain_http_does_not_move_to_https() -> None:
    client = AglClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="cannot move to https://"):
        client.move_to(Address("https://127.0.0.1:9", None))
    client.move_to(Address("http://127.0.0.1:10", None))  # a restart on another port
    assert client.url == "http://127.0.0.1:10"
    client.close()
