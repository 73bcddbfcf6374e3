"""Translation between AG2 events and the plain data Tether decides on and records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ag2.events import BaseEvent, ClientToolCallEvent, ModelResponse, ToolCallEvent, ToolCallsEvent, ToolResultEvent
from ag2.tools import ToolResult
from tether.core import Decision, TetherError, UnsupportedValueError
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


@dataclass
class Transcript:
    """What is new to the model in one call, as plain entries, and where each came from."""

    entries: list[dict[str, Any]]
    sources: list[int]  # the index in the call's events of each entry; PROMPT for the system prompt


PROMPT = -1


def transcript(events: Sequence[BaseEvent], prompt: Sequence[str] = ()) -> Transcript:
    """The system prompt (when given) and the events after the model's last response.

    Earlier events were recorded when they were new, so a long conversation is not written again
    at each step; the calls and results of single tools are recorded by the tool hook, and their
    results reach the model here as one batch.
    """
    start = 0
    for index in range(len(events) - 1, -1, -1):
        if isinstance(events[index], ModelResponse):
            start = index + 1
            break
    found = Transcript([], [])
    if prompt:  # the instructions the agent was given: trusted input, so its values may steer actions
        found.entries.append({"type": "SystemPrompt", "role": "system", "content": list(prompt)})
        found.sources.append(PROMPT)
    for index in range(start, len(events)):
        if not isinstance(events[index], _RECORDED_ELSEWHERE):
            found.entries.append(_event(events[index]))
            found.sources.append(index)
    return found


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


def apply_redactions(
    events: Sequence[BaseEvent], prompt: Sequence[str], found: Transcript, sent: Any
) -> tuple[list[BaseEvent], list[str]]:
    """The events and system prompt the model may be sent, once Tether redacted ``found``'s
    entries into ``sent``.

    A redacted event is rewritten in place, so the conversation's history (which later model
    calls read again) holds what the model may see. An entry that cannot be written back into
    its AG2 event is refused rather than sent as it was.
    """
    out, new_prompt = list(events), list(prompt)
    for source, before, after in zip(found.sources, found.entries, sent, strict=True):
        if after == before:
            continue
        if source == PROMPT:
            new_prompt = [str(text) for text in after["content"]]
        else:
            _rewrite(out[source], after)
    return out, new_prompt


def _rewrite(event: Any, entry: dict[str, Any]) -> None:
    content: Any = entry.get("content")
    if isinstance(event, ToolResultEvent):
        event.result = ToolResult(content if isinstance(content, str) else json.dumps(content, default=str))
    elif getattr(event, "results", None) is not None:
        for result, redacted in zip(event.results, content, strict=True):
            _rewrite(result, redacted)
    elif getattr(event, "parts", None) is not None:
        for part, redacted in zip(event.parts, content, strict=True):
            if redacted == _part(part):
                continue
            if isinstance(getattr(part, "content", None), str) and isinstance(redacted, str):
                part.content = redacted
            elif hasattr(part, "data"):
                part.data = redacted
            else:
                raise TetherError(f"Tether cannot redact a {type(part).__name__} the model would be sent")
    elif isinstance(getattr(event, "content", None), str) and isinstance(content, str):
        event.content = content
    else:
        raise TetherError(f"Tether cannot redact a {type(event).__name__} the model would be sent")


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
