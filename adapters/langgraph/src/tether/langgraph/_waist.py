"""The narrow waist: LangChain's own primitives, patched once, ask Tether.

Every LangChain tool runs through ``BaseTool.run`` / ``BaseTool.arun`` (``invoke``, ``ainvoke``,
``batch``, ``stream``, ``ToolNode``, ``create_agent``, prebuilt and supervisor agents, subgraphs,
direct calls in a node), and every chat-model call made with ``invoke``/``ainvoke``/``batch``
runs through ``BaseChatModel.generate`` / ``agenerate``. Tether patches these four (and, to know
which runs it governs, ``ToolNode.__init__`` and ``Pregel.stream``/``astream``), the way
sentry-python patches a framework's core call path, so any entry point, today's or a future
release's, passes a decision.

Who governs a call: the Tether that claimed the tool (a tool handed to a guarded ``ToolNode``,
``guard_tool``, or seen by the middleware; the claim travels with copies of the tool in its
metadata), else the Tether governing the run: the one whose callback handler is in the run's
callbacks, or the one whose mark a graph holding a guarded ``ToolNode`` puts in its runs'
``configurable`` (LangGraph hands it to every node, subgraph and tool of the run; a mark is
cheaper than a handler, which makes LangChain dispatch every event of the run). A tool nobody
claimed, run where no Tether governs, runs as LangChain runs it. The entry-point hooks (the
``ToolNode`` wrapper, the middleware) decide with everything they know (the AI message's batch
of calls, breakpoints) and hand the decision to the waist through a :class:`Gate`, so no call
is decided twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.runnables.config import ensure_config, var_child_runnable_config

from ._results import after, record_error

if TYPE_CHECKING:
    from tether.core import Decision, Session

    from ._guard import Tether

#: the key, in a claimed tool's metadata, naming the Tether that governs it
CLAIM = "tether_guard"
#: the key, in a governed run's ``configurable``, naming its Tether (a "__" key: LangGraph keeps it
#: out of checkpoint metadata, and hands it to every node, subgraph and tool of the run)
RUN_MARK = "__tether_guard"
#: the key, in the ``configurable`` of a run given no ``thread_id``, naming the session Tether
#: records that run in: one per top-level graph invocation, shared with its subgraphs
RUN_SESSION = "__tether_run"


@dataclass
class Gate:
    """A call an entry-point hook has decided: the waist runs it without deciding again."""

    tool: str  # the LangChain tool's name
    call_id: str | None
    session: Session
    decision: Decision
    messages_key: str = "messages"  # where a Command's update carries the messages (ToolNode's messages_key)
    reached: bool = False  # set once the tool's run starts: the waist records the result


_gate: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("tether_gate", default=None)
#: set while a hook (the middleware) records a model call, so the model waist does not record it again
model_recorded: contextvars.ContextVar[bool] = contextvars.ContextVar("tether_model_recorded", default=False)

_tethers: dict[str, Tether] = {}  # kept alive by their claims: a guarded tool outlives the code that guarded it
_nodes: weakref.WeakKeyDictionary[Any, Tether] = weakref.WeakKeyDictionary()  # guarded ToolNodes
_graphs: weakref.WeakKeyDictionary[Any, Tether | None] = weakref.WeakKeyDictionary()  # governed graphs
_install_lock = threading.Lock()
_installed = False


# -- claims ----------------------------------------------------------------------------------


def register(tether: Tether) -> None:
    _tethers[tether.key] = tether


def claim(tether: Tether, tool: Any) -> None:
    """Make ``tether`` govern ``tool`` wherever it runs (its copies too: the claim is in its metadata)."""
    metadata = getattr(tool, "metadata", None)
    if metadata is not None and metadata.get(CLAIM) == tether.key:
        return
    tool.metadata = {**(metadata or {}), CLAIM: tether.key}


def claimed_by(tool: Any) -> Tether | None:
    metadata = getattr(tool, "metadata", None)
    key = metadata.get(CLAIM) if metadata else None
    if key is None:
        return None
    tether = _tethers.get(key)
    if tether is None:  # a claim from elsewhere (a tool unpickled in another process): never run it unguarded
        from tether.core import TetherError

        raise TetherError(f"tool {getattr(tool, 'name', tool)!r} was guarded by a Tether this process does not have")
    return tether


def governor(tool: Any, callbacks: Any, config: Any) -> Tether | None:
    """The Tether that governs a run of ``tool``: its claim, else the run's."""
    return claimed_by(tool) or run_governor(callbacks, config) or tether_in(getattr(tool, "callbacks", None))


def run_governor(callbacks: Any, config: Any = None) -> Tether | None:
    """The Tether governing the current run: its handler among the callbacks, or the run's mark."""
    found = tether_in(callbacks)
    if found is not None:
        return found
    if config is None:
        config = var_child_runnable_config.get()
    key = ((config or {}).get("configurable") or {}).get(RUN_MARK)
    return _tethers.get(key) if key else None


def tether_in(callbacks: Any) -> Tether | None:
    """The Tether whose callback handler is among ``callbacks`` (a list or a callback manager)."""
    if not callbacks:
        return None
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", None) or []
    for handler in handlers:
        tether = getattr(handler, "tether_of_run", None)
        if tether is not None:
            return tether  # type: ignore[no-any-return]
    return None


def _wrapper_owner(wrapper: Any) -> Tether | None:
    """The Tether whose wrapper (its own, or its middleware's) this is."""
    from ._guard import Tether

    owner = getattr(wrapper, "__self__", None)
    if isinstance(owner, Tether):
        return owner
    tether = getattr(owner, "tether", None)  # TetherMiddleware (langchain is optional: no import here)
    return tether if isinstance(tether, Tether) else None


# -- the gate --------------------------------------------------------------------------------


def open_gate(gate: Gate) -> contextvars.Token[Gate | None]:
    return _gate.set(gate)


def close_gate(token: contextvars.Token[Gate | None]) -> None:
    _gate.reset(token)


def _take(tool: Any, call_id: str | None) -> Gate | None:
    """The gate this run passes through: the decided call with this tool's name and call id."""
    gate = _gate.get()
    if gate is None or gate.reached or gate.tool != tool.name or gate.call_id != call_id:
        return None
    gate.reached = True
    return gate


# -- the patches -----------------------------------------------------------------------------


def install() -> None:
    """Patch LangChain's and LangGraph's primitives once per process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from langchain_core.language_models.chat_models import BaseChatModel
        from langchain_core.tools import BaseTool

        from langgraph.prebuilt import ToolNode
        from langgraph.pregel import Pregel

        BaseTool.run = _patched_run(BaseTool.run)  # type: ignore[method-assign]
        BaseTool.arun = _patched_arun(BaseTool.arun)  # type: ignore[method-assign]
        ToolNode.__init__ = _patched_tool_node_init(ToolNode.__init__)  # type: ignore[method-assign]
        Pregel.stream = _patched_stream(Pregel.stream)  # type: ignore[method-assign]
        Pregel.astream = _patched_stream(Pregel.astream)  # type: ignore[method-assign]
        BaseChatModel.generate = _patched_generate(BaseChatModel.generate)  # type: ignore[method-assign]
        BaseChatModel.agenerate = _patched_agenerate(BaseChatModel.agenerate)  # type: ignore[method-assign]
        _installed = True


def _patched_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(self: Any, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _take(self, kwargs.get("tool_call_id"))
        if gate is not None:
            return _governed_body(original, self, tool_input, args, kwargs, gate)
        tether = governor(self, kwargs.get("callbacks"), kwargs.get("config"))
        if tether is None:
            return original(self, tool_input, *args, **kwargs)
        return tether.run_at_waist(original, self, tool_input, args, kwargs)

    return run


def _patched_arun(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def arun(self: Any, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _take(self, kwargs.get("tool_call_id"))
        if gate is not None:
            return await _agoverned_body(original, self, tool_input, args, kwargs, gate)
        tether = governor(self, kwargs.get("callbacks"), kwargs.get("config"))
        if tether is None:
            return await original(self, tool_input, *args, **kwargs)
        return await tether.arun_at_waist(original, self, tool_input, args, kwargs)

    return arun


def _governed_body(original: Callable[..., Any], tool: Any, tool_input: Any, args: Any, kwargs: Any, gate: Gate) -> Any:
    """Run a decided call's body (calls made inside it are decided on their own) and record it."""
    token = _gate.set(None)
    try:
        output = original(tool, tool_input, *args, **kwargs)
    except Exception as exc:
        record_error(gate.session, gate.decision, exc)
        raise
    finally:
        _gate.reset(token)
    return after(gate.session, gate.decision, output, gate.messages_key)


async def _agoverned_body(
    original: Callable[..., Any], tool: Any, tool_input: Any, args: Any, kwargs: Any, gate: Gate
) -> Any:
    token = _gate.set(None)
    try:
        output = await original(tool, tool_input, *args, **kwargs)
    except Exception as exc:
        await asyncio.to_thread(record_error, gate.session, gate.decision, exc)
        raise
    finally:
        _gate.reset(token)
    return await asyncio.to_thread(after, gate.session, gate.decision, output, gate.messages_key)


def run_decided(original: Callable[..., Any], tool: Any, tool_input: Any, args: Any, kwargs: Any, gate: Gate) -> Any:
    gate.reached = True
    return _governed_body(original, tool, tool_input, args, kwargs, gate)


async def arun_decided(
    original: Callable[..., Any], tool: Any, tool_input: Any, args: Any, kwargs: Any, gate: Gate
) -> Any:
    gate.reached = True
    return await _agoverned_body(original, tool, tool_input, args, kwargs, gate)


def _patched_tool_node_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        guard_node(self)

    return __init__


def guard_node(node: Any) -> None:
    """A ToolNode built with a Tether wrapper, or holding a tool a Tether governs, is governed
    by that Tether, with all its tools: so a node rebuilt from a guarded one (a supervisor adding
    its handoff tools) keeps the guard, wrappers included."""
    tools: list[Any] = list(getattr(node, "tools_by_name", {}).values())
    wrap, awrap = getattr(node, "_wrap_tool_call", None), getattr(node, "_awrap_tool_call", None)
    tether = _wrapper_owner(wrap) or _wrapper_owner(awrap)
    if tether is None:
        tether = next((t for t in map(claimed_by, tools) if t is not None), None)
        if tether is None:
            return
        if wrap is None and awrap is None:
            node._wrap_tool_call, node._awrap_tool_call = tether.wrap_tool_call, tether.awrap_tool_call
    for tool in tools:
        tether.claim(tool)
    _nodes[node] = tether


def _patched_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def stream(self: Any, input: Any, config: Any = None, *args: Any, **kwargs: Any) -> Any:
        tether = graph_governor(self)
        if tether is not None:
            config = marked(config, tether.key)
        return original(self, input, with_run_session(config), *args, **kwargs)

    return stream


def graph_governor(graph: Any, depth: int = 0) -> Tether | None:
    """The Tether governing a graph: the one of a guarded ToolNode in it or in its subgraphs."""
    try:
        return _graphs[graph]
    except (KeyError, TypeError):
        pass
    found: Tether | None = None
    if depth < 8:
        for node in (getattr(graph, "nodes", None) or {}).values():
            bound = getattr(node, "bound", None)
            found = _nodes.get(bound) if _hashable(bound) else None
            subgraphs = [*(getattr(node, "subgraphs", None) or ()), *([bound] if hasattr(bound, "nodes") else [])]
            for sub in subgraphs:
                found = found or graph_governor(sub, depth + 1)
            if found is not None:
                break
    with contextlib.suppress(TypeError):  # a graph that cannot be weakly referenced is scanned each run
        _graphs[graph] = found
    return found


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return value is not None


def marked(config: Any, key: str) -> dict[str, Any]:
    """``config`` marked as a run ``key``'s Tether governs (a copy; the caller's stays as it was).

    The mark is a top-level key: LangGraph moves such keys into the run's ``configurable``,
    merging them with what it inherits (a ``configurable`` given here would replace the
    inherited one on langgraph 1.0)."""
    config = dict(config or {})
    config[RUN_MARK] = key
    return config


def with_run_session(config: Any) -> Any:
    """``config`` given a session of its own when it has no ``thread_id`` (nor ``tether_session``)
    and no outer run gave it one: a graph invoked without a thread is a conversation of its own,
    not one shared with every other such run."""
    effective = ensure_config(config).get("configurable") or {}
    if any(effective.get(k) for k in ("thread_id", "tether_session", RUN_SESSION)):
        return config
    config = dict(config or {})
    config[RUN_SESSION] = f"run-{uuid.uuid4().hex}"  # a top-level key: see marked()
    return config


def _patched_generate(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def generate(self: Any, messages: Any, stop: Any = None, callbacks: Any = None, **kwargs: Any) -> Any:
        tether = None if model_recorded.get() else run_governor(callbacks)
        if tether is None:
            return original(self, messages, stop, callbacks, **kwargs)
        from ._models import screened_generate

        return screened_generate(tether, original, self, messages, stop, callbacks, kwargs)

    return generate


def _patched_agenerate(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def agenerate(self: Any, messages: Any, stop: Any = None, callbacks: Any = None, **kwargs: Any) -> Any:
        tether = None if model_recorded.get() else run_governor(callbacks)
        if tether is None:
            return await original(self, messages, stop, callbacks, **kwargs)
        from ._models import ascreened_generate

        return await ascreened_generate(tether, original, self, messages, stop, callbacks, kwargs)

    return agenerate
