"""LangChain's create_agent with Tether as middleware: refusals, breakpoints, the decision chain."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tether.core import Guard
from tether.langgraph import Tether, resume

from .conftest import ScriptedModel, calls
from .graphs import agent

THREAD = {"configurable": {"thread_id": "a-1"}}


def test_parallel_breakpoints_in_separate_tasks_are_decided_in_one_resume(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(
        script=[
            calls(
                ("refund", {"order": "A", "amount": 100}, "r1"),
                ("refund", {"order": "B", "amount": 200}, "r2"),
                ("lookup", {"ticket": "9"}, "l1"),
            )
        ]
    )
    graph = agent(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    result = graph.invoke({"messages": [HumanMessage("refunds")]}, THREAD)
    interrupts = result["__interrupt__"]
    assert len({i.id for i in interrupts}) == 2  # one per pending call, each with its own id
    assert ran.count("lookup") == 1  # the allowed call ran in its own task, once

    graph.invoke(resume(interrupts, {"r1": "approve", "r2": "deny"}), THREAD)
    assert ran.calls.count(("refund", {"order": "A", "amount": 100})) == 1
    assert ran.count("refund") == 1
    assert ran.count("lookup") == 1
    assert set(model.tool_replies()) == {"r1", "r2", "l1"}
    assert "denied by langgraph-resume" in model.tool_replies()["r2"]


def test_human_in_the_loop_middleware_answers_are_understood(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = agent(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    from langgraph.types import Command

    edit = {"type": "edit", "edited_action": {"name": "refund", "args": {"order": "A", "amount": 60}}}
    graph.invoke(Command(resume={"decisions": [edit]}), THREAD)
    assert ran.calls == [("refund", {"order": "A", "amount": 60})]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_react_agent now lives in langchain.agents
def test_prebuilt_react_agent_with_a_guarded_tool_node(guard: Guard, tools, ran) -> None:
    from langgraph.prebuilt import ToolNode, create_react_agent

    t = Tether(guard, agent="support-bot")
    model = ScriptedModel(
        script=[calls(("lookup", {"ticket": "1"}, "l1"), ("send_email", {"to": "x@evil.example", "body": "b"}, "e1"))]
    )
    node = ToolNode(tools, wrap_tool_call=t.wrap_tool_call, awrap_tool_call=t.awrap_tool_call)
    create_react_agent(model, node).invoke({"messages": [HumanMessage("hi")]}, THREAD)
    assert ran.count("lookup") == 1 and ran.count("send_email") == 0
    assert "Tether denied" in model.tool_replies()["e1"]


def test_astream_agent_pauses_and_resumes(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = agent(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())

    async def run() -> list[dict]:
        first = [chunk async for chunk in graph.astream({"messages": [HumanMessage("refund")]}, THREAD)]
        assert any("__interrupt__" in chunk for chunk in first) and ran.calls == []
        from langgraph.types import Command

        return [chunk async for chunk in graph.astream(Command(resume={"r1": "approve"}), THREAD)]

    asyncio.run(run())
    assert ran.calls == [("refund", {"order": "A", "amount": 100})]


def test_agent_without_checkpointer_says_what_to_add(guard: Guard, tools, ran) -> None:
    from tether.langgraph import BreakpointError

    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    with pytest.raises(BreakpointError, match=r"compile it with a checkpointer .* approvals='queue'"):
        agent(model, tools, Tether(guard, agent="support-bot")).invoke({"messages": [HumanMessage("x")]}, THREAD)
    assert ran.calls == []
