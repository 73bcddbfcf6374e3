"""Tampering with the audit as someone with write access to the database would: cutting its
newest events, wiping it, rolling it back to an older copy, forging the checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether.core import AuditStore, Guard
from tether.core.audit import verify
from tether.core.audit.checkpoints import Checkpoint
from tether.core.audit.schema import checkpoints as checkpoint_table
from tether.core.audit.schema import events
from tether.core.cli import main

from ..core.conftest import BASE_POLICY, KEY


def fill(url: str, sessions: int = 3, calls: int = 3, first: int = 0) -> None:
    """Run some agent sessions, then close the store (which records a checkpoint)."""
    guard = Guard(BASE_POLICY, store=AuditStore(url, key=KEY))
    for s in range(first, first + sessions):
        session = guard.session("bot", f"s{s}")
        for i in range(calls):
            session.after_tool(session.before_tool("search", {"q": f"{s}-{i}"}), f"result {i}")
    guard.close()


def delete(url: str, where: sa.ColumnElement[bool] | None = None) -> None:
    store = AuditStore(url, key=KEY)
    with store.engine.begin() as connection:
        connection.execute(events.delete() if where is None else events.delete().where(where))
    store.close()


def newest_ids(url: str, n: int) -> list[int]:
    store = AuditStore(url, key=KEY)
    with store.engine.connect() as connection:
        ids = connection.execute(sa.select(events.c.id).order_by(events.c.id.desc()).limit(n)).scalars().all()
    store.close()
    return list(ids)


def problems(url: str) -> list[str]:
    store = AuditStore(url, key=KEY, create=False)
    newest = store.checkpoints.newest()
    report = verify(store.key, store.events(), [newest] if newest else [])
    store.close()
    return [p.kind for p in report.problems]


def cli_verify(url: str, *extra: str) -> tuple[int, str]:
    os.environ["TETHER_KEY"] = KEY.decode()
    try:
        result = CliRunner().invoke(main, ["audit", "verify", "--store", url, *extra])
    finally:
        del os.environ["TETHER_KEY"]
    return result.exit_code, result.output


def test_an_untouched_log_verifies_against_its_checkpoint(store_url: str) -> None:
    fill(store_url)
    assert problems(store_url) == []
    code, out = cli_verify(store_url)
    assert code == 0 and "checked against 1 checkpoint" in out


@pytest.mark.parametrize("cut", [1, 5])
def test_cutting_the_newest_events_is_reported(store_url: str, cut: int) -> None:
    fill(store_url)
    delete(store_url, events.c.id.in_(newest_ids(store_url, cut)))
    assert problems(store_url) == ["truncated"]
    code, out = cli_verify(store_url)
    assert code == 1 and "TAMPERED: the log ends at event" in out and "newest events were cut" in out


def test_deleting_the_newest_session_is_reported(store_url: str) -> None:
    fill(store_url)
    delete(store_url, events.c.session_id == "s2")
    assert problems(store_url) == ["truncated"]


def test_wiping_every_row_is_reported(store_url: str) -> None:
    fill(store_url)
    delete(store_url)
    assert problems(store_url) == ["wiped"]
    code, out = cli_verify(store_url)
    assert code == 1 and "the log is empty" in out


def test_a_cut_log_written_again_is_reported_and_the_evidence_is_kept(store_url: str) -> None:
    fill(store_url)
    delete(store_url, events.c.id.in_(newest_ids(store_url, 4)))
    fill(store_url, sessions=2, first=10)  # agents carry on: the chain grows from the cut
    kinds = problems(store_url)
    assert kinds in (["rolled back"], ["truncated"]), kinds  # past the old head, or not yet
    store = AuditStore(store_url, key=KEY)
    assert store.checkpoints.newest() is not None
    with pytest.raises(Exception, match="no longer holds the head"):
        store.checkpoints.write()  # a new checkpoint would hide the cut: refused
    store.close()
    fill(store_url, sessions=3, first=20)
    assert problems(store_url) == ["rolled back"]


def test_an_operator_anchors_a_head_elsewhere(store_url: str, tmp_path: Path) -> None:
    fill(store_url)
    anchor = tmp_path / "anchor.json"
    os.environ["TETHER_KEY"] = KEY.decode()
    try:
        result = CliRunner().invoke(main, ["audit", "checkpoint", "--store", store_url, "-o", str(anchor)])
    finally:
        del os.environ["TETHER_KEY"]
    assert result.exit_code == 0, result.output
    delete(store_url, events.c.id.in_(newest_ids(store_url, 2)))
    forget_default_checkpoints(store_url)  # whoever cut the log removed the checkpoint it could reach
    code, out = cli_verify(store_url)
    assert code == 0 and "no checkpoint yet" in out  # alone, the chain cannot see the cut
    code, out = cli_verify(store_url, "--against", str(anchor))
    assert code == 1 and "newest events were cut" in out


def test_a_forged_checkpoint_is_reported(store_url: str, tmp_path: Path) -> None:
    fill(store_url)
    store = AuditStore(store_url, key=KEY)
    real = store.checkpoints.newest()
    store.close()
    assert real is not None
    forged = tmp_path / "forged.json"
    fake = Checkpoint(real.store, real.key_id, real.ts_us, real.last_id - 3, "0" * 64, "x", mac=real.mac)
    forged.write_text(fake.to_json())
    code, out = cli_verify(store_url, "--against", str(forged))
    assert code == 1 and "does not verify with this store's key" in out


def forget_default_checkpoints(url: str) -> None:
    store = AuditStore(url, key=KEY)
    if store.engine.dialect.name == "sqlite":
        for sink in store.checkpoints.sinks:
            Path(sink.where).unlink()
    else:
        with store.engine.begin() as connection:
            connection.execute(checkpoint_table.delete())
    store.checkpoints.sinks = []
    store.close()


def test_an_auditor_without_the_key_checks_an_export_against_a_signed_checkpoint(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "signing.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = tmp_path / "signing.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    monkeypatch.setenv("TETHER_SIGNING_KEY", str(tmp_path / "signing.pem"))
    fill(sqlite_url)
    anchor, export = tmp_path / "anchor.json", tmp_path / "audit.jsonl"
    monkeypatch.setenv("TETHER_KEY", KEY.decode())
    for command in (["checkpoint", "-o", str(anchor)], ["export", "-o", str(export)]):
        result = CliRunner().invoke(main, ["audit", *command, "--store", sqlite_url])
        assert result.exit_code == 0, result.output
    monkeypatch.delenv("TETHER_KEY")  # the auditor has the export, the checkpoint and the public key

    def audit(*extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            main, ["audit", "verify", "--export", str(export), "--against", str(anchor), *extra]
        )
        return result.exit_code, result.output

    code, out = audit("--public-key", str(public))
    assert code == 0 and "contents not checked (no key)" in out, out
    code, out = audit()
    assert code == 1 and "give --public-key" in out
    export.write_text("".join(export.read_text().splitlines(keepends=True)[:-3]))  # the newest events cut
    code, out = audit("--public-key", str(public))
    assert code == 1 and "newest events were cut" in out
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    public.write_bytes(other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, out = audit("--public-key", str(public))
    assert code == 1 and "valid signature" in out
