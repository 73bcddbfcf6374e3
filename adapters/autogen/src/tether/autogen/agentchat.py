"""Tether for Microsoft AutoGen AgentChat (``autogen-agentchat`` 0.5.7 to 0.7, what ``pip install
pyautogen`` installs today).

    from tether.autogen.agentchat import register_guard

    register_guard(team_or_agent, guard)
    await team.run(task="Please handle ticket T-1001.")

Tether decides where AgentChat runs every tool, whichever agent or team runs it: the class
method ``BaseTool.run_json`` (and ``BaseStreamTool.run_json_stream``): every ``FunctionTool``
behind a workbench, Swarm handoffs (``transfer_to_...``), agents and teams used as tools, tools
run by agents other than ``AssistantAgent``; ``McpWorkbench.call_tool`` (MCP tools, named
``server/tool``); and the ``execute_code_blocks`` of the code executors of the agents it runs
(decided as the tool ``execute_code``). These are patched once, on the classes, when the first
guard is registered; model clients' ``create`` / ``create_stream`` are patched per client class
met in a run, so every model call of a run is recorded and screened: the agents', a
``SelectorGroupChat``'s speaker selection, Magentic-One's orchestrator, a
``SocietyOfMindAgent``'s summary.

``register_guard`` says which guard, user and tenant a team's or agent's runs belong to. Each
top-level ``run`` / ``run_stream`` is one session; a run inside a run (a ``SocietyOfMindAgent``'s
inner team, an agent or team used as a tool, a team inside a team) stays in the outer run's
session, so its taint and limits are the conversation's. The acting agent is the one whose
``on_messages(_stream)`` is running. A turn outside any run (``on_messages`` called directly, a
team on a runtime the user started) is decided by the agent's own registration; a tool run
outside any run and any registered agent's turn is decided under a fallback session of the most
recently registered guard: nothing runs undecided.

A refused call raises inside the tool, so AgentChat hands the model an error result carrying
Tether's refusal. A refused handoff is not raised (AgentChat cannot survive that): the agent's
turn ends with the refusal as its text instead of the handoff, so the conversation stays with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import HandoffMessage, TextMessage
from autogen_agentchat.teams import BaseGroupChat
from autogen_core.code_executor import CodeExecutor, CodeResult
from autogen_core.models import ChatCompletionClient, CreateResult, FunctionExecutionResultMessage
from autogen_core.tools import BaseTool, TextResultContent, ToolResult

from tether.core import Decision, Guard, Mode, Session, TetherError, mcp_tool
from tether.core.planners import Planner

__all__ = ["CODE_TOOL", "Identity", "Registration", "ToolRefused", "register_guard"]

log = logging.getLogger("tether.autogen")
CODE_TOOL = "execute_code"  # the policy's name for running a code block: args {"language", "code"}
UNKNOWN_SERVER = "unknown-mcp-server"  # an MCP server that did not say its name (AgentChat 0.5)
_ATTR = "_tether_registration"
_MAX_KEPT = 4096
_ROLES = {"SystemMessage": "system", "AssistantMessage": "assistant", "FunctionExecutionResultMessage": "tool"}


#: a user or tenant: fixed, or a function of each run's task (the messages, for a direct turn)
Identity = str | Callable[[Any], "str | None"] | None


class ToolRefused(TetherError):
    """Raised inside a tool Tether refused: AgentChat gives the model its text as the tool's error."""


@dataclass(frozen=True)
class _Run:
    registration: Registration
    session_id: str
    user: str | None = None
    tenant: str | None = None

    def session(self, agent: str) -> Session:
        return self.registration._session(agent, self)


class _Turn:
    """One agent's turn (its ``on_messages_stream``): the handoffs Tether refused in it."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.refused_handoffs: set[str] = set()

    def is_handoff(self, tool: Any) -> bool:
        return any(tool is handoff for handoff in getattr(self.agent, "_handoff_tools", None) or ())


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("tether_agentchat_run", default=None)
_AGENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tether_agentchat_agent", default=None)
_TURN: contextvars.ContextVar[_Turn | None] = contextvars.ContextVar("tether_agentchat_turn", default=None)
_IN_MODEL: contextvars.ContextVar[bool] = contextvars.ContextVar("tether_agentchat_in_model", default=False)
_lock = threading.Lock()
_latest: Registration | None = None
_fallbacks: weakref.WeakKeyDictionary[Guard, Registration] = weakref.WeakKeyDictionary()
# (session, call id) or (session, name, args) -> (the response that proposed the call, its call id)
_proposals: OrderedDict[object, tuple[str, str]] = OrderedDict()
_requests: OrderedDict[tuple[str, str, int], tuple[int, Any]] = OrderedDict()  # recorded prefix of a context
_replaced: OrderedDict[tuple[str, int], tuple[Any, Any]] = OrderedDict()  # (session, id(message)) -> redacted


class Registration:
    """Tether registered on an AgentChat agent or team: its guard, agents and sessions."""

    def __init__(
        self,
        guard: Guard,
        session_id: str | None,
        user: Identity,
        tenant: Identity,
        fallback: bool = False,
        planner: Planner | None = None,
    ) -> None:
        self.guard = guard
        self.planner = planner  # gives each session a task scope from its trusted request
        self.agents: list[str] = []
        self._fixed = session_id
        self._user, self._tenant = user, tenant
        self._fallback = fallback
        self._last: _Run | None = None

    @property
    def session_id(self) -> str:
        """The session of the run in this context (or of the most recent run)."""
        run = _RUN.get()
        return run.session_id if run is not None and run.registration is self else self._current().session_id

    def session(self, agent: str, session_id: str | None = None) -> Session:
        """The Tether session of ``agent`` in the run in this context (or the most recent run)."""
        run = _RUN.get()
        run = run if run is not None and run.registration is self else self._current()
        return self._session(agent, run if session_id is None else _Run(self, session_id, run.user, run.tenant))

    def _session(self, agent: str, run: _Run) -> Session:
        context = {"framework": "autogen-agentchat"}
        if self._fallback:
            context["attribution"] = "fallback"  # outside any guarded run: see the docs
        return self.guard.session(
            agent, run.session_id, user=run.user, tenant=run.tenant, context=context, planner=self.planner
        )

    def _new_run(self, task: Any = None) -> _Run:
        user, tenant = self._identity(self._user, task, "user"), self._identity(self._tenant, task, "tenant")
        self._last = _Run(self, self._fixed or os.urandom(8).hex(), user, tenant)
        return self._last

    def _current(self, task: Any = None) -> _Run:
        return self._last if self._last is not None else self._new_run(task)

    @staticmethod
    def _identity(source: Identity, task: Any, what: str) -> str | None:
        if source is None or isinstance(source, str):
            return source
        try:
            value = source(task)
        except Exception as exc:
            raise TetherError(f"Tether could not read the run's {what} from its task: {exc!r}") from exc
        return None if value is None else str(value)

    @property
    def monitoring(self) -> bool:
        return self.guard.mode is Mode.MONITOR


def register_guard(
    target: Any,
    guard: Guard,
    *,
    session_id: str | None = None,
    user: Identity = None,
    tenant: Identity = None,
    planner: Planner | None = None,
) -> Registration:
    """Put the runs of ``target`` (an agent or a team, with every agent and team inside it) under
    ``guard`` (``planner``: a task scope for each session from its trusted request). ``user`` and
    ``tenant`` are strings, or functions of each run's ``task`` (of the messages, for an agent's
    ``on_messages`` called directly); a function that raises stops the run. Registering
    the same guard again is a no-op; a different guard raises :class:`TetherError`."""
    global _latest
    _install()
    existing: Registration | None = target.__dict__.get(_ATTR)
    if existing is not None:
        if existing.guard is not guard:
            raise TetherError("this agent or team is already guarded by another Tether guard")
        return existing
    registration = Registration(guard, session_id, user, tenant, planner=planner)
    for member in _members(target):
        other = member.__dict__.get(_ATTR)
        if other is not None and other.guard is not guard:
            raise TetherError(f"{_name(member)!r} is already guarded by another Tether guard")
        if other is None:
            member.__dict__[_ATTR] = registration
        if isinstance(member, BaseChatAgent):
            registration.agents.append(member.name)
    _patch_members(target)
    _latest = registration
    return registration


def _members(target: Any) -> list[Any]:
    """The target and every agent and team inside it: participants, a SocietyOfMindAgent's team."""
    found, stack, seen = [], [target], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        found.append(item)
        stack.extend(getattr(item, "_participants", None) or [])
        inner = getattr(item, "_team", None)
        if inner is not None:
            stack.append(inner)
    return found


def _name(member: Any) -> str:
    return str(getattr(member, "name", None) or type(member).__name__)


def _fallback() -> Registration | None:
    if _latest is None:
        return None
    with _lock:
        found = _fallbacks.get(_latest.guard)
        if found is None:
            found = _fallbacks[_latest.guard] = Registration(_latest.guard, None, None, None, fallback=True)
        return found


def _current_run() -> _Run | None:
    run = _RUN.get()
    if run is not None:
        return run
    fallback = _fallback()
    return fallback._current() if fallback is not None else None


# -- installing ----------------------------------------------------------------------------

_installed = False


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        BaseTool.run_json = _guarded_run_json(BaseTool.run_json)  # type: ignore[method-assign]
        with contextlib.suppress(ImportError):  # AgentChat 0.6+: streaming tools (agents and teams as tools)
            from autogen_core.tools import BaseStreamTool

            BaseStreamTool.run_json_stream = _guarded_run_json_stream(BaseStreamTool.run_json_stream)  # type: ignore[method-assign]
        with contextlib.suppress(ImportError):  # autogen-ext[mcp]
            from autogen_ext.tools.mcp import McpWorkbench

            McpWorkbench.call_tool = _guarded_mcp_call(McpWorkbench.call_tool)  # type: ignore[method-assign]
        for cls in (BaseChatAgent, BaseGroupChat):
            cls.run = _tracked_run(cls.run)  # type: ignore[method-assign]
            cls.run_stream = _tracked_run_stream(cls.run_stream)  # type: ignore[method-assign]
        _installed = True


def _patch(cls: type, name: str, wrap: Callable[[Any], Any]) -> None:
    """Wrap ``name`` where ``cls`` (or its nearest base) defines it, once."""
    owner = next((c for c in cls.__mro__ if name in c.__dict__), None)
    if owner is None or getattr(owner.__dict__[name], "_tether", False):
        return
    wrapped = wrap(owner.__dict__[name])
    wrapped._tether = True
    setattr(owner, name, wrapped)


def _patch_members(target: Any) -> None:
    """Patch the classes a run uses: who acts, which model clients it calls, which code executors."""
    for member in _members(target):
        if isinstance(member, BaseChatAgent):
            _patch(type(member), "on_messages_stream", _acting_stream)
            _patch(type(member), "on_messages", _acting)
        client = getattr(member, "_model_client", None)
        if isinstance(client, ChatCompletionClient):
            _patch(type(client), "create", _recorded_create)
            _patch(type(client), "create_stream", _recorded_create_stream)
        executor = getattr(member, "_code_executor", None)
        if isinstance(executor, CodeExecutor):
            _patch(type(executor), "execute_code_blocks", _guarded_code)


# -- runs and who acts ---------------------------------------------------------------------


def _task(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    return kwargs.get("task", args[0] if args else None)


def _enter_run(target: Any, task: Any = None) -> _Run | None:
    _patch_members(target)
    parent = _RUN.get()
    if parent is not None:
        return parent  # a run inside a run: the conversation's session
    registration = next((m.__dict__.get(_ATTR) for m in _members(target) if _ATTR in m.__dict__), None)
    registration = registration or _fallback()
    return registration._new_run(task) if registration is not None else None


def _tracked_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        token, agent = _RUN.set(_enter_run(self, _task(args, kwargs))), _AGENT.set(_AGENT.get() or _name(self))
        try:
            return await original(self, *args, **kwargs)
        finally:
            _AGENT.reset(agent)
            _RUN.reset(token)

    return run


def _tracked_run_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def run_stream(self: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        previous, acting = _RUN.get(), _AGENT.get()
        _RUN.set(_enter_run(self, _task(args, kwargs)))  # an async generator runs in its consumer's context
        _AGENT.set(acting or _name(self))
        try:
            async for item in original(self, *args, **kwargs):
                yield item
        finally:
            _RUN.set(previous)
            _AGENT.set(acting)

    return run_stream


def _own_run(agent: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Run | None:
    """The run of an agent's turn: the run in this context; outside any (``on_messages`` called
    directly, a team on a runtime the user started) the current run of the agent's own
    registration, so its calls are decided by the guard it was registered with."""
    run = _RUN.get()
    if run is not None:
        return run
    registration: Registration | None = agent.__dict__.get(_ATTR)
    return registration._current(kwargs.get("messages", args[0] if args else None)) if registration else None


def _acting(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def on_messages(self: Any, *args: Any, **kwargs: Any) -> Any:
        own = _own_run(self, args, kwargs)
        token, run = _AGENT.set(self.name), _RUN.set(own)
        try:
            return await original(self, *args, **kwargs)
        finally:
            _RUN.reset(run)
            _AGENT.reset(token)

    return on_messages


def _acting_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def on_messages_stream(self: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        previous, previous_turn, previous_run = _AGENT.get(), _TURN.get(), _RUN.get()
        turn, own = _Turn(self), _own_run(self, args, kwargs)
        _AGENT.set(self.name)  # an async generator runs in its consumer's context: set back below
        _TURN.set(turn)
        _RUN.set(own)
        try:
            async for item in original(self, *args, **kwargs):
                yield _kept_turn(item, turn)
        finally:
            _AGENT.set(previous)
            _TURN.set(previous_turn)
            _RUN.set(previous_run)

    return on_messages_stream


def _kept_turn(item: Any, turn: _Turn) -> Any:
    """A response handing off through a handoff Tether refused becomes the agent's text: the
    refusal, so the conversation stays with the agent (a Swarm keeps its speaker)."""
    if not (turn.refused_handoffs and isinstance(item, Response)):
        return item
    message = item.chat_message
    if not isinstance(message, HandoffMessage) or message.content not in turn.refused_handoffs:
        return item
    text = TextMessage(content=message.content, source=message.source, models_usage=message.models_usage)
    return Response(chat_message=text, inner_messages=item.inner_messages)


# -- the tool waist ------------------------------------------------------------------------


async def _decide(tool: str, args: Mapping[str, Any], call_id: str | None) -> tuple[Session, Decision] | None:
    """Decide on a call in the acting agent's name: (session, allowed decision); None when no guard
    is registered (or Tether failed in monitor mode); raises :class:`ToolRefused` otherwise."""
    run = _current_run()
    if run is None:
        return None
    try:
        session = run.session(_AGENT.get() or "agentchat")
        caused_by, call_id = _take(run.session_id, call_id, tool, args) or (None, call_id)
        decision = await session.abefore_tool(tool, dict(args), call_id=call_id, caused_by=caused_by)
        if decision.needs_approval:
            decision = await session.aresolve(decision)
    except Exception as exc:
        log.exception("Tether failed while deciding on %s", tool)
        if run.registration.monitoring:
            return None
        raise ToolRefused(f"Tether could not decide on '{tool}' ({type(exc).__name__}); the call was not run") from exc
    if not decision.allowed:
        raise ToolRefused(decision.refusal())
    return session, decision


async def _seen(session: Session, decision: Decision, output: Any, error: BaseException | str | None = None) -> Any:
    """Record the output; what the model may see (the output, redacted, or a withheld notice)."""
    try:
        return await session.aafter_tool(decision, output, error=error)
    except Exception as exc:
        log.exception("Tether could not record the output of %s", decision.call.tool)
        raise ToolRefused(f"Tether could not record the output of '{decision.call.tool}'; withheld") from exc


def _guarded_run_json(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def run_json(self: Any, args: Mapping[str, Any], cancellation_token: Any, *rest: Any, **kw: Any) -> Any:
        call_id = kw.get("call_id", rest[0] if rest else None)
        try:
            gate = await _decide(self.name, args, call_id)
        except ToolRefused as refused:
            turn = _TURN.get()
            if turn is None or not turn.is_handoff(self):
                raise
            # AgentChat does not survive a handoff tool that raises (0.7 waits on it for ever):
            # the refusal is the handoff's result, and the agent's turn ends with it as text
            turn.refused_handoffs.add(str(refused))
            return str(refused)
        if gate is None:
            return await original(self, args, cancellation_token, *rest, **kw)
        session, decision = gate
        try:
            result = await original(self, dict(decision.args), cancellation_token, *rest, **kw)
        except Exception as exc:
            await _seen(session, decision, None, error=exc)
            raise
        return await _seen(session, decision, result)

    return run_json


def _guarded_run_json_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def run_json_stream(
        self: Any, args: Mapping[str, Any], cancellation_token: Any, *rest: Any, **kw: Any
    ) -> Any:
        gate = await _decide(self.name, args, kw.get("call_id", rest[0] if rest else None))
        if gate is None:
            async for item in original(self, args, cancellation_token, *rest, **kw):
                yield item
            return
        session, decision = gate
        last: Any = None
        async for item in original(self, dict(decision.args), cancellation_token, *rest, **kw):
            if last is not None:
                yield last
            last = item
        yield await _seen(session, decision, last)  # the final value is the tool's result

    return run_json_stream


def _guarded_mcp_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def call_tool(self: Any, name: str, arguments: Mapping[str, Any] | None = None, *rest: Any, **kw: Any) -> Any:
        call_id = kw.get("call_id", rest[1] if len(rest) > 1 else None)
        tool = mcp_tool(_server_name(self), name)
        try:
            gate = await _decide(tool, arguments or {}, call_id)
        except ToolRefused as refused:
            return ToolResult(name=name, result=[TextResultContent(content=str(refused))], is_error=True)
        if gate is None:
            return await original(self, name, arguments, *rest, **kw)
        session, decision = gate
        try:
            result = await original(self, name, dict(decision.args), *rest, **kw)
        except Exception as exc:  # the workbench failed (its server unreachable): recorded, raised on
            await _seen(session, decision, None, error=exc)
            raise
        text = result.to_text()
        try:
            seen = await _seen(session, decision, text, error=text if result.is_error else None)
        except ToolRefused as refused:
            return ToolResult(name=name, result=[TextResultContent(content=str(refused))], is_error=True)
        return (
            result
            if seen is text
            else ToolResult(name=name, result=[TextResultContent(content=str(seen))], is_error=result.is_error)
        )

    return call_tool


def _server_name(workbench: Any) -> str:
    """The MCP server's own name (from its initialize answer, AgentChat 0.6+)."""
    with contextlib.suppress(Exception):
        name = workbench.initialize_result.serverInfo.name
        if isinstance(name, str) and name:
            return name
    return UNKNOWN_SERVER


def _guarded_code(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def execute_code_blocks(self: Any, code_blocks: list[Any], *args: Any, **kwargs: Any) -> Any:
        outputs: list[str] = []
        result = None
        for block in code_blocks:
            try:
                gate = await _decide(CODE_TOOL, {"language": block.language, "code": block.code}, None)
            except ToolRefused as refused:
                return CodeResult(exit_code=1, output="\n".join([*outputs, str(refused)]))
            if gate is None:
                return await original(self, code_blocks, *args, **kwargs)
            result = await original(self, [block], *args, **kwargs)
            try:
                seen = await _seen(*gate, result.output, error=result.output if result.exit_code else None)
            except ToolRefused as refused:
                seen = str(refused)
            outputs.append(str(seen))
            if result.exit_code != 0:
                break
        return CodeResult(exit_code=result.exit_code if result else 0, output="\n".join(outputs))

    return execute_code_blocks


# -- model calls ---------------------------------------------------------------------------


def _recorded_create(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def create(self: Any, messages: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        run = _RUN.get()
        if run is None or _IN_MODEL.get():
            return await original(self, messages, *args, **kwargs)
        session = run.session(_AGENT.get() or "agentchat")
        sent, request_id = await _request(session, self, messages)
        token = _IN_MODEL.set(True)
        try:
            result = await original(self, sent, *args, **kwargs)
        finally:
            _IN_MODEL.reset(token)
        await _record(session, request_id, result)
        return result

    return create


def _recorded_create_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def create_stream(self: Any, messages: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        run = _RUN.get()
        if run is None or _IN_MODEL.get():
            async for chunk in original(self, messages, *args, **kwargs):
                yield chunk
            return
        session = run.session(_AGENT.get() or "agentchat")
        sent, request_id = await _request(session, self, messages)
        async for chunk in original(self, sent, *args, **kwargs):
            if isinstance(chunk, CreateResult):
                await _record(session, request_id, chunk)
            yield chunk

    return create_stream


async def _request(session: Session, client: Any, messages: Sequence[Any]) -> tuple[list[Any], str]:
    """Record and screen what is new in a request (a model context only grows within a run);
    send the model what Tether returns: earlier redactions are applied again, new ones rebuilt
    into AgentChat's messages. Raises :class:`TetherError` when Tether withholds the request."""
    sent = [_replaced.get((session.id, id(m)), (m, m))[1] for m in messages]
    plain = _plain(sent)
    key = (session.id, session.agent, id(client))
    done, last = _requests.get(key, (0, None))
    start = done if 0 < done <= len(plain) and plain[done - 1] == last else 0
    new = plain[start:]
    model = str((getattr(client, "model_info", None) or {}).get("family"))
    request = await session.abefore_model(new, model=model)
    if not request.allowed:
        raise TetherError(f"Tether withheld the model request: {request.reason}")
    if request.messages is not new:
        for index, masked in enumerate(request.messages, start):
            rebuilt = _rebuild(sent[index], masked)
            if rebuilt is None:
                raise TetherError("Tether withheld the model request: it holds data to redact it cannot rewrite")
            if rebuilt is not sent[index]:
                _remember(_replaced, (session.id, id(messages[index])), (messages[index], rebuilt))
                sent[index] = rebuilt
        plain = _plain(sent)
    if plain:
        _remember(_requests, key, (len(plain), plain[-1]))
    return sent, request.event_id


async def _record(session: Session, request_id: str, result: CreateResult) -> None:
    calls = result.content if isinstance(result.content, list) else []
    proposed = [{"id": c.id, "name": c.name} for c in calls]
    shown = [{"name": c.name, "arguments": c.arguments} for c in calls] if calls else result.content
    response_id = await session.aafter_model(shown, tool_calls=proposed, parent=request_id)
    with _lock:
        for call in calls:
            _remember(_proposals, (session.id, call.id), (response_id, call.id))
            with contextlib.suppress(ValueError):  # unparseable arguments never reach a tool
                by_content = (session.id, call.name, _canonical(json.loads(call.arguments)))
                _remember(_proposals, by_content, (response_id, call.id))


def _take(session_id: str, call_id: str | None, name: str, arguments: Mapping[str, Any]) -> tuple[str, str] | None:
    """The model response that proposed a call and the call's id, forgotten once found. By call
    id, else by name and arguments (AgentChat 0.5 passes no call id on)."""
    with _lock:
        by_id = _proposals.pop((session_id, call_id), None) if call_id else None
        by_content = _proposals.pop((session_id, name, _canonical(arguments)), None)
        return by_id or by_content


def _plain(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Messages as role/content mappings. System messages and the user's own messages (source
    ``user``) are the trusted input; other agents' turns reach a model as user messages too, and
    are recorded with the role ``agent``."""
    out = []
    for message in messages:
        kind = type(message).__name__
        role = _ROLES.get(kind) or ("user" if getattr(message, "source", "user") == "user" else "agent")
        content = message.content
        if isinstance(message, FunctionExecutionResultMessage):
            content = [result.content for result in content]
        elif isinstance(content, list):
            content = [
                {"name": c.name, "arguments": c.arguments} if hasattr(c, "arguments") else str(c) for c in content
            ]
        elif not isinstance(content, str):
            content = str(content)
        out.append({"role": role, "content": content})
    return out


def _rebuild(message: Any, masked: Any) -> Any:
    """``message`` with the content Tether redacted, or None where it cannot be rewritten faithfully."""
    content = masked.get("content") if isinstance(masked, dict) else None
    if isinstance(message.content, str) and isinstance(content, str):
        return message if content == message.content else message.model_copy(update={"content": content})
    if isinstance(message, FunctionExecutionResultMessage) and isinstance(content, list):
        results = [r.model_copy(update={"content": str(c)}) for r, c in zip(message.content, content, strict=True)]
        return message.model_copy(update={"content": results})
    return None


def _canonical(arguments: Any) -> str:
    return json.dumps(arguments or {}, sort_keys=True, default=str)


def _remember(table: OrderedDict[Any, Any], key: object, value: object) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > _MAX_KEPT:
        table.popitem(last=False)
