"""Breakpoint payloads and the answers a person gives when resuming a graph."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langgraph.types import Command, Interrupt
from tether.core import ApprovalAnswer, Decision, Session, UnsupportedValueError
from tether.core.redact import preview
from tether.core.values import to_plain

KIND = "tether.approval"
DEFAULT_APPROVER = "langgraph-resume"
_YES = {"approve", "approved", "accept", "allow", "yes", "y"}
_NO = {"deny", "denied", "reject", "rejected", "no", "n"}


def payload(session: Session, pending: Sequence[Decision]) -> dict[str, Any]:
    """What the interrupt shows: who wants to run what (arguments redacted), and why Tether asks."""
    key = session.guard.store.key
    requests = []
    for decision in pending:
        try:
            shown = preview(to_plain(dict(decision.args), "args"), key).value
        except UnsupportedValueError:  # unreadable arguments are never shown raw
            shown = "[unreadable]"
        requests.append(
            {
                "tool_call_id": decision.call.call_id,
                "tool": decision.call.tool,
                "args": shown,
                "reason": decision.reason,
                "rule_ids": list(decision.rule_ids),
                "decision_id": decision.event_id,
            }
        )
    return {
        "type": KIND,
        "agent": session.agent,
        "session": session.id,
        "requests": requests,
        "resume": "Command(resume='approve' | 'deny' | {tool_call_id: 'approve' | 'deny' | {'args': {...}}})",
    }


def answer_for(value: Any, decision: Decision, position: int) -> ApprovalAnswer | None:
    """The answer a resume value gives one pending call; None when it does not answer it.

    A value may answer every call of the breakpoint at once ('approve', False, {'approved': True})
    or each by its tool_call_id; LangChain's HumanInTheLoopMiddleware shape
    ({'decisions': [{'type': 'approve' | 'edit' | 'reject', ...}]}) is read by position.
    """
    if isinstance(value, Mapping):
        if decision.call.call_id in value:
            value = value[decision.call.call_id]
        elif isinstance(value.get("decisions"), list):
            decisions = value["decisions"]
            value = decisions[position] if position < len(decisions) else None
        elif not _is_answer(value):
            return None
    return _read(value)


def _is_answer(value: Mapping[str, Any]) -> bool:
    return any(k in value for k in ("approved", "decision", "type", "args"))


def _read(value: Any) -> ApprovalAnswer | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return ApprovalAnswer(value, DEFAULT_APPROVER)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _YES or word in _NO:
            return ApprovalAnswer(word in _YES, DEFAULT_APPROVER)
        raise ValueError(f"unreadable answer {value[:40]!r}: use 'approve' or 'deny'")
    if isinstance(value, Mapping):
        return _read_mapping(value)
    raise ValueError(f"unreadable answer of type {type(value).__name__}")


def _read_mapping(value: Mapping[str, Any]) -> ApprovalAnswer:
    kind = str(value.get("type", value.get("decision", ""))).lower()
    args = value.get("args")
    if kind == "edit" and isinstance(value.get("edited_action"), Mapping):  # HumanInTheLoopMiddleware's edit
        args = value["edited_action"].get("args")
    approved = value.get("approved")
    if approved is None:
        approved = kind in _YES or kind == "edit" or (not kind and args is not None)
    if args is not None and not isinstance(args, Mapping):
        raise ValueError("edited arguments must be a mapping of names to values")
    by = str(value.get("approver") or value.get("by") or DEFAULT_APPROVER)
    comment = str(value.get("comment") or value.get("message") or "")
    return ApprovalAnswer(bool(approved), by, comment, dict(args) if args is not None else None)


def pending(graph: Any, config: Mapping[str, Any]) -> list[Interrupt]:
    """Tether's breakpoints waiting in a thread, read from its checkpoint: from any process with
    the same checkpointer, e.g. to show a person what waits. Each interrupt's ``value`` lists its
    calls (``requests``); answer them all with ``graph.invoke(resume(pending(...), answers), config)``."""
    state = graph.get_state(config)
    return [
        item
        for task in state.tasks
        for item in task.interrupts
        if isinstance(item.value, Mapping) and item.value.get("type") == KIND
    ]


def resume(interrupts: Iterable[Interrupt] | Mapping[str, Any], answers: Mapping[str, Any] | Any) -> Command[Any]:
    """A ``Command`` that answers Tether's pending breakpoints, however LangGraph split them.

    ``interrupts`` is ``result["__interrupt__"]`` (or a graph state's ``interrupts``, or the
    invoke result itself); ``answers`` maps tool_call_id to an answer, or is one answer for all.
    Parallel calls that became separate tasks (prebuilt agents, ``create_agent``) each interrupt
    with their own id; this addresses each interrupt by id so one resume decides them all.
    """
    items: Iterable[Any] = interrupts.get("__interrupt__", ()) if isinstance(interrupts, Mapping) else interrupts
    mapping: dict[str, Any] = {}
    for item in items:
        value = item.value
        if not (isinstance(value, Mapping) and value.get("type") == KIND):
            continue
        ids = [r["tool_call_id"] for r in value["requests"]]
        if isinstance(answers, Mapping) and not _is_answer(answers):
            mapping[item.id] = {i: answers[i] for i in ids if i in answers}
        else:
            mapping[item.id] = answers
    return Command(resume=mapping)
