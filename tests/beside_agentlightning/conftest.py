"""These tests import agentlightning 0.3.0; tests/test_compat.py runs them in its environment."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("agentlightning", reason="runs in the compat environment (tests/test_compat.py)")
