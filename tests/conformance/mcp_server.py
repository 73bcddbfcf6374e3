"""A real MCP server for the tests (the official SDK's FastMCP, over stdio): the scenario's
tools, served as the ``helpdesk`` server. Each call it runs is appended as a JSON line to the
file named by ``TETHER_TEST_MCP_LOG``, so a test can tell what actually ran.

    python tests/conformance/mcp_server.py      # speaks MCP on stdin/stdout
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

try:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as Server
except ModuleNotFoundError:  # mcp 2.x renamed it
    from mcp.server.mcpserver import MCPServer as Server

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.conformance.scenario import TICKET

NAME = "helpdesk"
SCRIPT = str(Path(__file__).resolve())
server = Server(NAME)


def _ran(tool: str, **args: Any) -> None:
    log = os.environ.get("TETHER_TEST_MCP_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps({"tool": tool, "args": args}) + "\n")


def ran(log: Path) -> list[tuple[str, dict[str, Any]]]:
    """What the server ran, from its log file."""
    if not log.exists():
        return []
    return [(row["tool"], row["args"]) for row in map(json.loads, log.read_text().splitlines())]


@server.tool()
def lookup_order(order_id: str) -> str:
    """Look up an order's status."""
    _ran("lookup_order", order_id=order_id)
    return f"order {order_id}: shipped"


@server.tool()
def read_ticket(ticket_id: str) -> str:
    """Read a support ticket."""
    _ran("read_ticket", ticket_id=ticket_id)
    return TICKET


@server.tool()
def send_email(to: str, body: str) -> str:
    """Send an email."""
    _ran("send_email", to=to, body=body)
    return f"sent to {to}"


@server.tool()
def delete_account(user_id: str) -> str:
    """Delete a customer's account."""
    _ran("delete_account", user_id=user_id)
    return f"deleted {user_id}"


if __name__ == "__main__":
    server.run()
