"""The remote guard against a live decision API (uvicorn in a subprocess), and against services
that fail: down, stalled, answering 5xx or nonsense. Every failure is a denial, never an allow."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import answer_when_asked, free_port, require
from tether.core import Decision, Enforcement, TetherError, Verdict
from tether.core.guard import ModelRequest

require("fastapi", "the decision API needs tether[serve]")

from tether.core.service.client import RemoteGuard, RemoteUnsupported  # noqa: E402

from .service_server import Server, serving  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("client")) as running:
        yield running


@pytest.fixture(scope="module")
def remote(server: Server) -> Iterator[RemoteGuard]:
    with RemoteGuard(server.url, server.credential("bot"), timeout=10) as guard:
        yield guard


def _decisions(server: Server, session_id: str) -> list[tuple[str | None, str | None]]:
    store = server.store()
    try:
        return [(e.tool, e.verdict) for e in store.session_events(session_id) if e.kind == "tool.decision"]
    finally:
        store.close()


def test_an_allowed_call_is_a_decision_as_in_process(server: Server, remote: RemoteGuard) -> None:
    session = remote.session("bot", "thread-1", user="u-1")
    decision = session.before_tool("search", {"q": "invoices"}, call_id="c1")
    assert isinstance(decision, Decision)
    assert (decision.allowed, decision.verdict, decision.enforcement) == (True, Verdict.ALLOW, Enforcement.ENFORCED)
    assert decision.rule_ids == ("agents.bot.tools.search",)
    assert decision.args == {"q": "invoices"} and decision.call.call_id == "c1" and decision.event_id
    assert remote.session("bot", "thread-1", user="u-1") is session  # one service session per name
    assert session.remote_id is not None and _decisions(server, session.remote_id) == [("search", "allow")]


def test_a_denied_call_says_why(server: Server, remote: RemoteGuard) -> None:
    session = remote.session("bot")
    decision = session.before_tool("delete_file", {"path": "/"})
    assert (decision.allowed, decision.verdict, decision.needs_approval) == (False, Verdict.DENY, False)
    assert "not granted" in decision.refusal()
    assert session.remote_id is not None and _decisions(server, session.remote_id) == [("delete_file", "deny")]


def test_after_tool_returns_the_output_redacted(remote: RemoteGuard) -> None:
    session = remote.session("bot")
    decision = session.before_tool("lookup_customer", {"id": 7})
    seen = session.after_tool(decision, "Jane Doe, jane.doe@example.com, key AKIAIOSFODNN7EXAMPLE")
    assert "jane.doe" not in seen and "AKIAIOSFODNN7EXAMPLE" not in seen and "Jane Doe" in seen
    plain = session.before_tool("search", {"q": "x"})
    output = {"hits": 3}
    assert session.after_tool(plain, output) is output  # nothing to redact: the tool's own object


def test_a_call_needing_approval_waits_for_a_person(server: Server, remote: RemoteGuard) -> None:
    session = remote.session("bot")
    decision = session.before_tool("refund", {"amount": 80})
    assert decision.needs_approval and not decision.allowed and decision.approval_timeout == 3.0
    store = server.store()
    try:
        answering = answer_when_asked(store, approved=True, by="alice@acme.example", within=10)
        final = session.resolve(decision)
        answering.join(10)
    finally:
        store.close()
    assert (final.allowed, final.verdict) == (True, Verdict.ALLOW), final
    assert "alice@acme.example" in final.reason


def test_an_approval_nobody_answers_is_denied(remote: RemoteGuard) -> None:
    session = remote.session("bot")
    decision = session.before_tool("refund", {"amount": 90})
    started = time.monotonic()
    final = session.resolve(decision)
    assert not final.allowed and "no approval within 3s" in final.reason
    assert time.monotonic() - started < 3 + remote.approval_margin


def test_model_requests_and_responses(remote: RemoteGuard) -> None:
    session = remote.session("bot")
    messages = [{"role": "user", "content": "hi"}]
    screened = session.before_model(messages, model="m")
    assert isinstance(screened, ModelRequest) and screened.allowed and screened.messages is messages
    assert session.after_model("hello", tool_calls=[{"id": "c1", "name": "search"}], parent=screened.event_id)


def test_the_async_twins(remote: RemoteGuard) -> None:
    session = remote.session("bot")

    async def run() -> tuple[Decision, Decision]:
        return await asyncio.gather(session.abefore_tool("search", {"q": "a"}), session.abefore_tool("delete_file"))

    allowed, denied = asyncio.run(run())
    assert allowed.allowed and not denied.allowed


def test_a_refused_credential_denies(server: Server) -> None:
    with RemoteGuard(server.url, "tth_aaaaaaaaaaaa_forged") as guard:
        decision = guard.session("bot").before_tool("search", {})
    assert not decision.allowed and "401" in decision.reason and "denied to stay safe" in decision.reason


def test_a_service_that_is_down_denies_with_the_reason() -> None:
    with RemoteGuard(f"http://127.0.0.1:{free_port()}/v1", "tth_x_y") as guard:
        session = guard.session("bot")
        decision = session.before_tool("search", {})
        assert not decision.allowed and decision.verdict is Verdict.DENY
        assert "cannot reach Tether's decision API" in decision.reason and "ConnectError" in decision.reason
        screened = session.before_model("hi")
        assert not screened.allowed and "cannot reach" in screened.reason
        with pytest.raises(TetherError, match="could not record"):
            session.after_model("hello")


@contextlib.contextmanager
def stalled() -> Iterator[str]:
    """A server that accepts connections and reads requests but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_service_that_stalls_denies_within_the_timeout() -> None:
    with stalled() as url, RemoteGuard(url, "tth_x_y", timeout=0.5) as guard:
        started = time.monotonic()
        decision = guard.session("bot").before_tool("search", {})
        elapsed = time.monotonic() - started
    assert not decision.allowed and "within 0.5s" in decision.reason and "ReadTimeout" in decision.reason
    assert elapsed < 2.0


def _mocked(answer: Any, *, status: int = 200, mode: str = "enforce") -> RemoteGuard:
    """A guard whose service opens sessions (in ``mode``) and answers every other request with ``answer``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/sessions"):
            return httpx.Response(201, json={"session_id": "s1", "agent": "bot", "mode": mode})
        if isinstance(answer, bytes):
            return httpx.Response(status, content=answer)
        return httpx.Response(status, json=answer)

    return RemoteGuard("http://tether.test/v1", "tth_x_y", transport=httpx.MockTransport(handle))


GOOD = {
    "decision_id": "d1",
    "verdict": "allow",
    "allowed": True,
    "status": "decided",
    "reason": "granted",
    "rule_ids": ["r"],
    "args": None,
    "findings": [],
    "enforcement": "enforced",
}


@pytest.mark.parametrize(
    ("answer", "status", "why"),
    [
        ({"error": "Tether failed: RuntimeError (nothing was allowed)"}, 503, "answered 503: Tether failed"),
        (b"<html>bad gateway</html>", 502, "answered 502"),
        (b"not json", 200, "not JSON"),
        ({"verdict": "allow", "allowed": True}, 200, "malformed decision"),
        ({**GOOD, "allowed": "yes"}, 200, "malformed decision"),
        ({**GOOD, "verdict": "deny"}, 200, "contradicts itself"),  # says allowed, but a denial
        ({**GOOD, "status": "pending"}, 200, "contradicts itself"),
        ([GOOD], 200, "not a decision"),
    ],
)
def test_a_failing_or_malformed_answer_denies(answer: Any, status: int, why: str) -> None:
    with _mocked(answer, status=status) as guard:
        decision = guard.session("bot").before_tool("search", {})
    assert not decision.allowed and why in decision.reason, decision.reason


def test_a_sound_answer_is_a_decision() -> None:
    with _mocked({**GOOD, "verdict": "redact", "args": {"q": "[redacted by Tether]"}}) as guard:
        decision = guard.session("bot").before_tool("search", {"q": "secret"})
    assert decision.allowed and decision.args == {"q": "[redacted by Tether]"}
    assert decision.call.args == {"q": "secret"}


def test_a_service_in_monitor_mode_lets_a_failure_through_logged(caplog: pytest.LogCaptureFixture) -> None:
    with _mocked({"error": "down"}, status=503, mode="monitor") as guard:
        session = guard.session("bot")
        decision = session.before_tool("search", {})
        assert decision.allowed and decision.enforcement is Enforcement.MONITORED
        assert session.after_tool(decision, "out") == "out"
    assert "monitor mode: it runs" in caplog.text
    with _mocked({"error": "refused"}, status=401, mode="monitor") as guard:
        assert not guard.session("bot").before_tool("search", {}).allowed  # a refused credential never passes


def test_after_tool_that_cannot_be_recorded_gives_nothing() -> None:
    with _mocked({"error": "down"}, status=503) as guard:
        session = guard.session("bot")
        decision = Decision(session.before_tool("x").call, Verdict.ALLOW, "", (), {}, event_id="d1")
        with pytest.raises(TetherError, match="could not record the result"):
            session.after_tool(decision, "secret output")


def test_what_needs_the_policy_or_the_audit_here_is_refused() -> None:
    with RemoteGuard("http://127.0.0.1:9/v1", "tth_x_y") as guard:
        with pytest.raises(RemoteUnsupported, match="policy"):
            guard.policy  # noqa: B018
        with pytest.raises(RemoteUnsupported, match="audit"):
            guard.store  # noqa: B018
        with pytest.raises(RemoteUnsupported, match="planner"):
            guard.session("bot", planner=object())
        session = guard.session("bot")
        pending = Decision(session.before_tool("x").call, Verdict.ASK, "ask", (), {}, event_id="d1")
        settled = session.settle(pending, None, unanswered="no answer")
        assert not settled.allowed
    with pytest.raises(TetherError, match="credential"):
        RemoteGuard("http://127.0.0.1:9/v1", "")
