"""The code is formatted, lint-clean and type-checked (the same tools the developers run), and
its SQL binds values as every Python agl runs on reads them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_the_code_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sql_binds_by_position_or_by_name_never_by_number() -> None:
    """`?1` placeholders are SQLite's, but Python 3.12 before 3.12.4 takes them for named
    ones and warns at every statement (cpython#117995): a program run with warnings as
    errors, or a test suite that shows them, would trip over agl's store on those Pythons."""
    numbered = re.compile(r"\?\d")
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / "agl_cli").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and numbered.search(node.value)
    ]
    assert found == []
