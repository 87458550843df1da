"""`agl resources`: publish a resource bundle, list them, show one.

The daemon checks every resource against the types agentlightning 0.3.0 workers know
(`llm`, `proxy_llm`, `prompt_template`) and refuses the whole bundle if one is wrong, so a
push publishes everything or nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from agl_cli.api_limits import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from agl_cli.cli import output
from agl_cli.cli.context import connect, refuse_beside_all
from agl_cli.cli.errors import fail

app = typer.Typer(
    help="Resource bundles: publish one, list them, show one.", no_args_is_help=True, add_completion=False
)


def read_bundle(name: str) -> dict[str, Any]:
    """The file's JSON object of name -> resource, or one line saying what is wrong with it."""
    import orjson  # here rather than at the top: `agl --help` reads no JSON

    from agl_cli.cli.taskfile import BOM, json_kind

    label = "<stdin>" if name == "-" else name
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        fail(f"{label}: cannot be read ({exc.strerror or exc}).")
    try:
        data.decode()  # orjson's error would name neither the byte's line nor its column
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        fail(f"{label}:{line}: not UTF-8 text ({exc.reason}).")
    data = data.removeprefix(BOM)  # as an editor on Windows saves it; `agl queue` takes it too
    try:
        bundle = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        fail(f"{label}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno}).")
    if not isinstance(bundle, dict):
        fail(f"{label}: expected a JSON object of name -> resource, not {json_kind(data)}.")
    if not bundle:
        fail(f"{label}: the bundle has no resources.")
    return bundle


@app.command()
def push(
    ctx: typer.Context,
    file: str = typer.Argument(
        ...,
        metavar="FILE",
        help='A JSON object of name -> resource, e.g. {"main_llm": {"resource_type": "llm", ...}}; - reads stdin.',
        show_default=False,
    ),
    resources_id: str | None = typer.Option(
        None, "--id", metavar="NAME", help="Publish under this id (a new version if it exists)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine output: the published bundle as JSON."),
) -> None:
    """Publish a resource bundle; it becomes the latest. Prints its id."""
    bundle = read_bundle(file)
    with connect(ctx) as client:
        update = client.push_resources(bundle, resources_id)
    if json_output:
        output.print_json_line(update)
        return
    output.write_line(update["resources_id"])
    output.aside(f"Published version {update['version']}; it is now the latest.")


@app.command("list")
def list_resources(
    ctx: typer.Context,
    last: int = typer.Option(
        DEFAULT_LIST_LIMIT,
        "--last",
        min=1,
        max=MAX_LIST_LIMIT,
        metavar="N",
        help="The N bundles published last.",
    ),
    every: bool = typer.Option(False, "--all", help="Every bundle published, however many."),
    json_output: bool = typer.Option(False, "--json", help="Machine output: a JSON array (api keys hidden)."),
) -> None:
    """List the bundles published last, oldest first; the latest is marked."""
    refuse_beside_all(ctx, "--last", every, "bundle")
    with connect(ctx) as client:
        listing = client.list_resources(last=None if every else last)
    if json_output:
        output.print_json(listing["resources"])
        return
    grid = output.table(
        "", "id", "version", "published", "resources",
        drop=("published", "resources", "version"), shrink="resources",
    )  # fmt: skip
    for update in listing["resources"]:
        names = ", ".join(
            f"{name} ({resource.get('resource_type', '?')})" for name, resource in update["resources"].items()
        )
        grid.add_row(
            "*" if update["resources_id"] == listing.get("latest_id") else "",
            update["resources_id"],
            str(update["version"]),
            output.timestamp(update.get("update_time")),
            names,
        )
    output.out().print(grid)
    shown, total = len(listing["resources"]), listing.get("total")  # None: a daemon older than it
    if total is not None and shown < total:
        output.aside(f"The last {shown:,} of {total:,} bundles shown; --last N or --all shows more.")


@app.command()
def show(
    ctx: typer.Context,
    resources_id: str = typer.Argument("latest", metavar="[ID|latest]", help="A resources id, or latest."),
    reveal: bool = typer.Option(False, "--reveal", help="Show api keys instead of ***."),
    json_output: bool = typer.Option(False, "--json", help="Machine output: the bundle as JSON."),
) -> None:
    """Show one bundle (the latest by default)."""
    with connect(ctx) as client:
        update = client.get_resources(resources_id, reveal=reveal)
    if json_output:
        output.print_json(update)
    else:
        output.show_record(update)
