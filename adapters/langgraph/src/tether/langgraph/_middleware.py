"""Tether as LangChain ``create_agent`` middleware: tool calls decided, model calls audited."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage

from ._guard import transcript

if TYPE_CHECKING:
    from ._guard import Tether


class TetherMiddleware(AgentMiddleware):
    """Decides every tool call of a ``create_agent`` agent and links it to the model response
    that proposed it. A refused call comes back to the model as a ToolMessage it can read."""

    def __init__(self, tether: Tether) -> None:
        super().__init__()
        self.tether = tether

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return self.tether.wrap_tool_call(request, handler)

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        return await self.tether.awrap_tool_call(request, handler)

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        session = self.tether.session_for(None)
        asked = session.before_model(transcript(request.messages), model=_model_name(request.model))
        response = handler(request)
        self._record(session, asked.event_id, response)
        return response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        session = self.tether.session_for(None)
        asked = await session.abefore_model(transcript(request.messages), model=_model_name(request.model))
        response = await handler(request)
        await asyncio.to_thread(self._record, session, asked.event_id, response)
        return response

    def _record(self, session: Any, parent: str, response: Any) -> None:
        messages = response.result if hasattr(response, "result") else [response]
        message = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if message is None:
            return
        event_id = session.after_model(message.content, tool_calls=message.tool_calls, parent=parent)
        self.tether.remember_proposals(event_id, message.tool_calls)


def _model_name(model: Any) -> str | None:
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
    return type(model).__name__
