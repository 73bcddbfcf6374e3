"""Tools loaded from a real MCP server (tests/conformance/mcp_server.py, over stdio) through
langchain-mcp-adapters, governed like native tools under their server's name: helpdesk/<tool>
(mcp/<tool> when loaded without one)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from tests.conformance import mcp_server
from tests.conformance.scenario import CARD, CUSTOMER_EMAIL
from tether.core import AuditStore, Guard
from tether.langgraph import Tether

from .conftest import CountingModel, calls
from .graphs import agent, state_graph

pytest.importorskip("langchain_mcp_adapters", reason="needs langchain-mcp-adapters")

SERVER = mcp_server.NAME


def policy(server: str = SERVER) -> dict[str, Any]:
    def name(tool: str) -> str:
        return f"{server}/{tool}"

    return {
        "version": 1,
        "tools": {
            name("lookup_order"): {"effects": ["read"]},
            name("read_ticket"): {"effects": ["read"], "data": ["pii"]},  # output untrusted: MCP's default
            name("send_email"): {"effects": ["external"]},
            name("delete_account"): {"effects": ["delete"]},
        },
        "agents": {
            "support-bot": {
                "purpose": "answer support tickets",
                "owner": "support@acme.example",
                "data": [],  # cleared for no personal data
                "tools": {name(t): "allow" for t in ("lookup_order", "read_ticket", "send_email", "delete_account")},
            }
        },
        "rules": [
            {"id": "no-deletion", "tools": [name("delete_account")], "action": "deny", "reason": "people delete"},
            {
                "id": "no-mail-when-tainted",
                "tools": [name("send_email")],
                "when": "session.tainted",
                "action": "deny",
                "reason": "no mail after untrusted content",
            },
        ],
    }


async def mcp_tools(log: Path) -> list[Any]:
    from langchain_mcp_adapters.client import MultiServerMCPClient

    env = {**os.environ, "TETHER_TEST_MCP_LOG": str(log)}
    client = MultiServerMCPClient(
        {SERVER: {"command": sys.executable, "args": [mcp_server.SCRIPT], "transport": "stdio", "env": env}}
    )
    return await client.get_tools()


@pytest.mark.parametrize("wiring", ["tool_node", "middleware"])
def test_mcp_tools_are_governed_under_their_servers_name(tmp_path: Path, store: AuditStore, wiring: str) -> None:
    log = tmp_path / "mcp.log"
    model = CountingModel(
        script=[
            calls(("lookup_order", {"order_id": "42"}, "c1"), ("delete_account", {"user_id": "u1"}, "c2")),
            calls(("read_ticket", {"ticket_id": "7"}, "c3")),
            calls(("send_email", {"to": "ops@partner.example", "body": "ticket 7"}, "c4")),
        ]
    )
    guard = Guard(policy(), store=store)
    build = agent if wiring == "middleware" else state_graph

    async def run() -> None:
        tools = await mcp_tools(log)
        graph = build(model, tools, Tether(guard, agent="support-bot"))
        await graph.ainvoke({"messages": [HumanMessage("help")]}, {"configurable": {"thread_id": "m-1"}})

    asyncio.run(asyncio.wait_for(run(), timeout=120))

    ran = mcp_server.ran(log)
    assert [tool for tool, _ in ran] == ["lookup_order", "read_ticket"]  # denied calls never reached the server
    events = store.session_events("m-1")
    decisions = {e.tool: e.verdict for e in events if e.kind == "tool.decision"}
    assert decisions == {
        "helpdesk/lookup_order": "allow",
        "helpdesk/delete_account": "deny",
        "helpdesk/read_ticket": "allow",
        "helpdesk/send_email": "deny",  # the ticket's untrusted output tainted the session
    }
    replies = model.tool_replies()
    assert "order 42: shipped" in replies["c1"]
    assert "people delete" in replies["c2"]
    assert CUSTOMER_EMAIL not in replies["c3"] and CARD not in replies["c3"] and "charged twice" in replies["c3"]
    [ticket] = [e for e in events if e.kind == "tool.result" and e.tool == "helpdesk/read_ticket"]
    assert ticket.details["untrusted"] is True


def test_mcp_tools_loaded_without_a_server_name_are_mcp_tools_with_untrusted_output(
    tmp_path: Path, store: AuditStore
) -> None:
    """``load_mcp_tools(session)`` gives its tools no server name: they are named ``mcp/<tool>``,
    so they never take a native tool's grants and their output is untrusted like any MCP tool's."""
    from langchain_mcp_adapters.tools import load_mcp_tools
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    log = tmp_path / "mcp.log"
    model = CountingModel(
        script=[
            calls(("read_ticket", {"ticket_id": "7"}, "c1")),
            calls(("send_email", {"to": "ops@partner.example", "body": "ticket 7"}, "c2")),
        ]
    )
    guard = Guard(policy("mcp"), store=store)  # the name tools of no known server go by
    env = {**os.environ, "TETHER_TEST_MCP_LOG": str(log)}
    server = StdioServerParameters(command=sys.executable, args=[mcp_server.SCRIPT], env=env)

    async def run() -> None:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = await load_mcp_tools(session)
            assert "read_ticket" in {t.name for t in tools}  # the model sees the plain name
            graph = state_graph(model, tools, Tether(guard, agent="support-bot"))
            await graph.ainvoke({"messages": [HumanMessage("help")]}, {"configurable": {"thread_id": "m-1"}})

    asyncio.run(asyncio.wait_for(run(), timeout=120))

    assert [tool for tool, _ in mcp_server.ran(log)] == ["read_ticket"]
    events = store.session_events("m-1")
    decisions = {e.tool: e.verdict for e in events if e.kind == "tool.decision"}
    assert decisions == {"mcp/read_ticket": "allow", "mcp/send_email": "deny"}  # tainted by the ticket
    [ticket] = [e for e in events if e.kind == "tool.result"]
    assert ticket.details["untrusted"] is True
    assert "no mail after untrusted content" in model.tool_replies()["c2"]
