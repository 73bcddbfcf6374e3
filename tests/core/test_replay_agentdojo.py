"""Replay on AgentDojo's benign and attack traces: recorded with Tether's protections off,
replayed with them on, the decisions are those of running the traces with them on."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

pytest.importorskip("agentdojo", reason="needs agentdojo==0.1.35 (pip install agentdojo==0.1.35)")

BENCH = Path(__file__).parents[2] / "bench" / "agentdojo"
sys.path.insert(0, str(BENCH))

from replay import AGENT, policy  # noqa: E402  (bench/agentdojo)
from traces import attacks, benign  # noqa: E402

from .test_replay import Script, replayed, run_scripts  # noqa: E402

OFF = {"protections": {"injected_arguments": "allow", "instructions": "allow"}}


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["banking", "workspace"])
def test_agentdojo_traces_replay_as_they_run(suite: str, tmp_path: Path) -> None:
    traces = list(benign(suite)) + list(itertools.islice(attacks(suite, "important_instructions"), 40))
    scripts = [
        Script(
            f"{i:04d}-{t.kind}-{t.user_task}-{t.injection_task}",
            t.prompt,
            [(s.function, s.args, s.output) for s in t.steps],
            AGENT,
        )
        for i, t in enumerate(traces)
    ]
    recorded_url = f"sqlite:///{tmp_path / 'recorded.db'}"
    lenient = run_scripts(policy(suite, OFF), recorded_url, scripts)
    direct = run_scripts(policy(suite, {}), f"sqlite:///{tmp_path / 'direct.db'}", scripts)
    again = replayed(policy(suite, {}), recorded_url)
    assert again == direct  # the scripts' session ids sort in run order
    changed = sum(a != b for a, b in zip(direct, lenient, strict=True))
    assert changed > 10  # the stricter policy does change many sessions: the comparison is not vacuous
