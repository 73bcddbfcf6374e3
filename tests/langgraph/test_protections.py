"""What the core lets the agent see is what LangGraph hands on: redacted tool output, rewritten
or withheld model requests (the core's data protections)."""

from __future__ import annotations

import importlib.util

import pytest
from langchain_core.messages import HumanMessage

from tether.core import Guard
from tether.langgraph import Tether

from .conftest import POLICY, ScriptedModel, calls
from .graphs import agent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tether.core.protect") is None, reason="needs the core's data protections"
)


def policy(**protections: str) -> dict:
    bot = {**POLICY["agents"]["support-bot"], "data": ["network"]}  # not cleared for personal data
    return {**POLICY, "agents": {"support-bot": bot}, "protections": protections}


def test_tool_output_the_agent_is_not_cleared_for_reaches_the_model_redacted(store, tools, ran) -> None:
    guard = Guard(policy(clearance="redact"), store=store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    agent(model, tools, Tether(guard, agent="support-bot")).invoke(
        {"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "p-1"}}
    )
    assert ran.count("lookup") == 1
    reply = model.tool_replies()["c1"]
    assert "jane@example.com" not in reply and "@example.com" in reply


def test_value_from_another_session_is_redacted_before_the_model_sees_it(store, tools, ran) -> None:
    guard = Guard(policy(clearance="allow", cross_session="redact", isolation="session"), store=store)
    t = Tether(guard, agent="support-bot")
    first = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    agent(first, tools, t).invoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "p-1"}})
    second = ScriptedModel(script=[])
    agent(second, tools, t).invoke(
        {"messages": [HumanMessage("what did jane@example.com ask?")]}, {"configurable": {"thread_id": "p-2"}}
    )
    shown = " ".join(str(m.content) for m in second.seen[0])
    assert "jane@example.com" not in shown


def test_withheld_model_request_is_not_sent(store, tools, ran) -> None:
    guard = Guard(policy(clearance="allow", cross_session="deny", isolation="session"), store=store)
    t = Tether(guard, agent="support-bot")
    first = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    agent(first, tools, t).invoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "p-1"}})
    second = ScriptedModel(script=[])
    result = agent(second, tools, t).invoke(
        {"messages": [HumanMessage("what did jane@example.com ask?")]}, {"configurable": {"thread_id": "p-2"}}
    )
    assert second.seen == []
    assert result["messages"][-1].content.startswith("Tether withheld this model request")
