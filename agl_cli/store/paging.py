"""Filters, sorting and pages of the store API's queries, as SQL.

A query names conditions (a value within a list, a substring, an exact value), combined
with AND or OR, plus conditions that must hold whatever the combination (the rollout a
span belongs to), a field to sort by and a page. Sorting follows 0.3.0's: a missing time
sorts after every time, another missing value as the empty string; ties keep the order
of insertion. Field names reach SQL only through each table's map of known columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Logic = Literal["and", "or"]


@dataclass
class Where:
    """Conditions of one query, with their parameters, built up in order."""

    logic: Logic = "and"
    conditions: list[str] = field(default_factory=list)
    must: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    must_params: list[Any] = field(default_factory=list)

    def within(self, column: str, values: Sequence[Any] | None) -> Where:
        if values is not None:
            self.conditions.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
            self.params += values
        return self

    def within_implied(
        self, column: str, values: Sequence[Any] | None, indexed: str, implied: Sequence[Any]
    ) -> Where:
        """`column` within `values`, stated with what those imply of an `indexed` column
        (within `implied`), so that SQLite reads the index instead of every row."""
        if values:
            marks = ", ".join("?" * len(implied)), ", ".join("?" * len(values))
            self.conditions.append(f"({indexed} IN ({marks[0]}) AND {column} IN ({marks[1]}))")
            self.params += [*implied, *values]
            return self
        return self.within(column, values)

    def contains(self, column: str, text: str | None) -> Where:
        if text is not None:
            self.conditions.append(f"instr({column}, ?) > 0")
            self.params.append(text)
        return self

    def equals(self, column: str, value: Any) -> Where:
        if value is not None:
            self.conditions.append(f"{column} = ?")
            self.params.append(value)
        return self

    def require(self, condition: str, *params: Any) -> Where:
        self.must.append(condition)
        self.must_params += params
        return self

    def sql(self) -> tuple[str, list[Any]]:
        """The WHERE clause (or nothing) and its parameters: what must hold, then the rest."""
        parts = list(self.must)
        if self.conditions:
            parts.append("(" + f" {self.logic.upper()} ".join(self.conditions) + ")")
        if not parts:
            return "", []
        return " WHERE " + " AND ".join(parts), [*self.must_params, *self.params]


def order_by(
    sort_by: str | None, sort_order: Literal["asc", "desc"], columns: Mapping[str, str], insertion: str
) -> str:
    """An ORDER BY clause for a field of the table's map; ties in insertion order."""
    if sort_by is None:
        return f" ORDER BY {insertion}"
    column = columns[sort_by]
    direction = sort_order.upper()
    if sort_by.endswith("_time"):
        return f" ORDER BY ({column} IS NULL) {direction}, {column} {direction}, {insertion}"
    return f" ORDER BY coalesce({column}, '') {direction}, {insertion}"


def page(limit: int, offset: int) -> tuple[str, list[int]]:
    """LIMIT and OFFSET; a limit of -1 means every row, as it does in SQLite."""
    return " LIMIT ? OFFSET ?", [limit, offset]
