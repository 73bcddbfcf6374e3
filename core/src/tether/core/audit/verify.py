"""Checking the audit's hash chains: which event was edited, deleted or moved."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .chain import GENESIS, event_hash
from .events import AuditEvent


@dataclass(frozen=True)
class Problem:
    kind: str  # "edited", "missing", "reordered"
    message: str
    row_id: int | None = None
    session_id: str | None = None
    seq: int | None = None


@dataclass
class Report:
    events: int = 0
    sessions: int = 0
    head: str = GENESIS  # hash of the newest event: note it elsewhere to detect a cut tail
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(key: bytes, rows: Iterable[AuditEvent]) -> Report:
    """Walk the log oldest first and report every break in either chain."""
    report = Report()
    log_prev = GENESIS
    sessions: dict[str, tuple[int, str]] = {}  # session -> (last seq seen, its hash)
    for event in rows:
        report.events += 1
        where = f"event {event.id} (session {event.session_id!r} #{event.seq}, {event.kind})"
        if event_hash(key, event, event.seq, event.prev_hash, event.log_prev) != event.hash:
            report.problems.append(
                _problem("edited", f"{where} was edited: its content does not match its hash", event)
            )
        if event.log_prev != log_prev:
            report.problems.append(
                _problem("missing", f"the log breaks before {where}: an event before it was deleted or moved", event)
            )
        last_seq, last_hash = sessions.get(event.session_id, (-1, GENESIS))
        if event.seq <= last_seq:
            report.problems.append(
                _problem("reordered", f"{where} comes after #{last_seq} of its session: events were reordered", event)
            )
        elif event.seq > last_seq + 1:
            gone = f"#{last_seq + 1}" if event.seq == last_seq + 2 else f"#{last_seq + 1}..#{event.seq - 1}"
            report.problems.append(_problem("missing", f"session {event.session_id!r} lacks {gone}: deleted", event))
        elif event.prev_hash != last_hash:
            report.problems.append(
                _problem(
                    "edited", f"{where} does not follow #{last_seq} of its session: the chain was rewritten", event
                )
            )
        sessions[event.session_id] = (max(event.seq, last_seq), event.hash)
        log_prev = event.hash
    report.sessions = len(sessions)
    report.head = log_prev
    return report


def _problem(kind: str, message: str, event: AuditEvent) -> Problem:
    return Problem(kind, message, event.id, event.session_id, event.seq)
