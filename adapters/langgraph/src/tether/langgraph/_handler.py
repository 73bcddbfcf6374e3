"""A LangChain callback handler: audits model and tool calls of any run and blocks denied calls."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage

from tether.core import Decision, TetherError, ToolDenied

from ._guard import decided_here, transcript

if TYPE_CHECKING:
    from tether.core import Session

    from ._guard import Tether

_MAX_RUNS = 4096


class TetherCallbackHandler(BaseCallbackHandler):
    """Pass as ``config={"callbacks": [handler]}`` to any graph, hand-written or prebuilt.

    Model calls are recorded with the tool calls they propose; each tool call is decided before
    its body runs, and a denied one raises :class:`~tether.core.ToolDenied` (the run stops
    with the reason; use the ToolNode wrapper or the middleware to hand the model a refusal
    instead). A call that needs approval waits on the guard's approver; without one it is denied.
    Calls already decided by Tether's wrapper or middleware are only observed, and a handler
    attached twice decides each call once. A callback cannot change what a tool returns or what
    a model is sent: for redacted outputs and requests, use the wrapper or the middleware.
    """

    raise_error = True  # LangChain swallows handler errors otherwise: a denial must stop the call
    run_inline = False  # async runs call it in a worker thread: audit writes stay off the event loop

    def __init__(self, tether: Tether) -> None:
        self.tether = tether
        self._models: OrderedDict[UUID, tuple[Session, str]] = OrderedDict()
        self._tools: OrderedDict[UUID, tuple[Session, Decision] | None] = OrderedDict()
        self._lock = threading.Lock()

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        if self._seen(self._models, run_id):
            return
        session = self.tether.session_for(_config(kwargs))
        model = (kwargs.get("metadata") or {}).get("ls_model_name") or (serialized or {}).get("name")
        asked = session.before_model(transcript(messages[0] if messages else []), model=model)
        if not asked.allowed:  # a callback cannot change what the model is sent, only stop it
            raise TetherError(f"Tether withheld this model request: {asked.reason}")
        self._keep(self._models, run_id, (session, asked.event_id))

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            started = self._models.pop(run_id, None)
        if started is None:
            return
        session, parent = started
        generations = [g for batch in response.generations for g in batch]
        message = getattr(generations[0], "message", None) if generations else None
        calls = message.tool_calls if isinstance(message, AIMessage) else []
        content = message.content if message is not None else (generations[0].text if generations else "")
        event_id = session.after_model(content, tool_calls=calls, parent=parent)
        self.tether.remember_proposals(event_id, calls)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._seen(self._tools, run_id):
            return
        if decided_here.get():  # Tether's wrapper decided this call and runs it: nothing more to ask
            self._keep(self._tools, run_id, None)
            return
        session = self.tether.session_for(_config(kwargs))
        name = (serialized or {}).get("name") or kwargs.get("name") or "unknown"
        args = _model_given(inputs) if inputs is not None else {"input": input_str}
        call_id = kwargs.get("tool_call_id") or self.tether.call_id_of(name, args)
        decision = session.before_tool(name, args, call_id=call_id, caused_by=self.tether.cause_of(call_id))
        decision = session.resolve(decision)
        self._keep(self._tools, run_id, (session, decision))
        if not decision.allowed:
            raise ToolDenied(decision.refusal(), rule_ids=decision.rule_ids)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        started = self._finish(run_id)
        if started is not None:
            started[0].after_tool(started[1], getattr(output, "content", output))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        started = self._finish(run_id)
        if started is not None and started[1].allowed:
            started[0].after_tool(started[1], error=error)

    def _finish(self, run_id: UUID) -> tuple[Session, Decision] | None:
        with self._lock:
            return self._tools.pop(run_id, None)

    def _seen(self, runs: OrderedDict[UUID, Any], run_id: UUID) -> bool:
        with self._lock:
            return run_id in runs

    def _keep(self, runs: OrderedDict[UUID, Any], run_id: UUID, value: Any) -> None:
        with self._lock:
            runs[run_id] = value
            while len(runs) > _MAX_RUNS:
                runs.popitem(last=False)

    def __deepcopy__(self, memo: dict[int, Any]) -> TetherCallbackHandler:
        return self  # LangChain copies configs; one handler must stay one handler


def _model_given(inputs: dict[str, Any]) -> dict[str, Any]:
    """The arguments the model gave, without those LangGraph injects (runtime, store): older
    langchain-core releases pass them to callbacks too."""
    from langgraph.prebuilt import ToolRuntime
    from langgraph.store.base import BaseStore

    return {k: v for k, v in inputs.items() if not isinstance(v, (ToolRuntime, BaseStore))}


def _config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run's config as LangGraph gives it to nodes, from a callback's metadata."""
    from langgraph.config import get_config

    try:
        config: dict[str, Any] = dict(get_config())
    except RuntimeError:  # not inside a graph
        config = {"configurable": {}, "metadata": {}}
    metadata = {**(config.get("metadata") or {}), **(kwargs.get("metadata") or {})}
    configurable = dict(config.get("configurable") or {})
    if "thread_id" in metadata and "thread_id" not in configurable:
        configurable["thread_id"] = metadata["thread_id"]
    return {"configurable": configurable, "metadata": metadata}
