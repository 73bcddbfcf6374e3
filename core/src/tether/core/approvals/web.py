"""``tether serve``: a small web page to answer approval requests.

No anonymous access: people sign in with a token set when the server starts, either their own
(``NAME=TOKEN``: the token says who they are) or a shared one (they give their name). Forms
carry a per-sign-in CSRF token, cookies are HttpOnly and SameSite=Strict, every value shown is
HTML-escaped, and the page sends a content security policy that allows no script at all. It
binds to 127.0.0.1 unless told otherwise; anything wider belongs behind a TLS proxy.

It is built on the standard library's HTTP server: a handful of routes do not justify a web
framework as a dependency of every install.
"""

from __future__ import annotations

import hmac
import html
import json
import secrets
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
from . import FOR_SESSION, ONCE
from .queue import MAX_COMMENT, PENDING, ApprovalQueue, Entry
from .render import approval_details, approval_line

COOKIE = "tether_session"
SIGN_IN_HOURS = 8
MAX_BODY = 64 * 1024
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

    def serve(self, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
        """A server ready to ``serve_forever()``; port 0 picks a free one (``server.server_port``)."""
        site = self

        class Handler(_Handler):
            pass

        Handler.site = site
        return ThreadingHTTPServer((host, port), Handler)


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
    server_version = "tether"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines may carry ids; the audit is the record that matters

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**_HEADERS, "Content-Type": "text/html; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", {"Location": where, **(headers or {})})

    def _form(self) -> dict[str, str] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _page("Too large", "<p>That form was too large.</p>"))
            return None
        fields = parse_qs(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}

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
        body = (
            f'{note}<form method="post" action="/login"><p><label>Token <input type="password" name="token" '
            f'autocomplete="off"></label></p><p><label>Your name (if the token is shared) <input type="text" '
            f'name="name"></label></p><button>Sign in</button></form>'
        )
        self._send(status, _page("Sign in to Tether approvals", body))

    def _login(self, form: dict[str, str]) -> None:
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
            f"<td>{html.escape(e.tool)}</td><td><code>{html.escape(json.dumps(e.request.get('args'))[:160])}</code>"
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
