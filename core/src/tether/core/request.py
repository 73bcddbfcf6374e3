"""The session's trusted request: what the people an agent serves asked of it.

The user's messages, the system prompt and :meth:`Session.trusted_input` are the request; trusted
tools' outputs are what the agent may rightly know besides. Policy conditions see both as the
``request`` variable, so a rule can ask whether a call is one the request implies:

- ``request.given.<arg>``: every value of that argument is one the user or system gave;
- ``request.known.<arg>``: ... or one a trusted tool returned (a contact list, the user's IBAN);
- ``request.text``: the request's text, to ask whether it mentions an action
  (``request.text.matches("(?i)\\\\b(pay|transfer)")``).

Values are compared by keyed fingerprint (the session keeps no raw value); the text is kept in
memory only, bounded, for conditions to read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .classify import normalize
from .provenance import _canonical, content_values, fingerprints, strings

MAX_TEXT = 64 * 1024  # characters of request text conditions and planners see
MAX_TOKENS = 20_000  # distinct values one input contributes
_WORD = re.compile(r"[^\s,;:!?()\[\]{}<>\"'`]+")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_SPACES = re.compile(r"\s+")


def _token(text: str) -> str:
    """One value as conditions compare it: case, spacing and surrounding punctuation ignored,
    numbers by value (``100``, ``100.00`` and the integer 100 are the same)."""
    canon = _canonical(text)
    if _NUMBER.fullmatch(canon):
        return repr(float(canon))
    return canon


def request_values(content: Any) -> set[str]:
    """The values a request holds: each word-like token, and the traceable values in it."""
    out = content_values(content)
    for text in strings(content):
        for match in _WORD.finditer(normalize(text)):
            token = _token(match.group())
            if token:
                out.add(token)
            if len(out) >= MAX_TOKENS:
                return out
    return out


def as_request_text(content: Any) -> str:
    """The text of request content (a string, a message's content parts...)."""
    return "\n".join(strings(content))


def _leaves(value: Any) -> list[str | float]:
    """The strings and numbers of an argument value, at any depth."""
    out: list[str | float] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(float(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


class TrustedRequest:
    """What a session was asked, kept for conditions and planners. Guard it with the session lock."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._parts: list[str] = []
        self._size = 0
        self._seen: set[int] = set()  # texts already taken in (a model is sent the same request each turn)
        self.truncated = False  # more text arrived than conditions are shown
        self.given: set[str] = set()  # fingerprints of the values the user or system gave
        self._canonical_text = ""

    @property
    def text(self) -> str:
        return "\n".join(self._parts)

    def is_new(self, text: str) -> bool:
        return hash(text) not in self._seen

    def add(self, text: str, given: Iterable[str]) -> None:
        """Take in request text and the fingerprints of its values (see :func:`request_values`)."""
        self.given.update(given)
        if not text or not self.is_new(text):
            return
        self._seen.add(hash(text))
        room = MAX_TEXT - self._size
        if room <= 0 or len(text) > room:
            self.truncated = True
        text = text[: max(room, 0)]
        if text:
            self._parts.append(text)
            self._size += len(text)
            self._canonical_text = _SPACES.sub(" ", normalize(self.text)).casefold()

    def fingerprint_values(self, content: Any) -> list[str]:
        return sorted(fingerprints(self._key, request_values(content)))

    def _holds(self, value: Any, known: set[str] | None) -> bool:
        """Whether every leaf of ``value`` is in the request (or, with ``known``, trusted content)."""
        leaves = _leaves(value)
        if not leaves:
            return False
        for leaf in leaves:
            token = repr(leaf) if isinstance(leaf, float) else _token(normalize(leaf))
            if not token:
                continue
            if " " in token:  # a phrase: found in the request's own words
                if token in self._canonical_text:
                    continue
                return False
            fp = next(iter(fingerprints(self._key, {token})))
            if fp in self.given or (known is not None and fp in known):
                continue
            return False
        return True

    def cel_value(self, args: Mapping[str, Any], fields: frozenset[str] | None, trusted: set[str]) -> dict[str, Any]:
        """The ``request`` variable: only ``fields``, if given."""
        names = fields if fields is not None else frozenset({"text", "given", "known"})
        out: dict[str, Any] = {}
        if "text" in names:
            out["text"] = self.text
        if "given" in names:
            out["given"] = {name: self._holds(value, None) for name, value in args.items()}
        if "known" in names:
            out["known"] = {name: self._holds(value, trusted) for name, value in args.items()}
        return out
