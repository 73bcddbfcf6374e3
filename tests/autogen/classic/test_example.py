"""The example runs as documented, without a terminal: the exfiltration is denied, the refund times
out, and `tether audit` shows and verifies what happened."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tether.core.cli import main

from ...support import run_example

EXAMPLE = Path(__file__).parents[3] / "examples" / "autogen_classic.py"


def test_example_runs_without_a_terminal(tmp_path: Path) -> None:
    done, store_url = run_example(EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Tether denied the call to 'send_email'" in out
    assert "sent to audit@evil.example" not in out
    assert "Tether denied the call to 'refund': no approval within 3s" in out
    assert "refunded" not in out
    assert "Audit chain verified: ok" in out
    session = out.rsplit("tether audit show ", 1)[1].split()[0]
    store = {"TETHER_STORE": store_url}
    shown = CliRunner().invoke(main, ["audit", "show", session], env=store)
    assert shown.exit_code == 0, shown.output
    assert "send_email" in shown.output and "refund" in shown.output
    verified = CliRunner().invoke(main, ["audit", "verify"], env=store)
    assert verified.exit_code == 0, verified.output
