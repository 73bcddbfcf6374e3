"""Baselines learned from the audit, and departures from them found at decision time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether.core import AuditStore, Guard, Verdict
from tether.core.baselines import (
    Baseline,
    destinations,
    learn,
    learn_from_store,
    load_baselines,
    save_baselines,
)
from tether.core.cli import main

from .conftest import KEY

TOOLS: dict[str, Any] = {
    "read_ticket": {"effects": ["read"], "data": ["pii"]},
    "search": {"effects": ["read"]},
    "send_email": {"effects": ["external"], "accepts": ["pii"]},
    "pay": {"effects": ["money"], "accepts": ["pii"]},
    "export_all": {"effects": ["read"]},
}


def policy(**anomalies: Any) -> dict[str, Any]:
    agent = {"purpose": "support", "owner": "team@acme.example", "tools": dict.fromkeys(TOOLS, "allow")}
    document: dict[str, Any] = {"version": 1, "tools": TOOLS, "agents": {"support": agent}}
    if anomalies:
        document["anomalies"] = {"min_sessions": 3, **anomalies}
    return document


def ordinary_sessions(guard: Guard, count: int = 4, tenant: str | None = None) -> None:
    """What the support agent usually does: read a ticket, search, answer a customer at acme."""
    for i in range(count):
        session = guard.session("support", f"{tenant or 'x'}-usual-{i}", tenant=tenant)
        for tool, args in (
            ("read_ticket", {"id": f"T-{i}"}),
            ("search", {"q": "refund policy"}),
            ("send_email", {"to": "help@customers.acme.example", "body": "Your refund is on its way."}),
        ):
            decision = session.before_tool(tool, args)
            assert decision.allowed
            session.after_tool(decision, "ok")


@pytest.fixture
def learned(store: AuditStore) -> AuditStore:
    ordinary_sessions(Guard(policy(), store=store))
    learn_from_store(store)
    return store


def decision_event(store: AuditStore, session: str, event_id: str | None) -> Any:
    return next(e for e in store.session_events(session) if e.event_id == event_id)


def test_destinations_are_whole_arguments_that_name_where_data_goes() -> None:
    found = destinations(
        {
            "to": ["Ann@Example.com", "bob@example.com"],
            "url": "https://upload.evil.example/x?y=1",
            "iban": "GB29 NWBK 6016 1331 9268 19",
            "body": "write to carol@example.com or see www.example.org",  # inside text: what is sent
            "amount": "100.00",
        },
        KEY,
    )
    by_shown = {d.shown(KEY).split(":")[0]: d for d in found}
    assert len(found) == 4 and set(by_shown) == {"[email", "[iban", "upload.evil.example"}
    ann, bob = (d for d in found if d.shown(KEY).endswith("@example.com"))  # shown masked, never raw
    assert ann.domain == bob.domain and ann.address != bob.address
    host = by_shown["upload.evil.example"]
    assert host.domain != host.address
    same = destinations({"to": "ann@example.com"}, KEY)[0].address  # case does not matter
    assert same in {ann.address, bob.address}


def rows(*events: tuple[str, str, str, str, float, dict[str, Any]], tenant: str | None = None) -> list[Any]:
    out = []
    for i, (session, kind, tool, verdict, ts, details) in enumerate(events):
        parent = details.pop("parent", None)
        out.append((session, kind, "bot", tenant, tool, verdict, int(ts * 1e6), f"e{i}", parent, json.dumps(details)))
    return out


def test_learning_counts_what_ran_per_session() -> None:
    d, a = "tool.decision", "approval"
    learned = learn(
        rows(
            ("s1", d, "search", "allow", 0, {"allowed": True}),
            ("s1", d, "search", "allow", 10, {"allowed": True}),
            ("s1", d, "mail", "allow", 20, {"allowed": True, "destinations": [["addr1", "dom1"]]}),
            ("s1", d, "wipe", "deny", 30, {"allowed": False}),  # denied: did not run, not learned
            ("s2", d, "pay", "ask", 0, {"allowed": False, "destinations": [["addr2", "dom2"]]}),
            ("s2", a, "pay", "allow", 5, {"parent": "e4"}),  # approved: ran
            ("s2", d, "search", "allow", 100, {"allowed": True}),
        ),
        now_us=123,
    )
    (b,) = learned
    assert (b.agent, b.tenant, b.sessions, b.learned_us) == ("bot", "", 2, 123)
    assert (b.calls_p50, b.calls_max) == (2, 3)
    assert b.burst_max == 3  # s1's three calls within a minute
    assert b.tools == {"mail": 1, "pay": 1, "search": 3}
    assert b.addresses == {"addr1", "addr2"} and b.domains == {"dom1", "dom2"}
    assert (b.since_us, b.until_us) == (0, 100_000_000)


def test_a_tenants_sessions_get_their_own_baseline_too() -> None:
    learned = learn(rows(("s1", "tool.decision", "search", "allow", 0, {"allowed": True}), tenant="acme"))
    assert {(b.agent, b.tenant) for b in learned} == {("bot", ""), ("bot", "acme")}


def test_baselines_round_trip_through_the_store(store: AuditStore) -> None:
    b = Baseline("bot", "t", 5, 7, 1, 2, 3, 4, 6, 2, {"x": 3}, frozenset({"a"}), frozenset({"d"}))
    save_baselines(store, [b])
    save_baselines(store, [b])  # learning again replaces
    assert load_baselines(store) == [b]


def test_calls_like_the_learned_ones_have_no_findings(learned: AuditStore) -> None:
    guard = Guard(policy(new_tool="ask", new_destination="ask", volume="ask", burst="ask"), store=learned)
    session = guard.session("support", "normal")
    for tool, args in (("read_ticket", {"id": "T-9"}), ("send_email", {"to": "help@customers.acme.example"})):
        decision = session.before_tool(tool, args)
        assert decision.verdict is Verdict.ALLOW
        details = decision_event(learned, "normal", decision.event_id).details
        assert details["findings"] is None
        assert "anomalies" not in details


def test_departures_are_findings_mapped_to_outcomes(learned: AuditStore) -> None:
    guard = Guard(policy(new_tool="ask", new_destination="deny", volume="ask"), store=learned)
    session = guard.session("support", "odd")
    new_tool = session.before_tool("export_all", {})
    assert (new_tool.verdict, new_tool.rule_ids) == (Verdict.ASK, ("tether.new-tool",))
    assert "never used in the 4 learned sessions" in new_tool.reason

    elsewhere = session.before_tool("send_email", {"to": "drop@exfil.example"})
    assert (elsewhere.verdict, elsewhere.rule_ids) == (Verdict.DENY, ("tether.new-destination",))
    assert "exfil.example" in elsewhere.reason and "drop@" not in elsewhere.reason  # masked
    recorded = decision_event(learned, "odd", elsewhere.event_id).details
    assert recorded["findings"][0].startswith("tether.new-destination: ")
    assert "drop@exfil.example" not in json.dumps(recorded)


def test_volume_and_bursts_past_every_learned_session(learned: AuditStore) -> None:
    guard = Guard(policy(volume="deny"), store=learned)  # burst: record only
    session = guard.session("support", "busy")
    verdicts, findings = [], []
    for i in range(5):
        decision = session.before_tool("search", {"q": f"q{i}"})
        verdicts.append(decision.verdict)
        findings.append(decision_event(learned, "busy", decision.event_id).details["findings"] or [])
        if decision.allowed:
            session.after_tool(decision, "ok")
    assert verdicts == [Verdict.ALLOW] * 3 + [Verdict.DENY] * 2  # learned sessions made at most 3 calls
    assert findings[2] == []
    assert {f.split(":")[0] for f in findings[3]} == {"tether.volume", "tether.burst"}  # the burst only recorded


def test_by_default_departures_are_only_recorded(learned: AuditStore) -> None:
    guard = Guard({**policy(), "anomalies": {"min_sessions": 3}}, store=learned)
    decision = guard.session("support", "s").before_tool("export_all", {})
    assert decision.verdict is Verdict.ALLOW
    assert decision_event(learned, "s", decision.event_id).details["findings"][0].startswith("tether.new-tool: ")


def test_a_policy_without_anomalies_checks_nothing(learned: AuditStore) -> None:
    decision = Guard(policy(), store=learned).session("support", "s").before_tool("export_all", {})
    details = decision_event(learned, "s", decision.event_id).details
    assert details["findings"] is None and "anomalies" not in details


@pytest.mark.parametrize(
    ("prepare", "why"),
    [
        ("nothing learned", "skipped: no baseline learned for agent 'support'"),
        ("too few sessions", "skipped: the baseline of agent 'support' has 2 sessions, fewer than 3"),
        ("stale", "skipped: the baseline of agent 'support' is stale: learned 40.0 days ago"),
        ("table missing", "skipped: baselines unavailable: "),
    ],
)
def test_no_usable_baseline_skips_the_checks_and_says_so(store: AuditStore, prepare: str, why: str) -> None:
    if prepare == "too few sessions":
        ordinary_sessions(Guard(policy(), store=store), count=2)
        learn_from_store(store)
    elif prepare == "stale":
        ordinary_sessions(Guard(policy(), store=store))
        old = learn(_rows(store), now_us=int((time.time() - 40 * 86400) * 1e6))
        save_baselines(store, old)
    elif prepare == "table missing":
        with store.engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE tether_baselines"))
    guard = Guard(policy(new_tool="deny", new_destination="deny", volume="deny", burst="deny"), store=store)
    decision = guard.session("support", "s").before_tool("export_all", {})
    assert decision.verdict is Verdict.ALLOW  # the decision still runs
    assert decision_event(store, "s", decision.event_id).details["anomalies"].startswith(why)


def _rows(store: AuditStore) -> Any:
    from tether.core.baselines import audit_rows

    return list(audit_rows(store))


def test_a_tenant_is_judged_by_its_own_baseline(store: AuditStore) -> None:
    writer = Guard(policy(), store=store)
    ordinary_sessions(writer, tenant="acme")
    for i in range(3):  # the other tenant pays suppliers
        session = writer.session("support", f"globex-{i}", tenant="globex")
        session.after_tool(session.before_tool("pay", {"iban": "DE89 3704 0044 0532 0130 00", "amount": 5}), "ok")
    learn_from_store(store)
    guard = Guard(policy(new_tool="ask"), store=store)
    assert guard.session("support", "a", tenant="acme").before_tool("pay", {"amount": 1}).verdict is Verdict.ASK
    assert guard.session("support", "g", tenant="globex").before_tool("pay", {"amount": 1}).verdict is Verdict.ALLOW
    # a tenant never learned is judged by the agent's baseline across all tenants
    assert guard.session("support", "n", tenant="new").before_tool("pay", {"amount": 1}).verdict is Verdict.ALLOW


def test_guards_sharing_a_store_share_baselines_and_pick_up_new_ones(store_url: str) -> None:
    with Guard(policy(new_tool="ask", refresh="1ms"), store=AuditStore(store_url, key=KEY)) as reader:
        first = reader.session("support", "early").before_tool("search", {"q": "x"})
        assert reader.store.session_events("early")[-1].details["anomalies"].startswith("skipped: no baseline")
        assert first.verdict is Verdict.ALLOW
        with Guard(policy(), store=AuditStore(store_url, key=KEY)) as other:  # another process learns
            ordinary_sessions(other)
            learn_from_store(other.store)
        time.sleep(0.01)
        later = reader.session("support", "late").before_tool("export_all", {})
        assert (later.verdict, later.rule_ids) == (Verdict.ASK, ("tether.new-tool",))


def test_baseline_commands_and_agents_show_what_was_learned_and_who_departed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TETHER_STORE", "TETHER_KEY", "TETHER_POLICY"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with Guard(policy(), store=AuditStore(url)) as guard:
        ordinary_sessions(guard)
    runner = CliRunner()
    result = runner.invoke(main, ["baseline", "learn", "--since", "7d", "--store", url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("support: 4 sessions (learned ")
    assert "calls per session median 3, p95 3, max 3; at most 3 a minute" in result.output
    assert "tools read_ticket, search, send_email; 1 destination" in result.output

    with Guard(policy(new_tool="ask"), store=AuditStore(url)) as guard:
        guard.session("support", "odd-one").before_tool("export_all", {})
    (tmp_path / "p.yaml").write_text(json.dumps(policy(new_tool="ask")))
    result = runner.invoke(main, ["agents", "--policy", "p.yaml", "--store", url])
    assert result.exit_code == 0, result.output
    assert "granted: export_all, pay, read_ticket, search, send_email" in result.output
    assert "  baseline: 4 sessions" in result.output
    assert "  departed from its baseline: 1 session\n    odd-one: new-tool x1\n" in result.output
    data = json.loads(runner.invoke(main, ["agents", "--json", "--store", url]).output)
    assert data[0]["departed"] == {"odd-one": {"tether.new-tool": 1}}
    assert data[0]["baselines"][0]["destinations"] == 1
    shown = runner.invoke(main, ["baseline", "show", "--store", url])
    assert shown.output.startswith("support: 4 sessions")
    bad = runner.invoke(main, ["baseline", "learn", "--since", "soon", "--store", url])
    assert bad.exit_code == 2 and "expected a duration" in bad.output


def test_a_store_that_fails_after_loading_keeps_the_last_good_baseline(
    learned: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tether.core.baselines as baselines

    guard = Guard(policy(new_tool="ask", refresh="1ms"), store=learned)
    session = guard.session("support", "s")
    assert session.before_tool("export_all", {}).verdict is Verdict.ASK  # baseline read and used
    asked: list[str] = []

    def unavailable(store: AuditStore, agent: str | None = None) -> list[Baseline]:
        asked.append(agent or "")
        raise baselines.StoreError("connection refused")

    monkeypatch.setattr(baselines, "load_baselines", unavailable)
    time.sleep(0.01)
    for _ in range(5):
        decision = session.before_tool("export_all", {})
        assert (decision.verdict, decision.rule_ids) == (Verdict.ASK, ("tether.new-tool",))
    assert asked == ["support"]  # asked again once, then not before the retry delay
