"""Which agents exist: those the policy declares and those the audit saw acting.

An agent or tool that acted but that the policy does not know, and a tool an agent tried but
was never granted, are findings: they show where the policy and reality have drifted apart.
A granted tool that is never used is a hint that the grant may be wider than needed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .policy.schema import Policy


@dataclass
class AgentRecord:
    name: str
    in_policy: bool
    owner: str = ""
    purpose: str = ""
    granted: list[str] = field(default_factory=list)
    used: dict[str, dict[str, int]] = field(default_factory=dict)  # tool -> verdict -> count
    ungranted: list[str] = field(default_factory=list)  # tried, not granted
    undeclared: list[str] = field(default_factory=list)  # tried, unknown to the policy
    unused: list[str] = field(default_factory=list)  # granted, never tried
    credentials: int = 0  # active credentials it can authenticate with (0: its name is only asserted)

    @property
    def findings(self) -> list[str]:
        out = []
        if not self.in_policy:
            out.append("acted but is not in the policy")
        if self.undeclared:
            out.append(f"used tools the policy does not declare: {', '.join(self.undeclared)}")
        if self.ungranted:
            out.append(f"tried tools it is not granted: {', '.join(self.ungranted)}")
        return out


def inventory(
    policy: Policy | None,
    usage: Iterable[tuple[str | None, str | None, str | None, int]],
    credentials: Mapping[str, int] | None = None,
) -> list[AgentRecord]:
    """Agents from ``policy`` and from audit ``usage`` rows (agent, tool, verdict, count), with
    how many active ``credentials`` each has."""
    used: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for agent, tool, verdict, count in usage:
        if agent and tool:
            used[agent][tool][verdict or "unknown"] = used[agent][tool].get(verdict or "unknown", 0) + count
    declared_tools = set(policy.tools) if policy else set()
    records = []
    names = list(policy.agents) if policy else []
    names += sorted(a for a in used if a not in names)
    for name in names:
        spec = policy.agents.get(name) if policy else None
        tools = {tool: dict(counts) for tool, counts in sorted(used.get(name, {}).items())}
        record = AgentRecord(
            name,
            spec is not None,
            spec.owner if spec else "",
            spec.purpose if spec else "",
            sorted(spec.tools) if spec else [],
            tools,
        )
        if policy is not None:
            record.undeclared = [t for t in tools if t not in declared_tools]
            if spec is not None:  # an unknown agent is granted nothing: one finding says it all
                record.ungranted = [t for t in tools if t in declared_tools and t not in record.granted]
        record.unused = [t for t in record.granted if t not in tools]
        record.credentials = (credentials or {}).get(name, 0)
        records.append(record)
    return records
