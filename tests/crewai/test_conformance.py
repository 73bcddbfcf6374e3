"""The conformance scenario on a real crew, in both of CrewAI's tool-calling modes (ReAct text
and native function calling), wired as docs/crewai.md says: ``enable_step_guard(crew, guard)``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.conformance.scenario import *  # noqa: F403 - the scenario's tests
from tests.conformance.scenario import ASYNC_TOOLS, PARALLEL, SYSTEM, USER_REQUEST, Call, Run, ToolLog
from tether.core import Guard
from tether.crewai import enable_step_guard

from .conftest import MODES, ScriptedLLM, crew_of


class CrewDriver:
    """One agent, one task, the standard tools; the system prompt is the agent's backstory,
    which CrewAI sends as the system message of every request."""

    def __init__(self, native: bool) -> None:
        self.native = native
        self.abilities = frozenset({ASYNC_TOOLS, SYSTEM} | ({PARALLEL} if native else set()))

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        llm = ScriptedLLM(*turns, native=self.native)
        crew = crew_of(llm, log, request=user, backstory=system or "careful")
        enable_step_guard(crew, guard)
        crew.kickoff()
        return Run(log, llm.inputs)


@pytest.fixture(params=MODES)
def driver(request: pytest.FixtureRequest) -> CrewDriver:
    return CrewDriver(native=request.param == "native")
