"""Tool calls of a LangGraph run, decided by Tether before they run."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, cast

from langchain_core.messages import AIMessage, ToolMessage

from langgraph.config import get_config
from langgraph.types import Command, interrupt
from tether.core import Decision, Enforcement, Guard, Session, TetherError, ToolCall, Verdict
from tether.core.decision import redact_args

from ._answers import answer_for, payload

log = logging.getLogger("tether.langgraph")

Approvals = Literal["interrupt", "queue"]
Execute = Callable[[Any], Any]
AExecute = Callable[[Any], Awaitable[Any]]

_SCRATCHPAD, _CHECKPOINTER, _PUSH = "__pregel_scratchpad", "__pregel_checkpointer", "__pregel_push"
_TOOL_DECISION = "tool.decision"
_MAX_REMEMBERED = 4096

#: Set while a wrapper runs a call it decided, so a callback handler on the same run only observes it.
decided_here: contextvars.ContextVar[bool] = contextvars.ContextVar("tether_langgraph_decided", default=False)


class BreakpointError(TetherError):
    """A call needs a person's approval, and the graph cannot pause for it."""


class Tether:
    """Tether for LangGraph and LangChain: every tool call decided by ``guard`` before it runs.

    ``agent`` names the agent in the policy (default: ``configurable["tether_agent"]``, then the
    run's ``lc_agent_name``, then, for an agent that runs as a subgraph, the parent graph's node
    that hosts it, else ``"langgraph"``); ``session`` fixes the session (default:
    ``configurable["tether_session"]``, then ``thread_id``). ``approvals`` says how a call the
    policy marks ``ask`` waits for a person: ``"interrupt"`` pauses the graph with
    ``interrupt()`` (needs a checkpointer), ``"queue"`` waits on the guard's approver
    (e.g. :class:`~tether.core.QueueApprover`, answered with ``tether approvals``).

    Plug it in with ``ToolNode(tools, wrap_tool_call=t.wrap_tool_call, awrap_tool_call=t.awrap_tool_call)``,
    ``create_agent(..., middleware=[t.middleware()])``, ``config={"callbacks": [t.callback_handler()]}``
    or ``t.guard_tool(tool)``.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        agent: str | None = None,
        session: str | None = None,
        approvals: Approvals = "interrupt",
        messages_key: str = "messages",
    ) -> None:
        if approvals not in ("interrupt", "queue"):
            raise TetherError(f"approvals must be 'interrupt' or 'queue', not {approvals!r}")
        self.guard = guard
        self.agent = agent
        self.session_id = session
        self.approvals: Approvals = approvals
        self.messages_key = messages_key
        self._sessions: OrderedDict[tuple[str, str, str], Session] = OrderedDict()
        self._causes: OrderedDict[str, str] = OrderedDict()  # tool_call_id -> model response event
        self._proposed: OrderedDict[str, str] = OrderedDict()  # tool and arguments -> tool_call_id
        self._batches: dict[int, _Batch] = {}
        self._lock = threading.Lock()
        self._fallback_session = os.urandom(8).hex()
        self._warned = False

    # -- who and where -----------------------------------------------------------------------

    def session_for(self, config: Mapping[str, Any] | None = None) -> Session:
        """The Tether session of the run ``config`` belongs to (default: the current run)."""
        if config is None:
            try:
                config = get_config()
            except RuntimeError:
                config = {}
        conf = config.get("configurable") or {}
        meta = config.get("metadata") or {}
        node = str(meta.get("langgraph_node") or "")
        agent = self.agent or conf.get("tether_agent") or meta.get("lc_agent_name") or _outer_node(conf) or "langgraph"
        session_id = self.session_id or conf.get("tether_session") or conf.get("thread_id")
        if session_id is None:
            session_id = self._fallback_session
            if not self._warned:
                self._warned = True
                log.warning(
                    "no thread_id in the run's config: Tether records this run in session %s; pass "
                    "config={'configurable': {'thread_id': ...}} to give each conversation its own session",
                    session_id,
                )
        key = (str(agent), str(session_id), node)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                context = {"framework": "langgraph", **({"node": node} if node else {})}
                session = self.guard.session(str(agent), str(session_id), context=context)
                self._sessions[key] = session
                _trim(self._sessions)
            return session

    def remember_proposals(self, event_id: str, tool_calls: Sequence[Mapping[str, Any]]) -> None:
        """Link the calls a model response proposed to its audit event (the decision chain)."""
        with self._lock:
            for call in tool_calls:
                if call.get("id"):
                    self._causes[str(call["id"])] = event_id
                    self._proposed[_fingerprint(call.get("name"), call.get("args"))] = str(call["id"])
            _trim(self._causes)
            _trim(self._proposed)

    def cause_of(self, call_id: str | None) -> str | None:
        return self._causes.get(call_id) if call_id else None

    def call_id_of(self, tool: str, args: Any) -> str | None:
        """The id of a proposed call with this tool and these arguments, for callbacks that do
        not carry it (older langchain-core releases)."""
        return self._proposed.get(_fingerprint(tool, args))

    # -- ToolNode / AgentMiddleware wrappers -------------------------------------------------

    def wrap_tool_call(self, request: Any, execute: Execute) -> ToolMessage | Command[Any]:
        """``ToolNode(wrap_tool_call=...)``: decide, then run, refuse or pause the call."""
        session = self.session_for(request.runtime.config if request.runtime is not None else None)
        decision = self._decide(request, session)
        if not decision.allowed:
            return refusal_message(decision, request.tool_call)
        token = decided_here.set(True)
        try:
            result = execute(_with_args(request, decision))
        except Exception as exc:
            session.after_tool(decision, error=exc)
            raise
        finally:
            decided_here.reset(token)
        return _after(session, decision, result)

    async def awrap_tool_call(self, request: Any, execute: AExecute) -> ToolMessage | Command[Any]:
        """The async twin of :meth:`wrap_tool_call` (``ainvoke``/``astream``)."""
        session = self.session_for(request.runtime.config if request.runtime is not None else None)
        decision = await asyncio.to_thread(self._decide, request, session)  # audit writes and waits off the loop
        if not decision.allowed:
            return refusal_message(decision, request.tool_call)
        token = decided_here.set(True)
        try:
            result = await execute(_with_args(request, decision))
        except Exception as exc:
            await session.aafter_tool(decision, error=exc)
            raise
        finally:
            decided_here.reset(token)
        return await asyncio.to_thread(_after, session, decision, result)

    def middleware(self) -> Any:
        """An ``AgentMiddleware`` for LangChain's ``create_agent`` (needs ``langchain``)."""
        from ._middleware import TetherMiddleware

        return TetherMiddleware(self)

    def callback_handler(self) -> Any:
        """A callback handler that audits model and tool calls of any LangChain run and raises
        :class:`~tether.core.ToolDenied` before a denied tool's body runs."""
        from ._handler import TetherCallbackHandler

        return TetherCallbackHandler(self)

    def guard_tool(self, tool: Any) -> Any:
        """A copy of a LangChain tool that asks Tether first, for tools called in custom nodes."""
        from ._tool import guarded

        return guarded(self, tool)

    # -- deciding ----------------------------------------------------------------------------

    def _decide(self, request: Any, session: Session) -> Decision:
        call = request.tool_call
        if self.approvals == "queue":
            decision = session.before_tool(
                call["name"], call.get("args"), call_id=call.get("id"), caused_by=self.cause_of(call.get("id"))
            )
            return session.resolve(decision)
        return self._batch(request, session).decision(self, session, call)

    def _batch(self, request: Any, session: Session) -> _Batch:
        """The calls that pause together: all calls one ToolNode task runs (so a resume re-runs
        none that already ran), each decided once however many threads ask."""
        config = request.runtime.config if request.runtime is not None else {}
        scratchpad = (config.get("configurable") or {}).get(_SCRATCHPAD)
        triggers = (config.get("metadata") or {}).get("langgraph_triggers") or ()
        if scratchpad is None or _PUSH in triggers:  # a task of its own (Send), or outside a graph
            return _Batch(scratchpad, [request.tool_call], config)
        with self._lock:
            batch = self._batches.get(id(scratchpad))
            if batch is None or batch.scratchpad is not scratchpad:
                calls = _task_calls(request.state, request.tool_call, self.messages_key)
                batch = self._batches[id(scratchpad)] = _Batch(scratchpad, calls, config)
                while len(self._batches) > 256:  # batches whose calls never all came
                    del self._batches[next(iter(self._batches))]
            if batch.take():
                self._batches.pop(id(scratchpad), None)
        return batch

    def earlier_decisions(self, session: Session, calls: Sequence[Mapping[str, Any]]) -> dict[str, Decision]:
        """Decisions recorded for these calls before the graph paused, so a resumed run settles
        them instead of deciding (and asking) again."""
        wanted = {str(c.get("id")): c for c in calls if c.get("id")}
        found: dict[str, Decision] = {}
        for event in self.guard.store.session_events(session.id):
            details = event.details
            call = wanted.get(str(details.get("call_id")))
            if event.kind != _TOOL_DECISION or call is None or event.agent != session.agent:
                continue
            verdict = Verdict(event.verdict)
            args = dict(call.get("args") or {})
            if verdict is Verdict.REDACT and details.get("enforcement") == Enforcement.ENFORCED.value:
                args = redact_args(args, tuple(details.get("redacted") or ()))
            found[str(call["id"])] = Decision(
                ToolCall(session.agent, session.id, event.tool or call["name"], call.get("args") or {}, call["id"]),
                verdict,
                details.get("reason", ""),
                tuple(details.get("rule_ids") or ()),
                args,
                Enforcement(details.get("enforcement", Enforcement.ENFORCED.value)),
                details.get("error"),
                event.event_id,
                self.guard.policy.approval_timeout,
            )
        return found


class _Batch:
    """The tool calls of one ToolNode task, decided together by whichever thread comes first."""

    def __init__(self, scratchpad: Any, calls: list[Mapping[str, Any]], config: Mapping[str, Any]) -> None:
        self.scratchpad = scratchpad
        self.calls = calls
        self.config = config
        self.lock = threading.Lock()
        self.decisions: dict[str, Decision] | None = None
        self.error: BaseException | None = None
        self._left = len(calls)

    def take(self) -> bool:
        """Count one caller; True when every call of the batch has come (the batch can go)."""
        self._left -= 1
        return self._left <= 0

    def decision(self, owner: Tether, session: Session, call: Mapping[str, Any]) -> Decision:
        with self.lock:
            if self.decisions is None and self.error is None:
                try:
                    self.decisions = self._decide_all(owner, session)
                except BaseException as exc:  # noqa: BLE001 - an interrupt too: every call of the task pauses
                    self.error = exc
            if self.error is not None:
                raise self.error
            assert self.decisions is not None
            found = self.decisions.get(str(call.get("id")))
        if found is None:  # a call the batch did not foresee: decided on its own
            return _decide_one(owner, session, call)
        return found

    def _decide_all(self, owner: Tether, session: Session) -> dict[str, Decision]:
        earlier = owner.earlier_decisions(session, self.calls) if _resuming(self.scratchpad) else {}
        decisions = {
            str(c.get("id")): earlier.get(str(c.get("id"))) or _decide_one(owner, session, c) for c in self.calls
        }
        pending = [d for d in decisions.values() if d.needs_approval]
        if not pending:
            return decisions
        conf = self.config.get("configurable") or {}
        if self.scratchpad is None or conf.get(_CHECKPOINTER) is None:
            raise BreakpointError(
                f"Tether needs a person's approval for '{pending[0].call.tool}' ({pending[0].reason}), but this "
                "graph cannot pause: compile it with a checkpointer (e.g. graph.compile(checkpointer=InMemorySaver()) "
                "or SqliteSaver) and pass a thread_id, or use Tether(guard, approvals='queue') with an approver"
            )
        value = interrupt(payload(session, pending))
        for position, decision in enumerate(pending):
            try:
                answer = answer_for(value, decision, position)
                why = "the resume value gave no answer for this call"
            except ValueError as exc:
                answer, why = None, f"the resume value could not be read: {exc}"
            decisions[str(decision.call.call_id)] = session.settle(decision, answer, unanswered=why)
        return decisions


def _decide_one(owner: Tether, session: Session, call: Mapping[str, Any]) -> Decision:
    call_id = call.get("id")
    return session.before_tool(call["name"], call.get("args"), call_id=call_id, caused_by=owner.cause_of(call_id))


def _resuming(scratchpad: Any) -> bool:
    """Whether this task runs again with a person's answer (the graph was resumed)."""
    try:
        return bool(scratchpad.resume) or scratchpad.get_null_resume(False) is not None
    except (AttributeError, TypeError):  # another LangGraph version: decide afresh (correct, only more verbose)
        return False


def _task_calls(state: Any, call: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The calls a ToolNode runs for this state: those of the latest AI message (as ToolNode reads them)."""
    messages = state if isinstance(state, list) else (state.get(key) if isinstance(state, Mapping) else None)
    if messages is None:
        messages = getattr(state, key, None) or []
    latest = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    calls: list[Mapping[str, Any]] = list(latest.tool_calls) if latest is not None else []
    if not any(c.get("id") == call.get("id") for c in calls):
        return [call]
    return calls


def _with_args(request: Any, decision: Decision) -> Any:
    """The request with the arguments Tether allowed (redacted or edited by an approver)."""
    if dict(decision.args) == dict(request.tool_call.get("args") or {}):
        return request
    return request.override(tool_call={**request.tool_call, "args": dict(decision.args)})


def refusal_message(decision: Decision, call: Mapping[str, Any]) -> ToolMessage:
    """The refusal as the answer to the call, so the model reads it and the call id is answered."""
    return ToolMessage(
        content=decision.refusal(), tool_call_id=call.get("id") or "", name=call.get("name"), status="error"
    )


def _after(session: Session, decision: Decision, result: Any) -> ToolMessage | Command[Any]:
    """Record what came back; what after_tool returns is what flows into the graph's state."""
    if isinstance(result, ToolMessage):
        output = session.after_tool(decision, result.content)
        if output is not result.content:
            return result.model_copy(update={"content": output})
        return result
    session.after_tool(decision, result.update if isinstance(result, Command) else result)
    return cast("ToolMessage | Command[Any]", result)


def transcript(messages: Any) -> list[dict[str, Any]]:
    """Messages as the audit shows them: who said what, and which tools were asked for."""
    out = []
    for message in messages or []:
        entry: dict[str, Any] = {
            "role": getattr(message, "type", "message"),
            "content": getattr(message, "content", message),
        }
        if getattr(message, "tool_calls", None):
            entry["tool_calls"] = [{"name": c.get("name"), "args": c.get("args")} for c in message.tool_calls]
        out.append(entry)
    return out


def _outer_node(conf: Mapping[str, Any]) -> str | None:
    """In a graph of agents, the node of the top graph an agent's subgraph runs in."""
    namespace = str(conf.get("checkpoint_ns") or "")
    return namespace.split(":", 1)[0] if "|" in namespace else None


def _fingerprint(tool: Any, args: Any) -> str:
    return json.dumps([tool, args], sort_keys=True, default=repr)


def _trim(cache: OrderedDict[Any, Any]) -> None:
    while len(cache) > _MAX_REMEMBERED:
        cache.popitem(last=False)
