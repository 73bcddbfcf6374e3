"""Running the service under uvicorn, with every request bounded before anyone signs in.

What one client may take (:class:`Limits`) maps to uvicorn where it has a setting, and to this
module where it has none:

============================  ==================================================================
``Limits.head``               ``h11_max_incomplete_event_size`` (a head still arriving), and
                              :class:`BoundedRequests` (a head that arrived whole: 431)
``Limits.headers``            :class:`BoundedRequests` (431)
``Limits.body``               :class:`BoundedRequests`: an announced length over it gets 413
                              before the body is read; the bytes read are counted too
``Limits.idle``               ``timeout_keep_alive`` between requests; the protocol's idle timer
                              while a head arrives; :class:`BoundedRequests` while a body does
``Limits.request``            the protocol's deadline for a head, :class:`BoundedRequests`' for
                              a body (408)
``Limits.connections``        ``limit_concurrency`` (a request beyond it gets 503)
============================  ==================================================================

The protocol is uvicorn's h11 one (``http=``), which refuses a malformed request line, header
or ``Content-Length`` (two different ones too) with 400; :class:`BoundedRequests` refuses a
form without a length, or sent chunked, with 411.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

ASGIApp = Any  # an ASGI application: async (scope, receive, send)
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class Limits:
    """What one client may take of the server, signed in or not."""

    body: int = 64 * 1024  # bytes of a form (or of an API request's JSON)
    head: int = 32 * 1024  # bytes of a request line and its headers
    headers: int = 100  # header lines in a request
    idle: float = 10.0  # seconds without a byte from the client before the connection is closed
    request: float = 30.0  # seconds to send one whole request
    connections: int = 32  # open at once; a request on one more is answered 503


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


async def _refuse(send: Any, status: int, why: str) -> None:
    body = f"{why}\n".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))  # the body may be unread: nothing more on this connection
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BoundedRequests:
    """ASGI middleware bounding a request's head (size, header count) and its body (a length
    given once and within ``limits.body``; every byte of it within ``limits.request`` of the
    request's start, without a pause longer than ``limits.idle``)."""

    def __init__(self, app: ASGIApp, limits: Limits | None = None) -> None:
        self.app, self.limits = app, limits or Limits()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if scope.get("http_version") not in ("1.0", "1.1"):  # h11 reads any digit.digit
            return await _refuse(send, 505, "HTTP version not supported.")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in headers)
        if len(headers) > limits.headers or head > limits.head:
            return await _refuse(send, 431, "Request head too large.")
        lengths = [value for name, value in headers if name == b"content-length"]
        if any(name == b"transfer-encoding" for name, _ in headers):
            return await _refuse(send, 411, "Send the body with a Content-Length.")
        if scope["method"] in _WITH_BODY and not lengths:
            return await _refuse(send, 411, "A form needs a Content-Length.")
        if lengths and not (len(set(lengths)) == 1 and lengths[0].strip().isdigit()):  # h11 checks this too
            return await _refuse(send, 400, "The Content-Length is not a single number.")
        if lengths and int(lengths[0]) > limits.body:
            return await _refuse(send, 413, "That request is too large.")

        loop = asyncio.get_running_loop()
        deadline, received, started = loop.time() + limits.request, 0, False

        async def bounded_receive() -> Any:
            nonlocal received
            wait = min(limits.idle, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except asyncio.TimeoutError:
                raise _Refused(408, "The request took too long to arrive.") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limits.body:
                    raise _Refused(413, "That request is too large.")
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except _Refused as refused:
            if started:
                raise
            await _refuse(send, refused.status, refused.why)


def _protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's head: ``limits.request`` to
    arrive whole, without a pause longer than ``limits.idle`` (from the connection's start, or
    the previous response's end). A connection that misses either is closed without a word."""

    class Bounded(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._await_head()

        def data_received(self, data: bytes) -> None:
            self._last = self.loop.time()
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            now = self.loop.time()
            self._deadline, self._last = now + limits.request, now
            self._check()

        def _check(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # the head is in: the app and BoundedRequests have the request now
            now = self.loop.time()
            due = min(self._last + limits.idle, self._deadline)
            if now >= due:
                self.transport.close()
                return
            self._timer = self.loop.call_later(due - now, self._check)

    return Bounded


def config(app: ASGIApp, limits: Limits | None = None, **settings: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` (wrapped in :class:`BoundedRequests`) within ``limits``."""
    limits = limits or Limits()
    return uvicorn.Config(
        BoundedRequests(app, limits),
        http=_protocol(limits),
        h11_max_incomplete_event_size=limits.head,
        timeout_keep_alive=limits.idle,  # type: ignore[arg-type]  # a float works: it goes to call_later
        limit_concurrency=limits.connections + 1,  # uvicorn counts the connection asking
        ws="none",
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,  # request lines may carry ids; the audit is the record that matters
        log_level="warning",
        **settings,
    )


def listen(host: str = "127.0.0.1", port: int = 8765) -> socket.socket:
    """A listening socket (port 0: any free one, read back with ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: ASGIApp, sock: socket.socket, limits: Limits | None = None) -> None:
    """Serve ``app`` on ``sock`` until interrupted (Ctrl-C, SIGTERM)."""
    uvicorn.Server(config(app, limits)).run(sockets=[sock])


@contextlib.contextmanager
def serving(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None) -> Iterator[int]:
    """Serve ``app`` in a background thread while the block runs; yields the port."""
    sock = listen(host, port)
    server = uvicorn.Server(config(app, limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="tether-serve")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            threading.Event().wait(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
