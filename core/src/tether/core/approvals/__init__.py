"""Human breakpoints: asking a person whether a call may run.

A session hands an :class:`ApprovalRequest` to an :class:`Approver` and waits for its answer;
no answer within the policy's timeout is a denial. Any object with ``request_approval`` can be
an approver: a terminal prompt, a queue other processes answer, a chat integration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import TetherError


@dataclass(frozen=True)
class ApprovalRequest:
    """What a person sees: who wants to do what, and why Tether asks."""

    decision_id: str | None  # the audit event of the decision that asked
    agent: str
    session_id: str
    user: str | None
    tenant: str | None
    tool: str
    args_preview: Any  # redacted: safe to show and to log
    reason: str
    rule_ids: tuple[str, ...]
    timeout: float
    call_key: str = ""  # the same call (session, agent, tool, arguments) has the same key
    labels: tuple[str, ...] = ()  # data classes seen in the session so far
    provenance: tuple[Mapping[str, str], ...] = ()  # untrusted content that preceded it: {tool, event_id}
    approvers: frozenset[str] | None = None  # who may answer (None: anyone)
    for_session: bool = False  # whether it may be approved for the rest of the session
    findings: tuple[str, ...] = ()  # what Tether's protections found in the call
    # The real arguments (plain data), for the people who answer: never logged or audited. The
    # queue keeps them encrypted while the request is pending (see approvals/sealed.py).
    args: Any = field(default=None, repr=False, compare=False)


#: How far an approval reaches: this one call, or every call of this tool by this agent in the session.
ONCE, FOR_SESSION = "once", "session"


@dataclass(frozen=True)
class ApprovalAnswer:
    approved: bool
    approver: str  # who decided
    comment: str = ""
    args: Mapping[str, Any] | None = None  # edited arguments to run with instead, if any
    scope: str = ONCE


class Unanswered(TetherError):
    """Raised by an approver that has no answer for a reason other than the timeout: the call is
    denied with this message as the reason."""


class Approver(Protocol):
    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        """Block until a person answers; ``None`` once ``request.timeout`` has passed (or raise
        :class:`Unanswered` saying why there is no answer)."""


from .terminal import ConsoleApprover  # noqa: E402 - it builds on the types above

__all__ = ["FOR_SESSION", "ONCE", "ApprovalAnswer", "ApprovalRequest", "Approver", "ConsoleApprover", "Unanswered"]
