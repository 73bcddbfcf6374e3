"""Small helpers for the text Tether prints."""

from __future__ import annotations

import re
from collections.abc import Iterable


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 agent", "0 agents", "2 agents"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def unnamed(rule_ids: Iterable[str], text: str) -> list[str]:
    """The rules of ``rule_ids`` that ``text`` does not already name (as a whole id, not a prefix
    of a longer one), to name after it without saying any rule twice."""
    return [rule for rule in rule_ids if not re.search(rf"(?<![\w.-]){re.escape(rule)}(?![\w-]|\.[\w-])", text)]


def cut(text: str, width: int) -> str:
    """``text``, cut to ``width`` characters, ending in "…" where it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"
