"""A reusable virtual environment holding the real ``agentlightning`` 0.3.0 client.

Compatibility tests run the unmodified upstream client in a subprocess, so that
its dependency tree never mixes with ours in the test process. Creating the venv
takes about a minute, so it is built once under ``.agl-test/`` and reused by every later
run and by every pytest-xdist worker.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_STATE_DIR = REPO_ROOT / ".agl-test"
COMPAT_VENV = TEST_STATE_DIR / "compat-venv"
BUILD_LOG = TEST_STATE_DIR / "compat-venv-build.log"
WORKERS_DIR = Path(__file__).resolve().parent / "compat" / "workers"

COMPAT_REQUIREMENT = "agentlightning==0.3.0"
# Written last, so a venv without it (or with other contents) was interrupted
# mid-build or built for another configuration, and is rebuilt.
READY_MARKER = COMPAT_VENV / ".agl-compat-ready"


class CompatEnvError(RuntimeError):
    """The compat venv could not be built; the message names the log to read."""


def ensure_compat_python(with_agl: bool = True) -> Path:
    """Return the compat venv's python, building the venv first if needed.

    With ``with_agl`` the repo is installed editable in the same install as
    ``agentlightning==0.3.0``, so the resolver proves the two can co-install.
    Safe to call from several processes at once: all but one wait on a lock.
    """
    TEST_STATE_DIR.mkdir(parents=True, exist_ok=True)
    expected = _marker_text(with_agl)
    with _exclusive_lock(TEST_STATE_DIR / "compat-venv.lock") as lock_fd:
        python = _venv_python(COMPAT_VENV)
        if python.exists() and _read(READY_MARKER) == expected:
            return python
        _build(with_agl, lock_fd)
        _write_atomically(READY_MARKER, expected)
        return python


def _build(with_agl: bool, lock_fd: int) -> None:
    """Recreate the venv from scratch; a half-built one cannot be trusted.

    uv builds it: the same 164 packages that pip chose (compared once), in well
    under half of pip's CPU time. ``--seed`` puts pip in it too, for ``pip check``.
    """
    READY_MARKER.unlink(missing_ok=True)
    shutil.rmtree(COMPAT_VENV, ignore_errors=True)
    install_args = [COMPAT_REQUIREMENT]
    if with_agl:
        install_args += ["-e", f"{REPO_ROOT}[beside]"]  # [beside]: what the embedded suite runs with there
    uv = [sys.executable, "-m", "uv"]
    with BUILD_LOG.open("w", encoding="utf-8") as log:
        _run([*uv, "venv", "--seed", "--python", sys.executable, str(COMPAT_VENV)], log, lock_fd)
        python = _venv_python(COMPAT_VENV)
        _run(
            [*uv, "pip", "install", "--python", str(python), "--compile-bytecode", *install_args],
            log,
            lock_fd,
        )


def _run(cmd: list[str], log: TextIO, lock_fd: int) -> None:
    """Run one build step with its output in the log, which the error points to.

    The step inherits the lock, so if our process is killed mid-build, an orphaned
    uv keeps the lock until it exits instead of racing the next builder.
    """
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    result = subprocess.run(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock_fd,), check=False
    )
    if result.returncode != 0:
        raise CompatEnvError(
            f"building the compat venv failed (exit {result.returncode}) at: {' '.join(cmd)}; see {BUILD_LOG}"
        )


def _marker_text(with_agl: bool) -> str:
    """What a finished venv must have been built for.

    The pyproject hash makes a change to our own dependencies trigger a rebuild;
    the Python version catches a venv made by another interpreter.
    """
    lines = [f"requirement: {COMPAT_REQUIREMENT}", f"python: {sys.version_info[0]}.{sys.version_info[1]}"]
    if with_agl:
        pyproject = REPO_ROOT / "pyproject.toml"
        digest = hashlib.sha256(pyproject.read_bytes()).hexdigest() if pyproject.exists() else "missing"
        lines.append(f"editable: {REPO_ROOT} pyproject-sha256={digest}")
    return "\n".join(lines) + "\n"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"  # POSIX only, like the fcntl lock


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Readers see either no marker or a whole one, never a partial write."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[int]:
    """Hold an OS file lock, yielding its fd; the kernel drops it once every holder is gone."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield handle.fileno()
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def compat_env() -> dict[str, str]:
    """The environment a compat-venv program runs with: none of the test's agl settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGL_", "PYTEST_"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no price-list download at import
    return env


def run_json(
    python: Path, *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a worker script there and return the JSON object it prints last."""
    with tempfile.TemporaryDirectory() as workdir:  # agentlightning's tracer writes files to the cwd
        result = subprocess.run(
            [str(python), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=compat_env() | (env or {}),
            cwd=workdir,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed
