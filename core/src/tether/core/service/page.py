"""The approvals page's HTML: every value escaped, no script, readable from a phone's width up.

A request leads with what decides it: who asks, the action in words, where each argument's
value came from, why Tether asked and how long is left; then the answer. Values are shown as
the audit stores them (secrets as fingerprints); to the people who may answer a pending request,
each argument's real value is shown next to it (decrypted from the queue, see
:mod:`tether.core.approvals.sealed`), escaped like everything else.
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from ..approvals.queue import MAX_COMMENT, PENDING, Entry, now_us
from ..approvals.render import approval_line
from ..approvals.sealed import Revealed
from ..audit.events import AuditEvent, Kind
from ..audit.render import session_lines, summary
from ..policy.schema import ToolSpec
from ..protect import INJECTED
from ..provenance import argument_values, fingerprints
from ..wording import cut

STYLE = """*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:.75rem;color:#1d1d1f;
overflow-wrap:anywhere}
h1{font-size:1.35rem;margin:.4rem 0 .8rem}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
header.bar{display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:center;font-size:.9rem;
border-bottom:1px solid #ddd;padding-bottom:.5rem}
header.bar form{margin:0}
code,pre{font:13px/1.4 ui-monospace,monospace}
pre{background:#f4f4f4;padding:.6rem;white-space:pre-wrap;overflow-wrap:anywhere;max-width:100%}
.msg{background:#fff4cc;padding:.5rem}.error{background:#fdd;padding:.5rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem .8rem;margin:.6rem 0}
.card h2{margin:0 0 .3rem}
dl.facts{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.25rem .9rem;margin:.4rem 0}
dl.facts dt{color:#555}dl.facts dd{margin:0;min-width:0}
.args{width:100%;border-collapse:collapse;table-layout:fixed}
.args th,.args td{padding:.35rem .4rem;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
.args th{width:22%}.args td.value{width:48%}
.real{margin-top:.3rem}.real b{font-weight:600;color:#1b3a8a}.note{background:#eef2ff;padding:.5rem}
.origin{font-size:.9rem}.untrusted{color:#8a1c00;font-weight:600}.trusted{color:#1b5e20}.unknown{color:#555}
ul.why{margin:.3rem 0;padding-left:1.2rem}
.left{font-weight:600}
form.answer{border:1px solid #ccc;border-radius:6px;padding:.6rem .8rem;margin:.6rem 0}
form.answer.approve{border-color:#1b5e20}form.answer.deny{border-color:#8a1c00}
input[type=text],input[type=password],textarea{width:100%;max-width:32rem;font:inherit;padding:.35rem}
button{font:inherit;padding:.35rem .9rem;margin-top:.4rem}
details{margin:.4rem 0}
@media (max-width:30rem){.args,.args tbody,.args tr,.args th,.args td{display:block;width:auto}
.args th{border-bottom:0;padding-bottom:0}.args td.value{width:auto}
.args tr{border-bottom:1px solid #e3e3e3;padding:.3rem 0}.args td{border-bottom:0}
.args tr.head{display:none}dl.facts{grid-template-columns:minmax(0,1fr)}dl.facts dd{margin-bottom:.3rem}}"""

_EFFECTS = {
    "read": "reads data",
    "write": "changes data",
    "delete": "deletes data",
    "external": "reaches people or systems outside the organisation",
    "irreversible": "cannot be undone",
    "money": "moves money",
    "execute": "runs code or commands",
}
_INJECTED = re.compile(r"argument value (.+?) appears in untrusted content from (.+?) and in nothing trusted$")


MAX_SHOWN = 4000  # characters of one argument's value
MAX_EDIT = 64_000  # characters of real arguments put in the edit box


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def cut_visibly(text: str, width: int = MAX_SHOWN) -> str:
    """``text`` cut to ``width`` characters, saying how much was left out."""
    return text if len(text) <= width else f"{text[:width]}… ({len(text) - width} more characters not shown)"


def _shown(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)


def page(title: str, body: str, who: str | None = None, csrf: str = "") -> bytes:
    bar = ""
    if who:
        bar = (
            f'<header class="bar"><span>Signed in as <b>{esc(who)}</b></span><a href="/">pending requests</a>'
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" value="{esc(csrf)}">'
            "<button>Sign out</button></form></header>"
        )
    head = (
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · Tether</title><style>{STYLE}</style>"
    )
    document = f"<!doctype html><html lang=en><head>{head}</head><body>{bar}<h1>{esc(title)}</h1>{body}</body></html>"
    return document.encode()


def message(text: str) -> str:
    if not text:
        return ""
    css = "error" if text.startswith("error: ") else "msg"
    return f'<p class="{css}">{esc(text.removeprefix("error: "))}</p>'


def login(csrf: str, error: str = "") -> str:
    note = f'<p class="error">{esc(error)}</p>' if error else ""
    return (
        f'{note}<form method="post" action="/login"><input type="hidden" name="csrf" value="{esc(csrf)}">'
        '<p><label>Token<br><input type="password" name="token" autocomplete="off"></label></p>'
        '<p><label>Your name (if the token is shared)<br><input type="text" name="name"></label></p>'
        "<button>Sign in</button></form>"
    )


def time_left(entry: Entry) -> str:
    if entry.expired:
        return "expired: the call was denied"
    if entry.status != PENDING:
        return f"{entry.status} by {entry.answered_by}" + (" for the session" if entry.scope == "session" else "")
    seconds = max(0, entry.expires_us - now_us()) // 1_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    shown = (f"{hours}h " if hours else "") + (f"{minutes}m " if hours or minutes else "") + f"{seconds}s"
    return f"{shown} left, then the call is denied (as of loading this page)"


def who_asks(entry: Entry) -> str:
    parts = [f"agent <b>{esc(entry.agent)}</b>"]
    if entry.user:
        parts.append(f"for user {esc(entry.user)}")
    if entry.tenant:
        parts.append(f"tenant {esc(entry.tenant)}")
    parts.append(f'in session <a href="/sessions/{quote(entry.session_id)}">{esc(entry.session_id)}</a>')
    return ", ".join(parts)


def action(entry: Entry, tool: ToolSpec | None) -> str:
    """The tool and what calling it does, in words (from the policy, when the page has it)."""
    words = f"call <code>{esc(entry.tool)}</code>"
    if tool is None:
        return words
    if tool.description:
        words += f": {esc(tool.description)}"
    effects = [_EFFECTS.get(e.value, e.value) for e in tool.effects]
    if effects:
        words += f" <span>({esc('; '.join(effects))})</span>"
    return words


@dataclass(frozen=True)
class Origin:
    css: str  # untrusted, trusted or unknown
    text: str


def origins(entry: Entry, events: Sequence[AuditEvent], key: bytes) -> dict[str, list[Origin]]:
    """Where each top-level argument's values came from, as far as the session's audit tells:
    the values read before the decision (by keyed fingerprint) and the protections' findings
    (which name the untrusted source of a value the preview masks)."""
    args = entry.request.get("args")
    if not isinstance(args, Mapping):
        return {}
    decided = next((e.seq for e in events if e.event_id == entry.decision_id), None)
    trusted: dict[str, str] = {}
    untrusted: dict[str, str] = {}
    for event in events:
        if decided is not None and event.seq >= decided:
            break
        if event.kind not in (Kind.INPUT, Kind.MODEL_REQUEST, Kind.TOOL_RESULT):
            continue
        details = event.details
        for fp in details.get("values") or []:
            if event.kind == Kind.INPUT:
                source = str(details.get("source") or "user")
                trusted.setdefault(fp, "the user" if source == "user" else f"trusted input ({source})")
            elif event.kind == Kind.MODEL_REQUEST:
                trusted.setdefault(fp, "the user (the messages to the model)")
            elif details.get("untrusted"):
                untrusted.setdefault(fp, str(event.tool))
            else:
                trusted.setdefault(fp, f"trusted tool {event.tool}")
    flagged: list[tuple[str, str]] = []  # (value as the preview shows it, untrusted source)
    for finding in entry.request.get("findings") or []:
        rule, _, text = str(finding).partition(": ")
        match = _INJECTED.match(text) if rule == INJECTED else None
        if match:
            try:
                flagged.append((str(ast.literal_eval(match.group(1))), str(ast.literal_eval(match.group(2)))))
            except (ValueError, SyntaxError):
                continue
    out: dict[str, list[Origin]] = {}
    for name, value in args.items():
        shown = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        found: dict[str, Origin] = {}
        for fp in fingerprints(key, argument_values(value)):
            if fp in untrusted and fp not in trusted:
                text = f"untrusted content from {untrusted[fp]}"
                found.setdefault(text, Origin("untrusted", text))
            elif fp in trusted:
                found.setdefault(trusted[fp], Origin("trusted", trusted[fp]))
        for value_shown, source in flagged:
            if value_shown and value_shown in shown:
                text = f"untrusted content from {source}"
                found.setdefault(text, Origin("untrusted", text))
        if not found:
            found["-"] = Origin("unknown", "not traced to anything the session read")
        out[str(name)] = sorted(found.values(), key=lambda o: o.css != "untrusted")
    return out


def _real(value: object, masked: object) -> str:
    """The real value beside the masked one, when they differ."""
    if value == masked:
        return ""
    return f'<div class="real"><b>real value</b> <code>{esc(cut_visibly(_shown(value)))}</code></div>'


def revealed_note(revealed: Revealed | None) -> str:
    if revealed is None:
        return ""
    if revealed.shown:
        return (
            '<p class="note">Real values shown while pending, beside the masked form the audit keeps; '
            "they are deleted once the request is answered or expires.</p>"
        )
    return f'<p class="note">Real values not shown: {esc(revealed.note)}.</p>'


def arguments(entry: Entry, traced: Mapping[str, list[Origin]], revealed: Revealed | None = None) -> str:
    args = entry.request.get("args")
    real = revealed.args if revealed is not None and revealed.shown else None
    if not isinstance(args, Mapping):
        shown = f"<pre>{esc(cut_visibly(json.dumps(args, ensure_ascii=False, indent=1)))}</pre>"
        return shown + (_real(real, args) if revealed is not None and revealed.shown else "")
    if not args:
        return "<p>No arguments.</p>"
    rows = []
    for name, value in args.items():
        where = "<br>".join(f'<span class="{o.css}">{esc(o.text)}</span>' for o in traced.get(str(name), []))
        beside = _real(real[name], value) if isinstance(real, Mapping) and name in real else ""
        rows.append(
            f'<tr><th scope="row"><code>{esc(name)}</code></th><td class="value"><code>'
            f'{esc(cut_visibly(_shown(value)))}</code>{beside}</td><td class="origin">{where}</td></tr>'
        )
    head = '<tr class="head"><th>argument</th><th>value</th><th>came from</th></tr>'
    return f'<table class="args">{head}{"".join(rows)}</table>'


def why(entry: Entry) -> str:
    request = entry.request
    reason = str(request.get("reason", ""))
    rules = list(request.get("rule_ids") or [])
    items = [f"<li>{esc(reason)}</li>"] if reason else []
    items += [f"<li>found: {esc(f)}</li>" for f in request.get("findings") or []]
    named = f"<p>rules: {', '.join(f'<code>{esc(r)}</code>' for r in rules)}</p>" if rules else ""
    return f'<ul class="why">{"".join(items)}</ul>{named}'


def edit_start(revealed: Revealed | None) -> str:
    """The edit box's starting text: the real arguments, when they may be shown and fit."""
    if revealed is None or not revealed.shown:
        return ""
    text = json.dumps(revealed.args, ensure_ascii=False, indent=1)
    return text if len(text) <= MAX_EDIT else ""


def answer_forms(entry: Entry, csrf: str, revealed: Revealed | None = None) -> str:
    if entry.status != PENDING or entry.expired:
        return ""
    token = f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
    target = f"/approvals/{quote(entry.id)}"
    comment = f'<label>Comment<br><input type="text" name="comment" maxlength="{MAX_COMMENT}"></label>'
    session = (
        '<p><label><input type="checkbox" name="scope" value="session"> also approve this tool for the rest '
        "of the session</label></p>"
        if entry.for_session
        else ""
    )
    start = edit_start(revealed)
    starting = " (starting from the real values; left as they are, the call runs unchanged)" if start else ""
    edits = (
        "<details><summary>Approve with edited arguments</summary><p><label>Arguments to run with instead "
        f"(JSON; the policy decides on them again){esc(starting)}<br>"
        f'<textarea name="args" rows="4">{esc(start)}</textarea></label></p></details>'
    )
    return (
        f'<form class="answer approve" method="post" action="{target}">{token}'
        f'<input type="hidden" name="action" value="approve">{comment}{edits}{session}<button>Approve</button></form>'
        f'<form class="answer deny" method="post" action="{target}">{token}'
        f'<input type="hidden" name="action" value="deny">{comment}<button>Deny</button></form>'
    )


def request_page(
    entry: Entry,
    events: Sequence[AuditEvent],
    key: bytes,
    tool: ToolSpec | None,
    csrf: str,
    flash: str,
    revealed: Revealed | None = None,
) -> str:
    """The request's page; ``revealed``: its real arguments (or why not), for someone who may
    answer it, None for anyone else."""
    request = entry.request
    by_id = {event.event_id: event for event in events}
    sources = [by_id[p["event_id"]] for p in request.get("provenance", []) if p.get("event_id") in by_id]
    approvers = ", ".join(entry.approvers) if entry.approvers is not None else "anyone signed in"
    facts = (
        '<dl class="facts">'
        f"<dt>who asks</dt><dd>{who_asks(entry)}</dd>"
        f"<dt>to do</dt><dd>{action(entry, tool)}</dd>"
        f'<dt>time left</dt><dd class="left">{esc(time_left(entry))}</dd>'
        f"<dt>may answer</dt><dd>{esc(approvers)}</dd>"
        + (f"<dt>data seen</dt><dd>{esc(', '.join(request['labels']))}</dd>" if request.get("labels") else "")
        + "</dl>"
    )
    answered = ""
    if entry.answered_by:
        answered = f"<p>{esc(entry.status)} by {esc(entry.answered_by)}" + (
            f": {esc(entry.comment)}</p>" if entry.comment else "</p>"
        )
    untrusted = ""
    if sources:
        items = "".join(f"<li><code>{esc(summary(e))}</code></li>" for e in sources)
        untrusted = f"<h2>Untrusted content read before it</h2><ul>{items}</ul>"
    recent = "\n".join(session_lines(events[-12:]))
    return (
        message(flash)
        + facts
        + answered
        + "<h2>Arguments</h2>"
        + revealed_note(revealed)
        + arguments(entry, origins(entry, events, key), revealed)
        + "<h2>Why Tether asked</h2>"
        + why(entry)
        + answer_forms(entry, csrf, revealed)
        + untrusted
        + f"<h2>Recent events of the session</h2><pre>{esc(recent)}</pre>"
        + f'<p><a href="/sessions/{quote(entry.session_id)}">the whole session</a></p>'
    )


def index(pending: Sequence[Entry], recent: Sequence[Entry], flash: str) -> str:
    cards = "".join(
        f'<div class="card"><h2><a href="/approvals/{quote(e.id)}">{esc(e.agent)} wants to call '
        f"{esc(e.tool)}</a></h2><p><code>{esc(cut(json.dumps(e.request.get('args'), ensure_ascii=False), 240))}"
        f"</code></p><p>{esc(e.request.get('reason', ''))}</p><p>{esc(time_left(e))} · "
        f"request {esc(e.id)}</p></div>"
        for e in pending
    )
    body = message(flash) + (cards or "<p>No pending requests.</p>")
    done = "".join(f"<li><code>{esc(approval_line(e))}</code></li>" for e in recent)
    return body + (f"<h2>Recently answered</h2><ul>{done}</ul>" if done else "")


def session(lines: Sequence[str]) -> str:
    return f"<pre>{esc(chr(10).join(lines))}</pre>" if lines else "<p>No events.</p>"
