"""Developer tasks. `nox` runs lint, typecheck and the test suite; `nox -l` lists sessions.

PostgreSQL tests run when TETHER_TEST_POSTGRES_URL is set (CI sets it), and skip otherwise.
On CI (``CI`` set) every session runs: an interpreter or framework that cannot be found fails
the run instead of being skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "core"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _runs(python: str) -> bool:
    """Whether an interpreter is installed and works (a pyenv shim alone does not count)."""
    found = shutil.which(python)
    return found is not None and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0


CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
if CI:
    nox.options.error_on_missing_interpreters = True
# The oldest Python we support, and the one with the pure-Python CEL runtime: always on CI (where
# a missing 3.10 is an error), and wherever it is installed.
if CI or _runs("python3.10"):
    nox.options.sessions.append("core-3.10")


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "typecheck"), "-e", "./core[mcp,otel,serve,client]")
    session.run("mypy", "core/src/tether/core")


@nox.session
def core(session: nox.Session) -> None:
    """The core's tests (OpenTelemetry export included), the fault suite and the MCP gateway's,
    on SQLite, and on PostgreSQL when TETHER_TEST_POSTGRES_URL is set."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"), "-e", "./core[mcp,otel,serve,client]")
    session.run("pytest", "tests/core", "tests/faults", "tests/mcp", *session.posargs)


@nox.session(name="core-3.10", python="3.10")
def core_310(session: nox.Session) -> None:
    """The core on Python 3.10, where conditions run on the pure-Python CEL runtime."""
    core(session)


def adapter_tests(
    session: nox.Session, adapter: str, *framework: str, tests: str | None = None, core: str = "./core"
) -> None:
    """Install the core (``core``: with extras, e.g. ``./core[otel]``), one adapter and the
    framework versions asked for, then run its tests.

    Each adapter session parametrizes ``framework`` over the oldest and newest versions it
    supports; the frameworks never share an environment.
    """
    session.install(
        *nox.project.dependency_groups(PYPROJECT, "test-adapter"),
        "-e",
        core,
        "-e",
        f"./adapters/{adapter}",
        *framework,
    )
    session.run("pytest", tests or f"tests/{adapter}", *session.posargs)


# -- adapters: one session per framework line, parametrized over the versions users run ---------


@nox.session(name="ag2")
@nox.parametrize("version", ["1.0.0", "1.2.1"], ids=["oldest", "newest"])
def ag2_adapter(session: nox.Session, version: str) -> None:
    """The AG2 1.x middleware on the oldest and newest AG2 1.x releases (the middleware API of 1.0),
    with AG2's MCP toolkit (mcp 1.x under AG2 1.0, mcp 2.x under 1.2)."""
    adapter_tests(session, "ag2", f"ag2[mcp]=={version}")


nox.options.sessions.append("ag2")


@nox.session(name="autogen-classic")
@nox.parametrize("framework", ["pyautogen==0.2.35", "ag2==0.9.10", "ag2==0.14.0"])
def autogen_classic(session: nox.Session, framework: str) -> None:
    """The classic AutoGen API (`import autogen`): pyautogen 0.2 (oldest), ag2 0.9 and ag2 0.14 (newest 0.x)."""
    adapter_tests(session, "autogen", framework, tests="tests/autogen/classic")


nox.options.sessions.append("autogen-classic")


@nox.session(name="autogen-agentchat")
@nox.parametrize("version", ["0.5.7", "0.7.5"], ids=["oldest", "newest"])
def autogen_agentchat(session: nox.Session, version: str) -> None:
    """Microsoft AgentChat (what `pip install pyautogen` installs today): 0.5, the first with workbenches, and 0.7."""
    adapter_tests(
        session,
        "autogen",
        f"autogen-agentchat=={version}",
        f"autogen-ext[mcp]=={version}",
        "mcp>=1.11,<2",  # autogen-ext's MCP workbench does not import with mcp 2.x
        tests="tests/autogen/agentchat",
    )


nox.options.sessions.append("autogen-agentchat")


LANGGRAPH = {
    # ToolNode(wrap_tool_call=...) arrived in langgraph-prebuilt 1.0.2; langchain 1.0.0 is create_agent's first release
    "oldest": (
        "langgraph==1.0.0",
        "langgraph-prebuilt==1.0.2",
        "langchain==1.0.0",
        "langchain-core==1.0.0",
        "langgraph-checkpoint-sqlite==2.0.11",
        "langgraph-supervisor==0.0.30",  # 0.0.31 needs langgraph 1.0.2
        "langchain-mcp-adapters==0.3.0",
        "mcp==1.24.0",  # langchain-mcp-adapters 0.3.0 needs the 1.x server module
    ),
    "newest": (
        "langgraph==1.2.24",
        "langchain==1.5.2",
        "langgraph-checkpoint-sqlite==3.1.2",
        "langgraph-checkpoint-postgres==3.1.3",  # resuming from a PostgreSQL checkpoint
        "langgraph-supervisor==0.0.31",
        "langchain-mcp-adapters==0.3.2",
        "mcp==1.30.0",  # langchain-mcp-adapters 0.3.2 needs mcp < 2
    ),
}


@nox.session
@nox.parametrize("versions", [nox.param(pins, id=name) for name, pins in LANGGRAPH.items()])
def langgraph(session: nox.Session, versions: tuple[str, ...]) -> None:
    """LangGraph and LangChain's create_agent, oldest and newest supported releases, with the
    OpenTelemetry export (spans of a real graph run) and a graph deciding through the decision
    API (the server and its client)."""
    adapter_tests(session, "langgraph", *versions, core="./core[otel,serve,client]")


nox.options.sessions.append("langgraph")


@nox.session
@nox.parametrize("version", ["1.14.7", "1.15.30"], ids=["oldest", "newest"])
def crewai(session: nox.Session, version: str) -> None:
    """CrewAI's tool-call and LLM-call hooks, on the oldest and newest releases the step guard supports."""
    session.env.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TRACING_ENABLED="false")
    # crewai-tools for its MCPServerAdapter (the MCP route besides an agent's mcps=), released with CrewAI
    adapter_tests(session, "crewai", f"crewai=={version}", f"crewai-tools[mcp]=={version}")


nox.options.sessions.append("crewai")
