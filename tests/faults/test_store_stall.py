"""A store that stops answering: a silent network to PostgreSQL, a server that drops every
connection, a SQLite file locked by another writer. A decision waits at most about the store's
timeout, is denied, and the store works again by itself once the fault is gone."""

from __future__ import annotations

import contextlib
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tether.core import AuditStore, Guard
from tether.core.audit import verify
from tether.core.audit.events import Kind
from tether.core.audit.render import summary
from tether.core.decision import Enforcement
from tether.core.errors import StoreError

from ..core.conftest import BASE_POLICY, KEY

TIMEOUT = 1.0
# How long a denial may take at most: the bound plus generous slack for a loaded machine. The
# point is "seconds, not minutes": without the bound a stalled socket blocks for TCP's lifetime.
AT_MOST = TIMEOUT + 6


class Proxy:
    """A TCP relay on 127.0.0.1 in front of a server, told what to do with the bytes:
    ``forward`` them, ``stall`` (accept connections and hold every byte, as a dead network
    would), or ``drop`` (close every connection, as a restarting server would)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "forward"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "drop":
                client.close()
                continue
            server = socket.create_connection(self.target, timeout=5)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        with client, server:
            while not self._stop.is_set():
                if self.mode == "drop":
                    return
                if self.mode == "stall":
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select([client, server], [], [], 0.05)
                for source in readable:
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    (server if source is client else client).sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.fixture
def proxied(pg_url: str) -> Iterator[tuple[Proxy, str]]:
    url = sa.engine.make_url(pg_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


def chain_is_whole(url: str, key: bytes = KEY) -> bool:
    store = AuditStore(url, key=key, create=False)
    report = verify(store.key, store.events())
    store.close()
    return report.ok and report.events > 0


def timed_decision(guard: Guard, session_id: str) -> tuple[bool, str, float]:
    started = time.monotonic()
    decision = guard.session("bot", session_id).before_tool("search", {"q": "x"})
    return decision.allowed, decision.reason, time.monotonic() - started


def allowed_again(guard: Guard, session_id: str, within: float = 15.0) -> bool:
    """The store recovers on its own: a decision is allowed again within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if timed_decision(guard, session_id)[0]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["stall", "drop"])
def test_postgres_that_stops_answering_denies_within_the_bound_then_recovers(
    proxied: tuple[Proxy, str], fault: str
) -> None:
    proxy, url = proxied
    store = AuditStore(url, key=KEY, timeout=TIMEOUT)
    guard = Guard(BASE_POLICY, store=store)
    assert timed_decision(guard, "s1")[0]

    proxy.mode = fault
    for session_id in ("s1", "s2"):  # a session with a cached state, and a new one that must read
        allowed, reason, took = timed_decision(guard, session_id)
        assert not allowed, reason
        assert "audit store" in reason, reason
        assert took < AT_MOST, f"a {fault} store held the decision for {took:.1f} s"

    proxy.mode = "forward"
    assert allowed_again(guard, "s1")
    assert allowed_again(guard, "s3")
    guard.close()
    assert chain_is_whole(pg_url_of(url, proxy))  # the cut-off writes left no break


def pg_url_of(url: str, proxy: Proxy) -> str:
    """The proxied URL pointed straight at the server again."""
    host, port = proxy.target
    return sa.engine.make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


@pytest.mark.postgres
def test_a_stalled_postgres_at_open_fails_within_the_bound(proxied: tuple[Proxy, str]) -> None:
    proxy, url = proxied
    proxy.mode = "stall"
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open the audit store"):
        AuditStore(url, key=KEY, timeout=TIMEOUT)
    # Connecting is bounded by libpq's connect_timeout, whose smallest value is 2 s.
    assert time.monotonic() - started < 2 + AT_MOST


def test_a_sqlite_store_locked_by_another_writer_denies_within_the_bound(sqlite_url: str) -> None:
    guard = Guard(BASE_POLICY, store=sqlite_url, store_timeout=TIMEOUT)
    assert guard.store.timeout == TIMEOUT
    assert timed_decision(guard, "s1")[0]

    other = sqlite3.connect(sa.engine.make_url(sqlite_url).database or "", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock and does not let go
    try:
        allowed, reason, took = timed_decision(guard, "s1")
        assert not allowed, reason
        assert "audit store" in reason, reason
        assert took < AT_MOST, f"a locked store held the decision for {took:.1f} s"
    finally:
        with contextlib.suppress(sqlite3.Error):
            other.execute("ROLLBACK")
        other.close()

    assert allowed_again(guard, "s1")
    guard.close()
    assert chain_is_whole(sqlite_url, guard.store.key)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "2"])
def test_the_store_timeout_must_be_a_positive_number(sqlite_url: str, timeout: object) -> None:
    with pytest.raises(StoreError, match="timeout must be a positive number"):
        AuditStore(sqlite_url, key=KEY, timeout=timeout)  # type: ignore[arg-type]


def test_monitor_mode_never_breaks_the_agent_when_the_store_fails_and_records_the_gap(sqlite_url: str) -> None:
    guard = Guard(BASE_POLICY, store=AuditStore(sqlite_url, key=KEY), mode="monitor")
    session = guard.session("bot", "watched")
    session.after_tool(session.before_tool("search", {"q": "before"}), "fine")

    database = sa.engine.make_url(sqlite_url).database or ""
    with contextlib.closing(sqlite3.connect(database)) as db:  # the store now refuses every event
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON tether_audit_events BEGIN SELECT RAISE(ABORT, 'disk gone'); END"
        )
    other = guard.session("bot", "another")  # a session this process has not written to yet
    for s in (session, other):
        decision = s.before_tool("delete_file", {"path": "/tmp/x"})  # not granted: monitored, not enforced
        assert decision.allowed and decision.enforcement is Enforcement.MONITORED
        assert s.after_tool(decision, "deleted") == "deleted"
        request = s.before_model([{"role": "user", "content": "hello"}])
        s.after_model("hi", parent=request.event_id)
        s.trusted_input("the user's request")

    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("DROP TRIGGER refuse")
    session.before_tool("search", {"q": "after"})
    guard.close()

    store = AuditStore(sqlite_url, key=KEY)
    gaps = [e for e in store.events() if e.kind == Kind.GAP]
    assert len(gaps) == 1
    assert gaps[0].details["missed"] == 10  # five events in each of the two sessions
    assert "disk gone" in gaps[0].details["error"]
    assert "AUDIT GAP: 10 event(s)" in summary(gaps[0])
    assert verify(store.key, store.events()).ok
    store.close()
