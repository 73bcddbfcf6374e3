"""Crews, agents and flows CrewAI restores from a checkpoint file (``from_checkpoint``, ``fork``,
``kickoff(from_checkpoint=...)``): new objects built from the file's fields, which carry no
step guard. Restored in the process that guarded the original, they get its step guard back;
restored elsewhere from a guarded crew's checkpoint, their runs are refused until they are
guarded again. Never run unseen."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from crewai.agents.agent_builder.base_agent import BaseAgent
from crewai.crew import Crew
from crewai.flow.flow import Flow

from ._scope import RESTORED_UNGUARDED, StepGuard, mark, step_guard_of

#: the key in a guarded crew's or agent's fingerprint metadata, which CrewAI writes into its
#: checkpoints: a checkpoint of a guarded crew says so wherever it is restored
MARKER = "tether"
GUARDED = "guarded"

#: each guarded crew, agent and flow of this process, by what a checkpoint of it keeps (its id)
_GUARDED: weakref.WeakValueDictionary[str, StepGuard] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def remember(target: Any, step_guard: StepGuard) -> None:
    """Note a guarded crew, agent or flow, so a copy CrewAI restores from its checkpoint is too."""
    key = _key(target)
    if key is not None:
        with _LOCK:
            _GUARDED[key] = step_guard
    metadata = _fingerprint_metadata(target)
    if metadata is not None:
        metadata[MARKER] = GUARDED


def restored(entity: Any) -> bool:
    """A crew, agent or flow CrewAI has just rebuilt from a checkpoint: hand it (and its agents)
    the step guard of what it was restored from; if that was guarded, but not in this process
    (or by a guard since gone), its runs are refused until ``enable_step_guard`` guards it.
    True when it was restored from something Tether guarded."""
    members = [a for a in [*(getattr(entity, "agents", None) or ()), getattr(entity, "manager_agent", None)] if a]
    step_guard = _known(entity)
    if step_guard is not None:
        for target in (entity, *members):
            if step_guard_of(target) is None:
                mark(target, step_guard)
                remember(target, step_guard)
        return True
    guarded = False
    for target in (entity, *members):
        found = _known(target)
        if found is not None:
            mark(target, found)
            guarded = True
        elif _was_guarded(target):
            object.__setattr__(target, RESTORED_UNGUARDED, True)
            guarded = True
    return guarded


def _known(target: Any) -> StepGuard | None:
    key = _key(target)
    if key is None:
        return None
    with _LOCK:
        return _GUARDED.get(key)


def _was_guarded(target: Any) -> bool:
    metadata = _fingerprint_metadata(target)
    return metadata is not None and metadata.get(MARKER) == GUARDED


def _key(target: Any) -> str | None:
    if isinstance(target, Crew):
        return f"crew:{target.id}"
    if isinstance(target, BaseAgent):
        return f"agent:{target.id}"
    if isinstance(target, Flow):
        state = getattr(target, "_state", None)
        found = state.get("id") if isinstance(state, dict) else getattr(state, "id", None)
        return f"flow:{found}" if found else None
    return None


def _fingerprint_metadata(target: Any) -> dict[str, Any] | None:
    if not isinstance(target, (Crew, BaseAgent)):
        return None
    config = getattr(target, "security_config", None)
    metadata = getattr(getattr(config, "fingerprint", None), "metadata", None)
    return metadata if isinstance(metadata, dict) else None
