"""OpenTelemetry export: a span and metrics per decision, nested in the caller's trace, with
nothing raw in what is exported, and an exporter that fails without touching the decision."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry export needs tether[otel] (opentelemetry-sdk)")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tether.core import AuditStore, Guard, Mode
from tether.core.telemetry import DECISIONS, DURATION, Telemetry

from .conftest import BASE_POLICY, KEY, policy_with

SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"
EMAIL = "jane.doe@example.com"


class Exported:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def telemetry(self, **kwargs: Any) -> Telemetry:
        return Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def exported() -> Iterator[Exported]:
    out = Exported()
    yield out
    out.tracer_provider.shutdown()
    out.meter_provider.shutdown()


@pytest.fixture
def audit(sqlite_url: str) -> Iterator[AuditStore]:
    store = AuditStore(sqlite_url, key=KEY)
    yield store
    store.close()


def guarded(audit: AuditStore, exported: Exported, policy: Any = BASE_POLICY, **kwargs: Any) -> Guard:
    return Guard(policy, store=audit, telemetry=exported.telemetry(**kwargs))


def test_each_tool_decision_is_an_execute_tool_span(audit: AuditStore, exported: Exported) -> None:
    session = guarded(audit, exported).session("bot", "ticket-42", tenant="acme")
    allowed = session.before_tool("search", {"q": "x"}, call_id="c1")
    denied = session.before_tool("send_email", {"to": "x@evil.example"}, call_id="c2")
    asked = session.before_tool("refund", {"amount": 100}, call_id="c3")
    allow, deny, ask = exported.finished()

    assert allow.name == "execute_tool search"
    assert dict(allow.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "search",
        "gen_ai.tool.call.id": "c1",
        "gen_ai.agent.name": "bot",
        "gen_ai.conversation.id": "ticket-42",
        "gen_ai.guardrail.target.type": "tool_call",
        "gen_ai.guardrail.verdict.type": "allow",
        "gen_ai.guardrail.verdict.reason": allowed.reason,
        "gen_ai.guardrail.security.policy.rule.id": ("agents.bot.tools.search",),
        "tether.verdict": "allow",
        "tether.decision": "allowed",
        "tether.enforcement": "enforced",
        "tether.event.id": allowed.event_id,
        "tether.tenant": "acme",
    }
    assert deny.name == "execute_tool send_email"
    assert deny.attributes is not None and ask.attributes is not None
    assert deny.attributes["gen_ai.guardrail.verdict.type"] == "deny"
    assert deny.attributes["gen_ai.guardrail.security.policy.rule.id"] == denied.rule_ids
    assert deny.attributes["tether.decision"] == "denied"
    assert deny.status.status_code is StatusCode.UNSET  # a denial is the policy working, not an error
    assert ask.attributes["gen_ai.guardrail.verdict.type"] == "escalate"
    assert ask.attributes["tether.decision"] == "approval"
    assert ask.attributes["gen_ai.guardrail.verdict.reason"] == asked.reason
    assert all(s.end_time is not None and s.start_time is not None and s.end_time >= s.start_time for s in (allow, ask))


def test_redacted_arguments_are_a_modify_verdict(audit: AuditStore, exported: Exported) -> None:
    policy = policy_with(
        rules=[{"id": "no-bodies", "tools": ["send_email"], "action": "redact", "redact": ["body"], "reason": "r"}]
    )
    session = guarded(audit, exported, policy).session("bot", "s1")
    decision = session.before_tool("send_email", {"to": "a@acme.example", "body": "hello"})
    assert decision.args["body"] != "hello"
    (span,) = exported.finished()
    assert span.attributes is not None
    assert span.attributes["gen_ai.guardrail.verdict.type"] == "modify"
    assert "no-bodies" in span.attributes["gen_ai.guardrail.security.policy.rule.id"]  # type: ignore[operator]


def test_monitor_mode_reports_what_it_let_through_as_warn(audit: AuditStore, exported: Exported) -> None:
    guard = Guard(BASE_POLICY, store=audit, mode=Mode.MONITOR, telemetry=exported.telemetry())
    guard.session("bot", "s1").before_tool("send_email", {"to": "x@evil.example"})
    (span,) = exported.finished()
    assert span.attributes is not None
    assert span.attributes["gen_ai.guardrail.verdict.type"] == "warn"
    assert (span.attributes["tether.verdict"], span.attributes["tether.decision"]) == ("deny", "allowed")


def test_span_nests_under_the_callers_current_span(audit: AuditStore, exported: Exported) -> None:
    session = guarded(audit, exported).session("bot", "s1")
    tracer = exported.tracer_provider.get_tracer("framework")
    with tracer.start_as_current_span("invoke_agent bot") as parent:
        session.before_tool("search", {"q": "x"})
    session.before_tool("search", {"q": "y"})  # no current span: a root of its own
    inner, outer, root = exported.finished()
    assert outer.name == "invoke_agent bot"
    assert inner.parent is not None and inner.parent.span_id == parent.get_span_context().span_id
    assert inner.context is not None and inner.context.trace_id == parent.get_span_context().trace_id
    assert root.parent is None


def test_async_decisions_nest_too(audit: AuditStore, exported: Exported) -> None:
    import asyncio

    session = guarded(audit, exported).session("bot", "s1")
    tracer = exported.tracer_provider.get_tracer("framework")

    async def run() -> int:
        with tracer.start_as_current_span("invoke_agent bot") as parent:
            await session.abefore_tool("search", {"q": "x"})
            return parent.get_span_context().span_id

    parent_id = asyncio.run(run())
    inner = exported.finished()[0]
    assert inner.parent is not None and inner.parent.span_id == parent_id


def test_metrics_count_decisions_by_verdict_agent_and_tool_and_time_them(audit: AuditStore, exported: Exported) -> None:
    session = guarded(audit, exported).session("bot", "s1")
    session.before_tool("search", {"q": "x"})
    session.before_tool("search", {"q": "y"})
    session.before_tool("send_email", {"to": "x@evil.example"})
    counts = {
        (p.attributes["gen_ai.tool.name"], p.attributes["gen_ai.guardrail.verdict.type"]): p.value
        for p in exported.points(DECISIONS)
    }
    assert counts == {("search", "allow"): 2, ("send_email", "deny"): 1}
    assert all(p.attributes["gen_ai.agent.name"] == "bot" for p in exported.points(DECISIONS))
    durations = exported.points(DURATION)
    assert sum(p.count for p in durations) == 3
    assert all(0 < p.sum < 5 for p in durations)  # seconds


def test_nothing_raw_is_exported(audit: AuditStore, exported: Exported) -> None:
    """Even with the arguments' preview asked for, a secret or an email in the arguments
    appears in no exported attribute, on spans or metrics."""
    session = guarded(audit, exported, arguments=True).session("bot", "s1")
    args = {"to": EMAIL, "body": f"use {SECRET} and write to {EMAIL}", "api_key": SECRET}
    session.before_tool("send_email", args, call_id="c1")
    session.before_tool("search", {"q": f"who is {EMAIL}?", "token": SECRET})
    session.before_model([{"role": "user", "content": f"mail {EMAIL} the key {SECRET}"}], model="m")
    exported_text = json.dumps(
        [
            {k: list(v) if isinstance(v, tuple) else v for k, v in (s.attributes or {}).items()}
            for s in exported.finished()
        ]
    )
    exported_text += json.dumps([dict(p.attributes) for name in (DECISIONS, DURATION) for p in exported.points(name)])
    assert "execute_tool" in exported_text and "gen_ai.tool.call.arguments" in exported_text
    for raw in (SECRET, EMAIL, "jane.doe"):
        assert raw not in exported_text
    # The preview is the audit's: the same masked value it stored.
    span = exported.finished()[0]
    assert span.attributes is not None
    stored = audit.event(str(span.attributes["tether.event.id"]))
    assert stored is not None
    assert json.loads(str(span.attributes["gen_ai.tool.call.arguments"])) == stored.details["args"]


def test_arguments_are_not_exported_unless_asked(audit: AuditStore, exported: Exported) -> None:
    guarded(audit, exported).session("bot", "s1").before_tool("search", {"q": "x"})
    (span,) = exported.finished()
    assert "gen_ai.tool.call.arguments" not in (span.attributes or {})


def test_model_request_screening_is_a_guardrail_span(audit: AuditStore, exported: Exported) -> None:
    guard = guarded(audit, exported)
    card = "4111 1111 1111 1111"
    first = guard.session("bot", "alice-chat")
    first.after_tool(first.before_tool("search", {"q": "me"}), f"your card {card}")
    session = guard.session("bot", "bob-chat")  # another session: the card is not bob's to see
    tracer = exported.tracer_provider.get_tracer("framework")
    with tracer.start_as_current_span("chat m") as parent:
        request = session.before_model([{"role": "user", "content": f"is {card} mine?"}], model="m")
    assert not request.allowed
    screened = next(s for s in exported.finished() if s.name == "run_guardrail tether")
    assert screened.parent is not None and screened.parent.span_id == parent.get_span_context().span_id
    assert screened.attributes is not None
    assert screened.attributes["gen_ai.operation.name"] == "run_guardrail"
    assert screened.attributes["gen_ai.guardrail.target.type"] == "llm_input"
    assert screened.attributes["gen_ai.guardrail.verdict.type"] == "deny"
    assert screened.attributes["gen_ai.guardrail.security.policy.rule.id"] == ("tether.cross-session",)
    assert screened.attributes["gen_ai.guardrail.verdict.reason"] == request.reason
    assert card not in json.dumps(dict(screened.attributes))
    assert screened.attributes["tether.event.id"] == request.event_id

    session.before_model([{"role": "user", "content": "hello"}])
    plain = exported.finished()[-1]
    assert plain.attributes is not None
    assert plain.attributes["gen_ai.guardrail.verdict.type"] == "allow"


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def tool_decision(self, *args: Any) -> None:
        self.calls += 1
        raise RuntimeError("collector unreachable")

    def model_request(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise RuntimeError("collector unreachable")


def test_a_failing_exporter_never_changes_a_decision(audit: AuditStore, caplog: pytest.LogCaptureFixture) -> None:
    broken = Broken()
    session = Guard(BASE_POLICY, store=audit, telemetry=broken).session("bot", "s1")
    with caplog.at_level(logging.WARNING, logger="tether"):
        first = session.before_tool("search", {"q": "x"})
        second = session.before_tool("send_email", {"to": "x@evil.example"})
        request = session.before_model([{"role": "user", "content": "hi"}])
    assert first.allowed and not second.allowed and request.allowed
    assert broken.calls == 3  # it was told each time
    failures = [r for r in caplog.records if "telemetry failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, then dropped quietly


def test_a_failing_span_processor_never_changes_a_decision(audit: AuditStore, exported: Exported) -> None:
    class Exploding(SimpleSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("boom")

    exported.tracer_provider.add_span_processor(Exploding(exported.spans))
    decision = guarded(audit, exported).session("bot", "s1").before_tool("search", {"q": "x"})
    assert decision.allowed


def test_off_by_default_and_true_uses_the_global_providers(audit: AuditStore) -> None:
    assert Guard(BASE_POLICY, store=audit).telemetry is None
    assert isinstance(Guard(BASE_POLICY, store=audit, telemetry=True).telemetry, Telemetry)


def test_importing_tether_loads_no_opentelemetry() -> None:
    """Off, the export costs nothing: not even the import."""
    import subprocess
    import sys

    script = "import sys, tether.core, tether.core.telemetry; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
