"""The approval queue: pending requests in the store, answered from anywhere that shares it.

A request is a row in ``tether_approvals``. Answering is one conditional UPDATE (``WHERE status
= 'pending'``), so of two people answering at once exactly one wins and the other is told. The
waiting agent is woken by PostgreSQL's LISTEN/NOTIFY, by an in-process signal when the answer
comes from its own process, and otherwise finds the answer on a short poll (SQLite).

A request survives its process: when the same call (session, agent, tool, arguments) is
decided again, after a crash or a resumed run, the earlier request is reused, and an answer
given meanwhile is honoured exactly once.

While a request is pending its real arguments are kept too, encrypted (:mod:`.sealed`), for
the people who answer it; they are cleared in the same transaction as the answer, the expiry or
the use of the request, and never reach the audit events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..audit.events import Kind, NewEvent
from ..audit.schema import approvals as table
from ..audit.store import AuditStore, ConditionFailed
from ..errors import TetherError
from ..protect import is_protection
from ..redact import mask, preview
from ..values import canonical_json, to_plain
from . import FOR_SESSION, ONCE, ApprovalAnswer, ApprovalRequest, Unanswered
from .sealed import EDITED, PREFIX, Revealed, seal, unseal

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
MAX_COMMENT = 2000
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no look-alikes (l/1, o/0)
_answered = threading.Condition()  # wakes waiters in this process when this process answers


class ApprovalError(TetherError):
    """An answer that cannot be accepted: unknown or expired request, already answered, not allowed."""


@dataclass(frozen=True)
class Entry:
    """A request as stored, with its answer if it has one."""

    id: str
    decision_id: str
    session_id: str
    agent: str
    user: str | None
    tenant: str | None
    tool: str
    call_key: str
    request: dict[str, Any]  # redacted: args, reason, rule_ids, labels, provenance
    approvers: list[str] | None
    for_session: bool
    status: str
    created_us: int
    expires_us: int
    answered_us: int | None
    answered_by: str | None
    comment: str | None
    scope: str | None
    edited_args: dict[str, Any] | None
    consumed_us: int | None
    sealed_args: str | None = field(default=None, repr=False)  # encrypted real arguments, while pending
    unreadable_edits: bool = field(default=False, repr=False)  # edited arguments stored that do not decrypt

    @property
    def expired(self) -> bool:
        return self.status == EXPIRED or (self.status == PENDING and self.expires_us <= now_us())

    @property
    def answer(self) -> ApprovalAnswer | None:
        if self.status not in (APPROVED, DENIED):
            return None
        if self.status == APPROVED and self.unreadable_edits:
            raise Unanswered(  # running the call as first asked would not be what was approved
                f"the edited arguments of request {self.id} cannot be decrypted (another key, or the stored "
                "value was changed); the call is denied"
            )
        return ApprovalAnswer(
            self.status == APPROVED, self.answered_by or "", self.comment or "", self.edited_args, self.scope or ONCE
        )


def now_us() -> int:
    return time.time_ns() // 1000


def _execute(engine: sa.Engine, cursor: Any, statement: sa.ClauseElement) -> int:
    """Run a SQLAlchemy statement on a raw DB-API cursor (the store's write transaction)."""
    compiled: Any = statement.compile(dialect=engine.dialect)
    params = compiled.params
    if engine.dialect.positional:
        cursor.execute(str(compiled), [params[name] for name in compiled.positiontup or ()])
    else:
        cursor.execute(str(compiled), params)
    return int(cursor.rowcount)


def _entry(row: Any, key: bytes) -> Entry:
    values = dict(row._mapping)
    values["user"], values["request"] = values.pop("user_id"), json.loads(values["request"])
    values["approvers"] = json.loads(values["approvers"]) if values["approvers"] is not None else None
    edited = values["edited_args"]
    if edited is not None and edited.startswith(PREFIX):  # sealed; a store from before kept JSON
        opened = unseal(key, values["id"], edited, EDITED)
        edited, values["unreadable_edits"] = opened.args, not opened.shown
    elif edited is not None:
        edited = json.loads(edited)
    values["edited_args"] = edited
    return Entry(**values)


def _covers(standing: Entry, request: ApprovalRequest) -> bool:
    """Whether a session-wide approval stands for ``request``: a call the policy asked about for
    the same reasons (the same rules), in which Tether's protections found nothing new. A call
    a protection asks about is never covered: the person has not seen that finding."""
    if any(is_protection(rule) for rule in request.rule_ids):
        return False
    same_rules = sorted(standing.request.get("rule_ids", [])) == sorted(request.rule_ids)
    return same_rules and set(request.findings) <= set(standing.request.get("findings") or [])


class ApprovalQueue:
    """Pending approvals in an audit store, and the answers to them."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self._postgres = store.engine.dialect.name == "postgresql"

    # -- asking ------------------------------------------------------------------------------

    def submit(self, request: ApprovalRequest) -> tuple[Entry, bool]:
        """The entry for ``request`` and whether it is new. An earlier entry for the same call
        (pending, or answered and not yet applied) or a standing approval for the session is
        returned instead of a new one. The request's real arguments, if it carries them, are
        kept encrypted until the entry is answered or expires."""
        with self.store.engine.begin() as connection:
            now = now_us()
            self._forget_expired(connection, now)
            earlier = self._earlier(connection, request)
            if earlier is not None:
                return earlier, False
            entry_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
            sealed = seal(self.store.key, entry_id, request.args) if request.args is not None else None
            details = {
                "args": request.args_preview,
                "reason": request.reason,
                "rule_ids": list(request.rule_ids),
                "labels": list(request.labels),
                "provenance": [dict(p) for p in request.provenance],
                "findings": list(request.findings),
            }
            connection.execute(
                table.insert().values(
                    id=entry_id,
                    decision_id=request.decision_id or "",
                    session_id=request.session_id,
                    agent=request.agent,
                    user_id=request.user,
                    tenant=request.tenant,
                    tool=request.tool,
                    call_key=request.call_key,
                    request=canonical_json(details),
                    approvers=json.dumps(sorted(request.approvers)) if request.approvers is not None else None,
                    for_session=request.for_session,
                    status=PENDING,
                    created_us=now,
                    expires_us=now + int(request.timeout * 1_000_000),
                    sealed_args=sealed,
                )
            )
        entry = self.get(entry_id)
        assert entry is not None
        return entry, True

    @staticmethod
    def _forget_expired(connection: sa.Connection, now: int) -> None:
        """Clear the real arguments of requests whose time passed with no one to mark them
        expired (their agent stopped waiting)."""
        connection.execute(
            table.update()
            .where(table.c.status == PENDING, table.c.expires_us <= now, table.c.sealed_args.is_not(None))
            .values(sealed_args=None)
        )

    def _earlier(self, connection: sa.Connection, request: ApprovalRequest) -> Entry | None:
        standing = connection.execute(
            sa.select(table).where(
                table.c.session_id == request.session_id,
                table.c.agent == request.agent,
                table.c.tool == request.tool,
                table.c.status == APPROVED,
                table.c.scope == FOR_SESSION,
            )
        )
        covering = next((e for e in (_entry(row, self.store.key) for row in standing) if _covers(e, request)), None)
        if covering is not None:
            return covering
        same_call = connection.execute(
            sa.select(table)
            .where(
                table.c.session_id == request.session_id,
                table.c.call_key == request.call_key,
                table.c.consumed_us.is_(None),
                table.c.status.in_([PENDING, APPROVED, DENIED]),
            )
            .order_by(table.c.created_us.desc())
            .limit(1)
        ).first()
        if same_call is None:
            return None
        entry = _entry(same_call, self.store.key)
        return None if entry.expired else entry

    # -- reading -----------------------------------------------------------------------------

    def get(self, entry_id: str) -> Entry | None:
        with self.store.engine.connect() as connection:
            row = connection.execute(sa.select(table).where(table.c.id == entry_id)).first()
        return _entry(row, self.store.key) if row is not None else None

    def entries(self, *, status: str | None = PENDING, limit: int = 200) -> list[Entry]:
        """Newest first; pending ones whose time has passed are reported as expired."""
        query = sa.select(table).order_by(table.c.created_us.desc()).limit(limit)
        if status == PENDING:
            query = query.where(table.c.status == PENDING, table.c.expires_us > now_us())
        elif status is not None:
            query = query.where(table.c.status == status)
        with self.store.engine.connect() as connection:
            return [_entry(row, self.store.key) for row in connection.execute(query)]

    def reveal(self, entry: Entry) -> Revealed:
        """The real arguments of a pending request, to show the people who answer it; or a note
        saying why they cannot be shown (the preview stands). Never raises for a bad value."""
        if entry.status != PENDING or entry.expired:
            return Revealed(note="real values are kept only while the request is pending")
        if entry.sealed_args is None:
            return Revealed(note="the real values were not kept for this request; only the masked form is shown")
        return unseal(self.store.key, entry.id, entry.sealed_args)

    # -- answering ---------------------------------------------------------------------------

    def answer(
        self,
        entry_id: str,
        *,
        approved: bool,
        by: str,
        comment: str = "",
        args: Mapping[str, Any] | None = None,
        scope: str = ONCE,
    ) -> Entry:
        """Answer a pending request; raise :class:`ApprovalError` saying why not, if not."""
        entry = self.get(entry_id)
        if entry is None:
            raise ApprovalError(f"no approval request {entry_id!r}")
        self._check(entry, approved=approved, by=by, comment=comment, args=args, scope=scope)
        now = now_us()
        values: dict[str, Any] = {
            "status": APPROVED if approved else DENIED,
            "answered_us": now,
            "answered_by": by,
            "comment": mask(comment, self.store.key) if comment else None,  # stored redacted
            "scope": scope if approved else None,
            # sealed like the real arguments (they hold real values too), until the agent applies them
            "edited_args": seal(self.store.key, entry_id, to_plain(args, "args"), EDITED) if args is not None else None,
            "sealed_args": None,  # the real arguments go with the answer, in its transaction
        }
        answered = dataclasses.replace(entry, **{**values, "edited_args": to_plain(args) if args is not None else None})
        update = (
            table.update()
            .where(table.c.id == entry_id, table.c.status == PENDING, table.c.expires_us > now)
            .values(**values)
        )
        notify = sa.select(sa.func.pg_notify(self.store.namespace.channel, entry_id)) if self._postgres else None

        def record_answer(cursor: Any) -> bool:
            """The status change and its audit event commit together (a waiter woken by one
            finds the other); the notification is delivered at that commit."""
            if _execute(self.store.engine, cursor, update) != 1:
                return False
            if notify is not None:
                _execute(self.store.engine, cursor, notify)
            return True

        try:
            self.store.append([self._answer_event(answered)], condition=record_answer)
        except ConditionFailed:
            raise ApprovalError(self._why_not_pending(entry_id)) from None
        with _answered:
            _answered.notify_all()
        stored = self.get(entry_id)
        assert stored is not None
        return stored

    def _check(
        self, entry: Entry, *, approved: bool, by: str, comment: str, args: Mapping[str, Any] | None, scope: str
    ) -> None:
        if entry.status != PENDING:
            raise ApprovalError(self._why_not_pending(entry.id))
        if entry.expired:
            raise ApprovalError(f"approval request {entry.id} expired; the call was denied")
        if not by.strip():
            raise ApprovalError("an answer needs the name of the person giving it")
        if entry.approvers is not None and by not in entry.approvers:
            allowed = ", ".join(entry.approvers) or "no one (the policy's approver groups do not overlap)"
            raise ApprovalError(f"{by} may not answer request {entry.id}; it may be answered by: {allowed}")
        if len(comment) > MAX_COMMENT:
            raise ApprovalError(f"a comment may have at most {MAX_COMMENT} characters, this one has {len(comment)}")
        if scope not in (ONCE, FOR_SESSION):
            raise ApprovalError(f"scope must be {ONCE!r} or {FOR_SESSION!r}")
        if scope == FOR_SESSION and (not approved or not entry.for_session):
            raise ApprovalError(f"request {entry.id} may only be approved once, not for the whole session")
        if args is not None and (not approved or not isinstance(args, Mapping)):
            raise ApprovalError("edited arguments must be a mapping, and only come with an approval")

    def _why_not_pending(self, entry_id: str) -> str:
        entry = self.get(entry_id)
        if entry is None:
            return f"no approval request {entry_id!r}"
        if entry.expired:
            return f"approval request {entry_id} expired; the call was denied"
        return f"approval request {entry_id} was already {entry.status} by {entry.answered_by}"

    def _answer_event(self, entry: Entry) -> NewEvent:
        """Who answered, for the session's chain, under the decision that asked."""
        key = self.store.key
        details: dict[str, Any] = {
            "approval_id": entry.id,
            "approved": entry.status == APPROVED,
            "approver": entry.answered_by,
            "comment": entry.comment,
            "scope": entry.scope,
            "edited_args": preview(to_plain(entry.edited_args), key).value if entry.edited_args else None,
        }
        return NewEvent(
            secrets.token_hex(16),
            entry.answered_us or now_us(),
            entry.session_id,
            Kind.APPROVAL_ANSWER,
            entry.agent,
            entry.user,
            entry.tenant,
            entry.tool,
            entry.decision_id,
            "allow" if entry.status == APPROVED else "deny",
            canonical_json(details),
        )

    def expire(self, entry_id: str) -> bool:
        """Mark a pending request expired; False if it was answered first."""
        with self.store.engine.begin() as connection:
            done = connection.execute(
                table.update()
                .where(table.c.id == entry_id, table.c.status == PENDING)
                .values(status=EXPIRED, sealed_args=None)
            )
        return bool(done.rowcount == 1)

    def consume(self, entry_id: str) -> bool:
        """Apply an answer once: True for the one caller that does it. Edited arguments, which
        are stored (sealed) until then, are cleared. Standing (session) approvals stay."""
        with self.store.engine.begin() as connection:
            done = connection.execute(
                table.update()
                .where(
                    table.c.id == entry_id,
                    table.c.consumed_us.is_(None),
                    sa.or_(table.c.scope.is_(None), table.c.scope != FOR_SESSION),
                )
                .values(consumed_us=now_us(), edited_args=None, sealed_args=None)
            )
        return bool(done.rowcount == 1)

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, entry_id: str, until_us: int, poll: float = 0.25) -> Entry | None:
        """Block until the request is answered or ``until_us`` passes; the entry, or None."""
        with self._notifications() as notified:
            while True:
                entry = self.get(entry_id)
                if entry is None or entry.status != PENDING:
                    return entry
                left = (until_us - now_us()) / 1e6
                if left <= 0:
                    return None
                notified(min(left, poll if not self._postgres else 1.0))

    @contextlib.contextmanager
    def _notifications(self) -> Iterator[Callable[[float], None]]:
        """A function that sleeps until a notification may have arrived, or for at most ``t``."""
        if not self._postgres:

            def sleep(t: float) -> None:
                with _answered:
                    _answered.wait(t)

            yield sleep
            return
        raw = self.store.engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            driver.autocommit = True
            with self.store.watchdog.bounded(raw):
                driver.execute(f"LISTEN {self.store.namespace.channel}")

            def listen(t: float) -> None:
                for _ in driver.notifies(timeout=t, stop_after=1):
                    pass

            yield listen
        finally:
            raw.invalidate()  # autocommit and LISTEN must not leak into the pool: discard it


Notifier = Callable[[Entry], None]


class QueueApprover:
    """An :class:`~tether.core.approvals.Approver` that puts each request in the store's queue and
    waits for someone to answer it: from the CLI (``tether approvals``), the web page
    (``tether serve``), code (:meth:`ApprovalQueue.answer`) or, with ``prompt``, this terminal.

    ``notify`` callbacks receive each new request (to page someone, post to chat...); one that
    raises is logged and does not stop the others or the wait.
    """

    def __init__(
        self, store: AuditStore, *, notify: Sequence[Notifier] = (), prompt: bool = False, poll: float = 0.25
    ) -> None:
        self.queue = ApprovalQueue(store)
        self.notify = list(notify)
        self.prompt = prompt
        self.poll = poll

    def request_approval(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        entry, new = self.queue.submit(request)
        if new:
            self._announce(entry)
        answered = entry if entry.status != PENDING else self._wait(entry)
        if answered is None or answered.answer is None:
            return None
        if answered.scope != FOR_SESSION and not self.queue.consume(answered.id):
            raise Unanswered(  # another agent or process applied this answer: it must not run twice
                f"the answer to request {answered.id} was already used by an identical call; "
                "an approval runs one call once"
            )
        return answered.answer

    def _wait(self, entry: Entry) -> Entry | None:
        stop = threading.Event()
        if self.prompt:
            from .terminal import ask_in_background

            ask_in_background(self.queue, entry, stop)
        try:
            answered = self.queue.wait(entry.id, entry.expires_us, self.poll)
        finally:
            stop.set()
        if answered is None and not self.queue.expire(entry.id):
            answered = self.queue.get(entry.id)  # answered in the last instant: honour it
        return answered

    def _announce(self, entry: Entry) -> None:
        import logging

        for notify in self.notify:
            try:
                notify(entry)
            except Exception:
                logging.getLogger("tether").exception("approval notifier %r failed", notify)
