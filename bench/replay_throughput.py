"""`tether replay` throughput: events/s and memory over a large recorded audit.

Template sessions are recorded by a real guard (user request, reads of trusted and untrusted
tools, emails, refunds, approvals), then copied under new session and event ids until the audit
holds the requested number of events (the store hash-chains every copy, as it would any write).
The replay re-decides everything under a stricter policy, verifying each event's hash. Memory
is the process's resident set size, sampled as the replay goes: flat means it does not grow
with the events read.

    python bench/replay_throughput.py [--events 1000000] [--postgres postgresql+psycopg://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from dataclasses import replace
from typing import Any

from tether.core import AuditStore, Guard
from tether.core.audit import NewEvent
from tether.core.policy import load_policy
from tether.core.replay import Replayer, Summary, recorded

KEY = b"bench-replay-key-0123456789abcdef"
TOOLS = {
    "search": {"effects": ["read"]},
    "read_inbox": {"effects": ["read"], "output": "untrusted", "data": ["pii"]},
    "send_email": {"effects": ["external"]},
    "refund": {"effects": ["money", "irreversible"]},
}
RECORDED: dict[str, Any] = {
    "version": 1,
    "tools": TOOLS,
    "agents": {
        "bot": {
            "purpose": "support",
            "owner": "team@acme.example",
            "tools": {
                "search": "allow",
                "read_inbox": "allow",
                "send_email": {"when": 'args.to.endsWith("@acme.example")'},
                "refund": {"when": "args.amount <= 500", "ask": "args.amount > 100"},
            },
        }
    },
}
STRICTER: dict[str, Any] = {
    **RECORDED,
    "agents": {"bot": {**RECORDED["agents"]["bot"], "limits": {"max_calls": 12, "rate": "30/min"}}},
    "rules": [
        {
            "id": "mail-after-inbox",
            "effects": ["external"],
            "when": "session.tainted",
            "action": "ask",
            "reason": "external action after reading the inbox",
        },
        {"id": "small-refunds", "tools": ["refund"], "when": "args.amount > 50", "action": "ask", "reason": "refund"},
    ],
}


def templates(url: str, sessions: int = 20) -> list[NewEvent]:
    """Sessions recorded by a real guard, as the events it wrote."""
    store = AuditStore(url, key=KEY)
    with Guard(RECORDED, store=store) as guard:
        for n in range(sessions):
            s = guard.session("bot", f"template-{n}", user=f"user{n}@example.com", tenant="acme")
            s.trusted_input(f"Please refund order {n} and tell bob@acme.example")
            for i in range(6):
                d = s.before_tool("search", {"q": f"order {n} item {i}", "limit": 10})
                s.after_tool(d, {"hits": [f"order {n}", f"item {i}", "paid by card"]})
            d = s.before_tool("read_inbox", {"folder": "support"})
            s.after_tool(d, f"From jane{n}@example.com: refund order {n}, 80 EUR to NL91ABNA0417164300")
            for to in ("bob@acme.example", "jane@example.com"):
                d = s.before_tool("send_email", {"to": to, "subject": "refund", "body": "Your refund is on its way."})
                if d.allowed:
                    s.after_tool(d, "sent")
            d = s.before_tool("refund", {"order": str(n), "amount": 80 + 40 * (n % 3)})
            d = s.settle(d, None) if d.needs_approval else d
            if d.allowed:
                s.after_tool(d, "refunded")
        events = [e for e in store.events()]
    store.close()
    return [NewEvent(*(getattr(e, f) for f in NewEvent.__dataclass_fields__)) for e in events]


def fill(url: str, template: list[NewEvent], total: int) -> int:
    """Copy the template under fresh ids until the store holds ``total`` events."""
    store = AuditStore(url, key=KEY)
    written, copy = 0, 0
    batch: list[NewEvent] = []
    while written < total:
        prefix = f"{copy:08x}"
        for e in template:
            batch.append(
                replace(
                    e,
                    event_id=prefix + e.event_id[8:],
                    session_id=f"{e.session_id}-{copy}",
                    parent_id=prefix + e.parent_id[8:] if e.parent_id else None,
                    ts_us=e.ts_us + copy * 60_000_000,
                )
            )
        written += len(template)
        copy += 1
        if len(batch) >= 20_000 or written >= total:
            store.append(batch)
            batch = []
    store.close()
    return written


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(url: str, verify: bool) -> dict[str, Any]:
    store = AuditStore(url, key=KEY, create=False)
    replayer = Replayer(load_policy(STRICTER), store, verify=verify)
    summary = Summary()
    samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    cpu = time.process_time()
    for r in replayer.run(recorded(store)):
        summary.add(r)
        if replayer.events >= (len(samples) + 1) * 100_000:
            samples.append((replayer.events, rss_mb()))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    store.close()
    return {
        "events": replayer.events,
        "decisions": summary.decisions,
        "changed": summary.changed,
        "seconds": elapsed,
        "events_s": replayer.events / elapsed,
        "cpu_events_s": replayer.events / cpu,
        "rss": samples,
    }


def row(name: str, m: dict[str, Any]) -> str:
    rss = m["rss"]
    memory = (
        f"{rss[0][1]:.0f} MB at {rss[0][0] // 1000}k → {rss[-1][1]:.0f} MB at {rss[-1][0] // 1000}k" if rss else "-"
    )
    return (
        f"| {name} | {m['events']:,} | {m['decisions']:,} | {m['changed']:,} | {m['seconds']:.1f} s | "
        f"{m['events_s']:,.0f} | {m['cpu_events_s']:,.0f} | {memory} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="also measure on this PostgreSQL URL (a fresh schema is used)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        template = templates(f"sqlite:///{tmp}/template.db")
        targets = [("SQLite", f"sqlite:///{tmp}/audit.db")]
        if args.postgres:
            targets.append(("PostgreSQL", _pg_schema(args.postgres)))
        print(f"template: {len(template)} events in 20 sessions; replay under a stricter policy\n")
        print("| store | events | decisions | would change | time | events/s | events/s of CPU | resident memory |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for name, url in targets:
            fill(url, template, args.events)
            print(row(f"{name}, hashes verified", measure(url, True)), flush=True)
            print(row(f"{name}, not verified", measure(url, False)), flush=True)


def _pg_schema(url: str) -> str:
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


if __name__ == "__main__":
    os.environ.setdefault("TETHER_KEY", KEY.decode())
    main()
