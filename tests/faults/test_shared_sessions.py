"""Several processes acting in one session through one store (SQLite file or PostgreSQL):
limits hold exactly across them, and what one of them lets into the session (taint) is seen
by the others before their next decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tether.core import AuditStore, Guard
from tether.core.audit import verify
from tether.core.audit.events import Kind

from ..core.conftest import KEY, policy_with
from ..support import read_line

ROOT = Path(__file__).resolve().parents[2]

LIMITED = policy_with()
LIMITED["agents"]["bot"]["limits"] = {"max_calls": 10}

TAINT_DENIES = policy_with(
    rules=[
        {
            "id": "no-email-after-untrusted",
            "tools": ["send_email"],
            "when": "session.tainted",
            "action": "deny",
            "reason": "email after untrusted content",
        }
    ]
)

# Each child makes its calls in the shared session and prints how many were allowed.
CALLER = textwrap.dedent(
    """
    import json, os, sys, time
    from tether.core import AuditStore, Guard
    from tests.core.conftest import KEY
    url, policy, session_id, calls, go = sys.argv[1], json.loads(sys.argv[2]), *sys.argv[3:]
    calls = int(calls)
    guard = Guard(policy, store=AuditStore(url, key=KEY, timeout=30))
    session = guard.session("bot", session_id)
    assert not session.before_tool("delete_file", {}).allowed  # not granted: loads the session, counts nothing
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:  # all start with the session loaded
        time.sleep(0.01)
    allowed = 0
    for i in range(calls):
        decision = session.before_tool("search", {"q": i})
        if decision.allowed:
            allowed += 1
            session.after_tool(decision, f"result {i}")
    print(allowed)
    guard.close()
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    from tether.core import AuditStore, Guard
    from tests.core.conftest import KEY
    url, policy, session_id = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    guard = Guard(policy, store=AuditStore(url, key=KEY, timeout=30))
    session = guard.session("bot", session_id)
    decision = session.before_tool("fetch_page", {"url": "https://example.com/ticket"})
    assert decision.allowed, decision.reason
    session.after_tool(decision, "a page from the web")
    guard.close()
    """
)


def child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finished(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return out


def test_a_session_limit_holds_exactly_across_four_processes(store_url: str, tmp_path: Path) -> None:
    AuditStore(store_url, key=KEY).close()
    go = tmp_path / "go"
    children = [child(CALLER, store_url, json.dumps(LIMITED), "shared", "10", str(go)) for _ in range(4)]
    for c in children:  # each has loaded the session, with no calls counted yet
        assert c.stdout is not None
        assert read_line(c.stdout, 60).strip() == "ready"
    go.touch()
    allowed = [int(finished(c)) for c in children]
    assert sum(allowed) == 10, allowed

    store = AuditStore(store_url, key=KEY)
    decisions = [e for e in store.events(session_id="shared") if e.kind == Kind.TOOL_DECISION]
    assert sum(json.loads(e.data)["allowed"] for e in decisions) == 10
    assert len(decisions) == 44  # every call was decided and recorded, allowed or not
    starts = [e for e in store.events(session_id="shared") if e.kind == Kind.SESSION]
    assert len(starts) == 1  # racing processes start the session once
    assert verify(store.key, store.events()).ok
    store.close()


def test_taint_recorded_by_another_process_is_seen_by_a_process_that_has_the_session_loaded(
    store_url: str,
) -> None:
    guard = Guard(TAINT_DENIES, store=AuditStore(store_url, key=KEY))
    session = guard.session("bot", "shared")
    email = {"to": "boss@acme.example", "body": "weekly report"}
    assert session.before_tool("send_email", email).allowed  # the session is loaded here, clean

    finished(child(READER, store_url, json.dumps(TAINT_DENIES), "shared"))  # another process reads the web

    decision = session.before_tool("send_email", email)
    assert not decision.allowed
    assert "no-email-after-untrusted" in decision.rule_ids
    assert session.tainted
    guard.close()


def test_a_limit_holds_across_two_guards_of_one_process(store_url: str) -> None:
    first = Guard(LIMITED, store=AuditStore(store_url, key=KEY))
    second = Guard(LIMITED, store=AuditStore(store_url, key=KEY))
    sessions = [first.session("bot", "shared"), second.session("bot", "shared")]
    allowed = sum(sessions[i % 2].before_tool("search", {"q": i}).allowed for i in range(30))
    assert allowed == 10
    first.close()
    second.close()
