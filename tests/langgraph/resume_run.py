"""One step of a graph run in its own process: start (and pause at the breakpoint) or resume.

python -m tests.langgraph.resume_run start|pending|resume DIR THREAD [ANSWER]

Checkpoints go to SQLite in DIR, or to PostgreSQL when TETHER_TEST_CHECKPOINTS names a database.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from tether.core import AuditStore, Guard
from tether.langgraph import Tether, pending

from .conftest import KEY, POLICY, ScriptedModel, calls
from .graphs import state_graph


@contextlib.contextmanager
def checkpointer(folder: Path) -> Iterator[Any]:
    url = os.environ.get("TETHER_TEST_CHECKPOINTS")
    if not url:
        yield SqliteSaver(sqlite3.connect(folder / "checkpoints.db", check_same_thread=False))
        return
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        yield saver


def main(step: str, folder: Path, thread: str, answer: str = "approve") -> None:
    ledger = folder / "refunds.txt"

    @tool
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        with ledger.open("a") as f:  # the side effect that must happen exactly once
            f.write(f"{order}:{amount}\n")
        return f"refunded {amount} on {order}"

    model = ScriptedModel(script=[calls(("refund", {"order": "A", "amount": 100}, "r1"))])
    store = AuditStore(f"sqlite:///{folder / 'audit.db'}", key=KEY)
    config = {"configurable": {"thread_id": thread}}
    with checkpointer(folder) as saver:
        graph = state_graph(model, [refund], Tether(Guard(POLICY, store=store), agent="support-bot"), saver)
        if step == "start":
            result = graph.invoke({"messages": [HumanMessage("refund order A")]}, config)
        elif step == "pending":  # what waits, read from the checkpoint without running anything
            print(json.dumps({"pending": [i.value for i in pending(graph, config)]}))
            store.close()
            return
        else:
            result = graph.invoke(Command(resume=answer), config)
    interrupts = [i.value for i in result.get("__interrupt__", ())]
    print(json.dumps({"interrupts": interrupts, "last": str(result["messages"][-1].content)}))
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
