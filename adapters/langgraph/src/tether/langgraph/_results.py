"""What flows back into the graph: tool results as ``after_tool`` returns them, refusals, and
model messages as Tether renders and rewrites them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, ToolMessage

from langgraph.errors import GraphBubbleUp
from langgraph.types import Command
from tether.core import Decision, Mode, Session, StoreError

log = logging.getLogger("tether.langgraph")


def after(session: Session, decision: Decision, output: Any) -> Any:
    """Record what a tool returned; what ``after_tool`` returns is what flows into the graph.

    A ``ToolMessage`` with ``status="error"`` (a tool error LangChain or ``ToolNode`` turned into
    a message) is recorded as an error; the messages inside a ``Command`` are rewritten too."""
    try:
        if isinstance(output, ToolMessage):
            if output.status == "error":
                session.after_tool(decision, error=str(output.content))
                return output
            content = session.after_tool(decision, output.content)
            return output if content is output.content else output.model_copy(update={"content": content})
        if isinstance(output, Command):
            return _after_command(session, decision, output)
        return session.after_tool(decision, output)
    except StoreError:
        if session.guard.mode is not Mode.MONITOR:
            raise
        log.exception("Tether could not record the result of %s (monitor mode: the agent goes on)", decision.call.tool)
        return output


def _after_command(session: Session, decision: Decision, command: Command[Any]) -> Command[Any]:
    """A tool's ``Command``: the contents of the messages it adds are the tool's output."""
    update, key = command.update, "messages"
    messages = update.get(key) if isinstance(update, Mapping) else None
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        session.after_tool(decision, update)
        return command
    contents = [m.content if isinstance(m, BaseMessage) else m for m in messages]
    shown = session.after_tool(decision, contents)
    if shown is contents:
        return command
    if not isinstance(shown, list) or len(shown) != len(contents):  # withheld as a whole
        shown = [shown] * len(contents)
    rewritten = [
        m.model_copy(update={"content": now}) if isinstance(m, BaseMessage) else now
        for m, now in zip(messages, shown, strict=True)
    ]
    assert isinstance(update, Mapping)
    return dataclasses.replace(command, update={**update, key: rewritten})


def record_error(session: Session, decision: Decision, error: BaseException) -> None:
    """Record a tool's error (an interrupt or a handoff raised inside it is not one)."""
    if isinstance(error, GraphBubbleUp):
        return
    try:
        session.after_tool(decision, error=error)
    except StoreError:
        if session.guard.mode is not Mode.MONITOR:
            raise
        log.exception("Tether could not record the error of %s (monitor mode: the agent goes on)", decision.call.tool)


def refusal_message(decision: Decision, call_id: str | None, name: str | None) -> ToolMessage:
    """The refusal as the answer to the call, so the model reads it and the call id is answered."""
    return ToolMessage(content=decision.refusal(), tool_call_id=call_id or "", name=name, status="error")


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


def rewrite(messages: Sequence[Any], sent: list[dict[str, Any]], allowed: Any) -> list[Any]:
    """The messages with the contents Tether allows the model to see (redacted values)."""
    if allowed is sent or not isinstance(allowed, list) or len(allowed) != len(messages):
        return list(messages)
    return [
        message.model_copy(update={"content": now["content"]}) if now.get("content") != was["content"] else message
        for message, was, now in zip(messages, sent, allowed, strict=True)
    ]


def withheld_text(reason: str) -> str:
    return f"Tether withheld this model request: {reason}"
