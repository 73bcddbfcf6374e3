"""A hand-written StateGraph whose ToolNode runs behind Tether's wrapper."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from tether.core import Guard
from tether.langgraph import BreakpointError, Tether

from .conftest import ScriptedModel, calls, kinds
from .graphs import state_graph

THREAD = {"configurable": {"thread_id": "t-1"}}


def two_refunds_and_more(*more: tuple[str, dict, str]) -> AIMessage:
    """Two refunds that need approval (r1, r2) around a lookup that does not (l1)."""
    return calls(
        ("refund", {"order": "A", "amount": 100}, "r1"),
        ("lookup", {"ticket": "1"}, "l1"),
        ("refund", {"order": "B", "amount": 200}, "r2"),
        *more,
    )


def test_parallel_breakpoints_pause_together_and_resume_with_one_answer_each(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[two_refunds_and_more(("send_email", {"to": "x@evil.example", "body": "hi"}, "e1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    result = graph.invoke({"messages": [HumanMessage("refunds")]}, THREAD)
    interrupts = result["__interrupt__"]
    assert len(interrupts) == 1
    requests = interrupts[0].value["requests"]
    assert [(r["tool_call_id"], r["tool"], r["args"]["amount"]) for r in requests] == [
        ("r1", "refund", 100),
        ("r2", "refund", 200),
    ]
    assert ran.calls == []  # nothing in the batch ran before the person answered

    graph.invoke(Command(resume={"r1": "approve", "r2": {"approved": False, "comment": "too much"}}), THREAD)
    assert ran.count("refund") == 1
    assert ran.count("lookup") == 1  # ran once, after the answer, not again on resume
    replies = model.tool_replies()
    assert set(replies) == {"r1", "r2", "l1", "e1"}  # every call id of the AI message is answered
    assert replies["r1"] == "refunded 100 on A"
    assert "denied by langgraph-resume: too much" in replies["r2"]
    decisions = [k for k in kinds(guard.store, "t-1") if k[0] == "tool.decision"]
    assert len(decisions) == 4  # each call decided once, though the node ran twice


def test_edited_arguments_are_checked_again(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 400}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    graph.invoke(Command(resume={"args": {"order": "A", "amount": 80}, "approver": "alice"}), THREAD)
    assert ran.calls == [("refund", {"order": "A", "amount": 80})]

    model2 = ScriptedModel(script=[calls(("refund", {"order": "B", "amount": 400}, "r2"))])
    config = {"configurable": {"thread_id": "t-2"}}
    graph2 = state_graph(model2, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    graph2.invoke({"messages": [HumanMessage("refund")]}, config)
    graph2.invoke(Command(resume={"args": {"order": "B", "amount": 9000}}), config)
    assert ran.count("refund") == 1  # the edit broke the policy's limit: still denied
    assert "edited arguments rejected" in model2.tool_replies()["r2"]


def test_breakpoint_without_checkpointer_says_what_to_add(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"))
    with pytest.raises(BreakpointError, match="checkpointer"):
        graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    assert ran.calls == []


def test_unknown_tool_and_bad_arguments(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(
        script=[
            calls(
                ("wipe_disk", {"path": "/"}, "u1"),
                ("lookup", {"ticket_number": 5}, "b1"),  # not the tool's schema
            )
        ]
    )
    state_graph(model, tools, Tether(guard, agent="support-bot")).invoke({"messages": [HumanMessage("x")]}, THREAD)
    replies = model.tool_replies()
    assert "tool 'wipe_disk' is not declared in the policy" in replies["u1"]
    assert "ticket" in replies["b1"] and ran.count("lookup") == 0  # schema error reported, body never ran
    results = [e for e in guard.store.session_events("t-1") if e.kind == "tool.result"]
    assert len(results) == 1 and results[0].tool == "lookup"


def test_without_thread_id_each_run_is_a_session_of_its_own(store, tools, ran, caplog) -> None:
    """Two invocations without a thread_id (two users, say) are two sessions: neither shares the
    other's taint or limits, and a value one read is withheld from the other as between threads."""
    from .conftest import POLICY

    guard = Guard({**POLICY, "protections": {"cross_session": "redact"}}, store=store)
    t = Tether(guard, agent="support-bot")
    first = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    state_graph(first, tools, t).invoke({"messages": [HumanMessage("x")]})
    assert ran.count("lookup") == 1
    assert "no thread_id" in caplog.text
    second = ScriptedModel(script=[])
    state_graph(second, tools, t).invoke({"messages": [HumanMessage("what did jane@example.com want?")]})

    sessions = {e.session_id for e in store.events() if e.kind != "session.start"}
    assert len(sessions) == 2  # one per invocation
    assert t.session_for({}).id not in sessions  # not the fallback of calls made outside any graph
    assert "jane@example.com" not in " ".join(str(m.content) for m in second.seen[0])


def test_a_run_without_thread_id_shares_its_session_with_its_subgraphs(guard: Guard, tools, ran) -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1")), calls(("lookup", {"ticket": "2"}, "c2"))])
    inner = state_graph(model, tools, Tether(guard, agent="support-bot"))
    outer = StateGraph(MessagesState)
    outer.add_node("first", inner)
    outer.add_node("second", lambda state: inner.invoke(state))  # a graph invoked from a node
    outer.add_edge(START, "first")
    outer.add_edge("first", "second")
    outer.compile().invoke({"messages": [HumanMessage("x")]})
    assert ran.count("lookup") == 2
    results = [e.session_id for e in guard.store.events() if e.kind == "tool.result"]
    assert len(results) == 2 and len(set(results)) == 1


def test_breakpoint_shows_arguments_redacted(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(
        script=[calls(("refund", {"order": "sk_live_51HxQ2eZvKYlo2C0aB3cD4eF5", "amount": 90}, "r1"))]
    )
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    result = graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    [request] = result["__interrupt__"][0].value["requests"]
    assert "sk_live_51HxQ2eZvKYlo2C0aB3cD4eF5" not in str(request)
    assert request["args"]["amount"] == 90


def test_async_breakpoint_and_resume(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())

    async def run() -> dict:
        paused = await graph.ainvoke({"messages": [HumanMessage("refund")]}, THREAD)
        assert paused["__interrupt__"] and ran.calls == []
        return await graph.ainvoke(Command(resume="approve"), THREAD)

    asyncio.run(run())
    assert ran.count("refund") == 1
    assert model.tool_replies()["r1"] == "refunded 100 on A"


def test_unreadable_resume_value_denies(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    graph.invoke(Command(resume="maybe later"), THREAD)
    assert ran.calls == []
    assert "could not be read" in model.tool_replies()["r1"]


def refuse_decisions(store) -> None:
    """The database refuses to record tool decisions (as a full disk or a lost connection would)."""
    import sqlalchemy as sa

    with store.engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse_decisions BEFORE INSERT ON tether_audit_events "
                "WHEN NEW.kind = 'tool.decision' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
        )


def test_a_store_that_refuses_decisions_stops_the_call(guard: Guard, tools, ran) -> None:
    refuse_decisions(guard.store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    state_graph(model, tools, Tether(guard, agent="support-bot")).invoke({"messages": [HumanMessage("x")]}, THREAD)
    assert ran.calls == []
    assert "audit store unavailable" in model.tool_replies()["c1"]
    assert not [e for e in guard.store.session_events("t-1") if e.kind in ("tool.decision", "tool.result")]


def test_a_store_that_refuses_decisions_stops_a_direct_call(guard: Guard, tools, ran) -> None:
    refuse_decisions(guard.store)
    lookup = Tether(guard, agent="support-bot", session="direct").guard_tool(tools[0])
    assert "audit store unavailable" in lookup.invoke({"ticket": "1"})
    assert ran.calls == []


def test_agent_and_session_come_from_the_graph(store, tools, ran) -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    from .conftest import POLICY

    policy = {**POLICY, "agents": {"researcher": POLICY["agents"]["support-bot"]}}
    guard = Guard(policy, store=store)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    inner = state_graph(model, tools, Tether(guard))  # no agent named: the hosting node names it
    outer = StateGraph(MessagesState)
    outer.add_node("researcher", inner)
    outer.add_edge(START, "researcher")
    outer.compile().invoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "conv-9"}})
    assert ran.count("lookup") == 1
    [decision] = [e for e in store.session_events("conv-9") if e.kind == "tool.decision"]
    assert (decision.agent, decision.verdict) == ("researcher", "allow")

    model2 = ScriptedModel(script=[calls(("lookup", {"ticket": "2"}, "c2"))])
    config = {"configurable": {"thread_id": "conv-10", "tether_agent": "researcher", "tether_session": "case-7"}}
    state_graph(model2, tools, Tether(guard)).invoke({"messages": [HumanMessage("x")]}, config)
    assert [e.agent for e in store.session_events("case-7") if e.kind == "tool.decision"] == ["researcher"]


def test_async_parallel_breakpoints_pause_together(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[two_refunds_and_more()])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())

    async def run() -> None:
        paused = await graph.ainvoke({"messages": [HumanMessage("refunds")]}, THREAD)
        [pause] = paused["__interrupt__"]
        assert [r["tool_call_id"] for r in pause.value["requests"]] == ["r1", "r2"]
        assert ran.calls == []
        await graph.ainvoke(Command(resume={"r1": "deny", "r2": "approve"}), THREAD)

    asyncio.run(run())
    assert ran.calls.count(("refund", {"order": "B", "amount": 200})) == 1
    assert ran.count("refund") == 1 and ran.count("lookup") == 1
    assert set(model.tool_replies()) == {"r1", "r2", "l1"}


def test_a_call_changed_while_paused_is_decided_again(guard: Guard, tools, ran) -> None:
    """Approving a refund of 100, then changing the pending call to 9000 with update_state, must
    not run 9000 under the approval given for 100."""
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    paused = graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    assert paused["__interrupt__"][0].value["requests"][0]["args"]["amount"] == 100

    proposing = graph.get_state(THREAD).values["messages"][-1]
    changed = {**proposing.tool_calls[0], "args": {"order": "A", "amount": 9000}}
    graph.update_state(THREAD, {"messages": [proposing.model_copy(update={"tool_calls": [changed]})]}, as_node="agent")
    graph.invoke(Command(resume="approve"), THREAD)

    assert ran.calls == []  # 9000 is over the grant's amount <= 500: refused, not run as approved
    refunds = [
        (e.verdict, e.details["args"]["amount"]) for e in guard.store.session_events("t-1") if e.tool == "refund"
    ]
    assert ("deny", 9000) in refunds
    assert "Tether denied the call to 'refund'" in model.tool_replies()["r1"]


def _change_pending_call(graph, **change) -> None:
    proposing = graph.get_state(THREAD).values["messages"][-1]
    changed = {**proposing.tool_calls[0], **change}
    graph.update_state(THREAD, {"messages": [proposing.model_copy(update={"tool_calls": [changed]})]}, as_node="agent")


@pytest.mark.parametrize(("second_answer", "saver"), [("approve", "memory"), ("deny", "memory"), ("deny", "sqlite")])
def test_an_answer_given_for_a_call_does_not_apply_to_it_once_changed(
    guard: Guard, tools, ran, second_answer, saver
) -> None:
    """Approving a refund of 100, then changing the pending call to 200 (which still asks), must
    pause again for 200: the approval was given for 100, and only an answer about 200 decides it."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    checkpointer = (
        InMemorySaver() if saver == "memory" else SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False))
    )
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), checkpointer)
    first = graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)["__interrupt__"][0].value["requests"][0]
    assert first["args"]["amount"] == 100

    _change_pending_call(graph, args={"order": "A", "amount": 200})
    again = graph.invoke(Command(resume="approve"), THREAD)
    assert ran.calls == []  # the approval of 100 did not run 200
    [request] = again["__interrupt__"][0].value["requests"]
    assert (request["tool_call_id"], request["args"]["amount"]) == ("r1", 200)
    assert request["decision_id"] != first["decision_id"]

    graph.invoke(Command(resume=second_answer), THREAD)
    if second_answer == "approve":
        assert ran.calls == [("refund", {"order": "A", "amount": 200})]
        assert model.tool_replies()["r1"] == "refunded 200 on A"
    else:
        assert ran.calls == []
        assert "denied by langgraph-resume" in model.tool_replies()["r1"]
    approvals = [e for e in guard.store.session_events("t-1") if e.kind == "approval"]
    assert [(e.parent_id, e.verdict) for e in approvals] == [
        (request["decision_id"], "allow" if second_answer == "approve" else "deny")
    ]


def test_a_changed_call_pauses_again_in_create_agent(guard: Guard, tools, ran) -> None:
    from .graphs import agent

    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = agent(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)
    proposing = graph.get_state(THREAD).values["messages"][-1]
    changed = {**proposing.tool_calls[0], "args": {"order": "A", "amount": 200}}
    graph.update_state(THREAD, {"messages": [proposing.model_copy(update={"tool_calls": [changed]})]}, as_node="model")
    again = graph.invoke(Command(resume="approve"), THREAD)
    assert ran.calls == []
    assert again["__interrupt__"][0].value["requests"][0]["args"]["amount"] == 200
    graph.invoke(Command(resume="deny"), THREAD)
    assert ran.calls == []
    assert "denied by langgraph-resume" in model.tool_replies()["r1"]


def test_a_pending_call_changed_to_another_tool_is_decided_and_asked_again(store, tools, ran) -> None:
    import copy

    from .conftest import POLICY

    policy = copy.deepcopy(POLICY)
    policy["agents"]["support-bot"]["tools"]["send_email"] = {"ask": "true"}
    guard = Guard(policy, store=store)
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)

    _change_pending_call(graph, name="send_email", args={"to": "x@evil.example", "body": "hi"})
    again = graph.invoke(Command(resume="approve"), THREAD)
    assert ran.calls == []
    [request] = again["__interrupt__"][0].value["requests"]
    assert request["tool"] == "send_email" and request["args"]["to"].endswith("@evil.example")
    decisions = [(e.tool, e.verdict) for e in guard.store.session_events("t-1") if e.kind == "tool.decision"]
    assert decisions == [("refund", "ask"), ("send_email", "ask")]

    graph.invoke(Command(resume="deny"), THREAD)
    assert ran.calls == []


def test_a_tool_error_turned_into_a_message_is_audited_as_an_error(guard: Guard, ran) -> None:
    from langchain_core.tools import tool
    from langgraph.prebuilt import ToolNode

    @tool
    def lookup(ticket: str) -> str:
        """Read a ticket."""
        ran.calls.append(("lookup", {"ticket": ticket}))
        raise RuntimeError("the ticket backend is down")

    t = Tether(guard, agent="support-bot")
    node = ToolNode([lookup], handle_tool_errors=True, wrap_tool_call=t.wrap_tool_call)
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import tools_condition

    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", node)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    builder.compile().invoke({"messages": [HumanMessage("x")]}, THREAD)
    assert "the ticket backend is down" in model.tool_replies()["c1"]  # the model reads the error
    [result] = [e for e in guard.store.session_events("t-1") if e.kind == "tool.result"]
    assert "the ticket backend is down" in str(result.details["error"])


def test_user_and_tenant_are_given_or_taken_from_the_config(guard: Guard, tools, ran) -> None:
    model = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    state_graph(model, tools, Tether(guard, agent="support-bot", user="alice", tenant="acme")).invoke(
        {"messages": [HumanMessage("x")]}, THREAD
    )
    [decision] = [e for e in guard.store.session_events("t-1") if e.kind == "tool.decision"]
    assert decision.tenant == "acme" and decision.user_id is not None

    model = ScriptedModel(script=[calls(("lookup", {"ticket": "2"}, "c2"))])
    config = {"configurable": {"thread_id": "t-2", "user_id": "bob", "tenant_id": "globex"}}
    state_graph(model, tools, Tether(guard, agent="support-bot")).invoke({"messages": [HumanMessage("x")]}, config)
    [decision] = [e for e in guard.store.session_events("t-2") if e.kind == "tool.decision"]
    assert decision.tenant == "globex" and decision.user_id is not None


def test_sessions_without_a_tenant_are_isolated_by_default(store, tools, ran) -> None:
    """The policy's default isolation: a value one conversation read does not surface in
    another unchecked, though neither names a tenant."""
    from .conftest import POLICY

    guard = Guard({**POLICY, "protections": {"cross_session": "redact"}}, store=store)
    t = Tether(guard, agent="support-bot")
    first = ScriptedModel(script=[calls(("lookup", {"ticket": "1"}, "c1"))])
    state_graph(first, tools, t).invoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "a"}})
    second = ScriptedModel(script=[])
    state_graph(second, tools, t).invoke(
        {"messages": [HumanMessage("what did jane@example.com want?")]}, {"configurable": {"thread_id": "b"}}
    )
    assert "jane@example.com" not in " ".join(str(m.content) for m in second.seen[0])


@pytest.mark.parametrize("keyed_by", ["interrupt_id", "tool_call_id"])
def test_an_answer_keyed_to_the_old_breakpoint_does_not_apply_to_the_changed_call(
    guard: Guard, tools, ran, keyed_by
) -> None:
    """An answer addressed to the first breakpoint (by its interrupt id, or to the call by its
    tool_call_id) was given for 100: after update_state changed the call to 200, it pauses again."""
    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"), InMemorySaver())
    [pause] = graph.invoke({"messages": [HumanMessage("refund")]}, THREAD)["__interrupt__"]
    _change_pending_call(graph, args={"order": "A", "amount": 200})
    answer = {pause.id: "approve"} if keyed_by == "interrupt_id" else {"r1": "approve"}
    again = graph.invoke(Command(resume=answer), THREAD)
    assert ran.calls == []  # the approval of 100 did not run 200
    [request] = again["__interrupt__"][0].value["requests"]
    assert request["args"]["amount"] == 200
