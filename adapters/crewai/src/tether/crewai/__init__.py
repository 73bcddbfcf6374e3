"""Tether for CrewAI: the step guard.

    from tether.crewai import enable_step_guard

    enable_step_guard(crew, guard)   # or an Agent, or a Flow
    crew.kickoff()

Tether decides where CrewAI runs every tool: ``CrewStructuredTool.invoke`` / ``ainvoke`` and
``BaseTool.run`` / ``arun``, the calls that ReAct text mode, native function calling, delegation,
the hierarchical manager and MCP tools all end in. It records model calls at the agent's model
client (``call`` / ``acall``), sending the model what ``before_model`` returns. The run entry
points (``Crew.kickoff`` and its async and per-input twins, ``Flow.kickoff``, ``Agent.kickoff``,
``Agent.execute_task``...) only open the run's session and say which agent acts, through context
variables, so copies of a guarded crew, crews a guarded flow builds and agents working for
another agent are governed too. A tool of a guarded crew called outside any run is decided in a
fallback session. Tether's own failures refuse the call (monitor mode: record and let it through).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crewai import Agent, Crew
from crewai.agents.agent_builder.base_agent import BaseAgent
from crewai.flow.flow import Flow
from crewai.lite_agent import LiteAgent
from crewai.tools.base_tool import BaseTool
from tether.core import Guard, TetherError
from tether.core.planners import Planner

from ._checkpoints import remember
from ._install import cover_tool_classes, install, install_restores
from ._models import record_calls_of
from ._scope import FRAMEWORK_AGENT, Identity, StepGuard, mark, step_guard_of
from ._tools import MCP_ADAPTER_SERVER

__all__ = ["FRAMEWORK_AGENT", "StepGuard", "enable_step_guard"]

install_restores()  # a crew restored from a guarded crew's checkpoint is never run unseen


def enable_step_guard(
    target: Any,
    guard: Guard,
    *,
    session_id: str | None = None,
    user: Identity = None,
    tenant: Identity = None,
    mcp_servers: Mapping[str, Any] | None = None,
    planner: Planner | None = None,
) -> StepGuard:
    """Decide every tool call of ``target`` (a ``Crew``, an ``Agent`` or a ``Flow``) with ``guard``.

    Each run (a kickoff, a flow run, one input of ``kickoff_for_each``) is a new session, unless
    ``session_id`` fixes one. ``user`` and ``tenant`` are strings, or functions of the run's
    ``inputs`` (``lambda inputs: inputs["customer"]``). ``mcp_servers`` names the MCP servers
    the agents load (``{"helpdesk": MCPServerStdio(...)}``, or a started crewai-tools
    ``MCPServerAdapter``): their tools are ``helpdesk/<tool>`` in the policy. ``planner`` gives
    each run a task scope from its trusted request (see ``tether.core.planners``). Enabling the
    same guard twice is a no-op; another guard raises.
    """
    install()
    existing = step_guard_of(target)
    if existing is not None:
        if existing.guard is not guard:
            raise TetherError("this crew is already guarded by another Tether guard")
        return existing
    agents = _agents_of(target)
    for agent in agents:
        _refuse_ungoverned(agent)
    names = _mcp_names(mcp_servers)
    step_guard = StepGuard(guard, session_id=session_id, user=user, tenant=tenant, mcp_names=names, planner=planner)
    mark(target, step_guard)
    remember(target, step_guard)
    for agent in agents:
        mark(agent, step_guard)
        remember(agent, step_guard)
        for tool in getattr(agent, "tools", None) or ():
            if isinstance(tool, BaseTool):
                mark(tool, step_guard)
        cover_tool_classes(getattr(agent, "tools", None))
        record_calls_of(getattr(agent, "llm", None))
        record_calls_of(vars(agent).get("function_calling_llm"))  # deprecated: read past its warning
    if isinstance(target, Crew):
        for tool in (tool for task in target.tasks for tool in task.tools or ()):
            if isinstance(tool, BaseTool):
                mark(tool, step_guard)
        for name in ("manager_llm", "planning_llm", "function_calling_llm"):
            record_calls_of(vars(target).get(name))  # read past deprecation warnings
    return step_guard


def _agents_of(target: Any) -> list[Any]:
    if isinstance(target, Crew):
        return [a for a in [*target.agents, target.manager_agent] if a is not None]
    if isinstance(target, (BaseAgent, LiteAgent)):
        return [target]
    if isinstance(target, Flow):
        return []  # the crews and agents it runs act in the flow's run
    raise TetherError(f"enable_step_guard takes a Crew, an Agent or a Flow, not {type(target).__name__}")


def _refuse_ungoverned(agent: Any) -> None:
    """Configurations whose actions would not pass Tether: refused here, never run unseen."""
    role = getattr(agent, "role", "?")
    if getattr(agent, "a2a", None):
        raise TetherError(
            f"agent {role!r} delegates to remote agents over A2A (a2a=...), which Tether does not "
            "govern; remove a2a= from a guarded agent"
        )
    if isinstance(agent, BaseAgent) and not isinstance(agent, Agent):
        raise TetherError(
            f"agent {role!r} is a {type(agent).__name__}, which runs its tools in another framework; "
            "Tether governs crewai.Agent members only"
        )


def _is_server_adapter(server: Any) -> bool:
    return any(
        c.__name__ == "MCPServerAdapter" and c.__module__.startswith("crewai_tools.") for c in type(server).__mro__
    )


def _mcp_names(servers: Mapping[str, Any] | None) -> dict[str, str]:
    """CrewAI's own name of each MCP server (``python_server_py`` for a stdio command, the host
    for a URL), mapped to the name the policy uses. The tools of a crewai-tools
    ``MCPServerAdapter`` are named on the tools themselves."""
    if not servers:
        return {}
    from crewai.mcp.tool_resolver import MCPToolResolver

    names = {}
    for name, server in servers.items():
        if _is_server_adapter(server):
            for tool in server.tools:  # crewai-tools' MCPServerAdapter: its tools, already made
                object.__setattr__(tool, MCP_ADAPTER_SERVER, name)
            continue
        try:
            if isinstance(server, str):
                crewai_name = MCPToolResolver._extract_server_name(server)
            else:
                crewai_name = MCPToolResolver._create_transport(server)[1]
        except Exception as exc:
            raise TetherError(f"cannot name the MCP server {name!r} ({server!r}): {exc}") from exc
        names[crewai_name] = name
    return names
