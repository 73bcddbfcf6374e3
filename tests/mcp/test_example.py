"""examples/mcp_gateway.py runs as users run it: no API key, no terminal."""

from __future__ import annotations

from pathlib import Path

from tests.support import run_example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcp_gateway.py"


def test_the_mcp_gateway_example_runs(tmp_path: Path) -> None:
    done, _ = run_example(EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tools the assistant sees: read_file, share_file, write_file" in out
    assert "OK      share_file: shared plan.txt with bob@acme.example" in out
    assert "REFUSED share_file: Tether denied the call to 'files/share_file': files are shared inside Acme" in out
    assert "REFUSED summarise" in out and "tether.mcp.tool-suspicious" in out
    assert "OK      write_file" in out
    assert "denied by alice (rule: tether.instructions)" in out
