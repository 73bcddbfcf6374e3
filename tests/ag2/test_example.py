"""The AG2 example runs as users run it: a separate process, no API key, no terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tether.core import AuditStore
from tether.core.approvals.queue import ApprovalQueue

from ..support import read_line

EXAMPLE = Path(__file__).parents[2] / "examples" / "ag2_support_agent.py"


def start(tmp_path: Path, timeout: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["APPROVAL_TIMEOUT"] = timeout
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_example_stops_the_exfiltration_and_denies_the_unanswered_refund(tmp_path: Path) -> None:
    process = start(tmp_path, "1s")
    out, _ = process.communicate(timeout=300)

    assert process.returncode == 0, out
    assert "send_email -> Tether denied the call to 'send_email'" in out
    assert "issue_refund -> Tether denied the call to 'issue_refund': no approval within 1s" in out
    assert "DENY  send_email" in out  # the audit trail is printed
    assert "hash chains intact" in out


def test_example_refund_approved_from_another_process(tmp_path: Path) -> None:
    process = start(tmp_path, "5m")
    try:
        assert process.stdout is not None
        first = read_line(process.stdout, 240)  # printed once the example's store is ready
        assert "audit store" in first
        store = AuditStore(f"sqlite:///{tmp_path / '.tether' / 'tether.db'}")
        deadline = time.monotonic() + 240
        queue = ApprovalQueue(store)
        while not queue.entries() and time.monotonic() < deadline:
            time.sleep(0.1)
        [entry] = queue.entries()
        queue.answer(entry.id, approved=True, by="finance-lead")
        out, _ = process.communicate(timeout=240)
        store.close()
    finally:
        process.kill()

    assert process.returncode == 0, out
    assert "issue_refund -> refunded $120 on order #1182" in out
    assert "send_email -> Tether denied" in out
