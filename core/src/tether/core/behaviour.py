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
from .baselines import OUTWARD, BaselineCheck, destinations
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
        self.baselines = BaselineCheck(store, anomalies, policy.classifier) if anomalies is not None else None
        # the tools whose arguments can name an external destination
        self._outward = {name for name, spec in policy.policy.tools.items() if not OUTWARD.isdisjoint(spec.effects)}

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
        key = self.store.key
        named = destinations(args, key) if tool in self._outward else []
        details: dict[str, Any] = {"destinations": [[d.address, d.domain] for d in named]} if named else {}
        history = state.history
        if history is None or ruling.verdict is _DENY:
            return ruling, [], details
        hits = history.check(state, agent, tool, args, labels, now, key, user, tenant)
        findings: list[str] = []
        if self.baselines is not None:
            anomalies, skipped = self.baselines.check(state, agent, tenant, tool, named, now)
            if skipped:
                details["anomalies"] = f"skipped: {skipped}"
            if anomalies:
                findings = [str(a) for a in anomalies]
                hits += [Hit(a.outcome, a.finding, a.reason) for a in anomalies if a.outcome != "allow"]
        return tighten(ruling, hits), findings, details


def tighten(ruling: Ruling, hits: list[Hit]) -> Ruling:
    """``ruling`` with ``hits`` applied: the strictest outcome wins, and every hit of that
    outcome adds its rule id and reason (redactions apply whatever else is decided)."""
    if not hits or ruling.verdict is _DENY:
        return ruling
    denies = [h for h in hits if h.action == "deny"]
    if denies:
        error = next((h.error for h in denies if h.error), None)
        return Ruling(_DENY, "; ".join(h.reason for h in denies), tuple(h.rule_id for h in denies), error=error)
    redacts = [h for h in hits if h.action == "redact"]
    redact = (
        tuple(dict.fromkeys(ruling.redact + tuple(f for h in redacts for f in h.redact))) if redacts else ruling.redact
    )
    asks = [h for h in hits if h.action == "ask"]
    asked = ruling.verdict is _ASK
    if asked or asks:
        reasons = ([ruling.reason] if asked else []) + [h.reason for h in asks]
        ids = (ruling.rule_ids if asked else ()) + tuple(h.rule_id for h in asks)
        # both must be satisfied, and no standing approval covers what a session's history triggers
        for_session = ruling.for_session and not asks
        return Ruling(_ASK, "; ".join(reasons), ids, redact, None, ruling.approvers if asked else None, for_session)
    reason = "; ".join([ruling.reason] + [f"{h.reason}: {', '.join(h.redact)} redacted" for h in redacts])
    return Ruling(Verdict.REDACT, reason, ruling.rule_ids + tuple(h.rule_id for h in redacts), redact)


_DENY, _ASK = Verdict.DENY, Verdict.ASK  # looked up once: enum members are slow to fetch
