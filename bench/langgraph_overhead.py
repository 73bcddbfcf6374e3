"""What Tether adds to a LangGraph tool call: one graph with a no-op tool, with and without Tether.

The graph is a single ToolNode fed a state whose last AI message proposes one call to a no-op
tool, so each ``invoke`` is one tool call through LangGraph's own machinery (Pregel loop,
channels, ToolNode, tool callbacks). The guarded graph wraps the same ToolNode with
``Tether.wrap_tool_call``: a decision with its durable SQLite audit write, then the result
recorded with ``after_tool`` (a second durable write). Calls alternate between the two graphs
one by one, so machine noise hits both alike; reported are per-call medians over all calls and,
per repetition, the ratio of the two medians.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _timing import latencies_us, summary
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from tether.core import AuditStore, Guard, Session
from tether.langgraph import Tether

POLICY = {
    "version": 1,
    "tools": {"noop": {"effects": ["read"]}},
    "agents": {"bench": {"purpose": "bench", "owner": "bench@acme.example", "tools": {"noop": "allow"}}},
}
REPS, CALLS = int(os.environ.get("BENCH_REPS", 7)), 400


def graph(tether: Tether | None) -> Any:
    """The graph, with a tool of its own: a tool a guarded ToolNode holds is guarded wherever it runs."""

    @tool
    def noop(x: int) -> str:
        """Do nothing."""
        return "ok"

    wrap = {"wrap_tool_call": tether.wrap_tool_call} if tether else {}
    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode([noop], **wrap))
    builder.add_edge(START, "tools")
    builder.add_edge("tools", END)
    return builder.compile()


def timed_session_methods() -> dict[str, list[float]]:
    """Record the wall time of each before_tool / after_tool call (the two durable audit writes)."""
    times: dict[str, list[float]] = {"before_tool": [], "after_tool": []}
    for name, out in times.items():
        original = getattr(Session, name)

        def timed(self: Session, *args: Any, _original: Any = original, _out: list[float] = out, **kw: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return _original(self, *args, **kw)
            finally:
                _out.append((time.perf_counter_ns() - start) / 1000)

        setattr(Session, name, timed)
    return times


def on_new_threads(call: Any, repeat: int) -> list[float]:
    """Wall time of ``call`` run on a thread started for it, as ToolNode's per-invocation pool does."""
    out: list[float] = []

    def timed() -> None:
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1000)

    for _ in range(repeat):
        thread = threading.Thread(target=timed)
        thread.start()
        thread.join()
    return out


def alternating(a: Any, b: Any, calls: int) -> tuple[list[float], list[float]]:
    """Per-call wall times of ``a`` and ``b``, called in turns (GC paused, as in _timing)."""
    for _ in range(30):
        a(), b()
    gc.collect()
    gc.disable()
    try:
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(calls):
            for out, call in zip(times, (a, b), strict=True):
                start = time.perf_counter_ns()
                call()
                out.append((time.perf_counter_ns() - start) / 1000)
        return times
    finally:
        gc.enable()


def main() -> None:
    state = {"messages": [AIMessage("", tool_calls=[{"name": "noop", "args": {"x": 1}, "id": "c1"}])]}
    config = {"configurable": {"thread_id": "bench"}}
    with tempfile.TemporaryDirectory() as tmp:
        guard = Guard(POLICY, store=AuditStore(f"sqlite:///{tmp}/bench.db", key=b"k" * 32))
        plain, guarded = graph(None), graph(Tether(guard, agent="bench"))
        inside = timed_session_methods()
        session = guard.session("bench", "bench-parts")
        runs: dict[str, list[float]] = {"plain": [], "guarded": []}
        for _ in range(REPS):
            pair = alternating(lambda: plain.invoke(state, config), lambda: guarded.invoke(state, config), CALLS)
            runs["plain"] += pair[0]
            runs["guarded"] += pair[1]
        parts = {f"of which {name}, inside the graph": list(values) for name, values in inside.items()}
        decision = session.before_tool("noop", {"x": 1})
        parts["before_tool alone, outside the graph"] = latencies_us(
            lambda: session.before_tool("noop", {"x": 1}), 2000
        )
        parts["after_tool alone, outside the graph"] = latencies_us(lambda: session.after_tool(decision, "ok"), 2000)
        parts["before_tool alone, each on a new thread (as a sync ToolNode runs it)"] = on_new_threads(
            lambda: session.before_tool("noop", {"x": 1}), 1000
        )
        guard.close()

    base, _ = summary(runs["plain"])
    python = sys.version.split()[0]
    print(f"One-node LangGraph graph, one no-op tool call per invoke; {REPS} x {CALLS} calls each; Python {python}\n")
    print("| per tool call | median µs | p99 µs | ratio to plain |")
    print("|---|---:|---:|---:|")
    for name, values in [("LangGraph alone", runs["plain"]), ("LangGraph + Tether", runs["guarded"])]:
        median, p99 = summary(values)
        print(f"| {name} | {median:.0f} | {p99:.0f} | {median / base:.3f} |")
    for name, values in parts.items():
        median, p99 = summary(values)
        print(f"| {name} | {median:.0f} | {p99:.0f} | {median / base:.3f} |")
    per_rep = [
        statistics.median(runs["guarded"][i * CALLS : (i + 1) * CALLS])
        / statistics.median(runs["plain"][i * CALLS : (i + 1) * CALLS])
        for i in range(REPS)
    ]
    print(f"\nratio per repetition: {', '.join(f'{r:.3f}' for r in per_rep)}")


if __name__ == "__main__":
    main()
