"""Asking at the terminal: a standalone approver, and a prompt beside the approval queue."""

from __future__ import annotations

import getpass
import select
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from . import ApprovalAnswer, ApprovalRequest

if TYPE_CHECKING:
    from .queue import ApprovalQueue, Entry


def whoami() -> str:
    """Who is at this terminal, for the record."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "console"


def describe(agent: str, tool: str, args_preview: object, reason: str) -> str:
    return (
        f"\n  Approval needed: {agent} wants to call {tool}\n"
        f"    arguments: {args_preview}\n    why Tether asks: {reason}\n"
    )


class ConsoleApprover:
    """Asks at the terminal. Without a terminal to ask at, waits out the timeout (a denial).

    To let people answer from elsewhere too (the CLI, the web page), use
    :class:`~tether.core.approvals.queue.QueueApprover` with ``prompt=True``.
    """

    def __init__(
        self, stdin: TextIO | None = None, stdout: TextIO | None = None, interactive: bool | None = None
    ) -> None:
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stderr
        self._interactive = interactive

    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        out = self._out
        out.write(describe(request.agent, request.tool, request.args_preview, request.reason))
        interactive = self._interactive if self._interactive is not None else is_tty(self._in)
        if not interactive:
            out.write(f"    no terminal to ask at; an unanswered request is denied after {request.timeout:g}s\n")
            out.flush()
            threading.Event().wait(request.timeout)
            return None
        out.write(f"    approve? [y/N] (denied after {request.timeout:g}s) ")
        out.flush()
        line = read_line(self._in, request.timeout)
        if line is None:
            out.write("\n")
            return None
        return ApprovalAnswer(line.strip().lower() in ("y", "yes"), approver=f"{whoami()} (terminal)")


def ask_in_background(
    queue: ApprovalQueue, entry: Entry, stop: threading.Event, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> None:
    """Prompt at this terminal while the queue waits; the answer goes into the queue like any
    other, so whichever comes first (here, the CLI, the web page) wins."""
    stream_in, out = stdin or sys.stdin, stdout or sys.stdout
    if not is_tty(stream_in):
        return

    def ask() -> None:
        out.write(f"    approve? [y/N] (request {entry.id}; or answer elsewhere: tether approvals approve {entry.id}) ")
        out.flush()
        while not stop.is_set():
            line = read_line(stream_in, 0.2)
            if line is None:
                continue
            from .queue import ApprovalError

            try:
                queue.answer(entry.id, approved=line.strip().lower() in ("y", "yes"), by=f"{whoami()} (terminal)")
            except ApprovalError as exc:
                out.write(f"    {exc}\n")
            return

    threading.Thread(target=ask, name="tether-approval-prompt", daemon=True).start()


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def read_line(stream: TextIO, timeout: float) -> str | None:
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
