"""Debian's Chromium, headless, driven by Playwright: what the browser tests share.

Without Playwright (the test extra) or Chromium (scripts/install-test-tools), importing
this skips whatever imports it, saying which is missing: a whole module where it is
imported at the top, one test where it is imported inside it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (scripts/install-test-tools installs it)", allow_module_level=True)

# Headless, and nothing that would reach for Google's servers (there is no network here).
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextlib.contextmanager
def launched(*extra_args: str) -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()
