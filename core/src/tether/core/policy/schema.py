"""The policy schema: what a security engineer writes, validated strictly.

Unknown keys are errors everywhere (a misspelt key must never silently drop a rule), and
shorthands are normalised before validation so error paths match the YAML the user wrote.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

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
    classes: dict[DataClass, DataClassSpec] = {}  # custom data classes, detected like the built-in ones

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
