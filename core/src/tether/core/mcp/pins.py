"""Pins: each MCP tool's definition, as first seen or as a person approved it.

On first sight a definition is scanned (see ``scan``): a clean one is pinned as approved, a
suspicious one waits for a person. A definition that differs from its pin later (a "rug pull")
is a change: the pin keeps the approved digest and records what was seen, until someone
approves the change with ``tether mcp pins approve``. What an unapproved tool concludes is the
policy's (``protections.changed_tools`` and ``suspicious_tools``: hide, ask or allow).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..audit.schema import mcp_pins as table
from ..audit.store import AuditStore
from ..cautions import Caution
from ..classify import DEFAULT, Classifier
from ..errors import TetherError
from ..policy.schema import Protections
from ..redact import preview
from ..values import canonical_json, to_plain
from .scan import definition, scan

APPROVED, SUSPICIOUS, CHANGED = "approved", "suspicious", "changed"
CHANGED_RULE = "tether.mcp.tool-changed"
SUSPICIOUS_RULE = "tether.mcp.tool-suspicious"


@dataclass(frozen=True)
class PinState:
    server: str
    tool: str
    status: str
    findings: tuple[str, ...]
    digest: str
    seen_digest: str
    definition: dict[str, Any]  # redacted, as last listed
    approved_by: str | None = None


def pin_caution(state: PinState, protections: Protections) -> Caution | None:
    """What a tool's pin says about calling it: nothing for an approved one."""
    if state.status == APPROVED:
        return None
    found = "; ".join(state.findings)
    if state.status == CHANGED:
        outcome, rule = protections.changed_tools, CHANGED_RULE
        reason = f"the definition of {state.server}/{state.tool} changed since it was approved ({found})"
    else:
        outcome, rule = protections.suspicious_tools, SUSPICIOUS_RULE
        reason = f"the definition of {state.server}/{state.tool} is suspicious: {found}"
    return Caution(rule, reason, "deny" if outcome == "hide" else outcome)


def _digest(defined: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(to_plain(defined, "tool")).encode()).hexdigest()


def _now_us() -> int:
    return time.time_ns() // 1000


class Pins:
    """The pins in an audit store."""

    def __init__(self, store: AuditStore, classifier: Classifier = DEFAULT) -> None:
        self.store = store
        self.classifier = classifier

    def check_all(self, server: str, tools: Sequence[Any]) -> dict[str, PinState]:
        """Each listed tool's pin state, pinning the ones seen for the first time."""
        names = [tool.name for tool in tools]
        return {tool.name: self.check(server, tool, names) for tool in tools}

    def check(self, server: str, tool: Any, others: Sequence[str] = ()) -> PinState:
        try:
            with self.store.engine.begin() as connection:
                return self._check(connection, server, tool, others)
        except sa.exc.IntegrityError:  # another gateway pinned it first: compare with its pin
            with self.store.engine.begin() as connection:
                return self._check(connection, server, tool, others)

    def _check(self, connection: sa.Connection, server: str, tool: Any, others: Sequence[str]) -> PinState:
        defined = definition(tool)
        digest = _digest(defined)
        row = self._row(connection, server, tool.name)
        if row is not None and row.seen_digest == digest:
            return _state(row)
        findings = scan(defined, others, self.classifier)
        shown = preview(to_plain(defined, "tool"), self.store.key, self.classifier).value
        now = _now_us()
        values = {"seen_digest": digest, "definition": json.dumps(shown), "updated_us": now}
        if row is None:
            status = SUSPICIOUS if findings else APPROVED
            values |= {"server": server, "tool": tool.name, "digest": digest, "status": status}
            values |= {"findings": json.dumps(findings), "first_seen_us": now}
            values |= {"approved_by": None if findings else "first sight", "approved_us": None}
            connection.execute(table.insert().values(**values))
        elif row.digest == digest and row.status != SUSPICIOUS:  # changed back to what was approved
            values |= {"status": APPROVED, "findings": "[]"}
            connection.execute(self._where(table.update(), server, tool.name).values(**values))
        else:
            status = SUSPICIOUS if row.status == SUSPICIOUS else CHANGED
            changed = [] if status == SUSPICIOUS else ["the definition differs from the pinned one"]
            values |= {"status": status, "findings": json.dumps(changed + findings)}
            connection.execute(self._where(table.update(), server, tool.name).values(**values))
        return _state(self._row(connection, server, tool.name))

    def list(self, server: str | None = None) -> list[PinState]:
        query = sa.select(table).order_by(table.c.server, table.c.tool)
        if server is not None:
            query = query.where(table.c.server == server)
        with self.store.engine.begin() as connection:
            return [_state(row) for row in connection.execute(query)]

    def approve(self, server: str, tool: str, by: str) -> PinState:
        """Approve what was last seen of a tool: its definition becomes the pin."""
        with self.store.engine.begin() as connection:
            row = self._row(connection, server, tool)
            if row is None:
                raise TetherError(f"no pin for {server}/{tool}: the gateway has not listed that tool")
            values = {"digest": row.seen_digest, "status": APPROVED, "findings": "[]"}
            values |= {"approved_by": by, "approved_us": _now_us()}
            connection.execute(self._where(table.update(), server, tool).values(**values))
            return _state(self._row(connection, server, tool))

    def _row(self, connection: sa.Connection, server: str, tool: str) -> Any:
        return connection.execute(self._where(sa.select(table), server, tool)).first()

    @staticmethod
    def _where(statement: Any, server: str, tool: str) -> Any:
        return statement.where(table.c.server == server, table.c.tool == tool)


def _state(row: Any) -> PinState:
    return PinState(
        row.server,
        row.tool,
        row.status,
        tuple(json.loads(row.findings)),
        row.digest,
        row.seen_digest,
        json.loads(row.definition),
        row.approved_by,
    )
