"""Tether for CrewAI: the step guard.

    from tether.crewai import enable_step_guard

    enable_step_guard(crew, guard)   # every agent of the crew, delegation and managers included
    crew.kickoff()

CrewAI runs every tool call of every agent through its tool-call hooks (``crewai.hooks``),
whatever the process (sequential or hierarchical), and delegation between agents is itself a
tool call. Tether registers one before-hook and one after-hook per process and answers only for
the crews it guards. The before-hook decides the call; a refused call does not run and the agent
reads Tether's refusal as the tool's observation. The after-hook records the output and hands the
agent what Tether lets it see. LLM-call hooks record the model requests and responses.

CrewAI swallows any exception a hook raises and runs the tool anyway, so every failure here is
caught and turned into a refusal: the guard fails closed.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from crewai.hooks import (
    register_after_llm_call_hook,
    register_after_tool_call_hook,
    register_before_llm_call_hook,
    register_before_tool_call_hook,
)
from tether.core import Decision, Guard, Mode, Session, TetherError

__all__ = ["StepGuard", "enable_step_guard"]

log = logging.getLogger("tether.crewai")
_ATTRIBUTE = "_tether_step_guard"  # set on each guarded crew: it lives and dies with the crew
_INSTALLED = threading.Lock()
_hooks_installed = False
_run: contextvars.ContextVar[str] = contextvars.ContextVar("tether-crewai-run")


@dataclass
class StepGuard:
    """Tether enabled on one crew: its guard, and the session of the current kickoff."""

    guard: Guard
    session_id: str
    fixed: bool
    user: str | None = None
    tenant: str | None = None
    # id(tool_input) -> the session and decision (or refusal text) the after-hook needs
    _pending: dict[int, tuple[Session | None, Decision | str]] = field(default_factory=dict)
    _requests: dict[int, tuple[Session, str, int]] = field(default_factory=dict)  # id(executor) -> request
    _responses: dict[tuple[str, str], str] = field(default_factory=dict)  # (session, agent) -> last response

    def session(self, agent: Any, task: Any) -> Session:
        role = str(getattr(agent, "role", "") or "").strip() or "crewai-agent"
        context = {"framework": "crewai"}
        description = str(getattr(task, "name", None) or getattr(task, "description", "") or "")
        if description:
            context["task"] = description[:120]
        session_id = self.session_id if self.fixed else _run.get(self.session_id)
        return self.guard.session(role, session_id, user=self.user, tenant=self.tenant, context=context)

    def new_run(self) -> str:
        """A new session for a kickoff (unless one was fixed), visible to the hooks it runs."""
        if not self.fixed:
            self.session_id = os.urandom(8).hex()
        _run.set(self.session_id)
        return self.session_id

    @property
    def monitoring(self) -> bool:
        return self.guard.mode is Mode.MONITOR


def enable_step_guard(
    crew: Any, guard: Guard, *, session_id: str | None = None, user: str | None = None, tenant: str | None = None
) -> StepGuard:
    """Decide every tool call of ``crew``'s agents with ``guard``. Each kickoff is a session
    (``session_id`` fixes one). Enabling the same guard twice is a no-op; another guard raises."""
    existing: StepGuard | None = getattr(crew, _ATTRIBUTE, None)
    if existing is not None:
        if existing.guard is not guard:
            raise TetherError("this crew is already guarded by another Tether guard")
        return existing
    step_guard = StepGuard(guard, session_id or os.urandom(8).hex(), session_id is not None, user, tenant)
    object.__setattr__(crew, _ATTRIBUTE, step_guard)  # a pydantic model: set past its field checks
    _install_hooks()
    for name in ("kickoff", "kickoff_async"):
        _start_session_on(crew, name, step_guard)
    return step_guard


def _start_session_on(crew: Any, name: str, step_guard: StepGuard) -> None:
    original = getattr(crew, name)
    if name == "kickoff_async":

        @functools.wraps(original)
        async def kickoff_async(*args: Any, **kwargs: Any) -> Any:
            step_guard.new_run()
            return await original(*args, **kwargs)

        wrapper: Any = kickoff_async
    else:

        @functools.wraps(original)
        def kickoff(*args: Any, **kwargs: Any) -> Any:
            step_guard.new_run()
            return original(*args, **kwargs)

        wrapper = kickoff
    object.__setattr__(crew, name, wrapper)


def _install_hooks() -> None:
    global _hooks_installed
    with _INSTALLED:
        if not _hooks_installed:
            register_before_tool_call_hook(_before_tool)
            register_after_tool_call_hook(_after_tool)
            register_before_llm_call_hook(_before_llm)
            register_after_llm_call_hook(_after_llm)
            _hooks_installed = True


def _guard_of(crew: Any) -> StepGuard | None:
    return getattr(crew, _ATTRIBUTE, None) if crew is not None else None


# -- tool calls -----------------------------------------------------------------------------


def _before_tool(context: Any) -> bool | None:
    step_guard = _guard_of(context.crew)
    if step_guard is None:
        return None  # not a guarded crew
    try:
        session = step_guard.session(context.agent, context.task)
        caused_by = step_guard._responses.get((session.id, session.agent))
        decision = session.before_tool(context.tool_name, dict(context.tool_input), caused_by=caused_by)
        if decision.needs_approval:
            decision = session.resolve(decision)
    except Exception as exc:  # CrewAI would swallow it and run the tool: refuse instead
        log.exception("Tether failed while deciding on %s", context.tool_name)
        if step_guard.monitoring:
            return None
        step_guard._pending[id(context.tool_input)] = (None, f"Tether could not decide ({type(exc).__name__})")
        return False
    if not decision.allowed:
        step_guard._pending[id(context.tool_input)] = (session, decision.refusal())
        return False
    if decision.args != context.tool_input:  # redacted or edited by an approver: in place, as CrewAI asks
        context.tool_input.clear()
        context.tool_input.update(decision.args)
    step_guard._pending[id(context.tool_input)] = (session, decision)
    return None


def _after_tool(context: Any) -> str | None:
    step_guard = _guard_of(context.crew)
    if step_guard is None:
        return None
    session, outcome = step_guard._pending.pop(id(context.tool_input), (None, None))
    if isinstance(outcome, str):
        return outcome  # the refusal, instead of CrewAI's generic "blocked by hook"
    if outcome is None or session is None:
        return None
    try:
        seen = session.after_tool(outcome, context.tool_result)
    except Exception as exc:
        log.exception("Tether could not record the output of %s", context.tool_name)
        return (
            None if step_guard.monitoring else f"Tether could not record this output ({type(exc).__name__}); withheld"
        )
    return None if seen is context.tool_result else str(seen)


# -- model calls ----------------------------------------------------------------------------


def _before_llm(context: Any) -> bool | None:
    step_guard = _guard_of(context.crew)
    if step_guard is None:
        return None
    try:
        session = step_guard.session(context.agent, context.task)
        key = id(context.executor)
        previous = step_guard._requests.get(key)
        start = previous[2] if previous and previous[0].id == session.id and previous[2] <= len(context.messages) else 0
        new = list(context.messages[start:])
        request = session.before_model(new, model=str(getattr(context.llm, "model", "") or ""))
        step_guard._requests[key] = (session, request.event_id, len(context.messages))
    except Exception:
        log.exception("Tether could not record a model request")
        return None if step_guard.monitoring else False
    return None if request.allowed else False


def _after_llm(context: Any) -> str | None:
    step_guard = _guard_of(context.crew)
    if step_guard is None:
        return None
    pending = step_guard._requests.get(id(context.executor))
    if pending is None:
        return None
    session, request_id, _ = pending
    try:
        response_id = session.after_model(context.response, parent=request_id)
        step_guard._responses[(session.id, session.agent)] = response_id
    except Exception:
        log.exception("Tether could not record a model response")
    return None
