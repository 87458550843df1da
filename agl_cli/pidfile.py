"""`STATE_DIR/agl.pid`: one daemon per state directory, and where to find it.

The file holds the daemon's pid while it runs (or that of `agl backup`, `restore` or
`compact` on a stopped daemon's directory), and its holder keeps it locked (`flock`, which
the kernel lets go of when the process ends, however it ends): of two agl started at once,
the second finds it locked, where by the pid alone it could read the file before the first
wrote it. A pidfile nobody locks is stale, left by a crash, and is taken over, whatever
its pid runs now (another program, another agl command such as `agl rollouts watch`,
another directory's daemon), but for `agl serve` with this directory's database open (a
daemon from before the lock). `agl stop` signals only the process that holds the file so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from agl_cli.paths import DATABASE_NAME


class AlreadyRunningError(Exception):
    def __init__(self, pid: int) -> None:
        super().__init__(f"agl is already running (pid {pid}).")
        self.pid = pid


# A pid a signal reaches one process by: 0 and -1 name groups, 1 is init; pid_t is 32 bits.
_PIDS = range(2, 2**31)


def read_pid(path: Path) -> int | None:
    """The pid in the file, or None if there is no such file or it holds no process's pid."""
    try:
        text = path.read_bytes().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if pid in _PIDS else None


def is_agl_process(pid: int) -> bool:
    """True if `pid` is alive and, where /proc tells, runs agl: `agl ...` or
    `python -m agl_cli ...`, not merely a command line that mentions agl."""
    return _agl_arguments(pid) is not None


def _serves_unlocked(pid: int, pidfile: Path) -> bool:
    """True if `pid` runs `agl serve` on the directory of `pidfile`, where /proc tells: a
    daemon from before the lock. After a crash and a reboot, its pid may be another
    directory's daemon's, which must be neither signalled nor taken for this one."""
    arguments = _agl_arguments(pid)
    if arguments is None or (arguments != _UNTOLD and b"serve" not in arguments):
        return False
    try:
        descriptors = os.scandir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone, or no /proc here: trust the live pid
    except OSError:
        return True  # another user's: its command line is all there is to go by
    database = os.path.realpath(pidfile.parent / DATABASE_NAME)
    with descriptors:
        for descriptor in descriptors:
            with contextlib.suppress(OSError):  # closed meanwhile
                if os.readlink(descriptor.path) == database:
                    return True
    return False


_UNTOLD = [b"?"]  # the arguments of a live process whose command line cannot be read


def _agl_arguments(pid: int) -> list[bytes] | None:
    """What follows `agl` (or `-m agl_cli`) on the command line of live process `pid`,
    `_UNTOLD` where that cannot be read; None if it is gone or runs something else."""
    if pid not in _PIDS:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if Path("/proc/self").exists() else _UNTOLD  # no /proc here: trust the live pid
    except OSError:
        return _UNTOLD
    # A zombie (exited, its parent not yet told) has an empty command line.
    arguments = cmdline.split(b"\0")
    for at, argument in enumerate(arguments):
        if argument == b"agl_cli" or os.path.basename(argument) == b"agl":
            return arguments[at + 1 :]
    return None


def held(path: Path) -> bool:
    """Whether an agl holds the pidfile at `path` now: its lock, or, for a daemon from
    before the lock, its live pid. A crash lets go of both, and a clean stop removes the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    pid = read_pid(path)
    return pid is not None and _serves_unlocked(pid, path)


class UnwritableError(Exception):
    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"Cannot write the pidfile {path} ({exc.strerror or exc}).")


def acquire(path: Path) -> None:
    """Write our pid, unless a live agl daemon holds the file already."""
    try:
        _take(path)
    except OSError as exc:  # the directory is not this user's to write, say
        raise UnwritableError(path, exc) from None


_held: dict[Path, int] = {}  # a pidfile taken -> the descriptor that holds its lock


def _take(path: Path) -> None:
    me = os.getpid()
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _still_named(fd, path):  # its holder removed it as it stopped: take the next
                os.close(fd)
                continue
            pid = read_pid(path)
            if pid is not None and pid != me and _serves_unlocked(pid, path):  # a daemon that took no lock
                raise AlreadyRunningError(pid)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunningError(read_pid(path) or 0) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me}\n".encode(), 0)
        _held[path] = fd
        return
    raise AlreadyRunningError(read_pid(path) or 0)


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def release(path: Path) -> None:
    """Remove the pidfile if it is still ours, then let go of its lock."""
    # A file system gone read-only, or failing (read too): the next start takes it over.
    with contextlib.suppress(OSError):
        if read_pid(path) == os.getpid():
            path.unlink()
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)
