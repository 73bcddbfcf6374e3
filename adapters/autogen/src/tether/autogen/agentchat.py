"""Tether for Microsoft AutoGen AgentChat (``autogen-agentchat`` 0.4 to 0.7, what ``pip install
pyautogen`` installs today).

    from tether.autogen.agentchat import register_guard

    register_guard(team_or_agent, guard)   # every AssistantAgent in it is governed
    await team.run(task="Please handle ticket T-1001.")

An ``AssistantAgent`` runs its tools through workbenches; Tether wraps each of them, so every
tool call is decided before it runs, in the agent's name. A refused call returns Tether's
refusal as the tool result the model reads; a call that needs approval waits for the guard's
approver; what the tool returns passes through ``after_tool`` (classification, taint,
redaction) before the model sees it. The agent's model client is wrapped too, so model
requests and the tool calls they propose are recorded and linked.

Each ``run``/``run_stream`` of a guarded agent or team is one session, unless a ``session_id``
is given. Swarm handoffs (``transfer_to_...``) are the team's routing, not tools: they are not
workbench calls and are not decided.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import logging
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient, CreateResult, LLMMessage
from autogen_core.tools import TextResultContent, ToolResult, ToolSchema, Workbench

from tether.core import Decision, Guard, Mode, Session, TetherError

log = logging.getLogger("tether.autogen")
_ROLES = {"SystemMessage": "system", "UserMessage": "user", "AssistantMessage": "assistant"}


class Registration:
    """Tether registered on an AgentChat agent or team: its guard, agents and current session."""

    def __init__(self, guard: Guard, session_id: str | None, user: str | None, tenant: str | None) -> None:
        self.guard = guard
        self.agents: list[str] = []
        self._fixed = session_id
        self._user, self._tenant = user, tenant
        self._run: contextvars.ContextVar[str] = contextvars.ContextVar(f"tether-run-{id(self)}")
        self._default = session_id or os.urandom(8).hex()
        # tool call id (or, where AgentChat does not pass ids on, name and arguments) -> the model
        # response that proposed the call
        self._proposals: dict[Any, str] = {}

    def proposed(self, call_id: str | None, name: str, arguments: Mapping[str, Any] | None) -> str | None:
        """The model response that proposed a call, forgotten once asked for."""
        by_content = (name, json.dumps(arguments or {}, sort_keys=True, default=str))
        response = self._proposals.pop(call_id, None) if call_id else None
        return self._proposals.pop(by_content, response)

    def propose(self, response_id: str, call_id: str, name: str, arguments: str) -> None:
        self._proposals[call_id] = response_id
        with contextlib.suppress(ValueError):  # unparseable arguments never reach a workbench
            self._proposals[(name, json.dumps(json.loads(arguments), sort_keys=True, default=str))] = response_id

    @property
    def session_id(self) -> str:
        return self._run.get(self._default)

    def session(self, agent: str) -> Session:
        return self.guard.session(
            agent, self.session_id, user=self._user, tenant=self._tenant, context={"framework": "autogen-agentchat"}
        )

    def new_run(self) -> contextvars.Token[str]:
        return self._run.set(self._fixed or os.urandom(8).hex())

    @property
    def monitoring(self) -> bool:
        return self.guard.mode is Mode.MONITOR


def register_guard(
    target: Any, guard: Guard, *, session_id: str | None = None, user: str | None = None, tenant: str | None = None
) -> Registration:
    """Govern every ``AssistantAgent`` of ``target`` (an agent or a team) with ``guard``.

    Registering the same guard again is a no-op; a different guard raises :class:`TetherError`.
    """
    existing: Registration | None = getattr(target, "_tether_registration", None)
    if existing is not None:
        if existing.guard is not guard:
            raise TetherError("this agent or team is already guarded by another Tether guard")
        return existing
    registration = Registration(guard, session_id, user, tenant)
    agents = _assistants(target)
    if not agents:
        raise TetherError(f"no AssistantAgent found in {type(target).__name__}")
    for agent in agents:
        _guard_agent(agent, registration)
    _new_session_per_run(target, registration)
    target._tether_registration = registration
    return registration


def _assistants(target: Any) -> list[AssistantAgent]:
    if isinstance(target, AssistantAgent):
        return [target]
    members = getattr(target, "_participants", None) or []
    return [agent for member in members for agent in _assistants(member)]


def _guard_agent(agent: AssistantAgent, registration: Registration) -> None:
    if getattr(agent, "_tether_registration", None) is not None:
        raise TetherError(f"agent {agent.name!r} is already guarded by another registration")
    benches = agent._workbench  # one workbench before AgentChat 0.6, a list since
    if isinstance(benches, Workbench):
        agent._workbench = GuardedWorkbench(benches, agent.name, registration)  # type: ignore[assignment]
    else:
        agent._workbench = [GuardedWorkbench(wb, agent.name, registration) for wb in benches]
    agent._model_client = RecordingClient(agent._model_client, agent.name, registration)
    agent._tether_registration = registration  # type: ignore[attr-defined]
    registration.agents.append(agent.name)


def _new_session_per_run(target: Any, registration: Registration) -> None:
    run, run_stream = target.run, target.run_stream

    async def guarded_run(*args: Any, **kwargs: Any) -> Any:
        token = registration.new_run()
        try:
            return await run(*args, **kwargs)
        finally:
            registration._run.reset(token)

    async def guarded_run_stream(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        registration._run.set(registration._fixed or os.urandom(8).hex())  # this generator's own context
        async for item in run_stream(*args, **kwargs):
            yield item

    target.run, target.run_stream = guarded_run, guarded_run_stream


class GuardedWorkbench(Workbench):
    """A workbench whose every tool call is decided by Tether first."""

    def __init__(self, inner: Workbench, agent: str, registration: Registration) -> None:
        self._inner, self._agent, self._registration = inner, agent, registration
        self._passes_call_id = "call_id" in inspect.signature(inner.call_tool).parameters  # AgentChat 0.6+

    async def _run(
        self, name: str, arguments: Mapping[str, Any] | None, token: CancellationToken | None, call_id: str | None
    ) -> ToolResult:
        extra = {"call_id": call_id} if self._passes_call_id else {}
        return await self._inner.call_tool(name, arguments, token, **extra)

    async def list_tools(self) -> list[ToolSchema]:
        return await self._inner.list_tools()

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        registration = self._registration
        try:
            session = registration.session(self._agent)
            caused_by = registration.proposed(call_id, name, arguments)
            decision = await session.abefore_tool(name, dict(arguments or {}), call_id=call_id, caused_by=caused_by)
            if decision.needs_approval:
                decision = await session.aresolve(decision)
        except Exception as exc:
            log.exception("Tether failed while deciding on %s", name)
            if registration.monitoring:
                return await self._run(name, arguments, cancellation_token, call_id)
            return _text(
                name, f"Tether could not decide on '{name}' ({type(exc).__name__}); the call was not run", True
            )
        if not decision.allowed:
            return _text(name, decision.refusal(), True)
        result = await self._run(name, dict(decision.args), cancellation_token, call_id)
        return await _recorded(session, decision, name, result)

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def reset(self) -> None:
        await self._inner.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return await self._inner.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self._inner.load_state(state)

    def _to_config(self) -> Any:
        return self._inner._to_config()


async def _recorded(session: Session, decision: Decision, name: str, result: ToolResult) -> ToolResult:
    """Record the output; hand the model what Tether lets it see (redacted, or withheld)."""
    text = result.to_text()
    try:
        seen = await session.aafter_tool(decision, text, error=text if result.is_error else None)
    except Exception as exc:
        log.exception("Tether could not record the output of %s", name)
        # unrecorded output would escape classification and taint: the model does not get it
        return _text(name, f"Tether could not record the output of '{name}' ({type(exc).__name__}); withheld", True)
    return result if seen is text else _text(name, str(seen), result.is_error)


def _text(name: str, text: str, is_error: bool) -> ToolResult:
    return ToolResult(name=name, result=[TextResultContent(content=text)], is_error=is_error)


class RecordingClient(ChatCompletionClient):
    """The agent's model client, recording each request and the tool calls each response proposes."""

    def __init__(self, inner: ChatCompletionClient, agent: str, registration: Registration) -> None:
        self._inner, self._agent, self._registration = inner, agent, registration
        self._session, self._seen = "", 0  # how many of the session's messages were recorded

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        session, request_id = await self._request(messages)
        result = await self._inner.create(messages, **kwargs)
        await self._record(session, request_id, result)
        return result

    async def create_stream(
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        session, request_id = await self._request(messages)
        async for chunk in self._inner.create_stream(messages, **kwargs):
            if isinstance(chunk, CreateResult):
                await self._record(session, request_id, chunk)
            yield chunk

    async def _request(self, messages: Sequence[LLMMessage]) -> tuple[Session, str]:
        """Record what is new in this request (the model context only grows within a session, so
        earlier messages were checked and recorded already); refuse it if Tether withholds it."""
        session = self._registration.session(self._agent)
        start = self._seen if self._session == session.id and self._seen <= len(messages) else 0
        new = _plain(messages[start:])
        request = await session.abefore_model(new, model=str(self._inner.model_info.get("family")))
        if not request.allowed or request.messages is not new:  # AgentChat's messages cannot be rewritten here
            raise TetherError(f"Tether withheld the model request: {request.reason or 'it holds data to redact'}")
        self._session, self._seen = session.id, len(messages)
        return session, request.event_id

    async def _record(self, session: Session, request_id: str, result: CreateResult) -> None:
        calls = result.content if isinstance(result.content, list) else []
        proposed = [{"id": c.id, "name": c.name} for c in calls]
        shown = [{"name": c.name, "arguments": c.arguments} for c in calls] if calls else result.content
        response_id = await session.aafter_model(shown, tool_calls=proposed, parent=request_id)
        for call in calls:
            self._registration.propose(response_id, call.id, call.name, call.arguments)

    async def close(self) -> None:
        await self._inner.close()

    def actual_usage(self) -> Any:
        return self._inner.actual_usage()

    def total_usage(self) -> Any:
        return self._inner.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return self._inner.count_tokens(messages, **kwargs)

    def remaining_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return self._inner.remaining_tokens(messages, **kwargs)

    @property
    def capabilities(self) -> Any:
        return self._inner.capabilities

    @property
    def model_info(self) -> Any:
        return self._inner.model_info


def _plain(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    """Messages as role/content mappings: system and user turns are the trusted input."""
    out = []
    for message in messages:
        content = message.content
        if not isinstance(content, str):
            content = json.dumps(content, default=str) if isinstance(content, list) else str(content)
        out.append({"role": _ROLES.get(type(message).__name__, "tool"), "content": content})
    return out
