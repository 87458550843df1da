"""The pages of the database a commit of the worker cycle writes to the log, by table.

    python bench/commit_pages.py [--sizes 0,80000,240000] [--group 8] [--groups 200]

Each page a commit changes is written to the write-ahead log whole (4 KB), so the count
of pages, not of rows, sets what a `COMMIT` costs. For each size S, a fresh store in a
temporary directory first runs S claim + report cycles in groups (so that S tasks,
attempts and rollouts are kept), then `--groups` more, each one transaction of
`--group` claims and the reports of the group before, made the way the daemon's writer
makes them (`claim_many`, `record_reports`). With the log's automatic checkpoint off,
the frames those groups appended are read back from the log and counted per table or
index (SQLite's `dbstat`). It prints frames per group, by table, and the time a group
took in this single thread (no daemon, no HTTP, no sync: the store alone). Nothing is
asserted. Run it with `PYTHONPATH=<a source tree of agl>` to count another version.

The ids of one `queue_tasks` call are sorted (`new_rollout_ids`), so reports of tasks
queued together land near each other in the rollouts' index of ids: the fill is queued
10,000 at a time, and the counted groups' tasks in one call of their own.
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
import tempfile
import time
from pathlib import Path

from agl_cli.models import Rollout, TaskSpec
from agl_cli.store import Report, SQLiteStore

WAL_HEADER = 32
FRAME_HEADER = 24


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", default="0,80000,240000", help="cycles made before counting (comma-separated)"
    )
    parser.add_argument("--group", type=int, default=8, help="claims (and reports) per group (default 8)")
    parser.add_argument("--groups", type=int, default=200, help="groups counted at each size (default 200)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes whole numbers separated by commas, not {args.sizes!r}")
    if args.group < 1 or args.groups < 1 or min(args.sizes) < 0:
        parser.error("--group and --groups must be at least 1, and sizes not negative")
    return args


class Cycle:
    """A store and its worker cycle: each group claims `group` tasks and reports those
    the group before claimed, in one transaction."""

    def __init__(self, path: Path, group: int) -> None:
        self.store = SQLiteStore(path, task_timeout=3600)
        self.group = group
        self.claimed: list[str] = []

    def queue(self, count: int) -> None:
        for start in range(0, count, 10_000):
            self.store.queue_tasks(
                [TaskSpec(input={"q": i}, mode="train") for i in range(start, min(count, start + 10_000))]
            )

    def run(self, groups: int) -> None:
        for _ in range(groups):
            with self.store.transaction(isolate_writes=False, sync=False):  # the syncer's part, not timed
                if self.claimed:
                    self.store.record_reports([_report(rollout_id) for rollout_id in self.claimed])
                self.claimed = [claim.rollout_id for claim in self.store.claim_many(self.group)]


def _report(rollout_id: str) -> Report:
    return Report.of(Rollout.model_validate({"rollout_id": rollout_id, "final_reward": 0.5, "triplets": []}))


def pages_written(wal: bytes, page_size: int) -> collections.Counter[int]:
    """How many frames of the log hold each page."""
    pages: collections.Counter[int] = collections.Counter()
    for offset in range(WAL_HEADER, len(wal) - FRAME_HEADER + 1, FRAME_HEADER + page_size):
        (page,) = struct.unpack(">I", wal[offset : offset + 4])
        pages[page] += 1
    return pages


def measure(size: int, group: int, groups: int) -> tuple[float, float, collections.Counter[str]]:
    """Frames per group, seconds per group, and frames per group's table or index."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "agl.db"
        cycle = Cycle(path, group)
        cycle.queue(size)
        cycle.queue((groups + 2) * group)
        cycle.run(size // group)
        conn = cycle.store._conn
        conn.execute("PRAGMA wal_autocheckpoint=0")
        cycle.run(1)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        started = time.perf_counter()
        cycle.run(groups)
        elapsed = time.perf_counter() - started
        [(page_size,)] = conn.execute("PRAGMA page_size").fetchall()
        pages = pages_written(Path(f"{path}-wal").read_bytes(), page_size)
        owners = dict((page, name) for name, page in conn.execute("SELECT name, pageno FROM dbstat"))
        cycle.store.close()
    by_table: collections.Counter[str] = collections.Counter()
    for page, frames in pages.items():
        by_table[owners.get(page, "(free or new)")] += frames
    return sum(pages.values()) / groups, elapsed / groups, by_table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"groups of {args.group} claims and {args.group} reports, {args.groups} groups counted at each size"
    )
    for size in args.sizes:
        frames, seconds, by_table = measure(size, args.group, args.groups)
        print(
            f"\nafter {size:,} cycles: {frames:.1f} pages a group, {seconds * 1e6:.0f} µs a group in one thread"
        )
        for name, count in by_table.most_common():
            print(f"  {name:30} {count / args.groups:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
