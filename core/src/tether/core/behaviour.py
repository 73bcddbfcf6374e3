"""Behaviour over time, applied to a call: the session's sequence rules and its agent's baseline.

Both run after the policy's grants and rules and Tether's protections, and can only make a
ruling stricter (deny > ask > redact > allow); a call already denied is left alone. Rules and
anomalies of equal strictness add their ids and reasons to the ruling, so a decision names
everything that made it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .audit.store import AuditStore
from .baselines import BaselineCheck, destinations_of
from .decision import Ruling
from .policy.compile import CompiledPolicy
from .policy.schema import Verdict
from .sequences import Hit
from .state import SessionState


class Behaviour:
    """One guard's sequence rules and baselines."""

    def __init__(self, policy: CompiledPolicy, store: AuditStore) -> None:
        self.policy = policy
        self.store = store
        anomalies = policy.policy.anomalies
        self.baselines = BaselineCheck(store, anomalies) if anomalies is not None else None

    def rule_on(
        self,
        ruling: Ruling,
        state: SessionState,
        agent: str,
        tool: str,
        args: Mapping[str, Any],
        labels: frozenset[str],
        now: float,
        *,
        user: str | None = None,
        tenant: str | None = None,
    ) -> tuple[Ruling, list[str], dict[str, Any]]:
        """``ruling`` made stricter by what fires, the findings to record, and details for the
        decision's audit event (the destinations it names, why baseline checks were skipped)."""
        policy, key = self.policy, self.store.key
        spec = policy.policy.tools.get(tool)
        named = destinations_of(spec, args, key, policy.classifier)
        details: dict[str, Any] = {"destinations": [[d.address, d.domain] for d in named]} if named else {}
        if ruling.verdict is Verdict.DENY or state.history is None:
            return ruling, [], details
        hits = state.history.check(state, agent, tool, args, labels, now, key, user, tenant)
        findings: list[str] = []
        if self.baselines is not None:
            anomalies, skipped = self.baselines.check(state, agent, tenant, tool, spec, named, now)
            if skipped:
                details["anomalies"] = f"skipped: {skipped}"
            findings = [str(a) for a in anomalies]
            hits += [Hit(a.outcome, a.finding, a.reason) for a in anomalies if a.outcome != "allow"]
        for hit in hits:
            ruling = tighten(ruling, hit)
        return ruling, findings, details


def tighten(ruling: Ruling, hit: Hit) -> Ruling:
    """``ruling`` with ``hit`` applied: a stricter hit replaces it, an equal one joins it."""
    verdict = Verdict(hit.action)
    ids = (hit.rule_id,)
    if ruling.verdict is Verdict.DENY:
        return ruling
    if verdict is Verdict.DENY:
        return Ruling(Verdict.DENY, hit.reason, ids, error=hit.error)
    if verdict is Verdict.ASK:
        if ruling.verdict is Verdict.ASK:  # both must be satisfied; no standing approval covers a sequence
            return ruling._replace(
                reason=f"{ruling.reason}; {hit.reason}", rule_ids=ruling.rule_ids + ids, for_session=False
            )
        return Ruling(Verdict.ASK, hit.reason, ids, ruling.redact)
    redact = tuple(dict.fromkeys(ruling.redact + hit.redact))
    if ruling.verdict is Verdict.ASK:  # approved or not, these arguments are replaced
        return ruling._replace(redact=redact)
    reason = f"{ruling.reason}; {hit.reason}: {', '.join(hit.redact)} redacted"
    return Ruling(Verdict.REDACT, reason, ruling.rule_ids + ids, redact)
