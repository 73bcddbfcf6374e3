"""Arguments and outputs built to break Tether: NaN and infinities, nesting thousands of levels
deep, secrets used as mapping keys. Whatever comes, a decision is made and recorded, the
result is recorded, nothing raises into the agent, and no secret reaches the store raw."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.core import AuditStore, Guard, Verdict
from tether.core.audit.events import Kind

from ..core.conftest import KEY, policy_with

SECRETS = ["dana.secret@customer.example", "AKIAABCDEFGHIJKLMNOP", "4111 1111 1111 1111", "ghp_" + "A1b2" * 9]
NON_FINITE = [math.nan, math.inf, -math.inf]
_ids = itertools.count()  # a new session per example

numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
texts = st.one_of(st.text(max_size=20), st.sampled_from(SECRETS), st.sampled_from(SECRETS).map(lambda s: f"see {s}!"))
keys = st.one_of(st.text(max_size=12), st.sampled_from(SECRETS))
leaves = st.one_of(st.none(), st.booleans(), numbers, texts, st.binary(max_size=8))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)


def deep(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {SECRETS[i % len(SECRETS)]: leaf}
    return leaf


hostile = st.one_of(values, st.builds(deep, st.integers(0, 3000), values))


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    path: Path = tmp_path_factory.mktemp("hostile") / "audit.db"
    policy = policy_with(rules=[])
    policy["agents"]["bot"]["tools"]["refund"] = {"ask": "args.amount > 50"}
    policy["agents"]["bot"]["data"] = ["network"]  # cleared for no personal data: outputs get redacted
    with Guard(policy, store=AuditStore(f"sqlite:///{path}", key=KEY)) as g:
        yield g


def stored(guard: Guard, session_id: str) -> str:
    return "\n".join(e.data + (e.user_id or "") for e in guard.store.session_events(session_id))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(amount=st.one_of(numbers, st.sampled_from(NON_FINITE)), extra=hostile, data=st.data())
def test_any_arguments_get_a_recorded_decision_and_non_finite_numbers_never_pass(
    guard: Guard, amount: Any, extra: Any, data: st.DataObject
) -> None:
    session_id = f"args-{next(_ids)}"
    session = guard.session("bot", session_id, user=data.draw(st.sampled_from(SECRETS)))
    decision = session.before_tool("refund", {"amount": amount, "extra": extra})
    recorded = [e for e in guard.store.session_events(session_id) if e.kind == Kind.TOOL_DECISION]
    assert [e.event_id for e in recorded] == [decision.event_id]
    if isinstance(amount, float) and not math.isfinite(amount):
        assert decision.verdict is Verdict.DENY  # as unreadable: NaN, or nesting too deep to inspect
    elif decision.verdict is Verdict.ALLOW:
        assert amount <= 50
    raw = stored(guard, session_id)
    for secret in SECRETS:
        assert secret not in raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(output=hostile, data=st.data())
def test_any_output_is_recorded_and_handed_back(guard: Guard, output: Any, data: st.DataObject) -> None:
    session_id = f"out-{next(_ids)}"
    session = guard.session("bot", session_id)
    decision = session.before_tool("search", {"q": "x"})
    seen = session.after_tool(decision, output)
    assert seen is not None or output is None
    results = [e for e in guard.store.session_events(session_id) if e.kind == Kind.TOOL_RESULT]
    assert len(results) == 1  # never lost
    raw = stored(guard, session_id)
    for secret in SECRETS:
        assert secret not in raw
    request = session.before_model([{"role": "tool", "content": output}])
    assert guard.store.session_events(session_id)[-1].event_id == request.event_id


def nested(depth: int, shape: str) -> Any:
    """A value ``depth`` lists or dicts deep, built without recursion."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if shape == "list" else {"k": value}
    return value


@pytest.mark.parametrize("shape", ["list", "dict"])
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_arguments_and_outputs_nested_past_any_recursion_limit_are_decided_and_recorded(
    guard: Guard, depth: int, shape: str
) -> None:
    session = guard.session("bot", f"deep-{shape}-{depth}")
    decision = session.before_tool("search", {"q": nested(depth, shape)})
    assert decision.verdict is Verdict.DENY
    assert "nested more than" in decision.reason  # a clear reason, not a crash
    value = nested(depth, shape)
    allowed = session.before_tool("search", {"q": "x"})
    assert session.after_tool(allowed, value) is value  # handed back as it came
    kinds = [e.kind for e in guard.store.session_events(session.id)]
    assert kinds == [Kind.SESSION, Kind.TOOL_DECISION, Kind.TOOL_DECISION, Kind.TOOL_RESULT]
    result = guard.store.session_events(session.id)[-1]
    assert result.details["output"].startswith("[[[" if shape == "list" else '{"k": {"k":')


@pytest.mark.parametrize("shape", ["list", "dict"])
def test_monitor_mode_lets_a_deeply_nested_call_through_and_records_it(tmp_path: Path, shape: str) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    with Guard(policy_with(rules=[]), store=store, mode="monitor") as guard:
        session = guard.session("bot")
        decision = session.before_tool("search", {"q": nested(1000, shape)})
        assert decision.allowed
        session.after_tool(decision, nested(1000, shape))
        kinds = [e.kind for e in guard.store.session_events(session.id)]
        assert kinds == [Kind.SESSION, Kind.TOOL_DECISION, Kind.TOOL_RESULT]
