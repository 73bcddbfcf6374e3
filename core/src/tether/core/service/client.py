"""A client of the decision API: a guard whose decisions are made by a Tether service, with the
session API of :class:`~tether.core.Guard` so an adapter works unchanged::

    from tether.core.service.client import RemoteGuard

    guard = RemoteGuard("http://127.0.0.1:8765/v1", credential=os.environ["TETHER_CREDENTIAL"])
    session = guard.session("support-bot")
    decision = session.before_tool("refund", {"amount": 80})  # a Decision, as in process

Needs ``httpx`` (``pip install "tether[client]"``), not FastAPI. Every request is bounded
(``timeout`` seconds to read an answer, ``connect_timeout`` to connect); the guard keeps one
pool of keep-alive connections, shared by its threads.

Fails closed: a service that cannot be reached, does not answer in time, answers 5xx, refuses
the credential or answers something that is not a decision gives a denial saying why, never an
exception that lets a tool run, never an allow. Only a service that said it runs in monitor
mode makes a failure an allow (logged), as a monitoring guard does in process; a refused
credential denies in any mode. A call that needs approval is answered by a person in the
service's approval queue (``tether approvals``, the approvals page): :meth:`RemoteSession.resolve`
polls the decision until it is settled, for at most the policy's approval timeout plus
``approval_margin``.

The service holds the policy and the audit: what needs them in this process (``guard.policy``,
``guard.store``, settling an approval with an answer obtained elsewhere, a planner) raises
:class:`RemoteUnsupported` with what to do instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ..approvals import ApprovalAnswer, Approver
from ..decision import ERROR_RULE, Decision, Enforcement, ToolCall
from ..errors import StoreError, TetherError, UnsupportedValueError
from ..policy.schema import Mode, Verdict
from ..values import as_text, to_plain

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('a remote guard needs httpx: pip install "tether[client]"') from exc

log = logging.getLogger("tether.client")

TIMEOUT = 2.0  # seconds to wait for an answer to one request
CONNECT_TIMEOUT = 1.0  # seconds to connect
APPROVAL_TIMEOUT = 300.0  # the policy default, when the service does not say
APPROVAL_MARGIN = 10.0  # waited past the approval timeout before a pending call is denied here
MAX_ANSWER = 4 << 20  # bytes: a longer answer is not a decision
_POLL_FAILURES = 3  # polls in a row that fail before a pending call is denied
_VERDICTS = {v.value: v for v in Verdict}
_ENFORCEMENTS = {e.value: e for e in Enforcement}
_JSON = {"content-type": "application/json"}


class RemoteUnsupported(TetherError):
    """What a remote guard cannot do: the service holds the policy and the audit."""


class _Failed(Exception):
    """A request that gave no usable answer; ``refused``: the service refused the credential."""

    def __init__(self, why: str, *, refused: bool = False) -> None:
        super().__init__(why)
        self.refused = refused


class RemoteGuard:
    """The guard of a Tether service at ``url`` (the API's base, ending in ``/v1``), acting with
    the agent ``credential`` (``tether agents credentials create``; default
    ``TETHER_CREDENTIAL``).

    ``timeout``: the most seconds to wait for an answer to one request (a decision, a result);
    ``connect_timeout``: to connect. ``approval_margin``: seconds waited past a pending call's
    approval timeout before it is denied here. ``transport``: an ``httpx`` transport (tests).
    """

    remote = True  # adapters check this to refuse what needs a local policy or store

    def __init__(
        self,
        url: str,
        credential: str | None = None,
        *,
        timeout: float = TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        approval_margin: float = APPROVAL_MARGIN,
        poll_interval: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        secret = credential or os.environ.get("TETHER_CREDENTIAL")
        if not secret:
            raise TetherError("a remote guard needs an agent credential (credential=... or TETHER_CREDENTIAL)")
        if timeout <= 0 or connect_timeout <= 0:
            raise TetherError("a remote guard's timeouts must be positive: every request is bounded")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.approval_margin = approval_margin
        self.poll_interval = poll_interval
        #: enforce until the service says it monitors (then a failure here allows, and is logged)
        self.mode = Mode.ENFORCE
        self.approver = None
        self.telemetry = None
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {secret}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            transport=transport,
            follow_redirects=False,
        )
        self._sessions: dict[tuple[Any, ...], RemoteSession] = {}
        self._lock = threading.Lock()

    @property
    def policy(self) -> NoReturn:
        raise RemoteUnsupported(f"the policy is held by the Tether service at {self.url}, not in this process")

    @property
    def store(self) -> NoReturn:
        raise RemoteUnsupported(f"the audit is held by the Tether service at {self.url}: read it there")

    def session(
        self,
        agent: str,
        session_id: str | None = None,
        *,
        user: str | None = None,
        tenant: str | None = None,
        context: Mapping[str, str] | None = None,
        parent: str | None = None,
        scope: Any = None,
        planner: Any = None,
    ) -> RemoteSession:
        """A handle for ``agent`` acting in a session of the service. The service chooses the
        session's id (:attr:`RemoteSession.remote_id`, opened at the first call); ``session_id``
        names it here (recorded in its context as ``session``), and handles asked for with the
        same names share the service's session."""
        if not agent:
            raise TetherError("a session needs the name of the agent acting in it")
        if planner is not None:
            raise RemoteUnsupported("a planner needs the policy: give the session a scope instead (scope=...)")
        local = session_id or os.urandom(16).hex()
        ctx = {**dict(context or {}), "session": local}
        if parent:
            ctx["parent_session"] = parent
        key = (agent, local, user, tenant, tuple(sorted(ctx.items())), json.dumps(scope, sort_keys=True, default=str))
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = RemoteSession(self, local, agent, user, tenant, ctx, scope)
                self._sessions[key] = session
                while len(self._sessions) > 10_000:
                    del self._sessions[next(iter(self._sessions))]
            return session

    # -- requests ----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer to one bounded request; :class:`_Failed` for anything else."""
        try:
            content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise _Failed(f"the request cannot be sent as JSON: {exc}") from None
        started = time.monotonic()
        try:
            request = self._client.build_request(method, path, content=content, headers=_JSON if content else None)
            response = self._client.send(request, stream=True)
            try:
                raw = _read(response, started + self.timeout)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise _Failed(
                f"no answer from Tether's decision API at {self.url} within {self.timeout:g}s ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise _Failed(f"cannot reach Tether's decision API at {self.url}: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status >= 400:
            refused = status in (401, 403)
            raise _Failed(f"Tether's decision API answered {status}: {_message(raw)}", refused=refused)
        if status == 204:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Failed(f"Tether's decision API answered {status} with something that is not JSON") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteGuard:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read(response: httpx.Response, deadline: float) -> bytes:
    """The body, bounded in size and in time (a server trickling bytes does not hold a call)."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER:
            raise _Failed(f"Tether's decision API answered more than {MAX_ANSWER} bytes")
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took too long to arrive")
    return bytes(body)


def _message(raw: bytes) -> str:
    try:
        answer = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace") or "(no body)"
    if isinstance(answer, dict):
        if isinstance(answer.get("error"), str):
            return str(answer["error"])
        if answer.get("detail") is not None:  # a 422 names each bad field
            return json.dumps(answer["detail"])[:500]
    return str(answer)[:200]


def _plain(value: Any, name: str) -> Any:
    try:
        return to_plain(value, name)
    except UnsupportedValueError:  # not plain data: sent (and recorded) as text, as in process
        return as_text(value)


class RemoteSession:
    """One agent in one session of a Tether service, with :class:`~tether.core.Session`'s API."""

    def __init__(
        self,
        guard: RemoteGuard,
        local_id: str,
        agent: str,
        user: str | None,
        tenant: str | None,
        context: dict[str, str],
        scope: Any,
    ) -> None:
        self.guard = guard
        self.agent = agent
        self.user = user
        self.tenant = tenant
        self.context = context
        self.planner = None
        self._id = local_id
        self._scope = scope
        self.remote_id: str | None = None  # the service's id for the session, once opened
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        """The session's name in this process (``remote_id`` is the service's)."""
        return self._id

    def _opened(self) -> str:
        with self._lock:
            if self.remote_id is None:
                body: dict[str, Any] = {"agent": self.agent, "context": self.context}
                if self.user:
                    body["user"] = self.user
                if self.tenant:
                    body["tenant"] = self.tenant
                if self._scope is not None:
                    body["scope"] = self._scope
                opened = self.guard.request("POST", "/sessions", body)
                if not isinstance(opened, dict) or not isinstance(opened.get("session_id"), str):
                    raise _Failed("Tether's decision API opened a session but did not say its id")
                if opened.get("mode") == Mode.MONITOR.value:
                    self.guard.mode = Mode.MONITOR
                self.remote_id = str(opened["session_id"])
            return self.remote_id

    def _path(self, tail: str = "") -> str:
        return f"/sessions/{self._opened()}{tail}"

    # -- tools -------------------------------------------------------------------------------

    def before_tool(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
        caused_by: str | None = None,
        cautions: Sequence[Any] = (),
    ) -> Decision:
        """Ask the service; never raises for a decision, and denies whatever goes wrong."""
        call = ToolCall(self.agent, self.id, tool, args if args is not None else {}, call_id, caused_by)
        if cautions:
            return self._failed(call, "cautions cannot be sent to Tether's decision API", refused=True)
        try:
            plain = to_plain(call.args, "args")
        except UnsupportedValueError as exc:
            return self._failed(call, f"{exc} (denied: unreadable arguments)", refused=True)
        body: dict[str, Any] = {"tool": tool, "args": plain}
        if call_id:
            body["call_id"] = call_id
        if caused_by:
            body["caused_by"] = caused_by
        try:
            return _decision(call, self.guard.request("POST", self._path("/tool-calls"), body))
        except _Failed as exc:
            return self._failed(call, str(exc), refused=exc.refused)
        except Exception as exc:
            log.exception("Tether's client failed while asking about %s", tool)
            return self._failed(call, f"Tether's client failed: {type(exc).__name__}: {exc}")

    def _failed(self, call: ToolCall, why: str, *, refused: bool = False) -> Decision:
        """A denial (in monitor mode, unless refused: an allow, logged) saying why."""
        monitored = self.guard.mode is Mode.MONITOR and not refused
        if monitored:
            log.error("Tether could not decide on %s (monitor mode: it runs): %s", call.tool, why)
        else:
            log.error("Tether denied %s to stay safe: %s", call.tool, why)
        return Decision(
            call,
            Verdict.DENY,
            why + ("" if monitored else " (denied to stay safe)"),
            (ERROR_RULE,),
            call.args,
            Enforcement.MONITORED if monitored else Enforcement.ENFORCED,
            why,
        )

    def resolve(self, decision: Decision, *, approver: Approver | None = None) -> Decision:
        """Wait for a person's answer in the service's approval queue: the final decision, or a
        denial once the approval timeout (plus the margin) has passed."""
        if not decision.needs_approval:
            return decision
        if approver is not None:
            why = "a remote session's approvals are answered in the service's approval queue, not by a local approver"
            return self._failed(decision.call, why, refused=True)
        timeout = (decision.approval_timeout or APPROVAL_TIMEOUT) + self.guard.approval_margin
        deadline = time.monotonic() + timeout
        path = self._path(f"/tool-calls/{decision.event_id}")
        interval, failures, last = self.guard.poll_interval, 0, ""
        while time.monotonic() < deadline:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 2.0)
            try:
                current = _decision(decision.call, self.guard.request("GET", path))
            except _Failed as exc:
                failures, last = failures + 1, str(exc)
                if exc.refused or failures >= _POLL_FAILURES:
                    return self._failed(decision.call, f"waiting for approval: {last}", refused=True)
                continue
            failures = 0
            if not current.needs_approval:
                return current
        why = f"no answer from the approval queue within {timeout:g}s" + (f" ({last})" if last else "")
        return self._failed(decision.call, why, refused=True)

    def settle(self, decision: Decision, answer: ApprovalAnswer | None, *, unanswered: str = "no answer") -> Decision:
        """A remote call needing approval is settled by a person in the service's queue only:
        an answer obtained here (a framework's pause) denies it."""
        if not decision.needs_approval:
            return decision
        why = (
            "a call needing approval through Tether's decision API is answered in the service's approval queue "
            "(tether approvals, the approvals page), not with an answer given to this process"
        )
        return self._failed(decision.call, why if answer is not None else unanswered, refused=True)

    def record_answer(self, decision: Decision, answer: ApprovalAnswer, *, asked_by: str) -> str:
        raise RemoteUnsupported("the decision API does not record a framework's own approvals")

    def after_tool(self, decision: Decision, output: Any = None, *, error: BaseException | str | None = None) -> Any:
        """Report what the tool returned; returns what the agent may see. Raises
        :class:`StoreError` (as a guard in process does when it cannot record a result) if the
        service does not take it: the agent then gets nothing of the output."""
        if decision.event_id is None:  # a failure decided it here: the service never saw the call
            if self.guard.mode is Mode.MONITOR:
                return output
            raise StoreError(f"the call to {decision.call.tool} was not decided by Tether's decision API")
        sent = _plain(output, "output")
        body: dict[str, Any] = {"output": sent}
        if error is not None:
            body["error"] = str(error)[:10_000]
        try:
            answer = self.guard.request("POST", self._path(f"/tool-calls/{decision.event_id}/result"), body)
        except _Failed as exc:
            raise StoreError(f"Tether could not record the result of {decision.call.tool}: {exc}") from None
        if not isinstance(answer, dict) or "output" not in answer:
            raise StoreError("Tether's decision API answered a result without an output")
        shown = answer["output"]
        return output if shown == sent else shown  # unchanged: the very object the tool returned

    # -- models ------------------------------------------------------------------------------

    def before_model(self, messages: Any, *, model: str | None = None, parent: str | None = None) -> Any:
        """Screen a model request: a :class:`~tether.core.guard.ModelRequest`, not allowed
        (or, in monitor mode, allowed and logged) if the service gives no answer."""
        from ..guard import ModelRequest

        sent = _plain(messages, "messages")
        body: dict[str, Any] = {"messages": sent if isinstance(sent, (list, str)) else as_text(sent)}
        if model:
            body["model"] = model
        if parent:
            body["parent"] = parent
        try:
            answer = self.guard.request("POST", self._path("/model-requests"), body)
            if not (isinstance(answer, dict) and isinstance(answer.get("allowed"), bool) and "messages" in answer):
                raise _Failed("Tether's decision API answered a model request with something else")
        except _Failed as exc:
            if self.guard.mode is Mode.MONITOR and not exc.refused:
                log.error("Tether could not screen a model request (monitor mode: it is sent): %s", exc)
                return ModelRequest("", messages)
            log.error("Tether withheld a model request to stay safe: %s", exc)
            return ModelRequest("", messages, allowed=False, reason=f"{exc} (withheld to stay safe)")
        shown = answer["messages"]
        event_id = str(answer.get("event_id") or "")
        if not answer["allowed"]:
            return ModelRequest(event_id, messages, allowed=False, reason=str(answer.get("reason") or ""))
        return ModelRequest(event_id, messages if shown == body["messages"] else shown)

    def after_model(
        self, response: Any, *, tool_calls: Sequence[Mapping[str, Any]] = (), parent: str | None = None
    ) -> str:
        """Record a model response; raises :class:`StoreError` if the service does not take it
        (in monitor mode: logs, and returns "")."""
        proposed = [{k: str(c.get(k)) for k in ("id", "name") if c.get(k) is not None} for c in tool_calls]
        body: dict[str, Any] = {"response": _plain(response, "response"), "tool_calls": proposed}
        if parent:
            body["parent"] = parent
        try:
            answer = self.guard.request("POST", self._path("/model-responses"), body)
            if not (isinstance(answer, dict) and isinstance(answer.get("event_id"), str)):
                raise _Failed("Tether's decision API answered a model response with something else")
        except _Failed as exc:
            if self.guard.mode is Mode.MONITOR and not exc.refused:
                log.error("Tether could not record a model response (monitor mode: the agent goes on): %s", exc)
                return ""
            raise StoreError(f"Tether could not record a model response: {exc}") from None
        return str(answer["event_id"])

    # -- what needs the policy or the audit here ----------------------------------------------

    def set_scope(self, scope: Any, *, origin: str = "application") -> NoReturn:
        raise RemoteUnsupported("a remote session's scope is given when it opens: guard.session(..., scope=...)")

    def plan(self, request: str | None = None) -> NoReturn:
        raise RemoteUnsupported("a planner needs the policy: give the session a scope instead")

    def trusted_input(self, content: Any, *, source: str = "user") -> NoReturn:
        raise RemoteUnsupported("the decision API takes the trusted request from model requests (before_model)")

    @property
    def tainted(self) -> NoReturn:
        raise RemoteUnsupported("a remote session's taint is known to the service: read its audit")

    def close(self) -> None:
        """Forget the session in the service (its decisions can no longer be reported on)."""
        with self._lock:
            remote, self.remote_id = self.remote_id, None
        if remote is not None:
            try:
                self.guard.request("DELETE", f"/sessions/{remote}")
            except _Failed as exc:
                log.warning("could not close session %s in Tether's decision API: %s", remote, exc)

    # -- async: the same calls in a worker thread, on the guard's one connection pool ----------

    async def abefore_tool(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
        caused_by: str | None = None,
        cautions: Sequence[Any] = (),
    ) -> Decision:
        return await asyncio.to_thread(
            self.before_tool, tool, args, call_id=call_id, caused_by=caused_by, cautions=cautions
        )

    async def aresolve(self, decision: Decision, *, approver: Approver | None = None) -> Decision:
        if not decision.needs_approval:
            return decision
        return await asyncio.to_thread(self.resolve, decision, approver=approver)

    async def asettle(
        self, decision: Decision, answer: ApprovalAnswer | None, *, unanswered: str = "no answer"
    ) -> Decision:
        return self.settle(decision, answer, unanswered=unanswered)

    async def arecord_answer(self, decision: Decision, answer: ApprovalAnswer, *, asked_by: str) -> str:
        return self.record_answer(decision, answer, asked_by=asked_by)

    async def aafter_tool(
        self, decision: Decision, output: Any = None, *, error: BaseException | str | None = None
    ) -> Any:
        return await asyncio.to_thread(self.after_tool, decision, output, error=error)

    async def abefore_model(self, messages: Any, *, model: str | None = None, parent: str | None = None) -> Any:
        return await asyncio.to_thread(self.before_model, messages, model=model, parent=parent)

    async def aafter_model(
        self, response: Any, *, tool_calls: Sequence[Mapping[str, Any]] = (), parent: str | None = None
    ) -> str:
        return await asyncio.to_thread(self.after_model, response, tool_calls=tool_calls, parent=parent)


def _decision(call: ToolCall, answer: Any) -> Decision:
    """The service's answer as a :class:`Decision`; :class:`_Failed` if it is not a sound one."""
    if not isinstance(answer, dict):
        raise _Failed("Tether's decision API answered something that is not a decision")
    verdict = _VERDICTS.get(answer.get("verdict"))  # type: ignore[arg-type]
    enforcement = _ENFORCEMENTS.get(answer.get("enforcement"))  # type: ignore[arg-type]
    decision_id, reason = answer.get("decision_id"), answer.get("reason")
    rule_ids, args = answer.get("rule_ids"), answer.get("args")
    findings, timeout = answer.get("findings") or [], answer.get("approval_timeout")
    status, allowed = answer.get("status"), answer.get("allowed")
    sound = (
        verdict is not None
        and enforcement is not None
        and isinstance(decision_id, str)
        and bool(decision_id)
        and isinstance(reason, str)
        and isinstance(rule_ids, list)
        and all(isinstance(r, str) for r in rule_ids)
        and (args is None or isinstance(args, dict))
        and isinstance(findings, list)
        and (timeout is None or (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0))
        and status in ("decided", "pending")
        and isinstance(allowed, bool)
    )
    if not sound:
        raise _Failed("Tether's decision API answered a malformed decision")
    assert verdict is not None and enforcement is not None
    decision = Decision(
        call,
        verdict,
        str(reason),
        tuple(str(r) for r in rule_ids),  # type: ignore[union-attr]
        dict(args) if args is not None else call.args,
        enforcement,
        None,
        str(decision_id),
        float(timeout) if timeout is not None else None,
        findings=tuple(str(f) for f in findings),
    )
    # what the service says must be what the decision means here: a mismatch is not a decision
    if decision.allowed is not allowed or decision.needs_approval is not (status == "pending"):
        raise _Failed("Tether's decision API answered a decision that contradicts itself")
    return decision
