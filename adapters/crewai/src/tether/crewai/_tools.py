"""Tool calls, decided where CrewAI runs them: ``CrewStructuredTool.invoke`` / ``ainvoke`` (the
ReAct path, delegation and the hierarchical manager included) and ``BaseTool.run`` / ``arun``
(native function calling, tools a model client runs itself, MCP tools). Whatever entry point
started the work, a tool call of a guarded run passes here."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from crewai.utilities.string_utils import sanitize_tool_name
from tether.core import Decision, Session, mcp_tool

from ._scope import Frame, StepGuard, current_frame, current_run, step_guard_of

log = logging.getLogger("tether.crewai")

#: the tool whose call is running after its decision, and the agent frame it runs in: the same
#: tool re-entered in the same frame (a structured tool handing over to its BaseTool) is the
#: same call, not a new one to decide; in another frame (a crew the tool kicks off) it is new
_RUNNING: contextvars.ContextVar[tuple[object, object] | None] = contextvars.ContextVar(
    "tether-crewai-tool", default=None
)


class _Call:
    """One tool call about to be decided: its tool, its session, and how to run it."""

    def __init__(self, tool: Any, step_guard: StepGuard, session: Session, frame: Frame | None) -> None:
        self.tool = tool
        self.step_guard = step_guard
        self.session = session
        self.frame = frame
        self.name = policy_name(tool, step_guard)
        self.shown_name = sanitize_tool_name(str(getattr(tool, "name", "") or ""))

    def caused_by(self) -> str | None:
        if self.frame is not None:
            return self.frame.response
        run = current_run()
        return run.last_response.get(self.session.agent) if run is not None else None

    def call_id(self, args: Mapping[str, Any]) -> str | None:
        return self.frame.call_id(self.shown_name, args) if self.frame is not None else None

    def failed(self, exc: BaseException) -> str | None:
        """What the agent reads when Tether itself failed to decide (None: run it, monitor mode)."""
        log.exception("Tether failed while deciding on %s", self.name)
        if self.step_guard.monitoring:
            return None
        return f"Tether could not decide on the call to '{self.name}' ({type(exc).__name__}); it did not run"

    def shown(self, decision: Decision, output: Any) -> Any:
        try:
            return self.session.after_tool(decision, output)
        except Exception as exc:  # noqa: BLE001 - any failure to record withholds the output
            return self._unrecorded(exc, output)

    async def ashown(self, decision: Decision, output: Any) -> Any:
        try:
            return await self.session.aafter_tool(decision, output)
        except Exception as exc:  # noqa: BLE001 - any failure to record withholds the output
            return self._unrecorded(exc, output)

    def errored(self, decision: Decision, error: BaseException) -> None:
        try:
            self.session.after_tool(decision, error=error)
        except Exception:
            log.exception("Tether could not record the error of %s", self.name)

    def _unrecorded(self, exc: BaseException, output: Any) -> Any:
        log.error("Tether could not record the output of %s: %r", self.name, exc)
        if self.step_guard.monitoring:
            return output
        return f"Tether could not record this output ({type(exc).__name__}); withheld"


#: set on each tool an ``MCPServerAdapter`` named in ``mcp_servers`` serves: the server's policy name
MCP_ADAPTER_SERVER = "_tether_mcp_server"
#: the server of an ``MCPServerAdapter`` tool nobody named
UNNAMED_ADAPTER_SERVER = "mcp_server_adapter"


def policy_name(tool: Any, step_guard: StepGuard) -> str:
    """The tool's name in the policy: CrewAI's sanitised name (``Search the internet`` is
    ``search_the_internet``), or ``server/tool`` for a tool from an MCP server (an agent's
    ``mcps=``, or crewai-tools' ``MCPServerAdapter``)."""
    original = getattr(tool, "_original_tool", None) or tool
    server = getattr(original, "server_name", None)
    remote = getattr(original, "original_tool_name", None)
    if isinstance(server, str) and isinstance(remote, str):
        return mcp_tool(step_guard.mcp_name(server), remote)
    name = sanitize_tool_name(str(getattr(tool, "name", "") or ""))
    adapter_server = vars(original).get(MCP_ADAPTER_SERVER) if hasattr(original, "__dict__") else None
    if isinstance(adapter_server, str):
        return mcp_tool(adapter_server, name)
    if is_adapter_tool(original):
        return mcp_tool(UNNAMED_ADAPTER_SERVER, name)
    return name


def is_adapter_tool(tool: Any) -> bool:
    """A tool crewai-tools' ``MCPServerAdapter`` (or mcpadapt's CrewAI adapter) made for an MCP tool:
    a class of its own per tool, defined inside the adapter."""
    cls = type(tool)
    return cls.__name__ == "CrewAIMCPTool" and cls.__module__.startswith(("crewai_tools.", "mcpadapt."))


def _call_for(tool: Any) -> _Call | None:
    """The call's session, or None when the tool is not ours to decide."""
    original = getattr(tool, "_original_tool", None) or tool
    frame = current_frame()
    running = _RUNNING.get()
    if running is not None and running[0] is frame and running[1] is original:
        return None
    if frame is not None:
        return _Call(tool, frame.run.step_guard, frame.session, frame)
    run = current_run()
    if run is None:
        owner = step_guard_of(original) or step_guard_of(tool)
        if owner is None:
            return None  # not a guarded crew's tool, and not in a guarded run
        run = owner.fallback()
    return _Call(tool, run.step_guard, run.frameless_session(None), None)


def decide(tool: Any, args: dict[str, Any], execute: Callable[[dict[str, Any]], Any], *, once: bool = False) -> Any:
    """Decide a call and run it as decided. ``once``: a tool that raises returns its error as the
    call's result (recorded as an error) instead of raising, so CrewAI does not run it again
    unasked; a new attempt is a new call the model makes and Tether decides."""
    call = _call_for(tool)
    if call is None:
        return execute(args)
    try:
        decision = call.session.before_tool(call.name, args, call_id=call.call_id(args), caused_by=call.caused_by())
        decision = call.session.resolve(decision)
    except Exception as exc:  # noqa: BLE001 - CrewAI would run the tool anyway: refuse it instead
        refusal = call.failed(exc)
        return execute(args) if refusal is None else refusal
    if not decision.allowed:
        return decision.refusal()
    token = _RUNNING.set((call.frame, getattr(tool, "_original_tool", None) or tool))
    try:
        output = execute(dict(decision.args))
    except Exception as exc:
        call.errored(decision, exc)
        if once:
            return tool_error(exc)
        raise
    finally:
        _RUNNING.reset(token)
    return call.shown(decision, output)


async def adecide(
    tool: Any, args: dict[str, Any], execute: Callable[[dict[str, Any]], Awaitable[Any]], *, once: bool = False
) -> Any:
    call = _call_for(tool)
    if call is None:
        return await execute(args)
    try:
        decision = await call.session.abefore_tool(
            call.name, args, call_id=call.call_id(args), caused_by=call.caused_by()
        )
        decision = await call.session.aresolve(decision)
    except Exception as exc:  # noqa: BLE001 - CrewAI would run the tool anyway: refuse it instead
        refusal = call.failed(exc)
        return await execute(args) if refusal is None else refusal
    if not decision.allowed:
        return decision.refusal()
    token = _RUNNING.set((call.frame, getattr(tool, "_original_tool", None) or tool))
    try:
        output = await execute(dict(decision.args))
    except Exception as exc:
        await asyncio.to_thread(call.errored, decision, exc)
        if once:
            return tool_error(exc)
        raise
    finally:
        _RUNNING.reset(token)
    return await call.ashown(decision, output)


def tool_error(exc: Exception) -> Any:
    """A raised error as a tool result CrewAI reads as a failure (a ``ToolFailure`` from 1.15)."""
    try:
        from crewai.tools.tool_failure import failure_from_exception  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # CrewAI 1.14
        return f"Error executing tool: {exc}"
    return failure_from_exception(exc)


# -- the methods CrewAI runs tools through ------------------------------------------------------


def as_args(value: Any) -> dict[str, Any]:
    """A structured tool's input (a mapping, or JSON text) as the call's arguments."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {"input": value}
        return dict(parsed) if isinstance(parsed, Mapping) else {"input": parsed}
    return {"input": value}


def wrap_invoke(original: Callable[..., Any]) -> Callable[..., Any]:
    def invoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        return decide(self, as_args(input), lambda args: original(self, args, config, **kwargs), once=True)

    return invoke


def wrap_ainvoke(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def ainvoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        return await adecide(self, as_args(input), lambda args: original(self, args, config, **kwargs), once=True)

    return ainvoke


def _positional(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"args": list(args), **kwargs} if args else dict(kwargs)


def _split(decided: dict[str, Any], had_positional: bool) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not had_positional:
        return (), decided
    rest = dict(decided)
    return tuple(rest.pop("args", ())), rest


def wrap_run(original: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        def execute(decided: dict[str, Any]) -> Any:
            positional, named = _split(decided, bool(args))
            return original(self, *positional, **named)

        return decide(self, _positional(args, kwargs), execute)

    return run


def wrap_arun(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def arun(self: Any, *args: Any, **kwargs: Any) -> Any:
        async def execute(decided: dict[str, Any]) -> Any:
            positional, named = _split(decided, bool(args))
            return await original(self, *positional, **named)

        return await adecide(self, _positional(args, kwargs), execute)

    return arun
