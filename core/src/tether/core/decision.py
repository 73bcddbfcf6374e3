"""Deciding on a tool call: a pure function of (compiled policy, session state, call).

Precedence, so a decision reads like the policy: a call must be granted (or the policy's
default applies); any matching deny rule or exhausted limit denies; any matching ask rule asks;
redact rules rewrite arguments; otherwise the call is allowed. A condition that fails to
evaluate denies the call (fail closed) and says which rule failed and why.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .expr import ConditionFailed, evaluate, make_activation, select
from .policy.compile import DEFAULT_RULE, CompiledPolicy, CompiledRule, Plan
from .policy.schema import Verdict
from .state import SessionState
from .wording import unnamed

ERROR_RULE = "tether.error"
REDACTED = "[redacted by Tether]"


@dataclass(frozen=True)
class ToolCall:
    """A tool call an agent is about to make."""

    agent: str
    session_id: str
    tool: str
    args: Mapping[str, Any]
    call_id: str | None = None  # the framework's id for this call, if it has one
    caused_by: str | None = None  # audit event id of the model response that proposed it


class Ruling(NamedTuple):  # a tuple: built on every decision, so cheap to build
    """What the policy says about a call, before enforcement and audit."""

    verdict: Verdict
    reason: str
    rule_ids: tuple[str, ...]
    redact: tuple[str, ...] = ()
    error: str | None = None
    approvers: frozenset[str] | None = None  # for ask: who may approve (None: anyone)
    for_session: bool = False  # for ask: may be approved for the rest of the session


class Enforcement(str, enum.Enum):
    ENFORCED = "enforced"
    MONITORED = "monitored"  # the policy is in monitor mode: recorded, not enforced


@dataclass(frozen=True)
class Decision:
    """Tether's answer to :meth:`Session.before_tool`.

    ``allowed`` tells the caller whether to run the tool, with ``args`` (which differ from the
    call's arguments when the policy redacted some). ``needs_approval`` means a person must
    decide first: pass the decision to :meth:`Session.resolve` or to the framework's own pause.
    """

    call: ToolCall
    verdict: Verdict
    reason: str
    rule_ids: tuple[str, ...]
    args: Mapping[str, Any]
    enforcement: Enforcement = Enforcement.ENFORCED
    error: str | None = None  # set when Tether itself failed and denied to stay safe
    event_id: str | None = None  # the audit event recording this decision
    approval_timeout: float | None = None
    approved_by: str | None = field(default=None)
    approvers: frozenset[str] | None = None  # who may approve, when approval is needed (None: anyone)
    for_session: bool = False  # whether an approver may approve such calls for the rest of the session
    findings: tuple[str, ...] = ()  # what Tether's protections found, even where they let the call through

    @property
    def allowed(self) -> bool:
        if self.enforcement is Enforcement.MONITORED:
            return True
        return self.verdict in (Verdict.ALLOW, Verdict.REDACT)

    @property
    def needs_approval(self) -> bool:
        return self.verdict is Verdict.ASK and self.enforcement is Enforcement.ENFORCED

    def refusal(self) -> str:
        """A message the agent can read when the call does not run."""
        others = unnamed(self.rule_ids, self.reason)  # each rule named once
        rules = f" (rule: {', '.join(others)})" if others else ""
        verb = "requires approval for" if self.needs_approval else "denied"
        return f"Tether {verb} the call to '{self.call.tool}': {self.reason}{rules}"


class _RuleFailed(Exception):
    def __init__(self, rule_id: str, cause: ConditionFailed) -> None:
        self.rule_id = rule_id
        self.cause = cause


class _Conditions:
    """Evaluates a plan's conditions against one call, binding variables only if one is needed."""

    def __init__(
        self, plan: Plan, args: Mapping[str, Any], state: SessionState, user: str | None, tenant: str | None, now: float
    ) -> None:
        self._plan, self._args, self._state = plan, args, state
        self._user, self._tenant, self._now = user, tenant, now
        self._activation: Any = None

    def holds(self, rule: CompiledRule) -> bool:
        if rule.condition is None:
            return True
        try:
            if self._activation is None:
                variables = self._bind()
                # One condition is cheapest run straight on the variables; several share one
                # activation, so the variables are converted for CEL only once.
                self._activation = make_activation(variables) if self._plan.conditions > 1 else variables
            return evaluate(rule.condition, self._activation)
        except ConditionFailed as exc:
            raise _RuleFailed(rule.id, exc) from None

    def _bind(self) -> dict[str, Any]:
        plan = self._plan
        variables: dict[str, Any] = dict(plan.statics)  # tool and agent, already cut to what is read
        for name, fields in plan.fields.items():
            if name == "args":
                variables["args"] = select(self._args, fields)
            elif name == "session":
                variables["session"] = self._state.cel_value(plan.agent, self._user, self._tenant, fields)
            elif name == "now":
                variables["now"] = dt.datetime.fromtimestamp(self._now, dt.timezone.utc)
            elif name == "request":
                state, read = self._state, plan.request_args
                variables["request"] = state.request.cel_value(
                    self._args, fields, state.trusted_values, read, plan.mentions
                )
        return variables


def decide(
    policy: CompiledPolicy,
    state: SessionState,
    agent: str,
    tool: str,
    args: Mapping[str, Any],
    *,
    user: str | None = None,
    tenant: str | None = None,
    now: float,
) -> Ruling:
    """Rule on ``agent`` calling ``tool`` with plain-data ``args``. Does not change ``state``."""
    plan = policy.plan(agent, tool)
    conditions = _Conditions(plan, args, state, user, tenant, now)
    try:
        return _rule(policy, plan, conditions, state, now)
    except _RuleFailed as failed:
        message = f"condition of rule {failed.rule_id} could not be evaluated: {failed.cause}"
        return Ruling(Verdict.DENY, message + " (denied to stay safe)", (failed.rule_id,), error=message)


def _rule(policy: CompiledPolicy, plan: Plan, conditions: _Conditions, state: SessionState, now: float) -> Ruling:
    grant = next((rule for rule in plan.grants if conditions.holds(rule)), None)
    ungranted = _not_granted(plan) if grant is None else None
    for rule in plan.denies:
        if conditions.holds(rule):
            if ungranted is not None and policy.default is Verdict.DENY:  # both say no: cite both
                return Ruling(Verdict.DENY, f"{rule.reason}; {ungranted.reason}", (rule.id, *ungranted.rule_ids))
            return Ruling(Verdict.DENY, rule.reason, (rule.id,))
    if ungranted is not None and policy.default is Verdict.DENY:
        return ungranted
    exhausted = _exhausted_limit(plan, state, now)
    if exhausted is not None:
        return exhausted
    asks = [rule for rule in plan.asks if conditions.holds(rule)]
    redacts = [rule for rule in plan.redacts if conditions.holds(rule)]
    fields = tuple(dict.fromkeys(f for rule in redacts for f in rule.redact))
    if grant is None:
        ungranted = ungranted or _not_granted(plan)
        return _ask(ungranted.reason, ungranted.rule_ids, asks, fields)
    if asks:
        return _ask("; ".join(r.reason for r in asks), (), asks, fields)
    if redacts:
        reason = f"{grant.reason}; arguments redacted: {', '.join(fields)}"
        return Ruling(Verdict.REDACT, reason, (grant.id, *(r.id for r in redacts)), fields)
    return Ruling(Verdict.ALLOW, grant.reason, (grant.id,))


def _ask(reason: str, rule_ids: tuple[str, ...], asks: list[CompiledRule], fields: tuple[str, ...]) -> Ruling:
    """An ask: whoever approves must be allowed by every ask rule that matched."""
    approvers: frozenset[str] | None = None
    for rule in asks:
        if rule.approvers is not None:
            approvers = rule.approvers if approvers is None else approvers & rule.approvers
    for_session = bool(asks) and all(rule.for_session for rule in asks)
    return Ruling(Verdict.ASK, reason, rule_ids + tuple(r.id for r in asks), fields, None, approvers, for_session)


def _not_granted(plan: Plan) -> Ruling:
    if not plan.agent_known:
        reason = f"agent '{plan.agent}' is not in the policy"
    elif not plan.tool_known:
        reason = f"tool '{plan.tool}' is not declared in the policy"
    elif plan.grants:
        return Ruling(Verdict.DENY, plan.grants[0].unmet, (plan.grants[0].id,))
    else:
        reason = f"agent '{plan.agent}' is not granted tool '{plan.tool}'"
    return Ruling(Verdict.DENY, reason, (DEFAULT_RULE,))


def _exhausted_limit(plan: Plan, state: SessionState, now: float) -> Ruling | None:
    for limit in plan.limits:
        scope = f"calls to '{limit.tool}'" if limit.tool else "tool calls"
        if limit.max_calls is not None and state.calls(plan.agent, limit.tool) >= limit.max_calls:
            return Ruling(Verdict.DENY, f"limit reached: at most {limit.max_calls} {scope} per session", (limit.id,))
        if limit.rate is not None:
            oldest = state.nth_latest(plan.agent, limit.tool, limit.rate.calls)
            if oldest is not None and now - oldest < limit.rate.per_seconds:
                return Ruling(
                    Verdict.DENY,
                    f"rate limit: at most {limit.rate.calls} {scope} per {limit.rate.per_seconds:g}s",
                    (limit.id,),
                )
    return None


def redact_args(args: Mapping[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``args`` with each dotted path that exists replaced by a placeholder."""
    out = dict(args)
    for path in paths:
        _replace(out, path.split("."))
    return out


def _replace(mapping: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in mapping:
        return
    if not rest:
        mapping[head] = REDACTED
    elif isinstance(mapping[head], Mapping):
        mapping[head] = dict(mapping[head])
        _replace(mapping[head], rest)
