"""What the step guard adds to a CrewAI tool call: a one-agent crew whose scripted model calls one
no-op tool and answers, kicked off plain and guarded, interleaved in one run.

    pip install ./core ./adapters/crewai crewai
    python bench/crewai_overhead.py            # ROUNDS=9 PER_ROUND=20 for more, shorter rounds

Both crews run in one process with Tether installed, so "CrewAI alone" includes the pass-through
cost of Tether's wrappers on a crew nobody guarded.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

os.environ.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TRACING_ENABLED="false")

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool

from tether.core import AuditStore, Guard
from tether.crewai import enable_step_guard

ROUNDS, PER_ROUND = int(os.environ.get("ROUNDS", 5)), int(os.environ.get("PER_ROUND", 40))
POLICY = {
    "version": 1,
    "tools": {"noop": {"effects": ["read"]}},
    "agents": {"worker": {"purpose": "bench", "owner": "bench@example.org", "tools": {"noop": "allow"}}},
}
STEP = 'Thought: call it\nAction: noop\nAction Input: {"value": 1}'


class Scripted(BaseLLM):
    def __init__(self) -> None:
        super().__init__(model="scripted")
        self.turn = 0

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        self.turn += 1
        return STEP if self.turn % 2 else "Thought: done\nFinal Answer: done"

    def supports_function_calling(self) -> bool:
        return False


@tool("noop")
def noop(value: int) -> str:
    """Do nothing."""
    return "ok"


def make_crew() -> Crew:
    agent = Agent(role="worker", goal="g", backstory="b", llm=Scripted(), tools=[noop])
    return Crew(agents=[agent], tasks=[Task(description="go", expected_output="done", agent=agent)], memory=False)


def per_kickoff_us(crew: Crew, n: int) -> tuple[float, float]:
    """Wall-clock and CPU (this process, all its threads) microseconds per kickoff. On a shared
    machine the CPU figure is the steadier one: other processes' load does not count in it."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        crew.kickoff()
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CREWAI_STORAGE_DIR"] = folder
        store = AuditStore(f"sqlite:///{folder}/bench.db")
        plain, guarded = make_crew(), make_crew()
        enable_step_guard(guarded, Guard(POLICY, store=store))
        per_kickoff_us(plain, 5)
        per_kickoff_us(guarded, 5)
        plain_us, guarded_us = [], []
        for _ in range(ROUNDS):
            plain_us.append(per_kickoff_us(plain, PER_ROUND))
            guarded_us.append(per_kickoff_us(guarded, PER_ROUND))
        store.close()
    print(f"crewai, {ROUNDS} rounds x {PER_ROUND} kickoffs, each two model calls and one tool call\n")
    print("| configuration | median µs per kickoff, wall | median µs per kickoff, CPU |\n|---|---:|---:|")
    for name, runs in (("CrewAI alone", plain_us), ("with the step guard", guarded_us)):
        print(f"| {name} | {statistics.median(r[0] for r in runs):.0f} | {statistics.median(r[1] for r in runs):.0f} |")
    print()
    for i, what in enumerate(("wall", "CPU")):
        ratios = [g[i] / p[i] for g, p in zip(guarded_us, plain_us, strict=True)]
        low, high = min(ratios), max(ratios)
        print(f"ratio guarded / plain, {what}: median {statistics.median(ratios):.2f} (rounds {low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
