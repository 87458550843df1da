"""Where agl keeps its files, shared by the daemon and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_NAME = "agl.db"
TOKEN_NAME = "token"
PIDFILE_NAME = "agl.pid"
LOGFILE_NAME = "agl.log"
ADDRESS_NAME = "address"


def default_state_dir() -> Path:
    """`$AGL_STATE_DIR`, else `$XDG_STATE_HOME/agl`, else `~/.local/state/agl`."""
    explicit = os.environ.get("AGL_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "agl"
    return Path.home() / ".local" / "state" / "agl"
