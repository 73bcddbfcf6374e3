"""The conformance scenario, run by an agent loop written straight on the core: what any
framework without an adapter does with ``Guard`` (and the reference the adapters' drivers
are held to)."""

from __future__ import annotations

import asyncio
import inspect
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
from tether.core import Guard


class PlainLoop:
    """A model -> tools -> model loop, each step through the session's hooks."""

    abilities = frozenset({PARALLEL, ASYNC_TOOLS, SYSTEM})

    def run(
        self,
        guard: Guard,
        turns: Sequence[Sequence[Call]],
        log: ToolLog,
        *,
        system: str | None = None,
        user: str = USER_REQUEST,
    ) -> Run:
        tools = standard_tools(log)
        session = guard.session(AGENT)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        seen: list[str] = []
        for calls in [*turns, []]:
            request = session.before_model(messages)
            if not request.allowed:
                break
            seen.append(json.dumps(request.messages))
            proposed = [{"id": c.id, "name": c.name} for c in calls]
            response = session.after_model(proposed or "done", tool_calls=proposed, parent=request.event_id)
            if not calls:
                break
            messages.append({"role": "assistant", "tool_calls": [c.__dict__ for c in calls]})
            for call in calls:
                decision = session.resolve(
                    session.before_tool(call.name, call.args, call_id=call.id, caused_by=response)
                )
                if not decision.allowed:
                    output: Any = decision.refusal()
                else:
                    try:
                        result = tools[call.name](**decision.args)
                        if inspect.iscoroutine(result):
                            result = asyncio.run(result)
                    except Exception as exc:  # noqa: BLE001 - the model reads the error, as frameworks do
                        session.after_tool(decision, error=exc)
                        output = f"error: {exc}"
                    else:
                        output = session.after_tool(decision, result)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": str(output)})
        return Run(log, seen)


@pytest.fixture
def driver() -> PlainLoop:
    return PlainLoop()
