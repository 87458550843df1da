"""The systemd unit in deploy/ is valid and runs agl the way docs/deploy.md says."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "agl.service"


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_agl_serve_gracefully_and_restarts_it() -> None:
    unit = read_unit()
    service = unit["Service"]
    assert service["Type"] in {"exec", "notify"}
    assert service["ExecStart"].split()[1:3] == ["serve", "--host"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30  # the daemon's own graceful-shutdown limit
    assert service["StateDirectory"] == "agl" and service["StateDirectoryMode"] == "0700"
    assert service["Environment"] == "AGL_STATE_DIR=/var/lib/agl"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_to_complain_about(tmp_path: Path) -> None:
    agl = shutil.which("agl")
    assert agl is not None, "agl must be installed for its ExecStart to resolve"
    unit = tmp_path / "agl.service"
    unit.write_text(UNIT.read_text().replace("/opt/agl/bin/agl", agl))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr and "agl.service" not in result.stderr, result.stderr
