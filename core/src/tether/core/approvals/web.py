"""``tether serve``: a small web page to answer approval requests.

No anonymous access: people sign in with a token set when the server starts, either their own
(``NAME=TOKEN``: the token says who they are) or a shared one (they give their name). Every
form carries a CSRF token (the sign-in form too), cookies are HttpOnly and SameSite=Strict,
every value shown is HTML-escaped, and the page sends a content security policy that allows no
script at all. It binds to 127.0.0.1 unless told otherwise; anything wider belongs behind a TLS
proxy.

Every request is bounded before anyone signs in (:class:`Limits`): the time to send it, the
time a connection may sit idle, the size of its head and of its form, and how many connections
are open at once. A malformed or missing ``Content-Length`` is refused with 400 or 411.

It is built on the standard library's HTTP server: a handful of routes do not justify a web
framework as a dependency of every install.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import io
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..audit.render import session_lines
from ..audit.store import AuditStore
from ..errors import TetherError
from ..wording import cut
from . import FOR_SESSION, ONCE
from .queue import MAX_COMMENT, PENDING, ApprovalQueue, Entry
from .render import approval_details, approval_line

COOKIE = "tether_session"
LOGIN_COOKIE = "tether_login"  # ties the sign-in form to the browser that loaded it
SIGN_IN_HOURS = 8
MAX_BODY = 64 * 1024
_LENGTH = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class Limits:
    """What one client may take of the server, signed in or not."""

    body: int = MAX_BODY  # bytes of a form
    head: int = 32 * 1024  # bytes of a request line and its headers
    idle: float = 10.0  # seconds without a byte from the client before the connection is closed
    request: float = 30.0  # seconds to send one whole request
    connections: int = 32  # open at once; more are turned away with 503


_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-word}table{border-collapse:collapse}
td,th{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.msg{background:#fff4cc;padding:.5em}.error{background:#fdd;padding:.5em}form.answer{margin:.5em 0}
input[type=text],textarea{width:30em}"""


@dataclass
class _SignIn:
    who: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    until: float = field(default_factory=lambda: time.time() + SIGN_IN_HOURS * 3600)
    message: str = ""


class ApprovalSite:
    """The page's state: the queue, the tokens, who is signed in."""

    def __init__(self, store: AuditStore, tokens: dict[str, str | None]) -> None:
        if not tokens:
            raise TetherError("the approval page needs at least one token")
        self.store = store
        self.queue = ApprovalQueue(store)
        self.tokens = tokens  # token -> the person it names, or None for a shared token
        self.sign_ins: dict[str, _SignIn] = {}
        self.lock = threading.Lock()
        self._secret = secrets.token_bytes(32)  # signs the sign-in form's CSRF tokens

    def sign_in(self, token: str, name: str) -> tuple[str, _SignIn] | None:
        """A new sign-in (and its cookie value) for a known token; None for a wrong one."""
        matched: list[str | None] = [
            who for known, who in self.tokens.items() if hmac.compare_digest(known.encode(), token.encode())
        ]
        if not matched:
            return None
        who = matched[0] or name.strip()
        if not who:
            return None
        sid, sign_in = secrets.token_urlsafe(32), _SignIn(who)
        with self.lock:
            now = time.time()
            self.sign_ins = {k: v for k, v in self.sign_ins.items() if v.until > now}
            self.sign_ins[sid] = sign_in
        return sid, sign_in

    def session_of(self, cookie: str | None) -> tuple[str, _SignIn] | None:
        if not cookie:
            return None
        jar = SimpleCookie()
        try:
            jar.load(cookie)
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        if morsel is None:
            return None
        with self.lock:
            sign_in = self.sign_ins.get(morsel.value)
        if sign_in is None or sign_in.until < time.time():
            return None
        return morsel.value, sign_in

    def login_token(self, nonce: str) -> str:
        """The sign-in form's CSRF token for the browser holding ``nonce`` in its login cookie."""
        return hmac.new(self._secret, nonce.encode(), "sha256").hexdigest()

    def serve(self, host: str = "127.0.0.1", port: int = 8765, *, limits: Limits | None = None) -> ThreadingHTTPServer:
        """A server ready to ``serve_forever()``; port 0 picks a free one (``server.server_port``)."""
        site, bounds = self, limits or Limits()

        class Handler(_Handler):
            pass

        Handler.site, Handler.limits, Handler.timeout = site, bounds, bounds.idle
        return _Server((host, port), Handler, bounds.connections)


class _Server(ThreadingHTTPServer):
    """A thread per connection, up to a limit: past it, a connection gets 503 and is closed."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], connections: int) -> None:
        self._slots = threading.BoundedSemaphore(connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is routine; anything else is logged, not printed."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            logging.getLogger("tether").exception("the approval page failed on a request")


class _TooLarge(Exception):
    """The client sent more than the request's head (or its announced body) may hold."""


class _BoundedReader(io.RawIOBase):
    """Reads from a client within a deadline and a byte budget, reset for each request: no
    request can take longer than ``limits.request``, sit idle longer than ``limits.idle`` or
    send more than it may."""

    def __init__(self, connection: socket.socket, limits: Limits) -> None:
        self._connection, self._limits = connection, limits
        self.start()

    def start(self) -> None:
        self.deadline = time.monotonic() + self._limits.request
        self.budget = self._limits.head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        if self.budget <= 0:
            raise _TooLarge
        self._connection.settimeout(min(self._limits.idle, left))
        view = memoryview(buffer)[: self.budget]
        received = self._connection.recv_into(view)
        self.budget -= received
        return received


def _page(title: str, body: str, who: str | None = None, csrf: str = "") -> bytes:
    bar = ""
    if who:
        bar = (
            f'<p>Signed in as <b>{html.escape(who)}</b> · <a href="/">pending requests</a> · '
            f'<form method="post" action="/logout" style="display:inline"><input type="hidden" name="csrf" '
            f'value="{html.escape(csrf)}"><button>Sign out</button></form></p>'
        )
    head = f"<meta charset=utf-8><title>{html.escape(title)} · Tether</title><style>{_STYLE}</style>"
    return (
        f"<!doctype html><html><head>{head}</head><body><h1>{html.escape(title)}</h1>{bar}{body}</body></html>".encode()
    )


def _answer_forms(entry: Entry, csrf: str) -> str:
    if entry.status != PENDING or entry.expired:
        return ""
    token = f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
    target = f"/approvals/{quote(entry.id)}"
    session = (
        '<label><input type="checkbox" name="scope" value="session"> for the rest of the session</label> '
        if entry.for_session
        else ""
    )
    return (
        f'<form class="answer" method="post" action="{target}">{token}<input type="hidden" name="action" '
        f'value="approve"><input type="text" name="comment" maxlength="{MAX_COMMENT}" placeholder="comment">'
        f'<br><textarea name="args" rows="2" placeholder="edited arguments (JSON), optional"></textarea><br>'
        f"{session}<button>Approve</button></form>"
        f'<form class="answer" method="post" action="{target}">{token}<input type="hidden" name="action" '
        f'value="deny"><input type="text" name="comment" maxlength="{MAX_COMMENT}" placeholder="comment">'
        f"<button>Deny</button></form>"
    )


class _Handler(BaseHTTPRequestHandler):
    site: ApprovalSite
    limits: Limits
    server_version = "tether"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # so even a refusal of a garbled request line has a status line

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines may carry ids; the audit is the record that matters

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _BoundedReader(self.connection, self.limits)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.start()
        # What an error reply needs, in case one is sent before the request line is read.
        self.request_version, self.command, self.requestline = "HTTP/1.0", "", ""
        try:
            super().handle_one_request()
        except _TooLarge:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request head too large")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.connection.settimeout(self.limits.idle)  # a client that does not read cannot hold us
        self.send_response(status)
        for name, value in {**_HEADERS, "Content-Type": "text/html; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", {"Location": where, **(headers or {})})

    def _refuse(self, status: int, title: str, why: str) -> None:
        self.close_connection = True  # the body may be unread: nothing more on this connection
        self._send(status, _page(title, f"<p>{html.escape(why)}</p>"), {"Connection": "close"})

    def _form(self) -> dict[str, str] | None:
        """The posted form, or None once a refusal is sent (its length missing, malformed,
        conflicting or too large; a body cut short)."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding"):
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Length required", "Send the form with a Content-Length.")
            return None
        if not lengths:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Length required", "A form needs a Content-Length.")
            return None
        if len({v.strip() for v in lengths}) != 1 or not _LENGTH.fullmatch(lengths[0].strip()):
            self._refuse(HTTPStatus.BAD_REQUEST, "Bad request", "The Content-Length is not a single number.")
            return None
        length = int(lengths[0])
        if length > self.limits.body:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Too large", "That form was too large.")
            return None
        self._reader.budget += length
        body = self.rfile.read(length)
        if len(body) != length:
            self._refuse(HTTPStatus.BAD_REQUEST, "Bad request", "The form was cut short.")
            return None
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}

    def _cookie(self, name: str) -> str | None:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None

    def _signed_in(self) -> tuple[str, _SignIn] | None:
        found = self.site.session_of(self.headers.get("Cookie"))
        if found is None:
            self._redirect("/login")
        return found

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/login":
            return self._login_page()
        found = self._signed_in()
        if found is None:
            return None
        _, sign_in = found
        if path == "/":
            return self._index(sign_in)
        routes: dict[str, Callable[[_SignIn, str], None]] = {"/approvals/": self._approval, "/sessions/": self._session}
        for prefix, route in routes.items():
            if path.startswith(prefix):
                return route(sign_in, unquote(path[len(prefix) :]))
        return self._send(HTTPStatus.NOT_FOUND, _page("Not found", "<p>No such page.</p>", sign_in.who, sign_in.csrf))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        form = self._form()
        if form is None:
            return None
        if path == "/login":
            return self._login(form)
        found = self._signed_in()
        if found is None:
            return None
        sid, sign_in = found
        if not hmac.compare_digest(form.get("csrf", "").encode(), sign_in.csrf.encode()):
            return self._send(
                HTTPStatus.FORBIDDEN,
                _page(
                    "Refused", "<p>The form's security token is missing or wrong; reload the page and try again.</p>"
                ),
            )
        if path == "/logout":
            with self.site.lock:
                self.site.sign_ins.pop(sid, None)
            return self._redirect("/login", {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"})
        if path.startswith("/approvals/"):
            return self._answer(sign_in, path[len("/approvals/") :], form)
        return self._send(HTTPStatus.NOT_FOUND, _page("Not found", "<p>No such page.</p>"))

    def _login_page(self, error: str = "", status: int = HTTPStatus.OK) -> None:
        note = f'<p class="error">{html.escape(error)}</p>' if error else ""
        nonce = secrets.token_urlsafe(24)
        body = (
            f'{note}<form method="post" action="/login"><input type="hidden" name="csrf" '
            f'value="{self.site.login_token(nonce)}"><p><label>Token <input type="password" name="token" '
            f'autocomplete="off"></label></p><p><label>Your name (if the token is shared) <input type="text" '
            f'name="name"></label></p><button>Sign in</button></form>'
        )
        cookie = f"{LOGIN_COOKIE}={nonce}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600"
        self._send(status, _page("Sign in to Tether approvals", body), {"Set-Cookie": cookie})

    def _login(self, form: dict[str, str]) -> None:
        nonce = self._cookie(LOGIN_COOKIE)
        if nonce is None or not hmac.compare_digest(form.get("csrf", ""), self.site.login_token(nonce)):
            return self._send(  # a sign-in posted from another site, or from a stale page
                HTTPStatus.FORBIDDEN,
                _page("Refused", '<p>The sign-in form expired; <a href="/login">load it again</a>.</p>'),
            )
        signed_in = self.site.sign_in(form.get("token", ""), form.get("name", ""))
        if signed_in is None:
            time.sleep(0.5)  # slows down guessing
            return self._login_page("Wrong token (or a shared token without your name).", HTTPStatus.UNAUTHORIZED)
        sid = signed_in[0]
        cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SIGN_IN_HOURS * 3600}"
        return self._redirect("/", {"Set-Cookie": cookie})

    def _index(self, sign_in: _SignIn) -> None:
        pending = self.site.queue.entries()
        recent = [e for e in self.site.queue.entries(status=None, limit=30) if e.status != PENDING or e.expired]
        rows = "".join(
            f'<tr><td><a href="/approvals/{quote(e.id)}">{html.escape(e.id)}</a></td><td>{html.escape(e.agent)}</td>'
            f"<td>{html.escape(e.tool)}</td><td><code>{html.escape(cut(json.dumps(e.request.get('args')), 160))}</code>"
            f"</td><td>{html.escape(e.request.get('reason', ''))}</td><td>{_answer_forms(e, sign_in.csrf)}</td></tr>"
            for e in pending
        )
        table = (
            "<table><tr><th>request</th><th>agent</th><th>tool</th><th>arguments</th><th>why</th><th></th></tr>"
            f"{rows}</table>"
            if pending
            else "<p>No pending requests.</p>"
        )
        done = "".join(f"<li>{html.escape(approval_line(e))}</li>" for e in recent)
        body = self._flash(sign_in) + table + (f"<h2>Recently answered</h2><ul>{done}</ul>" if done else "")
        self._send(HTTPStatus.OK, _page("Pending approvals", body, sign_in.who, sign_in.csrf))

    def _approval(self, sign_in: _SignIn, entry_id: str) -> None:
        entry = self.site.queue.get(entry_id)
        if entry is None:
            missing = f"<p>No approval request {html.escape(entry_id)}.</p>"
            return self._send(HTTPStatus.NOT_FOUND, _page("Not found", missing, sign_in.who, sign_in.csrf))
        details = "\n".join(approval_details(entry, self.site.store.session_events(entry.session_id)))
        body = (
            self._flash(sign_in) + _answer_forms(entry, sign_in.csrf) + f"<pre>{html.escape(details)}</pre>"
            f'<p><a href="/sessions/{quote(entry.session_id)}">the whole session</a></p>'
        )
        return self._send(HTTPStatus.OK, _page(f"Request {entry.id}", body, sign_in.who, sign_in.csrf))

    def _session(self, sign_in: _SignIn, session_id: str) -> None:
        lines = session_lines(self.site.store.session_events(session_id)[-200:])
        body = f"<pre>{html.escape(chr(10).join(lines))}</pre>" if lines else "<p>No events.</p>"
        self._send(HTTPStatus.OK, _page(f"Session {session_id}", body, sign_in.who, sign_in.csrf))

    def _answer(self, sign_in: _SignIn, entry_id: str, form: dict[str, str]) -> None:
        try:
            edited = json.loads(form["args"]) if form.get("args", "").strip() else None
        except json.JSONDecodeError as exc:
            sign_in.message = f"error: the edited arguments are not JSON: {exc}"
            return self._redirect(f"/approvals/{quote(entry_id)}")
        try:
            entry = self.site.queue.answer(
                entry_id,
                approved=form.get("action") == "approve",
                by=sign_in.who,
                comment=form.get("comment", ""),
                args=edited,
                scope=FOR_SESSION if form.get("scope") == "session" else ONCE,
            )
            sign_in.message = f"{entry.status} {entry.id} ({entry.agent} -> {entry.tool})"
        except TetherError as exc:
            sign_in.message = f"error: {exc}"
        return self._redirect(f"/approvals/{quote(entry_id)}")

    def _flash(self, sign_in: _SignIn) -> str:
        message, sign_in.message = sign_in.message, ""
        if not message:
            return ""
        css = "error" if message.startswith("error: ") else "msg"
        return f'<p class="{css}">{html.escape(message.removeprefix("error: "))}</p>'
