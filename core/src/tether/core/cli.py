"""The ``tether`` command: check policies, list agents, read and verify the audit, run the demo."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click

from .approvals import FOR_SESSION, ONCE
from .approvals.queue import PENDING, ApprovalQueue
from .approvals.render import approval_details, approval_lines
from .approvals.terminal import whoami
from .audit import AuditStore, verify
from .audit.checkpoints import head_of
from .audit.checkpoints import read_file as read_checkpoints
from .audit.events import AuditEvent
from .audit.render import session_lines, tail_lines
from .audit.signing import public_key_from_pem
from .baselines import Baseline, departures, learn_from_store, load_baselines
from .credentials import Credentials
from .errors import PolicyError, TetherError
from .inventory import inventory
from .keys import KEY_ENV
from .policy import load_policy, read_policy
from .policy.schema import parse_duration
from .redact import user_ref
from .values import canonical_json
from .wording import count as _count

_USER = click.option("--user", help="Only events of sessions run for this user (the audit stores users fingerprinted).")
_STORE = click.option(
    "--store",
    envvar="TETHER_STORE",
    metavar="URL",
    help="Audit store URL (default: $TETHER_STORE, else .tether/tether.db here).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tether", prog_name="tether")
def main() -> None:
    """Tether: runtime security for what AI agents do."""


@main.command()
@click.argument("policies", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def check(policies: tuple[Path, ...]) -> None:
    """Validate policy files; print every problem with file, line and key."""
    failed = False
    for path in policies:
        try:
            compiled = load_policy(path)
        except PolicyError as exc:
            failed = True
            for issue in exc.issues:
                click.echo(str(issue), err=True)
            click.echo(f"{path}: {_count(len(exc.issues), 'problem')}", err=True)
            continue
        p = compiled.policy
        click.echo(
            f"{path}: ok ({_count(len(p.agents), 'agent')}, {_count(len(p.tools), 'tool')}, "
            f"{_count(len(p.rules), 'rule')}, {p.mode.value} mode, default {p.default})"
        )
        a = p.anomalies
        if p.sequences or a is not None:
            checks = (
                f"new_tool: {a.new_tool}, new_destination: {a.new_destination}, volume: {a.volume}, burst: {a.burst}"
                if a is not None
                else "off"
            )
            click.echo(f"  sequences: {len(p.sequences)}; anomaly checks: {checks}")
        unlimited = sorted(name for name, agent in p.agents.items() if agent.data is None)
        if unlimited:
            click.echo(f"  note: no 'data' clearance, so they may receive any data class: {', '.join(unlimited)}")
    if failed:
        sys.exit(1)


@main.command(name="test")
@click.argument("tests", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy to test (default: each file's own `policy:`).",
)
@click.option("-v", "--verbose", is_flag=True, help="Name the tests that pass too.")
def test_command(tests: tuple[Path, ...], policy: Path | None, verbose: bool) -> None:
    """Run policy tests (YAML): each call must get its expected verdict, rule or reason."""
    from .policytest import report, run_files

    outcome = run_files(list(tests), policy)
    report(outcome, click.echo, verbose)
    if not outcome.ok:
        sys.exit(1)


@main.command()
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new policy to decide with.",
)
@_STORE
@click.option("--since", help="Only sessions active in this recent span: 30m, 7d ...")
@click.option("--agent", help="Only this agent's decisions (its sessions are replayed whole).")
@click.option("--session", "session_id", help="Only this session.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True)
@click.option("--all", "everything", is_flag=True, help="jsonl: every decision, not only those that change.")
@click.option("--stop-on-corrupt", is_flag=True, help="Stop at the first event that does not verify.")
@click.option("--no-verify", is_flag=True, help="Skip checking events' hashes (faster; `tether audit verify` checks).")
def replay(
    policy_path: Path,
    store: str | None,
    since: str | None,
    agent: str | None,
    session_id: str | None,
    fmt: str,
    everything: bool,
    stop_on_corrupt: bool,
    no_verify: bool,
) -> None:
    """Decide recorded sessions again under a new policy: what would change. Runs nothing,
    writes nothing to the audit."""
    from .replay import CorruptAudit, Replayer, Summary, recorded

    try:
        compiled = load_policy(policy_path)  # before any work: a broken policy replays nothing
    except PolicyError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        click.echo(f"{policy_path}: {_count(len(exc.issues), 'problem')}; nothing replayed", err=True)
        sys.exit(2)
    since_us = int((time.time() - parse_duration(since)) * 1_000_000) if since else None
    audit_store = _open(store)
    replayer = Replayer(compiled, audit_store, verify=not no_verify, stop_on_corrupt=stop_on_corrupt)
    summary = Summary(agent=agent)
    try:
        for redecision in replayer.run(recorded(audit_store, since_us=since_us, agent=agent, session_id=session_id)):
            reported = summary.add(redecision)
            if fmt == "jsonl" and (reported or (everything and agent in (None, redecision.event.agent))):
                click.echo(canonical_json({"changed": redecision.changed, **redecision.as_dict()}))
    except CorruptAudit as exc:
        click.echo(f"audit problem: {exc}; stopped (--stop-on-corrupt)", err=True)
        sys.exit(2)
    finally:
        audit_store.close()
    if fmt == "text":
        for line in summary.lines(replayer):
            click.echo(line)
    else:
        for problem in replayer.problems:
            click.echo(f"audit problem: {problem.message}", err=True)
    if replayer.problems:
        sys.exit(1)


@main.command(name="report")
@_STORE
@click.option("--since", help="Only this recent span: 24h, 7d ... (default: everything).")
@click.option(
    "--policy",
    envvar="TETHER_POLICY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy to measure the agents' drift against (default: $TETHER_POLICY).",
)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write an HTML page.")
def report_command(store: str | None, since: str | None, policy: Path | None, html_path: Path | None) -> None:
    """What the agents did: decisions over time, denials, approvals, drift and findings."""
    from .report import collect, html, text_lines

    spec = read_policy(policy)[0] if policy else None
    since_us = int((time.time() - parse_duration(since)) * 1_000_000) if since else None
    audit_store = _open(store)
    try:
        result = collect(audit_store, since_us=since_us, policy=spec)
    finally:
        audit_store.close()
    for line in text_lines(result):
        click.echo(line)
    if html_path is not None:
        html_path.write_text(html(result), encoding="utf-8")
        click.echo(f"\nwrote {html_path}")


@main.group(invoke_without_command=True)
@click.option(
    "--policy",
    envvar="TETHER_POLICY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy to compare with what the audit saw (default: $TETHER_POLICY).",
)
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def agents(ctx: click.Context, policy: Path | None, store: str | None, as_json: bool) -> None:
    """List agents from the policy and the audit: grants, use, identity, baselines, and findings."""
    if ctx.invoked_subcommand is not None:
        return
    spec = read_policy(policy)[0] if policy else None
    audit_store = _open(store)
    records = inventory(spec, audit_store.tool_usage(), _active_credentials(audit_store))
    learned, departed = _behaviour(audit_store)
    if as_json:
        out = [
            {
                **r.__dict__,
                "findings": r.findings,
                "baselines": [_baseline_json(b) for b in learned.get(r.name, [])],
                "departed": {s: dict(c) for s, c in departed.get(r.name, {}).items()},
            }
            for r in records
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not records:
        click.echo("no agents: give a policy with --policy, or run an agent under Tether first")
    for r in records:
        click.echo(f"{r.name}  ({'in policy' if r.in_policy else 'NOT IN POLICY'})")
        if r.in_policy:
            click.echo(f"  owner:   {r.owner}\n  purpose: {r.purpose}")
            click.echo(f"  granted: {', '.join(r.granted) or '-'}")
        used = ", ".join(f"{t} ({', '.join(f'{n} {v}' for v, n in sorted(c.items()))})" for t, c in r.used.items())
        click.echo(f"  used:    {used or '-'}")
        if r.credentials:
            click.echo(f"  identity: authenticated ({_count(r.credentials, 'active credential')})")
        else:
            click.echo("  identity: asserted in code (no credential)")
        for finding in r.findings:
            click.echo(f"  ! {finding}")
        if r.unused:
            click.echo(f"  - granted but never used: {', '.join(r.unused)}")
        for b in learned.get(r.name, []):
            click.echo(f"  baseline{f' (tenant {b.tenant})' if b.tenant else ''}: {_baseline_line(b)}")
        _departures(departed.get(r.name, {}))
    if policy is None and records:
        click.echo("(no --policy given: agents and tools the policy does not know are not flagged)")


def _active_credentials(store: AuditStore) -> dict[str, int]:
    now = time.time_ns() // 1000
    counts: dict[str, int] = {}
    for credential in Credentials(store).list():
        if credential.state(now) == "active":
            counts[credential.agent] = counts.get(credential.agent, 0) + 1
    return counts


@agents.group()
def credentials() -> None:
    """Issue, list and revoke the secrets agents authenticate with."""


@credentials.command("create")
@click.argument("agent")
@click.option("--tenant", "tenants", multiple=True, help="Valid only for this tenant (repeatable; default: any).")
@click.option("--expires", metavar="DURATION", help="Lifetime, e.g. 30d or 12h (default: until revoked).")
@_STORE
def credentials_create(agent: str, tenants: tuple[str, ...], expires: str | None, store: str | None) -> None:
    """Issue a credential for AGENT and print its secret (shown only this once)."""
    try:
        lifetime = parse_duration(expires) if expires else None
        credential, secret = Credentials(_open(store, create=True)).create(
            agent, tenants=list(tenants) or None, expires_in=lifetime
        )
    except (TetherError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)
    click.echo(f"credential {credential.id} for {agent}: store the secret now, it is not shown again", err=True)


@credentials.command("list")
@click.argument("agent", required=False)
@_STORE
def credentials_list(agent: str | None, store: str | None) -> None:
    """List credentials (never their secrets)."""
    now = time.time_ns() // 1000
    found = Credentials(_open(store)).list(agent)
    if not found:
        click.echo("no credentials" + (f" for {agent}" if agent else ""))
    for c in found:
        tenants = ", ".join(c.tenants) if c.tenants is not None else "any tenant"
        expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(c.expires_us / 1e6)) if c.expires_us else "never"
        click.echo(f"{c.id}  {c.agent:<24} {c.state(now):<8} {tenants}  expires {expires}")


@credentials.command("revoke")
@click.argument("credential_id")
@_STORE
def credentials_revoke(credential_id: str, store: str | None) -> None:
    """Revoke a credential: requests carrying it are refused from now on."""
    try:
        credential = Credentials(_open(store)).revoke(credential_id)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {credential.id} ({credential.agent})")


def _behaviour(audit_store: AuditStore) -> tuple[dict[str, list[Baseline]], dict[str, Any]]:
    """Each agent's baselines, and the sessions whose decisions recorded departures from them."""
    learned: dict[str, list[Baseline]] = {}
    try:
        for b in load_baselines(audit_store):
            learned.setdefault(b.agent, []).append(b)
        return learned, departures(audit_store)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None


def _departures(sessions: dict[str, Any], most: int = 10) -> None:
    if not sessions:
        return
    click.echo(f"  departed from its baseline: {_count(len(sessions), 'session')}")
    for session_id, found in list(sessions.items())[:most]:
        kinds = ", ".join(f"{kind.removeprefix('tether.')} x{n}" for kind, n in sorted(found.items()))
        click.echo(f"    {session_id}: {kinds}")
    if len(sessions) > most:
        click.echo(f"    ... and {len(sessions) - most} more (--json lists them all)")


def _baseline_line(b: Baseline) -> str:
    learned = time.strftime("%Y-%m-%d %H:%M", time.localtime(b.learned_us / 1e6))
    return (
        f"{_count(b.sessions, 'session')} (learned {learned}); calls per session median {b.calls_p50}, "
        f"p95 {b.calls_p95}, max {b.calls_max}; at most {b.burst_max} a minute; "
        f"tools {', '.join(b.tools) or '-'}; {_count(len(b.addresses), 'destination')}"
    )


def _baseline_json(b: Baseline) -> dict[str, Any]:
    out = {name: getattr(b, name) for name in b.__dataclass_fields__ if name not in ("addresses", "domains")}
    return {**out, "destinations": len(b.addresses), "destination_domains": len(b.domains)}


@main.group()
def baseline() -> None:
    """Learn what is normal for each agent from the audit, and show it."""


@baseline.command(name="learn")
@_STORE
@click.option("--since", metavar="DURATION", help="Learn from this last period only (7d, 12h); default: everything.")
def baseline_learn(store: str | None, since: str | None) -> None:
    """Learn each agent's baseline (and each tenant's) from the audit, and store it for every process."""
    try:
        since_us = int((time.time() - parse_duration(since)) * 1e6) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    audit_store = _open(store)
    started = time.perf_counter()
    try:
        learned = learn_from_store(audit_store, since_us)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    if not learned:
        click.echo("no tool calls in the audit" + (f" in the last {since}" if since else "") + ": nothing learned")
        return
    for b in learned:
        click.echo(f"{b.agent}{f' (tenant {b.tenant})' if b.tenant else ''}: {_baseline_line(b)}")
    click.echo(f"learned {_count(len(learned), 'baseline')} in {time.perf_counter() - started:.1f}s")


@baseline.command(name="show")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def baseline_show(store: str | None, as_json: bool) -> None:
    """The baselines in the store."""
    try:
        learned = load_baselines(_open(store))
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([_baseline_json(b) for b in learned], indent=2))
        return
    if not learned:
        click.echo("no baselines: run `tether baseline learn` once agents have run under Tether")
    for b in learned:
        click.echo(f"{b.agent}{f' (tenant {b.tenant})' if b.tenant else ''}: {_baseline_line(b)}")


@main.group()
def audit() -> None:
    """Read, verify and export the audit."""


@audit.command()
@_STORE
@click.option("-n", "--lines", default=20, show_default=True, help="How many recent events to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they arrive.")
@_USER
def tail(store: str | None, lines: int, follow: bool, user: str | None) -> None:
    """Print the most recent events."""
    audit_store = _open(store)
    ref = user_ref(audit_store.key, user) if user else None
    last_id = 0
    batch = list(audit_store.events(last=lines, user=ref))
    while True:
        for line in tail_lines(batch, fixed=follow):  # later batches line up with earlier ones
            click.echo(line)
        last_id = batch[-1].id if batch else last_id
        if not follow:
            return
        time.sleep(0.5)
        batch = list(audit_store.events(after_id=last_id, user=ref))


@audit.command()
@click.argument("session_id")
@_STORE
def show(session_id: str, store: str | None) -> None:
    """Print one session's events as a decision chain."""
    events = _open(store).session_events(session_id)
    if not events:
        click.echo(f"no events for session {session_id!r}", err=True)
        sys.exit(1)
    for line in session_lines(events):
        click.echo(line)


@audit.command(name="verify")
@_STORE
@click.option(
    "--against",
    "against",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also check against the checkpoint(s) in FILE (from `tether audit checkpoint -o`). Repeatable.",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check the checkpoints' Ed25519 signatures with this public key (PEM).",
)
@click.option(
    "--export",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Verify this export (`tether audit export`) instead of a store; with --public-key, no key is needed.",
)
def verify_command(
    store: str | None, against: tuple[Path, ...], public_key: Path | None, export_file: Path | None
) -> None:
    """Check the hash chains, and the log against its newest checkpoint; name every edited,
    missing or reordered event, and a cut, wiped or rolled-back log. Exit 1 if any."""
    try:
        anchors = [c for path in against for c in read_checkpoints(path)]
        signer = public_key_from_pem(public_key.read_bytes()) if public_key else None
        if export_file is not None:
            location, rows, key = str(export_file), _exported(export_file), _environment_key()
            if key is None and signer is None:
                raise click.ClickException("without TETHER_KEY, give --public-key to check the checkpoints")
        else:
            audit_store = _open(store)
            location, rows, key = audit_store.location, list(audit_store.events()), audit_store.key
            newest = audit_store.checkpoints.newest()
            anchors += [newest] if newest is not None else []
        report = verify(key, rows, anchors, public_key=signer)
    except (TetherError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    for problem in report.problems:
        click.echo(f"TAMPERED: {problem.message}", err=True)
    status = "ok" if report.ok else f"FAILED ({_count(len(report.problems), 'problem')})"
    click.echo(f"{location}: {_count(report.events, 'event')} in {_count(report.sessions, 'session')}: {status}")
    if not report.content_checked:
        click.echo("events' contents not checked (no key): only the links between them and the checkpoints")
    if anchors:
        click.echo(f"checked against {_count(len(anchors), 'checkpoint')}, the newest of {anchors[-1].when()}")
    else:
        click.echo("no checkpoint yet: a cut of the newest events cannot be detected (see `tether audit checkpoint`)")
    if not report.ok:
        sys.exit(1)


def _exported(path: Path) -> list[AuditEvent]:
    """Events from a `tether audit export` file, as they were stored."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            fields = json.loads(line)
            details = fields.pop("details")
            rows.append(AuditEvent(**fields, data=canonical_json(details)))
        except (ValueError, TypeError, KeyError) as exc:
            raise click.ClickException(f"{path}:{number}: not an exported event ({exc})") from None
    return rows


def _environment_key() -> bytes | None:
    configured = os.environ.get(KEY_ENV)
    return configured.encode() if configured else None


@audit.command(name="checkpoint")
@_STORE
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write it to FILE, to keep elsewhere."
)
def checkpoint_command(store: str | None, output: Path | None) -> None:
    """Record the log's head now, signed with the store's key, where the store keeps checkpoints
    (and in FILE). Refused if the log no longer holds the head recorded before."""
    audit_store = _open(store)
    try:
        checkpoint = audit_store.checkpoints.write() if audit_store.checkpoints.sinks else head_of(audit_store)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    if output is not None:
        output.write_text(checkpoint.to_json() + "\n", encoding="utf-8")
    places = [s.where for s in audit_store.checkpoints.sinks] + ([str(output)] if output else [])
    click.echo(f"checkpoint of {audit_store.location}: event {checkpoint.last_id}, head {checkpoint.head}")
    click.echo(f"kept in: {', '.join(places) or 'nowhere (give -o FILE)'}")


@audit.command()
@_STORE
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--session", "session_id", help="Only this session.")
@click.option("-o", "--output", type=click.File("w", encoding="utf-8"), default="-", help="File (default: stdout).")
@_USER
def export(store: str | None, fmt: str, session_id: str | None, output: Any, user: str | None) -> None:
    """Export events, one JSON object per line, with their hashes."""
    audit_store = _open(store)
    ref = user_ref(audit_store.key, user) if user else None
    for event in audit_store.events(session_id=session_id, user=ref):
        output.write(json.dumps(event.as_dict(), ensure_ascii=False, sort_keys=True) + "\n")


@main.group()
def approvals() -> None:
    """List and answer pending approval requests (from any process sharing the store)."""


@approvals.command(name="list")
@_STORE
@click.option("--all", "everything", is_flag=True, help="Answered and expired requests too.")
def approvals_list(store: str | None, everything: bool) -> None:
    """Pending requests, newest first."""
    entries = ApprovalQueue(_open(store)).entries(status=None if everything else PENDING)
    if not entries:
        click.echo("no pending approval requests" if not everything else "no approval requests")
    for line in approval_lines(entries):
        click.echo(line)


@approvals.command(name="show")
@click.argument("approval_id")
@_STORE
def approvals_show(approval_id: str, store: str | None) -> None:
    """A request with its context: arguments (real values shown while pending), reason, data labels,
    what untrusted content preceded it."""
    audit_store = _open(store)
    queue = ApprovalQueue(audit_store)
    entry = queue.get(approval_id)
    if entry is None:
        raise click.ClickException(f"no approval request {approval_id!r}")
    revealed = queue.reveal(entry) if entry.status == PENDING and not entry.expired else None
    for line in approval_details(entry, audit_store.session_events(entry.session_id), revealed):
        click.echo(line)


_ANSWERER = click.option(
    "--as",
    "by",
    envvar="TETHER_APPROVER",
    default=whoami,
    show_default="you",
    help="Who answers (as named in the policy's approver groups); $TETHER_APPROVER.",
)
_COMMENT = click.option("--comment", default="", help="Why (recorded in the audit).")


@approvals.command(name="approve")
@click.argument("approval_id")
@_STORE
@_ANSWERER
@_COMMENT
@click.option("--args", "edited", help="Run with these arguments instead (a JSON object); the policy re-checks them.")
@click.option(
    "--for-session", is_flag=True, help="Approve this tool for the rest of the session, if the policy allows."
)
def approvals_approve(
    approval_id: str, store: str | None, by: str, comment: str, edited: str | None, for_session: bool
) -> None:
    """Approve a pending request."""
    try:
        args = json.loads(edited) if edited is not None else None
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--args is not JSON: {exc}") from None
    _answer(
        store, approval_id, approved=True, by=by, comment=comment, args=args, scope=FOR_SESSION if for_session else ONCE
    )


@approvals.command(name="deny")
@click.argument("approval_id")
@_STORE
@_ANSWERER
@_COMMENT
def approvals_deny(approval_id: str, store: str | None, by: str, comment: str) -> None:
    """Deny a pending request."""
    _answer(store, approval_id, approved=False, by=by, comment=comment)


def _answer(store: str | None, approval_id: str, **answer: Any) -> None:
    try:
        entry = ApprovalQueue(_open(store)).answer(approval_id, **answer)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{entry.status} {entry.id}: {entry.agent} -> {entry.tool} (by {entry.answered_by})")


@main.command()
@_STORE
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port (0: any free port).")
@click.option(
    "--token",
    "tokens",
    multiple=True,
    envvar="TETHER_SERVE_TOKENS",
    metavar="[NAME=]TOKEN",
    help="Sign-in token: NAME=TOKEN names its holder, a bare TOKEN is shared (people give their "
    "name). Repeatable; $TETHER_SERVE_TOKENS (space-separated). Default: a new shared token.",
)
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(exists=True, dir_okay=False),
    envvar="TETHER_POLICY",
    help="Policy the decision API enforces at /v1 and whose tool descriptions and effects the page "
    "shows (default: $TETHER_POLICY). Without one, only the approvals page is served.",
)
def serve(store: str | None, host: str, port: int, tokens: tuple[str, ...], policy_path: str | None) -> None:
    """Serve the approvals page (sign-in required) and, with a policy, the decision API at /v1
    (agent credentials required); needs tether[serve]."""
    from .guard import Guard

    try:
        from .service.api import api_app
        from .service.app import approvals_app
        from .service.limits import MAX_BODY
        from .service.run import Limits, listen
        from .service.run import serve as run
    except ImportError as exc:
        raise click.ClickException(f"tether serve needs the serve extra: pip install 'tether[serve]' ({exc})") from None

    known: dict[str, str | None] = {}
    for given in tokens:
        name, _, token = given.rpartition("=") if "=" in given else ("", "", given)
        if len(token) < 16:
            raise click.ClickException("a token needs at least 16 characters")
        known[token] = name or None
    if not known:
        shared = secrets.token_urlsafe(24)
        known[shared] = None
        click.echo(f"sign-in token (shared; people give their name): {shared}")
    opened = _open(store)
    policy = load_policy(policy_path) if policy_path else None
    guard = Guard(policy, store=opened) if policy is not None else None
    mounts = {"/v1": api_app(guard)} if guard is not None else {}
    app = approvals_app(opened, known, policy=policy, mounts=mounts)
    try:
        sock = listen(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host} without TLS; put the page behind a TLS proxy", err=True)
    address = f"http://{host}:{sock.getsockname()[1]}"
    click.echo(f"approvals: {address}/  (store {opened.location}); Ctrl-C stops")
    if guard is not None:
        click.echo(f"decision API: {address}/v1  (OpenAPI document at /v1/openapi.json)")
    try:  # an API request's JSON may be larger than a form
        run(app, sock, Limits(body=MAX_BODY) if guard is not None else None)
    finally:
        sock.close()
        if guard is not None:
            guard.close()


@main.command()
@_STORE
@click.option("--timeout", type=float, help="Seconds to wait for an approval (default: the demo policy's).")
@click.option(
    "--interactive/--no-interactive",
    default=None,
    help="Ask for approval at the terminal (default: when stdin is a terminal).",
)
def demo(store: str | None, timeout: float | None, interactive: bool | None) -> None:
    """Run a scripted support agent under Tether: allowed, denied and approval-gated calls."""
    from .demo import run_demo

    try:
        run_demo(store, timeout=timeout, interactive=interactive)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def mcp() -> None:
    """The MCP gateway: Tether in front of any MCP server (needs tether[mcp])."""


@mcp.command(name="proxy", context_settings={"ignore_unknown_options": True})
@click.option("--policy", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Policy file.")
@click.option("--agent", required=True, help="The policy agent the client acts as.")
@click.option("--server-name", help="The server's name in the policy (server/tool); default: the name it gives.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the server on each request.")
@_STORE
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def mcp_proxy(
    policy: Path, agent: str, server_name: str | None, timeout: float, store: str | None, command: tuple[str, ...]
) -> None:
    """Speak MCP on stdin/stdout in front of the server started by COMMAND (after --)."""
    import anyio

    from .guard import Guard
    from .mcp import Gateway, Upstream
    from .mcp.serve import serve_stdio

    try:
        guard = Guard(policy, store=_open(store, create=True))
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    upstream = Upstream.command(command[0], list(command[1:]))
    gateway = Gateway(guard, upstream, agent=agent, server_name=server_name, timeout=timeout)
    try:
        anyio.run(serve_stdio, gateway)
    except Exception as exc:  # noqa: BLE001 - said plainly instead of a task group's traceback
        raise click.ClickException(f"the MCP gateway stopped: {_first_cause(exc)}") from None
    finally:
        guard.close()


def _first_cause(exc: BaseException) -> str:
    """What went wrong, out of the groups a task group wraps it in."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


@mcp.command(name="serve")
@click.option("--policy", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Policy file.")
@click.option("--upstream", "url", required=True, metavar="URL", help="The MCP server's streamable HTTP URL.")
@click.option(
    "--upstream-header",
    "headers",
    multiple=True,
    metavar="NAME:VALUE",
    help="A header sent to the server (its own credentials); repeatable.",
)
@click.option("--server-name", help="The server's name in the policy (server/tool); default: the name it gives.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8766, show_default=True, help="Port.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the server on each request.")
@_STORE
def mcp_serve(
    policy: Path,
    url: str,
    headers: tuple[str, ...],
    server_name: str | None,
    host: str,
    port: int,
    timeout: float,
    store: str | None,
) -> None:
    """Serve MCP over streamable HTTP at /mcp in front of a remote server. Clients send an agent
    credential as a bearer token (tether agents credentials create NAME); it names their agent."""
    from .guard import Guard
    from .mcp import Gateway
    from .mcp.http import serve_http, upstream_url

    sent = {}
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise click.ClickException(f"--upstream-header {header!r}: expected NAME:VALUE")
        sent[name.strip()] = value.strip()
    try:
        guard = Guard(policy, store=_open(store, create=True))
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    upstream = upstream_url(url, sent, timeout)
    gateway = Gateway(guard, upstream, server_name=server_name, timeout=timeout, transport="streamable-http")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host} without TLS; put the gateway behind a TLS proxy", err=True)
    click.echo(f"MCP gateway: http://{host}:{port}/mcp in front of {url} (store {guard.store.location})", err=True)
    try:
        serve_http(gateway, host, port)
    finally:
        guard.close()


@mcp.group(name="pins")
def mcp_pins() -> None:
    """MCP tool definitions as pinned, and approving the ones that changed or look suspicious."""


@mcp_pins.command(name="list")
@click.argument("server", required=False)
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def mcp_pins_list(server: str | None, store: str | None, as_json: bool) -> None:
    """Pinned tools (of one SERVER, or all), with what is wrong with those not approved."""
    from .mcp.pins import Pins

    pins = Pins(_open(store)).list(server)
    if as_json:
        click.echo(json.dumps([vars(pin) | {"findings": list(pin.findings)} for pin in pins], indent=2))
        return
    if not pins:
        click.echo("no pinned tools")
    for pin in pins:
        by = f" (by {pin.approved_by})" if pin.status == "approved" and pin.approved_by else ""
        click.echo(f"{pin.server}/{pin.tool}: {pin.status}{by}")
        for finding in pin.findings:
            click.echo(f"  - {finding}")


@mcp_pins.command(name="approve")
@click.argument("tool", metavar="SERVER/TOOL")
@_STORE
@_ANSWERER
def mcp_pins_approve(tool: str, store: str | None, by: str) -> None:
    """Approve a tool's definition as last seen: it becomes the pin."""
    from .mcp.pins import Pins

    server, _, name = tool.partition("/")
    if not name:
        raise click.ClickException("name the tool as SERVER/TOOL")
    try:
        pin = Pins(_open(store)).approve(server, name, by)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"approved {pin.server}/{pin.tool} (by {by})")


# A person at a terminal can wait longer than a decision: reads of a busy store get 30 s.
_CLI_STORE_TIMEOUT = 30.0


def _open(url: str | None, *, create: bool = False) -> AuditStore:
    try:
        return AuditStore(url, create=create, timeout=_CLI_STORE_TIMEOUT)
    except TetherError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
