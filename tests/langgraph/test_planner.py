"""A LangChain chat model as Tether's planner: the user's request scopes a create_agent run."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from tether.core import ApprovalAnswer, ApprovalRequest, AuditStore, Guard
from tether.core.audit.events import Kind
from tether.langgraph import Tether
from tether.langgraph.planner import ChatModelPlanner

from .conftest import POLICY, ScriptedModel, calls
from .graphs import agent

THREAD = {"configurable": {"thread_id": "plan-1"}}
SCOPE = {"task": "refund order A", "tools": {"refund": {"when": "args.order == 'A'", "why": "refund order A"}}}


def planner_model(answer: AIMessage) -> ScriptedModel:
    """A chat model whose structured output (LangChain's tool-calling path) is scripted."""
    return ScriptedModel(script=[answer])


def scope_events(store: AuditStore) -> list[dict[str, Any]]:
    return [e.details for e in store.session_events("plan-1") if e.kind == Kind.SCOPE]


class Refusing:
    def __init__(self) -> None:
        self.asked: list[ApprovalRequest] = []

    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer:
        self.asked.append(request)
        return ApprovalAnswer(approved=False, approver="ops")


def test_the_planner_scopes_the_run_from_the_users_request(store: AuditStore, tools, ran) -> None:
    person = Refusing()
    guard = Guard(POLICY, store=store, approver=person)
    planner = planner_model(AIMessage("", tool_calls=[{"name": "scope", "args": SCOPE, "id": "p1"}]))
    model = ScriptedModel(
        script=[
            calls(
                ("refund", {"order": "A", "amount": 40}, "r1"),
                ("send_email", {"to": "x@acme.example", "body": "b"}, "e1"),
            )
        ]
    )
    t = Tether(guard, agent="support-bot", approvals="queue", planner=ChatModelPlanner(planner))
    agent(model, tools, t).invoke({"messages": [HumanMessage("Please refund order A, 40 euros")]}, THREAD)
    shown: list[BaseMessage] = planner.seen[0]
    assert [m.type for m in shown] == ["system", "human"] and shown[1].content == "Please refund order A, 40 euros"
    assert "refund (money, irreversible)" in str(shown[0].content)
    assert ran.calls == [("refund", {"order": "A", "amount": 40})]  # in scope: it ran
    # the policy allows the email, the scope does not: a person is asked, and told why
    [request] = person.asked
    assert request.tool == "send_email" and "outside this session's scope" in request.reason
    assert "task 'refund order A', in scope: refund" in request.reason
    assert ran.count("send_email") == 0 and "Tether denied" in model.tool_replies()["e1"]
    [recorded] = scope_events(store)
    assert recorded["origin"] == "planner:langchain:scripted" and recorded["tools"]["refund"]["why"] == "refund order A"


def test_a_planner_answer_that_is_not_a_scope_leaves_the_run_unscoped_and_says_so(
    guard: Guard, store: AuditStore, tools, ran
) -> None:
    planner = planner_model(AIMessage("I think you should refund it"))  # no structured answer at all
    model = ScriptedModel(script=[calls(("send_email", {"to": "x@acme.example", "body": "b"}, "e1"))])
    t = Tether(guard, agent="support-bot", approvals="queue", planner=ChatModelPlanner(planner))
    agent(model, tools, t).invoke({"messages": [HumanMessage("Email x")]}, THREAD)
    assert ran.count("send_email") == 1  # the policy alone decides ...
    [recorded] = scope_events(store)
    assert "not a JSON object" in recorded["failed"]  # ... and the audit says why there is no scope
    decision = next(e for e in store.session_events("plan-1") if e.kind == Kind.TOOL_DECISION)
    assert any("runs without a scope" in f for f in decision.details["findings"])


def test_a_planner_with_a_policy_that_fails_closed(store: AuditStore, tools, ran) -> None:
    policy = {**POLICY, "scopes": {"planner_failure": "deny"}}
    planner = planner_model(AIMessage("", tool_calls=[{"name": "scope", "args": {"tools": {"wire": None}}, "id": "p"}]))
    model = ScriptedModel(script=[calls(("send_email", {"to": "x@acme.example", "body": "b"}, "e1"))])
    t = Tether(Guard(policy, store=store), agent="support-bot", approvals="queue", planner=ChatModelPlanner(planner))
    agent(model, tools, t).invoke({"messages": [HumanMessage("Email x")]}, THREAD)
    assert ran.count("send_email") == 0
    assert "unknown tool 'wire'" in model.tool_replies()["e1"]
