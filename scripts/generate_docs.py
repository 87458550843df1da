"""Write agl's shell completions (completions/) and man pages (man/) from its command line.

    python scripts/generate_docs.py           # regenerate them
    python scripts/generate_docs.py --check   # exit 1, naming them, if any is stale

Options, help texts, defaults, environment variables and exit codes are read off the
Typer application and `agl_cli.cli.errors`, so the files cannot drift from the CLI; a
test runs `--check`. The output has no dates and depends on no terminal, so the same
code always gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # after scripts/: this checkout's agl_cli, whatever else is installed

import man_pages  # noqa: E402
import shell_completions  # noqa: E402
from cli_model import Command, read  # noqa: E402

from agl_cli import __version__  # noqa: E402
from agl_cli.cli.app import app  # noqa: E402
from agl_cli.cli.errors import MEANINGS, ExitCode  # noqa: E402

COMPLETIONS = ROOT / "completions"
MAN = ROOT / "man"


def exit_codes() -> list[tuple[int, str]]:
    """Every `ExitCode`, in the words of the help text's `Exit codes:` line."""
    return [(int(code), MEANINGS[code]) for code in ExitCode]


def outputs(root: Command) -> dict[Path, str]:
    files = {
        COMPLETIONS / "agl.bash": shell_completions.bash(root, __version__),
        COMPLETIONS / "agl.zsh": shell_completions.zsh(root, __version__),
        COMPLETIONS / "agl.fish": shell_completions.fish(root, __version__),
    }
    for name, page in man_pages.render_all(root, __version__, exit_codes()).items():
        files[MAN / name] = page
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    files = outputs(read(app))
    stale = [
        path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    orphans = sorted(set(MAN.glob("*.1")) - set(files))  # pages of commands that are gone
    if args.check:
        for path in [*stale, *orphans]:
            print(f"{path.relative_to(ROOT)} is stale: run python scripts/generate_docs.py", file=sys.stderr)
        return 1 if stale or orphans else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8", newline="\n")
        print(f"wrote {path.relative_to(ROOT)}")
    for path in orphans:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
