"""What the agents did: decisions over time, what was denied and asked, agents and their drift
from the policy, approvals and how long people took, and what Tether's protections found.

:func:`collect` reads the audit once, streaming; :func:`text_lines` and :func:`html` render the
result. ``html`` returns one self-contained page (inline SVG charts, inline CSS, no script, no
external asset), so a web service can serve it as it is.
"""

from __future__ import annotations

import html as _html
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from .audit.events import AuditEvent, Kind
from .audit.schema import events as events_table
from .audit.store import AuditStore
from .inventory import AgentRecord, inventory
from .policy.schema import Policy
from .wording import count

VERDICTS = ("allow", "redact", "ask", "deny")
COLOURS = {"allow": "#3a8f5c", "redact": "#4f7fbf", "ask": "#d9a02b", "deny": "#c8463d"}
_TOP = 10
_MAX_WAITS = 100_000  # wait times kept for the percentiles (a uniform sample beyond that)


@dataclass
class Report:
    since_us: int | None
    until_us: int
    bucket_s: int = 3600
    events: int = 0
    sessions: set[str] = field(default_factory=set)
    by_verdict: Counter[str] = field(default_factory=Counter)
    over_time: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # bucket start -> verdicts
    denied_rules: Counter[str] = field(default_factory=Counter)
    asked_rules: Counter[str] = field(default_factory=Counter)
    denied_tools: Counter[str] = field(default_factory=Counter)
    asked_tools: Counter[str] = field(default_factory=Counter)
    usage: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (agent, tool, verdict)
    approvals: Counter[str] = field(default_factory=Counter)  # approved / denied / unanswered
    waits: list[float] = field(default_factory=list)  # seconds from the request to its answer
    findings: Counter[str] = field(default_factory=Counter)  # finding id -> count
    agents: list[AgentRecord] = field(default_factory=list)
    with_policy: bool = False  # whether drift was measured against a policy

    @property
    def decisions(self) -> int:
        return sum(self.by_verdict.values())


def _bucket_for(span_s: float) -> int:
    """A bucket size that gives a readable number of bars for the span."""
    for size in (60, 600, 3600, 6 * 3600, 86400, 7 * 86400):
        if span_s / size <= 48:
            return size
    return 30 * 86400


def collect(store: AuditStore, *, since_us: int | None = None, policy: Policy | None = None) -> Report:
    """Read the audit (events from ``since_us`` on) into a :class:`Report`."""
    table = events_table
    query = sa.select(table).order_by(table.c.id)
    if since_us is not None:
        query = query.where(table.c.ts_us >= since_us)
    now_us = int(time.time() * 1_000_000)
    first = since_us
    if first is None:
        with store.engine.connect() as connection:
            first = connection.execute(sa.select(sa.func.min(table.c.ts_us))).scalar() or now_us
    report = Report(since_us, now_us, _bucket_for((now_us - first) / 1e6))
    _take_all(report, store.read(query))
    usage = [(a, t, v, n) for (a, t, v), n in report.usage.items()]
    report.agents = inventory(policy, usage)
    report.with_policy = policy is not None
    return report


def _take_all(report: Report, events: Iterable[AuditEvent]) -> None:
    asked_at: dict[str, int] = {}  # ask decision -> when it asked (until answered)
    for event in events:
        report.events += 1
        report.sessions.add(event.session_id)
        if event.kind == Kind.TOOL_DECISION:
            details = json.loads(event.data)
            _decision(report, event, details)
            if event.verdict == "ask":
                asked_at[event.event_id] = event.ts_us
        elif event.kind == Kind.APPROVAL:
            details = json.loads(event.data)
            asked = asked_at.pop(event.parent_id or "", None)
            if details.get("approved") is None:
                report.approvals["unanswered"] += 1
            else:
                report.approvals["approved" if details["approved"] else "denied"] += 1
                if asked is not None and len(report.waits) < _MAX_WAITS:
                    report.waits.append((event.ts_us - asked) / 1e6)
        elif event.kind == Kind.TOOL_RESULT:
            details = json.loads(event.data)
            for held in details.get("held") or ():
                report.findings[held.split(":", 1)[0]] += 1
    report.approvals["pending"] += len(asked_at)


def _decision(report: Report, event: AuditEvent, details: dict[str, object]) -> None:
    verdict = event.verdict or "deny"
    tool = event.tool or "?"
    report.by_verdict[verdict] += 1
    report.over_time[(event.ts_us // 1_000_000) // report.bucket_s * report.bucket_s][verdict] += 1
    report.usage[(event.agent or "?", tool, verdict)] += 1
    rules = details.get("rule_ids") or []
    if verdict == "deny":
        report.denied_tools[tool] += 1
        report.denied_rules.update(rules if isinstance(rules, list) else [])
    elif verdict == "ask":
        report.asked_tools[tool] += 1
        report.asked_rules.update(rules if isinstance(rules, list) else [])
    for finding in details.get("findings") or []:  # type: ignore[attr-defined]
        report.findings[str(finding).split(":", 1)[0]] += 1


# -- text ----------------------------------------------------------------------------------


def _when(ts_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts_s))


def _waits(report: Report) -> str:
    if not report.waits:
        return "no answered requests"
    waits = sorted(report.waits)
    p90 = waits[min(len(waits) - 1, int(len(waits) * 0.9))]
    return f"median {statistics.median(waits):.1f}s, 90% within {p90:.1f}s, longest {waits[-1]:.1f}s"


def text_lines(report: Report) -> list[str]:
    since = _when(report.since_us / 1e6) if report.since_us else "the beginning"
    total = report.decisions
    out = [
        f"Tether report: {since} to {_when(report.until_us / 1e6)} UTC",
        f"{count(report.events, 'event')}, {count(len(report.sessions), 'session')}, {count(total, 'decision')}",
        "",
        "Decisions by verdict",
    ]
    for verdict in VERDICTS:
        n = report.by_verdict.get(verdict, 0)
        share = n / total if total else 0
        out.append(f"  {verdict:<7} {n:>8}  {share:6.1%}  {'#' * round(share * 40)}")
    out += ["", f"Over time (per {_duration(report.bucket_s)})"]
    for start in sorted(report.over_time):
        counts = report.over_time[start]
        out.append(f"  {_when(start)}  " + "  ".join(f"{v} {counts.get(v, 0)}" for v in VERDICTS))
    for title, counter in (
        ("Top denied rules", report.denied_rules),
        ("Top denied tools", report.denied_tools),
        ("Top asked rules", report.asked_rules),
        ("Top asked tools", report.asked_tools),
        ("Findings", report.findings),
    ):
        out += ["", title] + ([f"  {n:>8}  {name}" for name, n in counter.most_common(_TOP)] or ["  none"])
    out += ["", "Approvals"]
    out.append(
        "  " + ", ".join(f"{k} {report.approvals.get(k, 0)}" for k in ("approved", "denied", "unanswered", "pending"))
    )
    out.append(f"  wait: {_waits(report)}")
    out += ["", "Agents"]
    for agent in report.agents:
        calls = sum(sum(v.values()) for v in agent.used.values())
        out.append(f"  {agent.name}: {count(calls, 'decision')} on {count(len(agent.used), 'tool')}")
        out += [f"    drift: {finding}" for finding in _drift(report, agent)]
        if agent.unused:
            out.append(f"    granted, never used: {', '.join(agent.unused)}")
    if not report.agents:
        out.append("  none")
    elif not report.with_policy:
        out.append("  (give --policy to see drift from the policy)")
    return out


def _drift(report: Report, agent: AgentRecord) -> list[str]:
    return agent.findings if report.with_policy else []


def _duration(seconds: int) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- HTML ----------------------------------------------------------------------------------


def _e(text: object) -> str:
    return _html.escape(str(text), quote=True)


def _timeline_svg(report: Report) -> str:
    """Stacked bars of decisions per bucket, one colour per verdict."""
    if not report.over_time:
        return '<p class="empty">no decisions in this period</p>'
    size = report.bucket_s
    first = min(report.over_time)
    last = max(max(report.over_time), report.until_us // 1_000_000 // size * size)
    buckets = list(range(first, last + size, size))  # the whole period, quiet spans included
    width, height, pad = 720, 220, 30
    peak = max(sum(c.values()) for c in report.over_time.values())
    step = (width - 2 * pad) / len(buckets)
    bar = max(step * 0.8, 1.0)
    parts = [
        f'<svg class="chart" id="timeline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="decisions over time by verdict">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
    ]
    for i, start in enumerate(buckets):
        y = float(height - pad)
        for verdict in VERDICTS:
            n = report.over_time[start].get(verdict, 0) if start in report.over_time else 0
            if not n:
                continue
            h = n / peak * (height - 2 * pad)
            y -= h
            x = pad + i * step
            parts.append(
                f'<rect class="bar {verdict}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[verdict]}"><title>{_e(_when(start))}: {n} {verdict}</title></rect>'
            )
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">{_e(_when(buckets[0]))}</text>')
    parts.append(
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">{_e(_when(buckets[-1]))}</text>'
    )
    parts.append(f'<text x="{pad}" y="{pad - 8}" font-size="11">{peak} per {_duration(report.bucket_s)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(name: str, counter: Counter[str], colour: str) -> str:
    """Horizontal bars of the most frequent entries."""
    top = counter.most_common(_TOP)
    if not top:
        return '<p class="empty">none</p>'
    width, row, label = 520, 22, 240
    peak = top[0][1]
    parts = [
        f'<svg class="chart" id="{_e(name)}" viewBox="0 0 {width} {row * len(top) + 4}" width="{width}" '
        f'height="{row * len(top) + 4}" role="img" aria-label="{_e(name)}">'
    ]
    for i, (key, n) in enumerate(top):
        w = n / peak * (width - label - 50)
        y = i * row + 2
        shown = key if len(key) <= 36 else key[:35] + "…"
        parts.append(f'<text x="{label - 6}" y="{y + 15}" font-size="12" text-anchor="end">{_e(shown)}</text>')
        parts.append(
            f'<rect class="bar" x="{label}" y="{y}" width="{max(w, 1):.1f}" height="{row - 6}" fill="{colour}">'
            f"<title>{_e(key)}: {n}</title></rect>"
        )
        parts.append(f'<text x="{label + w + 4:.1f}" y="{y + 15}" font-size="12">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.tiles{display:flex;gap:12px;flex-wrap:wrap}.tile{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.tile b{display:block;font-size:20px}.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px 24px}
table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}
.empty{color:#777}.drift{color:#a33}.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"""


def html(report: Report, title: str = "Tether report") -> str:
    """The report as one self-contained HTML page."""
    since = _when(report.since_us / 1e6) if report.since_us else "the beginning"
    tiles = [("events", report.events), ("sessions", len(report.sessions)), ("decisions", report.decisions)]
    tiles += [(v, report.by_verdict.get(v, 0)) for v in VERDICTS]
    legend = "".join(f'<span style="background:{COLOURS[v]}"></span>{v}' for v in VERDICTS)
    approvals = ", ".join(f"{k} {report.approvals.get(k, 0)}" for k in ("approved", "denied", "unanswered", "pending"))
    rows = []
    for agent in report.agents:
        calls = sum(sum(v.values()) for v in agent.used.values())
        drift = "<br>".join(_e(f) for f in _drift(report, agent)) or ("-" if report.with_policy else "no policy given")
        rows.append(
            f"<tr><td>{_e(agent.name)}</td><td>{calls}</td><td>{_e(', '.join(agent.used) or '-')}</td>"
            f'<td class="drift">{drift}</td><td>{_e(", ".join(agent.unused) or "-")}</td></tr>'
        )
    sections = [
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(since)} to {_e(_when(report.until_us / 1e6))} UTC</p>",
        '<div class="tiles">' + "".join(f'<div class="tile"><b>{n}</b>{_e(k)}</div>' for k, n in tiles) + "</div>",
        f'<h2>Decisions over time</h2><p class="legend">{legend}</p>{_timeline_svg(report)}',
        '<div class="grid">',
        f"<div><h2>Top denied rules</h2>{_bars_svg('denied-rules', report.denied_rules, COLOURS['deny'])}</div>",
        f"<div><h2>Top denied tools</h2>{_bars_svg('denied-tools', report.denied_tools, COLOURS['deny'])}</div>",
        f"<div><h2>Top asked rules</h2>{_bars_svg('asked-rules', report.asked_rules, COLOURS['ask'])}</div>",
        f"<div><h2>Top asked tools</h2>{_bars_svg('asked-tools', report.asked_tools, COLOURS['ask'])}</div>",
        "</div>",
        f"<h2>Approvals</h2><p>{_e(approvals)}; wait: {_e(_waits(report))}</p>",
        f"<h2>Findings</h2>{_bars_svg('findings', report.findings, '#7a5cb0')}",
        "<h2>Agents</h2><table><tr><th>agent</th><th>decisions</th><th>tools used</th><th>drift from the policy</th>"
        "<th>granted, never used</th></tr>" + "".join(rows) + "</table>",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>" + "".join(sections) + "</body></html>\n"
    )
