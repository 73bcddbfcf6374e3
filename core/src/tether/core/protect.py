"""Tether's built-in protections, applied on top of the policy's own grants and rules.

Before a risky call: argument values that came only from untrusted content, untrusted content
that reads like instructions, and data classes leaving through an external tool. On what flows
back to the agent: data classes outside its clearance, and sensitive values from another
session or tenant. Each protection's outcome is set in the policy's ``protections`` section.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .classify import Classifier
from .decision import Ruling
from .policy.compile import CompiledPolicy
from .policy.schema import Effect, Verdict
from .provenance import argument_values, fingerprints
from .redact import mask
from .state import SessionState
from .values import Plain

INJECTED = "tether.injected-argument"
INSTRUCTIONS = "tether.instructions"
EGRESS = "tether.egress"
CLEARANCE = "tether.clearance"
CROSS_SESSION = "tether.cross-session"

_STRICTNESS = {Verdict.ALLOW: 0, Verdict.REDACT: 1, Verdict.ASK: 2, Verdict.DENY: 3}
#: labels that name where data goes rather than whose it is: never held back
_NOT_SENSITIVE = frozenset({"network"})


def check_call(
    policy: CompiledPolicy,
    state: SessionState,
    tool: str,
    args: Plain,
    labels: Iterable[str],
    key: bytes,
    arg_values: Mapping[str, str] | None = None,
    *,
    in_scope: bool = False,
) -> tuple[Ruling | None, list[str]]:
    """The strictest protection that fires on a call (``None``: none), and every finding as text
    (the audit records findings even where the policy lets them through). ``arg_values``: keyed
    fingerprint -> value of the arguments' traceable values, if already worked out.

    A call inside the session's task scope is one the trusted request implies: instructions in
    untrusted content are then recorded but do not hold it (its values are still traced)."""
    spec = policy.policy.tools.get(tool)
    if spec is None or not policy.risky.intersection(spec.effects):
        return None, []
    protections = policy.policy.protections
    fired: list[Ruling] = []
    findings: list[str] = []

    def found(outcome: str, rule_id: str, reason: str) -> None:
        findings.append(f"{rule_id}: {reason}")
        if outcome != "allow":
            fired.append(Ruling(Verdict(outcome), reason, (rule_id,)))

    if Effect.EXTERNAL in spec.effects:
        for label in sorted(set(labels) - set(spec.accepts)):
            outcome = protections.egress.get(label)
            if outcome:
                found(outcome, EGRESS, f"{label} data would leave through external tool {tool!r}")
    for value, source in _injected(state, args, key, arg_values):
        shown = mask(value, key, policy.classifier)
        found(
            protections.injected_arguments,
            INJECTED,
            f"argument value {shown!r} appears in untrusted content from {source!r} and in nothing trusted",
        )
    if state.instructions:
        source = state.instructions[-1][0]
        found(
            "allow" if in_scope else protections.instructions,
            INSTRUCTIONS,
            f"untrusted content from {source!r} earlier in this session reads like instructions to the agent",
        )
    if not fired:
        return None, findings
    verdict = max((r.verdict for r in fired), key=_STRICTNESS.__getitem__)
    strongest = [r for r in fired if r.verdict is verdict]  # all of them: a person sees every reason
    reason = "; ".join(dict.fromkeys(r.reason for r in strongest))
    return Ruling(verdict, reason, tuple(dict.fromkeys(i for r in strongest for i in r.rule_ids))), findings


def _injected(
    state: SessionState, args: Plain, key: bytes, arg_values: Mapping[str, str] | None
) -> list[tuple[str, str]]:
    """(value, untrusted source tool) for each argument value seen only in untrusted content."""
    if not state.untrusted_values:
        return []
    out = []
    values = arg_values if arg_values is not None else fingerprints(key, argument_values(args))
    for fp, value in values.items():
        source = state.untrusted_values.get(fp)
        if source is not None and fp not in state.trusted_values:
            out.append((value, source[0]))
    return out


def combine(ruling: Ruling, protection: Ruling | None) -> Ruling:
    """The policy's ruling made as strict as the protection's (deny > ask > redact > allow).

    When both ask, the request carries both reasons, so the person sees what the protection
    found. A ruling a protection made ask can never be approved for the rest of the session,
    and keeps the policy's redactions for when it is approved."""
    if protection is None or _STRICTNESS[protection.verdict] < _STRICTNESS[ruling.verdict]:
        return ruling
    if protection.verdict is Verdict.DENY:
        return protection
    if ruling.verdict is Verdict.ASK:
        return ruling._replace(
            reason=f"{ruling.reason}; {protection.reason}",
            rule_ids=ruling.rule_ids + protection.rule_ids,
            for_session=False,
        )
    return protection._replace(redact=ruling.redact)


def is_protection(rule_id: str) -> bool:
    """Whether a rule id names one of Tether's own protections (never covered by a standing approval)."""
    return rule_id.startswith("tether.")


@dataclass(frozen=True)
class Held:
    """What Tether holds back from content flowing to an agent, and why."""

    verdict: Verdict  # REDACT: rewrite the spans; DENY: withhold the whole content
    rule_id: str
    reason: str
    spans: frozenset[str]  # the (normalised) values to hide


def held_back(
    classifier: Classifier,
    clearance: frozenset[str] | None,
    texts: Iterable[str],
    others: Callable[[dict[str, str]], dict[str, tuple[str, str]]] | None,
    protections: Any,
    key: bytes,
) -> list[Held]:
    """What to hold back from ``texts``.

    ``clearance``: the data classes the agent may receive (None: any). ``others``: records the
    sensitive values and returns those another session or tenant saw first.
    """
    cleared: set[str] = set()
    blocked: set[str] = set()
    sensitive: dict[str, str] = {}
    values: dict[str, str] = {}
    for text in texts:
        text, findings = classifier.classify(text)
        for f in findings:
            if f.label in _NOT_SENSITIVE:
                continue
            value = text[f.start : f.end]
            if clearance is not None and f.label not in clearance:
                blocked.add(value)
                cleared.add(f.label)
            fp = next(iter(fingerprints(key, {value})))
            sensitive[fp] = f.kind
            values[fp] = value
    held: list[Held] = []
    if blocked and protections.clearance != "allow":
        reason = f"data the agent is not cleared for: {', '.join(sorted(cleared))}"
        held.append(Held(Verdict(protections.clearance), CLEARANCE, reason, frozenset(blocked)))
    if others is not None and sensitive:
        leaked = others(sensitive)
        if leaked and protections.cross_session != "allow":
            where = sorted({f"session {s!r}" + (f" (tenant {t!r})" if t else "") for s, t in leaked.values()})
            reason = f"{len(leaked)} sensitive value(s) first seen in another {', '.join(where)}"
            spans = frozenset(values[fp] for fp in leaked)
            held.append(Held(Verdict(protections.cross_session), CROSS_SESSION, reason, spans))
    return held
