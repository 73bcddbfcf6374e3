"""The sessions the decision API holds: in memory, keyed by id, each bound to the agent whose
credential opened it, with the decisions an agent may still report results for.

A call that needs approval is put in the store's approval queue (answered by people from
``tether approvals`` or the web page, which authenticate apart from agents) and waited on in a
worker thread; the agent polls its decision until it is settled.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from ..approvals import ApprovalAnswer, ApprovalRequest
from ..approvals.queue import QueueApprover
from ..decision import Decision
from ..guard import Session

MAX_SESSIONS = 10_000  # the oldest untouched session is dropped past this; its agent opens another
MAX_DECISIONS = 1_000  # decisions per session an agent may still report results for or poll
MAX_PENDING = 256  # approvals waited on at once, across sessions; past it a call needing one is denied


class Pending:
    """A decision waiting for a person's answer, settled in a worker thread."""

    def __init__(
        self, session: Session, decision: Decision, approver: QueueApprover, slots: threading.BoundedSemaphore
    ) -> None:
        self.decision = decision
        self._slots = slots  # acquired by the caller: released once settled
        self.approval_id: str | None = None
        self.final: Decision | None = None
        self._queued = threading.Event()
        self._approver = approver
        self._session = session
        threading.Thread(target=self._settle, name="tether-approval", daemon=True).start()

    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        entry, _ = self._approver.queue.submit(request)  # the approver finds this entry again
        self.approval_id = entry.id
        self._queued.set()
        return self._approver.request_approval(request)

    def _settle(self) -> None:
        try:
            self.final = self._session.resolve(self.decision, approver=self)
        finally:
            self._queued.set()
            self._slots.release()

    def queued(self, timeout: float) -> None:
        """Wait until the request is in the queue (or settled)."""
        self._queued.wait(timeout)

    @property
    def current(self) -> Decision:
        return self.final or self.decision


@dataclass
class Held:
    session: Session
    tenant: str | None
    decisions: OrderedDict[str, Decision | Pending] = field(default_factory=OrderedDict)

    @property
    def agent(self) -> str:
        return self.session.agent

    def keep(self, decision_id: str, decision: Decision | Pending) -> None:
        self.decisions[decision_id] = decision
        if len(self.decisions) > MAX_DECISIONS:
            self.decisions.popitem(last=False)

    def decision(self, decision_id: str) -> Decision | Pending | None:
        return self.decisions.get(decision_id)


class Sessions:
    """Open sessions by id, the least recently used dropped past :data:`MAX_SESSIONS`."""

    def __init__(self) -> None:
        self._held: OrderedDict[str, Held] = OrderedDict()
        self._lock = threading.Lock()
        self.pending = threading.BoundedSemaphore(MAX_PENDING)

    def add(self, held: Held) -> None:
        with self._lock:
            self._held[held.session.id] = held
            if len(self._held) > MAX_SESSIONS:
                self._held.popitem(last=False)

    def get(self, session_id: str) -> Held | None:
        with self._lock:
            held = self._held.get(session_id)
            if held is not None:
                self._held.move_to_end(session_id)
            return held

    def close(self, session_id: str) -> None:
        with self._lock:
            self._held.pop(session_id, None)
