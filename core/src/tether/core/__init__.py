"""Tether's framework-neutral core: policy, decisions, sessions, approvals and the audit.

from tether.core import Guard

guard = Guard("policy.yaml")
session = guard.session(agent="support-bot", session_id="ticket-42")
decision = session.before_tool("send_email", {"to": "bob@example.com"})
if decision.needs_approval:
    decision = session.resolve(decision)
if decision.allowed:
    result = send_email(**decision.args)
    session.after_tool(decision, result)
else:
    print(decision.refusal())
"""

from .approvals import ApprovalAnswer, ApprovalRequest, Approver, ConsoleApprover, Unanswered
from .approvals.queue import ApprovalError, ApprovalQueue, QueueApprover
from .audit import AuditEvent, AuditStore
from .credentials import Credential, Credentials, IdentityError
from .decision import Decision, Enforcement, ToolCall
from .errors import PolicyError, PolicyIssue, StoreError, TetherError, ToolDenied, UnsupportedValueError
from .guard import Guard, ModelRequest, Session
from .policy import (
    CompiledPolicy,
    Effect,
    Mode,
    Policy,
    Trust,
    Verdict,
    compile_policy,
    load_policy,
    mcp_tool,
    parse_policy,
    read_policy,
)

__all__ = [
    "ApprovalAnswer",
    "ApprovalError",
    "ApprovalQueue",
    "ApprovalRequest",
    "Approver",
    "AuditEvent",
    "AuditStore",
    "CompiledPolicy",
    "ConsoleApprover",
    "Credential",
    "Credentials",
    "Decision",
    "Effect",
    "Enforcement",
    "Guard",
    "IdentityError",
    "Mode",
    "ModelRequest",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "QueueApprover",
    "Session",
    "StoreError",
    "TetherError",
    "ToolCall",
    "ToolDenied",
    "Trust",
    "Unanswered",
    "UnsupportedValueError",
    "Verdict",
    "compile_policy",
    "load_policy",
    "mcp_tool",
    "parse_policy",
    "read_policy",
]
