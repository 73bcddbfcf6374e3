"""What task scopes and request-aware conditions add to ``before_tool``, in one run.

    python bench/scopes_overhead.py

The same risky call (a payment, after the user's request and one untrusted output) is decided
by four sessions, in interleaved rounds so that machine load falls on all of them alike:

- today: the tool-description policy, no scope;
- scope: the same policy, the session scoped to the payment with a condition on the request;
- request rule: a policy rule reading ``request.given`` and ``request.mentions``, no scope;
- both.

Each ``before_tool`` includes its durable SQLite audit write, as in production. Reported: the
median and p99 of each, and the median added over today's, absolute and as a ratio.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _timing import latencies_us, percentile

from tether.core import AuditStore, Guard

IBAN = "DE89370400440532013000"
TOOLS: dict[str, Any] = {
    "read_inbox": {"effects": ["read"], "output": "untrusted"},
    "send_money": {"effects": ["money", "external"]},
}
RULE = {
    "id": "payment-needs-a-request",
    "tools": ["send_money"],
    "when": "!request.given.recipient || !(request.mentions.pay || request.mentions.transfer)",
    "action": "ask",
    "reason": "a payment the user did not ask for",
}
SCOPE = {"task": "pay the rent", "tools": {"send_money": "request.given.recipient && args.amount <= 1100"}}
ROUNDS, PER_ROUND = 10, 500


def policy(rules: list[dict[str, Any]]) -> dict[str, Any]:
    agent = {"purpose": "bench", "owner": "bench@example.org", "tools": dict.fromkeys(TOOLS, "allow")}
    return {"version": 1, "tools": TOOLS, "agents": {"bank": agent}, "rules": rules}


def prepared(guard: Guard, name: str, scope: Any) -> Any:
    session = guard.session("bank", name, scope=scope)
    session.trusted_input(f"Please pay my rent of 1100 to {IBAN}, thanks. " * 3)
    session.after_tool(session.before_tool("read_inbox", {}), "Your landlord wrote: the rent is unchanged.")
    args = {"recipient": IBAN, "amount": 1100, "subject": "rent"}
    assert session.before_tool("send_money", args).allowed
    return lambda: session.before_tool("send_money", args)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = AuditStore(f"sqlite:///{folder}/audit.db")
        plain, ruled = Guard(policy([]), store=store), Guard(policy([RULE]), store=store)
        calls = {
            "today": prepared(plain, "today", None),
            "scope": prepared(plain, "scope", SCOPE),
            "request rule": prepared(ruled, "rule", None),
            "both": prepared(ruled, "both", SCOPE),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(ROUNDS):
            for name, call in calls.items():
                times[name] += latencies_us(call, PER_ROUND, warmup=20)
        store.close()
    base = statistics.median(times["today"])
    print("| session | median µs | p99 µs | median added | ratio to today |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {percentile(values, 99):.1f} | {median - base:+.1f} | {median / base:.3f} |")
    print(f"\n{ROUNDS} interleaved rounds of {PER_ROUND} calls each, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
