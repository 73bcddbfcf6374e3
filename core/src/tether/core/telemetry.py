"""OpenTelemetry export of Tether's decisions: a span and two metrics per decision.

Optional: ``pip install 'tether[otel]'``, set up the SDK's providers as usual, then
``Guard(policy, telemetry=Telemetry())`` (or ``telemetry=True``). Spans follow the GenAI semantic
conventions (development status): each tool decision is an ``execute_tool {tool}`` span with the
guardrail's verdict; a model request Tether screened is a ``run_guardrail tether`` span. Spans
start in the current OpenTelemetry context, so they nest under a framework's own spans.

Nothing raw leaves: arguments are exported only when asked for (``arguments=True``), and then as
the redacted preview the audit stores; outputs and messages are never exported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

from .decision import Decision, Enforcement
from .errors import TetherError
from .policy.schema import Mode, Verdict
from .redact import preview
from .values import to_plain

if TYPE_CHECKING:
    from .guard import ModelRequest, Session

# GenAI semantic conventions (attribute names as the conventions spell them)
OPERATION = "gen_ai.operation.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION_ID = "gen_ai.conversation.id"
VERDICT_TYPE = "gen_ai.guardrail.verdict.type"
VERDICT_REASON = "gen_ai.guardrail.verdict.reason"
RULE_ID = "gen_ai.guardrail.security.policy.rule.id"
TARGET_TYPE = "gen_ai.guardrail.target.type"
ERROR_TYPE = "error.type"

DECISIONS = "tether.decisions"
DURATION = "tether.decision.duration"
# Decisions take microseconds to milliseconds (longer when the store is slow or far away).
_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# What a Tether verdict is in the conventions' terms
_VERDICT_TYPES = {
    Verdict.ALLOW: "allow",
    Verdict.DENY: "deny",
    Verdict.REDACT: "modify",  # arguments rewritten
    Verdict.ASK: "escalate",  # a person decides
}


class Observer(Protocol):
    """What a :class:`~tether.core.Guard` tells about each finished decision (``Guard(telemetry=...)``).

    Called after the decision is recorded, in the deciding thread and context; ``started`` is
    :func:`time.time_ns` when the decision began. An exception is caught by the guard, logged
    once and dropped: it never changes a decision."""

    def tool_decision(self, session: Session, decision: Decision, started: int) -> None: ...

    def model_request(
        self, session: Session, request: ModelRequest, started: int, *, rule_ids: Sequence[str], modified: bool
    ) -> None: ...


def _version() -> str:
    try:
        return metadata.version("tether")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class Telemetry:
    """Exports each decision to OpenTelemetry: a span, a count in ``tether.decisions`` and its
    latency in the ``tether.decision.duration`` histogram (seconds).

    ``tracer_provider`` and ``meter_provider`` default to the global ones (set them with the SDK
    as usual, before or after this is built). ``arguments=True`` adds each call's redacted
    preview, as the audit stores it, as ``gen_ai.tool.call.arguments`` (JSON)."""

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None, arguments: bool = False) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            raise TetherError(
                "exporting to OpenTelemetry needs the opentelemetry packages: pip install 'tether[otel]'"
            ) from None
        self._trace = trace
        self._tracer = trace.get_tracer("tether", _version(), tracer_provider=tracer_provider)
        meter = metrics.get_meter("tether", _version(), meter_provider=meter_provider)
        self._count = meter.create_counter(DECISIONS, unit="{decision}", description="Decisions Tether made")
        self._duration = meter.create_histogram(
            DURATION,
            unit="s",
            description="How long Tether took to decide, recording included",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self._arguments = arguments

    def tool_decision(self, session: Session, decision: Decision, started: int) -> None:
        ended = time.time_ns()
        call = decision.call
        verdict = _verdict_type(decision.verdict, decision.enforcement)
        attributes: dict[str, Any] = {
            OPERATION: "execute_tool",
            TOOL_NAME: call.tool,
            AGENT_NAME: session.agent,
            CONVERSATION_ID: session.id,
            TARGET_TYPE: "tool_call",
            VERDICT_TYPE: verdict,
            VERDICT_REASON: decision.reason,
            RULE_ID: list(decision.rule_ids),
            "tether.verdict": decision.verdict.value,
            "tether.decision": _outcome(decision),
            "tether.enforcement": decision.enforcement.value,
        }
        if call.call_id:
            attributes[TOOL_CALL_ID] = call.call_id
        if decision.event_id:
            attributes["tether.event.id"] = decision.event_id
        if call.caused_by:
            attributes["tether.event.parent"] = call.caused_by
        if decision.findings:
            attributes["tether.findings"] = list(decision.findings)
        _session_attributes(session, attributes)
        if self._arguments:
            attributes[TOOL_ARGUMENTS] = _arguments_preview(session, decision)
        failed = decision.error is not None  # Tether itself failed, and denied to stay safe
        self._export(f"execute_tool {call.tool}", attributes, started, ended, failed, call.tool, session.agent, verdict)

    def model_request(
        self, session: Session, request: ModelRequest, started: int, *, rule_ids: Sequence[str], modified: bool
    ) -> None:
        ended = time.time_ns()
        monitored = session.guard.mode is Mode.MONITOR
        if not request.allowed:
            verdict = "deny"
        elif rule_ids:
            verdict = "warn" if monitored else "modify" if modified else "allow"
        else:
            verdict = "allow"
        attributes: dict[str, Any] = {
            OPERATION: "run_guardrail",
            AGENT_NAME: session.agent,
            CONVERSATION_ID: session.id,
            TARGET_TYPE: "llm_input",
            VERDICT_TYPE: verdict,
            RULE_ID: list(rule_ids),
            "tether.event.id": request.event_id,
        }
        if request.reason:
            attributes[VERDICT_REASON] = request.reason
        _session_attributes(session, attributes)
        self._export("run_guardrail tether", attributes, started, ended, False, None, session.agent, verdict)

    def _export(
        self,
        name: str,
        attributes: dict[str, Any],
        started: int,
        ended: int,
        failed: bool,
        tool: str | None,
        agent: str,
        verdict: str,
    ) -> None:
        span = self._tracer.start_span(name, attributes=attributes, start_time=started)
        if failed:
            span.set_attribute(ERROR_TYPE, "tether.error")
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, attributes.get(VERDICT_REASON)))
        span.end(end_time=ended)
        measured = {OPERATION: attributes[OPERATION], AGENT_NAME: agent, VERDICT_TYPE: verdict}
        if tool is not None:
            measured[TOOL_NAME] = tool
        self._count.add(1, measured)
        self._duration.record(max(ended - started, 0) / 1e9, measured)


def _verdict_type(verdict: Verdict, enforcement: Enforcement) -> str:
    if enforcement is Enforcement.MONITORED and verdict is not Verdict.ALLOW:
        return "warn"  # monitor mode: recorded, let through
    return _VERDICT_TYPES[verdict]


def _outcome(decision: Decision) -> str:
    if decision.needs_approval:
        return "approval"
    return "allowed" if decision.allowed else "denied"


def _session_attributes(session: Session, attributes: dict[str, Any]) -> None:
    if session.tenant:
        attributes["tether.tenant"] = session.tenant
    if session.parent:
        attributes["tether.session.parent"] = session.parent


def _arguments_preview(session: Session, decision: Decision) -> str:
    """The call's arguments as the audit shows them: masked, fingerprinted and cut."""
    guard = session.guard
    try:
        plain = to_plain(decision.call.args, "args")
    except TetherError:
        return json.dumps("<unreadable arguments>")
    shown = preview(plain, guard.store.key, guard.policy.classifier).value
    return json.dumps(shown, ensure_ascii=False, sort_keys=True)
