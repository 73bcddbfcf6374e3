"""Where every AG2 1.x tool call is bound to Tether: ``ToolExecutor.register``.

Each turn of every AG2 agent (``Agent.ask``/``run``/``resume``, ``AgentReply.ask``, realtime
agents, and the agents AG2 builds during a call: ``TaskConfig`` subtasks, ``dynamic_agent``
children, ``as_tool`` and background sub-agents) hands its tools the turn's middleware there,
and each tool wraps its calls in that middleware. Wrapping it (once, on import) lets Tether, for
every turn that a guard governs:

- pick one deciding instance per guard among the turn's Tether middleware (copies of the same
  guard's middleware, registered twice, pass through: one call is never decided twice);
- give a turn with no Tether middleware of its own that runs inside a guarded tool call a decider
  acting as that call's agent, in its session (sub-agents built on the fly are governed);
- refuse, before the model is called, a tool that does not run its calls through middleware (a
  tool the model provider runs itself), unless the policy says it needs nothing from Tether;
- name MCP tools ``server/tool`` after their server's ``server_label``.

A turn is governed when its agent carries Tether middleware, runs inside a guarded tool call,
or bears the name of an agent a live guard's policy knows (a copy of a guarded agent that lost
its middleware, e.g. through ``AgentSpec``): that one is decided under the guard in a fallback
session of its own. Other agents are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ag2.tools import Toolkit
from ag2.tools.executor import ToolExecutor
from ag2.utils import AGENT_CONTEXT_DEPENDENCY_KEY
from tether.core import Mode, TetherError, mcp_tool
from tether.core.policy import Trust

from ._middleware import TetherMiddleware, TetherTurn, guard_knowing, running

log = logging.getLogger("tether.ag2")


class UngovernedToolError(TetherError):
    """A guarded agent offers its model a tool whose calls Tether cannot decide on."""


def install() -> None:
    """Wrap ``ToolExecutor.register`` (idempotent)."""
    if getattr(ToolExecutor.register, "__tether__", False):
        return
    original = ToolExecutor.register

    def register(
        self: ToolExecutor,
        stack: Any,
        context: Any,
        *,
        tools: Iterable[Any] = (),
        known_tools: Iterable[str] = (),
        middleware: Iterable[Any] = (),
    ) -> None:
        chain = list(middleware)
        deciders = _deciders(chain, context)
        if not deciders:  # no guard knows this agent
            original(self, stack, context, tools=tools, known_tools=known_tools, middleware=chain)
            return
        tools = list(tools)
        watched = [_Watched(tool) for tool in tools]
        original(self, stack, context, tools=watched, known_tools=known_tools, middleware=chain)  # type: ignore[arg-type]
        for decider in deciders:
            try:
                decider.names = _policy_names(tools)
                _refuse_ungoverned(decider, [w.tool for w in watched if not w.reads_middleware], context)
            except UngovernedToolError:
                if decider.owner.guard.mode is not Mode.MONITOR:
                    raise
                log.exception("monitor mode: running a configuration Tether would refuse")
        _warn_undeclared(deciders, tools, context)

    register.__tether__ = True  # type: ignore[attr-defined]
    ToolExecutor.register = register  # type: ignore[method-assign]


def _deciders(chain: list[Any], context: Any) -> list[TetherTurn]:
    """The Tether instance that decides for each guard in this turn, outermost first. AG2 makes
    the last instance of the list the outermost: a governed turn without one gets one there."""
    deciding: dict[int, TetherTurn] = {}
    for turn in reversed(chain):
        if isinstance(turn, TetherTurn):
            if id(turn.owner.guard) in deciding:
                turn.passive = True
            else:
                deciding[id(turn.owner.guard)] = turn
    if deciding:
        return list(deciding.values())
    frame = running.get()
    if frame is not None:
        added = TetherTurn(None, context, owner=frame.owner, inherited=frame)
    else:
        name = getattr(context.dependencies.get(AGENT_CONTEXT_DEPENDENCY_KEY), "name", None)
        guard = guard_knowing(str(name)) if name else None
        if guard is None:
            return []
        _warn_once(
            ("fallback", str(name)),
            "agent %r runs without Tether middleware, but a policy in this process names it: its tool "
            "calls are decided under that guard, in a session of their own (guard it to choose how)",
            name,
        )
        added = TetherTurn(None, context, owner=TetherMiddleware(guard), fallback=True)
    chain.append(added)
    return [added]


class _Watched:
    """A tool under registration, noting whether it reads the middleware it is handed (a tool
    that does not cannot be running its calls through it)."""

    def __init__(self, tool: Any) -> None:
        self.tool = tool
        self.reads_middleware = False

    def register(self, stack: Any, context: Any, *, middleware: Iterable[Any] = ()) -> None:
        self.tool.register(stack, context, middleware=_Read(self, list(middleware)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tool, name)


class _Read(Sequence[Any]):
    def __init__(self, watched: _Watched, items: list[Any]) -> None:
        self._watched = watched
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        self._watched.reads_middleware = True
        return iter(self._items)

    def __getitem__(self, index: Any) -> Any:
        self._watched.reads_middleware = True
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __reversed__(self) -> Iterator[Any]:
        self._watched.reads_middleware = True
        return iter(self._items[::-1])


def _leaves(tools: Iterable[Any]) -> Iterator[Any]:
    for tool in tools:
        if isinstance(tool, Toolkit):
            yield from _leaves(tool.tools)
        else:
            yield tool


def _policy_names(tools: Iterable[Any]) -> dict[str, str]:
    """AG2 tool name -> policy name, for the tools whose policy name differs (MCP tools)."""
    names: dict[str, str] = {}
    for tool in _leaves(tools):
        if type(tool).__module__.startswith("ag2.tools.toolkits.mcp_server"):
            label = getattr(getattr(tool, "_config", None), "server_label", None)
            if not isinstance(label, str) or not label:
                raise UngovernedToolError(
                    f"the MCP tool {tool.name!r} comes from a server without a name, and a policy names "
                    "MCP tools server/tool: give its MCPServerConfig / MCPStdioServerConfig a server_label"
                )
            names[tool.name] = mcp_tool(label, getattr(tool, "_remote_name", tool.name))
    return names


def _refuse_ungoverned(decider: TetherTurn, tools: list[Any], context: Any) -> None:
    """Refuse the turn if it offers a tool that runs without the middleware (the model provider
    runs it), unless the policy grants it with nothing to check, record or redact."""
    agent = decider.identity(context)
    for tool in tools:
        if isinstance(tool, Toolkit):  # one without members: it offers nothing
            continue
        name = getattr(tool, "name", type(tool).__name__)
        if not _needs_nothing(decider, agent, name):
            raise UngovernedToolError(
                f"agent {agent!r} offers its model {type(tool).__name__} ({name!r}), which the model "
                "provider runs itself: its calls never reach Tether, so it cannot decide or record them. "
                f"Remove the tool, or grant {name!r} to {agent!r} unconditionally in the policy with "
                "'output: trusted', no data classes or risky effects, and no rule, ask, redaction or limit"
            )


def _needs_nothing(decider: TetherTurn, agent: str, tool: str) -> bool:
    policy = decider.owner.guard.policy
    plan = policy.plan(agent, tool)
    spec = policy.policy.tools.get(tool)
    return bool(
        spec is not None
        and plan.agent_known
        and plan.grants
        and all(grant.condition is None for grant in plan.grants)
        and not (plan.denies or plan.asks or plan.redacts or plan.limits)
        and spec.output is Trust.TRUSTED
        and not spec.data
        and not policy.risky.intersection(spec.effects)
    )


_warned: set[tuple[Any, ...]] = set()


def _warn_once(key: tuple[Any, ...], message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def _warn_undeclared(deciders: list[TetherTurn], tools: Iterable[Any], context: Any) -> None:
    """Name, once, each tool an agent offers that the policy does not declare (such as the ones
    AG2 adds itself: run_subtask, create_and_run_agent, task_<agent>): its calls are denied."""
    offered = [getattr(tool, "name", None) for tool in _leaves(tools)]
    for decider in deciders:
        policy = decider.owner.guard.policy
        agent = decider.identity(context)
        for name in offered:
            tool = decider.names.get(name, name) if name else None
            if tool is None or tool in policy.policy.tools:
                continue
            _warn_once(
                (id(policy), agent, tool),
                "agent %r offers the tool %r, which the policy does not declare: Tether denies its calls. "
                "Declare it under 'tools:' and grant it to the agent to let it run",
                agent,
                tool,
            )
