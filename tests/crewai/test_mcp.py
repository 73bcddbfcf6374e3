"""MCP tools loaded through CrewAI's own MCP support (an agent's ``mcps=``) from the real test
server (FastMCP over stdio, ``helpdesk``), governed as ``helpdesk/<tool>`` like native tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.mcp import MCPServerStdio

from tests.conformance import mcp_server
from tests.conformance.scenario import AGENT, CARD, CUSTOMER_EMAIL, Call
from tether.core import AuditStore, Guard, mcp_tool
from tether.crewai import enable_step_guard

from .conftest import ScriptedLLM, decisions

SERVER = mcp_server.NAME


def helpdesk(log: Path) -> MCPServerStdio:
    return MCPServerStdio(command=sys.executable, args=[mcp_server.SCRIPT], env={"TETHER_TEST_MCP_LOG": str(log)})


def policy(**agent: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "tools": {
            mcp_tool(SERVER, "lookup_order"): {"effects": ["read"]},
            mcp_tool(SERVER, "read_ticket"): {"effects": ["read"], "data": ["pii"]},  # untrusted: from MCP
            mcp_tool(SERVER, "delete_account"): {"effects": ["delete", "irreversible"]},
            mcp_tool(SERVER, "send_email"): {"effects": ["external"]},
        },
        "agents": {
            AGENT: {
                "purpose": "answer support tickets",
                "owner": "support@acme.example",
                "tools": {mcp_tool(SERVER, t): "allow" for t in ("lookup_order", "read_ticket", "send_email")},
                **agent,
            }
        },
    }


def by_description(*wanted: tuple[str, str, dict[str, Any]]) -> Any:
    """A model turn that calls the MCP tools whose description starts as given (CrewAI names them
    after its own name for the server, which the model reads from the tools it is offered)."""

    def turn(messages: Any, tools: Any) -> list[Call]:
        offered = {t["function"]["description"]: t["function"]["name"] for t in tools or []}
        calls = []
        for call_id, description, args in wanted:
            name = next(n for d, n in offered.items() if d.startswith(description))
            calls.append(Call(call_id, name, args))
        return calls

    return turn


def run(store: AuditStore, log: Path, *turns: Any, **agent_policy: Any) -> ScriptedLLM:
    llm = ScriptedLLM(*turns, native=True)
    agent = Agent(role=AGENT, goal="help", backstory="careful", llm=llm, mcps=[helpdesk(log)])
    task = Task(description="Please help with order 42.", expected_output="x", agent=agent)
    crew = Crew(agents=[agent], tasks=[task])
    enable_step_guard(crew, Guard(policy(**agent_policy), store=store), mcp_servers={SERVER: helpdesk(log)})
    crew.kickoff()
    return llm


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    return tmp_path / "mcp.jsonl"


def test_an_allowed_mcp_call_reaches_the_server_and_a_denied_one_never_does(
    scenario_store: AuditStore, server_log: Path
) -> None:
    turn = by_description(
        ("c1", "Look up an order", {"order_id": "42"}), ("c2", "Delete a customer", {"user_id": "u1"})
    )
    llm = run(scenario_store, server_log, turn)

    assert mcp_server.ran(server_log) == [("lookup_order", {"order_id": "42"})]
    verdicts = {d.tool: d.verdict for d in decisions(scenario_store)}
    assert verdicts == {f"{SERVER}/lookup_order": "allow", f"{SERVER}/delete_account": "deny"}
    assert llm.saw("order 42: shipped") and llm.saw("Tether denied the call to 'helpdesk/delete_account'")
    assert {d.details["call_id"] for d in decisions(scenario_store)} == {"c1", "c2"}


def test_an_mcp_result_is_untrusted_and_redacted_where_the_agent_is_not_cleared(
    scenario_store: AuditStore, server_log: Path
) -> None:
    llm = run(scenario_store, server_log, by_description(("c1", "Read a support ticket", {"ticket_id": "7"})), data=[])

    assert mcp_server.ran(server_log) == [("read_ticket", {"ticket_id": "7"})]
    assert not llm.saw(CUSTOMER_EMAIL) and not llm.saw(CARD) and llm.saw("charged twice")
    (result,) = [e for e in scenario_store.events() if e.kind == "tool.result"]
    assert result.details["untrusted"] is True  # the session is now tainted
    assert json.dumps(result.details).count(CUSTOMER_EMAIL) == 0


def test_without_a_name_an_mcp_server_is_crewais_own_name_for_it(scenario_store: AuditStore, server_log: Path) -> None:
    """Unnamed, the server is what CrewAI calls it (its command line, sanitised): a policy that
    grants ``helpdesk/...`` grants nothing of it, so its calls are denied, never run."""
    llm = ScriptedLLM(by_description(("c1", "Look up an order", {"order_id": "42"})), native=True)
    agent = Agent(role=AGENT, goal="help", backstory="careful", llm=llm, mcps=[helpdesk(server_log)])
    crew = Crew(agents=[agent], tasks=[Task(description="help", expected_output="x", agent=agent)])
    enable_step_guard(crew, Guard(policy(), store=scenario_store))
    crew.kickoff()
    (decision,) = decisions(scenario_store)
    assert decision.verdict == "deny" and decision.tool.endswith("/lookup_order")
    assert not decision.tool.startswith(f"{SERVER}/") and mcp_server.ran(server_log) == []
    assert decision.tool.count("/") == 1  # CrewAI's name for the server, sanitised like a tool name
