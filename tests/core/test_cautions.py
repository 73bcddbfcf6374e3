"""Cautions: a caller's own findings about a call, made part of its decision and its audit."""

from __future__ import annotations

import json
from pathlib import Path

from tether.core import AuditStore, Guard
from tether.core.cautions import Caution

POLICY = {
    "version": 1,
    "tools": {"fetch": {"effects": ["read"]}},
    "agents": {"bot": {"purpose": "p", "owner": "o", "tools": {"fetch": "allow"}}},
}


def decide(tmp_path: Path, *cautions: Caution) -> tuple[object, dict[str, object]]:
    store = AuditStore(f"sqlite:///{tmp_path / 'c.db'}")
    guard = Guard(POLICY, store=store)
    decision = guard.session("bot").before_tool("fetch", {"url": "x"}, cautions=cautions)
    (event,) = [e for e in store.events() if e.kind == "tool.decision"]
    guard.close()
    return decision, json.loads(event.data)


def test_a_caution_makes_a_granted_call_as_strict_as_it_says(tmp_path: Path) -> None:
    decision, recorded = decide(tmp_path, Caution("tether.test.changed", "the tool changed", "deny"))
    assert not decision.allowed  # type: ignore[attr-defined]
    assert decision.rule_ids == ("tether.test.changed",)  # type: ignore[attr-defined]
    assert recorded["findings"] == ["tether.test.changed: the tool changed"]


def test_an_asking_caution_asks_and_an_allowing_one_is_only_recorded(tmp_path: Path) -> None:
    asked, _ = decide(tmp_path, Caution("tether.test.odd", "odd", "ask"))
    assert asked.needs_approval  # type: ignore[attr-defined]
    allowed, recorded = decide(tmp_path / "b", Caution("tether.test.note", "worth noting", "allow"))
    assert allowed.allowed and recorded["findings"] == ["tether.test.note: worth noting"]  # type: ignore[attr-defined]
