"""The audit store: SQLite by default, PostgreSQL by URL, written through SQLAlchemy.

Writes are the hot path: each tool decision must be durable before the tool runs. They use one
dedicated DB-API connection and group commit: concurrent callers queue their events, one of
them writes the whole queue in one transaction, and every caller returns only once its events
are committed. Reads (CLI, verify, export) use SQLAlchemy Core.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url

from ..errors import StoreError, db_reason
from ..keys import key_id, load_key
from .chain import GENESIS, HASH_FORMAT, event_hash
from .checkpoints import Checkpoints, sinks_for
from .deadline import Watchdog, socket_of
from .events import AuditEvent, Kind, NewEvent
from .schema import SCHEMA_REVISION, VERSION_TABLE, events, meta, sensitive_values

STORE_ENV = "TETHER_STORE"
DEFAULT_PATH = Path(".tether") / "tether.db"
DEFAULT_TIMEOUT = 2.0  # seconds a decision may wait on the store before it is denied
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # a PostgreSQL identifier that needs no quoting
_COLUMNS = (
    "event_id",
    "ts_us",
    "session_id",
    "seq",
    "kind",
    "agent",
    "user_id",
    "tenant",
    "tool",
    "parent_id",
    "verdict",
    "data",
    "prev_hash",
    "log_prev",
    "hash",
)


def default_store_url() -> str:
    """``TETHER_STORE`` if set, else a SQLite file in ``.tether/`` under the working directory."""
    return os.environ.get(STORE_ENV) or f"sqlite:///{DEFAULT_PATH.resolve()}"


def _engine(url: str, timeout: float, watchdog: Watchdog) -> Engine:
    """An engine whose every wait is bounded by ``timeout`` seconds: connecting, waiting for a
    pooled connection or a lock, and each statement (see :mod:`tether.core.audit.deadline`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return _postgres_engine(url, timeout, watchdog)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers (the CLI) never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable once committed, as long as the OS is up
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")  # a held lock: wait this long, then fail
        # Content deleted or overwritten (a pending request's sealed arguments, once answered) is
        # zeroed in the database file rather than left in free space. Events are only appended.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    return engine


def store_schema(url: str) -> str | None:
    """The PostgreSQL schema a store URL names (``?schema=NAME``), checked; None if it names none."""
    value = make_url(url).query.get("schema")
    if value is None:
        return None
    name = value if isinstance(value, str) else value[-1]
    if not _SCHEMA_NAME.fullmatch(name):
        raise StoreError(
            f"the audit store's schema must be a lowercase PostgreSQL name (letters, digits, _; "
            f"at most 63), not {name!r}"
        )
    return name


def _postgres_engine(url: str, timeout: float, watchdog: Watchdog) -> Engine:
    schema = store_schema(url)
    parsed = make_url(url).difference_update_query(["schema"])  # Tether's parameter, not libpq's
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's minimum is 2 s
    engine = sa.create_engine(parsed, pool_timeout=timeout, connect_args=connect_args)
    milliseconds = int(timeout * 1000)

    @sa.event.listens_for(engine, "connect")
    def _server_timeouts(dbapi_connection: Any, _record: Any) -> None:
        # The server gives up too, so a client cut off by the watchdog leaves no lock held for long.
        with dbapi_connection.cursor() as cursor:
            if schema is not None:
                cursor.execute(f'SET search_path TO "{schema}"')
            cursor.execute(f"SET lock_timeout = {milliseconds}")
            cursor.execute(f"SET idle_in_transaction_session_timeout = {max(milliseconds * 5, 10_000)}")
        dbapi_connection.commit()

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Instead of pool_pre_ping, whose ping would wait forever on a silent network.
        try:
            with watchdog.bounded(dbapi_connection), dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as exc:
            raise sa.exc.DisconnectionError(str(exc)) from exc

    # Each statement, commit and rollback is watched until it returns (or the connection goes
    # back to the pool); rows streamed after a statement (``yield_per``) are not.
    def watch(conn: Any) -> None:
        unwatch(conn.info)
        bound = conn.get_execution_options().get("tether_timeout", timeout)
        fileno = socket_of(conn.connection.dbapi_connection) if bound is not None else None
        if fileno is not None:
            conn.info["tether_watch"] = (watchdog.arm(fileno, bound), bound)

    def unwatch(info: dict[str, Any]) -> float | None:
        """Stop watching; the bound that was missed, if the watchdog cut the statement off."""
        token, bound = info.pop("tether_watch", (None, None))
        return bound if token is not None and watchdog.disarm(token) else None

    sa.event.listen(engine, "before_cursor_execute", lambda conn, *_: watch(conn))
    sa.event.listen(engine, "commit", watch)
    sa.event.listen(engine, "rollback", watch)
    sa.event.listen(engine, "after_cursor_execute", lambda conn, *_: unwatch(conn.info))
    sa.event.listen(engine, "checkin", lambda _dbapi, record: unwatch(record.info))

    @sa.event.listens_for(engine, "handle_error")
    def _timed_out(context: Any) -> None:
        missed = unwatch(context.connection.info) if context.connection is not None else None
        if missed is not None:
            context.is_disconnect = True  # its socket is shut: drop this connection, keep the pool
            context.invalidate_pool_on_disconnect = False
            raise StoreError(watchdog.late_message(missed))

    return engine


def upgrade(engine: Engine) -> None:
    """Bring the store's tables to the current schema (a no-op once there). Migrations may take
    long on a large store: they run without the per-statement bound."""
    if _revision(engine) == SCHEMA_REVISION:
        return
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    try:
        with engine.begin() as connection, _quiet(logging.getLogger("alembic")):
            connection = connection.execution_options(tether_timeout=None)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as exc:  # a revision this version does not know: written by a newer Tether
        raise StoreError(
            f"the audit store is at schema revision {_revision(engine)!r}, which this version of Tether does not "
            f"know (it knows up to {SCHEMA_REVISION!r}): upgrade Tether to read it ({exc})"
        ) from None
    except sa.exc.SQLAlchemyError:
        if _revision(engine) != SCHEMA_REVISION:  # not merely another process upgrading first
            raise


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Keep ``logger``'s progress lines (Alembic's "Running upgrade ...") out of the output of an
    application that logs at INFO: creating or upgrading the store is Tether's business."""
    before = logger.level
    logger.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(before)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:  # a store that cannot be reached fails here, once
        try:
            return connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        except sa.exc.DBAPIError:  # no version table yet: a new store
            return None


Condition = Callable[[Any], bool]
"""Runs on the write transaction's DB-API cursor; False drops its caller's events from the batch."""


Expect = tuple[str, int]
"""(session id, seq): write only if that is still the session's newest event (-1: no events yet)."""


class ConditionFailed(StoreError):
    """The condition given with :meth:`AuditStore.append` did not hold; nothing was written for it."""


class _Ticket:
    """One caller's events in the queue, and the lock it sleeps on until they are written."""

    __slots__ = ("condition", "error", "events", "expect", "lead", "seqs", "wake")

    def __init__(
        self, events: Sequence[NewEvent], condition: Condition | None = None, expect: Expect | None = None
    ) -> None:
        self.events = events
        self.condition = condition
        self.expect = expect
        self.seqs: list[int | None] = []  # each event's seq once written (None: a repeated session start)
        self.lead = False  # this caller writes the next batch
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # released when the events are written, or when it is this caller's turn to lead


class _GroupCommit:
    """Group commit with a leader: a caller that finds no write in progress writes everyone's
    queued events in one transaction, then wakes exactly the callers it wrote for and hands the
    lead to the first caller still waiting. Waking no one else keeps the GIL free for the writer.
    """

    def __init__(self, write: Any) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._leading = False

    def submit(
        self, batch: Sequence[NewEvent], condition: Condition | None = None, expect: Expect | None = None
    ) -> list[int | None]:
        ticket = _Ticket(batch, condition, expect)
        with self._lock:
            self._queue.append(ticket)
            if not self._leading:
                self._leading = ticket.lead = True
        if not ticket.lead:
            ticket.wake.acquire()
        if ticket.lead:
            self._lead()
        if isinstance(ticket.error, ConditionFailed):
            raise ticket.error
        if ticket.error is not None:
            raise StoreError(f"audit write failed: {ticket.error}") from ticket.error
        return ticket.seqs

    def _lead(self) -> None:
        with self._lock:
            tickets, self._queue = self._queue, []
        error: BaseException | None = None
        failed: set[int] = set()
        try:
            failed = self._write(tickets)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn its events were not written
            error = exc
        with self._lock:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._leading = False
        for i, t in enumerate(tickets):
            t.error, t.lead = (ConditionFailed("the condition did not hold") if i in failed else error), False
            if t.wake.locked():
                t.wake.release()
        if successor is not None:
            successor.lead = True
            successor.wake.release()


class _Writer:
    """Appends events in one transaction per batch, extending both hash chains.

    The chains' heads (the newest hash of the log and of each session) are cached between
    batches. On SQLite the cache is trusted only while ``PRAGMA data_version`` shows no other
    connection has committed since; otherwise, and always on PostgreSQL, heads are read inside
    the write transaction, which holds the lock that serialises writers.
    """

    _MAX_CACHED_SESSIONS = 10_000

    def __init__(self, engine: Engine, key: bytes, watchdog: Watchdog, lock: int) -> None:
        self._engine = engine
        self._key = key
        self.watchdog = watchdog
        self._lock = lock  # the PostgreSQL advisory lock of this store's log
        self._sqlite = engine.dialect.name == "sqlite"
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        table = events.name
        self._insert = f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))})"
        self._log_head = f"SELECT hash FROM {table} ORDER BY id DESC LIMIT 1"
        self._session_head = f"SELECT seq, hash FROM {table} WHERE session_id = {mark} ORDER BY seq DESC LIMIT 1"
        self._connection: Any = None
        self._log_prev: str | None = None
        self._heads: dict[str, tuple[int, str]] = {}
        self._data_version: int | None = None
        self.commits = 0  # for the checkpointer: has anything been written since it last ran

    def _connect(self) -> Any:
        if self._connection is None:
            self._connection = self._engine.raw_connection()
            if self._sqlite:
                driver = self._connection.driver_connection
                driver.isolation_level = None  # we issue BEGIN ourselves
                driver.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off the hot path
        return self._connection

    def _begin(self, cursor: Any) -> None:
        """Take the write lock, and forget cached heads another writer may have moved."""
        if self._sqlite:
            cursor.execute("BEGIN IMMEDIATE")
            version = cursor.execute("PRAGMA data_version").fetchone()[0]
            fresh = version == self._data_version
            self._data_version = version
        else:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
            fresh = False
        if not fresh or len(self._heads) > self._MAX_CACHED_SESSIONS:
            self._heads.clear()
            self._log_prev = None

    def write(self, tickets: Sequence[_Ticket]) -> set[int]:
        """Write the tickets' events in one transaction; return the indexes of the tickets whose
        condition did not hold (their events are left out)."""
        connection = self._connect()
        if self._sqlite:  # a held lock is bounded by busy_timeout; there is no network to stall
            return self._write(connection, tickets)
        with self.watchdog.bounded(connection):
            return self._write(connection, tickets)

    def _write(self, connection: Any, tickets: Sequence[_Ticket]) -> set[int]:
        cursor = connection.cursor()
        try:
            self._begin(cursor)
            if self._log_prev is None:
                cursor.execute(self._log_head)
                row = cursor.fetchone()
                self._log_prev = row[0] if row else GENESIS
            log_prev = self._log_prev
            failed: set[int] = set()
            rows = []
            for i, ticket in enumerate(tickets):
                # The session check comes first: a failed ticket must have changed nothing.
                if not self._expected(cursor, ticket.expect) or (
                    ticket.condition is not None and not ticket.condition(cursor)
                ):
                    failed.add(i)
                    continue
                ticket.seqs = []
                for e in ticket.events:
                    seq, prev_hash = self._head(cursor, e.session_id)
                    if e.kind == Kind.SESSION and seq >= 0:
                        ticket.seqs.append(None)
                        continue  # another process started this session first
                    seq += 1
                    digest = event_hash(self._key, e, seq, prev_hash, log_prev)
                    rows.append(_row(e, seq, prev_hash, log_prev, digest))
                    self._heads[e.session_id] = (seq, digest)
                    ticket.seqs.append(seq)
                    log_prev = digest
            if len(rows) == 1:  # the common case; executemany costs more for one row
                cursor.execute(self._insert, rows[0])
            elif rows:
                cursor.executemany(self._insert, rows)
            if self._sqlite:
                cursor.execute("COMMIT")
            else:
                connection.commit()
            self._log_prev = log_prev
            self.commits += 1
            return failed
        except BaseException:
            self._abandon(connection)
            raise
        finally:
            with contextlib.suppress(Exception):  # the connection may already be gone
                cursor.close()

    def _head(self, cursor: Any, session_id: str) -> tuple[int, str]:
        """The session's newest (seq, hash) as this transaction sees it: (-1, GENESIS) if none."""
        if session_id not in self._heads:
            cursor.execute(self._session_head, (session_id,))
            found = cursor.fetchone()
            self._heads[session_id] = (found[0], found[1]) if found else (-1, GENESIS)
        return self._heads[session_id]

    def _expected(self, cursor: Any, expect: Expect | None) -> bool:
        return expect is None or self._head(cursor, expect[0])[0] == expect[1]

    def _abandon(self, connection: Any) -> None:
        """Roll back; drop the connection so the next write starts on a fresh one."""
        with contextlib.suppress(Exception):
            if not self._sqlite:
                connection.rollback()
            elif connection.driver_connection.in_transaction:
                connection.driver_connection.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            connection.invalidate()
        self._connection = None
        self._heads.clear()
        self._log_prev = None
        self._data_version = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _row(e: NewEvent, seq: int, prev_hash: str, log_prev: str, digest: str) -> tuple[Any, ...]:
    return (
        e.event_id,
        e.ts_us,
        e.session_id,
        seq,
        e.kind,
        e.agent,
        e.user_id,
        e.tenant,
        e.tool,
        e.parent_id,
        e.verdict,
        e.data,
        prev_hash,
        log_prev,
        digest,
    )


class _Checkpointer(threading.Thread):
    """Copies SQLite's write-ahead log into the database in the background.

    SQLite would otherwise do this inside whichever commit crosses its threshold, adding a
    stall to that tool call. A passive checkpoint never blocks readers or the writer.
    """

    def __init__(self, path: str, writer: _Writer, interval: float = 1.0) -> None:
        super().__init__(name="tether-checkpoint", daemon=True)
        self._path, self._writer, self._interval = path, writer, interval
        self._stop = threading.Event()
        self._seen = 0

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            self.checkpoint()

    def checkpoint(self) -> None:
        if self._writer.commits == self._seen:
            return
        self._seen = self._writer.commits
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(self._path, timeout=1)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def stop(self) -> None:
        self._stop.set()
        self.checkpoint()


@dataclass(frozen=True)
class Namespace:
    """What keeps stores sharing one PostgreSQL database apart, beyond their tables: the schema
    they live in names the advisory lock that serialises their writers and the channel their
    approval answers are announced on."""

    schema: str
    lock: int
    channel: str

    @classmethod
    def of(cls, schema: str) -> Namespace:
        digest = hashlib.sha256(f"tether:{schema}".encode()).digest()
        return cls(schema, int.from_bytes(digest[:8], "big", signed=True), f"tether_approvals_{digest[8:14].hex()}")


def _namespace(engine: Engine, url: str, *, create: bool) -> Namespace:
    """The store's namespace; with ``create``, make the schema ``url`` names if it is missing."""
    if engine.dialect.name == "sqlite":
        return Namespace.of("main")  # a SQLite store is a file of its own: nothing to keep apart
    schema = store_schema(url)
    with engine.begin() as connection:
        if schema is not None and create:
            connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        current = connection.execute(sa.text("SELECT current_schema()")).scalar()
    return Namespace.of(str(current or "public"))


@dataclass
class SessionSummary:
    session_id: str
    agents: list[str] = field(default_factory=list)
    events: int = 0
    first_us: int = 0
    last_us: int = 0


class AuditStore:
    """Where audit events live. ``url`` is a SQLAlchemy URL; the default is a local SQLite file."""

    def __init__(
        self,
        url: str | None = None,
        *,
        key: bytes | None = None,
        create: bool = True,
        checkpoints: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        schema: str | None = None,
    ) -> None:
        """Open (and with ``create``, make) the store at ``url``. ``schema``: the PostgreSQL
        schema its tables live in (also ``?schema=NAME`` in the URL; made if missing), so that
        stores sharing a database stay apart. ``checkpoints``: where to keep
        checkpoints of the log's head (see :mod:`tether.core.audit.checkpoints`). ``timeout``: the
        most seconds any one wait on the store may take (connecting, a lock, a statement, a
        write); past it the operation fails with :class:`StoreError`, and a decision is denied."""
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise StoreError(f"the audit store's timeout must be a positive number of seconds, not {timeout!r}")
        self.url = url or default_store_url()
        if schema is not None:
            self.url = make_url(self.url).update_query_dict({"schema": schema}).render_as_string(hide_password=False)
        self.timeout = float(timeout)
        self.watchdog = Watchdog(self.timeout)
        if not create and self._missing():
            raise StoreError(
                f"no audit store at {self.location}: run an agent under Tether (or `tether demo`) "
                "first, or point --store / TETHER_STORE at the store"
            )
        try:
            self.engine = _engine(self.url, self.timeout, self.watchdog)
            self.namespace = _namespace(self.engine, self.url, create=create)
            upgrade(self.engine)
            self.key = key if key is not None else load_key(self._key_file(), create=create)
            self._check_meta()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the audit store {self.location}: {db_reason(exc)}") from exc
        self._writer = _Writer(self.engine, self.key, self.watchdog, self.namespace.lock)
        self._commit = _GroupCommit(self._writer.write)
        self.checkpoints = Checkpoints(self, sinks_for(self, checkpoints))
        self._checkpointer: _Checkpointer | None = None
        database = make_url(self.url).database
        if self.engine.dialect.name == "sqlite" and database and database != ":memory:":
            self._checkpointer = _Checkpointer(database, self._writer)
            self._checkpointer.start()

    @property
    def location(self) -> str:
        """Where the store is, for people: a file path, or the URL without its password."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            return str(Path(parsed.database or ":memory:").resolve()) if parsed.database else ":memory:"
        return parsed.render_as_string(hide_password=True)

    def _missing(self) -> bool:
        parsed = make_url(self.url)
        database = parsed.database
        return (
            parsed.get_backend_name() == "sqlite"
            and bool(database)
            and database != ":memory:"
            and not Path(database or "").exists()
        )

    def _key_file(self) -> Path:
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            return Path(parsed.database + ".key")
        return DEFAULT_PATH.parent / "key"

    def _check_meta(self) -> None:
        """Refuse a store written with another key, or with a hash format this version does not know."""
        expected = {"key_id": key_id(self.key), "hash_format": HASH_FORMAT}
        with self.engine.begin() as connection:
            stored = {name: value for name, value in connection.execute(sa.select(meta.c.name, meta.c.value))}
            missing = [{"name": n, "value": v} for n, v in expected.items() if n not in stored]
            if missing:
                connection.execute(meta.insert(), missing)
        if stored.get("hash_format", HASH_FORMAT) != HASH_FORMAT:
            raise StoreError(
                f"the audit store {self.location} uses hash format {stored['hash_format']}; this version of "
                f"Tether writes and verifies format {HASH_FORMAT}"
            )
        if stored.get("key_id", expected["key_id"]) != expected["key_id"]:
            raise StoreError(
                f"the audit store {self.location} was written with another key (key id {stored['key_id']}, "
                f"this process has {expected['key_id']}); set TETHER_KEY to the key it was created with"
            )

    def append(
        self, batch: Sequence[NewEvent], *, condition: Condition | None = None, expect: Expect | None = None
    ) -> list[int | None]:
        """Write ``batch``; return once it is committed, with the seq each event got in its
        session (None for a session start another writer had already written). Raise
        :class:`StoreError` if it is not committed.

        ``condition`` runs first inside the same transaction, holding the write lock, and may
        change other tables: the change and the events recording it then commit together. If it
        returns False it must have changed nothing (a conditional UPDATE that matched no row);
        ``batch`` is left out and :class:`ConditionFailed` is raised. ``expect`` (session id,
        seq) likewise leaves the batch out unless that seq is still the session's newest: a
        writer that decided on what it knew of a session learns that another wrote there since."""
        seqs = self._commit.submit(batch, condition, expect)
        self.checkpoints.written(len(batch))
        return seqs

    def session_events(self, session_id: str, after_seq: int = -1) -> list[AuditEvent]:
        """A session's events after ``after_seq``, in order, read in one bounded statement (a
        decision may wait on it)."""
        query = (
            sa.select(events).where(events.c.session_id == session_id, events.c.seq > after_seq).order_by(events.c.seq)
        )
        return list(self._read(query, stream=False))

    def events(
        self,
        *,
        session_id: str | None = None,
        after_id: int | None = None,
        last: int | None = None,
        user: str | None = None,
    ) -> Iterator[AuditEvent]:
        """Events oldest first, optionally one session's, after a row id, or only the ``last`` n;
        ``user`` is a user reference as stored (:func:`tether.core.redact.user_ref`)."""
        query = sa.select(events)
        if session_id is not None:
            query = query.where(events.c.session_id == session_id)
        if user is not None:
            query = query.where(events.c.user_id == user)
        if after_id is not None:
            query = query.where(events.c.id > after_id)
        if last is not None:
            newest = query.order_by(events.c.id.desc()).limit(last).subquery()
            query = sa.select(newest).order_by(newest.c.id)
        else:
            query = query.order_by(events.c.id)
        return self._read(query)

    def event(self, event_id: str) -> AuditEvent | None:
        return next(self._read(sa.select(events).where(events.c.event_id == event_id)), None)

    def tool_usage(self) -> list[tuple[str, str, str | None, int]]:
        """(agent, tool, verdict, count) over every tool decision in the store."""
        query = (
            sa.select(events.c.agent, events.c.tool, events.c.verdict, sa.func.count())
            .where(events.c.kind == "tool.decision")
            .group_by(events.c.agent, events.c.tool, events.c.verdict)
        )
        with self.engine.connect() as connection:
            return [(a, t, v, n) for a, t, v, n in connection.execute(query)]

    def seen_elsewhere(
        self, values: Mapping[str, str], session_id: str, tenant: str, *, by_tenant: bool
    ) -> dict[str, tuple[str, str]]:
        """Record that ``session_id`` saw ``values`` (fingerprint -> kind) and return those seen
        before in another session (``by_tenant``: of another tenant), with that session and tenant.
        """
        if not values:
            return {}
        table = sensitive_values
        query = sa.select(table.c.fingerprint, table.c.session_id, table.c.tenant).where(
            table.c.fingerprint.in_(list(values)),
            (table.c.tenant != tenant) if by_tenant else (table.c.session_id != session_id),
        )
        now = time.time_ns() // 1000
        rows = [
            {"fingerprint": fp, "session_id": session_id, "tenant": tenant, "kind": kind, "first_seen_us": now}
            for fp, kind in values.items()
        ]
        insert = sqlite_insert if self.engine.dialect.name == "sqlite" else postgres_insert
        try:
            with self.engine.begin() as connection:
                found = {fp: (sid, ten) for fp, sid, ten in connection.execute(query)}
                connection.execute(insert(table).on_conflict_do_nothing(), rows)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot record sensitive values in {self.location}: {db_reason(exc)}") from exc
        return found

    def read(self, query: Any) -> Iterator[AuditEvent]:
        """The events a SQLAlchemy select over the events table returns, streamed in its order."""
        return self._read(query)

    def _read(self, query: Any, *, stream: bool = True) -> Iterator[AuditEvent]:
        """``stream``: fetch rows as they are consumed (for large reads; only the query itself is
        bounded by the store's timeout), else all in the one bounded statement."""
        try:
            with self.engine.connect() as connection:
                options = {"yield_per": 1000} if stream else {}
                for row in connection.execution_options(**options).execute(query):
                    yield AuditEvent(**row._mapping)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot read the audit store {self.location}: {db_reason(exc)}") from exc

    def close(self) -> None:
        self.checkpoints.close()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._writer.close()
        self.engine.dispose()
        self.watchdog.stop()
