"""The conformance scenario on a real AG2 1.x agent, wired each way docs/ag2.md shows: the
middleware in ``Agent(middleware=...)``, ``guard_agent`` on an agent built elsewhere, and the
middleware given for one run (``agent.ask(..., middleware=...)``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from ag2 import Agent
from ag2.events import (
    BaseEvent,
    ModelMessage,
    ModelResponse,
    ToolCallEvent,
    ToolCallsEvent,
    ToolErrorEvent,
    ToolResultsEvent,
)

from tests.conformance.scenario import *  # noqa: F403 - the scenario's tests
from tests.conformance.scenario import (
    AGENT,
    ASYNC_TOOLS,
    PARALLEL,
    SYSTEM,
    USER_REQUEST,
    Call,
    Run,
    ToolLog,
    standard_tools,
)
from tether.ag2 import TetherMiddleware, guard_agent
from tether.core import Guard


class ScriptedModel:
    """An AG2 model config whose client proposes the scripted turns of tool calls, then answers
    "done", and keeps, per call, the text of everything it was handed (system prompt included)."""

    def __init__(self, turns: Sequence[Sequence[Call]]) -> None:
        self._turns: Iterator[Sequence[Call]] = iter(turns)
        self.inputs: list[str] = []

    provider = "test"
    model = "scripted"

    def copy(self) -> ScriptedModel:
        return self

    def create(self) -> ScriptedModel:
        return self

    def create_files_client(self) -> Any:
        raise NotImplementedError

    async def __call__(self, messages: Sequence[BaseEvent], context: Any, **_: Any) -> ModelResponse:
        self.inputs.append(_text(messages, context.prompt))
        calls = next(self._turns, None)
        if calls:
            proposed = [ToolCallEvent(c.name, id=c.id, arguments=json.dumps(c.args)) for c in calls]
            return ModelResponse(tool_calls=ToolCallsEvent(proposed))
        message = ModelMessage("done")
        await context.send(message)
        return ModelResponse(message)


def _text(messages: Sequence[BaseEvent], prompt: Sequence[str]) -> str:
    lines = [f"system: {text}" for text in prompt]
    for event in messages:
        if isinstance(event, ToolResultsEvent):
            for result in event.results:
                if isinstance(result, ToolErrorEvent):
                    lines.append(f"tool {result.name}: error: {result.error}")
                else:
                    parts = result.result.parts
                    lines.append(f"tool {result.name}: " + " ".join(str(getattr(p, "content", p)) for p in parts))
        elif getattr(event, "parts", None) is not None:
            lines.append("user: " + " ".join(str(getattr(p, "content", p)) for p in event.parts))
        elif isinstance(event, ModelResponse):
            lines.append(f"assistant: {event.content or ''} {[c.name for c in event.tool_calls.calls]}")
    return "\n".join(lines)


class AG2Driver:
    abilities = frozenset({PARALLEL, ASYNC_TOOLS, SYSTEM})

    def __init__(self, wiring: str) -> None:
        self.wiring = wiring

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        model = ScriptedModel(turns)
        tools = list(standard_tools(log).values())
        prompt = [system] if system else []
        per_run: list[Any] = []
        if self.wiring == "middleware":
            agent = Agent(AGENT, prompt=prompt, config=model, tools=tools, middleware=[TetherMiddleware(guard)])
        elif self.wiring == "guard_agent":
            agent = guard_agent(Agent(AGENT, prompt=prompt, config=model, tools=tools), guard)
        else:
            agent = Agent(AGENT, prompt=prompt, config=model, tools=tools)
            per_run = [TetherMiddleware(guard)]
        asyncio.run(asyncio.wait_for(agent.ask(user, middleware=per_run), 120))
        return Run(log, model.inputs)


@pytest.fixture(params=["middleware", "guard_agent", "per-run"])
def driver(request: pytest.FixtureRequest) -> AG2Driver:
    return AG2Driver(request.param)
