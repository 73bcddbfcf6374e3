"""A sequence rule in a real LangGraph graph: a support agent that has read a ticket with
personal data is asked before an external send; the same send as its first move is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from tether.core import AuditStore, Guard
from tether.langgraph import Tether

POLICY: dict[str, Any] = {
    "version": 1,
    "tools": {
        "read_ticket": {"effects": ["read"], "data": ["pii"]},
        "send_email": {"effects": ["external"], "accepts": ["pii"]},
    },
    "agents": {
        "support-bot": {
            "purpose": "answer support tickets",
            "owner": "team@acme.example",
            "tools": {"read_ticket": "allow", "send_email": "allow"},
        }
    },
    "sequences": [
        {
            "id": "pii-then-external",
            "reason": "an external send after reading personal data",
            "action": "ask",
            "after": [{"data": "pii"}],
            "then": {"effects": "external"},
            "within": "10 calls",
        }
    ],
}


class Script(BaseChatModel):
    """A model that answers each turn with the next scripted message."""

    turns: list[AIMessage]

    @property
    def _llm_type(self) -> str:
        return "script"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Script:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        message = self.turns[turn] if turn < len(self.turns) else AIMessage("done")
        return ChatResult(generations=[ChatGeneration(message=message)])


def call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}])


def support_graph(model: Script, tether: Tether, ran: list[str]) -> Any:
    @tool
    def read_ticket(ticket: str) -> str:
        """Read a support ticket."""
        ran.append("read_ticket")
        return f"Ticket {ticket}: Jane Roe (jane.roe@example.com, +44 20 7946 0958) asks for a refund."

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email outside the company."""
        ran.append("send_email")
        return "sent"

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([read_ticket, send_email], wrap_tool_call=tether.wrap_tool_call))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


SEND = ("send_email", {"to": "partner@vendor.example", "body": "Here is the customer's request."})


def test_an_external_send_after_reading_personal_data_is_asked_and_first_it_is_allowed(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=b"k" * 32)
    guard = Guard(POLICY, store=store)

    ran: list[str] = []
    after_ticket = Script(turns=[call("read_ticket", {"ticket": "T-7"}, "c1"), call(*SEND, "c2")])
    graph = support_graph(after_ticket, Tether(guard, agent="support-bot"), ran)
    result = graph.invoke({"messages": [HumanMessage("Handle ticket T-7")]}, {"configurable": {"thread_id": "t-7"}})
    assert ran == ["read_ticket"]  # the send did not run: the graph paused for a person
    (pending,) = result["__interrupt__"]
    assert "pii-then-external" in str(pending.value)
    asked = [e for e in store.session_events("t-7") if e.kind == "tool.decision" and e.tool == "send_email"]
    assert [(e.verdict, e.details["rule_ids"]) for e in asked] == [("ask", ["pii-then-external"])]

    ran.clear()
    send_first = Script(turns=[call(*SEND, "c1")])
    graph = support_graph(send_first, Tether(guard, agent="support-bot"), ran)
    result = graph.invoke({"messages": [HumanMessage("Write to the partner")]}, {"configurable": {"thread_id": "t-8"}})
    assert ran == ["send_email"]
    assert "__interrupt__" not in result
    guard.close()
