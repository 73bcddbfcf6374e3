"""The decision API's request and response bodies. Requests reject unknown fields (with their
path) and carry bounded sizes; the whole body is bounded too (see :mod:`.api`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Text = Annotated[str, StringConstraints(max_length=1_000)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenSession(Request):
    agent: Name | None = Field(default=None, description="must be the credential's agent if given")
    user: Name | None = None
    tenant: Name | None = None
    context: dict[Name, Text] | None = Field(default=None, max_length=32, description="where the agent acts")
    scope: dict[str, Any] | None = Field(
        default=None, description='a task scope, e.g. {"task": "...", "tools": {"send_email": null}}'
    )


class SessionOpened(BaseModel):
    session_id: str
    agent: str
    mode: Literal["enforce", "monitor"] = Field(
        default="enforce", description="monitor: decisions are recorded, not enforced (every call is allowed)"
    )


class ToolCallRequest(Request):
    tool: Name
    args: dict[str, Any] = Field(default_factory=dict, max_length=256)
    call_id: Name | None = None
    caused_by: Name | None = None


Verdict = Literal["allow", "deny", "ask", "redact"]
Status = Literal["decided", "pending"]


class DecisionOut(BaseModel):
    decision_id: str = Field(description="pass to /result once the tool ran")
    verdict: Verdict
    allowed: bool = Field(description="run the tool (with `args`) only if true")
    status: Status = Field(description="pending: a person must answer; poll this decision")
    reason: str
    rule_ids: list[str]
    args: dict[str, Any] | None = Field(description="the arguments to run the tool with, if Tether rewrote them")
    approval_id: str | None = None
    approval_timeout: float | None = Field(
        default=None, description="pending: seconds a person has to answer before the call is denied"
    )
    message: str | None = Field(default=None, description="a refusal the agent can read, when not allowed")
    findings: list[str] = Field(default_factory=list)
    enforcement: Literal["enforced", "monitored"]


class ToolResult(Request):
    output: Any = None
    error: str | None = Field(default=None, max_length=10_000)


class ResultOut(BaseModel):
    output: Any = Field(description="what the agent may see: the output, redacted, or a notice it was withheld")


class ModelRequestIn(Request):
    messages: list[Any] | str = Field(max_length=1_000)
    model: Name | None = None
    parent: Name | None = None


class ModelRequestOut(BaseModel):
    event_id: str
    allowed: bool = Field(description="send `messages` to the model only if true")
    messages: Any
    reason: str


class ModelResponseIn(Request):
    response: Any = None
    tool_calls: list[dict[str, str]] = Field(default_factory=list, max_length=256)
    parent: Name | None = None


class Recorded(BaseModel):
    event_id: str


class EventOut(BaseModel):
    seq: int
    event_id: str
    kind: str
    ts_us: int
    agent: str | None
    tool: str | None
    verdict: str | None
    parent_id: str | None
    details: dict[str, Any]


class AuditOut(BaseModel):
    session_id: str
    events: list[EventOut]
    verified: bool = Field(description="every event of the session matches its hash and the chain is unbroken")
    problems: list[str]


class ErrorOut(BaseModel):
    error: str
    finding: str | None = None
