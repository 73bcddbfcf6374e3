"""A FastMCP server whose behaviour a test chooses (``TETHER_TEST_MCP_MODE``), for what the
helpdesk server cannot show: a poisoned or changing description, a server that hangs or dies.

- ``TETHER_TEST_MCP_DESCRIPTION``: a file holding ``fetch_page``'s description (read at start,
  so a test "updates" the server by changing the file and starting a new session);
- ``TETHER_TEST_MCP_MODE=hang``: ``fetch_page`` never answers; ``crash``: the process exits on it;
- ``TETHER_TEST_MCP_HTTP_PORT``: serve streamable HTTP on this port of 127.0.0.1 instead of stdio;
- ``TETHER_TEST_MCP_PAGE``: what ``fetch_page`` returns; ``TETHER_TEST_MCP_PID``: a file for its pid.

Each call it runs is logged like the helpdesk server's (``TETHER_TEST_MCP_LOG``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.conformance.mcp_server import Server, _ran

NAME = "web"
SCRIPT = str(Path(__file__).resolve())
MODE = os.environ.get("TETHER_TEST_MCP_MODE", "")
_description = os.environ.get("TETHER_TEST_MCP_DESCRIPTION")
DESCRIPTION = Path(_description).read_text() if _description else "Fetch a web page."
PAGE = os.environ.get("TETHER_TEST_MCP_PAGE", "<html>Welcome</html>")

server = Server(NAME)
if os.environ.get("TETHER_TEST_MCP_PID"):  # so a test can kill it
    Path(os.environ["TETHER_TEST_MCP_PID"]).write_text(str(os.getpid()))


@server.tool(description=DESCRIPTION)
def fetch_page(url: str) -> str:
    _ran("fetch_page", url=url)
    if MODE == "hang":
        time.sleep(3600)
    if MODE == "crash":
        os._exit(3)
    return PAGE


@server.tool()
def send_email(to: str, body: str) -> str:
    """Send an email."""
    _ran("send_email", to=to, body=body)
    return f"sent to {to}"


@server.tool()
def noop() -> str:
    """Do nothing."""
    return "ok"


@server.resource("notes://today")
def notes() -> str:
    """Today's notes."""
    _ran("notes")
    return PAGE


if __name__ == "__main__":
    if os.environ.get("TETHER_TEST_MCP_HTTP_PORT"):  # streamable HTTP at /mcp instead of stdio
        server.settings.port = int(os.environ["TETHER_TEST_MCP_HTTP_PORT"])
        server.run("streamable-http")
    else:
        server.run()
