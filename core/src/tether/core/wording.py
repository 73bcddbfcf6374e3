"""Small helpers for the text Tether prints."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 agent", "0 agents", "2 agents"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
