"""Finding sensitive values in text: secrets and personal data.

Detectors label spans of text; what a label means (redact, deny, ask) is the policy's and the
audit's business. Each detector is a pattern plus, where the data has one, a checksum that
rules out look-alikes (a 16-digit order number is not a card unless it passes Luhn).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    label: str  # the data class: "secret" or "pii"
    kind: str  # what exactly: "github_token", "email", ...
    start: int
    end: int


@dataclass(frozen=True)
class Detector:
    kind: str
    label: str
    pattern: str
    #: literal strings one of which every match contains: the regex only runs when one is present,
    #: which keeps scanning ordinary text at the speed of ``str.__contains__``
    triggers: tuple[str, ...]
    valid: Callable[[str], bool] | None = None
    #: for data with no literal marker (card numbers): a cheap regex that every match contains
    gate: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))
        object.__setattr__(self, "gate_regex", re.compile(self.gate) if self.gate else None)

    def find(self, text: str) -> list[Finding]:
        """Matches in ``text``; call only once a trigger (or the gate) is known to be present."""
        regex: re.Pattern[str] = self.regex  # type: ignore[attr-defined]
        return [
            Finding(self.label, self.kind, m.start(), m.end())
            for m in regex.finditer(text)
            if self.valid is None or self.valid(m.group())
        ]


def luhn_valid(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "private_key",
        "secret",
        r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]{0,10000}?(?:-----END [A-Z0-9 ]{0,40}-----|$)",
        ("PRIVATE KEY",),
    ),
    Detector("aws_access_key", "secret", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", ("AKIA", "ASIA")),
    Detector(
        "github_token",
        "secret",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Detector("anthropic_key", "secret", r"\bsk-ant-[A-Za-z0-9_-]{20,200}", ("sk-ant-",)),
    Detector("openai_key", "secret", r"\bsk-(?!ant-)(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,200}", ("sk-",)),
    Detector("stripe_key", "secret", r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,200}\b", ("k_live_", "k_test_")),
    Detector("slack_token", "secret", r"\bxox[abposr]-[A-Za-z0-9-]{10,200}", ("xox",)),
    Detector("google_api_key", "secret", r"\bAIza[0-9A-Za-z_-]{35}\b", ("AIza",)),
    Detector("jwt", "secret", r"\beyJ[A-Za-z0-9_-]{5,2000}\.eyJ[A-Za-z0-9_-]{5,4000}\.[A-Za-z0-9_-]{5,2000}", ("eyJ",)),
    Detector("bearer_token", "secret", r"(?i:\bbearer)\s+[A-Za-z0-9._~+/-]{20,2000}=*", ("Bearer", "bearer", "BEARER")),
    Detector("url_password", "secret", r"(?<=://)[^/\s:@]{1,200}:[^/\s@]{1,200}(?=@)", ("://",)),
    Detector(
        "email",
        "pii",
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
        ("@",),
    ),
    Detector(
        "payment_card", "pii", r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", (), luhn_valid, r"\d[ -]?\d[ -]?\d[ -]?\d"
    ),
)

_TRIGGERS = tuple((trigger, detector) for detector in DETECTORS for trigger in detector.triggers)
_GATED = tuple(detector for detector in DETECTORS if detector.gate)


#: Argument and field names whose values are secrets whatever they look like.
SECRET_NAMES = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|apikey|"
    r"access[_-]?key|private[_-]?key|client[_-]?secret|authorization|auth|cookie|credentials?)$"
)


def scan(text: str) -> list[Finding]:
    """Every sensitive span in ``text``, left to right, without overlaps (the earliest, then
    longest, span wins)."""
    active = {detector for trigger, detector in _TRIGGERS if trigger in text}
    active.update(d for d in _GATED if d.gate_regex.search(text))  # type: ignore[attr-defined]
    if not active:
        return []
    found = sorted((f for d in active for f in d.find(text)), key=lambda f: (f.start, -f.end))
    kept: list[Finding] = []
    for finding in found:
        if not kept or finding.start >= kept[-1].end:
            kept.append(finding)
    return kept
