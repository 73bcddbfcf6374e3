"""The whole ruling on a tool call, as one function of (policy, session state, call).

The live guard calls it before a call runs; replay calls it on calls recorded in the audit,
with the session state rebuilt from the events before them. Keeping it in one place is what
makes a replayed decision the decision the guard would have made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .behaviour import Behaviour
from .decision import Ruling, decide
from .policy.compile import CompiledPolicy
from .policy.schema import Verdict
from .protect import check_call, combine
from .state import SessionState
from .values import Plain


def rule_on(
    policy: CompiledPolicy,
    behaviour: Behaviour,
    state: SessionState,
    agent: str,
    tool: str,
    args: dict[str, Plain],
    labels: frozenset[str],
    now: float,
    *,
    user: str | None = None,
    tenant: str | None = None,
    arg_values: Mapping[str, str] | None = None,
) -> tuple[Ruling, list[str], dict[str, Any]]:
    """The policy's ruling on a call, made stricter by any built-in protection, sequence rule or
    anomaly that fires; the findings; and details for the decision's event. ``arg_values``: the
    keyed fingerprints of the arguments' traceable values (worked out from ``args`` if omitted).
    Does not change ``state``."""
    ruling = decide(policy, state, agent, tool, args, user=user, tenant=tenant, now=now)
    if ruling.verdict is Verdict.DENY:
        return ruling, [], {}
    key = behaviour.store.key
    protection, findings = check_call(policy, state, tool, args, labels, key, arg_values)
    ruling, more, details = behaviour.rule_on(
        combine(ruling, protection), state, agent, tool, args, labels, now, user=user, tenant=tenant
    )
    return ruling, findings + more, details
