"""What Tether adds to an AG2 1.x agent's tool call, against AG2's own cost, in the same run.

One sample is one ``Agent.ask`` on a fresh conversation with AG2's scripted test model: the
model calls a no-op tool, reads its result and answers (two model calls, one tool call). The
same agent runs unguarded, guarded for tool calls only (``record_model=False``), and fully
guarded (tool calls and model calls recorded), each on a durable SQLite audit. Rounds
alternate between the three so machine noise hits them alike; reported are medians over rounds
of each round's median.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ag2 import Agent
from ag2 import __version__ as ag2_version
from ag2.events import ToolCallEvent
from ag2.testing import TestConfig

sys.path.insert(0, str(Path(__file__).parent))

from _timing import summary

from tether.ag2 import TetherMiddleware
from tether.core import AuditStore, Guard

POLICY = {
    "version": 1,
    "tools": {"noop": {"effects": ["read"]}},
    "agents": {
        "bench": {
            "purpose": "benchmark",
            "owner": "bench@acme.example",
            "tools": {"noop": "allow"},
            "limits": {"max_calls": 1_000_000_000, "rate": "1000000000/min"},
        }
    },
}


def noop(x: int) -> str:
    """Do nothing."""
    return "ok"


def make_agent(middleware: list[Any], name: str = "bench") -> Agent:
    config = TestConfig(ToolCallEvent("noop", arguments='{"x": 1}'), "done")
    return Agent(name, config=config, tools=[noop], middleware=middleware)


#: what a sample measures: wall time, or the CPU time of the whole process (all its threads),
#: which a machine shared with other work disturbs far less
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}
clock = CLOCKS["wall"]


async def one_round(agent: Agent, n: int) -> float:
    """Median time of ``n`` asks, in microseconds (GC paused, as it is a noise source)."""
    gc.collect()
    gc.disable()
    try:
        times = []
        for _ in range(n):
            start = clock()
            await agent.ask("go")
            times.append((clock() - start) / 1000)
        return statistics.median(times)
    finally:
        gc.enable()


async def run(rounds: int, n: int, store_dir: str) -> dict[str, list[float]]:
    guard = Guard(POLICY, store=AuditStore(f"sqlite:///{store_dir}/bench.db", key=b"k" * 32))
    agents = {
        "AG2 alone": make_agent([], name="unguarded"),  # a name no policy knows, so Tether leaves it alone
        "with Tether: tool calls": make_agent([TetherMiddleware(guard, session_id="a", record_model=False)]),
        "with Tether: tool + model calls": make_agent([TetherMiddleware(guard, session_id="b")]),
        "with Tether: tool + model calls, a new session per ask": make_agent([TetherMiddleware(guard)]),
    }
    for agent in agents.values():  # warm up: imports, plans, the audit's first session
        for _ in range(50):
            await agent.ask("go")
    results: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(rounds):
        for name, agent in agents.items():
            results[name].append(await one_round(agent, n))
    results.update(await core_parts(guard, n * rounds))
    guard.close()
    return results


async def core_parts(guard: Guard, n: int) -> dict[str, list[float]]:
    """The core's share, timed the same way in the same run: what the middleware awaits per tool call."""
    session = guard.session("bench", "parts")
    decision = session.before_tool("noop", {"x": 1})

    async def timed(make: Any) -> list[float]:
        times = []
        for _ in range(n):
            start = clock()
            await make()
            times.append((clock() - start) / 1000)
        return times

    return {
        "core: abefore_tool (decision, durable write, in a worker thread)": await timed(
            lambda: session.abefore_tool("noop", {"x": 1})
        ),
        "core: aafter_tool (output preview, durable write, in a worker thread)": await timed(
            lambda: session.aafter_tool(decision, "ok")
        ),
        "a worker-thread hop alone (asyncio.to_thread of a no-op)": await timed(lambda: asyncio.to_thread(int)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("-n", type=int, default=60, help="asks per round")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what a sample measures")
    options = parser.parse_args()
    global clock
    clock = CLOCKS[options.clock]
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run(options.rounds, options.n, tmp))
    base = results["AG2 alone"]
    print(
        f"AG2 {ag2_version}, Python {sys.version.split()[0]}; {options.rounds} rounds x {options.n} asks "
        f"(one tool call and two model calls each), {options.clock} clock\n"
    )
    print("| configuration | median µs per ask | range of round medians | added µs | ratio (range) |")
    print("|---|---:|---:|---:|---:|")
    parts = {name: values for name, values in results.items() if len(values) != len(base)}
    for name, medians in results.items():
        if name in parts:
            continue
        median = statistics.median(medians)
        spread = f"{min(medians):.0f}–{max(medians):.0f}"
        added = statistics.median(m - b for m, b in zip(medians, base, strict=True))
        ratios = [m / b for m, b in zip(medians, base, strict=True)]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        print(f"| {name} | {median:.0f} | {spread} | {added:+.0f} | {ratio} |")
    print("\n| part of a guarded tool call | median µs | p99 µs |")
    print("|---|---:|---:|")
    for name, values in parts.items():
        median, p99 = summary(values)
        print(f"| {name} | {median:.0f} | {p99:.0f} |")


if __name__ == "__main__":
    main()
