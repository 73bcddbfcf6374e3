"""The AG2 middleware: every tool call of a guarded agent is decided by Tether before it runs.

AG2 builds one middleware instance per turn from a factory and wraps each tool's execution in
its ``on_tool_execution`` (outside any tool-level hook such as ``approval_required``), the model
client in its ``on_llm_call`` and the human-input hook in its ``on_human_input``. Returning a
``ToolResultEvent`` without calling ``call_next`` skips the tool and hands the model that
result: that is how a refusal reaches it. Which instance decides in a turn, and the turns of
agents that carry no Tether middleware of their own, are settled where every turn registers its
tools (``_waist.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from copy import copy
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from ag2.events import (
    BaseEvent,
    HumanInputRequest,
    HumanMessage,
    ModelResponse,
    ToolCallEvent,
    ToolErrorEvent,
    ToolResultEvent,
)
from ag2.middleware import BaseMiddleware, ToolExecution, ToolResultType
from ag2.utils import AGENT_CONTEXT_DEPENDENCY_KEY
from tether.core import ApprovalAnswer, Approver, Decision, Guard, Mode, Session, TetherError
from tether.core.planners import Planner

from ._convert import apply_redactions, arguments, hitl_question, output, response_text, transcript

try:  # AG2 1.2: approval questions name the call they are about
    from ag2.events import ToolApprovalRequest
except ImportError:  # AG2 1.0 asks plain text
    ToolApprovalRequest = None  # type: ignore[assignment,misc]

log = logging.getLogger("tether.ag2")

Approvals = Literal["tether", "ag2"]
#: A fixed value, or a function of the AG2 context returning one (``None``: the default).
FromContext = str | Callable[[Any], "str | None"] | None

_TASK_KEY = "ag2.task"  # where an entered ``ag2.Task`` puts itself in the context's dependencies
_YES = frozenset({"y", "yes", "approve", "approved", "allow"})
_AG2_YES = frozenset({"y", "yes", "1", "always"})  # what AG2's approval_required lets through


class ModelRequestWithheld(TetherError):
    """The policy's protections withheld what the model would have been sent; the turn ends."""


@dataclass
class Frame:
    """A guarded tool call while it runs: agents started inside it act in its session."""

    owner: TetherMiddleware
    session: Session
    decision: Decision
    stream: UUID
    asked_through_ag2: bool  # a person already approved this call through AG2's human input
    person_refused: bool = False  # AG2's own approval step was answered no


#: The guarded tool call running in this task, if any (sub-agents inherit it).
running: ContextVar[Frame | None] = ContextVar("tether_ag2_running", default=None)


class TetherMiddleware:
    """Builds, for each AG2 turn, the middleware that puts the turn's actions through ``guard``.

    Pass it in ``Agent(..., middleware=[...])``, to ``agent.ask(..., middleware=[...])``, or use
    :func:`guard_agent`.

    ``agent`` overrides the name the policy knows the agent by (default: the AG2 agent's name).
    ``session_id`` fixes the Tether session, or computes it from the AG2 context; by default it
    is the session of the guarded tool call the agent runs inside (a sub-agent), else the
    running ``ag2.Task``'s id, else the conversation stream's id. ``user`` and ``tenant`` are
    fixed or computed from the AG2 context the same way (a sub-agent inherits its parent's).
    ``approvals`` chooses who answers calls the policy asks about: ``"tether"`` (the guard's
    approver, e.g. the persistent :class:`~tether.core.QueueApprover`, or ``approver``) or
    ``"ag2"`` (the agent's own ``hitl_hook``, answered y/n). ``record_model`` records each model
    call's new input and the response, linking tool calls to the response that proposed them.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        agent: str | None = None,
        session_id: FromContext = None,
        user: FromContext = None,
        tenant: FromContext = None,
        approvals: Approvals = "tether",
        approver: Approver | None = None,
        hitl_approver: str = "ag2-hitl",
        record_model: bool = True,
        planner: Planner | None = None,
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
        self.planner = planner  # gives each session a task scope from its trusted request
        _remember(guard)

    def __call__(self, event: BaseEvent, context: Any) -> BaseMiddleware:
        return TetherTurn(event, context, owner=self)

    def identity(self, context: Any) -> str:
        """The name the policy knows the acting agent by."""
        agent = self.agent or getattr(context.dependencies.get(AGENT_CONTEXT_DEPENDENCY_KEY), "name", None)
        if not agent:
            raise ValueError("cannot tell which agent is acting: no AG2 agent in the context and no agent= given")
        return str(agent)

    def session(self, context: Any, parent: Frame | None = None, *, fallback: bool = False) -> Session:
        """The Tether session of an AG2 context: who acts, in which run.

        A guarded agent running inside another guarded agent's tool call (an ``as_tool``
        sub-agent) shares that call's session, so taint and limits carry over, unless it names
        a session of its own or answers to another guard: then its session names the parent's.
        """
        stream = str(context.stream.id)
        found: dict[str, str] = {"framework": "ag2", "stream": stream}
        task_id = _task_id(context.dependencies.get(_TASK_KEY))
        if task_id:
            found["task"] = task_id
        if parent is not None:
            found.update(parent_agent=parent.session.agent, parent_call=str(parent.decision.event_id))
        if fallback:
            found["fallback"] = "the agent ran without Tether middleware"
        user = _chosen(self.user, context) or (parent.session.user if parent else None)
        tenant = _chosen(self.tenant, context) or (parent.session.tenant if parent else None)
        session_id = _chosen(self.session_id, context)
        linked = parent.session.id if parent is not None else None
        if session_id is None and parent is not None and parent.session.guard is self.guard:
            session_id, linked = parent.session.id, None
        agent = self.identity(context)
        return self.guard.session(
            agent,
            session_id or task_id or stream,
            user=user,
            tenant=tenant,
            context=found,
            parent=linked,
            planner=self.planner,
        )


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


_guards: list[weakref.ref[Guard]] = []  # every guard given to a TetherMiddleware, newest last
_guards_lock = threading.Lock()


def _remember(guard: Guard) -> None:
    with _guards_lock:
        _guards[:] = [ref for ref in _guards if ref() not in (None, guard)]
        _guards.append(weakref.ref(guard))


def guard_knowing(agent: str) -> Guard | None:
    """The newest live guard whose policy knows ``agent``, for an agent that runs without Tether
    middleware although a policy in this process names it (a copy of a guarded agent)."""
    with _guards_lock:
        live = [guard for ref in _guards if (guard := ref()) is not None]
    return next((guard for guard in reversed(live) if agent in guard.policy.policy.agents), None)


def _chosen(option: FromContext, context: Any) -> str | None:
    value = option(context) if callable(option) else option
    return str(value) if value is not None else None


def _task_id(task: Any) -> str | None:
    try:
        return str(task.task_id) if task is not None else None
    except RuntimeError:  # a Task not yet entered has no id
        return None


class TetherTurn(BaseMiddleware):
    """One turn's middleware: its Tether session, and which model response proposed each call.

    ``inherited`` is the guarded tool call an agent without Tether middleware of its own runs
    inside (a sub-agent AG2 built during that call): such a turn decides its tool calls as that
    call's agent, in its session. The tool registration of the turn sets ``passive`` on copies
    of a guard's middleware that another instance already decides for, and ``names`` to the
    policy names of tools whose AG2 names differ (MCP tools: ``server/tool``).
    """

    def __init__(
        self,
        event: Any,
        context: Any,
        *,
        owner: TetherMiddleware,
        inherited: Frame | None = None,
        fallback: bool = False,
    ) -> None:
        super().__init__(event, context)
        self.owner = owner
        self.inherited = inherited
        self.fallback = fallback
        self.parent = inherited or running.get()  # factories run inside the call that starts the turn
        self.passive = False
        self.names: dict[str, str] = {}
        self._session: Session | None = None
        self._proposed: dict[str, str] = {}  # tool call id -> audit event of the model response
        self._prompt_recorded = False

    def identity(self, context: Any) -> str:
        return self.inherited.session.agent if self.inherited is not None else self.owner.identity(context)

    def current(self, context: Any) -> Session:
        if self._session is None:
            self._session = self._open(context)
        return self._session

    def _open(self, context: Any) -> Session:
        parent = self.inherited
        if parent is None:
            return self.owner.session(context, self.parent, fallback=self.fallback)
        acting = getattr(context.dependencies.get(AGENT_CONTEXT_DEPENDENCY_KEY), "name", None)
        found = {
            "framework": "ag2",
            "stream": str(context.stream.id),
            "subagent": str(acting),
            "parent_call": str(parent.decision.event_id),
        }
        who = parent.session
        return who.guard.session(who.agent, who.id, user=who.user, tenant=who.tenant, context=found)

    @property
    def _monitoring(self) -> bool:
        return self.owner.guard.mode is Mode.MONITOR

    # -- tools -------------------------------------------------------------------------------

    async def on_tool_execution(self, call_next: ToolExecution, event: ToolCallEvent, context: Any) -> ToolResultType:
        if self.passive:  # another instance of this guard's middleware decides in this turn
            return await call_next(event, context)
        asked_through_ag2 = False
        try:
            session = self.current(context)
            tool = self.names.get(event.name, event.name)
            decision = await session.abefore_tool(
                tool, arguments(event), call_id=event.id, caused_by=self._proposed.get(event.id)
            )
            if decision.needs_approval:
                asked_through_ag2 = self.owner.approvals == "ag2"
                decision = await self._approve(session, decision, event, context)
        except Exception as exc:  # an adapter failure must not let the tool run
            log.exception("Tether failed while deciding on %s", event.name)
            if self._monitoring:
                return await call_next(event, context)
            reason = f"Tether failed while deciding: {type(exc).__name__} (denied to stay safe)"
            return ToolResultEvent.from_call(event, result=f"Tether denied the call to '{event.name}': {reason}")
        if not decision.allowed:
            return ToolResultEvent.from_call(event, result=decision.refusal())
        frame = Frame(self.owner, session, decision, context.stream.id, asked_through_ag2)
        token = running.set(frame)
        try:
            result = await call_next(_with_args(event, decision), context)
        finally:
            running.reset(token)
        if frame.person_refused:  # the tool did not run; the answer is recorded under the decision
            return result
        return await self._record(session, decision, event, result)

    async def _approve(self, session: Session, decision: Decision, event: ToolCallEvent, context: Any) -> Decision:
        if self.owner.approvals == "tether":
            return await session.aresolve(decision, approver=self.owner.approver)
        timeout = decision.approval_timeout or self.owner.guard.policy.approval_timeout
        why = f"no approval within {timeout:g}s"
        answer: ApprovalAnswer | None = None
        try:
            question = hitl_question(decision, self.owner.guard.store.key)
            # AG2 before 1.2 starts its clock only once the hook has returned: bound the wait here too.
            reply = await asyncio.wait_for(_ask_human(context, question, event, timeout), timeout)
            answer = ApprovalAnswer(reply.strip().lower() in _YES, self.owner.hitl_approver)
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

    # -- AG2's own approval step --------------------------------------------------------------

    async def on_human_input(self, call_next: Any, event: HumanInputRequest, context: Any) -> HumanMessage:
        """AG2's ``approval_required`` asking about the guarded call that is running: answered
        with the person's earlier answer if Tether already asked them through AG2, else put to
        them and their answer recorded in the audit."""
        frame = running.get()
        if (
            self.passive
            or ToolApprovalRequest is None
            or not isinstance(event, ToolApprovalRequest)
            or frame is None
            or (frame.stream, frame.decision.call.call_id) != (context.stream.id, event.tool_call_id)
        ):
            return await call_next(event, context)  # type: ignore[no-any-return]
        if frame.asked_through_ag2:  # Tether's own question was this one; do not ask twice
            return HumanMessage.ensure_message("y", parent_id=event.id)
        message: HumanMessage = await call_next(event, context)
        approved = str(message.content).strip().lower() in _AG2_YES
        frame.person_refused = not approved
        answer = ApprovalAnswer(approved, frame.owner.hitl_approver)
        try:
            await frame.session.arecord_answer(frame.decision, answer, asked_by="ag2.approval_required")
        except Exception:
            log.exception("Tether could not record an answer given through AG2")
            if not self._monitoring and approved:  # an unrecorded approval must not let the tool run
                frame.person_refused = True
                return HumanMessage.ensure_message("n", parent_id=event.id)
        return message

    # -- models ------------------------------------------------------------------------------

    async def on_llm_call(self, call_next: Any, events: Sequence[BaseEvent], context: Any) -> ModelResponse:
        if self.passive or not self.owner.record_model:
            return await call_next(events, context)  # type: ignore[no-any-return]
        session = self.current(context)
        prompt = list(getattr(context, "prompt", None) or ())
        found = transcript(events, () if self._prompt_recorded else prompt)
        request = await self._recorded(session.abefore_model(found.entries))
        self._prompt_recorded = True
        if request is not None and not request.allowed:
            raise ModelRequestWithheld(f"Tether withheld the model request: {request.reason}")
        if request is not None and request.messages is not found.entries:
            events, redacted = apply_redactions(events, prompt, found, request.messages)
            if redacted != prompt:
                context.prompt[:] = redacted  # the turn's own copy: later calls of the turn get it too
        response: ModelResponse = await call_next(events, context)
        calls = list(response.tool_calls.calls)
        proposed = [{"id": call.id, "name": self.names.get(call.name, call.name)} for call in calls]
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
    if ToolApprovalRequest is None:
        return str(await context.input(question, timeout=timeout))
    return str(await context.ask(ToolApprovalRequest(question, tool_call_id=event.id, timeout=timeout)))
