"""One step of a graph run in its own process: start (and pause at the breakpoint) or resume.

python -m tests.langgraph.resume_run start|resume DIR [ANSWER]
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from tether.core import AuditStore, Guard
from tether.langgraph import Tether

from .conftest import KEY, POLICY, ScriptedModel, calls
from .graphs import state_graph


def main(step: str, folder: Path, answer: str = "approve") -> None:
    ledger = folder / "refunds.txt"

    @tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        with ledger.open("a") as f:  # the side effect that must happen exactly once
            f.write(f"{order}:{amount}\n")
        return f"refunded {amount} on {order}"

    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    store = AuditStore(f"sqlite:///{folder / 'audit.db'}", key=KEY)
    saver = SqliteSaver(sqlite3.connect(folder / "checkpoints.db", check_same_thread=False))
    graph = state_graph(model, [refund], Tether(Guard(POLICY, store=store), agent="support-bot"), saver)
    config = {"configurable": {"thread_id": "order-A"}}
    if step == "start":
        result = graph.invoke({"messages": [HumanMessage("refund order A")]}, config)
    else:
        result = graph.invoke(Command(resume=answer), config)
    interrupts = [i.value for i in result.get("__interrupt__", ())]
    print(json.dumps({"interrupts": interrupts, "last": str(result["messages"][-1].content)}))
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
