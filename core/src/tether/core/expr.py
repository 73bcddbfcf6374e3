"""Policy conditions in CEL, the Common Expression Language.

A condition is compiled once, when the policy loads, and evaluated on every call it can apply
to. Two runtimes speak the same language: Google's C++ CEL through ``cel-expr-python`` where it
ships wheels (Python 3.11+), and the pure-Python ``cel-python`` on Python 3.10. Tether checks
the names a condition uses itself, so both runtimes reject the same typos with the same message.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import TetherError

#: Variables a condition can use, and the fields of the structured ones.
FIELDS: dict[str, frozenset[str] | None] = {
    "args": None,  # the call's arguments: any field
    "tool": frozenset({"name", "effects", "output", "data"}),
    "agent": frozenset({"name", "purpose", "owner", "data"}),
    "session": frozenset({"id", "user", "tenant", "calls", "tool_calls", "tainted", "tainted_by", "labels"}),
    "now": None,  # a timestamp
    "request": frozenset({"text", "given", "known", "mentions"}),  # the session's trusted request (request.py)
}
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_KEYWORDS = frozenset({"true", "false", "null", "in"})
_TOKEN = re.compile(
    r"""(?P<str>[rRbB]{0,2}(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))"""
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>\d[\w.]*)|(?P<punct>\S)",
    re.DOTALL,
)


class ConditionError(TetherError):
    """A condition that does not compile or refers to something that does not exist."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


class ConditionFailed(TetherError):
    """A condition raised while being evaluated (missing argument, wrong type, ...)."""

    def __init__(self, message: str) -> None:
        missing = _MISSING_KEY.search(message)
        super().__init__(
            f"no field '{missing.group(1)}' in the data it reads (use has() to test for it)" if missing else message
        )


_MISSING_KEY = re.compile(r"""(?:Key not found in map : |no such member in mapping: )["']([^"']*)["']""")


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class Names:
    """What a condition refers to, found without running it."""

    #: each variable it reads, with the fields read as ``variable.field``; None when the
    #: variable is used whole (``args["x"]``, ``args.size()``, ``now``...)
    fields: dict[str, frozenset[str] | None]
    #: tool names read as ``session.tool_calls["x"]`` or ``session.tool_calls.x``
    tool_names: frozenset[str] = field(default_factory=frozenset)
    #: arguments read as ``request.given.x`` or ``request.known.x`` (None: read by a computed key)
    request_args: frozenset[str] | None = field(default_factory=frozenset)
    #: words read as ``request.mentions.x``
    mentions: frozenset[str] = field(default_factory=frozenset)

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(self.fields)


def merge_fields(many: list[dict[str, frozenset[str] | None]]) -> dict[str, frozenset[str] | None]:
    """The fields several conditions read together (None, whole, wins)."""
    merged: dict[str, frozenset[str] | None] = {}
    for fields in many:
        for name, used in fields.items():
            if name in merged:
                before = merged[name]
                merged[name] = None if before is None or used is None else before | used
            else:
                merged[name] = used
    return merged


def _tokens(source: str) -> list[_Token]:
    return [_Token(m.lastgroup or "", m.group(), m.start()) for m in _TOKEN.finditer(source)]


def scan_names(source: str) -> Names:
    """Check the names ``source`` uses; raise :class:`ConditionError` at the first unknown one."""
    tokens = _tokens(source)
    bound = {
        tokens[i + 2].text
        for i in range(len(tokens) - 2)
        if tokens[i].text in _MACROS and tokens[i + 1].text == "(" and tokens[i + 2].kind == "ident"
    }
    fields: dict[str, frozenset[str] | None] = {}
    tool_names: set[str] = set()
    request_args: set[str] | None = set()
    mentions: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok.kind != "ident" or tok.text in _KEYWORDS or tok.text in bound:
            continue
        after_dot = i > 0 and tokens[i - 1].text == "."
        is_call = i + 1 < len(tokens) and tokens[i + 1].text == "("
        if after_dot or is_call:
            continue
        if tok.text not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise ConditionError(f"unknown name '{tok.text}' (known: {known})", tok.pos + 1)
        member = _member(tokens, i)
        allowed = FIELDS[tok.text]
        if member is not None and allowed is not None and member.text not in allowed:
            raise ConditionError(
                f"'{tok.text}' has no field '{member.text}' (fields: {', '.join(sorted(allowed))})",
                member.pos + 1,
            )
        used = None if member is None else frozenset({member.text})
        fields = merge_fields([fields, {tok.text: used}])
        if tok.text == "session" and member is not None and member.text == "tool_calls":
            tool_names.update(_indexed_names(tokens, i + 2))
        if tok.text == "request" and member is not None and member.text in ("given", "known"):
            named = _indexed_names(tokens, i + 2)
            request_args = None if request_args is None or not named else request_args | set(named)
        if tok.text == "request" and member is not None and member.text == "mentions":
            words = _indexed_names(tokens, i + 2)
            if not words:
                raise ConditionError("request.mentions needs a word: request.mentions.pay", member.pos + 1)
            mentions.update(words)
    args = None if request_args is None else frozenset(request_args)
    return Names(fields, frozenset(tool_names), args, frozenset(mentions))


def merge_request_args(many: list[frozenset[str] | None]) -> frozenset[str] | None:
    """The arguments several conditions read through ``request.given``/``request.known``."""
    merged: frozenset[str] = frozenset()
    for names in many:
        if names is None:
            return None
        merged |= names
    return merged


def _member(tokens: list[_Token], i: int) -> _Token | None:
    """The ``name`` in ``variable.name`` (not a method call such as ``variable.size()``)."""
    is_field = i + 2 < len(tokens) and tokens[i + 1].text == "." and tokens[i + 2].kind == "ident"
    is_method = i + 3 < len(tokens) and tokens[i + 3].text == "("
    return tokens[i + 2] if is_field and not is_method else None


def _indexed_names(tokens: list[_Token], i: int) -> list[str]:
    """Names after ``tool_calls`` at ``tokens[i]``: ``["x"]`` or ``.x``."""
    rest = tokens[i + 1 : i + 4]
    if len(rest) == 3 and rest[0].text == "[" and rest[1].kind == "str" and rest[2].text == "]":
        return [rest[1].text.lstrip("rRbB")[1:-1]]
    is_method = len(rest) == 3 and rest[2].text == "("
    if len(rest) >= 2 and rest[0].text == "." and rest[1].kind == "ident" and not is_method:
        return [rest[1].text]
    return []


class _GoogleCel:
    """Google's CEL (C++) through ``cel-expr-python``."""

    name = "cel-expr-python"

    def __init__(self) -> None:
        from cel_expr_python import cel

        dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
        variables = {name: dyn_map for name in FIELDS}
        variables["now"] = cel.Type.TIMESTAMP
        self._cel = cel
        self._env = cel.NewEnv(variables=variables)

    def compile(self, source: str) -> Any:
        try:
            program = self._env.compile(source)
        except RuntimeError as exc:
            raise _compile_error(str(exc)) from None
        returns = program.return_type()
        if returns not in (self._cel.Type.BOOL, self._cel.Type.DYN):
            raise ConditionError(f"a condition must be true or false, this one is {returns.name()}")
        return program

    def activation(self, variables: dict[str, Any]) -> Any:
        if _has_nul_bytes(variables):
            raise ConditionFailed(_NUL_MESSAGE)
        try:
            return self._env.Activation(variables)
        except (RuntimeError, ValueError, TypeError, UnicodeError) as exc:
            raise ConditionFailed(f"cannot pass these values to CEL: {_runtime_message(str(exc))}") from None

    def run(self, program: Any, activation: Any) -> Any:
        """Run with an activation, or straight from a dict of variables (cheaper for one condition)."""
        if type(activation) is dict and _has_nul_bytes(activation):
            raise ConditionFailed(_NUL_MESSAGE)
        try:
            result = program.eval(data=activation) if type(activation) is dict else program.eval(activation)
        except (RuntimeError, ValueError, TypeError, UnicodeError) as exc:
            raise ConditionFailed(_runtime_message(str(exc))) from None
        value = result.value()
        if value is not True and value is not False and result.type() == self._cel.Type.ERROR:
            raise ConditionFailed(_runtime_message(str(value)))
        return value


_STATUS = re.compile(r"^(?:[A-Z_]+: )+|\s*\[[A-Z_]+\]$")
#: what the C++ runtime's own messages mean, said without the values they quote
_RUNTIME_MESSAGES = (
    (re.compile(r"Iteration budget exceeded"), "it loops over more elements than CEL's iteration budget allows"),
    (re.compile(r"Integer value .* out of range"), "an integer in the data it reads is outside CEL's 64-bit range"),
    (re.compile(r"Non-CEL value type .*: (\w+)\.?$"), "a value of type {0} cannot be passed to CEL"),
)


def _runtime_message(text: str) -> str:
    """The C++ runtime's error as a person reads it: status codes dropped, known errors named."""
    text = _STATUS.sub("", text.strip())
    for pattern, meaning in _RUNTIME_MESSAGES:
        found = pattern.search(text)
        if found:
            return meaning.format(*found.groups())
    return text


# cel-expr-python 0.1 cuts bytes at the first NUL, so a condition would see different data than
# the tool gets: refuse rather than decide on it.
_NUL_MESSAGE = "binary values containing NUL bytes cannot be checked by this CEL runtime"


def _has_nul_bytes(value: Any) -> bool:
    stack = [value]  # no recursion and no generators: this runs on every evaluation
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is bytes and b"\x00" in item:
            return True
        elif kind not in _LEAVES and isinstance(item, (bytes, dict, list)):  # subclasses
            if isinstance(item, bytes):
                if b"\x00" in item:
                    return True
            else:
                stack.extend(item.values() if isinstance(item, dict) else item)
    return False


_LEAVES = frozenset({str, int, float, bool, type(None), bytes, dt.datetime})


class _Converted(dict[str, Any]):
    """Variables already converted to cel-python's types (so never converted twice)."""


class _PureCel:
    """The pure-Python ``cel-python`` (Python 3.10, where no compiled runtime ships)."""

    name = "cel-python"

    def __init__(self) -> None:
        import celpy

        self._celpy = celpy
        self._env = celpy.Environment()

    def compile(self, source: str) -> Any:
        try:
            return self._env.program(self._env.compile(source))
        except self._celpy.CELParseError as exc:
            raise ConditionError("syntax error", getattr(exc, "column", None)) from None

    def activation(self, variables: dict[str, Any]) -> Any:
        try:
            return _Converted({name: self._convert(value) for name, value in variables.items()})
        except (ValueError, TypeError) as exc:
            raise ConditionFailed(f"cannot pass these values to CEL: {exc}") from None

    def _convert(self, value: Any) -> Any:
        types = self._celpy.celtypes
        if isinstance(value, dict):
            return types.MapType({types.StringType(k): self._convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return types.ListType([self._convert(v) for v in value])
        if isinstance(value, bytes):
            return types.BytesType(value)
        if isinstance(value, dt.datetime):
            return types.TimestampType(value)
        return self._celpy.json_to_cel(value)

    def run(self, program: Any, activation: Any) -> Any:
        if type(activation) is dict:
            activation = self.activation(activation)
        try:
            result = program.evaluate(activation)
        except self._celpy.CELEvalError as exc:
            raise ConditionFailed(str(exc.args[0] if exc.args else exc)) from None
        if isinstance(result, self._celpy.CELEvalError):
            raise ConditionFailed(str(result.args[0] if result.args else result))
        if isinstance(result, self._celpy.celtypes.BoolType):
            return bool(result)
        return result


def _compile_error(text: str) -> ConditionError:
    match = re.search(r"<input>:\d+:(\d+): (.*?)(?:\n|$)", text)
    if match:
        return ConditionError(match.group(2).strip(), int(match.group(1)))
    first = text.strip().splitlines()[0] if text.strip() else "syntax error"
    return ConditionError(first)


def _make_engine() -> _GoogleCel | _PureCel:
    if sys.version_info >= (3, 11):
        return _GoogleCel()
    return _PureCel()


_engine: _GoogleCel | _PureCel | None = None


def engine() -> _GoogleCel | _PureCel:
    """The CEL runtime for this interpreter, loaded on first use."""
    global _engine
    if _engine is None:
        _engine = _make_engine()
    return _engine


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled condition. Evaluate it through :func:`evaluate_all` with one shared activation."""

    source: str
    names: Names
    program: Any = field(repr=False)


def compile_condition(source: str) -> Condition:
    """Compile ``source``; raise :class:`ConditionError` (with a 1-based column when known)."""
    if not source.strip():
        raise ConditionError("a condition cannot be empty")
    names = scan_names(source)
    return Condition(source, names, engine().compile(source))


def make_activation(variables: dict[str, Any]) -> Any:
    """Bind variables once per call, to be shared by every condition evaluated for it."""
    return engine().activation(variables)


def evaluate(condition: Condition, activation: Any) -> bool:
    """Run ``condition`` on an activation or a dict of variables; it must produce a boolean.

    Raise :class:`ConditionFailed` otherwise."""
    result = engine().run(condition.program, activation)
    if not isinstance(result, bool):
        raise ConditionFailed(f"condition produced {type(result).__name__} {result!r}, not true/false")
    return result


def select(value: Mapping[str, Any], fields: frozenset[str] | None) -> Mapping[str, Any]:
    """Only the arguments the conditions read (an unread 10 MB argument then costs nothing).
    Raise :class:`ConditionFailed` if one holds what no condition can read as it is meant:
    every comparison with NaN is false (so ``x > 50`` and ``!(x > 50)`` both pass it),
    infinities satisfy any bound, and the compiled runtime reads a string only up to a NUL
    character (so ``!args.cmd.contains("rm")`` would hold for ``"ls\\0; rm -rf /"``)."""
    chosen = value if fields is None else {name: value[name] for name in fields if name in value}
    for name, argument in chosen.items():
        why = _unreadable(f"args.{name}", argument)
        if why is not None:
            raise ConditionFailed(f"{why}, so no condition can be checked against it")
    return chosen


def _unreadable(path: str, value: Any) -> str | None:
    """What in ``value`` (at any depth, keys included) a condition cannot read, and where."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{path} ({item}) is not a finite number"
        if isinstance(item, str) and "\0" in item:
            return f"{path} contains a NUL character"
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
            stack.extend((f"{path} (a key)", k) for k in item)
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return None
