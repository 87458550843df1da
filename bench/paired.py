"""Two versions of agl, up side by side, with wrk alternating between them.

    python bench/paired.py BASE CANDIDATE [--scenario small|realistic] [--runs 8] [--seconds 5]

BASE and CANDIDATE are source trees of agl (a checkout, a `git worktree`), each served
as `python -m agl_cli serve` from its tree, with this Python and its packages, on its
durable default. Both daemons stay up for the whole run; each run drives one of them
(the order turns every run) and the other waits idle, so that the machine's drift falls
on both alike and every run gives one candidate / base ratio. The medians of those
ratios tell a change of 5 % apart where one 10 s run after another cannot (see
docs/performance.md). Tasks are queued before each run, untimed; the commit and sync
times printed are those of the runs alone. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from side_by_side import (
    CYCLE_RATE_CAP,
    AglServer,
    CommitGroups,
    combined,
    commit_groups,
    commit_groups_between,
    cycle_figures,
    cycle_run,
    log,
    make_plan,
    running,
    write_report_template,
)

BASE, CANDIDATE = "base", "candidate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base", type=Path, help="the source tree to compare against")
    parser.add_argument("candidate", type=Path, help="the source tree with the change")
    parser.add_argument("--scenario", choices=("small", "realistic"), default="small")
    parser.add_argument("--runs", type=int, default=8, help="runs of each daemon (default 8)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each run (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds < 1:
        parser.error("--runs and --seconds must be at least 1")
    for tree in args.base, args.candidate:
        if not (tree / "agl_cli" / "__main__.py").is_file():
            parser.error(f"{tree} is not a source tree of agl (it has no agl_cli/__main__.py)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        compare(args)
    except RuntimeError as exc:  # a daemon that would not start or answer; its log was shown
        log(f"paired: {exc}")
        return 1
    return 0


def compare(args: argparse.Namespace) -> None:
    plan = make_plan(
        argparse.Namespace(
            quick=False, connections=args.connections, duration=args.seconds, warmup=1, rounds=args.runs
        )
    )
    with tempfile.TemporaryDirectory(prefix="agl-paired-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        body = None
        if args.scenario == "realistic":
            body = workdir / "report.json"
            write_report_template(body)
        servers = {
            name: stack.enter_context(running(AglServer(False, workdir, tree.resolve(), name)))
            for name, tree in ((BASE, args.base), (CANDIDATE, args.candidate))
        }
        for server in servers.values():  # a warm-up each
            server.queue(CYCLE_RATE_CAP * plan.warmup)
            cycle_run(server, body, plan.warmup, plan, workdir)
        rates: dict[str, list[float]] = {BASE: [], CANDIDATE: []}
        commits: dict[str, list[CommitGroups]] = {BASE: [], CANDIDATE: []}
        for number in range(1, args.runs + 1):
            order = (BASE, CANDIDATE) if number % 2 else (CANDIDATE, BASE)
            for name in order:
                server = servers[name]
                server.queue(CYCLE_RATE_CAP * plan.duration)
                before = commit_groups(server)
                run = cycle_figures(name, number, cycle_run(server, body, plan.duration, plan, workdir))
                rates[name].append(run.cycles_per_second)
                during = commit_groups_between(before, commit_groups(server), 0.0)
                if during is not None:
                    commits[name].append(during)
            print(
                f"run {number}: base {rates[BASE][-1]:,.0f}, candidate {rates[CANDIDATE][-1]:,.0f} cycles/s"
            )
        ratios = sorted(c / b for b, c in zip(rates[BASE], rates[CANDIDATE], strict=True))
        print(
            f"\n{args.scenario} cycle, {args.runs} runs of {args.seconds} s each, {args.connections} connections"
        )
        for name in servers:
            groups = combined(commits[name]) if commits[name] else None
            shown = (
                ""
                if groups is None
                else f"; {groups.mean:.1f} writes a commit, a commit {groups.mean_commit_ms:.2f} ms,"
                f" a sync {groups.mean_sync_ms:.2f} ms"
            )
            print(f"  {name:<9} median {statistics.median(rates[name]):>9,.0f} cycles/s{shown}")
        print(f"  candidate / base, run by run: {' '.join(f'{r:.3f}' for r in ratios)}")
        print(f"  median of the ratios: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    sys.exit(main())
