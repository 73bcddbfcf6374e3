"""Turning arbitrary tool arguments and outputs into plain data Tether can inspect.

Plain data is what JSON can hold, plus ``bytes``: dict (str keys), list, str, int, float,
bool, None. Conditions, the audit and fingerprints all work on plain data, so every value
crosses this module once. A value Tether cannot inspect is refused rather than guessed at:
deciding on a ``repr`` would let an unreadable object slip past a condition.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import pathlib
import re
import uuid
from collections.abc import Mapping, Set
from typing import Any, Union

from .errors import UnsupportedValueError

Plain = Union[None, bool, int, float, str, bytes, list["Plain"], dict[str, "Plain"]]  # noqa: UP007 - recursive

MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_str(text: str) -> str:
    """Replace lone surrogates (undecodable bytes smuggled into ``str``) with U+FFFD.

    They cannot be encoded as UTF-8, so neither a database nor the CEL runtime accepts them.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def to_plain(value: Any, where: str = "value") -> Plain:
    """Convert ``value`` to plain data; raise :class:`UnsupportedValueError` naming ``where``."""
    try:
        return _plain(value, None, 0)
    except UnsupportedValueError:
        _plain(value, where, 0)  # again, tracking where we are, to name the culprit
        raise
    except RecursionError:  # inside a dataclass's or model's own conversion
        raise UnsupportedValueError(f"{where} is nested too deeply to inspect") from None


_SCALARS = frozenset({type(None), bool, int, float})


def _at(where: str | None, key: object) -> str | None:
    return None if where is None else f"{where}.{key}"


def _plain(value: Any, where: str | None, depth: int) -> Plain:
    """``where`` is None on the fast first pass; paths are only built to explain a failure."""
    kind = type(value)
    if kind in _SCALARS:  # the common cases first, by exact type: this runs on every call
        return value  # type: ignore[no-any-return]
    if kind is str:
        return clean_str(value)
    if depth > MAX_DEPTH:
        raise UnsupportedValueError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        return {_key(k, where): _plain(v, _at(where, k), depth + 1) for k, v in value.items()}
    if isinstance(value, (bool, int, float)):
        return value  # subclasses (IntEnum and the like) are numbers too
    if isinstance(value, str):
        return clean_str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, None if where is None else f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, (Set, frozenset)):
        items = [_plain(v, None if where is None else f"{where}[]", depth + 1) for v in value]
        return sorted(items, key=canonical_json)
    if isinstance(value, enum.Enum):
        return _plain(value.value, where, depth + 1)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return str(value)
    dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if callable(dump):
        return _plain(dump(mode="python"), where, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where, depth + 1)
    raise UnsupportedValueError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which Tether cannot "
        "inspect; pass plain data (str, numbers, lists, dicts), a dataclass or a pydantic model"
    )


def _key(key: Any, where: str | None) -> str:
    if isinstance(key, str):
        return clean_str(key)
    if isinstance(key, (int, float, bool)) or key is None:
        return json.dumps(key)
    raise UnsupportedValueError(f"{where} has a key of type {type(key).__name__}; keys must be strings")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"not plain data: {type(value).__name__}")


def canonical_json(value: Plain) -> str:
    """One stable JSON text per plain value: sorted keys, no spaces, NaN/Infinity spelled out."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(str(value))
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


class _Text(str):
    """Punctuation in :func:`as_text`'s work stack: written as is, not quoted like a value."""


_CLOSE = (_Text("]"), _Text("}"))


def as_text(value: Any) -> str:
    """``value`` as JSON-like text, however deeply nested or self-referential, without recursion:
    how Tether records and scans content it cannot convert to plain data. Never raises."""
    out: list[str] = []
    stack: list[Any] = [value]
    inside: dict[int, Any] = {}  # the containers being written (kept alive, so ids stay theirs)
    while stack:
        item = stack.pop()
        if type(item) is _Text:
            out.append(item)
            if item in _CLOSE:
                inside.popitem()
        elif isinstance(item, str):
            out.append(json.dumps(clean_str(item), ensure_ascii=False))
        elif item is None or isinstance(item, (bool, int, float)):
            out.append(json.dumps(item))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append(f"<{len(item)} bytes>")
        else:
            container = item if isinstance(item, (Mapping, list, tuple, Set)) else _fields(item)
            if container is None:
                out.append(_leaf_text(item))
            elif id(item) in inside:
                out.append("[...]")
            elif (parts := _parts(container)) is None:
                out.append(f"<unreadable {type(item).__name__}>")
            else:
                inside[id(item)] = item
                stack.extend(reversed(parts))
    return "".join(out)


def _fields(item: Any) -> dict[str, Any] | None:
    """A dataclass's or pydantic model's fields, one level deep (their own conversions recurse)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name, None) for f in dataclasses.fields(item)}
    if callable(getattr(item, "model_dump", None)) and isinstance(getattr(type(item), "model_fields", None), dict):
        return {name: getattr(item, name, None) for name in type(item).model_fields}
    return None


def _parts(container: Any) -> list[Any] | None:
    """A container's opening, items and separators, and its closing, in writing order (None if
    it cannot be iterated)."""
    mapping = isinstance(container, Mapping)
    try:
        items = list(container.items()) if mapping else [(None, v) for v in container]
    except Exception:  # noqa: BLE001 - shown as unreadable rather than losing the event
        return None
    parts: list[Any] = [_Text("{" if mapping else "[")]
    for i, (name, item) in enumerate(items):
        if i:
            parts.append(_Text(", "))
        if mapping:
            parts.append(_Text(json.dumps(_leaf_text(name), ensure_ascii=False) + ": "))
        parts.append(item)
    parts.append(_CLOSE[mapping])
    return parts


def _leaf_text(item: Any) -> str:
    try:
        return clean_str(item if isinstance(item, str) else str(item))
    except Exception:  # noqa: BLE001 - a str() that recurses or fails must not lose the event
        return f"<unreadable {type(item).__name__}>"
