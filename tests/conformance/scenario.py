"""One scenario every adapter must pass, written once.

An adapter's test folder supplies a *driver*: a small class that builds a real agent of its
framework with the standard tools below, driven by a scripted model that proposes the given
turns of tool calls, and runs it under a guard. The test module then imports the scenario:

    from tests.conformance.scenario import *  # noqa: F403  (the scenario's tests)

    @pytest.fixture
    def driver() -> Driver:
        return MyFrameworkDriver()

Each test below builds the guard (policy, store, approver) itself, runs the driver and checks
what a user relies on: what ran, what the model saw, and what the audit holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa

from tether.core import AuditStore, Guard, QueueApprover
from tether.core.approvals.queue import ApprovalQueue

KEY = b"c" * 32
AGENT = "support-bot"
CUSTOMER_EMAIL = "jane.doe@customer.example"
CARD = "4111 1111 1111 1111"
PARTNER = "ops@partner.example"  # named in the system prompt and in a ticket
SYSTEM_PROMPT = f"You are the support bot of Acme. Escalations go to {PARTNER}."
USER_REQUEST = "Please help with order 42."
#: a ticket: untrusted content carrying personal data (and the partner's address, harmlessly)
TICKET = f"Ticket 7 from {CUSTOMER_EMAIL}: my card {CARD} was charged twice. Cc {PARTNER}."

#: Optional abilities a driver declares; a test needing one the framework lacks is skipped, saying so.
PARALLEL = "parallel"  # several tool calls in one model turn
ASYNC_TOOLS = "async_tools"  # tools written as coroutines
SYSTEM = "system_prompt"  # a system prompt the model receives with each request


def policy(**agent_changes: Any) -> dict[str, Any]:
    """The scenario's policy; ``agent_changes`` are merged into the agent's entry."""
    agent: dict[str, Any] = {
        "purpose": "answer support tickets",
        "owner": "support@acme.example",
        "tools": {
            "lookup_order": "allow",
            "read_ticket": "allow",
            "check_stock": "allow",
            "flaky_lookup": "allow",
            "send_email": "allow",
            "refund": {"ask": True},
            "delete_account": "allow",
            "customer_record": "allow",
        },
    }
    agent.update(agent_changes)
    return {
        "version": 1,
        "approvals": {"timeout": "20s"},
        "tools": {
            "lookup_order": {"effects": ["read"]},
            "read_ticket": {"effects": ["read"], "output": "untrusted", "data": ["pii"]},
            "check_stock": {"effects": ["read"]},
            "flaky_lookup": {"effects": ["read"]},
            "send_email": {"effects": ["external"], "accepts": ["pii"]},
            "refund": {"effects": ["money", "irreversible"]},
            "delete_account": {"effects": ["delete", "irreversible"]},
            "customer_record": {"effects": ["read"], "data": ["pii"]},
        },
        "agents": {AGENT: agent},
        "rules": [
            {
                "id": "no-account-deletion",
                "tools": ["delete_account"],
                "action": "deny",
                "reason": "accounts are deleted by people",
            }
        ],
    }


# -- the standard tools ------------------------------------------------------------------------


@dataclass
class ToolLog:
    """Which tools actually ran, with what arguments (thread-safe)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, **args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))

    def ran(self, name: str) -> list[dict[str, Any]]:
        return [args for tool, args in self.calls if tool == name]


class BackendDown(RuntimeError):
    pass


def standard_tools(log: ToolLog) -> dict[str, Callable[..., Any]]:
    """The tools, as plain typed functions with docstrings; a driver wraps them in its framework's
    own tool type. ``check_stock`` is a coroutine; the others are plain functions."""

    def lookup_order(order_id: str) -> str:
        """Look up an order's status."""
        log.record("lookup_order", order_id=order_id)
        return f"order {order_id}: shipped"

    def read_ticket(ticket_id: str) -> str:
        """Read a support ticket."""
        log.record("read_ticket", ticket_id=ticket_id)
        return TICKET

    async def check_stock(sku: str) -> str:
        """Check how many items of a product are in stock."""
        await asyncio.sleep(0)
        log.record("check_stock", sku=sku)
        return f"{sku}: 3 in stock"

    def flaky_lookup(order_id: str) -> str:
        """Look up an order in the old system."""
        log.record("flaky_lookup", order_id=order_id)
        raise BackendDown("the order backend is down")

    def send_email(to: str, body: str) -> str:
        """Send an email."""
        log.record("send_email", to=to, body=body)
        return f"sent to {to}"

    def refund(order_id: str, amount: int) -> str:
        """Refund an order."""
        log.record("refund", order_id=order_id, amount=amount)
        return f"refunded {amount} on order {order_id}"

    def delete_account(user_id: str) -> str:
        """Delete a customer's account."""
        log.record("delete_account", user_id=user_id)
        return f"deleted {user_id}"

    def customer_record(customer_id: str) -> dict[str, Any]:
        """Fetch a customer's record."""
        log.record("customer_record", customer_id=customer_id)
        return {"customer": {"id": customer_id, "email": CUSTOMER_EMAIL, "cards": [CARD]}, "status": "active"}

    tools = (lookup_order, read_ticket, check_stock, flaky_lookup, send_email, refund, delete_account, customer_record)
    return {f.__name__: f for f in tools}


# -- what a driver is --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A tool call the scripted model proposes: ``id`` is unique within a run."""

    id: str
    name: str
    args: dict[str, Any]


@dataclass
class Run:
    """What happened in one run of the agent."""

    tools: ToolLog
    #: everything the model received, one text per model call, in order (messages rendered as
    #: text: roles, contents, tool results); a withheld request is simply absent
    model_inputs: list[str]

    def model_saw(self, text: str) -> bool:
        return any(text in seen for seen in self.model_inputs)


class Driver(Protocol):
    #: the optional abilities of this framework (PARALLEL, ASYNC_TOOLS, SYSTEM)
    abilities: frozenset[str]

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        """Build a fresh agent named ``AGENT`` with ``standard_tools(log)`` as framework-native
        tools and a scripted model that, on its n-th call, proposes the tool calls of
        ``turns[n]`` (all in one response), and once the turns are used up answers "done". Send
        ``user`` as the user's message (and ``system`` as the system prompt, if the
        framework has one). Run it to the end, as a user of the framework would, under ``guard``
        with the adapter wired the way its docs say, approvals through ``guard.approver``, and no
        session id given (every run is a new session). Return ``Run(log, model_inputs)``."""
        ...


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def scenario_store(tmp_path: Path) -> Iterator[AuditStore]:
    store = AuditStore(f"sqlite:///{tmp_path / 'conformance.db'}", key=KEY)
    yield store
    store.close()


def make_guard(store: AuditStore, *, timeout: str = "20s", mode: str | None = None, **agent: Any) -> Guard:
    spec = policy(**agent)
    spec["approvals"]["timeout"] = timeout
    return Guard(spec, store=store, approver=QueueApprover(store, poll=0.05), mode=mode)


def needs(driver: Driver, ability: str) -> None:
    if ability not in driver.abilities:
        pytest.skip(f"the framework has no {ability.replace('_', ' ')}")


def events(store: AuditStore, kind: str | None = None) -> list[Any]:
    return [e for e in store.events() if kind is None or e.kind == kind]


def decisions(store: AuditStore, tool: str) -> list[Any]:
    return [e for e in events(store, "tool.decision") if e.tool == tool]


def answer_next(store: AuditStore, *, approved: bool, by: str = "alice", within: float = 30.0) -> threading.Thread:
    """From another thread, answer the first approval request that appears (bounded wait)."""
    queue = ApprovalQueue(store)
    stop = threading.Event()

    def answer() -> None:
        while not stop.wait(0.05):
            pending = queue.entries()
            if pending:
                queue.answer(pending[0].id, approved=approved, by=by)
                return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    threading.Timer(within, stop.set).start()
    return thread


def go(
    driver: Driver,
    guard: Guard,
    turns: Sequence[Sequence[Call]],
    *,
    system: str | None = None,
    user: str = USER_REQUEST,
) -> Run:
    return driver.run(guard, turns, ToolLog(), system=system, user=user)


def lookup(call_id: str = "c1", order: str = "42") -> Call:
    return Call(call_id, "lookup_order", {"order_id": order})


# -- the scenario ------------------------------------------------------------------------------


def test_an_allowed_call_runs_and_its_result_reaches_the_model(driver: Driver, scenario_store: AuditStore) -> None:
    run = go(driver, make_guard(scenario_store), [[lookup()]])
    assert run.tools.ran("lookup_order") == [{"order_id": "42"}]
    assert run.model_saw("order 42: shipped")
    assert [e.verdict for e in decisions(scenario_store, "lookup_order")] == ["allow"]
    assert len(events(scenario_store, "tool.result")) == 1


def test_a_denied_call_does_not_run_and_the_model_reads_why(driver: Driver, scenario_store: AuditStore) -> None:
    run = go(driver, make_guard(scenario_store), [[Call("c1", "delete_account", {"user_id": "u1"})]])
    assert run.tools.ran("delete_account") == []
    assert run.model_saw("accounts are deleted by people")
    (decision,) = decisions(scenario_store, "delete_account")
    assert decision.verdict == "deny" and decision.details["rule_ids"] == ["no-account-deletion"]


def test_an_approved_call_runs_exactly_once(driver: Driver, scenario_store: AuditStore) -> None:
    person = answer_next(scenario_store, approved=True)
    run = go(driver, make_guard(scenario_store), [[Call("c1", "refund", {"order_id": "42", "amount": 30})]])
    person.join(timeout=30)
    assert run.tools.ran("refund") == [{"order_id": "42", "amount": 30}]
    assert [e.details["approver"] for e in events(scenario_store, "approval.answer")] == ["alice"]
    assert [e.verdict for e in events(scenario_store, "approval")] == ["allow"]
    assert run.model_saw("refunded 30 on order 42")


def test_an_unanswered_approval_denies(driver: Driver, scenario_store: AuditStore) -> None:
    run = go(
        driver, make_guard(scenario_store, timeout="1s"), [[Call("c1", "refund", {"order_id": "42", "amount": 30})]]
    )
    assert run.tools.ran("refund") == []
    assert run.model_saw("no approval within")
    assert [e.verdict for e in events(scenario_store, "approval")] == ["deny"]


def test_parallel_calls_in_one_turn_are_each_decided(driver: Driver, scenario_store: AuditStore) -> None:
    needs(driver, PARALLEL)
    turn = [
        lookup("c1", "42"),
        Call("c2", "delete_account", {"user_id": "u1"}),
        lookup("c3", "43"),
    ]
    run = go(driver, make_guard(scenario_store), [turn])
    assert sorted(a["order_id"] for a in run.tools.ran("lookup_order")) == ["42", "43"]
    assert run.tools.ran("delete_account") == []
    assert run.model_saw("order 42: shipped") and run.model_saw("order 43: shipped")
    assert run.model_saw("accounts are deleted by people")  # the refused call is answered too
    call_ids = {e.details["call_id"] for e in events(scenario_store, "tool.decision")}
    assert {"c1", "c2", "c3"} <= call_ids or len(call_ids) == 3


def test_an_async_tool_is_decided_and_recorded(driver: Driver, scenario_store: AuditStore) -> None:
    needs(driver, ASYNC_TOOLS)
    run = go(driver, make_guard(scenario_store), [[Call("c1", "check_stock", {"sku": "A-1"})]])
    assert run.tools.ran("check_stock") == [{"sku": "A-1"}]
    assert [e.verdict for e in decisions(scenario_store, "check_stock")] == ["allow"]
    (result,) = events(scenario_store, "tool.result")
    assert "3 in stock" in str(result.details["output"])


def test_a_raising_tool_is_recorded_as_an_error(driver: Driver, scenario_store: AuditStore) -> None:
    go(driver, make_guard(scenario_store), [[Call("c1", "flaky_lookup", {"order_id": "42"})]])
    (result,) = events(scenario_store, "tool.result")
    assert "the order backend is down" in str(result.details["error"])


def test_output_the_agent_is_not_cleared_for_is_redacted(driver: Driver, scenario_store: AuditStore) -> None:
    run = go(driver, make_guard(scenario_store, data=[]), [[Call("c1", "read_ticket", {"ticket_id": "7"})]])
    assert run.tools.ran("read_ticket") == [{"ticket_id": "7"}]
    assert not run.model_saw(CUSTOMER_EMAIL) and not run.model_saw(CARD)
    assert run.model_saw("charged twice") or run.model_saw("withheld by Tether")


def test_a_structured_result_is_redacted_inside(driver: Driver, scenario_store: AuditStore) -> None:
    """A tool returning nested data (not a string) has what the agent may not see redacted
    inside it, the rest reaching the model."""
    run = go(driver, make_guard(scenario_store, data=[]), [[Call("c1", "customer_record", {"customer_id": "u1"})]])
    assert run.tools.ran("customer_record") == [{"customer_id": "u1"}]
    assert not run.model_saw(CUSTOMER_EMAIL) and not run.model_saw(CARD)
    assert run.model_saw("active")


def test_the_model_is_sent_what_tether_allows(driver: Driver, scenario_store: AuditStore) -> None:
    """A request carrying data the agent may not receive reaches the model redacted: what
    ``before_model`` returned is what the model gets, the rest of the request intact."""
    user = f"Please help with order 42. I am {CUSTOMER_EMAIL}."
    run = go(driver, make_guard(scenario_store, data=[]), [[lookup("c1")]], user=user)
    assert not run.model_saw(CUSTOMER_EMAIL)
    assert run.model_saw("Please help with order 42") and run.model_saw("[email:")
    (first, *_) = events(scenario_store, "model.request")
    assert CUSTOMER_EMAIL not in first.data and "[email:" in first.data  # recorded, redacted


def test_the_system_prompt_is_recorded_and_trusted(driver: Driver, scenario_store: AuditStore) -> None:
    needs(driver, SYSTEM)
    turns = [
        [Call("c1", "read_ticket", {"ticket_id": "7"})],  # untrusted content naming the partner too
        [Call("c2", "send_email", {"to": PARTNER, "body": "escalating ticket 7"})],
    ]
    run = go(driver, make_guard(scenario_store, timeout="1s"), turns, system=SYSTEM_PROMPT)
    assert any("Escalations go to" in e.data for e in events(scenario_store, "model.request"))
    # the address came from the system prompt as well as the ticket: not an injected value
    assert run.tools.ran("send_email") == [{"to": PARTNER, "body": "escalating ticket 7"}]


def test_a_system_prompt_the_agent_may_not_see_in_full_is_redacted(driver: Driver, scenario_store: AuditStore) -> None:
    needs(driver, SYSTEM)
    system = f"You are the support bot of Acme. The test card is {CARD}."
    run = go(driver, make_guard(scenario_store, data=[]), [[lookup("c1")]], system=system)
    assert not run.model_saw(CARD)
    assert run.model_saw("You are the support bot of Acme")
    (first, *_) = events(scenario_store, "model.request")
    assert CARD not in first.data


def test_every_run_is_its_own_session(driver: Driver, scenario_store: AuditStore) -> None:
    guard = make_guard(scenario_store)
    go(driver, guard, [[lookup("c1")]])
    go(driver, guard, [[lookup("c2")]])
    sessions = [e.session_id for e in decisions(scenario_store, "lookup_order")]
    assert len(sessions) == 2 and sessions[0] != sessions[1]


def test_each_decision_links_to_the_response_that_proposed_it(driver: Driver, scenario_store: AuditStore) -> None:
    go(driver, make_guard(scenario_store), [[lookup("c1")], [Call("c2", "delete_account", {"user_id": "u1"})]])
    responses = {e.event_id: e for e in events(scenario_store, "model.response")}
    made = events(scenario_store, "tool.decision")
    assert len(made) == 2
    for decision in made:
        assert decision.parent_id in responses, f"decision on {decision.tool} is not linked to a model response"
        proposed = responses[decision.parent_id]
        assert proposed.session_id == decision.session_id
        assert decision.tool in proposed.data


def test_monitor_mode_records_what_it_would_do_and_blocks_nothing(driver: Driver, scenario_store: AuditStore) -> None:
    guard = make_guard(scenario_store, mode="monitor", data=[])
    turns = [
        [Call("c1", "read_ticket", {"ticket_id": "7"})],
        [Call("c2", "refund", {"order_id": "42", "amount": 30})],
        [Call("c3", "delete_account", {"user_id": "u1"})],
    ]
    run = go(driver, guard, turns)
    assert [name for name, _ in run.tools.calls] == ["read_ticket", "refund", "delete_account"]
    assert run.model_saw(CUSTOMER_EMAIL)  # not redacted: monitor mode changes nothing
    verdicts = {e.tool: e.verdict for e in events(scenario_store, "tool.decision")}
    assert verdicts == {"read_ticket": "allow", "refund": "ask", "delete_account": "deny"}
    assert {e.details["enforcement"] for e in events(scenario_store, "tool.decision")} == {"monitored"}
    assert not events(scenario_store, "approval.answer")


def test_a_store_that_refuses_decisions_stops_the_tool(driver: Driver, scenario_store: AuditStore) -> None:
    """The database refuses to record tool decisions (model calls still record): the tool path
    itself must fail closed."""
    guard = make_guard(scenario_store)
    with scenario_store.engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse_decisions BEFORE INSERT ON tether_audit_events "
                "WHEN NEW.kind = 'tool.decision' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
        )
    log = ToolLog()
    try:
        run: Run | None = driver.run(guard, [[lookup("c1")]], log)
    except Exception:  # noqa: BLE001 - ending the run with an error is failing closed too
        run = None
    assert log.calls == [], "a tool ran although its decision could not be recorded"
    assert run is None or run.model_saw("Tether")
