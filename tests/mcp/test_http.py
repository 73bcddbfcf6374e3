"""The gateway over streamable HTTP (``tether mcp serve``) in front of a FastMCP server over
HTTP, with clients authenticated by agent credentials."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.mcp import server as web_server
from tests.support import free_port, listening, wait_until
from tether.core import Credentials

from .conftest import Proxy, text


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, 60, f"a server on port {port}")
        assert process.poll() is None, "the server exited"
        yield process
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def gateway(proxy: Proxy) -> Iterator[str]:
    """The gateway's URL, in front of the web server over HTTP."""
    upstream, port = free_port(), free_port()
    server_env = proxy.env(TETHER_TEST_MCP_HTTP_PORT=str(upstream))
    gateway_command = [sys.executable, "-m", "tether.core.cli", "mcp", "serve", "--policy", str(proxy.policy_file)]
    gateway_command += ["--upstream", f"http://127.0.0.1:{upstream}/mcp", "--port", str(port)]
    gateway_command += ["--store", proxy.store_url]
    with (
        running([sys.executable, web_server.SCRIPT], server_env, upstream),
        running(gateway_command, proxy.env(), port),
    ):
        yield f"http://127.0.0.1:{port}/mcp"


def credential(proxy: Proxy, agent: str) -> str:
    store = proxy.store()
    try:
        return Credentials(store).create(agent)[1]
    finally:
        store.close()


@contextlib.asynccontextmanager
async def client(url: str, secret: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with (
        streamablehttp_client(url, headers=headers) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_client_with_a_credential_acts_as_its_agent(proxy: Proxy, gateway: str) -> None:
    secret = credential(proxy, "support-bot")

    async def main() -> tuple[list[str], Any]:
        async with client(gateway, secret) as session:
            listed = await session.list_tools()
            fetched = await session.call_tool("fetch_page", {"url": "https://example.com"})
            return sorted(t.name for t in listed.tools), fetched

    names, fetched = anyio.run(main)
    assert names == ["fetch_page", "noop", "send_email"]
    assert text(fetched) == "<html>Welcome</html>"
    assert proxy.ran() == [("fetch_page", {"url": "https://example.com"})]
    decisions = proxy.events("tool.decision")
    assert {e.agent for e in decisions} == {"support-bot"}
    context = json.loads(decisions[0].data)["context"]
    assert context["mcp_server"] == "web" and context["mcp_transport"] == "streamable-http"
    assert secret not in "".join(e.data for e in proxy.events())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_credential_for_another_agent_gets_that_agents_grants(proxy: Proxy, gateway: str) -> None:
    secret = credential(proxy, "intruder")  # an agent the policy grants nothing

    async def main() -> tuple[list[str], Any]:
        async with client(gateway, secret) as session:
            listed = await session.list_tools()
            return [t.name for t in listed.tools], await session.call_tool("noop", {})

    names, refused = anyio.run(main)
    assert names == []
    assert refused.isError and "agent 'intruder' is not in the policy" in text(refused)


def test_a_request_without_a_valid_credential_is_refused_before_mcp(proxy: Proxy, gateway: str) -> None:
    revoked = credential(proxy, "support-bot")
    store = proxy.store()
    Credentials(store).revoke(revoked.split("_")[1])
    store.close()
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer tth_nothing_here"}, {"Authorization": f"Bearer {revoked}"}):
        answer = httpx.post(gateway, json=body, headers={**headers, "Accept": "application/json, text/event-stream"})
        assert answer.status_code == 401
    # nothing reached MCP; each presented credential is recorded as an identity finding
    refusals = [(e.kind, e.details["finding"], e.details["via"]) for e in proxy.events()]
    assert refusals == [("identity", "malformed", "mcp"), ("identity", "revoked", "mcp")]


def test_an_mcp_session_cannot_be_used_with_another_agents_credential(proxy: Proxy, gateway: str) -> None:
    owner, other = credential(proxy, "support-bot"), credential(proxy, "intruder")
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    with httpx.Client(timeout=60) as http:
        opened = http.post(gateway, json=init, headers={**accept, "Authorization": f"Bearer {owner}"})
        assert opened.status_code == 200
        session = {**accept, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
        ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        http.post(gateway, json=ready, headers={**session, "Authorization": f"Bearer {owner}"})
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "noop", "arguments": {}}}
        taken = http.post(gateway, json=call, headers={**session, "Authorization": f"Bearer {other}"})
    # refused by the transport (the SDK binds a session to who opened it) or by the gateway
    assert taken.status_code >= 400 or "belongs to agent 'support-bot'" in taken.text, taken.text
    assert "intruder" not in {e.agent for e in proxy.events()}
