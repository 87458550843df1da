"""`agl dashboard`: open the daemon's live dashboard in a browser, signed in.

The browser is handed a one-time sign-in code (`/#code=...`), never the token: a
browser's command line can be read by every user of the machine. A printed address
carries the token itself (`/#token=...`), since it may be opened elsewhere much later.
Either rides in the address's fragment, which a browser never sends to any server, and
the page moves it out of the address bar at once. `--rollout` names a rollout there too,
whose dialog the page opens.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlencode, urlsplit

import typer

from agl_cli import __version__
from agl_cli.cli import output
from agl_cli.cli.context import connect, is_local, target_of
from agl_cli.cli.errors import fail


def dashboard(
    ctx: typer.Context,
    print_only: bool = typer.Option(
        False, "--print", "--no-browser", help="Print the address (with the token) instead of opening it."
    ),
    rollout: str | None = typer.Option(
        None, "--rollout", metavar="ID", help="Open the page on this rollout (or task) in detail."
    ),
) -> None:
    """Open the live dashboard in your browser, signed in.

    Where no browser can be opened (over SSH, say), it prints the address instead, and how to forward the port to your own machine.
    """
    from agl_cli.client import NotFound  # not at start-up: every command would pay for httpx

    target = target_of(ctx)
    browse = not print_only and has_browser()
    with connect(ctx) as client:
        status = client.status()  # the daemon answers and takes the token, or one line says why not
        if rollout is not None:
            client.shown_rollout(rollout)  # an unknown id is said here, in one line
        code = None
        if browse and target.token is not None:
            try:
                code = client.sign_in_code()
            except NotFound:  # a daemon started before an upgrade
                fail(
                    f"The daemon at {target.url} runs agl {status['version']}, which cannot"
                    f" sign a browser in: restart it to run agl {__version__}, or open the address"
                    " `agl dashboard --print` shows."
                )
    if browse and open_browser(dashboard_url(target.url, code=code, rollout=rollout)):
        output.note(f"Opened the dashboard of {target.url} in your browser.")
        return
    output.write_line(dashboard_url(target.url, token=target.token, rollout=rollout))
    if not print_only:
        output.note("No browser could be opened here: open the address above in yours.")
    if is_local(target.url):
        port = urlsplit(target.url).port or 80
        output.note(
            f"From another machine, forward the port first: ssh -N -L {port}:127.0.0.1:{port} "
            f"{socket.gethostname()}, then open the address there."
        )


def dashboard_url(
    base: str, *, token: str | None = None, code: str | None = None, rollout: str | None = None
) -> str:
    """The page's address, with the token or a sign-in code in its fragment, and the rollout
    whose dialog it opens."""
    named = {name: value for name, value in (("token", token), ("code", code)) if value}
    fragment = urlencode(named if rollout is None else {**named, "rollout": rollout})
    return f"{base}/#{fragment}" if fragment else f"{base}/"


def has_browser() -> bool:
    """Whether this session can show a graphical browser. On Linux and the BSDs that means
    a display (or a `BROWSER` the user chose): without one, Python would start a text
    browser in this terminal, which cannot run the page."""
    graphical = bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER")
    )
    return graphical or sys.platform in ("darwin", "win32")


def open_browser(url: str) -> bool:
    """Open `url` in the browser; False if none could be started."""
    import webbrowser

    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False
