"""Property-based tests: the loader never fails other than with a located PolicyError, and
decisions keep their guarantees whatever the policy and the call."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.core import PolicyError, Verdict, load_policy
from tether.core.decision import decide
from tether.core.policy import compile_policy, parse_policy
from tether.core.state import SessionState

names = st.text(alphabet=string.ascii_lowercase + "_-", min_size=1, max_size=8)
effects = st.lists(
    st.sampled_from(["read", "write", "delete", "external", "irreversible", "money", "execute"]),
    max_size=3,
    unique=True,
)
conditions = st.sampled_from(
    [
        None,
        "args.n > 3",
        'args.s.startsWith("a")',
        "session.tainted",
        "!session.tainted && args.n < 10",
        "has(args.n)",
        "session.calls < 3",
        'tool.effects.exists(e, e == "external")',
        "args.n",
    ]
)
actions = st.sampled_from(["allow", "deny", "ask", "redact"])


@st.composite
def policies(draw: Any) -> dict[str, Any]:
    tools = draw(
        st.dictionaries(
            names,
            st.fixed_dictionaries({"effects": effects, "output": st.sampled_from(["trusted", "untrusted"])}),
            min_size=1,
            max_size=5,
        )
    )
    tool_names = sorted(tools)

    def grant() -> Any:
        when, ask = draw(conditions), draw(st.one_of(st.booleans(), conditions))
        body: dict[str, Any] = {}
        if when:
            body["when"] = when
        if ask:
            body["ask"] = ask
        return draw(st.sampled_from(["allow", "ask", body]))

    agents = {
        name: {
            "purpose": "p",
            "owner": "o",
            "tools": {t: grant() for t in draw(st.lists(st.sampled_from(tool_names), max_size=4, unique=True))},
        }
        for name in draw(st.lists(names, min_size=1, max_size=3, unique=True))
    }
    rules = []
    for i in range(draw(st.integers(0, 3))):
        action = draw(actions)
        rule: dict[str, Any] = {"id": f"r{i}", "reason": "because", "action": action}
        if draw(st.booleans()):
            rule["tools"] = draw(st.lists(st.sampled_from(tool_names), min_size=1, max_size=2))
        if draw(st.booleans()):
            rule["effects"] = draw(effects) or ["read"]
        if (when := draw(conditions)) is not None:
            rule["when"] = when
        if action == "redact":
            rule["redact"] = ["s"]
        rules.append(rule)
    return {
        "version": 1,
        "default": draw(st.sampled_from(["deny", "ask"])),
        "tools": tools,
        "agents": agents,
        "rules": rules,
    }


call_args = st.fixed_dictionaries({}, optional={"n": st.integers(-5, 20), "s": st.text(max_size=5)})


def mutate(text: str, data: st.DataObject) -> str:
    """Damage a YAML text: delete, duplicate or replace a span."""
    if not text:
        return text
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start, min(len(text), start + 12)))
    how = data.draw(st.sampled_from(["delete", "duplicate", "replace"]))
    if how == "delete":
        return text[:start] + text[end:]
    if how == "duplicate":
        return text[:end] + text[start:end] + text[end:]
    return text[:start] + data.draw(st.text(alphabet=" :-[]{}#'\"\nabc1", max_size=6)) + text[end:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.data())
def test_damaged_policy_text_loads_or_fails_with_located_errors(policy: dict[str, Any], data: st.DataObject) -> None:
    text = mutate(yaml.safe_dump(policy, sort_keys=False), data)
    try:
        compile_policy(*parse_policy(text, "p.yaml"))
    except PolicyError as exc:
        issues = exc.issues
    else:
        return  # the damage left a valid policy
    assert issues
    for issue in issues:
        assert issue.file == "p.yaml" and issue.message
        assert str(issue).startswith("p.yaml")
    with tempfile.TemporaryDirectory() as folder:  # every problem at once: schema errors and the rest
        (Path(folder) / "p.yaml").write_text(text)
        with pytest.raises(PolicyError) as everything:
            load_policy(Path(folder) / "p.yaml")
    located = {(i.line, i.column, i.path, i.message) for i in everything.value.issues}
    assert {(i.line, i.column, i.path, i.message) for i in issues} <= located


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), names, names, call_args, st.booleans())
def test_decision_guarantees(
    policy: dict[str, Any], agent: str, tool: str, args: dict[str, Any], tainted: bool
) -> None:
    compiled = load_policy(policy)
    state = SessionState("s")
    if tainted:
        state.record_untrusted("web")
    ruling = decide(compiled, state, agent, tool, args, now=0.0)
    # Every decision explains itself.
    assert ruling.rule_ids and ruling.reason
    # Nothing is allowed that is not granted, whatever the rules (default deny).
    spec = policy["agents"].get(agent)
    granted_by_agent = spec is not None and tool in spec["tools"]
    granted_by_rule = any(r["action"] == "allow" for r in policy["rules"])
    if policy["default"] == "deny" and not granted_by_agent and not granted_by_rule:
        assert ruling.verdict is Verdict.DENY
    # A condition that cannot be evaluated never lets the call through.
    if ruling.error:
        assert ruling.verdict is Verdict.DENY
    # Decisions are deterministic.
    assert decide(compiled, state, agent, tool, args, now=0.0) == ruling


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), names, names, call_args)
def test_a_matching_deny_rule_wins_and_others_are_untouched(
    policy: dict[str, Any], agent: str, tool: str, args: dict[str, Any]
) -> None:
    other = "0-other-tool"  # cannot match the glob: generated names have no digits
    before = decide(load_policy(policy), SessionState("s"), agent, other, args, now=0.0)
    block = {"id": "block", "reason": "blocked", "action": "deny", "tools": [f"{tool}*"]}
    stricter = load_policy({**policy, "rules": [block, *policy["rules"]]})
    assert decide(stricter, SessionState("s"), agent, tool, args, now=0.0).verdict is Verdict.DENY
    assert decide(stricter, SessionState("s"), agent, other, args, now=0.0) == before
