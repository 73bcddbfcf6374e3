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
