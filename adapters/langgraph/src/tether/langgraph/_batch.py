"""Breakpoints: the calls of one ToolNode task decided together, paused with one ``interrupt()``,
and settled on resume with the decisions recorded before the pause."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables.config import var_child_runnable_config

from langgraph.types import interrupt
from tether.core import Decision, Enforcement, Session, TetherError, ToolCall, UnsupportedValueError, Verdict
from tether.core.decision import redact_args
from tether.core.redact import preview
from tether.core.values import to_plain

from ._answers import answer_for, payload

_SCRATCHPAD, _CHECKPOINTER, _PUSH = "__pregel_scratchpad", "__pregel_checkpointer", "__pregel_push"
_TOOL_DECISION = "tool.decision"

#: decides one call: (session, call) -> the decision recorded for it
DecideOne = Callable[[Session, Mapping[str, Any]], Decision]


class BreakpointError(TetherError):
    """A call needs a person's approval, and the graph cannot pause for it."""


class Batch:
    """The tool calls of one ToolNode task, decided together by whichever thread comes first."""

    def __init__(self, scratchpad: Any, calls: list[Mapping[str, Any]], config: Mapping[str, Any]) -> None:
        self.scratchpad = scratchpad
        self.calls = calls
        self.config = config
        self.lock = threading.Lock()
        self.decisions: dict[str, Decision] | None = None
        self.error: BaseException | None = None
        self._left = len(calls)

    def take(self) -> bool:
        """Count one caller; True when every call of the batch has come (the batch can go)."""
        self._left -= 1
        return self._left <= 0

    def decision(self, session: Session, call: Mapping[str, Any], decide_one: DecideOne) -> Decision:
        with self.lock:
            if self.decisions is None and self.error is None:
                try:
                    self.decisions = self._decide_all(session, decide_one)
                except BaseException as exc:  # noqa: BLE001 - an interrupt too: every call of the task pauses
                    self.error = exc
            if self.error is not None:
                raise self.error
            assert self.decisions is not None
            found = self.decisions.get(_key(call))
        if found is None:  # a call the batch did not foresee: decided on its own
            return decide_one(session, call)
        return found

    def _decide_all(self, session: Session, decide_one: DecideOne) -> dict[str, Decision]:
        resuming = _resuming(self.scratchpad)
        earlier = earlier_decisions(session, self.calls) if resuming else {}
        decisions = {_key(c): earlier.get(_key(c)) or decide_one(session, c) for c in self.calls}
        pending = [d for d in decisions.values() if d.needs_approval]
        # a call decided just now was never shown to anyone: the resume value was given for
        # another breakpoint (the calls as they were before update_state changed them)
        unseen = resuming and any(d.event_id not in {e.event_id for e in earlier.values()} for d in pending)
        if not pending:
            return decisions
        conf = self.config.get("configurable") or {}
        if self.scratchpad is None or conf.get(_CHECKPOINTER) is None:
            raise BreakpointError(
                f"Tether needs a person's approval for '{pending[0].call.tool}' ({pending[0].reason}), but this "
                "graph cannot pause: compile it with a checkpointer (e.g. graph.compile(checkpointer=InMemorySaver()) "
                "or SqliteSaver) and pass a thread_id, or use Tether(guard, approvals='queue') with an approver"
            )
        value = _ask_afresh(payload(session, pending)) if unseen else interrupt(payload(session, pending))
        for position, decision in enumerate(pending):
            try:
                answer = answer_for(value, decision, position)
                why = "the resume value gave no answer for this call"
            except ValueError as exc:
                answer, why = None, f"the resume value could not be read: {exc}"
            decisions[_key({"id": decision.call.call_id, "name": decision.call.tool, "args": decision.call.args})] = (
                session.settle(decision, answer, unanswered=why)
            )
        return decisions


def _ask_afresh(value: Any) -> Any:
    """``interrupt(value)`` that takes no resume value given to the thread for another breakpoint:
    the graph pauses with this one, and the next resume answers it."""
    config = var_child_runnable_config.get() or {}
    conf = config.get("configurable") or {}
    scratchpad = conf.get(_SCRATCHPAD)
    if not (dataclasses.is_dataclass(scratchpad) and hasattr(scratchpad, "get_null_resume")):
        # another LangGraph version: never apply an answer to a call it was not given for
        raise BreakpointError(
            "Tether cannot pause again for a call changed while the graph was paused on this LangGraph version"
        )
    blind = dataclasses.replace(scratchpad, get_null_resume=_no_resume)  # type: ignore[type-var]
    token = var_child_runnable_config.set({**config, "configurable": {**conf, _SCRATCHPAD: blind}})
    try:
        return interrupt(value)
    finally:
        var_child_runnable_config.reset(token)


def _no_resume(consume: bool = False) -> None:
    return None


def _key(call: Mapping[str, Any]) -> str:
    """A call's key within a batch: its id (the call's name and arguments when it has none)."""
    call_id = call.get("id", call.get("call_id"))
    return str(call_id) if call_id else f"{call.get('name', call.get('tool'))}:{call.get('args')!r}"


class Batches:
    """The open batches of one Tether, by the task (scratchpad) they belong to."""

    def __init__(self) -> None:
        self._open: dict[int, Batch] = {}
        self._lock = threading.Lock()

    def of(
        self,
        call: Mapping[str, Any],
        config: Mapping[str, Any],
        state: Any,
        messages_key: str,
        name_of: Callable[[str], str],
    ) -> Batch:
        """The calls that pause together: all calls one ToolNode task runs (so a resume re-runs
        none that already ran), each decided once however many threads ask."""
        scratchpad = (config.get("configurable") or {}).get(_SCRATCHPAD)
        triggers = (config.get("metadata") or {}).get("langgraph_triggers") or ()
        if scratchpad is None or state is None or _PUSH in triggers:  # a task of its own, or one call
            return Batch(scratchpad, [call], config)
        with self._lock:
            batch = self._open.get(id(scratchpad))
            if batch is None or batch.scratchpad is not scratchpad:
                calls = [
                    c if c is call else {**c, "name": name_of(c["name"])} for c in task_calls(state, call, messages_key)
                ]
                batch = self._open[id(scratchpad)] = Batch(scratchpad, calls, config)
                while len(self._open) > 256:  # batches whose calls never all came
                    del self._open[next(iter(self._open))]
            if batch.take():
                self._open.pop(id(scratchpad), None)
        return batch


def earlier_decisions(session: Session, calls: Sequence[Mapping[str, Any]]) -> dict[str, Decision]:
    """Decisions recorded for these very calls before the graph paused, so a resumed run settles
    them instead of deciding (and asking) again. A decision counts only for the same call id,
    tool and arguments: a call changed while the graph was paused (``update_state``) is decided
    again."""
    key = session.guard.store.key
    wanted = {(c.get("id") or None, c["name"], _fingerprint(c.get("args") or {}, key)): c for c in calls}
    found: dict[str, Decision] = {}
    for event in session.guard.store.session_events(session.id):
        if event.kind != _TOOL_DECISION or event.agent != session.agent:
            continue
        details = event.details
        call = wanted.get((details.get("call_id") or None, event.tool, details.get("args_fp")))
        if call is None:
            continue
        verdict = Verdict(event.verdict)
        args = dict(call.get("args") or {})
        if verdict is Verdict.REDACT and details.get("enforcement") == Enforcement.ENFORCED.value:
            args = redact_args(args, tuple(details.get("redacted") or ()))
        found[_key(call)] = Decision(
            ToolCall(session.agent, session.id, call["name"], call.get("args") or {}, call.get("id")),
            verdict,
            details.get("reason", ""),
            tuple(details.get("rule_ids") or ()),
            args,
            Enforcement(details.get("enforcement", Enforcement.ENFORCED.value)),
            details.get("error"),
            event.event_id,
            session.guard.policy.approval_timeout,
        )
    return found


def _fingerprint(args: Mapping[str, Any], key: bytes) -> str | None:
    try:
        return preview(to_plain(dict(args), "args"), key).fingerprint
    except UnsupportedValueError:
        return None


def _resuming(scratchpad: Any) -> bool:
    """Whether this task runs again with a person's answer (the graph was resumed)."""
    try:
        return bool(scratchpad.resume) or scratchpad.get_null_resume(False) is not None
    except (AttributeError, TypeError):  # another LangGraph version: decide afresh (correct, only more verbose)
        return False


def task_calls(state: Any, call: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The calls a ToolNode runs for this state: those of the latest AI message (as ToolNode reads them)."""
    messages = state if isinstance(state, list) else (state.get(key) if isinstance(state, Mapping) else None)
    if messages is None:
        messages = getattr(state, key, None) or []
    latest = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    calls: list[Mapping[str, Any]] = list(latest.tool_calls) if latest is not None else []
    if not any(c.get("id") == call.get("id") for c in calls):
        return [call]
    return [call if c.get("id") == call.get("id") else c for c in calls]
