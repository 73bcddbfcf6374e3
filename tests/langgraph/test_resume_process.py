"""A breakpoint answered after the process that hit it has exited: a checkpointer (SQLite, or
PostgreSQL when TETHER_TEST_POSTGRES_URL is set) + Command(resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tether.core import AuditStore

from .conftest import KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def checkpoints(request: pytest.FixtureRequest) -> str:
    """Where checkpoints go: "" for SQLite beside the test, else a PostgreSQL connection string."""
    if request.param == "sqlite":
        return ""
    url = os.environ.get("TETHER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PostgreSQL tests need TETHER_TEST_POSTGRES_URL (e.g. postgresql+psycopg://127.0.0.1:5432/test)")
    pytest.importorskip("langgraph.checkpoint.postgres", reason="needs langgraph-checkpoint-postgres")
    return url.replace("postgresql+psycopg://", "postgresql://")


def step(checkpoints: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TETHER_TEST_CHECKPOINTS": checkpoints}
    done = subprocess.run(
        [sys.executable, "-m", "tests.langgraph.resume_run", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("answer", "runs"), [("approve", 1), ("deny", 0)])
def test_resume_in_a_fresh_process(tmp_path: Path, checkpoints: str, answer: str, runs: int) -> None:
    thread = f"order-A-{uuid.uuid4().hex[:8]}"  # a PostgreSQL database outlives the test
    paused = step(checkpoints, "start", str(tmp_path), thread)
    [request] = paused["interrupts"][0]["requests"]
    assert (request["tool"], request["args"], request["tool_call_id"]) == (
        "refund",
        {"order": "A", "amount": 100},
        "r1",
    )
    assert request["reason"] == "agents.support-bot.tools.refund requires approval"
    assert not (tmp_path / "refunds.txt").exists()

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
