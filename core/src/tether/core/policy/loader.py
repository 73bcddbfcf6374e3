"""Reading a policy from YAML, with every error pointing at file, line and key."""

from __future__ import annotations

import copy
import difflib
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import PolicyError, PolicyIssue
from .schema import DataClass, Policy, Rule, SequenceRule

KeyPath = tuple[Any, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


class Source:
    """Where each key and value of a policy document starts, to locate problems in it."""

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self.values: dict[KeyPath, tuple[int, int]] = {}
        self.keys: dict[KeyPath, tuple[int, int]] = {}
        #: the parts (as key paths) that did not fit the schema and were replaced by a stand-in
        #: while the rest was checked: problems found in a stand-in are not the user's
        self.stand_ins: set[str] = set()

    def issue(self, path: KeyPath, message: str, *, at_key: bool = False) -> PolicyIssue:
        """An issue at ``path``: its value, or its key (``at_key``); else its nearest parent key."""
        place = self.keys.get(path) if at_key else self.values.get(path)
        for depth in range(len(path) - 1, -1, -1):
            if place is not None:
                break
            place = self.keys.get(path[:depth]) or self.values.get(path[:depth])
        line, column = place or (None, None)
        return PolicyIssue(message, format_path(path), self.file, line, column)


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        text = str(part)
        if isinstance(part, int):
            out += f"[{part}]"
        elif text.replace("_", "").replace("-", "").isalnum():
            out += ("." if out else "") + text
        else:
            out += f"[{text!r}]"
    return out


def read_policy(source: str | os.PathLike[str] | Mapping[str, Any] | Policy) -> tuple[Policy, Source]:
    """A validated policy from a file path, a mapping or a :class:`Policy`, with its source map."""
    if isinstance(source, Policy):
        return source, Source()
    if isinstance(source, Mapping):
        where = Source()
        return _validate(dict(source), where), where
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyIssue("policy file not found", file=str(path))]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError([PolicyIssue(f"not UTF-8 text ({exc.reason})", file=str(path))]) from None
    return parse_policy(text, str(path))


def parse_policy(text: str, file: str | None = None) -> tuple[Policy, Source]:
    """A validated policy from YAML text."""
    data, where, duplicates = _parse_yaml(text, file)
    return _validate(data, where, duplicates), where


def _parse_yaml(
    text: str,
    file: str | None,
    what: str = "policy",
    shape: str = "a policy must be a mapping (version, tools, agents, rules)",
) -> tuple[dict[str, Any], Source, list[PolicyIssue]]:
    """The document's data, its source map and its duplicate keys (reported with the rest: the
    data keeps the last value of each)."""
    where = Source(file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError([PolicyIssue(f"the {what} is empty", file=file)])
        duplicates: list[PolicyIssue] = []
        _index(node, (), where, duplicates)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise PolicyError([PolicyIssue(f"malformed YAML: {problem}", "", file, line, column)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyIssue(f"malformed YAML: {exc}", file=file)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise PolicyError([where.issue((), shape)])
    return data, where, duplicates


def _index(node: yaml.Node, path: KeyPath, where: Source, duplicates: list[PolicyIssue]) -> None:
    where.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            if key in seen:
                mark = key_node.start_mark
                duplicates.append(
                    PolicyIssue(
                        f"duplicate key {key!r}: the second would silently replace the first",
                        format_path((*path, key)),
                        where.file,
                        mark.line + 1,
                        mark.column + 1,
                    )
                )
            seen.add(key)
            where.keys[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _index(value_node, path + (key,), where, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), where, duplicates)


def _validate(data: dict[str, Any], where: Source, found: list[PolicyIssue] | None = None) -> Policy:
    """The policy in ``data``; problems ``found`` before (duplicate keys) are raised with the
    schema's, and what is valid is still checked (references, conditions) by the caller, from
    the error's ``partial``, so one run reports every problem."""
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        error = PolicyError(_sorted([*(found or []), *_issues(exc, data, where)]))
        error.partial = _valid_part(data, exc, where), where
        raise error from None
    if found:
        error = PolicyError(_sorted(found))
        error.partial = policy, where
        raise error
    return policy


def _sorted(issues: list[PolicyIssue]) -> list[PolicyIssue]:
    return sorted(issues, key=lambda i: (i.line or 0, i.column or 0))


def parse_document(
    text: str, file: str | None, model: type[ModelT], what: str, shape: str
) -> tuple[ModelT, dict[str, Any], Source]:
    """A YAML document validated against ``model``, with errors located as a policy's are (file,
    line, key): for files that live beside a policy, such as its tests. Returns the validated
    model, the raw data and the source map."""
    data, where, duplicates = _parse_yaml(text, file, what, shape)
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_sorted([*duplicates, *_issues(exc, data, where, model)])) from None
    if duplicates:
        raise PolicyError(duplicates)
    return validated, data, where


def _issues(
    exc: ValidationError, data: dict[str, Any], where: Source, root: type[BaseModel] = Policy
) -> list[PolicyIssue]:
    messages: dict[KeyPath, list[str]] = {}
    at_key: set[KeyPath] = set()
    got: dict[KeyPath, str] = {}
    for err in exc.errors():
        path = _data_path(err["loc"], data)
        text = _message(err, path, root)
        if text not in messages.setdefault(path, []):
            messages[path].append(text)
        if err["type"] in ("extra_forbidden", "missing") or "[key]" in err["loc"]:
            at_key.add(path)
        value = err.get("input")
        if err["type"] not in ("value_error", "missing", "extra_forbidden") and _scalar(value):
            got[path] = f" (got {value!r})"
    issues = [
        where.issue(path, " or ".join(texts) + got.get(path, ""), at_key=path in at_key)
        for path, texts in messages.items()
    ]
    issues.sort(key=lambda i: (i.line or 0, i.column or 0))
    return issues


def _valid_part(data: dict[str, Any], exc: ValidationError, where: Source) -> Policy | None:
    """The policy with each invalid part replaced by a neutral stand-in (an unknown key dropped,
    a missing name filled in, a broken rule made inert), or None if that does not validate.
    Stand-ins keep every name and every list position, so what is checked next reports only
    problems that are really there, at their own lines."""
    data = copy.deepcopy(data)
    for _ in range(8):
        for err in exc.errors():
            if not _stand_in(data, _data_path(err["loc"], data), where):
                return None
        try:
            return Policy.model_validate(data)
        except ValidationError as again:
            exc = again
    return None


_OPTIONAL_IN_RULE = ("agents", "tools", "effects", "when", "redact", "approvers", "approve_for_session")


def _stand_in(data: dict[str, Any], path: KeyPath, where: Source) -> bool:
    """Make the part of ``data`` at ``path`` valid without changing what else it says."""
    if not path:
        return False
    section, rest = path[0], path[1:]
    if section == "version":
        data["version"] = 1
    elif section in ("tools", "agents", "classes") and rest and isinstance(data.get(section), dict):
        entries = data[section]
        if section == "tools":
            _drop_or_reset(entries, rest, {})
        elif section == "classes":
            entries.pop(rest[0], None)
            if _valid_class_name(rest[0]):  # keep it, for what refers to it
                entries[rest[0]] = {"patterns": ["tether-invalid-class"]}
                where.stand_ins.add(format_path(("classes", rest[0])))
        elif len(rest) >= 3 and rest[1] == "tools" and isinstance((entries.get(rest[0]) or {}).get("tools"), dict):
            _drop_or_reset(entries[rest[0]]["tools"], rest[2:], {})  # a grant
        elif len(rest) >= 2 and isinstance(entries.get(rest[0]), dict):
            agent = entries[rest[0]]
            if rest[1] in ("purpose", "owner"):
                agent[rest[1]] = "?"
            else:
                agent.pop(rest[1], None)
        else:
            entries[rest[0]] = {"purpose": "?", "owner": "?"}
    elif section == "rules" and rest and isinstance(data.get("rules"), list) and isinstance(rest[0], int):
        rules, index = data["rules"], rest[0]
        rule = rules[index] if isinstance(rules[index], dict) else {}
        key = rest[1] if len(rest) > 1 else None
        if key == "reason":
            rule["reason"] = "?"
        elif key == "id":
            rule["id"] = f"tether:invalid:{index}"
        elif key == "action":
            rule["action"] = "redact" if rule.get("redact") else "ask" if "approvers" in rule else "deny"
        elif key in _OPTIONAL_IN_RULE or (key is not None and key not in Rule.model_fields):
            rule.pop(key, None)
        else:  # the rule as a whole is wrong: keep its place, make it select nothing
            rule = {"id": f"tether:invalid:{index}", "reason": "?", "action": "allow", "tools": []}
        rules[index] = rule
    elif section == "sequences" and rest and isinstance(data.get("sequences"), list) and isinstance(rest[0], int):
        sequences, index = data["sequences"], rest[0]
        sequence = sequences[index] if isinstance(sequences[index], dict) else {}
        key = rest[1] if len(rest) > 1 else None
        if key == "reason":
            sequence["reason"] = "?"
        elif key == "id":
            sequence["id"] = f"tether:invalid-sequence:{index}"
        elif key == "action":
            sequence["action"] = "redact" if sequence.get("redact") else "deny"
        elif key == "redact" or (key is not None and key not in SequenceRule.model_fields):
            sequence.pop(key, None)
        else:  # its pattern or the sequence as a whole is wrong: keep its place, check none of it
            sequence = {"id": f"tether:invalid-sequence:{index}", "reason": "?", "action": "deny"}
            sequence["after"] = [{"findings": []}]
            where.stand_ins.add(format_path(("sequences", index)))
        sequences[index] = sequence
    elif section == "approvals" and len(rest) >= 2 and rest[0] == "groups" and isinstance(data.get("approvals"), dict):
        groups = data["approvals"].get("groups")
        if not isinstance(groups, dict):
            return False
        groups[rest[1]] = []
    elif isinstance(data.get(section), dict) and rest:
        data[section].pop(rest[0], None)  # approvals, protections: every key has a default
    else:
        data.pop(section, None)
    return True


def _valid_class_name(name: Any) -> bool:
    try:
        _CLASS_NAME.validate_python(name)
    except ValidationError:
        return False
    return True


_CLASS_NAME: TypeAdapter[str] = TypeAdapter(DataClass)


def _drop_or_reset(entries: dict[str, Any], rest: KeyPath, empty: dict[str, Any]) -> None:
    """Drop the bad key of an entry whose keys are all optional, or reset the entry itself."""
    entry = entries.get(rest[0])
    if len(rest) >= 2 and isinstance(entry, dict):
        entry.pop(rest[1], None)
    else:
        entries[rest[0]] = dict(empty)


def _scalar(value: Any) -> bool:
    return value is not None and not isinstance(value, (dict, list))


def _data_path(loc: tuple[Any, ...], data: Any) -> KeyPath:
    """The part of pydantic's error location that names keys of the document.

    Pydantic adds its own steps (union members, ``[key]``); they are not in the data, so the
    path stops where the data does, keeping one step for a missing or unknown key.
    """
    path: list[Any] = []
    current = data
    for part in loc:
        if (isinstance(current, dict) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        ):
            current = current[part]
        elif isinstance(current, dict) and part != "[key]":
            path.append(part)
            break
        else:
            break
        path.append(part)
    return tuple(path)


def _message(err: Any, path: KeyPath, root: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = sorted(_fields_at(path[:-1], root))
        text = f"unknown key {path[-1]!r}"
        hint = difflib.get_close_matches(str(path[-1]), known, n=1)
        if hint:
            return f"{text} (did you mean {hint[0]!r}?)"
        return f"{text} (expected one of: {', '.join(known)})" if known else text
    if kind == "missing":
        return f"required key {path[-1]!r} is missing" if path else "a required key is missing"
    text = str(err["msg"])
    text = text[len("Value error, ") :] if text.startswith("Value error, ") else text
    if "[key]" in err["loc"]:
        return f"invalid name: {text}"
    return text


def _fields_at(path: KeyPath, root: type[BaseModel]) -> list[str]:
    """The valid keys of the mapping at ``path``, read from the schema."""
    current: Any = root
    for part in path:
        current = _step(_unwrap(current), part)
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _step(annotation: Any, part: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part)
        return field.annotation if field else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    return None


def _unwrap(annotation: Any) -> Any:
    """``Model | None`` -> ``Model``."""
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation
