"""The gateway over streamable HTTP, for fleets: in front of a remote MCP server, with each
client proving which agent it is by a bearer token, a Tether agent credential
(``tether agents credentials create NAME``).

A request without a valid credential gets 401 before it reaches MCP; an MCP session belongs to
the agent whose credential opened it, and a request in it with another agent's is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import httpx
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..credentials import Credentials, IdentityError, record_refusal
from ..errors import StoreError
from .gateway import Streams, Upstream

log = logging.getLogger("tether.mcp")
PATH = "/mcp"


class CredentialVerifier:
    """Bearer tokens checked against the store's agent credentials; the token's agent is its
    ``client_id``. The secret itself is not kept: the token carries the credential's id."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            credential = await anyio.to_thread.run_sync(self.credentials.authenticate, token)
        except IdentityError as exc:
            log.warning("refused an MCP client (%s): %s", exc.finding, exc)
            await anyio.to_thread.run_sync(self._record, exc)
            return None
        expires = credential.expires_us // 1_000_000 if credential.expires_us is not None else None
        return AccessToken(token=credential.id, client_id=credential.agent, scopes=[], expires_at=expires)

    def _record(self, refused: IdentityError) -> None:
        try:
            record_refusal(self.credentials.store, refused, via="mcp")
        except StoreError as exc:
            log.error("could not audit a refused MCP client: %s", exc)


def upstream_url(url: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> Upstream:
    """A remote MCP server at ``url`` (streamable HTTP), sent ``headers`` (its own credentials)."""

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Streams]:
        try:
            from mcp.client.streamable_http import streamable_http_client
        except ImportError:  # mcp < 1.25
            from mcp.client.streamable_http import streamablehttp_client

            async with streamablehttp_client(url, headers=headers, timeout=timeout) as (read, write, _):
                yield read, write
            return
        async with (
            httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout), follow_redirects=False) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
        ):
            yield read, write

    return Upstream(connect, url)


LOCAL = ("127.0.0.1", "localhost", "::1")


def http_app(gateway: Any, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving ``gateway`` at ``/mcp``, for agents holding credentials. Bound to a
    local address, it accepts only local Host and Origin headers (no DNS rebinding)."""
    server = gateway.server()
    security = None
    if host in LOCAL:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    verifier = CredentialVerifier(Credentials(gateway.guard.store))

    async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(
        routes=[Route(PATH, endpoint=RequireAuthMiddleware(mcp_endpoint, []))],
        middleware=[Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier))],
        lifespan=lifespan,
    )


def serve_http(gateway: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(http_app(gateway, host), host=host, port=port, log_level="warning")
