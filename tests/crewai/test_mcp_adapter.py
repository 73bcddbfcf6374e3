"""MCP tools from crewai-tools' ``MCPServerAdapter`` (the route besides an agent's ``mcps=``),
served by the real test server (FastMCP over stdio, ``helpdesk``): governed as
``helpdesk/<tool>`` with untrusted output, like the ``mcps=`` route."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crewai import Agent, Crew, Task

from tests.conformance import mcp_server
from tests.conformance.scenario import AGENT, CARD, CUSTOMER_EMAIL, Call
from tether.core import AuditStore, Guard
from tether.crewai import enable_step_guard

from .conftest import ScriptedLLM, decisions
from .test_mcp import SERVER, policy

adapters = pytest.importorskip("crewai_tools.adapters.mcp_adapter", reason="crewai-tools[mcp] is not installed")
StdioServerParameters = pytest.importorskip("mcp").StdioServerParameters


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    return tmp_path / "mcp.jsonl"


@pytest.fixture
def adapter(server_log: Path) -> Iterator[Any]:
    params = StdioServerParameters(
        command=sys.executable, args=[mcp_server.SCRIPT], env={**os.environ, "TETHER_TEST_MCP_LOG": str(server_log)}
    )
    server = adapters.MCPServerAdapter(params)
    try:
        yield server
    finally:
        server.stop()


def run(store: AuditStore, tools: Any, *turns: Any, native: bool, name: bool = True, **agent_policy: Any) -> Any:
    llm = ScriptedLLM(*turns, native=native)
    agent = Agent(role=AGENT, goal="help", backstory="careful", llm=llm, tools=list(tools.tools))
    crew = Crew(
        agents=[agent], tasks=[Task(description="Please help with order 42.", expected_output="x", agent=agent)]
    )
    servers = {SERVER: tools} if name else None
    enable_step_guard(crew, Guard(policy(**agent_policy), store=store), mcp_servers=servers)
    crew.kickoff()
    return llm


def test_an_allowed_adapter_call_reaches_the_server_and_a_denied_one_never_does(
    native: bool, scenario_store: AuditStore, server_log: Path, adapter: Any
) -> None:
    lookup, delete = Call("c1", "lookup_order", {"order_id": "42"}), Call("c2", "delete_account", {"user_id": "u1"})
    turns = [[lookup, delete]] if native else [[lookup], [delete]]
    llm = run(scenario_store, adapter, *turns, native=native)

    assert mcp_server.ran(server_log) == [("lookup_order", {"order_id": "42"})]
    verdicts = {d.tool: d.verdict for d in decisions(scenario_store)}
    assert verdicts == {f"{SERVER}/lookup_order": "allow", f"{SERVER}/delete_account": "deny"}
    assert llm.saw("order 42: shipped") and llm.saw("Tether denied the call to 'helpdesk/delete_account'")


def test_an_adapter_result_is_untrusted_and_redacted_where_the_agent_is_not_cleared(
    native: bool, scenario_store: AuditStore, server_log: Path, adapter: Any
) -> None:
    llm = run(scenario_store, adapter, [Call("c1", "read_ticket", {"ticket_id": "7"})], native=native, data=[])

    assert mcp_server.ran(server_log) == [("read_ticket", {"ticket_id": "7"})]
    assert not llm.saw(CUSTOMER_EMAIL) and not llm.saw(CARD) and llm.saw("charged twice")
    (result,) = [e for e in scenario_store.events() if e.kind == "tool.result"]
    assert result.details["untrusted"] is True
    assert json.dumps(result.details).count(CUSTOMER_EMAIL) == 0


def test_an_adapter_tool_nobody_named_is_still_an_mcp_tool(
    scenario_store: AuditStore, server_log: Path, adapter: Any
) -> None:
    """Unnamed, its server is ``mcp_server_adapter``: a policy granting ``helpdesk/...`` grants
    none of it, and it is never decided as a trusted local tool of the same name."""
    run(scenario_store, adapter, [Call("c1", "lookup_order", {"order_id": "42"})], native=True, name=False)
    (decision,) = decisions(scenario_store)
    assert decision.tool == "mcp_server_adapter/lookup_order" and decision.verdict == "deny"
    assert mcp_server.ran(server_log) == []
