"""The `agl` command tree, read off the Typer application.

It is the one source of the man pages and the shell completions, so neither can drift
from the command line. Only plain attributes of the (click-style) commands and
parameters are read, never Typer's rendered help, so the output does not depend on the
terminal or on how a Typer release formats its help screens.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import typer
import typer.main

from agl_cli.cli.help_screens import limits, plain_number

# What a value is, for completion: a free text, a file, a directory (choices aside).
ValueKind = Literal["text", "file", "directory"]

# In a metavar such as `all|now|SEQ` or `[ID|latest]`, the lower-case alternatives are
# words to type as they are; the upper-case ones are placeholders.
LITERAL_WORD = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]  # long names first: ("--detach", "-d")
    metavar: str | None  # None for a flag, which takes no value
    help: str
    default: str | None  # as worth showing; None when there is nothing to show
    envvars: tuple[str, ...]
    choices: tuple[str, ...]  # words to offer when completing its value
    kind: ValueKind
    repeatable: bool
    limits: str | None  # "0 to 65535", "at least 1"

    @property
    def is_flag(self) -> bool:
        return self.metavar is None


@dataclass(frozen=True)
class Argument:
    metavar: str  # as in a synopsis: FILE..., [ID|latest]
    help: str
    default: str | None
    choices: tuple[str, ...]
    kind: ValueKind


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # () is agl itself
    help: str
    panel: str | None  # the heading it is listed under in `agl --help`
    options: tuple[Option, ...]
    arguments: tuple[Argument, ...]
    subcommands: tuple[Command, ...]
    passes_arguments_on: bool  # agentlightning's commands: everything goes to them as given

    @property
    def words(self) -> str:
        """How it is typed: `agl rollouts watch`."""
        return " ".join(("agl", *self.path))

    @property
    def page(self) -> str:
        """Its man page: `agl-rollouts-watch`."""
        return "-".join(("agl", *self.path))

    @property
    def key(self) -> str:
        """Its path as the completion scripts name it: `rollouts watch`, "" for agl."""
        return " ".join(self.path)

    @property
    def paragraphs(self) -> list[str]:
        return [" ".join(block.split()) for block in re.split(r"\n\s*\n", self.help) if block.strip()]

    @property
    def summary(self) -> str:
        """The first sentence, without its full stop."""
        paragraphs = self.paragraphs
        return re.split(r"(?<=\.) ", paragraphs[0])[0].removesuffix(".") if paragraphs else ""

    @property
    def panels(self) -> list[tuple[str | None, list[Command]]]:
        """The subcommands under their headings, in the order `--help` shows them."""
        grouped: dict[str | None, list[Command]] = {}
        for sub in self.subcommands:
            grouped.setdefault(sub.panel, []).append(sub)
        return list(grouped.items())

    def walk(self) -> Iterator[Command]:
        """This command and all below it, in the order `--help` lists them."""
        yield self
        for sub in self.subcommands:
            yield from sub.walk()


def read(app: typer.Typer, name: str = "agl") -> Command:
    command = typer.main.get_command(app)
    return _command(command, typer.Context(command, info_name=name), ())


def _command(command: Any, ctx: Any, path: tuple[str, ...]) -> Command:
    params = [param for param in command.get_params(ctx) if not getattr(param, "hidden", False)]
    subcommands = []
    if hasattr(command, "commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                subctx = typer.Context(sub, info_name=name, parent=ctx)
                subcommands.append(_command(sub, subctx, (*path, name)))
    settings = getattr(command, "context_settings", None) or {}
    panel = getattr(command, "rich_help_panel", None)
    return Command(
        path=path,
        help=command.help or "",
        panel=panel if isinstance(panel, str) else None,
        options=tuple(_option(param) for param in params if param.param_type_name == "option"),
        arguments=tuple(_argument(param) for param in params if param.param_type_name == "argument"),
        subcommands=tuple(subcommands),
        passes_arguments_on=bool(settings.get("ignore_unknown_options") and settings.get("allow_extra_args")),
    )


def _option(param: Any) -> Option:
    names = [*param.opts, *param.secondary_opts]
    flag = bool(getattr(param, "is_flag", False) or getattr(param, "count", False))
    choices = _typed_choices(param)
    if flag:
        metavar = None
    elif param.metavar:
        metavar = param.metavar
    else:
        metavar = "|".join(choices) if choices else param.name.upper()
    return Option(
        names=tuple(sorted(names, key=lambda name: not name.startswith("--"))),
        metavar=metavar,
        help=_text(getattr(param, "help", None)),
        default=None if flag else _default(param),
        envvars=_envvars(param),
        choices=() if flag else choices or _metavar_words(param.metavar),
        kind=_kind(param),
        repeatable=bool(param.multiple),
        limits=_limits(param),
    )


def _argument(param: Any) -> Argument:
    metavar = param.metavar or param.name.upper()
    if param.nargs == -1 and not metavar.endswith("..."):
        metavar += "..."
    if not param.required and not metavar.startswith("["):
        metavar = f"[{metavar}]"
    return Argument(
        metavar=metavar,
        help=_text(getattr(param, "help", None)),
        default=_default(param),
        choices=_typed_choices(param) or _metavar_words(param.metavar),
        kind=_kind(param),
    )


def _text(help_text: str | None) -> str:
    return " ".join((help_text or "").split())


def _typed_choices(param: Any) -> tuple[str, ...]:
    """The values of an enum or Choice type (Typer's own descriptor, or click's type)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        values = descriptor.choices if getattr(descriptor, "is_choice", False) else None
    else:
        values = getattr(getattr(param, "type", None), "choices", None)
    return tuple(_plain(value) for value in values or ())


def _metavar_words(metavar: str | None) -> tuple[str, ...]:
    return tuple(word for word in re.split(r"[|\[\]]", metavar or "") if LITERAL_WORD.fullmatch(word))


def _plain(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    return plain_number(value) if isinstance(value, float) else str(value)


def _default(param: Any) -> str | None:
    show = getattr(param, "show_default", True)
    if isinstance(show, str):
        return show
    value = param.default
    if show is False or value is None or value == [] or value == () or callable(value):
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(item) for item in value)
    return _plain(value)


def _envvars(param: Any) -> tuple[str, ...]:
    envvar = param.envvar
    if not envvar:
        return ()
    return (envvar,) if isinstance(envvar, str) else tuple(envvar)


def _kind(param: Any) -> ValueKind:
    """Paths are files, or directories when they cannot be files or are named `..._dir`; a
    value read by a parser of its own is a path when its metavar names one."""
    descriptor = getattr(param, "type_descriptor", None)
    click_type = getattr(param, "type", None)
    info = getattr(descriptor, "parameter_info", None)
    is_path = bool(getattr(descriptor, "is_path", False)) or type(click_type).__name__ == "Path"
    metavar = (param.metavar or "").removesuffix("...")
    if not (is_path or metavar in ("FILE", "PATH", "DIR") or metavar.endswith("_DIR")):
        return "text"
    file_okay = getattr(info if descriptor is not None else click_type, "file_okay", True)
    if file_okay is False or metavar == "DIR" or (param.name or "").endswith("_dir"):
        return "directory"
    return "file"


def _limits(param: Any) -> str | None:
    low = getattr(param, "min", None)
    high = getattr(param, "max", None)
    if low is None and high is None:
        click_type = getattr(param, "type", None)
        low, high = getattr(click_type, "min", None), getattr(click_type, "max", None)
    return limits(low, high)
