"""Tether as AG2 middleware: decisions before tools run, what the model reads, approvals, the audit."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from ag2 import Agent

from tether.ag2 import TetherMiddleware, guard_agent
from tether.core import AuditStore, Guard, QueueApprover, StoreError
from tether.core.approvals.queue import ApprovalQueue
from tether.core.redact import user_ref

from ..support import await_until
from .conftest import (
    POLICY,
    Tools,
    answer_when_asked,
    call,
    chain_ok,
    events,
    make_agent,
    model_saw,
    policy_with,
    scripted,
)


def ask(agent: Any, text: str = "handle ticket 7", **kwargs: Any) -> Any:
    return asyncio.run(agent.ask(text, **kwargs))


def test_allowed_call_runs_once_and_the_audit_holds_the_chain(guard: Guard, tools: Tools) -> None:
    config = scripted(call("send_email", "c1", to="bob@acme.example", body="hi"), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    ask(agent)

    assert tools.runs["send_email"] == 1
    assert "sent to bob@acme.example" in model_saw(config)
    kinds = [e.kind for e in events(guard)]
    assert kinds == [
        "session.start",
        "model.request",
        "model.response",
        "tool.decision",
        "tool.result",
        "model.request",
        "model.response",
    ]
    response = events(guard, "model.response")[0]
    decision = events(guard, "tool.decision")[0]
    result = events(guard, "tool.result")[0]
    assert decision.parent_id == response.event_id  # the call is linked to the response that proposed it
    assert decision.details["call_id"] == "c1"
    assert result.parent_id == decision.event_id
    assert result.details["output"].startswith("sent to [email:")  # stored without the raw address
    assert decision.details["context"]["framework"] == "ag2"
    assert chain_ok(guard)


def test_untrusted_output_taints_the_session_and_the_exfiltration_waits_for_a_person(
    store: AuditStore, tools: Tools
) -> None:
    guard = Guard(policy_with(approvals={"timeout": "1s"}), store=store, approver=QueueApprover(store))
    config = scripted(
        call("read_ticket", ticket_id="7"),
        call("send_email", to="team@acme.example", body="Jane Roe, jane.roe@example.com"),
        "done",
    )
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    ask(agent)

    assert tools.runs["read_ticket"] == 1
    assert tools.runs["send_email"] == 0  # granted, but asked after untrusted content, and nobody answered
    result = events(guard, "tool.result")[0]
    assert result.details["untrusted"] is True
    assert "pii" in result.details["labels"]
    decision = events(guard, "tool.decision")[1]
    assert decision.verdict == "ask"
    assert decision.details["rule_ids"][0] == "external-after-untrusted"  # and the protections that fired too
    assert "no approval within 1s" in model_saw(config)


def test_refused_approval_denies_and_the_model_reads_who_refused(guard: Guard, tools: Tools) -> None:
    config = scripted(call("issue_refund", order_id="A1", amount=120), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])
    answer_when_asked(guard.store, approved=False, by="bob").join(0)

    ask(agent)

    assert tools.runs["issue_refund"] == 0
    assert "denied by bob" in model_saw(config)


@pytest.mark.parametrize(("reply", "runs", "said"), [("y", 1, "refunded 120"), ("no", 0, "denied by ag2-hitl")])
def test_approval_through_ag2_human_input(guard: Guard, tools: Tools, reply: str, runs: int, said: str) -> None:
    questions: list[str] = []

    def hitl(request: Any) -> str:
        questions.append(request.content)
        return reply

    config = scripted(call("issue_refund", order_id="A1", amount=120), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard, approvals="ag2")], hitl_hook=hitl)

    ask(agent)

    assert tools.runs["issue_refund"] == runs
    assert said in model_saw(config)
    [question] = questions
    assert "issue_refund" in question and "Approve?" in question
    assert ApprovalQueue(guard.store).entries(status=None) == []  # AG2 asked, not Tether's queue
    assert events(guard, "approval")[0].details["approver"] == "ag2-hitl"


def test_ag2_human_input_without_a_hook_denies(guard: Guard, tools: Tools) -> None:
    config = scripted(call("issue_refund", order_id="A1", amount=120), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard, approvals="ag2")])

    ask(agent)

    assert tools.runs["issue_refund"] == 0
    assert "AG2 human input failed: HumanInputNotProvidedError" in model_saw(config)


def test_ag2_human_input_unanswered_in_time_denies(store: AuditStore, tools: Tools) -> None:
    guard = Guard(policy_with(approvals={"timeout": "1s"}), store=store)

    async def never(request: Any) -> str:
        await asyncio.sleep(3600)
        return "y"

    config = scripted(call("issue_refund", order_id="A1", amount=120), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard, approvals="ag2")], hitl_hook=never)

    ask(agent)

    assert tools.runs["issue_refund"] == 0
    assert "no approval within 1s" in model_saw(config)


def test_redacted_arguments_are_what_the_tool_receives(guard: Guard, tools: Tools) -> None:
    config = scripted(call("lookup_order", order_id="A1", card="4111 1111 1111 1111"), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    ask(agent)

    assert tools.seen["lookup_order"] == [{"order_id": "A1", "card": "[redacted by Tether]"}]
    assert "4111 1111 1111 1111" not in "".join(e.data for e in events(guard))


@pytest.mark.parametrize("raw", ['{"to": "bob@acme.example", ', '["bob@acme.example"]', "null"])
def test_malformed_arguments_are_denied_and_recorded(guard: Guard, tools: Tools, raw: str) -> None:
    config = scripted(call("send_email", raw=raw), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    ask(agent)

    assert tools.runs["send_email"] == 0
    assert "Tether denied the call to 'send_email': arguments must be a mapping" in model_saw(config)
    [decision] = events(guard, "tool.decision")
    assert (decision.verdict, decision.details["rule_ids"]) == ("deny", ["tether.error"])


def test_registered_twice_decides_and_asks_once(guard: Guard, tools: Tools) -> None:
    config = scripted(call("issue_refund", order_id="A1", amount=120), "done")
    twice = TetherMiddleware(guard)
    agent = make_agent(tools, config, [twice, twice])
    guard_agent(agent, guard)  # a third time, through the helper: a no-op
    answerer = answer_when_asked(guard.store, approved=True)

    ask(agent, middleware=[TetherMiddleware(guard)])  # and once more for this run
    answerer.join(5)

    assert tools.runs["issue_refund"] == 1
    assert len(events(guard, "tool.decision")) == 1
    assert len(events(guard, "model.request")) == 2  # one per model call, not one per copy
    assert len(ApprovalQueue(guard.store).entries(status=None)) == 1


def test_guard_agent_puts_tether_first_once(guard: Guard, tools: Tools) -> None:
    agent = make_agent(tools, scripted("done"), [])
    guard_agent(agent, guard)
    guard_agent(agent, guard)
    assert [type(m) for m in agent._middleware] == [TetherMiddleware]


def test_concurrent_runs_lose_nothing_in_the_audit(guard: Guard, tools: Tools) -> None:
    runs = 8

    async def one(i: int) -> Any:
        config = scripted(
            call("lookup_order", order_id=f"A{i}"), call("send_email", to=f"e{i}@evil.example", body="x"), "done"
        )
        return await make_agent(tools, config, [TetherMiddleware(guard)]).ask(f"ticket {i}")

    async def all_of_them() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(runs)))

    replies = asyncio.run(all_of_them())

    assert [r.body for r in replies] == ["done"] * runs
    assert tools.runs == {"lookup_order": runs}
    sessions = {e.session_id for e in events(guard)}
    assert len(sessions) == runs  # one session per conversation
    for session in sessions:
        kinds = [e.kind for e in events(guard, session_id=session)]
        assert kinds.count("tool.decision") == 2 and kinds.count("tool.result") == 1
    assert chain_ok(guard)


def test_session_follows_the_conversation_and_can_be_chosen(guard: Guard, tools: Tools) -> None:
    config = scripted("first", "second")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    async def conversation() -> None:
        reply = await agent.ask("hello")
        await reply.ask("and then?")

    asyncio.run(conversation())
    assert len({e.session_id for e in events(guard)}) == 1

    chosen = TetherMiddleware(guard, session_id=lambda context: f"ticket-{context.variables['ticket']}")
    ask(make_agent(tools, scripted("ok"), [chosen]), variables={"ticket": 42})
    assert events(guard, "model.request", session_id="ticket-42")


def test_adapter_failure_denies_unless_monitoring(store: AuditStore, tools: Tools) -> None:
    def broken(context: Any) -> str:
        raise KeyError("no ticket")

    for mode, runs in (("enforce", 0), ("monitor", 1)):
        guard = Guard(POLICY, store=store, mode=mode)
        config = scripted(call("lookup_order", order_id="A1"), "done")
        agent = make_agent(tools, config, [TetherMiddleware(guard, session_id=broken, record_model=False)])
        ask(agent)
        assert tools.runs["lookup_order"] == runs
        if runs == 0:
            assert "Tether failed while deciding: KeyError (denied to stay safe)" in model_saw(config)


def test_text_where_a_number_is_expected_fails_closed(guard: Guard, tools: Tools) -> None:
    config = scripted(call("issue_refund", order_id="A1", amount="lots"), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    ask(agent)

    assert tools.runs["issue_refund"] == 0
    [decision] = events(guard, "tool.decision")
    assert decision.verdict == "deny"  # `args.amount <= 500` cannot be evaluated on text


def test_wrong_approvals_option_is_refused(guard: Guard) -> None:
    with pytest.raises(ValueError, match="approvals"):
        TetherMiddleware(guard, approvals="slack")  # type: ignore[arg-type]


def test_model_input_is_recorded_once_per_step(guard: Guard, tools: Tools) -> None:
    config = scripted(call("lookup_order", order_id="A1"), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])

    ask(agent, "where is order A1?")

    first, second = events(guard, "model.request")
    assert first.details["messages"] == [{"type": "ModelRequest", "role": "user", "content": ["where is order A1?"]}]
    assert json.dumps(second.details["messages"]).count("order A1: 2 items") == 1


def test_a_running_ag2_task_is_the_session(guard: Guard, tools: Tools) -> None:
    agent = make_agent(tools, scripted(call("lookup_order", order_id="A1"), "done"), [TetherMiddleware(guard)])

    async def in_task() -> str:
        async with agent.task("refund order A1") as task:
            await agent.ask("go", dependencies={"ag2.task": task})
            return task.task_id

    task_id = asyncio.run(in_task())

    [decision] = events(guard, "tool.decision")
    assert decision.session_id == task_id
    assert decision.details["context"]["task"] == task_id


def break_store(store: AuditStore) -> None:
    """Take the audit table away, as a failed disk or a wrong database would."""
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE tether_audit_events")


def test_store_down_a_model_call_that_cannot_be_recorded_ends_the_turn(guard: Guard, tools: Tools) -> None:
    config = scripted(call("lookup_order", order_id="A1"), "done")
    agent = make_agent(tools, config, [TetherMiddleware(guard)])
    break_store(guard.store)

    with pytest.raises(StoreError):
        ask(agent)

    assert tools.runs["lookup_order"] == 0
    assert config.mock.call_count == 0  # the model was not called unrecorded


def test_a_pending_approval_does_not_hold_up_other_runs(guard: Guard, tools: Tools) -> None:
    queue = ApprovalQueue(guard.store)

    def answer_after_the_other_run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tools.runs["lookup_order"] and queue.entries()):
            time.sleep(0.05)
        pending = queue.entries()
        # Approve only if the other run got its tool call through while this one waited.
        queue.answer(pending[0].id, approved=bool(tools.runs["lookup_order"]), by="alice")

    async def both() -> None:
        waiting = make_agent(tools, scripted(call("issue_refund", order_id="A1", amount=120), "done"), [])
        other = make_agent(tools, scripted(call("lookup_order", order_id="B2"), "done"), [])
        guard_agent(waiting, guard)
        guard_agent(other, guard)
        first = asyncio.ensure_future(waiting.ask("refund A1"))
        await await_until(queue.entries, 60, "the refund waiting for a person")
        await other.ask("where is B2?")
        await first

    answerer = threading.Thread(target=answer_after_the_other_run, daemon=True)
    answerer.start()
    asyncio.run(both())
    answerer.join(5)

    assert tools.runs == {"lookup_order": 1, "issue_refund": 1}


def test_a_value_the_user_gave_is_trusted_even_if_untrusted_content_repeats_it(store: AuditStore, tools: Tools) -> None:
    # no taint rule and no instructions check: only the trace of the address speaks
    policy = policy_with(rules=[], protections={"instructions": "allow"}, approvals={"timeout": "1s"})
    policy["agents"]["support-bot"]["tools"]["send_email"] = "allow"
    guard = Guard(policy, store=store, approver=QueueApprover(store))
    email = call("send_email", to="jane.roe@example.com", body="hi")
    given = scripted(call("read_ticket", ticket_id="T-1"), email, "ok")
    ask(make_agent(tools, given, [TetherMiddleware(guard)]), "read T-1, then write to jane.roe@example.com")
    assert tools.runs["send_email"] == 1  # the address came from the user

    guard2 = Guard(policy, store=store, approver=QueueApprover(store))
    taken = scripted(call("read_ticket", ticket_id="T-1"), email, "ok")
    ask(make_agent(tools, taken, [TetherMiddleware(guard2)]), "read T-1 and deal with it")
    decision = events(guard2, "tool.decision")[-1]
    assert decision.verdict == "ask"
    assert decision.details["rule_ids"] == ["tether.injected-argument"]  # only the ticket had it


def test_user_and_tenant_are_given_or_taken_from_the_ag2_context(guard: Guard, tools: Tools) -> None:
    fixed = TetherMiddleware(guard, user="alice", tenant="acme")
    ask(make_agent(tools, scripted(call("lookup_order", order_id="A1"), "done"), [fixed]))
    from_context = TetherMiddleware(guard, user=lambda ctx: ctx.variables["user"], tenant=lambda ctx: "globex")
    ask(make_agent(tools, scripted("done"), [from_context]), variables={"user": "bob"})

    who = {(e.user_id, e.tenant) for e in events(guard)}
    assert who == {(user_ref(guard.store.key, "alice"), "acme"), (user_ref(guard.store.key, "bob"), "globex")}


def test_a_sub_agent_acts_for_the_same_user_and_tenant(guard: Guard, tools: Tools) -> None:
    child = Agent("support-bot", config=scripted(call("lookup_order", order_id="A1"), "done"), tools=tools.all())
    delegate = child.as_tool(description="Look it up.", name="lookup_order")  # a name support-bot is granted
    parent = Agent(
        "support-bot",
        config=scripted(call("lookup_order", objective="A1"), "done"),
        tools=[delegate],
        middleware=[TetherMiddleware(guard, user="alice", tenant="acme")],
    )

    ask(parent)

    decided = events(guard, "tool.decision")
    assert len(decided) == 2  # the delegation and the sub-agent's own lookup
    assert {(e.user_id, e.tenant) for e in decided} == {(user_ref(guard.store.key, "alice"), "acme")}


def test_a_copy_of_a_guarded_agent_that_lost_its_middleware_is_still_decided(guard: Guard, tools: Tools) -> None:
    from ag2 import AgentSpec

    original = make_agent(tools, scripted("done"), [TetherMiddleware(guard)])
    config = scripted(call("send_email", to="eve@evil.example", body="export"), "done")
    copy = AgentSpec.from_agent(original).to_agent(available_tools=tools.all(), config=config)  # drops middleware

    ask(copy)

    assert tools.runs["send_email"] == 0
    [decision] = events(guard, "tool.decision")
    assert (decision.agent, decision.verdict) == ("support-bot", "deny")
    assert decision.details["context"]["fallback"]


def test_an_agent_no_policy_knows_is_left_alone(guard: Guard, tools: Tools) -> None:
    config = scripted(call("send_email", to="eve@evil.example", body="export"), "done")
    ask(Agent("stranger", config=config, tools=tools.all()))

    assert tools.runs["send_email"] == 1
    assert events(guard) == []
