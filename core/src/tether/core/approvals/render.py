"""Approval requests as text, for the CLI."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from ..audit.events import AuditEvent
from ..audit.render import session_lines, summary
from ..wording import cut, unnamed
from .queue import Entry, now_us
from .sealed import Revealed

MAX_SHOWN = 4000  # characters of the real arguments


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _status(entry: Entry) -> str:
    if entry.expired:
        return "expired"
    if entry.status == "pending":
        return f"pending, denied in {max(0, entry.expires_us - now_us()) // 1_000_000}s"
    return f"{entry.status} by {entry.answered_by}" + (" for the session" if entry.scope == "session" else "")


def _why(reason: str, rule_ids: Sequence[str]) -> str:
    others = unnamed(rule_ids, reason)  # each rule named once
    return f"{reason}  [{', '.join(others)}]" if others else reason


def approval_line(entry: Entry) -> str:
    reason = str(entry.request.get("reason", ""))
    return f"{entry.id}  {entry.agent} -> {entry.tool}  [{_status(entry)}]  {cut(reason, 80)}"


def approval_lines(entries: Sequence[Entry]) -> list[str]:
    """Requests one a line, the columns lined up."""
    who = [cut(f"{e.agent} -> {e.tool}", 60) for e in entries]
    status = [f"[{_status(e)}]" for e in entries]
    w1, w2 = max(map(len, who), default=0), max(map(len, status), default=0)
    lines = []
    for entry, call, state in zip(entries, who, status, strict=True):
        reason = str(entry.request.get("reason", ""))
        lines.append(f"{entry.id}  {call:<{w1}}  {state:<{w2}}  {cut(reason, 80)}")
    return lines


def real_values(revealed: Revealed) -> str:
    """The real arguments on one line (cut visibly when long), or why they are not shown."""
    if not revealed.shown:
        return f"not shown: {revealed.note}"
    text = json.dumps(revealed.args, ensure_ascii=False)
    if len(text) > MAX_SHOWN:
        text = f"{text[:MAX_SHOWN]}… ({len(text) - MAX_SHOWN} more characters not shown)"
    return f"{text}  (real values shown while pending)"


def approval_details(entry: Entry, session_events: Sequence[AuditEvent], revealed: Revealed | None = None) -> list[str]:
    """Everything a person needs to decide, including what untrusted content came before;
    with ``revealed``, the real arguments of a pending request beside the masked ones."""
    request = entry.request
    lines = [
        f"request   {entry.id}  ({_status(entry)})",
        f"agent     {entry.agent}   session {entry.session_id}"
        + (f"   user {entry.user}" if entry.user else "")
        + (f"   tenant {entry.tenant}" if entry.tenant else ""),
        f"tool      {entry.tool}",
        f"arguments {json.dumps(request.get('args'), ensure_ascii=False)}",
        *([f"real      {real_values(revealed)}"] if revealed is not None else []),
        f"why       {_why(str(request.get('reason', '')), request.get('rule_ids', []))}",
        f"asked     {_when(entry.created_us)}, denied unless answered by {_when(entry.expires_us)}",
        f"approvers {', '.join(entry.approvers) if entry.approvers is not None else 'anyone'}"
        + ("; may be approved for the rest of the session" if entry.for_session else ""),
    ]
    lines += [f"found     {finding}" for finding in request.get("findings") or []]
    if request.get("labels"):
        lines.append(f"data seen {', '.join(request['labels'])}")
    by_id = {event.event_id: event for event in session_events}
    sources = [by_id[p["event_id"]] for p in request.get("provenance", []) if p.get("event_id") in by_id]
    if sources:
        lines.append("untrusted content read before it:")
        lines += [f"  - {summary(event)}" for event in sources]
    if entry.answered_by:
        lines.append(
            f"answer    {entry.status} by {entry.answered_by} at {_when(entry.answered_us or 0)}"
            + (f": {entry.comment}" if entry.comment else "")
        )
    lines.append("recent events of the session:")
    lines += [f"  {line}" for line in session_lines(session_events[-12:])]
    return lines
