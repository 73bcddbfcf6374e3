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
