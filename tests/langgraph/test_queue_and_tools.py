"""Approvals through Tether's own queue, and guarded tools in hand-written nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from tether.core import ApprovalQueue, AuditStore, Guard, QueueApprover
from tether.langgraph import Tether

from .conftest import KEY, POLICY, ScriptedModel, calls
from .graphs import state_graph

THREAD = {"configurable": {"thread_id": "q-1"}}


def answer_when_asked(store: AuditStore, approved: bool) -> threading.Thread:
    """A person answering from another shell: `tether approvals approve|deny ID`, once the request waits."""

    def run() -> None:
        queue = ApprovalQueue(store)
        for _ in range(600):
            pending = queue.entries()
            if pending:
                env = {**os.environ, "TETHER_STORE": store.engine.url.render_as_string(), "TETHER_KEY": KEY.decode()}
                verb = "approve" if approved else "deny"
                command = [sys.executable, "-m", "tether.core.cli", "approvals", verb, pending[0].id, "--as", "alice"]
                answers.append(subprocess.run(command, env=env, capture_output=True, text=True))
                return
            time.sleep(0.05)

    answers: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=run, daemon=True)
    thread.answers = answers  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_queue_approval_runs_the_call_once(store: AuditStore, tools, ran) -> None:
    guard = Guard(POLICY, store=store, approver=QueueApprover(store, poll=0.05))
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    helper = answer_when_asked(store, approved=True)
    state_graph(model, tools, Tether(guard, agent="support-bot", approvals="queue")).invoke(
        {"messages": [HumanMessage("x")]}, THREAD
    )
    helper.join()
    [answered] = helper.answers  # type: ignore[attr-defined]
    assert answered.returncode == 0, answered.stderr
    assert ran.count("refund") == 1
    kinds = [e.kind for e in store.session_events("q-1")]
    assert kinds.count("approval.answer") == 1 and kinds.count("approval") == 1


def test_guarded_tool_in_a_custom_node(guard: Guard, tools, ran) -> None:
    t = Tether(guard, agent="support-bot")
    send_email = t.guard_tool(tools[1])
    outputs: list[str] = []

    def node(state: MessagesState) -> dict:
        outputs.append(send_email.invoke({"to": "ops@acme.example", "body": "ok"}))
        outputs.append(send_email.invoke({"to": "leak@evil.example", "body": "dump"}))
        return {"messages": [AIMessage("done")]}

    builder = StateGraph(MessagesState)
    builder.add_node("mailer", node)
    builder.add_edge(START, "mailer")
    builder.add_edge("mailer", END)
    builder.compile().invoke({"messages": [HumanMessage("x")]}, THREAD)
    assert ran.calls == [("send_email", {"to": "ops@acme.example", "body": "ok"})]
    assert outputs[0] == "sent"
    assert outputs[1].startswith("Tether denied the call to 'send_email'")
    assert send_email.args == tools[1].args  # the model sees the same schema


def test_guarded_tool_async(guard: Guard, tools, ran) -> None:
    import asyncio

    send_email = Tether(guard, agent="support-bot", session="s-async").guard_tool(tools[1])
    refused = asyncio.run(send_email.ainvoke({"to": "leak@evil.example", "body": "dump"}))
    sent = asyncio.run(send_email.ainvoke({"to": "ops@acme.example", "body": "ok"}))
    assert refused.startswith("Tether denied") and sent == "sent"
    assert ran.calls == [("send_email", {"to": "ops@acme.example", "body": "ok"})]
    kinds = [e.kind for e in guard.store.session_events("s-async")]
    assert kinds.count("tool.decision") == 2 and kinds.count("tool.result") == 1


def test_a_guarded_tool_called_in_a_node_pauses_the_graph(guard: Guard, tools, ran) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    refund = Tether(guard, agent="support-bot").guard_tool(tools[2])
    outputs: list[str] = []

    def node(state: MessagesState) -> dict:
        outputs.append(refund.invoke({"order": "A", "amount": 100}))
        return {"messages": [AIMessage("done")]}

    builder = StateGraph(MessagesState)
    builder.add_node("refunder", node)
    builder.add_edge(START, "refunder")
    builder.add_edge("refunder", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    paused = graph.invoke({"messages": [HumanMessage("x")]}, THREAD)
    [request] = paused["__interrupt__"][0].value["requests"]
    assert request["tool"] == "refund" and ran.calls == []
    graph.invoke(Command(resume="approve"), THREAD)
    assert ran.calls == [("refund", {"order": "A", "amount": 100})]
    assert outputs == ["refunded 100 on A"]


def test_a_breakpoint_outside_a_graph_says_what_to_do(guard: Guard, tools, ran) -> None:
    import pytest

    from tether.langgraph import BreakpointError

    refund = Tether(guard, agent="support-bot", session="outside").guard_tool(tools[2])
    with pytest.raises(BreakpointError, match="approvals='queue'"):
        refund.invoke({"order": "A", "amount": 100})
    assert ran.calls == []
