"""The decision API: Tether's Guard over versioned JSON, for agents outside Python or spread
over many processes. Mount :func:`api_app` at ``/v1``, or serve it alone::

    TETHER_POLICY=policy.yaml python -m uvicorn --factory tether.core.service.api:factory

Every request carries ``Authorization: Bearer <agent credential>``; a refused credential gets
401 or 403 and is recorded in the audit as an identity finding. A session belongs to the agent
that opened it. Whatever fails inside Tether answers 503 (or a denial), never an allow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..approvals.queue import QueueApprover
from ..audit.verify import verify_session
from ..credentials import Credential, Credentials, IdentityError, record_refusal
from ..decision import Decision
from ..errors import StoreError, TetherError
from ..guard import Guard
from .limits import MAX_BODY, BodyLimit
from .models import (
    AuditOut,
    DecisionOut,
    ErrorOut,
    EventOut,
    ModelRequestIn,
    ModelRequestOut,
    ModelResponseIn,
    OpenSession,
    Recorded,
    ResultOut,
    SessionOpened,
    ToolCallRequest,
    ToolResult,
)
from .sessions import Held, Pending, Sessions

log = logging.getLogger("tether.service")
VERSION = "v1"
QUEUED_WAIT = 5.0  # seconds a call needing approval waits to be queued before it answers pending
_bearer = HTTPBearer(auto_error=False, description="a Tether agent credential (tether agents credentials create)")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 503)}


class ApiError(Exception):
    def __init__(self, status: int, message: str, finding: str | None = None) -> None:
        super().__init__(message)
        self.status, self.finding = status, finding


def _error(status: int, message: str, finding: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(ErrorOut(error=message, finding=finding).model_dump(), status, headers=headers)


class Service:
    """The state behind the routes: the guard, its credentials, the open sessions."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.credentials = Credentials(guard.store)
        self.sessions = Sessions()
        self.approver = QueueApprover(guard.store)

    def refuse(self, error: IdentityError, request: Request, agent: str | None = None) -> ApiError:
        """Audit a refused credential; the error to answer with."""
        client = request.client.host if request.client else None
        try:
            record_refusal(self.guard.store, error, via="api", agent=agent, path=request.url.path, client=client)
        except StoreError as exc:
            log.error("could not audit a refused request: %s", exc)
        status = 403 if error.finding in ("wrong_agent", "wrong_tenant", "wrong_session") else 401
        return ApiError(status, str(error), error.finding)

    def authenticate(self, request: Request) -> Credential:
        scheme, secret = get_authorization_scheme_param(request.headers.get("authorization"))
        try:
            return self.credentials.authenticate(secret if scheme.lower() == "bearer" else None)
        except IdentityError as exc:
            raise self.refuse(exc, request) from None

    def held(self, request: Request, credential: Credential, session_id: str) -> Held:
        """The session, if ``credential`` is its agent's."""
        held = self.sessions.get(session_id)
        if held is None:
            raise ApiError(404, f"no open session {session_id!r}: open one with POST /sessions")
        try:
            credential.check(held.agent, held.tenant)
        except IdentityError as exc:
            why = f"session {session_id} belongs to another agent: {exc}"
            raise self.refuse(IdentityError("wrong_session", why, credential.id), request, credential.agent) from None
        return held

    def decided(self, held: Held, decision: Decision) -> DecisionOut:
        """Keep ``decision`` for its result and answer it; one needing approval is queued."""
        decision_id = decision.event_id or secrets.token_hex(16)  # a denial after a failure may have none
        if not decision.needs_approval:
            held.keep(decision_id, decision)
            return decision_out(decision, decision_id)
        if not self.sessions.pending.acquire(blocking=False):
            denied = held.session.settle(decision, None, unanswered="too many approvals pending in this service")
            held.keep(decision_id, denied)
            return decision_out(denied, decision_id)
        pending = Pending(held.session, decision, self.approver, self.sessions.pending)
        held.keep(decision_id, pending)
        pending.queued(QUEUED_WAIT)
        return pending_out(pending, decision_id)


class Authenticate:
    """Authenticate every request before anything reads its body (so a request without a valid
    credential learns nothing, not even whether its body parses); the documentation is public."""

    def __init__(self, app: ASGIApp, service: Service, public: frozenset[str]) -> None:
        self.app, self.service, self.public = app, service, public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in self.public:
            await self.app(scope, receive, send)
            return
        try:
            credential = await run_in_threadpool(self.service.authenticate, Request(scope))
        except ApiError as exc:
            await _error(exc.status, str(exc), exc.finding)(scope, receive, send)
            return
        except Exception as exc:  # the credentials' store is down, or worse: refuse
            log.exception("could not authenticate a request")
            await _error(503, f"Tether cannot check credentials now: {type(exc).__name__}")(scope, receive, send)
            return
        scope = {**scope, "state": {**scope.get("state", {}), "credential": credential}}
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The request's path inside this app (past the path it is mounted at)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def decision_out(decision: Decision, decision_id: str) -> DecisionOut:
    rewritten = decision.args != decision.call.args
    return DecisionOut(
        decision_id=decision_id,
        verdict=decision.verdict.value,
        allowed=decision.allowed,
        status="pending" if decision.needs_approval else "decided",
        reason=decision.reason,
        rule_ids=list(decision.rule_ids),
        args=dict(decision.args) if rewritten else None,
        message=None if decision.allowed else decision.refusal(),
        findings=list(decision.findings),
        enforcement=decision.enforcement.value,
    )


def pending_out(pending: Pending, decision_id: str) -> DecisionOut:
    out = decision_out(pending.current, decision_id)
    timeout = pending.decision.approval_timeout if out.status == "pending" else None
    return out.model_copy(update={"approval_id": pending.approval_id, "approval_timeout": timeout})


def install_errors(app: FastAPI) -> None:
    """Answer every error as :class:`ErrorOut` JSON; whatever fails inside Tether as 503."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.finding)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:  # a body that is not JSON, a 405...
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        log.error("the audit store failed: %s", exc)
        return _error(503, f"Tether's audit store is unavailable: {exc} (nothing was allowed)")

    @app.exception_handler(TetherError)
    async def tether_error(_: Request, exc: TetherError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def failure(_: Request, exc: Exception) -> JSONResponse:
        log.exception("the decision API failed")
        return _error(503, f"Tether failed: {type(exc).__name__} (nothing was allowed)")


def api_app(guard: Guard, *, max_body: int = MAX_BODY) -> FastAPI:
    """The decision API for ``guard``, to mount at ``/v1`` (or serve alone). Bodies over
    ``max_body`` bytes are refused with 413."""
    service = Service(guard)
    app = FastAPI(
        title="Tether decision API",
        version=VERSION,
        description="Ask Tether before an agent acts, and report what it saw.",
        responses=ERRORS,
    )
    app.state.tether = service
    install_errors(app)
    _routes(app, service)
    app.add_middleware(BodyLimit, limit=max_body)
    public = frozenset(
        url for url in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if url
    )
    app.add_middleware(Authenticate, service=service, public=public)  # outermost: before the body is read
    return app


async def _agent(request: Request, _: Bearer) -> Credential:
    """The credential :class:`Authenticate` found valid (``Bearer`` documents the scheme). A
    coroutine, so FastAPI does not hop to a worker thread to run it."""
    credential = getattr(request.state, "credential", None)
    if not isinstance(credential, Credential):
        raise ApiError(401, "no credential was presented", "missing")
    return credential


Agent = Annotated[Credential, Depends(_agent)]


def _answer(body: BaseModel, status: int = 200) -> Response:
    """``body`` as the JSON response, serialized once: the route's ``response_model`` documents
    it, and FastAPI passes a ``Response`` on without validating and serializing it again."""
    return Response(body.model_dump_json(), status, media_type="application/json")


def _routes(app: FastAPI, service: Service) -> None:
    @app.post("/sessions", status_code=201, response_model=SessionOpened)
    def open_session(body: OpenSession, request: Request, credential: Agent) -> SessionOpened:
        """Open a session for the credential's agent."""
        try:
            credential.check(body.agent, body.tenant)
        except IdentityError as exc:
            raise service.refuse(exc, request, body.agent) from None
        session = service.guard.session(
            credential.agent, user=body.user, tenant=body.tenant, context=body.context, scope=body.scope
        )
        service.sessions.add(Held(session, body.tenant))
        return SessionOpened(session_id=session.id, agent=session.agent, mode=service.guard.mode.value)

    @app.delete("/sessions/{session_id}", status_code=204)
    def close_session(session_id: str, request: Request, credential: Agent) -> None:
        """Forget a session: its decisions can no longer be reported on."""
        service.held(request, credential, session_id)
        service.sessions.close(session_id)

    @app.post("/sessions/{session_id}/tool-calls", response_model=DecisionOut)
    def decide(session_id: str, body: ToolCallRequest, request: Request, credential: Agent) -> Response:
        """Decide on a tool call before it runs: run it only if ``allowed``, with ``args`` if given."""
        held = service.held(request, credential, session_id)
        decision = held.session.before_tool(body.tool, body.args, call_id=body.call_id, caused_by=body.caused_by)
        return _answer(service.decided(held, decision))

    @app.get("/sessions/{session_id}/tool-calls/{decision_id}", response_model=DecisionOut)
    def decision(session_id: str, decision_id: str, request: Request, credential: Agent) -> Response:
        """A decision as it stands: a pending one once a person answered it (or it timed out)."""
        kept = _kept(service.held(request, credential, session_id), decision_id)
        return _answer(pending_out(kept, decision_id) if isinstance(kept, Pending) else decision_out(kept, decision_id))

    @app.post("/sessions/{session_id}/tool-calls/{decision_id}/result", response_model=ResultOut)
    def result(session_id: str, decision_id: str, body: ToolResult, request: Request, credential: Agent) -> Response:
        """Report what the tool returned; the answer is what the agent may see of it."""
        held = service.held(request, credential, session_id)
        kept = _kept(held, decision_id)
        final = kept.current if isinstance(kept, Pending) else kept
        if not final.allowed:
            raise ApiError(409, f"decision {decision_id} did not allow the call: there is no result to report")
        return _answer(ResultOut(output=held.session.after_tool(final, body.output, error=body.error)))

    @app.post("/sessions/{session_id}/model-requests", response_model=ModelRequestOut)
    def model_request(session_id: str, body: ModelRequestIn, request: Request, credential: Agent) -> ModelRequestOut:
        """Screen a model request: send ``messages`` only if ``allowed``."""
        held = service.held(request, credential, session_id)
        screened = held.session.before_model(body.messages, model=body.model, parent=body.parent)
        return ModelRequestOut(
            event_id=screened.event_id, allowed=screened.allowed, messages=screened.messages, reason=screened.reason
        )

    @app.post("/sessions/{session_id}/model-responses", response_model=Recorded)
    def model_response(session_id: str, body: ModelResponseIn, request: Request, credential: Agent) -> Recorded:
        """Record a model response and the tool calls it proposes (``{"id", "name"}`` each)."""
        held = service.held(request, credential, session_id)
        event_id = held.session.after_model(body.response, tool_calls=body.tool_calls, parent=body.parent)
        return Recorded(event_id=event_id)

    @app.get("/sessions/{session_id}/audit", response_model=AuditOut)
    def audit(
        session_id: str, request: Request, credential: Agent, last: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> AuditOut:
        """The session's audit events (the newest ``last``, redacted as stored) and whether its chain verifies."""
        service.held(request, credential, session_id)
        rows = service.guard.store.session_events(session_id)
        report = verify_session(service.guard.store.key, rows)
        return AuditOut(
            session_id=session_id,
            events=[_event(e.as_dict()) for e in rows[-last:]],
            verified=report.ok,
            problems=[p.message for p in report.problems],
        )


def _kept(held: Held, decision_id: str) -> Decision | Pending:
    kept = held.decision(decision_id)
    if kept is None:
        raise ApiError(404, f"no decision {decision_id!r} in this session (or too old to be kept)")
    return kept


def _event(row: dict[str, Any]) -> EventOut:
    return EventOut(**{name: row[name] for name in EventOut.model_fields})


def factory() -> FastAPI:
    """The API served alone at ``/v1``, for uvicorn's ``--factory``: the policy from
    ``TETHER_POLICY``, the store from ``TETHER_STORE`` (else the default), and, with
    ``TETHER_MAX_BODY``, a body limit in bytes."""
    policy = os.environ.get("TETHER_POLICY")
    if not policy:
        raise TetherError("set TETHER_POLICY to the policy file the decision API enforces")
    guard = Guard(policy, store=os.environ.get("TETHER_STORE") or None)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        guard.close()

    root = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    install_errors(root)  # a path the mount does not match (a newline in it) answers in the API's shape
    root.mount(f"/{VERSION}", api_app(guard, max_body=int(os.environ.get("TETHER_MAX_BODY") or MAX_BODY)))
    return root
