"""Decision latency of ``before_tool`` on a large policy, against trivial baselines.

Policy: 50 agents x 20 tools, every tool granted to every agent, 200 of the grants carrying a
CEL condition on arguments and session state, plus two global rules. Reported: the decision
alone (what `before_tool` does before the audit write: argument conversion, plan lookup,
conditions, limits) and the full `before_tool` with its durable SQLite audit write.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _timing import latencies_us, summary

from tether.core import AuditStore, Guard, load_policy
from tether.core.decision import decide
from tether.core.expr import compile_condition, engine, evaluate
from tether.core.state import SessionState
from tether.core.values import to_plain

AGENTS, TOOLS, CONDITIONED_PER_AGENT = 50, 20, 4
CONDITIONS = [
    'args.to.endsWith("@acme.example") && args.amount <= 100 && !session.tainted',
    "args.amount <= 500",
    'args.path.startsWith("/srv/data/") && !args.path.contains("..")',
    'session.tool_calls.size() < 30 && args.to != "ceo@acme.example"',
]


def build_policy() -> dict[str, object]:
    tools = {f"tool{t}": {"effects": ["external" if t % 5 == 0 else "read"]} for t in range(TOOLS)}
    agents = {}
    for a in range(AGENTS):
        grants: dict[str, object] = {f"tool{t}": "allow" for t in range(TOOLS)}
        for t in range(CONDITIONED_PER_AGENT):
            grants[f"tool{t}"] = {"when": CONDITIONS[t % len(CONDITIONS)]}
        agents[f"agent{a}"] = {
            "purpose": "bench",
            "owner": "bench@acme.example",
            "tools": grants,
            "limits": {"max_calls": 1_000_000_000, "rate": "1000000000/min"},
        }
    rules = [
        {
            "id": "ext-after-untrusted",
            "effects": ["external"],
            "when": "session.tainted",
            "action": "ask",
            "reason": "r",
        },
        {"id": "no-delete", "tools": ["tool19"], "when": 'args.mode == "delete"', "action": "deny", "reason": "r"},
    ]
    return {"version": 1, "tools": tools, "agents": agents, "rules": rules}


def main() -> None:
    compiled = load_policy(build_policy())
    conditions = sum(1 for a in compiled.policy.agents.values() for g in a.tools.values() if g.when)
    state = SessionState("bench", rate_window=compiled.rate_window)
    args = {
        "to": "bob@acme.example",
        "amount": 42,
        "path": "/srv/data/report.csv",
        "mode": "read",
        "body": "Hello Bob,\n" + "lorem ipsum " * 40,
    }
    rng = random.Random(1)
    calls = [(f"agent{rng.randrange(AGENTS)}", f"tool{rng.randrange(TOOLS)}") for _ in range(1024)]
    cond_calls = [(f"agent{rng.randrange(AGENTS)}", f"tool{rng.randrange(CONDITIONED_PER_AGENT)}") for _ in range(1024)]
    for agent, tool in calls + cond_calls:  # build every plan once, as a running process would have
        compiled.plan(agent, tool)

    def decision(pairs: list[tuple[str, str]]) -> object:
        it = iter(range(10**12))

        def one() -> object:
            agent, tool = pairs[next(it) % len(pairs)]
            return decide(compiled, state, agent, tool, to_plain(args), now=1.0)

        return one

    def bare() -> None:
        pass

    table = {"k": 1}
    one = compile_condition("args.amount <= 500")
    rows = [
        ("bare Python function call", latencies_us(bare, 200_000)),
        ("dict lookup", latencies_us(lambda: table["k"], 200_000)),
        (
            "one CEL condition alone (`args.amount <= 500`)",
            latencies_us(lambda: evaluate(one, {"args": {"amount": 42}}), 50_000),
        ),
        ("decision, random agent x tool (1 in 5 conditioned)", latencies_us(decision(calls), 50_000)),
        ("decision, conditioned grants only", latencies_us(decision(cond_calls), 50_000)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        guard = Guard(compiled, store=AuditStore(f"sqlite:///{tmp}/bench.db", key=b"k" * 32))
        session = guard.session("agent1", "bench")
        rows.append(
            (
                "before_tool with durable SQLite audit write (conditioned)",
                latencies_us(lambda: session.before_tool("tool0", args), 5_000),
            )
        )
        guard.close()

    base = summary(rows[0][1])[0]
    print(
        f"Policy: {AGENTS} agents x {TOOLS} tools, {conditions} conditions + 2 rules; "
        f"CEL runtime: {engine().name}; Python {sys.version.split()[0]}\n"
    )
    print("| operation | median µs | p99 µs | median / bare call |")
    print("|---|---:|---:|---:|")
    for name, values in rows:
        median, p99 = summary(values)
        print(f"| {name} | {median:.2f} | {p99:.2f} | {median / base:.0f}x |")


if __name__ == "__main__":
    main()
