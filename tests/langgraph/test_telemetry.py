"""OpenTelemetry export from a real graph run: each tool call Tether decided is an
``execute_tool`` span nested in the caller's trace, denied and allowed alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry export needs tether[otel] (opentelemetry-sdk)")

from langchain_core.messages import HumanMessage
from opentelemetry.sdk.trace import ReadableSpan

from tests.core.test_telemetry import Exported  # the in-memory exporters, read back
from tether.core import AuditStore, Guard
from tether.core.telemetry import DECISIONS
from tether.langgraph import Tether

from .conftest import POLICY, ScriptedModel, calls
from .graphs import agent, state_graph

THREAD = {"configurable": {"thread_id": "t-1"}}


def named(otel: Exported, prefix: str) -> dict[str, ReadableSpan]:
    """Finished spans whose name starts with ``prefix``, by tool call id (or name)."""
    found = [s for s in otel.spans.get_finished_spans() if s.name.startswith(prefix)]
    return {str((s.attributes or {}).get("gen_ai.tool.call.id", s.name)): s for s in found}


@pytest.fixture
def otel() -> Iterator[Exported]:
    out = Exported()
    yield out
    out.tracer_provider.shutdown()
    out.meter_provider.shutdown()


@pytest.fixture
def guard(store: AuditStore, otel: Exported) -> Guard:
    return Guard(POLICY, store=store, telemetry=otel.telemetry())


def lookup_and_a_bad_email() -> Any:
    return calls(("lookup", {"ticket": "7"}, "l1"), ("send_email", {"to": "x@evil.example", "body": "hi"}, "e1"))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_graph_run_exports_a_span_for_the_denied_and_the_allowed_call(
    guard: Guard, otel: Exported, tools: list[Any], ran: Any, mode: str
) -> None:
    model = ScriptedModel(script=[lookup_and_a_bad_email()])
    graph = state_graph(model, tools, Tether(guard, agent="support-bot"))
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("invoke_agent support-bot") as parent:
        if mode == "sync":
            graph.invoke({"messages": [HumanMessage("ticket 7")]}, THREAD)
        else:
            asyncio.run(graph.ainvoke({"messages": [HumanMessage("ticket 7")]}, THREAD))
    assert ran.count("lookup") == 1 and ran.count("send_email") == 0

    spans = named(otel, "execute_tool ")
    assert set(spans) == {"l1", "e1"}
    allowed, denied = spans["l1"], spans["e1"]
    assert allowed.name == "execute_tool lookup" and denied.name == "execute_tool send_email"
    for span in (allowed, denied):
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["gen_ai.agent.name"] == "support-bot"
        assert span.attributes["gen_ai.conversation.id"] == "t-1"  # the Tether session: the thread
        assert str(span.attributes["tether.event.id"])  # the audit event the span stands for
    assert allowed.attributes is not None and denied.attributes is not None
    assert allowed.attributes["gen_ai.guardrail.verdict.type"] == "allow"
    assert allowed.attributes["gen_ai.guardrail.security.policy.rule.id"] == ("agents.support-bot.tools.lookup",)
    assert denied.attributes["gen_ai.guardrail.verdict.type"] == "deny"
    assert denied.attributes["gen_ai.guardrail.security.policy.rule.id"] == ("agents.support-bot.tools.send_email",)
    assert "@acme.example" in str(denied.attributes["gen_ai.guardrail.verdict.reason"])
    assert "x@evil.example" not in str(dict(denied.attributes))  # the arguments are not exported

    counted = {
        (p.attributes["gen_ai.tool.name"], p.attributes["gen_ai.guardrail.verdict.type"]): p.value
        for r in otel.metrics.get_metrics_data().resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == DECISIONS
        for p in m.data.data_points
        if p.attributes["gen_ai.operation.name"] == "execute_tool"
    }
    assert counted == {("lookup", "allow"): 1, ("send_email", "deny"): 1}


def test_create_agent_exports_its_model_screening_and_tool_spans(
    guard: Guard, otel: Exported, tools: list[Any], ran: Any
) -> None:
    model = ScriptedModel(script=[lookup_and_a_bad_email()])
    graph = agent(model, tools, Tether(guard, agent="support-bot"))
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("invoke_agent support-bot") as parent:
        graph.invoke({"messages": [HumanMessage("ticket 7")]}, THREAD)
    assert ran.count("lookup") == 1 and ran.count("send_email") == 0
    tools_decided = named(otel, "execute_tool ")
    assert {k: (s.attributes or {})["gen_ai.guardrail.verdict.type"] for k, s in tools_decided.items()} == {
        "l1": "allow",
        "e1": "deny",
    }
    screened = [s for s in otel.spans.get_finished_spans() if s.name == "run_guardrail tether"]
    assert len(screened) == 2  # the model was asked twice: before the tools and after them
    trace_id = parent.get_span_context().trace_id
    assert all(s.context is not None and s.context.trace_id == trace_id for s in [*screened, *tools_decided.values()])
