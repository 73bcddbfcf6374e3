"""The gateway: an MCP server (the SDK's low-level ``Server``) whose every request is answered by
an upstream MCP server, through a :class:`~tether.core.Guard`.

- ``tools/list`` advertises only the tools the agent is granted, each pinned (see ``pins``);
- ``tools/call`` is decided like any tool call of the agent's (the policy names the tool
  ``server/tool``); a refusal is a tool result with ``isError`` and Tether's reason; an approval
  waits in the queue while the call waits; the result passes through ``after_tool``;
- ``resources/read`` is decided as the tool ``server/resources/read`` and its content is
  untrusted, like a tool's output.

One Tether session per MCP session: each MCP session (a run of the server) opens its own
upstream connection and its own Tether session, recorded with the server and the client's name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
from mcp import ClientSession, McpError, types
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.lowlevel import Server

from ..approvals import FOR_SESSION, ApprovalAnswer, ApprovalRequest, Unanswered
from ..approvals.queue import PENDING, Entry, QueueApprover, now_us
from ..cautions import Caution
from ..decision import Decision
from ..guard import Guard, Session
from ..policy.schema import mcp_tool
from .pins import Pins, PinState, pin_caution

log = logging.getLogger("tether.mcp")

RESOURCE_READ = "resources/read"  # the tool name a resource read is decided as: server/resources/read
MAX_TOOLS = 10_000  # tools kept from one listing: a server cannot make the gateway hold more
MAX_PAGES = 100
ALIVE_EVERY = 0.5  # how often an upstream is checked while a call waits for approval

#: Tether's own settings, which hold keys, store URLs with passwords and tokens: not the server's
TETHER_SETTINGS = frozenset(
    {
        "TETHER_APPROVER",
        "TETHER_CHECKPOINTS",
        "TETHER_KEY",
        "TETHER_POLICY",
        "TETHER_SERVE_TOKENS",
        "TETHER_SIGNING_KEY",
        "TETHER_STORE",
    }
)
Streams = tuple[Any, Any]
Connect = Callable[[], AbstractAsyncContextManager[Streams]]


@dataclass(frozen=True)
class Upstream:
    """How to reach the real MCP server: a command to launch (stdio) or a URL (streamable HTTP)."""

    connect: Connect
    describe: str  # for messages and the audit

    @classmethod
    def command(cls, command: str, args: list[str], env: dict[str, str] | None = None) -> Upstream:
        """A server launched as ``command args`` and spoken to over its stdin/stdout. It gets the
        gateway's environment except Tether's own settings (keys, store URLs, tokens)."""
        inherited = {k: v for k, v in os.environ.items() if k not in TETHER_SETTINGS}
        params = StdioServerParameters(command=command, args=list(args), env={**inherited, **(env or {})})

        @contextlib.asynccontextmanager
        async def connect() -> AsyncIterator[Streams]:
            async with stdio_client(params) as streams:
                yield streams

        return cls(connect, " ".join([command, *args]))


@dataclass
class Link:
    """One MCP session through the gateway: the upstream session and the Tether session."""

    client: ClientSession
    server: str  # the upstream server's name: policy names its tools server/tool
    transport: str
    tether: Session | None = None
    tools: dict[str, types.Tool] = field(default_factory=dict)  # the last listing, by name
    states: dict[str, PinState] = field(default_factory=dict)  # their pins


class Gateway:
    """Builds the MCP server that stands in front of ``upstream`` for ``agent`` under ``guard``.

    ``server_name`` overrides the name the upstream gives itself (the policy's ``server/tool``).
    ``timeout`` bounds every wait on the upstream, in seconds, and ``start_timeout`` its start.
    """

    def __init__(
        self,
        guard: Guard,
        upstream: Upstream,
        *,
        agent: str | None = None,
        server_name: str | None = None,
        timeout: float = 60.0,
        start_timeout: float = 60.0,
        transport: str = "stdio",
        pins: Pins | None = None,
    ) -> None:
        self.guard = guard
        self.upstream = upstream
        self.agent = agent
        self.server_name = server_name
        self.timeout = timeout
        self.start_timeout = start_timeout  # a server launched on demand may take a while to start
        self.transport = transport
        self.pins = pins or Pins(guard.store, guard.policy.classifier)
        self.approver = QueueApprover(guard.store)

    # -- the server --------------------------------------------------------------------------

    def server(self) -> Server[Link, Any]:
        server: Server[Link, Any] = Server("tether-mcp-gateway", lifespan=self._lifespan)

        @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
        async def list_tools() -> list[types.Tool]:
            link = server.request_context.lifespan_context
            return await self._granted_tools(link, server)

        async def call_tool(request: types.CallToolRequest) -> types.ServerResult:
            context = server.request_context
            name, arguments = request.params.name, request.params.arguments or {}
            result = await self._call_tool(context.lifespan_context, server, name, arguments, str(context.request_id))
            return types.ServerResult(result)

        @server.list_resources()  # type: ignore[no-untyped-call, untyped-decorator]
        async def list_resources() -> list[types.Resource]:
            link = server.request_context.lifespan_context
            return await self._upstream_pages(link.client.list_resources, "resources")

        @server.list_resource_templates()  # type: ignore[no-untyped-call, untyped-decorator]
        async def list_resource_templates() -> list[types.ResourceTemplate]:
            link = server.request_context.lifespan_context
            return await self._upstream_pages(link.client.list_resource_templates, "resourceTemplates")

        async def read_resource(request: types.ReadResourceRequest) -> types.ServerResult:
            context = server.request_context
            return types.ServerResult(await self._read_resource(context.lifespan_context, server, request))

        # Registered as request handlers themselves: the SDK's decorators would list the tools
        # again on a call to one not listed, validate input the upstream validates, and re-wrap
        # resource contents.
        server.request_handlers[types.CallToolRequest] = call_tool
        server.request_handlers[types.ReadResourceRequest] = read_resource
        return server

    @contextlib.asynccontextmanager
    async def _lifespan(self, _server: Server[Link, Any]) -> AsyncIterator[Link]:
        """Each MCP session (each ``Server.run``) gets its own upstream connection."""
        async with (
            self.upstream.connect() as (read, write),
            ClientSession(read, write) as client,  # each wait is bounded where it is made
        ):
            with anyio.fail_after(self.start_timeout):
                init = await client.initialize()
            yield Link(client, self.server_name or init.serverInfo.name, self.transport)

    def tether_session(self, link: Link, server: Server[Link, Any]) -> Session:
        """The Tether session of this MCP session, started on its first request."""
        context = server.request_context
        agent = self.agent_of(context)
        if link.tether is not None and link.tether.agent != agent:
            message = f"this MCP session belongs to agent {link.tether.agent!r}, not {agent!r}"
            raise McpError(types.ErrorData(code=types.INVALID_REQUEST, message=message))
        if link.tether is None:
            info = context.session.client_params.clientInfo if context.session.client_params else None
            client = f"{info.name} {info.version}" if info else "unknown client"
            details = {"mcp_server": link.server, "mcp_client": client, "mcp_transport": link.transport}
            link.tether = self.guard.session(agent, context=details)
        return link.tether

    def agent_of(self, context: Any) -> str:
        """The agent an MCP request acts for: the gateway's, or over HTTP the one its credential names."""
        if self.agent is not None:
            return self.agent
        user = getattr(getattr(context, "request", None), "scope", {}).get("user")
        token = getattr(user, "access_token", None)
        if token is None:
            raise McpError(types.ErrorData(code=types.INVALID_REQUEST, message="no agent credential for this request"))
        return str(token.client_id)

    # -- tools -------------------------------------------------------------------------------

    async def _granted_tools(self, link: Link, server: Server[Link, Any]) -> list[types.Tool]:
        session = self.tether_session(link, server)
        await self._refresh(link)
        policy = self.guard.policy
        shown = []
        for name, tool in link.tools.items():
            if not policy.plan(session.agent, mcp_tool(link.server, name)).grants:
                continue
            caution = pin_caution(link.states[name], self.guard.policy.policy.protections)
            if caution is None or caution.outcome != "deny":
                shown.append(tool)
        return shown

    async def _refresh(self, link: Link) -> None:
        """List the upstream's tools again and check each against its pin."""
        tools = await self._upstream_pages(link.client.list_tools, "tools")
        listed = {tool.name: tool for tool in tools[:MAX_TOOLS]}
        states = await anyio.to_thread.run_sync(self.pins.check_all, link.server, list(listed.values()))
        link.tools, link.states = listed, states

    async def _upstream_pages(self, fetch: Callable[..., Any], attribute: str) -> list[Any]:
        items: list[Any] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            with anyio.fail_after(self.timeout):
                page = await fetch(cursor)
            items += getattr(page, attribute)
            cursor = page.nextCursor
            if not cursor or len(items) >= MAX_TOOLS:
                break
        return items

    async def _call_tool(
        self, link: Link, server: Server[Link, Any], name: str, arguments: dict[str, Any], request_id: str
    ) -> types.CallToolResult:
        session = self.tether_session(link, server)
        if name not in link.tools:
            await self._refresh(link)  # a call before any listing, or a tool added since
        cautions: list[Caution] = []
        if name not in link.tools:
            cautions.append(Caution("tether.mcp.unknown-tool", f"{link.server} does not list a tool {name!r}", "deny"))
        else:
            caution = pin_caution(link.states[name], self.guard.policy.policy.protections)
            cautions += [caution] if caution else []
        decision = await session.abefore_tool(
            mcp_tool(link.server, name), arguments, call_id=request_id, cautions=cautions
        )
        if decision.needs_approval:
            decision = await self._approval(session, decision, link)
        if not decision.allowed:
            return _refusal(decision)
        try:
            with anyio.fail_after(self.timeout):
                result = await _call_upstream(link.client, name, dict(decision.args), self.timeout)
        except (McpError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            why = _upstream_error(link, exc, self.timeout)
            await session.aafter_tool(decision, error=why)
            return _error_result(why)
        shown = await session.aafter_tool(decision, _content(result))
        return _result(shown, result.isError)

    # -- resources ---------------------------------------------------------------------------

    async def _read_resource(
        self, link: Link, server: Server[Link, Any], request: types.ReadResourceRequest
    ) -> types.ReadResourceResult:
        session = self.tether_session(link, server)
        uri = str(request.params.uri)
        decision = await session.abefore_tool(mcp_tool(link.server, RESOURCE_READ), {"uri": uri})
        if decision.needs_approval:
            decision = await self._approval(session, decision, link)
        if not decision.allowed:
            raise McpError(types.ErrorData(code=types.INVALID_REQUEST, message=decision.refusal()))
        try:
            with anyio.fail_after(self.timeout):
                result = await link.client.read_resource(request.params.uri)
        except (McpError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            why = _upstream_error(link, exc, self.timeout)
            await session.aafter_tool(decision, error=why)
            raise McpError(types.ErrorData(code=types.INTERNAL_ERROR, message=why)) from None
        dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        shown = await session.aafter_tool(decision, dumped)
        if isinstance(shown, dict):
            return types.ReadResourceResult.model_validate(shown)
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=request.params.uri, text=str(shown))])

    # -- approvals ---------------------------------------------------------------------------

    async def _approval(self, session: Session, decision: Decision, link: Link) -> Decision:
        """Wait for a person's answer in the queue while the MCP call waits. The wait ends early,
        denied and recorded, if the upstream stops or the client goes away."""
        stop = _Stop()
        approver = _StoppableApprover(self.approver, stop)
        done = threading.Event()

        def resolve() -> Decision:
            try:
                return session.resolve(decision, approver=approver)
            finally:
                done.set()

        async def watch_upstream() -> None:
            while True:
                await anyio.sleep(ALIVE_EVERY)
                if not await _alive(link.client):
                    stop.set(f"the MCP server {link.server} stopped while the call waited for approval")
                    return

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_upstream)
                final = await anyio.to_thread.run_sync(resolve, abandon_on_cancel=True)
                group.cancel_scope.cancel()
            return final
        finally:
            if not done.is_set():  # cancelled: the client went away; settle and record it first
                stop.set("the MCP client went away while the call waited for approval")
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(done.wait, self.timeout)


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.why = ""

    def set(self, why: str) -> None:
        if not self.event.is_set():
            self.why = why
            self.event.set()


class _StoppableApprover:
    """The queue approver, with a wait that ends (expiring the request) when told to stop."""

    def __init__(self, approver: QueueApprover, stop: _Stop, poll: float = 0.25) -> None:
        self.queue = approver.queue
        self.approver = approver
        self.stop = stop
        self.poll = poll

    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        submitted, new = self.queue.submit(request)
        entry: Entry | None = submitted
        if new:
            self.approver._announce(submitted)
        while entry is not None and entry.status == PENDING and not entry.expired:
            if self.stop.event.is_set():
                if self.queue.expire(entry.id):
                    raise Unanswered(self.stop.why)
                break  # answered in the last instant: honour it
            until = min(entry.expires_us, now_us() + int(self.poll * 1_000_000))
            entry = self.queue.wait(entry.id, until, self.poll) or self.queue.get(entry.id)
        if entry is not None and entry.status == PENDING:
            self.queue.expire(entry.id)
            entry = self.queue.get(entry.id)
        if entry is None or entry.answer is None:
            return None
        if entry.scope != FOR_SESSION and not self.queue.consume(entry.id):
            raise Unanswered(f"the answer to request {entry.id} was already used; an approval runs one call once")
        return entry.answer


async def _alive(client: ClientSession) -> bool:
    try:
        with anyio.fail_after(max(ALIVE_EVERY * 4, 2.0)):
            await client.send_ping()
        return True
    except Exception:  # noqa: BLE001 - whatever the failure, the server is gone for this call
        return False


async def _call_upstream(
    client: ClientSession, name: str, args: dict[str, Any], timeout: float
) -> types.CallToolResult:
    """``tools/call`` sent as it is: the client at the other end validates the result against the
    tool's output schema itself (``ClientSession.call_tool`` would too, costing a JSON Schema
    check of the schema on every call)."""
    request = types.ClientRequest(types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=args)))
    return await client.send_request(
        request, types.CallToolResult, request_read_timeout_seconds=timedelta(seconds=timeout)
    )


# -- results -----------------------------------------------------------------------------------


def _content(result: types.CallToolResult) -> dict[str, Any]:
    """What a tool result says, as plain data for after_tool."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True, include={"content", "structuredContent"})


def _result(shown: Any, is_error: bool) -> types.CallToolResult:
    """The result the client receives: what after_tool let through."""
    if isinstance(shown, dict):
        return types.CallToolResult.model_validate({**shown, "isError": is_error})
    return types.CallToolResult(content=[types.TextContent(type="text", text=str(shown))], isError=is_error)


def _refusal(decision: Decision) -> types.CallToolResult:
    return _error_result(decision.refusal())


def _error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], isError=True)


def _upstream_error(link: Link, exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"the MCP server {link.server} did not answer within {timeout:g}s"
    if isinstance(exc, McpError):
        return f"the MCP server {link.server} failed: {exc.error.message}"
    return f"the connection to the MCP server {link.server} is closed"
