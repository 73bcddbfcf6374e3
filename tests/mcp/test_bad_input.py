"""What a client or a server can send that is wrong: the proxy answers per the protocol, bounded,
and keeps serving."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import anyio

from tests.mcp import server as web_server
from tests.support import read_line

from .conftest import Proxy, text

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


class Raw:
    """A client that writes JSON-RPC lines itself, to send what the SDK would not."""

    def __init__(self, proxy: Proxy, *options: str, **env: str) -> None:
        params = proxy.params(web_server.SCRIPT, *options, **env)
        self.process = subprocess.Popen(
            [params.command, *params.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=params.env,
            cwd=params.cwd,
        )
        self.send(INIT)
        assert self.receive()["id"] == 1
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            message = json.loads(read_line(self.process.stdout, 60))
            if "id" in message:  # skip notifications (log messages)
                return message

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def test_malformed_unknown_and_oversized_messages_are_answered_and_the_proxy_keeps_serving(proxy: Proxy) -> None:
    raw = Raw(proxy)
    try:
        raw.send("{this is not json")
        raw.send({"jsonrpc": "2.0", "id": 2, "method": "no/such/method", "params": {}})
        assert raw.receive() == {"jsonrpc": "2.0", "id": 2, "error": raw_error(raw, 2)}
        raw.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "noop", "arguments": {}}})
        assert raw.receive()["result"]["content"][0]["text"] == "ok"  # still serving
        huge = {"name": "fetch_page", "arguments": {"url": "x" * (5 * 1024 * 1024)}}
        raw.send({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": huge})
        raw.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "noop", "arguments": {}}})
        assert raw.receive()["id"] == 5  # the oversized message was dropped, the next one answered
    finally:
        raw.close()
    assert proxy.ran() == []  # the oversized call never reached the server


def raw_error(raw: Raw, request_id: int) -> dict[str, Any]:
    return {"code": -32602, "message": "Invalid request parameters", "data": ""}


def test_a_server_that_never_answers_gets_a_bounded_wait_and_a_clear_error(proxy: Proxy) -> None:
    async def main() -> Any:
        async with proxy.client(web_server.SCRIPT, "--timeout", "2", TETHER_TEST_MCP_MODE="hang") as client:
            return await client.call_tool("fetch_page", {"url": "https://example.com"})

    result = anyio.run(main)
    assert result.isError
    assert "did not answer within 2s" in text(result)
    (recorded,) = proxy.events("tool.result")
    assert "did not answer within 2s" in json.loads(recorded.data)["error"]
