"""MCP tools loaded through AG2's own MCPToolkit, from a real MCP server over stdio, are governed
like native ones and named ``helpdesk/<tool>`` after the server's label."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from ag2 import Agent
from ag2.tools.toolkits import mcp_server as toolkit

from tests.conformance.mcp_server import NAME, SCRIPT, ran
from tests.conformance.scenario import CARD, CUSTOMER_EMAIL
from tether.ag2 import TetherMiddleware, UngovernedToolError
from tether.core import AuditStore, Guard, QueueApprover, mcp_tool

from .conftest import call, events, model_saw, scripted


def helpdesk(log: Path, label: str = NAME) -> Any:
    config = toolkit.MCPStdioServerConfig(
        command=sys.executable,
        args=[SCRIPT],
        env={**os.environ, "TETHER_TEST_MCP_LOG": str(log)},
        server_label=label,
    )
    return toolkit.MCPToolkit(config)


def policy(**agent: Any) -> dict[str, Any]:
    tools = {
        mcp_tool(NAME, "lookup_order"): {"effects": ["read"]},
        mcp_tool(NAME, "read_ticket"): {"effects": ["read"], "data": ["pii"]},  # untrusted: it is an MCP tool
        mcp_tool(NAME, "send_email"): {"effects": ["external"], "accepts": ["pii"]},
        mcp_tool(NAME, "delete_account"): {"effects": ["delete", "irreversible"]},
    }
    grants = {name: "allow" for name in tools if not name.endswith("delete_account")}
    spec = {"purpose": "answer support tickets", "owner": "support@acme.example", "tools": grants, **agent}
    rule = {
        "id": "external-after-untrusted",
        "effects": ["external"],
        "when": "session.tainted",
        "action": "ask",
        "reason": "external action after untrusted content",
    }
    return {
        "version": 1,
        "approvals": {"timeout": "1s"},
        "tools": tools,
        "agents": {"support-bot": spec},
        "rules": [rule],
    }


def run(guard: Guard, log: Path, *turns: Any, label: str = NAME) -> Any:
    config = scripted(*turns, "done")
    agent = Agent("support-bot", config=config, tools=[helpdesk(log, label)], middleware=[TetherMiddleware(guard)])
    asyncio.run(asyncio.wait_for(agent.ask("help with order 42"), 120))
    return config


def test_a_denied_mcp_call_never_reaches_the_server_and_an_allowed_one_does(store: AuditStore, tmp_path: Path) -> None:
    guard = Guard(policy(), store=store, approver=QueueApprover(store, poll=0.05))
    log = tmp_path / "mcp.log"

    config = run(guard, log, call("lookup_order", "c1", order_id="42"), call("delete_account", "c2", user_id="u1"))

    assert ran(log) == [("lookup_order", {"order_id": "42"})]
    assert "order 42: shipped" in model_saw(config)
    assert "Tether denied the call to 'helpdesk/delete_account'" in model_saw(config)
    verdicts = {e.tool: e.verdict for e in events(guard, "tool.decision")}
    assert verdicts == {"helpdesk/lookup_order": "allow", "helpdesk/delete_account": "deny"}
    proposed = [c["name"] for e in events(guard, "model.response") for c in e.details["tool_calls"]]
    assert proposed == ["helpdesk/lookup_order", "helpdesk/delete_account"]


def test_an_mcp_result_is_redacted_and_taints_the_session(store: AuditStore, tmp_path: Path) -> None:
    guard = Guard(policy(data=[]), store=store, approver=QueueApprover(store, poll=0.05))
    log = tmp_path / "mcp.log"

    config = run(
        guard,
        log,
        call("read_ticket", "c1", ticket_id="7"),
        call("send_email", "c2", to="ops@partner.example", body="escalating"),
    )

    seen = model_saw(config)
    assert CUSTOMER_EMAIL not in seen and CARD not in seen and "charged twice" in seen
    [result] = events(guard, "tool.result")
    assert (result.tool, result.details["untrusted"]) == ("helpdesk/read_ticket", True)
    assert [tool for tool, _ in ran(log)] == ["read_ticket"]  # the email waited for a person, who did not come
    asked = [e for e in events(guard, "tool.decision") if e.tool == "helpdesk/send_email"]
    assert [e.details["rule_ids"][0] for e in asked] == ["external-after-untrusted"]  # then any protection's


def test_an_mcp_server_without_a_name_is_refused(store: AuditStore, tmp_path: Path) -> None:
    guard = Guard(policy(), store=store)
    log = tmp_path / "mcp.log"

    with pytest.raises(UngovernedToolError, match="server_label"):
        run(guard, log, call("lookup_order", "c1", order_id="42"), label="")

    assert ran(log) == []
