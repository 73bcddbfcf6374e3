"""The audit store's tables. Changes go through a migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

#: The newest migration; a store at this revision needs no upgrade.
SCHEMA_REVISION = "0011"
VERSION_TABLE = "tether_alembic_version"

metadata = MetaData()

events = Table(
    "tether_audit_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("session_id", String(255), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("agent", String(255)),
    Column("user_id", String(255)),
    Column("tenant", String(255)),
    Column("tool", String(255)),
    Column("parent_id", String(32)),
    Column("verdict", String(16)),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("log_prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # The only index: every index costs each durable write a B-tree update, and reads go by
    # session (show, replay) or by row order (tail, verify, export).
    UniqueConstraint("session_id", "seq", name="uq_tether_audit_session_seq"),
)

meta = Table(
    "tether_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

approvals = Table(
    "tether_approvals",
    metadata,
    Column("id", String(16), primary_key=True),  # short, for people to type
    Column("decision_id", String(32), nullable=False),  # the audit event of the decision that asked
    Column("session_id", String(255), nullable=False),
    Column("agent", String(255), nullable=False),
    Column("user_id", String(255)),
    Column("tenant", String(255)),
    Column("tool", String(255), nullable=False),
    Column("call_key", String(32), nullable=False),  # keyed fingerprint of session, agent, tool, arguments
    Column("request", Text, nullable=False),  # JSON, redacted: arguments, reason, rules, labels, provenance
    Column("approvers", Text),  # JSON list of who may answer; NULL: anyone
    Column("for_session", Boolean, nullable=False),  # may be approved for the rest of the session
    Column("status", String(16), nullable=False),  # pending, approved, denied, expired
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("answered_us", BigInteger),
    Column("answered_by", String(255)),
    Column("comment", Text),
    Column("scope", String(16)),  # once or session, for an approval
    Column("edited_args", Text),  # JSON arguments to run with instead; cleared once applied
    Column("consumed_us", BigInteger),  # when an agent applied the answer
    # The real arguments, encrypted (approvals/sealed.py), for the people who answer; cleared
    # (NULL) in the transaction that answers, expires or applies the request. Never in the events.
    Column("sealed_args", Text),
    Index("ix_tether_approvals_status", "status"),
    Index("ix_tether_approvals_call", "session_id", "call_key"),
)

sensitive_values = Table(
    "tether_sensitive_values",
    metadata,
    Column("fingerprint", String(32), primary_key=True),  # keyed: the value itself is never stored
    Column("session_id", String(255), primary_key=True),
    Column("tenant", String(255), nullable=False),  # "" for none
    Column("kind", String(64), nullable=False),
    Column("first_seen_us", BigInteger, nullable=False),
)

credentials = Table(
    "tether_credentials",
    metadata,
    Column("id", String(16), primary_key=True),  # public: part of the secret, shown in lists
    Column("agent", String(255), nullable=False),
    Column("secret_sha256", String(64), nullable=False),  # the secret itself is never stored
    Column("tenants", Text),  # newline-separated; NULL: any tenant
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger),
    Column("revoked_us", BigInteger),
    Index("ix_tether_credentials_agent", "agent"),
)

baselines = Table(
    "tether_baselines",
    metadata,
    Column("agent", String(255), primary_key=True),
    Column("tenant", String(255), primary_key=True),  # "" for all of the agent's sessions
    Column("learned_us", BigInteger, nullable=False),
    Column("sessions", Integer, nullable=False),
    Column("data", Text, nullable=False),  # JSON: counts, tools, fingerprints of destinations
)

checkpoints = Table(
    "tether_checkpoints",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts_us", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),  # the head's row id in the log it checkpoints
    Column("body", Text, nullable=False),  # the signed checkpoint, as JSON
)

mcp_pins = Table(
    "tether_mcp_pins",
    metadata,
    Column("server", String(255), primary_key=True),
    Column("tool", String(255), primary_key=True),
    Column("digest", String(64), nullable=False),  # SHA-256 of the definition as approved (or first seen)
    Column("status", String(16), nullable=False),  # approved, suspicious, changed
    Column("seen_digest", String(64), nullable=False),  # the definition last listed
    Column("definition", Text, nullable=False),  # JSON, redacted: the definition last listed
    Column("findings", Text, nullable=False),  # JSON list: what the scan found in it
    Column("first_seen_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("approved_by", String(255)),
    Column("approved_us", BigInteger),
)
