"""Where agl keeps its files, shared by the daemon and the CLI."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DATABASE_NAME = "agl.db"
TOKEN_NAME = "token"
PIDFILE_NAME = "agl.pid"
LOGFILE_NAME = "agl.log"
ADDRESS_NAME = "address"


# Where the state lives when neither --state-dir nor $AGL_STATE_DIR says, as `--help` says it.
DEFAULT_STATE_DIR_WORDS = "$XDG_STATE_HOME/agl, else ~/.local/state/agl"


def default_state_dir() -> Path:
    """`$AGL_STATE_DIR`, else `$XDG_STATE_HOME/agl`, else `~/.local/state/agl`."""
    explicit = os.environ.get("AGL_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "agl"
    return Path.home() / ".local" / "state" / "agl"


def unusable(state_dir: Path, exc: OSError) -> str:
    """Why `state_dir` could not be made or written to, in one sentence: a file in the way
    (which the system calls "File exists" or "Not a directory"), else what it said."""
    return (
        file_in_the_way(state_dir)
        or f"The state directory {state_dir} is not writable ({exc.strerror or exc})."
    )


def file_in_the_way(state_dir: Path) -> str | None:
    """The sentence that says a file stands where `state_dir`, or a directory above it, would be."""
    for place in (state_dir, *state_dir.parents):
        with contextlib.suppress(OSError):  # a place we may not look at is not the answer
            if place.exists() and not place.is_dir():
                found = "is" if place == state_dir else f"cannot be made: {place} is"
                return f"The state directory {state_dir} {found} a file, not a directory."
    return None
