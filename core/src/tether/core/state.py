"""What Tether remembers about a session: call counts, recent call times, taint.

The audit log is the source of truth; this is its summary in memory. A session reopened in a
new process (a resumed graph, a restarted worker) is rebuilt from its audit events, so limits
and taint survive restarts without a second store to keep in step.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .request import TrustedRequest
from .sequences import History, SequenceProgram


@dataclass
class _Calls:
    count: int = 0
    times: deque[float] = field(default_factory=deque)


class SessionState:
    """One session's counters, shared by every agent acting in it. Guard it with ``lock``."""

    def __init__(
        self, session_id: str, *, rate_window: int = 0, sequences: SequenceProgram | None = None, key: bytes = b""
    ) -> None:
        self.id = session_id
        self.lock = threading.RLock()
        self.events = 0  # events written so far (0: the session is new)
        self.seq = -1  # the seq of the newest event this process knows of (-1: none)
        self.conflicts = 0  # writes lost in a row to other processes writing to the session
        self.outputs = 0  # tool outputs the session has read
        self.tainted_by: list[str] = []  # untrusted tools whose output entered the session
        self._untrusted: list[tuple[str, str]] = []  # (tool, audit event) for each such output
        self.labels: set[str] = set()
        # provenance: keyed fingerprints of the values the session has read, by trust
        self.trusted_values: set[str] = set()
        self.untrusted_values: dict[str, tuple[str, str]] = {}  # fingerprint -> (tool, audit event)
        self.instructions: list[tuple[str, str]] = []  # untrusted outputs that address the agent
        self.request = TrustedRequest(key)  # what the people the agent serves asked (request.py)
        self.scope: Any = None  # the task's scope (scopes.Scope), once set
        self.scope_event: dict[str, Any] | None = None  # the latest scope event read back from the audit
        self._rate_window = rate_window
        self._calls: dict[tuple[str, str | None], _Calls] = {}
        self.history = History(sequences) if sequences is not None else None  # for sequence rules and anomalies

    def _entry(self, agent: str, tool: str | None) -> _Calls:
        entry = self._calls.get((agent, tool))
        if entry is None:
            entry = self._calls[(agent, tool)] = _Calls(times=deque(maxlen=self._rate_window))
        return entry

    def calls(self, agent: str, tool: str | None = None) -> int:
        """Calls made by ``agent`` (of ``tool``, if given) in this session."""
        entry = self._calls.get((agent, tool))
        return entry.count if entry else 0

    def nth_latest(self, agent: str, tool: str | None, n: int) -> float | None:
        """When the ``n``-th most recent counted call happened, if there were ``n``."""
        entry = self._calls.get((agent, tool))
        if entry is None or len(entry.times) < n:
            return None
        return entry.times[-n]

    def record_call(self, agent: str, tool: str, at: float) -> None:
        for key in (None, tool):
            entry = self._entry(agent, key)
            entry.count += 1
            if self._rate_window:
                entry.times.append(at)

    def record_untrusted(self, tool: str, event_id: str | None = None) -> None:
        if tool not in self.tainted_by:
            self.tainted_by.append(tool)
        if event_id is not None:
            self._untrusted.append((tool, event_id))

    def record_values(self, fingerprints: Iterable[str], source: tuple[str, str] | None) -> None:
        """Values read from ``source`` ((tool, event) of an untrusted output), or trusted (None)."""
        if source is None:
            self.trusted_values.update(fingerprints)
        else:
            for fp in fingerprints:
                self.untrusted_values.setdefault(fp, source)

    def untrusted_sources(self, last: int = 20) -> list[tuple[str, str]]:
        """The most recent untrusted outputs: (tool, audit event id)."""
        return self._untrusted[-last:]

    def cel_value(
        self, agent: str, user: str | None, tenant: str | None, fields: frozenset[str] | None = None
    ) -> dict[str, Any]:
        """The ``session`` variable conditions see: only ``fields``, if given."""
        names = _SESSION_FIELDS if fields is None else fields
        return {name: _SESSION_FIELDS[name](self, agent, user, tenant) for name in names}

    def observe(self, event: Any, details: Any = None) -> None:
        """Take in an event just written (``details``: its details, to save parsing them again)."""
        if self.history is not None:
            self.history.observe(event, details)

    def replay(self, events: Iterable[Any]) -> None:
        """Rebuild from this session's audit events, oldest first."""
        from .audit.events import Kind, counted_call, read_labels, read_values, untrusted_output

        for event in events:
            self.events += 1
            self.seq = max(self.seq, event.seq)
            call = counted_call(event)
            if call is not None:
                self.record_call(call[0], call[1], event.ts_us / 1e6)
            if event.kind == Kind.TOOL_RESULT:
                self.outputs += 1
            tool = untrusted_output(event)
            if tool is not None:
                self.record_untrusted(tool, event.event_id)
            values, instructions = read_values(event)
            if values:
                self.record_values(values, (tool, event.event_id) if tool is not None else None)
            if instructions and tool is not None:
                self.instructions.append((tool, event.event_id))
            self.labels.update(read_labels(event))
            self._replay_request(event)
            self.observe(event)

    def _replay_request(self, event: Any) -> None:
        from .audit.events import Kind
        from .provenance import trusted_parts
        from .request import as_request_text

        if event.kind == Kind.SCOPE:
            if not event.details.get("error"):  # a refused scope left the one before in force
                self.scope_event = event.details
        elif event.kind in (Kind.INPUT, Kind.MODEL_REQUEST):
            details = event.details
            if event.kind == Kind.INPUT:
                content = details.get("content")
            else:
                content = list(trusted_parts(details.get("messages")))
            self.request.add(as_request_text(content), details.get("given") or ())


_SESSION_FIELDS: dict[str, Callable[[SessionState, str, str | None, str | None], Any]] = {
    "id": lambda state, agent, user, tenant: state.id,
    "user": lambda state, agent, user, tenant: user or "",
    "tenant": lambda state, agent, user, tenant: tenant or "",
    "calls": lambda state, agent, user, tenant: state.calls(agent),
    "tool_calls": lambda state, agent, user, tenant: {
        t: e.count for (a, t), e in state._calls.items() if a == agent and t is not None
    },
    "tainted": lambda state, agent, user, tenant: bool(state.tainted_by),
    "tainted_by": lambda state, agent, user, tenant: list(state.tainted_by),
    "labels": lambda state, agent, user, tenant: sorted(state.labels),
}
