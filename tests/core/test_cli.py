"""The `tether` command, as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tether.core import ApprovalQueue, AuditStore, Guard
from tether.core.audit.schema import events
from tether.core.cli import main

from .conftest import BASE_POLICY, policy_with
from .test_policy_loader import GOOD


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TETHER_STORE", "TETHER_KEY", "TETHER_POLICY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_check_accepts_a_good_policy(workdir: Path) -> None:
    (workdir / "p.yaml").write_text(GOOD)
    code, out, _ = run("check", "p.yaml")
    assert code == 0
    assert out.splitlines()[0] == "p.yaml: ok (1 agent, 2 tools, 0 rules, enforce mode, default deny)"


def test_check_says_which_agents_may_receive_any_data(workdir: Path) -> None:
    (workdir / "p.yaml").write_text(GOOD)
    _, out, _ = run("check", "p.yaml")
    assert "no 'data' clearance" in out and "may receive any data class" in out


def test_check_rejects_a_broken_policy_with_line_numbers(workdir: Path) -> None:
    (workdir / "p.yaml").write_text(GOOD.replace("when:", "whne:"))
    (workdir / "q.yaml").write_text(GOOD)
    code, out, err = run("check", "p.yaml", "q.yaml")
    assert code == 1
    assert err == (
        "p.yaml:13:9: agents.bot.tools.send_email.whne: unknown key 'whne' (did you mean 'when'?)\np.yaml: 1 problem\n"
    )
    assert out.startswith("q.yaml: ok")


def test_audit_commands_on_a_real_store(workdir: Path) -> None:
    guard = Guard(BASE_POLICY)  # default store: .tether/tether.db here
    session = guard.session("bot", "s1")
    session.after_tool(session.before_tool("search", {"q": "x"}), "found")
    session.before_tool("delete_file", {"path": "/etc"})
    guard.session("intruder", "s2").before_tool("search", {})
    guard.close()

    code, out, _ = run("audit", "tail", "-n", "2")
    assert code == 0 and len(out.splitlines()) == 2
    assert "s2 #1  intruder  DENY  search({})  agent 'intruder' is not in the policy [default]" in out

    code, out, _ = run("audit", "show", "s1")
    lines = out.splitlines()
    assert lines[0].startswith("#0   bot            session started (enforce mode")
    assert lines[1].startswith("#1   bot            ALLOW search")
    assert lines[2].startswith("#2   bot              result of search: found")  # indented under its decision
    assert "DENY  delete_file" in lines[3]

    code, out, _ = run("audit", "verify")
    assert code == 0 and ": 6 events in 2 sessions: ok" in out

    code, out, _ = run("audit", "export", "--format", "jsonl", "--session", "s1")
    exported = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in exported] == [0, 1, 2, 3] and exported[1]["details"]["args"] == {"q": "x"}

    store = AuditStore()
    with store.engine.begin() as connection:
        connection.execute(
            events.update().where(events.c.seq == 3, events.c.session_id == "s1").values(verdict="allow")
        )
    code, out, err = run("audit", "verify")
    assert code == 1
    assert "TAMPERED: event 4 (session 's1' #3, tool.decision) was edited" in err
    assert "FAILED (1 problem)" in out


def test_agents_lists_policy_and_observed_agents_with_findings(workdir: Path) -> None:
    import yaml

    (workdir / "policy.yaml").write_text(yaml.safe_dump(BASE_POLICY))
    guard = Guard("policy.yaml")
    guard.session("bot").before_tool("search", {})
    guard.session("bot").before_tool("delete_file", {})
    guard.session("bot").before_tool("format_disk", {})
    guard.session("ghost").before_tool("search", {})
    guard.close()
    code, out, _ = run("agents", "--policy", "policy.yaml")
    assert code == 0
    assert "bot  (in policy)" in out and "owner:   team@acme.example" in out
    assert "used:    delete_file (1 deny), format_disk (1 deny), search (1 allow)" in out
    assert "! used tools the policy does not declare: format_disk" in out
    assert "! tried tools it is not granted: delete_file" in out
    assert "- granted but never used: fetch_page, refund, send_email" in out
    assert "ghost  (NOT IN POLICY)" in out and "! acted but is not in the policy" in out
    code, out, _ = run("agents", "--policy", "policy.yaml", "--json")
    listed = {a["name"]: a for a in json.loads(out)}
    assert listed["ghost"]["findings"] == ["acted but is not in the policy"]


def test_reading_commands_do_not_create_a_store(workdir: Path) -> None:
    code, _, err = run("audit", "tail")
    assert code == 1 and "no audit store at" in err
    assert not (workdir / ".tether").exists()


def test_demo_runs_without_a_terminal_and_the_timeout_denies(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether.core.cli", "demo", "--timeout", "0.2"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=workdir,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert f"Audit store (SQLite): {workdir / '.tether' / 'tether.db'}" in out
    assert "OK allowed (granted by agents.support-bot.tools.search_kb)" in out
    assert "NO Tether denied the call to 'send_email': support may only email acme.example addresses" in out
    assert "?  Tether asks a person: refunds move money" in out
    assert "waits 0s; answer from another terminal: tether approvals approve" in out
    assert "NO Tether denied the call to 'issue_refund': no approval within 0.2s" in out
    assert "tether audit verify: 16 events, hash chains intact" in out
    store = AuditStore(f"sqlite:///{workdir / '.tether' / 'tether.db'}", create=False)
    verdicts = [e.verdict for e in store.events() if e.kind in ("tool.decision", "approval")]
    assert verdicts == ["allow", "allow", "deny", "ask", "deny"]
    assert (
        "expired"
        in subprocess.run(
            [sys.executable, "-m", "tether.core.cli", "approvals", "list", "--all"],
            capture_output=True,
            text=True,
            cwd=workdir,
        ).stdout
    )


def test_demo_approves_at_an_interactive_prompt(workdir: Path) -> None:
    import os
    import pty

    controller, terminal = pty.openpty()  # the demo's stdin is a real terminal
    os.write(controller, b"y\n")  # typed ahead; the terminal holds it until the prompt reads
    result = subprocess.run(
        [sys.executable, "-m", "tether.core.cli", "demo"],
        stdin=terminal,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
    )
    os.close(terminal)
    os.close(controller)
    assert result.returncode == 0, result.stderr
    assert "approve? [y/N] (request " in result.stdout
    assert "OK allowed (approved by" in result.stdout and "refunded $120" in result.stdout


def test_corrupt_store_url_is_a_clear_error(workdir: Path) -> None:
    code, _, err = run("audit", "tail", "--store", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 1 and "cannot open the audit store" in err


def test_module_main(workdir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tether.core.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "runtime security for what AI agents do" in result.stdout


def test_the_audit_is_searched_by_user_though_it_stores_no_user_id(workdir: Path) -> None:
    guard = Guard(BASE_POLICY)
    guard.session("bot", "s1", user="dana@customer.example").before_tool("search", {})
    guard.session("bot", "s2", user="olaf").before_tool("search", {})
    guard.close()
    code, out, _ = run("audit", "export", "--user", "dana@customer.example")
    assert code == 0 and {json.loads(line)["session_id"] for line in out.splitlines()} == {"s1"}
    code, out, _ = run("audit", "tail", "--user", "olaf")
    assert code == 0 and len(out.splitlines()) == 2 and "s2" in out and "s1" not in out
    assert "dana@customer.example" not in out


EVERY_KIND_OF_PROBLEM = """\
version: 1
tools:
  search: {effects: [read]}
  refund: {effects: [money, sideways]}
agents:
  bot:
    purpose: answer questions
    owner: team@acme.example
    tools:
      search: allow
      serach: allow
      refund:
        ask: args.amount >
  helper:
    purpose: help
    tools:
      refund: allow
rules:
  - id: no-mail
    tools: [send_mail]
    action: deny
  - id: odd
    reason: an odd rule
    action: maybe
    tools: [refnd]
"""


def test_check_reports_every_problem_in_one_run(workdir: Path) -> None:
    (workdir / "p.yaml").write_text(EVERY_KIND_OF_PROBLEM)
    code, out, err = run("check", "p.yaml")
    assert code == 1 and out == ""
    lines = err.splitlines()
    expected = [
        "p.yaml:4:29: tools.refund.effects[1]: Input should be",  # a schema error hides no reference error
        "p.yaml:11:7: agents.bot.tools.serach: unknown tool 'serach' (did you mean 'search'?)",
        "p.yaml:13:14: agents.bot.tools.refund.ask: condition does not compile",
        "p.yaml:14:3: agents.helper.owner: required key 'owner' is missing",
        "p.yaml:19:5: rules[0].reason: required key 'reason' is missing",
        "p.yaml:20:13: rules[0].tools[0]: unknown tool 'send_mail'",
        "p.yaml:24:13: rules[1].action:",
        "p.yaml:25:13: rules[1].tools[0]: unknown tool 'refnd' (did you mean 'refund'?)",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    assert lines[-1] == "p.yaml: 8 problems"


def test_version(workdir: Path) -> None:
    from importlib.metadata import version

    code, out, _ = run("--version")
    assert code == 0 and out == f"tether, version {version('tether')}\n"


def test_tail_lines_up_its_columns_and_names_each_rule_once(workdir: Path) -> None:
    guard = Guard(BASE_POLICY)
    guard.session("bot", "a-much-longer-session-id").before_tool("search", {"q": "x"})
    guard.session("intruder", "s2").before_tool("search", {})
    guard.close()
    code, out, _ = run("audit", "tail")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    starts = {line.index(word) for line in lines for word in ("session started", "ALLOW", "DENY") if word in line}
    assert len(starts) == 1, out  # the summaries start in one column
    allowed = next(line for line in lines if "ALLOW" in line)
    assert allowed.count("agents.bot.tools.search") == 1, allowed  # not repeated in brackets
    assert "[default]" in next(line for line in lines if "DENY" in line)  # a rule the reason does not name


def test_approvals_list_marks_what_it_cuts(workdir: Path) -> None:
    policy = policy_with(approvals={"timeout": "60s"})
    policy["agents"]["bot"]["tools"]["send_email"] = {"ask": True, "reason": "a long reason " * 20}
    store = AuditStore()
    session = Guard(policy, store=store).session("bot", "s1")
    decision = session.before_tool("send_email", {"to": "a@acme.example"})
    ApprovalQueue(store).submit(session_request(session, decision))
    store.close()
    code, out, _ = run("approvals", "list")
    assert code == 0 and out.rstrip().endswith("…") and len(out.splitlines()[0]) < 160


def session_request(session: Any, decision: Any) -> Any:
    from tether.core import ApprovalRequest

    return ApprovalRequest(
        decision.event_id, session.agent, session.id, None, None, decision.call.tool, {}, decision.reason, (), 60
    )


def test_the_demo_tells_how_to_explore_the_store_it_used(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'elsewhere.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "tether.core.cli", "demo", "--timeout", "0.2", "--store", url],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line.strip() for line in lines[next(i for i, s in enumerate(lines) if s.startswith("Explore")) + 1 :]]
    assert len(commands) == 3 and all(c.startswith("tether ") and "|" not in c for c in commands), commands
    assert f"tether audit verify --store {url}" in commands
    assert not any("site-packages" in c for c in commands)
    for command in commands:  # each runs as pasted, against the store the demo wrote
        code, out, err = run(*command.split()[1:])
        assert code == 0, (command, out, err)
    policy = commands[1].split("--policy ", 1)[1].split()[0]
    assert (workdir / policy).exists()  # a copy the user can read and edit, where they are


def test_counts_of_one_are_singular(workdir: Path) -> None:
    import yaml

    (workdir / "p.yaml").write_text(yaml.safe_dump(BASE_POLICY))
    guard = Guard(BASE_POLICY)
    guard.session("bot", "s1").before_tool("search", {"q": "x"})
    guard.close()
    code, out, _ = run("report")
    assert code == 0 and "1 session, 1 decision" in out and "bot: 1 decision on 1 tool" in out, out
    code, out, _ = run("replay", "--policy", "p.yaml")
    assert code == 0 and out.startswith("replayed 1 decision (2 events, 1 session):"), out
    code, out, _ = run("audit", "verify")
    assert code == 0 and "2 events in 1 session: ok" in out, out


def _readme_commands() -> list[str]:
    """Every `tether ...` command the README shows, inline or in its command listing."""
    import re

    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    shown = re.findall(r"`(tether(?: [^`]*)?)`", text)
    shown += [re.split(r"\s{2,}", line.strip())[0] for line in text.splitlines() if line.startswith("    tether ")]
    commands = []
    for snippet in shown:
        first, *others = snippet.split(" | ")  # "tether approvals list | show ID": alternatives
        commands.append(first)
        path = _resolve(first)[0]
        commands += [" ".join(["tether", *path[:-1], other]) for other in others]
    return commands


def _resolve(command: str) -> tuple[list[str], Any, list[str]]:
    """The subcommand names in a command line, the command they name, and the words after them."""
    import click

    tokens = command.replace("[", " ").replace("]", " ").split()[1:]
    path: list[str] = []
    node: click.Command = main
    while tokens and isinstance(node, click.Group) and tokens[0] in node.commands:
        path.append(tokens.pop(0))
        node = node.commands[path[-1]]
    return path, node, tokens


def test_every_command_the_readme_shows_exists_as_written() -> None:
    import click

    commands = _readme_commands()
    for command in commands:
        _, node, tokens = _resolve(command)
        assert not tokens or not isinstance(node, click.Group) or tokens[0].startswith("-"), command
        known = {opt for p in node.params for opt in [*p.opts, *p.secondary_opts]} | {"--help", "-h"}
        options = [t for t in (tokens[: tokens.index("--")] if "--" in tokens else tokens) if t.startswith("-")]
        assert all(opt in known for opt in options), (command, options, sorted(known))
        required = {p.opts[-1] for p in node.params if isinstance(p, click.Option) and p.required}
        if options not in (["--version"], ["--help"]):
            assert required <= set(options), (command, required)
    assert len(commands) > 30 and "tether approvals deny ID" in commands


def test_tail_follow_keeps_its_columns_as_new_events_arrive(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import tether.core.cli as cli

    guard = Guard(BASE_POLICY)
    guard.session("bot", "s1").before_tool("search", {"q": "x"})
    naps = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:  # a session with a longer id and agent name arrives
            guard.session("intruder", "a-much-longer-session-id").before_tool("search", {})
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "time", SimpleNamespace(sleep=sleep))
    _, out, _ = run("audit", "tail", "-f")
    guard.close()
    lines = out.splitlines()
    assert len(lines) == 4 and "a-much-longer-session-id" in lines[-1], out
    starts = {line.index(word) for line in lines for word in ("session started", "ALLOW", "DENY") if word in line}
    assert len(starts) == 1, out


def test_refusals_and_approvals_show_name_each_rule_once(workdir: Path) -> None:
    rule = "agents.bot.tools.send_email"
    guard = Guard(BASE_POLICY)
    denied = guard.session("bot", "s0").before_tool("send_email", {"to": "x@evil.example"})
    guard.close()
    assert denied.reason.startswith(f"the condition of {rule} does not hold") and rule in denied.rule_ids
    assert denied.refusal().count(rule) == 1, denied.refusal()

    store = AuditStore()
    session = Guard(policy_with(default="ask", approvals={"timeout": "60s"}), store=store).session("bot", "s1")
    decision = session.before_tool("send_email", {"to": "x@evil.example"})  # not granted: asked
    assert decision.needs_approval and decision.reason.startswith(f"the condition of {rule}")
    request = dataclasses.replace(session_request(session, decision), rule_ids=decision.rule_ids)
    entry, _ = ApprovalQueue(store).submit(request)
    store.close()
    code, out, _ = run("approvals", "show", entry.id)
    why = next(line for line in out.splitlines() if line.startswith("why"))
    assert code == 0 and why.count(rule) == 1, why


def test_approvals_list_cuts_a_long_tool_name_visibly(workdir: Path) -> None:
    store = AuditStore()
    session = Guard(policy_with(approvals={"timeout": "60s"}), store=store).session("bot", "s1")
    decision = session.before_tool("refund", {"amount": 100})
    tool = "billing-service-with-a-long-name/" + "refund_" * 12
    ApprovalQueue(store).submit(dataclasses.replace(session_request(session, decision), tool=tool))
    store.close()
    code, out, _ = run("approvals", "list")
    line = out.splitlines()[0]
    assert code == 0 and "bot -> billing-service" in line and "…" in line and tool not in line, line


def test_check_reports_a_missing_reason_unknown_tools_and_a_broken_condition_together(workdir: Path) -> None:
    from .test_policy_loader import FOUR_PROBLEMS

    (workdir / "p.yaml").write_text(FOUR_PROBLEMS)
    code, out, err = run("check", "p.yaml")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert [line.split(": ")[0] + ": " + line.split(": ")[1] for line in lines[:-1]] == [
        "p.yaml:11:7: agents.helper.tools.delete_all",
        "p.yaml:17:14: agents.mailer.tools.send_email.ask",
        "p.yaml:18:7: agents.mailer.tools.wipe_disk",
        "p.yaml:20:5: rules[0].reason",
    ]
    assert "unknown tool 'delete_all'" in lines[0] and "unknown tool 'wipe_disk'" in lines[2]
    assert "condition does not compile" in lines[1] and "required key 'reason' is missing" in lines[3]
    assert lines[-1] == "p.yaml: 4 problems"
