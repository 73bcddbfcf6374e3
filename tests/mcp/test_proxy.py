"""The stdio proxy in front of the helpdesk server: decided calls, refusals, results through after_tool."""

from __future__ import annotations

import json

import anyio

from .conftest import Proxy, text


def test_lists_only_granted_tools_and_runs_an_allowed_call(proxy: Proxy) -> None:
    async def main() -> tuple[list[str], str]:
        async with proxy.client() as client:
            tools = await client.list_tools()
            result = await client.call_tool("lookup_order", {"order_id": "42"})
            return sorted(t.name for t in tools.tools), text(result)

    names, answer = anyio.run(main)
    assert names == ["delete_account", "lookup_order", "read_ticket", "send_email"]
    assert answer == "order 42: shipped"
    assert proxy.ran() == [("lookup_order", {"order_id": "42"})]


def test_a_denied_call_never_reaches_the_server(proxy: Proxy) -> None:
    async def main() -> object:
        async with proxy.client() as client:
            return await client.call_tool("delete_account", {"user_id": "u1"})

    result = anyio.run(main)
    assert result.isError  # type: ignore[attr-defined]
    assert "people delete" in text(result) and "no-deletion" in text(result)
    assert proxy.ran() == []
    (decision,) = proxy.events("tool.decision")
    assert decision.tool == "helpdesk/delete_account" and decision.verdict == "deny"


def test_the_audit_shows_server_tool_and_client_in_one_session(proxy: Proxy) -> None:
    async def main() -> None:
        async with proxy.client() as client:
            await client.call_tool("lookup_order", {"order_id": "1"})
            await client.call_tool("lookup_order", {"order_id": "2"})

    anyio.run(main)
    events = proxy.events()
    assert len({e.session_id for e in events}) == 1
    decisions = [e for e in events if e.kind == "tool.decision"]
    assert [e.tool for e in decisions] == ["helpdesk/lookup_order"] * 2
    context = json.loads(decisions[0].data)["context"]
    assert context["mcp_server"] == "helpdesk" and context["mcp_transport"] == "stdio"
    assert context["mcp_client"].startswith("mcp ")  # the SDK client's name and version


def test_untrusted_output_taints_the_session_and_is_recorded_redacted(proxy: Proxy) -> None:
    async def main() -> str:
        async with proxy.client() as client:
            return text(await client.call_tool("read_ticket", {"ticket_id": "7"}))

    seen = anyio.run(main)
    assert "charged twice" in seen
    (result,) = proxy.events("tool.result")
    details = json.loads(result.data)
    assert details["untrusted"] is True
    assert "4111 1111 1111 1111" not in result.data  # the card is recorded masked


def test_calling_a_tool_the_server_does_not_have_is_refused(proxy: Proxy) -> None:
    async def main() -> object:
        async with proxy.client() as client:
            return await client.call_tool("format_disk", {})

    result = anyio.run(main)
    assert result.isError  # type: ignore[attr-defined]
    assert "does not list a tool 'format_disk'" in text(result)


def test_a_resource_read_is_decided_and_its_content_is_untrusted(proxy: Proxy) -> None:
    from pydantic import AnyUrl

    from tests.mcp import server as web_server

    async def main() -> str:
        async with proxy.client(web_server.SCRIPT, TETHER_TEST_MCP_PAGE="notes of the day") as client:
            read = await client.read_resource(AnyUrl("notes://today"))
            return "".join(getattr(c, "text", "") for c in read.contents)

    assert anyio.run(main) == "notes of the day"
    (decision,) = proxy.events("tool.decision")
    assert decision.tool == "web/resources/read" and json.loads(decision.data)["args"] == {"uri": "notes://today"}
    (result,) = proxy.events("tool.result")
    assert json.loads(result.data)["untrusted"] is True
