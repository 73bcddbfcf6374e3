"""The whole ruling on a tool call, as one function of (policy, session state, call).

The live guard calls it before a call runs; replay calls it on calls recorded in the audit,
with the session state rebuilt from the events before them. Keeping it in one place is what
makes a replayed decision the decision the guard would have made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from . import scopes
from .behaviour import Behaviour
from .decision import Ruling, decide
from .expr import Names, select
from .policy.compile import CompiledPolicy, agent_value, tool_value
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
    scoped = scopes.check(
        state.scope, policy, tool, lambda names: _variables(policy, state, names, agent, tool, args, now, user, tenant)
    )
    protection, findings = check_call(policy, state, tool, args, labels, key, arg_values, in_scope=scoped.in_scope)
    if scoped.finding:
        findings.append(scoped.finding)
    ruling, more, details = behaviour.rule_on(
        combine(combine(ruling, protection), scoped.ruling),
        state,
        agent,
        tool,
        args,
        labels,
        now,
        user=user,
        tenant=tenant,
    )
    return ruling, findings + more, details


def _variables(
    policy: CompiledPolicy,
    state: SessionState,
    names: Names,
    agent: str,
    tool: str,
    args: dict[str, Plain],
    now: float,
    user: str | None,
    tenant: str | None,
) -> dict[str, Any]:
    """The CEL variables a scope's condition reads, as the policy's own conditions see them."""
    specs = policy.policy
    out: dict[str, Any] = {}
    for name, used in names.fields.items():
        if name == "args":
            out[name] = select(args, used)
        elif name == "session":
            out[name] = state.cel_value(agent, user, tenant, used)
        elif name == "request":
            out[name] = state.request.cel_value(args, used, state.trusted_values, names.request_args, names.mentions)
        elif name == "now":
            out[name] = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        elif name == "tool":
            out[name] = tool_value(tool, specs.tools.get(tool))
        else:
            out[name] = agent_value(agent, specs.agents.get(agent))
    return out
