"""Helpers the adapters' tests share: a person answering the approval queue, an example run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tether.core import AuditStore
from tether.core.approvals.queue import ApprovalQueue, Entry


def answer_when_asked(store: AuditStore, *, approved: bool, by: str = "alice") -> threading.Thread:
    """Answer the first approval request that appears in the queue, from another thread."""
    queue = ApprovalQueue(store)

    def answer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending: list[Entry] = queue.entries()
            if pending:
                queue.answer(pending[0].id, approved=approved, by=by)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def run_example(example: Path, folder: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run an example as a user would, without a terminal, on its own store in ``folder``.
    Returns the finished process and the store's URL."""
    store = f"sqlite:///{folder / 'tether.db'}"
    done = subprocess.run(
        [sys.executable, str(example)],
        cwd=folder,
        env={**os.environ, "TETHER_STORE": store, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, store
