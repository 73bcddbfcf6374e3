"""Scanning an MCP tool's definition before an agent sees it ("tool poisoning").

A definition is text the model reads as if its operator wrote it. What does not belong there:
instructions addressed to the model (the same detector that flags injected tool output), text
hidden from the person reading it (format and private-use characters: zero-width, bidi, tags),
secrets, and references to the server's other tools (a description that rewrites how another
tool is used shadows it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from ..classify import Classifier
from ..provenance import reads_like_instructions, strings

_HIDDEN_CATEGORIES = frozenset({"Cf", "Co", "Cc"})
_ALLOWED_CONTROLS = frozenset("\n\r\t")


def definition(tool: Any) -> dict[str, Any]:
    """What a pin covers: everything the model reads about the tool, or that shapes its calls."""
    dumped: dict[str, Any] = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    keys = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    return {k: dumped[k] for k in keys if k in dumped}


def scan(defined: dict[str, Any], others: Iterable[str], classifier: Classifier) -> list[str]:
    """What is wrong with a tool definition, as findings (empty: nothing found)."""
    texts = [t for t in strings(defined, keys=True) if t]
    findings = []
    if any(reads_like_instructions(t) for t in texts):
        findings.append("its definition reads like instructions to the model")
    hidden = sorted({f"U+{ord(c):04X}" for t in texts for c in t if _hidden(c)})
    if hidden:
        findings.append(f"its definition hides characters from people reading it ({', '.join(hidden[:5])})")
    labels = {f.label for t in texts for f in classifier.scan(t)}
    if "secret" in labels:
        findings.append("its definition carries a secret")
    name = defined.get("name", "")
    words = set(re.findall(r"[A-Za-z0-9_.-]+", " ".join(t for t in texts if t != name)))
    named = sorted(o for o in others if o != name and o in words and ("_" in o or "-" in o or "." in o))
    if named:
        findings.append(f"its definition refers to other tools of the server ({', '.join(named[:5])})")
    return findings


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN_CATEGORIES and char not in _ALLOWED_CONTROLS
