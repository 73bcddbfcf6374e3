"""Where Tether joins CrewAI, installed once per process on CrewAI's classes (the way
sentry-python's integrations patch a framework's own call path): the tool primitives decide,
the model clients record, and the run entry points only say who acts in which session."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from crewai import Agent, Crew
from crewai.agents.agent_builder.base_agent import BaseAgent
from crewai.agents.cache.cache_handler import CacheHandler
from crewai.flow.flow import Flow
from crewai.lite_agent import LiteAgent
from crewai.llms.base_llm import BaseLLM
from crewai.tools.base_tool import BaseTool, Tool
from crewai.tools.structured_tool import CrewStructuredTool

from . import _checkpoints, _tools
from ._models import record_calls_of, record_known_model_classes
from ._scope import RESTORED_UNGUARDED, active, agent_frame, mark, run_scope, step_guard_of

_INSTALLED = "_tether_installed"
_LOCK = threading.Lock()
_RESTORES_LOCK = threading.Lock()
_done = False

#: run entry points, by class: the method, and where its ``inputs`` argument is (or None)
CREW_RUNS: dict[str, int | None] = {"kickoff": 0, "kickoff_async": 0, "akickoff": 0, "replay": 1}
FLOW_RUNS: dict[str, int | None] = {
    "kickoff": 0,
    "kickoff_async": 0,
    "akickoff": 0,
    "resume": None,
    "resume_async": None,
}
#: an agent's own work: its run (if it is guarded and none is open) and its frame; the task's position
AGENT_RUNS: dict[str, int | None] = {
    "execute_task": 0,
    "aexecute_task": 0,
    "kickoff": None,
    "kickoff_async": None,
    "akickoff": None,
}
AGENT_RUNS_IF_PRESENT: dict[str, int | None] = {"message": None}  # CrewAI 1.15
TOOL_PRIMITIVES: dict[type[Any], dict[str, Callable[[Any], Any]]] = {
    CrewStructuredTool: {"invoke": _tools.wrap_invoke, "ainvoke": _tools.wrap_ainvoke},
    BaseTool: {"run": _tools.wrap_run, "arun": _tools.wrap_arun},
    Tool: {"run": _tools.wrap_run, "arun": _tools.wrap_arun},
}


def install() -> None:
    global _done
    with _LOCK:
        if _done:
            return
        for cls, methods in TOOL_PRIMITIVES.items():
            for name, wrap in methods.items():
                _replace(cls, name, wrap)
        agent_runs = {**AGENT_RUNS, **{n: at for n, at in AGENT_RUNS_IF_PRESENT.items() if hasattr(Agent, n)}}
        for root, runs, scope in (
            (Crew, CREW_RUNS, _crew_scope),
            (Flow, FLOW_RUNS, _flow_scope),
            (Agent, agent_runs, _agent_scope),
            (LiteAgent, agent_runs, _agent_scope),
        ):
            for cls in _defining(root, runs):
                for name, at in runs.items():
                    _replace(cls, name, _entry_point(scope, at))
        install_restores()
        _replace(Crew, "copy", _copies_keep_the_guard)
        _replace(BaseAgent, "copy", _copies_keep_the_guard)
        _replace(CacheHandler, "read", _no_cache_in_guarded_runs)
        record_known_model_classes(BaseLLM)
        _done = True


def install_restores() -> None:
    """``from_checkpoint`` of crews, agents and flows (what ``fork`` and ``kickoff(from_checkpoint=...)``
    restore through): the restored object keeps the step guard, or is refused. Installed when
    ``tether.crewai`` is imported, so a process that only restores a checkpoint has it too."""
    with _RESTORES_LOCK:
        for root in (Crew, BaseAgent, Flow):
            for cls in _defining(root, {"from_checkpoint": None}):
                found = cls.__dict__["from_checkpoint"]
                if isinstance(found, classmethod) and not getattr(found.__func__, _INSTALLED, False):
                    cls.from_checkpoint = classmethod(_restores(found.__func__))


def _restores(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def from_checkpoint(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        entity = original(cls, *args, **kwargs)
        if _checkpoints.restored(entity):
            install()  # where the run entry points refuse it until it is guarded
        return entity

    setattr(from_checkpoint, _INSTALLED, True)
    return from_checkpoint


def cover_tool_classes(tools: Any) -> None:
    """Tool classes that override a primitive themselves (a ``BaseTool`` subclass with its own
    ``run``) get the decision too, once per class."""
    for tool in tools or ():
        for cls in type(tool).__mro__:
            if not issubclass(cls, (BaseTool, CrewStructuredTool)):
                continue
            for name, wrap in _PRIMITIVES.items():
                found = cls.__dict__.get(name)
                if found is not None and not getattr(found, _INSTALLED, False):
                    with _LOCK:
                        _replace(cls, name, wrap)


_PRIMITIVES = {**TOOL_PRIMITIVES[CrewStructuredTool], **TOOL_PRIMITIVES[BaseTool]}


def _defining(cls: type[Any], names: dict[str, Any]) -> list[type[Any]]:
    """The classes of ``cls``'s hierarchy that define one of ``names`` themselves."""
    return [c for c in cls.__mro__ if any(n in c.__dict__ for n in names)]


def _replace(cls: type[Any], name: str, wrap: Callable[[Any], Any]) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, _INSTALLED, False) or getattr(original, "__isabstractmethod__", False):
        return
    wrapper = functools.wraps(original)(wrap(original))
    setattr(wrapper, _INSTALLED, True)
    setattr(cls, name, wrapper)


Scope = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]


def _entry_point(scope: Callable[[int | None], Scope], at: int | None) -> Callable[[Any], Any]:
    return lambda original: _entry(original, scope(at))


def _entry(original: Callable[..., Any], scope: Scope) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(original):

        async def aentry(self: Any, *args: Any, **kwargs: Any) -> Any:
            with scope(self, args, kwargs):
                return await original(self, *args, **kwargs)

        return aentry

    def entry(self: Any, *args: Any, **kwargs: Any) -> Any:
        with scope(self, args, kwargs):
            return original(self, *args, **kwargs)

    return entry


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], at: int | None, name: str) -> Any:
    if at is None:
        return None
    return kwargs[name] if name in kwargs else (args[at] if len(args) > at else None)


def _crew_scope(at: int | None) -> Scope:
    def scope(crew: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return run_scope(crew, _argument(args, kwargs, at, "inputs"))

    return scope


def _flow_scope(at: int | None) -> Scope:
    def scope(flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = str(getattr(flow, "name", None) or type(flow).__name__)
        return run_scope(flow, _argument(args, kwargs, at, "inputs"), agent=name)

    return scope


def _agent_scope(at: int | None) -> Scope:
    @contextmanager
    def scope(agent: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[None]:
        with ExitStack() as stack:
            run = stack.enter_context(run_scope(agent, None))
            if run is not None:
                # function_calling_llm is deprecated in CrewAI: read the field past its warning
                for llm in (getattr(agent, "llm", None), vars(agent).get("function_calling_llm")):
                    record_calls_of(llm)
                cover_tool_classes(getattr(agent, "tools", None))
                stack.enter_context(agent_frame(agent, _argument(args, kwargs, at, "task")))
            yield

    return scope


def _copies_keep_the_guard(original: Callable[..., Any]) -> Callable[..., Any]:
    """``crew.copy()`` (what ``kickoff_for_each``, ``train`` and ``test`` run) and
    ``agent.copy()`` build new objects from the fields alone: hand the copy the step guard."""

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        copied = original(self, *args, **kwargs)
        step_guard = step_guard_of(self)
        if step_guard is None and getattr(self, RESTORED_UNGUARDED, False):
            for target in [copied, *getattr(copied, "agents", ())]:
                object.__setattr__(target, RESTORED_UNGUARDED, True)  # refused like the original
        if step_guard is not None:
            for target in [copied, *getattr(copied, "agents", ()), getattr(copied, "manager_agent", None)]:
                if target is not None:
                    mark(target, step_guard)
                    _checkpoints.remember(target, step_guard)
        return copied

    return copy


def _no_cache_in_guarded_runs(original: Callable[..., Any]) -> Callable[..., Any]:
    """CrewAI answers a repeated call from its tool cache without running the tool; in a guarded
    run every call is decided and its output recorded in the run's own session instead."""

    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        return None if active() else original(self, *args, **kwargs)

    return read
