"""Cautions: what a caller knows about a call that the policy cannot see, made part of its decision.

A gateway in front of someone else's tools learns things the policy has no words for: the tool's
description changed since it was approved, or carries instructions to the model. A caution names
such a finding and what it concludes (``deny``, ``ask`` or ``allow``, which records it only); the
decision becomes at least as strict, and the audit records the finding either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .decision import Ruling
from .policy.schema import Verdict
from .protect import combine


@dataclass(frozen=True)
class Caution:
    rule_id: str  # ``tether.<...>``: a protection, so a standing approval never covers it
    reason: str
    outcome: Literal["deny", "ask", "allow"] = "ask"


def apply_cautions(ruling: Ruling, cautions: Sequence[Caution]) -> tuple[Ruling, list[str]]:
    """``ruling`` made as strict as the strictest caution, and each caution as a finding."""
    findings = [f"{c.rule_id}: {c.reason}" for c in cautions]
    for caution in cautions:
        if caution.outcome != "allow":
            ruling = combine(ruling, Ruling(Verdict(caution.outcome), caution.reason, (caution.rule_id,)))
    return ruling, findings
