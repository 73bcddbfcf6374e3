"""AgentChat agents and teams governed by Tether: decisions, approvals, the audit chain, bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat

from tether.autogen.agentchat import register_guard
from tether.core import AuditStore, Guard, QueueApprover, TetherError
from tether.core.audit import verify

from ...support import answer_when_asked
from .conftest import KEY, POLICY, Tools, agent, calls, events, texts


def run(target: Any, task: str = "help the customer") -> Any:
    return asyncio.run(target.run(task=task))


def test_allowed_call_runs_once_and_the_audit_holds_the_chain(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, _ = agent(tools, calls(("lookup", {"query": "order 7"})))
    register_guard(bot, guard)

    result = run(bot)

    assert tools.ran == [("lookup", {"query": "order 7"})]
    assert "found order 7" in texts(result)
    request, response = events(store, "model.request")[0], events(store, "model.response")[0]
    decision, output = events(store, "tool.decision")[0], events(store, "tool.result")[0]
    assert response.parent_id == request.event_id
    assert (decision.agent, decision.tool, decision.verdict) == ("assistant", "lookup", "allow")
    assert decision.parent_id == response.event_id and output.parent_id == decision.event_id
    assert verify(KEY, store.events()).ok


def test_parallel_calls_are_each_decided(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, _ = agent(tools, calls(("lookup", {"query": "a"}), ("send_email", {"to": "x@evil.example", "body": "b"})))
    register_guard(bot, guard)

    result = run(bot)

    assert [n for n, _ in tools.ran] == ["lookup"]
    assert "found a" in texts(result) and "Tether denied the call to 'send_email'" in texts(result)


@pytest.mark.parametrize("approved", [True, False])
def test_a_call_needing_approval_waits_for_the_queue(store: AuditStore, tools: Tools, approved: bool) -> None:
    policy = json.loads(json.dumps(POLICY))
    policy["approvals"]["timeout"] = "60s"
    guard = Guard(policy, store=store, approver=QueueApprover(store))
    bot, _ = agent(tools, calls(("refund", {"order": "A1", "amount": 120})))
    register_guard(bot, guard)
    answering = answer_when_asked(store, approved=approved)

    result = run(bot)
    answering.join()

    assert tools.count("refund") == (1 if approved else 0)
    assert ("refunded 120 on A1" if approved else "denied by alice") in texts(result)
    assert [e.verdict for e in events(store, "approval")] == ["allow" if approved else "deny"]


def test_a_team_is_governed_in_each_agents_name(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, _ = agent(tools, calls(("lookup", {"query": "x"})), "done")
    researcher, _ = agent(
        tools, calls(("send_email", {"to": "a@acme.example", "body": "hi"})), "done", name="researcher"
    )
    team = RoundRobinGroupChat([bot, researcher], termination_condition=MaxMessageTermination(5))
    register_guard(team, guard)

    run(team)

    decisions = [(e.agent, e.tool, e.verdict) for e in events(store, "tool.decision")]
    assert ("assistant", "lookup", "allow") in decisions
    assert ("researcher", "send_email", "deny") in decisions  # not granted to the researcher
    assert tools.count("send_email") == 0
    assert len({e.session_id for e in events(store, "tool.decision")}) == 1  # one run, one session


def test_each_run_is_a_session_unless_one_is_given(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, _ = agent(tools, calls(("lookup", {"query": "a"})), calls(("lookup", {"query": "b"})))
    register_guard(bot, guard)
    run(bot)
    run(bot)
    assert len({e.session_id for e in events(store, "tool.decision")}) == 2

    other, _ = agent(tools, calls(("lookup", {"query": "c"})))
    register_guard(other, guard, session_id="ticket-42")
    run(other)
    assert events(store, "tool.decision")[-1].session_id == "ticket-42"


def test_malformed_arguments_never_run_the_tool(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, _ = agent(tools, calls(("send_email", '{"to": "a@acme.example", ')))
    register_guard(bot, guard)

    result = run(bot)

    assert tools.count("send_email") == 0
    assert "Error" in texts(result)  # AgentChat answers unparseable arguments itself


def test_registering_twice(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, _ = agent(tools, calls(("lookup", {"query": "a"})))
    assert register_guard(bot, guard) is register_guard(bot, guard)
    with pytest.raises(TetherError, match="already guarded"):
        register_guard(bot, Guard(POLICY, store=store))
    run(bot)
    assert len(events(store, "tool.decision")) == 1  # decided once


def test_concurrent_runs_keep_their_own_sessions(guard: Guard, store: AuditStore) -> None:
    tools = Tools()
    bots = []
    for i in range(4):
        bot, _ = agent(tools, calls(("lookup", {"query": str(i)})))
        register_guard(bot, guard)
        bots.append(bot)

    async def all_runs() -> None:
        await asyncio.gather(*(b.run(task="go") for b in bots))

    asyncio.run(all_runs())
    decisions = events(store, "tool.decision")
    assert len(decisions) == 4 and len({e.session_id for e in decisions}) == 4
    assert verify(KEY, store.events()).ok
