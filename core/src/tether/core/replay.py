"""Replay: what a new policy would have decided on the sessions the audit recorded.

Each recorded session is walked in order. Its state (counts, taint, values read, labels,
sequence progress) is rebuilt as the new policy would have left it, and every tool decision is
made again by :func:`tether.core.ruling.rule_on`, the function the live guard uses. Recorded
outputs are taken in only for calls the new policy lets run; a call it would now ask about runs
only if the audit holds a person's answer to it. Nothing runs and nothing is written.

What the audit cannot tell, the replay says rather than guesses: a call the new policy allows
that never ran has no recorded output, and arguments are decided as the audit shows them
(secrets and personal data masked, long strings cut), so such decisions are marked approximate.
Sessions are read one at a time, in order, so memory stays flat however long the audit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from .audit.chain import GENESIS, event_hash
from .audit.events import AuditEvent, Kind
from .audit.schema import events as events_table
from .audit.store import AuditStore
from .audit.verify import Problem
from .behaviour import Behaviour
from .decision import ERROR_RULE, Ruling
from .errors import StoreError
from .policy.compile import CompiledPolicy
from .policy.schema import Mode, Trust, Verdict
from .ruling import rule_on
from .state import SessionState
from .wording import count

_RUNS = (Verdict.ALLOW, Verdict.REDACT)


@dataclass(frozen=True)
class Redecision:
    """One recorded tool decision and the new policy's decision on the same call."""

    event: AuditEvent
    before: str  # the recorded verdict
    before_rules: tuple[str, ...]
    after: Ruling
    approximate: str = ""  # why a live run under the new policy might have decided otherwise

    @property
    def changed(self) -> bool:
        return self.before != self.after.verdict.value

    @property
    def change(self) -> str:
        return f"{self.before} -> {self.after.verdict.value}"

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules the change is due to: the new ones when it got stricter, else the old ones."""
        return (
            self.after.rule_ids
            if _strictness(self.after.verdict.value) > _strictness(self.before)
            else self.before_rules
        )

    def as_dict(self) -> dict[str, Any]:
        e = self.event
        return {
            "event_id": e.event_id,
            "session_id": e.session_id,
            "seq": e.seq,
            "ts_us": e.ts_us,
            "agent": e.agent,
            "tool": e.tool,
            "args": json.loads(e.data).get("args"),
            "before": {"verdict": self.before, "rule_ids": list(self.before_rules)},
            "after": {
                "verdict": self.after.verdict.value,
                "rule_ids": list(self.after.rule_ids),
                "reason": self.after.reason,
            },
            "approximate": self.approximate or None,
        }


def _arg_values(details: dict[str, Any]) -> dict[str, str] | None:
    """The recorded fingerprints of a call's argument values (fingerprint -> how to show it);
    none when the guard had no need to record them (the session had read no tool output yet);
    ``None`` for an audit written before they were recorded (worked out from the preview)."""
    if "arg_values" not in details:
        return None
    return {fp: f"[value {fp[:12]}]" for fp in details["arg_values"] or ()}


def _never_ran(session: _Session, event: AuditEvent) -> None:
    """The new policy runs a call that did not run: what it would have returned is unknown."""
    if not session.unknown:
        session.unknown = f"call {event.seq} ({event.tool}) now runs but never ran: its output is unknown"


def _where(event: AuditEvent) -> str:
    return f"event {event.id} (session {event.session_id!r} #{event.seq}, {event.kind})"


def _strictness(verdict: str) -> int:
    return {"allow": 0, "redact": 1, "ask": 2, "deny": 3}.get(verdict, 3)


class CorruptAudit(Exception):
    """Replay met an event that does not verify and was told to stop."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass
class _Session:
    id: str
    state: SessionState
    ran: dict[str, bool] = field(default_factory=dict)  # decision/approval event id -> ran under the new policy
    asked: set[str] = field(default_factory=set)  # decisions the new policy asks about
    unrun: dict[str, AuditEvent] = field(default_factory=dict)  # now allowed, recorded asking: did a person approve?
    unknown: str = ""  # why later decisions of this session are approximate
    seq: int = -1
    prev_hash: str = GENESIS
    broken: bool = False


class Replayer:
    """Re-decides recorded sessions under ``policy``. ``verify``: check each event's hash and
    its place in its session first; ``stop_on_corrupt``: raise :class:`CorruptAudit` at the
    first that fails (else its session's remaining events are skipped)."""

    def __init__(
        self, policy: CompiledPolicy, store: AuditStore, *, verify: bool = True, stop_on_corrupt: bool = False
    ) -> None:
        self.policy = policy
        self.store = store
        self.behaviour = Behaviour(policy, store)
        self.monitored = policy.mode is Mode.MONITOR
        self.verify = verify
        self.stop_on_corrupt = stop_on_corrupt
        self.problems: list[Problem] = []
        self.events = 0
        self.sessions = 0
        self.skipped = 0  # events not replayed because their session's chain broke before them

    def run(self, events: Iterable[AuditEvent]) -> Iterator[Redecision]:
        """Events grouped by session, each session's in order (as :func:`recorded` reads them)."""
        session: _Session | None = None
        for event in events:
            self.events += 1
            if session is None or event.session_id != session.id:
                session = self._start(event.session_id)
            if self.verify and not self._verifies(session, event):
                continue
            redecision = self._take(session, event)
            if redecision is not None:
                yield redecision

    def _start(self, session_id: str) -> _Session:
        self.sessions += 1
        policy = self.policy
        return _Session(
            session_id, SessionState(session_id, rate_window=policy.rate_window, sequences=policy.sequences)
        )

    def _verifies(self, session: _Session, event: AuditEvent) -> bool:
        """Whether ``event`` carries its own hash and follows the one before it in its session.
        After a break the rest of the session is not replayed: its state would be a guess."""
        if session.broken:
            self.skipped += 1
            return False
        problem = None
        if event_hash(self.store.key, event, event.seq, event.prev_hash, event.log_prev) != event.hash:
            problem = Problem("edited", f"{_where(event)} was edited: its content does not match its hash")
        elif event.seq != session.seq + 1:
            problem = Problem("missing", f"{_where(event)} follows #{session.seq} of its session: events are missing")
        elif event.prev_hash != session.prev_hash:
            problem = Problem("edited", f"{_where(event)} does not follow #{session.seq}: the chain was rewritten")
        session.seq, session.prev_hash = event.seq, event.hash
        if problem is None:
            return True
        problem = replace(problem, row_id=event.id, session_id=event.session_id, seq=event.seq)
        self.problems.append(problem)
        if self.stop_on_corrupt:
            raise CorruptAudit(problem)
        session.broken = True
        self.skipped += 1
        return False

    def _take(self, session: _Session, event: AuditEvent) -> Redecision | None:
        kind = event.kind
        if kind in (Kind.SESSION, Kind.APPROVAL_ANSWER):
            return None
        details: dict[str, Any] = json.loads(event.data)
        state = session.state
        if kind == Kind.TOOL_DECISION:
            return self._decide(session, event, details)
        if kind == Kind.APPROVAL:
            self._answer(session, event)
        elif kind == Kind.TOOL_RESULT:
            self._output(session, event, details)
        elif kind in (Kind.INPUT, Kind.MODEL_REQUEST):
            state.record_values(details.get("values") or (), None)
            state.labels.update(details.get("labels") or ())
        elif kind == Kind.MODEL_RESPONSE:
            state.labels.update(details.get("labels") or ())
        return None

    def _decide(self, session: _Session, event: AuditEvent, details: dict[str, Any]) -> Redecision:
        before_rules = tuple(details.get("rule_ids") or ())
        before = event.verdict or "deny"
        args = details.get("args")
        approximate = session.unknown
        findings: list[str] = []
        if not isinstance(args, dict) or (ERROR_RULE in before_rules and details.get("error")):
            # Tether failed live (or could not read the arguments): the audit holds no call to decide on
            ruling = Ruling(Verdict(before), details.get("reason") or "", before_rules)
            approximate = approximate or "Tether failed while deciding live: not decided again"
        else:
            arg_values = _arg_values(details)
            if arg_values is None and session.state.untrusted_values:
                approximate = approximate or "recorded before argument values were fingerprinted"
            labels = frozenset(details.get("labels") or ())
            ruling, findings, _ = rule_on(
                self.policy,
                self.behaviour,
                session.state,
                event.agent or "",
                event.tool or "",
                args,
                labels,
                event.ts_us / 1e6,
                user=event.user_id,
                tenant=event.tenant,
                arg_values=arg_values,
            )
            if not approximate and _PARTIAL.search(event.data) is not None:
                approximate = "decided on the audit's preview of the arguments (masked or cut)"
        runs = self.monitored or ruling.verdict in _RUNS
        state = session.state
        if state.history is not None:  # sequence rules follow the calls as the new policy decided them
            seen = event if ruling.verdict.value == event.verdict else replace(event, verdict=ruling.verdict.value)
            state.observe(seen, {"labels": details.get("labels"), "allowed": runs, "findings": findings})
        if runs:
            state.record_call(event.agent or "", event.tool or "", event.ts_us / 1e6)
            if before == "ask" and not details.get("allowed"):
                session.unrun[event.event_id] = event  # it ran if a person approved it: known from the answer
            elif not details.get("allowed"):
                _never_ran(session, event)
        elif ruling.verdict is Verdict.ASK:
            session.asked.add(event.event_id)
        session.ran[event.event_id] = runs
        return Redecision(event, before, before_rules, ruling, approximate)

    def _answer(self, session: _Session, event: AuditEvent) -> None:
        """A person's recorded answer counts only if the new policy asks the same question."""
        decision = event.parent_id or ""
        asked = session.unrun.pop(decision, None)
        if asked is not None and event.verdict != "allow":
            _never_ran(session, asked)
        if decision not in session.asked:
            session.ran[event.event_id] = session.ran.get(decision, False)
            return
        runs = event.verdict == "allow"
        session.state.observe(event)
        if runs:
            session.state.record_call(event.agent or "", event.tool or "", event.ts_us / 1e6)
        session.ran[event.event_id] = session.ran[decision] = runs

    def _output(self, session: _Session, event: AuditEvent, details: dict[str, Any]) -> None:
        if not session.ran.get(event.parent_id or "", True):
            return  # the new policy would not have run the call: it returned nothing
        spec = self.policy.policy.tools.get(event.tool or "")
        untrusted = spec is None or spec.output is Trust.UNTRUSTED
        state = session.state
        state.observe(event, {**details, "untrusted": untrusted})
        source = (event.tool or "", event.event_id)
        if untrusted:
            state.record_untrusted(*source)
        state.record_values(details.get("values") or (), source if untrusted else None)
        if untrusted and details.get("instructions"):
            state.instructions.append(source)
        state.labels.update(details.get("labels") or ())


#: what only a preview writes, so the decided arguments differ from the real ones: a masked value
#: ([email:0123456789abcdef]@host, [card:…1234:0123456789abcdef]) or a cut string (…[300 chars])
_PARTIAL = re.compile(r"\[[a-z_]+:(?:…\d{4}:)?[0-9a-f]{16}\]|…\[\d+ chars\]|<\d+ bytes [0-9a-f]{16}>|<nested too deep")


def recorded(
    store: AuditStore,
    *,
    since_us: int | None = None,
    agent: str | None = None,
    session_id: str | None = None,
) -> Iterator[AuditEvent]:
    """The events of the selected sessions, session by session, each in order. A session is
    selected whole (its earlier events make its state) if any of its events is recent enough."""
    table = events_table
    query = sa.select(table)
    if session_id is not None:
        query = query.where(table.c.session_id == session_id)
    if since_us is not None:
        recent = sa.select(table.c.session_id).where(table.c.ts_us >= since_us)
        query = query.where(table.c.session_id.in_(recent))
    if agent is not None:
        acting = sa.select(table.c.session_id).where(table.c.agent == agent)
        query = query.where(table.c.session_id.in_(acting))
    return _stream(store, query.order_by(table.c.session_id, table.c.seq))


_FIELDS = tuple(AuditEvent.__dataclass_fields__)  # the dataclass's own order: rows build events positionally


def _stream(store: AuditStore, query: Any) -> Iterator[AuditEvent]:
    """Rows as events, streamed (a server-side cursor on PostgreSQL): memory stays flat."""
    columns = [events_table.c[name] for name in _FIELDS]
    query = query.with_only_columns(*columns)
    try:
        with store.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=5000).execute(query)
            for row in result:
                yield AuditEvent(*row)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read the audit store {store.location}: {exc}") from exc


@dataclass
class Group:
    """Changed decisions alike in how they changed and the rules they changed by."""

    change: str
    rules: tuple[str, ...]
    count: int = 0
    approximate: int = 0
    examples: list[Redecision] = field(default_factory=list)


class Summary:
    """What would change, grouped by change and rule, with counts and a few examples each
    (bounded by the number of groups, not of decisions)."""

    def __init__(self, examples: int = 3, agent: str | None = None) -> None:
        self.examples = examples
        self.agent = agent
        self.decisions = 0
        self.changed = 0
        self.groups: dict[tuple[str, tuple[str, ...]], Group] = {}

    def add(self, redecision: Redecision) -> bool:
        """Count one redecision; whether it is one the summary reports (changed, of the agent)."""
        if self.agent is not None and redecision.event.agent != self.agent:
            return False
        self.decisions += 1
        if not redecision.changed:
            return False
        self.changed += 1
        key = (redecision.change, redecision.rules)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(*key)
        group.count += 1
        group.approximate += bool(redecision.approximate)
        if len(group.examples) < self.examples:
            group.examples.append(redecision)
        return True

    def lines(self, replayer: Replayer) -> list[str]:
        out = [
            f"replayed {count(self.decisions, 'decision')} "
            f"({count(replayer.events, 'event')}, {count(replayer.sessions, 'session')}): {self.changed} would change"
        ]
        for group in sorted(self.groups.values(), key=lambda g: (-g.count, g.change, g.rules)):
            rules = ", ".join(group.rules) or "-"
            note = f" ({group.approximate} approximate)" if group.approximate else ""
            out.append(f"  {group.change:<14} {group.count:>6}  by {rules}{note}")
            for r in group.examples:
                e = r.event
                args = json.dumps(json.loads(e.data).get("args"), ensure_ascii=False)
                args = args if len(args) <= 80 else args[:79] + "…"
                out.append(f"      {e.session_id} #{e.seq} {e.agent} {e.tool} {args}")
                out.append(
                    f"        now: {r.after.reason}" + (f" [approximate: {r.approximate}]" if r.approximate else "")
                )
        for problem in replayer.problems:
            out.append(f"audit problem: {problem.message}")
        if replayer.skipped:
            out.append(f"{count(replayer.skipped, 'event')} not replayed: their session's chain broke before them")
        return out
