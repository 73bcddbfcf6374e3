"""``tether serve``: the approvals page as an ASGI app (FastAPI), run by :mod:`.run`.

No anonymous access: people sign in with a token set when the server starts, either their own
(``NAME=TOKEN``: the token says who they are) or a shared one (they give their name). Every
form carries a CSRF token (the sign-in form too), cookies are HttpOnly and SameSite=Strict,
every value shown is HTML-escaped (:mod:`.page`), a pending request's real argument values are
shown only to the signed-in people who may answer it, and every response carries a content
security policy that allows no script at all. It binds to 127.0.0.1 unless told otherwise;
anything wider belongs behind a TLS proxy. Every request is bounded before anyone signs in
(:class:`~.run.Limits`, applied by :mod:`.run`).

Other apps (the JSON decision API) are mounted beside the page: ``approvals_app(...,
mounts={"/v1": api})``.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..approvals import FOR_SESSION, ONCE
from ..approvals.queue import PENDING, ApprovalQueue, Entry
from ..approvals.sealed import Revealed
from ..audit.render import session_lines
from ..audit.store import AuditStore
from ..errors import TetherError
from ..policy.compile import CompiledPolicy
from . import page

COOKIE = "tether_session"
LOGIN_COOKIE = "tether_login"  # ties the sign-in form to the browser that loaded it
SIGN_IN_HOURS = 8

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class _SignIn:
    who: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    until: float = field(default_factory=lambda: time.time() + SIGN_IN_HOURS * 3600)
    message: str = ""


class Site:
    """The page's state: the queue, the tokens, who is signed in."""

    def __init__(self, store: AuditStore, tokens: Mapping[str, str | None], policy: CompiledPolicy | None) -> None:
        if not tokens:
            raise TetherError("the approval page needs at least one token")
        self.store = store
        self.queue = ApprovalQueue(store)
        self.policy = policy
        self.tokens = dict(tokens)  # token -> the person it names, or None for a shared token
        self.sign_ins: dict[str, _SignIn] = {}
        self.lock = threading.Lock()
        self._secret = secrets.token_bytes(32)  # signs the sign-in form's CSRF tokens

    def sign_in(self, token: str, name: str) -> str | None:
        """A new sign-in's cookie value for a known token; None for a wrong one."""
        matched = [who for known, who in self.tokens.items() if hmac.compare_digest(known.encode(), token.encode())]
        if not matched:
            return None
        who = matched[0] or name.strip()
        if not who:
            return None
        sid = secrets.token_urlsafe(32)
        with self.lock:
            now = time.time()
            self.sign_ins = {k: v for k, v in self.sign_ins.items() if v.until > now}
            self.sign_ins[sid] = _SignIn(who)
        return sid

    def signed_in(self, sid: str | None) -> _SignIn | None:
        if not sid:
            return None
        with self.lock:
            found = self.sign_ins.get(sid)
        return found if found is not None and found.until >= time.time() else None

    def sign_out(self, sid: str) -> None:
        with self.lock:
            self.sign_ins.pop(sid, None)

    def revealed(self, entry: Entry, who: str) -> Revealed:
        """The real arguments of ``entry`` for ``who``: shown only to someone who may answer it."""
        if entry.approvers is not None and who not in entry.approvers:
            return Revealed(note="they are shown only to the people who may answer this request")
        return self.queue.reveal(entry)

    def login_token(self, nonce: str) -> str:
        """The sign-in form's CSRF token for the browser holding ``nonce`` in its login cookie."""
        return hmac.new(self._secret, nonce.encode(), "sha256").hexdigest()


def _cookie(request: Request, name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(request.headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def _html(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status, {**HEADERS, **(headers or {})}, media_type="text/html; charset=utf-8")


def _redirect(where: str, headers: Mapping[str, str] | None = None) -> Response:
    return _html(b"", 303, {"Location": where, **(headers or {})})


async def _form(request: Request) -> dict[str, str]:
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def approvals_app(
    store: AuditStore,
    tokens: Mapping[str, str | None],
    *,
    policy: CompiledPolicy | None = None,
    mounts: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The approvals page for the queue in ``store``; ``tokens`` maps each sign-in token to the
    person it names (None: shared, people give their name). ``policy`` (optional) says what each
    tool does; ``mounts`` are other ASGI apps served under a path prefix (``{"/v1": api}``)."""
    site = Site(store, tokens, policy)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, title="Tether approvals")
    app.state.site = site
    for prefix, mounted in (mounts or {}).items():
        app.mount(prefix, mounted)

    Handler = Callable[[Request, _SignIn, str], Awaitable[Response]]

    def signed_in(handler: Handler, *, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """A route for signed-in people only (anyone else is sent to sign in); a form posted
        without its CSRF token is refused."""

        async def route(request: Request) -> Response:
            form = await _form(request) if post else {}
            sid = _cookie(request, COOKIE)
            sign_in = site.signed_in(sid)
            if sign_in is None or sid is None:
                return _redirect("/login")
            if post and not hmac.compare_digest(form.get("csrf", "").encode(), sign_in.csrf.encode()):
                why = "<p>The form's security token is missing or wrong; reload the page and try again.</p>"
                return _html(page.page("Refused", why), 403)
            request.state.form = form
            return await handler(request, sign_in, sid)

        return route

    def login_page(error: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(24)
        cookie = f"{LOGIN_COOKIE}={nonce}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600"
        body = page.page("Sign in to Tether approvals", page.login(site.login_token(nonce), error))
        return _html(body, status, {"Set-Cookie": cookie})

    @app.get("/login")
    async def get_login() -> Response:
        return login_page()

    @app.post("/login")
    async def post_login(request: Request) -> Response:
        form = await _form(request)
        nonce = _cookie(request, LOGIN_COOKIE)
        if nonce is None or not hmac.compare_digest(form.get("csrf", ""), site.login_token(nonce)):
            why = '<p>The sign-in form expired; <a href="/login">load it again</a>.</p>'
            return _html(page.page("Refused", why), 403)  # posted from another site, or a stale page
        sid = site.sign_in(form.get("token", ""), form.get("name", ""))
        if sid is None:
            await run_in_threadpool(time.sleep, 0.5)  # slows down guessing
            return login_page("Wrong token (or a shared token without your name).", 401)
        cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SIGN_IN_HOURS * 3600}"
        return _redirect("/", {"Set-Cookie": cookie})

    async def logout(request: Request, sign_in: _SignIn, sid: str) -> Response:
        site.sign_out(sid)
        return _redirect("/login", {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"})

    def index_body(sign_in: _SignIn) -> bytes:
        pending = site.queue.entries()
        recent = [e for e in site.queue.entries(status=None, limit=30) if e.status != PENDING or e.expired]
        flash, sign_in.message = sign_in.message, ""
        return page.page("Pending approvals", page.index(pending, recent, flash), sign_in.who, sign_in.csrf)

    async def index(request: Request, sign_in: _SignIn, sid: str) -> Response:
        return _html(await run_in_threadpool(index_body, sign_in))

    def approval_body(sign_in: _SignIn, entry_id: str) -> tuple[int, bytes]:
        entry = site.queue.get(entry_id)
        if entry is None:
            missing = f"<p>No approval request {page.esc(entry_id)}.</p>"
            return 404, page.page("Not found", missing, sign_in.who, sign_in.csrf)
        events = site.store.session_events(entry.session_id)
        tool = site.policy.policy.tools.get(entry.tool) if site.policy is not None else None
        flash, sign_in.message = sign_in.message, ""
        revealed = site.revealed(entry, sign_in.who)
        body = page.request_page(entry, events, site.store.key, tool, sign_in.csrf, flash, revealed)
        title = f"{entry.agent} asks to call {entry.tool}"
        return 200, page.page(title, body, sign_in.who, sign_in.csrf)

    async def approval(request: Request, sign_in: _SignIn, sid: str) -> Response:
        status, body = await run_in_threadpool(approval_body, sign_in, request.path_params["entry_id"])
        return _html(body, status)

    def answer(sign_in: _SignIn, entry_id: str, form: dict[str, str]) -> None:
        try:
            edited = json.loads(form["args"]) if form.get("args", "").strip() else None
        except json.JSONDecodeError as exc:
            sign_in.message = f"error: the edited arguments are not JSON: {exc}"
            return
        pending = site.queue.get(entry_id) if edited is not None else None
        if pending is not None:
            revealed = site.revealed(pending, sign_in.who)
            if revealed.shown and edited == revealed.args:
                edited = None  # the edit box starts from the real values: left unchanged, nothing was edited
        try:
            entry = site.queue.answer(
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

    async def post_answer(request: Request, sign_in: _SignIn, sid: str) -> Response:
        entry_id = request.path_params["entry_id"]
        await run_in_threadpool(answer, sign_in, entry_id, request.state.form)
        return _redirect(f"/approvals/{quote(entry_id)}")

    def session_body(sign_in: _SignIn, session_id: str) -> bytes:
        lines = session_lines(site.store.session_events(session_id)[-200:])
        return page.page(f"Session {session_id}", page.session(lines), sign_in.who, sign_in.csrf)

    async def session(request: Request, sign_in: _SignIn, sid: str) -> Response:
        return _html(await run_in_threadpool(session_body, sign_in, request.path_params["session_id"]))

    app.add_api_route("/", signed_in(index), methods=["GET"])
    app.add_api_route("/logout", signed_in(logout, post=True), methods=["POST"])
    app.add_api_route("/approvals/{entry_id}", signed_in(approval), methods=["GET"])
    app.add_api_route("/approvals/{entry_id}", signed_in(post_answer, post=True), methods=["POST"])
    app.add_api_route("/sessions/{session_id:path}", signed_in(session), methods=["GET"])

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        sign_in = site.signed_in(_cookie(request, COOKIE))
        if sign_in is None:
            return _redirect("/login")
        return _html(page.page("Not found", "<p>No such page.</p>", sign_in.who, sign_in.csrf), 404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _html(page.page("Not allowed", "<p>That method is not allowed here.</p>"), 405)

    return app
