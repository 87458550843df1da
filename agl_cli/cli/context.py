"""Where the daemon is and how to reach it: the global options, resolved the same way for
every command, and the one place where client errors become exit codes.

The URL is `--url`, else `AGL_URL`, else the address file a running daemon writes in its
state directory, else http://127.0.0.1:8000. The token is `--token`, else `AGL_TOKEN`,
else the state directory's token file — but that file goes only to the state directory's
daemon while it runs, or to an address on this machine the user named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import typer

from agl_cli import paths, tokens
from agl_cli.cli.errors import CLIError, ExitCode
from agl_cli.daemon_config import DEFAULTS

if TYPE_CHECKING:
    from agl_cli.client import Address, AglClient, AglClientError

DEFAULT_URL = f"http://{DEFAULTS.host}:{DEFAULTS.port}"


@dataclass(frozen=True)
class Globals:
    """The root command's options, as given (None when not given)."""

    url: str | None = None
    token: str | None = None
    state_dir: Path | None = None

    @property
    def state_directory(self) -> Path:
        return self.state_dir if self.state_dir is not None else paths.default_state_dir()


@dataclass(frozen=True)
class Target:
    """A daemon to talk to, and where its address came from."""

    url: str
    token: str | None
    state_dir: Path
    url_given: bool  # by --url or AGL_URL, rather than found
    token_given: bool = False  # by --token or AGL_TOKEN, rather than read

    def relocate(self) -> Address | None:
        """The address again, as a found daemon may have restarted on another port, and
        the token again unless given, as it may have made a new one; None while no daemon
        runs there, to keep the last address known rather than send the token to whatever
        listens on the default port or has taken the address since."""
        from agl_cli.client import Address

        url = None if self.url_given else running_daemon_url(self.state_dir)
        if url is None:
            return None
        return Address(url, self.token if self.token_given else read_token(self.state_dir))


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, Globals) else Globals()


def normalise_url(url: str) -> str:
    url = url.strip()
    return (url if "://" in url else f"http://{url}").rstrip("/")


# What no host name holds (`agl --url 'not a url'` was looked up as a name, and not found).
NOT_IN_A_HOST_NAME = frozenset(' \t\r\n"<>\\^`{|}')


def given_url(url: str) -> str:
    """`--url` (or `AGL_URL`) as the client takes it: `http://` added if no scheme is
    given; a usage error, in one sentence, if it cannot be a daemon's address."""
    normal = normalise_url(url)
    if "@" in normal.partition("://")[2].partition("/")[0]:  # never echoed: it may hold a password
        raise CLIError(
            "--url (or AGL_URL) must not hold a user name or password: give the token with --token or AGL_TOKEN.",
            ExitCode.USAGE,
        )
    try:
        parts = urlsplit(normal)
        usable = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and not NOT_IN_A_HOST_NAME.intersection(parts.hostname or "")
            and parts.port != 0
        )
    except ValueError:  # a port out of range, an unclosed '[' of an IPv6 address
        usable = False
    if usable and ("?" in normal or "#" in normal):  # httpx would put the route after it
        raise CLIError(
            f"--url (or AGL_URL) must be an address without a query or fragment, such as {DEFAULT_URL}, not '{url}'.",
            ExitCode.USAGE,
        )
    if not usable:
        raise CLIError(
            f"--url (or AGL_URL) must be an http:// or https:// address such as {DEFAULT_URL}, not '{url}'.",
            ExitCode.USAGE,
        )
    return normal


def discovered_url(state_dir: Path) -> str | None:
    """The address a running daemon wrote in its state directory, if any."""
    text = _read_text(state_dir / paths.ADDRESS_NAME, "--url and --token")
    return normalise_url(text) if text else None


def read_token(state_dir: Path) -> str | None:
    path = state_dir / paths.TOKEN_NAME
    return checked_token(_read_text(path, "--token"), str(path))


def checked_token(token: str | None, where: str) -> str | None:
    """A token as HTTP can carry it, or a usage error that says where it came from."""
    sentence = tokens.problem(token, where) if token is not None else None
    if sentence is not None:
        raise CLIError(sentence, ExitCode.USAGE)
    return token


def _read_text(path: Path, instead: str) -> str | None:
    """A small file the daemon wrote, stripped; None if there is none (or nothing in it).
    One this user may not read is an error that says to give `instead`."""
    try:
        return path.read_bytes().decode().strip() or None
    except PermissionError as exc:  # a service's directory: no daemon is not what it means
        raise CLIError(unreadable(path, exc, instead)) from None
    except OSError:
        return None
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a file agl wrote: it is not UTF-8 text.") from None


def unreadable(path: Path, exc: OSError, instead: str) -> str:
    """Why agl cannot tell whether a daemon runs, or which token it takes, when a file of
    its state directory is another user's to read (a service's, in /var/lib/agl)."""
    return f"Cannot read {path} ({exc.strerror or exc}): run agl as the daemon's user, or give its {instead}."


def is_local(url: str) -> bool:
    from agl_cli.net import is_loopback  # only when a token file might be sent

    return is_loopback(urlsplit(url).hostname or "")


def running_daemon_url(state_dir: Path) -> str | None:
    """The address the state directory's daemon wrote, while it runs."""
    found = discovered_url(state_dir)
    return found if found is not None and is_running(state_dir) else None


def is_running(state_dir: Path) -> bool:
    """Whether a daemon holds the state directory. One that crashed left its address file
    behind, and its port may be anyone's by now."""
    from agl_cli import pidfile

    return pidfile.held(state_dir / paths.PIDFILE_NAME)


def resolve(options: Globals) -> Target:
    """The daemon the options name. The state directory's token goes only to its own
    daemon while it runs, or to an address on this machine the user named: never to the
    default port, which anyone on the machine may hold while the daemon is stopped, nor
    to the address a daemon that crashed left behind."""
    state_dir = options.state_directory
    given = bool(options.url)
    found = None if given else discovered_url(state_dir)
    url = given_url(options.url) if options.url else found or DEFAULT_URL
    token = checked_token(options.token or None, "--token (or AGL_TOKEN)")
    token_given = token is not None
    if not token_given and (is_local(url) if given else found is not None and is_running(state_dir)):
        token = read_token(state_dir)
    return Target(url=url, token=token, state_dir=state_dir, url_given=given, token_given=token_given)


def target_of(ctx: typer.Context) -> Target:
    return resolve(globals_of(ctx))


def exit_code_for(error: AglClientError) -> ExitCode:
    from agl_cli.client import AuthRefused, DaemonUnreachable

    if isinstance(error, DaemonUnreachable):
        return ExitCode.UNREACHABLE
    if isinstance(error, AuthRefused):
        return ExitCode.AUTH
    return ExitCode.ERROR


@contextlib.contextmanager
def client_errors(target: Target | None = None) -> Iterator[None]:
    """Turn the client's exceptions into `agl: <sentence>` and the documented exit code.
    Where nothing answers at an address that was not given, the sentence first says that
    no daemon runs in the state directory: that is why agl looked there."""
    from agl_cli.client import AglClientError, DaemonUnreachable

    try:
        yield
    except AglClientError as exc:
        message = str(exc)
        if (
            isinstance(exc, DaemonUnreachable)
            and target is not None
            and not target.url_given
            and not is_running(target.state_dir)
        ):
            message = f"agl is not running in {target.state_dir}; {message[:1].lower()}{message[1:]}"
        raise CLIError(message, exit_code_for(exc)) from None


@contextlib.contextmanager
def connect(ctx: typer.Context, timeout: float | None = None) -> Iterator[AglClient]:
    """A client of the daemon the global options point at, open for the block."""
    from agl_cli.client import DEFAULT_TIMEOUT, AglClient

    target = target_of(ctx)
    with client_errors(target), AglClient(target.url, target.token, timeout or DEFAULT_TIMEOUT) as client:
        yield client


def state_dir_named(text: str) -> Path:
    """A --state-dir given on the command line. An empty one (`--state-dir "$UNSET"`) would
    be the current directory, which `agl serve` would fill and make its owner's alone."""
    if not text.strip():
        raise typer.BadParameter("it is empty: name a directory")
    return Path(text)


def state_dir_option() -> Any:
    """The command's own --state-dir (serve's, compact's), beside the global one."""
    return typer.Option(
        DEFAULTS.state_dir,
        envvar="AGL_STATE_DIR",
        parser=state_dir_named,
        metavar="STATE_DIR",
        help=f"Where the database, token and pidfile live (default: {paths.DEFAULT_STATE_DIR_WORDS}).",
        show_default=False,
    )


def refuse_beside_all(ctx: typer.Context, option: str, every: bool, what: str) -> None:
    """A usage error if `option` (a count of what to list) was given beside --all, which
    lists every `what`: one of them would be ignored."""
    source = ctx.get_parameter_source(option.removeprefix("--"))
    if every and source is not None and source.name != "DEFAULT":
        raise CLIError(f"Give {option} or --all, not both: --all lists every {what}.", ExitCode.USAGE)


def state_dir_of(ctx: typer.Context, own: Path | None) -> Path | None:
    """The command's own --state-dir, else the global one, else AGL_STATE_DIR (else the default)."""
    source = ctx.get_parameter_source("state_dir")
    if own is not None and source is not None and source.name == "COMMANDLINE":
        return own.expanduser()
    found = globals_of(ctx).state_dir or own
    return found.expanduser() if found is not None else None
