"""Every classic entry point the installed version has, driven with scripted models: an allowed
tool call runs and is audited, a denied one is refused with its decision in the audit.

Two-agent entry points: ``user`` runs the tools ``assistant``'s model proposes. Group entry
points (patterns, swarms): the tools run in the executor the framework creates."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tether.autogen.classic import register_guard
from tether.core import AuditStore, Guard

from .conftest import LLM, Tools, assistant, events, executor, say, script, tool_call

autogen = pytest.importorskip("autogen")

ALLOWED = ("lookup", {"query": "order 7"})
DENIED = ("send_email", {"to": "x@evil.example", "body": "the list"})


def has(owner: Any, name: str) -> Any:
    """A mark that skips where ``owner`` (an object or a module path) has no ``name``."""
    if isinstance(owner, str):
        try:
            owner = __import__(owner, fromlist=["_"])
        except ImportError:
            return pytest.mark.skip(reason=f"this version has no {owner}")
    return pytest.mark.skipif(not hasattr(owner, name), reason=f"this version has no {name}")


def bounded(work: Callable[[], Any], within: float = 60.0) -> Any:
    """Run ``work`` in a thread, bounded in time; its error is raised here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), "the chat did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def drain(response: Any) -> None:
    """Consume a run response's events (a ``run``-style response, or a ``*_iter`` one)."""
    events_ = response if hasattr(response, "__iter__") and not hasattr(response, "events") else response.events
    for event in events_:
        if type(event).__name__ == "InputRequestEvent":
            event.content.respond("exit")


async def adrain(response: Any) -> None:
    source = response if hasattr(response, "__aiter__") and not hasattr(response, "events") else response.events
    async for event in source:
        if type(event).__name__ == "InputRequestEvent":
            await event.content.respond("exit")


def assert_governed(tools: Tools, store: AuditStore, proposer: str = "assistant") -> None:
    assert tools.ran == [ALLOWED]
    decisions = events(store, "tool.decision")
    assert [(d.agent, d.tool, d.verdict) for d in decisions] == [
        (proposer, "lookup", "allow"),
        (proposer, "send_email", "deny"),
    ]
    assert all(d.parent_id for d in decisions)  # each linked to the model response that proposed it
    (result,) = events(store, "tool.result")
    assert (result.tool, result.parent_id) == ("lookup", decisions[0].event_id)


# -- two agents ----------------------------------------------------------------------------


def pair(tools: Tools, guard: Guard) -> tuple[Any, Any]:
    bot, user = assistant(), executor()
    tools.register(bot, user)
    script(bot, tool_call(*ALLOWED), tool_call(*DENIED), say("TERMINATE"))
    register_guard([bot, user], guard)
    return bot, user


CHAT = {"message": "help the customer", "max_turns": 4, "silent": True}


def queue(user: Any, bot: Any) -> list[dict[str, Any]]:
    return [{"sender": user, "recipient": bot, **CHAT}]


DRIVERS: dict[str, tuple[Any, Callable[[Any, Any], Any]]] = {
    "initiate_chat": (
        has(autogen.ConversableAgent, "initiate_chat"),
        lambda user, bot: user.initiate_chat(bot, **CHAT),
    ),
    "a_initiate_chat": (
        has(autogen.ConversableAgent, "a_initiate_chat"),
        lambda user, bot: asyncio.run(user.a_initiate_chat(bot, **CHAT)),
    ),
    "initiate_chats": (
        has(autogen.ConversableAgent, "initiate_chats"),
        lambda user, bot: user.initiate_chats(queue(user, bot)),
    ),
    "autogen.initiate_chats": (
        has(autogen, "initiate_chats"),
        lambda user, bot: autogen.initiate_chats(queue(user, bot)),
    ),
    "a_initiate_chats": (
        has(autogen.ConversableAgent, "a_initiate_chats"),
        lambda user, bot: asyncio.run(user.a_initiate_chats([{**queue(user, bot)[0], "chat_id": 0}])),
    ),
    "sequential_run": (
        has(autogen.ConversableAgent, "sequential_run"),
        lambda user, bot: [drain(r) for r in user.sequential_run(queue(user, bot))],
    ),
    "a_sequential_run": (
        has(autogen.ConversableAgent, "a_sequential_run"),
        lambda user, bot: asyncio.run(_each(user.a_sequential_run(queue(user, bot)))),
    ),
    "run": (has(autogen.ConversableAgent, "run"), lambda user, bot: drain(user.run(bot, **CHAT))),
    "a_run": (has(autogen.ConversableAgent, "a_run"), lambda user, bot: asyncio.run(_drained(user.a_run(bot, **CHAT)))),
    "run_iter": (has(autogen.ConversableAgent, "run_iter"), lambda user, bot: drain(user.run_iter(bot, **CHAT))),
    "a_run_iter": (
        has(autogen.ConversableAgent, "a_run_iter"),
        lambda user, bot: asyncio.run(adrain(user.a_run_iter(bot, **CHAT))),
    ),
}


async def _drained(started: Any) -> None:
    await adrain(await started)


async def _each(started: Any) -> None:
    for response in await started:
        await adrain(response)


@pytest.mark.parametrize("entry", [pytest.param(name, marks=mark) for name, (mark, _) in DRIVERS.items()])
def test_a_two_agent_entry_point_is_governed(entry: str, guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot, user = pair(tools, guard)

    bounded(lambda: DRIVERS[entry][1](user, bot))

    assert_governed(tools, store)
    assert len({e.session_id for e in store.events()}) == 1  # one chat, one session
    (opening,) = events(store, "input")  # the chat's opening message is the user's request
    assert opening.agent == "user"


# -- groups: patterns and swarms -----------------------------------------------------------

GROUP = "autogen.agentchat.group.multi_agent_chat"
SWARM = "autogen.agentchat.contrib.swarm_agent"


def group_entry(module: str, name: str) -> Callable[..., Any]:
    return getattr(__import__(module, fromlist=["_"]), name)  # type: ignore[no-any-return]


def pattern_of(bot: Any) -> Any:
    from autogen.agentchat.group.patterns import RoundRobinPattern

    return RoundRobinPattern(initial_agent=bot, agents=[bot])


GROUP_DRIVERS: dict[str, tuple[str, Callable[[Callable[..., Any], Any], Any]]] = {
    "initiate_group_chat": (GROUP, lambda run, bot: run(pattern=pattern_of(bot), messages="help", max_rounds=6)),
    "a_initiate_group_chat": (
        GROUP,
        lambda run, bot: asyncio.run(run(pattern=pattern_of(bot), messages="help", max_rounds=6)),
    ),
    "run_group_chat": (GROUP, lambda run, bot: drain(run(pattern=pattern_of(bot), messages="help", max_rounds=6))),
    "a_run_group_chat": (
        GROUP,
        lambda run, bot: asyncio.run(_drained(run(pattern=pattern_of(bot), messages="help", max_rounds=6))),
    ),
    "run_group_chat_iter": (
        GROUP,
        lambda run, bot: drain(run(pattern=pattern_of(bot), messages="help", max_rounds=6)),
    ),
    "a_run_group_chat_iter": (
        GROUP,
        lambda run, bot: asyncio.run(adrain(run(pattern=pattern_of(bot), messages="help", max_rounds=6))),
    ),
    "initiate_swarm_chat": (
        SWARM,
        lambda run, bot: run(initial_agent=bot, agents=[bot], messages="help", max_rounds=6),
    ),
    "a_initiate_swarm_chat": (
        SWARM,
        lambda run, bot: asyncio.run(run(initial_agent=bot, agents=[bot], messages="help", max_rounds=6)),
    ),
    "run_swarm": (
        SWARM,
        lambda run, bot: drain(run(initial_agent=bot, agents=[bot], messages="help", max_rounds=6)),
    ),
    "a_run_swarm": (
        SWARM,
        lambda run, bot: asyncio.run(_drained(run(initial_agent=bot, agents=[bot], messages="help", max_rounds=6))),
    ),
}


@pytest.mark.parametrize(
    "entry", [pytest.param(name, marks=has(module, name)) for name, (module, _) in GROUP_DRIVERS.items()]
)
def test_a_group_entry_point_is_governed(entry: str, guard: Guard, tools: Tools, store: AuditStore) -> None:
    bot = autogen.ConversableAgent(
        "assistant",
        llm_config=LLM,
        functions=[tools.functions["lookup"], tools.functions["send_email"]],
    )
    script(bot, tool_call(*ALLOWED), tool_call(*DENIED), say("TERMINATE"))
    module, drive = GROUP_DRIVERS[entry]
    register_guard(bot, guard)

    bounded(lambda: drive(group_entry(module, entry), bot))

    assert_governed(tools, store)
    executors = {d.details["context"]["executor"] for d in events(store, "tool.decision")}
    assert len(executors) == 1 and executors != {"assistant"}  # the framework's own tool executor
    assert len({e.session_id for e in store.events()}) == 1


def test_a_registrations_user_and_tenant_reach_every_event(tools: Tools, store: AuditStore, guard: Guard) -> None:
    bot, user = assistant(), executor()
    tools.register(bot, user)
    script(bot, tool_call(*ALLOWED), tool_call(*DENIED), say("TERMINATE"))
    register_guard([bot, user], guard, user="jane@customer.example", tenant="acme")
    bounded(lambda: user.initiate_chat(bot, **CHAT))
    assert_governed(tools, store)
    recorded = events(store)
    assert recorded and all(e.tenant == "acme" for e in recorded)
    # the user is personal data: stored as a keyed reference, the same one on every event
    reference = recorded[0].user_id
    assert reference is not None and "jane" not in reference
    assert {e.user_id for e in recorded} == {reference}
