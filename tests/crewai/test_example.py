"""The example runs as documented, without a terminal: the external post is refused, the refund
times out, and the audit verifies."""

from __future__ import annotations

from pathlib import Path

from ..support import run_example

EXAMPLE = Path(__file__).parents[2] / "examples" / "crewai_research_crew.py"


def test_example_runs_without_a_terminal(tmp_path: Path) -> None:
    done, _ = run_example(EXAMPLE, tmp_path, CREWAI_STORAGE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tool.decision   writer      post_update  deny" in out
    assert "the writer only posts to internal channels" in out
    assert "no approval within 3s" in out
    assert "refunded" not in out
    assert "Audit chain verified: ok" in out
