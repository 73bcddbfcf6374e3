"""A breakpoint answered after the process that hit it has exited: a checkpointer (SQLite, or
PostgreSQL when TETHER_TEST_POSTGRES_URL is set) + Command(resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.core import AuditStore

from .conftest import KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def checkpoints(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where checkpoints go: "" for SQLite beside the test, else a PostgreSQL connection string
    whose tables live in a schema of this test's own, dropped afterwards."""
    if request.param == "sqlite":
        yield ""
        return
    url = os.environ.get("TETHER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PostgreSQL tests need TETHER_TEST_POSTGRES_URL (e.g. postgresql+psycopg://127.0.0.1:5432/test)")
    pytest.importorskip("langgraph.checkpoint.postgres", reason="needs langgraph-checkpoint-postgres")
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    schema = f"tether_lg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain, autocommit=True, connect_timeout=10) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{plain}{'&' if '?' in plain else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(plain, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def step(checkpoints: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TETHER_TEST_CHECKPOINTS": checkpoints}
    done = subprocess.run(
        [sys.executable, "-m", "tests.langgraph.resume_run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("answer", "runs"), [("approve", 1), ("deny", 0)])
def test_resume_in_a_fresh_process(tmp_path: Path, checkpoints: str, answer: str, runs: int) -> None:
    thread = "order-A"
    paused = step(checkpoints, "start", str(tmp_path), thread)
    [request] = paused["interrupts"][0]["requests"]
    assert (request["tool"], request["args"], request["tool_call_id"]) == (
        "refund",
        {"order": "A", "amount": 100},
        "r1",
    )
    assert request["reason"] == "agents.support-bot.tools.refund requires approval"
    assert not (tmp_path / "refunds.txt").exists()
    if runs:  # another process reads what waits, from the checkpoint alone
        assert step(checkpoints, "pending", str(tmp_path), thread)["pending"] == paused["interrupts"]

    resumed = step(checkpoints, "resume", str(tmp_path), thread, answer)
    assert resumed["interrupts"] == []
    ledger = tmp_path / "refunds.txt"
    assert (ledger.read_text().splitlines() if ledger.exists() else []) == ["A:100"] * runs

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    events = [e for e in store.session_events(thread) if e.kind in ("tool.decision", "approval", "tool.result")]
    store.close()
    chain = [(e.kind, e.verdict) for e in events]
    expected = [("tool.decision", "ask"), ("approval", "allow" if runs else "deny")]
    assert chain == expected + ([("tool.result", None)] if runs else [])
    assert events[1].parent_id == events[0].event_id  # the approval settles the decision that asked
    if runs:
        assert events[2].parent_id == events[1].event_id
