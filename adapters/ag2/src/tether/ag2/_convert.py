"""Translation between AG2 events and the plain data Tether decides on and records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ag2.events import BaseEvent, ClientToolCallEvent, ModelResponse, ToolCallEvent, ToolCallsEvent, ToolResultEvent
from tether.core import Decision, UnsupportedValueError
from tether.core.redact import preview
from tether.core.values import to_plain


def arguments(event: ToolCallEvent) -> Any:
    """The call's arguments as AG2 will pass them to the tool, or the raw text if it is not JSON.

    Raw text is not a mapping, so Tether denies the call as unreadable and records why, rather
    than the tool failing later with nothing in the audit.
    """
    try:
        parsed = event.serialized_arguments
    except ValueError:
        return event.arguments
    return parsed if parsed is not None else event.arguments  # JSON `null` is no arguments at all


def output(result: Any) -> Any:
    """A tool result's parts as plain values: text, data, or the kind of anything else (files)."""
    values = [_part(part) for part in getattr(result, "parts", ())]
    return values[0] if len(values) == 1 else values


def _part(part: Any) -> Any:
    if hasattr(part, "content") and isinstance(part.content, str):
        return part.content
    if hasattr(part, "data"):
        return part.data
    return f"<{type(part).__name__}>"


def response_text(response: ModelResponse) -> str:
    return response.content or ""


def transcript(events: Sequence[BaseEvent]) -> list[dict[str, Any]]:
    """What is new to the model in this call: the events after its last response.

    Earlier events were recorded when they were new, so a long conversation is not written again
    at each step; the calls and results of single tools are recorded by the tool hook, and their
    results reach the model here as one batch.
    """
    start = 0
    for index in range(len(events) - 1, -1, -1):
        if isinstance(events[index], ModelResponse):
            start = index + 1
            break
    return [_event(event) for event in events[start:] if not isinstance(event, _RECORDED_ELSEWHERE)]


_RECORDED_ELSEWHERE = (ToolCallsEvent, ToolCallEvent, ToolResultEvent, ClientToolCallEvent)


def _event(event: BaseEvent) -> dict[str, Any]:
    kind = type(event).__name__
    if isinstance(event, ToolResultEvent):
        return {"type": kind, "tool": event.name, "content": output(event.result)}
    results = getattr(event, "results", None)
    if results is not None:
        return {"type": kind, "content": [_event(result) for result in results]}
    parts = getattr(event, "parts", None)
    if parts is not None:
        entry: dict[str, Any] = {"type": kind, "content": [_part(part) for part in parts]}
        if any(cls.__name__ == "ModelRequest" for cls in type(event).__mro__):
            entry["role"] = "user"  # the user's turn: trusted input, so its values may steer actions
        return entry
    content = getattr(event, "content", None)
    return {"type": kind, "content": content if isinstance(content, str) else None}


def hitl_question(decision: Decision, key: bytes) -> str:
    """The question put to a person through AG2's human input, with arguments redacted as in the audit."""
    try:
        shown = json.dumps(preview(to_plain(decision.args, "args"), key).value, ensure_ascii=False, default=str)
    except UnsupportedValueError:
        shown = "<unreadable arguments>"
    return (
        f"{decision.refusal()}\n"
        f"Agent '{decision.call.agent}' wants to call `{decision.call.tool}` with {shown}.\n"
        "Approve? [y/N]"
    )
