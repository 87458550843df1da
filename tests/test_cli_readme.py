"""The README's command table says what `--help` says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main

from agl_cli.cli.app import app
from agl_cli.cli.errors import ExitCode
from agl_cli.cli.forward import AGENTLIGHTNING_COMMANDS

README = Path(__file__).parent.parent / "README.md"
# `agl serve`'s options have a table of their own, above the command table.
ELSEWHERE = {"serve", *AGENTLIGHTNING_COMMANDS}


def commands(command: Any, path: str = "agl") -> Iterator[tuple[str, list[str]]]:
    """Every command below `command`: its path, and the first long name of each option."""
    for name, sub in getattr(command, "commands", {}).items():
        if name in ELSEWHERE or sub.hidden:
            continue
        if hasattr(sub, "commands"):
            yield from commands(sub, f"{path} {name}")
            continue
        options = [param.opts[0] for param in sub.params if param.param_type_name == "option"]
        yield f"{path} {name}", [option for option in options if option != "--help"]


def test_the_command_table_names_every_option_of_every_command() -> None:
    rows = [line.split(" | ")[0] for line in README.read_text().splitlines() if line.startswith("| `agl ")]
    for path, options in commands(typer.main.get_command(app)):
        said = " ".join(row for row in rows if re.search(rf"`{re.escape(path)}( |`)", row))
        assert said, f"the README's command table has no row for {path}"
        missing = [option for option in options if option not in said]
        assert not missing, f"the README's command table leaves out {missing} of {path}"


def test_the_exit_code_table_lists_every_exit_code_and_no_other() -> None:
    text = README.read_text().split("**Errors and exit codes.**", 1)[1].split("\n\n", 2)[1]
    codes = [int(match) for match in re.findall(r"^\| (\d+) \|", text, flags=re.MULTILINE)]
    assert codes == [int(code) for code in ExitCode]
