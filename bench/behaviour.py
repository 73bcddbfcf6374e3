"""What sequence rules and baseline checks add to a decision, and how long learning takes.

    python bench/behaviour.py                   # decisions, then learning from 1,000,000 events
    python bench/behaviour.py --events 100000   # a quicker learning run

Decisions: one agent, 20 tools (4 external), the same grants and protections in both policies;
one of them adds 50 sequence rules (single- and multi-step, negative, windows by calls, time and
session, carried values, conditions) and anomaly checks against a baseline the session conforms
to. A *decision* is what ``before_tool`` does before its audit write (the policy's ruling, the
protections) plus, with behaviour on, the sequence and baseline checks and the advance of the
session's state machines on the call. Sessions rebuilt from 10, 1,000 and 10,000 events, each
measured against the decision without behaviour in the same run; calls drawn from all tools,
and from the external tools only (those most rules target).

Learning: ``learn_from_store`` over a SQLite store holding the given number of events (tool
decisions, approvals and results of generated sessions), timed from reading to saving."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).parent))

from _timing import latencies_us, summary

from tether.core import AuditStore, load_policy
from tether.core.audit.events import Kind, NewEvent
from tether.core.baselines import Baseline, destinations, learn_from_store, save_baselines
from tether.core.behaviour import Behaviour
from tether.core.decision import decide
from tether.core.protect import check_call, stricter
from tether.core.provenance import fingerprints
from tether.core.redact import preview
from tether.core.state import SessionState
from tether.core.values import canonical_json

KEY = b"k" * 32
AGENT = "agent"
EFFECTS = ["read", "read", "write", "external", "read"]
TOOLS = {
    f"tool{t}": {
        "effects": [EFFECTS[t % 5]] + (["money"] if t == 18 else []),
        "output": "untrusted" if t % 4 == 1 else "trusted",
        "data": ["pii"] if t % 3 == 0 else [],
    }
    for t in range(20)
}
EXTERNAL = [t for t, spec in TOOLS.items() if "external" in spec["effects"]]


def sequence_rules() -> list[dict[str, Any]]:
    rng = random.Random(7)
    names = list(TOOLS)
    rules: list[dict[str, Any]] = []
    for i in range(50):
        kind = i % 5
        rule: dict[str, Any] = {"id": f"seq{i}", "reason": f"sequence {i}", "action": "ask"}
        if kind == 0:  # personal data then a send, within some calls
            rule |= {"after": [{"data": "pii"}], "then": {"tools": rng.choice(EXTERNAL)}, "within": "10 calls"}
        elif kind == 1:  # untrusted output, then a read, then a write or send, within a time
            rule |= {
                "after": [{"output": "untrusted"}, {"tools": rng.choice(names)}],
                "then": {"effects": rng.choice(["write", "external"])},
                "within": "30m",
            }
        elif kind == 2:  # a send without a prior lookup in the session
            rule |= {"without": [{"tools": rng.choice(names)}], "then": {"tools": rng.choice(EXTERNAL)}}
        elif kind == 3:  # a recipient taken from an untrusted output
            rule |= {
                "after": [{"tools": rng.choice([n for n, s in TOOLS.items() if s["output"] == "untrusted"])}],
                "then": {"tools": rng.choice(EXTERNAL), "carries": ["to"]},
                "within": "20 calls",
            }
        else:  # a step on a tool, then a conditioned call of another
            rule |= {
                "after": [{"tools": rng.choice(names)}],
                "then": {"tools": rng.choice(names), "when": "args.amount > 100"},
                "within": "session",
            }
        rules.append(rule)
    return rules


def policy(behaviour: bool) -> Any:
    agent = {"purpose": "bench", "owner": "bench@acme.example", "tools": dict.fromkeys(TOOLS, "allow")}
    document: dict[str, Any] = {"version": 1, "tools": TOOLS, "agents": {AGENT: agent}}
    if behaviour:
        document["sequences"] = sequence_rules()
        document["anomalies"] = {"new_tool": "ask", "new_destination": "ask", "volume": "allow", "burst": "allow"}
    return load_policy(document)


def history(length: int, rng: random.Random) -> list[NewEvent]:
    """A session's events: decisions let through, each followed by its result."""
    out: list[NewEvent] = []
    ts = 1_000_000.0
    while len(out) < length:
        tool = rng.choice(list(TOOLS))
        ts += rng.choice([0.5, 2, 10])
        labels = ["pii"] if rng.random() < 0.2 else []
        decision = {"allowed": True, "labels": labels, "findings": None}
        out.append(_event(len(out), ts, Kind.TOOL_DECISION, tool, "allow", decision))
        values = sorted(fingerprints(KEY, {f"user{rng.randrange(500)}@example.com", f"doc-{rng.randrange(99)}"}))
        result = {"labels": labels, "untrusted": TOOLS[tool]["output"] == "untrusted", "values": values}
        out.append(_event(len(out), ts + 0.1, Kind.TOOL_RESULT, tool, None, result))
    return out[:length]


def _event(n: int, ts: float, kind: str, tool: str, verdict: str | None, details: dict[str, Any]) -> NewEvent:
    return NewEvent(f"e{n}", int(ts * 1e6), "bench", kind, AGENT, None, None, tool, None, verdict, json.dumps(details))


def decisions(store: AuditStore, length: int, repeat: int, tools: list[str]) -> dict[str, list[float]]:
    """Latencies of decisions on ``tools`` (cycled) in a session ``length`` events long, without and
    with behaviour, and of advancing on a tool output."""
    events = history(length, random.Random(length))
    without, with_ = Measured(policy(False), store, events), Measured(policy(True), store, events)
    output = Measured(policy(True), store, events)
    return {
        "without": latencies_us(lambda: without.decide(tools), repeat),
        "with": latencies_us(lambda: with_.decide(tools, behaviour=True), repeat),
        "output": latencies_us(lambda: output.output(tools), repeat),
    }


class Measured:
    """One policy deciding in one session rebuilt from ``events``."""

    ARGS: ClassVar[dict[str, Any]] = {"to": "user7@example.com", "amount": 42, "body": "Hello,\n" + "lorem ipsum " * 20}

    def __init__(self, compiled: Any, store: AuditStore, events: list[NewEvent]) -> None:
        self.compiled, self.behaviour = compiled, Behaviour(compiled, store)
        self.state = SessionState("bench", rate_window=compiled.rate_window, sequences=compiled.sequences)
        self.state.replay(events)
        self.now = events[-1].ts_us / 1e6 + 1 if events else 1e6
        self.labels = preview(self.ARGS, KEY).labels
        self.n = 0
        # the decision's audit event and details exist in before_tool anyway: built here once per tool
        stamp = int(self.now * 1e6)
        self.written = {
            tool: (
                NewEvent("b", stamp, "s", Kind.TOOL_DECISION, AGENT, None, None, tool, None, "allow", ""),
                {"allowed": True, "labels": sorted(self.labels), "findings": None},
            )
            for tool in TOOLS
        }
        values = sorted(fingerprints(KEY, {f"user{i}@example.com" for i in range(20)}))
        self.results = {
            tool: (
                NewEvent("r", stamp, "s", Kind.TOOL_RESULT, AGENT, None, None, tool, None, None, ""),
                {"labels": ["pii"], "untrusted": spec["output"] == "untrusted", "values": values},
            )
            for tool, spec in TOOLS.items()
        }

    def decide(self, tools: list[str], behaviour: bool = False) -> object:
        self.n += 1
        tool = tools[self.n % len(tools)]
        ruling = decide(self.compiled, self.state, AGENT, tool, self.ARGS, now=self.now)
        protection, _ = check_call(self.compiled, self.state, tool, self.ARGS, self.labels, KEY)
        ruling = stricter(ruling, protection)
        if behaviour:
            ruling = self.behaviour.rule_on(ruling, self.state, AGENT, tool, self.ARGS, self.labels, self.now)[0]
            self.state.observe(*self.written[tool])  # the call is let through: the state machines advance on it
        return ruling

    def output(self, tools: list[str]) -> None:
        self.n += 1
        self.state.observe(*self.results[tools[self.n % len(tools)]])


def steady_baseline(now_us: int) -> Baseline:
    """An agent whose learned sessions look like the benchmark's: no decision departs from it."""
    named = [d.address for d in destinations({"to": "user7@example.com"}, KEY)]
    return Baseline(
        AGENT,
        "",
        100,
        now_us,
        0,
        now_us,
        5_000,
        9_000,
        20_000,
        10_000,
        dict.fromkeys(TOOLS, 1),
        frozenset(named),
        frozenset(),
    )


def generated_store(url: str, count: int) -> None:
    """``count`` events of generated sessions: decisions (some asked, then answered) and results."""
    rng = random.Random(1)
    store = AuditStore(url, key=KEY)
    batch: list[NewEvent] = []
    written, session = 0, 0
    ts = 1_700_000_000.0
    while written < count:
        session += 1
        agent = f"agent{session % 10}"
        sid = f"s{session}"
        for call in range(rng.randrange(3, 30)):
            ts += rng.random() * 5
            tool = f"tool{rng.randrange(20)}"
            eid = f"{session}-{call}"
            asked = rng.random() < 0.05
            details = {
                "allowed": not asked,
                "labels": [],
                "args": {"to": "[email]"},
                "destinations": [[f"a{rng.randrange(200)}", f"d{rng.randrange(20)}"]] if rng.random() < 0.3 else None,
            }
            batch.append(_row(eid, ts, sid, Kind.TOOL_DECISION, agent, tool, "ask" if asked else "allow", details))
            if asked:
                batch.append(_row(eid + "a", ts + 1, sid, Kind.APPROVAL, agent, tool, "allow", {}, parent=eid))
            batch.append(_row(eid + "r", ts + 2, sid, Kind.TOOL_RESULT, agent, tool, None, {"output": "ok"}))
        if len(batch) >= 5000:
            store.append(batch)
            written += len(batch)
            batch = []
    if batch:
        store.append(batch)
    store.close()


def _row(
    eid: str,
    ts: float,
    sid: str,
    kind: str,
    agent: str,
    tool: str,
    verdict: str | None,
    details: dict[str, Any],
    parent: str | None = None,
) -> NewEvent:
    return NewEvent(eid, int(ts * 1e6), sid, kind, agent, None, None, tool, parent, verdict, canonical_json(details))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to learn from (0: skip learning)")
    parser.add_argument("--repeat", type=int, default=20_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = AuditStore(f"sqlite:///{folder}/bench.db", key=KEY)
        save_baselines(store, [steady_baseline(int(time.time() * 1e6))])
        mixed = [random.Random(5).choice(list(TOOLS)) for _ in range(1024)]
        rows = []
        for label, tools in (("all tools, mixed", mixed), ("external tools only", EXTERNAL)):
            for length in (10, 1_000, 10_000):
                measured = decisions(store, length, options.repeat, tools)
                rows.append((label, length, measured["without"], measured["with"], measured["output"]))
        store.close()
    compiled = policy(True)
    assert compiled.sequences is not None
    targeted = {t: len(compiled.sequences.candidates(AGENT, t, frozenset({"pii"}))) for t in EXTERNAL}
    print(f"50 sequence rules; rules whose attempted call can be each external tool: {targeted}\n")
    print(
        "| calls decided | session length | decision without (median / p99 µs) "
        "| with 50 sequences + baseline (median / p99 µs) | added µs (median) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, length, without, with_, _ in rows:
        (m0, p0), (m1, p1) = summary(without), summary(with_)
        print(f"| {label} | {length:,} | {m0:.2f} / {p0:.2f} | {m1:.2f} / {p1:.2f} | {m1 - m0:.2f} | {m1 / m0:.2f}x |")
    print("\nadvancing the state machines on a tool output (after_tool), median / p99 µs:")
    for label, length, _, _, output in rows:
        print(f"- {label}, session of {length:,} events: {summary(output)[0]:.2f} / {summary(output)[1]:.2f}")
    if options.events:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/learn.db"
            started = time.perf_counter()
            generated_store(url, options.events)
            wrote = time.perf_counter() - started
            store = AuditStore(url, key=KEY)
            started = time.perf_counter()
            baselines = learn_from_store(store)
            took = time.perf_counter() - started
            store.close()
        print(
            f"\nlearning from {options.events:,} events: {took:.1f} s ({options.events / took:,.0f} events/s), "
            f"{len(baselines)} baselines; writing them took {wrote:.1f} s"
        )


if __name__ == "__main__":
    main()
