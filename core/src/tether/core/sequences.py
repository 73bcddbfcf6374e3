"""Sequence rules: ordered patterns over a session's history, decided in constant time.

"A read of personal data followed by an external send within ten calls needs approval" is a
pattern of steps (what happened, in order) and an attempted call. Each rule is compiled into a
small state machine kept per session: for every prefix of its steps, the start (call number and
time) of the most recent way the session has matched that prefix (rules whose patterns begin
alike share it). An event advances only the prefixes it matches, and a decision reads only the
rules whose attempted call can select its agent and tool, so neither depends on how long the
session is.

Keeping the *most recent* start is enough for every window: a window bounds how long ago the
pattern began, and a later start is always at least as good. A negative rule (``without``)
fires when no match lies within its window.

The state is a function of the session's audit events, built by :meth:`History.observe` from
each event as it is written and, in a process that did not see them, from the stored events
(:meth:`tether.core.state.SessionState.replay`): the audit remains the only source of truth.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
import fnmatch
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .audit.events import Kind, NewEvent
from .classify import DETECTORS
from .expr import Condition, ConditionError, ConditionFailed, compile_condition, evaluate, select
from .policy.loader import KeyPath, Source
from .policy.schema import Effect, Policy, SequenceCall, SequenceRule, SequenceStep, ToolSpec, Trust, Window
from .provenance import argument_values, fingerprints

if TYPE_CHECKING:
    from .errors import PolicyIssue
    from .state import SessionState

#: findings a decision can carry, by id (protections, then anomalies)
PROTECTION_FINDINGS = ("tether.injected-argument", "tether.instructions", "tether.egress")
ANOMALY_FINDINGS = ("tether.new-tool", "tether.new-destination", "tether.volume", "tether.burst")
BURST_SECONDS = 60.0  # the window a burst is counted in

_CALL, _OUTPUT = 0, 1
_CACHE_SIZE = 4096  # tool and agent names can come from a model: bound what is cached per name
_MAX_CARRIED = 50_000  # values remembered per 'carries' rule and session (the oldest go first)
_MAX_ASKED = 1024  # asked calls remembered until their approval arrives
_MAX_RECENT = 100_000  # call times kept per agent for the burst check (a minute's worth at most)
_NONE: frozenset[str] = frozenset()

Stamp = tuple[int, float]  # (calls let through so far, time): where in the session an event sits


class Hit(NamedTuple):
    """A sequence rule that fired on a call (``error``: its condition failed, so it denies)."""

    action: str
    rule_id: str
    reason: str
    redact: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class _Step:  # compares by value: rules whose patterns begin alike share their state
    tools: tuple[str, ...] | None  # patterns
    effects: frozenset[Effect] | None
    untrusted: bool
    data: frozenset[str] | None
    findings: frozenset[str] | None

    @property
    def on_calls(self) -> bool:
        return not self.untrusted

    @property
    def on_outputs(self) -> bool:
        return self.findings is None


@dataclass(frozen=True, eq=False)
class _Rule:
    id: str
    action: str
    reason: str
    steps: tuple[_Step, ...]
    negative: bool  # 'without': fires when the steps did not happen
    window: Window
    calls: int | None  # the window's bounds, as plain numbers for the hot path
    seconds: float | None
    agents: tuple[str, ...] | None
    tools: tuple[str, ...] | None
    effects: frozenset[Effect] | None
    data: frozenset[str] | None
    condition: Condition | None
    carries: tuple[str, ...] | None  # None: no; (): any argument; else these argument paths
    redact: tuple[str, ...]


def _selects(
    patterns: tuple[str, ...] | None, effects: frozenset[Effect] | None, tool: str, spec: ToolSpec | None
) -> bool:
    if patterns is not None and not any(fnmatch.fnmatchcase(tool, p) for p in patterns):
        return False
    return effects is None or (spec is not None and not effects.isdisjoint(spec.effects))


class SequenceProgram:
    """A policy's sequence rules, compiled; shared by every session. Build with :func:`compile_sequences`.

    Which steps an event advances, and which rules a call can fire, depend only on a few facts
    (the tool, the data classes, the findings, whether the output is untrusted), so each answer
    is worked out once and kept: the hot path then touches only the steps and rules that apply.
    """

    def __init__(self, rules: list[_Rule], tools: Mapping[str, ToolSpec], *, track_rate: bool) -> None:
        self.rules = rules
        self.track_rate = track_rate  # the anomaly checks need recent call times
        self._tools = tools
        # One slot per distinct prefix of the rules' patterns (shared by the rules that begin
        # alike): its step, the slot of the prefix before it, its length.
        self.slots: list[tuple[_Step, int, int]] = []
        self.last: list[int] = []  # for each rule, the slot of its whole pattern
        known: dict[tuple[_Step, ...], int] = {}
        for rule in rules:
            parent = -1
            for j, step in enumerate(rule.steps):
                slot = known.get(rule.steps[: j + 1])
                if slot is None:
                    slot = known[rule.steps[: j + 1]] = len(self.slots)
                    self.slots.append((step, parent, j))
                parent = slot
            self.last.append(parent)
        self.carrying = frozenset(self.last[r] for r, rule in enumerate(rules) if rule.carries is not None)
        self._observers: dict[tuple[Any, ...], tuple[tuple[int, int, bool], ...]] = {}
        self._candidates: dict[tuple[str, str, frozenset[str]], tuple[int, ...]] = {}
        self._declared: dict[str, frozenset[str]] = {name: frozenset(spec.data) for name, spec in tools.items()}
        self._lock = threading.Lock()

    def observers(
        self, kind: int, tool: str, labels: frozenset[str], found: frozenset[str], untrusted: bool
    ) -> tuple[tuple[int, int, bool], ...]:
        """(slot, previous slot, keeps carried values) for each slot such an event matches, longer
        prefixes first (so each reads the shorter prefix's state from before the event)."""
        key = (kind, tool, labels, found, untrusted)
        matched = self._observers.get(key)
        if matched is None:
            spec = self._tools.get(tool)
            slots = sorted(range(len(self.slots)), key=lambda slot: -self.slots[slot][2])
            matched = tuple(
                (slot, self.slots[slot][1], kind == _OUTPUT and slot in self.carrying)
                for slot in slots
                if _step_matches(self.slots[slot][0], kind, tool, spec, labels, found, untrusted)
            )
            self._remember(self._observers, key, matched)
        return matched

    def candidates(self, agent: str, tool: str, labels: frozenset[str]) -> tuple[int, ...]:
        """The rules whose attempted call can be ``agent`` calling ``tool`` with ``labels``."""
        key = (agent, tool, labels)
        found = self._candidates.get(key)
        if found is None:
            spec = self._tools.get(tool)
            found = tuple(
                r
                for r, rule in enumerate(self.rules)
                if (rule.agents is None or any(fnmatch.fnmatchcase(agent, p) for p in rule.agents))
                and _selects(rule.tools, rule.effects, tool, spec)
                and (rule.data is None or not rule.data.isdisjoint(labels))
            )
            self._remember(self._candidates, key, found)
        return found

    def declared_data(self, tool: str) -> frozenset[str]:
        return self._declared.get(tool, frozenset())

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            if len(cache) >= _CACHE_SIZE:  # names and label sets come from outside: bound the cache
                cache.pop(next(iter(cache)), None)
            cache[key] = value


def _step_matches(
    step: _Step,
    kind: int,
    tool: str,
    spec: ToolSpec | None,
    labels: frozenset[str],
    found: frozenset[str],
    untrusted: bool,
) -> bool:
    if not (step.on_calls if kind == _CALL else step.on_outputs):
        return False
    if step.untrusted and not untrusted:
        return False
    if step.data is not None and step.data.isdisjoint(labels):
        return False
    if step.findings is not None and step.findings.isdisjoint(found):
        return False
    return _selects(step.tools, step.effects, tool, spec)


class History:
    """One session's place in every sequence rule, and its recent call times. Guarded by the
    session's lock (see :class:`~tether.core.state.SessionState`)."""

    def __init__(self, program: SequenceProgram) -> None:
        self.program = program
        self.calls = 0  # calls let through so far, by any agent of the session
        self._best: list[Stamp | None] = [None] * len(program.slots)  # each prefix's most recent start
        self._carried: dict[int, OrderedDict[str, Stamp]] = {slot: OrderedDict() for slot in program.carrying}
        self._asked: OrderedDict[str, tuple[frozenset[str], frozenset[str]]] = OrderedDict()
        self._recent: dict[str, deque[float]] = {}

    # -- what happened -----------------------------------------------------------------------

    def observe(self, event: NewEvent, details: Mapping[str, Any] | None = None) -> None:
        """Advance on one audit event (``details``: its parsed details, if the caller has them)."""
        kind, agent, tool = event.kind, event.agent, event.tool
        if agent is None or tool is None:
            return
        ts = event.ts_us / 1e6
        if kind == Kind.APPROVAL:
            labels, found = self._asked.pop(event.parent_id or "", (_NONE, _NONE))
            if event.verdict == "allow":
                self._call(agent, tool, labels, found, ts)
            return
        if kind not in (Kind.TOOL_DECISION, Kind.TOOL_RESULT):
            return
        if details is None:
            details = json.loads(event.data)
        written = details.get("labels")
        labels = frozenset(written) if written else _NONE
        if kind == Kind.TOOL_RESULT:
            labels |= self.program.declared_data(tool)  # what the tool is declared to return counts too
            matched = self.program.observers(_OUTPUT, tool, labels, _NONE, bool(details.get("untrusted")))
            if matched:
                self._advance(matched, (self.calls, ts), details.get("values") or ())
        elif details.get("allowed"):
            self._call(agent, tool, labels, finding_ids(details.get("findings")), ts)
        elif event.verdict == "ask":  # it runs if approved: remember what it carried until then
            self._asked[event.event_id] = (labels, finding_ids(details.get("findings")))
            if len(self._asked) > _MAX_ASKED:
                self._asked.popitem(last=False)

    def _call(self, agent: str, tool: str, labels: frozenset[str], found: frozenset[str], ts: float) -> None:
        self.calls += 1
        matched = self.program.observers(_CALL, tool, labels, found, False)
        if matched:
            self._advance(matched, (self.calls, ts), ())
        if self.program.track_rate:
            times = self._recent.get(agent)
            if times is None:
                times = self._recent[agent] = deque(maxlen=_MAX_RECENT)
            times.append(ts)
            while times[0] < ts - BURST_SECONDS:
                times.popleft()

    def _advance(self, matched: tuple[tuple[int, int, bool], ...], stamp: Stamp, values: Iterable[str]) -> None:
        best = self._best
        for slot, parent, carries in matched:
            start = stamp if parent < 0 else best[parent]
            if start is None:
                continue
            best[slot] = start  # never older than what it replaces: starts only move forward
            if carries:
                carried = self._carried[slot]
                for fp in values:
                    carried[fp] = start
                    carried.move_to_end(fp)
                while len(carried) > _MAX_CARRIED:
                    carried.popitem(last=False)

    def recent_calls(self, agent: str, now: float) -> int:
        """Calls ``agent`` made in this session in the last minute."""
        times = self._recent.get(agent)
        if not times:
            return 0
        cutoff = now - BURST_SECONDS
        if times[0] >= cutoff:  # the usual case: each call drops the times a minute older than it
            return len(times)
        return len(times) - bisect.bisect_left(times, cutoff)

    # -- what it means for a call ------------------------------------------------------------

    def check(
        self,
        state: SessionState,
        agent: str,
        tool: str,
        args: Mapping[str, Any],
        labels: frozenset[str],
        now: float,
        key: bytes,
        user: str | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """The sequence rules that fire if ``agent`` calls ``tool`` now. Does not change anything."""
        candidates = self.program.candidates(agent, tool, labels)
        if not candidates:
            return []
        hits: list[Hit] = []
        upcoming = self.calls + 1
        rules, last, best = self.program.rules, self.program.last, self._best
        values: dict[tuple[str, ...], set[str]] = {}  # argument fingerprints, worked out once per call
        for r in candidates:
            rule = rules[r]
            if rule.carries is None:
                start = best[last[r]]
                matched = start is not None and (
                    upcoming - start[0] <= rule.calls
                    if rule.calls is not None
                    else now - start[1] <= rule.seconds
                    if rule.seconds is not None
                    else True
                )
            else:
                matched = self._carried_within(r, rule, args, upcoming, now, key, values)
            if matched is rule.negative:
                continue
            if rule.condition is not None:
                try:
                    if not evaluate(rule.condition, _variables(rule.condition, state, agent, args, now, user, tenant)):
                        continue
                except ConditionFailed as exc:
                    message = f"condition of sequence {rule.id} could not be evaluated: {exc}"
                    hits.append(Hit("deny", rule.id, message + " (denied to stay safe)", (), message))
                    continue
            hits.append(Hit(rule.action, rule.id, rule.reason, rule.redact))
        return hits

    def _carried_within(
        self,
        r: int,
        rule: _Rule,
        args: Mapping[str, Any],
        upcoming: int,
        now: float,
        key: bytes,
        values: dict[tuple[str, ...], set[str]],
    ) -> bool:
        carried = self._carried[self.program.last[r]]
        if not carried:
            return False
        paths = rule.carries or ()
        fps = values.get(paths)
        if fps is None:
            parts: list[Any] = [_at(args, path) for path in paths] if paths else [args]
            fps = values[paths] = {fp for part in parts for fp in fingerprints(key, argument_values(part))}
        return any(_within(rule, carried.get(fp), upcoming, now) for fp in fps)


def _within(rule: _Rule, start: Stamp | None, upcoming: int, now: float) -> bool:
    """Whether a match that began at ``start`` lies within the rule's window (as in :meth:`History.check`)."""
    if start is None:
        return False
    if rule.calls is not None:
        return upcoming - start[0] <= rule.calls
    if rule.seconds is not None:
        return now - start[1] <= rule.seconds
    return True


def _at(args: Mapping[str, Any], path: str) -> Any:
    value: Any = args
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _variables(
    condition: Condition,
    state: SessionState,
    agent: str,
    args: Mapping[str, Any],
    now: float,
    user: str | None,
    tenant: str | None,
) -> dict[str, Any]:
    fields = condition.names.fields
    variables: dict[str, Any] = {}
    if "args" in fields:
        variables["args"] = select(args, fields["args"])
    if "session" in fields:
        variables["session"] = state.cel_value(agent, user, tenant, fields["session"])
    if "now" in fields:
        variables["now"] = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return variables


def finding_ids(findings: Iterable[str] | None) -> frozenset[str]:
    """The ids of a decision's findings (each recorded as ``"id: reason"``)."""
    return frozenset(f.split(": ", 1)[0] for f in findings) if findings else _NONE


# -- compiling ---------------------------------------------------------------------------------

_CONDITION_VARIABLES = frozenset({"args", "session", "now"})


def compile_sequences(policy: Policy, where: Source, issues: list[PolicyIssue]) -> SequenceProgram | None:
    """The policy's sequence rules as a program (None when there is nothing to track); every
    problem is added to ``issues``, located by file and line."""
    if not policy.sequences and policy.anomalies is None:
        return None
    check = _Checker(policy, where, issues)
    rules = [check.rule(("sequences", i), rule) for i, rule in enumerate(policy.sequences)]
    return SequenceProgram([r for r in rules if r is not None], policy.tools, track_rate=policy.anomalies is not None)


class _Checker:
    """Cross-checks sequence rules against the rest of the policy: every name must exist, and a
    rule must be able to match."""

    def __init__(self, policy: Policy, where: Source, issues: list[PolicyIssue]) -> None:
        self.policy, self.where, self.issues = policy, where, issues
        self.tools = policy.tools
        self.classes = {d.label for d in DETECTORS} | set(policy.classes)
        for spec in policy.tools.values():
            self.classes |= set(spec.data) | set(spec.accepts)
        self.findings = set(PROTECTION_FINDINGS) | (set(ANOMALY_FINDINGS) if policy.anomalies is not None else set())
        self.ids = {rule.id for rule in policy.rules}
        self.before = len(issues)

    def problem(self, path: KeyPath, message: str) -> None:
        self.issues.append(self.where.issue(path, message))

    def item(self, path: KeyPath, index: int) -> KeyPath:
        """Where the ``index``-th name of a list is, or the list itself when it was written as one name."""
        values = self.where.values
        return path if path in values and path + (index,) not in values else path + (index,)

    def rule(self, path: KeyPath, rule: SequenceRule) -> _Rule | None:
        self.before = len(self.issues)
        if rule.id in self.ids:
            self.problem(path + ("id",), f"rule id {rule.id!r} is used twice")
        self.ids.add(rule.id)
        negative = bool(rule.without)
        name = "without" if negative else "after"
        pattern = rule.without or rule.after
        steps = [self.step(path + (name, j), step) for j, step in enumerate(pattern)]
        self.attempt(path + ("then",), rule.then)
        condition = self.condition(path + ("then", "when"), rule.then.when)
        if rule.within.calls is not None and rule.within.calls < (len(pattern) + 1) // 2:
            self.problem(
                path + ("within",),
                f"can never match: {len(pattern)} steps span at least {(len(pattern) + 1) // 2} calls, "
                f"more than the window of {rule.within}",
            )
        carries = rule.then.carries
        if carries is not False and pattern[-1].findings is not None:
            self.problem(
                path + ("then", "carries"),
                f"'carries' needs the last step of {name!r} to match a tool's output; findings are on calls",
            )
        if len(self.issues) > self.before:
            return None
        then = rule.then
        return _Rule(
            rule.id,
            rule.action,
            rule.reason,
            tuple(s for s in steps if s is not None),
            negative,
            rule.within,
            rule.within.calls,
            rule.within.seconds,
            _tuple(then.agents),
            _tuple(then.tools),
            frozenset(then.effects) if then.effects is not None else None,
            frozenset(then.data) if then.data is not None else None,
            condition,
            None if carries is False else () if carries is True else tuple(carries),
            tuple(rule.redact),
        )

    def step(self, path: KeyPath, step: SequenceStep) -> _Step:
        selected = self.selection(path, step.tools, step.effects)
        # undeclared tools count as untrusted, but only run where the default is not deny
        pool = selected if selected is not None else set(self.tools) if self.policy.default == "deny" else None
        if step.output is not None and pool and not any(self.tools[t].output is Trust.UNTRUSTED for t in pool):
            self.problem(path + ("output",), "can never match: none of the tools it selects has untrusted output")
        self.known(path + ("data",), step.data, self.classes, "data class")
        for i, finding in enumerate(step.findings or []):
            if finding not in self.findings:
                anomalies = " (anomaly findings need an 'anomalies' section)" if finding in ANOMALY_FINDINGS else ""
                known = ", ".join(sorted(self.findings))
                self.problem(
                    self.item(path + ("findings",), i), f"unknown finding {finding!r}{anomalies}; known: {known}"
                )
        return _Step(
            _tuple(step.tools),
            frozenset(step.effects) if step.effects is not None else None,
            step.output is not None,
            frozenset(step.data) if step.data is not None else None,
            frozenset(step.findings) if step.findings is not None else None,
        )

    def attempt(self, path: KeyPath, then: SequenceCall) -> None:
        self.known(path + ("data",), then.data, self.classes, "data class")
        agents = list(self.policy.agents)
        for i, name in enumerate(then.agents or []):
            if not _is_pattern(name) and name not in self.policy.agents:
                self.problem(self.item(path + ("agents",), i), f"unknown agent {name!r}{_hint(name, agents)}")
        tools = self.selection(path, then.tools, then.effects)
        if self.policy.default != "deny" or len(self.issues) > self.before:
            return
        selected_agents = [
            a for a in agents if then.agents is None or any(fnmatch.fnmatchcase(a, p) for p in then.agents)
        ]
        candidates = tools if tools is not None else set(self.tools)
        if not any(self.granted(a, t) for a in selected_agents for t in candidates):
            self.problem(path, "can never match: no agent it selects is granted a tool it selects (default: deny)")

    def granted(self, agent: str, tool: str) -> bool:
        if tool in self.policy.agents[agent].tools:
            return True
        spec = self.tools.get(tool)
        return any(
            rule.action.value == "allow"
            and (rule.agents is None or any(fnmatch.fnmatchcase(agent, p) for p in rule.agents))
            and _selects(_tuple(rule.tools), frozenset(rule.effects) if rule.effects else None, tool, spec)
            for rule in self.policy.rules
        )

    def selection(self, path: KeyPath, tools: list[str] | None, effects: list[Effect] | None) -> set[str] | None:
        """The declared tools that ``tools`` and ``effects`` select (None: no selector given)."""
        if tools is None and effects is None:
            return None
        for i, name in enumerate(tools or []):
            if not _is_pattern(name) and name not in self.tools:
                self.problem(self.item(path + ("tools",), i), f"unknown tool {name!r}{_hint(name, list(self.tools))}")
        patterns, wanted = _tuple(tools), frozenset(effects) if effects is not None else None
        selected = {t for t, spec in self.tools.items() if _selects(patterns, wanted, t, spec)}
        if not selected and len(self.issues) == self.before:
            what = " and ".join(
                part
                for part in (
                    f"named {', '.join(tools)}" if tools is not None else "",
                    f"with effects {', '.join(e.value for e in effects)}" if effects is not None else "",
                )
                if part
            )
            self.problem(path, f"can never match: no declared tool is {what}")
        return selected

    def known(self, path: KeyPath, names: list[str] | None, known: set[str], kind: str) -> None:
        for i, name in enumerate(names or []):
            if name not in known:
                self.problem(self.item(path, i), f"unknown {kind} {name!r}{_hint(name, sorted(known))}")

    def condition(self, path: KeyPath, text: str | None) -> Condition | None:
        if text is None:
            return None
        try:
            compiled = compile_condition(text)
        except ConditionError as exc:
            at = f" at column {exc.column}" if exc.column else ""
            self.problem(path, f"condition does not compile{at}: {exc}")
            return None
        other = sorted(compiled.names.variables - _CONDITION_VARIABLES)
        if other:
            self.problem(path, f"a sequence's condition reads args, session and now, not {other[0]!r}")
        unknown = sorted(compiled.names.tool_names - set(self.tools))
        if unknown:
            self.problem(path, f"condition refers to unknown tool {unknown[0]!r}{_hint(unknown[0], list(self.tools))}")
        return compiled


def _tuple(values: list[Any] | None) -> tuple[Any, ...] | None:
    return tuple(values) if values is not None else None


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
