"""Checking the audit's hash chains: which event was edited, deleted or moved, and, against
signed checkpoints of the log's head, whether its newest events were cut, every row wiped, or
the store rolled back to an older copy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .chain import GENESIS, event_hash
from .checkpoints import Checkpoint
from .events import AuditEvent


@dataclass(frozen=True)
class Problem:
    kind: str  # "edited", "missing", "reordered"; against a checkpoint: "truncated", "wiped", "rolled back", "forged"
    message: str
    row_id: int | None = None
    session_id: str | None = None
    seq: int | None = None


@dataclass
class Report:
    events: int = 0
    sessions: int = 0
    head: str = GENESIS  # hash of the newest event
    last_id: int = 0  # its row id
    problems: list[Problem] = field(default_factory=list)
    checkpoints: int = 0  # how many checkpoints the log was checked against
    content_checked: bool = True  # False without the key: links and checkpoints only

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    key: bytes | None,
    rows: Iterable[AuditEvent],
    checkpoints: Sequence[Checkpoint] = (),
    *,
    public_key: str | None = None,
) -> Report:
    """Walk the log oldest first and report every break in either chain, and every checkpoint
    whose head the log does not reach. Checkpoints are checked with ``key``, and with the Ed25519
    ``public_key`` (hex) when given. Without ``key`` (an auditor holding an export and a public
    key), events' contents cannot be checked: only the links between them and the checkpoints."""
    report = Report(checkpoints=len(checkpoints), content_checked=key is not None)
    log_prev = GENESIS
    sessions: dict[str, tuple[int, str]] = {}  # session -> (last seq seen, its hash)
    heads = {c.last_id: c for c in checkpoints if c.last_id}
    reached: set[int] = set()
    for event in rows:
        report.events += 1
        report.last_id = event.id
        if event.id in heads:
            reached.add(event.id)
            if heads[event.id].head != event.hash:
                report.problems.append(_diverged(heads[event.id], event))
        where = f"event {event.id} (session {event.session_id!r} #{event.seq}, {event.kind})"
        if key is not None and event_hash(key, event, event.seq, event.prev_hash, event.log_prev) != event.hash:
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
    for checkpoint in checkpoints:
        report.problems += _against(key, public_key, checkpoint, report, reached)
    return report


def verify_session(key: bytes, rows: Iterable[AuditEvent]) -> Report:
    """Check one session's events (oldest first) on their own: each event's content against its
    hash, and the session's chain for gaps and rewrites. The log's chain across sessions, and
    checkpoints against truncation, need the whole log: :func:`verify`."""
    report = Report(sessions=1)
    last_seq, last_hash = -1, GENESIS
    for event in rows:
        report.events += 1
        report.last_id, report.head = event.id, event.hash
        where = f"event #{event.seq} ({event.kind})"
        if event_hash(key, event, event.seq, event.prev_hash, event.log_prev) != event.hash:
            report.problems.append(
                _problem("edited", f"{where} was edited: its content does not match its hash", event)
            )
        if event.seq != last_seq + 1:
            report.problems.append(_problem("missing", f"{where} follows #{last_seq}: events are missing", event))
        elif event.prev_hash != last_hash:
            report.problems.append(_problem("edited", f"{where} does not follow #{last_seq}: rewritten", event))
        last_seq, last_hash = event.seq, event.hash
    return report


def _against(
    key: bytes | None, public_key: str | None, checkpoint: Checkpoint, report: Report, reached: set[int]
) -> list[Problem]:
    """What the log lacks that ``checkpoint`` recorded."""
    made = f"the checkpoint of {checkpoint.when()}"
    if key is not None and not checkpoint.authentic(key):
        return [Problem("forged", f"{made} does not verify with this store's key: forged, or of another store")]
    if public_key is not None and not checkpoint.signed_by(public_key):
        return [Problem("forged", f"{made} does not carry a valid signature by the given public key")]
    if key is None and public_key is None:
        return [Problem("forged", f"{made} cannot be checked without the store's key or a public key")]
    if not checkpoint.last_id or checkpoint.last_id in reached:
        return []
    recorded = f"{made} recorded the log up to event {checkpoint.last_id} (hash {checkpoint.head[:16]}…)"
    if report.events == 0:
        return [Problem("wiped", f"the log is empty, but {recorded}: every event was deleted")]
    if report.last_id < checkpoint.last_id:
        return [
            Problem(
                "truncated",
                f"the log ends at event {report.last_id}, but {recorded}: its newest events were cut, "
                "or the store was restored from an older copy",
            )
        ]
    return [
        Problem(
            "rolled back",
            f"event {checkpoint.last_id}, the head of the log {made} recorded, is gone though later events "
            "follow: the log was cut or rolled back to an older copy, then written again",
        )
    ]


def _diverged(checkpoint: Checkpoint, event: AuditEvent) -> Problem:
    return Problem(
        "rolled back",
        f"event {event.id} is not the event the checkpoint of {checkpoint.when()} recorded there: the log was "
        "cut or rolled back to an older copy and written again from that point",
        event.id,
        event.session_id,
        event.seq,
    )


def _problem(kind: str, message: str, event: AuditEvent) -> Problem:
    return Problem(kind, message, event.id, event.session_id, event.seq)
