"""The example runs as users run it: no API key, no terminal (so the approval times out to deny)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langgraph_support_agent.py"


def test_support_agent_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "TETHER_STORE": f"sqlite:///{tmp_path / 'audit.db'}", "TETHER_APPROVAL_TIMEOUT": "1s"}
    env.pop("TETHER_EXAMPLE_MODEL", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Tether denied the call to 'send_email'" in out
    assert "tether approvals approve" in out
    assert "Tether denied the call to 'issue_refund': no approval within 1s" in out
    assert "ASK   issue_refund" in out and "DENY  send_email" in out
    assert "hash chains intact" in out
