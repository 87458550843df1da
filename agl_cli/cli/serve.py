"""`agl serve`: the daemon, in the foreground or (with --detach) in the background."""

from __future__ import annotations

from pathlib import Path

import typer

from agl_cli import paths
from agl_cli.cli.context import globals_of
from agl_cli.cli.errors import ExitCode, fail

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve(
    ctx: typer.Context,
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on; anything but loopback needs the token."
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0 picks a free one)."),
    state_dir: Path | None = typer.Option(
        None, envvar="AGL_STATE_DIR", help="Where the database, token and pidfile live.", show_default=False
    ),
    memory: bool = typer.Option(False, "--memory", help="Keep state in memory only (lost at exit)."),
    task_timeout: float = typer.Option(
        300.0, min=0.001, help="Seconds a worker may hold a task before it is handed out again."
    ),
    max_attempts: int | None = typer.Option(
        None, min=1, help="Claims per task before it is marked failed (default: unlimited)."
    ),
    log_level: str = typer.Option("info", help=f"One of: {', '.join(LOG_LEVELS)}."),
    log_json: bool = typer.Option(
        False, "--log-json", help="Log one JSON object per line on stderr (for journald, Loki, ...)."
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve the management API without a token (loopback only)."
    ),
    max_body_size: int = typer.Option(
        32 * 1024 * 1024, min=1, help="Largest request body in bytes (413 beyond)."
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        "-d",
        help="Start in the background, return once it is ready; its output goes to STATE_DIR/agl.log.",
    ),
) -> None:
    """Run the daemon in the foreground until SIGINT or SIGTERM (or in the background with --detach)."""
    if log_level.lower() not in LOG_LEVELS:
        fail(f"Unknown log level '{log_level}'; use one of: {', '.join(LOG_LEVELS)}.", ExitCode.USAGE)
    state_dir = _state_dir(ctx, state_dir)
    if detach:
        from agl_cli.cli.detach import start_detached

        arguments = ["--host", host, "--port", str(port), "--task-timeout", repr(task_timeout)]
        arguments += ["--log-level", log_level.lower(), "--max-body-size", str(max_body_size)]
        arguments += ["--memory"] if memory else []
        arguments += ["--log-json"] if log_json else []
        arguments += ["--no-auth"] if no_auth else []
        arguments += ["--max-attempts", str(max_attempts)] if max_attempts is not None else []
        start_detached(state_dir or paths.default_state_dir(), arguments)
        return
    from agl_cli.server.runner import DaemonConfig, StartupError, run

    config = DaemonConfig(
        host=host,
        port=port,
        state_dir=state_dir,
        memory=memory,
        task_timeout=task_timeout,
        max_attempts=max_attempts,
        log_level=log_level.lower(),
        log_json=log_json,
        auth=not no_auth,
        max_body_bytes=max_body_size,
    )
    try:
        run(config)
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def _state_dir(ctx: typer.Context, own: Path | None) -> Path | None:
    """serve's own --state-dir, else the global one, else AGL_STATE_DIR (else the default)."""
    source = ctx.get_parameter_source("state_dir")
    if own is not None and source is not None and source.name == "COMMANDLINE":
        return own
    return globals_of(ctx).state_dir or own
