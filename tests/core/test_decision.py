"""Decisions as a pure function of policy, session state and call: no store, no framework."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.core import Verdict, load_policy
from tether.core.decision import REDACTED, decide, redact_args
from tether.core.state import SessionState

from .conftest import BASE_POLICY, policy_with

NOW = 1_700_000_000.0


def rule_on(
    tool: str,
    args: dict[str, Any] | None = None,
    *,
    policy: dict[str, Any] | None = None,
    agent: str = "bot",
    state: SessionState | None = None,
    **kw: Any,
) -> Any:
    compiled = load_policy(policy or BASE_POLICY)
    state = state or SessionState("s1", rate_window=compiled.rate_window)
    return decide(compiled, state, agent, tool, args or {}, now=kw.pop("now", NOW), **kw)


def test_granted_tool_is_allowed_with_the_grant_as_reason() -> None:
    ruling = rule_on("search", {"q": "x"})
    assert ruling.verdict is Verdict.ALLOW
    assert ruling.rule_ids == ("agents.bot.tools.search",)


def test_default_deny_for_what_is_not_granted() -> None:
    assert rule_on("delete_file").verdict is Verdict.DENY
    assert rule_on("delete_file").reason == "agent 'bot' is not granted tool 'delete_file'"
    assert rule_on("rm_rf").reason == "tool 'rm_rf' is not declared in the policy"
    assert rule_on("search", agent="intruder").reason == "agent 'intruder' is not in the policy"
    assert rule_on("search", agent="intruder").rule_ids == ("default",)


def test_grant_condition_decides_on_arguments() -> None:
    assert rule_on("send_email", {"to": "a@acme.example"}).verdict is Verdict.ALLOW
    denied = rule_on("send_email", {"to": "a@evil.example"})
    assert denied.verdict is Verdict.DENY
    assert denied.rule_ids == ("agents.bot.tools.send_email",)
    assert 'does not hold: args.to.endsWith("@acme.example")' in denied.reason


def test_ask_condition_and_grant_condition_combine() -> None:
    assert rule_on("refund", {"amount": 20}).verdict is Verdict.ALLOW
    asked = rule_on("refund", {"amount": 100})
    assert asked.verdict is Verdict.ASK
    assert asked.rule_ids == ("agents.bot.tools.refund.ask",)
    assert rule_on("refund", {"amount": 501}).verdict is Verdict.DENY  # beyond the grant: no approval can help


def test_missing_argument_fails_closed_naming_the_rule() -> None:
    ruling = rule_on("refund", {"amt": 20})
    assert ruling.verdict is Verdict.DENY
    assert ruling.rule_ids == ("agents.bot.tools.refund",)
    assert "no field 'amount'" in ruling.reason
    assert ruling.error


def test_wrong_type_fails_closed() -> None:
    ruling = rule_on("send_email", {"to": 42})
    assert ruling.verdict is Verdict.DENY
    assert ruling.error


def test_session_taint_makes_external_calls_ask() -> None:
    compiled = load_policy(BASE_POLICY)
    state = SessionState("s1")
    assert decide(compiled, state, "bot", "send_email", {"to": "a@acme.example"}, now=NOW).verdict is Verdict.ALLOW
    state.record_untrusted("fetch_page")
    ruling = decide(compiled, state, "bot", "send_email", {"to": "a@acme.example"}, now=NOW)
    assert ruling.verdict is Verdict.ASK
    assert ruling.rule_ids == ("external-after-untrusted",)
    # a read-only tool is unaffected by taint
    assert decide(compiled, state, "bot", "search", {}, now=NOW).verdict is Verdict.ALLOW


def test_deny_beats_ask_beats_redact_beats_allow() -> None:
    rules = [
        {"id": "r-redact", "tools": ["search"], "action": "redact", "redact": ["token"], "reason": "no tokens"},
        {"id": "r-ask", "tools": ["search"], "when": "args.q == 'ask'", "action": "ask", "reason": "asks"},
        {"id": "r-deny", "tools": ["search"], "when": "args.q == 'deny'", "action": "deny", "reason": "denies"},
    ]
    policy = policy_with(rules=rules)
    assert rule_on("search", {"q": "deny"}, policy=policy).rule_ids == ("r-deny",)
    asked = rule_on("search", {"q": "ask"}, policy=policy)
    assert (asked.verdict, asked.rule_ids, asked.redact) == (Verdict.ASK, ("r-ask",), ("token",))
    redacted = rule_on("search", {"q": "x", "token": "t"}, policy=policy)
    assert redacted.verdict is Verdict.REDACT
    assert redacted.rule_ids == ("agents.bot.tools.search", "r-redact")


def test_a_deny_rule_cannot_be_escaped_by_a_grant() -> None:
    policy = policy_with(
        rules=[{"id": "no-mail", "agents": ["b*"], "tools": ["send_email"], "action": "deny", "reason": "mail is off"}]
    )
    assert rule_on("send_email", {"to": "a@acme.example"}, policy=policy).rule_ids == ("no-mail",)


def test_default_ask_asks_for_ungranted_calls_but_deny_rules_still_win() -> None:
    policy = policy_with(
        default="ask", rules=[{"id": "never-delete", "effects": ["delete"], "action": "deny", "reason": "no deletes"}]
    )
    asked = rule_on("search", agent="newcomer", policy=policy)
    assert (asked.verdict, asked.rule_ids) == (Verdict.ASK, ("default",))
    assert rule_on("delete_file", policy=policy).verdict is Verdict.DENY


def test_global_allow_rule_grants_every_matching_agent() -> None:
    policy = policy_with(rules=[{"id": "all-may-search", "tools": ["search"], "action": "allow", "reason": "public"}])
    ruling = rule_on("search", agent="newcomer", policy=policy)
    assert (ruling.verdict, ruling.rule_ids) == (Verdict.ALLOW, ("all-may-search",))


def test_conditions_see_tool_agent_session_and_now() -> None:
    rules = [
        {
            "id": "r",
            "action": "deny",
            "reason": "night",
            "tools": ["search"],
            "when": 'tool.effects == ["read"] && agent.owner == "team@acme.example" && session.user == "eve" '
            "&& now.getFullYear() > 2000 && session.tool_calls.size() == 0",
        }
    ]
    policy = policy_with(rules=rules)
    assert rule_on("search", policy=policy, user="eve").verdict is Verdict.DENY
    assert rule_on("search", policy=policy, user="bob").verdict is Verdict.ALLOW


def test_max_calls_per_session_and_per_tool() -> None:
    policy = policy_with()
    policy["agents"]["bot"]["limits"] = {"max_calls": 3}
    policy["agents"]["bot"]["tools"]["search"] = {"max_calls": 2}
    compiled = load_policy(policy)
    state = SessionState("s1")
    for _ in range(2):
        assert decide(compiled, state, "bot", "search", {}, now=NOW).verdict is Verdict.ALLOW
        state.record_call("bot", "search", NOW)
    per_tool = decide(compiled, state, "bot", "search", {}, now=NOW)
    assert (per_tool.verdict, per_tool.rule_ids) == (Verdict.DENY, ("agents.bot.tools.search.max_calls",))
    state.record_call("bot", "fetch_page", NOW)
    per_agent = decide(compiled, state, "bot", "fetch_page", {}, now=NOW)
    assert (per_agent.verdict, per_agent.rule_ids) == (Verdict.DENY, ("agents.bot.limits.max_calls",))
    assert "at most 3 tool calls per session" in per_agent.reason


def test_rate_limit_is_a_sliding_window() -> None:
    policy = policy_with()
    policy["agents"]["bot"]["limits"] = {"rate": "3/10s"}
    compiled = load_policy(policy)
    state = SessionState("s1", rate_window=compiled.rate_window)
    for t in (0.0, 1.0, 2.0):
        state.record_call("bot", "search", NOW + t)
    assert decide(compiled, state, "bot", "search", {}, now=NOW + 9.9).verdict is Verdict.DENY
    assert decide(compiled, state, "bot", "search", {}, now=NOW + 10.1).verdict is Verdict.ALLOW


def test_only_the_fields_conditions_read_are_converted() -> None:
    # An unreadable value in a field no condition reads does not stop the decision.
    ruling = rule_on("send_email", {"to": "a@acme.example", "blob": b"\xff" * 10})
    assert ruling.verdict is Verdict.ALLOW


def test_redact_args_replaces_nested_paths_without_touching_the_original() -> None:
    args = {"headers": {"authorization": "Bearer x", "accept": "json"}, "body": "b"}
    out = redact_args(args, ("headers.authorization", "missing.path", "body"))
    assert out == {"headers": {"authorization": REDACTED, "accept": "json"}, "body": REDACTED}
    assert args["headers"]["authorization"] == "Bearer x"


@pytest.mark.parametrize("agent", ["Senior Researcher", "agent/with.dots", "ünïcode"])
def test_agent_names_as_frameworks_write_them(agent: str) -> None:
    policy = policy_with(agents={agent: {"purpose": "p", "owner": "o", "tools": {"search": "allow"}}})
    assert rule_on("search", agent=agent, policy=policy).verdict is Verdict.ALLOW


NON_FINITE = [float("nan"), float("inf"), float("-inf"), json.loads('{"x": NaN}')["x"], json.loads("-Infinity")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf", "json-nan", "json-inf"])
@pytest.mark.parametrize(
    "grant",
    [
        {"ask": "args.amount > 50"},  # NaN > 50 is false: it would run without approval
        {"when": "!(args.amount > 1000)"},  # !(NaN > 1000) is true: granted
        {"when": "args.amount <= 500"},  # -inf <= 500: a refund of minus infinity
        {"when": "args.order.amount <= 500"},  # nested
    ],
    ids=["ask", "negated", "grant", "nested"],
)
def test_a_non_finite_number_never_makes_a_condition_quietly_decide(value: float, grant: dict[str, Any]) -> None:
    policy = policy_with()
    policy["agents"]["bot"]["tools"]["refund"] = grant
    args = {"order": {"amount": value}} if "order" in str(grant) else {"amount": value}
    ruling = rule_on("refund", args, policy=policy)
    assert ruling.verdict is Verdict.DENY
    assert ruling.error is not None and "is not a finite number" in ruling.reason
    assert "args." in ruling.reason and "amount" in ruling.reason


@pytest.mark.parametrize(
    ("grant", "args"),
    [
        ({"when": '!args.to.contains("evil")'}, {"to": "ok\x00evil@attacker.example"}),
        ({"when": 'args.path.startsWith("/srv/")'}, {"path": "/srv/\x00/../../etc/passwd"}),
        ({"when": "size(args.items) <= 2"}, {"items": {"a\x00b": 1}}),
        ({"when": 'args.note == "fine"'}, {"note": ["fine\x00 and more"]}),
    ],
    ids=["value", "prefix", "key", "nested"],
)
def test_a_string_with_a_nul_character_never_makes_a_condition_quietly_decide(
    grant: dict[str, Any], args: dict[str, Any]
) -> None:
    """The compiled CEL runtime reads a string only up to its first NUL character: a condition
    on such a string would check a part of it, so the call is denied as unreadable."""
    policy = policy_with()
    policy["agents"]["bot"]["tools"]["refund"] = grant
    ruling = rule_on("refund", args, policy=policy)
    assert ruling.verdict is Verdict.DENY
    assert ruling.error is not None and "NUL character" in ruling.reason and "args." in ruling.reason


def test_a_nul_character_no_condition_reads_does_not_matter() -> None:
    ruling = rule_on("refund", {"amount": 20, "memo": "a\x00b"})
    assert ruling.verdict is Verdict.ALLOW


def test_a_non_finite_number_no_condition_reads_does_not_matter() -> None:
    ruling = rule_on("refund", {"amount": 20, "ratio": float("nan")})
    assert ruling.verdict is Verdict.ALLOW


def test_a_deny_rule_is_cited_even_when_the_tool_is_not_granted_either() -> None:
    policy = policy_with(
        rules=[{"id": "no-deletes", "tools": ["delete_file"], "action": "deny", "reason": "deletes are never allowed"}]
    )
    ruling = rule_on("delete_file", {"path": "/etc"}, policy=policy)
    assert ruling.verdict is Verdict.DENY
    assert ruling.rule_ids[0] == "no-deletes" and "default" in ruling.rule_ids
    assert ruling.reason.startswith("deletes are never allowed") and "not granted" in ruling.reason
