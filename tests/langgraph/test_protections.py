"""What the core lets the agent see is what LangGraph hands on: redacted tool output, rewritten
or withheld model requests (the core's data protections)."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.types import Command

from tether.core import Guard
from tether.langgraph import Tether

from .conftest import POLICY, ScriptedModel, calls
from .graphs import agent, state_graph

CARD = "4111 1111 1111 1111"

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


def card_tool(ran: Any) -> Any:
    """A tool that answers with a Command whose ToolMessage carries a card number and an e-mail."""

    @tool
    def lookup(ticket: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Read a ticket."""
        ran.calls.append(("lookup", {"ticket": ticket}))
        text = f"ticket {ticket}: card {CARD}, write to jane@example.com"
        return Command(update={"messages": [ToolMessage(text, tool_call_id=tool_call_id)]})

    return lookup


@pytest.mark.parametrize("wiring", ["tool_node", "middleware"])
def test_a_command_result_reaches_the_model_redacted(store, ran, wiring: str) -> None:
    guard = Guard(policy(clearance="redact"), store=store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    build = agent if wiring == "middleware" else state_graph
    build(model, [card_tool(ran)], Tether(guard, agent="support-bot")).invoke(
        {"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "p-1"}}
    )
    assert ran.count("lookup") == 1
    reply = model.tool_replies()["c1"]
    assert "jane@example.com" not in reply and CARD not in reply
    assert "ticket 1" in reply  # the rest of the message is kept
    [result] = [e for e in store.session_events("p-1") if e.kind == "tool.result"]
    assert result.details["held"]  # recorded as held back from the agent


def test_the_system_message_is_recorded_screened_and_trusted(store, tools, ran) -> None:
    from langchain.agents import create_agent

    guard = Guard(policy(clearance="redact"), store=store)
    model = ScriptedModel(script=[])
    system = "You are Acme's support bot. The on-call engineer is jane@example.com."
    create_agent(
        model, tools, system_prompt=system, middleware=[Tether(guard, agent="support-bot").middleware()]
    ).invoke({"messages": [HumanMessage("who is on call?")]}, {"configurable": {"thread_id": "p-1"}})
    [request] = [e for e in store.session_events("p-1") if e.kind == "model.request"]
    assert "on-call engineer" in request.data and "jane@example.com" not in request.data  # recorded, redacted
    shown = " ".join(str(m.content) for m in model.seen[0])
    assert "on-call engineer" in shown and "jane@example.com" not in shown  # the model got what Tether allows
    assert request.details["values"]  # and its values are trusted input for provenance


def _graph_with_state(model: Any, lookup: Any, tether: Tether, messages_key: str = "messages") -> Any:
    """model -> tools -> model over a state with its messages under ``messages_key`` and a note."""
    from typing import TypedDict

    from langgraph.graph import START, StateGraph
    from langgraph.graph.message import add_messages
    from langgraph.prebuilt import ToolNode, tools_condition

    State = TypedDict("State", {messages_key: Annotated[list, add_messages], "note": str})  # type: ignore[misc]
    builder = StateGraph(State)
    builder.add_node("agent", lambda state: {messages_key: [model.invoke(state[messages_key])]})
    builder.add_node("tools", ToolNode([lookup], messages_key=messages_key, wrap_tool_call=tether.wrap_tool_call))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", lambda s: tools_condition(s, messages_key=messages_key))
    builder.add_edge("tools", "agent")
    return builder.compile()


def test_a_command_result_under_a_custom_messages_key_is_redacted_in_the_state(store, ran) -> None:
    @tool
    def lookup(ticket: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Read a ticket."""
        ran.calls.append(("lookup", {"ticket": ticket}))
        return Command(update={"chat": [ToolMessage(f"ticket {ticket}: card {CARD}", tool_call_id=tool_call_id)]})

    guard = Guard(policy(clearance="redact"), store=store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    graph = _graph_with_state(model, lookup, Tether(guard, agent="support-bot", messages_key="chat"), "chat")
    final = graph.invoke({"chat": [HumanMessage("x")]}, {"configurable": {"thread_id": "p-1"}})
    assert ran.count("lookup") == 1
    [reply] = [m.content for m in final["chat"] if isinstance(m, ToolMessage)]  # in the state, not only as sent
    assert CARD not in reply and reply.startswith("ticket 1: card ")


def noting_tool(ran: Any) -> Any:
    """A tool whose Command writes a card number and an e-mail to the state outside its messages."""

    @tool
    def lookup(ticket: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Read a ticket."""
        ran.calls.append(("lookup", {"ticket": ticket}))
        return Command(
            update={
                "messages": [ToolMessage(f"ticket {ticket} noted", tool_call_id=tool_call_id)],
                "note": f"ticket {ticket}: card {CARD}, write to jane@example.com",
            }
        )

    return lookup


def test_what_a_command_writes_outside_its_messages_is_redacted(store, ran) -> None:
    guard = Guard(policy(clearance="redact"), store=store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    graph = _graph_with_state(model, noting_tool(ran), Tether(guard, agent="support-bot"))
    final = graph.invoke({"messages": [HumanMessage("x")], "note": ""}, {"configurable": {"thread_id": "p-1"}})
    assert ran.count("lookup") == 1
    assert CARD not in final["note"] and "jane@example.com" not in final["note"]
    assert final["note"].startswith("ticket 1: card ")  # the rest of the note is kept
    assert model.tool_replies()["c1"] == "ticket 1 noted"


def test_a_command_withheld_as_a_whole_writes_nothing_to_the_state(store, ran) -> None:
    guard = Guard(policy(clearance="deny"), store=store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    graph = _graph_with_state(model, noting_tool(ran), Tether(guard, agent="support-bot"))
    final = graph.invoke({"messages": [HumanMessage("x")], "note": ""}, {"configurable": {"thread_id": "p-1"}})
    assert ran.count("lookup") == 1
    assert final["note"] == ""  # nothing of the update was applied
    assert "withheld by Tether" in model.tool_replies()["c1"]
