"""Task scopes: the risky tools one session's task may use, and on what arguments.

A policy says what an agent may ever do; a scope says what *this* task needs, as the trusted
request implies it ("pay my March rent": ``send_money`` to the landlord, nothing else). A scope
only narrows the policy: a call the policy allows but the scope does not cover gets the policy's
``scopes.out_of_scope`` outcome (default ``ask``), with the scope and the reason in the approval
request and the audit. Calls the policy does not count as risky are never held by a scope.

A scope comes from the application (``guard.session(..., scope=...)``) or from a planner
(planners.py) that saw only trusted content. Either way it is checked here against the policy:
a tool the policy does not know or does not grant the agent, or a condition that does not
compile, is refused with every problem listed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .decision import Ruling
from .errors import TetherError
from .expr import Condition, ConditionError, ConditionFailed, Names, compile_condition, evaluate
from .policy.compile import CompiledPolicy
from .policy.schema import Verdict

SCOPE_RULE = "tether.scope"
MAX_TOOLS = 200
_Name = Annotated[str, Field(min_length=1, max_length=200)]


class ScopeError(TetherError):
    """A scope that cannot be used: every problem is listed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid scope: " + "; ".join(problems))


class ScopeTool(BaseModel):
    """One tool a task may use: ``when``, a CEL condition its arguments must meet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    when: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    why: Annotated[str, Field(max_length=2_000)] = ""  # what in the request calls for it

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value is None or value is True:
            return {}
        if isinstance(value, str):
            return {"when": value}
        return value


class ScopeSpec(BaseModel):
    """A scope as written: ``{"task": ..., "tools": {name: {"when": ..., "why": ...}}}``.

    Shorthands: a list of tool names, or a tool mapped to its condition (a string) or to null."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: Annotated[str, Field(max_length=2_000)] = ""  # the task, in a few words
    tools: dict[_Name, ScopeTool] = Field(default_factory=dict, max_length=MAX_TOOLS)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            value = {"tools": list(value)}
        if isinstance(value, Mapping) and isinstance(value.get("tools"), (list, tuple)):
            return {**value, "tools": dict.fromkeys(value["tools"])}
        return value


def json_schema(tools: list[str] | None = None) -> dict[str, Any]:
    """The JSON schema a planner's answer must fit (tool names limited to ``tools``, if given)."""
    tool: dict[str, Any] = {
        "type": "object",
        "properties": {
            "when": {"type": ["string", "null"], "description": "CEL condition on args, or null"},
            "why": {"type": "string", "description": "what in the request calls for this tool"},
        },
        "additionalProperties": False,
    }
    names: dict[str, Any] = {"type": "object", "additionalProperties": tool}
    if tools is not None:
        names = {"type": "object", "properties": dict.fromkeys(tools, tool), "additionalProperties": False}
    return {
        "title": "scope",
        "type": "object",
        "properties": {"task": {"type": "string"}, "tools": names},
        "required": ["task", "tools"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Scope:
    """A checked scope, its conditions compiled, ready to hold a session's calls to."""

    spec: ScopeSpec
    origin: str  # "application", or "planner:<name>"
    conditions: dict[str, Condition | None] = field(repr=False)
    late: bool = False  # set after untrusted content had entered the session (flagged)
    failed: str | None = None  # why there is no scope (a planner failed)
    closed: bool = False  # with ``failed``: the policy fails closed, every risky call is denied

    def describe(self) -> str:
        if self.failed:
            return f"no scope ({self.failed})"
        tools = ", ".join(sorted(self.conditions)) or "no risky tools"
        task = f"task {self.spec.task!r}, " if self.spec.task else ""
        return f"{task}in scope: {tools} (from {self.origin})"

    def record(self) -> dict[str, Any]:
        """The scope as its audit event records it (enough to rebuild it after a restart)."""
        return {
            "origin": self.origin,
            "task": self.spec.task,
            "tools": {name: tool.model_dump(exclude_defaults=True) for name, tool in self.spec.tools.items()},
            "late": self.late or None,
            "failed": self.failed,
            "closed": self.closed or None,
        }


def parse(value: Any) -> ScopeSpec:
    """A :class:`ScopeSpec` from a mapping, a list of tool names, JSON text or a spec."""
    import json

    if isinstance(value, ScopeSpec):
        return value
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ScopeError([f"not JSON: {exc}"]) from None
    try:
        return ScopeSpec.model_validate(value)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'scope'}: {e['msg']}" for e in exc.errors()]
        raise ScopeError(problems) from None


def build(value: Any, policy: CompiledPolicy, agent: str, origin: str = "application") -> Scope:
    """Check a scope against the policy and compile it; raise :class:`ScopeError` listing every
    problem: an unknown tool, a tool the policy does not grant ``agent`` (a scope cannot widen
    the policy), a condition that does not compile."""
    spec = parse(value)
    known = policy.policy.tools
    agent_spec = policy.policy.agents.get(agent)
    problems: list[str] = []
    conditions: dict[str, Condition | None] = {}
    for name, tool in spec.tools.items():
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            problems.append(f"unknown tool {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        if agent_spec is None or name not in agent_spec.tools:
            problems.append(f"tool {name!r} is not granted to agent {agent!r}: a scope cannot widen the policy")
            continue
        try:
            conditions[name] = compile_condition(tool.when) if tool.when is not None else None
        except ConditionError as exc:
            at = f" at column {exc.column}" if exc.column else ""
            problems.append(f"condition of {name!r} does not compile{at}: {exc}")
    if problems:
        raise ScopeError(problems)
    risky = {name: c for name, c in conditions.items() if policy.risky.intersection(known[name].effects)}
    return Scope(spec, origin, risky)


def failed(reason: str, origin: str, *, closed: bool) -> Scope:
    """No scope, and why: held closed (every risky call denied) or run unscoped with a finding."""
    return Scope(ScopeSpec(), origin, {}, failed=reason, closed=closed)


def rebuild(recorded: Mapping[str, Any], policy: CompiledPolicy, agent: str) -> Scope:
    """A scope from its audit event (a session reopened in another process)."""
    origin = str(recorded.get("origin") or "application")
    if recorded.get("failed"):
        return failed(str(recorded["failed"]), origin, closed=bool(recorded.get("closed")))
    try:
        scope = build({"task": recorded.get("task", ""), "tools": recorded.get("tools", {})}, policy, agent, origin)
    except ScopeError as exc:  # the policy changed since: hold the session closed rather than unscoped
        return failed(f"the recorded scope no longer fits the policy: {exc}", origin, closed=True)
    return Scope(scope.spec, origin, scope.conditions, late=bool(recorded.get("late")))


@dataclass(frozen=True)
class Check:
    """What a scope says of one call."""

    ruling: Ruling | None  # None: the scope does not hold the call
    in_scope: bool  # the call is one the scope covers (not merely one it does not concern)
    finding: str | None = None


Bind = Callable[[Names], dict[str, Any]]


def check(scope: Scope | None, policy: CompiledPolicy, tool: str, bind: Bind) -> Check:
    """Whether ``scope`` covers a call; ``bind`` builds the CEL variables a condition reads."""
    spec = policy.policy.tools.get(tool)
    if scope is None or spec is None or not policy.risky.intersection(spec.effects):
        return Check(None, False)
    if scope.failed:
        if not scope.closed:
            return Check(None, False, f"{SCOPE_RULE}: this session runs without a scope: {scope.failed}")
        reason = f"this session has no scope and the policy fails closed: {scope.failed}"
        return Check(Ruling(Verdict.DENY, reason, (SCOPE_RULE,)), False, f"{SCOPE_RULE}: {reason}")
    if tool not in scope.conditions:
        return _outside(scope, policy, f"{tool!r} is not one of the tools this task may use")
    condition = scope.conditions[tool]
    if condition is not None:
        try:
            holds = evaluate(condition, bind(condition.names))
        except ConditionFailed as exc:
            reason = f"the scope's condition on {tool!r} could not be evaluated: {exc} (denied to stay safe)"
            return Check(Ruling(Verdict.DENY, reason, (SCOPE_RULE,), error=str(exc)), False, f"{SCOPE_RULE}: {reason}")
        if not holds:
            return _outside(scope, policy, f"the scope's condition on {tool!r} does not hold: {condition.source}")
    if scope.late:
        return Check(None, True, f"{SCOPE_RULE}: the scope was set after untrusted content entered the session")
    return Check(None, True)


def _outside(scope: Scope, policy: CompiledPolicy, why: str) -> Check:
    reason = f"outside this session's scope: {why}; {scope.describe()}"
    outcome = policy.policy.scopes.out_of_scope
    ruling = None if outcome == "allow" else Ruling(Verdict(outcome), reason, (SCOPE_RULE,))
    return Check(ruling, False, f"{SCOPE_RULE}: {reason}")
