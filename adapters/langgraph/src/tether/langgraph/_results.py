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


def after(session: Session, decision: Decision, output: Any, messages_key: str = "messages") -> Any:
    """Record what a tool returned; what ``after_tool`` returns is what flows into the graph.

    A ``ToolMessage`` with ``status="error"`` (a tool error LangChain or ``ToolNode`` turned into
    a message) is recorded as an error; a ``Command``'s update is rewritten too (its messages under
    ``messages_key``, and the rest of what it writes to the state)."""
    try:
        if isinstance(output, ToolMessage):
            if output.status == "error":
                session.after_tool(decision, error=str(output.content))
                return output
            content = session.after_tool(decision, output.content)
            return output if content is output.content else output.model_copy(update={"content": content})
        if isinstance(output, Command):
            return _after_command(session, decision, output, messages_key)
        return session.after_tool(decision, output)
    except StoreError:
        if session.guard.mode is not Mode.MONITOR:
            raise
        log.exception("Tether could not record the result of %s (monitor mode: the agent goes on)", decision.call.tool)
        return output


def _after_command(session: Session, decision: Decision, command: Command[Any], key: str) -> Any:
    """A tool's ``Command``: what its update writes to the state is the tool's output (the contents
    of the messages it adds, and any other value). What ``after_tool`` allows is what the update
    carries on; an update it cannot be applied to in place is refused, never passed on as it was."""
    update = command.update
    if not isinstance(update, Mapping):  # none, (key, value) pairs or a state object: not rewritten in place
        shown = session.after_tool(decision, update)
        return command if shown is update else _refused(decision, shown)
    found = update.get(key)
    messages = list(found) if isinstance(found, Sequence) and not isinstance(found, str) else None
    sent = dict(update)
    if messages is not None:
        sent[key] = [m.content if isinstance(m, BaseMessage) else m for m in messages]
    shown = session.after_tool(decision, sent)
    if shown is sent:
        return command
    if messages is not None and set(update) == {key} and not isinstance(shown, Mapping):  # withheld as a whole
        shown = {key: [shown] * len(messages)}
    if not (isinstance(shown, Mapping) and set(shown) == set(sent)):
        return _refused(decision, shown)
    rewritten = dict(shown)
    if messages is not None:
        now = shown[key]
        if not isinstance(now, list) or len(now) != len(messages):
            return _refused(decision, shown)
        rewritten[key] = [
            m.model_copy(update={"content": content}) if isinstance(m, BaseMessage) else content
            for m, content in zip(messages, now, strict=True)
        ]
    return dataclasses.replace(command, update=rewritten)


def _refused(decision: Decision, shown: Any) -> ToolMessage:
    """The answer to a call whose ``Command`` Tether could not rewrite: nothing of it is applied."""
    notice = (
        shown if isinstance(shown, str) else "[withheld by Tether: the tool's update could not be redacted in place]"
    )
    return ToolMessage(
        content=notice, tool_call_id=decision.call.call_id or "", name=decision.call.tool, status="error"
    )


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
