"""Tether's callback handler: the mark of a governed run, and the recorder of streamed model calls."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage

from tether.core import TetherError

from . import _waist
from ._results import transcript, withheld_text

if TYPE_CHECKING:
    from tether.core import Session

    from ._guard import Tether

_MAX_RUNS = 4096


class TetherCallbackHandler(BaseCallbackHandler):
    """Pass as ``config={"callbacks": [handler]}`` to any run, hand-written or prebuilt.

    LangChain hands a run's callbacks to every tool and model call inside it, so with this
    handler in a run, Tether decides every tool call of the run and screens every model call
    (tool calls and ``invoke``d model calls at LangChain's own primitives; graphs holding a
    guarded ``ToolNode`` are governed so without it). The handler itself records the model calls
    made with ``stream``/``astream``, which bypass those primitives: such a call cannot be
    rewritten, so one Tether would withhold stops the run with :class:`~tether.core.TetherError`.
    """

    raise_error = True  # LangChain swallows handler errors otherwise: a withheld request must stop
    run_inline = False  # async runs call it in a worker thread: audit writes stay off the event loop
    # it needs model events only: LangChain dispatches no other event to it (chains, tools, retrievers)
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True

    def __init__(self, tether: Tether) -> None:
        self.tether = tether
        self.tether_of_run = tether  # how the primitives recognise a Tether's handler among a run's callbacks
        self._models: OrderedDict[UUID, tuple[Session, str]] = OrderedDict()
        self._lock = threading.Lock()

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        if _waist.model_recorded.get():  # screened and recorded at the primitive (or by the middleware)
            return
        with self._lock:
            if run_id in self._models:
                return
        session = self.tether.session_for(None)
        model = (kwargs.get("metadata") or {}).get("ls_model_name") or (serialized or {}).get("name")
        asked = session.before_model(transcript(messages[0] if messages else []), model=model)
        if not asked.allowed:  # a streamed request cannot be rewritten, only stopped
            raise TetherError(withheld_text(asked.reason))
        with self._lock:
            self._models[run_id] = (session, asked.event_id)
            while len(self._models) > _MAX_RUNS:
                self._models.popitem(last=False)

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
        self.tether.remember_proposals(session, event_id, calls)

    def __deepcopy__(self, memo: dict[int, Any]) -> TetherCallbackHandler:
        return self  # LangChain copies configs; one handler must stay one handler
