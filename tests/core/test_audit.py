"""The audit: hash chains that name what was edited, deleted or moved; export; crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tether.core import AuditEvent, AuditStore, Guard, StoreError
from tether.core.audit import verify
from tether.core.audit.chain import GENESIS, event_hash
from tether.core.audit.events import NewEvent
from tether.core.audit.schema import events
from tether.core.values import canonical_json

from ..support import read_line
from .conftest import BASE_POLICY, KEY


def fill(guard: Guard, sessions: int = 2, calls: int = 3) -> None:
    for s in range(sessions):
        session = guard.session("bot", f"s{s}")
        for i in range(calls):
            session.after_tool(session.before_tool("search", {"q": f"{s}-{i}"}), f"result {i}")


def tamper(store: AuditStore, statement: sa.Executable) -> None:
    with store.engine.begin() as connection:
        connection.execute(statement)


def row_id(store: AuditStore, session_id: str, seq: int) -> int:
    with store.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(events.c.id).where(events.c.session_id == session_id, events.c.seq == seq)
            ).scalar_one()
        )


def test_an_untouched_log_verifies(guard: Guard, store: AuditStore) -> None:
    fill(guard)
    report = verify(store.key, store.events())
    assert report.ok and report.events == 14 and report.sessions == 2
    assert report.head == next(iter(store.events(last=1))).hash


def test_an_edited_event_is_named(guard: Guard, store: AuditStore) -> None:
    fill(guard)
    target = row_id(store, "s0", 3)
    tamper(
        store,
        events.update()
        .where(events.c.id == target)
        .values(data=sa.func.replace(events.c.data, '"allowed":true', '"allowed":false')),
    )
    report = verify(store.key, store.events())
    assert [(p.kind, p.session_id, p.seq) for p in report.problems] == [("edited", "s0", 3)]
    assert f"event {target} (session 's0' #3, tool.decision) was edited" in report.problems[0].message


def test_a_deleted_event_is_named_even_at_a_session_tail(guard: Guard, store: AuditStore) -> None:
    fill(guard)
    tamper(store, events.delete().where(events.c.id == row_id(store, "s0", 3)))
    tamper(store, events.delete().where(events.c.id == row_id(store, "s0", 6)))  # s0's last event
    report = verify(store.key, store.events())
    kinds = [(p.kind, p.session_id) for p in report.problems]
    assert ("missing", "s0") in kinds  # the gap inside s0
    assert any("lacks #3: deleted" in p.message for p in report.problems)
    assert any(
        p.session_id == "s1" and "an event before it was deleted or moved" in p.message for p in report.problems
    )  # the tail of s0, caught by the log chain


def test_reordered_events_are_named(guard: Guard, store: AuditStore) -> None:
    fill(guard, sessions=1)
    first, second = row_id(store, "s0", 2), row_id(store, "s0", 3)
    columns = [c for c in events.c if c.name != "id"]
    with store.engine.begin() as connection:
        a = connection.execute(sa.select(*columns).where(events.c.id == first)).one()._mapping
        b = connection.execute(sa.select(*columns).where(events.c.id == second)).one()._mapping
        connection.execute(events.delete().where(events.c.id.in_([first, second])))
        connection.execute(events.insert().values(id=first, **dict(b)))
        connection.execute(events.insert().values(id=second, **dict(a)))
    problems = verify(store.key, store.events()).problems
    assert any(p.kind == "reordered" and p.seq == 2 for p in problems)


def rewrite_chain(store: AuditStore, key: bytes, edit: dict[int, str]) -> None:
    """What someone with write access does to cover an edit: replace the content of some rows
    (``edit``: row id -> new data) and recompute every hash from there on, with ``key``."""
    rows = list(store.events())
    log_prev, heads = GENESIS, {}
    with store.engine.begin() as connection:
        for row in rows:
            data = edit.get(row.id, row.data)
            prev = heads.get(row.session_id, GENESIS)
            new = NewEvent(*(getattr(row, f) for f in NewEvent.__dataclass_fields__ if f != "data"), data=data)
            digest = event_hash(key, new, row.seq, prev, log_prev)
            connection.execute(
                events.update()
                .where(events.c.id == row.id)
                .values(data=data, prev_hash=prev, log_prev=log_prev, hash=digest)
            )
            heads[row.session_id], log_prev = digest, digest


def test_a_rewritten_chain_without_the_key_is_caught(guard: Guard, store: AuditStore) -> None:
    fill(guard, sessions=2)
    target = row_id(store, "s0", 3)
    decision = next(e for e in store.events() if e.id == target)
    forged = decision.data.replace('"allowed":true', '"allowed":false')
    assert forged != decision.data
    rewrite_chain(store, b"the attacker's own key!!", {target: forged})
    report = verify(store.key, store.events())
    assert report.problems and all(p.kind == "edited" for p in report.problems)
    assert {p.row_id for p in report.problems} == {e.id for e in store.events()}  # nothing verifies
    # The key is what stops this: with it, a rewrite is indistinguishable (so keep it from the
    # database's writers: TETHER_KEY, not the key file beside the database).
    rewrite_chain(store, store.key, {target: forged})
    assert verify(store.key, store.events()).ok


def test_the_wrong_key_is_refused_at_open(store: AuditStore) -> None:
    with pytest.raises(StoreError, match="written with another key"):
        AuditStore(store.url, key=b"another key entirely")


def test_a_store_in_an_unknown_hash_format_is_refused(store: AuditStore) -> None:
    from tether.core.audit.schema import meta

    tamper(store, meta.update().where(meta.c.name == "hash_format").values(value="sha1/v0"))
    with pytest.raises(StoreError, match="uses hash format sha1/v0"):
        AuditStore(store.url, key=KEY)


def test_an_export_holds_every_event_and_verifies_on_its_own(
    guard: Guard, store: AuditStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from tether.core.cli import main

    fill(guard, sessions=2, calls=2)
    guard.session("bot", "s0").before_tool("search", {"q": "NaN is kept", "x": float("nan"), "who": "é ✓"})
    monkeypatch.setenv("TETHER_KEY", KEY.decode())
    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(main, ["audit", "export", "--store", store.url, "-o", str(out)])
    assert result.exit_code == 0, result.output

    def rebuilt(line: str) -> AuditEvent:
        fields = json.loads(line)
        return AuditEvent(**{k: v for k, v in fields.items() if k != "details"}, data=canonical_json(fields["details"]))

    exported = [rebuilt(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert exported == list(store.events())  # every field of every event, in order
    assert verify(KEY, exported).ok  # an auditor can check the export without the database
    lines = out.read_text(encoding="utf-8").splitlines()
    edited = next(i for i, line in enumerate(lines) if '"verdict": "allow"' in line)
    lines[edited] = lines[edited].replace('"verdict": "allow"', '"verdict": "deny"')
    assert [p.kind for p in verify(KEY, [rebuilt(line) for line in lines]).problems] == ["edited"]


CHILD = textwrap.dedent(
    """
    import sys
    from tether.core import AuditStore, Guard
    from tests.core.conftest import BASE_POLICY, KEY
    guard = Guard(BASE_POLICY, store=AuditStore(sys.argv[1], key=KEY))
    session = guard.session("bot", "crash")
    i = 0
    while True:
        decision = session.before_tool("search", {"q": i})
        print(decision.event_id, flush=True)
        i += 1
    """
)


def test_a_killed_process_loses_no_decision_it_returned(store_url: str, tmp_path: Path) -> None:
    AuditStore(store_url, key=KEY).close()
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert child.stdout is not None
    returned = []
    deadline = time.monotonic() + 60
    while len(returned) < 300 and time.monotonic() < deadline:
        returned.append(read_line(child.stdout, deadline - time.monotonic()).strip())
    os.kill(child.pid, signal.SIGKILL)  # mid-write, most likely: it writes continuously
    child.wait()
    assert len(returned) == 300
    store = AuditStore(store_url, key=KEY)
    stored = {e.event_id for e in store.events()}
    assert set(returned) <= stored
    newest = store.checkpoints.newest()
    assert verify(store.key, store.events(), [newest] if newest else []).ok  # a checkpoint is never ahead
    # and the session carries on after the crash, chain intact
    Guard(BASE_POLICY, store=store).session("bot", "crash").before_tool("search", {})
    assert verify(store.key, store.events()).ok
    store.close()


def test_two_processes_share_one_store(store_url: str) -> None:
    AuditStore(store_url, key=KEY).close()
    root = Path(__file__).resolve().parents[2]
    script = CHILD.replace('"crash"', "sys.argv[2]").replace("while True:", "for _ in range(200):")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, store_url, f"p{n}"],
            stdout=subprocess.DEVNULL,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        for n in range(2)
    ]
    for child in children:
        assert child.wait(timeout=120) == 0
    store = AuditStore(store_url, key=KEY)
    report = verify(store.key, store.events())
    assert report.ok and report.events == 2 * 201
    store.close()


def test_sqlite_store_lives_where_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TETHER_STORE", raising=False)
    monkeypatch.delenv("TETHER_KEY", raising=False)
    store = AuditStore()
    assert store.location == str(tmp_path / ".tether" / "tether.db")
    key_file = tmp_path / ".tether" / "tether.db.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    store.close()
    with pytest.raises(StoreError, match="no audit store at"):
        AuditStore(f"sqlite:///{tmp_path / 'elsewhere.db'}", create=False)


def test_tether_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_KEY", "short")
    with pytest.raises(StoreError, match="at least 16 characters"):
        AuditStore(f"sqlite:///{tmp_path / 'a.db'}")
    monkeypatch.setenv("TETHER_KEY", "a-long-enough-shared-fleet-key")
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}")
    assert store.key == b"a-long-enough-shared-fleet-key"
    assert not (tmp_path / "a.db.key").exists()
    store.close()


def test_migrations_match_the_declared_schema(store: AuditStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tether.core.audit.schema import VERSION_TABLE, metadata

    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_the_schema_revision_constant_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tether.core.audit import store as store_module
    from tether.core.audit.schema import SCHEMA_REVISION

    config = Config()
    config.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_processes_racing_on_a_new_session_start_it_once(store_url: str) -> None:
    """Two processes (two stores, two guards) load a new session before either writes to it."""
    guards = [Guard(BASE_POLICY, store=AuditStore(store_url, key=KEY)) for _ in range(2)]
    sessions = [guard.session("bot", "raced") for guard in guards]
    for session in sessions:
        assert not session.tainted  # loads the (empty) session in each process
    for session in sessions:
        session.before_tool("search", {"q": "x"})
    events = guards[0].store.session_events("raced")
    assert [e.kind for e in events].count("session.start") == 1
    assert [e.seq for e in events] == [0, 1, 2]
    assert verify(guards[0].store.key, guards[0].store.events()).ok
    for guard in guards:
        guard.close()


def test_creating_a_store_writes_nothing_to_an_application_logging_at_info(tmp_path: Path) -> None:
    """An application that logs everything at INFO sees no migration chatter from Tether."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        AuditStore(f"sqlite:///{tmp_path / 'fresh.db'}").close()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert "upgrade" not in stream.getvalue().lower(), stream.getvalue()
    assert logging.getLogger("alembic").level == logging.NOTSET  # left as it was
