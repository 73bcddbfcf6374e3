"""A LangGraph agent (LangChain's create_agent) loading its tools through langchain-mcp-adapters
from ``tether mcp proxy`` in front of the helpdesk server: governed with no adapter in the agent."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.messages import HumanMessage

from tests.conformance import mcp_server
from tests.mcp.conftest import policy
from tests.support import answer_when_asked
from tether.core import AuditStore

from .conftest import CountingModel, calls

pytest.importorskip("langchain_mcp_adapters", reason="needs langchain-mcp-adapters")


async def tools_through_the_proxy(folder: Path, store_url: str, log: Path) -> list[Any]:
    from langchain_mcp_adapters.client import MultiServerMCPClient

    policy_file = folder / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy()))
    command = ["-m", "tether.core.cli", "mcp", "proxy", "--policy", str(policy_file), "--agent", "support-bot"]
    command += ["--store", store_url, "--", sys.executable, mcp_server.SCRIPT]
    env = {**os.environ, "TETHER_TEST_MCP_LOG": str(log)}
    client = MultiServerMCPClient(
        {"helpdesk": {"command": sys.executable, "args": command, "transport": "stdio", "env": env}}
    )
    return await client.get_tools()


def test_a_langgraph_agent_through_the_proxy_is_governed(tmp_path: Path) -> None:
    from langchain.agents import create_agent

    store_url = f"sqlite:///{tmp_path / 'tether.db'}"
    store = AuditStore(store_url)  # made first, so the proxy uses its key
    log = tmp_path / "ran.jsonl"
    model = CountingModel(
        script=[
            calls(("lookup_order", {"order_id": "42"}, "c1"), ("delete_account", {"user_id": "u1"}, "c2")),
            calls(("read_ticket", {"ticket_id": "7"}, "c3")),
            calls(("send_email", {"to": "ops@partner.example", "body": "ticket 7"}, "c4")),
        ]
    )

    async def run() -> None:
        tools = await tools_through_the_proxy(tmp_path, store_url, log)
        graph = create_agent(model, tools)
        await graph.ainvoke({"messages": [HumanMessage("help with ticket 7")]})

    person = answer_when_asked(store, approved=False, by="alice")
    asyncio.run(asyncio.wait_for(run(), timeout=180))
    person.join(10)

    assert [tool for tool, _ in mcp_server.ran(log)] == ["lookup_order", "read_ticket"]  # never the others
    replies = model.tool_replies()
    assert "order 42: shipped" in replies["c1"]
    assert "people delete" in replies["c2"]  # the agent read Tether's refusal
    assert "charged twice" in replies["c3"]
    assert "denied by alice" in replies["c4"]
    events = list(store.events())
    decisions = [(e.tool, e.verdict) for e in events if e.kind == "tool.decision"]
    parallel, later = decisions[:2], decisions[2:]  # the first turn's two calls run concurrently
    assert sorted(parallel) == [("helpdesk/delete_account", "deny"), ("helpdesk/lookup_order", "allow")]
    assert later == [("helpdesk/read_ticket", "allow"), ("helpdesk/send_email", "ask")]
    store.close()
