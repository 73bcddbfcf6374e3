"""A pending request's real arguments: sealed in the queue, shown to the people who answer it,
gone once it is answered, and never in the audit."""

from __future__ import annotations

import html
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tether.core import ApprovalQueue, AuditStore, Guard, QueueApprover
from tether.core.approvals import ApprovalRequest, Unanswered
from tether.core.approvals.queue import Entry
from tether.core.approvals.sealed import MAX_SEALED, seal, sealing_key, unseal
from tether.core.audit.schema import approvals, events

from ..support import require, wait_until
from .conftest import KEY, policy_with
from .test_approvals import cli, in_background, pending_one

IBAN = "DE89370400440532013000"
EMAIL = "jane.doe@example.com"
PAYMENT = {"iban": IBAN, "to": EMAIL, "amount": 120, "memo": f"invoice 7 <b>{IBAN}</b>"}


def payment_guard(store: AuditStore, timeout: str = "120s") -> Guard:
    policy = policy_with(approvals={"timeout": timeout, "groups": {"finance": ["alice"]}})
    policy["tools"]["pay"] = {"effects": ["money", "external"]}
    policy["agents"]["bot"]["tools"]["pay"] = {"ask": True, "approvers": ["finance"]}
    return Guard(policy, store=store, approver=QueueApprover(store))


def waiting_payment(store: AuditStore, session_id: str, timeout: str = "120s") -> tuple[Any, list[Any]]:
    session = payment_guard(store, timeout).session("bot", session_id)
    return in_background(session.resolve, session.before_tool("pay", dict(PAYMENT)))


def sealed_column(store: AuditStore, entry_id: str) -> str | None:
    with store.engine.connect() as connection:
        value = connection.execute(sa.select(approvals.c.sealed_args).where(approvals.c.id == entry_id)).scalar()
    return None if value is None else str(value)


def events_text(store: AuditStore) -> str:
    with store.engine.connect() as connection:
        return "\n".join(str(row.data) for row in connection.execute(sa.select(events.c.data)))


def test_the_real_values_are_sealed_and_shown_while_pending(store: AuditStore) -> None:
    queue = ApprovalQueue(store)
    thread, result = waiting_payment(store, "r1")
    entry = pending_one(queue)
    assert entry.request["args"]["iban"].startswith("[iban:")  # the queue's request stays masked
    sealed = sealed_column(store, entry.id)
    assert sealed is not None and sealed.startswith("v1:") and IBAN not in sealed and "jane.doe" not in sealed
    revealed = queue.reveal(entry)
    assert revealed.shown and revealed.args == PAYMENT
    assert IBAN not in repr(entry) and "sealed_args" not in repr(entry)
    queue.answer(entry.id, approved=True, by="alice")
    thread.join(30)
    assert result[0].allowed and result[0].args == PAYMENT
    assert sealed_column(store, entry.id) is None
    assert not queue.reveal(queue.get(entry.id) or entry).shown
    text = events_text(store)
    assert "[iban:" in text and IBAN not in text and "jane.doe" not in text


@pytest.mark.parametrize("outcome", ["approve", "deny", "expire", "edit"])
def test_the_sealed_values_go_with_the_answer_or_the_expiry(store: AuditStore, outcome: str) -> None:
    queue = ApprovalQueue(store)
    thread, result = waiting_payment(store, f"r-{outcome}", "2s" if outcome == "expire" else "120s")
    entry = pending_one(queue)
    assert sealed_column(store, entry.id) is not None
    if outcome == "approve":
        queue.answer(entry.id, approved=True, by="alice")
    elif outcome == "deny":
        queue.answer(entry.id, approved=False, by="alice", comment="wrong account")
    elif outcome == "edit":
        queue.answer(entry.id, approved=True, by="alice", args={**PAYMENT, "amount": 100})
    thread.join(30)
    assert result[0].allowed == (outcome in ("approve", "edit"))
    stored = queue.get(entry.id)
    assert stored is not None and stored.status == {"expire": "expired", "deny": "denied"}.get(outcome, "approved")
    assert stored.sealed_args is None and sealed_column(store, entry.id) is None
    assert IBAN not in events_text(store)


def test_requests_left_pending_past_their_time_lose_their_values(store: AuditStore) -> None:
    """An agent that stopped waiting never marks its request expired: the next request clears it."""
    queue = ApprovalQueue(store)
    ask = ApprovalRequest(None, "bot", "r-left", None, None, "pay", {}, "why", (), 0.2, call_key="a", args=PAYMENT)
    left, _ = queue.submit(ask)
    assert sealed_column(store, left.id) is not None
    wait_until(lambda: (queue.get(left.id) or left).expired, 10, "the request's time to pass")
    queue.submit(ApprovalRequest(None, "bot", "r-next", None, None, "pay", {}, "why", (), 30, call_key="b"))
    assert sealed_column(store, left.id) is None


def test_a_changed_or_misplaced_ciphertext_shows_a_note_never_the_value(store: AuditStore) -> None:
    queue = ApprovalQueue(store)
    ask = ApprovalRequest(None, "bot", "r-t", None, None, "pay", {"iban": "[iban:x]"}, "why", (), 60, args=PAYMENT)
    entry, _ = queue.submit(ask)
    sealed = entry.sealed_args
    assert sealed is not None
    flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    for value in (flipped, "v1:", "v1:!!!", "v2:" + sealed[3:], seal(KEY, "another-id", PAYMENT)):
        shown = queue.reveal(Entry(**{**entry.__dict__, "sealed_args": value}))
        assert not shown.shown and shown.args is None and "cannot be decrypted" in shown.note
    assert "cannot be decrypted" in unseal(b"another key entirely", entry.id, sealed).note
    assert unseal(KEY, entry.id, sealed).args == PAYMENT


def test_edited_arguments_are_sealed_too_and_unreadable_ones_deny(store: AuditStore) -> None:
    queue = ApprovalQueue(store)
    ask = ApprovalRequest(None, "bot", "r-e", None, None, "pay", {"iban": "[iban:x]"}, "why", (), 60, args=PAYMENT)
    entry, _ = queue.submit(ask)
    queue.answer(entry.id, approved=True, by="alice", args={**PAYMENT, "amount": 100})
    with store.engine.connect() as connection:
        stored = connection.execute(sa.select(approvals.c.edited_args).where(approvals.c.id == entry.id)).scalar()
    assert str(stored).startswith("v1:") and IBAN not in str(stored)
    answered = queue.get(entry.id)
    assert answered is not None and answered.answer is not None and answered.answer.args == {**PAYMENT, "amount": 100}
    with store.engine.begin() as connection:
        moved = seal(KEY, "another-id", {"iban": "XX"}, "edited")
        connection.execute(approvals.update().where(approvals.c.id == entry.id).values(edited_args=moved))
    changed = queue.get(entry.id)
    assert changed is not None and changed.edited_args is None
    with pytest.raises(Unanswered, match="cannot be decrypted"):
        _ = changed.answer  # not the call as first asked: denied


def test_the_sealing_key_is_derived_not_the_store_key() -> None:
    derived = sealing_key(KEY)
    assert len(derived) == 32 and derived != KEY and KEY not in derived and derived != sealing_key(b"j" * 32)


def test_arguments_too_large_to_keep_are_said_to_be() -> None:
    big = {"blob": "x" * (MAX_SEALED + 10)}
    revealed = unseal(KEY, "e1", seal(KEY, "e1", big))
    assert not revealed.shown and "too large" in revealed.note


def test_the_sqlite_file_never_holds_the_raw_values(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}", key=KEY)
    queue = ApprovalQueue(store)
    thread, _ = waiting_payment(store, "r-file")
    entry = pending_one(queue)
    sealed = sealed_column(store, entry.id)
    assert sealed is not None
    with store.engine.connect() as connection:  # whatever the SQLite build's default
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("audit.db*")) if not p.name.endswith(".key"))

    for raw in (IBAN.encode(), b"jane.doe"):
        assert raw not in files()  # pending: only the ciphertext is written
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert sealed.encode() in path.read_bytes()  # in the database file itself now
    queue.answer(entry.id, approved=True, by="alice")
    thread.join(30)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for raw in (IBAN.encode(), b"jane.doe"):
        assert raw not in files()
    # secure_delete: the answered request's ciphertext is overwritten, not left in free space
    assert sealed.encode() not in path.read_bytes()


def test_tether_show_prints_the_real_values_while_pending(store: AuditStore) -> None:
    queue = ApprovalQueue(store)
    thread, _ = waiting_payment(store, "r-cli")
    entry = pending_one(queue)
    shown = cli(store.url, "approvals", "show", entry.id).stdout
    assert "[iban:" in shown and IBAN in shown and EMAIL in shown and "real values shown while pending" in shown
    with store.engine.begin() as connection:
        connection.execute(approvals.update().where(approvals.c.id == entry.id).values(sealed_args="v1:AAAA" * 8))
    shown = cli(store.url, "approvals", "show", entry.id)
    assert shown.returncode == 0 and "cannot be decrypted" in shown.stdout and IBAN not in shown.stdout
    queue.answer(entry.id, approved=False, by="alice")
    thread.join(30)
    after = cli(store.url, "approvals", "show", entry.id).stdout
    assert IBAN not in after and "[iban:" in after


def test_tether_upgrades_a_store_made_before_sealed_arguments(store_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    import tether.core.audit.store as store_module

    AuditStore(store_url, key=KEY).close()
    engine = sa.create_engine(store_url)
    config = Config()
    config.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0010")
    assert "sealed_args" not in {c["name"] for c in sa.inspect(engine).get_columns("tether_approvals")}
    listed = cli(store_url, "approvals", "list")
    assert listed.returncode == 0, listed.stderr
    engine.dispose()
    engine = sa.create_engine(store_url)
    assert "sealed_args" in {c["name"] for c in sa.inspect(engine).get_columns("tether_approvals")}
    engine.dispose()


# -- the page ------------------------------------------------------------------------------------

ALICE = "alice-personal-token-0123456789"
SHARED = "shared-team-token-0123456789"


def signed_in(client: Any, token: str, name: str = "") -> None:
    login = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert csrf is not None
    done = client.post("/login", data={"csrf": csrf.group(1), "token": token, "name": name}, follow_redirects=False)
    assert done.status_code == 303, done.text


def form_csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def edit_box(page: str) -> str:
    found = re.search(r'<textarea name="args"[^>]*>(.*?)</textarea>', page, re.S)
    assert found is not None
    return html.unescape(found.group(1))


def test_the_page_shows_the_real_values_to_the_approver_only(tmp_path: Path) -> None:
    require("fastapi", "the approval page needs tether[serve]")
    from fastapi.testclient import TestClient

    from tether.core.service.app import approvals_app

    store = AuditStore(f"sqlite:///{tmp_path}/a.db", key=KEY)
    queue = ApprovalQueue(store)
    thread, result = waiting_payment(store, "r-page")
    entry = pending_one(queue)
    app = approvals_app(store, {ALICE: "alice", SHARED: None})
    with TestClient(app) as anonymous, TestClient(app) as alice, TestClient(app) as bob:
        away = anonymous.get(f"/approvals/{entry.id}", follow_redirects=False)
        assert away.status_code == 303 and away.headers["location"] == "/login" and IBAN not in away.text
        signed_in(alice, ALICE)
        page = alice.get(f"/approvals/{entry.id}").text
        assert "[iban:" in page and "Real values shown while pending" in page
        assert page.count(IBAN) >= 3  # its value, the memo's, and the edit box's starting text
        assert EMAIL in page
        assert "<b>DE89" not in page and f"&lt;b&gt;{IBAN}&lt;/b&gt;" in page  # escaped like everything else
        assert json.loads(edit_box(page)) == PAYMENT  # approving with edits starts from the real values
        signed_in(bob, SHARED, "bob")  # signed in, but not among the request's approvers
        other = bob.get(f"/approvals/{entry.id}").text
        assert IBAN not in other and "jane.doe" not in other and "[iban:" in other
        assert "shown only to the people who may answer" in other
        # Tampered: the preview and a note, no error.
        with store.engine.begin() as connection:
            connection.execute(
                approvals.update().where(approvals.c.id == entry.id).values(sealed_args=seal(KEY, "x", 1))
            )
        tampered = alice.get(f"/approvals/{entry.id}")
        assert tampered.status_code == 200 and "[iban:" in tampered.text and IBAN not in tampered.text
        assert "cannot be decrypted" in tampered.text
        with store.engine.begin() as connection:
            good = seal(KEY, entry.id, PAYMENT)
            connection.execute(approvals.update().where(approvals.c.id == entry.id).values(sealed_args=good))
        # Approving with the edit box left at the real values is no edit at all.
        page = alice.get(f"/approvals/{entry.id}").text
        posted = alice.post(
            f"/approvals/{entry.id}",
            data={"csrf": form_csrf(page), "action": "approve", "comment": "", "args": edit_box(page)},
            follow_redirects=False,
        )
        assert posted.status_code == 303
        thread.join(30)
        assert result[0].allowed and result[0].args == PAYMENT
        answered = queue.get(entry.id)
        assert answered is not None and answered.status == "approved" and answered.edited_args is None
        after = alice.get(f"/approvals/{entry.id}").text
        assert IBAN not in after and "kept only while the request is pending" in after
    assert sealed_column(store, entry.id) is None and IBAN not in events_text(store)
    store.close()
