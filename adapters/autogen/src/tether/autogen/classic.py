"""Tether for the classic AutoGen API (``import autogen``: ag2 0.x, pyautogen <= 0.9 and 0.2).

    from tether.autogen.classic import register_guard

    register_guard([assistant, user_proxy], guard)  # or a GroupChat, a GroupChatManager, a pattern
    user_proxy.initiate_chat(assistant, message="...")

Tether decides where every classic agent runs a function, whatever started the chat: the class
methods ``ConversableAgent.execute_function`` / ``a_execute_function`` (every tool and legacy
function call, of every agent, including the executors AutoGen creates itself for ``run`` and
for group patterns), ``ConversableAgent.execute_code_blocks`` and each code executor's
``execute_code_blocks`` (code execution, decided as the tool ``execute_code``), and
``ConversableAgent._generate_oai_reply_from_client`` (every model call: the request is recorded
and screened, the response recorded with the tool calls it proposes). These are patched once,
on the class, when the first guard is registered.

``register_guard`` only says which guard, user and tenant an agent's chats belong to. Sessions
follow chats: ``initiate_chat`` / ``a_initiate_chat`` (which every entry point runs: ``run``,
``initiate_chats``, ``initiate_group_chat``, ``run_group_chat``...) starts one at the top level;
a nested chat, or one continuing with ``carryover`` or ``clear_history=False``, stays in it. A
chat belongs to the registration of its sender, its recipient or, for a group chat manager, one
of its group's agents. Calls outside any guarded chat are decided in the executing agent's name
under a fallback session of the most recently registered guard: nothing runs undecided.

Who acts: the agent whose model proposed the call (recorded when its model answered); the
executing agent is recorded in the events' context. A call no model proposed is decided in the
executor's name (for a group pattern's tool executor: the agent it runs the call for).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any

try:
    from autogen import ConversableAgent, GroupChat, GroupChatManager
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tether.autogen.classic needs the classic AutoGen API (the `autogen` module): "
        'pip install "ag2>=0.9,<1"  (or pyautogen<=0.9)'
    ) from exc

from tether.core import Decision, Guard, Mode, Session, TetherError
from tether.core.planners import Planner

__all__ = ["CODE_TOOL", "Registration", "register_guard"]

log = logging.getLogger("tether.autogen")
CODE_TOOL = "execute_code"  # the policy's name for running a code block: args {"language", "code"}
_MAX_KEPT = 4096  # proposals and session handles kept
_ATTR = "_tether_registration"  # on a registered agent
_LAST_CHAT = "_tether_chat"  # on an agent: the chat it last took part in (for calls run in other threads)

Result = tuple[bool, dict[str, Any]]


@dataclass(frozen=True)
class _Chat:
    """A conversation: the registration it belongs to and its session."""

    registration: Registration
    session_id: str


_CHAT: contextvars.ContextVar[_Chat | None] = contextvars.ContextVar("tether_autogen_chat", default=None)
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("tether_autogen_depth", default=0)
_latest: Registration | None = None  # the most recent registration: its guard decides unattributed calls
_fallbacks: weakref.WeakKeyDictionary[Guard, Registration] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass(frozen=True)
class _Proposal:
    agent: str  # who proposed the call
    event_id: str  # the model response that proposed it
    keys: tuple[object, ...]  # how it is found again
    call_id: str | None  # the model's id for the call (pyautogen 0.2 does not pass it on)


_proposals: OrderedDict[object, _Proposal] = OrderedDict()
_requests: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()  # (session, agent) -> recorded prefix


class Registration:
    """Tether registered on a set of agents that converse together (they share a session)."""

    def __init__(
        self,
        guard: Guard,
        session_id: str | None,
        user: str | None,
        tenant: str | None,
        fallback: bool = False,
        planner: Planner | None = None,
    ) -> None:
        self.guard = guard
        self.planner = planner  # gives each session a task scope from its trusted request
        self.agents: list[ConversableAgent] = []
        self._fixed = session_id
        self._user, self._tenant = user, tenant
        self._fallback = fallback
        self._last: _Chat | None = None
        self._sessions: OrderedDict[tuple[str, str, str], Session] = OrderedDict()

    @property
    def session_id(self) -> str:
        """The session of the conversation running in this context (or the most recent one)."""
        chat = _CHAT.get()
        if chat is not None and chat.registration is self:
            return chat.session_id
        return self._current().session_id

    def new_conversation(self) -> str:
        """Start a new session (the next chat of these agents runs in it)."""
        return self._new_chat().session_id

    def _new_chat(self) -> _Chat:
        self._last = _Chat(self, self._fixed or os.urandom(16).hex())
        return self._last

    def _current(self) -> _Chat:
        return self._last if self._last is not None else self._new_chat()

    def _session(self, agent: str, session_id: str, executor: str) -> Session:
        key = (agent, session_id, executor)
        with _lock:
            found = self._sessions.get(key)
            if found is None:
                context = {"framework": "autogen", "executor": executor}
                if self._fallback:
                    context["attribution"] = "fallback"  # no guarded chat and no registration: see the docs
                found = self.guard.session(
                    agent, session_id, user=self._user, tenant=self._tenant, context=context, planner=self.planner
                )
                _remember(self._sessions, key, found)
            return found

    @property
    def _monitoring(self) -> bool:
        return self.guard.mode is Mode.MONITOR


def register_guard(
    target: Any,
    guard: Guard,
    *,
    session_id: str | None = None,
    user: str | None = None,
    tenant: str | None = None,
    planner: Planner | None = None,
) -> Registration:
    """Put the chats of ``target``'s agents under ``guard``'s policy (``planner``: a task scope
    for each session from its trusted request, see ``tether.core.planners``).

    ``target`` is an agent, a list of agents, a ``GroupChat`` (its agents), a ``GroupChatManager``
    (its group's agents and itself) or a group pattern (ag2 0.9+: its agents and user agent). An
    agent already registered with this guard is left as it is; one registered with another guard
    is an error.
    """
    global _latest
    _install()
    registration = Registration(guard, session_id, user, tenant, planner=planner)
    for agent in _agents_of(target):
        existing = agent.__dict__.get(_ATTR)
        if existing is not None:
            if existing.guard is not guard:
                raise TetherError(f"agent {agent.name!r} is already guarded by another Guard")
            continue
        agent.__dict__[_ATTR] = registration
        _guard_code_executor(agent)
        registration.agents.append(agent)
    _latest = registration
    return registration


def _agents_of(target: object) -> list[ConversableAgent]:
    if isinstance(target, GroupChatManager):
        return [*_agents_of(target.groupchat), target]
    if isinstance(target, GroupChat):
        return [agent for agent in target.agents if isinstance(agent, ConversableAgent)]
    if isinstance(target, ConversableAgent):
        return [target]
    if hasattr(target, "prepare_group_chat") and isinstance(getattr(target, "agents", None), list):  # a pattern
        user = getattr(target, "user_agent", None)
        return _agents_of([*target.agents, *([user] if user is not None else [])])  # type: ignore[attr-defined]
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes, Mapping)):
        return [a for item in target for a in _agents_of(item)]
    raise TypeError(
        f"register_guard needs a ConversableAgent, a GroupChat, a pattern or a list of agents, not {type(target)!r}"
    )


# -- who acts, in which session ------------------------------------------------------------


def _registration_of(agent: object) -> Registration | None:
    found = getattr(agent, "__dict__", {}).get(_ATTR)
    return found if isinstance(found, Registration) else None


def _fallback() -> Registration | None:
    if _latest is None:
        return None
    guard = _latest.guard
    with _lock:
        found = _fallbacks.get(guard)
        if found is None:
            found = _fallbacks[guard] = Registration(guard, None, None, None, fallback=True)
        return found


def _chat_of(agent: ConversableAgent) -> _Chat | None:
    """The conversation a call of ``agent`` belongs to: the chat running in this context; else
    the chat the agent last took part in (AutoGen runs some calls in threads of its own); else its
    registration's latest; else the fallback of the most recently registered guard."""
    own = _registration_of(agent)
    chat = _CHAT.get()
    if chat is not None and (own is None or own.guard is chat.registration.guard):
        agent.__dict__[_LAST_CHAT] = chat
        return chat
    last = agent.__dict__.get(_LAST_CHAT)
    if isinstance(last, _Chat) and (own is None or own.guard is last.registration.guard):
        return last
    if own is not None:
        return own._current()
    fallback = _fallback()
    return fallback._current() if fallback is not None else None


def _participants(*agents: object) -> list[Any]:
    found: list[Any] = []
    for agent in agents:
        found.append(agent)
        if isinstance(agent, GroupChatManager):
            found.extend(agent.groupchat.agents)
    return found


def _enter_chat(sender: Any, recipient: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Chat | None:
    """A chat starts: a new session at the top level unless it continues one; nested chats stay."""
    members = _participants(sender, recipient)
    registration = next((r for r in map(_registration_of, members) if r is not None), None) or _fallback()
    if registration is None:
        return None
    parent = _CHAT.get()
    if parent is not None and _DEPTH.get() > 0 and parent.registration.guard is registration.guard:
        chat = parent  # nested: its taint and limits are the conversation's
    elif bool(kwargs.get("clear_history", args[0] if args else True)) and not kwargs.get("carryover"):
        chat = registration._new_chat()
        _trust_opening(chat, sender, kwargs.get("message"))
    else:
        chat = registration._current()
    for member in members:
        if isinstance(member, ConversableAgent):
            member.__dict__[_LAST_CHAT] = chat
            _guard_code_executor(member)
    return chat


def _trust_opening(chat: _Chat, sender: Any, message: Any) -> None:
    """The message a top-level chat starts with is the user's request: trusted input."""
    content = message.get("content") if isinstance(message, Mapping) else message
    if isinstance(content, str) and content:
        name = str(getattr(sender, "name", "") or "user")
        try:
            chat.registration._session(name, chat.session_id, name).trusted_input(content)
        except Exception as exc:
            if chat.registration._monitoring:
                log.exception("Tether could not record the chat's opening message")
                return
            raise TetherError(f"Tether could not record the chat's opening message ({type(exc).__name__})") from exc


# -- the waists ----------------------------------------------------------------------------

_installed = False


def _install() -> None:
    """Patch the classic API's execution points, once per process."""
    global _installed
    with _lock:
        if _installed:
            return
        cls = ConversableAgent
        cls.execute_function = _guarded_execute(cls.execute_function)  # type: ignore[method-assign]
        cls.a_execute_function = _aguarded_execute(cls.a_execute_function)  # type: ignore[method-assign]
        cls.initiate_chat = _tracked_chat(cls.initiate_chat)  # type: ignore[method-assign]
        cls.a_initiate_chat = _atracked_chat(cls.a_initiate_chat)  # type: ignore[method-assign]
        cls.execute_code_blocks = _guarded_code(cls.execute_code_blocks)  # type: ignore[method-assign]
        cls._generate_oai_reply_from_client = _recorded_model_call(  # type: ignore[method-assign]
            cls._generate_oai_reply_from_client
        )
        _installed = True


def _tracked_chat(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def initiate_chat(self: Any, recipient: Any, *args: Any, **kwargs: Any) -> Any:
        chat = _enter_chat(self, recipient, args, kwargs)
        token, depth = _CHAT.set(chat), _DEPTH.set(_DEPTH.get() + 1)
        try:
            return original(self, recipient, *args, **kwargs)
        finally:
            _DEPTH.reset(depth)
            _CHAT.reset(token)

    return initiate_chat


def _atracked_chat(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def a_initiate_chat(self: Any, recipient: Any, *args: Any, **kwargs: Any) -> Any:
        chat = _enter_chat(self, recipient, args, kwargs)
        token, depth = _CHAT.set(chat), _DEPTH.set(_DEPTH.get() + 1)
        try:
            return await original(self, recipient, *args, **kwargs)
        finally:
            _DEPTH.reset(depth)
            _CHAT.reset(token)

    return a_initiate_chat


@dataclass(frozen=True)
class _Call:
    chat: _Chat
    session: Session
    name: str
    args: dict[str, Any]
    call_id: str | None
    caused_by: str | None
    parsed: bool  # False: the arguments are not a JSON object the framework can pass


def _prepare(agent: ConversableAgent, func_call: Mapping[str, Any], call_id: str | None) -> _Call | None:
    chat = _chat_of(agent)
    if chat is None:
        return None
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
    proposal = _take(chat.session_id, call_id, name, raw)
    originator = getattr(agent, "_tool_call_originator", None)  # a group pattern's tool executor
    proposer = proposal.agent if proposal else (originator if isinstance(originator, str) else agent.name)
    session = chat.registration._session(proposer, chat.session_id, agent.name)
    call_id = call_id or (proposal.call_id if proposal else None)
    return _Call(chat, session, name, args, call_id, proposal.event_id if proposal else None, parsed)


def _guarded_execute(original: Callable[..., Result]) -> Callable[..., Result]:
    @wraps(original)
    def execute_function(self: ConversableAgent, func_call: dict[str, Any], *args: Any, **kwargs: Any) -> Result:
        call_id = _call_id(args, kwargs)
        try:
            call = _prepare(self, func_call, call_id)
            if call is None:  # no guard registered in this process
                return original(self, func_call, *args, **kwargs)
            decision = call.session.before_tool(call.name, call.args, call_id=call.call_id, caused_by=call.caused_by)
            if decision.needs_approval:
                decision = call.session.resolve(decision)
        except Exception as exc:
            log.exception("Tether failed while deciding on a function call")
            if _monitoring(self):  # monitor mode never blocks, not even on Tether's own failure
                return original(self, func_call, *args, **kwargs)
            return False, _refused(func_call, f"Tether failed ({type(exc).__name__})")
        if not decision.allowed:
            return False, {"name": func_call.get("name", ""), "role": "function", "content": decision.refusal()}
        ok, result = original(self, _to_run(func_call, call, decision), *args, **kwargs)
        try:
            content = result.get("content")
            seen = call.session.after_tool(decision, content, error=None if ok else str(content))
        except Exception:
            log.exception("Tether could not record the output of %s", call.name)
            return False, _unrecorded(func_call)
        return ok, result if seen is content else {**result, "content": seen}  # redacted or withheld

    return execute_function


def _aguarded_execute(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    async def a_execute_function(self: ConversableAgent, func_call: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        call_id = _call_id(args, kwargs)
        try:
            call = _prepare(self, func_call, call_id)
            if call is None:  # no guard registered in this process
                return await original(self, func_call, *args, **kwargs)
            decision = await call.session.abefore_tool(
                call.name, call.args, call_id=call.call_id, caused_by=call.caused_by
            )
            if decision.needs_approval:
                decision = await call.session.aresolve(decision)
        except Exception as exc:
            log.exception("Tether failed while deciding on a function call")
            if _monitoring(self):
                return await original(self, func_call, *args, **kwargs)
            return False, _refused(func_call, f"Tether failed ({type(exc).__name__})")
        if not decision.allowed:
            return False, {"name": func_call.get("name", ""), "role": "function", "content": decision.refusal()}
        ok, result = await original(self, _to_run(func_call, call, decision), *args, **kwargs)
        try:
            content = result.get("content")
            seen = await call.session.aafter_tool(decision, content, error=None if ok else str(content))
        except Exception:
            log.exception("Tether could not record the output of %s", call.name)
            return False, _unrecorded(func_call)
        return ok, result if seen is content else {**result, "content": seen}

    return a_execute_function


def _monitoring(agent: ConversableAgent) -> bool:
    chat = _CHAT.get()
    registration = _registration_of(agent) or (chat.registration if chat else None) or _fallback()
    return registration is not None and registration._monitoring


# -- code execution ------------------------------------------------------------------------


def _decide_code(agent: ConversableAgent, language: str, code: str) -> tuple[Session, Decision] | str | None:
    """Decide on running one code block: the session and decision, or the refusal text; None when
    Tether failed in monitor mode (run as AutoGen would)."""
    try:
        chat = _chat_of(agent)
        if chat is None:
            raise TetherError("no guard registered")
        session = chat.registration._session(agent.name, chat.session_id, agent.name)
        decision = session.before_tool(CODE_TOOL, {"language": language, "code": code})
        if decision.needs_approval:
            decision = session.resolve(decision)
    except Exception as exc:
        log.exception("Tether failed while deciding on a code block")
        if _monitoring(agent):
            return None
        return f"Tether denied the call to '{CODE_TOOL}': Tether failed ({type(exc).__name__})"
    return (session, decision) if decision.allowed else decision.refusal()


def _record_code(session: Session, decision: Decision, exit_code: int, output: str) -> str:
    try:
        seen = session.after_tool(decision, output, error=output if exit_code else None)
    except Exception:
        log.exception("Tether could not record the output of a code block")
        return f"Tether withheld the output of '{CODE_TOOL}': it could not be recorded"
    return seen if isinstance(seen, str) else str(seen)


def _guarded_code(original: Callable[..., tuple[int, str]]) -> Callable[..., tuple[int, str]]:
    """The legacy path (``code_execution_config`` without an executor): each block decided."""

    @wraps(original)
    def execute_code_blocks(self: ConversableAgent, code_blocks: list[tuple[str, str]]) -> tuple[int, str]:
        logs_all, exit_code = "", 0
        for lang, code in code_blocks:
            decided = _decide_code(self, lang or "", code)
            if decided is None:
                return original(self, code_blocks)
            if isinstance(decided, str):
                return 1, logs_all + "\n" + decided
            exit_code, logs = original(self, [(lang, code)])
            logs_all += _record_code(*decided, exit_code, logs)
            if exit_code != 0:
                break
        return exit_code, logs_all

    return execute_code_blocks


def _guard_code_executor(agent: ConversableAgent) -> None:
    """The executor path (``code_execution_config={"executor": ...}``): patch the executor's class."""
    executor = agent.__dict__.get("_code_executor")
    if executor is None:
        return
    owner = next((c for c in type(executor).__mro__ if "execute_code_blocks" in c.__dict__), None)
    if owner is None or getattr(owner.__dict__["execute_code_blocks"], "_tether", False):
        return
    original = owner.__dict__["execute_code_blocks"]

    @wraps(original)
    def execute_code_blocks(self: Any, code_blocks: list[Any]) -> Any:
        agent = next((a for a in _executor_agents if a.__dict__.get("_code_executor") is self), None)
        if agent is None:
            return original(self, code_blocks)  # an executor no agent runs: not a chat's code
        outputs, result = [], None
        for block in code_blocks:
            decided = _decide_code(agent, block.language, block.code)
            if decided is None:
                return original(self, code_blocks)
            if isinstance(decided, str):
                return _code_result(1, "\n".join([*outputs, decided]))
            result = original(self, [block])
            outputs.append(_record_code(*decided, result.exit_code, result.output))
            if result.exit_code != 0:
                break
        return _code_result(result.exit_code if result is not None else 0, "\n".join(outputs))

    execute_code_blocks._tether = True  # type: ignore[attr-defined]
    owner.execute_code_blocks = execute_code_blocks  # type: ignore[attr-defined]
    _executor_agents.add(agent)


_executor_agents: weakref.WeakSet[ConversableAgent] = weakref.WeakSet()


def _code_result(exit_code: int, output: str) -> Any:
    from autogen.coding import CodeResult

    return CodeResult(exit_code=exit_code, output=output)


# -- model calls ---------------------------------------------------------------------------


def _recorded_model_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def generate_from_client(
        self: ConversableAgent, llm_client: Any, messages: list[Any], *args: Any, **kw: Any
    ) -> Any:
        chat = _chat_of(self)
        if chat is None:
            return original(self, llm_client, messages, *args, **kw)
        session = chat.registration._session(self.name, chat.session_id, self.name)
        request = _screen_request(session, messages)
        response = original(self, llm_client, messages, *args, **kw)
        if messages:  # after the call: AutoGen pops the last message's "context" key
            with _lock:
                _remember(_requests, (session.id, session.agent), (len(messages), _digest(messages[-1])))
        try:
            _record_response(chat, session, request, response)
        except Exception:  # the calls it proposes are still decided, in the executor's name
            log.exception("Tether could not record a model response")
        return response

    return generate_from_client


def _screen_request(session: Session, messages: list[Any]) -> str | None:
    """Record and screen what is new in a model request (the agent's history only grows within a
    chat); apply a redaction to the history itself, so later requests carry it too. Raises
    :class:`TetherError` when Tether withholds the request or cannot record it (fail closed)."""
    key = (session.id, session.agent)
    try:
        with _lock:
            done, last = _requests.get(key, (0, ""))
        start = done if 0 < done <= len(messages) and _digest(messages[done - 1]) == last else 0
        new = [m for m in messages[start:] if isinstance(m, dict)]
        shown = [_as_sent_by_peer(m) for m in new]
        request = session.before_model(shown)
    except Exception as exc:
        if session.guard.mode is Mode.MONITOR:
            log.exception("Tether could not record a model request")
            return None
        raise TetherError(f"Tether could not record the model request ({type(exc).__name__})") from exc
    if not request.allowed:
        raise TetherError(f"Tether withheld the model request: {request.reason}")
    if request.messages is not shown:
        for original, redacted in zip(new, request.messages, strict=False):
            if not isinstance(redacted, dict):
                raise TetherError("Tether withheld the model request: it cannot be redacted in place")
            original.update({k: v for k, v in redacted.items() if k != "role"})
    return request.event_id


def _as_sent_by_peer(message: dict[str, Any]) -> dict[str, Any]:
    """AutoGen gives every other agent's message the role ``user``; only the chat's opening
    message (recorded as trusted input when the chat started) and the system message are the
    user's, so other ``user`` messages are recorded with the role ``agent``."""
    return {**message, "role": "agent"} if message.get("role") == "user" else message


def _digest(message: Any) -> str:
    return json.dumps(message, sort_keys=True, default=str)


def _record_response(chat: _Chat, session: Session, request: str | None, response: Any) -> None:
    message = response if isinstance(response, Mapping) else {"content": response}
    calls = _calls_of(message)
    listed = [{"id": call_id, "name": name} for name, _, call_id in calls]
    event_id = session.after_model(response, tool_calls=listed, parent=request)
    with _lock:
        for name, raw, call_id in calls:
            keys = _keys(chat.session_id, call_id, name, raw)
            proposal = _Proposal(session.agent, event_id, keys, call_id)
            for key in keys:
                _remember(_proposals, key, proposal)


def _take(session_id: str, call_id: str | None, name: str, raw: object) -> _Proposal | None:
    """The proposal of a call about to run, forgotten once found (a call runs once)."""
    with _lock:
        for key in _keys(session_id, call_id, name, raw):
            found = _proposals.get(key)
            if found is not None:
                for other in found.keys:
                    if _proposals.get(other) is found:
                        del _proposals[other]
                return found
    return None


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


def _refused(func_call: Mapping[str, Any], why: str) -> dict[str, Any]:
    name = str(func_call.get("name") or "")
    return {"name": name, "role": "function", "content": f"Tether denied the call to '{name}': {why}"}


def _unrecorded(func_call: Mapping[str, Any]) -> dict[str, Any]:
    """The tool ran but its output could not be recorded: withhold it rather than pass it on unchecked."""
    name = str(func_call.get("name") or "")
    return {"name": name, "role": "function", "content": f"Tether withheld the output of '{name}': not recorded"}


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


def _remember(table: OrderedDict[Any, Any], key: object, value: object) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > _MAX_KEPT:
        table.popitem(last=False)
