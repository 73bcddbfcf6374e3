"""Every AgentChat construct either governed or refused: nested teams (SocietyOfMindAgent),
Swarm handoffs, agents other than AssistantAgent, the model calls teams make themselves, tools
run outside a run, MCP workbenches; and an inventory that fails when a release adds a run entry
point or a team nobody classified."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import autogen_agentchat
import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat

from tether.autogen.agentchat import CODE_TOOL, UNKNOWN_SERVER, register_guard
from tether.core import AuditStore, Guard
from tether.core.redact import user_ref

from ...support import run_within
from .conftest import POLICY, Tools, agent, calls, events, scripted_client, texts

ROOT = Path(__file__).parents[3]


def run(target: Any, task: str = "help the customer") -> Any:
    return asyncio.run(target.run(task=task))


def test_a_society_of_mind_agents_inner_team_is_governed(guard: Guard, tools: Tools, store: AuditStore) -> None:
    from autogen_agentchat.agents import SocietyOfMindAgent

    inner_bot, _ = agent(tools, calls(("send_email", {"to": "x@evil.example", "body": "list"})), "inner done")
    inner = RoundRobinGroupChat([inner_bot], termination_condition=MaxMessageTermination(3))
    summary = scripted_client([], [], final="summary")
    society = SocietyOfMindAgent("society", team=inner, model_client=summary)
    outer_bot, _ = agent(tools, calls(("lookup", {"query": "a"})), "outer done", name="researcher")
    team = RoundRobinGroupChat([society, outer_bot], termination_condition=MaxMessageTermination(4))
    register_guard(team, guard)

    run(team)

    assert tools.count("send_email") == 0
    decisions = {(e.agent, e.tool): e for e in events(store, "tool.decision")}
    assert decisions[("assistant", "send_email")].verdict == "deny"
    assert decisions[("researcher", "lookup")].verdict == "allow"
    assert len({e.session_id for e in store.events()}) == 1  # the inner team runs in the outer run's session
    assert any(e.agent == "society" for e in events(store, "model.request"))  # its summary call too


def swarm_policy(*handoffs: str) -> dict[str, Any]:
    policy = json.loads(json.dumps(POLICY))
    policy["tools"] |= {"transfer_to_researcher": {"effects": ["read"]}}
    for name in handoffs:
        policy["agents"]["assistant"]["tools"][name] = "allow"
    return policy


@pytest.mark.parametrize("granted", [True, False])
def test_swarm_handoffs_are_decided(store: AuditStore, tools: Tools, granted: bool) -> None:
    from autogen_agentchat.messages import HandoffMessage, TextMessage
    from autogen_agentchat.teams import Swarm

    guard = Guard(swarm_policy(*(["transfer_to_researcher"] if granted else [])), store=store)
    handoff = calls(("transfer_to_researcher", {}))
    bot = AssistantAgent("assistant", model_client=scripted_client([], [], final="x"), handoffs=["researcher"])
    bot._model_client = _replay(handoff)
    researcher, _ = agent(tools, calls(("lookup", {"query": "a"})), "done", name="researcher")
    team = Swarm([bot, researcher], termination_condition=MaxMessageTermination(4))
    register_guard(team, guard)

    result = run_within(team.run(task="help"), 60, "the Swarm's run")

    if granted:
        assert any(getattr(m, "target", None) == "researcher" for m in result.messages)
    else:
        # the conversation stays with the assistant, whose turn ends with the refusal
        assert not any(isinstance(m, HandoffMessage) for m in result.messages)
        assert {m.source for m in result.messages} == {"user", "assistant"}
        said = [m.content for m in result.messages if isinstance(m, TextMessage) and m.source == "assistant"]
        assert said[0].startswith("Tether denied the call to 'transfer_to_researcher'")
        assert tools.ran == []  # the researcher never got the turn
    (decision, *_) = events(store, "tool.decision")
    assert (decision.agent, decision.tool) == ("assistant", "transfer_to_researcher")
    assert decision.verdict == ("allow" if granted else "deny")


def _replay(*responses: Any) -> Any:
    from .conftest import Scripted

    info = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown"}
    return Scripted([*responses, *["done"] * 4], [], model_info={**info, "structured_output": False})


def test_a_code_executor_agent_is_decided(guard: Guard, store: AuditStore, tmp_path: Path) -> None:
    from autogen_agentchat.agents import CodeExecutorAgent
    from autogen_ext.code_executors.local import LocalCommandLineCodeExecutor

    runner = CodeExecutorAgent("runner", code_executor=LocalCommandLineCodeExecutor(work_dir=tmp_path))
    register_guard(runner, guard)

    result = run(runner, "```python\nopen('ran.txt', 'w').write('x')\n```")

    assert not (tmp_path / "ran.txt").exists()
    assert "Tether denied the call to 'execute_code'" in str(result.messages[-1].content)
    (decision,) = events(store, "tool.decision")
    assert (decision.agent, decision.tool, decision.verdict) == ("runner", CODE_TOOL, "deny")


def test_selector_group_chat_speaker_selection_is_recorded_and_screened(store: AuditStore, tools: Tools) -> None:
    from autogen_agentchat.teams import SelectorGroupChat

    policy = json.loads(json.dumps(POLICY))
    policy["agents"]["SelectorGroupChat"] = {"purpose": "choose", "owner": "t@acme.example", "data": [], "tools": {}}
    guard = Guard(policy, store=store)
    bot, _ = agent(tools, calls(("fetch_ticket", {"ticket": "7"})), "done")
    researcher, _ = agent(tools, "nothing to add", name="researcher")
    seen: list[str] = []
    selector = scripted_client([], seen, final="assistant")
    team = SelectorGroupChat(
        [bot, researcher],
        model_client=selector,
        termination_condition=MaxMessageTermination(3),
        allow_repeated_speaker=True,  # the model chooses each time, after the ticket too
    )
    register_guard(team, guard)

    result = run(team)

    assert "jane.roe@customer.example" in texts(result)  # the assistant is cleared for personal data
    selections = [e for e in events(store, "model.request") if e.agent not in ("assistant", "researcher")]
    assert selections, "the selector's model calls are not recorded"
    assert {e.agent for e in selections} == {"SelectorGroupChat"}
    assert len({e.session_id for e in store.events()}) == 1
    assert len(seen) >= 2 and any("Ticket 7 from" in sent for sent in seen)  # the ticket is in its history
    assert not any("jane.roe@customer.example" in sent for sent in seen), "raw personal data reached the selector"


SECRET = "sk-proj-Zx81Qm0Lk3Vb7Tn2Rw9Yp4Hd6Jf5Gs1A"  # looks like an OpenAI key: the class `secret`


def test_magentic_one_orchestrator_calls_are_recorded_and_screened(store: AuditStore, tools: Tools) -> None:
    from autogen_agentchat.teams import MagenticOneGroupChat

    policy = json.loads(json.dumps(POLICY))
    policy["agents"]["assistant"]["data"] = []
    policy["agents"]["MagenticOneGroupChat"] = {"purpose": "plan", "owner": "t@acme.example", "data": [], "tools": {}}
    guard = Guard(policy, store=store)
    bot, _ = agent(tools, "looked it up")
    done = {"reason": "done", "answer": True}
    ledger = {
        "is_request_satisfied": done,
        "is_in_loop": {"reason": "no", "answer": False},
        "is_progress_being_made": done,
        "next_speaker": {"reason": "only one", "answer": "assistant"},
        "instruction_or_question": {"reason": "none", "answer": "nothing"},
    }
    seen: list[str] = []
    orchestrator = scripted_client([], seen, final="x")
    orchestrator.chat_completions[:4] = ["the facts", "the plan", json.dumps(ledger), "the final answer"]
    team = MagenticOneGroupChat([bot], model_client=orchestrator, max_turns=3)
    register_guard(team, guard)

    result = run(team, f"rotate the key {SECRET} for order 42")

    assert "the final answer" in texts(result)
    planning = [e for e in events(store, "model.request") if e.agent == "MagenticOneGroupChat"]
    assert len(planning) >= 3, "the orchestrator's planning and progress calls are not all recorded"
    assert len([e for e in events(store, "model.response") if e.agent == "MagenticOneGroupChat"]) == len(planning)
    assert len(seen) >= 3 and all("order 42" in sent for sent in seen)  # the task reached the orchestrator
    assert not any(SECRET in sent for sent in seen), "the secret in the task reached the orchestrator's model"
    assert not any(SECRET in e.data for e in store.events())


def test_a_tool_run_outside_any_run_is_decided(guard: Guard, tools: Tools, store: AuditStore) -> None:
    from autogen_core import CancellationToken
    from autogen_core.tools import FunctionTool

    register_guard(agent(tools, "x")[0], guard)  # a guard exists in this process
    send_email = FunctionTool(tools.all()[2], description="Send an email.")

    with pytest.raises(Exception, match="Tether denied the call to 'send_email'"):
        asyncio.run(send_email.run_json({"to": "a@acme.example", "body": "x"}, CancellationToken()))

    assert tools.count("send_email") == 0
    (decision,) = events(store, "tool.decision")
    assert decision.details["context"]["attribution"] == "fallback"


def mcp_server_name() -> str:
    """The server name each AgentChat version reports: 0.6+ the server's own, 0.5 none."""
    from autogen_ext.tools.mcp import McpWorkbench

    return "helpdesk" if hasattr(McpWorkbench, "initialize_result") else UNKNOWN_SERVER


def mcp_policy(server: str, agent: str = "assistant") -> dict[str, Any]:
    return {
        "version": 1,
        "tools": {
            f"{server}/lookup_order": {"effects": ["read"]},
            f"{server}/read_ticket": {"effects": ["read"], "data": ["pii"]},
            f"{server}/delete_account": {"effects": ["delete"]},
        },
        "agents": {
            agent: {
                "purpose": "support",
                "owner": "t@acme.example",
                "data": [],
                "tools": {f"{server}/lookup_order": "allow", f"{server}/read_ticket": "allow"},
            }
        },
    }


def test_mcp_workbench_tools_are_governed_as_server_tools(store: AuditStore, tmp_path: Path) -> None:
    from autogen_ext.tools.mcp import McpWorkbench, StdioServerParams

    from tests.conformance.mcp_server import SCRIPT, ran
    from tests.conformance.scenario import CARD, CUSTOMER_EMAIL

    log = tmp_path / "mcp.jsonl"
    server = mcp_server_name()
    guard = Guard(mcp_policy(server), store=store)
    params = StdioServerParams(
        command=sys.executable,
        args=[SCRIPT],
        env={**os.environ, "TETHER_TEST_MCP_LOG": str(log)},
        read_timeout_seconds=30,
    )
    turn = calls(
        ("lookup_order", {"order_id": "42"}), ("read_ticket", {"ticket_id": "7"}), ("delete_account", {"user_id": "u1"})
    )

    async def go() -> Any:
        async with McpWorkbench(params) as workbench:
            bot = AssistantAgent("assistant", model_client=_replay(turn), workbench=workbench)
            register_guard(bot, guard)
            return await bot.run(task="help")

    result = asyncio.run(asyncio.wait_for(go(), 120))

    text = "\n".join(str(getattr(m, "content", "")) for m in result.messages)
    assert sorted(t for t, _ in ran(log)) == ["lookup_order", "read_ticket"]  # the denied call never reached it
    decisions = {e.tool: e.verdict for e in events(store, "tool.decision")}
    assert decisions == {
        f"{server}/lookup_order": "allow",
        f"{server}/read_ticket": "allow",
        f"{server}/delete_account": "deny",
    }
    assert "order 42: shipped" in text
    assert "Ticket 7 from" in text  # the ticket reached the agent, its personal data redacted
    assert CUSTOMER_EMAIL not in text and CARD not in text
    results = {e.tool: e for e in events(store, "tool.result")}
    assert set(results) == {f"{server}/lookup_order", f"{server}/read_ticket"}
    assert all(e.details["untrusted"] for e in results.values())  # MCP output is untrusted
    assert not any(CUSTOMER_EMAIL in e.data or CARD in e.data for e in store.events())  # nor kept raw


def test_an_mcp_workbench_that_raises_is_recorded_as_an_error(tools: Tools, store: AuditStore) -> None:
    from autogen_ext.tools.mcp import McpWorkbench, StdioServerParams

    # called outside any run: the fallback session's agent; not started, it has no server name yet
    guard = Guard(mcp_policy(UNKNOWN_SERVER, agent="agentchat"), store=store)
    register_guard(agent(tools, "x")[0], guard)
    workbench = McpWorkbench(StdioServerParams(command=sys.executable, args=["-c", "pass"]))

    async def unreachable() -> None:
        raise ConnectionError("the MCP server is unreachable")

    workbench.start = unreachable  # type: ignore[method-assign]

    with pytest.raises(ConnectionError, match="unreachable"):
        asyncio.run(asyncio.wait_for(workbench.call_tool("lookup_order", {"order_id": "42"}), 30))

    (decision,) = events(store, "tool.decision")
    assert (decision.tool, decision.verdict) == (f"{UNKNOWN_SERVER}/lookup_order", "allow")
    (outcome,) = events(store, "tool.result")
    assert outcome.parent_id == decision.event_id
    assert "the MCP server is unreachable" in outcome.details["error"]
    assert outcome.details["untrusted"]


# -- two guards in one process: each agent's calls are decided by its own -----------------


def two_guards(store: AuditStore, tmp_path: Path, tools: Tools) -> tuple[AssistantAgent, AuditStore, AuditStore]:
    """``assistant`` under a guard letting it email colleagues (user alice, tenant acme); then
    another agent under a second guard, on its own store, whose policy grants nothing."""
    email = calls(("send_email", {"to": "bob@acme.example", "body": "hi"}))
    mine, _ = agent(tools, email, "done")
    register_guard(mine, Guard(POLICY, store=store), user="alice", tenant="acme")
    other_store = AuditStore(f"sqlite:///{tmp_path / 'other.db'}", key=b"o" * 32)
    nothing = {"purpose": "x", "owner": "t@acme.example", "tools": {}}
    strict = {"version": 1, "tools": POLICY["tools"], "agents": {"assistant": nothing}}
    register_guard(agent(tools, "x")[0], Guard(strict, store=other_store))  # the most recent registration
    return mine, store, other_store


def assert_own_guard(tools: Tools, store: AuditStore, other_store: AuditStore) -> None:
    assert tools.count("send_email") == 1
    (decision,) = events(store, "tool.decision")
    alice = user_ref(store.key, "alice")  # how the audit stores a user
    assert (decision.tool, decision.verdict) == ("send_email", "allow")
    assert (decision.user_id, decision.tenant) == (alice, "acme")
    assert "attribution" not in decision.details["context"]
    assert events(other_store) == []
    other_store.close()


@pytest.mark.parametrize("entry", ["on_messages", "on_messages_stream"])
def test_a_direct_on_messages_call_is_decided_by_the_agents_own_guard(
    store: AuditStore, tmp_path: Path, tools: Tools, entry: str
) -> None:
    from autogen_agentchat.messages import TextMessage
    from autogen_core import CancellationToken

    mine, store, other_store = two_guards(store, tmp_path, tools)
    task = [TextMessage(content="email bob", source="user")]

    async def go() -> None:
        if entry == "on_messages":
            await mine.on_messages(task, CancellationToken())
        else:
            async for _ in mine.on_messages_stream(task, CancellationToken()):
                pass

    asyncio.run(asyncio.wait_for(go(), 60))

    assert_own_guard(tools, store, other_store)
    assert {e.session_id for e in events(store)} == {e.session_id for e in events(store, "model.request")}


def test_a_run_on_a_user_started_runtime_is_decided_by_the_teams_own_guard(
    store: AuditStore, tmp_path: Path, tools: Tools
) -> None:
    from autogen_core import SingleThreadedAgentRuntime

    mine, store, other_store = two_guards(store, tmp_path, tools)

    async def go() -> None:
        runtime = SingleThreadedAgentRuntime()
        runtime.start()
        team = RoundRobinGroupChat([mine], termination_condition=MaxMessageTermination(2), runtime=runtime)
        try:
            await team.run(task="email bob")
        finally:
            await runtime.stop()

    asyncio.run(asyncio.wait_for(go(), 60))

    assert_own_guard(tools, store, other_store)
    assert len({e.session_id for e in events(store)}) == 1


# -- the inventory -------------------------------------------------------------------------

#: how each public team and agent class is covered; a release adding one fails until classified
TEAMS = {  # their runs open a session; their agents' tools and their own model calls are governed
    "BaseGroupChat",
    "RoundRobinGroupChat",
    "SelectorGroupChat",
    "Swarm",
    "MagenticOneGroupChat",
    "GraphFlow",
    "DiGraphBuilder",  # builds a GraphFlow's graph; runs nothing
    "DiGraph",  # a GraphFlow's graph, its nodes and edges: data
    "DiGraphNode",
    "DiGraphEdge",
}
AGENTS = {  # tools through BaseTool.run_json, code through the executor, model calls recorded
    "BaseChatAgent",
    "AssistantAgent",
    "CodeExecutorAgent",
    "SocietyOfMindAgent",  # its inner team runs in the outer run's session
    "UserProxyAgent",  # asks a person; runs no tool
    "MessageFilterAgent",  # wraps another agent, whose calls are governed
    "MessageFilterConfig",  # its configuration
    "PerSourceFilter",
    "ApprovalRequest",
    "ApprovalResponse",
    "ApprovalFuncType",
}
RUN_METHODS = {"run", "run_stream"}  # the only public run entry points of agents and teams
TURN_METHODS = {"on_messages", "on_messages_stream"}  # an agent's turn, called by teams or directly


def test_every_team_and_agent_class_is_classified() -> None:
    import autogen_agentchat.agents as agents
    import autogen_agentchat.teams as teams

    found = set(teams.__all__) | set(agents.__all__)
    unclassified = found - TEAMS - AGENTS
    assert not unclassified, f"classify these in the inventory and docs/autogen_agentchat.md: {sorted(unclassified)}"


def test_the_run_entry_points_are_the_tracked_ones() -> None:
    from autogen_agentchat.base import TaskRunner

    from tether.autogen.agentchat import _install

    _install()
    public = {n for n, _ in inspect.getmembers(TaskRunner, inspect.isfunction) if not n.startswith("_")}
    assert public == RUN_METHODS, f"a new run entry point: {sorted(public - RUN_METHODS)}"
    for cls in (autogen_agentchat.agents.BaseChatAgent, autogen_agentchat.teams.BaseGroupChat):
        for name in RUN_METHODS:
            assert getattr(getattr(cls, name), "__wrapped__", None) is not None, f"{cls.__name__}.{name} is not tracked"


def test_an_agents_turn_entry_points_are_the_tracked_ones(guard: Guard, tools: Tools) -> None:
    from autogen_agentchat.base import ChatAgent

    abstract = {n for n in getattr(ChatAgent, "__abstractmethods__", ()) if n.startswith("on_messages")}
    lifecycle = {"on_reset", "on_pause", "on_resume"}
    public = {n for n, _ in inspect.getmembers(ChatAgent) if n.startswith("on_")} - lifecycle
    assert public == TURN_METHODS, f"a new turn entry point: {sorted(public - TURN_METHODS)}"
    assert abstract <= TURN_METHODS
    bot, _ = agent(tools, "x")
    register_guard(bot, guard)
    for name in TURN_METHODS:
        owner = next(c for c in type(bot).__mro__ if name in c.__dict__)
        assert getattr(owner.__dict__[name], "_tether", False), f"{owner.__name__}.{name} is not tracked"


def test_user_and_tenant_reach_the_audit_fixed_or_from_each_runs_task(store: AuditStore, tools: Tools) -> None:
    guard = Guard(POLICY, store=store)
    fixed, _ = agent(tools, calls(("lookup", {"query": "a"})), "done")
    register_guard(fixed, guard, user="alice", tenant="acme")
    run(fixed, "look up a")
    per_run, _ = agent(tools, calls(("lookup", {"query": "b"})), "done", name="researcher")
    register_guard(per_run, guard, user=lambda task: str(task).split()[0], tenant=lambda task: "acme")
    run(per_run, "bob needs b")

    who = {(e.agent, e.user_id, e.tenant) for e in events(store, "tool.decision")}
    assert who == {
        ("assistant", user_ref(store.key, "alice"), "acme"),
        ("researcher", user_ref(store.key, "bob"), "acme"),
    }
    assert all(e.user_id is not None for e in store.events())


def test_a_user_function_that_fails_stops_the_run_before_any_call(store: AuditStore, tools: Tools) -> None:
    from tether.core import TetherError

    def broken(task: Any) -> str:
        raise KeyError("customer")

    bot, _ = agent(tools, calls(("lookup", {"query": "a"})), "done")
    register_guard(bot, Guard(POLICY, store=store), user=broken)

    with pytest.raises(TetherError, match="could not read the run's user"):
        run(bot)
    assert tools.ran == [] and events(store) == []
