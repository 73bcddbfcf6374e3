"""Replay on an audit recorded by a real LangGraph run: the graph's sessions, recorded under a
lenient policy and replayed under a strict one, get the decisions the strict policy makes when
the same graph runs under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tether.core import AuditStore, Guard
from tether.core.policy import load_policy
from tether.core.replay import Replayer, recorded
from tether.langgraph import Tether

from .conftest import KEY, POLICY, ScriptedModel, calls
from .graphs import state_graph

# the two threads read the same customer's address: let it through, they are one user's tickets
SHARED = {**POLICY, "protections": {"cross_session": "allow"}}
LENIENT: dict[str, Any] = {
    **SHARED,
    "agents": {"support-bot": {**POLICY["agents"]["support-bot"], "tools": dict.fromkeys(POLICY["tools"], "allow")}},
}
STRICT: dict[str, Any] = {
    **SHARED,
    "agents": {"support-bot": {**POLICY["agents"]["support-bot"], "limits": {"max_calls": 3}}},
    "rules": [
        {
            "id": "no-mail-after-personal-data",
            "tools": ["send_email"],
            "when": '"pii" in session.labels',
            "action": "deny",
            "reason": "the session has read personal data",
        }
    ],
}


def script() -> ScriptedModel:
    return ScriptedModel(
        script=[
            calls(("lookup", {"ticket": "1"}, "l1")),
            calls(("send_email", {"to": "bob@acme.example", "body": "re: ticket 1"}, "e1")),
            calls(("refund", {"order": "A", "amount": 30}, "r1")),
            calls(("send_email", {"to": "x@evil.example", "body": "hi"}, "e2")),
            calls(("lookup", {"ticket": "2"}, "l2"), ("lookup", {"ticket": "3"}, "l3")),
        ]
    )


def run_graphs(policy: dict[str, Any], url: str, tools: list[Any]) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Run the graph on two threads under ``policy``; each session's recorded decisions."""
    store = AuditStore(url, key=KEY)
    with Guard(policy, store=store) as guard:
        for thread in ("thread-a", "thread-b"):
            graph = state_graph(script(), tools, Tether(guard, agent="support-bot"), InMemorySaver())
            graph.invoke({"messages": [HumanMessage("handle ticket 1")]}, {"configurable": {"thread_id": thread}})
        out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for e in store.events():
            if e.kind == "tool.decision":
                out.setdefault(e.session_id, []).append((e.verdict or "", tuple(e.details["rule_ids"])))
    return out


def test_a_recorded_langgraph_run_replays_as_it_runs(tmp_path: Path, tools: list[Any], ran: Any) -> None:
    lenient_url = f"sqlite:///{tmp_path / 'lenient.db'}"
    lenient = run_graphs(LENIENT, lenient_url, tools)
    assert ran.count("send_email") == 4, lenient  # everything ran under the lenient policy
    direct = run_graphs(STRICT, f"sqlite:///{tmp_path / 'strict.db'}", tools)
    assert direct != lenient

    store = AuditStore(lenient_url, key=KEY, create=False)
    replayed: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for r in Replayer(load_policy(STRICT), store).run(recorded(store)):
        replayed.setdefault(r.event.session_id, []).append((r.after.verdict.value, r.after.rule_ids))
    store.close()
    assert replayed == direct
    assert [v for v, _ in direct["thread-a"]] == ["allow", "deny", "allow", "deny", "allow", "deny"]
