"""The conformance scenario on classic AutoGen: a real assistant (scripted model client) whose
calls a user proxy executes (``initiate_chat``), or ag2's ``run(message=...)`` with its own
executor, wired as docs/autogen_classic.md says."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from types import SimpleNamespace
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
from tether.autogen.classic import register_guard
from tether.core import Guard

from .test_entry_points import VERSION, finish

autogen = pytest.importorskip("autogen")
_ids = itertools.count()


class Scripted:
    """A model client proposing the scenario's turns, keeping what it was sent."""

    def __init__(self, config: dict[str, Any], turns: Sequence[Sequence[Call]], seen: list[str]) -> None:
        self.turns, self.seen = list(turns), seen

    def create(self, params: dict[str, Any]) -> Any:
        self.seen.append(json.dumps(params["messages"], default=str))
        if self.turns:
            calls = self.turns.pop(0)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.args)}}
                    for c in calls
                ],
            }
        else:
            message = {"role": "assistant", "content": "done TERMINATE"}
        return SimpleNamespace(id=f"r{next(_ids)}", choices=[SimpleNamespace(message=message)], model="scripted")

    def message_retrieval(self, response: Any) -> list[Any]:
        return [choice.message for choice in response.choices]

    def cost(self, response: Any) -> float:
        return 0.0

    @staticmethod
    def get_usage(response: Any) -> dict[str, Any]:
        return {}


LLM = {"config_list": [{"model": "scripted", "model_client_cls": "Scripted"}], "cache_seed": None}


def _done(message: dict[str, Any]) -> bool:
    return "TERMINATE" in str(message.get("content") or "")


class ClassicDriver:
    abilities = frozenset({PARALLEL, ASYNC_TOOLS, SYSTEM})

    def __init__(self, entry: str) -> None:
        self.entry = entry

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        seen: list[str] = []
        prompt = {"system_message": system} if system else {}
        tools = standard_tools(log)
        if self.entry == "run":
            bot = autogen.ConversableAgent(
                AGENT, llm_config=LLM, human_input_mode="NEVER", functions=list(tools.values()), **prompt
            )
            bot.register_model_client(Scripted, turns=turns, seen=seen)
            register_guard(bot, guard)
            finish(bot.run(message=user, max_turns=len(turns) + 2, user_input=False))
            return Run(log, seen)
        bot = autogen.ConversableAgent(AGENT, llm_config=LLM, is_termination_msg=_done, **prompt)
        desk = autogen.ConversableAgent(
            "desk", llm_config=False, human_input_mode="NEVER", code_execution_config=False, is_termination_msg=_done
        )
        for name, function in tools.items():
            autogen.register_function(function, caller=bot, executor=desk, name=name, description=name)
        bot.register_model_client(Scripted, turns=turns, seen=seen)  # after the tools: they rebuild the client
        register_guard([bot, desk], guard)
        desk.initiate_chat(bot, message=user, max_turns=len(turns) + 2, silent=True)
        return Run(log, seen)


ENTRIES = ["initiate_chat", *(["run"] if VERSION >= (0, 9) else [])]  # pyautogen 0.2 has no run()


@pytest.fixture(params=ENTRIES)
def driver(request: pytest.FixtureRequest) -> ClassicDriver:
    return ClassicDriver(request.param)
