"""The session's trusted request: what the people an agent serves asked of it.

The user's messages, the system prompt and :meth:`Session.trusted_input` are the request; trusted
tools' outputs are what the agent may rightly know besides. Policy conditions see both as the
``request`` variable, so a rule can ask whether a call is one the request implies:

- ``request.given.<arg>``: every value of that argument is one the user or system gave;
- ``request.known.<arg>``: ... or one a trusted tool returned (a contact list, the user's IBAN);
- ``request.mentions.<word>``: the request has a word that starts with it
  (``request.mentions.pay`` holds for "pay", "payment", "paying"), to ask whether it asks for
  an action;
- ``request.text``: the request's text, for anything else (``request.text.matches(...)``).

Values are compared by keyed fingerprint (the session keeps no raw value); the text is kept in
memory only, bounded, for conditions to read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .classify import normalize
from .keys import fingerprint
from .provenance import _canonical, content_values, fingerprints, strings

MAX_TEXT = 64 * 1024  # characters of request text conditions and planners see
MAX_TOKENS = 20_000  # distinct values one input contributes
_WORD = re.compile(r"[^\s,;:!?()\[\]{}<>\"'`]+")
_MENTION_WORD = re.compile(r"\w+")
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
        self._text = ""
        self._memo: dict[tuple[str | float, bool], bool] = {}  # (leaf, known?) -> found
        self._memo_trusted = 0  # how many trusted values the memo's answers saw
        self._words: frozenset[str] | None = None  # the request's words, found on first use
        self._mentioned: dict[str, bool] = {}

    @property
    def text(self) -> str:
        return self._text

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
            self._text = "\n".join(self._parts)
            self._canonical_text = _SPACES.sub(" ", normalize(self._text)).casefold()
        self._memo.clear()
        self._words = None
        self._mentioned.clear()

    def fingerprint_values(self, content: Any) -> list[str]:
        return sorted(fingerprints(self._key, request_values(content)))

    def _holds(self, value: Any, known: set[str] | None) -> bool:
        """Whether every leaf of ``value`` is in the request (or, with ``known``, trusted content)."""
        leaves = _leaves(value)
        if not leaves:
            return False
        if known is not None and len(known) != self._memo_trusted:  # trusted content arrived since
            self._memo.clear()
            self._memo_trusted = len(known)
        for leaf in leaves:
            key = (leaf, known is not None)
            found = self._memo.get(key)
            if found is None:
                found = self._memo[key] = self._leaf_holds(leaf, known)
                if len(self._memo) > 4096:
                    self._memo.clear()
            if not found:
                return False
        return True

    def _leaf_holds(self, leaf: str | float, known: set[str] | None) -> bool:
        token = repr(leaf) if isinstance(leaf, float) else _token(normalize(leaf))
        if not token:
            return True  # an empty string gives nothing away
        if " " in token:  # a phrase: found in the request's own words
            return token in self._canonical_text
        fp = fingerprint(self._key, token.encode("utf-8", "surrogatepass"))
        return fp in self.given or (known is not None and fp in known)

    def cel_value(
        self,
        args: Mapping[str, Any],
        fields: frozenset[str] | None,
        trusted: set[str],
        read: frozenset[str] | None = None,
        mentions: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """The ``request`` variable: only ``fields``, if given, of ``given``/``known`` only the
        arguments ``read`` (None: every argument), and of ``mentions`` the words asked about."""
        names = fields if fields is not None else frozenset({"text", "given", "known", "mentions"})
        chosen = args if read is None else {name: args[name] for name in read if name in args}
        out: dict[str, Any] = {}
        if "text" in names:
            out["text"] = self.text
        if "given" in names:
            out["given"] = {name: self._holds(value, None) for name, value in chosen.items()}
        if "known" in names:
            out["known"] = {name: self._holds(value, trusted) for name, value in chosen.items()}
        if "mentions" in names:
            out["mentions"] = {word: self.mentions(word) for word in mentions}
        return out

    def mentions(self, word: str) -> bool:
        """Whether a word of the request starts with ``word`` (case does not matter)."""
        found = self._mentioned.get(word)
        if found is None:
            if self._words is None:
                self._words = frozenset(_MENTION_WORD.findall(self._canonical_text))
            prefix = word.casefold()
            found = self._mentioned[word] = any(w.startswith(prefix) for w in self._words)
        return found
