"""Baselines: what is normal for an agent, learned from the audit, and departures from it.

``tether baseline learn`` reads the calls each agent's sessions let through (per tenant, and
across all of its sessions) and keeps, in the store, how many calls a session makes, the most
it makes within a minute, the tools it uses, and the external destinations it reaches (keyed
fingerprints only: an address, a link's host, an account). Every process sharing the store
reads the same baselines, so a fleet on PostgreSQL shares them.

At decision time a call that departs from its agent's baseline is a finding on the decision: a
tool the agent never used, a destination never seen for it, more calls in the session than any
learned session made, more within a minute than any learned session made. Exceeding the
largest of N learned sessions happens to a new ordinary session with probability about
1/(N+1), so the thresholds need no tuning; the policy's ``anomalies`` section says what each
finding concludes (default: record only). No usable baseline (none learned, too few sessions,
stale, store unreadable) skips the checks and says so in the decision; it never fails one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .audit.events import Kind
from .audit.schema import baselines as table
from .audit.schema import events
from .classify import DEFAULT, Classifier, normalize
from .errors import StoreError
from .keys import fingerprint
from .policy.schema import Anomalies, Effect
from .provenance import strings
from .redact import mask
from .sequences import ANOMALY_FINDINGS, BURST_SECONDS
from .wording import count

if TYPE_CHECKING:
    from .audit.store import AuditStore
    from .state import SessionState

NEW_TOOL, NEW_DESTINATION, VOLUME, BURST = ANOMALY_FINDINGS
OUTWARD = frozenset({Effect.EXTERNAL, Effect.MONEY})  # the tools whose arguments name destinations

# An argument is a destination when its whole value is an address, a link or host, or an IBAN:
# values inside longer text (an email's body) are what is sent, not where. These run on short
# strings only (at most _LONGEST characters) and cannot backtrack far (each repetition ends on
# a character the next cannot start with), so the standard engine's speed is safe here.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")
_HOST = re.compile(r"(?:[A-Za-z][A-Za-z0-9+-]*://)?((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})(?::\d+)?(?:[/?#]\S*)?")
_IBAN = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}")


@dataclass(frozen=True)
class Destination:
    address: str  # fingerprint of the exact destination (a recipient, a host, an account)
    domain: str  # fingerprint of its organisation (an address's domain, a host's last two labels, a bank)
    value: str = field(repr=False, compare=False)  # in memory only: shown masked, never stored

    def shown(self, key: bytes, classifier: Classifier = DEFAULT) -> str:
        return mask(self.value, key, classifier)


_LONGEST = 320  # no address, host or account is longer


def destinations(args: Any, key: bytes) -> list[Destination]:
    """The external destinations a call's arguments name."""
    out: dict[str, Destination] = {}
    for text in strings(args):
        found = _destination(normalize(text).strip()) if len(text) <= _LONGEST else None
        if found is not None:
            address, domain = found
            fp = _fingerprint(key, "destination", address)
            if fp not in out:
                out[fp] = Destination(fp, _fingerprint(key, "domain", domain), address)
    return list(out.values())


def _fingerprint(key: bytes, kind: str, value: str) -> str:
    return fingerprint(key, f"{kind}:{value}".encode("utf-8", "surrogatepass"))


def _destination(text: str) -> tuple[str, str] | None:
    """(address, domain) when ``text`` is wholly one destination."""
    if "@" in text:
        email = _EMAIL.fullmatch(text)
        return (text.casefold(), email.group(1).casefold()) if email else None
    if text[:2].isalpha() and len(text) <= 42:  # an IBAN, perhaps written in groups
        compact = text.replace(" ", "").upper()
        if _IBAN.fullmatch(compact):
            return compact, compact[:2] + compact[4:8]  # country and (in most countries) the bank's code
    if "." not in text or " " in text:
        return None
    host = _HOST.fullmatch(text)
    if host and ("://" in text or not text.replace(".", "").isdigit()):
        name = host.group(1).casefold()
        return name, ".".join(name.split(".")[-2:])
    return None


@dataclass(frozen=True)
class Baseline:
    """What an agent's learned sessions did (``tenant`` "": all of them)."""

    agent: str
    tenant: str
    sessions: int
    learned_us: int
    since_us: int  # the oldest event learned from
    until_us: int  # the newest
    calls_p50: int  # calls let through per session
    calls_p95: int
    calls_max: int
    burst_max: int  # the most calls any learned session made within a minute
    tools: dict[str, int] = field(default_factory=dict)  # calls per tool
    addresses: frozenset[str] = frozenset()  # destination fingerprints
    domains: frozenset[str] = frozenset()

    def data(self) -> str:
        return json.dumps(
            {
                "since_us": self.since_us,
                "until_us": self.until_us,
                "calls": [self.calls_p50, self.calls_p95, self.calls_max],
                "burst_max": self.burst_max,
                "tools": self.tools,
                "addresses": sorted(self.addresses),
                "domains": sorted(self.domains),
            },
            sort_keys=True,
        )

    @classmethod
    def from_row(cls, agent: str, tenant: str, learned_us: int, sessions: int, data: str) -> Baseline:
        d = json.loads(data)
        p50, p95, most = d["calls"]
        return cls(
            agent,
            tenant,
            sessions,
            learned_us,
            d["since_us"],
            d["until_us"],
            p50,
            p95,
            most,
            d["burst_max"],
            dict(d["tools"]),
            frozenset(d["addresses"]),
            frozenset(d["domains"]),
        )


# -- learning ----------------------------------------------------------------------------------


@dataclass
class _Use:
    """One agent in one session, as learning sees it."""

    tenant: str
    calls: int = 0
    burst: int = 0
    tools: Counter[str] = field(default_factory=Counter)
    addresses: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)
    recent: deque[float] = field(default_factory=deque)

    def count(self, tool: str, ts: float, destinations: Iterable[Any]) -> None:
        self.calls += 1
        self.tools[tool] += 1
        self.recent.append(ts)
        while self.recent[0] < ts - BURST_SECONDS:
            self.recent.popleft()
        self.burst = max(self.burst, len(self.recent))
        for address, domain in destinations:
            self.addresses.add(address)
            self.domains.add(domain)


#: what learning reads of each event: (session, kind, agent, tenant, tool, verdict, ts_us, event_id, parent_id, data)
Row = tuple[str, str, str | None, str | None, str | None, str | None, int, str, str | None, str]


def learn(rows: Iterable[Row], *, now_us: int | None = None) -> list[Baseline]:
    """Baselines from audit rows (tool decisions and approvals, oldest first)."""
    uses: dict[tuple[str, str], _Use] = {}
    asked: dict[str, list[Any]] = {}  # asked calls, until their approval: the destinations they named
    oldest, newest = None, 0
    for session, kind, agent, tenant, tool, verdict, ts_us, event_id, parent, data in rows:
        if agent is None or tool is None:
            continue
        use = uses.get((session, agent))
        if use is None:
            use = uses[(session, agent)] = _Use(tenant or "")
        oldest = ts_us if oldest is None else min(oldest, ts_us)
        newest = max(newest, ts_us)
        if kind == Kind.APPROVAL:
            named = asked.pop(parent or "", [])
            if verdict == "allow":
                use.count(tool, ts_us / 1e6, named)
            continue
        details = json.loads(data)
        if details.get("allowed"):
            use.count(tool, ts_us / 1e6, details.get("destinations") or ())
        elif verdict == "ask":
            asked[event_id] = details.get("destinations") or []
    groups: dict[tuple[str, str], list[_Use]] = {}
    for (_, agent), use in uses.items():
        groups.setdefault((agent, ""), []).append(use)
        if use.tenant:
            groups.setdefault((agent, use.tenant), []).append(use)
    learned = now_us if now_us is not None else time.time_ns() // 1000
    return [_summarise(agent, tenant, group, learned, oldest or 0, newest) for (agent, tenant), group in groups.items()]


def _summarise(agent: str, tenant: str, uses: list[_Use], learned: int, since: int, until: int) -> Baseline:
    calls = sorted(u.calls for u in uses)
    tools: Counter[str] = Counter()
    for use in uses:
        tools.update(use.tools)
    return Baseline(
        agent,
        tenant,
        len(uses),
        learned,
        since,
        until,
        calls[(len(calls) - 1) // 2],
        calls[int(0.95 * (len(calls) - 1))],
        calls[-1],
        max(u.burst for u in uses),
        dict(sorted(tools.items())),
        frozenset().union(*(u.addresses for u in uses)),
        frozenset().union(*(u.domains for u in uses)),
    )


# -- the store ---------------------------------------------------------------------------------


def audit_rows(store: AuditStore, since_us: int | None = None) -> Iterator[Row]:
    """The tool decisions and approvals in ``store`` (since ``since_us``), oldest first."""
    c = events.c
    query = sa.select(
        c.session_id, c.kind, c.agent, c.tenant, c.tool, c.verdict, c.ts_us, c.event_id, c.parent_id, c.data
    ).where(c.kind.in_([Kind.TOOL_DECISION, Kind.APPROVAL]))
    if since_us is not None:
        query = query.where(c.ts_us >= since_us)
    try:
        with store.engine.connect() as connection:
            for row in connection.execution_options(yield_per=5000).execute(query.order_by(c.id)):
                yield tuple(row)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read the audit store {store.location}: {exc}") from exc


def learn_from_store(store: AuditStore, since_us: int | None = None) -> list[Baseline]:
    """Learn every agent's baselines from ``store`` and save them there, replacing older ones."""
    learned = learn(audit_rows(store, since_us))
    save_baselines(store, learned)
    return learned


def save_baselines(store: AuditStore, learned: Iterable[Baseline]) -> None:
    rows = [
        {"agent": b.agent, "tenant": b.tenant, "learned_us": b.learned_us, "sessions": b.sessions, "data": b.data()}
        for b in learned
    ]
    try:
        with store.engine.begin() as connection:
            for row in rows:
                connection.execute(table.delete().where(table.c.agent == row["agent"], table.c.tenant == row["tenant"]))
            if rows:
                connection.execute(table.insert(), rows)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot save baselines in {store.location}: {exc}") from exc


def load_baselines(store: AuditStore, agent: str | None = None) -> list[Baseline]:
    query = sa.select(table.c.agent, table.c.tenant, table.c.learned_us, table.c.sessions, table.c.data)
    if agent is not None:
        query = query.where(table.c.agent == agent)
    try:
        with store.engine.connect() as connection:
            return [
                Baseline.from_row(*row) for row in connection.execute(query.order_by(table.c.agent, table.c.tenant))
            ]
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read baselines from {store.location}: {exc}") from exc


def departures(store: AuditStore, agent: str | None = None) -> dict[str, dict[str, Counter[str]]]:
    """agent -> session -> anomaly finding -> how many decisions carried it, as recorded."""
    c = events.c
    marks = [c.data.like(f"%{finding}: %") for finding in ANOMALY_FINDINGS]
    query = sa.select(c.agent, c.session_id, c.data).where(c.kind == Kind.TOOL_DECISION, sa.or_(*marks))
    if agent is not None:
        query = query.where(c.agent == agent)
    out: dict[str, dict[str, Counter[str]]] = {}
    try:
        with store.engine.connect() as connection:
            for name, session, data in connection.execute(query.order_by(c.id)):
                for finding in json.loads(data).get("findings") or ():
                    kind = finding.split(": ", 1)[0]
                    if kind in ANOMALY_FINDINGS:
                        out.setdefault(name, {}).setdefault(session, Counter())[kind] += 1
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read the audit store {store.location}: {exc}") from exc
    return out


# -- checking a call ---------------------------------------------------------------------------


class Anomaly:
    """A departure from the baseline, and what the policy says it concludes."""

    __slots__ = ("finding", "outcome", "reason")

    def __init__(self, finding: str, outcome: str, reason: str) -> None:
        self.finding, self.outcome, self.reason = finding, outcome, reason

    def __str__(self) -> str:
        return f"{self.finding}: {self.reason}"


_RETRY_AFTER_FAILURE = 10.0  # seconds before a process asks an unreadable store for baselines again


class BaselineCheck:
    """One guard's view of the baselines in its store (re-read every ``refresh``), and the
    check of a call against them."""

    def __init__(self, store: AuditStore, anomalies: Anomalies, classifier: Classifier = DEFAULT) -> None:
        self.store = store
        self.anomalies = anomalies
        self.classifier = classifier  # to mask destinations in reasons
        self._rows: dict[str, tuple[float, dict[str, Baseline] | str]] = {}  # agent -> (until, rows or why none)
        #: (agent, tenant) -> (until, the baseline that applies or None, why none, when it goes stale)
        self._chosen: dict[tuple[str, str], tuple[float, Baseline | None, str, float]] = {}
        self._lock = threading.Lock()

    def baseline(self, agent: str, tenant: str | None, now: float) -> tuple[Baseline | None, str]:
        """The baseline that applies to ``agent`` (in ``tenant``), or None and why there is none."""
        clock = time.monotonic()
        chosen = self._chosen.get((agent, tenant or ""))
        if chosen is None or clock >= chosen[0]:
            chosen = self._choose(agent, tenant or "", clock)
        _, row, why, stale_at = chosen
        if row is None:
            return None, why
        if now > stale_at:
            days = (now - row.learned_us / 1e6) / 86400
            return None, f"the baseline of agent {agent!r} is stale: learned {days:.1f} days ago"
        return row, ""

    def _choose(self, agent: str, tenant: str, clock: float) -> tuple[float, Baseline | None, str, float]:
        """The tenant's own baseline if it has enough sessions, else the agent's across all of them."""
        until, rows = self._fetch(agent, clock)
        least = self.anomalies.min_sessions
        row, why = None, rows if isinstance(rows, str) else ""
        if not isinstance(rows, str):
            row = rows.get(tenant) if tenant else None
            if row is None or row.sessions < least:
                row = rows.get("")
            if row is None:
                why = f"no baseline learned for agent {agent!r}"
            elif row.sessions < least:
                why = f"the baseline of agent {agent!r} has {count(row.sessions, 'session')}, fewer than {least}"
                row = None
        stale_at = row.learned_us / 1e6 + self.anomalies.max_age if row is not None else 0.0
        chosen = (until, row, why, stale_at)
        self._keep(self._chosen, (agent, tenant), chosen)
        return chosen

    def _fetch(self, agent: str, clock: float) -> tuple[float, dict[str, Baseline] | str]:
        """An agent's baselines by tenant, read from the store at most once per ``refresh``."""
        cached = self._rows.get(agent)
        if cached is not None and clock < cached[0]:
            return cached
        try:
            entry: tuple[float, dict[str, Baseline] | str] = (
                clock + self.anomalies.refresh,
                {b.tenant: b for b in load_baselines(self.store, agent)},
            )
        except Exception as exc:  # noqa: BLE001 - no baseline must never fail a decision
            good = cached[1] if cached is not None and not isinstance(cached[1], str) else None
            # keep using the last good copy (its age is still checked); ask the store again later
            entry = (clock + _RETRY_AFTER_FAILURE, good or f"baselines unavailable: {exc}".splitlines()[0])
        self._keep(self._rows, agent, entry)
        return entry

    def _keep(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            if len(cache) >= 4096 and key not in cache:  # agent names can come from outside: bound it
                cache.pop(next(iter(cache)), None)
            cache[key] = value

    def check(
        self,
        state: SessionState,
        agent: str,
        tenant: str | None,
        tool: str,
        named: list[Destination],
        now: float,
    ) -> tuple[list[Anomaly], str]:
        """The anomalies of ``agent`` calling ``tool`` now, or none and why the checks were skipped."""
        baseline, skipped = self.baseline(agent, tenant, now)
        if baseline is None:
            return [], skipped
        settings = self.anomalies
        found: list[Anomaly] = []
        if tool not in baseline.tools:
            found.append(Anomaly(NEW_TOOL, settings.new_tool, f"tool {tool!r} was never used"))
        calls = state.calls(agent) + 1
        if calls > baseline.calls_max:
            found.append(
                Anomaly(VOLUME, settings.volume, f"call {calls} of this session; at most {baseline.calls_max}")
            )
        history = state.history
        recent = (history.recent_calls(agent, now) if history is not None else 0) + 1
        if recent > baseline.burst_max:
            reason = f"{count(recent, 'call')} within a minute; at most {baseline.burst_max}"
            found.append(Anomaly(BURST, settings.burst, reason))
        if named:
            by_address = settings.destinations == "address"
            seen = baseline.addresses if by_address else baseline.domains
            new = [d for d in named if (d.address if by_address else d.domain) not in seen]
            if new:
                shown = ", ".join(repr(d.shown(self.store.key, self.classifier)) for d in new[:3])
                more = f" and {len(new) - 3} more" if len(new) > 3 else ""
                found.append(
                    Anomaly(NEW_DESTINATION, settings.new_destination, f"destination {shown}{more} never seen")
                )
        for anomaly in found:  # say against what, only when there is something to say
            anomaly.reason += f" in the {baseline.sessions} learned sessions of agent {agent!r}"
        return found, ""
