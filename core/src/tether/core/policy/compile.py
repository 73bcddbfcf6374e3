"""Compiling a validated policy into per-(agent, tool) plans.

A plan holds only the rules that can apply to one agent calling one tool, in the order a
decision reads them, with their conditions already compiled. Building it once means a
decision never scans rules that cannot match.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..classify import DEFAULT, DETECTORS, Classifier, Detector
from ..errors import PolicyError, PolicyIssue, TetherError
from ..expr import Condition, ConditionError, compile_condition, merge_fields, merge_request_args, select
from ..values import canonical_json
from .loader import KeyPath, Source, format_path, read_policy
from .schema import AgentSpec, Grant, Policy, Rate, Rule, ToolSpec, Verdict

if TYPE_CHECKING:
    from ..sequences import SequenceProgram

DEFAULT_RULE = "default"
_PLAN_CACHE_SIZE = 4096


@dataclass(frozen=True, eq=False)
class CompiledRule:
    id: str
    action: Verdict
    reason: str
    condition: Condition | None = None
    redact: tuple[str, ...] = ()
    unmet: str = ""  # for a grant: why the call is refused when its condition does not hold
    approvers: frozenset[str] | None = None  # for an ask: who may approve (None: anyone)
    for_session: bool = False  # for an ask: may be approved for the rest of the session


@dataclass(frozen=True)
class Limit:
    """A per-session cap on an agent's calls (``tool`` None) or on its calls of one tool."""

    id: str
    tool: str | None
    max_calls: int | None = None
    rate: Rate | None = None


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything a decision needs for one agent calling one tool."""

    agent: str
    tool: str
    agent_known: bool
    tool_known: bool
    grants: tuple[CompiledRule, ...]  # allow rules: the call is granted when one holds
    denies: tuple[CompiledRule, ...]
    asks: tuple[CompiledRule, ...]
    redacts: tuple[CompiledRule, ...]
    limits: tuple[Limit, ...]
    #: the variables (and their fields) the conditions read, so nothing else is built per call
    fields: dict[str, frozenset[str] | None]
    conditions: int  # how many rules carry a condition
    statics: dict[str, Any] = field(repr=False)  # the 'tool' and 'agent' CEL values
    request_args: frozenset[str] | None = frozenset()  # the arguments read through request.given/known
    mentions: frozenset[str] = frozenset()  # the words read through request.mentions


class CompiledPolicy:
    """A policy ready to decide on. Build with :func:`compile_policy`."""

    def __init__(
        self,
        policy: Policy,
        conditions: dict[str, Condition | None],
        classifier: Classifier = DEFAULT,
        sequences: SequenceProgram | None = None,
    ) -> None:
        self.policy = policy
        self.sequences = sequences  # sequence rules and what anomaly checks track (None: nothing)
        self.classifier = classifier
        self.risky = frozenset(policy.protections.risky_effects)
        self.mode = policy.mode
        self.default = Verdict(policy.default)
        self.approval_timeout = policy.approvals.timeout
        self.digest = hashlib.sha256(canonical_json(policy.model_dump(mode="json")).encode()).hexdigest()
        self._conditions = conditions  # by source path, compiled once
        self._plans: dict[tuple[str, str], Plan] = {}
        self._lock = threading.Lock()
        rates = [r.calls for r in _all_rates(policy)]
        self.rate_window = max(rates, default=0)  # how many call times a session must remember

    def plan(self, agent: str, tool: str) -> Plan:
        key = (agent, tool)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._build_plan(agent, tool)
            with self._lock:
                if len(self._plans) >= _PLAN_CACHE_SIZE:  # names can come from a model: bound it
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = plan
        return plan

    def _build_plan(self, agent: str, tool: str) -> Plan:
        policy = self.policy
        agent_spec = policy.agents.get(agent)
        tool_spec = policy.tools.get(tool)
        by_action: dict[Verdict, list[CompiledRule]] = {v: [] for v in Verdict}
        limits: list[Limit] = []
        if agent_spec is not None:
            agent_path: KeyPath = ("agents", agent)
            limits += _limits(agent_path + ("limits",), None, agent_spec.limits.max_calls, agent_spec.limits.rate)
            grant = agent_spec.tools.get(tool)
            if grant is not None and tool_spec is not None:
                path = agent_path + ("tools", tool)
                for granted in self._grant_rules(path, grant):
                    by_action[granted.action].append(granted)
                limits += _limits(path, tool, grant.max_calls, grant.rate)
        for index, rule in enumerate(policy.rules):
            if _selects(rule, agent, tool, tool_spec):
                by_action[rule.action].append(self._rule(("rules", index), rule))
        conditions = [r.condition for rules in by_action.values() for r in rules if r.condition]
        fields = merge_fields([condition.names.fields for condition in conditions])
        statics = {"tool": tool_value(tool, tool_spec), "agent": agent_value(agent, agent_spec)}
        return Plan(
            agent,
            tool,
            agent_spec is not None,
            tool_spec is not None,
            tuple(by_action[Verdict.ALLOW]),
            tuple(by_action[Verdict.DENY]),
            tuple(by_action[Verdict.ASK]),
            tuple(by_action[Verdict.REDACT]),
            tuple(limits),
            fields,
            len(conditions),
            {name: select(value, fields[name]) for name, value in statics.items() if name in fields},
            merge_request_args([condition.names.request_args for condition in conditions]),
            frozenset().union(*(condition.names.mentions for condition in conditions)),
        )

    def _grant_rules(self, path: KeyPath, grant: Grant) -> list[CompiledRule]:
        rule_id = format_path(path)
        unmet = grant.reason or f"the condition of {rule_id} does not hold: {grant.when}"
        when = self._conditions[format_path(path + ("when",))]
        rules = [CompiledRule(rule_id, Verdict.ALLOW, f"granted by {rule_id}", when, unmet=unmet)]
        if grant.ask is not False:
            ask_reason = grant.reason or f"{rule_id} requires approval"
            condition = self._conditions[format_path(path + ("ask",))]
            rules.append(
                CompiledRule(
                    f"{rule_id}.ask",
                    Verdict.ASK,
                    ask_reason,
                    condition,
                    approvers=self._members(grant.approvers),
                    for_session=grant.approve_for_session,
                )
            )
        if grant.redact:
            rules.append(
                CompiledRule(
                    f"{rule_id}.redact", Verdict.REDACT, f"{rule_id} redacts arguments", None, tuple(grant.redact)
                )
            )
        return rules

    def _rule(self, path: KeyPath, rule: Rule) -> CompiledRule:
        condition = self._conditions[format_path(path + ("when",))]
        unmet = f"the condition of rule {rule.id} does not hold: {rule.when}"
        return CompiledRule(
            rule.id,
            rule.action,
            rule.reason,
            condition,
            tuple(rule.redact),
            unmet,
            self._members(rule.approvers),
            rule.approve_for_session,
        )

    def _members(self, groups: list[str] | None) -> frozenset[str] | None:
        """Everyone in ``groups`` (None: no restriction)."""
        if groups is None:
            return None
        return frozenset(who for group in groups for who in self.policy.approvals.groups.get(group, []))


def _limits(path: KeyPath, tool: str | None, max_calls: int | None, rate: Rate | None) -> list[Limit]:
    out = []
    if max_calls is not None:
        out.append(Limit(format_path(path + ("max_calls",)), tool, max_calls=max_calls))
    if rate is not None:
        out.append(Limit(format_path(path + ("rate",)), tool, rate=rate))
    return out


def _all_rates(policy: Policy) -> list[Rate]:
    rates = []
    for agent in policy.agents.values():
        rates += [agent.limits.rate] + [g.rate for g in agent.tools.values()]
    return [r for r in rates if r is not None]


def _selects(rule: Rule, agent: str, tool: str, tool_spec: ToolSpec | None) -> bool:
    if rule.agents is not None and not any(fnmatch.fnmatchcase(agent, p) for p in rule.agents):
        return False
    if rule.tools is not None and not any(fnmatch.fnmatchcase(tool, p) for p in rule.tools):
        return False
    if rule.effects is not None:
        effects = set(tool_spec.effects) if tool_spec else set()
        if not effects.intersection(rule.effects):
            return False
    return True


def tool_value(name: str, spec: ToolSpec | None) -> dict[str, Any]:
    if spec is None:
        return {"name": name, "effects": [], "output": "untrusted", "data": []}
    return {
        "name": name,
        "effects": [e.value for e in spec.effects],
        "output": spec.output.value,
        "data": list(spec.data),
    }


def agent_value(name: str, spec: AgentSpec | None) -> dict[str, Any]:
    if spec is None:
        return {"name": name, "purpose": "", "owner": "", "data": []}
    return {"name": name, "purpose": spec.purpose, "owner": spec.owner, "data": list(spec.data or [])}


def compile_policy(policy: Policy, source: Source | None = None) -> CompiledPolicy:
    """Check cross-references and compile every condition; raise :class:`PolicyError` listing all problems."""
    where = source or Source()
    issues: list[PolicyIssue] = []
    conditions: dict[str, Condition | None] = {}
    tools = set(policy.tools)
    groups = set(policy.approvals.groups)

    def condition(path: KeyPath, text: str | bool | None) -> None:
        if text is None or isinstance(text, bool):
            conditions[format_path(path)] = None
            return
        try:
            compiled = compile_condition(text)
        except ConditionError as exc:
            at = f" at column {exc.column}" if exc.column else ""
            issues.append(where.issue(path, f"condition does not compile{at}: {exc}"))
            return
        unknown = sorted(compiled.names.tool_names - tools)
        if unknown:
            issues.append(
                where.issue(path, f"condition refers to unknown tool {unknown[0]!r}{_hint(unknown[0], tools)}")
            )
        conditions[format_path(path)] = compiled

    for agent_name, agent in policy.agents.items():
        for tool_name, grant in agent.tools.items():
            path: KeyPath = ("agents", agent_name, "tools", tool_name)
            if tool_name not in tools:
                issues.append(
                    where.issue(
                        path,
                        f"unknown tool {tool_name!r}{_hint(tool_name, tools)}; declare it under 'tools'",
                        at_key=True,
                    )
                )
            condition(path + ("when",), grant.when)
            condition(path + ("ask",), grant.ask)
            if grant.ask is False and (grant.approvers is not None or grant.approve_for_session):
                issues.append(where.issue(path, "'approvers' and 'approve_for_session' need 'ask'"))
            _check_selectors(where, path + ("approvers",), grant.approvers, groups, "approver group", issues)
    seen_ids: set[str] = set()
    for index, rule in enumerate(policy.rules):
        path = ("rules", index)
        if rule.id in seen_ids:
            issues.append(where.issue(path + ("id",), f"rule id {rule.id!r} is used twice"))
        seen_ids.add(rule.id)
        _check_selectors(where, path + ("agents",), rule.agents, set(policy.agents), "agent", issues)
        _check_selectors(where, path + ("tools",), rule.tools, tools, "tool", issues)
        _check_selectors(where, path + ("approvers",), rule.approvers, groups, "approver group", issues)
        condition(path + ("when",), rule.when)
    classifier = _classifier(policy, where, issues)
    from ..sequences import compile_sequences  # it reads the policy's schema: imported once that is loaded

    sequences = compile_sequences(policy, where, issues)
    if issues:
        issues.sort(key=lambda i: (i.line or 0, i.column or 0))
        raise PolicyError(issues)
    return CompiledPolicy(policy, conditions, classifier, sequences)


def _classifier(policy: Policy, where: Source, issues: list[PolicyIssue]) -> Classifier:
    """The built-in detectors plus the policy's own classes (before the catch-all token detector)."""
    if not policy.classes:
        return DEFAULT
    custom: list[Detector] = []
    for name, spec in policy.classes.items():
        for index, pattern in enumerate(spec.patterns):
            try:
                custom.append(Detector(name, name, pattern))
            except (TetherError, re.error) as exc:
                issues.append(where.issue(("classes", name, "patterns", index), f"not a valid pattern: {exc}"))
    return Classifier((*DETECTORS[:-1], *custom, DETECTORS[-1]))


def _check_selectors(
    where: Source, path: KeyPath, names: list[str] | None, known: set[str], kind: str, issues: list[PolicyIssue]
) -> None:
    for i, name in enumerate(names or []):
        if any(ch in name for ch in "*?["):
            continue  # a pattern may match agents or tools that appear later
        if name not in known:
            issues.append(where.issue(path + (i,), f"unknown {kind} {name!r}{_hint(name, known)}"))


def _hint(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _within(path: str, parts: set[str]) -> bool:
    return any(path == part or path.startswith((part + ".", part + "[")) for part in parts)


def load_policy(source: str | os.PathLike[str] | Mapping[str, Any] | Policy) -> CompiledPolicy:
    """Read, validate and compile a policy (a YAML path, a mapping or a :class:`Policy`).

    A :class:`PolicyError` lists every problem: when part of the policy does not fit the schema,
    the rest is still compiled, so its unknown names and broken conditions are reported too."""
    try:
        policy, where = read_policy(source)
    except PolicyError as exc:
        if exc.partial is None or exc.partial[0] is None:
            raise
        try:
            compile_policy(*exc.partial)
        except PolicyError as more:
            seen = {str(issue) for issue in exc.issues}
            stand_ins = exc.partial[1].stand_ins
            issues = exc.issues + [
                issue for issue in more.issues if str(issue) not in seen and not _within(issue.path, stand_ins)
            ]
            issues.sort(key=lambda i: (i.line or 0, i.column or 0))
            raise PolicyError(issues) from None
        raise
    return compile_policy(policy, where)
