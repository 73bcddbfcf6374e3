"""Tether as LangChain ``create_agent`` middleware: tool calls decided, model calls screened."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.tools import BaseTool

from . import _waist
from ._models import model_name
from ._results import rewrite, transcript, withheld_text

if TYPE_CHECKING:
    from tether.core import ModelRequest, Session

    from ._guard import Tether


class TetherMiddleware(AgentMiddleware):
    """Decides every tool call of a ``create_agent`` agent and links it to the model response
    that proposed it. A refused call comes back to the model as a ToolMessage it can read. Each
    model request, the system message included, is screened: the model gets what Tether allows."""

    def __init__(self, tether: Tether) -> None:
        super().__init__()
        self.tether = tether

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return self.tether.wrap_tool_call(request, handler)

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        return await self.tether.awrap_tool_call(request, handler)

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        session, prompt, sent = self._prepare(request)
        asked = session.before_model(sent, model=model_name(request.model))
        if not asked.allowed:
            return AIMessage(withheld_text(asked.reason))
        token = _waist.model_recorded.set(True)  # recorded here: the model primitive leaves it alone
        try:
            response = handler(_rewritten(request, prompt, sent, asked))
        finally:
            _waist.model_recorded.reset(token)
        self._record(session, asked.event_id, response)
        return response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        session, prompt, sent = self._prepare(request)
        asked = await session.abefore_model(sent, model=model_name(request.model))
        if not asked.allowed:
            return AIMessage(withheld_text(asked.reason))
        token = _waist.model_recorded.set(True)
        try:
            response = await handler(_rewritten(request, prompt, sent, asked))
        finally:
            _waist.model_recorded.reset(token)
        await asyncio.to_thread(self._record, session, asked.event_id, response)
        return response

    def _prepare(self, request: Any) -> tuple[Session, list[Any], list[dict[str, Any]]]:
        """The session, and what the model is about to receive: the system message, then the rest."""
        for tool in getattr(request, "tools", None) or ():
            if isinstance(tool, BaseTool):  # known before any call: a batch names its calls as the policy does
                self.tether.claim(tool)
        prompt = [*_system(request), *request.messages]
        return self.tether.session_for(None), prompt, transcript(prompt)

    def _record(self, session: Session, parent: str, response: Any) -> None:
        messages = response.result if hasattr(response, "result") else [response]
        message = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if message is None:
            return
        event_id = session.after_model(message.content, tool_calls=message.tool_calls, parent=parent)
        self.tether.remember_proposals(session, event_id, message.tool_calls)


def _system(request: Any) -> list[SystemMessage]:
    """The request's system message (``system_message`` in langchain 1.1+, ``system_prompt`` before)."""
    message = getattr(request, "system_message", None)
    if isinstance(message, SystemMessage):
        return [message]
    prompt = getattr(request, "system_prompt", None)
    return [SystemMessage(prompt)] if prompt else []


def _rewritten(request: Any, prompt: list[Any], sent: list[dict[str, Any]], asked: ModelRequest) -> Any:
    """The request with the contents Tether allows the model to see, system message included."""
    allowed = rewrite(prompt, sent, asked.messages)
    if all(now is was for now, was in zip(allowed, prompt, strict=True)):
        return request
    system = _system(request)
    changes: dict[str, Any] = {"messages": allowed[len(system) :]}
    if system and allowed[0] is not prompt[0]:
        if hasattr(request, "system_message"):
            changes["system_message"] = allowed[0]
        else:
            changes["system_prompt"] = allowed[0].content
    return request.override(**changes)
