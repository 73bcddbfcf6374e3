"""The AG2 middleware: every tool call of a guarded agent is decided by Tether before it runs.

AG2 builds one middleware instance per turn from a factory and wraps each tool's execution in
its ``on_tool_execution`` (outside any tool-level hook such as ``approval_required``), and the
model client in its ``on_llm_call``. Returning a ``ToolResultEvent`` without calling
``call_next`` skips the tool and hands the model that result: that is how a refusal reaches it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from copy import copy
from typing import Any, Literal

from ag2.events import (
    BaseEvent,
    ModelResponse,
    ToolCallEvent,
    ToolErrorEvent,
    ToolResultEvent,
)
from ag2.middleware import BaseMiddleware, ToolExecution, ToolResultType
from ag2.utils import AGENT_CONTEXT_DEPENDENCY_KEY
from tether.core import ApprovalAnswer, Approver, Decision, Guard, Mode, Session

from ._convert import arguments, hitl_question, output, response_text, transcript

log = logging.getLogger("tether.ag2")

Approvals = Literal["tether", "ag2"]
#: A fixed session id, or a function of the AG2 context returning one (``None``: the default).
SessionChoice = str | Callable[[Any], "str | None"] | None

_TASK_KEY = "ag2.task"  # where an entered ``ag2.Task`` puts itself in the context's dependencies
_YES = frozenset({"y", "yes", "approve", "approved", "allow"})

# What the Tether middleware of each guard is deciding in the current task: an inner copy of the
# same middleware (registered twice) passes through instead of deciding and asking twice.
_deciding: ContextVar[frozenset[tuple[int, str]]] = ContextVar("tether_ag2_deciding", default=frozenset())


class TetherMiddleware:
    """Builds, for each AG2 turn, the middleware that puts the turn's actions through ``guard``.

    Pass it in ``Agent(..., middleware=[...])``, to ``agent.ask(..., middleware=[...])``, or use
    :func:`guard_agent`.

    ``agent`` overrides the name the policy knows the agent by (default: the AG2 agent's name).
    ``session_id`` fixes the Tether session, or computes it from the AG2 context; by default it
    is the running ``ag2.Task``'s id, else the conversation stream's id. ``approvals`` chooses who
    answers calls the policy asks about: ``"tether"`` (the guard's approver, e.g. the persistent
    :class:`~tether.core.QueueApprover`, or ``approver``) or ``"ag2"`` (the agent's own
    ``hitl_hook``, answered y/n). ``record_model`` records each model call's new input and the
    response, linking tool calls to the response that proposed them.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        agent: str | None = None,
        session_id: SessionChoice = None,
        user: str | None = None,
        tenant: str | None = None,
        approvals: Approvals = "tether",
        approver: Approver | None = None,
        hitl_approver: str = "ag2-hitl",
        record_model: bool = True,
    ) -> None:
        if approvals not in ("tether", "ag2"):
            raise ValueError(f"approvals must be 'tether' or 'ag2', not {approvals!r}")
        self.guard = guard
        self.agent = agent
        self.session_id = session_id
        self.user = user
        self.tenant = tenant
        self.approvals = approvals
        self.approver = approver
        self.hitl_approver = hitl_approver
        self.record_model = record_model

    def __call__(self, event: BaseEvent, context: Any) -> BaseMiddleware:
        return _TetherTurn(event, context, owner=self)

    def session(self, context: Any) -> Session:
        """The Tether session of an AG2 context: who acts, in which run."""
        agent = self.agent or getattr(context.dependencies.get(AGENT_CONTEXT_DEPENDENCY_KEY), "name", None)
        if not agent:
            raise ValueError("cannot tell which agent is acting: no AG2 agent in the context and no agent= given")
        stream = str(context.stream.id)
        found: dict[str, str] = {"framework": "ag2", "stream": stream}
        task = context.dependencies.get(_TASK_KEY)
        task_id = _task_id(task)
        if task_id:
            found["task"] = task_id
        chosen = self.session_id(context) if callable(self.session_id) else self.session_id
        session_id = chosen or task_id or stream
        return self.guard.session(str(agent), str(session_id), user=self.user, tenant=self.tenant, context=found)


def guard_agent(agent: Any, guard: Guard, **options: Any) -> Any:
    """Put ``agent``'s actions under ``guard`` (options as for :class:`TetherMiddleware`); returns it.

    The middleware goes first in the agent's chain, so Tether decides before any other
    middleware sees the call. Guarding an agent twice with the same guard changes nothing.
    """
    registered = getattr(agent, "_middleware", ())  # AG2 has no public list of factories before 1.2
    if any(isinstance(m, TetherMiddleware) and m.guard is guard for m in registered):
        return agent
    agent.insert_middleware(TetherMiddleware(guard, **options))
    return agent


def _task_id(task: Any) -> str | None:
    try:
        return str(task.task_id) if task is not None else None
    except RuntimeError:  # a Task not yet entered has no id
        return None


class _TetherTurn(BaseMiddleware):
    """One turn's middleware: its Tether session, and which model response proposed each call."""

    def __init__(self, event: BaseEvent, context: Any, *, owner: TetherMiddleware) -> None:
        super().__init__(event, context)
        self._owner = owner
        self._session: Session | None = None
        self._proposed: dict[str, str] = {}  # tool call id -> audit event of the model response

    def _current(self, context: Any) -> Session:
        if self._session is None:
            self._session = self._owner.session(context)
        return self._session

    @property
    def _monitoring(self) -> bool:
        return self._owner.guard.mode is Mode.MONITOR

    # -- tools -------------------------------------------------------------------------------

    async def on_tool_execution(self, call_next: ToolExecution, event: ToolCallEvent, context: Any) -> ToolResultType:
        mark = (id(self._owner.guard), f"tool:{event.id}")
        active = _deciding.get()
        if mark in active:  # this guard already decided on this call, further out in the chain
            return await call_next(event, context)
        try:
            session = self._current(context)
            decision = await session.abefore_tool(
                event.name, arguments(event), call_id=event.id, caused_by=self._proposed.get(event.id)
            )
            if decision.needs_approval:
                decision = await self._approve(session, decision, event, context)
        except Exception as exc:  # an adapter failure must not let the tool run
            log.exception("Tether failed while deciding on %s", event.name)
            if self._monitoring:
                return await call_next(event, context)
            reason = f"Tether failed while deciding: {type(exc).__name__} (denied to stay safe)"
            return ToolResultEvent.from_call(event, result=f"Tether denied the call to '{event.name}': {reason}")
        if not decision.allowed:
            return ToolResultEvent.from_call(event, result=decision.refusal())
        token = _deciding.set(active | {mark})
        try:
            result = await call_next(_with_args(event, decision), context)
        finally:
            _deciding.reset(token)
        return await self._record(session, decision, event, result)

    async def _approve(self, session: Session, decision: Decision, event: ToolCallEvent, context: Any) -> Decision:
        if self._owner.approvals == "tether":
            return await session.aresolve(decision, approver=self._owner.approver)
        timeout = decision.approval_timeout or self._owner.guard.policy.approval_timeout
        why = f"no approval within {timeout:g}s"
        answer: ApprovalAnswer | None = None
        try:
            question = hitl_question(decision, self._owner.guard.store.key)
            # AG2 before 1.2 starts its clock only once the hook has returned: bound the wait here too.
            reply = await asyncio.wait_for(_ask_human(context, question, event, timeout), timeout)
            answer = ApprovalAnswer(reply.strip().lower() in _YES, self._owner.hitl_approver)
        except Exception as exc:  # no hook, the hook failed, nobody answered in time: all deny
            log.info("no answer through AG2 human input for %s", event.name, exc_info=True)
            if not isinstance(exc, TimeoutError) and "Timeout" not in type(exc).__name__:
                why = f"AG2 human input failed: {type(exc).__name__}"
        return await session.asettle(decision, answer, unanswered=why)

    async def _record(
        self, session: Session, decision: Decision, event: ToolCallEvent, result: ToolResultType
    ) -> ToolResultType:
        """Record the tool's output, so its data classes and any taint count in later decisions."""
        if not isinstance(result, ToolResultEvent):  # a client-side tool: it runs elsewhere
            return result
        try:
            if isinstance(result, ToolErrorEvent):
                await session.aafter_tool(decision, None, error=result.error)
            else:
                value = output(result.result)
                seen = await session.aafter_tool(decision, value)
                if seen is not value:  # redacted or withheld by the policy's protections
                    return ToolResultEvent.from_call(event, result=seen)
        except Exception as exc:
            log.exception("Tether could not record the output of %s", event.name)
            if self._monitoring:
                return result
            # Unrecorded output would escape classification and taint: the model does not get it.
            withheld = f"Tether could not record the output of '{event.name}' ({type(exc).__name__}); it is withheld"
            return ToolResultEvent.from_call(event, result=withheld)
        return result

    # -- models ------------------------------------------------------------------------------

    async def on_llm_call(self, call_next: Any, events: Sequence[BaseEvent], context: Any) -> ModelResponse:
        mark = (id(self._owner.guard), "model")
        active = _deciding.get()
        if not self._owner.record_model or mark in active:
            return await call_next(events, context)  # type: ignore[no-any-return]
        session = self._current(context)
        request = await self._recorded(session.abefore_model(transcript(events)))
        token = _deciding.set(active | {mark})
        try:
            response: ModelResponse = await call_next(events, context)
        finally:
            _deciding.reset(token)
        calls = list(response.tool_calls.calls)
        proposed = [{"id": call.id, "name": call.name} for call in calls]
        parent = request.event_id if request is not None else None
        event_id = await self._recorded(
            session.aafter_model(response_text(response), tool_calls=proposed, parent=parent)
        )
        if event_id is not None:
            self._proposed.update({call.id: event_id for call in calls})
        return response

    async def _recorded(self, write: Any) -> Any:
        """Await an audit write of a model call: its failure ends the turn, unless monitoring."""
        try:
            return await write
        except Exception:
            if not self._monitoring:
                raise
            log.exception("Tether could not record a model call")
            return None


def _with_args(event: ToolCallEvent, decision: Decision) -> ToolCallEvent:
    """The call with the arguments Tether allowed (redacted or edited by an approver), if they differ."""
    if decision.args is event.serialized_arguments or not isinstance(decision.args, Mapping):
        return event
    changed = copy(event)
    changed.arguments = json.dumps(dict(decision.args))
    changed.serialized_arguments = dict(decision.args)
    return changed


async def _ask_human(context: Any, question: str, event: ToolCallEvent, timeout: float) -> str:
    """Ask through the agent's hitl_hook; AG2 1.2 names the call it is about, 1.0 asks plain text."""
    try:
        from ag2.events import ToolApprovalRequest
    except ImportError:
        return str(await context.input(question, timeout=timeout))
    return str(await context.ask(ToolApprovalRequest(question, tool_call_id=event.id, timeout=timeout)))
