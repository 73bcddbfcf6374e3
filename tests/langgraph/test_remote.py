"""A LangGraph graph governed by a remote guard: the decisions are made, and recorded, by a
decision API in another process (uvicorn in a subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from tests.support import require
from tether.core import TetherError
from tether.langgraph import Tether

from .conftest import Ran, ScriptedModel, calls
from .graphs import state_graph

require("fastapi", "the decision API needs tether[serve]")

from tests.core.service_server import Server, serving  # noqa: E402
from tether.core.service.client import RemoteGuard  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path) as running:
        yield running


def test_a_denied_tool_does_not_run_and_the_service_records_it(server: Server, ran: Ran) -> None:
    @tool
    def search(q: str) -> str:
        """Search the knowledge base."""
        ran.calls.append(("search", {"q": q}))
        return f"results for {q}: write to jane.doe@example.com"

    @tool
    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.calls.append(("delete_file", {"path": path}))
        return "deleted"

    model = ScriptedModel(script=[calls(("search", {"q": "refunds"}, "s1"), ("delete_file", {"path": "/"}, "d1"))])
    with RemoteGuard(server.url, server.credential("bot"), timeout=10) as guard:
        tether = Tether(guard, agent="bot", approvals="queue")
        graph = state_graph(model, [search, delete_file], tether)
        graph.invoke({"messages": [HumanMessage("find refunds")]}, {"configurable": {"thread_id": "t-1"}})
        session = tether.session_for({"configurable": {"thread_id": "t-1"}, "metadata": {"langgraph_node": "tools"}})
    assert ran.calls == [("search", {"q": "refunds"})]  # delete_file never ran
    replies = model.tool_replies()
    assert "denied the call to 'delete_file'" in replies["d1"]
    assert "jane.doe" not in replies["s1"] and "results for refunds" in replies["s1"]  # redacted by the service
    assert session.remote_id is not None
    store = server.store()
    try:
        events = store.session_events(session.remote_id)
    finally:
        store.close()
    decided = {(e.tool, e.verdict) for e in events if e.kind == "tool.decision"}
    assert decided == {("search", "allow"), ("delete_file", "deny")}
    assert [e.tool for e in events if e.kind == "tool.result"] == ["search"]
    assert all(e.details.get("context", {}).get("session") == "t-1" for e in events if e.kind == "tool.decision")


def test_a_remote_guard_refuses_a_graph_pause_at_wiring_time() -> None:
    with RemoteGuard("http://127.0.0.1:9/v1", "tth_x_y") as guard, pytest.raises(TetherError, match="queue"):
        Tether(guard, agent="bot")  # the default pauses the graph: it needs the audit here
