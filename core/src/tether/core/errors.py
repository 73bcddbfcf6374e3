"""Exceptions raised by Tether. Every one derives from :class:`TetherError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class TetherError(Exception):
    """Base class for every error Tether raises."""


@dataclass(frozen=True)
class PolicyIssue:
    """One problem found in a policy, located as precisely as the source allows."""

    message: str
    path: str = ""
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file or "<policy>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class PolicyError(TetherError):
    """A policy could not be loaded. ``issues`` lists every problem found, not only the first."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        #: the part of an invalid policy that is valid, and its source map, to check it further
        self.partial: tuple[Any, Any] | None = None
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"invalid policy ({count}):\n" + "\n".join(f"  {i}" for i in issues))


class StoreError(TetherError):
    """The audit store could not be opened, written or read."""


class UnsupportedValueError(TetherError):
    """An argument or output holds a value Tether cannot inspect (so it cannot decide on it)."""


class ToolDenied(TetherError):
    """Raised by integrations that signal a refusal with an exception rather than a message."""

    def __init__(self, message: str, *, rule_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.rule_ids = rule_ids


def db_reason(exc: BaseException) -> str:
    """What a database error said, on one line: the driver's own message when SQLAlchemy wraps
    one (its wrapper adds the statement and a documentation link)."""
    cause = getattr(exc, "orig", None) or exc
    return " ".join(str(cause).split())
