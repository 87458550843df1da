"""What `agl serve` can be told, written once.

The command's options carry these field names and defaults (tests/test_serve_command.py
holds them together), the command builds the configuration from its parsed options by
name, and `--detach` hands the background daemon `argv()`, the options that give the
same configuration back. A new option is a new field here and a new parameter there.
Light on purpose: the CLI imports it at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any


class LogLevel(str, Enum):
    """What `--log-level` takes: uvicorn's names, the quietest first."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


LOG_LEVELS = tuple(level.value for level in LogLevel)
# What `--allowed-host` takes: a name (ASCII; an IDN as its xn-- form) or an address, as a
# Host header carries it, without the port.
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
# The longest duration an option takes: ten years. Longer (`inf`, say) is a mistake, or
# what leaving the option out already means (a result kept for good).
LONGEST_SECONDS = 10 * 365 * 24 * 3600.0


@dataclass(frozen=True)
class DaemonConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    state_dir: Path | None = None  # None: paths.default_state_dir()
    memory: bool = False
    task_timeout: float = 300.0
    max_attempts: int | None = None  # None: unlimited
    rollout_retention: float | None = None  # seconds a result is kept; None: for good
    forget_tasks: bool = False  # retention deletes the tasks whose results (or ends) it deletes
    log_level: str = "info"
    log_json: bool = False
    no_auth: bool = False
    max_body_size: int = 32 * 1024 * 1024
    max_db_size: int | None = None  # None: as large as the disk allows
    max_requests: int = 1024  # in flight at once; beyond, 503 with Retry-After
    request_timeout: float = 60.0  # seconds from a request's first byte to its last; 408 beyond
    allowed_host: tuple[str, ...] = ()  # names a loopback daemon answers besides loopback's (a proxy's)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DaemonConfig:
        """The configuration from a command's parsed options, taken by field name."""
        values: dict[str, Any] = {field.name: options[field.name] for field in fields(cls)}
        values["allowed_host"] = tuple(values["allowed_host"])  # the command hands over a list
        return cls(**values)

    def problem(self) -> str | None:
        """Why these options cannot serve, in one sentence; None if they can."""
        from agl_cli.net import is_loopback

        if not self.host.strip():  # the system would take it for every address, and no URL can name it
            return "--host cannot be empty: give 0.0.0.0 (or ::) to listen on every address."
        if self.no_auth and not is_loopback(self.host):
            return f"Refusing to listen on {self.host} without a token: remove --no-auth."
        for name in self.allowed_host:
            if not HOST_NAME.fullmatch(name):
                return f"--allowed-host takes a host name as a Host header gives it, without a port, not '{name}'."
        if self.no_auth and self.allowed_host:
            return "Refusing to serve a proxy's names without a token: remove --no-auth or --allowed-host."
        return None

    def argv(self) -> list[str]:
        """Command-line options of `agl serve` that give back exactly this configuration."""
        arguments: list[str] = []
        for field in fields(self):
            value = getattr(self, field.name)
            flag = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                arguments += [flag] if value else []
            elif isinstance(value, tuple):
                arguments += [part for item in value for part in (flag, item)]
            elif value is not None:
                arguments += [flag, repr(value) if isinstance(value, float) else str(value)]
        return arguments


DEFAULTS = DaemonConfig()
