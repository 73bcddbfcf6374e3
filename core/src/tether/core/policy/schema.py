"""The policy schema: what a security engineer writes, validated strictly.

Unknown keys are errors everywhere (a misspelt key must never silently drop a rule), and
shorthands are normalised before validation so error paths match the YAML the user wrote.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, model_validator


class Effect(str, enum.Enum):
    """What calling a tool does to the world."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    EXTERNAL = "external"  # reaches people or systems outside the organisation
    IRREVERSIBLE = "irreversible"
    MONEY = "money"  # moves money
    EXECUTE = "execute"  # runs code or commands


class Trust(str, enum.Enum):
    """Whether a tool's output may steer the agent (``untrusted``: web pages, email, documents...)."""

    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"


class Mode(str, enum.Enum):
    ENFORCE = "enforce"
    MONITOR = "monitor"  # decide and audit everything, enforce nothing


class Verdict(str, enum.Enum):
    """What a rule says, and what a decision concludes."""

    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"
    REDACT = "redact"


_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hour|d|day)s?\s*$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|sec|m|min|h|hour|d|day)s?\s*$")


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``1h``, ``2d``, ``500ms`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class Rate(BaseModel):
    """At most ``calls`` within any ``per_seconds`` window, written ``20/min`` or ``5/10s``."""

    model_config = ConfigDict(frozen=True)
    calls: PositiveInt
    per_seconds: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _RATE.match(value)
            if not match:
                raise ValueError(f"expected a rate such as 20/min, 100/h or 5/10s, got {value!r}")
            count = float(match.group(2) or 1)
            return {"calls": int(match.group(1)), "per_seconds": count * _UNITS[match.group(3)]}
        return value

    def __str__(self) -> str:
        return f"{self.calls}/{self.per_seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
DataClass = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
ArgPath = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]
Cel = Annotated[str, Field(min_length=1, max_length=10_000)]
GroupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Call limits, counted per session."""

    max_calls: PositiveInt | None = None
    rate: Rate | None = None


class ToolSpec(_Strict):
    """What a tool is: what it does and whether its output can be trusted."""

    description: str = ""
    effects: list[Effect] = []
    output: Trust = Trust.TRUSTED
    data: list[DataClass] = []  # data classes its output can carry
    accepts: list[DataClass] = []  # data classes its arguments may carry out (for external tools)


class Grant(_Strict):
    """An agent's permission to use one tool, with optional conditions and limits."""

    when: Cel | None = None  # granted only while this holds
    ask: bool | Cel = False  # needs a person's approval (always, or when this holds)
    redact: list[ArgPath] = []  # arguments replaced before the tool sees them
    reason: str | None = None  # said when the grant does not apply
    max_calls: PositiveInt | None = None
    rate: Rate | None = None
    approvers: list[GroupName] | None = None  # groups whose members may approve (default: anyone)
    approve_for_session: bool = False  # approvers may approve all such calls for the rest of the session

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value is None or value is True or value == "allow":
            return {}
        if value == "ask":
            return {"ask": True}
        if isinstance(value, (str, bool)):
            raise ValueError(f"expected 'allow', 'ask' or a mapping of settings, got {value!r}")
        return value


class AgentSpec(_Strict):
    """An agent: who owns it, what it is for, what it may touch."""

    purpose: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    #: clearance: the data classes it may receive (None, key left out: any; []: none)
    data: list[DataClass] | None = None
    tools: dict[Name, Grant] = {}
    limits: Limits = Limits()


class Rule(_Strict):
    """A rule over many agents and tools; selectors left out match everything."""

    id: RuleId
    reason: str = Field(min_length=1)
    action: Verdict
    agents: list[str] | None = None  # names or glob patterns
    tools: list[str] | None = None  # names or glob patterns
    effects: list[Effect] | None = None  # matches tools with any of these effects
    when: Cel | None = None
    redact: list[ArgPath] = []
    approvers: list[GroupName] | None = None  # for action 'ask': groups whose members may approve
    approve_for_session: bool = False  # for action 'ask'

    @model_validator(mode="after")
    def _action_specific_keys(self) -> Rule:
        if self.action is Verdict.REDACT and not self.redact:
            raise ValueError("a rule with action 'redact' must list the arguments to redact")
        if self.redact and self.action is not Verdict.REDACT:
            raise ValueError("'redact' is only meaningful with action 'redact'")
        if (self.approvers is not None or self.approve_for_session) and self.action is not Verdict.ASK:
            raise ValueError("'approvers' and 'approve_for_session' are only meaningful with action 'ask'")
        return self


class Approvals(_Strict):
    timeout: Duration = 300.0  # an unanswered request is denied after this long
    #: who may approve: group name -> the identities (as approvers sign in) in it
    groups: dict[GroupName, list[Annotated[str, Field(min_length=1)]]] = {}


Outcome = Literal["deny", "ask", "allow"]  # 'allow': record the finding, let the call through
PinOutcome = Literal["hide", "ask", "allow"]  # 'hide': not listed, and calls to it are denied


class Protections(_Strict):
    """Tether's built-in checks, and what each concludes when it fires."""

    #: the calls that provenance, instructions and egress checks apply to
    risky_effects: list[Effect] = [
        Effect.WRITE,
        Effect.DELETE,
        Effect.EXTERNAL,
        Effect.IRREVERSIBLE,
        Effect.MONEY,
        Effect.EXECUTE,
    ]
    #: an argument value of a risky call found in untrusted content and in nothing trusted
    injected_arguments: Outcome = "ask"
    #: a risky call after untrusted content that reads like instructions to the agent
    instructions: Outcome = "ask"
    #: data classes found in the arguments of an external tool that does not accept them
    egress: dict[DataClass, Outcome] = {"secret": "deny"}
    #: data classes outside an agent's clearance ('data') in what a tool returns to it
    clearance: Literal["redact", "deny", "allow"] = "redact"
    #: a sensitive value (pii, secret) seen in another session, or another tenant's session
    cross_session: Literal["redact", "deny", "allow"] = "deny"
    isolation: Literal["tenant", "session"] = "tenant"
    #: an MCP tool whose description or schema changed since it was pinned (a "rug pull"),
    #: until someone approves the change (``tether mcp pins approve``)
    changed_tools: PinOutcome = "hide"
    #: an MCP tool whose description or schema reads like instructions to the model, hides
    #: characters or carries a secret ("tool poisoning"), until someone approves it
    suspicious_tools: PinOutcome = "hide"


class Scopes(_Strict):
    """What a session's task scope concludes (see scopes.py)."""

    #: a risky call outside the session's scope ('allow': record the finding only)
    out_of_scope: Outcome = "ask"
    #: a planner that fails (malformed output, widening, timeout): 'unscoped' runs the session
    #: without a scope and records a finding on each risky call; 'deny' denies its risky calls
    planner_failure: Literal["unscoped", "deny"] = "unscoped"
    #: a scope set after untrusted content entered the session: 'refuse' it, or 'flag' it and
    #: record that on each decision it makes
    late: Literal["refuse", "flag"] = "refuse"
    planner_timeout: Duration = 30.0  # a planner that takes longer has failed


# -- behaviour over time: sequence rules and anomalies (compiled in sequences.py) ------------


def _one_or_more(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


T = TypeVar("T")
OneOrMore = Annotated[list[T], BeforeValidator(_one_or_more)]  # `x` or `[x, y]`

MAX_WINDOW_CALLS = 100_000
MAX_WINDOW_SECONDS = 366 * 86400.0
_CALLS = re.compile(r"^\s*(\d+)\s*calls?\s*$")


class Window(BaseModel):
    """How far back a sequence looks: ``10 calls``, a duration (``30m``), or ``session``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    calls: int | None = None  # the pattern began at most this many calls before the attempted one
    seconds: float | None = None  # ... at most this long before it
    # neither: anywhere in the session

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                raise ValueError(f"say '{value} calls' or a duration such as '{value}m' (or 'session')")
            return value
        if value.strip() == "session":
            return {}
        match = _CALLS.match(value)
        if match:
            return {"calls": int(match.group(1))}
        if not _DURATION.match(value):
            raise ValueError(f"expected '10 calls', a duration such as '30m', or 'session', got {value!r}")
        return {"seconds": parse_duration(value)}  # says so if it is zero

    @model_validator(mode="after")
    def _bounded(self) -> Window:
        if self.calls is not None and not 1 <= self.calls <= MAX_WINDOW_CALLS:
            raise ValueError(f"a window spans 1 to {MAX_WINDOW_CALLS} calls; use 'session' for the whole session")
        if self.seconds is not None and not 0 < self.seconds <= MAX_WINDOW_SECONDS:
            raise ValueError("a window lasts more than 0 seconds and at most a year; use 'session'")
        if self.calls is not None and self.seconds is not None:
            raise ValueError("a window counts calls or time, not both")
        return self

    def __str__(self) -> str:
        if self.calls is not None:
            return f"{self.calls} calls"
        return f"{self.seconds:g}s" if self.seconds is not None else "session"


class SequenceStep(_Strict):
    """Something that happened earlier in the session: a tool call that ran, or a tool's output.

    Every key given must hold. ``findings`` match calls only (findings are on decisions);
    ``output: untrusted`` matches outputs only; ``data`` matches classes in either.
    """

    tools: OneOrMore[str] | None = None  # names or glob patterns
    effects: OneOrMore[Effect] | None = None  # the tool has any of these
    output: Literal["untrusted"] | None = None  # an untrusted tool's output
    data: OneOrMore[DataClass] | None = None  # any of these classes, in the output or the arguments
    findings: OneOrMore[str] | None = None  # the call's decision carried any of these findings

    @model_validator(mode="after")
    def _says_something(self) -> SequenceStep:
        if not any(v is not None for v in (self.tools, self.effects, self.output, self.data, self.findings)):
            raise ValueError("a step must say what happened: tools, effects, output, data or findings")
        if self.findings is not None and self.output is not None:
            raise ValueError("can never match: findings are on calls, 'output: untrusted' on outputs")
        return self


class SequenceCall(_Strict):
    """The call being attempted; keys left out match any call."""

    agents: OneOrMore[str] | None = None  # names or glob patterns
    tools: OneOrMore[str] | None = None
    effects: OneOrMore[Effect] | None = None
    data: OneOrMore[DataClass] | None = None  # any of these classes in its arguments
    when: Cel | None = None  # CEL over args, session and now
    #: an argument carries a value from the output the last step of the pattern matched
    #: (true: any argument; or the arguments to look in)
    carries: bool | list[ArgPath] = False


class SequenceRule(_Strict):
    """An ordered pattern over a session's history and the call it makes suspect.

    ``after``: the steps happened, in this order, within the window; ``without``: they did not.
    """

    id: RuleId
    reason: str = Field(min_length=1)
    action: Literal["ask", "deny", "redact"]
    after: list[SequenceStep] = Field(default=[], max_length=16)
    without: list[SequenceStep] = Field(default=[], max_length=16)
    then: SequenceCall = SequenceCall()
    within: Window = Window()
    redact: list[ArgPath] = []

    @model_validator(mode="after")
    def _one_pattern(self) -> SequenceRule:
        if bool(self.after) == bool(self.without):
            raise ValueError("a sequence needs exactly one of 'after' (what happened) or 'without' (what did not)")
        if self.action == "redact" and not self.redact:
            raise ValueError("a sequence with action 'redact' must list the arguments to redact")
        if self.redact and self.action != "redact":
            raise ValueError("'redact' is only meaningful with action 'redact'")
        return self


class Anomalies(_Strict):
    """What a departure from an agent's learned baseline concludes (``allow``: record only)."""

    new_tool: Outcome = "allow"  # a tool this agent never used
    new_destination: Outcome = "allow"  # an external destination never seen for this agent
    volume: Outcome = "allow"  # more calls in a session than any learned session made
    burst: Outcome = "allow"  # more calls within a minute than any learned session made
    destinations: Literal["address", "domain"] = "address"  # what counts as the same destination
    max_age: Duration = 30 * 86400.0  # an older baseline is stale: checks are skipped
    min_sessions: PositiveInt = 20  # a baseline learned from fewer sessions is not used
    refresh: Duration = 60.0  # how often a process re-reads baselines from the store


class DataClassSpec(_Strict):
    """A data class of the organisation's own: what its values look like (RE2 patterns)."""

    description: str = ""
    patterns: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(min_length=1)


def mcp_tool(server: str, tool: str) -> str:
    """The name a policy gives a tool served by an MCP server: ``server/tool``."""
    return f"{server}/{tool}"


class Policy(_Strict):
    """A whole policy. Build one from YAML with :func:`tether.core.load_policy` or in Python."""

    version: Literal[1]
    mode: Mode = Mode.ENFORCE
    default: Literal["deny", "ask"] = "deny"  # for calls that no grant allows
    approvals: Approvals = Approvals()
    tools: dict[Name, ToolSpec] = {}
    agents: dict[Name, AgentSpec] = {}
    rules: list[Rule] = []
    protections: Protections = Protections()
    scopes: Scopes = Scopes()  # task scopes: the risky tools a session's task may use
    classes: dict[DataClass, DataClassSpec] = {}  # custom data classes, detected like the built-in ones
    sequences: list[SequenceRule] = []  # patterns over a session's history
    anomalies: Anomalies | None = None  # departures from learned baselines (None: not checked)

    @model_validator(mode="before")
    @classmethod
    def _mcp_output_is_untrusted(cls, value: Any) -> Any:
        """A tool from an MCP server (``server/tool``) is someone else's code and data: its output
        is untrusted unless the policy says ``output: trusted``."""
        tools = value.get("tools") if isinstance(value, dict) else None
        if not isinstance(tools, dict) or not any("/" in str(name) for name in tools):
            return value

        def with_default(name: Any, spec: Any) -> Any:
            if "/" in str(name) and isinstance(spec, dict) and "output" not in spec:
                return {**spec, "output": Trust.UNTRUSTED.value}
            return spec

        return {**value, "tools": {name: with_default(name, spec) for name, spec in tools.items()}}
