"""What the MCP gateway adds per tools/call: a no-op tool on a FastMCP server over stdio, called
by the SDK's client directly and through ``tether mcp proxy``, alternating in one run; and
Tether's own part of a call (decide, record the result) measured in process, for comparison.

    pip install -e "./core[mcp]" && python bench/mcp_proxy.py [--calls 300] [--rounds 5]

Prints a Markdown table: median and p99 per call, and the ratio proxy/direct. The proxy's cost
is a second stdio hop (client -> proxy -> server: one more JSON encode/decode and pipe round
trip each way) plus Tether's decision and result record (two audit commits per call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import percentile

SERVER = Path(__file__).resolve().parents[1] / "tests" / "mcp" / "server.py"
POLICY = """
version: 1
tools:
  web/noop: {effects: [read], output: trusted}
agents:
  bench:
    purpose: measure
    owner: bench@acme.example
    tools:
      web/noop: allow
"""


async def per_call_us(params: StdioServerParameters, calls: int) -> list[float]:
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        await client.list_tools()
        for _ in range(20):  # warm up
            await client.call_tool("noop", {})
        out = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            await client.call_tool("noop", {})
            out.append((time.perf_counter_ns() - start) / 1000)
        return out


def tether_alone_us(folder: Path, calls: int) -> list[float]:
    """Tether's own part of a proxied call, in process: the decision and the result, each recorded
    durably, through the async methods the gateway uses (each a hop to a worker thread)."""
    from tether.core import Guard

    guard = Guard(folder / "policy.yaml", store=f"sqlite:///{folder / 'alone.db'}")
    session = guard.session("bench")
    result = {"content": [{"type": "text", "text": "ok"}]}

    async def run() -> list[float]:
        out = []
        for i in range(calls + 20):
            start = time.perf_counter_ns()
            decision = await session.abefore_tool("web/noop", {})
            await session.aafter_tool(decision, result)
            if i >= 20:  # the first ones warm up
                out.append((time.perf_counter_ns() - start) / 1000)
        return out

    try:
        return anyio.run(run)
    finally:
        guard.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tether-mcp-bench-"))
    (folder / "policy.yaml").write_text(POLICY)
    env: dict[str, Any] = {**os.environ, "TETHER_STORE": f"sqlite:///{folder / 'tether.db'}"}
    direct = StdioServerParameters(command=sys.executable, args=[str(SERVER)], env=env)
    proxy_args = ["-m", "tether.core.cli", "mcp", "proxy", "--policy", str(folder / "policy.yaml"), "--agent", "bench"]
    proxied = StdioServerParameters(
        command=sys.executable, args=[*proxy_args, "--", sys.executable, str(SERVER)], env=env
    )
    results: dict[str, list[float]] = {"direct": [], "proxy": [], "Tether alone": []}
    for _ in range(options.rounds):  # alternate, so drift on a shared machine hits all alike
        results["direct"] += anyio.run(per_call_us, direct, options.calls)
        results["proxy"] += anyio.run(per_call_us, proxied, options.calls)
        results["Tether alone"] += tether_alone_us(folder, options.calls)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{options.rounds} rounds x {options.calls} calls of a no-op tool over stdio\n")
    print("| path | median µs/call | p99 µs/call |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {medians[name]:.0f} | {percentile(values, 99):.0f} |")
    print(f"\nratio proxy/direct (median): {medians['proxy'] / medians['direct']:.2f}x")
    print(f"added per call (median): {medians['proxy'] - medians['direct']:.0f} µs")


if __name__ == "__main__":
    main()
