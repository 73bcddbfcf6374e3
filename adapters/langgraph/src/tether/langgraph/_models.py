"""Chat-model calls in a governed run: screened by ``before_model`` (sent redacted, or answered
by Tether when withheld), and their responses recorded with the tool calls they propose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from tether.core import ModelRequest, Session

from . import _waist
from ._results import rewrite, transcript, withheld_text

if TYPE_CHECKING:
    from ._guard import Tether


def model_name(model: Any) -> str | None:
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
    return type(model).__name__


def _screen(session: Session, model: Any, prompts: Sequence[Sequence[Any]]) -> list[tuple[ModelRequest, list[Any]]]:
    screened = []
    for prompt in prompts:
        sent = transcript(prompt)
        asked = session.before_model(sent, model=model_name(model))
        screened.append((asked, rewrite(prompt, sent, asked.messages) if asked.allowed else []))
    return screened


def _merge(screened: list[tuple[ModelRequest, list[Any]]], result: LLMResult | None) -> LLMResult:
    """The model's generations for the prompts it was sent, Tether's answer for those withheld."""
    answered = iter(result.generations if result is not None else [])
    generations = [
        next(answered) if asked.allowed else [ChatGeneration(message=AIMessage(withheld_text(asked.reason)))]
        for asked, _ in screened
    ]
    everything_sent = all(asked.allowed for asked, _ in screened)
    return LLMResult(
        generations=generations,
        llm_output=result.llm_output if result is not None else None,
        run=result.run if result is not None and everything_sent else None,
    )


def _record(tether: Tether, session: Session, screened: list[tuple[ModelRequest, list[Any]]], out: LLMResult) -> None:
    for (asked, _), generations in zip(screened, out.generations, strict=True):
        if not asked.allowed:
            continue
        message = getattr(generations[0], "message", None) if generations else None
        calls = message.tool_calls if isinstance(message, AIMessage) else []
        content = message.content if message is not None else (generations[0].text if generations else "")
        event_id = session.after_model(content, tool_calls=calls, parent=asked.event_id)
        tether.remember_proposals(session, event_id, calls)


def screened_generate(
    tether: Tether,
    original: Callable[..., Any],
    model: Any,
    messages: Sequence[Sequence[Any]],
    stop: Any,
    callbacks: Any,
    kwargs: dict[str, Any],
) -> Any:
    session = _session(tether)
    screened = _screen(session, model, messages)
    sent = [prompt for asked, prompt in screened if asked.allowed]
    token = _waist.model_recorded.set(True)  # the handler, seeing this call start, leaves it to us
    try:
        result = original(model, sent, stop, callbacks, **kwargs) if sent else None
    finally:
        _waist.model_recorded.reset(token)
    return _recorded(tether, session, screened, result)


async def ascreened_generate(
    tether: Tether,
    original: Callable[..., Any],
    model: Any,
    messages: Sequence[Sequence[Any]],
    stop: Any,
    callbacks: Any,
    kwargs: dict[str, Any],
) -> Any:
    session = _session(tether)
    screened = await asyncio.to_thread(_screen, session, model, messages)
    sent = [prompt for asked, prompt in screened if asked.allowed]
    token = _waist.model_recorded.set(True)
    try:
        result = await original(model, sent, stop, callbacks, **kwargs) if sent else None
    finally:
        _waist.model_recorded.reset(token)
    return await asyncio.to_thread(_recorded, tether, session, screened, result)


def _session(tether: Tether) -> Session:
    from ._guard import current_config

    return tether.session_for(current_config())


def _recorded(
    tether: Tether, session: Session, screened: list[tuple[ModelRequest, list[Any]]], result: LLMResult | None
) -> LLMResult:
    out = _merge(screened, result)
    _record(tether, session, screened, out)
    return out
