"""Property-based tests of sequence rules: whatever the rules and the history, the per-session
state machines fire exactly when a brute-force search over the history says they should
(ordering, windows by calls and by time, negative patterns, carried values), and a session
rebuilt from its audit decides as the live one did."""

from __future__ import annotations

import fnmatch
import itertools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.core import ApprovalAnswer, AuditStore, Guard, PolicyError, load_policy
from tether.core.audit.events import Kind, NewEvent
from tether.core.provenance import argument_values, fingerprints
from tether.core.state import SessionState

KEY = b"k" * 32
TOOLS: dict[str, dict[str, Any]] = {
    "page": {"effects": ["read"], "output": "untrusted"},
    "ticket": {"effects": ["read"], "data": ["pii"]},
    "mail": {"effects": ["external"]},
    "note": {"effects": ["write"]},
}
LABELS = ["pii", "secret"]
FINDINGS = ["tether.egress", "tether.instructions"]
VALUES = ["ann@a.example", "bob@b.example", "cy@c.example"]


def fps(value: str) -> set[str]:
    return set(fingerprints(KEY, argument_values({"to": value})))


def subset(items: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=len(items), unique=True)


@st.composite
def steps(draw: Any) -> dict[str, Any]:
    step: dict[str, Any] = {}
    if draw(st.booleans()):
        step["tools"] = draw(st.one_of(subset(list(TOOLS)), st.just(["*"])))
    if draw(st.booleans()):
        step["effects"] = draw(subset(["read", "external", "write"]))
    kind = draw(st.sampled_from(["any", "untrusted", "findings"]))
    if kind == "untrusted":
        step["output"] = "untrusted"
    elif kind == "findings":
        step["findings"] = draw(subset(FINDINGS))
    if draw(st.booleans()):
        step["data"] = draw(subset(LABELS))
    return step or {"tools": ["*"]}


@st.composite
def rules(draw: Any, index: int) -> dict[str, Any]:
    pattern = draw(st.lists(steps(), min_size=1, max_size=3))
    window = draw(st.sampled_from(["session", "calls", "time"]))
    within = {
        "session": "session",
        "calls": f"{draw(st.integers((len(pattern) + 1) // 2, 6))} calls",
        "time": f"{draw(st.sampled_from([30, 100, 300]))}s",
    }[window]
    then: dict[str, Any] = {}
    if draw(st.booleans()):
        then["tools"] = draw(subset(list(TOOLS)))
    if draw(st.booleans()):
        then["data"] = draw(subset(LABELS))
    if pattern[-1].get("findings") is None and draw(st.booleans()):
        then["carries"] = draw(st.sampled_from([True, ["to"]]))
    rule = {"id": f"r{index}", "reason": f"rule {index}", "action": "ask", "then": then, "within": within}
    rule["without" if draw(st.booleans()) else "after"] = pattern
    return rule


@st.composite
def policies(draw: Any) -> Any:
    sequences = [draw(rules(i)) for i in range(draw(st.integers(1, 4)))]
    agent = {"purpose": "p", "owner": "o", "tools": dict.fromkeys(TOOLS, "allow")}
    document = {"version": 1, "tools": TOOLS, "agents": {"bot": agent}, "sequences": sequences}
    try:
        return load_policy(document)
    except PolicyError:
        assume(False)  # a rule the loader rightly rejects (one that can never match)


@dataclass
class Happening:
    """One thing in a generated history, in the order it was recorded."""

    kind: str  # call (let through), denied, ask, approve, reject, output
    tool: str
    ts: float
    labels: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    untrusted: bool = False
    values: list[str] = field(default_factory=list)  # plain values the output carried


@st.composite
def histories(draw: Any) -> list[Happening]:
    out: list[Happening] = []
    ts = 1_000.0
    pending = 0
    for _ in range(draw(st.integers(0, 14))):
        ts += draw(st.sampled_from([0, 10, 20, 50, 100]))  # sums that often meet a window exactly
        kinds = ["call", "denied", "ask", "output"] + (["approve", "reject"] if pending else [])
        kind = draw(st.sampled_from(kinds))
        tool = draw(st.sampled_from(list(TOOLS)))
        labels = draw(st.lists(st.sampled_from(LABELS), max_size=2, unique=True))
        if kind in ("approve", "reject"):
            pending -= 1
            out.append(Happening(kind, "", ts))
            continue
        pending += kind == "ask"
        happening = Happening(kind, tool, ts, labels)
        if kind != "output":
            happening.findings = draw(st.lists(st.sampled_from(FINDINGS), max_size=2, unique=True))
        else:
            happening.untrusted = TOOLS[tool].get("output") == "untrusted"
            happening.values = draw(st.lists(st.sampled_from(VALUES), max_size=2, unique=True))
        out.append(happening)
    return out


def as_events(history: list[Happening]) -> list[NewEvent]:
    """The audit events a guard would have written for ``history``."""
    events, asked = [], []
    for i, h in enumerate(history):
        eid = f"e{i}"
        if h.kind in ("approve", "reject"):
            parent = asked.pop(0)
            verdict = "allow" if h.kind == "approve" else "deny"
            events.append(
                _event(eid, h.ts, Kind.APPROVAL, parent[1], verdict, {"approved": verdict == "allow"}, parent[0])
            )
        elif h.kind == "output":
            values = sorted(set().union(*(fps(v) for v in h.values)) if h.values else set())
            details = {"labels": h.labels, "untrusted": h.untrusted, "values": values}
            events.append(_event(eid, h.ts, Kind.TOOL_RESULT, h.tool, None, details))
        else:
            verdict = {"call": "allow", "denied": "deny", "ask": "ask"}[h.kind]
            details = {"labels": h.labels, "findings": [f"{f}: why" for f in h.findings] or None}
            details["allowed"] = h.kind == "call"
            events.append(_event(eid, h.ts, Kind.TOOL_DECISION, h.tool, verdict, details))
            if h.kind == "ask":
                asked.append((eid, h.tool))
    return events


def _event(
    eid: str, ts: float, kind: str, tool: str, verdict: str | None, details: dict[str, Any], parent: str | None = None
) -> NewEvent:
    return NewEvent(eid, int(ts * 1e6), "s", kind, "bot", None, None, tool, parent, verdict, json.dumps(details))


# -- the oracle: a brute-force reading of the documented semantics ---------------------------


@dataclass
class Seen:
    call: bool
    tool: str
    ordinal: int  # calls let through up to and including this event
    ts: float
    labels: set[str]
    findings: set[str]
    untrusted: bool
    values: set[str]


def resolved(history: list[Happening]) -> tuple[list[Seen], int]:
    """What ran and what came back, in order; an approved call runs when it is approved."""
    seen: list[Seen] = []
    asked: list[Happening] = []
    calls = 0
    for h in history:
        if h.kind == "ask":
            asked.append(h)
            continue
        if h.kind in ("approve", "reject"):
            call = asked.pop(0)
            if h.kind == "approve":
                calls += 1
                seen.append(Seen(True, call.tool, calls, h.ts, set(call.labels), set(call.findings), False, set()))
        elif h.kind == "call":
            calls += 1
            seen.append(Seen(True, h.tool, calls, h.ts, set(h.labels), set(h.findings), False, set()))
        elif h.kind == "output":
            labels = set(h.labels) | set(TOOLS[h.tool].get("data", []))
            values = set().union(*(fps(v) for v in h.values)) if h.values else set()
            seen.append(Seen(False, h.tool, calls, h.ts, labels, set(), h.untrusted, values))
    return seen, calls


def step_matches(step: dict[str, Any], e: Seen) -> bool:
    if "findings" in step and not (e.call and e.findings & set(step["findings"])):
        return False
    if "output" in step and (e.call or not e.untrusted):
        return False
    if "tools" in step and not any(fnmatch.fnmatchcase(e.tool, p) for p in step["tools"]):
        return False
    if "effects" in step and not set(TOOLS[e.tool]["effects"]) & set(step["effects"]):
        return False
    return "data" not in step or bool(e.labels & set(step["data"]))


def expected(
    rule: dict[str, Any], seen: list[Seen], calls: int, tool: str, labels: set[str], to: str, now: float
) -> bool:
    then = rule["then"]
    if "tools" in then and tool not in then["tools"]:
        return False
    if "data" in then and not labels & set(then["data"]):
        return False
    pattern = rule.get("after") or rule["without"]
    within = rule["within"]
    wanted = fps(to)
    matched = False
    for picks in itertools.combinations(range(len(seen)), len(pattern)):
        chosen = [seen[i] for i in picks]
        if not all(step_matches(s, e) for s, e in zip(pattern, chosen, strict=True)):
            continue
        first = chosen[0]
        if within.endswith(" calls") and calls + 1 - first.ordinal > int(within.split()[0]):
            continue
        if within.endswith("s") and within[:-1].isdigit() and now - first.ts > float(within[:-1]):
            continue
        if then.get("carries") and (chosen[-1].call or not chosen[-1].values & wanted):
            continue
        matched = True
        break
    return matched != ("without" in rule)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(
    policies(),
    histories(),
    st.sampled_from(list(TOOLS)),
    st.lists(st.sampled_from(LABELS), max_size=2, unique=True),
    st.sampled_from([*VALUES, "zed@z.example"]),
    st.sampled_from([0, 10, 30, 100, 300]),
    st.booleans(),
)
def test_the_state_machines_agree_with_a_search_of_the_history(
    compiled: Any, history: list[Happening], tool: str, labels: list[str], to: str, gap: float, parsed: bool
) -> None:
    state = SessionState("s", sequences=compiled.sequences)
    for event in as_events(history):
        state.observe(event, None if parsed else json.loads(event.data))  # both ways an event arrives
    now = (history[-1].ts if history else 1_000.0) + gap
    assert state.history is not None
    hits = state.history.check(state, "bot", tool, {"to": to}, frozenset(labels), now, KEY)
    seen, calls = resolved(history)
    raw = {r["id"]: r for r in _raw(compiled)}
    want = {rid for rid, rule in raw.items() if expected(rule, seen, calls, tool, set(labels), to, now)}
    assert {h.rule_id for h in hits} == want


def _raw(compiled: Any) -> list[dict[str, Any]]:
    """The rules as written (windows back in their written form), for the oracle."""
    out = []
    for rule in compiled.policy.sequences:
        body = rule.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        body["then"] = rule.then.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        for name in ("after", "without"):
            if name in body:
                body[name] = [s.model_dump(mode="json", exclude_none=True) for s in getattr(rule, name)]
        w = rule.within
        body["within"] = f"{w.calls} calls" if w.calls else f"{w.seconds:g}s" if w.seconds else "session"
        out.append(body)
    return out


# -- the live session and the one rebuilt from its audit decide alike ------------------------

CALLS = st.lists(
    st.tuples(
        st.sampled_from(list(TOOLS)),
        st.sampled_from(["", "reach me at +44 20 7946 0958", "write to bob@b.example", "see ann@a.example"]),
    ),
    max_size=8,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(policies(), CALLS, st.sampled_from(list(TOOLS)), st.sampled_from(VALUES))
def test_a_session_rebuilt_from_the_audit_is_the_live_one(
    compiled: Any, calls: list[tuple[str, str]], attempt: str, to: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'audit.db'}"
        with Guard(compiled, store=AuditStore(url, key=KEY)) as guard:
            session = guard.session("bot", "s")
            for tool, text in calls:
                decision = session.before_tool(tool, {"text": text})
                if decision.needs_approval:  # a person approves every other one
                    decision = session.settle(decision, ApprovalAnswer(approved=len(text) % 2 == 0, approver="p"))
                if decision.allowed:
                    session.after_tool(decision, text or "nothing")
            live = guard._state("s")
            rebuilt = SessionState("s", sequences=compiled.sequences)
            rebuilt.replay(guard.store.session_events("s"))
    assert live.history is not None and rebuilt.history is not None
    assert vars(rebuilt.history) | {"program": None} == vars(live.history) | {"program": None}
    now = 2e9
    ask = (attempt, {"to": to}, frozenset({"pii"}), now, KEY)
    assert rebuilt.history.check(rebuilt, "bot", *ask) == live.history.check(live, "bot", *ask)
