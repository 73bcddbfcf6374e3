"""Small real graphs for the tests: a hand-written StateGraph and LangChain's create_agent."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from tether.langgraph import Tether


def state_graph(model: Any, tools: list[Any], tether: Tether | None, checkpointer: Any = None) -> Any:
    """model -> tools -> model ... as people write it by hand, tools behind Tether's wrapper."""

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def acall_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    wrap = {"wrap_tool_call": tether.wrap_tool_call, "awrap_tool_call": tether.awrap_tool_call} if tether else {}
    builder = StateGraph(MessagesState)
    builder.add_node("agent", _either(call_model, acall_model))
    builder.add_node("tools", ToolNode(tools, **wrap))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


def _either(sync: Any, asynchronous: Any) -> Any:
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(sync, afunc=asynchronous)


def agent(model: Any, tools: list[Any], tether: Tether, checkpointer: Any = None) -> Any:
    from langchain.agents import create_agent

    return create_agent(model, tools, middleware=[tether.middleware()], checkpointer=checkpointer)


END_ = END
