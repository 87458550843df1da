"""How long `agl` takes to start, next to a minimal Typer app measured in the same run.

What it measures
    Wall-clock time of whole processes: `agl --help`, `agl --version` and `agl status`
    (against an address where no daemon answers, so it exits 3 at once: what is measured
    is the cost of importing and starting, not a request), beside `--help` of a minimal
    Typer app with a few commands (written to a temporary directory) and a bare
    `python -c pass`, the floor no Python CLI can go below.

    Both CLIs run the same way, `python -m PACKAGE`, with the same interpreter and
    environment. Byte code is cached in a temporary PYTHONPYCACHEPREFIX (and
    PYTHONDONTWRITEBYTECODE is dropped) so that both run as from an ordinary
    installation, which compiles its modules once; `--as-is` keeps the environment as
    it is instead.

    By default a Python loop runs the commands in turn, round after round, so that a
    machine slowing down or speeding up affects all of them alike and the ratios stay
    fair on a busy machine; `--runner hyperfine` has hyperfine time each command in a
    block of its own instead. The table shows median and minimum, and each median as a
    multiple of the minimal app's `--help`.

Targets
    `agl --help` within 1.2x of the minimal app's `--help`; `agl --version` well under
    it (at most 0.5x). The exit status is 1 if a target is missed.

How to run (from anywhere; needs agl_cli importable by this Python)
    python bench/startup.py
    python bench/startup.py --runs 100 --runner python
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing answers
HELP_TARGET = 1.2
VERSION_TARGET = 0.5

MINIMAL_APP = '''\
"""A minimal Typer app with a few commands: the yardstick for agl's start-up."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)
items = typer.Typer(help="Items: list them, show one.")
app.add_typer(items, name="items")


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Address."), port: int = 8000) -> None:
    """Serve."""


@app.command()
def status(json_output: bool = typer.Option(False, "--json", help="JSON.")) -> None:
    """Show the status."""


@app.command()
def queue(files: list[str] = typer.Argument(..., help="Files."), wait: bool = False) -> None:
    """Queue files."""


@items.command("list")
def list_items(limit: int = typer.Option(100, help="At most this many.")) -> None:
    """List items."""
'''


@dataclass(frozen=True)
class Case:
    label: str
    argv: list[str]


@dataclass(frozen=True)
class Timing:
    label: str
    median_ms: float
    min_ms: float
    runs: int


def cases() -> list[Case]:
    python = sys.executable
    return [
        Case("python -c pass", [python, "-c", "pass"]),
        Case("minimal Typer app --help", [python, "-m", "minimal_app", "--help"]),
        Case("agl --help", [python, "-m", "agl_cli", "--help"]),
        Case("agl --version", [python, "-m", "agl_cli", "--version"]),
        Case("agl status (no daemon)", [python, "-m", "agl_cli", "--url", DEAD_URL, "status"]),
    ]


def environment(workdir: Path, as_is: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AGL_URL", "AGL_TOKEN")}
    env["AGL_STATE_DIR"] = str(workdir / "state")  # no address file: status goes to DEAD_URL
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "app"), env.get("PYTHONPATH")]))
    if not as_is:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


def write_minimal_app(workdir: Path) -> None:
    package = workdir / "app" / "minimal_app"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(MINIMAL_APP)
    (package / "__main__.py").write_text("from minimal_app import app\n\napp()\n")


def check_commands(all_cases: list[Case], env: dict[str, str]) -> None:
    """Each command runs and exits as expected (status: 3, no daemon) before it is timed."""
    for case in all_cases:
        result = subprocess.run(case.argv, env=env, capture_output=True, text=True, check=False)
        expected = 3 if "status" in case.label else 0
        if result.returncode != expected:
            sys.exit(f"{case.label} exited {result.returncode}, not {expected}:\n{result.stderr}")


def time_with_python(all_cases: list[Case], env: dict[str, str], runs: int, warmup: int) -> list[Timing]:
    samples: dict[str, list[float]] = {case.label: [] for case in all_cases}
    for round_number in range(warmup + runs):
        for case in all_cases:
            start = time.perf_counter()
            subprocess.run(
                case.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )
            elapsed = (time.perf_counter() - start) * 1000
            if round_number >= warmup:
                samples[case.label].append(elapsed)
    return [
        Timing(label, statistics.median(values), min(values), len(values))
        for label, values in samples.items()
    ]


def time_with_hyperfine(
    all_cases: list[Case], env: dict[str, str], runs: int, warmup: int, workdir: Path
) -> list[Timing]:
    report = workdir / "hyperfine.json"
    command = ["hyperfine", "--shell=none", "--ignore-failure", "--style=none", f"--warmup={warmup}"]
    command += [f"--runs={runs}", f"--export-json={report}"]
    for case in all_cases:
        command += ["--command-name", case.label, shlex.join(case.argv)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    results = json.loads(report.read_text())["results"]
    return [
        Timing(item["command"], item["median"] * 1000, item["min"] * 1000, len(item["times"]))
        for item in results
    ]


def print_table(timings: list[Timing], runner: str) -> bool:
    """The table, and whether both targets were met."""
    by_label = {timing.label: timing for timing in timings}
    reference = by_label["minimal Typer app --help"].median_ms
    print(
        f"start-up of whole processes ({runner}, {timings[0].runs} runs each; ratio = median / minimal --help)"
    )
    print(f"{'command':<28} {'median ms':>10} {'min ms':>8} {'ratio':>7}")
    for timing in timings:
        ratio = timing.median_ms / reference
        print(f"{timing.label:<28} {timing.median_ms:>10.1f} {timing.min_ms:>8.1f} {ratio:>6.2f}x")
    help_ratio = by_label["agl --help"].median_ms / reference
    version_ratio = by_label["agl --version"].median_ms / reference
    help_ok = help_ratio <= HELP_TARGET
    version_ok = version_ratio <= VERSION_TARGET
    print(f"target agl --help    <= {HELP_TARGET}x: {help_ratio:.2f}x {'ok' if help_ok else 'MISSED'}")
    print(
        f"target agl --version <= {VERSION_TARGET}x: {version_ratio:.2f}x {'ok' if version_ok else 'MISSED'}"
    )
    return help_ok and version_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=40, help="timed runs of each command")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each command first")
    parser.add_argument("--runner", choices=("python", "hyperfine"), default="python")
    parser.add_argument("--as-is", action="store_true", help="keep the environment's byte-code settings")
    args = parser.parse_args(argv)
    runner = args.runner
    if runner == "hyperfine" and shutil.which("hyperfine") is None:
        parser.error("hyperfine is not installed (apt-get install hyperfine)")
    with tempfile.TemporaryDirectory(prefix="agl-startup-") as name:
        workdir = Path(name)
        write_minimal_app(workdir)
        env = environment(workdir, args.as_is)
        all_cases = cases()
        check_commands(all_cases, env)
        if runner == "hyperfine":
            timings = time_with_hyperfine(all_cases, env, args.runs, args.warmup, workdir)
        else:
            timings = time_with_python(all_cases, env, args.runs, args.warmup)
    return 0 if print_table(timings, runner) else 1


if __name__ == "__main__":
    sys.exit(main())
