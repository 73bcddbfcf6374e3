"""Planners: scopes made from the trusted request, once per session.

A planner is anything with ``plan(request: PlanRequest)`` returning a scope as a mapping or JSON
text (see :func:`tether.core.scopes.json_schema`), and a ``name``. It is shown only trusted
content: the request, the agent's purpose, and the tools the policy grants the agent with their
descriptions — never a tool's output, so an injection cannot reach it. What it returns is checked
like any scope (scopes.py): it cannot name a tool the agent is not granted.

:class:`OpenAIPlanner` works with any OpenAI-compatible client; ``tether.langgraph.planner``
holds one for LangChain chat models.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import TetherError
from .policy.compile import CompiledPolicy
from .request import MAX_TEXT
from .scopes import json_schema

INSTRUCTIONS = """\
You decide which of an agent's risky tools one task needs, before the agent starts.
Answer with JSON only: {"task": "<the task in a few words>", "tools": {"<tool>": {"when": <null or a
CEL condition on args>, "why": "<what in the request calls for it>"}}}.
List only tools the request clearly calls for; leave out every other tool. A condition may use
args.<name>, request.given.<name> (the value is one the user gave) and request.known.<name> (the
value is one the user gave or a trusted tool returned). Tools that only read are always allowed
and need not be listed."""


class PlanningFailed(TetherError):
    """A planner gave no usable answer: it raised, timed out, or returned something malformed."""


@dataclass(frozen=True)
class ToolInfo:
    name: str
    description: str
    effects: tuple[str, ...]


@dataclass(frozen=True)
class PlanRequest:
    """What a planner may see: trusted content only."""

    request: str
    agent: str
    purpose: str
    tools: tuple[ToolInfo, ...]  # the tools the policy grants the agent

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the answer, its tool names limited to the granted tools."""
        return json_schema([t.name for t in self.tools])

    def messages(self) -> list[dict[str, str]]:
        """The request as chat messages, for planners backed by a model."""
        tools = "\n".join(f"- {t.name} ({', '.join(t.effects) or 'no effects'}): {t.description}" for t in self.tools)
        context = f"Agent: {self.agent}\nPurpose: {self.purpose}\nTools:\n{tools}"
        return [
            {"role": "system", "content": f"{INSTRUCTIONS}\n\n{context}"},
            {"role": "user", "content": self.request},
        ]


class Planner(Protocol):
    name: str

    def plan(self, request: PlanRequest) -> Any: ...


def plan_request(text: str, policy: CompiledPolicy, agent: str) -> PlanRequest:
    spec = policy.policy.agents.get(agent)
    granted = spec.tools if spec is not None else {}
    tools = tuple(
        ToolInfo(name, tool.description, tuple(e.value for e in tool.effects))
        for name, tool in policy.policy.tools.items()
        if name in granted
    )
    return PlanRequest(text[:MAX_TEXT], agent, spec.purpose if spec is not None else "", tools)


def plan_scope(planner: Planner, text: str, policy: CompiledPolicy, agent: str) -> Any:
    """Run ``planner`` on the trusted request, bounded by the policy's ``scopes.planner_timeout``;
    return its answer as plain data (checked against the policy by :func:`scopes.build`)."""
    if not text.strip():
        raise PlanningFailed("there is no trusted request to plan from")
    request = plan_request(text, policy, agent)
    answer = _bounded(lambda: planner.plan(request), policy.policy.scopes.planner_timeout)
    if isinstance(answer, (str, bytes)):
        try:
            answer = json.loads(answer)
        except ValueError as exc:
            raise PlanningFailed(f"the planner's answer is not JSON: {exc}") from None
    if not isinstance(answer, Mapping):
        raise PlanningFailed(f"the planner's answer is not a JSON object but {type(answer).__name__}")
    return dict(answer)


def _bounded(work: Any, timeout: float) -> Any:
    """``work()`` in a worker thread, waiting at most ``timeout`` seconds for it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="tether-planner", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise PlanningFailed(f"the planner gave no answer within {timeout:g}s")
    if "error" in outcome:
        exc = outcome["error"]
        raise PlanningFailed(f"the planner failed: {type(exc).__name__}: {exc}")
    return outcome.get("value")


class OpenAIPlanner:
    """A planner for any OpenAI-compatible client (``client.chat.completions.create``), with
    structured output; no dependency on the ``openai`` package."""

    def __init__(self, client: Any, model: str, *, name: str = "openai", timeout: float = 30.0) -> None:
        self.client, self.model, self.name, self.timeout = client, model, name, timeout

    def plan(self, request: PlanRequest) -> Any:
        response = self.client.chat.completions.create(
            model=self.model,
            messages=request.messages(),
            response_format={"type": "json_schema", "json_schema": {"name": "scope", "schema": request.schema()}},
            timeout=self.timeout,
        )
        return response.choices[0].message.content
