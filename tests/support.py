"""Helpers the tests share: a person answering the approval queue, an example run, bounded
waits and reads (a test that waits must fail, not hang), and importing a framework."""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import IO, Any, TypeVar

import pytest

from tether.core import AuditStore
from tether.core.approvals.queue import ApprovalQueue, Entry

T = TypeVar("T")


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` set, as CI services and ``.ci/run`` do)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(module: str, reason: str | None = None) -> ModuleType:
    """Import a framework the tests of a folder need. Where it is missing the tests are skipped,
    saying so; in CI a missing framework is a broken install, and fails the run instead."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = reason or f"these tests need {module!r} ({exc})"
        if in_ci():
            pytest.fail(f"{why}; CI installs it, so its absence is an error", pytrace=False)
        pytest.skip(why, allow_module_level=True)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check: Callable[[], T], timeout: float, what: str, *, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail (saying ``what``) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(every)


async def await_until(check: Callable[[], Any], timeout: float, what: str, *, every: float = 0.01) -> Any:
    """:func:`wait_until` for an event loop: sleeps without blocking it."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(every)
    return found


def run_within(coroutine: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
    """Run ``coroutine`` on its own event loop and thread; fail (saying ``what``) after ``timeout``
    s, even where cancelling it hangs too (``asyncio.wait_for`` alone then waits for ever)."""
    outcome: list[Any] = []

    def go() -> None:
        try:
            outcome.append((True, asyncio.run(asyncio.wait_for(coroutine, timeout))))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=go, name=f"run_within: {what}", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if not outcome:
        raise AssertionError(f"{what}: did not end within {timeout:g}s (nor when cancelled)")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def read_line(stream: IO[str], timeout: float) -> str:
    """The next line a child process prints; fail after ``timeout`` s instead of blocking forever."""
    line: list[str] = []
    done = threading.Event()

    def read() -> None:
        line.append(stream.readline())
        done.set()

    threading.Thread(target=read, name="read-line", daemon=True).start()
    if not done.wait(timeout):
        raise AssertionError(f"no line from the child process within {timeout:g}s")
    return line[0]


def answer_when_asked(
    store: AuditStore, *, approved: bool, by: str = "alice", within: float = 170.0
) -> threading.Thread:
    """Answer the first approval request that appears in the queue within ``within`` seconds,
    from another thread. The wait is long: on a loaded machine the agent (and the processes it
    starts) may take a while to get to the call that asks."""
    queue = ApprovalQueue(store)

    def answer() -> None:
        deadline = time.monotonic() + within
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
