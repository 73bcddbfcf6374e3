"""Audit events: what happened, linked into a decision chain and a hash chain.

Every event belongs to a session and may name a parent event, so the chain model request ->
model response -> tool decision -> approval -> tool result can be walked back from any link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class Kind:
    SESSION = "session.start"
    MODEL_REQUEST = "model.request"
    MODEL_RESPONSE = "model.response"
    TOOL_DECISION = "tool.decision"
    APPROVAL = "approval"  # the agent applied an answer (or a timeout) to its call
    APPROVAL_ANSWER = "approval.answer"  # a person answered a queued request
    TOOL_RESULT = "tool.result"
    INPUT = "input"  # trusted input: the user's request, the system prompt
    SCOPE = "scope"  # the task scope a session's risky calls are held to (or why it has none)
    GAP = "audit.gap"  # monitor mode: events that could not be recorded while the store was down
    IDENTITY = "identity"  # a request refused because its credential did not prove its agent


@dataclass(frozen=True)
class NewEvent:
    """An event as a session produces it; the store adds its place in the chains."""

    event_id: str
    ts_us: int
    session_id: str
    kind: str
    agent: str | None
    user_id: str | None
    tenant: str | None
    tool: str | None
    parent_id: str | None
    verdict: str | None
    data: str  # canonical JSON of the event's details (already redacted)


@dataclass(frozen=True)
class AuditEvent(NewEvent):
    """An event as stored: with its row id, its place in the session and its hashes."""

    id: int
    seq: int
    prev_hash: str  # hash of the session's previous event
    log_prev: str  # hash of the log's previous event, whatever its session
    hash: str

    @property
    def details(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data)
        return loaded

    def as_dict(self) -> dict[str, Any]:
        """The event for export: every stored field, details parsed."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "data"}
        out["details"] = self.details
        return out


def counted_call(event: NewEvent) -> tuple[str, str] | None:
    """(agent, tool) if this event let a tool call proceed, which counts toward limits."""
    if event.agent is None or event.tool is None:
        return None
    if event.kind == Kind.TOOL_DECISION:
        details = json.loads(event.data)
        if details.get("allowed"):
            return event.agent, event.tool
    elif event.kind == Kind.APPROVAL and event.verdict == "allow":
        return event.agent, event.tool
    return None


def untrusted_output(event: NewEvent) -> str | None:
    """The tool's name if this event brought untrusted content into the session."""
    if event.kind == Kind.TOOL_RESULT and event.tool is not None and json.loads(event.data).get("untrusted"):
        return event.tool
    return None


def read_values(event: NewEvent) -> tuple[list[str], bool]:
    """The fingerprints of the values an event brought into the session, and whether that
    content read like instructions to the agent."""
    if event.kind not in (Kind.TOOL_RESULT, Kind.INPUT, Kind.MODEL_REQUEST):
        return [], False
    details = json.loads(event.data)
    return details.get("values") or [], bool(details.get("instructions"))


#: the events whose data classes a session has then seen (a call's arguments are what it sends)
_SEEN = (Kind.TOOL_RESULT, Kind.INPUT, Kind.MODEL_REQUEST, Kind.MODEL_RESPONSE)


def read_labels(event: NewEvent) -> list[str]:
    """The data classes of the content an event brought into the session."""
    if event.kind not in _SEEN:
        return []
    labels: list[str] = json.loads(event.data).get("labels") or []
    return labels
