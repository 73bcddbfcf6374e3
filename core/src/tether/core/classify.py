"""Finding sensitive values in text: secrets, personal data, and text written to steer an agent.

Detectors label spans of text; what a label means (redact, deny, ask) is the policy's business.
Each detector is a pattern plus, where the data has one, a checksum that rules out look-alikes
(a 16-digit order number is not a card unless it passes Luhn; an IBAN must pass mod 97).

All patterns run as one RE2 automaton: a single linear-time pass over the text whatever the
number of detectors, and no input can make it backtrack. Text is normalised first so the usual
evasions do not hide a value: zero-width characters, Unicode look-alikes and full-width forms,
values spaced out or wrapped in base64.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import re2

from .errors import TetherError


class Finding(NamedTuple):  # a tuple: thousands are made per megabyte scanned
    label: str  # the data class: "secret", "pii", "network", or a class the policy names
    kind: str  # what exactly: "github_token", "email", ...
    start: int
    end: int


@dataclass(frozen=True)
class Detector:
    kind: str
    label: str
    pattern: str  # RE2 syntax: no look-around, no backreferences; prefer {n,} to large {n,m}
    valid: Callable[[str], bool] | None = None
    #: whether previews hide it (an IP address is labelled but left readable for investigators)
    masked: bool = True

    def __post_init__(self) -> None:
        compile_pattern(self.pattern)  # RE2 must accept it: it runs in the combined automaton
        re.compile(self.pattern)  # and Python's engine, which tells which detector a match is


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is reported by the exception, not on stderr


def compile_pattern(pattern: str | bytes) -> re2._Regexp:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise TetherError(f"invalid pattern {pattern!r}: {why}") from None


# -- checksums --------------------------------------------------------------------------------


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


# Lengths of IBANs by country (ISO 13616 registry), so a random code cannot pass by luck of mod 97.
_IBAN_LENGTHS = dict(
    pair.split(":")
    for pair in (  # noqa: SIM905
        "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BR:29 BY:28 CH:21 CR:22 CY:28 CZ:24 DE:22 "
        "DK:18 DO:28 EE:20 EG:29 ES:24 FI:18 FO:18 FR:27 GB:22 GE:22 GI:23 GL:18 GR:27 GT:28 HR:21 HU:28 "
        "IE:22 IL:23 IQ:23 IS:26 IT:27 JO:30 KW:30 KZ:20 LB:28 LC:32 LI:21 LT:20 LU:20 LV:21 MC:27 MD:24 "
        "ME:22 MK:19 MR:27 MT:31 MU:30 NL:18 NO:15 PK:24 PL:28 PS:29 PT:25 QA:29 RO:24 RS:22 SA:24 SC:31 "
        "SE:24 SI:19 SK:24 SM:27 ST:25 SV:28 TL:23 TN:24 TR:26 UA:29 VA:22 VG:24 XK:20"
    ).split()
)


def iban_valid(text: str) -> bool:
    iban = "".join(text.split()).upper()
    if str(len(iban)) != _IBAN_LENGTHS.get(iban[:2]):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_valid(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def dni_valid(text: str) -> bool:
    """Spanish DNI/NIE: the letter is a checksum of the number."""
    text = text.replace("-", "").upper()
    number = text[:-1].replace("X", "0").replace("Y", "1").replace("Z", "2")
    return number.isdigit() and "TRWAGMYFPDXBNJZSQVHLCKE"[int(number) % 23] == text[-1]


def ipv4_valid(text: str) -> bool:
    return all(int(part) <= 255 and (part[0] != "0" or part == "0") for part in text.split("."))


def phone_valid(text: str) -> bool:
    return 8 <= sum(c.isdigit() for c in text) <= 15


# -- the detectors ----------------------------------------------------------------------------

DETECTORS: tuple[Detector, ...] = (
    Detector("private_key", "secret", r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"),
    Detector("aws_access_key", "secret", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    Detector("github_token", "secret", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    Detector("anthropic_key", "secret", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    Detector("openai_key", "secret", r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}"),
    Detector("stripe_key", "secret", r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}\b"),
    Detector("slack_token", "secret", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    Detector("google_api_key", "secret", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    Detector("jwt", "secret", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
    Detector("bearer_token", "secret", r"\b(?i:bearer)\s+[A-Za-z0-9._~+/-]{20,}=*"),
    Detector("url_password", "secret", r"://[^/\s:@]+:[^/\s@]+@"),
    Detector(
        "email",
        "pii",
        r"[A-Za-z0-9._%+-]{1,64}[ ]?@[ ]?[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
    ),
    Detector("iban", "pii", r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b", iban_valid),
    Detector("us_ssn", "pii", r"\b\d{3}-\d{2}-\d{4}\b", ssn_valid),
    Detector("es_dni", "pii", r"\b[XYZ0-9]\d{7}-?[A-Za-z]\b", dni_valid),
    Detector("ipv4", "network", r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", ipv4_valid, masked=False),
    Detector("phone", "pii", r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}\b", phone_valid),
    Detector("phone", "pii", r"\(\d{3}\)[ ]?\d{3}[ .-]\d{4}\b", phone_valid),
    Detector("payment_card", "pii", r"\d(?:[ \t-]?\d){12,18}", luhn_valid),
    # Long opaque tokens: decoded when they are base64 of text (then scanned), or flagged as a
    # secret when random enough to be a key. Last, so every named kind above wins over it.
    Detector("token", "secret", r"[A-Za-z0-9+/_-]{24,}={0,2}"),
)

#: characters that hide inside text without showing: removed before scanning
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"))
#: letters of other scripts drawn like Latin ones (after NFKC, which folds full-width forms)
_LOOKALIKES = str.maketrans(
    "АВЕКМНОРСТУХаеорсухіјѕԁɡΑΒΕΗΙΚΜΝΟΡΤΥΧΖαοινρτυχ",
    "ABEKMHOPCTYXaeopcyxijsdgABEHIKMNOPTYXZaoivptux",
)

#: Argument and field names whose values are secrets whatever they look like.
SECRET_NAMES = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|apikey|"
    r"access[_-]?key|private[_-]?key|client[_-]?secret|authorization|auth|cookie|credentials?)$"
)


def normalize(text: str) -> str:
    """``text`` with invisible characters removed and look-alike letters folded to ASCII ones."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text.translate(_INVISIBLE)).translate(_LOOKALIKES)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _random_key(token: str) -> bool:
    """A long token mixing cases and digits with high entropy: a key, not a word or a hash."""
    token = token.rstrip("=")
    if token == token.lower() or token == token.upper() or not _DIGIT.search(token):
        return False
    return _entropy(token) >= 4.0


_DIGIT = re.compile(r"\d")


def _decoded(token: str) -> str | None:
    """The text a base64 token encodes, if it encodes text."""
    try:
        altchars = b"-_" if "-" in token or "_" in token else None  # the URL-safe alphabet
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=altchars)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(c.isprintable() or c in "\n\t\r" for c in text)
    return text if text and printable >= 0.95 * len(text) else None


class Classifier:
    """A set of detectors compiled into one automaton."""

    def __init__(self, detectors: Iterable[Detector] = DETECTORS) -> None:
        self.detectors = tuple(detectors)
        combined = "|".join(f"(?:{d.pattern})" for d in self.detectors)
        self._any = compile_pattern(combined)
        self._any_ascii = compile_pattern(combined.encode())  # ASCII text: byte offsets are char offsets
        # Which detector a match is: RE2 finds where matches are in one pass, but asking it which
        # alternative matched is slow, so the (short) match is identified by Python's engine.
        self._which = re.compile("|".join(f"(?P<d{i}>{d.pattern})" for i, d in enumerate(self.detectors)))
        self.shown = frozenset(d.kind for d in self.detectors if not d.masked)  # labelled, left readable
        self._clean: set[str] = set()  # short ASCII strings known to hold nothing: see classify

    def scan(self, text: str) -> list[Finding]:
        """Every sensitive span of ``normalize(text)``, left to right, without overlaps."""
        text = normalize(text)
        return self._scan(text, 0, len(text), decode=True)

    def classify(self, text: str) -> tuple[str, list[Finding]]:
        """``normalize(text)`` and the findings in it (their spans refer to the normalised text)."""
        if text in self._clean:
            return text, []
        text = normalize(text)
        found = self._scan(text, 0, len(text), decode=True)
        if not found and len(text) <= _CLEAN_MAX and text.isascii():
            # Field names, roles, ids and short values repeat on every call: remember those with
            # nothing in them (ASCII: normalising leaves them as they are). Nothing found is
            # kept, so the set holds no sensitive value.
            if len(self._clean) >= _CLEAN_KEPT:
                self._clean.clear()
            self._clean.add(text)
        return text, found

    def _scan(self, text: str, lo: int, hi: int, decode: bool) -> list[Finding]:
        # One finditer per call: the binding converts the text it is given on every call, so
        # searching again from each position would cost the whole text each time.
        found: list[Finding] = []
        segment = text if (lo, hi) == (0, len(text)) else text[lo:hi]
        spans = _ascii_spans(self._any_ascii, segment) if segment.isascii() else _spans(self._any, segment)
        for start, end in spans:
            start, end = start + lo, end + lo
            finding, detector = self._identify(text, start, end, decode)
            if finding is not None:
                found.append(finding)
            elif detector is not None and detector.kind != "token" and end - start > 1:
                # a look-alike that failed its checksum may hold a real value further in
                found += self._scan(text, start + 1, end, decode)
        return found

    def _detector(self, value: str) -> Detector | None:
        which = self._which.fullmatch(value)
        return self.detectors[int(which.lastgroup[1:])] if which and which.lastgroup else None

    def _identify(self, text: str, start: int, end: int, decode: bool) -> tuple[Finding | None, Detector | None]:
        """The finding a match is, if it passes its checks, and the detector it matched."""
        detector = self._detector(text[start:end])
        if detector is None:
            return None, None
        if detector.kind == "token":
            return self._token(text, start, end, decode), detector
        if not _bounded(detector.kind, text, start, end) or (detector.valid and not detector.valid(text[start:end])):
            return None, detector
        if detector.kind == "private_key":  # the header found it; the key runs to its footer
            close = text.find("-----END ", end)
            tail = text.find("-----", close + 9) if close >= 0 else -1
            end = tail + 5 if tail >= 0 else len(text)
        elif detector.kind == "url_password":
            start, end = start + 3, end - 1
        return Finding(detector.label, detector.kind, start, end), detector

    def _token(self, text: str, start: int, end: int, decode: bool) -> Finding | None:
        token = text[start:end]
        plain = _decoded(token) if decode and len(token) % 4 != 1 else None
        if plain is not None:
            plain = normalize(plain)
            inner = self._scan(plain, 0, len(plain), decode=False)
            if inner:
                return Finding(inner[0].label, f"{inner[0].kind}_base64", start, end)
            return None
        return Finding("secret", "high_entropy", start, end) if _random_key(token) else None


_CLEAN_MAX = 64  # characters
_CLEAN_KEPT = 8192  # strings


def _spans(regex: re2._Regexp, text: str) -> Iterator[tuple[int, int]]:
    return (match.span() for match in regex.finditer(text))


def _ascii_spans(regex: re2._Regexp, text: str) -> Iterator[tuple[int, int]]:
    """Match spans in ASCII text, straight from the RE2 binding's matcher: byte offsets are
    character offsets, and skipping the binding's per-match objects doubles the scan speed on
    text dense with matches (log lines full of addresses)."""
    data, pos, end = text.encode(), 0, len(text)
    match, unanchored = regex._regexp.Match, re2._Anchor.UNANCHORED
    while pos < end:
        span = match(unanchored, data, pos, end)[0]
        if span[0] < 0:
            return
        yield span
        pos = span[1] if span[1] > span[0] else span[0] + 1


def _bounded(kind: str, text: str, start: int, end: int) -> bool:
    """Whether a match stands on its own rather than being a piece of a longer value."""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    if kind == "email":
        return not (before.isalnum() or before in "._%+-")
    if kind == "payment_card":
        return not (before.isdigit() or before == "-" or after.isdigit() or after == "-")
    return True


DEFAULT = Classifier()


def scan(text: str) -> list[Finding]:
    """Findings of the built-in detectors in ``normalize(text)``."""
    return DEFAULT.scan(text)
