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
        sent = transcript(request.messages)
        asked = session.before_model(sent, model=_model_name(request.model))
        if not asked.allowed:
            return withheld(asked.reason)
        response = handler(rewritten(request, sent, asked.messages))
        self._record(session, asked.event_id, response)
        return response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        session = self.tether.session_for(None)
        sent = transcript(request.messages)
        asked = await session.abefore_model(sent, model=_model_name(request.model))
        if not asked.allowed:
            return withheld(asked.reason)
        response = await handler(rewritten(request, sent, asked.messages))
        await asyncio.to_thread(self._record, session, asked.event_id, response)
        return response

    def _record(self, session: Any, parent: str, response: Any) -> None:
        messages = response.result if hasattr(response, "result") else [response]
        message = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if message is None:
            return
        event_id = session.after_model(message.content, tool_calls=message.tool_calls, parent=parent)
        self.tether.remember_proposals(event_id, message.tool_calls)


def withheld(reason: str) -> AIMessage:
    """The model is not called: the agent's turn ends with Tether's reason."""
    return AIMessage(f"Tether withheld this model request: {reason}")


def rewritten(request: Any, sent: list[dict[str, Any]], allowed: Any) -> Any:
    """The request with the message contents Tether allows the model to see (redacted values)."""
    if allowed is sent or not isinstance(allowed, list) or len(allowed) != len(request.messages):
        return request
    messages = [
        message.model_copy(update={"content": now["content"]}) if now.get("content") != was["content"] else message
        for message, was, now in zip(request.messages, sent, allowed, strict=True)
    ]
    return request.override(messages=messages)


def _model_name(model: Any) -> str | None:
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
    return type(model).__name__
