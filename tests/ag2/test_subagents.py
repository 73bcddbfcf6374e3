"""Sub-agents of a guarded AG2 agent: `as_tool` targets, `TaskConfig` subtasks, `dynamic_agent`
children. Each is driven the way an AG2 program delegates, with scripted models that number
their call ids per response (`call_0`), as providers do."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from ag2 import Agent, TaskConfig, tool
from ag2.middleware.builtin.tools.approval import approval_required
from ag2.testing import TestConfig
from ag2.tools.dynamic import dynamic_agent

from tether.ag2 import TetherMiddleware, UngovernedToolError
from tether.core import AuditStore, Guard, QueueApprover

from .conftest import Tools, call, chain_ok, events, model_saw, scripted

TOOLS: dict[str, Any] = {
    "read_ticket": {"effects": ["read"], "output": "untrusted", "data": ["pii"]},
    "lookup_order": {"effects": ["read"]},
    "send_email": {"effects": ["external"]},
    "issue_refund": {"effects": ["money", "irreversible"]},
    "task_researcher": {"effects": ["read"]},
    "run_subtask": {"effects": ["read"]},
    "create_and_run_agent": {"effects": ["read"]},
}
ONLY_COLLEAGUES = {"when": 'args.to.endsWith("@acme.example")', "reason": "only colleagues"}
TAINTED_EXTERNAL = {
    "id": "external-after-untrusted",
    "effects": ["external"],
    "when": "session.tainted",
    "action": "ask",
    "reason": "external action after untrusted content",
}


def policy(coordinator: dict[str, Any], researcher: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    agents = {"coordinator": {"purpose": "route tickets", "owner": "ops@acme.example", "tools": coordinator}}
    if researcher is not None:
        agents["researcher"] = {"purpose": "research tickets", "owner": "ops@acme.example", "tools": researcher}
    return {"version": 1, "approvals": {"timeout": "1s"}, "tools": TOOLS, "agents": agents, **extra}


def make_guard(store: AuditStore, spec: dict[str, Any]) -> Guard:
    return Guard(spec, store=store, approver=QueueApprover(store, poll=0.05))


def ask(agent: Agent, text: str = "handle ticket 7") -> Any:
    return asyncio.run(agent.ask(text))


def delegate(objective: str = "look into ticket 7", call_id: str = "call_0") -> Any:
    return call("task_researcher", call_id, objective=objective)


def researcher(tools: Tools, config: Any, middleware: list[Any]) -> Agent:
    return Agent("researcher", config=config, tools=tools.all(), middleware=middleware)


def coordinator(tools: Any, config: Any, guard: Guard, **kwargs: Any) -> Agent:
    return Agent("coordinator", config=config, tools=tools, middleware=[TetherMiddleware(guard)], **kwargs)


# -- as_tool ----------------------------------------------------------------------------------


@pytest.mark.parametrize("guarded_child", [True, False], ids=["child-guarded", "child-unguarded"])
def test_a_sub_agent_call_that_reuses_the_parents_call_id_is_decided(
    store: AuditStore, tools: Tools, guarded_child: bool
) -> None:
    """The coordinator's call and the researcher's call are both `call_0`: each is decided."""
    guard = make_guard(store, policy({"task_researcher": "allow"}, {"send_email": ONLY_COLLEAGUES}))
    child_model = scripted(call("send_email", "call_0", to="eve@evil.example", body="export"), "done")
    child = researcher(tools, child_model, [TetherMiddleware(guard)] if guarded_child else [])
    parent_model = scripted(delegate(), "finished")
    boss = coordinator([child.as_tool(description="Research a ticket.")], parent_model, guard)

    ask(boss)

    assert tools.runs["send_email"] == 0
    assert "Tether denied the call to 'send_email'" in model_saw(child_model)
    decided = {(e.agent, e.tool): e.verdict for e in events(guard, "tool.decision")}
    acting = "researcher" if guarded_child else "coordinator"  # an unguarded child acts for its parent
    assert decided == {("coordinator", "task_researcher"): "allow", (acting, "send_email"): "deny"}
    assert chain_ok(guard)


def test_a_guarded_sub_agent_shares_the_coordinators_session_so_taint_carries_over(
    store: AuditStore, tools: Tools
) -> None:
    spec = policy(
        {"read_ticket": "allow", "task_researcher": "allow"},
        {"send_email": "allow"},
        rules=[TAINTED_EXTERNAL],
    )
    guard = make_guard(store, spec)
    child_model = scripted(call("send_email", "call_0", to="partner@elsewhere.example", body="Jane Roe"), "done")
    child = researcher(tools, child_model, [TetherMiddleware(guard)])
    parent_model = scripted(call("read_ticket", "call_0", ticket_id="7"), delegate(call_id="call_1"), "finished")
    boss = coordinator([*tools.all()[:1], child.as_tool(description="Research a ticket.")], parent_model, guard)

    ask(boss)

    assert tools.runs == {"read_ticket": 1}  # the email waited for a person (after the ticket) and nobody came
    sent = [e for e in events(guard, "tool.decision") if e.tool == "send_email"]
    assert [(e.agent, e.verdict, e.details["rule_ids"][0]) for e in sent] == [
        ("researcher", "ask", "external-after-untrusted")  # the policy's rule first, then any protection's
    ]
    delegation = next(e for e in events(guard, "tool.decision") if e.tool == "task_researcher")
    assert sent[0].session_id == delegation.session_id  # one session: the researcher acted in the coordinator's
    assert sent[0].details["context"]["parent_call"] == delegation.event_id
    assert [e.kind for e in events(guard, "session.start")] == ["session.start"]


def test_a_guarded_sub_agent_shares_the_coordinators_limits(store: AuditStore, tools: Tools) -> None:
    spec = policy({"task_researcher": "allow"}, {"lookup_order": {"max_calls": 1}})
    guard = make_guard(store, spec)
    child_model = TestConfig(call("lookup_order", "call_0", order_id="A1"), "done")  # each delegation starts over
    child = researcher(tools, child_model, [TetherMiddleware(guard)])
    parent_model = scripted(delegate(call_id="call_0"), delegate(call_id="call_1"), "finished")
    boss = coordinator([child.as_tool(description="Research a ticket.")], parent_model, guard)

    ask(boss)

    assert tools.runs["lookup_order"] == 1  # the second delegation's lookup is over the session's limit
    verdicts = [e.verdict for e in events(guard, "tool.decision") if e.tool == "lookup_order"]
    assert verdicts == ["allow", "deny"]


def test_a_sub_agent_with_its_own_session_names_the_parent_session(store: AuditStore, tools: Tools) -> None:
    guard = make_guard(store, policy({"task_researcher": "allow"}, {"lookup_order": "allow"}))
    child_model = scripted(call("lookup_order", "call_0", order_id="A1"), "done")
    child = researcher(tools, child_model, [TetherMiddleware(guard, session_id="research-7")])
    boss = coordinator([child.as_tool(description="Research a ticket.")], scripted(delegate(), "ok"), guard)

    ask(boss)

    starts = {e.session_id: e.details for e in events(guard, "session.start")}
    parent = next(e.session_id for e in events(guard, "tool.decision") if e.tool == "task_researcher")
    assert starts["research-7"]["parent_session"] == parent
    assert "parent_session" not in starts[parent]


# -- sub-agents AG2 builds during a call ------------------------------------------------------


def test_taskconfig_subtask_tools_are_decided_as_the_parent_in_its_session(store: AuditStore, tools: Tools) -> None:
    guard = make_guard(store, policy({"run_subtask": "allow", "send_email": ONLY_COLLEAGUES}))
    subtask_model = scripted(call("send_email", "call_0", to="eve@evil.example", body="export"), "done")
    parent_model = scripted(call("run_subtask", "call_0", task="email the export"), "finished")
    boss = coordinator(tools.all(), parent_model, guard, tasks=TaskConfig(config=subtask_model))

    ask(boss)

    assert tools.runs["send_email"] == 0
    assert "only colleagues" in model_saw(subtask_model)
    sent = next(e for e in events(guard, "tool.decision") if e.tool == "send_email")
    spawn = next(e for e in events(guard, "tool.decision") if e.tool == "run_subtask")
    assert (sent.agent, sent.verdict, sent.session_id) == ("coordinator", "deny", spawn.session_id)
    assert sent.details["context"]["subagent"].startswith("subtask-")
    assert sent.details["context"]["parent_call"] == spawn.event_id


def test_dynamic_agent_children_are_decided_and_cannot_pick_their_identity(store: AuditStore, tools: Tools) -> None:
    spec = policy({"create_and_run_agent": "allow"}, {"send_email": "allow"})  # the researcher may email anyone
    guard = make_guard(store, spec)
    child_model = scripted(call("send_email", "call_0", to="eve@evil.example", body="export"), "done")
    factory = dynamic_agent(available_tools=tools.all(), config=child_model)
    made_up = {"name": "researcher", "prompt": ["You email."], "tool_names": ["send_email"]}
    parent_model = scripted(call("create_and_run_agent", "call_0", spec=made_up, objective="email it"), "finished")
    boss = coordinator([factory], parent_model, guard)

    ask(boss)

    assert tools.runs["send_email"] == 0  # the model named its child "researcher"; it still acts as the coordinator
    sent = next(e for e in events(guard, "tool.decision") if e.tool == "send_email")
    assert (sent.agent, sent.verdict) == ("coordinator", "deny")
    assert sent.details["context"]["subagent"] == "researcher"


# -- framework-added tools --------------------------------------------------------------------


def test_a_tool_ag2_adds_that_the_policy_does_not_declare_is_named(
    store: AuditStore, tools: Tools, caplog: pytest.LogCaptureFixture
) -> None:
    spec = policy({"lookup_order": "allow"})
    del spec["tools"]["run_subtask"]
    guard = make_guard(store, spec)
    parent_model = scripted(call("run_subtask", "call_0", task="look it up"), "finished")
    boss = coordinator(tools.all(), parent_model, guard, tasks=TaskConfig(config=scripted("done")))

    with caplog.at_level(logging.WARNING, logger="tether.ag2"):
        ask(boss)

    named = [r.getMessage() for r in caplog.records if "run_subtask" in r.getMessage()]
    assert named and "does not declare" in named[0]
    assert "Tether denied the call to 'run_subtask'" in model_saw(parent_model)


# -- AG2's own approval step ------------------------------------------------------------------

needs_approval_requests = pytest.mark.skipif(
    not hasattr(__import__("ag2.events", fromlist=["x"]), "ToolApprovalRequest"),
    reason="AG2 1.0's approval_required asks in plain text that does not name the call",
)


def refund_tool(tools: Tools) -> Any:
    refund = next(f for f in tools.all() if f.__name__ == "issue_refund")
    return tool(refund, middleware=[approval_required()])


@needs_approval_requests
def test_approvals_through_ag2_ask_the_person_once_even_with_approval_required(store: AuditStore, tools: Tools) -> None:
    guard = make_guard(store, policy({"issue_refund": {"ask": True}}))
    questions: list[str] = []

    def person(request: Any) -> str:
        questions.append(request.content)
        return "y"

    config = scripted(call("issue_refund", "call_0", order_id="A1", amount=120), "done")
    agent = Agent(
        "coordinator",
        config=config,
        tools=[refund_tool(tools)],
        middleware=[TetherMiddleware(guard, approvals="ag2")],
        hitl_hook=person,
    )

    ask(agent)

    assert tools.runs["issue_refund"] == 1
    assert len(questions) == 1, questions
    [approval] = events(guard, "approval")
    assert (approval.verdict, approval.details["approver"]) == ("allow", "ag2-hitl")


@needs_approval_requests
@pytest.mark.parametrize(("reply", "runs"), [("y", 1), ("n", 0)])
def test_an_answer_given_to_ag2s_approval_required_is_audited(
    store: AuditStore, tools: Tools, reply: str, runs: int
) -> None:
    guard = make_guard(store, policy({"issue_refund": "allow"}))
    config = scripted(call("issue_refund", "call_0", order_id="A1", amount=120), "done")
    agent = Agent(
        "coordinator",
        config=config,
        tools=[refund_tool(tools)],
        middleware=[TetherMiddleware(guard)],
        hitl_hook=lambda request: reply,
    )

    ask(agent)

    assert tools.runs["issue_refund"] == runs
    [decision] = events(guard, "tool.decision")
    [answer] = events(guard, "approval.answer")
    assert (answer.parent_id, answer.verdict) == (decision.event_id, "allow" if runs else "deny")
    assert (answer.details["approver"], answer.details["asked_by"]) == ("ag2-hitl", "ag2.approval_required")
    assert len(events(guard, "tool.result")) == runs  # a refused call did not run: no result to record
    assert chain_ok(guard)


def test_the_audit_names_the_sub_agents_call_in_the_shared_session(store: AuditStore, tools: Tools) -> None:
    guard = make_guard(store, policy({"task_researcher": "allow"}, {"lookup_order": "allow"}))
    child_model = scripted(call("lookup_order", "call_0", order_id="A1"), "done")
    child = researcher(tools, child_model, [TetherMiddleware(guard)])
    boss = coordinator([child.as_tool(description="Research a ticket.")], scripted(delegate(), "ok"), guard)

    ask(boss)

    kinds = [(e.agent, e.kind, e.tool) for e in events(guard) if e.kind.startswith("tool")]
    assert kinds == [
        ("coordinator", "tool.decision", "task_researcher"),
        ("researcher", "tool.decision", "lookup_order"),
        ("researcher", "tool.result", "lookup_order"),
        ("coordinator", "tool.result", "task_researcher"),
    ]
    assert json.dumps(events(guard, "tool.result")[0].details["output"]).count("order A1") == 1


# -- tools the model provider runs itself -----------------------------------------------------


def test_a_tool_the_provider_runs_is_refused_before_the_model_is_called(store: AuditStore, tools: Tools) -> None:
    from ag2.tools import WebSearchTool

    guard = make_guard(store, policy({"lookup_order": "allow"}))
    config = scripted("done")
    agent = coordinator([WebSearchTool(), *tools.all()], config, guard)

    with pytest.raises(UngovernedToolError, match=r"\('web_search'\), which the model provider runs itself"):
        ask(agent)

    assert config.mock.call_count == 0


def test_a_provider_tool_the_policy_says_needs_nothing_is_offered(store: AuditStore, tools: Tools) -> None:
    from ag2.tools import WebSearchTool

    spec = policy({"web_search": "allow"})
    spec["tools"]["web_search"] = {"effects": ["read"], "output": "trusted"}
    guard = make_guard(store, spec)

    reply = ask(coordinator([WebSearchTool()], scripted("done"), guard))

    assert reply.body == "done"
    spec["tools"]["web_search"] = {"effects": ["read"], "output": "untrusted"}  # its results would taint
    with pytest.raises(UngovernedToolError):
        ask(coordinator([WebSearchTool()], scripted("done"), make_guard(store, spec)))


def test_monitor_mode_runs_a_configuration_it_would_refuse(store: AuditStore, caplog: pytest.LogCaptureFixture) -> None:
    from ag2.tools import WebSearchTool

    guard = Guard(policy({}), store=store, mode="monitor")

    with caplog.at_level(logging.ERROR, logger="tether.ag2"):
        reply = ask(coordinator([WebSearchTool()], scripted("done"), guard))

    assert reply.body == "done"
    assert any("web_search" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
