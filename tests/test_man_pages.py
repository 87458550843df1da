"""The man pages: one per command, complete, and rendered by groff and man without a warning.

groff and man-db are Debian packages, not Python ones: `.ci/run` installs them where they
are missing, and without them the rendering tests skip, saying so. (That they are current
is `test_completions.test_regenerating_completions_and_man_pages_changes_nothing`.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from agl_cli.cli.app import app
from agl_cli.cli.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = sorted(MAN.glob("*.1"))


def cli_commands() -> dict[str, tuple[Any, Any]]:
    """Every command of the real CLI by its page name (`agl-rollouts-watch`), with its context."""
    root = typer.main.get_command(app)
    found: dict[str, tuple[Any, Any]] = {}

    def visit(command: Any, ctx: Any, page: str) -> None:
        found[page] = (command, ctx)
        for name in getattr(command, "commands", {}):
            sub = command.get_command(ctx, name)
            visit(sub, typer.Context(sub, info_name=name, parent=ctx), f"{page}-{name}")

    visit(root, typer.Context(root, info_name="agl"), "agl")
    return found


def sections(page: Path) -> list[str]:
    return re.findall(r"^\.SH (.+)$", page.read_text(), flags=re.MULTILINE)


def roff(text: str) -> str:
    return text.replace("-", "\\-")


def test_every_command_and_subcommand_has_a_page() -> None:
    assert {page.stem for page in PAGES} == set(cli_commands())
    for name in ("agl", "agl-serve", "agl-queue", "agl-resources-push", "agl-rollouts-watch"):
        assert (MAN / f"{name}.1").exists()


def help_screen(page: str) -> str:
    words = page.split("-")[1:]  # agl-rollouts-watch: rollouts watch
    result = CliRunner().invoke(app, [*words, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def panel_rows(screen: str) -> list[list[str]]:
    """The words on the first line of each row of `--help`'s panels (a required one's * left out)."""
    return [
        line[1:-1].replace(",", " ").removeprefix(" *").split()
        for line in screen.splitlines()
        if line.startswith("│ ") and line[2:6].strip()
    ]


def test_help_shows_a_flag_alone_and_a_value_by_its_metavar_as_the_man_pages_do() -> None:
    """`--json <bool>` would read as if the flag took a value; `FILE <list[str]>` says nothing more."""
    for page, (command, ctx) in cli_commands().items():
        if not command.add_help_option:
            continue  # agentlightning's commands: their help is theirs
        screen = help_screen(page)
        rows = panel_rows(screen)
        for param in command.get_params(ctx):
            shown = param.opts if param.param_type_name == "option" else [param.metavar]
            row = next(row for row in rows if row[: len(shown)] == shown)
            before_help = row[: row.index(param.help.split()[0], len(shown))]
            if param.param_type_name == "argument" or param.is_flag:
                assert before_help == shown, (page, shown)  # nothing beside the name
            elif param.metavar is not None:
                assert before_help[len(shown)] == param.metavar, (page, shown)
        assert "<bool>" not in screen and "<list[" not in screen, page


def test_help_says_a_range_as_the_man_page_does_beside_its_metavar_on_an_80_column_terminal() -> None:
    """`[0.001<=x<=315360000.0` on one line and a lone `]` on the next read as nothing at all."""
    serve = CliRunner().invoke(app, ["serve", "--help"], terminal_width=80).output
    for option in ("--task-timeout", "--rollout-retention", "--request-timeout"):
        [row] = [line for line in serve.splitlines() if f" {option} " in line]
        assert " S [0.001 to 315360000] " in row, row
    assert "Range: 0.001 to 315360000." in (MAN / "agl-serve.1").read_text()
    port = next(line for line in serve.splitlines() if " --port " in line)
    assert " PORT [0 to 65535] " in port, port


def test_every_state_dir_option_names_the_directory_taken_without_it() -> None:
    """`agl serve --state-dir`, `agl compact --state-dir` and `agl --state-dir` all say it."""
    helps = [
        param.help
        for command, ctx in cli_commands().values()
        for param in command.get_params(ctx)
        if "--state-dir" in getattr(param, "opts", ())
    ]
    assert len(helps) >= 4
    for help_text in helps:
        assert "(default: $XDG_STATE_HOME/agl, else ~/.local/state/agl)" in help_text, help_text


def test_each_paragraph_of_a_command_s_help_is_one_line_so_that_help_wraps_it_whole() -> None:
    """`--help` keeps a docstring's line breaks: one inside a paragraph shows as a line cut short."""
    broken = [
        (page, paragraph)
        for page, (command, _) in cli_commands().items()
        for paragraph in (command.help or "").strip().split("\n\n")
        if "\n" in paragraph.strip()
    ]
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_a_page_has_the_usual_sections_and_every_option_of_its_command(page: Path) -> None:
    command, ctx = cli_commands()[page.stem]
    text = page.read_text()
    expected = ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"]
    assert [name for name in sections(page) if name in expected] == expected
    options = [param for param in command.get_params(ctx) if param.param_type_name == "option"]
    if options:
        assert "OPTIONS" in sections(page)
    for option in options:
        for name in [*option.opts, *option.secondary_opts]:
            assert f"\\fB{roff(name)}\\fR" in text, name
        if option.envvar:
            assert f"Environment: {option.envvar}." in text
    for code in ExitCode:
        assert f".B {int(code)}\n" in text
    assert f"{roff(page.stem)} \\- " in text  # NAME, as whatis/apropos read it


def test_pages_show_defaults_and_choices_and_carry_no_date() -> None:
    serve = (MAN / "agl-serve.1").read_text()
    assert "\\fB\\-\\-port\\fR \\fIPORT\\fR\nPort to listen on" in serve
    assert "Default: 8000." in serve and "Range: 0 to 65535." in serve
    assert "\\fB\\-\\-mode\\fR \\fItrain|val|test\\fR" in (MAN / "agl-queue.1").read_text()
    top = (MAN / "agl.1").read_text()
    assert ".SH ENVIRONMENT" in top and "AGL_URL" in top and "AGL_TOKEN" in top
    for page in PAGES:
        assert re.search(r'^\.TH \S+ 1 "" "agl \d', page.read_text(), flags=re.MULTILINE), page.name


groff = shutil.which("groff")
needs_groff = pytest.mark.skipif(
    groff is None, reason="groff is not installed (.ci/run installs groff-base and man-db with apt-get)"
)


@needs_groff
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_groff_renders_the_page_without_a_warning(page: Path) -> None:
    assert groff is not None
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.skipif(shutil.which("man") is None or groff is None, reason="man-db's man is not installed")
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_man_shows_the_page_without_a_warning(page: Path) -> None:
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
    result = subprocess.run(
        ["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    shown = re.sub(".\b", "", result.stdout)  # no overstrike: bold N\bN is N
    assert "NAME" in shown and "EXIT STATUS" in shown


def test_ci_installs_the_system_tools_then_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = next(line.strip() for line in readme.splitlines() if "python -m pytest" in line)
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in steps if line and not line.startswith("#")]
    # The README's `install; run` is CI's two last steps, the install never the reason CI fails.
    assert steps[-2:] == ["bash scripts/install-test-tools || true", command.split("; ", 1)[1]]
    assert command.split("; ", 1)[0] == "bash scripts/install-test-tools"
    script = (ROOT / "scripts" / "install-test-tools").read_text()
    for tool in ("groff", "man-db", "zsh", "fish", "wrk", "chromium", "gcc"):
        assert tool in script
