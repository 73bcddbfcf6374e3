"""Stores sharing one PostgreSQL database, each in its own schema, stay apart: their events,
their log chains, the lock that serialises their writers and the channel of their approvals."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tether.core import AuditStore, Guard
from tether.core.audit import verify
from tether.core.errors import StoreError

from .conftest import BASE_POLICY, KEY, PG_ENV

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://127.0.0.1:5432/test)")
    return url


@pytest.fixture
def schemas(database_url: str) -> Iterator[list[str]]:
    """Two fresh schema names, dropped after the test (the stores make them)."""
    names = [f"s_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    yield names
    admin = sa.create_engine(database_url)
    with admin.begin() as connection:
        for name in names:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def test_two_stores_in_one_database_keep_apart(database_url: str, schemas: list[str]) -> None:
    first = AuditStore(with_schema(database_url, schemas[0]), key=KEY)
    second = AuditStore(database_url, key=KEY, schema=schemas[1])  # the same, as an option
    for n, store in enumerate((first, second)):
        guard = Guard(BASE_POLICY, store=store)
        session = guard.session("bot", f"only-in-{n}")
        session.after_tool(session.before_tool("search", {"q": n}), "found")

    assert {e.session_id for e in first.events()} == {"only-in-0"}
    assert {e.session_id for e in second.events()} == {"only-in-1"}
    for store in (first, second):
        assert verify(store.key, store.events()).ok  # each log is its own chain
    assert first.namespace.schema == schemas[0] and second.namespace.schema == schemas[1]
    assert first.namespace.lock != second.namespace.lock
    assert first.namespace.channel != second.namespace.channel

    with first.engine.connect() as connection:
        where = connection.execute(
            sa.text("SELECT table_schema FROM information_schema.tables WHERE table_name = 'tether_audit_events'")
        ).scalars()
        assert set(schemas) <= set(where)  # the tables live in the named schemas, not in public
    first.close()
    second.close()

    reopened = AuditStore(with_schema(database_url, schemas[0]), key=KEY, create=False)
    assert [e.session_id for e in reopened.events()][-1] == "only-in-0"
    reopened.close()


@pytest.mark.parametrize("name", ["Has-Dash", "1starts_with_digit", 'x"; DROP TABLE y; --', "a" * 64])
def test_a_schema_must_be_a_plain_name(database_url: str, name: str) -> None:
    with pytest.raises(StoreError, match="schema must be a lowercase PostgreSQL name"):
        AuditStore(database_url, key=KEY, schema=name)
