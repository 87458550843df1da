#!/bin/sh
# Installs what the benchmarks need beyond the project's own dependencies:
#   wrk                 the load generator of bench/side_by_side.py (Debian/Ubuntu package)
#   py-spy, pyinstrument  profilers, for looking into a slow figure
#   psutil              what the benchmarks read a process's memory and CPU time with
#   the compat venv     .agl-test/compat-venv with agentlightning==0.3.0, for the legacy server
# Run from anywhere with the Python environment agl is installed in active (or set PYTHON).
set -eu

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if ! command -v wrk >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    $SUDO apt-get update
    $SUDO apt-get install -y wrk
fi

"$PYTHON" -m pip install --disable-pip-version-check psutil py-spy pyinstrument uv

"$PYTHON" -c 'import sys; sys.path.insert(0, "tests"); import compat_env; print(compat_env.ensure_compat_python())'
