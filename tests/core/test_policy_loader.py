"""Loading policies: every problem reported with file, line, key path and what was expected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tether.core import PolicyError, load_policy
from tether.core.policy import parse_policy

GOOD = """\
version: 1
tools:
  search: {effects: [read]}
  send_email:
    effects: [external]
agents:
  bot:
    purpose: answer questions
    owner: team@acme.example
    tools:
      search: allow
      send_email:
        when: args.to.endsWith("@acme.example")
        rate: 5/min
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text)
    return [str(issue) for issue in caught.value.issues]


def load_policy_text(text: str) -> object:
    from tether.core.policy import compile_policy

    return compile_policy(*parse_policy(text, "p.yaml"))


def test_a_good_policy_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    compiled = load_policy(path)
    assert set(compiled.policy.agents["bot"].tools) == {"search", "send_email"}
    assert compiled.policy.agents["bot"].tools["send_email"].rate is not None
    assert compiled.policy.agents["bot"].tools["send_email"].rate.per_seconds == 60


def test_unknown_key_is_an_error_with_line_and_suggestion() -> None:
    found = problems(GOOD.replace("        when:", "        whne:"))
    assert found == ["p.yaml:13:9: agents.bot.tools.send_email.whne: unknown key 'whne' (did you mean 'when'?)"]


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("effects: [read]", "effects: [read, fly]").replace("    owner: team@acme.example\n", "")
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("p.yaml:3:28: tools.search.effects[1]: Input should be 'read'")
    assert "(got 'fly')" in found[0]
    assert found[1] == "p.yaml:7:3: agents.bot.owner: required key 'owner' is missing"


def test_wrong_types_say_what_was_expected() -> None:
    found = problems(GOOD.replace("rate: 5/min", "rate: fast"))
    assert found == [
        "p.yaml:14:15: agents.bot.tools.send_email.rate: expected a rate such as 20/min, 100/h or 5/10s, got 'fast'"
    ]
    found = problems(GOOD.replace("search: allow", "search: sometimes"))
    assert "expected 'allow', 'ask' or a mapping" in found[0]
    assert found[0].startswith("p.yaml:11:15: agents.bot.tools.search:")


def test_duplicate_keys_are_errors() -> None:
    found = problems(GOOD + "  bot:\n    purpose: x\n    owner: y\n")
    assert found == ["p.yaml:15:3: agents.bot: duplicate key 'bot': the second would silently replace the first"]


def test_malformed_yaml_gives_the_position() -> None:
    found = problems("version: 1\nagents: [a,\n")
    assert len(found) == 1
    assert found[0].startswith("p.yaml:3:1: malformed YAML:")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a list\n", "just text"])
def test_empty_or_non_mapping_documents_are_refused(text: str) -> None:
    assert problems(text)


def test_version_is_required_and_checked() -> None:
    assert problems(GOOD.replace("version: 1", "version: 2"))[0].startswith("p.yaml:1:10: version:")
    assert "required key 'version' is missing" in problems(GOOD.replace("version: 1\n", ""))[0]


def test_grant_of_an_undeclared_tool_is_an_error() -> None:
    found = problems(GOOD.replace("      search: allow", "      serch: allow"))
    assert found == [
        "p.yaml:11:7: agents.bot.tools.serch: unknown tool 'serch' (did you mean 'search'?); declare it under 'tools'"
    ]


def test_condition_that_does_not_compile_is_located() -> None:
    found = problems(GOOD.replace('args.to.endsWith("@acme.example")', 'args.to.endsWith("@acme.example"'))
    assert len(found) == 1
    assert found[0].startswith("p.yaml:13:15: agents.bot.tools.send_email.when: condition does not compile at column")


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("argz.to == 'x'", "unknown name 'argz'"),
        ("session.taintd", "'session' has no field 'taintd'"),
        ("tool.effect == []", "'tool' has no field 'effect'"),
        ('session.tool_calls["serch"] > 2', "unknown tool 'serch' (did you mean 'search'?)"),
        ("session.tool_calls.sendmail > 2", "unknown tool 'sendmail'"),
        pytest.param(
            '"just a string"',
            "must be true or false",
            marks=pytest.mark.skipif(
                sys.version_info < (3, 11),
                reason="the pure-Python CEL runtime has no type checker; "
                "a non-boolean result is refused when evaluated instead",
            ),
        ),
    ],
)
def test_conditions_referring_to_unknown_names_are_errors(condition: str, message: str) -> None:
    found = problems(
        GOOD.replace('args.to.endsWith("@acme.example")', f"'{condition}'" if '"' in condition else condition)
    )
    assert len(found) == 1, found
    assert message in found[0]
    assert "agents.bot.tools.send_email.when" in found[0]


def test_rules_are_checked_too() -> None:
    text = (
        GOOD
        + """\
rules:
  - id: r1
    agents: [bott]
    action: deny
    reason: x
  - id: r2
    tools: [send_*, serch]
    action: ask
    reason: y
"""
    )
    assert problems(text) == [
        "p.yaml:17:14: rules[0].agents[0]: unknown agent 'bott' (did you mean 'bot'?)",
        "p.yaml:21:21: rules[1].tools[1]: unknown tool 'serch' (did you mean 'search'?)",
    ]
    text = GOOD + "rules:\n  - id: r1\n    action: redact\n    reason: x\n"
    assert problems(text) == ["p.yaml:16:5: rules[0]: a rule with action 'redact' must list the arguments to redact"]


def test_rule_ids_must_be_unique() -> None:
    text = GOOD + "rules:\n" + "".join("  - {id: r1, action: deny, reason: x, tools: [search]}\n" for _ in "ab")
    assert problems(text) == ["p.yaml:17:10: rules[1].id: rule id 'r1' is used twice"]


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\nagents: {\xff: 1}\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(bad)


def test_python_objects_load_without_a_file() -> None:
    from tether.core import Policy

    policy = Policy.model_validate(
        {"version": 1, "tools": {"t": {}}, "agents": {"a": {"purpose": "p", "owner": "o", "tools": {"t": "allow"}}}}
    )
    assert load_policy(policy).policy is policy
    with pytest.raises(PolicyError) as caught:
        load_policy({"version": 1, "agents": {"a": {"purpose": "p", "owner": "o", "tools": {"t": "allow"}}}})
    assert str(caught.value.issues[0]) == "<policy>: agents.a.tools.t: unknown tool 't'; declare it under 'tools'"


def test_an_mcp_servers_tool_is_untrusted_unless_the_policy_says_otherwise() -> None:
    from tether.core import Trust, mcp_tool

    compiled = load_policy(
        {
            "version": 1,
            "tools": {
                mcp_tool("helpdesk", "read_ticket"): {"effects": ["read"]},
                "helpdesk/lookup": {"effects": ["read"], "output": "trusted"},
                "local_search": {"effects": ["read"]},
            },
        }
    )
    tools = compiled.policy.tools
    assert tools["helpdesk/read_ticket"].output is Trust.UNTRUSTED
    assert tools["helpdesk/lookup"].output is Trust.TRUSTED
    assert tools["local_search"].output is Trust.TRUSTED


FOUR_PROBLEMS = """\
version: 1
tools:
  read_file: {effects: [read]}
  send_email: {effects: [external]}
agents:
  helper:
    purpose: help
    owner: team@acme.example
    tools:
      read_file: allow
      delete_all: allow
  mailer:
    purpose: send mail
    owner: team@acme.example
    tools:
      send_email:
        ask: args.to.endsWith(
      wipe_disk: allow
rules:
  - id: no-external
    action: deny
    effects: [external]
"""


def test_a_schema_error_does_not_hide_unknown_tools_or_broken_conditions(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(FOUR_PROBLEMS)
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "p.yaml")
    found = [(issue.line, issue.path, issue.message) for issue in caught.value.issues]
    assert [(line, path) for line, path, _ in found] == [
        (11, "agents.helper.tools.delete_all"),
        (17, "agents.mailer.tools.send_email.ask"),
        (18, "agents.mailer.tools.wipe_disk"),
        (20, "rules[0].reason"),
    ]
    assert found[0][2].startswith("unknown tool 'delete_all'")
    assert found[1][2].startswith("condition does not compile")
    assert found[2][2].startswith("unknown tool 'wipe_disk'")
    assert found[3][2] == "required key 'reason' is missing"
    assert all(issue.file == str(tmp_path / "p.yaml") for issue in caught.value.issues)


def test_a_duplicate_key_does_not_hide_the_other_problems(tmp_path: Path) -> None:
    text = FOUR_PROBLEMS.replace("    purpose: help\n", "    purpose: help\n    purpose: helps\n")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "p.yaml")
    found = [(issue.line, issue.path) for issue in caught.value.issues]
    assert found == [
        (8, "agents.helper.purpose"),
        (12, "agents.helper.tools.delete_all"),
        (18, "agents.mailer.tools.send_email.ask"),
        (19, "agents.mailer.tools.wipe_disk"),
        (21, "rules[0].reason"),
    ]
    assert caught.value.issues[0].message.startswith("duplicate key 'purpose'")


def test_a_broken_sequence_does_not_hide_the_problems_of_the_others(tmp_path: Path) -> None:
    text = GOOD + (
        "sequences:\n"
        "  - id: first\n"  # line 16
        "    action: deny\n"
        "    after: [{tools: search}]\n"
        "  - id: second\n"
        "    reason: no mail after a search\n"
        "    action: deny\n"
        "    after: [{tools: serach}]\n"  # line 22
        "    then: {when: 'args.to >'}\n"
        "  - id: third\n"
        "    reason: a broken pattern\n"
        "    action: deny\n"
        "    after: [{tools: search, effects: [fly]}]\n"  # line 27
        "    then: {when: 'args.to >'}\n"  # not compiled: its sequence did not fit the schema
    )
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "p.yaml")
    found = [(issue.line, issue.path) for issue in caught.value.issues]
    assert found == [
        (16, "sequences[0].reason"),
        (22, "sequences[1].after[0].tools"),
        (23, "sequences[1].then.when"),
        (27, "sequences[2].after[0].effects[0]"),
    ]


def test_a_class_that_does_not_fit_the_schema_is_still_known_to_what_refers_to_it(tmp_path: Path) -> None:
    text = GOOD.replace("version: 1\n", "version: 1\nclasses:\n  account:\n    patterns: []\n") + (
        "sequences:\n"
        "  - id: accounts\n"
        "    action: deny\n"  # line 20: no reason
        "    after: [{data: [account]}]\n"
        "    then: {tools: send_email}\n"
    )
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "p.yaml")
    assert [(issue.line, issue.path) for issue in caught.value.issues] == [
        (4, "classes.account.patterns"),
        (19, "sequences[0].reason"),
    ]
