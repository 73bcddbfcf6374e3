"""Policy unit tests: YAML files of calls and the decisions a policy must make on them.

A test names an agent, a tool and its arguments, optionally what happened earlier in the session
(the user's request, earlier tool calls and what they returned), and the expected verdict, rule
id or reason. Each test runs through a real :class:`~tether.core.guard.Guard` on a private
in-memory audit store, so it exercises exactly what runs in production: grants, rules, limits,
protections, sequence rules. Nothing is written anywhere else.

    policy: policy.yaml            # relative to this file (or give --policy)
    tests:
      - name: refunds above 100 need a person
        agent: support
        tool: refund
        args: {amount: 250}
        expect: {verdict: ask, rule: big-refund}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .approvals import ApprovalAnswer
from .audit.store import AuditStore
from .decision import Decision
from .errors import PolicyError, PolicyIssue
from .guard import Guard, Session
from .policy.compile import CompiledPolicy, load_policy
from .policy.loader import Source, parse_document
from .policy.schema import Mode, Verdict

TEST_APPROVER = "policy-test"
_KEY = os.urandom(32)  # fingerprints only need to agree within one run


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Expect(_Strict):
    """What the decision must be. ``rule``: an id among the decision's rule ids; ``reason``: a
    fragment of its reason (case does not matter)."""

    verdict: Verdict | None = None
    rule: str | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Expect:
        if self.verdict is None and self.rule is None and self.reason is None:
            raise ValueError("expect needs at least one of verdict, rule, reason")
        return self


def _shorthand(value: Any) -> Any:
    return {"verdict": value} if isinstance(value, str) else value  # expect: deny


class Step(_Strict):
    """Something that happened earlier in the session: trusted input, or a tool call (decided
    under the policy like any other) and, if it ran, what it returned."""

    input: str | None = None  # content from the people the agent serves (a request, a system prompt)
    agent: str | None = None  # default: the test's agent
    tool: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    approved: bool | None = None  # the answer, if the policy asks about this call (unanswered: denied)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.input is None) == (self.tool is None):
            raise ValueError("a history step is either `input: TEXT` or a call with `tool:`")
        return self


class Case(_Strict):
    name: str = Field(min_length=1)
    agent: str = Field(min_length=1)
    tool: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    request: str | None = None  # the user's request: trusted, so values in it may be used
    history: list[Step] = Field(default_factory=list)
    user: str | None = None
    tenant: str | None = None
    expect: Annotated[Expect, BeforeValidator(_shorthand)]


class PolicyTests(_Strict):
    policy: str | None = None
    tests: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class Result:
    case: Case
    file: str
    line: int | None
    decision: Decision | None = None
    problems: tuple[str, ...] = ()  # empty: passed

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Outcome:
    results: list[Result] = field(default_factory=list)
    errors: list[PolicyIssue] = field(default_factory=list)  # test files or policies that could not be read

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.passed for r in self.results)


def read_tests(path: Path) -> tuple[PolicyTests, Source]:
    """A validated test file and its source map; :class:`PolicyError` says what is wrong where."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyIssue(f"cannot read the test file: {exc}", file=str(path))]) from None
    tests, _, where = parse_document(
        text, str(path), PolicyTests, "test file", "a test file must be a mapping (policy, tests)"
    )
    return tests, where


def run_files(paths: list[Path], policy: Path | None = None) -> Outcome:
    """Run every test in ``paths`` against its file's policy (or ``policy`` for all of them)."""
    outcome = Outcome()
    compiled: dict[Path, CompiledPolicy] = {}
    for path in paths:
        try:
            tests, where = read_tests(path)
            policy_path = _policy_for(path, tests, where, policy)
            if policy_path not in compiled:
                compiled[policy_path] = load_policy(policy_path)
        except PolicyError as exc:
            outcome.errors.extend(exc.issues)
            continue
        for index, case in enumerate(tests.tests):
            line = where.values.get(("tests", index), (None, None))[0]
            outcome.results.append(run_case(compiled[policy_path], case, str(path), line))
    return outcome


def _policy_for(path: Path, tests: PolicyTests, where: Source, given: Path | None) -> Path:
    if given is not None:
        return given
    if tests.policy is None:
        raise PolicyError([where.issue((), "no policy: add `policy: FILE` (relative to this file) or pass --policy")])
    return path.parent / tests.policy


def run_case(policy: CompiledPolicy, case: Case, file: str = "<tests>", line: int | None = None) -> Result:
    """Decide on one test's call after replaying its history, on a private in-memory store."""
    store = AuditStore("sqlite://", key=_KEY)
    try:
        guard = Guard(policy, store=store, mode=Mode.ENFORCE)  # a monitored policy is tested for what it decides
        session = guard.session(case.agent, user=case.user, tenant=case.tenant)
        if case.request is not None:
            session.trusted_input(case.request)
        for step in case.history:
            _happen(guard, session, step)
        decision = session.before_tool(case.tool, case.args)
    finally:
        store.close()
    return Result(case, file, line, decision, tuple(mismatches(case.expect, decision)))


def _happen(guard: Guard, session: Session, step: Step) -> None:
    if step.input is not None:
        session.trusted_input(step.input)
        return
    actor = session
    if step.agent is not None and step.agent != session.agent:
        actor = guard.session(step.agent, session.id, user=session.user, tenant=session.tenant)
    decision = actor.before_tool(step.tool or "", step.args)
    if decision.needs_approval:
        answer = ApprovalAnswer(step.approved, TEST_APPROVER) if step.approved is not None else None
        decision = actor.settle(decision, answer, unanswered="the test gives no answer")
    if decision.allowed:
        actor.after_tool(decision, step.output)


def mismatches(expect: Expect, decision: Decision) -> list[str]:
    """How ``decision`` differs from what was expected, one line per difference."""
    out = []
    if expect.verdict is not None and decision.verdict is not expect.verdict:
        out.append(f"verdict: expected {expect.verdict.value}, got {decision.verdict.value}")
    if expect.rule is not None and expect.rule not in decision.rule_ids:
        out.append(f"rule:    expected {expect.rule!r} among {list(decision.rule_ids)}")
    if expect.reason is not None and expect.reason.casefold() not in decision.reason.casefold():
        out.append(f"reason:  expected it to contain {expect.reason!r}")
    return out


def report(outcome: Outcome, echo: Callable[[str], None], verbose: bool = False) -> None:
    """Print each failure as a readable diff, then a summary."""
    for issue in outcome.errors:
        echo(f"ERROR {issue}")
    for result in outcome.results:
        if result.passed:
            if verbose:
                echo(f"ok    {result.where}: {result.case.name}")
            continue
        echo(f"FAIL  {result.where}: {result.case.name}")
        for problem in result.problems:
            echo(f"        {problem}")
        if result.decision is not None:
            d = result.decision
            echo(f"        decided: {d.verdict.value} by {', '.join(d.rule_ids) or '-'}: {d.reason}")
    failed = sum(not r.passed for r in outcome.results)
    summary = f"{len(outcome.results) - failed} passed, {failed} failed"
    if outcome.errors:
        summary += f", {len(outcome.errors)} error{'s' if len(outcome.errors) != 1 else ''} in test files"
    echo(summary)
