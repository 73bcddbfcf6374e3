"""A planner backed by any LangChain chat model: a task scope from the trusted request.

    from tether.langgraph import Tether
    from tether.langgraph.planner import ChatModelPlanner

    t = Tether(guard, planner=ChatModelPlanner(init_chat_model("openai:gpt-4.1-mini")))

The model is asked once per session, with structured output (the model's own tool calling or
JSON mode, whichever ``with_structured_output`` picks), and shown only trusted content: the
request, the agent's purpose and the tools the policy grants it. Tether checks the answer like
any scope; a failure gets the policy's ``scopes.planner_failure`` outcome.
"""

from __future__ import annotations

from typing import Any

from tether.core.planners import PlanRequest


class ChatModelPlanner:
    """``model``: a LangChain chat model that supports ``with_structured_output``."""

    def __init__(self, model: Any, *, name: str | None = None, **structured: Any) -> None:
        self.model = model
        self.name = name or f"langchain:{getattr(model, '_llm_type', type(model).__name__)}"
        self._structured = structured  # passed on to with_structured_output (method=..., strict=...)

    def plan(self, request: PlanRequest) -> Any:
        runnable = self.model.with_structured_output(request.schema(), **self._structured)
        return runnable.invoke(request.messages())
