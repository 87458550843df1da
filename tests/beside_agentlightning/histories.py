"""What the random-history tests share: stable names for each server's ids, and playing a
history so that a disagreement names its seed and the calls that led to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Names:
    """Stable names for one server's generated ids, in the order they first appear."""

    seen: dict[str, str] = field(default_factory=dict)

    def of(self, value: str) -> str:
        if value not in self.seen:
            prefix = value.split("-", 1)[0]
            count = sum(1 for name in self.seen.values() if name.startswith(f"<{prefix}-"))
            self.seen[value] = f"<{prefix}-{count + 1}>"
        return self.seen[value]

    def real(self, name: str) -> str:
        """The id `name` stands for; an id no server gave (a stranger) stands for itself."""
        return next((real for real, given in self.seen.items() if given == name), name)


class History(Protocol):
    calls: list[str]  # what was called so far, in words

    async def step(self) -> None: ...


async def play(history: History, seed: int, steps: int) -> None:
    """`steps` steps of `history`; a disagreement is raised with its seed and last 15 calls."""
    for _ in range(steps):
        try:
            await history.step()
        except AssertionError as disagreement:
            calls = "\n".join(history.calls[-15:])
            raise AssertionError(f"seed {seed}, after these calls (the last 15):\n{calls}") from disagreement
