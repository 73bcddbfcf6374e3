"""The conformance scenario on LangGraph, wired the two ways docs/langgraph.md shows: a
hand-written StateGraph with a guarded ToolNode, and LangChain's create_agent with the
middleware; each run synchronously (invoke) and asynchronously (ainvoke)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool

from tests.conformance.scenario import *  # noqa: F403 - the scenario's tests
from tests.conformance.scenario import (
    AGENT,
    ASYNC_TOOLS,
    PARALLEL,
    SYSTEM,
    USER_REQUEST,
    BackendDown,
    Call,
    Run,
    ToolLog,
    standard_tools,
)
from tether.core import Guard
from tether.langgraph import Tether

from .conftest import CountingModel
from .graphs import state_graph


class LangGraphDriver:
    def __init__(self, wiring: str, asynchronous: bool) -> None:
        self.wiring = wiring
        self.asynchronous = asynchronous
        # a coroutine tool has no sync body in LangChain: async tools need an async run
        self.abilities = frozenset({PARALLEL, SYSTEM, *([ASYNC_TOOLS] if asynchronous else [])})

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        tools = [tool(f) for f in standard_tools(log).values()]
        model = CountingModel(script=[_proposing(calls) for calls in turns])
        tether = Tether(guard, agent=AGENT, approvals="queue")
        messages: list[BaseMessage] = [HumanMessage(user)]
        if self.wiring == "middleware":
            from langchain.agents import create_agent

            graph = create_agent(model, tools, system_prompt=system, middleware=[tether.middleware()])
        else:
            graph = state_graph(model, tools, tether)
            messages = [SystemMessage(system), *messages] if system else messages
        inputs = {"messages": messages}
        config: dict[str, Any] = {"configurable": {"thread_id": uuid.uuid4().hex}}  # a new conversation
        try:
            if self.asynchronous:
                asyncio.run(graph.ainvoke(inputs, config))
            else:
                graph.invoke(inputs, config)
        except BackendDown:  # LangGraph ends the run with a tool's error unless told to handle it
            pass
        return Run(log, [_rendered(seen) for seen in model.seen])


def _proposing(calls: Sequence[Call]) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": c.name, "args": c.args, "id": c.id, "type": "tool_call"} for c in calls])


def _rendered(messages: Sequence[BaseMessage]) -> str:
    return "\n".join(f"{m.type}: {m.content}" for m in messages)


@pytest.fixture(
    params=[("tool_node", False), ("tool_node", True), ("middleware", False), ("middleware", True)],
    ids=["tool_node-invoke", "tool_node-ainvoke", "middleware-invoke", "middleware-ainvoke"],
)
def driver(request: pytest.FixtureRequest) -> LangGraphDriver:
    return LangGraphDriver(*request.param)
