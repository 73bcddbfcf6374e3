"""What Tether adds to an AgentChat tool call: one ``AssistantAgent.run`` with a replayed model
response proposing one no-op tool call, plain and guarded, interleaved in one run.

    pip install ./core ./adapters/autogen autogen-agentchat autogen-ext
    python bench/autogen_agentchat_overhead.py
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from autogen_agentchat.agents import AssistantAgent
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import CreateResult, ModelInfo, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient

from tether.autogen.agentchat import register_guard
from tether.core import AuditStore, Guard

ROUNDS, PER_ROUND = 7, 200
INFO = ModelInfo(vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False)
POLICY = {
    "version": 1,
    "tools": {"noop": {"effects": ["read"]}},
    "agents": {"bench": {"purpose": "bench", "owner": "bench@example.org", "tools": {"noop": "allow"}}},
}


async def noop(value: int) -> str:
    """Do nothing."""
    return "ok"


def proposal() -> CreateResult:
    call = FunctionCall(id="c1", name="noop", arguments='{"value": 1}')
    return CreateResult(content=[call], finish_reason="function_calls", usage=RequestUsage(0, 0), cached=False)


def make_agent(guard: Guard | None) -> AssistantAgent:
    client = ReplayChatCompletionClient([proposal() for _ in range(ROUNDS * PER_ROUND + 100)], model_info=INFO)
    agent = AssistantAgent("bench", model_client=client, tools=[noop])
    if guard is not None:
        register_guard(agent, guard, session_id="bench")
    return agent


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """No guard registered in the process (Tether decides every call once one is): the baseline."""
    from tether.autogen import agentchat

    saved = getattr(agentchat, "_latest", None)
    agentchat._latest = None
    try:
        yield
    finally:
        agentchat._latest = saved


async def per_call_us(agent: AssistantAgent, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await agent.run(task="go")
        await agent.on_reset(CancellationToken())  # a fresh conversation each time
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = AuditStore(f"sqlite:///{Path(folder) / 'bench.db'}")
        plain, guarded = make_agent(None), make_agent(Guard(POLICY, store=store))
        with unguarded():
            await per_call_us(plain, 50)
        await per_call_us(guarded, 50)  # warm up both
        ratios, plain_us, guarded_us = [], [], []
        for _ in range(ROUNDS):
            with unguarded():
                p = await per_call_us(plain, PER_ROUND)
            g = await per_call_us(guarded, PER_ROUND)
            plain_us.append(p)
            guarded_us.append(g)
            ratios.append(g / p)
        store.close()
    print(f"autogen-agentchat, {ROUNDS} rounds x {PER_ROUND} runs, each run one model response and one tool call\n")
    print("| configuration | median µs per run |\n|---|---:|")
    print(f"| AgentChat alone | {statistics.median(plain_us):.0f} |")
    print(f"| with Tether (model request, response, decision, result recorded) | {statistics.median(guarded_us):.0f} |")
    print(
        f"\nratio guarded / plain: median {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
