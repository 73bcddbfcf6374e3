"""Where the values an action uses came from.

A prompt injection steers an agent by putting a value in front of it (an IBAN, an address, a
URL) and an instruction to use it. So before a risky call Tether asks of each argument value:
was it seen in untrusted content (a web page, an email, a document), and in nothing trusted (the
user's request, the system prompt, a trusted tool's output)? Values are compared by keyed
fingerprint, so the session index (and the audit it is rebuilt from) holds no raw value.

Untrusted content that reads like instructions to the agent is flagged too: it is the other
half of an injection, and catches one whose values the index cannot see (a file id, say).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .classify import compile_pattern, normalize
from .keys import fingerprint

#: values worth tracing: addresses, links and domains, account numbers, long numbers, paths
_VALUES = compile_pattern(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
    r"|(?:https?://)?(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?:/[^\s\"'<>()\[\]{},]*)?"
    r"|\b[A-Z]{2}\d{2}[A-Z0-9]{8,30}\b"
    r"|\+?\d[\d -]{4,}\d"
    r"|(?:/[\w.-]+){2,}"
)
_TOKEN_MAX = 200  # an argument longer than this is traced through the values inside it only
#: dates and times name no destination or account: tracing them would only flag ordinary scheduling
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?")

#: phrases by which injected text addresses the agent rather than the reader
_INSTRUCTIONS = compile_pattern(
    (
        r"(?i)ignore (?:all |any )?(?:of )?(?:the |your |my )?(?:previous|prior|above|earlier)\b"
        r"|disregard (?:all |any )?(?:the )?(?:previous|prior|above|earlier|your)"
        r"|</?(?:information|instructions?|system|important)>"
        r"|(?:important|new|updated|additional) (?:message|instructions?)\b"
        r"|before you (?:can )?(?:solve|complete|continue|finish|answer|do)"
        r"|(?:you|the (?:ai|assistant|agent|model)) (?:must|should|need to) (?:now |first |also )?"
        r"(?:send|transfer|forward|email|pay|delete|post|share|upload|change|update|create|invite)"
        r"|\b(?:ai|assistant|agent|chatbot|model|llm)[,:] (?:please )?"
        r"(?:send|transfer|forward|email|pay|delete|post|share|upload|change|update|create|invite|ignore)"
        r"|do not (?:tell|inform|mention|notify|alert) (?:this to )?the user"
        r"|TODO: (?:send|transfer|forward|email|pay|delete|post|share|upload|change|update|create|invite)"
    ).replace(" ", r"\s+")  # text is often wrapped: any run of spaces or line breaks
)

_SPACES = re.compile(r"\s+")


def strings(value: Any, *, keys: bool = False) -> Iterator[str]:
    """Every string in a plain value, depth first; mapping keys too if ``keys``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
            if keys:
                stack.extend(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _canonical(value: str) -> str:
    return _SPACES.sub(" ", value.strip().strip(".,;:!?\"'")).casefold()


def values_in(text: str) -> set[str]:
    """The traceable values in ``text``, canonicalised (case and spacing do not matter)."""
    text = normalize(text)
    found = {_canonical(m.group()) for m in _VALUES.finditer(text)} if text else set()
    for value in list(found):
        if "://" in value:  # a link also carries its domain
            found.add(value.split("://", 1)[1].split("/", 1)[0])
    return {v for v in found if len(v) >= 5 and not _DATE.fullmatch(v)}


def argument_values(args: Any) -> dict[str, str]:
    """Each traceable value of a call's arguments -> the argument text it came from."""
    out: dict[str, str] = {}
    for text in strings(args):
        for value in values_in(text):
            out.setdefault(value, text)
        whole = _canonical(normalize(text))
        if 5 <= len(whole) <= _TOKEN_MAX and " " not in whole and not _DATE.fullmatch(whole):  # an id, a code
            out.setdefault(whole, text)
    return out


def content_values(content: Any) -> set[str]:
    """The traceable values in content an agent reads: each string, and the values inside it."""
    out: set[str] = set()
    for text in strings(content):
        out |= values_in(text)
        whole = _canonical(normalize(text))
        if 5 <= len(whole) <= _TOKEN_MAX and " " not in whole:
            out.add(whole)
    return out


def fingerprints(key: bytes, values: set[str] | dict[str, str]) -> dict[str, str]:
    """Keyed fingerprint -> value."""
    return {fingerprint(key, v.encode("utf-8", "surrogatepass")): v for v in values}


def reads_like_instructions(content: Any) -> bool:
    """Whether text in ``content`` addresses the agent with instructions (an injection's tell)."""
    return any(_INSTRUCTIONS.search(normalize(text)) for text in strings(content, keys=True) if len(text) >= 20)


_TRUSTED_ROLES = frozenset({"system", "developer", "user", "human"})


def trusted_parts(messages: Any) -> Iterator[Any]:
    """The content of the messages a model is sent on behalf of the people it serves: system and
    user messages (dicts with a ``role``, or message objects with a ``role``/``type``)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        return
    for message in messages:
        if isinstance(message, dict):
            role, content = message.get("role"), message.get("content")
        else:
            role = getattr(message, "role", None) or getattr(message, "type", None)
            content = getattr(message, "content", None)
        if isinstance(role, str) and role.lower() in _TRUSTED_ROLES and content:
            yield content
