"""The MCP gateway: Tether in front of any MCP server, for any MCP client.

``tether mcp proxy --policy P --agent NAME -- <server command...>`` speaks MCP on stdin/stdout,
launches the real server and decides on every tool call before the server sees it. Needs the
official MCP SDK: ``pip install "tether[mcp]"``.
"""

from __future__ import annotations

try:
    import mcp  # noqa: F401 - only to say clearly what is missing
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError('the MCP gateway needs the MCP SDK: pip install "tether[mcp]"', name=exc.name) from exc

from .gateway import Gateway, Upstream

__all__ = ["Gateway", "Upstream"]
