"""`agl serve`: the daemon, in the foreground or (with --detach) in the background."""

from __future__ import annotations

from pathlib import Path

import typer

from agl_cli.cli.context import state_dir_of, state_dir_option
from agl_cli.cli.errors import ExitCode, fail
from agl_cli.cli.seconds import seconds_option
from agl_cli.daemon_config import DEFAULTS, LOG_LEVELS, LONGEST_SECONDS, DaemonConfig, LogLevel


def serve(
    ctx: typer.Context,
    host: str = typer.Option(
        DEFAULTS.host, metavar="HOST", help="Address to listen on; anything but loopback needs the token."
    ),
    port: int = typer.Option(
        DEFAULTS.port, min=0, max=65535, metavar="PORT", help="Port to listen on (0 picks a free one)."
    ),
    state_dir: Path | None = state_dir_option(),
    memory: bool = typer.Option(
        DEFAULTS.memory, "--memory", help="Keep state in memory only (lost at exit)."
    ),
    task_timeout: float = seconds_option(
        DEFAULTS.task_timeout,
        least=0.001,
        most=LONGEST_SECONDS,
        help="Seconds a worker may hold a task before it is handed out again.",
    ),
    max_attempts: int | None = typer.Option(
        DEFAULTS.max_attempts,
        min=1,
        metavar="N",
        help="Claims per task before it is marked failed (default: unlimited).",
    ),
    rollout_retention: float | None = seconds_option(
        DEFAULTS.rollout_retention,
        least=0.001,
        most=LONGEST_SECONDS,
        help="Seconds a completed rollout is kept after it arrives; older ones are deleted,"
        " with their spans (default: kept for good).",
        show_default=False,
    ),
    forget_tasks: bool = typer.Option(
        DEFAULTS.forget_tasks,
        "--forget-tasks",
        help="With --rollout-retention, delete a task too (its attempts included) when its result is"
        " deleted, or when it failed or was cancelled that long ago; a report for it then counts as"
        " unsolicited.",
    ),
    log_level: LogLevel = typer.Option(
        DEFAULTS.log_level, case_sensitive=False, metavar="LEVEL", help=f"One of: {', '.join(LOG_LEVELS)}."
    ),
    log_json: bool = typer.Option(
        DEFAULTS.log_json,
        "--log-json",
        help="Log one JSON object per line on stderr (for journald, Loki, ...).",
    ),
    no_auth: bool = typer.Option(
        DEFAULTS.no_auth, "--no-auth", help="Serve the management API without a token (loopback only)."
    ),
    max_body_size: int = typer.Option(
        DEFAULTS.max_body_size, min=1, metavar="BYTES", help="Largest request body in bytes (413 beyond)."
    ),
    max_db_size: int | None = typer.Option(
        DEFAULTS.max_db_size,
        min=1,
        metavar="BYTES",
        help="Largest the database may grow, in bytes; beyond it writes are refused (507) and reads go on.",
        show_default=False,
    ),
    max_requests: int = typer.Option(
        DEFAULTS.max_requests,
        min=1,
        metavar="N",
        help="Requests served at once, and as many more that wait (long polls, waits, streams); beyond, 503 with Retry-After.",
    ),
    request_timeout: float = seconds_option(
        DEFAULTS.request_timeout,
        least=0.001,
        most=LONGEST_SECONDS,
        help="Seconds a client may take to send a whole request, from its first byte; 408 beyond.",
    ),
    allowed_host: list[str] = typer.Option(
        DEFAULTS.allowed_host,
        "--allowed-host",
        metavar="NAME",
        help="Also answer requests addressed to NAME (the public name a proxy on this machine passes on"
        " as Host); beyond loopback, answer no other name but addresses (DNS rebinding); repeatable.",
        show_default=False,
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        "-d",
        help="Start in the background, return once it is ready; its output goes to STATE_DIR/agl.log.",
    ),
) -> None:
    """Run the daemon in the foreground until SIGINT, SIGTERM or SIGHUP (or in the background with --detach)."""
    if forget_tasks and rollout_retention is None:
        fail(
            "--forget-tasks needs --rollout-retention: tasks are forgotten as their results are deleted.",
            ExitCode.USAGE,
        )
    options = ctx.params | {"state_dir": state_dir_of(ctx, state_dir), "log_level": log_level.value}
    config = DaemonConfig.from_options(options)
    problem = config.problem()
    if problem is not None:
        fail(problem, ExitCode.USAGE)
    if detach:
        from agl_cli.cli.detach import start_detached

        start_detached(config)
        return
    from agl_cli.server.runner import StartupError, StoppedError, run

    try:
        run(config)
    except (StartupError, StoppedError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
