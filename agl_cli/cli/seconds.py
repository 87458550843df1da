"""Options that take a number of seconds: a finite number within a range, refused in
words that say which rule it broke.

Typer checks a range with pydantic, which turns `nan` down as "less than or equal to
315360000": true of no number and no help to whoever typed it."""

from __future__ import annotations

import math
from typing import Any

import typer

from agl_cli.cli.help_screens import limits


def seconds_option(
    default: float | None, *names: str, least: float, most: float | None = None, **option: Any
) -> Any:
    """A `typer.Option` of seconds (metavar S) from `least` up to `most`, shown in `--help`
    and the man page as their range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value):
            raise typer.BadParameter(f"{text} is not a finite number of seconds")
        if value < least or (most is not None and value > most):
            raise typer.BadParameter(f"{text} is out of range ({limits(least, most)})")
        return value

    return typer.Option(default, *names, min=least, max=most, metavar="S", parser=parse, **option)
