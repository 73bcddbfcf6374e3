"""Audit write throughput: events/s with every event durable before ``append`` returns.

One writer thread appending one event at a time is the worst case (one transaction per
event). Several threads share transactions through group commit, which is how a process
running many agent sessions writes. PostgreSQL is measured when a URL is given.

    python bench/audit_throughput.py [--postgres postgresql+psycopg://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
import uuid

from tether.core import AuditStore
from tether.core.audit import NewEvent, verify
from tether.core.values import canonical_json

DETAILS = canonical_json(
    {
        "call_id": "call_8f2",
        "args": {
            "to": "[email:9a1c]@acme.example",
            "subject": "Quarterly report",
            "body": "Hello Bob, please find the figures below. " * 4,
        },
        "args_fp": "3a7ce219c7a174b7",
        "labels": ["pii"],
        "rule_ids": ["agents.bot.tools.send_email"],
        "reason": "granted by agents.bot.tools.send_email",
        "enforcement": "enforced",
        "allowed": True,
    }
)


def event(session: str) -> NewEvent:
    return NewEvent(
        os.urandom(16).hex(),
        time.time_ns() // 1000,
        session,
        "tool.decision",
        "bot",
        None,
        None,
        "send_email",
        None,
        "allow",
        DETAILS,
    )


def run(store: AuditStore, threads: int, per_thread: int) -> float:
    def work(n: int) -> None:
        session = f"bench-{uuid.uuid4().hex[:8]}-{n}"
        for _ in range(per_thread):
            store.append([event(session)])

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * per_thread / (time.perf_counter() - start)


def measure(name: str, url: str, scale: int) -> list[tuple[str, float]]:
    store = AuditStore(url, key=b"bench-key" * 4)
    rows = [
        (f"{name}, {threads} thread{'s' if threads > 1 else ''}", run(store, threads, scale // threads))
        for threads in (1, 4, 16)
    ]
    report = verify(store.key, store.events())
    assert report.ok, report.problems[:3]
    store.close()
    return rows


def raw_sqlite_baseline(path: str, count: int) -> float:
    """One-row INSERT + COMMIT transactions through the bare sqlite3 module, same table and
    settings: the floor any durable-per-event writer on this machine starts from."""
    store = AuditStore(f"sqlite:///{path}", key=b"bench-key" * 4)
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")
    insert = store._writer._insert
    start = time.perf_counter()
    for seq in range(count):
        e = event("raw")
        db.execute("BEGIN IMMEDIATE")
        db.execute(insert, (e.event_id, e.ts_us, e.session_id, seq, e.kind, e.agent, None, None, e.tool, None,
                            e.verdict, e.data, "0" * 64, "0" * 64, "0" * 64))  # fmt: skip
        db.execute("COMMIT")
    rate = count / (time.perf_counter() - start)
    db.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", help="also measure this PostgreSQL URL (a scratch database)")
    parser.add_argument("--events", type=int, default=20_000)
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(
            ("baseline: bare sqlite3, one-row transactions", raw_sqlite_baseline(f"{tmp}/raw.db", options.events))
        )
        rows += measure("SQLite (WAL)", f"sqlite:///{tmp}/bench.db", options.events)
    if options.postgres:
        rows += measure("PostgreSQL", options.postgres, options.events // 4)
    print(f"{options.events} events of {len(DETAILS)} bytes of details each; every append durable when it returns\n")
    print("| store, writer threads | events/s |")
    print("|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
