"""What the commands print: rich for people on a terminal, JSON for programs.

Rich honours NO_COLOR and drops styling when its stream is not a terminal. JSON goes out
through orjson, one document or one line per record, flushed at once so that a pipe sees
each record as it happens.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.segment import Segment
from rich.style import StyleType
from rich.table import Column, Table
from rich.text import Text

from agl_cli.cli.errors import reader_gone


class QuietConsole(Console):
    """Ends as every command does when what reads its output goes away, rather than with
    rich's own exit 1."""

    def on_broken_pipe(self) -> None:
        reader_gone()


@functools.cache
def out() -> Console:
    console = QuietConsole(soft_wrap=True, highlight=False)
    if not console.is_terminal:  # a pipe or a file: never cut a line to fit an imaginary screen
        console.width = 10_000
    return console


@functools.cache
def err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def stdout_is_terminal() -> bool:
    return out().is_terminal


def stderr_is_terminal() -> bool:
    return err().is_terminal


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr, never mixed with the output."""
    err().print(Text(message, style="dim"))


def aside(message: str) -> None:
    """A `note` only for a person at a terminal: a script reading stderr gets nothing."""
    if stderr_is_terminal():
        note(message)


def write_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def json_text(value: Any) -> str:
    import orjson  # here rather than at the top: `agl --help` writes no JSON

    return orjson.dumps(value).decode()


def print_json_line(value: Any) -> None:
    write_line(json_text(value))


def print_json(value: Any) -> None:
    """One JSON document: indented for a person, compact for a pipe."""
    if stdout_is_terminal():
        out().print_json(data=value)
    else:
        write_line(json_text(value))


def print_json_array(values: Iterable[Any]) -> None:
    """One JSON array, written an element at a time (compact): however long, it is never
    held whole."""
    separator = "["
    for value in values:
        sys.stdout.write(separator + json_text(value))
        separator = ","
    sys.stdout.write("[]\n" if separator == "[" else "]\n")
    sys.stdout.flush()


def print_json_lines(values: Iterable[Any]) -> None:
    for value in values:
        sys.stdout.write(json_text(value) + "\n")
    sys.stdout.flush()


def timestamp(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: float | None) -> str:
    if value is None:
        return "-"
    return duration(max(time.time() - value, 0.0)) + " ago"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def size(number: int) -> str:
    """Bytes for people: `812 B`, `4.1 kB`, `181.2 MB`, `20.3 GB`."""
    value = float(number)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} TB"


def count(number: int, noun: str) -> str:
    """`1 task`, `2,500 tasks`."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def were(number: int, noun: str, done: str, *, the: bool = False) -> str:
    """What a change did, in words: `2,500 tasks were queued`, `1 task was queued`, and
    with `the`, `the 3 tasks were queued`, `the task was queued`."""
    if number == 1:
        return f"{'the' if the else '1'} {noun} was {done}"
    return f"{'the ' if the else ''}{count(number, noun)} were {done}"


def reward(value: Any) -> str:
    """Three decimals, or three significant digits where that would be long (1e300)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3g}"


def brief(value: Any, width: int = 40) -> str:
    """A JSON value cut to one short line, for a table cell."""
    text = value if isinstance(value, str) else json_text(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# Control characters (C0, DEL, C1) as `\x1b`: a worker chooses an unsolicited rollout's id,
# and an escape sequence in it must not clear or retitle the terminal that lists it.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
# Bidi formatting characters as `\u202e`: an override in someone else's id must not
# reorder the rest of the line it is printed on (as the dashboard isolates them).
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_CONTROLS.update({code: f"\\u{code:04x}" for code in _BIDI})
_CONTROLS_BUT_LINES = {code: written for code, written in _CONTROLS.items() if code != ord("\n")}


def shown(text: str, lines: bool = False) -> str:
    """`text` with its control characters written out, safe to print on a terminal; with
    `lines`, its line breaks kept (for text agl laid out in lines, such as indented JSON)."""
    return text.translate(_CONTROLS_BUT_LINES if lines else _CONTROLS)


def plain(text: str) -> Text:
    """Text from the daemon as a cell or a line: never read as rich markup (a '[/x]' in
    an id would raise), with its control characters written out."""
    return Text(shown(text))


GAP = 2  # between two columns of a `table`: the right padding of one, the left of the next
MIN_SHRUNK = 10  # the narrowest a shrinking column is cut to before it goes


class _Table(Table):
    """A rich table whose text cells are `plain`: what the daemon sends is shown as it is.

    On a narrow screen it leaves out its `droppable` columns, the first first, the
    `shrinkable` one cut with '…' to the room left before it goes; it never cuts or wraps
    a word of the others (an id, a status, a header), and if they are wider than the
    screen, the lines are longer than the screen rather than an id cut short."""

    droppable: Sequence[str] = ()
    shrinkable: str | None = None

    def add_row(
        self, *renderables: RenderableType | None, style: StyleType | None = None, end_section: bool = False
    ) -> None:
        cells = [plain(cell) if isinstance(cell, str) else cell for cell in renderables]
        super().add_row(*cells, style=style, end_section=end_section)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fitted = copy.copy(self)
        fitted.columns = self._fit(options.max_width)
        width = max(options.max_width, _width(fitted.columns))
        yield from _unpadded(
            Table.__rich_console__(fitted, console, options.update(width=width)), console, options
        )

    def _fit(self, width: int) -> list[Column]:
        columns = list(self.columns)
        leaving = [column for name in self.droppable for column in columns if column.header == name]
        while leaving and _width(columns) > width:
            column = leaving.pop(0)
            if column.header == self.shrinkable:
                room = width - _width([other for other in columns if other is not column]) - GAP
                if room >= MIN_SHRUNK:
                    columns[columns.index(column)] = dataclasses.replace(column, max_width=room)
                    break
            columns.remove(column)
        return columns


def _width(columns: Sequence[Column]) -> int:
    """The width of a table of these columns, each as wide as its widest cell, uncut."""
    widths = [max(_cell_width(cell) for cell in (str(column.header), *column.cells)) for column in columns]
    return sum(widths) + GAP * max(len(widths) - 1, 0)


def _cell_width(cell: RenderableType) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


class _FoldingTable(_Table):
    """A `_Table` whose values fold to the screen: widened to its longest value, as the
    others are, it would pad every line to it."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        return _unpadded(Table.__rich_console__(self, console, options), console, options)


def _unpadded(rendered: RenderResult, console: Console, options: ConsoleOptions) -> RenderResult:
    """A table's lines without the spaces that fill out its last column, into a pipe or a
    file, where they are only noise for `grep`, `awk` or a diff; as they are on a screen."""
    if options.is_terminal:
        yield from rendered
        return
    segments = (
        piece
        for part in rendered
        for piece in ((part,) if isinstance(part, Segment) else console.render(part, options))
    )
    for line in Segment.split_lines(segments):
        while line and not line[-1].control and not line[-1].text.strip(" "):
            line.pop()
        if line and not line[-1].control:
            last = line.pop()
            line.append(Segment(last.text.rstrip(" "), last.style))
        yield from line
        yield Segment.line()


def grid(label_style: str = "bold") -> Table:
    """Two columns, `label  value`, without lines; values are `plain` and fold."""
    rows = _FoldingTable.grid(padding=(0, 2))
    rows.add_column(style=label_style)
    rows.add_column(overflow="fold")
    return rows


def table(*columns: str, drop: Sequence[str] = (), shrink: str | None = None) -> Table:
    """A plain table of one-line cells: ids are never cut nor wrapped, so they can be copied
    whole. A narrow screen goes without the columns named in `drop`, the first first;
    `shrink`, one of them, is free text cut to the room left before it goes."""
    grid = _Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    grid.droppable, grid.shrinkable = drop, shrink
    for column in columns:
        grid.add_column(column, no_wrap=True, overflow="ellipsis" if column == shrink else "ignore")
    return grid


def show_record(record: Mapping[str, Any], title: str | None = None) -> None:
    """A record as `field  value` lines; nested values as indented JSON."""
    import orjson

    rows = grid()
    for key, value in record.items():
        text: str | Text
        if key.endswith("_time") and isinstance(value, (int, float)):
            text = f"{timestamp(value)}  ({value})"
        elif isinstance(value, (dict, list)) and value:
            text = Text(shown(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode(), lines=True))
        else:
            text = json_text(value) if not isinstance(value, str) else value
        rows.add_row(key, text)
    if title:
        out().print(Text(title, style="bold cyan"))
    out().print(rows)


class Update(Protocol):
    def __call__(self, completed: int, total: int | None = None) -> None: ...


@contextlib.contextmanager
def progress_bar(show: bool, label: str, total: int, bytes_: bool = False) -> Iterator[Update]:
    """A rich progress bar on stderr, on a terminal only; yields `update(completed)`, which
    also takes a new total where it was not known at the start."""
    if not show:
        yield lambda completed, total=None: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    count = DownloadColumn() if bytes_ else MofNCompleteColumn()
    columns = (TextColumn(label), BarColumn(), count, TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err(), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda completed, total=None: progress.update(task, completed=completed, total=total)
