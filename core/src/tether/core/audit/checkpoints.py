"""Signed checkpoints of the audit log's head, kept outside the event table.

A hash chain shows every edit and every gap, but not a cut of its own tail: delete the newest
events (or every row, or restore an older copy of the database) and what is left is still a
valid chain. A checkpoint records the head of the log (the newest event's row id and hash),
keyed with the store's key like the chain itself, somewhere the event table's writers do not
also control. ``tether audit verify`` then reports the log as truncated, wiped or rolled back
when it no longer reaches the head of the newest checkpoint.

A store writes one every :data:`EVERY_EVENTS` events or :data:`EVERY_SECONDS` seconds (from a
background thread, off the tool calls' path) and when it closes; events written after the
newest checkpoint are only as safe as the chain alone. Where checkpoints go:
``TETHER_CHECKPOINTS`` (comma-separated: file paths, SQLAlchemy URLs of another database, or
``https://`` webhooks that receive each one), else a file beside an SQLite store's key file
(``tether.db.checkpoint``), else the ``tether_checkpoints`` table of a PostgreSQL store.

A checkpoint is never written over one whose head the log no longer contains: the evidence of
a cut stays until someone looks at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from ..errors import StoreError, db_reason
from ..keys import key_id, mac_key
from .chain import GENESIS
from .schema import checkpoints as table
from .schema import events
from .signing import Signer, signer_from_environment, valid_signature

if TYPE_CHECKING:
    from .store import AuditStore

log = logging.getLogger("tether")

CHECKPOINTS_ENV = "TETHER_CHECKPOINTS"
FORMAT = "tether-checkpoint/v1"
EVERY_EVENTS = 1000
EVERY_SECONDS = 5.0
WEBHOOK_TIMEOUT = 2.0
_KEPT_IN_TABLE = 100  # older rows of the checkpoint table are pruned


@dataclass(frozen=True)
class Checkpoint:
    """The head of a store's log at one moment, with a keyed MAC over it."""

    store: str  # where the log was, for people
    key_id: str  # the store's key id: a checkpoint is checked with the key it was made with
    ts_us: int
    last_id: int  # row id of the newest event (0: the log was empty)
    head: str  # that event's hash
    event_id: str  # and its event id
    format: str = FORMAT
    public_key: str = ""  # Ed25519 (hex), when the store signs its checkpoints (tether[signing])
    mac: str = ""  # keyed with the store's key
    signature: str = ""  # Ed25519, over the same body as the MAC

    def body(self) -> bytes:
        fields = asdict(self)
        fields.pop("mac")
        fields.pop("signature")
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes, signer: Signer | None = None) -> Checkpoint:
        checkpoint = replace(self, public_key=signer.public_key) if signer else self
        body = checkpoint.body()
        return replace(checkpoint, mac=_mac(key, body), signature=signer.sign(body) if signer else "")

    def authentic(self, key: bytes) -> bool:
        return self.format == FORMAT and self.key_id == key_id(key) and self.mac == _mac(key, self.body())

    def signed_by(self, public_key: str) -> bool:
        """Whether the checkpoint carries a valid Ed25519 signature by ``public_key`` (hex)."""
        return bool(self.signature) and valid_signature(public_key, self.body(), self.signature)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        try:
            fields = json.loads(text)
            return cls(**{name: fields[name] for name in cls.__dataclass_fields__ if name in fields})
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"not a Tether checkpoint: {exc}") from None

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.ts_us / 1e6))


def _mac(key: bytes, body: bytes) -> str:
    return hashlib.blake2b(b"tether checkpoint\x00" + body, key=mac_key(key), digest_size=32).hexdigest()


def read_file(path: str | os.PathLike[str]) -> list[Checkpoint]:
    """Checkpoints from a file: one JSON object, or one per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot read checkpoints from {path}: {exc.strerror or exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and all(line.lstrip().startswith("{") and line.rstrip().endswith("}") for line in lines):
        return [Checkpoint.from_json(line) for line in lines]
    return [Checkpoint.from_json(text)] if text.strip() else []


# -- where checkpoints are kept ---------------------------------------------------------------


class Sink(Protocol):
    where: str

    def newest(self) -> Checkpoint | None: ...

    def write(self, checkpoint: Checkpoint) -> None: ...


class FileSink:
    """One file holding the newest checkpoint, replaced atomically under a lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def newest(self) -> Checkpoint | None:
        if not self.path.exists():
            return None
        found = read_file(self.path)
        return max(found, key=lambda c: c.last_id) if found else None

    def write(self, checkpoint: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with _locked(self.path):
            current = self.newest()
            if current is not None and current.last_id > checkpoint.last_id:
                return  # another process recorded a newer head meanwhile
            with open(temporary, "w", encoding="utf-8") as out:
                out.write(checkpoint.to_json() + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    """An exclusive lock among the processes writing ``path`` (where the OS offers one)."""
    try:
        import fcntl
    except ImportError:  # Windows: os.replace is still atomic
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class TableSink:
    """Rows of the ``tether_checkpoints`` table, in the store's database or another one."""

    def __init__(self, engine: sa.Engine, where: str) -> None:
        self.engine = engine
        self.where = where

    def newest(self) -> Checkpoint | None:
        query = sa.select(table.c.body).order_by(table.c.last_id.desc(), table.c.id.desc()).limit(1)
        with self.engine.connect() as connection:
            body = connection.execute(query).scalar()
        return Checkpoint.from_json(body) if body is not None else None

    def write(self, checkpoint: Checkpoint) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                table.insert().values(ts_us=checkpoint.ts_us, last_id=checkpoint.last_id, body=checkpoint.to_json())
            )
            keep = sa.select(table.c.id).order_by(table.c.id.desc()).limit(_KEPT_IN_TABLE).subquery()
            connection.execute(table.delete().where(table.c.id.not_in(sa.select(keep.c.id))))


class WebhookSink:
    """POSTs each checkpoint as JSON (to an external log, a SIEM...); it cannot be read back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = url

    def newest(self) -> Checkpoint | None:
        return None

    def write(self, checkpoint: Checkpoint) -> None:
        request = urllib.request.Request(
            self.url, data=checkpoint.to_json().encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT):
            pass


def sinks_for(store: AuditStore, targets: Sequence[str] | None) -> list[Sink]:
    """Where ``store`` keeps checkpoints: ``targets``, else ``TETHER_CHECKPOINTS``, else the default."""
    if targets is None:
        configured = os.environ.get(CHECKPOINTS_ENV)
        targets = [t.strip() for t in configured.split(",") if t.strip()] if configured else None
    if targets is None:
        database = sa.engine.make_url(store.url).database
        if store.engine.dialect.name == "sqlite":
            if not database or database == ":memory:":
                return []
            return [FileSink(database + ".checkpoint")]
        return [TableSink(store.engine, f"the tether_checkpoints table of {store.location}")]
    return [_sink(target, store) for target in targets]


def _sink(target: str, store: AuditStore) -> Sink:
    if target.startswith(("http://", "https://")):
        return WebhookSink(target)
    if "://" in target:
        from .store import _engine, upgrade

        engine = _engine(target, store.timeout, store.watchdog)  # bounded like the store itself
        upgrade(engine)
        return TableSink(engine, sa.engine.make_url(target).render_as_string(hide_password=True))
    return FileSink(target)


# -- writing ------------------------------------------------------------------------------------


class Checkpoints:
    """Writes a store's checkpoints: after enough events or time, and when the store closes."""

    def __init__(self, store: AuditStore, sinks: Sequence[Sink]) -> None:
        self.store = store
        self.sinks = list(sinks)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._unrecorded = 0  # events written since the last checkpoint
        self._thread: threading.Thread | None = None
        self.broken: str | None = None  # why checkpoints stopped: the log lost a recorded head
        self.signer = signer_from_environment() if self.sinks else None

    def written(self, count: int) -> None:
        """The store committed ``count`` events (the hook the store calls; never raises)."""
        if not self.sinks:
            return
        with self._lock:
            self._unrecorded += count
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="tether-audit-checkpoints", daemon=True)
                self._thread.start()
            if self._unrecorded >= EVERY_EVENTS:
                self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(EVERY_SECONDS)
            self._wake.clear()
            if self._unrecorded and not self._stop.is_set():
                self._record()

    def _record(self) -> None:
        try:
            self.write()
        except StoreError as exc:
            if self.broken is None:  # (a broken log was reported once already)
                log.error("Tether could not write an audit checkpoint: %s", exc)
        except Exception:
            log.exception("Tether could not write an audit checkpoint")

    def write(self) -> Checkpoint:
        """Record the log's current head in every sink, after checking that the log still holds
        the head recorded before. Raise :class:`StoreError` if it does not, or nothing is kept."""
        if not self.sinks:
            raise StoreError("no place is configured for checkpoints of this store")
        with self._lock:
            self._unrecorded = 0
        checkpoint = head_of(self.store, self.signer)
        previous = self.newest()
        if previous is not None:
            self._check_continuity(previous)
        failed = []
        for sink in self.sinks:
            try:
                sink.write(checkpoint)
            except Exception as exc:  # noqa: BLE001 - the other places still get it
                failed.append(f"{sink.where}: {exc}")
        if len(failed) == len(self.sinks):
            raise StoreError(f"cannot write an audit checkpoint ({'; '.join(failed)})")
        for failure in failed:
            log.error("Tether could not write an audit checkpoint to %s", failure)
        return checkpoint

    def _check_continuity(self, previous: Checkpoint) -> None:
        problem = None
        if not previous.authentic(self.store.key):
            problem = "the newest checkpoint does not verify with this store's key"
        elif previous.last_id and _hash_at(self.store, previous.last_id) != previous.head:
            problem = (
                f"the log no longer holds the head the checkpoint of {previous.when()} recorded "
                f"(event #{previous.last_id}): it was cut, wiped or rolled back"
            )
        if problem is not None:
            if self.broken is None:
                log.error(
                    "Tether keeps the existing audit checkpoint as evidence: %s; run tether audit verify", problem
                )
            self.broken = problem
            raise StoreError(f"{problem}; the existing checkpoint is kept as evidence (run `tether audit verify`)")

    def newest(self) -> Checkpoint | None:
        """The newest checkpoint any readable sink holds."""
        found = [c for c in (_newest(sink) for sink in self.sinks) if c is not None]
        return max(found, key=lambda c: (c.last_id, c.ts_us)) if found else None

    def close(self) -> None:
        """Stop the background writer, recording the final head if anything was written."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(EVERY_SECONDS + 5)
            if self._unrecorded:
                self._record()


def _newest(sink: Sink) -> Checkpoint | None:
    try:
        return sink.newest()
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable place is reported, not fatal
        log.error("Tether could not read audit checkpoints from %s: %s", sink.where, exc)
        return None


def head_of(store: AuditStore, signer: Signer | None = None) -> Checkpoint:
    """A signed checkpoint of ``store``'s log as it is now."""
    query = sa.select(events.c.id, events.c.hash, events.c.event_id).order_by(events.c.id.desc()).limit(1)
    try:
        with store.engine.connect() as connection:
            row = connection.execute(query).first()
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read the head of {store.location}: {db_reason(exc)}") from exc
    last_id, head, event_id = (row[0], row[1], row[2]) if row else (0, GENESIS, "")
    checkpoint = Checkpoint(store.location, key_id(store.key), time.time_ns() // 1000, last_id, head, event_id)
    return checkpoint.signed(store.key, signer)


def _hash_at(store: AuditStore, row_id: int) -> str | None:
    with store.engine.connect() as connection:
        found = connection.execute(sa.select(events.c.hash).where(events.c.id == row_id)).scalar()
    return str(found) if found is not None else None


def newest_of(checkpoints: Iterable[Checkpoint]) -> Checkpoint | None:
    found = list(checkpoints)
    return max(found, key=lambda c: (c.last_id, c.ts_us)) if found else None
