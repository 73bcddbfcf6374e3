from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

from tests.conformance.scenario import KEY as KEY  # the store's key, for the resume tests
from tests.conformance.scenario import scenario_store as scenario_store  # the store fixture
from tether.core import AuditStore, Guard

POLICY: dict[str, Any] = {
    "version": 1,
    "approvals": {"timeout": "30s"},
    "tools": {
        "lookup": {"effects": ["read"]},
        "send_email": {"effects": ["external"]},
        "refund": {"effects": ["money", "irreversible"]},
        "noop": {"effects": ["read"]},
    },
    "agents": {
        "support-bot": {
            "purpose": "answer support tickets",
            "owner": "team@acme.example",
            "tools": {
                "lookup": "allow",
                "noop": "allow",
                "send_email": {"when": 'args.to.endsWith("@acme.example")'},
                "refund": {"when": "args.amount <= 500", "ask": "args.amount > 50"},
            },
        }
    },
}


class ScriptedModel(BaseChatModel):
    """Answers with the scripted message for this turn and remembers what it was shown."""

    script: list[AIMessage]
    seen: list[list[BaseMessage]] = []  # noqa: RUF012 - pydantic copies the default per instance

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        turn = sum(isinstance(m, AIMessage) for m in messages)  # the conversation says where we are, in any process
        message = self.script[turn] if turn < len(self.script) else AIMessage("done")
        return ChatResult(generations=[ChatGeneration(message=message)])

    def tool_replies(self) -> dict[str, str]:
        """Every ToolMessage the model was shown, by tool_call_id."""
        return {m.tool_call_id: str(m.content) for ms in self.seen for m in ms if isinstance(m, ToolMessage)}


class CountingModel(ScriptedModel):
    """Answers its n-th call with the n-th scripted message, whatever the conversation holds
    (for agents that see each other's messages)."""

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        turn = len(self.seen)
        self.seen.append(list(messages))
        message = self.script[turn] if turn < len(self.script) else AIMessage("done")
        return ChatResult(generations=[ChatGeneration(message=message)])


def calls(*items: tuple[str, dict[str, Any], str]) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": n, "args": a, "id": i, "type": "tool_call"} for n, a, i in items])


class Ran:
    """Counts tool bodies that actually ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


@pytest.fixture
def ran() -> Ran:
    return Ran()


@pytest.fixture
def tools(ran: Ran) -> list[Any]:
    @tool
    def lookup(ticket: str) -> str:
        """Read a ticket."""
        ran.calls.append(("lookup", {"ticket": ticket}))
        return f"ticket {ticket}: customer jane@example.com wants a refund"

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        ran.calls.append(("send_email", {"to": to, "body": body}))
        return "sent"

    @tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        ran.calls.append(("refund", {"order": order, "amount": amount}))
        return f"refunded {amount} on {order}"

    return [lookup, send_email, refund]


@pytest.fixture
def store(scenario_store: AuditStore) -> AuditStore:
    return scenario_store


@pytest.fixture
def guard(store: AuditStore) -> Guard:
    return Guard(POLICY, store=store)


def kinds(store: AuditStore, session: str) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.tool, e.verdict) for e in store.session_events(session) if e.kind != "session.start"]
