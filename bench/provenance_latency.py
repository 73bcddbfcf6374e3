"""What provenance checks add to ``before_tool``: a session that has read 100 tool outputs of
2 KB each (half of them untrusted), then a risky call whose arguments must be traced.

Reported against the same call in the same run with the tool not risky (so no protection
runs), both on the decision alone and on the full ``before_tool`` with its durable audit write.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _corpus import corpus
from _timing import latencies_us, summary

from tether.core import AuditStore, Guard
from tether.core.protect import check_call
from tether.core.values import to_plain

OUTPUTS, OUTPUT_SIZE = 100, 2048


def policy(risky: bool) -> dict[str, object]:
    return {
        "version": 1,
        "tools": {
            "read_doc": {"effects": ["read"], "output": "untrusted"},
            "lookup": {"effects": ["read"]},
            "send_email": {"effects": ["external"] if risky else ["read"], "accepts": ["pii"]},
        },
        "agents": {
            "bot": {
                "purpose": "bench",
                "owner": "bench@acme.example",
                "tools": {"read_doc": "allow", "lookup": "allow", "send_email": "allow"},
            }
        },
    }


def prepared_session(store: AuditStore, risky: bool, name: str) -> object:
    session = Guard(policy(risky), store=store).session("bot", name)
    session.trusted_input("Summarise the contracts and email the summary to legal@acme.example")
    text = corpus(OUTPUTS * OUTPUT_SIZE, seed=3)
    for i in range(OUTPUTS):
        tool = "read_doc" if i % 2 else "lookup"
        session.after_tool(session.before_tool(tool, {"id": i}), text[i * OUTPUT_SIZE : (i + 1) * OUTPUT_SIZE])
    return session


def main() -> None:
    args = {
        "to": "legal@acme.example",
        "subject": "Contract summary for ticket 4411",
        "body": "Hello,\n"
        + " ".join(random.Random(5).choice(["terms", "renewal", "party", "clause"]) for _ in range(60)),
    }
    with tempfile.TemporaryDirectory() as folder:
        store = AuditStore(f"sqlite:///{folder}/bench.db")
        risky, plain = prepared_session(store, True, "risky"), prepared_session(store, False, "plain")
        guard = risky.guard  # type: ignore[attr-defined]
        state = risky._state  # type: ignore[attr-defined]
        arguments = to_plain(args)
        rows = {
            "provenance + egress check alone": latencies_us(
                lambda: check_call(guard.policy, state, "send_email", arguments, frozenset({"pii"}), store.key), 3000
            ),
            "before_tool, risky tool (checks run)": latencies_us(lambda: risky.before_tool("send_email", args), 1500),  # type: ignore[attr-defined]
            "before_tool, same tool not risky (baseline)": latencies_us(
                lambda: plain.before_tool("send_email", args), 1500
            ),  # type: ignore[attr-defined]
        }
        store.close()
    indexed = len(state.untrusted_values)
    print(f"session: {OUTPUTS} prior outputs of {OUTPUT_SIZE} bytes, {indexed} untrusted values indexed\n")
    print("| measurement | median µs | p99 µs |\n|---|---:|---:|")
    for name, values in rows.items():
        median, p99 = summary(values)
        print(f"| {name} | {median:.1f} | {p99:.1f} |")
    added = (
        summary(rows["before_tool, risky tool (checks run)"])[0]
        - summary(rows["before_tool, same tool not risky (baseline)"])[0]
    )
    print(f"\nmedian added to before_tool: {added:.1f} µs")


if __name__ == "__main__":
    main()
