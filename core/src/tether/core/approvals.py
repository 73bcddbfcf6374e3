"""Human breakpoints: asking a person whether a call may run.

A session hands an :class:`ApprovalRequest` to an :class:`Approver` and waits for its answer;
no answer within the policy's timeout is a denial. Any object with ``request_approval`` can be
an approver: a terminal prompt, a queue other processes answer, a chat integration.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO


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


@dataclass(frozen=True)
class ApprovalAnswer:
    approved: bool
    approver: str  # who decided
    comment: str = ""
    args: Mapping[str, Any] | None = None  # edited arguments to run with instead, if any


class Approver(Protocol):
    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        """Block until a person answers; ``None`` once ``request.timeout`` has passed."""


class ConsoleApprover:
    """Asks at the terminal. Without a terminal to ask at, waits out the timeout (a denial)."""

    def __init__(
        self, stdin: TextIO | None = None, stdout: TextIO | None = None, interactive: bool | None = None
    ) -> None:
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stderr
        self._interactive = interactive

    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        out = self._out
        out.write(f"\n  Approval needed: {request.agent} wants to call {request.tool}\n")
        out.write(f"    arguments: {request.args_preview}\n    why Tether asks: {request.reason}\n")
        interactive = self._interactive if self._interactive is not None else _is_tty(self._in)
        if not interactive:
            out.write(f"    no terminal to ask at; an unanswered request is denied after {request.timeout:g}s\n")
            out.flush()
            threading.Event().wait(request.timeout)
            return None
        out.write(f"    approve? [y/N] (denied after {request.timeout:g}s) ")
        out.flush()
        line = _read_line(self._in, request.timeout)
        if line is None:
            out.write("\n")
            return None
        who = os.environ.get("USER") or os.environ.get("USERNAME") or "console"
        return ApprovalAnswer(line.strip().lower() in ("y", "yes"), approver=f"{who} (terminal)")


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read_line(stream: TextIO, timeout: float) -> str | None:
    """A line from ``stream``, or None after ``timeout`` seconds."""
    try:
        ready, _, _ = select.select([stream], [], [], timeout)
        return stream.readline() if ready else None
    except (OSError, ValueError, TypeError):  # no select() on this stream (Windows consoles)
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0] if result else None
