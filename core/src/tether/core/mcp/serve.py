"""Running the gateway: over stdio, for one client that launched it."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from io import TextIOWrapper
from typing import IO, Any

import anyio
import anyio.to_thread
from mcp.server.stdio import stdio_server

from .gateway import Gateway

MAX_MESSAGE = 4 * 1024 * 1024  # characters in one JSON-RPC message; a longer line is refused


class BoundedLines:
    """Lines of a text stream, each at most ``limit`` characters: a longer one is read to its
    end, dropped, and replaced by a line that is not JSON, so the SDK reports a parse error
    instead of the gateway holding an unbounded message in memory."""

    def __init__(self, stream: IO[str], limit: int = MAX_MESSAGE) -> None:
        self.stream = stream
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            line = await anyio.to_thread.run_sync(self.stream.readline, self.limit + 1)
            if not line:
                return
            if len(line) > self.limit and not line.endswith("\n"):
                while (rest := await anyio.to_thread.run_sync(self.stream.readline, self.limit)) and not rest.endswith(
                    "\n"
                ):
                    pass
                yield f"message longer than {self.limit} characters\n"
                continue
            yield line


async def serve_stdio(gateway: Gateway, stdin: IO[str] | None = None, limit: int = MAX_MESSAGE) -> None:
    """Serve one MCP session on stdin/stdout until the client closes stdin."""
    server = gateway.server()
    text = stdin or TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    lines: Any = BoundedLines(text, limit)  # stdio_server only iterates its stdin
    async with stdio_server(stdin=lines) as (read, write), anyio.create_task_group() as group:
        group.start_soon(_stop_on_sigterm, group.cancel_scope)
        await server.run(read, write, server.create_initialization_options())
        group.cancel_scope.cancel()


async def _stop_on_sigterm(scope: anyio.CancelScope) -> None:
    """A client that stops the gateway with SIGTERM (the SDK's does, after closing stdin) gets a
    clean stop: calls waiting for approval are settled and recorded before the process exits."""
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
