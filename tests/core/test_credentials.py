"""Agent credentials: issued once, stored hashed, refused for every reason with that reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.core import AuditStore, Guard
from tether.core.cli import main
from tether.core.credentials import Credentials, IdentityError

from .conftest import BASE_POLICY


def test_a_credential_authenticates_its_agent(store: AuditStore) -> None:
    credential, secret = Credentials(store).create("bot")
    assert Credentials(store).authenticate(secret, agent="bot").id == credential.id


@pytest.mark.parametrize(
    ("mangle", "finding"),
    [
        (lambda s: None, "missing"),
        (lambda s: "Bearer xyz", "malformed"),
        (lambda s: s[:-3] + "abc", "unknown"),  # the right id with a forged secret
        (lambda s: "tth_" + "a" * 12 + "_" + s.split("_", 2)[2], "unknown"),  # a real secret, another id
    ],
)
def test_a_missing_malformed_or_forged_secret_is_refused(store: AuditStore, mangle: object, finding: str) -> None:
    _, secret = Credentials(store).create("bot")
    with pytest.raises(IdentityError) as refused:
        Credentials(store).authenticate(mangle(secret), agent="bot")  # type: ignore[operator]
    assert refused.value.finding == finding


def test_a_revoked_expired_or_misused_credential_is_refused(store: AuditStore) -> None:
    credentials = Credentials(store)
    revoked, revoked_secret = credentials.create("bot")
    credentials.revoke(revoked.id)
    _, short_lived = credentials.create("bot", expires_in=0.05)
    _, acme_only = credentials.create("bot", tenants=["acme"])
    time.sleep(0.1)
    cases = [
        (revoked_secret, {"agent": "bot"}, "revoked"),
        (short_lived, {"agent": "bot"}, "expired"),
        (acme_only, {"agent": "other-bot", "tenant": "acme"}, "wrong_agent"),
        (acme_only, {"agent": "bot", "tenant": "globex"}, "wrong_tenant"),
        (acme_only, {"agent": "bot"}, "wrong_tenant"),
    ]
    for secret, claim, finding in cases:
        with pytest.raises(IdentityError) as refused:
            credentials.authenticate(secret, **claim)  # type: ignore[arg-type]
        assert refused.value.finding == finding, claim
    assert credentials.authenticate(acme_only, agent="bot", tenant="acme").agent == "bot"


def test_the_secret_is_never_stored(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", key=b"k" * 32)
    _, secret = Credentials(store).create("bot")
    store.close()
    assert secret.split("_", 2)[2].encode() not in (tmp_path / "a.db").read_bytes()


def test_credentials_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TETHER_STORE", raising=False)
    monkeypatch.delenv("TETHER_KEY", raising=False)
    runner = CliRunner()
    created = runner.invoke(main, ["agents", "credentials", "create", "bot", "--expires", "30d"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert "not shown again" in created.stderr
    store = AuditStore(None, create=False)
    Guard(BASE_POLICY, store=store).session("bot", "s1").before_tool("search", {})
    (listed,) = Credentials(store).list("bot")
    assert Credentials(store).authenticate(secret, agent="bot").id == listed.id

    shown = runner.invoke(main, ["agents", "credentials", "list"])
    assert listed.id in shown.stdout and "active" in shown.stdout and secret not in shown.stdout
    agents = runner.invoke(main, ["agents"])
    assert "identity: authenticated (1 active credential)" in agents.stdout

    assert runner.invoke(main, ["agents", "credentials", "revoke", listed.id]).exit_code == 0
    assert "identity: asserted in code" in runner.invoke(main, ["agents"]).stdout
    with pytest.raises(IdentityError):
        Credentials(store).authenticate(secret, agent="bot")
    store.close()
