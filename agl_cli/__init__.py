"""agl: a durable, fast daemon for the Agent Lightning task protocol.

`AgentLightningServer` (the embedded drop-in) and `AglClient` (the management API's
client) are imported on first use, so that importing the package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AgentLightningServer", "AglClient", "__version__"]

if TYPE_CHECKING:
    from agl_cli.client import AglClient
    from agl_cli.embedded import AgentLightningServer


def __getattr__(name: str) -> Any:
    if name == "AgentLightningServer":
        from agl_cli.embedded import AgentLightningServer

        return AgentLightningServer
    if name == "AglClient":
        from agl_cli.client import AglClient

        return AglClient
    raise AttributeError(f"module 'agl_cli' has no attribute {name!r}")
