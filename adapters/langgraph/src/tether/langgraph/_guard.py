"""Tool calls of a LangGraph run, decided by Tether before they run."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from langchain_core.messages import ToolMessage

from langgraph.config import get_config
from langgraph.errors import GraphBubbleUp
from langgraph.types import Command
from tether.core import Decision, Guard, Mode, Session, TetherError, mcp_tool
from tether.core.planners import Planner

from . import _waist
from ._batch import Batches
from ._results import after, record_error, refusal_message

log = logging.getLogger("tether.langgraph")

Approvals = Literal["interrupt", "queue"]
Execute = Callable[[Any], Any]
AExecute = Callable[[Any], Awaitable[Any]]

_MAX_REMEMBERED = 4096


class Tether:
    """Tether for LangGraph and LangChain: every tool call decided by ``guard`` before it runs.

    ``agent`` names the agent in the policy (default: ``configurable["tether_agent"]``, then the
    run's ``lc_agent_name``, then, for an agent that runs as a subgraph, the parent graph's node
    that hosts it, else ``"langgraph"``); ``session`` fixes the session (default:
    ``configurable["tether_session"]``, then ``thread_id``); ``user`` and ``tenant`` say on whose
    behalf the agent acts (default: ``configurable["tether_user"]`` or ``["user_id"]``, and
    ``configurable["tether_tenant"]`` or ``["tenant_id"]``). ``approvals`` says how a call the
    policy marks ``ask`` waits for a person: ``"interrupt"`` pauses the graph with
    ``interrupt()`` (needs a checkpointer), ``"queue"`` waits on the guard's approver
    (e.g. :class:`~tether.core.QueueApprover`, answered with ``tether approvals``). ``planner``
    gives each session a task scope from the user's request (``tether.langgraph.planner``).

    Plug it in with ``ToolNode(tools, wrap_tool_call=t.wrap_tool_call, awrap_tool_call=t.awrap_tool_call)``,
    ``create_agent(..., middleware=[t.middleware()])``, ``config={"callbacks": [t.callback_handler()]}``
    or ``t.guard_tool(tool)``. Creating a ``Tether`` patches LangChain's tool and model primitives
    once per process, so a guarded tool is decided however it is run.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        agent: str | None = None,
        session: str | None = None,
        user: str | None = None,
        tenant: str | None = None,
        approvals: Approvals = "interrupt",
        messages_key: str = "messages",
        planner: Planner | None = None,
    ) -> None:
        if approvals not in ("interrupt", "queue"):
            raise TetherError(f"approvals must be 'interrupt' or 'queue', not {approvals!r}")
        if getattr(guard, "remote", False):
            # A guard of a Tether service holds neither the policy nor the audit here: a graph's
            # pause settles answers against both (the decisions recorded before it paused).
            if approvals != "queue":
                raise TetherError(
                    "a remote guard's approvals are answered in the service's approval queue: "
                    "use Tether(guard, approvals='queue') (a graph cannot pause for them)"
                )
            if planner is not None:
                raise TetherError("a remote guard cannot plan scopes here: give its sessions a scope instead")
        from ._handler import TetherCallbackHandler

        self.guard = guard
        self.agent = agent
        self.session_id = session
        self.user = user
        self.tenant = tenant
        self.approvals: Approvals = approvals
        self.messages_key = messages_key
        self.planner = planner
        self.key = os.urandom(8).hex()
        self.handler = TetherCallbackHandler(self)
        self._sessions: OrderedDict[tuple[str, ...], Session] = OrderedDict()
        self._causes: OrderedDict[tuple[str, str], str] = OrderedDict()  # (session, tool_call_id) -> response
        self._names: dict[str, str] = {}  # LangChain tool name -> the policy's name (MCP tools: server/tool)
        self._batches = Batches()
        self._lock = threading.Lock()
        self._fallback_session = os.urandom(8).hex()
        self._warned = False
        _waist.register(self)
        _waist.install()

    # -- who and where -----------------------------------------------------------------------

    def session_for(self, config: Mapping[str, Any] | None = None) -> Session:
        """The Tether session of the run ``config`` belongs to (default: the current run)."""
        if config is None:
            config = current_config()
        conf = config.get("configurable") or {}
        meta = config.get("metadata") or {}
        node = str(meta.get("langgraph_node") or "")
        agent = self.agent or conf.get("tether_agent") or meta.get("lc_agent_name") or _outer_node(conf) or "langgraph"
        session_id = self.session_id or conf.get("tether_session") or conf.get("thread_id")
        user = self.user or conf.get("tether_user") or conf.get("user_id")
        tenant = self.tenant or conf.get("tether_tenant") or conf.get("tenant_id")
        if session_id is None:
            # a graph run without a thread has a session of its own; a call outside any graph, the fallback
            session_id = conf.get(_waist.RUN_SESSION) or self._fallback_session
            if not self._warned:
                self._warned = True
                log.warning(
                    "no thread_id in the run's config: Tether records each such graph run in a session of "
                    "its own (this one: %s), and calls made outside any graph in session %s; pass "
                    "config={'configurable': {'thread_id': ...}} to give each conversation its own session",
                    session_id,
                    self._fallback_session,
                )
        key = (str(agent), str(session_id), node, str(user or ""), str(tenant or ""))
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                context = {"framework": "langgraph", **({"node": node} if node else {})}
                session = self.guard.session(
                    str(agent),
                    str(session_id),
                    user=str(user) if user else None,
                    tenant=str(tenant) if tenant else None,
                    context=context,
                    planner=self.planner,
                )
                self._sessions[key] = session
                _trim(self._sessions)
            return session

    def remember_proposals(self, session: Session, event_id: str, tool_calls: Any) -> None:
        """Link the calls a model response proposed to its audit event (the decision chain)."""
        with self._lock:
            for call in tool_calls or ():
                if call.get("id"):
                    self._causes[(session.id, str(call["id"]))] = event_id
            _trim(self._causes)

    def cause_of(self, session: Session, call_id: str | None) -> str | None:
        return self._causes.get((session.id, call_id)) if call_id else None

    def claim(self, tool: Any) -> Any:
        """Govern ``tool`` wherever it runs (and learn the name the policy knows it by)."""
        metadata = tool.metadata
        if metadata is None or metadata.get(_waist.CLAIM) != self.key or tool.name not in self._names:
            _waist.claim(self, tool)
            self._names[tool.name] = policy_name(tool)
        return tool

    def name_of(self, tool_name: str) -> str:
        return self._names.get(tool_name, tool_name)

    # -- ToolNode / AgentMiddleware wrappers -------------------------------------------------

    def wrap_tool_call(self, request: Any, execute: Execute) -> ToolMessage | Command[Any]:
        """``ToolNode(wrap_tool_call=...)``: decide, then run, refuse or pause the call."""
        config = _config_of(request)
        session = self.session_for(config)
        call = self._call_of(request)
        decision = self._decide(session, call, config, request.state)
        if not decision.allowed:
            return refusal_message(decision, request.tool_call.get("id"), request.tool_call.get("name"))
        gate = _waist.Gate(
            request.tool_call.get("name"), request.tool_call.get("id"), session, decision, self.messages_key
        )
        token = _waist.open_gate(gate)
        try:
            result = execute(_with_args(request, decision))
        except Exception as exc:
            if not gate.reached:
                record_error(session, decision, exc)
            raise
        finally:
            _waist.close_gate(token)
        return result if gate.reached else after(session, decision, result, self.messages_key)  # the tool never started

    async def awrap_tool_call(self, request: Any, execute: AExecute) -> ToolMessage | Command[Any]:
        """The async twin of :meth:`wrap_tool_call` (``ainvoke``/``astream``)."""
        config = _config_of(request)
        session = self.session_for(config)
        call = self._call_of(request)
        decision = await asyncio.to_thread(self._decide, session, call, config, request.state)  # off the loop
        if not decision.allowed:
            return refusal_message(decision, request.tool_call.get("id"), request.tool_call.get("name"))
        gate = _waist.Gate(
            request.tool_call.get("name"), request.tool_call.get("id"), session, decision, self.messages_key
        )
        token = _waist.open_gate(gate)
        try:
            result = await execute(_with_args(request, decision))
        except Exception as exc:
            if not gate.reached:
                await asyncio.to_thread(record_error, session, decision, exc)
            raise
        finally:
            _waist.close_gate(token)
        return result if gate.reached else await asyncio.to_thread(after, session, decision, result, self.messages_key)

    def _call_of(self, request: Any) -> dict[str, Any]:
        call = request.tool_call
        if request.tool is not None:
            self.claim(request.tool)
        return {"name": self.name_of(call["name"]), "args": call.get("args") or {}, "id": call.get("id")}

    def middleware(self) -> Any:
        """An ``AgentMiddleware`` for LangChain's ``create_agent`` (needs ``langchain``)."""
        from ._middleware import TetherMiddleware

        return TetherMiddleware(self)

    def callback_handler(self) -> Any:
        """This Tether's callback handler: in a run's callbacks, it makes Tether govern every tool
        and model call of that run (graphs holding a guarded ``ToolNode`` get it by themselves)."""
        return self.handler

    def guard_tool(self, tool: Any) -> Any:
        """Govern a LangChain tool wherever it is called (a custom node, another executor, a
        direct ``invoke``); returns the tool itself."""
        return self.claim(tool)

    # -- the waist: a governed tool run that no hook decided -----------------------------------

    def run_at_waist(self, original: Callable[..., Any], tool: Any, tool_input: Any, args: Any, kwargs: Any) -> Any:
        decided = self._decide_at_waist(tool, tool_input, kwargs)
        if isinstance(decided, _Skip):
            return original(tool, tool_input, *args, **kwargs)
        if not isinstance(decided, _waist.Gate):
            return decided
        tool_input = _decided_input(tool_input, decided.decision)
        return _waist.run_decided(original, tool, tool_input, args, kwargs, decided)

    async def arun_at_waist(
        self, original: Callable[..., Any], tool: Any, tool_input: Any, args: Any, kwargs: Any
    ) -> Any:
        decided = await asyncio.to_thread(self._decide_at_waist, tool, tool_input, kwargs)
        if isinstance(decided, _Skip):
            return await original(tool, tool_input, *args, **kwargs)
        if not isinstance(decided, _waist.Gate):
            return decided
        tool_input = _decided_input(tool_input, decided.decision)
        return await _waist.arun_decided(original, tool, tool_input, args, kwargs, decided)

    def _decide_at_waist(self, tool: Any, tool_input: Any, kwargs: Mapping[str, Any]) -> Any:
        """A gate to run the call through, or what the caller gets instead (the refusal)."""
        call_id = kwargs.get("tool_call_id")
        try:
            config = kwargs.get("config") or current_config()
            session = self.session_for(config)
            call = {"name": policy_name(tool), "args": model_args(tool, tool_input), "id": call_id}
            decision = self._decide(session, call, config, None)
        except GraphBubbleUp:
            raise
        except Exception:
            if self.guard.mode is not Mode.MONITOR:
                raise
            log.exception("Tether failed before %s ran (monitor mode: it runs)", tool.name)
            return _Skip()
        if not decision.allowed:
            return refusal_message(decision, call_id, tool.name) if call_id else decision.refusal()
        return _waist.Gate(tool.name, call_id, session, decision, self.messages_key)

    # -- deciding ----------------------------------------------------------------------------

    def _decide(self, session: Session, call: Mapping[str, Any], config: Mapping[str, Any], state: Any) -> Decision:
        if self.approvals == "queue":
            return session.resolve(self._decide_one(session, call))
        batch = self._batches.of(call, config, state, self.messages_key, self.name_of)
        return batch.decision(session, call, self._decide_one)

    def _decide_one(self, session: Session, call: Mapping[str, Any]) -> Decision:
        call_id = call.get("id")
        return session.before_tool(
            call["name"], call.get("args"), call_id=call_id, caused_by=self.cause_of(session, call_id)
        )


class _Skip:
    """Tether failed in monitor mode: the call runs as if Tether were not there."""


#: the server part of the name of an MCP tool whose server's name cannot be found
#: (``load_mcp_tools(session)`` without ``server_name``): ``mcp/<tool>``
UNNAMED_MCP_SERVER = "mcp"


def policy_name(tool: Any) -> str:
    """The name a policy gives a LangChain tool: its own name, or ``server/tool`` for a tool that
    ``langchain-mcp-adapters`` loaded from an MCP server (``mcp/tool`` when it was loaded without
    a server name: an MCP tool never passes for a native one, and its output is untrusted)."""
    coroutine = getattr(tool, "coroutine", None)
    if not str(getattr(coroutine, "__module__", None) or "").startswith("langchain_mcp_adapters."):
        return str(tool.name)
    code = getattr(coroutine, "__code__", None)
    cells = dict(zip(getattr(code, "co_freevars", ()), getattr(coroutine, "__closure__", None) or (), strict=False))
    server = _cell(cells.get("server_name"))
    served = getattr(_cell(cells.get("tool")), "name", None) or tool.name
    return mcp_tool(str(server) if server else UNNAMED_MCP_SERVER, str(served))


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents if cell is not None else None
    except ValueError:  # an empty cell
        return None


def model_args(tool: Any, tool_input: Any) -> dict[str, Any]:
    """The arguments the caller gave, without those LangGraph injects (state, store, runtime)."""
    if isinstance(tool_input, str):
        return {"input": tool_input}
    if not isinstance(tool_input, Mapping):
        return {"input": tool_input}
    keys = _model_keys(tool)
    return {k: v for k, v in tool_input.items() if (keys is None or k in keys) and not _injected(v)}


def _model_keys(tool: Any) -> set[str] | None:
    try:
        schema = tool.tool_call_schema
    except Exception:  # noqa: BLE001 - a tool whose schema cannot be built: keep every argument
        return None
    if isinstance(schema, Mapping):
        properties = schema.get("properties")
        return set(properties) if isinstance(properties, Mapping) else None
    fields = getattr(schema, "model_fields", None)
    return set(fields) if isinstance(fields, Mapping) else None


def _injected(value: Any) -> bool:
    from langgraph.prebuilt import ToolRuntime
    from langgraph.store.base import BaseStore

    return isinstance(value, (ToolRuntime, BaseStore))


def _decided_input(tool_input: Any, decision: Decision) -> Any:
    """The tool's input with the arguments Tether allowed (redacted or edited by an approver)."""
    if isinstance(tool_input, Mapping):
        injected = {k: v for k, v in tool_input.items() if k not in decision.call.args}
        return {**injected, **dict(decision.args)}
    return decision.args.get("input", tool_input)


def current_config() -> dict[str, Any]:
    """The config of the graph run this code runs in ({} outside a graph)."""
    try:
        return dict(get_config())
    except RuntimeError:
        return {}


def _config_of(request: Any) -> dict[str, Any]:
    runtime = request.runtime
    config = getattr(runtime, "config", None) if runtime is not None else None
    return dict(config) if config is not None else current_config()


def _with_args(request: Any, decision: Decision) -> Any:
    """The request with the arguments Tether allowed (redacted or edited by an approver)."""
    if dict(decision.args) == dict(request.tool_call.get("args") or {}):
        return request
    return request.override(tool_call={**request.tool_call, "args": dict(decision.args)})


def _outer_node(conf: Mapping[str, Any]) -> str | None:
    """In a graph of agents, the node of the top graph an agent's subgraph runs in."""
    namespace = str(conf.get("checkpoint_ns") or "")
    return namespace.split(":", 1)[0] if "|" in namespace else None


def _trim(cache: OrderedDict[Any, Any]) -> None:
    while len(cache) > _MAX_REMEMBERED:
        cache.popitem(last=False)
