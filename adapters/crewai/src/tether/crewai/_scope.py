"""Who is acting, in which session: the step guard a user enabled, the run an entry point opened,
and the agent frame a task opened. All carried in context variables, which CrewAI itself copies
into the threads and tasks it starts (async tasks, parallel tool calls, flow steps)."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from crewai.utilities.string_utils import sanitize_tool_name
from tether.core import Guard, Mode, Session, TetherError
from tether.core.planners import Planner

log = logging.getLogger("tether.crewai")

MARK = "_tether_step_guard"  # set on each guarded crew, agent, flow and tool: copies keep it
#: set on a crew or agent restored from a guarded one's checkpoint whose guard is not in this process
RESTORED_UNGUARDED = "_tether_restored_unguarded"
FRAMEWORK_AGENT = "crewai-agent"  # the agent a call is made in when CrewAI does not say

#: who the user or tenant of a run is: fixed, or read from the run's inputs (kickoff's ``inputs``)
Identity = str | Callable[[Mapping[str, Any]], str | None] | None

_RUN: contextvars.ContextVar[Run | None] = contextvars.ContextVar("tether-crewai-run", default=None)
_FRAME: contextvars.ContextVar[Frame | None] = contextvars.ContextVar("tether-crewai-frame", default=None)


class StepGuard:
    """Tether enabled on a crew, an agent or a flow: the guard, who runs it, and its sessions."""

    def __init__(
        self,
        guard: Guard,
        *,
        session_id: str | None,
        user: Identity,
        tenant: Identity,
        mcp_names: Mapping[str, str],
        planner: Planner | None = None,
    ) -> None:
        self.guard = guard
        self.planner = planner  # gives each run a task scope from its trusted request
        self.fixed_session = session_id
        self.user = user
        self.tenant = tenant
        self.mcp_names = dict(mcp_names)  # CrewAI's name of an MCP server -> the policy's
        #: the session of the latest run (the fixed one when ``session_id`` was given)
        self.session_id: str | None = session_id
        self._fallback: Run | None = None
        self._lock = threading.Lock()

    @property
    def monitoring(self) -> bool:
        return self.guard.mode is Mode.MONITOR

    # a guarded object's copies (pydantic's model_copy, copy.deepcopy) share its step guard
    def __copy__(self) -> StepGuard:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> StepGuard:
        return self

    def mcp_name(self, crewai_name: str) -> str:
        """The policy's name of an MCP server: the user's, or CrewAI's own sanitised like a tool name."""
        return self.mcp_names.get(crewai_name) or sanitize_tool_name(crewai_name)

    def new_run(self, inputs: Mapping[str, Any], *, agent: str, parent: str | None = None) -> Run:
        session_id = self.fixed_session or os.urandom(8).hex()
        self.session_id = session_id
        user, tenant = self._identity(self.user, inputs, "user"), self._identity(self.tenant, inputs, "tenant")
        return Run(self, session_id, user, tenant, agent, parent)

    def fallback(self) -> Run:
        """The session of calls that reach a guarded tool outside any run (called directly, or
        through an entry point Tether does not know): decided there rather than run unseen."""
        with self._lock:
            if self._fallback is None:
                run = Run(self, self.fixed_session or os.urandom(8).hex() + "-fallback", None, None, FRAMEWORK_AGENT)
                run.context["entry"] = "outside any run"
                self._fallback = run
            return self._fallback

    def _identity(self, source: Identity, inputs: Mapping[str, Any], what: str) -> str | None:
        if source is None or isinstance(source, str):
            return source
        try:
            value = source(inputs)
        except Exception as exc:
            raise TetherError(f"Tether could not read the run's {what} from its inputs: {exc!r}") from exc
        return None if value is None else str(value)


@dataclass(eq=False)
class Run:
    """One session: a kickoff, a flow run, an agent's kickoff. Nested entry points join it."""

    step_guard: StepGuard
    session_id: str
    user: str | None
    tenant: str | None
    agent: str  # who acts when no agent frame is open (a flow step calling a tool itself)
    parent: str | None = None
    context: dict[str, str] = field(default_factory=lambda: {"framework": "crewai"})
    last_response: dict[str, str] = field(default_factory=dict)  # agent -> its latest response event
    _sessions: dict[str, Session] = field(default_factory=dict)

    def session(self, agent: str, task: str | None = None) -> Session:
        context = {**self.context, "task": task} if task else self.context
        return self.step_guard.guard.session(
            agent,
            self.session_id,
            user=self.user,
            tenant=self.tenant,
            context=context,
            parent=self.parent,
            planner=self.step_guard.planner,
        )

    def frameless_session(self, agent: str | None) -> Session:
        name = agent or self.agent
        session = self._sessions.get(name)
        if session is None:
            session = self._sessions[name] = self.session(name)
        return session


@dataclass(eq=False)
class Frame:
    """An agent working on a task (or on its own kickoff) within a run."""

    run: Run
    session: Session
    response: str | None = None  # the event id of the agent's latest model response
    proposed: list[tuple[str | None, str, Any]] = field(default_factory=list)  # (call id, name, args)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, response_id: str, proposed: list[tuple[str | None, str, Any]]) -> None:
        with self.lock:
            self.response, self.proposed = response_id, proposed

    def call_id(self, name: str, args: Mapping[str, Any]) -> str | None:
        """The provider's id of the proposed call this one is (native function calling)."""
        with self.lock:
            for i, (call_id, proposed_name, proposed_args) in enumerate(self.proposed):
                if proposed_name == name and proposed_args == dict(args):
                    del self.proposed[i]
                    return call_id
        return None


def step_guard_of(target: Any) -> StepGuard | None:
    found = getattr(target, MARK, None) if target is not None else None
    return found if isinstance(found, StepGuard) else None


def mark(target: Any, step_guard: StepGuard) -> None:
    object.__setattr__(target, MARK, step_guard)  # pydantic models: set past their field checks


def current_run() -> Run | None:
    return _RUN.get()


def current_frame() -> Frame | None:
    return _FRAME.get()


def active() -> bool:
    return _RUN.get() is not None


@contextmanager
def run_scope(target: Any, inputs: Any, *, agent: str = FRAMEWORK_AGENT) -> Iterator[Run | None]:
    """The run an entry point of ``target`` belongs to: the open one (nested entry points join
    it, so taint and limits carry over), or a new one if ``target`` is guarded."""
    current = _RUN.get()
    step_guard = step_guard_of(target)
    if step_guard is None and current is None and getattr(target, RESTORED_UNGUARDED, False):
        raise TetherError(
            f"this {type(target).__name__} was restored from the checkpoint of one Tether guarded, and "
            "is not guarded in this process: call enable_step_guard on it before running it"
        )
    if step_guard is None or (current is not None and current.step_guard is step_guard):
        yield current
        return
    parent = current.session_id if current is not None else None
    run = step_guard.new_run(inputs if isinstance(inputs, Mapping) else {}, agent=agent, parent=parent)
    token = _RUN.set(run)
    try:
        yield run
    finally:
        _RUN.reset(token)


@contextmanager
def agent_frame(agent: Any, task: Any) -> Iterator[Frame | None]:
    """An agent acting within the open run (opened by its crew, a flow, or its own kickoff)."""
    run = _RUN.get()
    if run is None:
        yield None
        return
    role = str(getattr(agent, "role", "") or "").strip() or FRAMEWORK_AGENT
    description = str(getattr(task, "name", None) or getattr(task, "description", "") or "")[:120] or None
    frame = Frame(run, run.session(role, description))
    token = _FRAME.set(frame)
    try:
        yield frame
    finally:
        _FRAME.reset(token)
