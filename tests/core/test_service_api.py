"""The decision API over real HTTP: uvicorn in a subprocess, driven with httpx."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import require
from tether.core import AuditStore, Credentials
from tether.core.approvals.queue import ApprovalQueue
from tether.core.credentials import REFUSALS

require("fastapi", "the decision API needs tether[serve]")

from .service_server import Server, serving  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "examples" / "service_curl.sh"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("service")) as running:
        yield running


@pytest.fixture(scope="module")
def bot(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=_auth(server.credential("bot")), timeout=30)


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _session(client: httpx.Client, **body: Any) -> str:
    opened = client.post("/sessions", json=body)
    assert opened.status_code == 201, opened.text
    return str(opened.json()["session_id"])


def _refusals(server: Server) -> list[dict[str, Any]]:
    store = server.store()
    try:
        return [e.details | {"agent": e.agent} for e in store.session_events(REFUSALS)]
    finally:
        store.close()


def test_an_allowed_call_and_its_redacted_result(server: Server, bot: httpx.Client) -> None:
    session = _session(bot, user="u-1")
    decided = bot.post(f"/sessions/{session}/tool-calls", json={"tool": "lookup_customer", "args": {"id": 7}})
    assert decided.status_code == 200, decided.text
    decision = decided.json()
    assert (decision["verdict"], decision["allowed"], decision["status"]) == ("allow", True, "decided")
    assert decision["rule_ids"] == ["agents.bot.tools.lookup_customer"]
    output = "Jane Doe, jane.doe@example.com, key AKIAIOSFODNN7EXAMPLE"
    result = bot.post(f"/sessions/{session}/tool-calls/{decision['decision_id']}/result", json={"output": output})
    assert result.status_code == 200, result.text
    seen = result.json()["output"]
    assert "jane.doe" not in seen and "AKIAIOSFODNN7EXAMPLE" not in seen and "Jane Doe" in seen
    audit = bot.get(f"/sessions/{session}/audit").json()
    assert audit["verified"] is True and audit["problems"] == []
    assert [e["kind"] for e in audit["events"]] == ["session.start", "tool.decision", "tool.result"]
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(audit)


def test_tether_serve_with_a_policy_serves_the_api_beside_the_approvals_page(tmp_path: Path) -> None:
    with serving(tmp_path, cli=True) as running:
        agent = httpx.Client(base_url=running.url, headers=_auth(running.credential("bot")), timeout=30)
        session = _session(agent)
        decided = agent.post(f"/sessions/{session}/tool-calls", json={"tool": "delete_file", "args": {"path": "/"}})
        assert decided.json()["verdict"] == "deny"
        assert agent.post("/sessions", json={}, headers={"Authorization": "Bearer forged"}).status_code == 401
        page = httpx.get(running.url.removesuffix("/v1") + "/", follow_redirects=True, timeout=30)
        assert page.status_code == 200 and "Sign in" in page.text  # the page asks people to sign in


def test_a_denied_call_says_why_and_has_no_result(bot: httpx.Client) -> None:
    session = _session(bot)
    decision = bot.post(f"/sessions/{session}/tool-calls", json={"tool": "delete_file", "args": {"path": "/"}}).json()
    assert (decision["verdict"], decision["allowed"]) == ("deny", False)
    assert "not granted" in decision["message"]
    result = bot.post(f"/sessions/{session}/tool-calls/{decision['decision_id']}/result", json={"output": "done"})
    assert result.status_code == 409


def test_a_call_needing_approval_is_queued_and_settled_by_a_person(server: Server, bot: httpx.Client) -> None:
    session = _session(bot)
    decision = bot.post(f"/sessions/{session}/tool-calls", json={"tool": "refund", "args": {"amount": 80}}).json()
    assert (decision["verdict"], decision["status"], decision["allowed"]) == ("ask", "pending", False)
    assert decision["approval_id"]
    store = server.store()
    try:
        ApprovalQueue(store).answer(decision["approval_id"], approved=True, by="alice@acme.example")
    finally:
        store.close()
    deadline = time.monotonic() + 10
    while decision["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
        decision = bot.get(f"/sessions/{session}/tool-calls/{decision['decision_id']}").json()
    assert (decision["verdict"], decision["allowed"]) == ("allow", True), decision
    assert "alice@acme.example" in decision["reason"]


def test_a_model_request_is_screened(bot: httpx.Client) -> None:
    session = _session(bot)
    screened = bot.post(f"/sessions/{session}/model-requests", json={"messages": [{"role": "user", "content": "hi"}]})
    assert screened.status_code == 200, screened.text
    assert screened.json()["allowed"] is True


@pytest.mark.parametrize(
    ("header", "finding"),
    [
        (None, "missing"),
        ("Bearer not-a-credential", "malformed"),
        ("Bearer tth_aaaaaaaaaaaa_forged", "unknown"),
    ],
)
def test_a_request_without_a_valid_credential_is_refused_and_audited(
    server: Server, header: str | None, finding: str
) -> None:
    before = len(_refusals(server))
    headers = {"Authorization": header} if header else {}
    refused = httpx.post(f"{server.url}/sessions", json={}, headers=headers)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["finding"] == finding and "Traceback" not in refused.text
    recorded = _refusals(server)[before:]
    assert [(r["finding"], r["via"]) for r in recorded] == [(finding, "api")]


def test_revoked_expired_and_other_agents_credentials_are_refused_and_audited(server: Server) -> None:
    store = server.store()
    try:
        credentials = Credentials(store)
        revoked, revoked_secret = credentials.create("bot")
        credentials.revoke(revoked.id)
        _, expired_secret = credentials.create("bot", expires_in=0.01)
        _, acme_secret = credentials.create("bot", tenants=["acme"])
    finally:
        store.close()
    other_secret = server.credential("other-bot")
    time.sleep(0.05)
    cases = [
        (revoked_secret, {}, 401, "revoked"),
        (expired_secret, {}, 401, "expired"),
        (other_secret, {"agent": "bot"}, 403, "wrong_agent"),  # a credential for another agent's name
        (acme_secret, {"tenant": "globex"}, 403, "wrong_tenant"),
    ]
    for secret, body, status, finding in cases:
        before = len(_refusals(server))
        refused = httpx.post(f"{server.url}/sessions", json=body, headers=_auth(secret))
        assert (refused.status_code, refused.json()["finding"]) == (status, finding)
        assert [r["finding"] for r in _refusals(server)[before:]] == [finding]


def test_another_agents_credential_cannot_use_a_session(server: Server, bot: httpx.Client) -> None:
    session = _session(bot)
    other = httpx.Client(base_url=server.url, headers=_auth(server.credential("other-bot")))
    before = len(_refusals(server))
    taken = other.post(f"/sessions/{session}/tool-calls", json={"tool": "search", "args": {}})
    assert taken.status_code == 403 and taken.json()["finding"] == "wrong_session"
    assert other.get(f"/sessions/{session}/audit").status_code == 403
    recorded = _refusals(server)[before:]
    assert [(r["finding"], r["agent"]) for r in recorded] == [("wrong_session", "other-bot")] * 2
    assert bot.get(f"/sessions/{session}/audit").json()["events"] == []  # nothing was done in it


def test_an_unknown_field_is_rejected_with_its_path(bot: httpx.Client) -> None:
    session = _session(bot)
    rejected = bot.post(f"/sessions/{session}/tool-calls", json={"tool": "search", "args": {}, "priority": "high"})
    assert rejected.status_code == 422
    assert [d["loc"] for d in rejected.json()["detail"]] == [["body", "priority"]]
    nested = bot.post("/sessions", json={"context": {"crew": ["not", "a", "string"]}})
    assert nested.status_code == 422 and nested.json()["detail"][0]["loc"] == ["body", "context", "crew"]


def test_an_oversized_body_is_refused(server: Server, bot: httpx.Client) -> None:
    session = _session(bot)
    huge = {"tool": "search", "args": {"q": "x" * 70_000}}
    refused = bot.post(f"/sessions/{session}/tool-calls", json=huge)
    assert refused.status_code == 413
    streamed = bot.post(f"/sessions/{session}/tool-calls", content=iter([b"{" + b" " * 40_000] * 2))
    assert streamed.status_code == 413  # no declared length: counted while read


def test_an_unknown_session_or_decision_is_not_found(bot: httpx.Client) -> None:
    assert bot.post("/sessions/nope/tool-calls", json={"tool": "search"}).status_code == 404
    session = _session(bot)
    assert bot.get(f"/sessions/{session}/tool-calls/nope").status_code == 404
    assert bot.delete(f"/sessions/{session}").status_code == 204
    assert bot.get(f"/sessions/{session}/audit").status_code == 404


def test_the_curl_example_gets_a_denial(server: Server) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the example needs curl, which is not on this machine")
    env = {"TETHER_URL": server.url, "TETHER_CREDENTIAL": server.credential("bot"), "PATH": "/usr/bin:/bin"}
    ran = subprocess.run(["sh", str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert '"verdict":"deny"' in ran.stdout


def test_refusals_are_chained_in_the_audit(server: Server) -> None:
    httpx.post(f"{server.url}/sessions", json={})
    store = AuditStore(server.store_url)
    try:
        from tether.core.audit import verify_session

        assert verify_session(store.key, store.session_events(REFUSALS)).ok
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # starlette's test client on plain httpx
def test_a_failure_inside_tether_answers_503_or_a_denial_never_an_allow(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tether.core import Guard
    from tether.core.errors import StoreError
    from tether.core.service.api import api_app

    from .service_server import POLICY

    with Guard(POLICY, store=f"sqlite:///{tmp_path / 'a.db'}") as guard:
        secret = Credentials(guard.store).create("bot")[1]
        client = TestClient(api_app(guard), raise_server_exceptions=False, headers=_auth(secret))
        session = _session(client)  # type: ignore[arg-type]
        decision = client.post(f"/sessions/{session}/tool-calls", json={"tool": "search", "args": {}}).json()
        held = client.app.state.tether.sessions.get(session)  # type: ignore[attr-defined]

        def broken(*_: object, **__: object) -> None:
            raise RuntimeError("detector crashed")

        held.session.after_tool = broken
        crashed = client.post(f"/sessions/{session}/tool-calls/{decision['decision_id']}/result", json={"output": "x"})
        assert crashed.status_code == 503 and "Traceback" not in crashed.text
        assert crashed.json() == {"error": "Tether failed: RuntimeError (nothing was allowed)", "finding": None}

        def down(*_: object, **__: object) -> None:
            raise StoreError("the store is down")

        held.session.before_model = down
        unavailable = client.post(f"/sessions/{session}/model-requests", json={"messages": "hi"})
        assert unavailable.status_code == 503 and "nothing was allowed" in unavailable.json()["error"]
        guard.policy.plan = broken  # type: ignore[method-assign]  # deciding itself fails
        denied = client.post(f"/sessions/{session}/tool-calls", json={"tool": "search", "args": {}}).json()
        assert (denied["verdict"], denied["allowed"]) == ("deny", False)
