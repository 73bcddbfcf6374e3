"""The example runs as documented, without a terminal: the external post is refused, the refund
times out, and the audit verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "crewai_research_crew.py"


def test_example_runs_without_a_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "TETHER_STORE": f"sqlite:///{tmp_path / 'tether.db'}", "CREWAI_STORAGE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tool.decision   writer      post_update  deny" in out
    assert "the writer only posts to internal channels" in out
    assert "no approval within 3s" in out
    assert "refunded" not in out
    assert "Audit chain verified: ok" in out
