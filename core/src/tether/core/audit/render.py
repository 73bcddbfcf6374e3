"""Audit events as lines a person reads (``tether audit tail``, ``show``, the demo)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..wording import cut, unnamed
from .events import AuditEvent, Kind

_WIDTH = 110


def _compact(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 1] + "…"


def when(event: AuditEvent) -> str:
    stamp = dt.datetime.fromtimestamp(event.ts_us / 1e6, dt.timezone.utc).astimezone()
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def summary(event: AuditEvent) -> str:
    """What the event says, in one line."""
    d = event.details
    if event.kind == Kind.TOOL_DECISION:
        verdict = (event.verdict or "?").upper()
        if d.get("enforcement") == "monitored":
            verdict += " (monitor: not enforced)"
        reason = str(d.get("reason", ""))
        others = unnamed(d.get("rule_ids", []), reason)  # each rule named once
        rules = f" [{', '.join(others)}]" if others else ""
        return f"{verdict:<5} {event.tool}({_compact(d.get('args', {}), 60)})  {reason}{rules}"
    if event.kind == Kind.APPROVAL:
        verb = "APPROVED" if event.verdict == "allow" else "DENIED"
        return f"{verb} {event.tool}: {d.get('reason', '')}"
    if event.kind == Kind.APPROVAL_ANSWER:
        verb = "approved" if event.verdict == "allow" else "denied"
        scope = " for the rest of the session" if d.get("scope") == "session" else ""
        comment = f": {d['comment']}" if d.get("comment") else ""
        asked = f"request {d.get('approval_id')}" if d.get("approval_id") else f"{d.get('asked_by')}'s question"
        return f"{d.get('approver')} {verb} {asked} ({event.tool}){scope}{comment}"
    if event.kind == Kind.TOOL_RESULT:
        status = f"error: {_compact(d['error'])}" if d.get("error") else _compact(d.get("output"))
        trust = " (untrusted)" if d.get("untrusted") else ""
        return f"result of {event.tool}{trust}: {status}"
    if event.kind == Kind.MODEL_REQUEST:
        return f"model request{' to ' + d['model'] if d.get('model') else ''}: {_compact(d.get('messages'))}"
    if event.kind == Kind.MODEL_RESPONSE:
        calls = ", ".join(str(c.get("name")) for c in d.get("tool_calls", []))
        return f"model response: {_compact(d.get('response'), 50)}" + (f"  proposes: {calls}" if calls else "")
    if event.kind == Kind.SESSION:
        who = f" user={event.user_id}" if event.user_id else ""
        who += f" tenant={event.tenant}" if event.tenant else ""
        who += f" started by session {d['parent_session']}" if d.get("parent_session") else ""
        return f"session started ({d.get('mode')} mode, policy {str(d.get('policy'))[:12]}){who}"
    if event.kind == Kind.IDENTITY:
        return f"REFUSED {d.get('via')} request ({d.get('finding')}): {d.get('reason')}"
    if event.kind == Kind.GAP:
        span = (int(d.get("to_us", 0)) - int(d.get("from_us", 0))) / 1e6
        return f"AUDIT GAP: {d.get('missed')} event(s) over {span:.1f} s not recorded (store failed: {d.get('error')})"
    return _compact(d)


def tail_line(event: AuditEvent) -> str:
    return tail_lines([event])[0]


_SESSION_WIDTH, _SEQ_WIDTH, _AGENT_WIDTH = 40, 4, 24


def tail_lines(events: Sequence[AuditEvent], *, fixed: bool = False) -> list[str]:
    """Recent events, one a line, their columns lined up (long session ids and agent names cut).

    The columns are as wide as their longest value, or, ``fixed``, as wide as any value may be,
    so that lines printed later (``tail -f``) line up with those printed before."""
    where = [f"{cut(e.session_id, _SESSION_WIDTH)} #{e.seq}" for e in events]
    agents = [cut(e.agent or "-", _AGENT_WIDTH) for e in events]
    if fixed:
        w1, w2 = _SESSION_WIDTH + 2 + _SEQ_WIDTH, _AGENT_WIDTH
    else:
        w1, w2 = max(map(len, where), default=0), max(map(len, agents), default=0)
    return [
        _clip(f"{when(e)}  {place:<{w1}}  {agent:<{w2}}  {summary(e)}")
        for e, place, agent in zip(events, where, agents, strict=True)
    ]


def session_lines(events: Iterable[AuditEvent]) -> list[str]:
    """One session's events, each indented under the event that caused it (the decision chain)."""
    depth: dict[str, int] = {}
    lines = []
    for event in events:
        level = depth[event.parent_id] + 1 if event.parent_id in depth else 0
        depth[event.event_id] = level
        lines.append(_clip(f"#{event.seq:<3} {event.agent or '-':<14} {'  ' * level}{summary(event)}"))
    return lines


def _clip(line: str) -> str:
    return line if len(line) <= _WIDTH * 2 else line[: _WIDTH * 2 - 1] + "…"
