from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from tether.core import AuditStore, Guard

PG_ENV = "TETHER_TEST_POSTGRES_URL"

BASE_POLICY: dict[str, Any] = {
    "version": 1,
    "approvals": {"timeout": "2s"},
    "tools": {
        "search": {"effects": ["read"]},
        "fetch_page": {"effects": ["read"], "output": "untrusted"},
        "send_email": {"effects": ["external"]},
        "refund": {"effects": ["money", "irreversible"]},
        "delete_file": {"effects": ["delete"]},
    },
    "agents": {
        "bot": {
            "purpose": "answer questions",
            "owner": "team@acme.example",
            "tools": {
                "search": "allow",
                "fetch_page": "allow",
                "send_email": {"when": 'args.to.endsWith("@acme.example")'},
                "refund": {"when": "args.amount <= 500", "ask": "args.amount > 50"},
            },
        }
    },
    "rules": [
        {
            "id": "external-after-untrusted",
            "effects": ["external"],
            "when": "session.tainted",
            "action": "ask",
            "reason": "external action after untrusted content",
        }
    ],
}


def policy_with(**changes: Any) -> dict[str, Any]:
    """BASE_POLICY with top-level keys replaced (a deep copy, safe to mutate)."""
    policy = yaml.safe_load(yaml.safe_dump(BASE_POLICY))
    policy.update(changes)
    return policy


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema per test, so tests never see each other's events."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://127.0.0.1:5432/test)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in url else "?"
    yield f"{url}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


KEY = b"k" * 32


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    audit_store = AuditStore(store_url, key=KEY)
    yield audit_store
    audit_store.close()


@pytest.fixture
def guard(store: AuditStore) -> Guard:
    return Guard(BASE_POLICY, store=store)
