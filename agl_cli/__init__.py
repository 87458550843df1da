"""agl: a durable, fast daemon for the Agent Lightning task protocol."""

from __future__ import annotations

__version__ = "0.1.0"
