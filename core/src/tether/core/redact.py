"""Previews of arguments and outputs that are safe to store: no raw secret, no raw PII.

What reaches the audit is a bounded preview (long strings cut, big containers trimmed) in
which every sensitive value is replaced by its kind and a keyed fingerprint, plus one
fingerprint of the whole value, so equal values can still be matched across events. Mapping
keys are data too (an address book keyed by email, tokens keyed by themselves): they are
classified and masked like values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .classify import DEFAULT, SECRET_NAMES, Classifier
from .keys import fingerprint
from .values import Plain, canonical_json

MAX_STRING = 240  # characters of a string kept in a preview
SCAN_MARGIN = 2048  # scanned beyond the cut, so a secret straddling it is still recognised
MAX_ITEMS = 50
MAX_DEPTH = 8
MIN_SCANNED = 6  # no detected kind of data fits in fewer characters


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    """Whether a field's name says its value is a secret (names repeat: remember the answer)."""
    return SECRET_NAMES.match(name) is not None


@dataclass(frozen=True)
class Preview:
    value: Plain
    fingerprint: str
    labels: frozenset[str]


def preview(value: Plain, key: bytes, classifier: Classifier = DEFAULT) -> Preview:
    """A storable preview of ``value`` with its fingerprint and the data classes found in it."""
    labels: set[str] = set()
    shown = _preview(value, key, labels, 0, classifier)
    digest = fingerprint(key, canonical_json(value).encode("utf-8", "surrogatepass"))
    return Preview(shown, digest, frozenset(labels))


def _preview(value: Plain, key: bytes, labels: set[str], depth: int, classifier: Classifier) -> Plain:
    if isinstance(value, str):
        return _text(value, key, labels, classifier)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes {fingerprint(key, value)}>"
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        return f"<nested too deep to show {fingerprint(key, canonical_json(value).encode())}>"
    if isinstance(value, dict):
        out: dict[str, Plain] = {}
        for i, (name, item) in enumerate(value.items()):
            if i == MAX_ITEMS:
                out["…"] = f"{len(value) - MAX_ITEMS} more keys"
                break
            shown_name, found = _name(name, key, classifier)
            labels.update(found)
            if shown_name in out:  # two keys cut or masked alike: keep both, told apart
                shown_name += f" [{fingerprint(key, name.encode('utf-8', 'surrogatepass'))}]"
            if _secret_name(name) and item not in (None, ""):
                labels.add("secret")
                out[shown_name] = f"[secret:{fingerprint(key, canonical_json(item).encode())}]"
            else:
                out[shown_name] = _preview(item, key, labels, depth + 1, classifier)
        return out
    if isinstance(value, list):
        items = [_preview(item, key, labels, depth + 1, classifier) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"… {len(value) - MAX_ITEMS} more items")
        return items
    return value


@functools.lru_cache(maxsize=4096)
def _name(name: str, key: bytes, classifier: Classifier) -> tuple[str, frozenset[str]]:
    """A mapping key as a preview shows it, and the data classes in it (names repeat on every
    call: remember the answer)."""
    labels: set[str] = set()
    return _text(name, key, labels, classifier), frozenset(labels)


def _text(text: str, key: bytes, labels: set[str], classifier: Classifier) -> str:
    """The first MAX_STRING characters (normalised) with sensitive spans masked.

    Scanning runs past the cut so that a secret starting before it is recognised whole; only
    text before the cut is ever shown, so a secret cut in half cannot leak its first half.
    """
    if len(text) < MIN_SCANNED:
        return text
    window, findings = classifier.classify(text[: MAX_STRING + SCAN_MARGIN])
    parts, pos = [], 0
    for found in findings:
        labels.add(found.label)
        if found.start < MAX_STRING and found.kind not in classifier.shown:
            parts += [window[pos : found.start], _mask(found.kind, window[found.start : found.end], key)]
            pos = found.end
    if pos < MAX_STRING:
        parts.append(window[pos:MAX_STRING])
        pos = MAX_STRING
    shown = "".join(parts)
    return shown + f"…[{len(text)} chars]" if len(text) > pos else shown


def mask(text: str, key: bytes, classifier: Classifier = DEFAULT) -> str:
    """``text`` whole (normalised), every sensitive span masked (for short free text: comments, reasons)."""
    text, findings = classifier.classify(text)
    parts, pos = [], 0
    for found in findings:
        if found.kind in classifier.shown:
            continue
        parts += [text[pos : found.start], _mask(found.kind, text[found.start : found.end], key)]
        pos = found.end
    parts.append(text[pos:])
    return "".join(parts)


def _mask(kind: str, secret: str, key: bytes) -> str:
    tag = fingerprint(key, secret.encode("utf-8", "surrogatepass"))
    if kind == "email":  # keep the domain: where data goes is what an investigator needs
        return f"[email:{tag}]@{secret.rpartition('@')[2]}"
    if kind == "payment_card":
        return f"[card:…{secret[-4:]}:{tag}]"
    return f"[{kind}:{tag}]"


def mask_values(value: Plain, spans: frozenset[str], key: bytes, classifier: Classifier = DEFAULT) -> Plain:
    """``value`` with every detected value in ``spans`` replaced by its stable placeholder (the
    same value always gets the same placeholder, so an agent can still tell values apart)."""
    if isinstance(value, str):
        text, findings = classifier.classify(value)
        parts, pos = [], 0
        for found in findings:
            secret = text[found.start : found.end]
            if secret in spans:
                parts += [text[pos : found.start], _mask(found.kind, secret, key)]
                pos = found.end
        return "".join(parts) + text[pos:] if parts else value
    if isinstance(value, dict):
        return {
            _masked_str(name, spans, key, classifier): mask_values(item, spans, key, classifier)
            for name, item in value.items()
        }
    if isinstance(value, list):
        return [mask_values(item, spans, key, classifier) for item in value]
    return value


def _masked_str(name: str, spans: frozenset[str], key: bytes, classifier: Classifier) -> str:
    masked = mask_values(name, spans, key, classifier)
    return masked if isinstance(masked, str) else name


def user_ref(key: bytes, user: str) -> str:
    """How the audit stores a session's user: a keyed fingerprint, never the id itself. The same
    user always gives the same reference, so the audit can be searched by user (compute the
    reference of the one you look for); an email address keeps its domain readable and matches
    the masked form of the same address anywhere else in the audit."""
    text, found = DEFAULT.classify(user)
    if len(found) == 1 and found[0].kind == "email" and (found[0].start, found[0].end) == (0, len(text)):
        return _mask("email", text, key)
    return f"[user:{fingerprint(key, user.encode('utf-8', 'surrogatepass'))}]"
