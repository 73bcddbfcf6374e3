"""Model calls, recorded at the model client itself (``call`` / ``acall`` of the agent's LLM
class): the request is what the model actually receives, screened by ``before_model`` and sent
as it returns it; the response is recorded whatever it is, text or native tool calls, so each
tool decision links to the response that proposed it."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from crewai.utilities.agent_utils import extract_tool_call_info, is_tool_call_list
from tether.core import ModelRequest, Session, TetherError

from ._scope import FRAMEWORK_AGENT, Frame, Run, current_frame, current_run

log = logging.getLogger("tether.crewai")
_WRAPPED = "_tether_records_model_calls"
_LOCK = threading.Lock()
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("tether-crewai-model", default=False)


def record_calls_of(llm: Any) -> None:
    """Record the model calls of ``llm``'s class (once per class, for every instance: a copy of
    an agent gets a copy of its LLM). Outside a guarded run the wrapper only passes through."""
    if llm is not None and not isinstance(llm, str):
        record_class(type(llm))


def record_known_model_classes(base: type[Any]) -> None:
    """Every model client class already defined (CrewAI's providers, the user's own); classes
    defined later are covered when an agent of a guarded run first uses one."""
    pending = list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not inspect.isabstract(cls):
            record_class(cls)


def record_class(cls: type[Any]) -> None:
    if cls.__dict__.get(_WRAPPED):
        return
    with _LOCK:
        if cls.__dict__.get(_WRAPPED):
            return
        for name, wrap in (("call", _wrap_call), ("acall", _wrap_acall)):
            original = getattr(cls, name, None)
            if not callable(original) or getattr(original, _WRAPPED, False):
                continue
            if getattr(original, "__isabstractmethod__", False):
                continue
            if name == "acall" and not inspect.iscoroutinefunction(original):
                continue
            wrapper = functools.wraps(original)(wrap(original))
            setattr(wrapper, _WRAPPED, True)
            setattr(cls, name, wrapper)
        setattr(cls, _WRAPPED, True)


class _ModelCall:
    def __init__(self, llm: Any, session: Session, frame: Frame | None, run: Run) -> None:
        self.session, self.frame, self.run = session, frame, run
        self.model = str(getattr(llm, "model", "") or "")

    @property
    def monitoring(self) -> bool:
        return self.run.step_guard.monitoring

    def sent(self, request: ModelRequest) -> Any:
        if not request.allowed:
            raise TetherError(f"Tether withheld the model request: {request.reason}")
        return request.messages

    def unrecorded(self, exc: Exception, messages: Any) -> Any:
        log.exception("Tether could not record a model request")
        if self.monitoring:
            return messages
        raise TetherError(f"Tether could not record the model request ({type(exc).__name__}); not sent") from exc

    def answered(self, response_id: str, proposed: list[tuple[str | None, str, Any]]) -> None:
        if self.frame is not None:
            self.frame.answered(response_id, proposed)
        else:
            self.run.last_response[self.session.agent] = response_id


def _model_call(llm: Any, kwargs: dict[str, Any]) -> _ModelCall | None:
    if _IN_CALL.get():
        return None  # a client whose acall runs its call: one model call, recorded once
    frame, run = current_frame(), current_run()
    if frame is not None:
        return _ModelCall(llm, frame.session, frame, frame.run)
    if run is None:
        return None
    agent = kwargs.get("from_agent")
    role = str(getattr(agent, "role", "") or "").strip() or (FRAMEWORK_AGENT if agent is not None else None)
    return _ModelCall(llm, run.frameless_session(role), None, run)


def proposed_calls(response: Any) -> list[tuple[str | None, str, Any]]:
    """The tool calls a native function-calling response proposes: (id, name, arguments)."""
    if not isinstance(response, list) or not response or not is_tool_call_list(response):
        return []
    found: list[tuple[str | None, str, Any]] = []
    for item in response:
        info = extract_tool_call_info(item)
        if info is None:
            continue
        call_id, name, args = info
        if isinstance(args, str):
            with contextlib.suppress(ValueError):
                args = json.loads(args)
        found.append((str(call_id), name, args))
    return found


def _response(call: _ModelCall, response: Any, request_id: str) -> None:
    proposed = proposed_calls(response)
    try:
        response_id = call.session.after_model(
            response, tool_calls=[{"id": i, "name": n} for i, n, _ in proposed], parent=request_id
        )
    except Exception:
        log.exception("Tether could not record a model response")  # its tool calls then fail closed
        return
    call.answered(response_id, proposed)


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    if args:
        return args[0], args[1:]
    return kwargs.pop("messages", None), ()


def _wrap_call(original: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        model_call = _model_call(self, kwargs)
        if model_call is None:
            return original(self, *args, **kwargs)
        messages, rest = _split(args, kwargs)
        try:
            recorded = model_call.session.before_model(messages, model=model_call.model)
        except Exception as exc:  # noqa: BLE001 - not sent unless monitoring
            sent, request_id = model_call.unrecorded(exc, messages), None
        else:
            sent, request_id = model_call.sent(recorded), recorded.event_id
        token = _IN_CALL.set(True)
        try:
            response = original(self, sent, *rest, **kwargs)
        finally:
            _IN_CALL.reset(token)
        if request_id is not None:
            _response(model_call, response, request_id)
        return response

    return call


def _wrap_acall(original: Callable[..., Any]) -> Callable[..., Any]:
    async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        model_call = _model_call(self, kwargs)
        if model_call is None:
            return await original(self, *args, **kwargs)
        messages, rest = _split(args, kwargs)
        try:
            recorded = await model_call.session.abefore_model(messages, model=model_call.model)
        except Exception as exc:  # noqa: BLE001 - not sent unless monitoring
            sent, request_id = model_call.unrecorded(exc, messages), None
        else:
            sent, request_id = model_call.sent(recorded), recorded.event_id
        token = _IN_CALL.set(True)
        try:
            response = await original(self, sent, *rest, **kwargs)
        finally:
            _IN_CALL.reset(token)
        if request_id is not None:
            await asyncio.to_thread(_response, model_call, response, request_id)
        return response

    return acall
