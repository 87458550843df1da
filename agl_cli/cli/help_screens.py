"""The type column of `--help`: a flag shows none, a parameter with a metavar shows that,
and a range is said in words (`0.001 to 300`), as the man pages say it.

Typer 0.29 labels every parameter with its Python type, so `--json <bool>` reads as if
the flag took a value (`agl queue --json true` is then refused), and an argument shown
as FILE gets `<list[str]>` beside it. The man pages already say it the plain way (a
flag alone, a value by its metavar); `use_plain_labels` makes `--help` say the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from agl_cli.cli.output import QuietConsole

_typer_option_label = TyperOption.display_type_rich
_typer_argument_label = TyperArgument.display_type_rich
_typer_command_help = TyperCommand.format_help
_typer_group_help = TyperGroup.format_help


def plain_number(value: float) -> str:
    """A limit or a default as typed: 0.001, 300, 315360000, never an exponent or `.0`."""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:g}"
    return str(value)


def limits(low: float | None, high: float | None) -> str | None:
    """A number's range in words, as `--help` and the man pages give it (`0.001 to 300`)."""
    if low is not None and high is not None:
        return f"{plain_number(low)} to {plain_number(high)}"
    if low is not None:
        return f"at least {plain_number(low)}"
    if high is not None:
        return f"at most {plain_number(high)}"
    return None


def _range_in_words(parameter: TyperOption | TyperArgument) -> str | None:
    if getattr(parameter, "count", False) and parameter.min == 0 and parameter.max is None:
        return None  # a counted flag's floor says nothing
    return limits(parameter.min, parameter.max)


def _option_label(option: TyperOption, ctx: Any) -> str | None:
    if option.is_flag or option.count:
        return None  # nothing to type after it
    return _typer_option_label(option, ctx)


def _argument_label(argument: TyperArgument, ctx: Any) -> str | None:
    if argument.metavar is not None:
        return None  # the name column shows the metavar already
    return _typer_argument_label(argument, ctx)


def _quietly(format_help: Callable[..., None]) -> Callable[..., None]:
    """`format_help`, with Typer's help screens written by a `QuietConsole`. Typer's rich
    help (and the Markdown reader it brings) is imported here, when a help screen is asked
    for: every other command, and the daemon, start without it."""

    def format_quietly(command: Any, ctx: Any, formatter: Any) -> None:
        import typer.rich_utils

        typer.rich_utils.Console = QuietConsole  # type: ignore[attr-defined]
        format_help(command, ctx, formatter)

    return format_quietly


def use_plain_labels() -> None:
    """Render every help screen's type column the man pages' way, and end one cut short by
    its reader (`agl --help | head -1`) as every command does (idempotent)."""
    TyperOption.display_type_rich = _option_label  # type: ignore[method-assign,assignment]
    TyperArgument.display_type_rich = _argument_label  # type: ignore[method-assign,assignment]
    TyperOption._get_number_range_help_str = _range_in_words  # type: ignore[method-assign,assignment]
    TyperArgument._get_number_range_help_str = _range_in_words  # type: ignore[method-assign,assignment]
    TyperCommand.format_help = _quietly(_typer_command_help)  # type: ignore[method-assign]
    TyperGroup.format_help = _quietly(_typer_group_help)  # type: ignore[method-assign]
