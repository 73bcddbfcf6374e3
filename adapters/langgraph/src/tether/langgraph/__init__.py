"""Tether for LangGraph and LangChain: every tool call decided by ``tether.core`` before it runs.

from tether.langgraph import Tether

t = Tether(guard, agent="support-bot")
tools = ToolNode([...], wrap_tool_call=t.wrap_tool_call, awrap_tool_call=t.awrap_tool_call)
agent = create_agent(model, [...], middleware=[t.middleware()])      # LangChain 1.x
graph.invoke(inputs, {"callbacks": [t.callback_handler()], "configurable": {"thread_id": "42"}})
"""

from ._answers import pending, resume
from ._batch import BreakpointError
from ._guard import UNNAMED_MCP_SERVER, Tether

__all__ = ["UNNAMED_MCP_SERVER", "BreakpointError", "Tether", "pending", "resume"]
