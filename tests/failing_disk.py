"""A disk that fails, fills or stalls on demand: `faults/failing_writes.c`, preloaded into
a real `agl serve`, acts while a trigger file it is given exists."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon import Daemon

FAILING_WRITES = Path(__file__).parent / "faults" / "failing_writes.c"


def build_library(directory: Path) -> Path:
    """The preload library, built in `directory` (skips the test without a C compiler)."""
    if shutil.which("cc") is None:
        pytest.skip("No C compiler (scripts/install-test-tools installs gcc)")
    library = directory / "failing_writes.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", library, FAILING_WRITES, "-ldl"], check=True)
    return library


def faulty_daemon(
    make_daemon: Callable[..., Daemon],
    library: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: Path,
    *args: str,
    **triggers: Path,
) -> Daemon:
    """A daemon with the preload library, its database failing while each trigger file
    (named by the library's variable) exists."""
    with monkeypatch.context() as env:  # for the daemon only
        env.setenv("LD_PRELOAD", str(library))
        for variable, trigger in triggers.items():
            env.setenv(variable, str(trigger))
        return make_daemon(*args, state_dir=state)


def with_syncs_held(
    make_daemon: Callable[..., Daemon],
    library: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *args: str,
) -> tuple[Daemon, Path]:
    """A daemon whose durable writes go unanswered while the file returned exists (made
    already): each holds its place among the requests served at once until it goes."""
    held = tmp_path / "the disk is slow to sync"
    daemon = faulty_daemon(make_daemon, library, monkeypatch, tmp_path / "state", *args, AGL_HOLD_SYNCS=held)
    held.touch()
    return daemon, held
