"""Agent credentials: a secret bound to one policy agent, so a request that names an agent
proves it is that agent.

A credential is issued once (its secret is shown to the operator and never stored: the store
keeps its SHA-256, which is enough for a random 256-bit secret), may be limited to some tenants
and an expiry, and can be revoked. ``authenticate`` says exactly why a secret is refused, so the
caller can deny the request and audit the identity finding.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from .audit.events import Kind, NewEvent
from .audit.schema import credentials as table
from .audit.store import AuditStore
from .errors import StoreError, TetherError
from .values import canonical_json

PREFIX = "tth"
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
_ID_LENGTH = 12
REFUSALS = "tether:identity"  # the audit session that records refused credentials


class IdentityError(TetherError):
    """A credential that does not prove the identity claimed. ``finding`` names the reason:
    missing, malformed, unknown, revoked, expired, wrong_agent or wrong_tenant."""

    def __init__(self, finding: str, message: str, credential_id: str | None = None) -> None:
        super().__init__(message)
        self.finding = finding
        self.credential_id = credential_id


@dataclass(frozen=True)
class Credential:
    id: str
    agent: str
    tenants: tuple[str, ...] | None  # None: any tenant
    created_us: int
    expires_us: int | None
    revoked_us: int | None

    def check(self, agent: str | None = None, tenant: str | None = None) -> None:
        """Raise :class:`IdentityError` unless this credential may act as ``agent`` (when given)
        in ``tenant``."""
        if agent is not None and agent != self.agent:
            why = f"credential {self.id} identifies {self.agent!r}, not {agent!r}"
            raise IdentityError("wrong_agent", why, self.id)
        if self.tenants is not None and (tenant or "") not in self.tenants:
            why = f"credential {self.id} is not valid for tenant {tenant or '(none)'!r}"
            raise IdentityError("wrong_tenant", why, self.id)

    def state(self, now_us: int) -> str:
        if self.revoked_us is not None:
            return "revoked"
        if self.expires_us is not None and self.expires_us <= now_us:
            return "expired"
        return "active"


def _now_us() -> int:
    return time.time_ns() // 1000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _credential(row: sa.Row[tuple[object, ...]]) -> Credential:
    values = row._mapping
    tenants = values["tenants"]
    return Credential(
        values["id"],
        values["agent"],
        tuple(tenants.split("\n")) if tenants else None,
        values["created_us"],
        values["expires_us"],
        values["revoked_us"],
    )


class Credentials:
    """The credentials kept in an audit store."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def create(
        self, agent: str, *, tenants: Sequence[str] | None = None, expires_in: float | None = None
    ) -> tuple[Credential, str]:
        """Issue a credential for ``agent``; returns it and its secret (shown once, never stored)."""
        if not agent.strip():
            raise TetherError("a credential needs the name of the agent it identifies")
        if tenants is not None and any(not t or "\n" in t for t in tenants):
            raise TetherError("tenant names must be non-empty single lines")
        if expires_in is not None and expires_in <= 0:
            raise TetherError("a credential's lifetime must be positive")
        credential_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
        token = secrets.token_urlsafe(32)
        now = _now_us()
        credential = Credential(
            credential_id,
            agent,
            tuple(tenants) if tenants is not None else None,
            now,
            now + int(expires_in * 1_000_000) if expires_in is not None else None,
            None,
        )
        row = {
            "id": credential.id,
            "agent": agent,
            "secret_sha256": _digest(token),
            "tenants": "\n".join(credential.tenants) if credential.tenants is not None else None,
            "created_us": now,
            "expires_us": credential.expires_us,
            "revoked_us": None,
        }
        with self._database() as connection:
            connection.execute(table.insert().values(**row))
        return credential, f"{PREFIX}_{credential_id}_{token}"

    def list(self, agent: str | None = None) -> list[Credential]:
        query = sa.select(table).order_by(table.c.agent, table.c.created_us)
        if agent is not None:
            query = query.where(table.c.agent == agent)
        with self._database() as connection:
            return [_credential(row) for row in connection.execute(query)]

    def revoke(self, credential_id: str) -> Credential:
        with self._database() as connection:
            connection.execute(
                table.update()
                .where(table.c.id == credential_id, table.c.revoked_us.is_(None))
                .values(revoked_us=_now_us())
            )
            row = connection.execute(sa.select(table).where(table.c.id == credential_id)).first()
        if row is None:
            raise TetherError(f"no credential {credential_id!r}")
        return _credential(row)

    def authenticate(self, secret: str | None, *, agent: str | None = None, tenant: str | None = None) -> Credential:
        """The credential ``secret`` belongs to, if it is active and (when given) issued for
        ``agent`` and ``tenant``; else raise :class:`IdentityError` saying why."""
        if not secret:
            raise IdentityError("missing", "no credential was presented")
        parts = secret.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != _ID_LENGTH or not parts[2]:
            raise IdentityError("malformed", "the credential is not a Tether agent credential")
        credential_id, token = parts[1], parts[2]
        with self._database() as connection:
            row = connection.execute(sa.select(table).where(table.c.id == credential_id)).first()
        # the same answer whether the id is unknown or the secret is wrong: no oracle for ids
        if row is None or not hmac.compare_digest(row._mapping["secret_sha256"], _digest(token)):
            raise IdentityError("unknown", "the credential is not known (wrong or forged secret)")
        credential = _credential(row)
        state = credential.state(_now_us())
        if state != "active":
            raise IdentityError(state, f"credential {credential.id} of {credential.agent!r} is {state}", credential.id)
        credential.check(agent, tenant)
        return credential

    @contextlib.contextmanager
    def _database(self) -> Iterator[sa.Connection]:
        """A transaction on the store, its failures reported as :class:`StoreError`."""
        try:
            with self.store.engine.begin() as connection:
                yield connection
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"credentials in {self.store.location} are unavailable: {exc}") from exc


def record_refusal(
    store: AuditStore, error: IdentityError, *, via: str, agent: str | None = None, **details: str | None
) -> None:
    """Record in the audit that a request was refused for ``error`` (an identity finding):
    ``via`` names the door it came through (``api``, ``mcp``), ``agent`` the agent it claimed or
    its credential named. Refusals are chained in their own session, :data:`REFUSALS`. A store
    that cannot record it raises :class:`StoreError`; the request stays refused either way."""
    agent = agent[:200] if agent else None  # a claimed name is the caller's: keep it bounded
    record = {"finding": error.finding, "reason": str(error), "credential_id": error.credential_id, "via": via}
    event = NewEvent(
        secrets.token_hex(16),
        _now_us(),
        REFUSALS,
        Kind.IDENTITY,
        agent,
        None,
        None,
        None,
        None,
        "deny",
        canonical_json({**record, **details}),
    )
    store.append([event])
