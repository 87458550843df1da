"""`agl rollouts watch | head -1`: end as soon as what reads standard output is gone.

A command that prints as things happen learns that its reader went away only at its next
write, which may be hours later on an idle run; `head` and the shell wait for it till then.
A thread sleeps on the pipe instead, which reports an error the moment its reading end
closes, and has the main thread end as on a write to it (exit 141, quietly): by a signal,
which wakes it from whatever it waits for, and whose handler raises `SystemExit`, which
no HTTP client takes for a connection that broke.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
import threading
from types import FrameType
from typing import NoReturn

from agl_cli.cli.errors import reader_gone


def end_when_reader_goes() -> None:
    """Watch standard output, where it is a pipe this system can be asked about."""
    try:
        fd = sys.stdout.fileno()
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (OSError, ValueError, AttributeError):
        return
    if not is_pipe or not hasattr(select, "poll") or not hasattr(signal, "pthread_kill"):
        return
    signal.signal(signal.SIGPIPE, _reader_gone)
    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        waiting = select.poll()
        waiting.register(fd, 0)  # no event asked for: an error (the reader gone) is always told
        waiting.poll()
        signal.pthread_kill(main, signal.SIGPIPE)  # wakes the main thread from whatever it waits for

    threading.Thread(target=watch, name="agl-reader-watch", daemon=True).start()


def _reader_gone(signum: int, frame: FrameType | None) -> NoReturn:
    reader_gone()
