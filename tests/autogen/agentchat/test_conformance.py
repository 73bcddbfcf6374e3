"""The conformance scenario on AgentChat: a real ``AssistantAgent`` with the standard tools,
driven by AutoGen's replay model client, wired as docs/autogen_agentchat.md says; alone, and as
the one member of a ``RoundRobinGroupChat``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

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
from tether.autogen.agentchat import register_guard
from tether.core import Guard

from .conftest import scripted_client

AGENT_NAME = AGENT.replace("-", "_")  # AgentChat names must be identifiers


class AgentChatDriver:
    abilities = frozenset({PARALLEL, ASYNC_TOOLS, SYSTEM})

    def __init__(self, shape: str) -> None:
        self.shape = shape

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        from autogen_agentchat.agents import AssistantAgent
        from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
        from autogen_agentchat.teams import RoundRobinGroupChat

        seen: list[str] = []
        client = scripted_client(
            [[(c.id, c.name, json.dumps(c.args)) for c in turn] for turn in turns], seen, final="done"
        )
        options: dict[str, Any] = {"system_message": system} if system else {}
        if self.shape == "agent":
            options["max_tool_iterations"] = len(turns) + 1  # every turn in one run
        bot = AssistantAgent(AGENT_NAME, model_client=client, tools=list(standard_tools(log).values()), **options)
        target: Any = bot
        if self.shape == "team":  # the agent is asked again after each tool round
            done = TextMentionTermination("done") | MaxMessageTermination(len(turns) * 2 + 4)
            target = RoundRobinGroupChat([bot], termination_condition=done)
        register_guard(target, guard)
        asyncio.run(target.run(task=user))
        return Run(log, seen)


def _shapes() -> list[str]:
    import inspect

    from autogen_agentchat.agents import AssistantAgent

    # AgentChat 0.5 runs one tool round per AssistantAgent.run; a team asks the agent again
    several = "max_tool_iterations" in inspect.signature(AssistantAgent.__init__).parameters
    return ["team", *(["agent"] if several else [])]


@pytest.fixture(params=_shapes())
def driver(request: pytest.FixtureRequest) -> AgentChatDriver:
    return AgentChatDriver(request.param)


@pytest.fixture(autouse=True)
def _agent_named_as_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario's policy names its agent ``support-bot``; AgentChat needs an identifier."""
    import tests.conformance.scenario as scenario

    original = scenario.policy

    def policy(**changes: Any) -> dict[str, Any]:
        spec = original(**changes)
        spec["agents"] = {AGENT_NAME: spec["agents"][AGENT]}
        return spec

    monkeypatch.setattr(scenario, "policy", policy)
