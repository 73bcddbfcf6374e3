"""Real CrewAI crews driven by a scripted model (no network, no key, telemetry off), in both of
CrewAI's tool-calling modes: ReAct text and native function calling."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

os.environ.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TRACING_ENABLED="false")
from ..support import require

crewai = require("crewai")

from crewai import Agent, Crew, Task  # noqa: E402
from crewai.llms.base_llm import BaseLLM  # noqa: E402
from crewai.tools import tool  # noqa: E402

from tests.conformance.scenario import AGENT, USER_REQUEST, Call, ToolLog, scenario_store, standard_tools  # noqa: E402

__all__ = ["scenario_store"]  # the scenario's store fixture, for every test here
from tether.core import AuditStore  # noqa: E402

MODES = ("react", "native")  # CrewAI's two ways of proposing tool calls
DONE_REACT = "Thought: I know the answer\nFinal Answer: done"
#: a model turn: the calls it proposes, or a function of the request choosing them
Turn = Sequence[Call] | Callable[[Any, Any], Sequence[Call]]


class ScriptedLLM(BaseLLM):
    """Stands in for a model: on its n-th call it proposes the calls of turn n (ReAct text, or
    native tool calls), then answers "done". Keeps every request it received, as text."""

    def __init__(self, *turns: Turn, native: bool = False, respond: Turn | None = None) -> None:
        super().__init__(model="scripted")
        self._turns = list(turns)
        self._respond = respond  # instead of turns: the calls for each request, from the request
        self._native = native
        self.inputs: list[str] = []

    def supports_function_calling(self) -> bool:
        return self._native

    def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.inputs.append(json.dumps(messages, default=str))
        turn = self._respond if self._respond is not None else self._turns.pop(0) if self._turns else []
        calls = list(turn(messages, tools) if callable(turn) else turn)
        if not calls:
            return "done" if self._native else DONE_REACT
        if self._native:
            return [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.args)}}
                for c in calls
            ]
        (only,) = calls  # ReAct text proposes one call per response
        return f"Thought: I will use {only.name}\nAction: {only.name}\nAction Input: {json.dumps(only.args)}"

    async def acall(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self.call(messages, tools, *args, **kwargs)

    def saw(self, text: str) -> bool:
        return any(text in seen for seen in self.inputs)


def crewai_tools(log: ToolLog) -> list[Any]:
    """The scenario's standard tools as CrewAI tools (``@tool``), named as the policy names them."""
    return [tool(name)(function) for name, function in standard_tools(log).items()]


def agent_of(llm: ScriptedLLM, log: ToolLog, *, role: str = AGENT, backstory: str = "careful", **options: Any) -> Agent:
    return Agent(role=role, goal="help the customer", backstory=backstory, llm=llm, tools=crewai_tools(log), **options)


def crew_of(llm: ScriptedLLM, log: ToolLog, *, request: str = USER_REQUEST, **agent_options: Any) -> Crew:
    agent = agent_of(llm, log, **agent_options)
    task = Task(description=request, expected_output="a short answer", agent=agent)
    return Crew(agents=[agent], tasks=[task], memory=False, verbose=False)


def decisions(store: AuditStore, tool: str | None = None) -> list[Any]:
    return [e for e in store.events() if e.kind == "tool.decision" and (tool is None or e.tool == tool)]


@pytest.fixture(params=MODES)
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "native")


@pytest.fixture(autouse=True)
def crewai_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai"))
