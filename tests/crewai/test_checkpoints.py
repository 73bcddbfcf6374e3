"""A crew CrewAI restores from a checkpoint file (``Crew.from_checkpoint``, ``Crew.fork``,
``kickoff(from_checkpoint=...)``) is a new object built from the file: restored from a guarded
crew's checkpoint, it stays governed, or (where that guard is not) its run is refused. Each test
writes a real checkpoint: a two-task crew checkpointed after its first task, restored to run
the second, which proposes the call the scenario's policy always denies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.agents.agent_builder import base_agent
from crewai.tools import BaseTool

from tests.conformance.scenario import AGENT, Call, make_guard
from tether.core import AuditStore, TetherError
from tether.crewai import enable_step_guard

from .conftest import ScriptedLLM, decisions

checkpoints = pytest.importorskip("crewai.state.checkpoint_config", reason="this CrewAI has no checkpoints")
CheckpointConfig = checkpoints.CheckpointConfig
if not hasattr(Crew, "from_checkpoint"):
    pytest.skip("this CrewAI version cannot restore a crew from a checkpoint", allow_module_level=True)

DELETE = Call("c1", "delete_account", {"user_id": "u1"})
RAN: list[str] = []  # what DeleteAccount ran (a restored tool is a new object of its class)
ROOT = Path(__file__).resolve().parents[2]


class DeleteAccount(BaseTool):
    """A class-based tool: CrewAI checkpoints a tool by its class, and rebuilds it on restore."""

    name: str = "delete_account"
    description: str = "Delete a customer's account."

    def _run(self, user_id: str) -> str:
        RAN.append(user_id)
        return f"deleted {user_id}"


def second_task_deletes(messages: Any, tools: Any) -> list[Call]:
    text = json.dumps(messages, default=str)
    done = "Tether denied" in text or "deleted u1" in text
    return [DELETE] if "close the account" in text and not done else []


LLM_TYPE = "tether-test-scripted"


class CheckpointedLLM(ScriptedLLM):
    """The scripted model, restorable: CrewAI rebuilds a checkpointed model from its ``llm_type``."""

    llm_type: str = LLM_TYPE

    def __init__(self, **_: Any) -> None:
        super().__init__(respond=second_task_deletes)


@pytest.fixture(autouse=True)
def restorable(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = dict(base_agent._LLM_TYPE_REGISTRY)
    registry[LLM_TYPE] = f"{__name__}.CheckpointedLLM"
    monkeypatch.setattr(base_agent, "_LLM_TYPE_REGISTRY", registry)
    RAN.clear()


def two_task_crew() -> Crew:
    agent = Agent(role=AGENT, goal="help", backstory="careful", llm=CheckpointedLLM(), tools=[DeleteAccount()])
    return Crew(
        agents=[agent],
        tasks=[
            Task(description="Look at the ticket.", expected_output="x", agent=agent),
            Task(description="Now close the account.", expected_output="x", agent=agent),
        ],
        cache=False,  # a repeated call runs again (not answered from CrewAI's tool cache)
    )


def first_checkpoint(tmp_path: Path, crew: Crew) -> Path:
    """Run ``crew`` checkpointing each task; the checkpoint written after its first task."""
    crew.checkpoint = CheckpointConfig(location=str(tmp_path / "checkpoints"))
    crew.kickoff()
    written = sorted((tmp_path / "checkpoints").rglob("*.json"), key=os.path.getmtime)
    assert written, "CrewAI wrote no checkpoint"
    return written[0]


def guarded_checkpoint(tmp_path: Path, store: AuditStore) -> tuple[Crew, Path]:
    crew = two_task_crew()
    enable_step_guard(crew, make_guard(store))
    path = first_checkpoint(tmp_path, crew)
    assert RAN == [] and [d.verdict for d in decisions(store, "delete_account")] == ["deny"]
    return crew, path


def restore_from(path: Path) -> Any:
    return CheckpointConfig(restore_from=str(path), location=str(path.parent.parent / "restored"))


RESTORES = {
    "from_checkpoint": lambda crew, path: Crew.from_checkpoint(restore_from(path)).kickoff(),
    "fork": lambda crew, path: Crew.fork(restore_from(path)).kickoff(),
    "kickoff(from_checkpoint=...)": lambda crew, path: crew.kickoff(from_checkpoint=restore_from(path)),
}


@pytest.mark.parametrize("restore", list(RESTORES))
def test_a_crew_restored_from_a_guarded_crews_checkpoint_stays_governed(
    restore: str, tmp_path: Path, scenario_store: AuditStore
) -> None:
    crew, path = guarded_checkpoint(tmp_path, scenario_store)
    RESTORES[restore](crew, path)
    made = decisions(scenario_store, "delete_account")
    assert RAN == []
    assert [d.verdict for d in made] == ["deny", "deny"]
    assert len({d.session_id for d in made}) == 2  # the restored run is a session of its own


def test_a_restored_crew_is_governed_by_each_of_its_runs(tmp_path: Path, scenario_store: AuditStore) -> None:
    """kickoff_for_each runs copies of the restored crew: they keep its step guard."""
    _, path = guarded_checkpoint(tmp_path, scenario_store)
    restored = Crew.from_checkpoint(restore_from(path))
    restored.kickoff_for_each(inputs=[{"n": "1"}])
    assert RAN == [] and len(decisions(scenario_store, "delete_account")) == 2


RESTORE_ELSEWHERE = """
import os, sys
sys.path.insert(0, {root!r})
from crewai import Crew
from crewai.state.checkpoint_config import CheckpointConfig
import tether.crewai  # installed, no crew guarded in this process
import tests.crewai.test_checkpoints as here
from crewai.agents.agent_builder import base_agent
base_agent._LLM_TYPE_REGISTRY[here.LLM_TYPE] = "tests.crewai.test_checkpoints.CheckpointedLLM"
crew = Crew.{how}(CheckpointConfig(restore_from={path!r}))
try:
    crew.kickoff{args}
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc)
print("RAN", here.RAN)
"""


@pytest.mark.parametrize("how", ["from_checkpoint", "kickoff_for_each"])
def test_restored_in_another_process_a_guarded_crews_checkpoint_is_refused_until_guarded(
    how: str, tmp_path: Path, scenario_store: AuditStore
) -> None:
    _, path = guarded_checkpoint(tmp_path, scenario_store)
    method, args = ("from_checkpoint", "_for_each(inputs=[{}])") if how == "kickoff_for_each" else (how, "()")
    script = RESTORE_ELSEWHERE.format(root=str(ROOT), how=method, path=str(path), args=args)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    out = done.stdout
    assert "RAN []" in out, out + done.stderr
    assert "REFUSED TetherError" in out and "restored from the checkpoint of one Tether guarded" in out


def test_a_refused_restored_crew_runs_governed_once_guarded(
    tmp_path: Path, scenario_store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = guarded_checkpoint(tmp_path, scenario_store)
    from tether.crewai import _checkpoints

    monkeypatch.setattr(_checkpoints, "_GUARDED", {})  # as in a process where that guard is not
    restored = Crew.from_checkpoint(restore_from(path))
    with pytest.raises(TetherError, match="call enable_step_guard on it"):
        restored.kickoff()
    assert RAN == []
    enable_step_guard(restored, make_guard(scenario_store))
    restored.kickoff()
    assert RAN == [] and [d.verdict for d in decisions(scenario_store, "delete_account")] == ["deny", "deny"]


def test_an_unguarded_crews_checkpoint_restores_unguarded(tmp_path: Path) -> None:
    path = first_checkpoint(tmp_path, two_task_crew())
    assert RAN == ["u1"]
    Crew.from_checkpoint(restore_from(path)).kickoff()
    assert RAN == ["u1", "u1"]  # not ours to decide
