"""Tether for the classic AutoGen API (``import autogen``: ag2 0.x, pyautogen <= 0.9 and 0.2).

    from tether.autogen.classic import register_guard

    register_guard([assistant, user_proxy], guard)  # or a GroupChat / GroupChatManager
    user_proxy.initiate_chat(assistant, message="...")

Every function or tool call an agent is about to execute is decided by the core first. The gate
is the executing agent's ``execute_function`` / ``a_execute_function``: every built-in path
(``tool_calls`` and legacy ``function_call``, sync and async, two-agent, group and nested chats)
runs through it on every supported version, and it sees unknown functions and malformed
arguments too. The ``safeguard_tool_*`` hooks of recent releases are not used: the async tool
path does not call them, and a hook cannot answer with a refusal (returning ``None`` raises).

A refused call never runs; the refusal text becomes the tool's output, so the model reads it and
the chat goes on. Calls that need approval wait for a person through the guard's approver.

Who acts: the policy's agent is the one that *proposed* the call (the assistant whose model
emitted it), found by a reply function the executor runs first on each message it receives; the
executing agent is recorded in the events' context. A call whose proposal was not seen (someone
calls ``execute_function`` directly) is decided in the executor's name.

The session: one per conversation. A top-level chat started with cleared history
(``initiate_chat``, ``a_initiate_chat``, ``run``) through a registered agent begins a new
session; a nested chat stays in its parent's; pass ``session_id`` to fix it instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

try:
    from autogen import Agent, ConversableAgent, GroupChat, GroupChatManager
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tether.autogen.classic needs the classic AutoGen API (the `autogen` module): "
        'pip install "ag2>=0.9,<1"  (or pyautogen<=0.9)'
    ) from exc

from tether.core import Decision, Guard, Mode, Session, TetherError

__all__ = ["Registration", "register_guard"]

log = logging.getLogger("tether.autogen")
_MAX_KEPT = 4096  # proposals and session handles kept per registration
_ATTR = "_tether_registration"

Result = tuple[bool, dict[str, Any]]


@dataclass(frozen=True)
class _Proposal:
    agent: str  # who proposed the call
    event_id: str  # the audit event of the message that proposed it
    keys: tuple[object, ...]  # how it is found again


@dataclass(frozen=True)
class _Call:
    session: Session
    name: str
    args: dict[str, Any]
    call_id: str | None
    caused_by: str | None
    parsed: bool  # False: the arguments are not a JSON object the framework can pass


class Registration:
    """Tether registered on a set of agents that converse together (they share a session)."""

    def __init__(self, guard: Guard, session_id: str | None, user: str | None, tenant: str | None) -> None:
        self.guard = guard
        self.agents: list[ConversableAgent] = []
        self._fixed = session_id
        self._user, self._tenant = user, tenant
        self._current: contextvars.ContextVar[str | None] = contextvars.ContextVar("tether_autogen", default=None)
        self._last: str | None = None  # for calls run outside the conversation's context (worker threads)
        self._depth: contextvars.ContextVar[int] = contextvars.ContextVar("tether_autogen_depth", default=0)
        self._lock = threading.Lock()
        self._sessions: OrderedDict[tuple[str, str, str], Session] = OrderedDict()
        self._proposals: OrderedDict[object, _Proposal] = OrderedDict()

    @property
    def session_id(self) -> str:
        """The session of the conversation running in this context (started on first use)."""
        if self._fixed:
            return self._fixed
        current = self._current.get() or self._last
        return current if current is not None else self.new_conversation()

    def new_conversation(self) -> str:
        """Start a new session for the conversation running in this context."""
        if self._fixed:
            return self._fixed
        self._last = os.urandom(16).hex()
        self._current.set(self._last)
        return self._last

    def _enter_chat(self, clear_history: bool) -> contextvars.Token[int]:
        """A chat starts: a new session, unless it is nested in a running one (or continues one)."""
        depth = self._depth.get()
        if depth == 0 and clear_history:
            self.new_conversation()
        return self._depth.set(depth + 1)

    def _leave_chat(self, token: contextvars.Token[int]) -> None:
        self._depth.reset(token)

    def _chat_prepared(self, clear_history: bool) -> None:
        """A chat reached a registered agent whose initiator is not registered."""
        if clear_history and self._depth.get() == 0:
            self.new_conversation()

    def _session(self, agent: str, executor: str) -> Session:
        key = (agent, self.session_id, executor)
        with self._lock:
            found = self._sessions.get(key)
            if found is None:
                context = {"framework": "autogen", "executor": executor}
                found = self.guard.session(agent, key[1], user=self._user, tenant=self._tenant, context=context)
                _remember(self._sessions, key, found)
            return found

    # -- what the model proposed ---------------------------------------------------------

    def _record_proposal(self, executor: ConversableAgent, message: Mapping[str, Any], sender: Agent | None) -> None:
        """Record a message carrying tool calls, in its proposer's name, once per message."""
        calls = _calls_of(message)
        if not calls:
            return
        proposer, sid = _proposer(message, sender, executor), self.session_id
        keyed = [(_keys(sid, call_id, name, raw)) for name, raw, call_id in calls]
        with self._lock:
            seen = [self._proposals.get(keys[0]) for keys in keyed]
        if all(p is not None and p.agent == proposer for p in seen) and all(len(k) > 1 for k in keyed):
            return  # already recorded: a group chat shows the message to several agents
        listed = [{"id": call_id, "name": name} for name, _, call_id in calls]
        event_id = self._session(proposer, executor.name).after_model(dict(message), tool_calls=listed)
        with self._lock:
            for keys in keyed:
                proposal = _Proposal(proposer, event_id, keys)
                for key in keys:
                    _remember(self._proposals, key, proposal)

    def _record_message(self, sender: ConversableAgent, message: Any) -> None:
        """Record what a model-backed agent says (its tool calls are recorded where they run)."""
        if isinstance(message, Mapping) and (_calls_of(message) or message.get("role") in ("tool", "function")):
            return
        self._session(sender.name, sender.name).after_model(message)

    def _take(self, call_id: str | None, name: str, raw: object) -> _Proposal | None:
        """The proposal of a call about to run, forgotten once found (a call runs once)."""
        with self._lock:
            for key in _keys(self.session_id, call_id, name, raw):
                found = self._proposals.get(key)
                if found is not None:
                    for other in found.keys:
                        if self._proposals.get(other) is found:
                            del self._proposals[other]
                    return found
        return None

    # -- the gate ------------------------------------------------------------------------

    def _prepare(self, agent: ConversableAgent, func_call: Mapping[str, Any], call_id: str | None) -> _Call:
        name = str(func_call.get("name") or "")
        raw = func_call.get("arguments", "{}")
        args: Any = None
        if isinstance(raw, str):
            try:  # the framework's own parsing, so both read the same arguments
                args = json.loads(_format_json(agent, raw))
            except ValueError:
                args = None
        parsed = isinstance(args, dict)
        if not parsed:
            args = {"unparsed_arguments": raw}
        proposal = self._take(call_id, name, raw)
        proposer = proposal.agent if proposal else agent.name
        session = self._session(proposer, agent.name)
        return _Call(session, name, args, call_id, proposal.event_id if proposal else None, parsed)

    @property
    def _monitoring(self) -> bool:
        return self.guard.mode is Mode.MONITOR


def register_guard(
    target: ConversableAgent | GroupChat | Iterable[ConversableAgent],
    guard: Guard,
    *,
    session_id: str | None = None,
    user: str | None = None,
    tenant: str | None = None,
) -> Registration:
    """Put every function call the agents execute under ``guard``'s policy.

    ``target`` is an agent, a list of the agents of one conversation, a ``GroupChat`` (its
    agents) or a ``GroupChatManager`` (its group's agents and itself). Register the agents that
    *execute* functions (and, to record their replies, the ones with a model). An agent already
    registered with this guard is left as it is; one registered with another guard is an error.
    """
    registration = Registration(guard, session_id, user, tenant)
    for agent in _agents_of(target):
        existing = agent.__dict__.get(_ATTR)
        if existing is not None:
            if existing.guard is not guard:
                raise TetherError(f"agent {agent.name!r} is already guarded by another Guard")
            continue
        _install(agent, registration)
        registration.agents.append(agent)
    return registration


def _agents_of(target: object) -> list[ConversableAgent]:
    if isinstance(target, GroupChatManager):
        return [*_agents_of(target.groupchat), target]
    if isinstance(target, GroupChat):  # only ConversableAgents execute functions
        return [agent for agent in target.agents if isinstance(agent, ConversableAgent)]
    if isinstance(target, ConversableAgent):
        return [target]
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes, Mapping)):
        return [a for item in target for a in _agents_of(item)]
    raise TypeError(f"register_guard needs a ConversableAgent, a GroupChat or a list of agents, not {type(target)!r}")


def _install(agent: ConversableAgent, reg: Registration) -> None:
    """Wrap the agent's execution points on this instance only; its class is untouched."""
    agent.__dict__[_ATTR] = reg
    agent.execute_function = _guarded(agent, reg, agent.execute_function)  # type: ignore[method-assign]
    agent.a_execute_function = _aguarded(agent, reg, agent.a_execute_function)  # type: ignore[method-assign,assignment]
    _track_chats(agent, reg)

    def _record_proposal(
        recipient: ConversableAgent,
        messages: list[dict[str, Any]] | None = None,
        sender: Agent | None = None,
        config: Any = None,
    ) -> tuple[bool, None]:
        if messages:
            try:
                reg._record_proposal(recipient, messages[-1], sender)
            except Exception:  # the calls are still decided (in the executor's name) when they run
                log.exception("Tether could not record the proposal of a tool call")
        return False, None  # never answers: the agent's own reply functions run next

    # ConversableAgent first: the match then costs one plain isinstance; `Agent` is a runtime
    # Protocol whose isinstance check is slow, so it is only reached for other senders.
    agent.register_reply([ConversableAgent, Agent, None], _record_proposal, position=0)
    if getattr(agent, "llm_config", None):
        agent.register_hook("process_message_before_send", _message_hook(reg))


def _track_chats(agent: ConversableAgent, reg: Registration) -> None:
    """Sessions follow chats: a top-level chat starts one, a nested chat stays in its parent's."""
    initiate, a_initiate, prepare = agent.initiate_chat, agent.a_initiate_chat, agent._prepare_chat

    def initiate_chat(recipient: Any, *args: Any, **kwargs: Any) -> Any:
        token = reg._enter_chat(bool(kwargs.get("clear_history", args[0] if args else True)))
        try:
            return initiate(recipient, *args, **kwargs)
        finally:
            reg._leave_chat(token)

    async def a_initiate_chat(recipient: Any, *args: Any, **kwargs: Any) -> Any:
        token = reg._enter_chat(bool(kwargs.get("clear_history", args[0] if args else True)))
        try:
            return await a_initiate(recipient, *args, **kwargs)
        finally:
            reg._leave_chat(token)

    def _prepare_chat(recipient: Any, clear_history: bool, *args: Any, **kwargs: Any) -> None:
        prepare(recipient, clear_history, *args, **kwargs)
        reg._chat_prepared(clear_history)

    agent.initiate_chat = initiate_chat  # type: ignore[method-assign]
    agent.a_initiate_chat = a_initiate_chat  # type: ignore[method-assign]
    agent._prepare_chat = _prepare_chat  # type: ignore[method-assign]


def _message_hook(reg: Registration) -> Callable[..., Any]:
    def _record_message(sender: ConversableAgent, message: Any, recipient: Any = None, silent: Any = None) -> Any:
        try:
            reg._record_message(sender, message)
        except Exception:  # recording is best effort here; tool calls are still decided where they run
            log.exception("Tether could not record a message")
        return message

    return _record_message


def _guarded(agent: ConversableAgent, reg: Registration, original: Callable[..., Result]) -> Callable[..., Result]:
    def execute_function(func_call: dict[str, Any], *args: Any, **kwargs: Any) -> Result:
        call_id = _call_id(args, kwargs)
        try:
            call = reg._prepare(agent, func_call, call_id)
            decision = call.session.before_tool(call.name, call.args, call_id=call_id, caused_by=call.caused_by)
            if decision.needs_approval:
                decision = call.session.resolve(decision)
        except Exception as exc:
            log.exception("Tether failed while deciding on a function call")
            return _failed(reg, func_call, exc, lambda: original(func_call, *args, **kwargs))
        if not decision.allowed:
            return False, _refused(call.name, decision.refusal())
        ok, result = original(_to_run(func_call, call, decision), *args, **kwargs)
        try:
            content = result.get("content")
            seen = call.session.after_tool(decision, content, error=None if ok else str(content))
        except Exception:
            log.exception("Tether could not record the output of %s", call.name)
            return _unrecorded(call.name)
        return ok, result if seen is content else {**result, "content": seen}  # redacted or withheld

    return execute_function


def _aguarded(
    agent: ConversableAgent, reg: Registration, original: Callable[..., Awaitable[Result]]
) -> Callable[..., Awaitable[Result]]:
    async def a_execute_function(func_call: dict[str, Any], *args: Any, **kwargs: Any) -> Result:
        call_id = _call_id(args, kwargs)
        try:
            call = reg._prepare(agent, func_call, call_id)
            decision = await call.session.abefore_tool(call.name, call.args, call_id=call_id, caused_by=call.caused_by)
            if decision.needs_approval:
                decision = await call.session.aresolve(decision)
        except Exception as exc:
            log.exception("Tether failed while deciding on a function call")
            if reg._monitoring:  # monitor mode never blocks, not even on Tether's own failure
                return await original(func_call, *args, **kwargs)
            return _failed(reg, func_call, exc, None)
        if not decision.allowed:
            return False, _refused(call.name, decision.refusal())
        ok, result = await original(_to_run(func_call, call, decision), *args, **kwargs)
        try:
            content = result.get("content")
            seen = await call.session.aafter_tool(decision, content, error=None if ok else str(content))
        except Exception:
            log.exception("Tether could not record the output of %s", call.name)
            return _unrecorded(call.name)
        return ok, result if seen is content else {**result, "content": seen}  # redacted or withheld

    return a_execute_function


# -- helpers -------------------------------------------------------------------------------


def _call_id(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The tool call id, where the framework passes one (ag2 0.9+: second argument ``call_id``)."""
    found = kwargs.get("call_id", args[0] if args and not isinstance(args[0], bool) else None)
    return found if isinstance(found, str) else None


def _to_run(func_call: dict[str, Any], call: _Call, decision: Decision) -> dict[str, Any]:
    """The call to execute: the model's own, or with the arguments the decision allows."""
    if not call.parsed or dict(decision.args) == call.args:
        return func_call
    return {**func_call, "arguments": json.dumps(dict(decision.args))}


def _format_json(agent: ConversableAgent, raw: str) -> str:
    """AutoGen's own clean-up of model-written JSON (newlines, escapes), so both parse the same."""
    clean: Callable[[str], str] = agent._format_json_str
    return clean(raw)


def _refused(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "role": "function", "content": text}


def _failed(
    reg: Registration, func_call: Mapping[str, Any], exc: Exception, run: Callable[[], Result] | None
) -> Result:
    """Tether itself failed: deny (fail closed), unless the policy only monitors."""
    if reg._monitoring and run is not None:  # monitor mode never blocks, not even on Tether's own failure
        return run()
    name = str(func_call.get("name") or "")
    return False, _refused(name, f"Tether denied the call to '{name}': Tether failed ({type(exc).__name__})")


def _unrecorded(name: str) -> Result:
    """The tool ran but its output could not be recorded: withhold it rather than pass it on unchecked."""
    return False, _refused(name, f"Tether withheld the output of '{name}': it could not be recorded")


def _calls_of(message: Mapping[str, Any]) -> list[tuple[str, object, str | None]]:
    """(name, raw arguments, call id) of each call a message proposes."""
    calls = []
    for tool_call in message.get("tool_calls") or []:
        function = tool_call.get("function") or {}
        calls.append((str(function.get("name") or ""), function.get("arguments", "{}"), tool_call.get("id")))
    function_call = message.get("function_call")
    if function_call:
        calls.append((str(function_call.get("name") or ""), function_call.get("arguments", "{}"), message.get("id")))
    return calls


def _keys(session_id: str, call_id: str | None, name: str, raw: object) -> tuple[object, ...]:
    """How a proposal is found again, within its session: by call id, then by (name, arguments)
    for versions that pass no id to ``execute_function`` (pyautogen 0.2)."""
    by_content = (session_id, name, raw if isinstance(raw, str) else repr(raw))
    return ((session_id, call_id), by_content) if call_id else (by_content,)


def _proposer(message: Mapping[str, Any], sender: Agent | None, executor: ConversableAgent) -> str:
    name = message.get("name")
    if isinstance(name, str) and name:
        return name
    if isinstance(sender, GroupChatManager) and sender.groupchat.messages:
        name = sender.groupchat.messages[-1].get("name")
        if isinstance(name, str) and name:
            return name
    return sender.name if sender is not None else executor.name


def _remember(table: OrderedDict[Any, Any], key: object, value: object) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > _MAX_KEPT:
        table.popitem(last=False)
