"""`agl dashboard`: open the daemon's live dashboard in a browser, signed in.

The token goes in the address's fragment (`/#token=...`): a browser never sends a
fragment to any server, and the page moves it out of the address bar at once.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import quote, urlsplit

import typer

from agl_cli.cli import output
from agl_cli.cli.context import connect, is_local, target_of


def dashboard(
    ctx: typer.Context,
    print_only: bool = typer.Option(
        False, "--print", "--no-browser", help="Print the address (with the token) instead of opening it."
    ),
) -> None:
    """Open the live dashboard in your browser, with the token.

    Where no browser can be opened (over SSH, say), it prints the address instead, and
    how to forward the port to your own machine.
    """
    target = target_of(ctx)
    with connect(ctx) as client:
        client.status()  # the daemon answers and takes the token, or one line says why not
    url = dashboard_url(target.url, target.token)
    if not print_only and open_browser(url):
        output.note(f"Opened the dashboard of {target.url} in your browser.")
        return
    output.write_line(url)
    if not print_only:
        output.note("No browser could be opened here: open the address above in yours.")
    if is_local(target.url):
        port = urlsplit(target.url).port or 80
        output.note(
            f"From another machine, forward the port first: ssh -N -L {port}:127.0.0.1:{port} "
            f"{socket.gethostname()}, then open the address there."
        )


def dashboard_url(base: str, token: str | None) -> str:
    """The page's address; the token rides in the fragment, which never leaves the browser."""
    return f"{base}/" if token is None else f"{base}/#token={quote(token, safe='')}"


def open_browser(url: str) -> bool:
    """Open `url` in a graphical browser if this session has one; False if not.

    On Linux and the BSDs that means a display (or a `BROWSER` the user chose): without
    one, Python would start a text browser in this terminal, which cannot run the page.
    """
    import webbrowser

    graphical = bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER")
    )
    if not graphical and sys.platform not in ("darwin", "win32"):
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False
